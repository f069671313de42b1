#!/usr/bin/env bash
# Prints the Debian packages that own the shared libraries the installed binaries link directly
# (their ELF NEEDED entries; apt pulls in the rest), one per line, sorted: what a runtime image
# must install. Usage: scripts/runtime-packages.sh PREFIX
# Fails if a library cannot be found or belongs to no package.
set -euo pipefail
prefix="${1:?usage: scripts/runtime-packages.sh PREFIX}"
declare -A packages=()
for bin in "$prefix"/bin/*; do
  # ldd prints "name => /path (addr)" or "/path (addr)"; "not found" is an error.
  if ldd "$bin" | grep -q "not found"; then
    echo "runtime-packages: $bin has unresolved libraries:" >&2
    ldd "$bin" | grep "not found" >&2
    exit 1
  fi
  declare -A needed=()
  while read -r name; do needed["$name"]=1; done < <(objdump -p "$bin" | awk '$1 == "NEEDED" {print $2}')
  while read -r name lib; do
    [ -n "${needed[$name]:-}" ] || continue
    case "$lib" in "$prefix"/*) continue ;; esac
    pkg=""
    for candidate in "$lib" "$(readlink -f "$lib")" "/usr$lib" "${lib#/usr}"; do
      pkg="$(dpkg -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1)" && [ -n "$pkg" ] && break
    done
    if [ -z "$pkg" ]; then
      echo "runtime-packages: no package owns $lib" >&2
      exit 1
    fi
    packages["$pkg"]=1
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
done
printf '%s\n' "${!packages[@]}" | sort
