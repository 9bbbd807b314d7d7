//! A sliding window of grants, counted in slots of a 600th of the window.
//!
//! The budget must know how many typing calls it granted within the last period (60 s), and
//! when enough of them will have left it for one more to fit. Keeping every grant's instant
//! costs 16 bytes per call for a whole period: at one call per 3.5 s that is 274 bytes per
//! session, and a full window is megabytes that fill up during the first minute. Counts per
//! slot cost a fixed 2.4 KB per window instead.
//!
//! A grant counts until its slot has wholly left the period, up to one slot (100 ms of 60 s)
//! longer than its own instant would: the window never undercounts, so no period ever carries
//! more grants than it allows.

use std::time::Duration;

use tokio::time::Instant;

/// Slots per period.
const SLOTS: u64 = 600;

/// Slots kept: the period's, plus the one the period's start falls in.
const RING: usize = SLOTS as usize + 1;

#[derive(Debug, Clone)]
pub(super) struct GrantWindow {
    /// Instant of slot 0.
    base: Instant,
    /// Length of one slot.
    width: Duration,
    /// Grants per slot; slot `s` is at `s % RING`.
    counts: Box<[u32]>,
    /// The newest slot advanced to.
    head: u64,
    /// Grants in the slots kept.
    total: u64,
}

impl GrantWindow {
    /// An empty window over `period`, starting at `now`.
    pub(super) fn new(period: Duration, now: Instant) -> Self {
        #[allow(clippy::cast_possible_truncation, reason = "SLOTS is 600")]
        let width = (period / SLOTS as u32).max(Duration::from_nanos(1));
        Self { base: now, width, counts: vec![0; RING].into_boxed_slice(), head: 0, total: 0 }
    }

    fn slot(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_nanos() / self.width.as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }

    /// The slots entered between the last advance and `now` (empty if none): entering slot `s`
    /// reuses the place of slot `s - RING`, which has left the period.
    fn entering(&self, now: Instant) -> std::ops::RangeInclusive<u64> {
        let cur = self.slot(now).max(self.head);
        (self.head + 1)..=cur.min(self.head + RING as u64)
    }

    /// Forgets the grants that left the period by `now`.
    pub(super) fn advance(&mut self, now: Instant) {
        for s in self.entering(now) {
            let i = Self::index(s);
            self.total -= u64::from(self.counts[i]);
            self.counts[i] = 0;
        }
        self.head = self.slot(now).max(self.head);
    }

    /// Records one grant at `now`.
    pub(super) fn push(&mut self, now: Instant) {
        self.advance(now);
        let i = Self::index(self.head);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
    }

    /// Grants within the period as of the last [`Self::advance`] or [`Self::push`].
    pub(super) fn len(&self) -> usize {
        usize::try_from(self.total).unwrap_or(usize::MAX)
    }

    /// Grants within the period at `now`, without forgetting the others.
    pub(super) fn len_at(&self, now: Instant) -> usize {
        let gone: u64 = self.entering(now).map(|s| u64::from(self.counts[Self::index(s)])).sum();
        usize::try_from(self.total - gone).unwrap_or(usize::MAX)
    }

    /// When `k` (at least 1) of the grants kept will have left the period, oldest first; `None`
    /// if fewer than `k` are kept.
    pub(super) fn frees_at(&self, k: usize) -> Option<Instant> {
        let k = u64::try_from(k.max(1)).unwrap_or(u64::MAX);
        let oldest = self.head.saturating_sub(SLOTS);
        let mut left = 0;
        for s in oldest..=self.head {
            left += u64::from(self.counts[Self::index(s)]);
            if left >= k {
                // The slot's end plus one period: every grant in it has left by then.
                let end = self.width.checked_mul(u32::try_from(s + 1).ok()?)?;
                return Some(self.base + end + self.width * SLOTS as u32);
            }
        }
        None
    }

    fn index(slot: u64) -> usize {
        usize::try_from(slot % RING as u64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(60);

    #[test]
    fn grants_leave_once_their_slot_has_left_the_period() {
        let t0 = Instant::now();
        let mut w = GrantWindow::new(PERIOD, t0);
        w.push(t0);
        w.push(t0 + Duration::from_millis(150));
        w.push(t0 + Duration::from_secs(30));
        assert_eq!(w.len(), 3);
        // The first slot (0 to 100 ms) has left at 60.1 s, not a nanosecond before.
        assert_eq!(w.len_at(t0 + Duration::from_millis(60_099)), 3);
        assert_eq!(w.len_at(t0 + Duration::from_millis(60_100)), 2);
        assert_eq!(w.len_at(t0 + Duration::from_millis(60_200)), 1);
        w.advance(t0 + Duration::from_millis(60_100));
        assert_eq!(w.len(), 2);
        w.advance(t0 + Duration::from_secs(500));
        assert_eq!((w.len(), w.len_at(t0 + Duration::from_secs(900))), (0, 0));
    }

    #[test]
    fn frees_at_is_when_the_kth_oldest_grant_has_left() {
        let t0 = Instant::now();
        let mut w = GrantWindow::new(PERIOD, t0);
        for ms in [10, 20, 250, 5_000] {
            w.push(t0 + Duration::from_millis(ms));
        }
        let after = |ms| Some(t0 + PERIOD + Duration::from_millis(ms));
        assert_eq!(w.frees_at(1), after(100));
        assert_eq!(w.frees_at(2), after(100));
        assert_eq!(w.frees_at(3), after(300));
        assert_eq!(w.frees_at(4), after(5_100));
        assert_eq!(w.frees_at(5), None);
        // Once that instant has come, the window holds one fewer than it did.
        assert_eq!(w.len_at(t0 + PERIOD + Duration::from_millis(300)), 1);
    }

    #[test]
    fn no_period_ever_holds_more_grants_than_the_window_counts() {
        // Asks every 3 ms, and a cap of 100 within any 600 ms: granted only while the window
        // counts fewer, the instants granted never put more than 100 in any 600 ms.
        let period = Duration::from_millis(600);
        let t0 = Instant::now();
        let mut w = GrantWindow::new(period, t0);
        let mut granted = Vec::new();
        for i in 0..2_000u32 {
            let now = t0 + Duration::from_millis(3) * i;
            w.advance(now);
            if w.len() < 100 {
                w.push(now);
                granted.push(now);
            }
        }
        for (i, start) in granted.iter().enumerate() {
            let within = granted[i..].iter().take_while(|t| t.duration_since(*start) < period).count();
            assert!(within <= 100, "{within} grants in the {period:?} from grant {i}");
        }
        assert!(granted.len() > 900, "only {} granted in 10 periods", granted.len());
    }
}
