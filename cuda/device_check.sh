#!/usr/bin/env bash
# The device run of issue #12, for a machine with an NVIDIA GPU (the `device` tool runs it in a
# copy of the working tree; figures go to $OUT, default ./device-out). It builds with the CUDA
# stage required, shows the GPU, and runs the kernel tests against the CPU path. Everything that
# needs no GPU is built and tested by ./test.sh; this is only what cannot run there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
exec > >(tee "$out/device_check.log") 2>&1
nvidia-smi || true
source .ci/deps.sh
ckpt_install_deps
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCKPT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build-cuda -j"$(nproc)" --target ckpt_cuda_tests ckptconv
build-cuda/cuda/ckpt_cuda_tests --durations yes | tee "$out/cuda_tests.txt"
