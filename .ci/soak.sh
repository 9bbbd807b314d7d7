#!/usr/bin/env bash
# Soak run (loopback only, bounded, stops by itself). Needs only python3 (standard library).
#   .ci/soak.sh            full run: 2,000 sessions, 10 minutes, mock restarted twice
#   .ci/soak.sh --short    CI run: 2,000 sessions, 60 s (warm-up 20 s), mock restarted twice
# Extra arguments go to .ci/soak.py (e.g. --bin target/release/keeptyping).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KEEPTYPING_BIN:-target/debug/keeptyping}
[ -x "$BIN" ] || cargo build --locked --bin keeptyping
if [ "${1:-}" = "--short" ]; then
    shift
    exec python3 .ci/soak.py --bin "$BIN" --duration 60 --warmup 20 "$@"
fi
exec python3 .ci/soak.py --bin "$BIN" "$@"
