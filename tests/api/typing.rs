//! Start, refire cadence, stop, refresh, holders, leases: against the real mock upstream.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn start_sends_the_first_typing_call_within_50ms() {
    let app = spawn_app().await;
    // Act
    let before = app.now_ms();
    let (status, body) = app.start("1001").await;
    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "started");
    assert!(eventually(Duration::from_secs(1), || async { !app.calls("1001").is_empty() }).await);
    let first = &app.calls("1001")[0];
    assert_eq!(first.account, ACCOUNT);
    assert_eq!(first.status, 200);
    assert!(first.t_ms - before <= 50.0, "first call {:.1} ms after start", first.t_ms - before);
}

#[tokio::test]
async fn refires_keep_the_indicator_covered_until_stop() {
    let app = spawn_app().await;
    app.start("1002").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    app.stop("1002").await;
    let calls = app.calls("1002");
    // 2 s at a 200 ms cadence: about 10 calls, every gap below the 400 ms indicator lifetime.
    assert!((8..=12).contains(&calls.len()), "{} calls", calls.len());
    for gap in gaps(&calls) {
        assert!(gap < LIFETIME_MS as f64, "gap of {gap:.1} ms lets the indicator lapse");
        assert!(gap > INTERVAL_MS as f64 * 0.8, "gap of {gap:.1} ms is a catch-up burst");
    }
}

#[tokio::test]
async fn after_stop_is_answered_no_typing_call_reaches_the_mock() {
    let app = spawn_app().await;
    let chats: Vec<String> = (0..20).map(|i| format!("{}", 2000 + i)).collect();
    for c in &chats {
        app.start(c).await;
    }
    // Stop each at a different phase of its cadence.
    let mut stopped_at = Vec::new();
    for c in &chats {
        tokio::time::sleep(Duration::from_millis(37)).await;
        let (status, body) = app.stop(c).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("stopped")));
        stopped_at.push(app.now_ms());
    }
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    // A call handed to the socket just before the stop removed the session is "already on the
    // wire" (DESIGN.md) and may land a fraction of a millisecond after the answer; 20 ms of
    // slack covers that on a loaded machine, while the next refire would come 200 ms later.
    for (c, stop_ms) in chats.iter().zip(stopped_at) {
        let late: Vec<f64> = app.calls(c).iter().map(|r| r.t_ms).filter(|t| *t > stop_ms + 20.0).collect();
        assert!(late.is_empty(), "chat {c}: typing calls at {late:?} ms after the stop answered at {stop_ms:.1}");
    }
    let (_, sessions) = app.get("/v1/typing/sessions").await;
    assert_eq!(sessions["count"], 0);
}

#[tokio::test]
async fn a_second_start_refreshes_and_never_doubles_the_cadence() {
    let app = spawn_app().await;
    let (_, first) = app.start("1003").await;
    assert_eq!(first["outcome"], "started");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, again) = app.start("1003").await;
        assert_eq!(again["outcome"], "refreshed");
    }
    app.stop("1003").await;
    let calls = app.calls("1003");
    assert!(calls.len() <= 7, "{} calls in about 1 s at a 200 ms cadence", calls.len());
    for gap in gaps(&calls) {
        assert!(gap > INTERVAL_MS as f64 * 0.8, "gap of {gap:.1} ms: a second refire loop");
    }
}

#[tokio::test]
async fn two_holders_keep_the_chat_typing_until_both_stop() {
    let app = spawn_app().await;
    let with = |chatter: &str| json!({ "account_id": ACCOUNT, "chat_id": "1004", "chatter_id": chatter });
    assert_eq!(app.post("/v1/typing/start", &with("alice")).await.1["outcome"], "started");
    assert_eq!(app.post("/v1/typing/start", &with("bob")).await.1["outcome"], "refreshed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, released) = app.post("/v1/typing/stop", &with("alice")).await;
    assert_eq!(released["outcome"], "released");
    assert_eq!(released["holders"], 1);
    let at_release = app.now_ms();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = app.calls("1004").iter().filter(|r| r.t_ms > at_release).count();
    assert!(during >= 2, "typing must go on while bob holds the chat ({during} calls)");
    let (_, stopped) = app.post("/v1/typing/stop", &with("bob")).await;
    assert_eq!(stopped["outcome"], "stopped");
    let at_stop = app.now_ms();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.calls("1004").iter().filter(|r| r.t_ms > at_stop).count(), 0);
}

#[tokio::test]
async fn a_session_without_stop_ends_by_its_idle_lease() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "700ms")).await;
    let before = app.metrics().await;
    app.start("1005").await;
    assert!(
        eventually(Duration::from_secs(3), || async { app.engine.active_count() == 0 }).await,
        "the session outlived its lease"
    );
    let ended_at = app.now_ms();
    let calls = app.calls("1005");
    let last = calls.last().unwrap().t_ms;
    assert!(calls.len() >= 3 && calls.len() <= 6, "{} calls in a 700 ms lease", calls.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.calls("1005").len(), calls.len(), "calls after the lease ended");
    assert!(last <= ended_at);
    let after = app.metrics().await;
    let idle = |t: &str| metric_value(t, "keeptyping_sessions_ended_total", r#"reason="idle""#);
    assert!(idle(&after) - idle(&before) >= 1.0);
}

#[tokio::test]
async fn ttl_ms_sets_the_lease_of_one_start() {
    let app = spawn_app().await;
    let (status, body) =
        app.post("/v1/typing/start", &json!({ "account_id": ACCOUNT, "chat_id": "1006", "ttl_ms": 500 })).await;
    assert_eq!(status, 200);
    assert_eq!(body["lease_ms"], 500);
    assert!(eventually(Duration::from_secs(2), || async { app.engine.active_count() == 0 }).await);
}

#[tokio::test]
async fn a_chat_past_max_lifetime_is_capped_until_a_stop_or_a_pause_in_starts() {
    let app = spawn_with(
        Opts::default().env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "600ms").env("KEEPTYPING__ENGINE__MAX_LIFETIME", "1s"),
    )
    .await;
    let before = app.metrics().await;
    let started = app.now_ms();
    let mut outcomes = Vec::new();
    while app.now_ms() - started < 2500.0 {
        let (status, body) = app.start("1007").await;
        assert_eq!(status, 200, "{body}");
        outcomes.push((app.now_ms() - started, body["outcome"].as_str().unwrap_or("").to_owned()));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // One session of 1 s, then every start is answered "capped" and sends nothing.
    assert_eq!(outcomes.iter().filter(|(_, o)| o == "started").count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().filter(|(t, _)| *t > 1300.0).all(|(_, o)| o == "capped"), "{outcomes:?}");
    let last = app.calls("1007").iter().map(|r| r.t_ms).fold(0.0, f64::max);
    assert!(last < started + 1100.0, "a typing call left at {:.0} ms, after the 1 s lifetime", last - started);
    let after = app.metrics().await;
    let ended = |t: &str| metric_value(t, "keeptyping_sessions_ended_total", r#"reason="max_lifetime""#);
    assert!(ended(&after) - ended(&before) >= 1.0, "the session ended at max_lifetime");
    assert!(metric_value(&after, "keeptyping_starts_capped_total", "") >= 5.0);
    // A stop lifts the cap: the next start opens a new session.
    assert_eq!(app.stop("1007").await.1["outcome"], "stopped");
    assert_eq!(app.start("1007").await.1["outcome"], "started");
    // So does a pause in starts longer than the idle lease, once the new session is capped too.
    let again = app.now_ms();
    while app.now_ms() - again < 1300.0 {
        app.start("1007").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(app.start("1007").await.1["outcome"], "capped");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.start("1007").await.1["outcome"], "started");
}

#[tokio::test]
async fn batch_applies_starts_and_stops_in_order() {
    let app = spawn_app().await;
    let events = json!({ "events": [
        { "action": "start", "account_id": ACCOUNT, "chat_id": "3001" },
        { "action": "start", "account_id": ACCOUNT, "chat_id": 3002 },
        { "action": "stop", "account_id": ACCOUNT, "chat_id": "3003" },
        { "action": "start", "account_id": ACCOUNT, "chat_id": "3001" },
    ]});
    let (status, body) = app.post("/v1/typing/batch", &events).await;
    assert_eq!(status, 200, "{body}");
    let outcomes: Vec<&str> =
        body["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["started", "started", "not_found", "refreshed"]);
    assert!(eventually(Duration::from_secs(1), || async { !app.calls("3002").is_empty() }).await);
    let (_, sessions) = app.get("/v1/typing/sessions").await;
    assert_eq!(sessions["count"], 2);
}

#[tokio::test]
async fn fansly_and_fanvue_use_their_own_paths_and_cadence() {
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING__PLATFORMS__FANSLY__REFIRE_INTERVAL", "300ms")
            .env("KEEPTYPING__PLATFORMS__FANSLY__INDICATOR_LIFETIME", "500ms")
            .env("KEEPTYPING__PLATFORMS__FANVUE__REFIRE_INTERVAL", "300ms")
            .env("KEEPTYPING__PLATFORMS__FANVUE__INDICATOR_LIFETIME", "500ms"),
    )
    .await;
    let fansly = json!({ "platform": "fansly", "account_id": "fansly_acct_77", "chat_id": "555" });
    let uuid = "0F8FAD5B-D9CB-469F-A165-70867728950E";
    let fanvue = json!({ "platform": "fanvue", "account_id": "fv_acct_1", "chat_id": uuid });
    assert_eq!(app.post("/v1/typing/start", &fansly).await.0, 200);
    assert_eq!(app.post("/v1/typing/start", &fanvue).await.0, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fansly_calls = app.calls("555");
    assert!(fansly_calls.len() >= 2);
    assert_eq!(fansly_calls[0].platform, "fansly");
    let fanvue_calls = app.calls(&uuid.to_lowercase());
    assert!(!fanvue_calls.is_empty());
    assert_eq!(fanvue_calls[0].platform, "fanvue");
}
