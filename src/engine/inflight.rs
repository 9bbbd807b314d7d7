//! The in-flight limit: how many typing calls may be on the wire at once.
//!
//! By Little's law the calls in flight are the call rate times the time each takes: 10,000
//! sessions at one call per 3.5 s are 2,857 calls/s, which keep 3 calls in flight when the
//! upstream answers in 1 ms and 571 when it answers in 200 ms. A fixed limit is either too low
//! for a slow upstream (it caps the rate at limit / latency whatever the CPU) or lets an
//! overloaded process open a connection per waiting call. So the limit follows demand and
//! observed latency: four times the calls the live sessions need in flight (counting at least
//! [`LATENCY_FLOOR`] per call), plus [`HEADROOM`] for bursts (a batch of starts launches its
//! first calls at once), never above `engine.max_in_flight`, the socket budget. Before the first
//! answer the latency is unknown: the limit doubles every 5 ms that the scheduler waits for a
//! permit, so that a slow upstream does not hold the first calls back for its whole latency.
//! Over HTTP/1.1 every call in flight holds one connection, so the connections to the upstream
//! stay below that limit plus the idle pool (`upstream.pool_max_idle_per_host`); over HTTP/2 one
//! connection carries them all.
//!
//! This module is the one owner of the semaphore, its size and the latency estimate; the
//! scheduler takes permits and resizes it once a second, the fire tasks report latencies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits kept above what the live sessions need, for bursts of first calls.
pub(crate) const HEADROOM: usize = 64;

/// Times the calls the live sessions need in flight: the limit bounds a collapse, it must not
/// pace a process that keeps up (at 90,000 sessions a factor of 2 did).
const FACTOR: f64 = 4.0;

/// Latency below which the estimate is not taken at its word: on loopback an answer takes
/// 0.1 ms, and a limit sized for that would bind as soon as the machine is busy.
pub(crate) const LATENCY_FLOOR: Duration = Duration::from_millis(5);

/// Weight of a new latency sample in the moving average, as a shift: 1/16.
const EWMA_SHIFT: u32 = 4;

/// The in-flight limit and what it is computed from.
#[derive(Debug)]
pub(crate) struct InFlight {
    sem: Arc<Semaphore>,
    /// Permits the semaphore holds in all, taken or not.
    limit: AtomicUsize,
    /// Most permits ever: `engine.max_in_flight`.
    max: usize,
    /// Moving average of the typing calls' latency, in microseconds.
    latency_us: AtomicU64,
}

impl InFlight {
    /// A limit of `min(HEADROOM, max)` permits to start with, growing to `max` at most.
    pub(crate) fn new(max: usize) -> Self {
        let start = HEADROOM.min(max);
        Self {
            sem: Arc::new(Semaphore::new(start)),
            limit: AtomicUsize::new(start),
            max,
            latency_us: AtomicU64::new(0),
        }
    }

    /// A permit, if one is free.
    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sem).try_acquire_owned().ok()
    }

    /// The semaphore, to wait for a permit.
    pub(crate) fn semaphore(&self) -> Arc<Semaphore> {
        Arc::clone(&self.sem)
    }

    /// Calls on the wire now.
    pub(crate) fn taken(&self) -> usize {
        self.limit.load(Ordering::Relaxed).saturating_sub(self.sem.available_permits())
    }

    /// The current limit.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Records the latency of one call (racy by design: a lost update only slows the average).
    pub(crate) fn observe(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { sample } else { old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT) };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// The average latency of the last calls.
    pub(crate) fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::Relaxed))
    }

    /// Whether an answer has told the latency yet.
    pub(crate) fn latency_known(&self) -> bool {
        self.latency_us.load(Ordering::Relaxed) != 0
    }

    /// Doubles the limit (up to `engine.max_in_flight`) while no answer has told the latency:
    /// the scheduler calls it every [`LATENCY_FLOOR`] that it waits for a permit. A slow
    /// upstream's first answers take its whole latency, and a limit sized for a fast one would
    /// hold every first call beyond it back until then; a fast one answers before the first
    /// doubling, and a burst of starts then reuses a few connections instead of opening one each.
    pub(crate) fn grow_while_unknown(&self) {
        if self.latency_known() {
            return;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        self.resize(limit.saturating_mul(2).min(self.max));
    }

    /// The limit for `rate` calls per second at the observed latency.
    pub(crate) fn target(&self, rate: f64) -> usize {
        let needed = (rate * self.latency().max(LATENCY_FLOOR).as_secs_f64() * FACTOR).ceil();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "finite, non-negative, capped")]
        let needed = needed.min(1e9) as usize;
        needed.saturating_add(HEADROOM).min(self.max).max(1)
    }

    /// Moves the limit toward `target`: up at once; down only below three quarters of the
    /// limit (no flapping), and only by permits that are free now (a call in flight keeps its
    /// permit; the rest goes at the next resize).
    pub(crate) fn resize(&self, target: usize) {
        let limit = self.limit.load(Ordering::Relaxed);
        if target > limit {
            self.sem.add_permits(target - limit);
            self.limit.store(target, Ordering::Relaxed);
            tracing::debug!(limit = target, latency = ?self.latency(), "in-flight limit raised");
        } else if target < limit - limit / 4 && self.latency_known() {
            let gone = self.sem.forget_permits(limit - target);
            self.limit.store(limit - gone, Ordering::Relaxed);
            tracing::debug!(limit = limit - gone, latency = ?self.latency(), "in-flight limit lowered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_littles_law_between_headroom_and_the_budget() {
        let f = InFlight::new(8192);
        assert_eq!(f.limit(), HEADROOM);
        // No answer yet: while the scheduler waits for a permit the limit doubles, and it is
        // not lowered.
        f.grow_while_unknown();
        assert_eq!(f.limit(), 2 * HEADROOM);
        f.resize(1);
        assert_eq!(f.limit(), 2 * HEADROOM);
        for _ in 0..200 {
            f.observe(Duration::from_millis(200));
        }
        // 30,000 sessions at 3.5 s: 8,571 calls/s; 200 ms: 1,714 in flight, four times that.
        let t = f.target(30_000.0 / 3.5);
        assert_eq!(t, 6_858 + HEADROOM, "{t}");
        f.resize(t);
        assert_eq!(f.limit(), t);
        // Known now: no more doubling.
        f.grow_while_unknown();
        assert_eq!(f.limit(), t);
        // Never above the budget.
        assert_eq!(f.target(1e9), 8192);
        // Down once the need falls well below the limit, by the permits that are free.
        let held = f.try_acquire();
        f.resize(HEADROOM);
        assert_eq!(f.limit(), HEADROOM.max(1));
        drop(held);
        assert_eq!(f.taken(), 0);
        // A small budget is the limit from the start.
        assert_eq!(InFlight::new(3).limit(), 3);
    }
}
