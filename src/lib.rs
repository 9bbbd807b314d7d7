//! keeptyping keeps OnlyFans' "Model is typing..." indicator alive while a human chatter
//! composes a reply, and stops it the instant the reply is sent.
//!
//! # Layout
//!
//! ```text
//! api (axum hooks, auth, validation)  ──►  engine (sessions + scheduler)  ──►  upstream (reqwest)
//!                                               │
//!                                               └──►  budget (token buckets per budget name)
//! api  ──►  accounts (client sessions, auth-attempt watcher on tokio-cron-scheduler, webhook
//!           signatures)  ──►  upstream
//! config, metrics, shutdown, ids, limits: leaves that anything may use
//! mock: a stand-in OnlyFansAPI for tests, the demo and benchmarks; demo: the one-command tour
//! server: the bounded accept loop both listeners run (header read timeout, connection cap)
//! app: wires it all together; main.rs only parses the command line
//! ```
//!
//! Dependencies point one way: `engine` never imports axum, handlers never call `upstream` for
//! typing and never spawn tasks, `upstream` knows nothing of sessions.

pub mod accounts;
pub mod api;
pub mod app;
pub mod budget;
pub mod config;
pub mod demo;
pub mod engine;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod mock;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod upstream;
