#!/usr/bin/env bash
# Property-based API testing of the live service against its own OpenAPI document.
#
# Needs (installed by .ci/run):   pip install 'schemathesis>=4,<5'
#
# Starts `keeptyping mock-upstream` and `keeptyping serve` on loopback with a hook token, runs
# `schemathesis run` on GET /openapi.json with a bounded number of examples per operation and
# the bearer header, checks that no answer is a 5xx and that every answer (status, content
# type, headers, body) matches the document, then stops both. Every route is included; the
# webhook route has a signing secret, so generated (unsigned) webhooks get 401.
#   .ci/schemathesis.sh [MAX_EXAMPLES]   (default 60; uses target/debug/keeptyping, or $KEEPTYPING_BIN)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES=${1:-60}
BIN=${KEEPTYPING_BIN:-target/debug/keeptyping}
[ -x "$BIN" ] || cargo build --locked --bin keeptyping
command -v schemathesis >/dev/null || { echo "schemathesis is not installed: pip install 'schemathesis>=4,<5'" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK_PORT=$(free_port); HOOK_PORT=$(free_port); ADMIN_PORT=$(free_port)
TOKEN="schemathesis-hook-token-$RANDOM$RANDOM"
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" --limit-per-minute 0 >"$WORK/mock.log" 2>&1 &
pids+=($!)
KEEPTYPING__SERVER__LISTEN="127.0.0.1:$HOOK_PORT" \
KEEPTYPING__ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT" \
KEEPTYPING__UPSTREAM__BASE_URL="http://127.0.0.1:$MOCK_PORT" \
KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND=0 \
ONLYFANSAPI_API_KEY="schemathesis-api-key" \
KEEPTYPING_HOOK_TOKEN="$TOKEN" \
KEEPTYPING_WEBHOOK_SECRET="schemathesis-webhook-secret" \
RUST_LOG=warn \
"$BIN" serve >"$WORK/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

status=0
(cd "$WORK" && timeout 600 schemathesis run "http://127.0.0.1:$HOOK_PORT/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --generation-database none \
    --request-timeout 10 \
    --workers 2) || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- service log (last 40 lines)"; tail -n 40 "$WORK/serve.log"
fi
exit "$status"
