//! Telemetry: the Prometheus recorder, every metric name, its HELP text and buckets, and the
//! typed helpers that call sites use. No other module writes a metric name or a `counter!`.
//!
//! Labels are bounded enums (platform, outcome, reason, route, status) or configured budget
//! names; chat, fan and account ids never become labels.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Live typing sessions.
pub const SESSIONS_ACTIVE: &str = "keeptyping_sessions_active";
/// Sessions started.
pub const SESSIONS_STARTED: &str = "keeptyping_sessions_started_total";
/// Sessions ended, by reason.
pub const SESSIONS_ENDED: &str = "keeptyping_sessions_ended_total";
/// Typing calls made, by platform and outcome.
pub const REFIRES: &str = "keeptyping_refires_total";
/// Refires that were due but not sent, by reason.
pub const REFIRES_SKIPPED: &str = "keeptyping_refires_skipped_total";
/// Time a refire was sent minus the time it was due.
pub const REFIRE_LATENESS: &str = "keeptyping_refire_lateness_seconds";
/// Duration of upstream requests, by endpoint and outcome.
pub const UPSTREAM_DURATION: &str = "keeptyping_upstream_request_duration_seconds";
/// Upstream requests in flight.
pub const UPSTREAM_IN_FLIGHT: &str = "keeptyping_upstream_in_flight";
/// Tokens in a budget's bucket.
pub const BUDGET_TOKENS: &str = "keeptyping_budget_tokens";
/// The per-minute limit reported by the upstream (or configured until it reports one).
pub const UPSTREAM_LIMIT_MINUTE: &str = "keeptyping_upstream_limit_minute";
/// The per-minute remaining count last reported by the upstream.
pub const UPSTREAM_REMAINING_MINUTE: &str = "keeptyping_upstream_remaining_minute";
/// 1 while a budget is paused.
pub const BUDGET_PAUSED: &str = "keeptyping_budget_paused";
/// How many fans a budget can keep fully lit.
pub const BUDGET_CAPACITY_FANS: &str = "keeptyping_budget_capacity_fans";
/// Sessions holding a lit slot of a budget.
pub const BUDGET_SESSIONS_LIT: &str = "keeptyping_budget_sessions_lit";
/// Sessions of a budget waiting for a lit slot.
pub const BUDGET_SESSIONS_WAITING: &str = "keeptyping_budget_sessions_waiting";
/// Time from a session's start to its first successful typing call.
pub const FIRST_INDICATOR_DELAY: &str = "keeptyping_first_indicator_delay_seconds";
/// Starts answered `capped`.
pub const STARTS_CAPPED: &str = "keeptyping_starts_capped_total";
/// Share of each ended session's composing time with an indicator showing.
pub const COVERAGE: &str = "keeptyping_indicator_coverage_ratio";
/// Times an indicator lapsed while its session was still composing.
pub const GAPS: &str = "keeptyping_indicator_gaps_total";
/// Hook requests, by route and status.
pub const HOOK_REQUESTS: &str = "keeptyping_hook_requests_total";
/// Hook request duration, by route.
pub const HOOK_DURATION: &str = "keeptyping_hook_request_duration_seconds";
/// Live replicas seen in Redis (`state.backend = "redis"`).
pub const STATE_REPLICAS: &str = "keeptyping_state_replicas";
/// Virtual shards this replica owns.
pub const STATE_SHARDS_OWNED: &str = "keeptyping_state_shards_owned";
/// Shards this replica took over from another replica.
pub const STATE_ADOPTIONS: &str = "keeptyping_state_adoptions_total";
/// Lease renewals that failed (Redis unreachable or slow).
pub const STATE_RENEWALS_FAILED: &str = "keeptyping_state_lease_renewals_failed_total";
/// Duration of Redis operations, by operation.
pub const STATE_REDIS_DURATION: &str = "keeptyping_state_redis_seconds";
/// Redis operations that failed, by operation.
pub const STATE_REDIS_ERRORS: &str = "keeptyping_state_redis_errors_total";
/// A hook forwarded to the owner of its chat, until the owner's answer.
pub const STATE_FORWARD_DURATION: &str = "keeptyping_state_forward_seconds";
/// Accounts whose typing is paused.
pub const ACCOUNTS_PAUSED: &str = "keeptyping_accounts_paused";
/// OnlyFansAPI webhooks received, by event and outcome.
pub const WEBHOOKS: &str = "keeptyping_webhooks_total";
/// Authentication attempts entering a state, by state.
pub const AUTH_ATTEMPTS: &str = "keeptyping_auth_attempts_total";
/// Authentication attempts being polled right now.
pub const AUTH_ATTEMPTS_WATCHED: &str = "keeptyping_auth_attempts_watched";
/// Authentication-attempt callbacks sent, by outcome.
pub const AUTH_CALLBACKS: &str = "keeptyping_auth_callbacks_total";
/// Connections closed on accept because the listener was at `max_connections`, by listener.
pub const CONNECTIONS_REFUSED: &str = "keeptyping_connections_refused_total";
/// OnlyFansAPI webhooks dropped because the same signed body was seen within the replay window.
pub const WEBHOOK_REPLAYS: &str = "keeptyping_webhook_replays_total";

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0];
const COVERAGE_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0];
const FIRST_INDICATOR_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Handles of the metrics written on every typing call, each registered on its first use (as
/// the macros would) and then kept, so that the hot path skips the registry lookup (key
/// hashing, label allocation). Only set once the recorder is installed.
#[derive(Default)]
struct Hot {
    /// Per platform (in [`PLATFORMS`] order): `refires{outcome="ok"}` and its upstream duration.
    ok: [OnceLock<(Counter, Histogram)>; 3],
    lateness: OnceLock<Histogram>,
}

const PLATFORMS: [&str; 3] = ["onlyfans", "fansly", "fanvue"];

static HOT: OnceLock<Hot> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls (a test binary
/// starts many apps) return the same handle.
///
/// # Panics
/// If another recorder was installed by someone else first: a startup wiring error.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REFIRE_LATENESS.into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPSTREAM_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HOOK_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STATE_REDIS_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STATE_FORWARD_DURATION.into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COVERAGE.into()), COVERAGE_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FIRST_INDICATOR_DELAY.into()), FIRST_INDICATOR_BUCKETS)
                })
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("keeptyping installs the only metrics recorder");
            describe();
            init_series();
            let _ = HOT.set(Hot::default());
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(SESSIONS_ACTIVE, "Live typing sessions.");
    describe_counter!(SESSIONS_STARTED, "Typing sessions started.");
    describe_counter!(SESSIONS_ENDED, "Typing sessions ended, by reason.");
    describe_counter!(REFIRES, "Typing calls made to the upstream, by platform and outcome.");
    describe_counter!(REFIRES_SKIPPED, "Typing calls that were due but not sent, by reason.");
    describe_histogram!(REFIRE_LATENESS, Unit::Seconds, "Time a typing call was sent minus the time it was due.");
    describe_histogram!(UPSTREAM_DURATION, Unit::Seconds, "Duration of upstream requests, by endpoint and outcome.");
    describe_gauge!(UPSTREAM_IN_FLIGHT, "Upstream typing requests in flight.");
    describe_gauge!(BUDGET_TOKENS, "Tokens in a budget's typing bucket.");
    describe_gauge!(
        UPSTREAM_LIMIT_MINUTE,
        "Per-minute request limit reported by the upstream, or configured until reported."
    );
    describe_gauge!(UPSTREAM_REMAINING_MINUTE, "Per-minute requests remaining, as last reported by the upstream.");
    describe_gauge!(BUDGET_PAUSED, "1 while typing on a budget is paused.");
    describe_gauge!(BUDGET_CAPACITY_FANS, "Fans a budget can keep fully lit at the OnlyFans cadence.");
    describe_gauge!(BUDGET_SESSIONS_LIT, "Sessions holding a lit slot of a budget (every refire paid on time).");
    describe_gauge!(
        BUDGET_SESSIONS_WAITING,
        "Sessions of a budget waiting for a lit slot (refired from what is left)."
    );
    describe_histogram!(
        FIRST_INDICATOR_DELAY,
        Unit::Seconds,
        "Time from a session's start to its first successful typing call."
    );
    describe_counter!(STARTS_CAPPED, "Starts answered capped: the chat's session reached engine.max_lifetime.");
    describe_histogram!(
        COVERAGE,
        "Share of an ended session's composing time with an indicator showing, while holding a lit slot \
         (slot=\"lit\") and while waiting for one (slot=\"waiting\")."
    );
    describe_counter!(GAPS, "Times an indicator lapsed while its session was still composing.");
    describe_counter!(HOOK_REQUESTS, "Hook API requests, by route and status.");
    describe_histogram!(HOOK_DURATION, Unit::Seconds, "Hook API request duration, by route.");
    describe_gauge!(ACCOUNTS_PAUSED, "Accounts whose typing is paused.");
    describe_counter!(WEBHOOKS, "OnlyFansAPI webhooks received, by event and outcome.");
    describe_counter!(AUTH_ATTEMPTS, "Authentication attempts entering a state, by state.");
    describe_gauge!(AUTH_ATTEMPTS_WATCHED, "Authentication attempts being polled.");
    describe_counter!(AUTH_CALLBACKS, "Authentication-attempt callbacks sent, by outcome.");
    describe_counter!(CONNECTIONS_REFUSED, "Connections closed at once because the listener was full, by listener.");
    describe_counter!(WEBHOOK_REPLAYS, "Webhooks dropped as replays of a body seen within the replay window.");
    describe_gauge!(STATE_REPLICAS, "Live replicas seen in Redis (0 with the memory backend).");
    describe_gauge!(STATE_SHARDS_OWNED, "Virtual shards of chats this replica owns (0 with the memory backend).");
    describe_counter!(STATE_ADOPTIONS, "Shards this replica took over, with their sessions.");
    describe_counter!(STATE_RENEWALS_FAILED, "Shard lease renewals that failed (Redis unreachable or too slow).");
    describe_histogram!(STATE_REDIS_DURATION, Unit::Seconds, "Duration of Redis operations, by operation.");
    describe_counter!(STATE_REDIS_ERRORS, "Redis operations that failed, by operation.");
    describe_histogram!(
        STATE_FORWARD_DURATION,
        Unit::Seconds,
        "Hooks forwarded to the replica owning the chat, until its answer came back."
    );
}

/// Series that exist from start-up at zero, so that a rate over them, an alert or a dashboard
/// panel has data before the first event (a missing series reads as "no data", not 0): every
/// counter without labels, every end and skip reason, both listeners, and the plain gauges.
fn init_series() {
    for name in [SESSIONS_STARTED, STARTS_CAPPED, GAPS, WEBHOOK_REPLAYS, STATE_ADOPTIONS, STATE_RENEWALS_FAILED] {
        counter!(name).absolute(0);
    }
    for reason in EndReason::ALL {
        counter!(SESSIONS_ENDED, "reason" => reason.as_str()).absolute(0);
    }
    for reason in SkipReason::ALL {
        counter!(REFIRES_SKIPPED, "reason" => reason.as_str()).absolute(0);
    }
    for listener in ["hooks", "admin"] {
        counter!(CONNECTIONS_REFUSED, "listener" => listener).absolute(0);
    }
    for op in StateOp::ALL {
        counter!(STATE_REDIS_ERRORS, "op" => op.as_str()).absolute(0);
        let _registered = histogram!(STATE_REDIS_DURATION, "op" => op.as_str());
    }
    let _registered = histogram!(STATE_FORWARD_DURATION);
    for name in [
        SESSIONS_ACTIVE,
        UPSTREAM_IN_FLIGHT,
        ACCOUNTS_PAUSED,
        AUTH_ATTEMPTS_WATCHED,
        STATE_REPLICAS,
        STATE_SHARDS_OWNED,
    ] {
        gauge!(name).set(0.0);
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The last holder called stop.
    Stopped,
    /// Every holder's idle lease ran out.
    Idle,
    /// The hard maximum lifetime was reached.
    MaxLifetime,
    /// The upstream refused the API key.
    Unauthorized,
    /// The upstream refused the account or chat (403/404/422).
    Rejected,
    /// An outbound-message webhook ended it.
    MessageSent,
    /// Still live when the process drained and exited.
    Shutdown,
}

impl EndReason {
    /// Every reason.
    pub const ALL: [Self; 7] = [
        Self::Stopped,
        Self::Idle,
        Self::MaxLifetime,
        Self::Unauthorized,
        Self::Rejected,
        Self::MessageSent,
        Self::Shutdown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Idle => "idle",
            Self::MaxLifetime => "max_lifetime",
            Self::Unauthorized => "unauthorized",
            Self::Rejected => "rejected",
            Self::MessageSent => "message_sent",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Whether a session held a lit slot of its budget (the `slot` label of coverage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// It waited for a slot, refired from what the budget had left.
    Waiting,
    /// It held a lit slot: every refire paid on time.
    Lit,
}

impl Slot {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Lit => "lit",
        }
    }
}

/// Why a due refire was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The budget had no token.
    Budget,
    /// The budget is paused (429, reserve reached).
    BudgetPaused,
    /// The account is paused (re-authenticating, expired).
    AccountPaused,
    /// Every in-flight permit was taken: the call waits for one (`engine.max_in_flight`).
    InFlightCap,
    /// The previous call for this chat had not answered yet.
    PreviousInFlight,
    /// The session's budget does not exist: never sent unpaid.
    NoBudget,
    /// The day's remainder (`remaining_day`) reached the reserve.
    DailyLimit,
    /// This replica's lease on the chat's shard is not valid (Redis backend): it never sends
    /// without one.
    NotOwner,
}

impl SkipReason {
    /// Every reason.
    pub const ALL: [Self; 8] = [
        Self::Budget,
        Self::BudgetPaused,
        Self::AccountPaused,
        Self::InFlightCap,
        Self::PreviousInFlight,
        Self::NoBudget,
        Self::DailyLimit,
        Self::NotOwner,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::BudgetPaused => "budget_paused",
            Self::AccountPaused => "account_paused",
            Self::InFlightCap => "in_flight_cap",
            Self::PreviousInFlight => "previous_in_flight",
            Self::NoBudget => "no_budget",
            Self::DailyLimit => "daily_limit",
            Self::NotOwner => "not_owner",
        }
    }
}

/// A session started.
pub fn session_started() {
    counter!(SESSIONS_STARTED).increment(1);
}

/// A session ended, with its coverage while waiting and while holding a lit slot (`None` for a
/// state it never was in long enough to measure).
pub fn session_ended(reason: EndReason, coverage: [(Slot, Option<f64>); 2]) {
    counter!(SESSIONS_ENDED, "reason" => reason.as_str()).increment(1);
    for (slot, c) in coverage {
        if let Some(c) = c {
            histogram!(COVERAGE, "slot" => slot.as_str()).record(c);
        }
    }
}

/// A start was answered `capped`.
pub fn start_capped() {
    counter!(STARTS_CAPPED).increment(1);
}

/// A session's first indicator was given `delay` after its start.
pub fn first_indicator_delay(delay: Duration) {
    histogram!(FIRST_INDICATOR_DELAY).record(delay.as_secs_f64());
}

/// The number of live sessions.
pub fn sessions_active(n: usize) {
    #[allow(clippy::cast_precision_loss, reason = "a gauge; session counts are far below 2^52")]
    gauge!(SESSIONS_ACTIVE).set(n as f64);
}

/// Typing calls and skipped refires since the process started, counted where they are recorded
/// (beside the Prometheus counters, whether or not a recorder is installed) so that the status
/// page reads numbers rather than parsing `/metrics` back. Process-wide, like the registry.
#[derive(Default)]
struct Tally {
    /// `ok` calls: the hot path, one atomic add.
    ok: AtomicU64,
    /// Every other outcome (a bounded set of labels).
    other: OnceLock<DashMap<&'static str, AtomicU64>>,
    /// Refires not sent, any reason.
    skipped: AtomicU64,
}

static TALLY: Tally = Tally { ok: AtomicU64::new(0), other: OnceLock::new(), skipped: AtomicU64::new(0) };

/// What [`refire_counts`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefireCounts {
    /// Typing calls by outcome (`ok`, `server_error`, ...), summed over platforms.
    pub by_outcome: BTreeMap<&'static str, u64>,
    /// Due refires that were not sent, summed over reasons.
    pub skipped: u64,
}

impl RefireCounts {
    /// Every typing call.
    pub fn total(&self) -> u64 {
        self.by_outcome.values().sum()
    }

    /// Typing calls that did not succeed.
    pub fn failed(&self) -> u64 {
        self.by_outcome.iter().filter(|(o, _)| **o != "ok").map(|(_, n)| n).sum()
    }
}

/// Typing calls and skipped refires since the process started (the same events as
/// `keeptyping_refires_total` and `keeptyping_refires_skipped_total`).
pub fn refire_counts() -> RefireCounts {
    let mut by_outcome = BTreeMap::new();
    let ok = TALLY.ok.load(Ordering::Relaxed);
    if ok > 0 {
        by_outcome.insert("ok", ok);
    }
    if let Some(other) = TALLY.other.get() {
        for e in other.iter() {
            by_outcome.insert(*e.key(), e.value().load(Ordering::Relaxed));
        }
    }
    RefireCounts { by_outcome, skipped: TALLY.skipped.load(Ordering::Relaxed) }
}

fn tally_refire(outcome: &'static str) {
    if outcome == "ok" {
        TALLY.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        // The guard is dropped at the end of this statement; nothing awaits here.
        TALLY.other.get_or_init(DashMap::new).entry(outcome).or_default().fetch_add(1, Ordering::Relaxed);
    }
}

/// One typing call completed.
pub fn refire(platform: &'static str, outcome: &'static str, elapsed: Duration) {
    tally_refire(outcome);
    if outcome == "ok" {
        if let (Some(hot), Some(i)) = (HOT.get(), PLATFORMS.iter().position(|p| *p == platform)) {
            let (c, h) = hot.ok[i].get_or_init(|| {
                (
                    counter!(REFIRES, "platform" => platform, "outcome" => "ok"),
                    histogram!(UPSTREAM_DURATION, "endpoint" => "typing", "outcome" => "ok"),
                )
            });
            c.increment(1);
            h.record(elapsed.as_secs_f64());
            return;
        }
    }
    counter!(REFIRES, "platform" => platform, "outcome" => outcome).increment(1);
    histogram!(UPSTREAM_DURATION, "endpoint" => "typing", "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// One non-typing upstream request completed.
pub fn upstream_request(endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
    histogram!(UPSTREAM_DURATION, "endpoint" => endpoint, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// A due refire was not sent.
pub fn refire_skipped(reason: SkipReason) {
    TALLY.skipped.fetch_add(1, Ordering::Relaxed);
    counter!(REFIRES_SKIPPED, "reason" => reason.as_str()).increment(1);
}

/// A refire was launched `lateness` after it was due.
pub fn refire_lateness(lateness: Duration) {
    if let Some(hot) = HOT.get() {
        hot.lateness.get_or_init(|| histogram!(REFIRE_LATENESS)).record(lateness.as_secs_f64());
        return;
    }
    histogram!(REFIRE_LATENESS).record(lateness.as_secs_f64());
}

/// The indicator lapsed while composing.
pub fn indicator_gap() {
    counter!(GAPS).increment(1);
}

/// Upstream typing requests in flight.
pub fn in_flight(n: usize) {
    #[allow(clippy::cast_precision_loss, reason = "bounded by engine.max_in_flight")]
    gauge!(UPSTREAM_IN_FLIGHT).set(n as f64);
}

/// A budget's state, as gauges.
pub fn budget_state(b: &crate::budget::BudgetSnapshot) {
    let name = b.name.clone();
    gauge!(BUDGET_TOKENS, "budget" => name.clone()).set(b.tokens);
    gauge!(UPSTREAM_LIMIT_MINUTE, "budget" => name.clone()).set(f64::from(b.limit_per_minute));
    if let Some(r) = b.remaining_minute {
        gauge!(UPSTREAM_REMAINING_MINUTE, "budget" => name.clone()).set(f64::from(r));
    }
    gauge!(BUDGET_PAUSED, "budget" => name.clone()).set(if b.paused { 1.0 } else { 0.0 });
    gauge!(BUDGET_CAPACITY_FANS, "budget" => name.clone()).set(b.capacity_fans);
    #[allow(clippy::cast_precision_loss, reason = "session counts are far below 2^52")]
    {
        gauge!(BUDGET_SESSIONS_LIT, "budget" => name.clone()).set(b.sessions_lit as f64);
        gauge!(BUDGET_SESSIONS_WAITING, "budget" => name).set(b.sessions_waiting as f64);
    }
}

/// Accounts paused.
pub fn accounts_paused(n: usize) {
    #[allow(clippy::cast_precision_loss, reason = "a gauge of a small count")]
    gauge!(ACCOUNTS_PAUSED).set(n as f64);
}

/// One hook request answered.
pub fn hook_request(route: &str, status: u16, elapsed: Duration) {
    let route = route.to_owned();
    counter!(HOOK_REQUESTS, "route" => route.clone(), "status" => status.to_string()).increment(1);
    histogram!(HOOK_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

/// One OnlyFansAPI webhook handled. `event` is one of a fixed set of names (`other` for the
/// rest) and `outcome` one of `applied`, `ignored`, `invalid_signature`, `not_configured`,
/// `malformed`.
pub fn webhook(event: &'static str, outcome: &'static str) {
    counter!(WEBHOOKS, "event" => event, "outcome" => outcome).increment(1);
}

/// An authentication attempt entered `state` (`pending`, `needs_2fa`, `mobile_pending`,
/// `connected`, `failed`, `timed_out`).
pub fn auth_attempt(state: &'static str) {
    counter!(AUTH_ATTEMPTS, "state" => state).increment(1);
}

/// Attempts being polled.
pub fn auth_attempts_watched(n: usize) {
    #[allow(clippy::cast_precision_loss, reason = "bounded by accounts.max_attempts")]
    gauge!(AUTH_ATTEMPTS_WATCHED).set(n as f64);
}

/// One callback sent: `ok`, `refused` (non-2xx) or `failed` (no answer).
pub fn auth_callback(outcome: &'static str) {
    counter!(AUTH_CALLBACKS, "outcome" => outcome).increment(1);
}

/// A connection was closed on accept: `listener` (`hooks`, `admin`) was at `max_connections`.
pub fn connection_refused(listener: &'static str) {
    counter!(CONNECTIONS_REFUSED, "listener" => listener).increment(1);
}

/// A webhook body seen within the replay window was dropped.
pub fn webhook_replayed() {
    counter!(WEBHOOK_REPLAYS).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refire_counts_follow_the_recorded_events() {
        // Other tests in this binary record refires too: an outcome only this test uses, and
        // lower bounds for the shared totals.
        let before = refire_counts();

        refire("fansly", "counted_by_this_test", Duration::from_millis(3));
        refire("onlyfans", "counted_by_this_test", Duration::from_millis(3));
        refire("onlyfans", "ok", Duration::from_millis(3));
        refire_skipped(SkipReason::Budget);

        let after = refire_counts();
        assert_eq!(after.by_outcome.get("counted_by_this_test"), Some(&2));
        assert_eq!(before.by_outcome.get("counted_by_this_test"), None);
        assert!(after.by_outcome["ok"] > before.by_outcome.get("ok").copied().unwrap_or(0));
        assert!(after.failed() >= before.failed() + 2);
        assert!(after.total() >= before.total() + 3);
        assert!(after.skipped > before.skipped);
    }
}

/// A kind of Redis operation (the `op` label of the state metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    /// Lease renewal, membership and shard acquisition.
    Control,
    /// Writing session records.
    Commit,
    /// Reserving typing calls from a shared budget window.
    Budget,
    /// Publishing a hook to the owner of its chat, or an answer back.
    Forward,
    /// Reading a shard's sessions on adoption.
    Adopt,
}

impl StateOp {
    /// Every operation.
    pub const ALL: [Self; 5] = [Self::Control, Self::Commit, Self::Budget, Self::Forward, Self::Adopt];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Commit => "commit",
            Self::Budget => "budget",
            Self::Forward => "forward",
            Self::Adopt => "adopt",
        }
    }
}

/// A Redis operation took `elapsed`, and failed if `failed`.
pub fn state_redis(op: StateOp, elapsed: Duration, failed: bool) {
    histogram!(STATE_REDIS_DURATION, "op" => op.as_str()).record(elapsed.as_secs_f64());
    if failed {
        counter!(STATE_REDIS_ERRORS, "op" => op.as_str()).increment(1);
    }
}

/// Replicas seen and shards owned, after a lease renewal.
#[allow(clippy::cast_precision_loss, reason = "small counts")]
pub fn state_membership(replicas: usize, shards_owned: usize) {
    gauge!(STATE_REPLICAS).set(replicas as f64);
    gauge!(STATE_SHARDS_OWNED).set(shards_owned as f64);
}

/// This replica took over `shards` shards.
pub fn state_adopted(shards: u64) {
    counter!(STATE_ADOPTIONS).increment(shards);
}

/// A lease renewal failed.
pub fn state_renewal_failed() {
    counter!(STATE_RENEWALS_FAILED).increment(1);
}

/// A hook forwarded to its chat's owner was answered after `elapsed`.
pub fn state_forwarded(elapsed: Duration) {
    histogram!(STATE_FORWARD_DURATION).record(elapsed.as_secs_f64());
}
