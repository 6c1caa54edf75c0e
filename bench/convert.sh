#!/usr/bin/env bash
# Conversion benchmark against the floor of the same filesystem.
#
#   bench/convert.sh [SIZE] [DIR] [RUNS] [FAMILY] [TO]   (defaults: 2GB /dev/shm 5 minimax_m2 dequant)
#
# Synthesizes an FP8 checkpoint of FAMILY and SIZE in DIR, then RUNS times, interleaved:
#   convert --to TO (dequant or native) into DIR (wall time and peak RSS from /usr/bin/time),
#   cp of the same output bytes (the conversion's own output) to another file in DIR,
#   dd of the same bytes with 16 MiB blocks (a second floor: large sequential reads and writes).
# Prints every run and the medians. DIR must hold the input, one output and one copy at once;
# CKPT_BENCH_CP=0 skips the copy (for sizes where only time and peak RSS are wanted).
set -euo pipefail
size=${1:-2GB}; dir=${2:-/dev/shm}; runs=${3:-5}; family=${4:-minimax_m2}; to=${5:-dequant}
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${CKPTCONV:-$here/build/ckptconv}
work=$(mktemp -d "$dir/ckpt-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

$ck synth --family "$family" --out "$work/in" --size "$size" --hidden 4096 --inter 1536 --experts 16 --shards 4 >/dev/null
in_bytes=$(du -cb "$work"/in/*.safetensors | tail -n1 | cut -f1)

calc() { awk "BEGIN {print $1}"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
conv_t=(); conv_rss=(); cp_t=(); dd_t=()
for i in $(seq "$runs"); do
  /usr/bin/time -f "%e %M" -o "$work/time" $ck convert --in "$work/in" --out "$work/out" --to "$to" \
      --family "$family" --dtype bf16 ${CKPT_BENCH_ARGS:-} >/dev/null
  read -r t rss < "$work/time"
  out_bytes=$(du -cb "$work"/out/*.safetensors | tail -n1 | cut -f1)
  c=0; d=0
  if [ "${CKPT_BENCH_CP:-1}" != 0 ]; then
    mkdir "$work/copy"
    /usr/bin/time -f "%e" -o "$work/time" cp "$work"/out/*.safetensors "$work/copy/"
    c=$(cat "$work/time")
    rm -rf "$work/copy"; mkdir "$work/copy"
    /usr/bin/time -f "%e" -o "$work/time" sh -c 'for f in "$1"/*.safetensors; do
        dd if="$f" of="$2/$(basename "$f")" bs=16M status=none; done' sh "$work/out" "$work/copy"
    d=$(cat "$work/time")
  fi
  rm -rf "$work/out" "$work/copy"
  printf 'run %d: convert %6.2f s  peak RSS %7.1f MiB   cp %6.2f s   dd %6.2f s\n' "$i" "$t" "$(calc "$rss/1024")" "$c" "$d"
  conv_t+=("$t"); conv_rss+=("$rss"); cp_t+=("$c"); dd_t+=("$d")
done
mt=$(printf '%s\n' "${conv_t[@]}" | median); mc=$(printf '%s\n' "${cp_t[@]}" | median)
md=$(printf '%s\n' "${dd_t[@]}" | median)
mr=$(printf '%s\n' "${conv_rss[@]}" | sort -n | tail -n1)
printf '%s %s --to %s in %s: input %.2f GB, output %.2f GB, %d runs\n' "$family" "$size" "$to" "$dir" \
  "$(calc "$in_bytes/1e9")" "$(calc "$out_bytes/1e9")" "$runs"
printf 'median convert %.2f s (%.2f GB/s out), max peak RSS %.1f MiB\n' "$mt" "$(calc "$out_bytes/$mt/1e9")" "$(calc "$mr/1024")"
if [ "${CKPT_BENCH_CP:-1}" != 0 ]; then
  printf 'median cp %.2f s (convert/cp %.2f), median dd %.2f s (convert/dd %.2f)\n' \
    "$mc" "$(calc "$mt/$mc")" "$md" "$(calc "$mt/$md")"
fi
