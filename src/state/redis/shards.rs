//! Which virtual shards this replica owns, until when by its own monotonic clock, and which
//! replica owns each of the others: read by every typing call (the fence) and every hook.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::wire::SHARDS;

/// The shard table of one replica.
#[derive(Debug)]
pub(crate) struct Shards {
    /// The process's reference instant: validities are milliseconds after it.
    epoch: Instant,
    /// Per shard: this replica's lease is valid until this many ms after `epoch` (0: not owned).
    valid_until: [AtomicU64; SHARDS],
    /// Per shard: hooks are applied here (owned, adopted, not being handed over).
    serving: [AtomicBool; SHARDS],
    /// Per shard: its owner as last read from Redis.
    owners: RwLock<Vec<Option<String>>>,
    /// Live replicas as last read from Redis.
    members: RwLock<Vec<String>>,
}

impl Shards {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            valid_until: std::array::from_fn(|_| AtomicU64::new(0)),
            serving: std::array::from_fn(|_| AtomicBool::new(false)),
            owners: RwLock::new(vec![None; SHARDS]),
            members: RwLock::new(Vec::new()),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this replica's lease on `shard` is valid at `now`.
    pub(crate) fn valid(&self, shard: usize, now: Instant) -> bool {
        self.valid_until.get(shard).is_some_and(|v| v.load(Ordering::Acquire) > self.ms(now))
    }

    /// Whether hooks for `shard` are applied here now.
    pub(crate) fn serving(&self, shard: usize, now: Instant) -> bool {
        self.serving.get(shard).is_some_and(|s| s.load(Ordering::Acquire)) && self.valid(shard, now)
    }

    /// The lease on `shard` holds until `until`.
    pub(crate) fn renew(&self, shard: usize, until: Instant) {
        if let Some(v) = self.valid_until.get(shard) {
            v.store(self.ms(until), Ordering::Release);
        }
    }

    /// This replica no longer owns `shard`.
    pub(crate) fn drop_lease(&self, shard: usize) {
        self.set_serving(shard, false);
        if let Some(v) = self.valid_until.get(shard) {
            v.store(0, Ordering::Release);
        }
    }

    pub(crate) fn set_serving(&self, shard: usize, on: bool) {
        if let Some(s) = self.serving.get(shard) {
            s.store(on, Ordering::Release);
        }
    }

    /// Drops every lease (Redis unreachable for longer than they last).
    pub(crate) fn lapse_all_before(&self, now: Instant) {
        let now = self.ms(now);
        for (i, v) in self.valid_until.iter().enumerate() {
            if v.load(Ordering::Acquire) <= now {
                self.set_serving(i, false);
            }
        }
    }

    /// Shards this replica owns (valid or not yet known to have lapsed).
    pub(crate) fn owned(&self) -> Vec<usize> {
        (0..SHARDS).filter(|s| self.valid_until[*s].load(Ordering::Acquire) > 0).collect()
    }

    /// Number of shards with a valid lease at `now`.
    pub(crate) fn owned_count(&self, now: Instant) -> usize {
        (0..SHARDS).filter(|s| self.valid(*s, now)).count()
    }

    pub(crate) fn owner(&self, shard: usize) -> Option<String> {
        self.owners.read().ok().and_then(|o| o.get(shard).cloned().flatten())
    }

    pub(crate) fn set_view(&self, owners: Vec<Option<String>>, members: Vec<String>) {
        if let Ok(mut o) = self.owners.write() {
            *o = owners;
        }
        if let Ok(mut m) = self.members.write() {
            *m = members;
        }
    }

    pub(crate) fn members(&self) -> Vec<String> {
        self.members.read().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The replica that should own `shard` among `members` (rendezvous hashing): when a replica
/// joins or leaves, only the shards it wins or held move.
pub(crate) fn preferred(shard: usize, members: &[String]) -> Option<&str> {
    members.iter().max_by_key(|m| score(shard, m)).map(String::as_str)
}

fn score(shard: usize, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (shard as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in member.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final mix, so that members differing in their last byte spread evenly.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// How much sooner than Redis lets others take a shard over a replica stops sending for it:
/// for clock-rate differences between machines and the time a renewal takes to reach Redis.
pub(crate) fn safety_margin(lease: Duration) -> Duration {
    Duration::from_millis(50) + lease / 20
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_shards_of_a_replica_that_joins() {
        let three: Vec<String> = ["r0", "r1", "r2"].map(str::to_owned).to_vec();
        let four: Vec<String> = ["r0", "r1", "r2", "r3"].map(str::to_owned).to_vec();
        let mut moved = 0;
        let mut per = std::collections::HashMap::new();
        for s in 0..SHARDS {
            let a = preferred(s, &three).unwrap();
            let b = preferred(s, &four).unwrap();
            *per.entry(a).or_insert(0) += 1;
            if a != b {
                assert_eq!(b, "r3", "shard {s} moved between old replicas");
                moved += 1;
            }
        }
        assert!(moved > 0 && moved < SHARDS / 2, "moved {moved}");
        assert!(per.values().all(|n| *n >= 4), "uneven: {per:?}");
    }
}
