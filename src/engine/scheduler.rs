//! The scheduler: the one task that owns every refire deadline.
//!
//! Deadlines sit in a min-heap of `(due, seq, key, generation)`. Entries are never removed
//! early: an entry is acted on only if the session still exists with the same generation and
//! the same `next_due`, so a stop (which removes the session) or a restart (a new generation)
//! silently turns older entries stale. That keeps at most one live deadline per chat.
//!
//! For each live due entry, in due order (earliest-lapsing first): end the session if its leases
//! or lifetime ran out; skip if its account is paused; else ask the budget. A refused entry
//! waits in its budget's queue (priority first, then normal, each in due order) until the budget
//! can pay; a granted one takes an in-flight permit and is launched as its own task. When every
//! permit is taken the scheduler waits for one rather than dropping work.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Shared;
use super::session::Priority;
use crate::budget::{Class, Denied};
use crate::ids::SessionKey;
use crate::metrics::{self, EndReason, SkipReason};

/// How often the budget and in-flight gauges are refreshed.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// Calls launched in one pass before the scheduler yields to the runtime. A burst (a batch of
/// starts, a queue released after a budget pause) is launched in chunks, with every task that
/// became ready meanwhile (hook requests above all) polled between two chunks, instead of
/// queueing behind the whole burst.
const LAUNCH_CHUNK: usize = 32;

/// First calls launched closer together than this belong to one burst (see
/// [`super::burst_spread`]). A batch of starts launches its first calls a fraction of a
/// millisecond apart; hooks sent one by one by chatters rarely come this close.
const BURST_WINDOW: Duration = Duration::from_millis(2);

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
}

#[derive(Debug)]
struct Entry {
    due: Instant,
    seq: u64,
    key: SessionKey,
    generation: u64,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Entries a budget could not pay for yet, in the order they will be paid.
#[derive(Debug, Default)]
struct Waiting {
    priority: VecDeque<Entry>,
    normal: VecDeque<Entry>,
    /// When the budget may pay again.
    wake: Option<Instant>,
}

/// What to do with a due entry.
enum Verdict {
    Stale,
    Expired(EndReason),
    AccountPaused,
    PreviousInFlight,
    /// A deadline clamped to a lease end that has since been extended: not yet one interval
    /// since the last call, so it moves to this instant.
    Early(Instant),
    Ready {
        budget: usize,
        class: Class,
    },
}

/// The deadline loop. Build it with [`super::Engine::new`], run it with [`Scheduler::run`].
pub struct Scheduler {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    heap: BinaryHeap<Reverse<Entry>>,
    waiting: Vec<Waiting>,
    seq: u64,
    /// A permit obtained while blocked on the in-flight cap.
    permit: Option<OwnedSemaphorePermit>,
    /// Every in-flight permit is taken: wait for one before launching.
    blocked: bool,
    /// Calls launched in the current pass.
    launched: usize,
    /// When the last first call was launched.
    last_first: Option<Instant>,
    /// Second calls spread so far (the position in the spreading sequence).
    spread_seq: u64,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("queued", &self.heap.len()).finish_non_exhaustive()
    }
}

// === impl Scheduler ===

impl Scheduler {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Command>) -> Self {
        let waiting = (0..shared.budgets.len().max(1)).map(|_| Waiting::default()).collect();
        Self {
            shared,
            rx,
            heap: BinaryHeap::new(),
            waiting,
            seq: 0,
            permit: None,
            blocked: false,
            launched: 0,
            last_first: None,
            spread_seq: 0,
            tasks: TaskTracker::new(),
        }
    }

    /// Runs until `shutdown` is cancelled, then waits for the typing calls already on the wire
    /// (each bounded by `upstream.timeout`). No new call is launched once `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut gauges = tokio::time::interval(GAUGE_PERIOD);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A full chunk means more may be due: yield once, then go on.
            let pass = Instant::now();
            let more = self.process(pass);
            // Refires due within a tick of this pass wait for the next one (see `engine.tick`); a
            // start wakes the loop at once through `rx` and takes whatever is due with it.
            let wake = self.next_wake().map(|w| w.max(pass + self.shared.cfg.engine.tick));
            let sem = Arc::clone(&self.shared.in_flight);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => {
                        self.accept(cmd);
                        // Take whatever else is queued in one go.
                        while let Ok(cmd) = self.rx.try_recv() {
                            self.accept(cmd);
                        }
                    }
                    None => break,
                },
                permit = sem.acquire_owned(), if self.blocked => {
                    self.blocked = false;
                    self.permit = permit.ok();
                }
                () = tokio::task::yield_now(), if more => {}
                () = sleep_until(wake.unwrap_or_else(|| Instant::now() + GAUGE_PERIOD)), if wake.is_some() && !more => {}
                _ = gauges.tick() => {
                    self.sweep_waiting(Instant::now());
                    self.update_gauges();
                }
            }
        }
        self.shared.draining.store(true, std::sync::atomic::Ordering::Release);
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Due { key, generation, due } => self.push(key, generation, due),
        }
    }

    fn push(&mut self, key: SessionKey, generation: u64, due: Instant) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { due, seq: self.seq, key, generation }));
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.blocked {
            // Nothing can launch until a permit frees; budget waits still matter for expiry,
            // which the next processing pass handles.
            return None;
        }
        let heap = self.heap.peek().map(|Reverse(e)| e.due);
        let budgets = self.waiting.iter().filter_map(|w| w.wake).min();
        match (heap, budgets) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on what is due at `now`, up to [`LAUNCH_CHUNK`] launches. Returns whether the chunk
    /// filled up (more may be due).
    fn process(&mut self, now: Instant) -> bool {
        self.launched = 0;
        if self.blocked {
            return false;
        }
        for b in 0..self.waiting.len() {
            if self.waiting[b].wake.is_some_and(|w| w <= now) {
                self.drain_budget(b, now);
                if self.blocked {
                    return false;
                }
                if self.chunk_full() {
                    return true;
                }
            }
        }
        while self.heap.peek().is_some_and(|Reverse(e)| e.due <= now) {
            let Some(Reverse(entry)) = self.heap.pop() else {
                break;
            };
            self.handle_due(entry, now);
            if self.blocked {
                return false;
            }
            if self.chunk_full() {
                return true;
            }
        }
        false
    }

    fn chunk_full(&self) -> bool {
        self.launched >= LAUNCH_CHUNK
    }

    fn verdict(&self, entry: &Entry, now: Instant) -> Verdict {
        let shared = &self.shared;
        let bound = shared.cfg.budget.starvation_bound;
        let v = shared.table.with_generation(&entry.key, entry.generation, |s| {
            if s.next_due != entry.due {
                return Verdict::Stale;
            }
            if now >= s.max_until {
                return Verdict::Expired(EndReason::MaxLifetime);
            }
            if now >= s.expires_at() {
                return Verdict::Expired(EndReason::Idle);
            }
            if let Some(earliest) = s.not_before.filter(|t| now < *t) {
                return Verdict::Early(earliest);
            }
            if s.in_flight {
                return Verdict::PreviousInFlight;
            }
            let starved = s.lit_until.is_some_and(|u| now.saturating_duration_since(u) >= bound);
            let class =
                if !s.first_sent || s.priority == Priority::High || starved { Class::Priority } else { Class::Normal };
            Verdict::Ready { budget: s.budget, class }
        });
        match v {
            None => Verdict::Stale,
            Some(Verdict::Ready { .. }) if shared.readiness.blocks(&entry.key.account, now) => Verdict::AccountPaused,
            Some(v) => v,
        }
    }

    /// Acts on every verdict but `Ready` (drop, end, skip, defer) and hands a ready entry back
    /// with its budget and class. `count_in_flight` counts a skip for a call still in flight
    /// (a queued entry met again while draining was already counted when it was queued).
    fn ready(&mut self, entry: Entry, now: Instant, count_in_flight: bool) -> Option<(Entry, usize, Class)> {
        match self.verdict(&entry, now) {
            Verdict::Stale => {}
            Verdict::Expired(reason) => self.expire(&entry, reason, now),
            Verdict::AccountPaused => {
                metrics::refire_skipped(SkipReason::AccountPaused);
                self.reschedule(entry, now);
            }
            Verdict::PreviousInFlight => {
                if count_in_flight {
                    metrics::refire_skipped(SkipReason::PreviousInFlight);
                }
                self.reschedule(entry, now);
            }
            Verdict::Early(at) => self.defer(entry, at),
            Verdict::Ready { budget, class } => return Some((entry, budget, class)),
        }
        None
    }

    fn handle_due(&mut self, entry: Entry, now: Instant) {
        let Some((entry, budget, class)) = self.ready(entry, now, true) else { return };
        let w = &self.waiting[budget.min(self.waiting.len() - 1)];
        // A priority call only queues behind other priority calls: it may be paid
        // where normal refires cannot (reserved tokens and window slots).
        let behind = match class {
            Class::Priority => !w.priority.is_empty(),
            Class::Normal => !w.priority.is_empty() || !w.normal.is_empty(),
        };
        if behind {
            // Others on this budget were due first: queue behind them.
            metrics::refire_skipped(SkipReason::Budget);
            self.enqueue(budget, class, entry);
        } else {
            self.try_pay(budget, class, entry, now, true);
        }
    }

    fn enqueue(&mut self, budget: usize, class: Class, entry: Entry) {
        let i = budget.min(self.waiting.len() - 1);
        match class {
            Class::Priority => self.waiting[i].priority.push_back(entry),
            Class::Normal => self.waiting[i].normal.push_back(entry),
        }
    }

    /// Asks `budget` for a token; launches on success, queues on refusal.
    fn try_pay(&mut self, budget: usize, class: Class, entry: Entry, now: Instant, count: bool) -> bool {
        let Some(permit) = self.take_permit() else {
            // Keep the entry first in line and wait for a permit.
            self.heap.push(Reverse(entry));
            self.blocked = true;
            return false;
        };
        let paid = self.shared.budgets.with(budget, |b| b.try_acquire(class, now)).unwrap_or(Ok(()));
        match paid {
            Ok(()) => {
                self.launch(entry, permit, now);
                true
            }
            Err(denied) => {
                drop(permit);
                if count {
                    metrics::refire_skipped(match denied {
                        Denied::Empty { .. } => SkipReason::Budget,
                        Denied::Paused { .. } => SkipReason::BudgetPaused,
                    });
                }
                let i = budget.min(self.waiting.len() - 1);
                let retry = denied.retry_at();
                self.waiting[i].wake = Some(self.waiting[i].wake.map_or(retry, |w| w.min(retry)));
                self.enqueue(budget, class, entry);
                false
            }
        }
    }

    /// Pays queued entries of budget `b`, priority first, until the budget refuses.
    fn drain_budget(&mut self, b: usize, now: Instant) {
        self.waiting[b].wake = None;
        loop {
            if self.chunk_full() {
                // The rest of the queue goes on in the next pass.
                let w = &mut self.waiting[b];
                if !w.priority.is_empty() || !w.normal.is_empty() {
                    w.wake = Some(now);
                }
                return;
            }
            // Priority first, except that a normal entry which has starved meanwhile (and so
            // now counts as priority) keeps its place in due order.
            let w = &self.waiting[b];
            let from_normal = match (w.priority.front(), w.normal.front()) {
                (None, None) => return,
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(p), Some(n)) => {
                    n.due < p.due && matches!(self.verdict(n, now), Verdict::Ready { class: Class::Priority, .. })
                }
            };
            let w = &mut self.waiting[b];
            let next = if from_normal { w.normal.pop_front() } else { w.priority.pop_front() };
            let Some(entry) = next else { return };
            let Some((entry, _, class)) = self.ready(entry, now, false) else { continue };
            if !self.try_pay(b, class, entry, now, false) {
                if self.blocked {
                    // Out of permits with entries still queued: drain again as soon as a
                    // permit frees, or the queue would wait for a wake that no refusal is left
                    // to set.
                    self.waiting[b].wake = Some(now);
                    return;
                }
                // Refused: the entry is back in its queue. Put it back at the front so due
                // order holds.
                let w = &mut self.waiting[b];
                let q = match class {
                    Class::Priority => &mut w.priority,
                    Class::Normal => &mut w.normal,
                };
                if let Some(e) = q.pop_back() {
                    q.push_front(e);
                }
                return;
            }
        }
    }

    /// Ends the sessions whose lease or lifetime ran out while they wait for a paused budget:
    /// a long backoff must not keep them alive (nothing is sent for them either way).
    fn sweep_waiting(&mut self, now: Instant) {
        for b in 0..self.waiting.len() {
            let priority = std::mem::take(&mut self.waiting[b].priority);
            self.waiting[b].priority = self.sweep_queue(priority, now);
            let normal = std::mem::take(&mut self.waiting[b].normal);
            self.waiting[b].normal = self.sweep_queue(normal, now);
        }
    }

    fn sweep_queue(&mut self, queue: VecDeque<Entry>, now: Instant) -> VecDeque<Entry> {
        let mut kept = VecDeque::with_capacity(queue.len());
        for entry in queue {
            match self.verdict(&entry, now) {
                Verdict::Stale => {}
                Verdict::Expired(reason) => self.expire(&entry, reason, now),
                _ => kept.push_back(entry),
            }
        }
        kept
    }

    fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take().or_else(|| Arc::clone(&self.shared.in_flight).try_acquire_owned().ok())
    }

    /// Moves a skipped entry's deadline one interval on (or to its expiry, if sooner).
    fn reschedule(&mut self, entry: Entry, now: Instant) {
        let interval = self.shared.platform(entry.key.platform).refire_interval;
        let next = self.shared.table.with_generation(&entry.key, entry.generation, |s| {
            s.next_due = (now + interval).min(s.expires_at().max(now));
            s.next_due
        });
        if let Some(due) = next {
            self.push(entry.key, entry.generation, due);
        }
    }

    /// Moves an early entry's deadline to `at` (or to its expiry, if sooner).
    fn defer(&mut self, entry: Entry, at: Instant) {
        let next = self.shared.table.with_generation(&entry.key, entry.generation, |s| {
            s.next_due = at.min(s.expires_at());
            s.next_due
        });
        if let Some(due) = next {
            self.push(entry.key, entry.generation, due);
        }
    }

    fn expire(&mut self, entry: &Entry, reason: EndReason, now: Instant) {
        if let Some(session) = self.shared.table.remove_if_generation(&entry.key, entry.generation) {
            self.shared.ended(&session, reason, now);
        }
    }

    /// Launches the typing call of `entry` now.
    fn launch(&mut self, entry: Entry, permit: OwnedSemaphorePermit, now: Instant) {
        let interval = self.shared.platform(entry.key.platform).refire_interval;
        // A first call right after another one: the session started in a burst, and its second
        // call comes a little early so that the burst does not stay together.
        let in_burst = self.last_first.is_some_and(|t| now.saturating_duration_since(t) < BURST_WINDOW);
        let launched = self.shared.table.with_generation(&entry.key, entry.generation, |s| {
            let first = !s.first_sent;
            let offset = if first && in_burst { self.spread_offset(interval) } else { Duration::ZERO };
            s.in_flight = true;
            s.first_sent = true;
            let not_before = now + interval - offset;
            s.not_before = Some(not_before);
            s.next_due = not_before.min(s.expires_at().max(now));
            (s.next_due, s.api_key, s.budget, first)
        });
        let Some((next_due, api_key, budget, first)) = launched else {
            return;
        };
        if first {
            self.last_first = Some(now);
            self.spread_seq += u64::from(in_burst);
        }
        self.launched += 1;
        metrics::refire_lateness(now.saturating_duration_since(entry.due));
        let key = entry.key.clone();
        self.push(entry.key, entry.generation, next_due);
        let shared = Arc::clone(&self.shared);
        let generation = entry.generation;
        self.tasks.spawn(async move {
            super::fire::fire(&shared, key, generation, api_key, budget, now).await;
            drop(permit);
        });
    }

    /// The next offset of a burst's second calls: spread over `[0, burst_spread(interval))` by a
    /// golden-ratio sequence, so any run of consecutive bursts covers the range evenly.
    fn spread_offset(&self, interval: Duration) -> Duration {
        #[allow(clippy::cast_precision_loss, reason = "a sequence position; only its fraction matters")]
        let u = (self.spread_seq as f64 * 0.618_033_988_749_895).fract();
        super::burst_spread(interval).mul_f64(u)
    }

    fn update_gauges(&self) {
        let now = Instant::now();
        let interval = self.shared.cfg.platforms.onlyfans.refire_interval;
        for i in 0..self.shared.budgets.len() {
            if let Some(s) = self.shared.budgets.with(i, |b| b.snapshot(interval, now)) {
                metrics::budget_state(
                    &s.name,
                    s.tokens,
                    s.limit_per_minute,
                    s.remaining_minute,
                    s.paused,
                    s.capacity_fans,
                );
            }
        }
        metrics::in_flight(self.shared.cfg.engine.max_in_flight - self.shared.in_flight.available_permits());
        metrics::sessions_active(self.shared.table.len());
    }
}
