#!/usr/bin/env bash
# Issue #14: --to dequant and --to hf --quantize real (from the native conversion) against the
# write floor of their own output sizes (dd of zeros, 16 MiB blocks), 1 and 2 threads, five
# interleaved rounds; every writer starts right after a file of its size was removed.
#   bench/floor.sh     (needs ~11 GB free in /dev/shm)
set -euo pipefail
B=${CKPTCONV:-$(cd "$(dirname "$0")/.." && pwd)/build/ckptconv}
cd /dev/shm
rm -rf m14 && mkdir m14 && cd m14
$B synth --family minimax_m2 --layers 4 --experts 36 --hidden 3072 --inter 1536 --shards 4 --seed 5 --out in >/dev/null
$B convert --in in --out nat --to native >/dev/null
warm() { dd if=/dev/zero of=warm bs=16M count=$1 2>/dev/null; rm -f warm; }
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
size_of() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
for r in 1 2 3 4 5; do
  for th in 1 2; do
    rm -rf o; warm 256; echo "dequant_t$th $(t $B convert --in in --out o --to dequant --threads $th)"
    dq=$(size_of o)
  done
  rm -rf o; warm 256; echo "dequant_floor $(t dd if=/dev/zero of=f bs=16M count=$((dq / 16777216)))"; rm -f f
  for th in 1 2; do
    rm -rf o; warm 128; echo "hf_t$th $(t $B convert --in nat --out o --to hf --quantize real --threads $th)"
    hf=$(size_of o)
  done
  echo "bytes_dequant $dq"; echo "bytes_hf $hf"
  rm -rf o; warm 128; echo "hf_floor $(t dd if=/dev/zero of=f bs=16M count=$((hf / 16777216)))"; rm -f f
done | sort | awk '{a[$1]=a[$1]" "$2} END {for (k in a) print k, a[k]}'

cd /dev/shm && rm -rf m14
