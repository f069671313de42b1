#!/usr/bin/env bash
# Installs every Debian package this project needs. Idempotent, non-interactive, run as root.
# The README commands, .ci/run and the Dockerfile all call this script; nothing else installs
# dependencies.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates clang libclang-rt-14-dev
  libtorch-dev libopenblas0-pthread
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc grpc-proto
  libabsl-dev nlohmann-json3-dev libsentencepiece-dev prometheus-cpp-dev prometheus
  libgtest-dev libgmock-dev libbenchmark-dev
  libhiredis-dev libmicrohttpd-dev redis-server haproxy
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev python3-yaml
  bible-kjv bible-kjv-text fortunes jargon-text gnuplot-nox xz-utils
  python3 python3-numpy python3-grpcio python3-protobuf python3-pytest python3-venv python3-torch openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
