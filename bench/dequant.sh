#!/usr/bin/env bash
# FP8 -> BF16 dequantization benchmark against the floor of the same filesystem.
#
#   bench/dequant.sh [SIZE] [DIR] [RUNS] [FAMILY]      (defaults: 2GB /dev/shm 5 minimax_m2)
#
# Synthesizes a FP8 checkpoint of SIZE in DIR, then RUNS times, interleaved:
#   convert --to dequant into DIR (wall time and peak RSS from /usr/bin/time),
#   cp of the same output bytes (the conversion's own output) to another file in DIR.
# Prints every run and the medians. DIR must hold the input, one output and one copy at once.
set -euo pipefail
size=${1:-2GB}; dir=${2:-/dev/shm}; runs=${3:-5}; family=${4:-minimax_m2}
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${CKPTCONV:-$here/build/ckptconv}
work=$(mktemp -d "$dir/ckpt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

$ck synth --family "$family" --out "$work/in" --size "$size" --hidden 4096 --inter 1536 --experts 16 --shards 4 >/dev/null
in_bytes=$(du -cb "$work"/in/*.safetensors | tail -n1 | cut -f1)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
conv_t=(); conv_rss=(); cp_t=()
for i in $(seq "$runs"); do
  /usr/bin/time -f "%e %M" -o "$work/time" $ck convert --in "$work/in" --out "$work/out" --to dequant \
      --dtype bf16 ${CKPT_BENCH_ARGS:-} >/dev/null
  read -r t rss < "$work/time"
  out_bytes=$(du -cb "$work"/out/*.safetensors | tail -n1 | cut -f1)
  /usr/bin/time -f "%e" -o "$work/time" cp "$work"/out/*.safetensors "$work/copy"
  c=$(cat "$work/time")
  rm -rf "$work/out" "$work/copy"
  printf 'run %d: convert %6.2f s  peak RSS %7.1f MiB   cp %6.2f s\n' "$i" "$t" "$(echo "$rss/1024" | bc -l)" "$c"
  conv_t+=("$t"); conv_rss+=("$rss"); cp_t+=("$c")
done
mt=$(printf '%s\n' "${conv_t[@]}" | median); mc=$(printf '%s\n' "${cp_t[@]}" | median)
mr=$(printf '%s\n' "${conv_rss[@]}" | sort -n | tail -n1)
printf '%s %s in %s: input %.2f GB, output %.2f GB, %d runs\n' "$family" "$size" "$dir" \
  "$(echo "$in_bytes/1e9" | bc -l)" "$(echo "$out_bytes/1e9" | bc -l)" "$runs"
printf 'median convert %.2f s (%.2f GB/s out), median cp %.2f s, ratio %.2f, max peak RSS %.1f MiB\n' \
  "$mt" "$(echo "$out_bytes/$mt/1e9" | bc -l)" "$mc" "$(echo "$mt/$mc" | bc -l)" "$(echo "$mr/1024" | bc -l)"
