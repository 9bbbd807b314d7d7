//! The last few failed typing calls, for the status page on the admin listener.
//!
//! A bounded ring of [`RecentError`]s: when, which platform, the `outcome` label of
//! `keeptyping_refires_total` and the HTTP status if there was one. It deliberately keeps no
//! account, chat, fan or key identifier and no message text, so that showing it anywhere
//! leaks nothing. Counting and alerting stay with the metrics; this is only a glance at "what
//! went wrong just now".

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::upstream::UpstreamError;

/// How many failures are kept.
pub const RECENT_ERRORS: usize = 20;

/// One failed typing call.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    /// Wall-clock time of the answer (or failure), in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `onlyfans`, `fansly` or `fanvue`.
    pub platform: &'static str,
    /// The `outcome` label (`rate_limited`, `unauthorized`, `server_error`, `timeout`, ...).
    pub outcome: &'static str,
    /// The HTTP status, when the upstream answered at all.
    pub status: Option<u16>,
}

/// The ring. The `std` mutex guards a push or a copy of at most [`RECENT_ERRORS`] small
/// records and is never held across an `.await`.
#[derive(Debug, Default)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<RecentError>>,
}

// === impl RecentErrors ===

impl RecentErrors {
    /// Records a failed typing call on `platform`, dropping the oldest beyond the bound.
    pub fn record(&self, platform: &'static str, error: &UpstreamError) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let status = match error {
            UpstreamError::Status { status, .. } => Some(*status),
            UpstreamError::Timeout | UpstreamError::Network(_) | UpstreamError::InvalidBody(_) => None,
        };
        let entry = RecentError { at_unix_ms, platform, outcome: error.label(), status };
        // A poisoned lock only means a panic elsewhere mid-push; the ring is still usable.
        let mut ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() == RECENT_ERRORS {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The kept failures, newest first.
    pub fn list(&self) -> Vec<RecentError> {
        let ring = self.ring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_failures_newest_first() {
        let recent = RecentErrors::default();
        for status in 500..(500 + 25) {
            recent.record("onlyfans", &UpstreamError::Status { status, retry_after: None });
        }
        recent.record("fansly", &UpstreamError::Timeout);

        let list = recent.list();

        assert_eq!(list.len(), RECENT_ERRORS);
        assert_eq!(list[0].platform, "fansly");
        assert_eq!(list[0].outcome, "timeout");
        assert_eq!(list[0].status, None);
        assert_eq!(list[1].status, Some(524));
        assert_eq!(list[RECENT_ERRORS - 1].status, Some(506));
    }
}
