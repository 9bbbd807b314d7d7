//! Replay protection for OnlyFansAPI webhooks. Their envelope carries neither a timestamp nor an
//! event id, so a captured signed body stays valid forever; the only defence left is to refuse a
//! body already seen. [`ReplayGuard`] remembers the SHA-256 of each verified body for
//! [`REPLAY_WINDOW`], at most [`MAX_REMEMBERED`] of them (the oldest are forgotten first), so its
//! memory is bounded whatever arrives.
//!
//! Only verified bodies are remembered: an unsigned sender cannot fill the memory.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// How long a verified webhook body is remembered: a replay within it is dropped.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Most bodies remembered at once (32-byte digests: well under a megabyte).
pub const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
struct Seen {
    /// Digests in arrival order, with when they arrived.
    order: VecDeque<(Instant, [u8; 32])>,
    digests: HashSet<[u8; 32]>,
}

/// Verified webhook bodies seen recently.
#[derive(Debug)]
pub struct ReplayGuard {
    window: Duration,
    capacity: usize,
    /// `std` mutex: a few pushes and pops, never held across an `.await`.
    seen: Mutex<Seen>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(REPLAY_WINDOW, MAX_REMEMBERED)
    }
}

// === impl ReplayGuard ===

impl ReplayGuard {
    /// A guard remembering bodies for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self { window, capacity: capacity.max(1), seen: Mutex::new(Seen::default()) }
    }

    /// Records `body` at `now`; `false` when the same body was recorded within the window
    /// (a replay, to be dropped).
    pub fn first_sighting(&self, body: &[u8], now: Instant) -> bool {
        let digest: [u8; 32] = Sha256::digest(body).into();
        // A poisoned lock only means a panic elsewhere mid-push; the set is still usable.
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((at, d)) = seen.order.front().copied() {
            if now.saturating_duration_since(at) < self.window && seen.order.len() < self.capacity {
                break;
            }
            seen.order.pop_front();
            seen.digests.remove(&d);
        }
        if !seen.digests.insert(digest) {
            return false;
        }
        seen.order.push_back((now, digest));
        true
    }

    /// Forgets `body`: it was not applied (the shared state was unavailable), so the sender's
    /// retry must not be dropped as a replay.
    pub fn forget(&self, body: &[u8]) {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.digests.remove(&digest) {
            seen.order.retain(|(_, d)| *d != digest);
        }
    }

    /// How many bodies are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_refused_within_the_window_and_accepted_after_it() {
        let guard = ReplayGuard::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();

        assert!(guard.first_sighting(b"a", t0));
        assert!(!guard.first_sighting(b"a", t0 + Duration::from_secs(59)));
        assert!(guard.first_sighting(b"b", t0 + Duration::from_secs(1)));
        assert!(guard.first_sighting(b"a", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn memory_stays_bounded_forgetting_the_oldest_first() {
        let guard = ReplayGuard::new(Duration::from_secs(3600), 3);
        let t0 = Instant::now();
        for body in [&b"1"[..], b"2", b"3", b"4", b"5"] {
            assert!(guard.first_sighting(body, t0));
        }

        assert_eq!(guard.len(), 3);
        assert!(!guard.first_sighting(b"5", t0), "the newest is remembered");
        assert!(guard.first_sighting(b"1", t0), "the oldest was forgotten");
    }
}
