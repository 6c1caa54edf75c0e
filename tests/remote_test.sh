#!/usr/bin/env bash
# `ckptconv convert --in URL` and `inspect URL` end to end, against servers on loopback: nginx for
# plain HTTP, s3rver (npm, installed once into the build tree as tests/test_remote_client.cc does)
# for S3, and tests/remote/fault_proxy.js in front of nginx for faulty networks. Every conversion
# is compared byte for byte (diff -r) with the same conversion of the local files:
#   1. every family --to native from http:// and s3://; two families also --to dequant and
#      --to hf --quantize real (from a native checkpoint), one checkpoint named as a single
#      .safetensors object (also by a URL with escapes in the name, issue #15); inspect URL --json
#      equals inspect LOCAL --json but for "path";
#   2. --json remote.bytes_fetched against input_bytes + the shards' headers + the small files
#      (index, config, side files; and the S3 listing): every byte fetched once;
#   3. through the fault proxy (every fault kind) the same bytes, with retries; retries exhausted
#      is exit 4 naming the URL (and the byte range, for a ranged read), nothing published;
#   4. an object replaced during the run, a missing object, a missing bucket: exit 3; denied
#      (wrong key id): exit 4; no credential ever printed or written;
#   5. a remote conversion killed (-9) and resumed gives the same bytes; resuming after the object
#      changed is refused (exit 2, naming the file);
#   6. through tests/remote/sigv4_proxy.js, which checks every SigV4 signature as AWS and MinIO do
#      (s3rver checks none; the proxy's --self-test holds it to AWS's documented examples): a folder
#      (listed, with a query) read in ranges, byte for byte, every request verified; a wrong secret
#      is exit 4 naming the object, nothing published.
#   remote_test.sh CKPTCONV TESTS_REMOTE_DIR NODE_DIR
# Exits 77 (skipped) when nginx, node, npm or curl is missing, or npm ci fails.
set -euo pipefail

BIN=$(realpath "$1")
SCRIPTS=$(realpath "$2")
NODE_DIR=$3
START=$SECONDS

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
find_prog() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" || true; }
# shellcheck source=remote/nginx_conf.sh
. "$SCRIPTS/nginx_conf.sh"

NGINX=$(find_prog nginx)
NODE=$(find_prog node)
NPM=$(find_prog npm)
CURL=$(find_prog curl)
[ -n "$NGINX" ] || skip "nginx not found (Debian: apt-get install nginx-light)"
[ -n "$NODE" ] || skip "node not found: the S3 and fault-injection checks need Node.js and npm"
[ -n "$NPM" ] || skip "npm not found: cannot install s3rver for the S3 checks"
[ -n "$CURL" ] || skip "curl not found: the S3 objects are uploaded with it"
"$CURL" --help all 2>/dev/null | grep -q -- --aws-sigv4 || skip "curl has no --aws-sigv4 (needs 7.75 or later)"

# s3rver from tests/remote/package-lock.json, installed once (a lock serialises parallel tests).
mkdir -p "$NODE_DIR"
cp "$SCRIPTS/package.json" "$SCRIPTS/package-lock.json" "$NODE_DIR/"
(cd "$NODE_DIR" && flock .lock sh -c '[ -f node_modules/s3rver/package.json ] || npm ci --no-audit --no-fund --silent' \
  >npm.log 2>&1) || skip "npm ci of s3rver failed (offline?), see $NODE_DIR/npm.log"
NODE_MODULES=$(realpath "$NODE_DIR/node_modules")

T=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-remote-sh-XXXXXX")
PIDS=()
WATCHDOG=
cleanup() {
  local p
  [ -z "$WATCHDOG" ] || kill "$WATCHDOG" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$NODE" -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# nginx in the foreground, one process, everything it writes under $T/nginx, serving $T/www.
# /ranged503/ is $T/www again, answering every ranged GET with 503 (a read that always fails).
WWW=$T/www
mkdir -p "$WWW" "$T/nginx/tmp"
NGINX_PORT=
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  nginx_conf "$T/nginx" "$port" "$WWW" \
    "location /ranged503/ { alias $WWW/; if (\$http_range) { return 503; } }" >"$T/nginx/nginx.conf"
  "$NGINX" -p "$T/nginx" -c nginx.conf -e "$T/nginx/error.log" </dev/null >"$T/nginx/stderr.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    "$CURL" -s -o /dev/null "http://127.0.0.1:$port/" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if "$CURL" -s -o /dev/null "http://127.0.0.1:$port/"; then
    NGINX_PORT=$port
    PIDS+=("$pid")
    break
  fi
  kill "$pid" 2>/dev/null || true  # the port was taken meanwhile: another one
  wait "$pid" 2>/dev/null || true
done
[ -n "$NGINX_PORT" ] || skip "nginx did not start (see its error.log)"
# nginx does not watch its stdin: should this script be killed (-9), a watchdog ends it.
(
  while kill -0 $$ 2>/dev/null; do sleep 1; done
  kill "${PIDS[0]}" 2>/dev/null
) </dev/null >/dev/null 2>&1 &
WATCHDOG=$!
HTTP=http://127.0.0.1:$NGINX_PORT

# A node server that prints its port: its stdin is a FIFO this shell holds open, so it exits with
# this shell whatever ends it. Sets PORT.
start_node() {
  local name=$1
  shift
  mkfifo "$T/$name.in"
  "$NODE" "$@" <"$T/$name.in" >"$T/$name.port" 2>"$T/$name.log" &
  PIDS+=("$!")
  local fd
  exec {fd}>"$T/$name.in"
  PORT=
  for _ in $(seq 200); do
    PORT=$(head -n1 "$T/$name.port")
    [ -n "$PORT" ] && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  return 1
}

BUCKET=ckpt-test
NODE_PATH=$NODE_MODULES start_node s3rver --openssl-legacy-provider "$SCRIPTS/s3rver.js" "$T/s3data" "$BUCKET" ||
  skip "s3rver did not start: $(head -c 300 "$T/s3rver.log")"
S3_ENDPOINT=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_REGION=us-east-1 AWS_ENDPOINT_URL=$S3_ENDPOINT
unset AWS_SESSION_TOKEN AWS_DEFAULT_REGION AWS_ENDPOINT_URL_S3 HF_TOKEN

# Every fault kind on 30% of the requests (seeded: a failing run repeats), and 503 on all.
start_node proxy --openssl-legacy-provider "$SCRIPTS/fault_proxy.js" "$NGINX_PORT" 17 0.3 \
  drop,503,429,short,short206,stall,stallbody || fail "the fault proxy did not start"
FAULTY=http://127.0.0.1:$PORT
start_node proxy503 "$SCRIPTS/fault_proxy.js" "$NGINX_PORT" 1 1.0 503 || fail "the fault proxy did not start"
ALL503=http://127.0.0.1:$PORT
"$NODE" "$SCRIPTS/sigv4_proxy.js" --self-test >"$T/sigv4-self-test.log" 2>&1 ||
  fail "sigv4_proxy.js --self-test: $(cat "$T/sigv4-self-test.log")"
start_node sigv4 "$SCRIPTS/sigv4_proxy.js" "${S3_ENDPOINT##*:}" "$AWS_REGION" || fail "the SigV4 proxy did not start"
SIGV4=http://127.0.0.1:$PORT
echo "servers: nginx $HTTP, s3rver $S3_ENDPOINT, fault proxies $FAULTY (30%) and $ALL503 (all 503)," \
  "SigV4-checking proxy $SIGV4"

# Uploads every file of local folder $1 as s3://BUCKET/$2/NAME (curl signs; the client only reads).
s3_put_dir() {
  local f
  for f in "$1"/*; do
    "$CURL" -sS -f -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user S3RVER:S3RVER \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$f" "$S3_ENDPOINT/$BUCKET/$2/$(basename "$f")" ||
      fail "upload of $f to s3://$BUCKET/$2/ failed"
  done
}
# Bytes of the S3 listing the client asks for (side files are found by listing).
s3_list_bytes() {
  "$CURL" -sS -f -o /dev/null -w '%{size_download}' --aws-sigv4 "aws:amz:us-east-1:s3" --user S3RVER:S3RVER \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$S3_ENDPOINT/$BUCKET?list-type=2&max-keys=1000&prefix=$1/"
}

jnum() { sed -n "s/^ *\"$2\": \([0-9]*\),\?$/\1/p" "$1" | head -n1; }
header_bytes() { echo $((8 + $(od -An -tu8 -N8 "$1"))); }
size_of() { stat -c %s "$1"; }

# What a remote read of local checkpoint $1 (a folder or one .safetensors file) needs besides
# the tensor data: the headers of its shards and the small files it reads.
overhead_of() {
  local total=0 f dir
  if [ -f "$1" ]; then
    total=$(header_bytes "$1")
    dir=$(dirname "$1")
    [ -f "$dir/config.json" ] && total=$((total + $(size_of "$dir/config.json")))
  else
    for f in "$1"/*; do
      case $f in
        *.safetensors) total=$((total + $(header_bytes "$f"))) ;;
        *) total=$((total + $(size_of "$f"))) ;;
      esac
    done
  fi
  echo "$total"
}

BYTES_REPORT=$T/bytes.txt
# check_bytes NAME JSON LOCAL_INPUT EXTRA [SLACK]: bytes_fetched is input_bytes + headers + small
# files (+ EXTRA: the S3 listing) — each byte once; fetching more (beyond SLACK) fails.
check_bytes() {
  local name=$1 json=$2 local_in=$3 extra=$4 slack=${5:-0}
  local fetched input over expect
  fetched=$(jnum "$json" bytes_fetched)
  input=$(jnum "$json" input_bytes)
  [ -n "$fetched" ] && [ -n "$input" ] || fail "$name: no remote.bytes_fetched or input_bytes in --json"
  over=$(overhead_of "$local_in")
  expect=$((input + over + extra))
  printf '%-34s fetched %10d  input_bytes %10d  headers+small %8d  listing %5d  excess %+d\n' \
    "$name" "$fetched" "$input" "$over" "$extra" $((fetched - expect)) >>"$BYTES_REPORT"
  [ "$fetched" -ge "$input" ] || fail "$name: fetched $fetched bytes, fewer than input_bytes $input"
  [ "$fetched" -le $((expect + slack)) ] ||
    fail "$name: fetched $fetched bytes, more than input_bytes + headers + small files ($expect)"
  return 0
}

# No published file under $1 (hidden records of an interrupted run may stay).
nothing_published() {
  [ ! -e "$1" ] || [ -z "$(ls "$1")" ] || fail "$2: files published under --out after a failure: $(ls "$1")"
}
# No credential in the files given.
no_secret() {
  ! grep -q -e S3RVER -e "${SECRET:-S3RVER}" "$@" || fail "a credential appears in: $*"
}

OUT=$T/out
REF=$T/ref
mkdir -p "$OUT" "$REF"
CONVERSIONS=0

# remote_convert NAME URL REFERENCE LOCAL_INPUT LISTING_BYTES CONVERT_ARGS...: converts URL
# with --json, expects exit 0, the same files as REFERENCE and each byte fetched once (but for
# BYTES_SLACK).
remote_convert() {
  local name=$1 url=$2 ref=$3 local_in=$4 extra=$5
  shift 5
  local rc=0
  "$BIN" convert --in "$url" --out "$OUT/$name" --json "$@" >"$OUT/$name.json" 2>"$OUT/$name.err" || rc=$?
  [ "$rc" = 0 ] || fail "$name: convert --in $url exited $rc: $(cat "$OUT/$name.err")"
  diff -r "$ref" "$OUT/$name" >/dev/null || fail "$name: convert --in $url differs from the local conversion"
  no_secret "$OUT/$name.json" "$OUT/$name.err"
  [[ $url == s3://* ]] && no_secret -r "$OUT/$name"
  check_bytes "$name" "$OUT/$name.json" "$local_in" "$extra" "${BYTES_SLACK:-0}"
  CONVERSIONS=$((CONVERSIONS + 1))
  rm -rf "${OUT:?}/$name"
}

# ---------------------------------------------------------------------------------------------
# Inputs: every family, synthesized small (two shards), served by nginx and uploaded to s3rver.
FAMILIES=$("$BIN" synth --help | sed -n 's/.*--family TEXT REQUIRED *Family: //p' | tr -d ',')
[ -n "$FAMILIES" ] || fail "cannot read the families from synth --help"
DEEP="deepseek_v3 minimax_m2"  # also --to dequant and --to hf --quantize real
for fam in $FAMILIES; do
  "$BIN" synth --family "$fam" --out "$WWW/hf/$fam" --layers 2 --experts 4 --hidden 256 --inter 128 --shards 2 \
    --seed 3 >/dev/null
  "$BIN" convert --in "$WWW/hf/$fam" --out "$REF/$fam.native" --to native >/dev/null
  s3_put_dir "$WWW/hf/$fam" "hf/$fam"
done
for fam in $DEEP; do
  "$BIN" convert --in "$WWW/hf/$fam" --out "$REF/$fam.dequant" --to dequant >/dev/null
  # A native checkpoint in three shards, with its index (an HTTP folder cannot be listed)...
  "$BIN" convert --in "$WWW/hf/$fam" --out "$WWW/native/$fam" --to native --max-shard-size 800KB >/dev/null
  [ -f "$WWW/native/$fam/model.safetensors.index.json" ] || fail "native/$fam: expected several shards"
  "$BIN" convert --in "$WWW/native/$fam" --out "$REF/$fam.hf" --to hf --quantize real >/dev/null
  s3_put_dir "$WWW/native/$fam" "native/$fam"
done
# ...and one in a single file, named as one object.
"$BIN" convert --in "$WWW/hf/minimax_m2" --out "$WWW/single" --to native >/dev/null
[ -f "$WWW/single/model.safetensors" ] || fail "single: expected one model.safetensors"
"$BIN" convert --in "$WWW/single/model.safetensors" --out "$REF/single.hf" --to hf --quantize real >/dev/null
s3_put_dir "$WWW/single" single
echo "inputs ready ($((SECONDS - START)) s): $(echo $FAMILIES | wc -w) families"

# ---------------------------------------------------------------------------------------------
# 1 and 2: conversions and inspect from http:// and s3://, byte for byte, each byte fetched once.
for fam in $FAMILIES; do
  remote_convert "http-$fam-native" "$HTTP/hf/$fam/" "$REF/$fam.native" "$WWW/hf/$fam" 0 --to native
  remote_convert "s3-$fam-native" "s3://$BUCKET/hf/$fam/" "$REF/$fam.native" "$WWW/hf/$fam" "$(s3_list_bytes "hf/$fam")" \
    --to native
  "$BIN" inspect "$WWW/hf/$fam" --json | grep -v '^  "path": ' >"$OUT/inspect-local.json"
  for url in "$HTTP/hf/$fam/" "s3://$BUCKET/hf/$fam/"; do
    "$BIN" inspect "$url" --json >"$OUT/inspect-remote.json" || fail "inspect $url failed"
    grep -q "^  \"path\": \"$url\",\$" "$OUT/inspect-remote.json" || fail "inspect $url: \"path\" is not the URL"
    grep -v '^  "path": ' "$OUT/inspect-remote.json" | diff "$OUT/inspect-local.json" - >/dev/null ||
      fail "inspect $url --json differs from inspect of the local folder"
  done
done
for fam in $DEEP; do
  remote_convert "http-$fam-dequant" "$HTTP/hf/$fam/" "$REF/$fam.dequant" "$WWW/hf/$fam" 0 --to dequant
  remote_convert "s3-$fam-dequant" "s3://$BUCKET/hf/$fam/" "$REF/$fam.dequant" "$WWW/hf/$fam" \
    "$(s3_list_bytes "hf/$fam")" --to dequant
  remote_convert "http-$fam-hf-real" "$HTTP/native/$fam/" "$REF/$fam.hf" "$WWW/native/$fam" 0 --to hf --quantize real
  remote_convert "s3-$fam-hf-real" "s3://$BUCKET/native/$fam/" "$REF/$fam.hf" "$WWW/native/$fam" \
    "$(s3_list_bytes "native/$fam")" --to hf --quantize real
done
remote_convert http-single-object "$HTTP/single/model.safetensors" "$REF/single.hf" "$WWW/single/model.safetensors" 0 \
  --to hf --quantize real
remote_convert s3-single-object "s3://$BUCKET/single/model.safetensors" "$REF/single.hf" \
  "$WWW/single/model.safetensors" 0 --to hf --quantize real
# Issue #15: the name is requested encoded once (as %2B, not %252B), or nginx finds no such file.
mkdir -p "$WWW/escaped"
cp "$WWW/single/config.json" "$WWW/escaped/"
cp "$WWW/single/model.safetensors" "$WWW/escaped/model+v1 x.safetensors"
remote_convert http-escaped-object "$HTTP/escaped/model%2Bv1%20x.safetensors" "$REF/single.hf" \
  "$WWW/escaped/model+v1 x.safetensors" 0 --to hf --quantize real
for url in "$HTTP/single/model.safetensors" "s3://$BUCKET/single/model.safetensors"; do
  "$BIN" inspect "$WWW/single/model.safetensors" --json | grep -v '^  "path": ' >"$OUT/inspect-local.json"
  "$BIN" inspect "$url" --json | grep -v '^  "path": ' | diff "$OUT/inspect-local.json" - >/dev/null ||
    fail "inspect $url --json differs from inspect of the local file"
done
echo "1, 2: $CONVERSIONS remote conversions and $(($(echo $FAMILIES | wc -w) * 2 + 2)) inspects match the local ones" \
  "($((SECONDS - START)) s)"

# ---------------------------------------------------------------------------------------------
# 3: faults. Every kind on 30% of the requests, stalls cut after 1 s: the same bytes, retried.
# A small file (index, config) cut short is fetched again from its start (RemoteClient::get has
# no ranges), so those bytes may arrive twice; tensor data and headers may not.
small=0
for f in "$WWW/hf/deepseek_v3"/*; do [[ $f == *.safetensors ]] || small=$((small + $(size_of "$f"))); done
BYTES_SLACK=$small remote_convert faulty-deepseek_v3-native "$FAULTY/hf/deepseek_v3/" "$REF/deepseek_v3.native" \
  "$WWW/hf/deepseek_v3" 0 --to native --remote-retries 8 --remote-timeout 1
retries=$(jnum "$OUT/faulty-deepseek_v3-native.json" retries)
[ "${retries:-0}" -gt 0 ] || fail "through the fault proxy: remote.retries is ${retries:-missing}, expected > 0"
echo "3: through the fault proxy: identical, $retries retries, $(jnum "$OUT/faulty-deepseek_v3-native.json" requests)" \
  "requests ($((SECONDS - START)) s)"

# expect_fail NAME RC PATTERN CONVERT_ARGS...: exit RC, one line on stderr matching PATTERN,
# nothing on stdout, nothing published, no credential shown.
expect_fail() {
  local name=$1 want=$2 pattern=$3
  shift 3
  local rc=0
  "$BIN" convert --out "$OUT/$name" "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.err" || rc=$?
  [ "$rc" = "$want" ] || fail "$name: exit $rc, expected $want: $(cat "$OUT/$name.err")"
  [ "$(wc -l <"$OUT/$name.err")" = 1 ] || fail "$name: expected one line on stderr, got: $(cat "$OUT/$name.err")"
  grep -Eq -- "$pattern" "$OUT/$name.err" || fail "$name: stderr does not match /$pattern/: $(cat "$OUT/$name.err")"
  [ ! -s "$OUT/$name.stdout" ] || fail "$name: printed on stdout: $(cat "$OUT/$name.stdout")"
  nothing_published "$OUT/$name" "$name"
  no_secret "$OUT/$name.stdout" "$OUT/$name.err"
  [ ! -e "$OUT/$name" ] || no_secret -r "$OUT/$name"
  echo "  $name: exit $rc: $(cat "$OUT/$name.err")"
}

# Retries exhausted: exit 4 naming the URL; for a ranged read, the byte range too.
expect_fail all-503 4 "^ckptconv: $ALL503/hf/deepseek_v3/model.safetensors.index.json: HTTP 503 after 1 tries\$" \
  --in "$ALL503/hf/deepseek_v3/" --to native --remote-retries 0
expect_fail ranged-503 4 \
  "^ckptconv: $HTTP/ranged503/hf/deepseek_v3/model-0000[12]-of-00002\.safetensors bytes [0-9]+-[0-9]+: HTTP 503 after 3 tries\$" \
  --in "$HTTP/ranged503/hf/deepseek_v3/" --to native --remote-retries 2

# ---------------------------------------------------------------------------------------------
# 4: missing objects and buckets, denied access, an object replaced during the run.
mkdir -p "$WWW/missing"
cp "$WWW/hf/deepseek_v3"/{model.safetensors.index.json,config.json,model-00001-of-00002.safetensors} "$WWW/missing/"
s3_put_dir "$WWW/missing" missing
expect_fail missing-shard-http 3 \
  "^ckptconv: $HTTP/missing/model.safetensors.index.json: lists shard 'model-00002-of-00002.safetensors', which does not exist" \
  --in "$HTTP/missing/" --to native
expect_fail missing-shard-s3 3 \
  "^ckptconv: s3://$BUCKET/missing/model.safetensors.index.json: lists shard 'model-00002-of-00002.safetensors', which does not exist" \
  --in "s3://$BUCKET/missing/" --to native
expect_fail missing-file-http 3 "$HTTP/nothing/model\.safetensors" --in "$HTTP/nothing/model.safetensors" --to native
expect_fail missing-bucket 3 "^ckptconv: s3://no-such-bucket: no such bucket\$" \
  --in "s3://no-such-bucket/hf/deepseek_v3/" --to native
SECRET=wrong-secret-0123456789abcdef
# s3rver checks the access key id only: a wrong one is denied (the secret must never show either).
# It never checks a SigV4 signature (s3rver 3.7.1, lib/middleware/authentication.js:184-187): a
# wrong secret is refused by the proxy of section 6.
AWS_ACCESS_KEY_ID=WRONGKEYID AWS_SECRET_ACCESS_KEY=$SECRET expect_fail denied 4 \
  "^ckptconv: s3://$BUCKET/hf/deepseek_v3/.*: access denied \(HTTP 403" --in "s3://$BUCKET/hf/deepseek_v3/" --to native
unset SECRET

# A big checkpoint, read slowly enough (one thread) to be changed, or killed, during the run.
"$BIN" synth --family deepseek_v3 --out "$WWW/big" --size 200MB --shards 4 --threads 2 >/dev/null
BIGARGS=(--to native --threads 1 --max-shard-size 50MB)
"$BIN" convert --in "$WWW/big" --out "$REF/big" "${BIGARGS[@]}" >/dev/null
# nginx's ETag is the mtime (in seconds) and size: an old mtime makes any rewrite a new ETag.
touch -d '2020-01-01 00:00:00' "$WWW/big"/*
cp -p "$WWW/big/model-00004-of-00004.safetensors" "$T/shard4"
MANIFEST=.ckptconv-manifest.json
# Complete output shards recorded in the manifest of an unfinished run in $1.
complete_shards() { cat "$1/$MANIFEST" 2>/dev/null | grep -Ec '^ *"checksum": "[0-9a-f]{16}"' || true; }

rc=0
"$BIN" convert --in "$HTTP/big/" --out "$OUT/changed" "${BIGARGS[@]}" >"$OUT/changed.stdout" 2>"$OUT/changed.err" &
pid=$!
# Once the manifest is there every input has been asked about (its ETag is recorded): replace
# the last shard, which the run reads last.
for _ in $(seq 400); do [ -e "$OUT/changed/$MANIFEST" ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.01; done
[ "$(complete_shards "$OUT/changed")" -lt 6 ] || fail "changed: the run got too far before the object was replaced"
cp "$WWW/big/model-00004-of-00004.safetensors" "$T/shard4.new"
printf 'changed!' | dd of="$T/shard4.new" bs=1 seek=5000000 conv=notrunc 2>/dev/null
mv "$T/shard4.new" "$WWW/big/model-00004-of-00004.safetensors"
wait $pid || rc=$?
[ "$rc" = 3 ] || fail "changed: exit $rc, expected 3: $(cat "$OUT/changed.err")"
grep -Eq "^ckptconv: $HTTP/big/model-00004-of-00004\.safetensors.* changed" "$OUT/changed.err" ||
  fail "changed: the message does not name the changed object: $(cat "$OUT/changed.err")"
nothing_published "$OUT/changed" changed
echo "  changed: exit 3: $(cat "$OUT/changed.err")"
cp -p "$T/shard4" "$WWW/big/model-00004-of-00004.safetensors"
echo "4: missing, denied and changed inputs refused ($((SECONDS - START)) s)"

# ---------------------------------------------------------------------------------------------
# 5: killed (-9) once some output shards are complete, then resumed.
"$BIN" convert --in "$HTTP/big/" --out "$OUT/resume" "${BIGARGS[@]}" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1000); do [ "$(complete_shards "$OUT/resume")" -ge 2 ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.01; done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
kept=$(complete_shards "$OUT/resume")
[ "$kept" -ge 2 ] && [ "$kept" -lt 8 ] || fail "resume: the run was not killed midway ($kept complete shards)"
nothing_published "$OUT/resume" "killed run"
# The input changed since: refused, naming the file.
cp -p "$WWW/big/model-00002-of-00004.safetensors" "$T/shard2"
printf 'changed!' | dd of="$WWW/big/model-00002-of-00004.safetensors" bs=1 seek=5000000 conv=notrunc 2>/dev/null
touch -d '2021-01-01 00:00:00' "$WWW/big/model-00002-of-00004.safetensors"
rc=0
"$BIN" convert --in "$HTTP/big/" --out "$OUT/resume" "${BIGARGS[@]}" --resume >/dev/null 2>"$OUT/resume.err" || rc=$?
[ "$rc" = 2 ] || fail "resume after a change: exit $rc, expected 2: $(cat "$OUT/resume.err")"
grep -q "model-00002-of-00004.safetensors changed since the interrupted run" "$OUT/resume.err" ||
  fail "resume after a change: the message does not name the file: $(cat "$OUT/resume.err")"
nothing_published "$OUT/resume" "refused resume"
echo "  refused resume: exit 2: $(cat "$OUT/resume.err")"
# The same object again (content and mtime, so the same ETag): resumed, identical.
cp -p "$T/shard2" "$WWW/big/model-00002-of-00004.safetensors"
rc=0
"$BIN" convert --in "$HTTP/big/" --out "$OUT/resume" "${BIGARGS[@]}" --resume --json >"$OUT/resume.json" \
  2>"$OUT/resume.err" || rc=$?
[ "$rc" = 0 ] || fail "resume: exit $rc: $(cat "$OUT/resume.err")"
diff -r "$REF/big" "$OUT/resume" >/dev/null || fail "resume: the resumed conversion differs from the local one"
reused=$(jnum "$OUT/resume.json" reused_shards)
[ "${reused:-0}" -ge 2 ] || fail "resume: reused_shards is ${reused:-missing}, expected the $kept complete ones"
echo "5: killed with $kept of 8 shards complete; resumed (kept $reused, fetched" \
  "$(jnum "$OUT/resume.json" bytes_fetched) of $(jnum "$OUT/resume.json" input_bytes) input bytes), identical" \
  "($((SECONDS - START)) s)"

# ---------------------------------------------------------------------------------------------
# 6: every request signed as a store that checks signatures wants it: path, sorted query, headers.
sigv4_seen() { "$CURL" -sS "$SIGV4/__stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
started=$SECONDS
AWS_ENDPOINT_URL=$SIGV4 remote_convert sigv4-deepseek_v3-native "s3://$BUCKET/hf/deepseek_v3/" \
  "$REF/deepseek_v3.native" "$WWW/hf/deepseek_v3" "$(s3_list_bytes hf/deepseek_v3)" --to native
requests=$(jnum "$OUT/sigv4-deepseek_v3-native.json" requests)
verified=$(sigv4_seen verified)
[ "$verified" = "$requests" ] || fail "SigV4 proxy: verified $verified requests of the $requests made"
[ "$(sigv4_seen withQuery)" -ge 1 ] && [ "$(sigv4_seen ranged)" -ge 1 ] ||
  fail "SigV4 proxy: no listing or no ranged read went through it: $("$CURL" -sS "$SIGV4/__stats")"
grep -q '"rejected":{}' <("$CURL" -sS "$SIGV4/__stats") || fail "SigV4 proxy refused requests: $(cat "$T/sigv4.log")"
# The first request is a HEAD, whose 403 has no body to name the cause: the proxy's count does.
SECRET=wrong-secret-0123456789abcdef
AWS_ENDPOINT_URL=$SIGV4 AWS_SECRET_ACCESS_KEY=$SECRET expect_fail sigv4-wrong-secret 4 \
  "^ckptconv: s3://$BUCKET/hf/deepseek_v3/[^ ]+: access denied \(HTTP 403" \
  --in "s3://$BUCKET/hf/deepseek_v3/" --to native
unset SECRET
[ "$(sigv4_seen verified)" = "$verified" ] && [ -n "$(sigv4_seen SignatureDoesNotMatch)" ] ||
  fail "SigV4 proxy: the wrong secret was not refused as SignatureDoesNotMatch: $("$CURL" -sS "$SIGV4/__stats")"
echo "6: through the SigV4-checking proxy: $(sed 's/^sigv4_proxy //' "$T/sigv4-self-test.log");" \
  "$verified requests verified, identical; a wrong secret refused ($((SECONDS - started)) s of $((SECONDS - START)) s)"

# ---------------------------------------------------------------------------------------------
echo "bytes fetched (excess = bytes_fetched - input_bytes - headers - small files - S3 listing):"
cat "$BYTES_REPORT"
echo "PASS: remote_test.sh in $((SECONDS - START)) s"
