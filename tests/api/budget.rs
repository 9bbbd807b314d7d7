//! The rate budget against the real mock with a small limit. The per-minute window is scaled
//! down tenfold (`budget.window = 6s`, mock `window_ms = 6000`) so that three "minutes" of
//! budget behaviour run in 18 s; Retry-After and backoff are real seconds.

use std::time::Duration;

use keeptyping::demo::lit_ms;
use keeptyping::mock::{Fault, MockConfig, Record};
use serde_json::json;

use crate::helpers::*;

const WINDOW_MS: f64 = 6000.0;

fn scaled(limit: u32) -> Opts {
    let mock = MockConfig { limit_per_minute: Some(limit), window_ms: 6000, ..MockConfig::default() };
    Opts { mock, ..Opts::default() }
        .env("KEEPTYPING__BUDGET__WINDOW", "6s")
        .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", &limit.to_string())
        .env("KEEPTYPING__BUDGET__BURST", "10")
        .env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "60s")
}

/// Most typing calls in any window of `window_ms` starting at a call.
fn busiest_window(calls: &[Record], window_ms: f64) -> usize {
    let mut t: Vec<f64> = calls.iter().map(|r| r.t_ms).collect();
    t.sort_by(f64::total_cmp);
    (0..t.len()).map(|i| t[i..].iter().take_while(|x| **x < t[i] + window_ms).count()).max().unwrap_or(0)
}

fn typing(app: &TestApp) -> Vec<Record> {
    app.all_requests().into_iter().filter(|r| r.kind == "typing").collect()
}

/// The chat tool's own "send message" traffic on the same key, `per_window(t)` requests per
/// window at test time `t` (ms since `t0`), until `until`; returns every status it got.
fn tool_traffic(
    app: &TestApp,
    t0: f64,
    until: f64,
    per_window: impl Fn(f64) -> f64 + Send + 'static,
) -> tokio::task::JoinHandle<Vec<u16>> {
    let url = format!("{}/api/{ACCOUNT}/messages", app.mock.url());
    let clock = app.clock();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut statuses = Vec::new();
        while clock() - t0 < until {
            let resp = http.post(&url).bearer_auth(API_KEY).json(&json!({"text": "hi"})).send().await.unwrap();
            statuses.push(resp.status().as_u16());
            tokio::time::sleep(Duration::from_secs_f64(WINDOW_MS / 1000.0 / per_window(clock() - t0))).await;
        }
        statuses
    })
}

/// Chats holding a lit slot right now, in start order.
async fn lit(app: &TestApp) -> Vec<u64> {
    let (_, body) = app.get("/v1/typing/sessions").await;
    let mut v: Vec<u64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["lit_slot"] == true)
        .map(|s| s["chat_id"].as_str().unwrap().parse().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn a_short_budget_lights_every_newcomer_at_once_and_keeps_its_slot_holders_lit() {
    // Ten times faster than life: a 6 s window, refires every 350 ms, indicators of 400 ms.
    // 240 per window, typing_share 0.5: 120 typing calls per window, 17 per fan: about six
    // fans lit, for thirty composing.
    let opts = scaled(240)
        .env("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "350ms")
        .env("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", "400ms")
        .env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "3s");
    let app = spawn_with(opts).await;
    let t0 = app.now_ms();
    // The tool sends 40 per window, then from 12 s on more and more, up to 120 per window at 18 s:
    // typing may then spend what 240 less 120 less the reserve of 24 leaves.
    let tool = tool_traffic(&app, t0, 26_000.0, |t| 40.0 + 80.0 * ((t - 12_000.0) / 6000.0).clamp(0.0, 1.0));
    // Thirty fans start one after another; their chat tools re-send start every 500 ms.
    let chats: Vec<String> = (0..30).map(|i| format!("{}", 20_000 + i)).collect();
    let mut asked = Vec::new();
    let mut lit_before = Vec::new();
    let mut lit_after = Vec::new();
    let mut round = 0;
    let mut always_lit: Vec<u64> = (20_000..20_030).collect();
    while app.now_ms() - t0 < 26_000.0 {
        let now = app.now_ms() - t0;
        let due = ((now / 200.0) as usize + 1).min(chats.len());
        while asked.len() < due {
            asked.push(app.now_ms());
        }
        for (i, chat) in chats[..asked.len()].iter().enumerate() {
            // A new fan's start at once, then each fan's every 500 ms.
            if i + 1 == asked.len() || i % 5 == round % 5 {
                let (status, body) = app.start(chat).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        round += 1;
        if round % 5 == 0 && now >= 7000.0 {
            // Slot holders throughout: lit at every sample once every fan has started.
            let now_lit = lit(&app).await;
            always_lit.retain(|c| now_lit.contains(c));
        }
        if (11_400.0..11_900.0).contains(&now) {
            lit_before = lit(&app).await;
        }
        if (24_500.0..25_000.0).contains(&now) {
            lit_after = lit(&app).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = app.now_ms();
    for chat in &chats {
        app.stop(chat).await;
    }
    let calls = typing(&app);
    // Every newcomer's first indicator at once, although the share is spent many times over.
    let mut delays: Vec<f64> = chats
        .iter()
        .zip(&asked)
        .map(|(chat, at)| calls.iter().find(|r| r.chat == *chat && r.status == 200).map_or(f64::MAX, |r| r.t_ms - at))
        .collect();
    delays.sort_by(f64::total_cmp);
    assert!(delays[26] <= 1000.0 && delays[29] <= 2000.0, "first-indicator delays (ms): {delays:?}");
    // No 429 to typing or to the tool, and typing within its share in every window.
    assert!(calls.iter().all(|r| r.status != 429), "the mock answered 429 to typing");
    let tool = tool.await.unwrap();
    assert!(tool.iter().all(|s| *s != 429), "the tool's own requests got 429s");
    let busiest = busiest_window(&calls, WINDOW_MS);
    assert!(busiest <= 120, "{busiest} typing calls in one window; the share is 120");
    // Slot holders are a prefix of the start order; when the tool's traffic rose, the newest
    // of them gave their slots back.
    let prefix = |v: &[u64]| v.iter().enumerate().all(|(i, c)| *c == 20_000 + i as u64);
    assert!(prefix(&lit_before) && prefix(&lit_after), "lit before {lit_before:?}, after {lit_after:?}");
    assert!(
        lit_after.len() < lit_before.len() && !lit_after.is_empty(),
        "lit before {lit_before:?}, after {lit_after:?}"
    );
    // The fans that held their slots throughout were lit for at least 99% of their composing
    // time (the newest ones gave their slots back as the tool's traffic grew).
    assert!(always_lit.len() >= 2, "slot holders throughout: {always_lit:?}");
    for chat in always_lit.iter().map(u64::to_string) {
        let t: Vec<f64> = app.calls(&chat).iter().filter(|r| r.status == 200).map(|r| r.t_ms).collect();
        let from = t.first().copied().unwrap_or(end);
        let c = lit_ms(&t, from, end, 400.0) / (end - from);
        assert!(c >= 0.99, "slot holder {chat}: coverage {c:.4}");
    }
    let (_, budget) = app.get("/v1/budget").await;
    let b = &budget["budgets"][0];
    assert!(b["sessions_lit"].as_u64().is_some() && b["capacity_fans"].as_f64().is_some(), "{b}");
    let text = app.metrics().await;
    assert!(metric_sum(&text, "keeptyping_first_indicator_delay_seconds_count", &[]) >= 30.0);
}

#[tokio::test]
async fn the_chat_tools_own_traffic_never_gets_a_429_and_typing_backs_off() {
    let app = spawn_with(scaled(120)).await;
    // The tool's "send message" traffic: 10 per second on the same key, 60 per window.
    let http = reqwest::Client::new();
    let url = format!("{}/api/{ACCOUNT}/messages", app.mock.url());
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..150 {
            tick.tick().await;
            let resp = http.post(&url).bearer_auth(API_KEY).json(&json!({"text": "hi"})).send().await.unwrap();
            statuses.push(resp.status().as_u16());
        }
        statuses
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..20 {
        app.start(&format!("{}", 11_000 + i)).await;
    }
    let started = app.now_ms();
    let statuses = traffic.await.unwrap();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(limited, 0, "the tool's own requests got {limited} 429s");
    // Typing took less than its full share (60 per window) while the tool's traffic ran.
    let calls: Vec<Record> = typing(&app).into_iter().filter(|r| r.t_ms > started + WINDOW_MS).collect();
    let busiest = busiest_window(&calls, WINDOW_MS);
    assert!(busiest < 50, "typing kept {busiest} calls per window although remaining_minute fell");
    assert!(!calls.is_empty(), "typing stopped entirely");
    let (_, budget) = app.get("/v1/budget").await;
    assert!(budget["budgets"][0]["remaining_minute"].as_u64().is_some());
}

fn two_budgets(mock: MockConfig) -> Opts {
    let toml = format!(
        r#"
[[upstream.keys]]
name = "a"
budget = "team-a"
key_env = "KEY_A"
accounts = ["{ACCOUNT}"]
[[upstream.keys]]
name = "b"
budget = "team-b"
key_env = "KEY_B"
accounts = ["{OTHER_ACCOUNT}"]
"#
    );
    Opts { mock, config_toml: Some(toml), ..Opts::default() }.env("KEY_A", "key-a-secret").env("KEY_B", "key-b-secret")
}

async fn first_429(app: &TestApp) -> f64 {
    assert!(eventually(Duration::from_secs(2), || async { typing(app).iter().any(|r| r.status == 429) }).await);
    app.mock.state().set_config(MockConfig { limit_per_minute: None, ..MockConfig::default() });
    typing(app).iter().find(|r| r.status == 429).unwrap().t_ms
}

#[tokio::test]
async fn a_429_with_retry_after_5_pauses_only_that_budget_for_5_seconds() {
    let mock = MockConfig {
        limit_per_minute: None,
        fault: Fault::Status,
        fault_status: 429,
        retry_after: Some("5".to_owned()),
        fault_keys: Some(vec!["key-a-secret".to_owned()]),
        ..MockConfig::default()
    };
    let app = spawn_with(two_budgets(mock)).await;
    app.start("12001").await;
    app.post("/v1/typing/start", &json!({ "account_id": OTHER_ACCOUNT, "chat_id": "12002" })).await;
    let limited_at = first_429(&app).await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let a = app.calls("12001");
    let during: Vec<f64> = a.iter().map(|r| r.t_ms).filter(|t| *t > limited_at && *t < limited_at + 4950.0).collect();
    assert!(during.is_empty(), "budget team-a typed during its Retry-After: {during:?}");
    assert!(a.iter().any(|r| r.t_ms >= limited_at + 4950.0 && r.status == 200), "team-a resumed after 5 s");
    let b_during = app
        .calls("12002")
        .iter()
        .filter(|r| r.t_ms > limited_at && r.t_ms < limited_at + 4950.0 && r.status == 200)
        .count();
    assert!(b_during >= 15, "team-b kept typing meanwhile ({b_during} calls in 5 s)");
    let (_, budget) = app.get("/v1/budget").await;
    let names: Vec<&str> = budget["budgets"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"team-a") && names.contains(&"team-b"), "{names:?}");
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_and_recovers() {
    let mock = MockConfig { limit_per_minute: None, fault: Fault::Status, fault_status: 429, ..MockConfig::default() };
    let app = spawn_with(two_budgets(mock)).await;
    app.start("13001").await;
    let limited_at = first_429(&app).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = app.calls("13001");
    let next = calls.iter().map(|r| r.t_ms).find(|t| *t > limited_at).expect("typing recovered");
    // The first backoff is 1 s with +-20% jitter.
    assert!(next - limited_at >= 790.0, "resumed after {:.0} ms: no backoff", next - limited_at);
    assert!(next - limited_at <= 1500.0, "resumed after {:.0} ms", next - limited_at);
}

#[tokio::test]
async fn high_priority_sessions_keep_full_coverage_while_normal_ones_degrade() {
    // 240 per window, share 0.5: 120 typing calls per window, less 8 first indicators and the
    // reserve of 5: three high-priority fans at a 200 ms cadence (30 calls a window each) hold
    // the three slots; five normal fans wait and get what is left.
    let app = spawn_with(scaled(240)).await;
    let started = app.now_ms();
    for i in 0..3 {
        let body = json!({ "account_id": ACCOUNT, "chat_id": format!("{}", 14_000 + i), "priority": "high" });
        assert_eq!(app.post("/v1/typing/start", &body).await.0, 200);
    }
    for i in 0..5 {
        app.start(&format!("{}", 14_100 + i)).await;
    }
    tokio::time::sleep(Duration::from_millis(12_000)).await;
    let until = app.now_ms();
    let coverage = |chat: String| {
        let t: Vec<f64> = app.calls(&chat).iter().filter(|r| r.status == 200).map(|r| r.t_ms).collect();
        lit_ms(&t, started + 500.0, until, LIFETIME_MS as f64) / (until - started - 500.0)
    };
    for i in 0..3 {
        let c = coverage(format!("{}", 14_000 + i));
        assert!(c >= 0.98, "high-priority fan {i}: coverage {c:.3}");
    }
    let mut normal: Vec<f64> = (0..5).map(|i| coverage(format!("{}", 14_100 + i))).collect();
    normal.sort_by(f64::total_cmp);
    assert!(normal[2] < 0.6, "normal fans should degrade when the budget covers only the high ones: {normal:?}");
    assert!(normal[0] > 0.0, "no normal fan starves: {normal:?}");
}
