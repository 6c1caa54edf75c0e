#!/usr/bin/env bash
# Issue #14: every direction against the write floor of its own output size (dd of zeros, 16 MiB
# blocks): --to native and --to dequant of an FP8 MiniMax-M2 checkpoint, and --to hf --quantize
# real of its native conversion; 1 and 2 threads, each input mode in $IOS; five interleaved
# rounds ($ROUNDS). Every writer starts right after a file of its size was written and removed
# (this VM backs never-touched memory slowly). Prints one line per configuration: the runs in
# seconds, sorted, then the median.
#   bench/floor.sh                     (needs ~15 GB free in /dev/shm)
#   IOS="mmap pread" ROUNDS=5 bench/floor.sh
set -euo pipefail
B=${CKPTCONV:-$(cd "$(dirname "$0")/.." && pwd)/build/ckptconv}
IOS=${IOS:-"mmap pread"}
ROUNDS=${ROUNDS:-5}
cd /dev/shm
rm -rf m14 && mkdir m14 && cd m14
$B synth --family minimax_m2 --layers 4 --experts 36 --hidden 3072 --inter 1536 --shards 4 --seed 5 --out in >/dev/null
$B convert --in in --out nat --to native >/dev/null
warm() { dd if=/dev/zero of=warm bs=16M count=$1 2>/dev/null; rm -f warm; }
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
size_of() { du -cb "$1"/*.safetensors | tail -1 | cut -f1; }
declare -A bytes
for r in $(seq "$ROUNDS"); do
  for dir in native dequant hf; do
    src=in args="--to $dir"
    [ $dir = hf ] && src=nat args="--to hf --quantize real"
    for io in $IOS; do
      for th in 1 2; do
        rm -rf o; warm 256
        # shellcheck disable=SC2086
        echo "${dir}_${io}_t$th $(t "$B" convert --in $src --out o $args --threads $th --io $io)"
        bytes[$dir]=$(size_of o)
      done
    done
    rm -rf o; warm 256
    echo "${dir}_floor $(t dd if=/dev/zero of=f bs=16M count=$((bytes[$dir] / 16777216)))"; rm -f f
  done
done | sort -k1,1 -k2n | awk '{a[$1]=a[$1]" "$2; n[$1]++; v[$1,n[$1]]=$2}
  END {for (k in a) print k, a[k], " median", v[k, int((n[k]+1)/2)]}' | sort
cd /dev/shm && rm -rf m14
