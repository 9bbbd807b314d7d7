//! `POST /v1/webhooks/onlyfansapi`: signatures are checked on the raw body before anything
//! happens, and account and message events pause, resume or stop typing.

use std::time::Duration;

use keeptyping::accounts::signing::sign;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "whsec_test_3b7d1f";

async fn spawn_signed() -> TestApp {
    spawn_with(Opts::default().env("KEEPTYPING_WEBHOOK_SECRET", SECRET)).await
}

/// Sends `body` as OnlyFansAPI would: no bearer token, `Signature` when given.
async fn deliver(app: &TestApp, body: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(format!("{}/v1/webhooks/onlyfansapi", app.hook))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("Signature", sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn event(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "event": name, "account_id": ACCOUNT, "payload": {} })).unwrap()
}

async fn deliver_signed(app: &TestApp, body: &[u8]) -> (u16, Value) {
    deliver(app, body, Some(&sign(SECRET.as_bytes(), body))).await
}

#[tokio::test]
async fn a_signed_session_expired_pauses_typing_and_connected_resumes_it() {
    let app = spawn_signed().await;
    app.start("8101").await;
    assert!(eventually(Duration::from_secs(1), || async { app.calls("8101").len() >= 2 }).await);
    let before = app.metrics().await;

    // Act: the account's session expires.
    let (status, body) = deliver_signed(&app, &event("accounts.session_expired")).await;
    let paused_at = app.now_ms();

    // Assert: paused, said so on start, nothing sent while paused, and the skips are counted.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "paused");
    let (_, start) = app.start("8101").await;
    assert_eq!(start["outcome"], "paused");
    assert_eq!(start["reason"], "session_expired");
    tokio::time::sleep(Duration::from_millis(4 * INTERVAL_MS)).await;
    let late: Vec<f64> = app.calls("8101").iter().map(|r| r.t_ms).filter(|t| *t > paused_at + 50.0).collect();
    assert!(late.is_empty(), "typing calls while paused: {late:?}");
    let mid = app.metrics().await;
    let skipped = |t: &str| metric_value(t, "keeptyping_refires_skipped_total", r#"reason="account_paused""#);
    assert!(skipped(&mid) - skipped(&before) >= 2.0);
    assert_eq!(app.engine.active_count(), 1, "the session keeps its lease");

    // The account reconnects: typing resumes at once.
    let (status, body) = deliver_signed(&app, &event("accounts.reconnected")).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("resumed")));
    let resumed_at = app.now_ms();
    assert!(
        eventually(Duration::from_secs(1), || async { app.calls("8101").iter().any(|r| r.t_ms > resumed_at) }).await
    );
    assert!(app.engine.paused_accounts().is_empty());
    let after = app.metrics().await;
    let applied =
        |t: &str| metric_value(t, "keeptyping_webhooks_total", r#"event="accounts.session_expired",outcome="applied""#);
    assert!(applied(&after) - applied(&before) >= 1.0);
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_401_and_changes_nothing() {
    let app = spawn_signed().await;
    app.start("8201").await;
    let body = event("accounts.session_expired");
    for sig in [Some(sign(b"not-the-secret", &body)), Some("00".repeat(32)), Some("garbage".to_owned()), None] {
        let (status, answer) = deliver(&app, &body, sig.as_deref()).await;
        assert_eq!(status, 401, "{sig:?}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature");
    }
    assert!(app.engine.paused_accounts().is_empty(), "an unverified webhook paused an account");
    let since = app.now_ms();
    assert!(eventually(Duration::from_secs(1), || async { app.calls("8201").iter().any(|r| r.t_ms > since) }).await);
}

#[tokio::test]
async fn a_replayed_body_with_a_tampered_byte_is_refused() {
    let app = spawn_signed().await;
    app.start("8301").await;
    let body = event("accounts.connected");
    let signature = sign(SECRET.as_bytes(), &body);
    assert_eq!(deliver(&app, &body, Some(&signature)).await.0, 200);
    // Same signature, the event flipped to an expiry: one byte differs from what was signed.
    let tampered = event("accounts.connecteD");
    assert_eq!(tampered.len(), body.len());
    assert_eq!(tampered.iter().zip(&body).filter(|(a, b)| a != b).count(), 1);
    let (status, answer) = deliver(&app, &tampered, Some(&signature)).await;
    assert_eq!(status, 401, "{answer}");
    // A flipped byte in an account id, too.
    let mut other = event("accounts.session_expired");
    let sig = sign(SECRET.as_bytes(), &other);
    let at = other.len() - 20;
    other[at] = if other[at] == b'a' { b'b' } else { b'a' };
    assert_eq!(deliver(&app, &other, Some(&sig)).await.0, 401);
    assert!(app.engine.paused_accounts().is_empty());
    assert_eq!(app.engine.active_count(), 1);
}

#[tokio::test]
async fn without_a_secret_webhooks_are_refused_with_a_clear_code() {
    let app = spawn_app().await;
    let body = event("accounts.session_expired");
    let (status, answer) = deliver(&app, &body, Some(&sign(b"anything", &body))).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "webhook_secret_not_configured");
    assert!(app.engine.paused_accounts().is_empty());
}

#[tokio::test]
async fn messages_sent_ends_that_chat_and_unknown_events_are_ignored() {
    let app = spawn_signed().await;
    app.start("8401").await;
    app.start("8402").await;
    let before = app.metrics().await;
    let sent = serde_json::to_vec(&json!({
        "event": "messages.sent", "account_id": ACCOUNT,
        "payload": { "id": 1, "text": "hi", "toUser": { "id": 8401 } }
    }))
    .unwrap();
    let (status, body) = deliver_signed(&app, &sent).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("stopped")), "{body}");
    let stopped_at = app.now_ms();
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;
    assert!(app.calls("8401").iter().all(|r| r.t_ms <= stopped_at), "typing after the message was sent");
    assert_eq!(app.engine.active_count(), 1, "the other chat keeps typing");

    for name in ["users.typing", "posts.created", "fansly.accounts.otp_code_required"] {
        let (status, body) = deliver_signed(&app, &event(name)).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("ignored")), "{name}: {body}");
    }
    let (status, _) = deliver_signed(&app, b"not json").await;
    assert_eq!(status, 400);
    let after = app.metrics().await;
    let other = |t: &str| metric_value(t, "keeptyping_webhooks_total", r#"event="other",outcome="ignored""#);
    assert!(other(&after) - other(&before) >= 1.0);
    let ended = |t: &str| metric_value(t, "keeptyping_sessions_ended_total", r#"reason="message_sent""#);
    assert!(ended(&after) - ended(&before) >= 1.0);
    assert!(app.engine.paused_accounts().is_empty());
}

#[tokio::test]
async fn a_captured_signed_body_replayed_later_changes_nothing_and_is_counted() {
    // Arrange: the account expired and reconnected; someone captured the expiry delivery.
    let app = spawn_signed().await;
    app.start("8501").await;
    let expired = event("accounts.session_expired");
    assert_eq!(deliver_signed(&app, &expired).await.1["outcome"], "paused");
    assert_eq!(deliver_signed(&app, &event("accounts.reconnected")).await.1["outcome"], "resumed");
    let before = app.metrics().await;
    let sent = serde_json::to_vec(&json!({
        "event": "messages.sent", "account_id": ACCOUNT, "payload": { "toUser": { "id": 8501 } }
    }))
    .unwrap();

    // Act: the captured expiry is replayed, with its valid signature.
    let (status, answer) = deliver_signed(&app, &expired).await;

    // Assert: dropped, nothing paused, typing goes on, and the replay is counted.
    assert_eq!((status, answer["outcome"].as_str(), answer["reason"].as_str()), (200, Some("ignored"), Some("replay")));
    assert!(app.engine.paused_accounts().is_empty(), "a replayed expiry paused the account");
    let since = app.now_ms();
    assert!(eventually(Duration::from_secs(1), || async { app.calls("8501").iter().any(|r| r.t_ms > since) }).await);
    // A replayed messages.sent cannot end the chat a second time either.
    assert_eq!(deliver_signed(&app, &sent).await.1["outcome"], "stopped");
    app.start("8501").await;
    assert_eq!(deliver_signed(&app, &sent).await.1["reason"], "replay");
    assert_eq!(app.engine.active_count(), 1, "a replayed messages.sent ended the new session");
    let after = app.metrics().await;
    let replays = |t: &str| metric_value(t, "keeptyping_webhook_replays_total", "");
    assert!(replays(&after) - replays(&before) >= 2.0, "replays not counted");
}

#[tokio::test]
async fn an_account_paused_by_a_webhook_heals_by_itself_after_the_unavailable_pause() {
    // Arrange: a short pause, and no connected event will ever come.
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING_WEBHOOK_SECRET", SECRET)
            .env("KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE", "800ms"),
    )
    .await;
    app.start("8601").await;
    assert!(eventually(Duration::from_secs(1), || async { !app.calls("8601").is_empty() }).await);

    // Act
    assert_eq!(deliver_signed(&app, &event("accounts.session_expired")).await.1["outcome"], "paused");
    let paused_at = app.now_ms();
    // Keep the chat held while paused (a chatter still composing).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.start("8601").await;
    }

    // Assert: quiet during the pause, then a probe call goes out by itself, succeeds and
    // resumes the account; typing continues at its cadence.
    let calls = |from: f64, to: f64| app.calls("8601").iter().filter(|r| r.t_ms > from && r.t_ms < to).count();
    assert_eq!(calls(paused_at + 50.0, paused_at + 700.0), 0, "typing during the pause");
    assert!(
        eventually(Duration::from_secs(2), || async { app.engine.paused_accounts().is_empty() }).await,
        "the account stayed paused"
    );
    let healed_at = app.now_ms();
    assert!(healed_at - paused_at >= 700.0, "resumed before the pause ran out");
    assert!(eventually(Duration::from_secs(1), || async { calls(healed_at, f64::MAX) >= 2 }).await);
}
