#!/usr/bin/env bash
# The chat-tool integration kit in headless Chromium (examples/composer): keeptyping-composer.js
# on a fake clock and on the real one through relay.mjs, a tab close, a reconnect, and once end
# to end against the real keeptyping wired to its mock upstream, every server on free loopback
# ports. Needs Node 20+, npm and Chromium (`apt-get install chromium`).
#
#   bash .ci/composer.sh                                # builds target/debug/keeptyping
#   bash .ci/composer.sh --bin target/release/keeptyping
#
# Closes with `composer: N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "composer: $*" >&2
  exit 1
}

BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || die "Chromium is missing at $CHROMIUM (apt-get install chromium)"
command -v node >/dev/null || die "node is missing (Node 20+)"
command -v npm >/dev/null || die "npm is missing"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || die "Node 20+ needed, found $(node --version)"

if [ -z "$BIN" ]; then
  cargo build --locked --quiet --bin keeptyping
  BIN=target/debug/keeptyping
fi
[ -x "$BIN" ] || die "no keeptyping binary at $BIN"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

cd examples/composer/test
npm ci --no-audit --no-fund --loglevel=error

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
CHROMIUM="$CHROMIUM" KEEPTYPING_BIN="$BIN" node --test --test-concurrency=1 --test-reporter=spec \
  --test-reporter-destination=stdout composer.test.mjs 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

passed=$(sed -n 's/^ℹ pass \([0-9]*\)$/\1/p' "$log")
failed=$(sed -n 's/^ℹ fail \([0-9]*\)$/\1/p' "$log")
skipped=$(sed -n 's/^ℹ skipped \([0-9]*\)$/\1/p' "$log")
[ -n "$passed" ] && [ -n "$failed" ] || { echo "composer: the test runner printed no summary"; exit 1; }
# The end-to-end test is skipped only without a binary; here one is always given.
if [ "${skipped:-0}" != 0 ]; then
  echo "composer: ${skipped} test(s) skipped"
  failed=$((failed + skipped))
fi
echo "composer: ${passed} passed, ${failed} failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
