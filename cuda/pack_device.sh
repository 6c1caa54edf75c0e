#!/usr/bin/env bash
# Prepares the device run of issue #12 on a machine WITHOUT a GPU: the device machine has the
# CUDA driver and Python with torch, but none of the project's Debian libraries and no network,
# so the binaries are built here (CUDA on, MPI and libcurl off: neither is needed there) and
# travel in .devrun/ with the shared libraries they load (14 MB; the tree itself is ~40 MB of
# the 64 MiB a device call carries). Then: the `device` tool runs
# `bash cuda/device_check.sh` with carry [".devrun"].
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/deps.sh
ckpt_install_deps >/dev/null
cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DCKPT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="80;90" \
  -DCKPT_MPI=OFF -DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON -DCKPT_PYTHON=OFF >/dev/null
cmake --build build-dev -j"$(nproc)" --target ckptconv ckpt_cuda_tests ckpt_cuda_api_tests ckpt_bench_cuda
rm -rf .devrun && mkdir -p .devrun/bin .devrun/lib
cp build-dev/ckptconv build-dev/cuda/ckpt_cuda_tests build-dev/cuda/ckpt_cuda_api_tests build-dev/ckpt_bench_cuda .devrun/bin/
strip --strip-unneeded .devrun/bin/*  # what travels is limited (64 MiB with the tree)
# Every library the binaries load but the C library itself (the device image has a newer glibc).
for b in .devrun/bin/*; do ldd "$b"; done | awk '/=> \// { print $3 }' | sort -u |
  grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' | xargs -r cp -L -t .devrun/lib/
grep -qx '/.devrun/' .git/info/exclude 2>/dev/null || echo '/.devrun/' >> .git/info/exclude
du -sh .devrun; ls .devrun/lib
