#!/usr/bin/env bash
# Issue #13's figures for a conversion split across processes.
#
#   bench/split.sh balance            the partition's balance (max/mean bytes per rank) for
#                                     full-size key sets, from headers alone (synth --sparse)
#   bench/split.sh ranks [RUNS] [DIR] 1 process (2 threads) vs 2 ranks (1 thread each, as
#                                     processes and under mpirun), interleaved, medians
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
ck=${CKPTCONV:-$here/build/ckptconv}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

balance() {
  local work
  work=$(mktemp -d /var/tmp/ckpt-split.XXXXXX)
  trap 'rm -rf "$work"' RETURN
  # family, layers, experts, hidden, moe inter, input shards: the released models' shapes.
  local models=("minimax_m2 62 256 3072 1536 130" "deepseek_v3 61 256 7168 2048 163")
  echo "| model | --to | output shards | output GB | 2 | 4 | 8 | 16 | 32 | 64 ranks |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for m in "${models[@]}"; do
    read -r fam layers experts hidden inter shards <<<"$m"
    $ck synth --family "$fam" --layers "$layers" --experts "$experts" --hidden "$hidden" --inter "$inter" \
        --shards "$shards" --sparse --out "$work/$fam" >/dev/null
    for to in native dequant; do
      local row="" out_shards="" out_gb="" ratio=""
      for n in 2 4 8 16 32 64; do
        local j
        j=$($ck convert --in "$work/$fam" --out "$work/none" --to "$to" --dry-run --world-size "$n" --rank 0 --json)
        read -r out_shards out_gb ratio < <(python3 -c 'import json, sys; j = json.load(sys.stdin)
print(j["shards"], round(j["output_bytes"] / 1e9, 1), round(j["part"]["balance_max_over_mean"], 3))' <<<"$j")
        row+=" $ratio |"
      done
      echo "| $fam | $to | $out_shards | $out_gb |$row"
    done
  done
}

ranks() {
  local runs=${1:-5} dir=${2:-/dev/shm} work
  work=$(mktemp -d "$dir/ckpt-split.XXXXXX")
  trap 'rm -rf "$work"' RETURN
  $ck synth --family minimax_m2 --layers 4 --experts 36 --hidden 3072 --inter 1536 --shards 4 --seed 5 \
      --out "$work/in" >/dev/null
  # 1 GB output shards: a partition needs several (one 4.3 GB shard would all go to one rank).
  local args=(--in "$work/in" --out "$work/out" --to native --max-shard-size 1GB)
  local one=() two=() mpi=()
  now() { date +%s.%N; }
  for _ in $(seq "$runs"); do
    local t0
    t0=$(now); $ck convert "${args[@]}" --threads 2 >/dev/null; one+=("$(echo "$(now) - $t0" | bc)")
    rm -rf "$work/out"
    t0=$(now)
    $ck convert "${args[@]}" --threads 1 --rank 0 --world-size 2 >/dev/null &
    $ck convert "${args[@]}" --threads 1 --rank 1 --world-size 2 >/dev/null
    wait
    $ck publish "$work/out" >/dev/null
    two+=("$(echo "$(now) - $t0" | bc)")
    rm -rf "$work/out"
    if command -v mpirun >/dev/null; then
      t0=$(now)
      mpirun --allow-run-as-root --oversubscribe -np 2 $ck convert "${args[@]}" --threads 1 >/dev/null
      mpi+=("$(echo "$(now) - $t0" | bc)")
      rm -rf "$work/out"
    fi
  done
  echo "1 process, --threads 2: ${one[*]} -> median $(printf '%s\n' "${one[@]}" | median) s"
  echo "2 ranks (processes) + publish, --threads 1 each: ${two[*]} -> median $(printf '%s\n' "${two[@]}" | median) s"
  [ ${#mpi[@]} -gt 0 ] && echo "mpirun -np 2, --threads 1 each: ${mpi[*]} -> median $(printf '%s\n' "${mpi[@]}" | median) s"
  return 0
}

"${1:-balance}" "${@:2}"
