#!/usr/bin/env bash
# The installed package as an out-of-tree consumer sees it (ctest "package: ..."; issue #11):
#  1. `cmake --install` of this build into a temporary prefix: the public header only, the
#     versioned libckptconv.so whose dynamic symbols are the public API's, the CMake package and
#     ckptconv.pc;
#  2. examples/cpp built out of tree with find_package(ckptconv), and the same expert_stats.cc
#     compiled as one file through `pkg-config --cflags --libs ckptconv`;
#  3. both run on a synthesized MiniMax-M2-style FP8 checkpoint (native, BF16, in process) — a
#     MemorySink and a streaming TensorSink at a small budget on two threads — and every tensor
#     each received, dumped as received, must match `ckptconv convert --to native` of the same
#     input under `ckptconv verify` (same names, dtypes, shapes and bytes; NaN payloads aside,
#     and the consumers must have seen no NaN, so the match is byte for byte). A dump with one
#     byte changed must fail the same comparison.
#   tests/consumer_test.sh BUILD_DIR SOURCE_DIR CKPTCONV CMAKE GENERATOR CXX [MAKE_PROGRAM]
set -euo pipefail
build=$1 src=$2 ck=$3 cmake=$4 generator=$5 cxx=$6 make_program=${7:-}
work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-consumer.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() {
  echo "consumer_test: $*" >&2
  exit 1
}

# 1. Install: the C++ package's components (the Python binding's, if built, is its own).
for component in Runtime Development; do
  "$cmake" --install "$build" --prefix "$prefix" --component "$component" >/dev/null
done
lib=$(find "$prefix" -name 'libckptconv.so' -type l)
[ -n "$lib" ] || fail "no libckptconv.so symlink under $prefix"
libdir=$(dirname "$lib")
soname=$(readlink "$lib")
[[ $soname == libckptconv.so.[0-9]* ]] || fail "libckptconv.so -> $soname, not the soname"
[ -f "$libdir/$(readlink "$libdir/$soname")" ] || fail "$soname does not lead to the library file"
headers=$(cd "$prefix/include" && find . -type f | sort | tr '\n' ' ')
[ "$headers" = "./ckptconv/ckptconv.h " ] || fail "installed headers: $headers (want the public header only)"
[ -f "$libdir/cmake/ckptconv/ckptconvConfigVersion.cmake" ] || fail "no ckptconvConfigVersion.cmake"
[ -x "$prefix/bin/ckptconv" ] || fail "no bin/ckptconv"
# The internals are linked in and hidden: what the library exports is the API (the symbols from
# the standard library's templates that the façade instantiates aside).
leaked=$(nm -D --defined-only -C "$libdir/$soname" | awk '{ $1 = ""; $2 = ""; print }' |
  grep -v -e 'ckptconv::' -e '^ *std::' -e '^ *typeinfo \(name \)\?for std::' || true)
[ -z "$leaked" ] || fail "libckptconv.so exports symbols outside the API: $(echo "$leaked" | head -5)"
if ldd "$libdir/$soname" | grep -q 'not found'; then fail "unresolved libraries: $(ldd "$libdir/$soname")"; fi

# 2. Build the consumers.
make_args=()
[ -n "$make_program" ] && make_args=(-DCMAKE_MAKE_PROGRAM="$make_program")
"$cmake" -S "$src/examples/cpp" -B "$work/example" -G "$generator" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_COMPILER="$cxx" "${make_args[@]}" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "configure"; }
"$cmake" --build "$work/example" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "build (find_package)"; }
export PKG_CONFIG_PATH=$libdir/pkgconfig
version=$(pkg-config --modversion ckptconv)
grep -q "PACKAGE_VERSION \"$version\"" "$libdir/cmake/ckptconv/ckptconvConfigVersion.cmake" ||
  fail "ckptconv.pc says version $version, the CMake package does not"
# shellcheck disable=SC2046 # the flags are words
"$cxx" -std=c++17 -O2 -o "$work/expert_stats_pc" "$src/examples/cpp/expert_stats.cc" \
  $(pkg-config --cflags --libs ckptconv) -Wl,-rpath,"$(pkg-config --variable=libdir ckptconv)" ||
  fail "build (pkg-config)"

# 3. Run them against the command line.
"$ck" synth --family minimax_m2 --out "$work/fp8" --layers 2 --experts 8 --hidden 512 --inter 256 \
  --shards 3 --seed 11 >/dev/null
"$ck" convert --in "$work/fp8" --out "$work/native" --to native --dtype bf16 >/dev/null
"$work/example/expert_stats" "$work/fp8" --sink memory --dump "$work/memory.safetensors" >"$work/memory.txt"
"$work/expert_stats_pc" "$work/fp8" --sink stream --threads 2 --memory-budget 4MiB \
  --dump "$work/stream.safetensors" >"$work/stream.txt"
n=$(grep -c . "$work/memory.txt")
for run in memory stream; do
  grep -q "^total: tensors=$((n - 2)) of $((n - 2)) .* nan=0 " "$work/$run.txt" ||
    fail "$run: $(grep '^total' "$work/$run.txt")"
  "$ck" verify "$work/native" "$work/$run.safetensors" >"$work/verify.txt" 2>&1 || {
    cat "$work/verify.txt"
    fail "$run: the tensors the consumer received differ from convert --to native"
  }
done
# The two sinks saw the same values (mean and std may differ in the last digits: sums in
# another order).
strip() { sed -E 's/ (mean|std)=[^ ]*//g; /^sink=/d' "$1"; }
diff <(strip "$work/memory.txt") <(strip "$work/stream.txt") || fail "memory and stream statistics differ"
# A selection: the grouped experts only, two per layer.
"$work/example/expert_stats" "$work/fp8" --experts --quiet | grep -q '^total: tensors=4 of 4 ' ||
  fail "--experts did not deliver the four grouped expert tensors"
# Errors reach the consumer typed: a missing input is an I/O error (exit 4), as on the command line.
rc=0
"$work/example/expert_stats" "$work/missing" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 4 ] || fail "a missing input: exit $rc, want 4"

# The comparison sees a wrong byte: change the dump's last byte (the last tensor's) and it fails.
size=$(stat -c %s "$work/stream.safetensors")
byte=$(tail -c 1 "$work/stream.safetensors" | od -An -tu1 | tr -d ' ')
printf "$(printf '\\%03o' $(((byte + 1) % 256)))" |
  dd of="$work/stream.safetensors" bs=1 seek=$((size - 1)) conv=notrunc status=none
if "$ck" verify "$work/native" "$work/stream.safetensors" >/dev/null 2>&1; then
  fail "verify accepted a dump with a changed byte"
fi
echo "consumer_test: $((n - 2)) tensors received byte-identical by both consumers (find_package, pkg-config)"
