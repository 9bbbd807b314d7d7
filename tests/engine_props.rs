#![allow(clippy::unwrap_used, missing_docs, reason = "a test binary: it may panic")]

//! Property tests of the engine on paused tokio time: random interleavings of starts, stops,
//! batches, duplicate and out-of-order hooks, upstream outcomes and time steps across several
//! chats, driven through the public `Engine` API with a fake upstream that records every call.
//!
//! Invariants, checked from the outside (the call log and `Engine::sessions`):
//! - at most one refire loop per chat: within one incarnation of a chat's session, consecutive
//!   typing calls are never closer than the refire interval (minus 1 ms), except that the second
//!   call of a session started in a burst may come up to `engine::burst_spread` early;
//! - no typing call for a chat after its stop was answered (until a new start);
//! - no typing call at or after an incarnation's start plus `engine.max_lifetime`, and once
//!   the hooks go quiet every session is gone within `max_lifetime`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keeptyping::budget::Budgets;
use keeptyping::config::{AccountScope, ApiKey, BudgetSettings, Count, EngineSettings, PlatformsSettings};
use keeptyping::engine::{Engine, EngineConfig, KeyRing, Priority, StartCommand, StopOutcome, burst_spread};
use keeptyping::ids::{AccountId, ChatId, Platform, SessionKey};
use keeptyping::upstream::{BoxFuture, KeyIndex, Outcome, Upstream, UpstreamError};
use proptest::prelude::*;
use secrecy::SecretString;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const CHATS: u8 = 5;
const INTERVAL: Duration = Duration::from_millis(3500);
const MAX_LIFETIME: Duration = Duration::from_secs(20);
const IDLE: Duration = Duration::from_secs(8);
const TOLERANCE: Duration = Duration::from_millis(1);

/// How the fake upstream answers from now on.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    latency_ms: u64,
    retry_after_ms: Option<u64>,
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(String, Instant)>>,
    answer: Mutex<Option<Answer>>,
}

impl Upstream for Fake {
    fn typing(&self, key: &SessionKey, _api_key: KeyIndex) -> BoxFuture<Outcome> {
        self.calls.lock().unwrap().push((key.chat.to_string(), Instant::now()));
        let a = self.answer.lock().unwrap().unwrap_or(Answer { status: 200, latency_ms: 0, retry_after_ms: None });
        Box::pin(async move {
            let latency = Duration::from_millis(a.latency_ms);
            sleep(latency).await;
            let result = match a.status {
                200 => Ok(()),
                0 => Err(UpstreamError::Timeout),
                status => {
                    Err(UpstreamError::Status { status, retry_after: a.retry_after_ms.map(Duration::from_millis) })
                }
            };
            Outcome { result, rate_limits: None, elapsed: latency }
        })
    }
}

#[derive(Debug, Clone)]
enum Hook {
    Start { chat: u8, holder: Option<u8>, ttl_ms: Option<u64>, high: bool },
    Stop { chat: u8, holder: Option<u8> },
}

#[derive(Debug, Clone)]
enum Op {
    Hook(Hook),
    /// Several hooks in the same instant (a batch).
    Batch(Vec<Hook>),
    Upstream(Answer),
    Sleep(u64),
}

fn hook() -> impl Strategy<Value = Hook> {
    let holder = prop::option::weighted(0.3, 0..2u8);
    prop_oneof![
        3 => (0..CHATS, holder.clone(), prop::option::weighted(0.3, 100..25_000u64), any::<bool>())
            .prop_map(|(chat, holder, ttl_ms, high)| Hook::Start { chat, holder, ttl_ms, high }),
        2 => (0..CHATS, holder).prop_map(|(chat, holder)| Hook::Stop { chat, holder }),
    ]
}

fn answer() -> impl Strategy<Value = Answer> {
    (
        prop::sample::select(vec![200u16, 200, 200, 0, 500, 429, 503, 404, 401]),
        prop_oneof![3 => Just(0u64), 1 => 1..5_000u64],
        prop::option::of(0..3_000u64),
    )
        .prop_map(|(status, latency_ms, retry_after_ms)| Answer { status, latency_ms, retry_after_ms })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => hook().prop_map(Op::Hook),
        1 => prop::collection::vec(hook(), 1..8).prop_map(Op::Batch),
        1 => answer().prop_map(Op::Upstream),
        5 => (0..4_000u64).prop_map(Op::Sleep),
    ]
}

fn key(chat: u8) -> SessionKey {
    SessionKey {
        platform: Platform::Onlyfans,
        account: AccountId::parse(Platform::Onlyfans, "acct_0123456789abcdef0123456789abcdef").unwrap(),
        chat: ChatId::parse(Platform::Onlyfans, &format!("{}", 100 + u32::from(chat))).unwrap(),
    }
}

/// What the test knows of one chat from the outside.
#[derive(Debug, Default, Clone)]
struct ChatLog {
    /// (incarnation start, index into the call log at that moment).
    incarnations: Vec<(Instant, usize)>,
    /// Stops answered `Stopped`: (incarnation it ended, index into the call log at that moment).
    stops: Vec<(usize, usize)>,
}

struct Run {
    engine: Engine,
    fake: Arc<Fake>,
    chats: Vec<ChatLog>,
}

impl Run {
    fn live(&self, chat: u8) -> bool {
        let k = key(chat);
        !self.engine.sessions(|_| true).iter().all(|s| s.chat_id != k.chat)
    }

    fn calls_len(&self) -> usize {
        self.fake.calls.lock().unwrap().len()
    }

    fn apply(&mut self, h: &Hook) {
        match *h {
            Hook::Start { chat, holder, ttl_ms, high } => {
                let was_live = self.live(chat);
                let cmd = StartCommand {
                    key: key(chat),
                    holder: holder.map(|h| Arc::from(format!("chatter{h}"))),
                    priority: if high { Priority::High } else { Priority::Normal },
                    ttl: ttl_ms.map(Duration::from_millis),
                    preferred_key: None,
                };
                if self.engine.start(cmd).is_ok() && !was_live {
                    let at = (Instant::now(), self.calls_len());
                    self.chats[usize::from(chat)].incarnations.push(at);
                }
            }
            Hook::Stop { chat, holder } => {
                let holder = holder.map(|h| format!("chatter{h}"));
                if self.engine.stop(&key(chat), holder.as_deref()) == StopOutcome::Stopped {
                    let at = self.calls_len();
                    let log = &mut self.chats[usize::from(chat)];
                    let incarnation = log.incarnations.len().saturating_sub(1);
                    log.stops.push((incarnation, at));
                }
            }
        }
    }
}

fn build() -> (Engine, keeptyping::engine::Scheduler, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let budget =
        BudgetSettings { limit_per_minute: Count::of(1_000_000), burst: Count::of(1000), ..BudgetSettings::default() };
    let keys = vec![ApiKey {
        name: "default".into(),
        budget: "default".into(),
        accounts: AccountScope::All,
        secret: SecretString::from("k".to_owned()),
    }];
    let budgets = Budgets::new(&["default".to_owned()], &budget, Instant::now());
    let ring = KeyRing::new(&keys, &budgets);
    let engine = EngineSettings {
        idle_timeout: IDLE,
        max_lifetime: MAX_LIFETIME,
        max_in_flight: Count::of(4),
        ..EngineSettings::default()
    };
    let cfg = EngineConfig {
        engine,
        platforms: PlatformsSettings::default(),
        budget,
        unavailable_pause: Duration::from_secs(5),
    };
    let upstream: Arc<dyn Upstream> = fake.clone();
    let (engine, scheduler) = Engine::new(cfg, upstream, budgets, ring);
    (engine, scheduler, fake)
}

fn check(ops: &[Op]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    rt.block_on(async {
        let (engine, scheduler, fake) = build();
        let stop = CancellationToken::new();
        tokio::spawn(scheduler.run(stop.clone()));
        let mut run = Run { engine, fake, chats: vec![ChatLog::default(); usize::from(CHATS)] };
        for op in ops {
            match op {
                Op::Hook(h) => run.apply(h),
                Op::Batch(hs) => hs.iter().for_each(|h| run.apply(h)),
                Op::Upstream(a) => *run.fake.answer.lock().unwrap() = Some(*a),
                Op::Sleep(ms) => sleep(Duration::from_millis(*ms)).await,
            }
            // Let the scheduler act on this instant before the next operation.
            tokio::task::yield_now().await;
        }
        // The hooks go quiet: every session must end by its lease or its lifetime.
        sleep(MAX_LIFETIME + INTERVAL).await;
        prop_assert_eq!(run.engine.active_count(), 0, "sessions outlived max_lifetime");
        let calls = run.fake.calls.lock().unwrap().clone();
        for chat in 0..CHATS {
            let name = key(chat).chat.to_string();
            let log = &run.chats[usize::from(chat)];
            let mine: Vec<(usize, Instant)> =
                calls.iter().enumerate().filter(|(_, (c, _))| *c == name).map(|(i, (_, t))| (i, *t)).collect();
            // Every call belongs to the latest incarnation started before it.
            for (n, &(started, from)) in log.incarnations.iter().enumerate() {
                let until = log.incarnations.get(n + 1).map_or(usize::MAX, |&(_, i)| i);
                let inc: Vec<Instant> =
                    mine.iter().filter(|(i, _)| *i >= from && *i < until).map(|(_, t)| *t).collect();
                for (i, w) in inc.windows(2).enumerate() {
                    let early = if i == 0 { burst_spread(INTERVAL) } else { Duration::ZERO };
                    prop_assert!(
                        w[1].duration_since(w[0]) + TOLERANCE + early >= INTERVAL,
                        "chat {}: calls {} and {} {:?} apart",
                        name,
                        i + 1,
                        i + 2,
                        w[1].duration_since(w[0])
                    );
                }
                for t in &inc {
                    prop_assert!(t.duration_since(started) < MAX_LIFETIME, "chat {}: call past max_lifetime", name);
                }
                // No call after a stop of this incarnation.
                for &(_, s) in log.stops.iter().filter(|(inc, _)| *inc == n) {
                    let after: Vec<_> = mine.iter().filter(|(i, _)| *i >= s && *i < until).collect();
                    prop_assert!(after.is_empty(), "chat {}: {} calls after stop", name, after.len());
                }
            }
            // Calls before the first incarnation cannot exist.
            let first = log.incarnations.first().map_or(usize::MAX, |&(_, i)| i);
            prop_assert!(mine.iter().all(|(i, _)| *i >= first), "chat {}: call without a start", name);
        }
        stop.cancel();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn engine_invariants_hold_under_random_hooks_outcomes_and_time(ops in prop::collection::vec(op(), 1..60)) {
        check(&ops)?;
    }
}
