#!/usr/bin/env bash
# What the engine's schedule costs the process in CPU time and context switches, by `perf stat`
# (software counters; no hardware counters needed). Starts the mock and `keeptyping serve` on
# loopback, opens SESSIONS sessions in 50 batches spread over one refire interval (as the load
# bench does), lets them settle for 5 s and counts 10 s of steady refiring.
#
#   bash benches/wakeups.sh [SESSIONS] [BIN]         # default 10000, target/release/keeptyping
#   KEEPTYPING__ENGINE__TICK=0s bash benches/wakeups.sh
#
# Any KEEPTYPING__* variable set by the caller reaches `serve`. With NAIVE_BIN=path/to/the/load/bench
# binary (target/release/deps/load-*), the naive baseline runs instead of `serve`, for comparison. Prints perf's task-clock and
# context-switches lines and the number of typing calls the mock received. With
# MOCK_LATENCY_MS=N the mock answers each typing call after N ms. With
# PERF_RECORD=FILE it then records 8 s of a cpu-clock call-graph profile into FILE
# (`perf report -i FILE --no-children --sort dso,symbol`).
set -euo pipefail
SESSIONS=${1:-10000}
BIN=${2:-target/release/keeptyping}
MOCK_PORT=18188 HOOK_PORT=18180 ADMIN_PORT=18190
command -v perf >/dev/null || { echo "perf is required (apt-get install linux-perf)" >&2; exit 2; }
"$BIN" mock-upstream --listen 127.0.0.1:$MOCK_PORT --limit-per-minute 0 --latency-ms "${MOCK_LATENCY_MS:-0}" >/dev/null 2>&1 &
MOCK=$!
RUST_LOG=warn KEEPTYPING__SERVER__LISTEN=127.0.0.1:$HOOK_PORT KEEPTYPING__ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT \
  KEEPTYPING__UPSTREAM__BASE_URL=http://127.0.0.1:$MOCK_PORT ONLYFANSAPI_API_KEY=sk_wakeups KEEPTYPING_HOOK_TOKEN=bench_hook_token \
  KEEPTYPING__BUDGET__LIMIT_PER_MINUTE=100000000 \
  KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND=0 KEEPTYPING__ENGINE__IDLE_TIMEOUT=10m \
  KEEPTYPING_BENCH_LISTEN=127.0.0.1:$HOOK_PORT KEEPTYPING_BENCH_UPSTREAM=http://127.0.0.1:$MOCK_PORT \
  bash -c 'if [ -n "${NAIVE_BIN:-}" ]; then KEEPTYPING_BENCH_CHILD=naive exec "$NAIVE_BIN"; else exec "$0" serve; fi' "$BIN" \
  >/dev/null 2>&1 &
SERVE=$!
trap 'kill $SERVE $MOCK 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  { curl -sf http://127.0.0.1:$ADMIN_PORT/readyz || curl -sf http://127.0.0.1:$HOOK_PORT/livez; } >/dev/null && break
  sleep 0.1
done
python3 - "$SESSIONS" "$HOOK_PORT" <<'PY'
import json, sys, time, urllib.request
n, port = int(sys.argv[1]), sys.argv[2]
per = max(1, n // 50)
t0 = time.time()
for b in range(0, n, per):
    while time.time() < t0 + (b // per) * 3.5 / 50:
        time.sleep(0.001)
    # A batch request carries at most 500 events.
    for c in range(b, min(n, b + per), 500):
        events = [{"action": "start", "account_id": "acct_0123456789abcdef0123456789abcdef", "chat_id": str(100000 + i)}
                  for i in range(c, min(n, b + per, c + 500))]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/typing/batch", data=json.dumps({"events": events}).encode(),
                                     headers={"authorization": "Bearer bench_hook_token", "content-type": "application/json"})
        urllib.request.urlopen(req).read()
PY
sleep 5
perf stat -e task-clock,context-switches -p $SERVE -- sleep 10 2>&1 | grep -E "task-clock|context-switches"
if [ -n "${PERF_RECORD:-}" ]; then
  perf record -e cpu-clock -F 2000 -g -p $SERVE -o "$PERF_RECORD" -- sleep 8 >/dev/null 2>&1
fi
echo "typing calls received: $(curl -s "http://127.0.0.1:$MOCK_PORT/_mock/requests.tsv?kind=typing" | wc -l)"
