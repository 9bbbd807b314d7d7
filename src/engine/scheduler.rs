//! The scheduler: the one task that owns every refire deadline.
//!
//! Deadlines sit in a min-heap of `(due, seq, key, generation)`. Entries are never removed
//! early: an entry is acted on only if the session still exists with the same generation and
//! the same `next_due`, so a stop (which removes the session) or a restart (a new generation)
//! silently turns older entries stale. That keeps at most one live deadline per chat.
//!
//! For each live due entry, in due order: end the session if its leases or lifetime ran out (a
//! session that reached its maximum lifetime leaves its chat capped); skip if its account is
//! paused; else ask the budget, as what the session is now: a first indicator (no call has
//! succeeded yet), a slot holder, or a waiting session (see [`super::slots`]). A refused entry
//! waits in its budget's queue (first indicators, then slot holders, each in due order, then
//! waiting sessions, the one dark the longest first) until the budget can pay; a granted one
//! takes an in-flight permit and is launched as its own task. When every permit is taken the
//! scheduler waits for one rather than dropping work.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::call::InFlight;
use super::slots::{Joining, Slots};
use super::{Command, Shared};
use crate::budget::{BudgetIndex, Class, Denied, PauseReason};
use crate::ids::SessionKey;
use crate::metrics::{self, EndReason, SkipReason};

/// How often the budget and in-flight gauges are refreshed.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// Calls that leave together as one task (see [`Scheduler::flush`]); also the fewest a pass
/// launches before it may yield.
const LAUNCH_CHUNK: usize = 32;

/// How long one pass may go on launching, past its first chunk, when refires are falling behind
/// (see [`BEHIND`]), before the scheduler yields to the runtime. A burst (a batch of starts, a
/// queue released after a budget pause) is launched over several passes, with every task that
/// became ready meanwhile (hook requests above all) polled between two, instead of queueing
/// behind the whole burst. But on a busy runtime a yield waits behind every ready task: a
/// scheduler that yielded after every chunk launched fewer calls a second the busier the
/// process was, and its refires fell further behind.
#[cfg(not(test))]
const PASS_BUDGET: Duration = Duration::from_micros(500);
/// The engine's tests run on a clock that stands still during a pass: there a pass ends after
/// one chunk, as it does on a loaded runtime, so that they see the scheduler yield.
#[cfg(test)]
const PASS_BUDGET: Duration = Duration::ZERO;

/// A refire due this long before the pass began is late: the scheduler is falling behind, and
/// a pass goes on past its first chunk (see [`PASS_BUDGET`]). A burst of starts, due at once,
/// is not late: its first calls go one chunk per pass, so that the connections they need to the
/// upstream come as the earlier ones are answered, and not all at once.
const BEHIND: Duration = Duration::from_millis(5);

/// First calls launched closer together than this belong to one burst (see
/// [`super::burst_spread`]). A batch of starts launches its first calls a fraction of a
/// millisecond apart; hooks sent one by one by chatters rarely come this close.
const BURST_WINDOW: Duration = Duration::from_millis(2);

/// Second calls of a burst that share one offset (see [`Scheduler::spread_offset`]): as many as
/// one launch chunk, the calls that leave together as one task anyway. A burst of up to this many
/// keeps its deadlines together, as a plain timer per session would; a larger one is cut into
/// groups of this size.
const SPREAD_GROUP: u64 = LAUNCH_CHUNK as u64;

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

/// A waiting session's entry, ordered by how long its fan has been without an indicator.
#[derive(Debug)]
struct Dark {
    since: Instant,
    entry: Entry,
}

impl PartialEq for Dark {
    fn eq(&self, other: &Self) -> bool {
        (self.since, self.entry.seq) == (other.since, other.entry.seq)
    }
}
impl Eq for Dark {}
impl PartialOrd for Dark {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Dark {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.since, self.entry.seq).cmp(&(other.since, other.entry.seq))
    }
}

/// Entries a budget could not pay for yet, in the order they will be paid: first indicators,
/// then slot holders (each in due order), then waiting sessions, the one dark the longest first.
#[derive(Debug, Default)]
struct Waiting {
    first: VecDeque<Entry>,
    slot: VecDeque<Entry>,
    spare: BinaryHeap<Reverse<Dark>>,
    /// When the budget may pay again.
    wake: Option<Instant>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.first.is_empty() && self.slot.is_empty() && self.spare.is_empty()
    }

    /// Whether an entry of `class` would have to queue behind others.
    fn ahead_of(&self, class: Class) -> bool {
        match class {
            Class::First => !self.first.is_empty(),
            Class::Slot => !self.first.is_empty() || !self.slot.is_empty(),
            Class::Spare => !self.is_empty(),
        }
    }

    /// Whether entries of a class paid before `class` wait.
    fn higher_than(&self, class: Class) -> bool {
        match class {
            Class::First => false,
            Class::Slot => !self.first.is_empty(),
            Class::Spare => !self.first.is_empty() || !self.slot.is_empty(),
        }
    }

    fn push(&mut self, class: Class, dark: Instant, entry: Entry) {
        match class {
            Class::First => self.first.push_back(entry),
            Class::Slot => self.slot.push_back(entry),
            Class::Spare => self.spare.push(Reverse(Dark { since: dark, entry })),
        }
    }

    /// Puts a refused entry back where it was: at the front of its queue.
    fn push_front(&mut self, class: Class, dark: Instant, entry: Entry) {
        match class {
            Class::First => self.first.push_front(entry),
            Class::Slot => self.slot.push_front(entry),
            Class::Spare => self.spare.push(Reverse(Dark { since: dark, entry })),
        }
    }

    fn pop(&mut self) -> Option<Entry> {
        self.first.pop_front().or_else(|| self.slot.pop_front()).or_else(|| self.spare.pop().map(|Reverse(d)| d.entry))
    }
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
    Ready(Ready),
}

/// A due entry that may be paid: its budget, its class and since when its fan is dark.
#[derive(Debug, Clone, Copy)]
struct Ready {
    budget: BudgetIndex,
    class: Class,
    dark: Instant,
}

/// What [`Scheduler::try_pay`] did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paid {
    Launched,
    /// The budget refused: the entry waits in its queue.
    Queued,
    /// No in-flight permit: the entry is back in the heap until one frees.
    Blocked,
    /// Skipped for good (no such budget): rescheduled one interval on.
    Skipped,
}

/// The deadline loop. Build it with [`super::Engine::new`], run it with [`Scheduler::run`].
pub struct Scheduler {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    heap: BinaryHeap<Reverse<Entry>>,
    waiting: Vec<Waiting>,
    slots: Slots,
    /// Budgets whose members changed since their slots were last balanced.
    unbalanced: Vec<bool>,
    seq: u64,
    /// A permit obtained while blocked on the in-flight cap.
    permit: Option<OwnedSemaphorePermit>,
    /// Every in-flight permit is taken: wait for one before launching.
    blocked: bool,
    /// While blocked with the upstream's latency unknown: when the in-flight limit grows next.
    grow_at: Option<Instant>,
    /// Calls launched in the current pass.
    launched: usize,
    /// When the last first call was launched.
    last_first: Option<Instant>,
    /// The current burst's first calls launched before the last one (0 for a call alone).
    burst_member: u64,
    /// Groups of second calls spread so far (the position in the spreading sequence).
    spread_groups: u64,
    tasks: TaskTracker,
    /// The typing calls launched since the last flush: up to one chunk, leaving as one task (see
    /// [`Scheduler::flush`]).
    batch: Vec<Call>,
}

/// One typing call (see [`super::fire`]), holding its in-flight permit.
type Call = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("queued", &self.heap.len()).finish_non_exhaustive()
    }
}

// === impl Scheduler ===

impl Scheduler {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Command>) -> Self {
        let n = shared.budgets.len().max(1);
        Self {
            shared,
            rx,
            heap: BinaryHeap::new(),
            waiting: (0..n).map(|_| Waiting::default()).collect(),
            slots: Slots::new(n),
            unbalanced: vec![false; n],
            seq: 0,
            permit: None,
            blocked: false,
            grow_at: None,
            launched: 0,
            last_first: None,
            burst_member: 0,
            spread_groups: 0,
            tasks: TaskTracker::new(),
            batch: Vec::new(),
        }
    }

    /// Runs until `shutdown` is cancelled, then waits for the typing calls already on the wire
    /// (each bounded by `upstream.timeout`). No new call is launched once `shutdown` fires.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut gauges = tokio::time::interval(GAUGE_PERIOD);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the whole loop, moved only when the next wake-up moves: the loop goes
        // round for every answer and every command, and a fresh timer each round would be
        // registered in (and removed from) the timer wheel each time.
        let timer = tokio::time::sleep_until(Instant::now() + GAUGE_PERIOD);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut burst_goes_on = false;
        loop {
            // A full chunk means more may be due: yield once, then go on.
            let pass = Instant::now();
            if burst_goes_on {
                self.last_first = Some(pass);
            }
            self.balance(pass);
            let more = self.process(pass);
            // A burst cut into chunks is still one burst: the wait for the next chunk (longer
            // the busier the runtime) must not end it.
            burst_goes_on = more && self.last_first.is_some_and(|t| t >= pass);
            self.flush();
            // Refires due within a tick of this pass wait for the next one (see `engine.tick`); a
            // start wakes the loop at once through `rx` and takes whatever is due with it. While
            // blocked, the wake-up is the in-flight limit's next growth, which stays put.
            let wake = if self.blocked {
                self.grow_wake()
            } else {
                self.next_wake().map(|w| w.max(pass + self.shared.cfg.engine.tick))
            };
            if let Some(w) = wake.filter(|w| armed != Some(*w)) {
                timer.as_mut().reset(w);
                armed = Some(w);
            }
            let sem = self.shared.in_flight.semaphore();
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
                    self.grow_at = None;
                    self.permit = permit.ok();
                }
                () = tokio::task::yield_now(), if more => {}
                () = &mut timer, if wake.is_some() && !more => {
                    armed = None;
                    if self.blocked {
                        self.grow_at = None;
                        self.shared.in_flight.grow_while_unknown();
                    }
                }
                _ = gauges.tick() => {
                    let now = Instant::now();
                    self.sweep_waiting(now);
                    self.shared.table.sweep_caps(now);
                    self.shared.readiness.sweep(now);
                    // Capacity moves with the upstream's figures and the first indicators of
                    // the last minute.
                    self.unbalanced.fill(true);
                    self.balance(now);
                    self.update_gauges();
                }
            }
        }
        self.shared.draining.store(true, std::sync::atomic::Ordering::Release);
        self.tasks.close();
        self.tasks.wait().await;
        // What is still live ends with the process.
        let now = Instant::now();
        for (key, generation) in self.shared.table.keys_where(|_, _| true) {
            if let Some(session) = self.shared.table.remove_if_generation(&key, generation) {
                self.shared.ended(&key, session, EndReason::Shutdown, now);
            }
        }
    }

    fn accept(&mut self, cmd: Command) {
        match cmd {
            Command::Due { key, generation, due } => self.push(key, generation, due),
            Command::Joined { key, generation, budget, priority, started, calls } => {
                self.slots.join(budget, Joining { key, generation, priority, started, calls });
                self.mark(budget);
            }
            Command::Left { budget, generation } => {
                self.slots.leave(budget, generation);
                self.mark(budget);
            }
            Command::Promoted { budget, generation } => {
                self.slots.promote(budget, generation);
                self.mark(budget);
            }
            Command::Granted { budget } => {
                self.mark(budget);
                let q = self.queue(budget);
                if !q.is_empty() {
                    q.wake = Some(Instant::now());
                }
            }
        }
    }

    fn mark(&mut self, budget: BudgetIndex) {
        let i = budget.min(self.unbalanced.len() - 1);
        self.unbalanced[i] = true;
    }

    /// Balances the slots of every budget whose members or capacity changed, and marks the
    /// sessions whose slot changed. A session admitted while its fan is dark (its entry waits
    /// in the spare queue) is due at once.
    fn balance(&mut self, now: Instant) {
        let last = self.unbalanced.len() - 1;
        for (b, flag) in self.shared.rebalance.iter().enumerate() {
            if flag.swap(false, std::sync::atomic::Ordering::AcqRel) {
                self.unbalanced[b.min(last)] = true;
            }
        }
        for b in 0..self.unbalanced.len() {
            if !std::mem::take(&mut self.unbalanced[b]) {
                continue;
            }
            let Some(capacity) = self.shared.budgets.with(b, |s| s.slot_capacity(now)) else { continue };
            let changes = self.slots.rebalance(b, capacity, self.shared.slot_counts.get(b));
            for c in changes {
                let due = self.shared.table.with_generation(&c.key, c.generation, |s| {
                    s.set_slot(c.lit, now);
                    if !c.lit || s.in_flight || s.next_due > now {
                        return None;
                    }
                    let due = s.not_before.map_or(now, |t| t.max(now)).min(s.expires_at().max(now));
                    (due != s.next_due).then(|| {
                        s.next_due = due;
                        due
                    })
                });
                if let Some(Some(due)) = due {
                    self.push(c.key, c.generation, due);
                }
            }
        }
    }

    fn push(&mut self, key: SessionKey, generation: u64, due: Instant) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { due, seq: self.seq, key, generation }));
    }

    /// While blocked, nothing can launch until a permit frees (budget waits still matter for
    /// expiry, which the next processing pass handles). But while no answer has told the
    /// latency, the in-flight limit grows after each wait of the latency floor, counted from
    /// when the wait began: commands arriving meanwhile must not push it back.
    fn grow_wake(&mut self) -> Option<Instant> {
        if self.shared.in_flight.latency_known() {
            return None;
        }
        let floor = super::inflight::LATENCY_FLOOR;
        Some(*self.grow_at.get_or_insert_with(|| Instant::now() + floor))
    }

    fn next_wake(&self) -> Option<Instant> {
        let heap = self.heap.peek().map(|Reverse(e)| e.due);
        let budgets = self.waiting.iter().filter_map(|w| w.wake).min();
        match (heap, budgets) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on what is due at `now`, for at least [`LAUNCH_CHUNK`] launches and at most
    /// [`PASS_BUDGET`]. Returns whether it stopped early (more may be due).
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
                if self.pass_over(now) {
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
            if self.pass_over(now) {
                return true;
            }
        }
        false
    }

    /// Sends each full chunk on its way, and says whether the pass begun at `pass` is over: after
    /// one chunk, unless refires are falling behind, then after [`PASS_BUDGET`].
    fn pass_over(&mut self, pass: Instant) -> bool {
        if self.batch.len() >= LAUNCH_CHUNK {
            self.flush();
        }
        if self.launched < LAUNCH_CHUNK {
            return false;
        }
        let behind = self.heap.peek().is_some_and(|Reverse(e)| e.due + BEHIND < pass);
        !behind || pass.elapsed() >= PASS_BUDGET
    }

    fn verdict(&self, entry: &Entry, now: Instant) -> Verdict {
        let shared = &self.shared;
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
            // Until one call has succeeded, the fan has not seen a first indicator.
            let class = match (s.first_lit, s.slot) {
                (false, _) => Class::First,
                (true, true) => Class::Slot,
                (true, false) => Class::Spare,
            };
            Verdict::Ready(Ready { budget: s.budget, class, dark: s.lit_until.unwrap_or(s.started_at) })
        });
        match v {
            None => Verdict::Stale,
            Some(Verdict::Ready(_)) if shared.readiness.blocks(&entry.key.account, now) => Verdict::AccountPaused,
            Some(v) => v,
        }
    }

    /// Acts on every verdict but `Ready` (drop, end, skip, defer) and hands a ready entry back.
    /// `count_in_flight` counts a skip for a call still in flight (a queued entry met again
    /// while draining was already counted when it was queued).
    fn ready(&mut self, entry: Entry, now: Instant, count_in_flight: bool) -> Option<(Entry, Ready)> {
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
            Verdict::Ready(r) => return Some((entry, r)),
        }
        None
    }

    fn handle_due(&mut self, entry: Entry, now: Instant) {
        let Some((entry, r)) = self.ready(entry, now, true) else { return };
        if self.queue(r.budget).ahead_of(r.class) {
            // Others on this budget go first: queue behind them.
            metrics::refire_skipped(SkipReason::Budget);
            self.queue(r.budget).push(r.class, r.dark, entry);
        } else {
            self.try_pay(r, entry, now, true);
        }
    }

    fn queue(&mut self, budget: BudgetIndex) -> &mut Waiting {
        let i = budget.min(self.waiting.len() - 1);
        &mut self.waiting[i]
    }

    /// Asks the budget for a token; launches on success, queues on refusal.
    fn try_pay(&mut self, r: Ready, entry: Entry, now: Instant, count: bool) -> Paid {
        // With replicas, a call this replica may not send is not paid for either (the budget's
        // tokens are for the calls that leave); `fire` asks again right before sending.
        if self.shared.ownership.get().is_some_and(|o| !o.may_send(&entry.key, now)) {
            metrics::refire_skipped(SkipReason::NotOwner);
            self.reschedule(entry, now);
            return Paid::Skipped;
        }
        let Some(permit) = self.take_permit() else {
            // Keep the entry first in line and wait for a permit.
            if count {
                metrics::refire_skipped(SkipReason::InFlightCap);
            }
            self.heap.push(Reverse(entry));
            self.blocked = true;
            return Paid::Blocked;
        };
        let Some(paid) = self.shared.budgets.with(r.budget, |b| b.try_acquire(r.class, now)) else {
            // A session on a budget that does not exist: never send unpaid.
            metrics::refire_skipped(SkipReason::NoBudget);
            if !self.shared.no_budget_logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(
                    budget = r.budget,
                    "a session refers to a budget that does not exist; its refires are skipped"
                );
            }
            self.reschedule(entry, now);
            return Paid::Skipped;
        };
        match paid {
            Ok(()) => {
                self.launch(entry, permit, now);
                Paid::Launched
            }
            Err(denied) => {
                drop(permit);
                if count {
                    metrics::refire_skipped(match denied {
                        Denied::Empty { .. } => SkipReason::Budget,
                        Denied::Paused { reason: PauseReason::DailyReserve, .. } => SkipReason::DailyLimit,
                        Denied::Paused { .. } => SkipReason::BudgetPaused,
                    });
                }
                let retry = denied.retry_at();
                let q = self.queue(r.budget);
                q.wake = Some(q.wake.map_or(retry, |w| w.min(retry)));
                q.push(r.class, r.dark, entry);
                Paid::Queued
            }
        }
    }

    /// Pays queued entries of budget `b` in their order until the budget refuses.
    fn drain_budget(&mut self, b: usize, now: Instant) {
        self.waiting[b].wake = None;
        loop {
            if self.pass_over(now) {
                // The rest of the queue goes on in the next pass.
                let w = &mut self.waiting[b];
                if !w.is_empty() {
                    w.wake = Some(now);
                }
                return;
            }
            let Some(entry) = self.waiting[b].pop() else { return };
            // Its class may have changed while it waited (a first call answered, a slot given or
            // taken): it is paid, or queued again, as what it is now.
            let Some((entry, r)) = self.ready(entry, now, false) else { continue };
            if self.waiting[b].higher_than(r.class) {
                self.waiting[b].push(r.class, r.dark, entry);
                continue;
            }
            match self.try_pay(r, entry, now, false) {
                Paid::Launched | Paid::Skipped => {}
                Paid::Blocked => {
                    // Out of permits with entries still queued: drain again as soon as a
                    // permit frees, or the queue would wait for a wake that no refusal is left
                    // to set.
                    self.waiting[b].wake = Some(now);
                    return;
                }
                Paid::Queued => {
                    // Refused: back to the front of its queue, so that order holds. A waiting
                    // session refused leaves slot holders and newcomers to be paid still.
                    let w = &mut self.waiting[b];
                    let back = match r.class {
                        Class::First => w.first.pop_back(),
                        Class::Slot => w.slot.pop_back(),
                        Class::Spare => None,
                    };
                    if let Some(e) = back {
                        w.push_front(r.class, r.dark, e);
                    }
                    if r.class != Class::Spare || (w.first.is_empty() && w.slot.is_empty()) {
                        return;
                    }
                }
            }
        }
    }

    /// Ends the sessions whose lease or lifetime ran out while they wait for a paused budget:
    /// a long backoff must not keep them alive (nothing is sent for them either way).
    fn sweep_waiting(&mut self, now: Instant) {
        for b in 0..self.waiting.len() {
            let w = std::mem::take(&mut self.waiting[b]);
            let mut kept = Waiting { wake: w.wake, ..Waiting::default() };
            for entry in w.first.into_iter().chain(w.slot).chain(w.spare.into_iter().map(|Reverse(d)| d.entry)) {
                match self.verdict(&entry, now) {
                    Verdict::Stale => {}
                    Verdict::Expired(reason) => self.expire(&entry, reason, now),
                    Verdict::Ready(r) => kept.push(r.class, r.dark, entry),
                    // Paused, in flight or early: it is handled when the queue is drained.
                    _ => kept.slot.push_back(entry),
                }
            }
            // Queue order within each class is due order (or darkness), as it was.
            kept.first.make_contiguous().sort();
            kept.slot.make_contiguous().sort();
            self.waiting[b] = kept;
        }
    }

    fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take().or_else(|| self.shared.in_flight.try_acquire()).or_else(|| {
            self.resize_in_flight();
            self.shared.in_flight.try_acquire()
        })
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
        if reason == EndReason::MaxLifetime {
            // Capped before it is removed: a start landing in between finds the cap.
            let lease = self.shared.table.with_generation(&entry.key, entry.generation, |s| s.lease_end());
            if let Some(until) = lease.filter(|u| *u > now) {
                self.shared.table.cap(entry.key.clone(), until);
            }
        }
        if let Some(session) = self.shared.table.remove_if_generation(&entry.key, entry.generation) {
            self.shared.ended(&entry.key, session, reason, now);
        }
    }

    /// Launches the typing call of `entry` now.
    fn launch(&mut self, entry: Entry, permit: OwnedSemaphorePermit, now: Instant) {
        let interval = self.shared.platform(entry.key.platform).refire_interval;
        // A first call right after another one: the session started in a burst. Past the
        // burst's first group its second call comes a little early, so that a large burst does
        // not stay together.
        let in_burst = self.last_first.is_some_and(|t| now.saturating_duration_since(t) < BURST_WINDOW);
        let member = if in_burst { self.burst_member + 1 } else { 0 };
        let launched = self.shared.table.with_generation(&entry.key, entry.generation, |s| {
            let first = !s.first_sent;
            let offset = if first { self.spread_offset(member, interval) } else { Duration::ZERO };
            s.in_flight = true;
            s.first_sent = true;
            let not_before = now + interval - offset;
            s.not_before = Some(not_before);
            s.next_due = not_before.min(s.expires_at().max(now));
            let call = Arc::clone(s.call.get_or_insert_with(InFlight::new));
            (s.next_due, s.api_key, s.budget, first, call)
        });
        let Some((next_due, api_key, budget, first, call)) = launched else {
            return;
        };
        if first {
            self.last_first = Some(now);
            self.burst_member = member;
            self.spread_groups += u64::from(starts_group(member));
        }
        self.launched += 1;
        metrics::refire_lateness(now.saturating_duration_since(entry.due));
        let key = entry.key.clone();
        self.push(entry.key, entry.generation, next_due);
        let shared = Arc::clone(&self.shared);
        let generation = entry.generation;
        self.batch.push(Box::pin(async move {
            super::fire::fire(&shared, key, generation, api_key, budget, now, &call).await;
            drop(permit);
        }));
    }

    /// Sends the calls launched since the last flush: one task for all of them, each call polled
    /// only when its own answer moves. A task per call cost a spawn per call and, with two or
    /// more spawned at once, a wake-up of another worker per pass for each.
    fn flush(&mut self) {
        match self.batch.len() {
            0 => {}
            1 => {
                let call = self.batch.pop();
                self.tasks.spawn(async move {
                    if let Some(call) = call {
                        call.await;
                    }
                });
            }
            _ => {
                let calls: FuturesUnordered<Call> = self.batch.drain(..).collect();
                self.tasks.spawn(async move {
                    let mut calls = calls;
                    while calls.next().await.is_some() {}
                });
            }
        }
    }

    /// How much sooner than one interval the second call of the burst's `member`-th first call
    /// comes. The burst's first [`SPREAD_GROUP`] calls keep the full interval; each further group
    /// shares one offset in `[0, burst_spread(interval))`, the next of a golden-ratio sequence, so
    /// any run of consecutive groups covers the range evenly. A group's calls leaving together
    /// cost one wake-up of the process instead of one each, and are too few to hold the cores.
    fn spread_offset(&self, member: u64, interval: Duration) -> Duration {
        if member < SPREAD_GROUP {
            return Duration::ZERO;
        }
        let group = self.spread_groups + u64::from(starts_group(member));
        #[allow(clippy::cast_precision_loss, reason = "a sequence position; only its fraction matters")]
        let u = (group as f64 * 0.618_033_988_749_895).fract();
        super::burst_spread(interval).mul_f64(u)
    }

    fn update_gauges(&self) {
        let now = Instant::now();
        let interval = self.shared.cfg.platforms.onlyfans.refire_interval;
        for i in 0..self.shared.budgets.len() {
            let slots = self.shared.slot_counts.get(i).map_or((0, 0), super::slots::SlotCounts::get);
            if let Some(s) = self.shared.budgets.with(i, |b| b.snapshot(interval, slots, now)) {
                metrics::budget_state(&s);
            }
        }
        self.resize_in_flight();
        metrics::in_flight(self.shared.in_flight.taken());
        metrics::sessions_active(self.shared.table.len());
    }

    /// Moves the in-flight limit to what the live sessions need at the observed latency: once
    /// a second, and whenever every permit is taken (a slow upstream is then seen at once).
    fn resize_in_flight(&self) {
        let interval = self.shared.cfg.platforms.onlyfans.refire_interval;
        #[allow(clippy::cast_precision_loss, reason = "session counts far below 2^52")]
        let rate = self.shared.table.len() as f64 / interval.as_secs_f64();
        let in_flight = &self.shared.in_flight;
        in_flight.resize(in_flight.target(rate));
    }
}

/// Whether the burst's `member`-th first call opens a new group of spread second calls.
fn starts_group(member: u64) -> bool {
    member >= SPREAD_GROUP && member % SPREAD_GROUP == 0
}
