#!/usr/bin/env bash
# Issue #15: `convert --to native` of one checkpoint from local files and from Debian's nginx on
# loopback (one worker, serving /dev/shm), interleaved rounds; prints the runs, the medians and
# the ratio nginx / local.
#   bench/remote.sh                 (needs nginx and ~4 GB free in /dev/shm)
#   ROUNDS=5 THREADS=2 bench/remote.sh
set -euo pipefail
B=${CKPTCONV:-$(cd "$(dirname "$0")/.." && pwd)/build/ckptconv}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
W=/dev/shm/mr
rm -rf "$W" && mkdir -p "$W/www" "$W/nginx/tmp"
$B synth --family minimax_m2 --layers 2 --experts 36 --hidden 3072 --inter 1536 --shards 4 --seed 5 \
  --out "$W/www/big" >/dev/null
PORT=18080
# shellcheck source=../tests/remote/nginx_conf.sh
. "$(dirname "$0")/../tests/remote/nginx_conf.sh"
nginx_conf "$W/nginx" "$PORT" "$W/www" >"$W/nginx/nginx.conf"
"$NGINX" -p "$W/nginx" -c nginx.conf -e "$W/nginx/error.log" </dev/null >/dev/null 2>&1 &
NPID=$!
trap 'kill $NPID 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
warm() { dd if=/dev/zero of="$W/warm" bs=16M count=128 2>/dev/null; rm -f "$W/warm"; }
for r in $(seq "$ROUNDS"); do
  rm -rf "$W/o"; warm; echo "local $(t "$B" convert --in "$W/www/big" --out "$W/o" --to native --threads "$THREADS")"
  rm -rf "$W/o"; warm; echo "nginx $(t "$B" convert --in "http://127.0.0.1:$PORT/big/" --out "$W/o" --to native --threads "$THREADS")"
done | sort -k1,1 -k2n | awk '{a[$1]=a[$1]" "$2; n[$1]++; v[$1,n[$1]]=$2}
  END {for (k in a) {m[k]=v[k, int((n[k]+1)/2)]; print k, a[k], " median", m[k]}
       printf "nginx / local: %.2f\n", m["nginx"] / m["local"]}'
