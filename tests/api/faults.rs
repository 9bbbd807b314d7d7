//! Upstream answers each lead to the documented engine behaviour (UPSTREAM.md's table).

use std::collections::BTreeMap;
use std::time::Duration;

use keeptyping::mock::{Fault, MockConfig};

use crate::helpers::*;

fn mock_with(f: impl FnOnce(&mut MockConfig)) -> Opts {
    let mut mock = MockConfig { limit_per_minute: None, ..MockConfig::default() };
    f(&mut mock);
    Opts { mock, ..Opts::default() }
}

#[tokio::test]
async fn a_401_refuses_the_key_and_ends_its_sessions() {
    let app = spawn_with(mock_with(|m| m.valid_keys = Some(vec!["some-other-key".to_owned()]))).await;
    let before = app.metrics().await;
    app.start("4011").await;
    app.start("4012").await;
    assert!(eventually(Duration::from_secs(2), || async { app.engine.active_count() == 0 }).await);
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    let calls = app.calls("4011").len() + app.calls("4012").len();
    assert!(calls <= 2, "{calls} calls with a refused key");
    // While refused, starts answer a clear 502 instead of pretending to type.
    let (status, body) = app.start("4013").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "api_key_refused");
    let after = app.metrics().await;
    let ended = |t: &str| metric_value(t, "keeptyping_sessions_ended_total", r#"reason="unauthorized""#);
    assert!(ended(&after) - ended(&before) >= 1.0);
    assert!(metric_sum(&after, "keeptyping_refires_total", &[r#"outcome="unauthorized""#]) >= 1.0);
}

#[tokio::test]
async fn a_404_ends_that_session_only() {
    let app = spawn_with(mock_with(|m| m.account_status = BTreeMap::from([(OTHER_ACCOUNT.to_owned(), 404)]))).await;
    let gone = serde_json::json!({ "account_id": OTHER_ACCOUNT, "chat_id": "4041" });
    assert_eq!(app.post("/v1/typing/start", &gone).await.0, 200);
    app.start("4042").await;
    assert!(eventually(Duration::from_secs(2), || async { app.engine.active_count() == 1 }).await);
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    assert_eq!(app.calls("4041").len(), 1, "a rejected chat is not retried");
    assert!(app.calls("4042").len() >= 3, "the other session keeps typing");
}

#[tokio::test]
async fn a_503_pauses_the_account_and_it_resumes() {
    let app = spawn_with(
        mock_with(|m| m.account_status = BTreeMap::from([(ACCOUNT.to_owned(), 503)]))
            .env("KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE", "2s"),
    )
    .await;
    let before = app.metrics().await;
    app.start("5031").await;
    assert!(eventually(Duration::from_secs(1), || async { !app.calls("5031").is_empty() }).await);
    // Paused: the session is held, starts say so, and nothing is sent.
    let (_, again) = app.start("5031").await;
    assert_eq!(again["outcome"], "paused");
    assert_eq!(again["reason"], "reauthenticating");
    // Every refire due during the pause (one per 200 ms) is skipped and counted; the probe is
    // due only when the 2 s pause ends.
    let skipped = |t: &str| metric_value(t, "keeptyping_refires_skipped_total", r#"reason="account_paused""#);
    let skips = || async { skipped(&app.metrics().await) - skipped(&before) >= 2.0 };
    assert!(eventually(Duration::from_millis(1500), skips).await, "refires during the pause are not counted");
    assert_eq!(app.calls("5031").len(), 1, "typing calls while the account is paused");
    // The account comes back: the probe after the pause succeeds and typing resumes.
    app.mock.state().set_config(MockConfig { limit_per_minute: None, ..MockConfig::default() });
    assert!(eventually(Duration::from_secs(5), || async { app.calls("5031").len() >= 4 }).await);
    assert_eq!(app.start("5031").await.1["outcome"], "refreshed");
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_typing_for_that_long() {
    let app = spawn_app().await;
    app.start("4291").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.mock.state().set_config(MockConfig {
        limit_per_minute: None,
        fault: Fault::Status,
        fault_status: 429,
        retry_after: Some("1".to_owned()),
        ..MockConfig::default()
    });
    assert!(eventually(Duration::from_secs(1), || async { app.calls("4291").iter().any(|r| r.status == 429) }).await);
    app.mock.state().set_config(MockConfig { limit_per_minute: None, ..MockConfig::default() });
    let limited_at = app.calls("4291").iter().find(|r| r.status == 429).unwrap().t_ms;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let calls = app.calls("4291");
    let during: Vec<f64> =
        calls.iter().map(|r| r.t_ms).filter(|t| *t > limited_at && *t < limited_at + 950.0).collect();
    assert!(during.is_empty(), "typing during Retry-After: {during:?}");
    assert!(calls.iter().any(|r| r.t_ms > limited_at + 950.0 && r.status == 200), "typing resumed");
    let (_, budget) = app.get("/v1/budget").await;
    assert_eq!(budget["budgets"][0]["name"], "default");
}

#[tokio::test]
async fn timeouts_and_5xx_skip_a_beat_and_keep_the_session() {
    let app = spawn_app().await;
    let before = app.metrics().await;
    app.mock.state().set_config(MockConfig {
        limit_per_minute: None,
        slow_rate: 1.0,
        slow_ms: 1000,
        ..MockConfig::default()
    });
    app.start("5001").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mid = app.metrics().await;
    let timeouts = |t: &str| metric_sum(t, "keeptyping_refires_total", &[r#"outcome="timeout""#]);
    assert!(timeouts(&mid) - timeouts(&before) >= 2.0, "timeouts are counted");
    // Hooks do not wait on the upstream.
    let t0 = tokio::time::Instant::now();
    assert_eq!(app.start("5001").await.1["outcome"], "refreshed");
    assert!(t0.elapsed() < Duration::from_millis(100));
    app.mock.state().set_config(MockConfig { limit_per_minute: None, error_rate: 1.0, ..MockConfig::default() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app.metrics().await;
    assert!(metric_sum(&after, "keeptyping_refires_total", &[r#"outcome="server_error""#]) >= 1.0);
    assert_eq!(app.engine.active_count(), 1, "transient failures keep the session");
    app.mock.state().set_config(MockConfig { limit_per_minute: None, ..MockConfig::default() });
    let healed = app.now_ms();
    assert!(
        eventually(Duration::from_secs(1), || async {
            app.calls("5001").iter().any(|r| r.t_ms > healed && r.status == 200)
        })
        .await,
        "typing recovers once the upstream does"
    );
}
