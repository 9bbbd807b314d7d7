//! The session table: the only owner of the `DashMap` of live typing sessions.
//!
//! Every method is synchronous and short, and no guard escapes it, so no map guard is ever held
//! across an `.await` (dashmap#79). Hook handlers (through [`super::Engine`]) and fire tasks
//! update it; the scheduler reads it to decide whether a deadline still belongs to a live
//! session of the same generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::BudgetIndex;
use crate::ids::SessionKey;
use crate::upstream::KeyIndex;

/// Most holders one chat may have at once; beyond it the oldest lease is replaced.
pub const MAX_HOLDERS: usize = 16;

/// How urgently a session's indicator matters when the budget is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Routine.
    #[default]
    Normal,
    /// Kept lit before normal sessions.
    High,
}

/// One holder of a session (a chatter, or a tab when no chatter id is given).
#[derive(Debug, Clone)]
pub struct Holder {
    /// The chatter id, `None` for an anonymous holder.
    pub id: Option<Arc<str>>,
    /// The holder's idle lease ends here.
    pub lease_until: Instant,
}

/// A live typing session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Incarnation number: deadlines and answers of an older incarnation are ignored.
    pub generation: u64,
    /// The API key its calls use.
    pub api_key: KeyIndex,
    /// The budget it spends from.
    pub budget: BudgetIndex,
    /// Its priority (the highest any holder asked for).
    pub priority: Priority,
    /// When it started.
    pub started_at: Instant,
    /// It ends here whatever happens.
    pub max_until: Instant,
    /// Who holds it.
    pub holders: Vec<Holder>,
    /// The one pending deadline; a queued deadline with another instant is stale.
    pub next_due: Instant,
    /// A typing call for it is on the wire.
    pub in_flight: bool,
    /// Whether a typing call has been launched.
    pub first_sent: bool,
    /// The next typing call does not leave before this instant: one interval after the last
    /// one left (a little sooner for the second call of a session started in a burst, see
    /// [`super::burst_spread`]), even when a deadline clamped to an old lease end comes up.
    pub not_before: Option<Instant>,
    /// The indicator is lit until here, as far as successful calls tell.
    pub lit_until: Option<Instant>,
    /// Composing time covered by an indicator up to `lit_until`.
    pub lit_total: Duration,
    /// Number of times the indicator lapsed while composing.
    pub gaps: u32,
    /// Cancels the typing call in flight, if any: a call still waiting for a connection when the
    /// session ends is dropped before it is written.
    pub cancel_in_flight: Option<CancellationToken>,
}

impl Session {
    /// A new session started at `now`, held by no one yet (the table adds the first holder).
    pub fn new(
        generation: u64,
        api_key: KeyIndex,
        budget: BudgetIndex,
        priority: Priority,
        now: Instant,
        max_lifetime: Duration,
    ) -> Self {
        Self {
            generation,
            api_key,
            budget,
            priority,
            started_at: now,
            max_until: now + max_lifetime,
            holders: Vec::new(),
            next_due: now,
            in_flight: false,
            first_sent: false,
            not_before: None,
            lit_until: None,
            lit_total: Duration::ZERO,
            gaps: 0,
            cancel_in_flight: None,
        }
    }

    /// When its last lease runs out or its lifetime ends, whichever is first.
    pub fn expires_at(&self) -> Instant {
        let lease = self.holders.iter().map(|h| h.lease_until).max().unwrap_or(self.started_at);
        lease.min(self.max_until)
    }

    /// Share of `[started_at, end]` during which an indicator was showing.
    pub fn coverage(&self, end: Instant) -> Option<f64> {
        let composing = end.saturating_duration_since(self.started_at);
        if composing.is_zero() {
            return None;
        }
        let overhang = self.lit_until.map_or(Duration::ZERO, |u| u.saturating_duration_since(end));
        let lit = self.lit_total.saturating_sub(overhang);
        Some((lit.as_secs_f64() / composing.as_secs_f64()).clamp(0.0, 1.0))
    }

    /// Accounts for an indicator shown from `at` for `lifetime`. Returns whether this closed a gap.
    pub fn lit(&mut self, at: Instant, lifetime: Duration) -> bool {
        let end = at + lifetime;
        let gap = match self.lit_until {
            None => {
                self.lit_total += lifetime;
                false
            }
            Some(until) if at >= until => {
                self.lit_total += lifetime;
                at > until
            }
            Some(until) => {
                self.lit_total += end.saturating_duration_since(until);
                false
            }
        };
        self.lit_until = Some(self.lit_until.map_or(end, |u| u.max(end)));
        if gap {
            self.gaps += 1;
        }
        gap
    }
}

/// The live sessions, keyed by platform, account and chat.
#[derive(Debug, Default)]
pub struct SessionTable {
    map: DashMap<SessionKey, Session>,
    len: AtomicUsize,
}

/// What [`SessionTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new session; its first call is due at `due`.
    Inserted {
        /// The new session's generation.
        generation: u64,
    },
    /// An existing session's lease was refreshed.
    Refreshed,
    /// No session existed and the table is full.
    Full,
}

// === impl SessionTable ===

impl SessionTable {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts a session built by `make` or refreshes `holder`'s lease on the existing one.
    pub fn upsert(
        &self,
        key: SessionKey,
        holder: Holder,
        priority: Priority,
        max_sessions: usize,
        make: impl FnOnce() -> Session,
    ) -> Upsert {
        if !self.map.contains_key(&key) && self.len() >= max_sessions {
            return Upsert::Full;
        }
        match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                if priority == Priority::High {
                    s.priority = Priority::High;
                }
                match s.holders.iter_mut().find(|h| h.id == holder.id) {
                    Some(h) => h.lease_until = h.lease_until.max(holder.lease_until),
                    None => {
                        if s.holders.len() >= MAX_HOLDERS {
                            // Replace the holder whose lease ends first.
                            if let Some(i) = (0..s.holders.len()).min_by_key(|i| s.holders[*i].lease_until) {
                                s.holders.swap_remove(i);
                            }
                        }
                        s.holders.push(holder);
                    }
                }
                Upsert::Refreshed
            }
            Entry::Vacant(v) => {
                let mut s = make();
                s.holders = vec![holder];
                s.priority = priority;
                let generation = s.generation;
                v.insert(s);
                self.len.fetch_add(1, Ordering::Relaxed);
                Upsert::Inserted { generation }
            }
        }
    }

    /// Releases `holder`. Returns `None` when there is no session, `Some(None)` when the session
    /// ended (it is returned), `Some(Some(n))` when `n` holders remain.
    pub fn release(&self, key: &SessionKey, holder: Option<&str>) -> Option<Result<Session, usize>> {
        let mut ended = None;
        let remaining = {
            let mut s = self.map.get_mut(key)?;
            let before = s.holders.len();
            s.holders.retain(|h| h.id.as_deref() != holder);
            if s.holders.len() == before && holder.is_some() && before > 0 {
                // Unknown chatter: nothing of theirs to release, but say how many hold it.
                return Some(Err(before));
            }
            s.holders.len()
        };
        if remaining == 0 {
            ended = self.remove(key);
        }
        match ended {
            Some(s) => Some(Ok(s)),
            None if remaining == 0 => None,
            None => Some(Err(remaining)),
        }
    }

    /// Removes a session whatever its holders.
    pub fn remove(&self, key: &SessionKey) -> Option<Session> {
        let (_, s) = self.map.remove(key)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(s)
    }

    /// Removes the session if it is still `generation`.
    pub fn remove_if_generation(&self, key: &SessionKey, generation: u64) -> Option<Session> {
        let (_, s) = self.map.remove_if(key, |_, s| s.generation == generation)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(s)
    }

    /// Runs `f` on the session if it is still `generation`.
    pub fn with_generation<R>(
        &self,
        key: &SessionKey,
        generation: u64,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Option<R> {
        let mut s = self.map.get_mut(key)?;
        (s.generation == generation).then(|| f(&mut s))
    }

    /// Copies out a summary of every session `filter` accepts.
    pub fn collect<T>(&self, mut f: impl FnMut(&SessionKey, &Session) -> Option<T>) -> Vec<T> {
        self.map.iter().filter_map(|e| f(e.key(), e.value())).collect()
    }

    /// Keys (and generations) of every session `pred` accepts.
    pub fn keys_where(&self, mut pred: impl FnMut(&SessionKey, &Session) -> bool) -> Vec<(SessionKey, u64)> {
        self.map.iter().filter(|e| pred(e.key(), e.value())).map(|e| (e.key().clone(), e.generation)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: Instant) -> Session {
        Session::new(1, 0, 0, Priority::Normal, now, Duration::from_secs(600))
    }

    #[test]
    fn coverage_counts_overlaps_once_and_clips_at_the_end() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = session(t0);
        let life = ms(4000);
        assert!(!s.lit(t0, life));
        assert!(!s.lit(t0 + ms(3500), life));
        assert!(!s.lit(t0 + ms(7000), life));
        // Lit continuously from 0 to 11 s; ended at 10 s.
        assert_eq!(s.coverage(t0 + ms(10_000)), Some(1.0));
        // A late call leaves a 1 s gap.
        assert!(s.lit(t0 + ms(12_000), life));
        let c = s.coverage(t0 + ms(16_000)).unwrap();
        assert!((c - 15.0 / 16.0).abs() < 1e-9, "{c}");
        assert_eq!(s.gaps, 1);
    }
}
