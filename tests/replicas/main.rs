#![allow(
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    reason = "a test binary: helpers are shared between its modules and may panic"
)]

//! Scale-out on Redis, end to end, with real processes: `redis-server` (one server, or a local
//! three-master Redis Cluster), three `keeptyping serve` replicas sharing it, and the mock
//! upstream, all started by each test on free loopback ports and killed when it ends. A checker
//! over the mock's record of typing calls asserts the promises of the Redis backend
//! (DESIGN.md section 3): one refire loop per chat across replicas, nothing after a stop answered
//! by any replica, one budget across replicas, adoption after `kill -9` and after a freeze,
//! hand-over on SIGTERM, 503s while Redis is unavailable, and batched Redis work.
//!
//! `redis-server` and `redis-cli` must be on PATH (`.ci/run` installs them): without them every
//! test here fails, it never skips. The tests take one process-wide lock, so that they run one
//! at a time even under `cargo test`'s parallel runner (their timing figures assume the machine
//! is not running another three replicas). Each test prints what it measured with `eprintln!`:
//! `cargo test --test replicas -- --nocapture --test-threads 1`.

#[allow(dead_code, reason = "shared with other test targets; this one uses a part of it")]
#[path = "../child/mod.rs"]
mod child;

mod checker;
mod fleet;
mod servers;

mod budget;
mod capped;
mod cost;
mod failover;
mod rolling;
mod routing;
mod smoke;
mod unavailable;
