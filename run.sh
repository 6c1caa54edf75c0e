#!/usr/bin/env bash
# Installs what is missing, builds, then converts a built-in sample: a synthetic MiniMax-M2-style
# FP8 checkpoint (block-128 scales, several shards) dequantized to BF16, and checks the result.
set -euo pipefail
cd "$(dirname "$0")"
source .ci/deps.sh
ckpt_install_deps
ckpt_build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ck=build/ckptconv
$ck synth --family minimax_m2 --out "$work/fp8" --layers 4 --experts 8 --hidden 512 --inter 256 --shards 3
$ck inspect "$work/fp8" | sed -n "/tensors in/,\$p"
$ck convert --in "$work/fp8" --out "$work/bf16" --to dequant --dtype bf16
$ck inspect "$work/bf16" | sed -n "/tensors in/,\$p"
echo "sample converted: $(ls "$work/bf16" | tr '\n' ' ')"
