//! The upstream: OnlyFansAPI as the engine sees it.
//!
//! [`Upstream`] is the seam: the engine asks it to send one typing call and gets back an
//! [`Outcome`] (the result, classified by [`UpstreamError::kind`], and the `_meta._rate_limits`
//! the response carried). [`OnlyFansClient`] is the real implementation over hyper; tests
//! substitute a fake. This module knows nothing of sessions, budgets or schedules: it makes one
//! attempt and reports what happened. [`accounts`] adds the two account endpoints (client
//! sessions, authentication status) to the same client.

pub mod accounts;
mod client;
mod error;
mod meta;
mod transport;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use accounts::{AccountCallError, AuthPoll, ClientSession, NewClientSession};
pub use client::{OnlyFansClient, typing_path};
pub use error::{ErrorKind, UpstreamError};
pub use meta::{RateLimits, parse_rate_limits, parse_retry_after};

use crate::ids::SessionKey;

/// A boxed future, so that [`Upstream`] can be used as `Arc<dyn Upstream>`.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Index of an API key in the configured key list (the order of `Secrets::api_keys`).
pub type KeyIndex = usize;

/// What one typing call produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Ok` on a 2xx answer.
    pub result: Result<(), UpstreamError>,
    /// `_meta._rate_limits` (and rate-limit headers) of the answer, when it carried them.
    pub rate_limits: Option<RateLimits>,
    /// Time from sending to the end of the answer (or the failure).
    pub elapsed: Duration,
}

impl Outcome {
    /// The metric label of this outcome: `ok` or the error's label.
    pub fn label(&self) -> &'static str {
        match &self.result {
            Ok(()) => "ok",
            Err(e) => e.label(),
        }
    }
}

/// Sends typing calls. One attempt each: a late typing ping is worthless, so nothing retries.
pub trait Upstream: Send + Sync + 'static {
    /// Sends one typing call for `key` with API key number `api_key`.
    fn typing(&self, key: &SessionKey, api_key: KeyIndex) -> BoxFuture<Outcome>;
}
