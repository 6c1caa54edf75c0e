#!/usr/bin/env bash
# A conversion split across processes, from the outside (ctest "split: ..."): every output below is
# compared byte for byte (diff -r, and `ckptconv verify`) with a single-process `convert` of the
# same input and options, and must hold nothing else — no rank record, lock or temporary shard.
#  1. mpirun -np 1, 2 and 3 of every family's --to native; --to dequant, --to hf --quantize real
#     (from a native conversion) and --ep-size 2 (every EP rank) for minimax_m2; more ranks than
#     shards (mpirun and RANK/WORLD_SIZE).
#  2. Ranks from the environment: RANK/WORLD_SIZE and a Slurm job array, three processes at once,
#     then `ckptconv publish`; --rank/--world-size with rank 0 --wait publishing; `publish` before
#     every rank is complete refuses (exit 2, naming the rank) and publishes nothing.
#  3. Kill: a rank SIGKILLed mid-run (RANK/WORLD_SIZE) leaves nothing publishable; rerun with
#     --resume it completes, keeping its complete shards and leaving the other ranks' untouched
#     (same inode and mtime once published), and the publish matches. Under mpirun, one rank
#     SIGKILLed fails the job with nothing published; the whole job again with --resume matches.
#     A rank failing under mpirun names itself and ends the job.
#  4. Another input: a rank whose input changed since rank 0 ran refuses (exit 3, naming the
#     file); under mpirun, ranks given different inputs all refuse (exit 3), nothing published.
#  5. Locks: while a rank writes, a second process of that rank and a single-process convert into
#     the same directory are refused (exit 2, "another ckptconv is writing it"); another rank is
#     let in.
#   tests/split_test.sh CKPTCONV [WITH_MPI]   (WITH_MPI: 1 or 0, the build's; probed when absent)
# Exit 77 (skipped) without mpirun, or when CKPTCONV was built without MPI.
set -euo pipefail
ck=$(realpath "$1")
with_mpi=${2:-}

fail() {
  echo "split_test: FAIL: $*" >&2
  exit 1
}

# No launcher variables from whoever runs the test: each case sets its own.
unset RANK WORLD_SIZE SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_COUNT PMI_SIZE PMI_RANK PMIX_RANK
for v in $(env | sed -n 's/^\(OMPI_COMM_WORLD_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
# mpirun refuses root without these; the machine may have fewer cores than ranks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=(mpirun --oversubscribe)

work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-split.XXXXXX")
big=
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
  [ -z "$big" ] || rm -rf "$big"
}
trap cleanup EXIT
cd "$work"
# wait_all MSG LOG...: waits for every background rank; on a failure shows the logs and fails.
wait_all() {
  local msg=$1 p
  shift
  for p in "${pids[@]}"; do wait "$p" || { cat "$@" >&2; fail "$msg"; }; done
  pids=()
}

if ! command -v mpirun >/dev/null; then
  echo "split_test: SKIP: mpirun not found (install OpenMPI to test split conversions)"
  exit 77
fi
if [ -z "$with_mpi" ]; then
  # Probe: a build without MPI refuses to run under a launcher, saying so.
  with_mpi=1
  "$ck" synth --family minimax_m2 --layers 1 --experts 2 --shards 1 --out probe_in >/dev/null
  if ! "${mpi[@]}" -np 2 "$ck" convert --in probe_in --out probe_out --to native >probe.log 2>&1; then
    grep -q "built without MPI" probe.log && with_mpi=0
  fi
  rm -rf probe_in probe_out probe.log
fi
if [ "$with_mpi" != 1 ]; then
  echo "split_test: SKIP: $ck was built without MPI (no libopenmpi-dev at build time)"
  exit 77
fi

# --- helpers -------------------------------------------------------------------------------------

# run WANT LOG CMD...: runs CMD with stdout and stderr into LOG; fails unless it exits WANT
# ("nonzero": anything but 0).
run() {
  local want=$1 log=$2 rc=0
  shift 2
  "$@" >"$log" 2>&1 || rc=$?
  if [ "$want" = nonzero ] && [ "$rc" != 0 ]; then return 0; fi
  if [ "$rc" != "$want" ]; then
    cat "$log" >&2
    fail "exit $rc, want $want: $*"
  fi
}

# same REF OUT: OUT is REF, byte for byte, and holds nothing else.
same() {
  local ref=$1 out=$2 left
  diff -r "$ref" "$out" >diff.log 2>&1 || { head -20 diff.log >&2; fail "$out differs from $ref"; }
  left=$(cd "$out" && find . -name '.*' ! -name . | head -5)
  [ -z "$left" ] || fail "$out: left behind: $left"
  # verify reads one directory of shards: the output's, or each expert-parallel rank's.
  local d
  for d in $(cd "$ref" && find . -name '*.safetensors' -printf '%h\n' | sort -u); do
    run 0 verify.log "$ck" verify "$ref/$d" "$out/$d"
  done
}

# unpublished OUT: no config, index or shard under a final name in OUT (or below it).
unpublished() {
  local out=$1 found
  [ -d "$out" ] || return 0
  found=$(find "$out" \( -name config.json -o -name '*.index.json' -o -name 'model*.safetensors' \) | head -3)
  [ -z "$found" ] || fail "$out: published although it must not be: $found"
}

shards_in() { find "$1" -maxdepth 1 -name '*.safetensors' | wc -l; }
record() { echo "$1/.ckptconv-rank-$(printf %05d "$2")-of-$(printf %05d "$3").json"; }
complete() { [ -f "$1" ] && grep -q '"complete": true' "$1"; }
# The shards a record lists as complete (one "dir/file" a line, "dir" empty for the top level).
recorded_shards() { awk -F'"' '/^ *"dir": /{d=$4; want=1; next} want && /^ *"file": /{print (d=="" ? "" : d "/") $4; want=0}' "$1"; }
shard_count() {
  local n
  n=$(grep -c '"dir": ' "$1" 2>/dev/null) || true
  echo "${n:-0}"
}

# stop_mid_run PID RECORD: once RECORD lists a complete shard, SIGSTOPs PID; fails (returns 1,
# process continued) if the rank had completed by then, or if it exited first.
stop_mid_run() {
  local pid=$1 rec=$2 i
  for ((i = 0; i < 3000; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    if [ "$(shard_count "$rec" 2>/dev/null)" -ge 1 ] 2>/dev/null; then
      kill -STOP "$pid"
      if complete "$rec"; then
        kill -CONT "$pid"
        return 1
      fi
      return 0
    fi
    sleep 0.01
  done
  fail "no shard of $rec completed in 30 s"
}

start=$SECONDS

# --- 1. mpirun, every family ---------------------------------------------------------------------

families=$("$ck" synth --help | sed -n 's/.*--family TEXT REQUIRED *Family: //p' | tr -d ,)
[ -n "$families" ] || fail "no families in synth --help"
small=(--layers 2 --experts 4 --hidden 256 --inter 128 --shards 2 --seed 7)
for f in $families; do
  run 0 synth.log "$ck" synth --family "$f" "${small[@]}" --out "in_$f"
  run 0 ref.log "$ck" convert --in "in_$f" --out "ref_$f" --to native --max-shard-size 300KB
  n=$(shards_in "ref_$f")
  [ "$n" -ge 3 ] || fail "$f: only $n shard(s) at 300KB; the test wants several"
  for np in 1 2 3; do
    run 0 mpi.log "${mpi[@]}" -np "$np" "$ck" convert --in "in_$f" --out "out_${f}_$np" --to native --max-shard-size 300KB
    same "ref_$f" "out_${f}_$np"
    rm -rf "out_${f}_$np"
  done
done
echo "split_test: mpirun -np 1/2/3 --to native of $(echo $families | wc -w) families match ($((SECONDS - start)) s)"

m=in_minimax_m2
# --to dequant, and --to hf --quantize real from the native conversion.
run 0 ref.log "$ck" convert --in $m --out ref_dequant --to dequant --max-shard-size 300KB
run 0 ref.log "$ck" convert --in ref_minimax_m2 --out ref_hfq --to hf --quantize real --max-shard-size 300KB
[ "$(shards_in ref_hfq)" -ge 3 ] || fail "--to hf: fewer than 3 shards"
for np in 2 3; do
  run 0 mpi.log "${mpi[@]}" -np $np "$ck" convert --in $m --out out_dequant --to dequant --max-shard-size 300KB
  same ref_dequant out_dequant
  run 0 mpi.log "${mpi[@]}" -np $np "$ck" convert --in ref_minimax_m2 --out out_hfq --to hf --quantize real --max-shard-size 300KB
  same ref_hfq out_hfq
  rm -rf out_dequant out_hfq
done
# Every expert-parallel rank (rank-0000/, rank-0001/): the split deals the shards of both.
run 0 ref.log "$ck" convert --in $m --out ref_ep --to native --ep-size 2 --max-shard-size 300KB
[ -d ref_ep/rank-0001 ] || fail "--ep-size 2 wrote no rank-0001/"
run 0 mpi.log "${mpi[@]}" -np 3 "$ck" convert --in $m --out out_ep --to native --ep-size 2 --max-shard-size 300KB
same ref_ep out_ep
# More ranks than shards: two shards, three MPI ranks; five environment ranks.
run 0 ref.log "$ck" convert --in $m --out ref_two --to native --max-shard-size 1500KB
[ "$(shards_in ref_two)" = 2 ] || fail "--max-shard-size 1500KB: not 2 shards"
run 0 mpi.log "${mpi[@]}" -np 3 "$ck" convert --in $m --out out_two --to native --max-shard-size 1500KB
same ref_two out_two
rm -rf out_two
for r in 0 1 2 3 4; do
  RANK=$r WORLD_SIZE=5 "$ck" convert --in $m --out out_two --to native --max-shard-size 1500KB >"env$r.log" 2>&1 &
  pids+=($!)
done
wait_all "a rank of 5 failed" env*.log
grep -q "rank 4 of 5: 0 of 2 shard" env4.log || { cat env4.log >&2; fail "rank 4 of 5 did not report 0 of 2 shards"; }
run 0 pub.log "$ck" publish out_two
same ref_two out_two
echo "split_test: dequant, hf --quantize real, --ep-size 2, more ranks than shards match ($((SECONDS - start)) s)"

# --- 2. ranks from the environment ---------------------------------------------------------------

ref=ref_minimax_m2
opts=(--to native --max-shard-size 300KB)
for r in 0 1 2; do
  RANK=$r WORLD_SIZE=3 "$ck" convert --in $m --out out_env "${opts[@]}" >"env$r.log" 2>&1 &
  pids+=($!)
done
wait_all "a RANK/WORLD_SIZE rank failed" env*.log
unpublished out_env
for r in 0 1 2; do complete "$(record out_env $r 3)" || fail "rank $r's record is not complete"; done
run 0 pub.log "$ck" publish out_env
same $ref out_env
# A Slurm job array (tasks 4..6).
for t in 4 5 6; do
  SLURM_ARRAY_TASK_ID=$t SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_COUNT=3 \
    "$ck" convert --in $m --out out_slurm "${opts[@]}" >"slurm$t.log" 2>&1 &
  pids+=($!)
done
wait_all "a Slurm array task failed" slurm*.log
grep -q "rank 2 of 3" slurm6.log || { cat slurm6.log >&2; fail "task 6 of 4..6 is not rank 2 of 3"; }
run 0 pub.log "$ck" publish out_slurm
same $ref out_slurm
# --rank/--world-size, rank 0 --wait publishing: started first, it waits for the others.
"$ck" convert --in $m --out out_wait "${opts[@]}" --rank 0 --world-size 3 --wait >wait0.log 2>&1 &
w=$!
pids+=("$w")
sleep 0.5
kill -0 $w 2>/dev/null || { cat wait0.log >&2; fail "rank 0 --wait did not wait for the others"; }
run 0 r1.log "$ck" convert --in $m --out out_wait "${opts[@]}" --rank 1 --world-size 3
run 0 r2.log "$ck" convert --in $m --out out_wait "${opts[@]}" --rank 2 --world-size 3
wait $w || { cat wait0.log >&2; fail "rank 0 --wait failed"; }
pids=()
grep -q "published out_wait" wait0.log || { cat wait0.log >&2; fail "rank 0 --wait did not say it published"; }
same $ref out_wait
# publish before every rank is complete: refused, naming the rank, and nothing published; then
# the missing rank, and publish.
run 0 r0.log "$ck" convert --in $m --out out_early "${opts[@]}" --rank 0 --world-size 3
run 0 r2.log "$ck" convert --in $m --out out_early "${opts[@]}" --rank 2 --world-size 3
run 2 pub.log "$ck" publish out_early
grep -q "rank 1 of 3" pub.log || { cat pub.log >&2; fail "publish did not name the missing rank 1 of 3"; }
unpublished out_early
complete "$(record out_early 0 3)" && complete "$(record out_early 2 3)" || fail "a refused publish lost a complete record"
run 0 r1.log "$ck" convert --in $m --out out_early "${opts[@]}" --rank 1 --world-size 3
run 0 pub.log "$ck" publish out_early
same $ref out_early
rm -rf out_env out_slurm out_wait out_early
echo "split_test: RANK/WORLD_SIZE, Slurm array, --wait and early publish ($((SECONDS - start)) s)"

# --- 4. another input ----------------------------------------------------------------------------

cp -a $m in_touched
touch -d '+1 hour' in_touched/model-00002-of-00002.safetensors
cp -a in_touched in_changing
run 0 r0.log "$ck" convert --in in_changing --out out_diff "${opts[@]}" --rank 0 --world-size 2
touch -d '+2 hours' in_changing/model-00002-of-00002.safetensors
run 3 r1.log "$ck" convert --in in_changing --out out_diff "${opts[@]}" --rank 1 --world-size 2
grep -q "model-00002-of-00002.safetensors" r1.log || { cat r1.log >&2; fail "rank 1 did not name the changed input"; }
unpublished out_diff
run nonzero pub.log "$ck" publish out_diff
unpublished out_diff
# Under mpirun: rank 0 reads $m, the others in_touched (same bytes, another mtime).
cat >diff_in.sh <<EOF
#!/usr/bin/env bash
in=$work/in_touched
[ "\$OMPI_COMM_WORLD_RANK" != 0 ] || in=$work/$m
rc=0
"$ck" convert --in "\$in" "\$@" || rc=\$?
echo \$rc >"$work/rc.\$OMPI_COMM_WORLD_RANK"
exit \$rc
EOF
chmod +x diff_in.sh
run 3 mpi.log "${mpi[@]}" -np 3 ./diff_in.sh --out out_mdiff "${opts[@]}"
grep -q "planned from other input files" mpi.log || { cat mpi.log >&2; fail "mpirun: no line about the other input"; }
unpublished out_mdiff
# Every rank refuses: the job not aborted on the first exit, each rank's status recorded.
rm -f rc.*
run 0 mpi.log "${mpi[@]}" --mca orte_abort_on_non_zero_status 0 -np 3 ./diff_in.sh --out out_mdiff "${opts[@]}"
for r in 0 1 2; do
  [ "$(cat rc.$r 2>/dev/null)" = 3 ] || { cat mpi.log >&2; fail "mpirun, different inputs: rank $r exited $(cat rc.$r 2>/dev/null || echo '(none)'), want 3"; }
done
unpublished out_mdiff
rm -rf out_diff out_mdiff in_changing
# A rank that fails under mpirun names itself and ends the job: nothing published.
cat >bad_rank.sh <<EOF
#!/usr/bin/env bash
in=$work/$m
[ "\$OMPI_COMM_WORLD_RANK" != 2 ] || in=$work/no_such_input
exec "$ck" convert --in "\$in" "\$@"
EOF
chmod +x bad_rank.sh
run nonzero mpi.log "${mpi[@]}" -np 3 ./bad_rank.sh --out out_bad "${opts[@]}"
grep -q "ckptconv: rank 2 of 3: .*no_such_input" mpi.log || { cat mpi.log >&2; fail "mpirun: the failing rank did not name itself"; }
unpublished out_bad
echo "split_test: changed and different inputs refused, failing rank ends the job ($((SECONDS - start)) s)"

# --- 3 and 5. a larger input: locks, kill and resume ---------------------------------------------

# On tmpfs when there is room (about 2 GB: the input, a reference and one output at a time).
if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 3000000 ]; then
  big=$(mktemp -d /dev/shm/ckpt-split.XXXXXX)
else
  big=$work/big
  mkdir "$big"
fi
run 0 synth.log "$ck" synth --family minimax_m2 --size 300MB --shards 3 --seed 5 --out "$big/in"
bopts=(--to native --max-shard-size 20MB --threads 1)
run 0 ref.log "$ck" convert --in "$big/in" --out "$big/ref" "${bopts[@]}"

# 5. Locks: rank 0 stopped mid-run holds them.
RANK=0 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" >lock0.log 2>&1 &
p=$!
pids+=("$p")
stop_mid_run $p "$(record "$big/out" 0 3)" || fail "rank 0 finished before it could be stopped (input too small?)"
run 2 second.log env RANK=0 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}"
grep -q "another ckptconv is writing it" second.log || { cat second.log >&2; fail "second rank 0: not refused by the lock"; }
run 2 second.log env RANK=0 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" --resume
grep -q "another ckptconv is writing it" second.log || { cat second.log >&2; fail "second rank 0 --resume: not refused by the lock"; }
run 2 single.log "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}"
grep -q "another ckptconv is writing it" single.log || { cat single.log >&2; fail "single-process convert: not refused by the lock"; }
run 2 single.log "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" --overwrite
grep -q "another ckptconv is writing it" single.log || { cat single.log >&2; fail "convert --overwrite: not refused by the lock"; }
run 2 pub.log "$ck" publish "$big/out"
unpublished "$big/out"
# Another rank of the same conversion is let in meanwhile.
run 0 r1.log env RANK=1 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}"
kill -CONT $p
wait $p || { cat lock0.log >&2; fail "rank 0, continued, failed"; }
pids=()
run 0 r2.log env RANK=2 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}"
run 0 pub.log "$ck" publish "$big/out"
same "$big/ref" "$big/out"
rm -rf "$big/out"
echo "split_test: locks refuse a second rank 0 and a single run ($((SECONDS - start)) s)"

# 3. Kill one rank of three (RANK/WORLD_SIZE) mid-run.
for _ in 1 2 3; do
  rm -rf "$big/out"
  # Rank 0 --wait: it waits for rank 1 until that dies, then fails without publishing.
  for r in 0 1 2; do
    wait_opt=()
    [ $r != 0 ] || wait_opt=(--wait)
    RANK=$r WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" "${wait_opt[@]}" >"kill$r.log" 2>&1 &
    pids+=($!)
  done
  if stop_mid_run "${pids[1]}" "$(record "$big/out" 1 3)"; then
    kill -9 "${pids[1]}"
    killed=1
  else
    killed=0
  fi
  wait "${pids[1]}" 2>/dev/null || true
  rc0=0
  wait "${pids[0]}" || rc0=$?
  wait "${pids[2]}" || { cat kill2.log >&2; fail "rank 2 failed while rank 1 was killed"; }
  pids=()
  if [ $killed = 0 ]; then
    [ $rc0 = 0 ] || { cat kill0.log >&2; fail "rank 0 --wait failed although no rank was killed"; }
    continue
  fi
  [ $rc0 != 0 ] || { cat kill0.log >&2; fail "rank 0 --wait succeeded although rank 1 was killed"; }
  grep -q "rank 1 of 3 stopped before completing" kill0.log || { cat kill0.log >&2; fail "rank 0 --wait did not name the dead rank 1"; }
  break
done
[ $killed = 1 ] || fail "rank 1 completed before it could be killed, 3 times"
r1=$(record "$big/out" 1 3)
[ -f "$r1" ] || fail "the killed rank left no record"
complete "$r1" && fail "the killed rank's record says complete"
complete "$(record "$big/out" 0 3)" && complete "$(record "$big/out" 2 3)" || fail "ranks 0 and 2 have no complete record"
run 2 pub.log "$ck" publish "$big/out"
grep -q "rank 1 of 3" pub.log || { cat pub.log >&2; fail "publish did not name the killed rank 1"; }
unpublished "$big/out"
# The complete shards before the resume: every one of ranks 0 and 2, and those rank 1 recorded.
kept=$(shard_count "$r1")
[ "$kept" -ge 1 ] || fail "the killed rank recorded no complete shard"
: >before.txt
for r in 0 1 2; do
  for s in $(recorded_shards "$(record "$big/out" $r 3)"); do
    tmp="$big/out/$(dirname "$s")/.$(basename "$s").ckptconv-partial"
    [ -f "$tmp" ] || fail "recorded shard $s has no temporary file"
    echo "$s $(stat -c '%i %y %s' "$tmp")" >>before.txt
  done
done
[ "$(wc -l <before.txt)" -gt "$kept" ] || fail "the records list too few complete shards"
run 0 resume.log env RANK=1 WORLD_SIZE=3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" --resume --json
grep -q "\"reused_shards\": $kept," resume.log || { cat resume.log >&2; fail "the resumed rank did not keep its $kept complete shard(s)"; }
complete "$r1" || fail "the resumed rank's record is not complete"
run 0 pub.log "$ck" publish "$big/out"
same "$big/ref" "$big/out"
while read -r s ino rest; do
  now="$(stat -c '%i %y %s' "$big/out/$s")"
  [ "$ino $rest" = "$now" ] || fail "shard $s was rewritten: $ino $rest before, $now after the resume"
done <before.txt
rm -rf "$big/out"
echo "split_test: a killed rank resumes, keeping $(wc -l <before.txt) complete shard(s) ($((SECONDS - start)) s)"

# 3. Under mpirun: SIGKILL rank 1, then the whole job again with --resume.
for _ in 1 2 3; do
  rm -rf "$big/out"
  "${mpi[@]}" -np 3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" >mpikill.log 2>&1 &
  mp=$!
  pids+=("$mp")
  # The rank's process: a child of mpirun whose environment says rank 1.
  victim=
  for ((i = 0; i < 1000; i++)); do
    for c in $(pgrep -P $mp || true); do
      if tr '\0' '\n' <"/proc/$c/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then victim=$c; fi
    done
    [ -z "$victim" ] || break
    sleep 0.01
  done
  [ -n "$victim" ] || { cat mpikill.log >&2; fail "no process of rank 1 under mpirun"; }
  if stop_mid_run "$victim" "$(record "$big/out" 1 3)"; then
    kill -9 "$victim"
    killed=1
  else
    killed=0
  fi
  rc=0
  wait $mp || rc=$?
  pids=()
  if [ $killed = 1 ]; then
    [ $rc != 0 ] || { cat mpikill.log >&2; fail "mpirun exited 0 with rank 1 killed"; }
    break
  fi
done
[ $killed = 1 ] || fail "rank 1 under mpirun completed before it could be killed, 3 times"
unpublished "$big/out"
[ -f "$(record "$big/out" 1 3)" ] || fail "mpirun: the killed rank left no record"
complete "$(record "$big/out" 1 3)" && fail "mpirun: the killed rank's record says complete"
run 0 mpi.log "${mpi[@]}" -np 3 "$ck" convert --in "$big/in" --out "$big/out" "${bopts[@]}" --resume
grep -q "resumed: [1-9][0-9]* shard(s) were complete and kept" mpi.log || { cat mpi.log >&2; fail "mpirun --resume kept no shard"; }
same "$big/ref" "$big/out"
echo "split_test: mpirun with a killed rank publishes nothing; --resume completes it ($((SECONDS - start)) s)"
echo "split_test: all passed in $((SECONDS - start)) s"
