#!/usr/bin/env bash
# Installs the system packages Quiver builds with, if missing (Debian/Ubuntu):
#   protobuf-compiler  protoc, for the tonic code generation in proto/build.rs
#   clang libclang-dev bindgen for RocksDB's bindings (gcc compiles RocksDB itself)
#   make               jemalloc's build (tikv-jemalloc-sys runs configure and make)
#   python3-venv       pip for scripts/fetch-models.sh, when python3 has none
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v clang >/dev/null 2>&1 || need+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v make >/dev/null 2>&1 || need+=(make)
# scripts/fetch-models.sh needs pip, or venv to make one (Debian's python3 ships neither).
python3 -m pip --version >/dev/null 2>&1 || python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
