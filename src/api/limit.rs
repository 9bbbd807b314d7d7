//! Per-token hook rate limit: a token bucket per hook token (and one for anonymous callers),
//! answered with 429 and `Retry-After` when empty. Protects the engine from one runaway tenant.

use std::sync::Mutex;

use tokio::time::Instant;

use super::auth::Caller;
use super::error::ApiError;
use crate::budget::TokenBucket;

/// Buckets by token index; the last slot is the anonymous caller's.
#[derive(Debug)]
pub struct HookLimiter {
    /// `std` mutex: one refill-and-take, never held across an await.
    buckets: Option<Vec<Mutex<TokenBucket>>>,
}

impl HookLimiter {
    /// `per_second` 0 disables the limit.
    pub fn new(tokens: usize, per_second: u32, burst: u32) -> Self {
        if per_second == 0 {
            return Self { buckets: None };
        }
        let now = Instant::now();
        let capacity = f64::from(burst.max(1));
        let buckets =
            (0..=tokens).map(|_| Mutex::new(TokenBucket::new(capacity, f64::from(per_second), now))).collect();
        Self { buckets: Some(buckets) }
    }

    /// # Errors
    /// [`ApiError::RateLimited`] when the caller's bucket is empty.
    pub fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        let i = caller.token_index.unwrap_or(buckets.len() - 1).min(buckets.len() - 1);
        let now = Instant::now();
        let mut b = buckets[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        b.try_take(0.0, now).map_err(|at| {
            let secs = at.saturating_duration_since(now).as_secs_f64().ceil();
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "at most 60 s")]
            let retry_after_secs = (secs as u64).max(1);
            ApiError::RateLimited { retry_after_secs }
        })
    }
}
