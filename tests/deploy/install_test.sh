#!/usr/bin/env bash
# What the container images contain, checked without Docker: scripts/install.sh into a fresh
# prefix, scripts/runtime-packages.sh names only installed packages, and the installed server
# (away from the build tree, as the image runs it) serves its default model and a session.
# Usage: install_test.sh BUILD_DIR. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.."
build="$(cd "${1:?usage: install_test.sh BUILD_DIR}" && pwd)"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
passed=0
failed=0
check() {
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "PASS $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
TITANS_BUILD_DIR="$build" scripts/install.sh "$work/opt" > /dev/null
check "install.sh installs the server, tools and default model" \
  "$([ -x "$work/opt/bin/titans-server" ] && [ -f "$work/opt/models/default/model.safetensors" ] && echo 0 || echo 1)"
packages="$(scripts/runtime-packages.sh "$work/opt")"
check "runtime-packages.sh names the packages (libtorch, gRPC, hiredis among them)" \
  "$(echo "$packages" | grep -q '^libtorch' && echo "$packages" | grep -q '^libgrpc++' &&
     echo "$packages" | grep -q '^libhiredis' && echo 0 || echo 1)"
missing=0
for p in $packages; do dpkg -s "$p" > /dev/null 2>&1 || missing=1; done
check "every runtime package is a Debian package installed here" "$missing"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cd "$work"  # nothing from the source or build tree is reachable by relative paths
"$work/opt/bin/titans-server" --host=127.0.0.1 --port="$port" --metrics_port=-1 \
  --model_dir="$work/opt/models/default" --state_dir="$work/state" > "$work/server.log" 2>&1 &
server=$!
cli=("$work/opt/bin/titans-cli" --server "127.0.0.1:$port")
for _ in $(seq 1 100); do "${cli[@]}" models > /dev/null 2>&1 && break; sleep 0.2; done
check "the installed server serves the built-in model" \
  "$("${cli[@]}" models 2>/dev/null | grep -q titans-default && echo 0 || echo 1)"
"${cli[@]}" create --id smoke > /dev/null 2>&1 && "${cli[@]}" append smoke --text "hello from the image" > /dev/null 2>&1
check "a session takes appends" "$("${cli[@]}" get smoke 2>/dev/null | grep -qP "\tposition 20\t" && echo 0 || echo 1)"
kill -TERM "$server"; wait "$server"; rc=$?
check "SIGTERM stops it cleanly and persists the session" \
  "$([ "$rc" -eq 0 ] && ls "$work/state/sessions/smoke.state" > /dev/null 2>&1 && echo 0 || echo 1)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
