//! Per-token hook rate limit: a keyed GCRA limiter (`governor`) with one cell per hook token and
//! one for anonymous callers, answered with 429 and `Retry-After` when the caller is over it.
//! Protects the engine from one runaway tenant.
//!
//! `hooks.rate_limit_per_second` is the sustained rate and `hooks.rate_limit_burst` how many
//! hooks a token that has been quiet may send at once (a token bucket of that capacity, refilled
//! at that rate).

use std::num::NonZeroU32;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::auth::Caller;
use super::error::ApiError;

/// The longest `Retry-After` the limiter answers (a refill of one hook takes at most 1 s).
const MAX_RETRY_AFTER_SECS: u64 = 60;

/// Keyed by the token's index in the configured list; `None` is the anonymous caller.
#[derive(Debug)]
pub struct HookLimiter {
    /// `None` when the limit is off.
    limiter: Option<DefaultKeyedRateLimiter<Option<usize>>>,
    /// Indices below this are configured tokens, each with its own cell.
    tokens: usize,
}

impl HookLimiter {
    /// `per_second` 0 disables the limit; `burst` 0 counts as 1. `tokens` (the number of
    /// configured tokens) bounds the keys: an index past it shares the anonymous caller's cell.
    pub fn new(tokens: usize, per_second: u32, burst: u32) -> Self {
        let Some(rate) = NonZeroU32::new(per_second) else {
            return Self { limiter: None, tokens };
        };
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self { limiter: Some(DefaultKeyedRateLimiter::keyed(quota)), tokens }
    }

    /// # Errors
    /// [`ApiError::RateLimited`] when the caller is over its rate, with the whole seconds until
    /// its next hook would be allowed (at least 1).
    pub fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = caller.token_index.filter(|i| *i < self.tokens);
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited { retry_after_secs: secs.clamp(1, MAX_RETRY_AFTER_SECS) }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn caller(token_index: Option<usize>) -> Caller {
        Caller::for_tests(token_index)
    }

    fn allowed(limiter: &HookLimiter, who: &Caller, n: usize) -> usize {
        (0..n).filter(|_| limiter.check(who).is_ok()).count()
    }

    #[test]
    fn a_quiet_token_gets_its_burst_then_429_with_retry_after() {
        let limiter = HookLimiter::new(2, 2, 3);
        let a = caller(Some(0));
        assert_eq!(allowed(&limiter, &a, 10), 3);
        match limiter.check(&a) {
            Err(ApiError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }

    #[test]
    fn tokens_and_the_anonymous_caller_are_limited_apart() {
        let limiter = HookLimiter::new(2, 1, 2);
        assert_eq!(allowed(&limiter, &caller(Some(0)), 5), 2);
        assert_eq!(allowed(&limiter, &caller(Some(1)), 5), 2);
        assert_eq!(allowed(&limiter, &caller(None), 5), 2);
        // An index outside the configured list is counted with the anonymous caller.
        assert_eq!(allowed(&limiter, &caller(Some(7)), 5), 0);
    }

    #[test]
    fn the_bucket_refills_at_the_configured_rate() {
        let limiter = HookLimiter::new(1, 10, 1);
        let a = caller(Some(0));
        assert_eq!(allowed(&limiter, &a, 5), 1);
        // One hook per 100 ms at 10/s: after 250 ms one more (not two: the burst is 1).
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(allowed(&limiter, &a, 5), 1);
    }

    #[test]
    fn zero_per_second_is_off_and_zero_burst_is_one() {
        let off = HookLimiter::new(1, 0, 0);
        assert_eq!(allowed(&off, &caller(Some(0)), 1000), 1000);
        let one = HookLimiter::new(1, 1, 0);
        assert_eq!(allowed(&one, &caller(Some(0)), 5), 1);
    }
}
