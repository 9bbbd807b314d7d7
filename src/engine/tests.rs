//! Engine tests on paused tokio time with a fake upstream that records every call: cadence,
//! stop, leases, lifetimes, generations and upstream outcomes, without sockets or sleeping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::budget::Budgets;
use crate::config::{AccountScope, ApiKey, BudgetSettings, Count, EngineSettings, PlatformsSettings};
use crate::ids::{AccountId, ChatId, Platform, SessionKey};
use crate::upstream::{BoxFuture, KeyIndex, Outcome, Upstream, UpstreamError};

/// Records each call's instant and answers with the configured status after `latency`.
#[derive(Default)]
struct FakeUpstream {
    calls: Mutex<Vec<(String, Instant)>>,
    /// 0 means 200.
    status: Mutex<u16>,
    latency: Mutex<Duration>,
    /// Time before the request "leaves" (a pool checkout or a starved CPU); the call is
    /// recorded only once it has left.
    connect_delay: Mutex<Duration>,
    /// Calls recorded when they left after a `connect_delay`.
    left: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Chats whose next calls answer 500, with how many more.
    failing: Mutex<std::collections::HashMap<String, u32>>,
    /// `_meta._rate_limits` of every answer.
    limits: Mutex<Option<crate::upstream::RateLimits>>,
}

impl FakeUpstream {
    fn calls_for(&self, chat: &str) -> Vec<Instant> {
        self.calls.lock().unwrap().iter().filter(|(c, _)| c == chat).map(|(_, t)| *t).collect()
    }
}

impl Upstream for FakeUpstream {
    fn typing(&self, key: &SessionKey, _api_key: KeyIndex) -> BoxFuture<Outcome> {
        let connect_delay = *self.connect_delay.lock().unwrap();
        if connect_delay.is_zero() {
            self.calls.lock().unwrap().push((key.chat.to_string(), Instant::now()));
        }
        let mut status = *self.status.lock().unwrap();
        if let Some(n) = self.failing.lock().unwrap().get_mut(key.chat.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            status = 500;
        }
        let rate_limits = *self.limits.lock().unwrap();
        let latency = *self.latency.lock().unwrap();
        let calls = Arc::clone(&self.left);
        let chat = key.chat.to_string();
        Box::pin(async move {
            if !connect_delay.is_zero() {
                sleep(connect_delay).await;
                calls.lock().unwrap().push((chat, Instant::now()));
            }
            sleep(latency).await;
            let result = if status == 0 || status == 200 {
                Ok(())
            } else {
                Err(UpstreamError::Status { status, retry_after: None })
            };
            Outcome { result, rate_limits, elapsed: latency }
        })
    }
}

struct Harness {
    engine: Engine,
    fake: Arc<FakeUpstream>,
    stop: CancellationToken,
    t0: Instant,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn harness_with(engine: EngineSettings, budget: BudgetSettings) -> Harness {
    harness_on(engine, budget, &["default".to_owned()])
}

/// A harness whose one key spends from budget `default`, with the budgets `names` configured.
fn harness_on(engine: EngineSettings, budget: BudgetSettings, names: &[String]) -> Harness {
    let fake = Arc::new(FakeUpstream::default());
    let keys = vec![ApiKey {
        name: "default".into(),
        budget: "default".into(),
        accounts: AccountScope::All,
        secret: SecretString::from("k".to_owned()),
    }];
    let budgets = Budgets::new(names, &budget, Instant::now());
    let ring = KeyRing::new(&keys, &budgets);
    let cfg = EngineConfig {
        engine,
        platforms: PlatformsSettings::default(),
        budget,
        unavailable_pause: Duration::from_secs(30),
    };
    let upstream: Arc<dyn Upstream> = fake.clone();
    let (engine, scheduler) = Engine::new(cfg, upstream, budgets, ring);
    let stop = CancellationToken::new();
    tokio::spawn(scheduler.run(stop.clone()));
    Harness { engine, fake, stop, t0: Instant::now() }
}

fn harness() -> Harness {
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    harness_with(EngineSettings::default(), budget)
}

fn key(chat: &str) -> SessionKey {
    SessionKey {
        platform: Platform::Onlyfans,
        account: AccountId::parse(Platform::Onlyfans, "acct_abc").unwrap(),
        chat: ChatId::parse(Platform::Onlyfans, chat).unwrap(),
    }
}

fn start_cmd(chat: &str) -> StartCommand {
    StartCommand { key: key(chat), holder: None, priority: Priority::Normal, ttl: None, preferred_key: None }
}

fn offsets(h: &Harness, chat: &str) -> Vec<u128> {
    h.fake.calls_for(chat).iter().map(|t| t.duration_since(h.t0).as_millis()).collect()
}

#[tokio::test(start_paused = true)]
async fn fires_at_once_then_every_interval_and_never_after_stop() {
    let h = harness();
    assert_eq!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Started));
    sleep(Duration::from_millis(8000)).await;
    assert_eq!(h.engine.stop(&key("1"), None), StopOutcome::Stopped);
    sleep(Duration::from_secs(20)).await;
    assert_eq!(offsets(&h, "1"), vec![0, 3500, 7000]);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_does_not_add_a_second_cadence() {
    let h = harness();
    h.engine.start(start_cmd("1")).unwrap();
    for _ in 0..10 {
        sleep(Duration::from_millis(900)).await;
        assert_eq!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Refreshed));
    }
    h.engine.stop(&key("1"), None);
    assert_eq!(offsets(&h, "1"), vec![0, 3500, 7000]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_stop_is_a_new_generation_with_one_cadence() {
    let h = harness();
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(1000)).await;
    h.engine.stop(&key("1"), None);
    // The old deadline (3.5 s) is still queued; the new session must not inherit it.
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(5000)).await;
    h.engine.stop(&key("1"), None);
    assert_eq!(offsets(&h, "1"), vec![0, 1000, 4500]);
}

#[tokio::test(start_paused = true)]
async fn the_idle_lease_ends_a_session_without_stop() {
    let h = harness();
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_secs(31)).await;
    assert_eq!(h.engine.active_count(), 0);
    let calls = offsets(&h, "1");
    assert_eq!(*calls.last().unwrap(), 28_000, "last refire before the 30 s lease: {calls:?}");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(offsets(&h, "1").len(), calls.len());
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_caps_a_session_that_keeps_being_refreshed() {
    let engine = EngineSettings { max_lifetime: Duration::from_secs(20), ..EngineSettings::default() };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    h.engine.start(start_cmd("1")).unwrap();
    let mut ended_at = None;
    for i in 1..=50u64 {
        sleep(Duration::from_millis(500)).await;
        if h.engine.active_count() == 0 && ended_at.is_none() {
            ended_at = Some(i * 500);
        }
        if ended_at.is_none() {
            h.engine.start(start_cmd("1")).unwrap();
        }
    }
    // Ended at the 20 s cap (seen at the first check at or after it).
    assert!(matches!(ended_at, Some(20_000 | 20_500)), "{ended_at:?}");
    assert!(offsets(&h, "1").iter().all(|t| *t < 20_000));
}

#[tokio::test(start_paused = true)]
async fn two_holders_share_one_session() {
    let h = harness();
    let mut a = start_cmd("1");
    a.holder = Some(Arc::from("alice"));
    let mut b = start_cmd("1");
    b.holder = Some(Arc::from("bob"));
    assert_eq!(h.engine.start(a), Ok(StartOutcome::Started));
    assert_eq!(h.engine.start(b), Ok(StartOutcome::Refreshed));
    sleep(Duration::from_millis(4000)).await;
    assert_eq!(h.engine.stop(&key("1"), Some("alice")), StopOutcome::Released { holders: 1 });
    sleep(Duration::from_millis(4000)).await;
    assert_eq!(h.engine.stop(&key("1"), Some("bob")), StopOutcome::Stopped);
    sleep(Duration::from_millis(10_000)).await;
    assert_eq!(offsets(&h, "1"), vec![0, 3500, 7000]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_shifts_nothing_and_causes_no_burst() {
    let h = harness();
    *h.fake.latency.lock().unwrap() = Duration::from_millis(1500);
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(11_000)).await;
    h.engine.stop(&key("1"), None);
    // Launch times stay on the 3.5 s grid measured from the previous send.
    assert_eq!(offsets(&h, "1"), vec![0, 3500, 7000, 10_500]);
}

#[tokio::test(start_paused = true)]
async fn a_401_ends_every_session_of_the_key() {
    let h = harness();
    *h.fake.status.lock().unwrap() = 401;
    h.engine.start(start_cmd("1")).unwrap();
    h.engine.start(start_cmd("2")).unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(h.engine.active_count(), 0);
    assert_eq!(h.engine.start(start_cmd("3")), Err(StartError::KeyRefused));
    sleep(Duration::from_secs(61)).await;
    // After REFUSED_FOR the key may be tried again.
    *h.fake.status.lock().unwrap() = 0;
    assert_eq!(h.engine.start(start_cmd("3")), Ok(StartOutcome::Started));
}

#[tokio::test(start_paused = true)]
async fn a_404_ends_that_session_and_a_503_pauses_the_account() {
    let h = harness();
    *h.fake.status.lock().unwrap() = 404;
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(h.engine.active_count(), 0);
    *h.fake.status.lock().unwrap() = 503;
    h.engine.start(start_cmd("2")).unwrap();
    sleep(Duration::from_millis(100)).await;
    assert!(matches!(h.engine.start(start_cmd("2")), Ok(StartOutcome::Paused(PauseCause::Reauthenticating))));
    sleep(Duration::from_secs(20)).await;
    assert_eq!(offsets(&h, "2").len(), 1, "nothing is sent while the account is paused");
    // The chatter is still composing: the lease is refreshed while paused.
    assert!(matches!(h.engine.start(start_cmd("2")), Ok(StartOutcome::Paused(_))));
    *h.fake.status.lock().unwrap() = 0;
    // The probe after the 30 s pause succeeds and the account resumes.
    sleep(Duration::from_secs(15)).await;
    assert!(offsets(&h, "2").len() >= 3, "{:?}", offsets(&h, "2"));
    assert!(h.engine.paused_accounts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_session_cap_refuses_new_chats_but_refreshes_live_ones() {
    let engine = EngineSettings { max_sessions: Count::of(2), ..EngineSettings::default() };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    h.engine.start(start_cmd("1")).unwrap();
    h.engine.start(start_cmd("2")).unwrap();
    assert_eq!(h.engine.start(start_cmd("3")), Err(StartError::AtCapacity));
    assert_eq!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Refreshed));
}

#[tokio::test(start_paused = true)]
async fn in_flight_calls_never_exceed_the_cap() {
    let engine = EngineSettings { max_in_flight: Count::of(3), ..EngineSettings::default() };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    *h.fake.latency.lock().unwrap() = Duration::from_millis(1000);
    for i in 0..9 {
        h.engine.start(start_cmd(&format!("{}", 10 + i))).unwrap();
    }
    let mut most = 0;
    for _ in 0..40 {
        sleep(Duration::from_millis(100)).await;
        most = most.max(h.engine.in_flight());
    }
    assert_eq!(most, 3);
    // Nine sessions, three at a time, one second each: every session got its first call.
    for i in 0..9 {
        assert!(!h.fake.calls_for(&format!("{}", 10 + i)).is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_stop_cancels_a_call_that_has_not_left_yet() {
    let h = harness();
    // The request waits 1 s for a connection before it is written.
    *h.fake.connect_delay.lock().unwrap() = Duration::from_secs(1);
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(500)).await;
    assert_eq!(h.engine.stop(&key("1"), None), StopOutcome::Stopped);
    sleep(Duration::from_secs(5)).await;
    assert!(h.fake.left.lock().unwrap().is_empty(), "a call left after its stop was answered");
    // Without a stop the delayed call does leave (the fake is not broken).
    h.engine.start(start_cmd("2")).unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.fake.left.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_a_429_pause_every_session_types_again_even_beyond_the_in_flight_cap() {
    // More sessions than in-flight permits: draining the budget's queue after the pause runs
    // out of permits half-way, and must carry on once they free.
    let engine = EngineSettings { max_in_flight: Count::of(2), ..EngineSettings::default() };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    *h.fake.latency.lock().unwrap() = Duration::from_millis(50);
    for chat in 1..=6 {
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    sleep(Duration::from_millis(100)).await;
    *h.fake.status.lock().unwrap() = 429;
    sleep(Duration::from_millis(4000)).await;
    *h.fake.status.lock().unwrap() = 200;
    let healed = Instant::now();
    sleep(Duration::from_secs(12)).await;
    for chat in 1..=6 {
        let after = h.fake.calls_for(&chat.to_string()).into_iter().filter(|t| *t > healed).count();
        assert!(after >= 2, "chat {chat}: {after} calls in the 12 s after the 429s stopped");
    }
}

#[tokio::test(start_paused = true)]
async fn a_refresh_after_a_call_near_the_lease_end_does_not_bring_the_next_call_forward() {
    let engine = EngineSettings { idle_timeout: Duration::from_secs(8), ..EngineSettings::default() };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    h.engine.start(start_cmd("1")).unwrap();
    // The call at 7 s is launched while the lease still ends at 8 s; the refresh comes after.
    sleep(Duration::from_millis(7000)).await;
    tokio::task::yield_now().await;
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(4000)).await;
    h.engine.stop(&key("1"), None);
    assert_eq!(offsets(&h, "1"), vec![0, 3500, 7000, 10_500]);
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_starts_spreads_its_second_calls_once() {
    let h = harness();
    let n = 100; // more than one launch chunk
    for chat in 0..n {
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    sleep(Duration::from_millis(7600)).await;
    let interval = Duration::from_millis(3500);
    let spread = burst_spread(interval);
    let tick = EngineSettings::default().tick;
    for chat in 0..n {
        let calls = h.fake.calls_for(&chat.to_string());
        assert_eq!(calls.len(), 3, "chat {chat}: {calls:?}");
        // Every first call at once, however many came together.
        assert_eq!(calls[0], h.t0, "chat {chat}");
        // The second comes up to `spread` early (never late by more than a tick) ...
        let second = calls[1].duration_since(calls[0]);
        assert!(second + spread >= interval && second <= interval + tick, "chat {chat}: second call after {second:?}");
        // ... and every later one keeps the full interval.
        let third = calls[2].duration_since(calls[1]);
        assert!(third >= interval && third <= interval + tick, "chat {chat}: third call after {third:?}");
    }
    // The burst does not come due together again: its second calls leave in groups of at most
    // one launch chunk (32), each group at its own instant.
    let mut by_ms = std::collections::BTreeMap::<u128, usize>::new();
    for chat in 0..n {
        let calls = h.fake.calls_for(&chat.to_string());
        *by_ms.entry(calls[1].duration_since(calls[0]).as_millis()).or_default() += 1;
    }
    assert_eq!(by_ms.len(), 4, "100 second calls in groups of 32: {by_ms:?}");
    assert!(by_ms.values().all(|&k| k <= 32), "a group larger than a launch chunk: {by_ms:?}");
    assert_eq!(by_ms.get(&3500), Some(&32), "the burst's first group keeps the interval: {by_ms:?}");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_starts_stays_one_burst_on_a_busy_runtime() {
    let h = harness();
    // Another task that holds the runtime for 3 ms whenever it runs: every time the scheduler
    // yields between two launch chunks, the next chunk starts later than a burst's window.
    let busy = tokio::spawn(async {
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(3)).await;
            tokio::task::yield_now().await;
        }
    });
    let n = 100;
    for chat in 0..n {
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    busy.await.unwrap();
    sleep(Duration::from_millis(7600)).await;
    let mut by_ms = std::collections::BTreeMap::<u128, usize>::new();
    for chat in 0..n {
        let calls = h.fake.calls_for(&chat.to_string());
        assert!(calls.len() >= 2, "chat {chat}: {calls:?}");
        // To 10 ms: the calls of one group leave a few milliseconds apart on the busy runtime.
        *by_ms.entry(calls[1].duration_since(calls[0]).as_millis() / 10 * 10).or_default() += 1;
    }
    // The chunks are one burst: its second calls are spread as if no chunk had waited.
    assert_eq!(by_ms.len(), 4, "100 second calls in groups of 32: {by_ms:?}");
    // Its first group keeps the interval (counted from when the calls left, a little after
    // they were launched on the busy runtime).
    let (&ms, &k) = by_ms.last_key_value().unwrap();
    assert!(ms >= 3500 && k == 32, "the burst's first group keeps the interval: {by_ms:?}");
}

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_does_not_hold_first_calls_back() {
    let h = harness();
    // Nothing has been answered yet, so the upstream's latency is not known: the first calls of
    // a batch larger than the in-flight limit's headroom leave within milliseconds (the limit
    // doubles every 5 ms of waiting), not one answer later.
    *h.fake.latency.lock().unwrap() = Duration::from_millis(500);
    let n = 300;
    for chat in 0..n {
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    // More starts keep coming, one every millisecond: the scheduler's waits are not reset by
    // them.
    for chat in n..n + 50 {
        sleep(Duration::from_millis(1)).await;
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    sleep(Duration::from_millis(50)).await;
    let mut last = Duration::ZERO;
    for chat in 0..n {
        let calls = h.fake.calls_for(&chat.to_string());
        assert_eq!(calls.len(), 1, "chat {chat}: {calls:?}");
        last = last.max(calls[0].duration_since(h.t0));
    }
    // 64, 128, 256, 512 permits: the last first call leaves after three doublings.
    assert!(last <= Duration::from_millis(20), "the last first call left after {last:?}");
}

#[tokio::test(start_paused = true)]
async fn a_small_burst_of_starts_keeps_its_deadlines_together() {
    let h = harness();
    for chat in 0..20 {
        h.engine.start(start_cmd(&chat.to_string())).unwrap();
    }
    sleep(Duration::from_millis(7600)).await;
    for chat in 0..20 {
        assert_eq!(offsets(&h, &chat.to_string()), vec![0, 3500, 7000], "chat {chat}");
    }
}

#[tokio::test(start_paused = true)]
async fn refires_due_within_one_tick_leave_together() {
    for (tick, expected) in [(Duration::from_millis(5), 3505), (Duration::ZERO, 3503)] {
        let budget = BudgetSettings {
            limit_per_minute: Count::of(1_000_000),
            burst: Count::of(1000),
            ..BudgetSettings::default()
        };
        let h = harness_with(EngineSettings { tick, ..EngineSettings::default() }, budget);
        h.engine.start(start_cmd("1")).unwrap();
        // Far enough apart not to count as one burst of starts.
        sleep(Duration::from_millis(3)).await;
        h.engine.start(start_cmd("2")).unwrap();
        sleep(Duration::from_millis(4000)).await;
        assert_eq!(offsets(&h, "1"), vec![0, 3500], "tick {tick:?}");
        assert_eq!(offsets(&h, "2"), vec![3, expected], "tick {tick:?}");
    }
}

fn short_budget(limit: u32) -> Harness {
    // Typing gets `limit / 2` per minute, bucket 10: far below the fans these tests start.
    let budget = BudgetSettings { limit_per_minute: Count::of(limit), ..BudgetSettings::default() };
    harness_with(EngineSettings { idle_timeout: Duration::from_secs(600), ..EngineSettings::default() }, budget)
}

/// Longest time between two consecutive calls of `chat` in `[from, to]`.
fn worst_gap(h: &Harness, chat: &str, from: Instant, to: Instant) -> Duration {
    let calls: Vec<Instant> = h.fake.calls_for(chat).into_iter().filter(|t| *t >= from && *t <= to).collect();
    let mut worst = calls.first().map_or(to - from, |t| t.duration_since(from));
    for w in calls.windows(2) {
        worst = worst.max(w[1].duration_since(w[0]));
    }
    worst.max(calls.last().map_or(Duration::ZERO, |t| to.duration_since(*t)))
}

/// Calls of `chats` in the `span` up to `end`.
fn calls_within(h: &Harness, chats: &[String], end: Instant, span: Duration) -> usize {
    let calls =
        |c: &String| h.fake.calls_for(c).into_iter().filter(|t| *t <= end && end.duration_since(*t) < span).count();
    chats.iter().map(calls).sum()
}

fn lit_chats(h: &Harness) -> Vec<u64> {
    let mut v: Vec<u64> = h
        .engine
        .sessions(|_| true)
        .into_iter()
        .filter(|s| s.lit_slot)
        .map(|s| s.chat_id.as_str().parse().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test(start_paused = true)]
async fn first_indicators_overtake_every_refire_on_a_spent_budget() {
    // 60 typing calls a minute; 30 fans start two seconds apart, ten times what it keeps lit.
    let h = short_budget(120);
    let mut delays = Vec::new();
    let chats: Vec<String> = (0..30).map(|i| format!("{}", 100 + i)).collect();
    for chat in &chats {
        let asked = Instant::now();
        h.engine.start(start_cmd(chat)).unwrap();
        sleep(Duration::from_secs(2)).await;
        let first = h.fake.calls_for(chat).first().map(|t| t.duration_since(asked));
        delays.push(first.unwrap_or(Duration::MAX));
    }
    delays.sort_unstable();
    assert!(delays[26] <= Duration::from_secs(1), "p90 first-indicator delay {:?}", delays[26]);
    assert!(delays[29] <= Duration::from_secs(2), "slowest first indicator {:?}", delays[29]);
    sleep(Duration::from_secs(60)).await;
    let end = Instant::now();
    for s in 0..=120 {
        let at = h.t0 + Duration::from_secs(s);
        let n = calls_within(&h, &chats, at.min(end), Duration::from_secs(60));
        assert!(n <= 60, "{n} calls in the 60 s up to {s} s on a 60 per minute budget");
    }
    // The oldest fan held a slot throughout: every refire on time.
    let gap = worst_gap(&h, "100", h.t0, end);
    assert!(gap <= Duration::from_millis(4000), "the first slot holder went {gap:?} without an indicator");
}

#[tokio::test(start_paused = true)]
async fn slot_holders_keep_every_refire_while_waiting_sessions_share_the_rest() {
    let h = short_budget(120);
    let chats: Vec<String> = (0..20).map(|i| format!("{}", 100 + i)).collect();
    for chat in &chats {
        h.engine.start(start_cmd(chat)).unwrap();
        sleep(Duration::from_millis(300)).await;
    }
    sleep(Duration::from_secs(120)).await;
    let end = Instant::now();
    // Once the first indicators of the first minute are forgotten: (60 - 5) / 17.1 = 3 fans.
    assert_eq!(lit_chats(&h), vec![100, 101, 102]);
    let (snap, _) = &h.engine.budgets()[0];
    assert_eq!((snap.sessions_lit, snap.sessions_waiting), (3, 17));
    let from = h.t0 + Duration::from_secs(70);
    for chat in ["100", "101", "102"] {
        let gap = worst_gap(&h, chat, from, end);
        assert!(gap <= Duration::from_millis(3600), "slot holder {chat}: {gap:?} between indicators");
    }
    // Waiting sessions share what is left, the one dark the longest first: turn by turn, so no
    // waiting fan gets a second indicator before every other one got its next.
    let since = h.t0 + Duration::from_secs(10);
    let counts: Vec<usize> =
        chats[3..].iter().map(|c| h.fake.calls_for(c).iter().filter(|t| **t >= since).count()).collect();
    let (least, most) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(most - least <= 1, "waiting sessions served unevenly: {counts:?}");
    assert!(counts.iter().sum::<usize>() >= 10, "waiting sessions got almost nothing: {counts:?}");
    assert!(calls_within(&h, &chats, end, Duration::from_secs(60)) <= 60);
}

#[tokio::test(start_paused = true)]
async fn high_priority_sessions_take_the_slots_of_the_newest_normal_ones() {
    let h = short_budget(120);
    for i in 0..10 {
        h.engine.start(start_cmd(&format!("{}", 100 + i))).unwrap();
        sleep(Duration::from_millis(300)).await;
    }
    sleep(Duration::from_secs(70)).await;
    assert_eq!(lit_chats(&h), vec![100, 101, 102]);
    let mut high = start_cmd("900");
    high.priority = Priority::High;
    h.engine.start(high).unwrap();
    sleep(Duration::from_millis(100)).await;
    // One slot for the high fan: the newest normal slot holder gives way.
    assert_eq!(lit_chats(&h), vec![100, 101, 900]);
    // A normal session whose chatter marks it high overtakes the normal ones too.
    let mut raised = start_cmd("105");
    raised.priority = Priority::High;
    assert_eq!(h.engine.start(raised), Ok(StartOutcome::Refreshed));
    sleep(Duration::from_millis(100)).await;
    assert_eq!(lit_chats(&h), vec![100, 105, 900]);
    let from = Instant::now() + Duration::from_secs(4);
    sleep(Duration::from_secs(40)).await;
    for chat in ["105", "900"] {
        let gap = worst_gap(&h, chat, from, Instant::now());
        assert!(gap <= Duration::from_millis(3600), "high fan {chat}: {gap:?} between indicators");
    }
}

#[tokio::test(start_paused = true)]
async fn capacity_shrinks_from_the_newest_slot_holder_and_grows_in_start_order() {
    // 600 typing calls a minute: (600 - 40 first indicators - 5) / 17.1 = 32 fans.
    let h = short_budget(1200);
    for i in 0..40 {
        h.engine.start(start_cmd(&format!("{}", 100 + i))).unwrap();
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_secs(2)).await;
    assert_eq!(lit_chats(&h), (100..132).collect::<Vec<_>>());
    // The upstream lowers the limit: (300 - 40 - 5) / 17.1 = 14 fans.
    let limits = |limit| crate::upstream::RateLimits { limit_minute: Some(limit), ..Default::default() };
    *h.fake.limits.lock().unwrap() = Some(limits(600));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(lit_chats(&h), (100..114).collect::<Vec<_>>());
    // A stop frees a slot for the oldest waiting session at once.
    h.engine.stop(&key("105"), None);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(lit_chats(&h), (100..115).filter(|c| *c != 105).collect::<Vec<_>>());
    *h.fake.limits.lock().unwrap() = Some(limits(1200));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(lit_chats(&h), (100..133).filter(|c| *c != 105).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_call_keeps_first_indicator_priority() {
    let h = short_budget(120);
    for i in 0..10 {
        h.engine.start(start_cmd(&format!("{}", 100 + i))).unwrap();
        sleep(Duration::from_millis(300)).await;
    }
    sleep(Duration::from_secs(70)).await;
    // The newcomer's first call fails; its next try is still a first indicator and leaves on
    // its due time, ahead of the waiting sessions, on a spent budget.
    h.fake.failing.lock().unwrap().insert("999".into(), 1);
    h.engine.start(start_cmd("999")).unwrap();
    sleep(Duration::from_millis(4500)).await;
    let calls = offsets(&h, "999");
    let first = h.fake.calls_for("999");
    assert_eq!(first.len(), 2, "{calls:?}");
    let second = first[1].duration_since(first[0]);
    assert!(second <= Duration::from_millis(3600), "the retry of a failed first indicator came after {second:?}");
}

#[tokio::test(start_paused = true)]
async fn a_chat_past_its_max_lifetime_is_capped_until_a_stop_or_a_pause_in_starts() {
    let engine = EngineSettings {
        max_lifetime: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(10),
        ..EngineSettings::default()
    };
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let h = harness_with(engine, budget);
    let mut outcomes = Vec::new();
    for _ in 0..60 {
        outcomes.push(h.engine.start(start_cmd("1")).unwrap());
        sleep(Duration::from_millis(500)).await;
    }
    // Steady starts past the cap send nothing.
    assert!(offsets(&h, "1").iter().all(|t| *t < 20_000), "{:?}", offsets(&h, "1"));
    assert_eq!(outcomes[41..], [StartOutcome::Capped; 19]);
    assert_eq!(h.engine.active_count(), 0);
    // A stop lifts the cap: the next start opens a new session.
    assert_eq!(h.engine.stop(&key("1"), None), StopOutcome::Stopped);
    assert_eq!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Started));
    // So does a pause in starts longer than the idle lease.
    let h = harness_with(
        EngineSettings {
            max_lifetime: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(10),
            ..EngineSettings::default()
        },
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() },
    );
    for _ in 0..45 {
        h.engine.start(start_cmd("2")).unwrap();
        sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(h.engine.start(start_cmd("2")), Ok(StartOutcome::Capped));
    sleep(Duration::from_millis(9_000)).await;
    assert_eq!(h.engine.start(start_cmd("2")), Ok(StartOutcome::Capped), "a start within the lease keeps the cap");
    sleep(Duration::from_millis(10_500)).await;
    let n = offsets(&h, "2").len();
    assert_eq!(h.engine.start(start_cmd("2")), Ok(StartOutcome::Started));
    sleep(Duration::from_millis(100)).await;
    assert_eq!(offsets(&h, "2").len(), n + 1, "the new session's first call left at once");
}

#[tokio::test(start_paused = true)]
async fn an_account_pause_ends_at_its_probe_time_and_is_forgotten() {
    let h = harness();
    h.engine.pause_account(&key("1").account, PauseCause::SessionExpired, Duration::from_secs(5));
    assert!(matches!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Paused(PauseCause::SessionExpired))));
    sleep(Duration::from_secs(8)).await;
    // Past the probe time the account is not reported paused, and the map no longer holds it.
    assert_eq!(h.engine.start(start_cmd("1")), Ok(StartOutcome::Refreshed));
    assert!(h.engine.paused_accounts().is_empty());
    assert!(h.engine.shared.readiness.is_empty(), "the pause is still held");
    assert!(!offsets(&h, "1").is_empty(), "the probe refire went out");
}

#[tokio::test(start_paused = true)]
async fn a_session_on_a_missing_budget_sends_nothing() {
    // No budget at all: the key's budget index points nowhere.
    let h = harness_on(EngineSettings::default(), BudgetSettings::default(), &[]);
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_secs(10)).await;
    assert!(h.fake.calls_for("1").is_empty(), "a call left without a budget to pay for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_leaves_once_the_drain_has_begun_whatever_the_interleaving() {
    // Calls wait 500 ms for a connection before they are written: any call still waiting when
    // the drain begins must be dropped. The drain lands while thousands of first calls are being
    // launched on the other worker, in every phase of `fire`.
    for round in 0..10u32 {
        let budget = BudgetSettings { limit_per_minute: Count::of(100_000_000), ..BudgetSettings::default() };
        let h = harness_with(EngineSettings::default(), budget);
        *h.fake.connect_delay.lock().unwrap() = Duration::from_millis(500);
        for chat in 0..3000u32 {
            h.engine.start(start_cmd(&(round * 10_000 + chat + 1).to_string())).unwrap();
            if chat % 100 == 0 {
                // Let the scheduler launch on the other worker meanwhile.
                tokio::task::yield_now().await;
            }
            if chat == 1500 + round * 100 {
                h.engine.drain();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let left = h.fake.left.lock().unwrap().len();
        assert_eq!(left, 0, "round {round}: {left} calls left after the drain began");
    }
}

#[tokio::test(start_paused = true)]
async fn calls_due_within_a_hand_over_leave_before_it_and_the_next_is_a_full_interval_later() {
    let h = harness();
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(1000)).await;
    h.engine.start(start_cmd("2")).unwrap();
    // "1" is due at 3500 ms, "2" at 4500 ms: only "1" falls within the next 500 ms, and it
    // leaves halfway to its time.
    sleep(Duration::from_millis(2200)).await;
    let sent = h.engine.send_due_within(|_| true, Duration::from_millis(500)).await;
    assert_eq!(sent, 1);
    assert_eq!(offsets(&h, "1"), vec![0, 3350]);
    assert_eq!(offsets(&h, "2"), vec![1000]);
    // Handed over now, "1" is due a full interval after the call that just left.
    let recorded: std::collections::HashMap<String, Duration> = h
        .engine
        .evict(|k| k.chat.as_str() == "1", false)
        .into_iter()
        .map(|(k, r)| (k.chat.to_string(), r.due_in))
        .collect();
    let due_in = recorded["1"];
    assert!(due_in > Duration::from_millis(3450) && due_in <= Duration::from_millis(3500), "due in {due_in:?}");
    // Left here, "2" keeps its cadence.
    sleep(Duration::from_millis(4000)).await;
    assert_eq!(offsets(&h, "1"), vec![0, 3350]);
    assert_eq!(offsets(&h, "2"), vec![1000, 4500]);
}

/// Lets typing calls leave while `allowed` is set.
struct Switch(std::sync::atomic::AtomicBool);

impl Ownership for Switch {
    fn may_send(&self, _key: &SessionKey, _now: Instant) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test(start_paused = true)]
async fn calls_sent_ahead_of_a_hand_over_are_fenced_by_ownership() {
    let h = harness();
    let switch = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
    h.engine.set_ownership(switch.clone());
    h.engine.start(start_cmd("1")).unwrap();
    sleep(Duration::from_millis(3200)).await;
    switch.0.store(false, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    let sent = h.engine.send_due_within(|_| true, Duration::from_millis(500)).await;
    assert_eq!(sent, 0);
    // It would have left at 3350 ms: the wait ends there.
    assert!(
        started.elapsed() <= Duration::from_millis(160),
        "waited {:?} for a call that cannot leave",
        started.elapsed()
    );
    assert_eq!(offsets(&h, "1"), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn calls_sent_ahead_of_a_hand_over_are_paid_by_the_budget() {
    // 60 typing calls a minute for 20 fans: the budget is spent all along.
    let h = short_budget(120);
    let chats: Vec<String> = (0..20).map(|i| format!("{}", 100 + i)).collect();
    for chat in &chats {
        h.engine.start(start_cmd(chat)).unwrap();
        sleep(Duration::from_millis(150)).await;
    }
    for _ in 0..10 {
        sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        h.engine.send_due_within(|_| true, Duration::from_millis(3500)).await;
        assert!(started.elapsed() <= Duration::from_millis(2626), "waited {:?}", started.elapsed());
    }
    sleep(Duration::from_secs(60)).await;
    let end = Instant::now();
    let mut at = h.t0;
    while at <= end {
        let n = calls_within(&h, &chats, at, Duration::from_secs(60));
        assert!(n <= 60, "{n} calls in the 60 s up to {:?} on a 60 per minute budget", at - h.t0);
        at += Duration::from_millis(500);
    }
}

#[tokio::test(start_paused = true)]
async fn a_session_ending_within_a_hand_over_gets_no_extra_call() {
    let h = harness();
    let cmd = StartCommand { ttl: Some(Duration::from_millis(2000)), ..start_cmd("1") };
    h.engine.start(cmd).unwrap();
    sleep(Duration::from_millis(1700)).await;
    let sent = h.engine.send_due_within(|_| true, Duration::from_millis(500)).await;
    assert_eq!(sent, 0);
    sleep(Duration::from_millis(1000)).await;
    assert_eq!(offsets(&h, "1"), vec![0]);
    assert_eq!(h.engine.active_count(), 0);
}

/// Sessions taken over by a replica whose grant from a shared budget window was sized for the
/// few sessions it had: their calls leave when the grant for them comes, at their deadlines, not
/// when the budget as it was would have paid them.
#[tokio::test(start_paused = true)]
async fn sessions_taken_over_refire_on_time_once_the_grant_for_them_comes() {
    let budget = BudgetSettings { limit_per_minute: Count::of(60_000), ..BudgetSettings::default() };
    let h =
        harness_with(EngineSettings { idle_timeout: Duration::from_secs(600), ..EngineSettings::default() }, budget);
    let grant = |tokens: u32, fraction: f64| crate::budget::SharedWindow {
        tokens,
        first_tokens: 0,
        fraction,
        window_used: 0,
        slot_calls: None,
    };
    // A replica alone with no session yet: a few calls and a tiny share of the budget.
    let now = Instant::now();
    h.engine.budget_states().with(0, |b| b.set_shared_grant(grant(4, 0.001), now + Duration::from_secs(5), now));
    let chats: Vec<String> = (0..200).map(|i| (1000 + i).to_string()).collect();
    for (i, chat) in chats.iter().enumerate() {
        let adopted = Adopted {
            holders: vec![(None, Duration::from_secs(600))],
            priority: Priority::Normal,
            age: Duration::from_secs(10),
            lifetime_left: Duration::from_secs(3000),
            due_in: Duration::from_millis(200 + 5 * i as u64),
            preferred_key: None,
        };
        assert!(h.engine.adopt(key(chat), &adopted));
    }
    // Its next reservation, 100 ms on, is sized for them.
    sleep(Duration::from_millis(100)).await;
    let now = Instant::now();
    h.engine.budget_states().with(0, |b| b.set_shared_grant(grant(400, 0.5), now + Duration::from_secs(5), now));
    h.engine.budget_granted(0);
    sleep(Duration::from_secs(2)).await;
    for (i, chat) in chats.iter().enumerate() {
        let due = h.t0 + Duration::from_millis(200 + 5 * i as u64);
        let calls = h.fake.calls_for(chat);
        let first = calls.first().unwrap_or_else(|| panic!("chat {chat} was never refired"));
        let late = first.saturating_duration_since(due);
        assert!(late <= Duration::from_millis(20), "chat {chat} refired {late:?} after its deadline");
    }
}
