#!/usr/bin/env bash
# Fuzzes hook body parsing, id validation and upstream _meta / Retry-After parsing, each target
# for a bounded time; fails on the first crash (the reproducer is left in fuzz/artifacts/).
#
# Needs (installed by .ci/run): the nightly toolchain, and `cargo install --locked cargo-fuzz`.
#   .ci/fuzz.sh [SECONDS_PER_TARGET]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${1:-20}
# fuzz/Cargo.lock pins the same versions as the main crate's lock; fail if it has gone stale.
cargo +nightly fetch --locked
cargo +nightly fuzz build
for target in hook_body ids meta; do
    echo "==> fuzz $target for ${SECONDS_PER_TARGET}s"
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
done
