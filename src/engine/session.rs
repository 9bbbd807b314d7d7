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

use super::call::InFlight;
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
    /// Who holds it (changed only through the table, which keeps `lease_end` with it).
    pub(crate) holders: Vec<Holder>,
    /// When the last holder's lease runs out (`started_at` while no one holds it): read on
    /// every refire, kept here so that the check does not visit the holders.
    lease_end: Instant,
    /// The one pending deadline; a queued deadline with another instant is stale.
    pub next_due: Instant,
    /// A typing call for it is on the wire.
    pub in_flight: bool,
    /// Whether a typing call has been launched.
    pub first_sent: bool,
    /// Whether a typing call has succeeded: until then its calls are first indicators.
    pub first_lit: bool,
    /// Whether it holds a lit slot of its budget (set by the scheduler's [`super::slots`]).
    pub slot: bool,
    /// Composing and covered milliseconds while waiting (`[0]`) and while holding a slot
    /// (`[1]`), up to `segment_since`.
    pub by_slot: [[u32; 2]; 2],
    /// Start of the current slot segment, and the covered time up to it.
    pub segment_since: Instant,
    /// Covered time (see [`Session::covered`]) at `segment_since`.
    pub segment_covered: Duration,
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
    /// Holds the typing call in flight, if any, so that the end of the session drops it before
    /// its connection writes it (see [`super::call`]). Made when the session's first call is
    /// launched and shared by all of them (one is in flight at a time); closed only when the
    /// session ends or the drain begins.
    pub call: Option<Arc<InFlight>>,
    /// When its last typing call was handed to the upstream client (a replica taking the
    /// session over keeps the cadence from there). Written by its answer, and before the call
    /// leaves too when replicas run or the call left late (see [`super::fire`]).
    pub last_sent: Option<Instant>,
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
            lease_end: now,
            next_due: now,
            in_flight: false,
            first_sent: false,
            first_lit: false,
            slot: false,
            by_slot: [[0; 2]; 2],
            segment_since: now,
            segment_covered: Duration::ZERO,
            not_before: None,
            lit_until: None,
            lit_total: Duration::ZERO,
            gaps: 0,
            call: None,
            last_sent: None,
        }
    }

    /// When its last lease runs out or its lifetime ends, whichever is first.
    pub fn expires_at(&self) -> Instant {
        self.lease_end().min(self.max_until)
    }

    /// The typing call that left at `sent` was answered (or failed).
    pub(crate) fn answered(&mut self, sent: Instant) {
        self.in_flight = false;
        self.last_sent = Some(sent);
    }

    /// When its last holder's lease runs out.
    pub fn lease_end(&self) -> Instant {
        self.lease_end
    }

    /// Recomputes `lease_end` after its holders changed.
    fn holders_changed(&mut self) {
        self.lease_end = self.holders.iter().map(|h| h.lease_until).max().unwrap_or(self.started_at);
    }

    /// Share of `[started_at, end]` during which an indicator was showing.
    pub fn coverage(&self, end: Instant) -> Option<f64> {
        ratio(self.covered(end), end.saturating_duration_since(self.started_at))
    }

    /// Time up to `at` during which an indicator was showing.
    pub fn covered(&self, at: Instant) -> Duration {
        let overhang = self.lit_until.map_or(Duration::ZERO, |u| u.saturating_duration_since(at));
        self.lit_total.saturating_sub(overhang)
    }

    /// Gives or takes its lit slot at `now`.
    pub fn set_slot(&mut self, slot: bool, now: Instant) {
        if self.slot != slot {
            self.close_segment(now);
            self.slot = slot;
        }
    }

    fn close_segment(&mut self, now: Instant) {
        let covered = self.covered(now);
        let acc = &mut self.by_slot[usize::from(self.slot)];
        acc[0] = acc[0].saturating_add(ms(now.saturating_duration_since(self.segment_since)));
        acc[1] = acc[1].saturating_add(ms(covered.saturating_sub(self.segment_covered)));
        self.segment_since = now;
        self.segment_covered = covered;
    }

    /// Coverage while waiting and while holding a slot, up to `end` (`None` for a state it
    /// never was in).
    pub fn coverage_by_slot(&mut self, end: Instant) -> [Option<f64>; 2] {
        self.close_segment(end);
        self.by_slot.map(|[composing, covered]| {
            ratio(Duration::from_millis(covered.into()), Duration::from_millis(composing.into()))
        })
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

fn ratio(covered: Duration, composing: Duration) -> Option<f64> {
    (!composing.is_zero()).then(|| (covered.as_secs_f64() / composing.as_secs_f64()).clamp(0.0, 1.0))
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The hasher of the session table: foldhash with a seed drawn at random per process (per
/// table), several times cheaper than std's SipHash on these short keys. Keys come from the
/// hooks, so they are chosen by callers; what bounds a collision attack is that the seed is
/// secret and random (a caller cannot compute which ids collide), that ids are validated
/// (charset and length, see [`crate::ids`]) and that the table holds at most
/// `engine.max_sessions` entries, spread over shards by the same hash.
type Hasher = foldhash::fast::RandomState;

/// The live sessions, keyed by platform, account and chat, and the chats capped after reaching
/// `engine.max_lifetime`.
#[derive(Debug, Default)]
pub struct SessionTable {
    map: DashMap<SessionKey, Session, Hasher>,
    len: AtomicUsize,
    /// Chats whose session reached its maximum lifetime, each until the last start's lease
    /// ends: their starts send nothing until a stop or a pause in starts.
    capped: DashMap<SessionKey, Instant, Hasher>,
}

/// What [`SessionTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new session; its first call is due at `due`.
    Inserted {
        /// The new session's generation.
        generation: u64,
    },
    /// An existing session's lease was refreshed; `promoted` names its budget and generation
    /// when this start raised its priority to `high`.
    Refreshed {
        /// `(budget, generation)` of a session whose priority rose.
        promoted: Option<(BudgetIndex, u64)>,
    },
    /// No session existed and the table is full.
    Full,
    /// The chat is capped: its session reached the maximum lifetime; the cap's lease was
    /// refreshed and nothing is sent.
    Capped,
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
        if !self.capped.is_empty() {
            let now = Instant::now();
            if let Some(mut until) = self.capped.get_mut(&key) {
                if now < *until {
                    *until = (*until).max(holder.lease_until);
                    return Upsert::Capped;
                }
            }
            self.capped.remove_if(&key, |_, until| now >= *until);
        }
        match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                let s = e.get_mut();
                let promoted = (priority == Priority::High && s.priority != Priority::High).then(|| {
                    s.priority = Priority::High;
                    (s.budget, s.generation)
                });
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
                s.holders_changed();
                Upsert::Refreshed { promoted }
            }
            Entry::Vacant(v) => {
                // Reserve a place under the shard lock: concurrent starts of other chats never
                // take the table past `max_sessions`.
                if self
                    .len
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_sessions).then_some(n + 1))
                    .is_err()
                {
                    return Upsert::Full;
                }
                let mut s = make();
                s.holders = vec![holder];
                s.holders_changed();
                s.priority = priority;
                let generation = s.generation;
                v.insert(s);
                Upsert::Inserted { generation }
            }
        }
    }

    /// Releases `holder`. Returns `None` when there is no session, `Some(Ok(session))` when the
    /// session ended (it is returned), `Some(Err(n))` when `n` holders remain. The release and
    /// the removal of an emptied session happen under one lock: a start landing meanwhile either
    /// comes before (and holds the session) or after (and opens a new one).
    pub fn release(&self, key: &SessionKey, holder: Option<&str>) -> Option<Result<Session, usize>> {
        let mut remaining = 0;
        let removed = self.map.remove_if_mut(key, |_, s| {
            let before = s.holders.len();
            s.holders.retain(|h| h.id.as_deref() != holder);
            s.holders_changed();
            remaining = if s.holders.len() == before && holder.is_some() && before > 0 {
                // Unknown chatter: nothing of theirs to release, but say how many hold it.
                before
            } else {
                s.holders.len()
            };
            remaining == 0
        });
        match removed {
            Some((_, s)) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
                Some(Ok(s))
            }
            None if remaining > 0 => Some(Err(remaining)),
            None => None,
        }
    }

    /// Caps `key` until `until` (see [`Upsert::Capped`]).
    pub fn cap(&self, key: SessionKey, until: Instant) {
        self.capped.insert(key, until);
    }

    /// When the cap on `key` ends, if it is capped.
    pub fn cap_until(&self, key: &SessionKey) -> Option<Instant> {
        if self.capped.is_empty() { None } else { self.capped.get(key).map(|u| *u) }
    }

    /// Lifts the caps on the keys `which` selects.
    pub fn uncap_where(&self, which: impl Fn(&SessionKey) -> bool) {
        if !self.capped.is_empty() {
            self.capped.retain(|k, _| !which(k));
        }
    }

    /// Lifts the cap on `key`. Returns whether it was capped.
    pub fn uncap(&self, key: &SessionKey) -> bool {
        !self.capped.is_empty() && self.capped.remove(key).is_some()
    }

    /// Forgets caps whose lease ended before `now`.
    pub fn sweep_caps(&self, now: Instant) {
        if !self.capped.is_empty() {
            self.capped.retain(|_, until| now < *until);
        }
    }

    /// Whether `key` has a live session.
    pub fn contains(&self, key: &SessionKey) -> bool {
        self.map.contains_key(key)
    }

    /// `f` of the session of `key`, if live.
    pub fn collect_one<T>(&self, key: &SessionKey, f: impl FnOnce(&Session) -> T) -> Option<T> {
        self.map.get(key).map(|s| f(&s))
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

    /// Folds `f` over every session.
    pub fn fold<T>(&self, init: T, mut f: impl FnMut(T, &Session) -> T) -> T {
        self.map.iter().fold(init, |acc, e| f(acc, e.value()))
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

    fn key(chat: u32) -> SessionKey {
        use crate::ids::{AccountId, ChatId, Platform};
        SessionKey {
            platform: Platform::Onlyfans,
            account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
            chat: ChatId::parse(Platform::Onlyfans, &chat.to_string()).unwrap(),
        }
    }

    fn holder(id: &str) -> Holder {
        Holder { id: Some(Arc::from(id)), lease_until: Instant::now() + Duration::from_secs(60) }
    }

    #[test]
    fn a_start_racing_the_last_release_is_never_answered_and_then_dropped() {
        // One thread opens and closes the chat over and over; the other starts it and must find
        // its hold in place right after every start the table answered.
        let table = Arc::new(SessionTable::default());
        let t = Arc::clone(&table);
        let churn = std::thread::spawn(move || {
            for g in 0..200_000 {
                t.upsert(key(1), holder("x"), Priority::Normal, 10, || session_g(g));
                t.release(&key(1), Some("x"));
            }
        });
        let mut lost = 0;
        for g in 0..200_000 {
            table.upsert(key(1), holder("t"), Priority::Normal, 10, || session_g(1_000_000 + g));
            let held = table.collect(|_, s| Some(s.holders.iter().any(|h| h.id.as_deref() == Some("t"))));
            if held != [true] {
                lost += 1;
            }
            table.release(&key(1), Some("t"));
        }
        churn.join().unwrap();
        assert_eq!(lost, 0, "{lost} starts were answered and then lost to a concurrent release");
        assert_eq!(table.len(), table.collect(|_, _| Some(())).len(), "the count matches the map");
    }

    #[test]
    fn concurrent_starts_never_exceed_the_session_cap() {
        // A table one place short of its cap. One start takes the last place and is held while
        // it builds its session; meanwhile starts of other chats (on other shards of the map)
        // must find the table full.
        use std::sync::mpsc;
        let table = Arc::new(SessionTable::default());
        for i in 0..99u32 {
            table.upsert(key(i + 1), holder("a"), Priority::Normal, 100, || session_g(0));
        }
        let (entered_tx, entered_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let t = Arc::clone(&table);
        let first = std::thread::spawn(move || {
            let up = t.upsert(key(500), holder("a"), Priority::Normal, 100, || {
                entered_tx.send(()).unwrap();
                // Held until another start got through (or long enough for one to).
                let _ = done_rx.recv_timeout(Duration::from_millis(500));
                session_g(0)
            });
            matches!(up, Upsert::Inserted { .. })
        });
        entered_rx.recv().unwrap();
        let others: Vec<_> = (0..8u32)
            .map(|i| {
                let (t, done) = (Arc::clone(&table), done_tx.clone());
                std::thread::spawn(move || {
                    let up = t.upsert(key(600 + i), holder("a"), Priority::Normal, 100, || session_g(0));
                    let _ = done.send(());
                    matches!(up, Upsert::Inserted { .. })
                })
            })
            .collect();
        let inserted = usize::from(first.join().unwrap())
            + others.into_iter().map(|t| usize::from(t.join().unwrap())).sum::<usize>();
        let live = table.collect(|_, _| Some(())).len();
        assert!(inserted == 1 && live == 100, "{inserted} starts took the last place; {live} live, cap 100");
        assert_eq!(table.len(), live);
    }

    fn session_g(generation: u64) -> Session {
        Session::new(generation, 0, 0, Priority::Normal, Instant::now(), Duration::from_secs(600))
    }
}
