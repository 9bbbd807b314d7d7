//! One budget per key across replicas: with the chat tool's own traffic on the key, typing
//! calls from all three replicas together stay within the share in every window, nobody sees a
//! 429, and every newcomer's first indicator is paid although typing is scarce. Ten times faster
//! than life: a 6 s budget window (`budget.window`, and the mock's `window_ms`), refires every
//! 350 ms.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::checker::{Rules, Spell, busiest_window, check, per_window, percentile};
use crate::fleet::{ACCOUNT, API_KEY, Fleet, Params, TempDir, chats, serial};
use crate::routing::seed;
use crate::servers::Redis;

const WINDOW_MS: f64 = 6000.0;
const LIMIT: u32 = 240;
/// `budget.typing_share` (the default, 0.5) of the limit.
const SHARE: usize = 120;
/// The tool's own requests per window.
const TOOL_PER_WINDOW: f64 = 40.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_from_all_replicas_stays_within_the_share_of_one_budget_and_nobody_sees_a_429() {
    let _serial = serial().await;
    let dir = TempDir::new("budget");
    let redis = Redis::single(&dir.0).await;
    budget_across_replicas(redis, &dir.0, "budget").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_typing_from_all_replicas_stays_within_the_share() {
    let _serial = serial().await;
    let dir = TempDir::new("budget-cluster");
    let redis = Redis::cluster(&dir.0).await;
    budget_across_replicas(redis, &dir.0, "budget, cluster").await;
}

/// The test itself, on a single Redis or on a cluster.
pub async fn budget_across_replicas(redis: Redis, dir: &std::path::Path, label: &str) {
    let seed = seed();
    eprintln!("{label}: seed {seed} (KT_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let params = Params { interval_ms: 350, lifetime_ms: 400, upstream_timeout_ms: 150, ..Params::default() }
        .env("KEEPTYPING__BUDGET__WINDOW", "6s")
        .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", &LIMIT.to_string())
        .env("KEEPTYPING__BUDGET__BURST", "10");
    let (interval, lifetime) = (params.interval_ms as f64, params.lifetime_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    let limits = json!({"limit_per_minute": LIMIT, "window_ms": WINDOW_MS as u64});
    let set = fleet.http.post(format!("{}/_mock/config", fleet.mock_url)).json(&limits).send().await.unwrap();
    assert!(set.status().is_success());
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();

    // The chat tool's own traffic on the same key, straight to the mock, throughout.
    let t0 = fleet.clock.now();
    let run = Duration::from_secs(20);
    let tool = {
        let (http, url) = (fleet.http.clone(), format!("{}/api/{ACCOUNT}/messages", fleet.mock_url));
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let mut statuses = Vec::new();
            while began.elapsed() < run {
                let resp = http.post(&url).bearer_auth(API_KEY).json(&json!({"text": "hi"})).send().await.unwrap();
                statuses.push(resp.status().as_u16());
                tokio::time::sleep(Duration::from_secs_f64(WINDOW_MS / 1000.0 / TOOL_PER_WINDOW)).await;
            }
            statuses
        })
    };
    // Thirty fans start one after another, each on a random replica: far more than the share
    // keeps lit (about 17 calls per fan per window).
    let chats = chats(9_100_000, 30);
    let mut starts = Vec::new();
    for c in &chats {
        let a = hooks.start(rng.random_range(0..3), c).await;
        assert_eq!((a.status, a.outcome()), (200, "started"), "{label}: chat {c}: {}", a.body);
        starts.push(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(run.saturating_sub(Duration::from_millis(200 * 30))).await;
    let mut spells = Vec::new();
    for (c, start) in chats.iter().zip(&starts) {
        let stop = hooks.stop(rng.random_range(0..3), c).await;
        assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: chat {c}: {}", stop.body);
        spells.push(Spell { chat: c.clone(), start: start.sent, stop: Some(stop.at) });
    }
    let tool = tool.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let end = fleet.clock.now();

    let calls = fleet.calls(t0).await;
    let f = check(&calls, &spells, &Rules::new(interval, lifetime, end));
    let windows = per_window(&calls, t0, WINDOW_MS);
    let busiest = busiest_window(&calls, WINDOW_MS);
    let limited = calls.iter().filter(|c| c.status == 429).count();
    let tool_limited = tool.iter().filter(|s| **s == 429).count();
    let mut firsts: Vec<f64> = f.first_call.values().map(|d| d.unwrap_or(f64::MAX)).collect();
    firsts.sort_by(f64::total_cmp);
    eprintln!(
        "{label}: typing calls per {WINDOW_MS} ms window from all replicas {windows:?} (share {SHARE}), busiest \
         sliding window {busiest}; tool requests {} ({TOOL_PER_WINDOW} per window); 429s to typing {limited}, to \
         the tool {tool_limited}; first indicator p50 {:.0} ms, 27th of 30 {:.0} ms, max {:.0} ms",
        tool.len(),
        percentile(&firsts, 0.5),
        firsts[26],
        firsts[29]
    );
    eprintln!(
        "{label}: refires skipped by reason {:?}",
        fleet.metric_by("keeptyping_refires_skipped_total", "reason").await
    );
    assert_eq!(limited, 0, "{label}: the mock answered 429 to typing");
    assert_eq!(tool_limited, 0, "{label}: the tool's own requests got 429s");
    assert!(busiest <= SHARE, "{label}: {busiest} typing calls in one window from all replicas; the share is {SHARE}");
    assert!(busiest >= SHARE / 2, "{label}: only {busiest} typing calls in the busiest window: the share goes unused");
    // A newcomer's first indicator is paid first, on whichever replica owns it.
    assert!(firsts[26] <= 1000.0 && firsts[29] <= 2000.0, "{label}: first-indicator delays (ms): {firsts:?}");
    f.assert_clean(label);
    fleet.assert_no_panics();
}
