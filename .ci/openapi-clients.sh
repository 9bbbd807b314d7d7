#!/usr/bin/env bash
# Generated clients against the live service: starts `keeptyping mock-upstream` and
# `keeptyping serve` on free loopback ports, fetches the live /openapi.json, generates
#   - a Python client with openapi-python-client (PyPI), refusing any generator warning (a
#     schema it cannot parse makes it skip the route), and
#   - a TypeScript client with openapi-typescript + openapi-fetch (npm, examples/clients/ts),
#     type-checked with tsc against the generated types,
# then calls start, batch, stop, sessions and budget (and one error) with each, asserting every
# answer (examples/clients/python/calls.py, examples/clients/ts/calls.ts).
#
# Needs python3 with pip, Node 20+ and npm.
#   bash .ci/openapi-clients.sh                                # builds target/debug/keeptyping
#   bash .ci/openapi-clients.sh --bin target/release/keeptyping
#
# Closes with `openapi-clients: N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

die() {
  echo "openapi-clients: $*" >&2
  exit 1
}

BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

command -v python3 >/dev/null || die "python3 is missing"
command -v node >/dev/null || die "node is missing (Node 20+)"
command -v npm >/dev/null || die "npm is missing"
command -v curl >/dev/null || die "curl is missing"
if ! command -v openapi-python-client >/dev/null; then
  python3 -m pip install -q --root-user-action=ignore openapi-python-client
fi
if [ -z "$BIN" ]; then
  cargo build --locked --quiet --bin keeptyping
  BIN=target/debug/keeptyping
fi
[ -x "$BIN" ] || die "no keeptyping binary at $BIN"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port); HOOK_PORT=$(free_port); ADMIN_PORT=$(free_port)
TOKEN="openapi-clients-token-$RANDOM$RANDOM"
ACCOUNT="acct_0123456789abcdef0123456789abcdef"
BASE="http://127.0.0.1:$HOOK_PORT"
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" --limit-per-minute 0 >"$WORK/mock.log" 2>&1 &
pids+=($!)
KEEPTYPING__SERVER__LISTEN="127.0.0.1:$HOOK_PORT" \
KEEPTYPING__ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT" \
KEEPTYPING__UPSTREAM__BASE_URL="http://127.0.0.1:$MOCK_PORT" \
ONLYFANSAPI_API_KEY="openapi-clients-api-key" \
KEEPTYPING_HOOK_TOKEN="$TOKEN" \
RUST_LOG=warn \
"$BIN" serve >"$WORK/serve.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { tail -n 40 "$WORK/serve.log"; die "the service did not become ready"; }
curl -fsS "$BASE/openapi.json" -o "$WORK/openapi.json" || die "GET /openapi.json failed"

passed=0
failed=0
tally() { # tally LOG LABEL: adds the `LABEL: N passed, M failed` line of LOG
  local line
  line=$(grep -E "^$2: [0-9]+ passed, [0-9]+ failed$" "$1" | tail -n 1 || true)
  if [ -z "$line" ]; then
    echo "openapi-clients: $2 printed no summary"
    failed=$((failed + 1))
    return
  fi
  passed=$((passed + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')))
  failed=$((failed + $(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')))
}

echo "--- python: openapi-python-client $(openapi-python-client --version 2>/dev/null | awk '{print $NF}')"
if (cd "$WORK" && openapi-python-client generate --path openapi.json --output-path py --fail-on-warning) \
  >"$WORK/pygen.log" 2>&1; then
  set +e
  python3 examples/clients/python/calls.py "$BASE" "$TOKEN" "$ACCOUNT" "$WORK/py" 2>&1 | tee "$WORK/py.log"
  set -e
  tally "$WORK/py.log" python
else
  cat "$WORK/pygen.log"
  echo "FAIL python: the generator refused the document"
  failed=$((failed + 1))
fi

echo "--- typescript: openapi-typescript + openapi-fetch"
cd "$ROOT/examples/clients/ts"
rm -rf generated dist
npm ci --no-audit --no-fund --loglevel=error
if OPENAPI_URL="$BASE/openapi.json" npm run --silent generate && npm run --silent build; then
  set +e
  node dist/calls.js "$BASE" "$TOKEN" "$ACCOUNT" 2>&1 | tee "$WORK/ts.log"
  set -e
  tally "$WORK/ts.log" typescript
else
  echo "FAIL typescript: generating or type-checking the client failed"
  failed=$((failed + 1))
fi
cd "$ROOT"

if [ "$failed" -ne 0 ]; then
  echo "--- service log (last 40 lines)"
  tail -n 40 "$WORK/serve.log"
fi
echo "openapi-clients: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
