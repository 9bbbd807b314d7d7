//! Criterion micro benchmarks of the hot paths (`cargo bench --bench micro`):
//!
//! - `budget`: one budget decision (`BudgetState::try_acquire`), granted and refused;
//! - `engine`: one session's insert and cancel through [`Engine`], and one refire through the
//!   real scheduler and fire path (on paused tokio time, with an upstream that answers at once,
//!   so only keeptyping's own work is timed);
//! - `hook`: parsing and validating a start body, and a whole `POST /v1/typing/start` through
//!   the hook router (auth, JSON, validation, the engine, the answer).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use keeptyping::api::typing::StartRequest;
use keeptyping::api::{self, ApiState, Tokens};
use keeptyping::budget::{BudgetState, Budgets, Class};
use keeptyping::config::{self, AccountScope, ApiKey, BudgetSettings, Count, Settings};
use keeptyping::engine::{Engine, EngineConfig, KeyRing, Priority, Scheduler, StartCommand};
use keeptyping::ids::{AccountId, ChatId, Platform, SessionKey};
use keeptyping::upstream::{BoxFuture, KeyIndex, Outcome, Upstream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
const TOKEN: &str = "bench_hook_token";

/// Answers 200 at once: the engine's own cost, no HTTP.
struct Instant200;

impl Upstream for Instant200 {
    fn typing(&self, _key: &SessionKey, _api_key: KeyIndex) -> BoxFuture<Outcome> {
        Box::pin(async { Outcome { result: Ok(()), rate_limits: None, elapsed: Duration::ZERO } })
    }
}

fn key(chat: u64) -> SessionKey {
    SessionKey {
        platform: Platform::Onlyfans,
        account: AccountId::parse(Platform::Onlyfans, ACCOUNT).expect("a valid account id"),
        chat: ChatId::parse(Platform::Onlyfans, &chat.to_string()).expect("a valid chat id"),
    }
}

fn start_cmd(chat: u64) -> StartCommand {
    StartCommand { key: key(chat), holder: None, priority: Priority::Normal, ttl: None, preferred_key: None }
}

fn unlimited() -> BudgetSettings {
    BudgetSettings { limit_per_minute: Count::of(100_000_000), burst: Count::of(100_000), ..BudgetSettings::default() }
}

fn engine(settings: &Settings) -> (Engine, Scheduler) {
    let keys = vec![ApiKey {
        name: "default".into(),
        budget: "default".into(),
        accounts: AccountScope::All,
        secret: "k".to_owned().into(),
    }];
    let budgets = Budgets::new(&["default".to_owned()], &settings.budget, Instant::now());
    let ring = KeyRing::new(&keys, &budgets);
    let cfg = EngineConfig {
        engine: settings.engine.clone(),
        platforms: settings.platforms.clone(),
        budget: settings.budget.clone(),
        unavailable_pause: Duration::from_secs(30),
    };
    Engine::new(cfg, Arc::new(Instant200), budgets, ring)
}

fn settings() -> Settings {
    let engine = keeptyping::config::EngineSettings {
        idle_timeout: Duration::from_secs(600),
        ..keeptyping::config::EngineSettings::default()
    };
    Settings { budget: unlimited(), engine, ..Settings::default() }
}

fn budget(c: &mut Criterion) {
    let mut g = c.benchmark_group("budget");
    let t0 = Instant::now();
    let mut granted = BudgetState::new("default", 100_000_000, &unlimited(), t0);
    let mut i = 0u64;
    g.bench_function("try_acquire_granted", |b| {
        b.iter(|| {
            // 10 µs apart: about 3,000 calls/s per budget would be 0.3 ms apart; this keeps the
            // 60-s window at its steady size quickly.
            i += 1;
            black_box(granted.try_acquire(Class::Spare, t0 + Duration::from_micros(i * 10)))
        });
    });
    let mut empty =
        BudgetState::new("default", 60, &BudgetSettings { burst: Count::of(1), ..BudgetSettings::default() }, t0);
    let _ = empty.try_acquire(Class::Slot, t0);
    g.bench_function("try_acquire_refused", |b| b.iter(|| black_box(empty.try_acquire(Class::Spare, t0))));
    g.finish();
}

fn engine_paths(c: &mut Criterion) {
    let _ = keeptyping::metrics::install();
    let mut g = c.benchmark_group("engine");
    // Insert and cancel, with the scheduler running (it sees the stale deadline and drops it).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let s = settings();
    let (eng, sched) = engine(&s);
    let stop = CancellationToken::new();
    rt.spawn(sched.run(stop.clone()));
    let mut chat = 0u64;
    g.bench_function("start_then_stop", |b| {
        b.iter(|| {
            chat += 1;
            let k = key(chat);
            let started = eng.start(start_cmd(chat));
            let stopped = eng.stop(&k, None);
            black_box((started, stopped))
        });
        // Let the scheduler drain the deadlines the iterations queued.
        rt.block_on(tokio::task::yield_now());
    });
    stop.cancel();
    // One refire: 1,000 sessions on paused time; the scheduler, the fire task and the metrics
    // run for real, the upstream answers at once.
    g.bench_function("refire", |b| {
        b.iter_custom(|iters| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let (eng, sched) = engine(&s);
                let stop = CancellationToken::new();
                tokio::spawn(sched.run(stop.clone()));
                let sessions = 1000u64;
                for chat in 0..sessions {
                    let _ = eng.start(start_cmd(chat));
                }
                // The first calls go out, then time the refires.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let rounds = iters.div_ceil(sessions).max(1);
                // Wall time, not tokio's: tokio's clock is paused and jumps here.
                #[allow(clippy::disallowed_types, reason = "the one wall-clock reading of paused-time work")]
                let started = std::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(3500) * u32::try_from(rounds).unwrap_or(u32::MAX)).await;
                let elapsed = started.elapsed();
                stop.cancel();
                // Scale to exactly `iters` refires.
                #[allow(clippy::cast_precision_loss, reason = "iteration counts")]
                elapsed.mul_f64(iters as f64 / (rounds * sessions) as f64)
            })
        });
    });
    g.finish();
}

fn hook(c: &mut Criterion) {
    let _ = keeptyping::metrics::install();
    let mut g = c.benchmark_group("hook");
    let body = format!(r#"{{"account_id":"{ACCOUNT}","chat_id":"123456789","chatter_id":"chatter-7","ttl_ms":30000}}"#);
    g.bench_function("parse_and_validate_start", |b| {
        b.iter(|| {
            let req: StartRequest = serde_json::from_slice(black_box(body.as_bytes())).expect("a valid body");
            let platform = req.platform.unwrap_or_default();
            let account = AccountId::parse(platform, &req.account_id).expect("a valid account");
            let chat = match &req.chat_id {
                api::typing::RawId::Text(s) => ChatId::parse(platform, s),
                api::typing::RawId::Number(n) => ChatId::parse(platform, &n.to_string()),
            };
            black_box((account, chat))
        });
    });
    let env: HashMap<String, String> = [
        ("KEEPTYPING_HOOK_TOKEN", TOKEN),
        ("ONLYFANSAPI_API_KEY", "k"),
        ("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "0"),
        ("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "10m"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = config::load(None, &env).expect("bench config is valid");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let (eng, sched) = engine(&cfg.settings);
    let stop = CancellationToken::new();
    rt.spawn(sched.run(stop.clone()));
    let tokens = Tokens::new(&cfg.secrets.hook_tokens, false, |name| eng.keys().by_name(name));
    let client = keeptyping::upstream::OnlyFansClient::build(&cfg.settings.upstream, &cfg.secrets.api_keys)
        .expect("an upstream client");
    let accounts = rt
        .block_on(keeptyping::accounts::Accounts::build(
            cfg.settings.accounts.clone(),
            client,
            None,
            None,
            std::sync::Arc::new(|_| {}),
        ))
        .expect("the accounts scheduler starts");
    let state = ApiState::new(&cfg.settings, eng, tokens, keeptyping::metrics::install(), accounts);
    let router = api::router(state, &cfg.settings);
    g.bench_function("post_start_refresh", |b| {
        b.iter(|| {
            let req = Request::post("/v1/typing/start")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .expect("a valid request");
            black_box(rt.block_on(router.clone().oneshot(req)))
        });
    });
    stop.cancel();
    g.finish();
}

criterion_group!(benches, budget, engine_paths, hook);
criterion_main!(benches);
