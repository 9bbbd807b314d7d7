//! One budget per key across replicas: with the chat tool's own traffic on the key, typing
//! calls from all three replicas together stay within the share in every window, nobody sees a
//! 429, and every newcomer's first indicator is paid although typing is scarce. Ten times faster
//! than life: a 6 s budget window (`budget.window`, and the mock's `window_ms`), refires every
//! 350 ms.

use std::collections::BTreeMap;
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

/// Three replicas on a budget ten times faster than life (a 6 s window, refires every 350 ms),
/// the mock counting the same window; with the refire interval and indicator lifetime (ms).
async fn short_budget(redis: &Redis, dir: &std::path::Path) -> (Fleet, f64, f64) {
    let params = Params { interval_ms: 350, lifetime_ms: 400, upstream_timeout_ms: 150, ..Params::default() }
        .env("KEEPTYPING__BUDGET__WINDOW", "6s")
        .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", &LIMIT.to_string())
        .env("KEEPTYPING__BUDGET__BURST", "10");
    let (interval, lifetime) = (params.interval_ms as f64, params.lifetime_ms as f64);
    let fleet = Fleet::start(redis, dir, 3, params).await;
    let limits = json!({"limit_per_minute": LIMIT, "window_ms": WINDOW_MS as u64});
    let set = fleet.http.post(format!("{}/_mock/config", fleet.mock_url)).json(&limits).send().await.unwrap();
    assert!(set.status().is_success());
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    (fleet, interval, lifetime)
}

/// The test itself, on a single Redis or on a cluster.
pub async fn budget_across_replicas(redis: Redis, dir: &std::path::Path, label: &str) {
    let seed = seed();
    eprintln!("{label}: seed {seed} (KT_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut fleet, interval, lifetime) = short_budget(&redis, dir).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lit_slots_of_all_replicas_are_one_prefix_of_high_then_start_order() {
    let _serial = serial().await;
    let dir = TempDir::new("slot-order");
    let redis = Redis::single(&dir.0).await;
    slot_order_across_replicas(redis, &dir.0, "slot order").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_lit_slots_of_all_replicas_are_one_prefix() {
    let _serial = serial().await;
    let dir = TempDir::new("slot-order-cluster");
    let redis = Redis::cluster(&dir.0).await;
    slot_order_across_replicas(redis, &dir.0, "slot order, cluster").await;
}

/// The scarcity policy across replicas: 24 fans start one after another on random replicas,
/// one of the last ones `high`, on a budget that keeps about six lit. Once the first indicators
/// have left the window, the sessions lit on all replicas together must be what one process
/// would light: the `high` one, then the oldest normal ones, whichever replica owns them; every
/// replica lists the same lit sessions; and the lit ones refire on time.
pub async fn slot_order_across_replicas(redis: Redis, dir: &std::path::Path, label: &str) {
    let seed = seed();
    eprintln!("{label}: seed {seed} (KT_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut fleet, interval, lifetime) = short_budget(&redis, dir).await;
    let hooks = fleet.hooks();
    let chats = chats(9_200_000, 24);
    let high = &chats[20];
    let mut starts = Vec::new();
    for c in &chats {
        let mut body = crate::fleet::chat_body(c);
        if c == high {
            body["priority"] = json!("high");
        }
        let a = hooks.post(rng.random_range(0..3), "/v1/typing/start", &body).await;
        assert_eq!((a.status, a.outcome()), (200, "started"), "{label}: chat {c}: {}", a.body);
        starts.push(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first indicators leave the shared window (counted over the window and 2 s more, the
    // time a grant may be spent), and every replica has reserved twice since: the replicas merge
    // what each saw at its last reservation, so while the room changes their prefixes may
    // disagree for up to a second.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS as u64 + 6000)).await;
    // Who is lit, as each session's owner says, a few times over two seconds.
    let order: Vec<&String> = std::iter::once(high).chain(chats.iter().filter(|c| *c != high)).collect();
    let owners = crate::fleet::owners(&redis, &chats).await;
    // The lit sessions each replica lists, every session with its owner's word on its slot.
    let listed = |r: usize| {
        let hooks = hooks.clone();
        let n = chats.len();
        async move {
            let (status, v) = hooks.get(r, "/v1/typing/sessions").await;
            assert_eq!(status, 200, "{label}: sessions on replica {r}: {v}");
            let listed = v["sessions"].as_array().unwrap();
            assert_eq!(listed.len(), n, "{label}: replica {r} lists {} sessions", listed.len());
            listed
                .iter()
                .filter(|s| s["lit_slot"] == json!(true))
                .map(|s| s["chat_id"].as_str().unwrap().to_owned())
                .collect::<std::collections::BTreeSet<String>>()
        }
    };
    // Settled: the three replicas list the same lit sessions (within 5 s).
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let views = [listed(0).await, listed(1).await, listed(2).await];
        if views.iter().all(|v| *v == views[0]) {
            break;
        }
        assert!(tokio::time::Instant::now() < settle, "{label}: the replicas list different lit sessions: {views:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sample_from = fleet.clock.now();
    let mut samples = Vec::new();
    for i in 0..4 {
        // Through a different replica each time: the same list as one process would give.
        let lit = listed(i % 3).await;
        let in_order: Vec<usize> =
            order.iter().enumerate().filter(|(_, c)| lit.contains(**c)).map(|(i, _)| i).collect();
        samples.push(in_order);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sample_to = fleet.clock.now();
    let mut spells = Vec::new();
    for (c, start) in chats.iter().zip(&starts) {
        let stop = hooks.stop(rng.random_range(0..3), c).await;
        assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: chat {c}: {}", stop.body);
        spells.push(Spell { chat: c.clone(), start: start.sent, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let calls = fleet.calls(starts[0].sent).await;
    let f = check(&calls, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    let by_owner: BTreeMap<&str, usize> = owners.values().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.as_str()).or_default() += 1;
        m
    });
    eprintln!(
        "{label}: lit sessions by place in high-then-start order, four samples over 2 s: {samples:?}; sessions per \
         owner {by_owner:?}; refires skipped by reason {:?}",
        fleet.metric_by("keeptyping_refires_skipped_total", "reason").await
    );
    for c in &order {
        let times: Vec<String> = calls.iter().filter(|k| &&k.chat == c).map(|k| format!("{:.0}", k.t)).collect();
        eprintln!("{label}: chat {c} (owner {:?}): {}", owners.get(*c), times.join(" "));
    }
    // Each sample: a prefix of the order (places 0, 1, ..., k-1), and neither none nor all.
    for s in &samples {
        let prefix: Vec<usize> = (0..s.len()).collect();
        assert_eq!(s, &prefix, "{label}: the lit sessions are not one prefix of high-then-start order: {samples:?}");
        assert!((2..chats.len()).contains(&s.len()), "{label}: {} of {} lit: {samples:?}", s.len(), chats.len());
    }
    // The lit ones kept their cadence while sampled.
    let lit_chats: Vec<&String> = order.iter().take(samples[0].len()).copied().collect();
    for c in &lit_chats {
        let times: Vec<f64> =
            calls.iter().filter(|k| &&k.chat == c && k.t >= sample_from && k.t <= sample_to).map(|k| k.t).collect();
        let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        assert!(
            times.len() >= 3 && longest <= interval + 200.0,
            "{label}: lit chat {c} called at {times:?} while sampled ({sample_from:.0}..{sample_to:.0} ms)"
        );
    }
    let limited = calls.iter().filter(|c| c.status == 429).count();
    assert_eq!(limited, 0, "{label}: the mock answered 429 to typing");
    f.assert_clean(label);
    fleet.assert_no_panics();
}
