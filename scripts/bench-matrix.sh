#!/usr/bin/env bash
# Runs `mq bench --baseline` over message sizes and producer/consumer
# counts against one broker and prints one Markdown table row per run
# (the tables of BENCHMARKS.md).
#
# Usage: scripts/bench-matrix.sh URL "SIZE:COUNT ..." "PRODUCERSxCONSUMERS ..."
#   e.g. scripts/bench-matrix.sh "$MQ_TEST_RABBIT_URL" "16:50000 1024:50000 65536:5000" "1x1 4x4"
#
# Environment: MQ_BIN (default: build and use target/release/mq with every
# backend feature), MQ_BENCH_ARGS (extra `mq bench` options).
set -euo pipefail
url=$1
sizes=${2:-"16:20000 1024:20000 65536:2000"}
shapes=${3:-"1x1 4x4"}
if [[ -z ${MQ_BIN:-} ]]; then
  cargo build -q --release -p mq-cli
  MQ_BIN="${CARGO_TARGET_DIR:-target}/release/mq"
fi
echo "| size | producers x consumers | count | SDK publish msg/s | raw publish msg/s | ratio | SDK consume+ack msg/s | raw consume+ack msg/s | ratio | SDK e2e p50 / p99 ms | raw e2e p50 / p99 ms | SDK / raw peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for sc in $sizes; do
  size=${sc%%:*} count=${sc##*:}
  for shape in $shapes; do
    p=${shape%%x*} c=${shape##*x}
    # shellcheck disable=SC2086
    if ! out=$("$MQ_BIN" --json bench "$url" --count "$count" --size "$size" \
      --producers "$p" --consumers "$c" --baseline ${MQ_BENCH_ARGS:-} 2>/tmp/bench-matrix.err); then
      echo "| $size | ${p}x$c | $count | failed: $(tail -n1 /tmp/bench-matrix.err) |"
      continue
    fi
    python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
s, w, a = r["sdk"], r["raw"], r["args"]
def rate(x, k): return x[k]["msg_per_s"]
def ratio(k): return f'{100 * rate(s, k) / rate(w, k):.0f}%'
def lat(x): return f'{x["latency_us"]["p50"] / 1000:.1f} / {x["latency_us"]["p99"] / 1000:.1f}'
def rss(x): return f'{(x["peak_rss_bytes"] or 0) / 2**20:.0f}'
print(f'| {a["size"]} B | {a["producers"]}x{a["consumers"]} | {a["count"]} '
      f'| {rate(s, "publish"):,.0f} | {rate(w, "publish"):,.0f} | {ratio("publish")} '
      f'| {rate(s, "consume"):,.0f} | {rate(w, "consume"):,.0f} | {ratio("consume")} '
      f'| {lat(s)} | {lat(w)} | {rss(s)} / {rss(w)} |')
PY
  done
done
