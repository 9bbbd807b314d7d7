//! The per-minute rate budget that typing shares with the chat tool's important traffic.
//!
//! One [`BudgetState`] per configured budget name (several API keys may share one, since the
//! real limit is probably per team). Each holds:
//! - a token bucket refilled at `typing_share x limit / 60` tokens per second, as deep as
//!   `burst` or one second of refill, whichever is more (so a large key is never throttled by a
//!   small burst);
//! - a sliding 60-second window of grants (counted per 100 ms, see `budget/window.rs`), hard-capped at
//!   `typing_share x limit`, so that no 60-second window ever carries more typing calls than
//!   the share, whatever the burst;
//! - upstream feedback: `limit_minute` replaces the configured limit; `remaining_minute` at or
//!   below `reserve x limit` pauses typing, and above it typing may spend per minute what it
//!   spent in the last minute plus the headroom left above the reserve (so typing backs off as
//!   the tool's own traffic grows); numeric `limit_day` / `remaining_day` pause typing while the
//!   day's remainder is at or below the reserve; a 429 pauses for `Retry-After`, or for an
//!   exponential backoff with jitter.
//!
//! Classes: first indicators and lit-slot refires ([`Class::First`], [`Class::Slot`]) may spend
//! the whole bucket and window; waiting sessions ([`Class::Spare`]) only what lies above a
//! reserve of half the bucket (and as many window slots), so they never take what a slot holder
//! or a newcomer is about to need. [`BudgetState::slot_capacity`] is what slots may spend.
//!
//! Everything here is pure: every method takes `now`, and the jitter is an argument, so the
//! logic is tested without sleeping. [`Budgets`] wraps the states in short `std` mutexes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::BudgetSettings;
use crate::upstream::RateLimits;

mod window;
use window::GrantWindow;

/// The window the upstream limit is expressed over (`budget.window`; only tests shorten it).
pub const WINDOW: Duration = Duration::from_secs(60);
/// First backoff after a 429 that named no `Retry-After`.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest backoff after repeated 429s without `Retry-After`.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long typing pauses when `remaining_minute` reaches the reserve before it probes again.
pub const RESERVE_PAUSE: Duration = Duration::from_secs(10);
/// A headroom cap learned from `remaining_minute` is forgotten after this long without news.
const HEADROOM_TTL: Duration = Duration::from_secs(60);
/// How long typing pauses when `remaining_day` reaches the reserve before one call probes again.
pub const DAILY_PAUSE: Duration = Duration::from_secs(60);
/// The bucket holds at least this much refill, whatever `burst` says.
const DEPTH_OF_RATE: Duration = Duration::from_secs(1);

/// Index of a budget in [`Budgets`].
pub type BudgetIndex = usize;

/// Which part of the budget a typing call may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// The first indicator of a new session: counted, so that slot capacity leaves room for the
    /// newcomers the budget recently had to pay.
    First,
    /// A refire of a session holding a lit slot.
    Slot,
    /// A refire of a waiting session: only what lies above the reserve.
    Spare,
}

/// Why the budget refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token (or the 60 s window is full) until `retry_at`.
    Empty {
        /// When a token can be there.
        retry_at: Instant,
    },
    /// The budget is paused until `until`.
    Paused {
        /// End of the pause.
        until: Instant,
        /// What paused it.
        reason: PauseReason,
    },
}

impl Denied {
    /// When it is worth asking again.
    pub fn retry_at(self) -> Instant {
        match self {
            Self::Empty { retry_at } => retry_at,
            Self::Paused { until, .. } => until,
        }
    }
}

/// What paused a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The upstream answered 429.
    RateLimited,
    /// `remaining_minute` reached the reserve.
    Reserve,
    /// `remaining_day` reached the reserve share of `limit_day`.
    DailyReserve,
}

/// A token bucket. Pure: every method takes `now`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    last: Instant,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `rate` tokens per second.
    pub fn new(capacity: f64, rate: f64, now: Instant) -> Self {
        Self { tokens: capacity, capacity, rate, last: now }
    }

    /// A bucket holding only its reserve (half its capacity) to begin with: a fresh budget does
    /// not let waiting sessions spend a whole bucket on top of the first minute's share.
    fn starting_at_floor(capacity: f64, rate: f64, now: Instant) -> Self {
        Self { tokens: (capacity / 2.0).floor(), capacity, rate, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Changes the refill rate from `now` on (tokens earned so far at the old rate are kept).
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(0.0);
    }

    /// Changes how many tokens the bucket may hold.
    fn set_capacity(&mut self, capacity: f64, now: Instant) {
        self.refill(now);
        self.capacity = capacity;
        self.tokens = self.tokens.min(capacity);
    }

    /// Tokens available at `now`.
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token if more than `floor` would remain... precisely: if `tokens - 1 >= floor`.
    ///
    /// # Errors
    /// The instant at which the token will be there, at the current rate.
    pub fn try_take(&mut self, floor: f64, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        let need = 1.0 + floor;
        if self.tokens >= need - 1e-9 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(now + WINDOW);
        }
        let wait = ((need - self.tokens) / self.rate).min(WINDOW.as_secs_f64());
        Err(now + Duration::from_secs_f64(wait.max(0.001)))
    }
}

/// One budget's whole state.
#[derive(Debug)]
pub struct BudgetState {
    name: String,
    configured_limit: u32,
    reported_limit: Option<u32>,
    remaining: Option<u32>,
    share: f64,
    reserve: f64,
    /// `budget.burst`: the bucket is at least this deep.
    burst: f64,
    bucket: TokenBucket,
    /// The period the limit is counted over (60 s).
    period: Duration,
    /// Grants within the last `period`.
    window: GrantWindow,
    /// First-indicator grants within the last `period`.
    firsts: GrantWindow,
    paused_until: Option<(Instant, PauseReason)>,
    /// A reserve pause ended: the next call probes the upstream, whatever its class, so that
    /// a fresh `remaining_minute` can lift the brake.
    probe_due: bool,
    consecutive_429: u32,
    /// Tokens per second allowed by the last `remaining_minute`, and when it was learned.
    headroom_rate: Option<(f64, Instant)>,
    /// The tool's own traffic in the upstream's window (`limit - remaining - ours`) as last
    /// estimated, when, and how fast it has been growing (requests per second, smoothed).
    others: Option<(f64, Instant, f64)>,
    /// `limit_day` and `remaining_day` as last reported, when both were numbers.
    daily: Option<(u32, u32)>,
    /// With replicas sharing the budget (Redis backend): what the shared window granted this
    /// replica; `None` in one process.
    shared: Option<SharedGrant>,
}

/// Calls the replicas' shared window granted this replica until `until`, and this replica's
/// share of the budget's sessions (its share of the lit slots).
#[derive(Debug, Clone, Copy)]
struct SharedGrant {
    tokens: f64,
    /// Calls granted for first indicators only (from the part of the window other calls leave).
    first_tokens: f64,
    until: Instant,
    fraction: f64,
    /// A call was denied for want of a grant since the last one came.
    starved: bool,
    /// A first indicator was denied for want of a grant since the last one came.
    starved_first: bool,
    /// Typing calls granted to every replica in the shared window (what the upstream counts as
    /// typing's, not the tool's).
    window_used: f64,
    /// This replica's slot capacity, when the replicas light one prefix of the budget's order.
    slot_calls: Option<f64>,
}

/// What a replica's reservation from a budget's shared window brought back.
#[derive(Debug, Clone, Copy)]
pub struct SharedWindow {
    /// Calls granted to this replica.
    pub tokens: u32,
    /// Calls granted to this replica for first indicators only.
    pub first_tokens: u32,
    /// This replica's share of the budget's sessions (its share of the lit slots).
    pub fraction: f64,
    /// Calls granted to every replica within the window, this grant included.
    pub window_used: u32,
    /// When the replicas light one prefix of the budget's slot order between them: the calls
    /// per period of this replica's sessions within it, its slot capacity until the next grant.
    pub slot_calls: Option<f64>,
}

/// How soon a call denied for want of a shared grant asks again.
const SHARED_RETRY: Duration = Duration::from_millis(50);

// === impl BudgetState ===

impl BudgetState {
    /// A budget named `name` with `limit` requests per minute assumed until reported.
    pub fn new(name: &str, limit: u32, settings: &BudgetSettings, now: Instant) -> Self {
        let share = settings.typing_share.get();
        let period = settings.window;
        let rate = share * f64::from(limit) / period.as_secs_f64();
        Self {
            name: name.to_owned(),
            configured_limit: limit,
            reported_limit: None,
            remaining: None,
            share,
            reserve: settings.reserve.get(),
            burst: f64::from(settings.burst.get()),
            bucket: TokenBucket::starting_at_floor(depth(f64::from(settings.burst.get()), rate), rate, now),
            period,
            window: GrantWindow::new(period, now),
            firsts: GrantWindow::new(period, now),
            paused_until: None,
            probe_due: false,
            consecutive_429: 0,
            headroom_rate: None,
            others: None,
            daily: None,
            shared: None,
        }
    }

    /// Replicas share this budget: from now on a call also needs one of the `tokens` the shared
    /// window granted this replica until `until`; `fraction` is this replica's share of the
    /// budget's sessions, and so of its lit slots. Returns what is left of the previous grant,
    /// for the window to take back.
    /// `window_used` is what every replica was granted in the shared window: typing's calls as
    /// the upstream counts them, for the headroom rule.
    pub fn set_shared_grant(&mut self, grant: SharedWindow, until: Instant, now: Instant) -> u32 {
        let left = self.shared.filter(|g| g.until > now).map_or(0.0, |g| g.tokens.max(0.0) + g.first_tokens.max(0.0));
        self.shared = Some(SharedGrant {
            tokens: f64::from(grant.tokens),
            first_tokens: f64::from(grant.first_tokens),
            until,
            fraction: grant.fraction.clamp(0.0, 1.0),
            starved: false,
            starved_first: false,
            window_used: f64::from(grant.window_used),
            slot_calls: grant.slot_calls,
        });
        // Truncation is the point: a fraction of a call is not given back.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small count")]
        let left = left.floor() as u32;
        left
    }

    /// Whether a call was denied for want of a shared grant since the last grant came (the
    /// replica then reserves again before its next scheduled reservation).
    pub fn shared_starved(&self) -> bool {
        self.shared.is_some_and(|g| g.starved)
    }

    /// Whether a first indicator was denied for want of a shared grant since the last grant.
    pub fn shared_first_starved(&self) -> bool {
        self.shared.is_some_and(|g| g.starved_first)
    }

    /// Typing calls this budget may make per period across all replicas: the share of the limit,
    /// less what the upstream's figures say the tool needs (the window every replica's grant
    /// comes from).
    pub fn period_allowance(&mut self, now: Instant) -> u32 {
        self.sync_rate(now);
        // Truncation is the point: never more than the share.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small positive count")]
        let per_period = (self.rate_in_force(now) * self.period.as_secs_f64()).floor().max(0.0) as u32;
        if self.paused_until.is_some_and(|(u, _)| u > now) { 0 } else { per_period }
    }

    /// The per-minute limit in force: reported, else configured.
    pub fn limit(&self) -> u32 {
        self.reported_limit.unwrap_or(self.configured_limit)
    }

    /// Typing calls allowed per minute: `typing_share x limit`.
    pub fn typing_per_minute(&self) -> f64 {
        self.share * f64::from(self.limit())
    }

    fn window_cap(&self) -> usize {
        // Truncation is the point: never more than the share.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small positive count")]
        let cap = self.typing_per_minute().floor() as usize;
        cap.max(1)
    }

    fn priority_floor(&self) -> f64 {
        (self.bucket.capacity / 2.0).floor()
    }

    /// This process's rate: the rate in force, or with replicas its share of it (its share of
    /// the budget's sessions), so that each paces its own calls and lights its share of slots.
    fn effective_rate(&self, now: Instant) -> f64 {
        self.rate_in_force(now) * self.shared.map_or(1.0, |g| g.fraction)
    }

    /// Typing calls per second the budget may make, all replicas together.
    fn rate_in_force(&self, now: Instant) -> f64 {
        let base = self.typing_per_minute() / self.period.as_secs_f64();
        // However little the upstream leaves, one call per reserve pause probes it again.
        let probe = 1.0 / RESERVE_PAUSE.mul_f64(self.period.as_secs_f64() / WINDOW.as_secs_f64()).as_secs_f64();
        match self.headroom_rate {
            Some((cap, at)) if now.saturating_duration_since(at) < self.period.min(HEADROOM_TTL) => {
                base.min(cap.max(probe))
            }
            _ => base,
        }
    }

    fn sync_rate(&mut self, now: Instant) {
        let rate = self.effective_rate(now);
        if (rate - self.bucket.rate).abs() > f64::EPSILON {
            self.bucket.set_rate(rate, now);
            self.bucket.set_capacity(depth(self.burst, rate), now);
        }
    }

    fn forget_old(&mut self, now: Instant) {
        self.window.advance(now);
        self.firsts.advance(now);
    }

    /// Typing calls per `period` that lit slots may spend now: the rate in force, less what
    /// first indicators needed over the last period, less the bucket's reserve (the burst a
    /// fresh bucket starts with, which the window must still have room for).
    ///
    /// With replicas lighting one prefix of the budget's order between them, it is the calls of
    /// this replica's sessions within that prefix (see [`SharedWindow::slot_calls`]).
    pub fn slot_capacity(&mut self, now: Instant) -> f64 {
        self.forget_old(now);
        self.sync_rate(now);
        if let Some(calls) = self.shared.and_then(|g| g.slot_calls) {
            return calls;
        }
        #[allow(clippy::cast_precision_loss, reason = "counts within one window, far below 2^52")]
        let firsts = self.firsts.len() as f64;
        let per_period = self.effective_rate(now) * self.period.as_secs_f64();
        (per_period - firsts - self.priority_floor()).max(0.0)
    }

    /// Asks for one token for a call of `class`.
    ///
    /// # Errors
    /// [`Denied`] with when to ask again.
    pub fn try_acquire(&mut self, class: Class, now: Instant) -> Result<(), Denied> {
        if let Some((until, reason)) = self.paused_until {
            if now < until {
                return Err(Denied::Paused { until, reason });
            }
            self.paused_until = None;
            self.probe_due = matches!(reason, PauseReason::Reserve | PauseReason::DailyReserve);
        }
        let period = self.period;
        if let Some(g) = &mut self.shared {
            let first = class == Class::First && g.first_tokens >= 1.0;
            // A waiting session's call leaves alone what this replica's slot holders will need
            // until the grant runs out.
            let kept = match (class, g.slot_calls) {
                (Class::Spare, Some(calls)) => {
                    calls / period.as_secs_f64() * g.until.saturating_duration_since(now).as_secs_f64()
                }
                _ => 0.0,
            };
            if (!first && g.tokens < 1.0 + kept) || now >= g.until {
                // Only a call the grant could not pay for asks for the next grant sooner.
                g.starved |= g.tokens < 1.0 || now >= g.until;
                g.starved_first |= class == Class::First;
                return Err(Denied::Empty { retry_at: now + SHARED_RETRY });
            }
        }
        self.forget_old(now);
        if self.probe_due && self.bucket.try_take(0.0, now).is_ok() {
            self.take_shared(class);
            self.probe_due = false;
            self.record(class, now);
            return Ok(());
        }
        self.sync_rate(now);
        // The window keeps slots for first indicators and slot holders just as the bucket keeps
        // tokens for them.
        let cap = self.window_cap();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "half the bucket, a count")]
        let reserved = (self.bucket.capacity as usize).min(cap / 2);
        let (allowed, floor) = match class {
            Class::First | Class::Slot => (cap, 0.0),
            Class::Spare => (cap - reserved, self.priority_floor()),
        };
        if self.window.len() >= allowed {
            let frees = self.window.frees_at(self.window.len() + 1 - allowed).unwrap_or(now + self.period);
            return Err(Denied::Empty { retry_at: frees });
        }
        self.bucket.try_take(floor, now).map_err(|retry_at| Denied::Empty { retry_at })?;
        self.take_shared(class);
        self.record(class, now);
        Ok(())
    }

    /// Counts a grant of `class` at `now` in the window (and among first indicators).
    fn record(&mut self, class: Class, now: Instant) {
        self.window.push(now);
        if class == Class::First {
            self.firsts.push(now);
        }
    }

    fn take_shared(&mut self, class: Class) {
        if let Some(g) = &mut self.shared {
            if class == Class::First && g.first_tokens >= 1.0 {
                g.first_tokens -= 1.0;
            } else {
                g.tokens -= 1.0;
            }
        }
    }

    /// Updates the estimate of the tool's own traffic in the upstream's window (`others`) and
    /// returns how fast it grows (requests per second, 0 when steady or shrinking). Estimates
    /// closer together than a sixtieth of the window are merged, so that jitter in one answer
    /// is not read as a trend.
    fn tool_growth(&mut self, others: f64, now: Instant) -> f64 {
        let min_gap = self.period.as_secs_f64() / 60.0;
        match self.others {
            Some((last, at, slope)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64();
                if dt < min_gap {
                    return slope.max(0.0);
                }
                // Smoothed over about a tenth of the window.
                let weight = (dt / (self.period.as_secs_f64() / 10.0)).min(1.0);
                let slope = slope + weight * ((others - last) / dt - slope);
                self.others = Some((others, now, slope));
                slope.max(0.0)
            }
            None => {
                self.others = Some((others, now, 0.0));
                0.0
            }
        }
    }

    /// Feeds back what an upstream answer said about the rate limit.
    pub fn observe(&mut self, limits: RateLimits, now: Instant) {
        if let Some(limit) = limits.limit_minute.filter(|l| *l > 0) {
            self.reported_limit = Some(limit);
        }
        let scale = self.period.as_secs_f64() / WINDOW.as_secs_f64();
        if let Some(remaining) = limits.remaining_minute {
            self.remaining = Some(remaining);
            let reserve = self.reserve * f64::from(self.limit());
            let headroom = f64::from(remaining) - reserve;
            if headroom <= 0.0 {
                // 10 s of a 60 s window, scaled with the window. What the bucket saved up
                // meanwhile is not spent in one go when the pause ends.
                self.pause(now + RESERVE_PAUSE.mul_f64(scale), PauseReason::Reserve);
                self.bucket.tokens = self.bucket.tokens.min(0.0);
            }
            self.forget_old(now);
            // With replicas, typing's calls in the window are every replica's.
            #[allow(clippy::cast_precision_loss, reason = "a count within one window")]
            let ours = self.shared.map_or(self.window.len() as f64, |g| g.window_used);
            let growth = self.tool_growth(f64::from(self.limit()) - f64::from(remaining) - ours, now);
            // What the tool's traffic will have added over the next half window, at the pace it
            // has been growing, is not typing's to spend: typing's own calls take that long to
            // leave the upstream's window.
            let ahead = growth * self.period.as_secs_f64() / 2.0;
            let per_period = allowance(ours, headroom, reserve) - ahead;
            self.headroom_rate = Some((per_period.max(0.0) / self.period.as_secs_f64(), now));
        }
        if let (Some(limit_day), Some(remaining_day)) = (limits.limit_day, limits.remaining_day) {
            self.daily = Some((limit_day, remaining_day));
            if f64::from(remaining_day) <= self.reserve * f64::from(limit_day) {
                self.pause(now + DAILY_PAUSE.mul_f64(scale), PauseReason::DailyReserve);
            } else if self.paused_until.is_some_and(|(_, r)| r == PauseReason::DailyReserve) {
                // The upstream reports more for the day: typing resumes at once.
                self.paused_until = None;
            }
        } else if limits.limit_day.is_none() && limits.remaining_day.is_none() {
            self.daily = None;
        }
        self.sync_rate(now);
    }

    /// A typing call on this budget succeeded: the 429 backoff starts over.
    pub fn succeeded(&mut self) {
        self.consecutive_429 = 0;
    }

    /// The upstream answered 429. Pauses for `retry_after` when given, else for an exponential
    /// backoff (1 s doubling to 60 s) scaled by `jitter` in `[0, 1)` to between 80% and 120%.
    pub fn rate_limited(&mut self, retry_after: Option<Duration>, jitter: f64, now: Instant) {
        // A 429 answering a call launched before the current pause says nothing new: only the
        // first 429 of a burst of concurrent calls steps the backoff up.
        let already_paused = self.paused_until.is_some_and(|(u, r)| u > now && r == PauseReason::RateLimited);
        if !already_paused {
            self.consecutive_429 = self.consecutive_429.saturating_add(1);
        }
        let pause = retry_after.unwrap_or_else(|| {
            // A success may have reset the count during this pause: the step is then the first.
            let step = self.consecutive_429.saturating_sub(1).min(6);
            let exp = BACKOFF_BASE.saturating_mul(1 << step);
            exp.min(BACKOFF_MAX).mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
        });
        self.pause(now + pause, PauseReason::RateLimited);
        // Whatever the bucket held was evidently too much.
        self.bucket.tokens = self.bucket.tokens.min(0.0);
    }

    fn pause(&mut self, until: Instant, reason: PauseReason) {
        let later = self.paused_until.is_none_or(|(u, _)| until > u);
        if later {
            self.paused_until = Some((until, reason));
        }
    }

    /// A snapshot for `/v1/budget` and the gauges; `slots` are the lit and waiting counts.
    pub fn snapshot(&mut self, refire_interval: Duration, slots: (usize, usize), now: Instant) -> BudgetSnapshot {
        let capacity = self.slot_capacity(now);
        let paused = self.paused_until.filter(|(u, _)| *u > now);
        let per_fan = self.period.as_secs_f64() / refire_interval.as_secs_f64();
        BudgetSnapshot {
            name: self.name.clone(),
            limit_per_minute: self.limit(),
            limit_source: if self.reported_limit.is_some() { "upstream" } else { "config" },
            remaining_minute: self.remaining,
            typing_per_minute: self.typing_per_minute(),
            effective_typing_per_minute: self.effective_rate(now) * self.period.as_secs_f64(),
            tokens: self.bucket.tokens(now),
            sent_last_minute: self.window.len_at(now),
            paused: paused.is_some(),
            paused_for_ms: paused.map(|(u, _)| u128_to_u64(u.saturating_duration_since(now).as_millis())),
            pause_reason: paused.map(|(_, r)| r),
            capacity_fans: capacity / per_fan,
            sessions_lit: slots.0,
            sessions_waiting: slots.1,
            first_indicators_last_minute: self.firsts.len_at(now),
            limit_day: self.daily.map(|(l, _)| l),
            remaining_day: self.daily.map(|(_, r)| r),
        }
    }
}

/// Typing calls per period the budget may spend, given the calls it spent over the last period
/// (`ours`, already inside the upstream's count) and the `headroom` above the reserve that the
/// upstream reports. The limit less the tool's own traffic less the reserve is `ours + headroom`;
/// within one more reserve of it typing gives back what the headroom lacks of a second reserve,
/// so that it slows down before the reserve is reached.
fn allowance(ours: f64, headroom: f64, reserve: f64) -> f64 {
    let brake = (reserve - headroom).max(0.0);
    (ours + headroom - brake).max(0.0)
}

/// How deep a bucket refilled at `rate` tokens per second is: `burst`, or one second of refill
/// when that is more.
fn depth(burst: f64, rate: f64) -> f64 {
    burst.max((rate * DEPTH_OF_RATE.as_secs_f64()).floor())
}

fn u128_to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// What `/v1/budget` shows of one budget.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetSnapshot {
    /// The budget name.
    pub name: String,
    /// The per-minute limit in force.
    pub limit_per_minute: u32,
    /// `upstream` once the upstream reported `limit_minute`, else `config`.
    pub limit_source: &'static str,
    /// `remaining_minute` as last reported.
    pub remaining_minute: Option<u32>,
    /// `typing_share x limit`.
    pub typing_per_minute: f64,
    /// The typing rate after the headroom cap.
    pub effective_typing_per_minute: f64,
    /// Tokens in the bucket.
    pub tokens: f64,
    /// Typing calls granted in the last 60 s.
    pub sent_last_minute: usize,
    /// Whether typing is paused.
    pub paused: bool,
    /// How much longer the pause lasts.
    pub paused_for_ms: Option<u64>,
    /// What paused it.
    pub pause_reason: Option<PauseReason>,
    /// Fans the budget can keep fully lit at the OnlyFans cadence right now: what it may spend
    /// per minute, less the first indicators of the last minute and one bucket, over 60 / 3.5.
    pub capacity_fans: f64,
    /// Sessions holding a lit slot.
    pub sessions_lit: usize,
    /// Sessions waiting for a slot (refired from what is left).
    pub sessions_waiting: usize,
    /// First indicators paid in the last minute.
    pub first_indicators_last_minute: usize,
    /// `limit_day` as last reported, when the upstream reports a number.
    pub limit_day: Option<u32>,
    /// `remaining_day` as last reported, when the upstream reports a number.
    pub remaining_day: Option<u32>,
}

/// Every budget, by index. Each state sits behind its own `std` mutex: sections are a few
/// arithmetic operations and never await.
#[derive(Debug)]
pub struct Budgets {
    states: Vec<Mutex<BudgetState>>,
    by_name: HashMap<String, BudgetIndex>,
}

// === impl Budgets ===

impl Budgets {
    /// One budget per distinct name in `names`.
    pub fn new(names: &[String], settings: &BudgetSettings, now: Instant) -> Self {
        let mut by_name = HashMap::new();
        let mut states = Vec::new();
        for name in names {
            if by_name.contains_key(name) {
                continue;
            }
            let limit = settings.limits.get(name).copied().unwrap_or(settings.limit_per_minute).get();
            by_name.insert(name.clone(), states.len());
            states.push(Mutex::new(BudgetState::new(name, limit, settings, now)));
        }
        Self { states, by_name }
    }

    /// The index of budget `name`.
    pub fn index(&self, name: &str) -> Option<BudgetIndex> {
        self.by_name.get(name).copied()
    }

    /// Number of budgets.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there is no budget.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Runs `f` on budget `i` under its lock.
    pub fn with<R>(&self, i: BudgetIndex, f: impl FnOnce(&mut BudgetState) -> R) -> Option<R> {
        let m = self.states.get(i)?;
        // A poisoned budget lock means a panic mid-arithmetic; the state is still usable.
        let mut guard = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f(&mut guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Count;

    fn settings(limit: u32) -> BudgetSettings {
        BudgetSettings { limit_per_minute: Count::of(limit), ..BudgetSettings::default() }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn bucket_refills_at_its_rate_up_to_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 1.0, t0);
        assert!(b.try_take(0.0, t0).is_ok());
        assert!(b.try_take(0.0, t0).is_ok());
        let retry = b.try_take(0.0, t0).unwrap_err();
        assert_eq!(retry, t0 + secs(1.0));
        assert!(b.try_take(0.0, t0 + secs(1.0)).is_ok());
        assert!((b.tokens(t0 + secs(100.0)) - 2.0).abs() < 1e-9, "capped at capacity");
    }

    #[test]
    fn burst_then_steady_rate_and_never_more_than_the_share_per_window() {
        // 120/min with share 0.5: 60 typing calls per minute, 1 per second, burst 10.
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 120, &settings(120), t0);
        let mut granted = Vec::new();
        let mut t = t0;
        while t < t0 + secs(180.0) {
            while b.try_acquire(Class::Slot, t).is_ok() {
                granted.push(t);
            }
            t += Duration::from_millis(50);
        }
        // The reserve half of the bucket at once, then one per second.
        assert_eq!(granted.iter().filter(|g| **g == t0).count(), 5);
        for (i, start) in granted.iter().enumerate() {
            let in_window = granted[i..].iter().take_while(|g| g.duration_since(*start) < WINDOW).count();
            assert!(in_window <= 60, "{in_window} grants in the 60 s from grant {i}");
        }
        let total = granted.len();
        assert!((175..=181).contains(&total), "{total} grants in 180 s");
    }

    #[test]
    fn spare_refires_leave_the_reserve_floor() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 120, &settings(120), t0);
        // A fresh bucket holds only its reserve: nothing for waiting sessions yet.
        assert!(matches!(b.try_acquire(Class::Spare, t0), Err(Denied::Empty { .. })));
        // Full after ten seconds at one per second; burst 10, floor 5: five spare grants, then
        // only first indicators and slot holders.
        let t = t0 + secs(10.0);
        for _ in 0..5 {
            assert!(b.try_acquire(Class::Spare, t).is_ok());
        }
        assert!(matches!(b.try_acquire(Class::Spare, t), Err(Denied::Empty { .. })));
        for _ in 0..5 {
            assert!(b.try_acquire(Class::First, t).is_ok());
        }
        assert!(b.try_acquire(Class::Slot, t).is_err());
    }

    #[test]
    fn reported_limit_replaces_the_configured_one_mid_minute() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 120, &settings(120), t0);
        b.observe(RateLimits { limit_minute: Some(1200), remaining_minute: Some(1100), ..RateLimits::default() }, t0);
        assert_eq!(b.limit(), 1200);
        // Drain the burst, then the refill runs at 600/min = 10 per second.
        while b.try_acquire(Class::Slot, t0).is_ok() {}
        let mut n = 0;
        let mut t = t0;
        for _ in 0..100 {
            t += Duration::from_millis(10);
            if b.try_acquire(Class::Slot, t).is_ok() {
                n += 1;
            }
        }
        assert!((9..=11).contains(&n), "{n} grants in one second at 10/s");
    }

    #[test]
    fn remaining_at_the_reserve_pauses_and_the_pause_expires() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        b.observe(RateLimits { limit_minute: Some(1000), remaining_minute: Some(100), ..RateLimits::default() }, t0);
        match b.try_acquire(Class::Slot, t0) {
            Err(Denied::Paused { until, reason: PauseReason::Reserve }) => assert_eq!(until, t0 + RESERVE_PAUSE),
            other => panic!("{other:?}"),
        }
        assert!(b.try_acquire(Class::Slot, t0 + RESERVE_PAUSE).is_ok());
    }

    #[test]
    fn shrinking_remaining_slows_the_refill() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        let full = b.effective_rate(t0);
        b.observe(RateLimits { limit_minute: Some(1000), remaining_minute: Some(160), ..RateLimits::default() }, t0);
        let slowed = b.effective_rate(t0);
        // 60 above the reserve of 100, nothing spent yet: 60 less the 40 it lacks of a second
        // reserve, 20 a minute.
        assert!((slowed - 20.0 / 60.0).abs() < 1e-9, "{slowed}");
        assert!(slowed < full);
        // Forgotten when the upstream stops reporting.
        assert!((b.effective_rate(t0 + HEADROOM_TTL) - full).abs() < 1e-9);
    }

    #[test]
    fn retry_after_pauses_exactly_that_long() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        b.rate_limited(Some(secs(5.0)), 0.5, t0);
        assert!(matches!(b.try_acquire(Class::Slot, t0 + secs(4.9)), Err(Denied::Paused { .. })));
        // The bucket was emptied by the 429; it has refilled after 5 s.
        assert!(b.try_acquire(Class::Slot, t0 + secs(5.0)).is_ok());
    }

    #[test]
    fn backoff_without_retry_after_doubles_with_jitter_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        let pause = |b: &mut BudgetState| match b.try_acquire(Class::Slot, t0) {
            Err(Denied::Paused { until, .. }) => until - t0,
            other => panic!("{other:?}"),
        };
        let pause_at = |b: &mut BudgetState, t: Instant| match b.try_acquire(Class::Slot, t) {
            Err(Denied::Paused { until, .. }) => until - t,
            other => panic!("{other:?}"),
        };
        b.rate_limited(None, 0.5, t0);
        assert_eq!(pause(&mut b), secs(1.0));
        // More 429s from calls launched before the pause do not step the backoff up.
        for _ in 0..15 {
            b.rate_limited(None, 0.5, t0 + secs(0.1));
        }
        assert_eq!(pause(&mut b), secs(1.1), "still 1 s, from the latest 429");
        // The next 429 after the pause does.
        let t1 = t0 + secs(1.1);
        b.rate_limited(None, 0.5, t1);
        assert_eq!(pause_at(&mut b, t1), secs(2.0));
        let t2 = t1 + secs(2.0);
        b.rate_limited(None, 0.0, t2);
        assert_eq!(pause_at(&mut b, t2), secs(4.0 * 0.8));
        let mut t = t2;
        for _ in 0..10 {
            t += secs(80.0);
            b.rate_limited(None, 0.999, t);
        }
        assert!(pause_at(&mut b, t) <= secs(72.0), "capped at 60 s x 1.2");
        b.succeeded();
        let t1 = t + secs(100.0);
        b.rate_limited(None, 0.5, t1);
        match b.try_acquire(Class::Slot, t1) {
            Err(Denied::Paused { until, .. }) => assert_eq!(until - t1, secs(1.0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_429_after_a_success_during_the_same_pause_does_not_underflow() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        b.rate_limited(None, 0.5, t0);
        // A call launched before the pause succeeds meanwhile and resets the count...
        b.succeeded();
        // ...then another 429 without Retry-After lands inside the same pause.
        b.rate_limited(None, 0.5, t0 + secs(0.2));
        match b.try_acquire(Class::Slot, t0 + secs(0.2)) {
            Err(Denied::Paused { until, .. }) => {
                assert_eq!(until - (t0 + secs(0.2)), secs(1.0), "the first step again")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_a_reserve_pause_the_next_call_probes_whatever_its_class() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 120, &settings(120), t0);
        // The tool's traffic left typing nothing: paused, bucket emptied, refill at the probe
        // rate (one call per pause).
        b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(10), ..RateLimits::default() }, t0);
        let end = t0 + RESERVE_PAUSE;
        assert!(b.try_acquire(Class::Spare, end - secs(0.1)).is_err());
        // A waiting session's refire may probe although the bucket is below its reserve.
        assert!(b.try_acquire(Class::Spare, end).is_ok(), "no probe after the reserve pause");
        assert!(b.try_acquire(Class::Spare, end).is_err(), "one probe, not a burst");
    }

    #[test]
    fn a_large_key_is_not_throttled_by_a_small_burst() {
        // 1,000,000 per minute, share 0.5: 8,333 typing calls per second. With burst 10 a
        // scheduler acting every 5 ms could pay only 2,000 per second; the bucket holds one
        // second of refill instead.
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1_000_000, &settings(1_000_000), t0);
        let mut granted = 0;
        let mut t = t0;
        for _ in 0..200 {
            t += Duration::from_millis(5);
            while b.try_acquire(Class::Slot, t).is_ok() {
                granted += 1;
            }
        }
        // One second at 8,333/s, plus the reserve half of the bucket at the start.
        assert!((12_000..=13_000).contains(&granted), "{granted} grants in one second");
    }

    #[test]
    fn slot_capacity_leaves_room_for_recent_first_indicators_and_the_reserve() {
        let t0 = Instant::now();
        // 1,000 per minute, share 0.5: 500 typing calls per minute, bucket 10, reserve 5.
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        assert!((b.slot_capacity(t0) - 495.0).abs() < 1e-9);
        let t0 = t0 + secs(1.0);
        for _ in 0..5 {
            b.try_acquire(Class::First, t0).unwrap();
        }
        b.try_acquire(Class::Slot, t0).unwrap();
        assert!((b.slot_capacity(t0) - 490.0).abs() < 1e-9, "five first indicators in the last minute");
        // Counted per 600th of the window (see `window`): forgotten once their slot has left it.
        assert!((b.slot_capacity(t0 + WINDOW) - 490.0).abs() < 1e-9, "still within the minute's last slot");
        assert!((b.slot_capacity(t0 + WINDOW + WINDOW / 600) - 495.0).abs() < 1e-9, "forgotten a minute later");
    }

    #[test]
    fn the_tools_own_traffic_shrinks_what_typing_may_spend() {
        let t0 = Instant::now();
        // 120 per minute, share 0.5, reserve 12.
        let mut b = BudgetState::new("b", 120, &settings(120), t0);
        let t0 = t0 + secs(10.0);
        for _ in 0..10 {
            b.try_acquire(Class::Slot, t0).unwrap();
        }
        // The tool sent 30 in the last minute, typing 10: 80 remain; typing may go on at its 10
        // plus the 68 above the reserve, capped by its share of 60.
        b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(80), ..RateLimits::default() }, t0);
        assert!((b.effective_rate(t0) * 60.0 - 60.0).abs() < 1e-9);
        // The tool now sends 70 a minute: 40 remain; typing keeps its 10 plus 28 of headroom.
        b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(40), ..RateLimits::default() }, t0);
        assert!((b.effective_rate(t0) * 60.0 - 38.0).abs() < 1e-9);
        // 90 a minute: 20 remain, within one reserve of it: typing gives back the 4 its headroom
        // lacks of a second reserve: 10 + 8 - 4.
        let t1 = t0 + secs(30.0);
        b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(20), ..RateLimits::default() }, t1);
        // The tool's traffic grew from 30 to 90 in 30 s, 2 a second: the next 30 s of that growth
        // (60) are not typing's either, which leaves nothing but the probe, one call per pause.
        let probe = 60.0 / RESERVE_PAUSE.as_secs_f64();
        assert!((b.effective_rate(t1) * 60.0 - probe).abs() < 1e-9, "{}", b.effective_rate(t1) * 60.0);
        // Steady again a window later (typing's own calls have left the window): 120 less the
        // tool's 90 less the reserve of 12.
        let t2 = t1 + secs(60.0);
        for _ in 0..3 {
            b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(30), ..RateLimits::default() }, t2);
        }
        let t3 = t2 + secs(20.0);
        b.observe(RateLimits { limit_minute: Some(120), remaining_minute: Some(30), ..RateLimits::default() }, t3);
        assert!((b.effective_rate(t3) * 60.0 - 18.0).abs() < 1e-9, "{}", b.effective_rate(t3) * 60.0);
    }

    #[test]
    fn a_numeric_daily_limit_pauses_at_the_reserve_and_resumes_when_more_is_reported() {
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 1000, &settings(1000), t0);
        let day = |remaining| RateLimits {
            limit_minute: Some(1000),
            remaining_minute: Some(900),
            limit_day: Some(50_000),
            remaining_day: Some(remaining),
        };
        b.observe(day(10_000), t0);
        assert!(b.try_acquire(Class::Slot, t0).is_ok());
        // 10% of 50,000 left: paused, with a probe a minute later.
        b.observe(day(5_000), t0);
        match b.try_acquire(Class::First, t0) {
            Err(Denied::Paused { until, reason: PauseReason::DailyReserve }) => assert_eq!(until, t0 + DAILY_PAUSE),
            other => panic!("{other:?}"),
        }
        let snap = b.snapshot(secs(3.5), (0, 0), t0);
        assert_eq!(
            (snap.limit_day, snap.remaining_day, snap.pause_reason),
            (Some(50_000), Some(5_000), Some(PauseReason::DailyReserve))
        );
        // The probe's answer reports a new day.
        b.observe(day(50_000), t0 + DAILY_PAUSE);
        assert!(b.try_acquire(Class::Slot, t0 + DAILY_PAUSE).is_ok());
        // `null` daily fields: no daily limit at all.
        b.observe(RateLimits { limit_minute: Some(1000), remaining_minute: Some(900), ..RateLimits::default() }, t0);
        assert_eq!(b.snapshot(secs(3.5), (0, 0), t0 + DAILY_PAUSE).limit_day, None);
    }

    #[test]
    fn budgets_share_one_state_per_name() {
        let names = vec!["team".to_owned(), "team".to_owned(), "other".to_owned()];
        let s = BudgetSettings { limits: [("other".to_owned(), Count::of(5000))].into(), ..BudgetSettings::default() };
        let b = Budgets::new(&names, &s, Instant::now());
        assert_eq!(b.len(), 2);
        let other = b.index("other").unwrap();
        assert_eq!(b.with(other, |s| s.limit()), Some(5000));
    }

    #[test]
    fn with_replicas_a_call_also_needs_a_token_of_the_shared_grant() {
        let grant =
            |tokens| SharedWindow { tokens, first_tokens: 0, fraction: 1.0, window_used: tokens, slot_calls: None };
        let t0 = Instant::now();
        let mut b = BudgetState::new("b", 100_000, &settings(100_000), t0);
        // Shared mode before the first grant: nothing is spent (fail closed).
        assert_eq!(b.set_shared_grant(grant(0), t0, t0), 0);
        assert!(b.try_acquire(Class::First, t0).is_err());
        assert!(b.shared_starved());
        // A grant of 3 calls until t0 + 1.5 s: three calls, then denied again.
        let t1 = t0 + secs(0.1);
        assert_eq!(b.set_shared_grant(grant(3), t1 + secs(1.5), t1), 0);
        assert!(!b.shared_starved());
        for _ in 0..3 {
            b.try_acquire(Class::Slot, t1).unwrap();
        }
        assert!(b.try_acquire(Class::Slot, t1).is_err());
        // What is left of a grant is handed back when the next one comes.
        let t2 = t1 + secs(0.5);
        assert_eq!(b.set_shared_grant(grant(5), t2 + secs(1.5), t2), 0);
        b.try_acquire(Class::Slot, t2).unwrap();
        let t3 = t2 + secs(1.0);
        assert_eq!(b.set_shared_grant(grant(5), t3 + secs(1.5), t3), 4);
        // A grant is not spent after it ran out.
        assert!(b.try_acquire(Class::Slot, t3 + secs(1.6)).is_err());
    }
}
