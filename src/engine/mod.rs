//! The engine: typing sessions and the one scheduler that refires them.
//!
//! [`Engine`] is the cheap, cloneable handle hook handlers call: [`Engine::start`] inserts or
//! refreshes a session and returns at once (the scheduler sends the first typing call
//! immediately); [`Engine::stop`] removes it, after which no typing call for that chat leaves.
//! [`Scheduler::run`] is the single task that owns every deadline.
//!
//! The engine knows nothing of HTTP: it is driven by plain method calls and talks to the
//! upstream through the [`Upstream`] trait and to the budget through [`Budgets`].

mod call;
mod fire;
mod inflight;
mod keys;
mod readiness;
mod recent;
mod scheduler;
mod session;
mod slots;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use keys::{KeyEntry, KeyRing, REFUSED_FOR};
pub use readiness::{PauseCause, Paused, Readiness};
pub use recent::{RECENT_ERRORS, RecentError, RecentErrors};
pub use scheduler::Scheduler;
pub use session::{Holder, MAX_HOLDERS, Priority, Session, SessionTable, Upsert};
pub use slots::SlotCounts;

use crate::budget::{BudgetIndex, BudgetSnapshot, Budgets};
use crate::config::{BudgetSettings, EngineSettings, PlatformsSettings};
use crate::ids::{AccountId, Platform, SessionKey};
use crate::metrics::{self, EndReason};
use crate::upstream::{KeyIndex, Upstream};

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `[engine]`
    pub engine: EngineSettings,
    /// `[platforms.*]`
    pub platforms: PlatformsSettings,
    /// `[budget]`
    pub budget: BudgetSettings,
    /// How long an account answering 503 is paused before it is probed again.
    pub unavailable_pause: Duration,
}

/// A start, already validated by the caller.
#[derive(Debug, Clone)]
pub struct StartCommand {
    /// The chat.
    pub key: SessionKey,
    /// The chatter holding it, if named.
    pub holder: Option<Arc<str>>,
    /// Its priority.
    pub priority: Priority,
    /// Idle lease for this holder instead of `engine.idle_timeout`.
    pub ttl: Option<Duration>,
    /// The API key the caller's tenant prefers.
    pub preferred_key: Option<KeyIndex>,
}

/// What a start did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new session; its first typing call is on its way.
    Started,
    /// The live session's lease was refreshed.
    Refreshed,
    /// The session is held, but its account is paused: nothing is sent until it resumes.
    Paused(PauseCause),
    /// The chat's session reached `engine.max_lifetime`: nothing is sent until a stop for the
    /// chat, or until no start has come for the idle lease.
    Capped,
}

/// Why a start was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The service is shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// `engine.max_sessions` sessions are live.
    #[error("the session cap is reached")]
    AtCapacity,
    /// No configured API key covers the account.
    #[error("no api key is configured for this account")]
    NoApiKey,
    /// The upstream refused the account's API key (401) moments ago.
    #[error("the upstream refused the api key for this account")]
    KeyRefused,
}

/// What a stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The session ended; no typing call for the chat leaves after this.
    Stopped,
    /// This holder let go; `holders` others still hold the chat.
    Released {
        /// Holders left.
        holders: usize,
    },
    /// No session for that chat.
    NotFound,
}

/// A live session as `/v1/typing/sessions` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// Platform.
    pub platform: Platform,
    /// Account.
    pub account_id: AccountId,
    /// Chat.
    pub chat_id: crate::ids::ChatId,
    /// Chatter ids holding it (`null` for anonymous holders).
    pub holders: Vec<Option<String>>,
    /// Priority.
    pub priority: Priority,
    /// Milliseconds since it started.
    pub age_ms: u64,
    /// Milliseconds until it ends unless refreshed.
    pub expires_in_ms: u64,
    /// Whether its account is paused.
    pub paused: bool,
    /// Whether it holds a lit slot of its budget (every refire paid on time); `false` while it
    /// waits for one and is refired from what the budget has left.
    pub lit_slot: bool,
}

/// A message to the scheduler.
#[derive(Debug)]
pub(crate) enum Command {
    /// A session's deadline.
    Due {
        /// The chat.
        key: SessionKey,
        /// The session's generation.
        generation: u64,
        /// When it is due.
        due: Instant,
    },
    /// A new session joins its budget's slots.
    Joined {
        /// The chat.
        key: SessionKey,
        /// The session's generation.
        generation: u64,
        /// Its budget.
        budget: BudgetIndex,
        /// Its priority at the start.
        priority: Priority,
        /// When it started (on the replica it was taken over from, for an adopted session).
        started: Instant,
        /// Its typing calls per budget period.
        calls: f64,
    },
    /// A session ended: its slot is free.
    Left {
        /// Its budget.
        budget: BudgetIndex,
        /// The session's generation.
        generation: u64,
    },
    /// A session's priority rose to `high`.
    Promoted {
        /// Its budget.
        budget: BudgetIndex,
        /// The session's generation.
        generation: u64,
    },
    /// What a budget may spend moved (a replica's grant from a shared window came): its slots
    /// are balanced again and the calls waiting for it ask again at once, not when the budget
    /// as it was would have paid them.
    Granted {
        /// The budget.
        budget: BudgetIndex,
    },
}

/// State shared by the handle, the scheduler and the fire tasks.
pub(crate) struct Shared {
    pub(crate) cfg: EngineConfig,
    pub(crate) table: SessionTable,
    pub(crate) budgets: Budgets,
    pub(crate) keys: KeyRing,
    pub(crate) readiness: Readiness,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// The in-flight limit (see [`inflight`]).
    pub(crate) in_flight: inflight::InFlight,
    pub(crate) generation: AtomicU64,
    /// Set when the drain starts: no new typing call leaves after this.
    pub(crate) draining: AtomicBool,
    /// The last failed typing calls (status page).
    pub(crate) recent: RecentErrors,
    /// Lit and waiting sessions per budget, as the scheduler last balanced them.
    pub(crate) slot_counts: Vec<SlotCounts>,
    /// A session referred to a budget that does not exist (logged once).
    pub(crate) no_budget_logged: AtomicBool,
    /// Per budget: an upstream answer changed what it may spend since the slots were balanced.
    pub(crate) rebalance: Vec<AtomicBool>,
    /// Who may send for which chat (replicas on Redis); unset in one process: it owns every chat.
    pub(crate) ownership: OnceLock<Arc<dyn Ownership>>,
    /// Told of every session that ends other than by shutdown (replicas on Redis delete its record).
    pub(crate) ends: OnceLock<mpsc::UnboundedSender<SessionKey>>,
}

/// Whether this process may send typing calls for a chat right now. In one process it always
/// may; replicas sharing Redis may only while they hold a valid lease on the chat's shard.
pub trait Ownership: Send + Sync + 'static {
    /// Whether a typing call for `key` may leave at `now`.
    fn may_send(&self, key: &SessionKey, now: Instant) -> bool;
}

/// A session as another replica recorded it, to be taken over here. Times are relative to the
/// moment it is adopted (clocks of different machines are not compared as instants).
#[derive(Debug, Clone)]
pub struct Adopted {
    /// Holders, each with the time left on its lease.
    pub holders: Vec<(Option<Arc<str>>, Duration)>,
    /// Priority.
    pub priority: Priority,
    /// How long ago it started.
    pub age: Duration,
    /// Time left until `engine.max_lifetime` ends it.
    pub lifetime_left: Duration,
    /// When its next typing call is due (zero: at once).
    pub due_in: Duration,
    /// The API key its tenant prefers.
    pub preferred_key: Option<KeyIndex>,
}

/// A session's place in its budget's slot order (see [`Engine::budget_order`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderEntry {
    /// Priority `high`.
    pub high: bool,
    /// When it started.
    pub started: Instant,
    /// Its typing calls per budget period.
    pub calls: f64,
}

/// A live session as it is recorded for other replicas (see [`Adopted`]).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Holders, each with the time left on its lease.
    pub holders: Vec<(Option<Arc<str>>, Duration)>,
    /// Priority.
    pub priority: Priority,
    /// How long ago it started.
    pub age: Duration,
    /// Time left until `engine.max_lifetime` ends it.
    pub lifetime_left: Duration,
    /// Time until its next typing call is due.
    pub due_in: Duration,
    /// The API key its calls use.
    pub api_key: KeyIndex,
}

/// The cloneable engine handle.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("sessions", &self.shared.table.len()).finish_non_exhaustive()
    }
}

// === impl Engine ===

impl Engine {
    /// Builds the engine and its scheduler; run the scheduler with [`Scheduler::run`].
    pub fn new(cfg: EngineConfig, upstream: Arc<dyn Upstream>, budgets: Budgets, keys: KeyRing) -> (Self, Scheduler) {
        let (tx, rx) = mpsc::unbounded_channel();
        let in_flight = inflight::InFlight::new(cfg.engine.max_in_flight.as_usize());
        let slot_counts = (0..budgets.len()).map(|_| SlotCounts::default()).collect();
        let rebalance = (0..budgets.len()).map(|_| AtomicBool::new(false)).collect();
        let shared = Arc::new(Shared {
            cfg,
            table: SessionTable::default(),
            budgets,
            keys,
            readiness: Readiness::default(),
            upstream,
            commands: tx,
            in_flight,
            generation: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            recent: RecentErrors::default(),
            rebalance,
            slot_counts,
            no_budget_logged: AtomicBool::new(false),
            ownership: OnceLock::new(),
            ends: OnceLock::new(),
        });
        let scheduler = Scheduler::new(Arc::clone(&shared), rx);
        (Self { shared }, scheduler)
    }

    /// Inserts or refreshes the session of `cmd.key`.
    ///
    /// # Errors
    /// [`StartError`] when the service drains, the cap is reached, or no usable key covers the
    /// account. Nothing changes then.
    pub fn start(&self, cmd: StartCommand) -> Result<StartOutcome, StartError> {
        let s = &self.shared;
        if s.draining.load(Ordering::Acquire) {
            return Err(StartError::ShuttingDown);
        }
        let api_key = s.keys.resolve(&cmd.key.account, cmd.preferred_key).ok_or(StartError::NoApiKey)?;
        let now = Instant::now();
        if s.keys.is_refused(api_key, now) {
            return Err(StartError::KeyRefused);
        }
        let budget = s.keys.get(api_key).map_or(0, |k| k.budget);
        let ttl = cmd.ttl.unwrap_or(s.cfg.engine.idle_timeout).min(s.cfg.engine.max_lifetime);
        let holder = Holder { id: cmd.holder, lease_until: now + ttl };
        let generation = &s.generation;
        let max_lifetime = s.cfg.engine.max_lifetime;
        let upsert =
            s.table.upsert(cmd.key.clone(), holder, cmd.priority, s.cfg.engine.max_sessions.as_usize(), || {
                Session::new(
                    generation.fetch_add(1, Ordering::Relaxed),
                    api_key,
                    budget,
                    cmd.priority,
                    now,
                    max_lifetime,
                )
            });
        let outcome = match upsert {
            Upsert::Full => return Err(StartError::AtCapacity),
            Upsert::Capped => {
                metrics::start_capped();
                return Ok(StartOutcome::Capped);
            }
            Upsert::Inserted { generation } => {
                metrics::session_started();
                metrics::sessions_active(s.table.len());
                let interval = s.platform(cmd.key.platform).refire_interval;
                let calls = s.cfg.budget.window.as_secs_f64() / interval.as_secs_f64();
                // The scheduler owns deadlines and slots; a send error means it has stopped
                // (shutdown), and the session then ends with the process.
                let joined = Command::Joined {
                    key: cmd.key.clone(),
                    generation,
                    budget,
                    priority: cmd.priority,
                    started: now,
                    calls,
                };
                let _ = s.commands.send(joined);
                let _ = s.commands.send(Command::Due { key: cmd.key.clone(), generation, due: now });
                StartOutcome::Started
            }
            Upsert::Refreshed { promoted } => {
                if let Some((budget, generation)) = promoted {
                    let _ = s.commands.send(Command::Promoted { budget, generation });
                }
                StartOutcome::Refreshed
            }
        };
        match s.readiness.get(&cmd.key.account, now) {
            Some(p) => Ok(StartOutcome::Paused(p.cause)),
            None => Ok(outcome),
        }
    }

    /// Releases `holder`'s hold on `key`; ends the session when no holder is left.
    /// A stop also lifts the cap of a chat whose session reached its maximum lifetime.
    pub fn stop(&self, key: &SessionKey, holder: Option<&str>) -> StopOutcome {
        let uncapped = self.shared.table.uncap(key);
        match self.shared.table.release(key, holder) {
            None if uncapped => StopOutcome::Stopped,
            None => StopOutcome::NotFound,
            Some(Ok(session)) => {
                self.shared.ended(key, session, EndReason::Stopped, Instant::now());
                StopOutcome::Stopped
            }
            Some(Err(holders)) => StopOutcome::Released { holders },
        }
    }

    /// Ends the session of `key` whoever holds it (an outbound message was sent).
    pub fn end_chat(&self, key: &SessionKey, reason: EndReason) -> bool {
        match self.shared.table.remove(key) {
            Some(session) => {
                self.shared.ended(key, session, reason, Instant::now());
                true
            }
            None => false,
        }
    }

    /// The live sessions on accounts `visible` accepts.
    pub fn sessions(&self, visible: impl Fn(&AccountId) -> bool) -> Vec<SessionInfo> {
        let now = Instant::now();
        let readiness = &self.shared.readiness;
        self.shared.table.collect(|k, s| {
            visible(&k.account).then(|| SessionInfo {
                platform: k.platform,
                account_id: k.account.clone(),
                chat_id: k.chat.clone(),
                holders: s.holders.iter().map(|h| h.id.as_deref().map(str::to_owned)).collect(),
                priority: s.priority,
                age_ms: millis(now.saturating_duration_since(s.started_at)),
                expires_in_ms: millis(s.expires_at().saturating_duration_since(now)),
                paused: readiness.blocks(&k.account, now),
                lit_slot: s.slot,
            })
        })
    }

    /// How long the cap on `key` still lasts (its session reached `engine.max_lifetime` and
    /// starts keep coming), if it is capped: for the replica taking it over.
    pub fn cap_left(&self, key: &SessionKey) -> Option<Duration> {
        let now = Instant::now();
        self.shared.table.cap_until(key).filter(|u| *u > now).map(|u| u - now)
    }

    /// Caps `key` for `left`, as the replica it comes from had it capped.
    pub fn adopt_cap(&self, key: SessionKey, left: Duration) {
        self.shared.table.cap(key, Instant::now() + left);
    }

    /// Whether the live session of `key` holds a lit slot of its budget.
    pub fn holds_slot(&self, key: &SessionKey) -> bool {
        self.shared.table.collect_one(key, |s| s.slot).unwrap_or(false)
    }

    /// Whether typing for `account` is paused now.
    pub fn is_paused(&self, account: &AccountId) -> bool {
        self.shared.readiness.blocks(account, Instant::now())
    }

    /// Number of live sessions.
    pub fn active_count(&self) -> usize {
        self.shared.table.len()
    }

    /// Pauses typing for `account` until resumed (probing again after `probe_after`).
    pub fn pause_account(&self, account: &AccountId, cause: PauseCause, probe_after: Duration) {
        self.shared.readiness.pause(account, cause, Instant::now() + probe_after);
    }

    /// Resumes typing for `account`. Returns whether it was paused.
    pub fn resume_account(&self, account: &AccountId) -> bool {
        self.shared.readiness.resume(account)
    }

    /// Paused accounts.
    pub fn paused_accounts(&self) -> Vec<(AccountId, Paused)> {
        self.shared.readiness.list(Instant::now())
    }

    /// The key ring (names and budgets of the configured keys).
    pub fn keys(&self) -> &KeyRing {
        &self.shared.keys
    }

    /// A snapshot of every budget, with the names of the keys spending from it.
    pub fn budgets(&self) -> Vec<(BudgetSnapshot, Vec<String>)> {
        let now = Instant::now();
        let interval = self.shared.cfg.platforms.onlyfans.refire_interval;
        (0..self.shared.budgets.len())
            .filter_map(|i| {
                let slots = self.shared.slot_counts.get(i).map_or((0, 0), SlotCounts::get);
                let snap = self.shared.budgets.with(i, |b| b.snapshot(interval, slots, now))?;
                let keys =
                    self.shared.keys.entries().iter().filter(|k| k.budget == i).map(|k| k.name.clone()).collect();
                Some((snap, keys))
            })
            .collect()
    }

    /// Typing calls on the wire right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.taken()
    }

    /// The last failed typing calls, newest first (no ids of any kind).
    pub fn recent_errors(&self) -> Vec<RecentError> {
        self.shared.recent.list()
    }

    /// Starts the drain: starts are refused and no new typing call leaves from now on.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        // Calls still waiting for a connection would leave after the drain began: drop them.
        for call in self.shared.table.collect(|_, s| s.call.clone()) {
            call.close();
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Makes every typing call ask `ownership` first (replicas on Redis). Set once, before the
    /// scheduler runs; later calls change nothing.
    pub fn set_ownership(&self, ownership: Arc<dyn Ownership>) {
        let _ = self.shared.ownership.set(ownership);
    }

    /// Sends the key of every session that ends (other than by shutdown) to `ends`. Set once.
    pub fn set_end_listener(&self, ends: mpsc::UnboundedSender<SessionKey>) {
        let _ = self.shared.ends.set(ends);
    }

    /// The session of `key` as other replicas need it to take it over, if it is live.
    pub fn record(&self, key: &SessionKey) -> Option<Recorded> {
        let now = Instant::now();
        let interval = self.shared.platform(key.platform).refire_interval;
        self.shared.table.collect_one(key, |s| recorded(s, interval, now))
    }

    /// Takes over a session another replica recorded: it joins its budget's slots and refires
    /// when `adopted.due_in` says (at once after a crash, on its cadence after a hand-over).
    /// Returns whether it was added (not when the chat is live here already, the table is full,
    /// no key covers the account, or nothing is left of its leases or lifetime).
    pub fn adopt(&self, key: SessionKey, adopted: &Adopted) -> bool {
        let s = &self.shared;
        let now = Instant::now();
        let live = adopted.holders.iter().map(|(_, left)| *left).max().unwrap_or_default();
        if live.is_zero() || adopted.lifetime_left.is_zero() || s.table.contains(&key) {
            return false;
        }
        let Some(api_key) = s.keys.resolve(&key.account, adopted.preferred_key) else { return false };
        let budget = s.keys.get(api_key).map_or(0, |k| k.budget);
        let generation = &s.generation;
        let mut inserted = None;
        for (id, left) in &adopted.holders {
            let holder = Holder { id: id.clone(), lease_until: now + *left };
            let upsert =
                s.table.upsert(key.clone(), holder, adopted.priority, s.cfg.engine.max_sessions.as_usize(), || {
                    let mut session = Session::new(
                        generation.fetch_add(1, Ordering::Relaxed),
                        api_key,
                        budget,
                        adopted.priority,
                        now,
                        adopted.lifetime_left,
                    );
                    session.started_at = now.checked_sub(adopted.age).unwrap_or(now);
                    session.segment_since = now;
                    // Its first indicator was given by the replica it comes from.
                    session.first_sent = true;
                    session.first_lit = true;
                    session
                });
            match upsert {
                Upsert::Inserted { generation } => inserted = Some(generation),
                Upsert::Full if inserted.is_none() => return false,
                _ => {}
            }
        }
        let Some(generation) = inserted else { return false };
        metrics::sessions_active(s.table.len());
        let interval = s.platform(key.platform).refire_interval;
        let calls = s.cfg.budget.window.as_secs_f64() / interval.as_secs_f64();
        let due = now + adopted.due_in.min(interval);
        let started = s
            .table
            .with_generation(&key, generation, |session| {
                session.next_due = due;
                // As far as this process can tell, the last call left one interval before the next
                // is due: a hand-over onwards before that call keeps the cadence too.
                session.last_sent = due.checked_sub(interval);
                session.started_at
            })
            .unwrap_or(now);
        let joined =
            Command::Joined { key: key.clone(), generation, budget, priority: adopted.priority, started, calls };
        let _ = s.commands.send(joined);
        let _ = s.commands.send(Command::Due { key, generation, due });
        true
    }

    /// Hands the sessions `which` selects to another replica: they leave this process without
    /// ending (no end is counted or reported) and no call for them leaves after this returns.
    /// Returns each with its record, for the replica taking it over.
    ///
    /// A hand-over (`cancel` false) lets a call already on its way leave (this replica still
    /// holds the lease) and records it as the last one; a lost lease (`cancel` true) drops it.
    pub fn evict(&self, which: impl Fn(&SessionKey) -> bool, cancel: bool) -> Vec<(SessionKey, Recorded)> {
        let mut out = Vec::new();
        for (key, generation) in self.shared.table.keys_where(|k, _| which(k)) {
            // Removed first, recorded from what was removed: a call either found the session
            // (and is its last one) or finds it gone (and does not leave).
            if let Some(session) = self.shared.table.remove_if_generation(&key, generation) {
                if cancel {
                    if let Some(call) = &session.call {
                        call.close();
                    }
                }
                let _ = self.shared.commands.send(Command::Left { budget: session.budget, generation });
                let interval = self.shared.platform(key.platform).refire_interval;
                out.push((key, recorded(&session, interval, Instant::now())));
            }
        }
        // Caps go with their chats: the next owner has them from the records.
        self.shared.table.uncap_where(&which);
        metrics::sessions_active(self.shared.table.len());
        out
    }

    /// Makes the sessions `which` selects that missed a refire due at once: this replica holds
    /// their shard's lease again (Redis answered again after an outage, during which refires
    /// were skipped for want of a valid lease), so they need not wait out another interval.
    pub fn hasten(&self, which: impl Fn(&SessionKey) -> bool) -> usize {
        let now = Instant::now();
        let mut hastened = 0;
        for (key, generation) in self.shared.table.keys_where(|k, _| which(k)) {
            let interval = self.shared.platform(key.platform).refire_interval;
            let due = self.shared.table.with_generation(&key, generation, |s| {
                let due = s.last_sent.map_or(now, |t| (t + interval).max(now)).min(s.expires_at().max(now));
                (!s.in_flight && due < s.next_due).then(|| {
                    s.next_due = due;
                    due
                })
            });
            if let Some(Some(due)) = due {
                hastened += 1;
                let _ = self.shared.commands.send(Command::Due { key, generation, due });
            }
        }
        hastened
    }

    /// Brings forward the next call of every session `which` selects that falls due within
    /// `horizon`, and waits until each has left. Before a hand-over: a call that would fall due
    /// while no replica refires the chat leaves before it instead, and the replica taking the
    /// session over sends the next one a full interval after it.
    ///
    /// The calls leave in the order they were due, over the first half of the horizon (one due
    /// in 400 ms leaves in 200 ms): not all at once, so that they do not come due together at
    /// every interval afterwards. Each goes through the scheduler like any refire: its budget
    /// pays for it or it waits in its queue as usual, and it leaves only while [`Ownership`]
    /// allows. Waits at most three quarters of the horizon; returns how many left. The others
    /// (refused by the budget, their account paused, ended meanwhile) keep their place, and
    /// their record says when they are due.
    pub async fn send_due_within(&self, which: impl Fn(&SessionKey) -> bool, horizon: Duration) -> usize {
        let s = &self.shared;
        let now = Instant::now();
        let until = now + horizon;
        // A refire coming due: not a first call (due at once anyway), not one on the wire, and
        // not a deadline clamped to the end of a lease or lifetime (that one ends the session, or
        // waits for its `not_before` if a start extended the lease).
        let due_soon = |sess: &Session| {
            sess.first_sent
                && !sess.in_flight
                && sess.next_due > now
                && sess.next_due <= until
                && sess.next_due < sess.expires_at()
                && sess.not_before.is_none_or(|t| t <= sess.next_due)
        };
        let picked = s.table.keys_where(|k, sess| which(k) && due_soon(sess) && !s.readiness.blocks(&k.account, now));
        let mut pending = Vec::with_capacity(picked.len());
        for (key, generation) in picked {
            // Checked again under the entry's lock: the scheduler may have launched it meanwhile.
            let moved = s.table.with_generation(&key, generation, |sess| {
                if !due_soon(sess) {
                    return None;
                }
                let at = now + sess.next_due.saturating_duration_since(now) / 2;
                sess.next_due = at;
                sess.not_before = Some(at);
                Some(at)
            });
            if let Some(Some(due)) = moved {
                let _ = s.commands.send(Command::Due { key: key.clone(), generation, due });
                pending.push((key, generation, due));
            }
        }
        let deadline = now + horizon * 3 / 4;
        let mut sent = 0;
        loop {
            // Settled: it left (it is recorded as the last call), or the scheduler did something
            // else with it (skipped it, ended it); one not launched yet, launched but not left
            // yet, or waiting for its budget or an in-flight permit, is still pending.
            pending.retain(|(key, generation, due)| {
                let state = s.table.with_generation(key, *generation, |sess| {
                    (sess.last_sent.is_some_and(|t| t >= now), sess.in_flight || sess.next_due == *due)
                });
                match state {
                    Some((true, _)) => {
                        sent += 1;
                        false
                    }
                    Some((false, waiting)) => waiting,
                    None => false,
                }
            });
            if pending.is_empty() || Instant::now() >= deadline {
                return sent;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The chats of every live session that `which` selects.
    pub fn live_keys(&self, which: impl Fn(&SessionKey) -> bool) -> Vec<SessionKey> {
        self.shared.table.keys_where(|k, _| which(k)).into_iter().map(|(k, _)| k).collect()
    }

    /// Live sessions per budget on this process (lit and waiting).
    pub fn budget_sessions(&self, budget: BudgetIndex) -> usize {
        self.shared.slot_counts.get(budget).map_or(0, |c| {
            let (lit, waiting) = c.get();
            lit + waiting
        })
    }

    /// What a replica's grant from a shared budget must pay for until its next reservation, on
    /// budget `budget`: the refires that fall due within `horizon` (or are due and waiting),
    /// however their deadlines bunch (sessions taken over after a crash, a burst of starts); and
    /// the sessions started since `since` (sessions taken over keep their start, and are not
    /// counted).
    pub fn budget_demand(&self, budget: BudgetIndex, horizon: Duration, since: Option<Instant>) -> (usize, usize) {
        let until = Instant::now() + horizon;
        self.shared.table.fold((0, 0), |(due, new), s| {
            if s.budget != budget {
                return (due, new);
            }
            let is_due = s.first_sent && !s.in_flight && s.next_due <= until;
            let is_new = since.is_none_or(|t| s.started_at >= t);
            (due + usize::from(is_due), new + usize::from(is_new))
        })
    }

    /// The members of budget `b` in its slot order (`high` first, then by start), each with its
    /// typing calls per budget period: what replicas sharing the budget exchange so that their
    /// lit slots together are one prefix of that order.
    pub fn budget_order(&self, b: BudgetIndex) -> Vec<OrderEntry> {
        let s = &self.shared;
        let window = s.cfg.budget.window.as_secs_f64();
        let mut members = s.table.collect(|key, session| {
            (session.budget == b).then(|| {
                let interval = s.platform(key.platform).refire_interval.as_secs_f64();
                let high = session.priority == Priority::High;
                (!high, session.started_at, session.generation, window / interval)
            })
        });
        members.sort_unstable_by_key(|m| (m.0, m.1, m.2));
        members.into_iter().map(|(normal, started, _, calls)| OrderEntry { high: !normal, started, calls }).collect()
    }

    /// The budgets (to share them between replicas).
    pub fn budget_states(&self) -> &Budgets {
        &self.shared.budgets
    }

    /// Tells the scheduler that budget `budget` may spend more or less than before (a grant
    /// from a shared window came): see [`Command::Granted`].
    pub fn budget_granted(&self, budget: BudgetIndex) {
        let _ = self.shared.commands.send(Command::Granted { budget });
    }

    /// `budget.window`: the period budgets count calls over.
    pub fn budget_window(&self) -> Duration {
        self.shared.cfg.budget.window
    }

    /// The refire interval of OnlyFans (the cadence replicas plan with).
    pub fn refire_interval(&self) -> Duration {
        self.shared.cfg.platforms.onlyfans.refire_interval
    }
}

/// `s` as other replicas record it at `now`: its next call is due one interval after the last one
/// left (at once if none has), whatever deadline the scheduler set for a call it launched but that
/// never left.
fn recorded(s: &Session, interval: Duration, now: Instant) -> Recorded {
    Recorded {
        holders: s.holders.iter().map(|h| (h.id.clone(), h.lease_until.saturating_duration_since(now))).collect(),
        priority: s.priority,
        age: now.saturating_duration_since(s.started_at),
        lifetime_left: s.max_until.saturating_duration_since(now),
        due_in: s.last_sent.map_or(Duration::ZERO, |t| (t + interval).saturating_duration_since(now)),
        api_key: s.api_key,
    }
}

/// How much sooner than one interval the second call of a session may come when its first call
/// was launched together with others (a batch of starts, a queue released after a budget
/// pause): up to 1/16 of the interval (219 ms at 3.5 s). Sessions started together would
/// otherwise refire together for as long as they live: every interval a burst of calls, each
/// waiting behind the others, and every hook request arriving meanwhile waiting behind them
/// all. Spreading the second calls once spreads every later one; the indicator stays lit (an
/// early call only refreshes it sooner) and later calls keep the full interval. A burst's first
/// group of calls (one launch chunk) is not spread: so few leave together harmlessly.
pub fn burst_spread(interval: Duration) -> Duration {
    interval / 16
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl Shared ===

impl Shared {
    /// Records the end of `session` (already removed from the table) and frees its slot.
    pub(crate) fn ended(&self, key: &SessionKey, mut session: Session, reason: EndReason, now: Instant) {
        if let Some(call) = &session.call {
            call.close();
        }
        if reason != EndReason::Shutdown {
            if let Some(ends) = self.ends.get() {
                let _ = ends.send(key.clone());
            }
        }
        let _ = self.commands.send(Command::Left { budget: session.budget, generation: session.generation });
        let [waiting, lit] = session.coverage_by_slot(now);
        metrics::session_ended(reason, [(metrics::Slot::Waiting, waiting), (metrics::Slot::Lit, lit)]);
        metrics::sessions_active(self.table.len());
    }

    /// The cadence of `platform`.
    pub(crate) fn platform(&self, platform: Platform) -> crate::config::PlatformSettings {
        self.cfg.platforms.get(platform)
    }
}

#[cfg(test)]
mod tests;
