#!/usr/bin/env bash
# Installs the Debian packages ckptconv builds and tests with, if any is missing. Sourced by
# ./run.sh and ./test.sh; needs root (or sudo) only when something is missing.
ckpt_install_deps() {
  local pkgs=(cmake ninja-build g++ libboost-iostreams-dev libtbb-dev libsimdjson-dev catch2
              libfmt-dev nlohmann-json3-dev libcli11-dev libbenchmark-dev libxxhash-dev
              clang libclang-rt-dev llvm  # tests/sanitize.sh: clang, its sanitizer runtimes, llvm-symbolizer
              pkg-config python3-dev python3-pybind11 python3-numpy python3-pytest  # the package and binding
              libcurl4-openssl-dev nginx-light curl  # s3:// and http(s):// inputs, their loopback tests
              libopenmpi-dev openmpi-bin)  # split conversions under mpirun (dist/, tests/split_test.sh)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ckpt_build() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build
}
