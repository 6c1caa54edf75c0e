#!/usr/bin/env bash
# The device run of issue #12, on a machine with an NVIDIA GPU. The `device` tool runs it in a copy
# of the working tree with carry [".devrun"], made beforehand by cuda/pack_device.sh on a machine
# without a GPU (the device machine has no network and none of the project's libraries). Figures
# and logs go to $OUT (default ./device-out): at most 8 files. Sections run in order — correctness
# first, then the benchmarks — and each is logged whether or not an earlier one failed; the
# summary at the end says which passed.
#   E2E_SIZE   checkpoint size of the end-to-end benchmark (default 8GB)
#   ROUNDS     interleaved rounds of it (default 3)
#   DEV        the device under test (default cuda; DEV=cpu walks the script on a machine without one)
#   BENCH=0    skip the kernel benchmark; TORCH=0 skip the PyTorch peer
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
root=$PWD
bin=$root/.devrun/bin
export LD_LIBRARY_PATH=$root/.devrun/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ck=$bin/ckptconv
work=$(df -BG --output=avail /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
if [ "${work:-0}" -ge 40 ]; then work=/dev/shm/ckpt-device; else work=/tmp/ckpt-device; fi
rm -rf "$work" && mkdir -p "$work"
declare -a summary
section() { echo; echo "=== $1 ($(date +%T))"; }
result() { summary+=("$1: $2"); echo "--- $1: $2"; }

section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
nproc; free -g | head -2; df -h /dev/shm /tmp | tail -2; echo "work: $work"
"$ck" --version || { echo "the carried ckptconv does not run here"; exit 1; }

section "kernel and stage tests (ckpt_cuda_tests)"
timeout 300 "$bin/ckpt_cuda_tests" --durations yes > "$out/cuda_tests.txt" 2>&1
rc=$?; tail -n 25 "$out/cuda_tests.txt"
result "ckpt_cuda_tests" "$([ $rc = 0 ] && echo pass || echo "FAIL (exit $rc)")"
timeout 120 "$bin/ckpt_cuda_api_tests" --durations yes >> "$out/cuda_tests.txt" 2>&1
rc=$?; tail -n 8 "$out/cuda_tests.txt"
result "ckpt_cuda_api_tests (DeviceMemorySink)" "$([ $rc = 0 ] && echo pass || echo "FAIL (exit $rc)")"

section "conformance with --device cuda"
cat > "$work/ckptconv-cuda" <<EOF
#!/usr/bin/env bash
if [ "\$1" = convert ]; then shift; exec "$ck" convert --device ${DEV:-cuda} "\$@"; fi
exec "$ck" "\$@"
EOF
chmod +x "$work/ckptconv-cuda"
conf=$root/tests/data/conformance
pass=0; fail=0; skip=0
while IFS=$'\t' read -r name input args; do
  case "$name" in ''|'#'*) continue;; esac
  expected="$conf/${name%%.*}/expected/${name#*.}"
  [ -d "$expected" ] || { skip=$((skip+1)); continue; }
  o="$work/conf/$name"; cmd=${args//\{in\}/$conf/$input}; cmd=${cmd//\{out\}/$o}
  if "$work/ckptconv-cuda" $cmd --json > "$work/conf.json" 2> "$work/conf.err" &&
     grep -q "\"device\": \"${DEV:-cuda}" "$work/conf.json" && "$ck" verify "$expected" "$o" > "$work/conf.err" 2>&1; then
    pass=$((pass+1))
  else
    fail=$((fail+1)); echo "FAIL $name: $(tail -n 1 "$work/conf.err")"
  fi
done < "$conf/cases.tsv"
rm -rf "$work/conf"
result "conformance --device cuda" "$pass passed, $fail failed, $skip without expected output"

section "every family: CLI CPU vs CUDA, file output byte-identical; injected failure"
ok=0; bad=0
for f in minimax_m2 minimax_m3 minimax_m3_vl mistral3_vlm mistral3_causal nemotron_v3 deepseek_v3; do
  d=$work/fam/$f
  "$ck" synth --family "$f" --out "$d/in" --hidden 320 --inter 160 --experts 8 --layers 2 --shards 3 > /dev/null
  for dir in native dequant hf; do
    src=$d/in; extra=""
    if [ $dir = hf ]; then src=$d/cpu-native; [ $f = nemotron_v3 ] || extra="--quantize real"; fi
    for dev in cpu ${DEV:-cuda}; do
      CKPTCONV_CUDA_STAGING=$([ $dev = cpu ] || echo 64KiB) \
        "$ck" convert --in "$src" --out "$d/$dev-$dir" --to $dir $extra --device $dev > /dev/null 2> "$work/fam.err" ||
        echo "convert $f $dir $dev failed: $(cat "$work/fam.err")"
    done
    if diff -r "$d/cpu-$dir" "$d/${DEV:-cuda}-$dir" > /dev/null; then ok=$((ok+1)); else bad=$((bad+1)); echo "DIFFER $f $dir"; fi
  done
done
result "families x directions byte-identical (CLI, 64 KiB staging)" "$ok identical, $bad differ"
f=$work/fam/minimax_m2
CKPTCONV_CUDA_FAIL_AT_BATCH=20 "$ck" convert --in "$f/in" --out "$f/failed" --to native --device ${DEV:-cuda} > "$work/fail.out" 2>&1
rc=$?; cat "$work/fail.out"
published=$(ls "$f/failed" 2>/dev/null | grep -c -e '^model' || true)
result "injected CUDA failure" "exit $rc (want 4), $published published model files (want 0)"
rm -rf "$work/fam"

if [ "${BENCH:-1}" != 0 ]; then
  section "kernels against device copies; pinned bandwidth (ckpt_bench_cuda)"
  timeout 240 "$bin/ckpt_bench_cuda" "$out/kernels.md"
  result "ckpt_bench_cuda" "exit $?"
fi

section "end to end: ${E2E_SIZE:-8GB} MiniMax-M2-style FP8 checkpoint, --to native"
in=$work/e2e-in
"$ck" synth --family minimax_m2 --out "$in" --experts 36 --hidden 3072 --inter 1536 --size "${E2E_SIZE:-8GB}" \
  --shards 16 --seed 5 | tail -n 1
tsv=$out/e2e.tsv
printf 'round\tdevice\tsink\twall_s\tuser_s\tsys_s\texecute_s\tstage_setup_s\tcontext_s\tpeak_rss_MB\th2d_GB\td2h_GB\tdevice_mem_MB\tpinned_MB\n' > "$tsv"
one() {  # round device sink
  local o=$work/e2e-out args=(--sink null)
  [ "$3" = file ] && args=(--out "$o" --overwrite)
  [ "$3" = null ] && args+=(--out "$o")
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$ck" convert --in "$in" --to native --device "$2" --json "${args[@]}" > "$work/e2e.json" 2> "$work/e2e.err"; } 2>&1 )
  python3 - "$1" "$2" "$3" "$t" "$work/e2e.json" >> "$tsv" <<'PY' || { echo "run $1 $2 $3 failed"; cat "$work/e2e.err"; }
import json, sys
r, dev, sink, t, path = sys.argv[1:6]
j = json.load(open(path)); d = j.get("device_stage", {})
wall, user, sys_ = t.split()
print("\t".join([r, dev, sink, wall, user, sys_, f"{j['execute_seconds']:.3f}", f"{d.get('setup_seconds', 0):.3f}", f"{d.get('init_seconds', 0):.3f}",
                 f"{j['peak_rss_bytes']/2**20:.0f}",
                 f"{d.get('h2d_bytes', 0)/1e9:.2f}", f"{d.get('d2h_bytes', 0)/1e9:.2f}",
                 f"{d.get('device_memory_bytes', 0)/2**20:.0f}", f"{d.get('pinned_bytes', 0)/2**20:.0f}"]))
PY
  rm -rf "$o"
}
one warm cpu null; one warm ${DEV:-cuda} null
for r in $(seq 1 "${ROUNDS:-3}"); do
  for dev in ${DEV:-cuda} cpu; do one "$r" $dev null; one "$r" $dev file; done
  CKPTCONV_CUDA_STAGING=16MiB one "$r-staging16MiB" ${DEV:-cuda} null
done
cat "$tsv"
result "end to end" "$(grep -c -v -e '^round' -e warm "$tsv") timed runs in e2e.tsv"

section "peer: plain PyTorch conversion (bench/torch_peer.py) on the same checkpoint"
if [ "${TORCH:-1}" = 0 ]; then
  result "torch peer" "skipped (TORCH=0)"
elif python3 -c 'import torch, safetensors; assert torch.cuda.is_available()' 2>/dev/null; then
  TIMEFORMAT='%R s wall, %U s user'
  { time timeout 300 python3 bench/torch_peer.py --in "$in" --out "$work/torch-out" --device cuda; } > "$out/torch.txt" 2>&1
  cat "$out/torch.txt"
  result "torch peer" "$(tail -n 1 "$out/torch.txt")"
  rm -rf "$work/torch-out"
else
  result "torch peer" "skipped: torch with CUDA not importable"
fi
rm -rf "$work"

echo; echo "=== summary"
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
