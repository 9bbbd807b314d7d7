//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), JSON when
//! `KEEPTYPING_LOG_FORMAT=json`. Secrets never reach a log line: keys are sensitive header
//! values and tokens are held as digests, so there is nothing to redact here.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; later calls do nothing.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
