#!/usr/bin/env bash
# The sanitizer and fuzzing stage of ./test.sh (tests/FUZZING.md). With clang:
#   asan  build-asan/: AddressSanitizer + UndefinedBehaviorSanitizer (+ LeakSanitizer), the whole
#         Catch2 suite (the public API's tests too) and the ckptconv binary it drives;
#   fuzz  the two libFuzzer targets of that same build (tests/fuzz), both at once, for
#         CKPT_FUZZ_SECONDS (default 60) each, from the committed seeds;
#   tsan  build-tsan/: ThreadSanitizer, the tests that run the TBB pipeline, with oneTBB's
#         synchronization made visible (tests/sanitizers/tsan_tbb.cc) once a planted race proves
#         races are still seen.
# Every report stops the process that found it and fails this script.
#   tests/sanitize.sh [asan] [fuzz] [tsan]      (no argument: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(asan fuzz tsan)
fuzz_seconds=${CKPT_FUZZ_SECONDS:-60}
jobs=$(nproc)

# -O0: these builds are compile-bound (-O1 doubled their CPU time; the suite itself is I/O-bound).
# Only the targets the stage runs are built (no benchmarks).
configure() {  # dir, sanitizers, more cmake arguments
  local dir=$1 san=$2
  shift 2
  cmake -S . -B "$dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DCKPT_SANITIZE="$san" -DCKPT_CUDA=OFF "$@" >/dev/null
}

stage() {  # name, then the command; prints the time it took
  local name=$1 t0=$SECONDS
  shift
  echo "sanitize: $name"
  "$@"
  echo "sanitize: $name done in $((SECONDS - t0)) s"
}

asan_build() {
  configure build-asan address,undefined -DCKPT_FUZZ=ON -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=all
  cmake --build build-asan -j"$jobs" --target ckpt_tests ckpt_api_tests ckptconv fuzz_header fuzz_plan
}

asan_env() {
  export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
}

asan() {
  asan_build
  asan_env
  # Not here: the installed-package consumer and the Python binding (their own builds, not
  # instrumented) and the GPU kernels (no CUDA in sanitizer builds).
  (cd build-asan && ctest --output-on-failure -j"$jobs" -E "consumer|python|cuda|remote")
}

# One fuzzer in the background ($! is its pid); new inputs go to build-asan/fuzz/<name>, never to
# the committed seeds.
fuzz_start() {
  local name=$1 out=build-asan/fuzz dict=()
  mkdir -p "$out/$name"
  [ -f "tests/fuzz/$name.dict" ] && dict=(-dict="tests/fuzz/$name.dict")
  build-asan/"$name" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
    -artifact_prefix="$out/$name-" -print_final_stats=1 "$out/$name" "tests/fuzz/corpus/$name" \
    >"$out/$name.log" 2>&1 &
}

fuzz_report() {  # name, pid
  local name=$1 pid=$2 log=build-asan/fuzz/$1.log
  if ! wait "$pid"; then
    tail -n 60 "$log"
    echo "sanitize: $name found a problem; the input is build-asan/fuzz/$name-* (see $log)"
    return 1
  fi
  echo "  $name: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log"), $(grep -o 'new_units_added: *[0-9]*' "$log" | tr -s ' ')"
}

fuzz() {
  asan_build  # a no-op after the asan stage
  asan_env
  local header plan ok=0
  fuzz_start fuzz_header
  header=$!
  fuzz_start fuzz_plan
  plan=$!
  fuzz_report fuzz_header "$header" || ok=1
  fuzz_report fuzz_plan "$plan" || ok=1
  return $ok
}

tsan() {
  # TBB_USE_PROFILING_TOOLS=2: oneTBB's headers announce task spawn, completion and waits.
  configure build-tsan thread -DCMAKE_CXX_FLAGS=-DTBB_USE_PROFILING_TOOLS=2
  cmake --build build-tsan -j"$jobs" --target ckpt_tests ckptconv
  clang++ -std=c++20 -O1 -fPIC -shared tests/sanitizers/tsan_tbb.cc -o build-tsan/libckpt_tsan_tbb.so
  clang++ -std=c++20 -O0 -g -fsanitize=thread -DTBB_USE_PROFILING_TOOLS=2 tests/sanitizers/tsan_canary.cc \
    -o build-tsan/tsan_canary -ltbb
  export LD_PRELOAD=$root/build-tsan/libckpt_tsan_tbb.so INTEL_LIBITTNOTIFY64=$root/build-tsan/libckpt_tsan_tbb.so
  export INTEL_ITTNOTIFY_GROUPS=sync
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/sanitizers/tsan.supp"
  if build-tsan/tsan_canary >build-tsan/tsan_canary.log 2>&1 || ! grep -q 'tsan_canary.cc' build-tsan/tsan_canary.log; then
    cat build-tsan/tsan_canary.log
    echo "sanitize: ThreadSanitizer missed the planted race in tests/sanitizers/tsan_canary.cc"
    return 1
  fi
  # The tests whose conversions run the TBB pipeline in its different shapes (threads, budgets,
  # families, expert ranks, synth's parallel writers, I/O failures mid-run), in two processes at
  # once. Left out: single-threaded code, and the suites that repeat those conversions many times
  # over (conformance, resume, io, hostile): with them the tests took 310 s here instead of 135 s.
  local groups=("[cli],[diskfull]" "[families],[pipeline],[synth],[fuzz]") pids=() ok=0 i
  for i in "${!groups[@]}"; do
    build-tsan/tests/ckpt_tests "${groups[$i]}" >"build-tsan/tsan-tests-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!groups[@]}"; do
    if wait "${pids[$i]}"; then
      echo "  ${groups[$i]}: $(grep 'test cases' "build-tsan/tsan-tests-$i.log")"
    else
      cat "build-tsan/tsan-tests-$i.log"
      ok=1
    fi
  done
  return $ok
}

for s in "${stages[@]}"; do
  case $s in
    asan|fuzz|tsan) (stage "$s" "$s") ;;
    *) echo "usage: tests/sanitize.sh [asan] [fuzz] [tsan]" >&2; exit 2 ;;
  esac
done
