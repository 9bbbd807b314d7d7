//! Client sessions and watched authentication attempts against the mock's account endpoints.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keeptyping::accounts::signing;
use keeptyping::mock::{MockConfig, Record, RecordQuery, key_id};
use serde_json::{Value, json};

use crate::helpers::*;

/// Poll interval of the attempt watcher in these tests (the scheduler's floor is 1 s).
const POLL: &str = "1s";

fn polls(app: &TestApp, attempt: &str) -> Vec<Record> {
    app.mock.state().records(&RecordQuery {
        kind: Some("auth_poll".to_owned()),
        account: Some(attempt.to_owned()),
        ..RecordQuery::default()
    })
}

/// GETs the attempt until `done` holds for its state (or `timeout`), returning every distinct
/// state seen, in order, and the last answer.
async fn follow(app: &TestApp, attempt: &str, timeout: Duration, done: &[&str]) -> (Vec<String>, Value) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen: Vec<String> = Vec::new();
    loop {
        let (status, body) = app.get(&format!("/v1/auth-attempts/{attempt}")).await;
        assert_eq!(status, 200, "{body}");
        let state = body["state"].as_str().unwrap().to_owned();
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if done.contains(&state.as_str()) || tokio::time::Instant::now() >= deadline {
            return (seen, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `Write` into a shared buffer, for capturing every log line of a test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn client_session_returns_the_token_and_echoes_the_fields() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/v1/client-sessions",
            &json!({ "display_name": "Mia's agency", "client_reference_id": "crm-42", "proxy_country": "US" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("ofapi_cs_") && token.len() == 9 + 32, "{token}");
    assert_eq!(body["display_name"], "Mia's agency");
    assert_eq!(body["client_reference_id"], "crm-42");
    assert_eq!(body["proxy_country"], "us");
    let sent = app.mock.state().records(&RecordQuery { kind: Some("client_session".into()), ..Default::default() });
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].key_id, key_id(API_KEY), "minted with the tenant's API key");
}

#[tokio::test]
async fn client_session_validates_its_fields_before_calling_the_upstream() {
    let app = spawn_app().await;
    for body in [
        json!({}),
        json!({ "display_name": "  " }),
        json!({ "display_name": "x".repeat(101) }),
        json!({ "display_name": "ok", "proxy_country": "u s" }),
        json!({ "display_name": "ok", "client_reference_id": "r".repeat(256) }),
    ] {
        let (status, answer) = app.post("/v1/client-sessions", &body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "invalid_field");
    }
    let (status, _) = app.post_with("/v1/client-sessions", &json!({ "display_name": "a" }), None).await;
    assert_eq!(status, 401, "hook auth is required");
    assert!(app.all_requests().is_empty(), "{:?}", app.all_requests());
}

#[tokio::test]
async fn upstream_refusals_map_to_clear_errors_and_the_key_never_leaks() {
    // Arrange: capture every log line of this test (the runtime is single-threaded, so the
    // app's tasks log on this thread, and the hook listener's thread takes its subscriber).
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mock =
        MockConfig { limit_per_minute: None, valid_keys: Some(vec!["another-key".into()]), ..Default::default() };
    let app = spawn_with(Opts { mock, ..Opts::default() }).await;

    // Act: the upstream refuses the key.
    let (status, body) = app.post("/v1/client-sessions", &json!({ "display_name": "Mia" })).await;

    // Assert
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "api_key_refused");
    assert!(!body.to_string().contains(API_KEY));

    // A field the upstream refuses is 422.
    app.mock.state().set_config(MockConfig { limit_per_minute: None, ..Default::default() });
    let (status, body) =
        app.post("/v1/client-sessions", &json!({ "display_name": "Mia", "proxy_country": "zz" })).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unprocessable");
    assert!(body["error"]["message"].as_str().unwrap().contains("proxy country"), "{body}");
    // An upstream failure is 502 upstream_failed.
    app.mock.state().set_config(MockConfig { limit_per_minute: None, error_rate: 1.0, ..Default::default() });
    let (status, body) = app.post("/v1/client-sessions", &json!({ "display_name": "Mia" })).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_failed");
    assert!(!body.to_string().contains(API_KEY));

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("client session call failed"), "the failures were logged");
    assert!(!text.contains(API_KEY), "the API key appears in a log line");
}

#[tokio::test]
async fn an_attempt_through_2fa_is_reported_in_order_connects_resumes_and_stops_polling() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)).await;
    let attempt = "auth_2fa_then_ok";
    // Script the attempt through the control endpoint, connecting our account.
    let scripted = app
        .http
        .post(format!("{}/_mock/attempts", app.mock.url()))
        .json(&json!({ "attempt_id": attempt, "steps": ["pending", "needs_2fa", "connected"], "account_id": ACCOUNT }))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status().as_u16(), 204);
    // The account is paused (say, its session had expired): connecting it resumes typing.
    let account = keeptyping::ids::AccountId::parse_any(ACCOUNT).unwrap();
    app.engine.pause_account(&account, keeptyping::engine::PauseCause::SessionExpired, Duration::from_secs(60));

    let (status, body) = app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "watching");
    assert_eq!(body["state"], "pending");
    let (_, again) = app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    assert_eq!(again["outcome"], "already_watching");

    let (seen, last) = follow(&app, attempt, Duration::from_secs(10), &["connected", "failed"]).await;
    assert_eq!(seen, ["pending", "needs_2fa", "connected"], "{last}");
    assert_eq!(last["history"], json!(["pending", "needs_2fa", "connected"]));
    assert_eq!(last["account_id"], ACCOUNT);
    assert_eq!(last["watching"], false);
    assert!(app.engine.paused_accounts().is_empty(), "a connected attempt resumes its account");

    // Polling has stopped.
    let n = polls(&app, attempt).len();
    assert_eq!(n, 3, "one poll per step");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(polls(&app, attempt).len(), n, "polled after the terminal state");
    let metrics = app.metrics().await;
    assert!(metric_value(&metrics, "keeptyping_auth_attempts_total", r#"state="needs_2fa""#) >= 1.0);
}

#[tokio::test]
async fn the_2fa_state_carries_the_phone_ending() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)).await;
    let attempt = "auth_2fa_phone";
    app.mock.state().attempts.script(attempt, vec![keeptyping::mock::accounts::Step::Needs2fa], None);
    app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    let (_, last) = follow(&app, attempt, Duration::from_secs(5), &["needs_2fa"]).await;
    assert_eq!(last["state"], "needs_2fa", "{last}");
    assert_eq!(last["otp_phone_ending"], "42");
    assert_eq!(last["watching"], true);
}

#[tokio::test]
async fn a_failing_attempt_ends_failed_with_the_error() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)).await;
    let attempt = "auth_fail_password";
    app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    let (seen, last) = follow(&app, attempt, Duration::from_secs(8), &["failed", "connected"]).await;
    assert_eq!(seen, ["pending", "failed"], "{last}");
    assert_eq!(last["error_code"], "invalid_credentials");
    assert!(last["error_message"].as_str().is_some_and(|m| !m.is_empty()));
    let n = polls(&app, attempt).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(polls(&app, attempt).len(), n, "polled after failing");
}

#[tokio::test]
async fn an_attempt_that_never_ends_stops_at_the_deadline() {
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)
            .env("KEEPTYPING__ACCOUNTS__ATTEMPT_DEADLINE", "3s"),
    )
    .await;
    let attempt = "auth_never_ends";
    app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    let (seen, last) = follow(&app, attempt, Duration::from_secs(10), &["timed_out"]).await;
    assert_eq!(seen, ["pending", "timed_out"], "{last}");
    assert_eq!(last["watching"], false);
    let n = polls(&app, attempt).len();
    assert!((1..=4).contains(&n), "{n} polls within a 3 s deadline at 1 s");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(polls(&app, attempt).len(), n, "polled after the deadline");
}

#[tokio::test]
async fn attempts_are_validated_bounded_and_scoped_to_their_tenant() {
    let tenants = "[[hooks.tokens]]\nname = \"b\"\ntoken_env = \"B_TOKEN\"\naccounts = [\"*\"]\n";
    let app = spawn_with(Opts {
        config_toml: Some(tenants.to_owned()),
        ..Opts::default()
            .env("B_TOKEN", "tenant-b-token")
            .env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)
            .env("KEEPTYPING__ACCOUNTS__MAX_ATTEMPTS", "1")
            .env("KEEPTYPING__ACCOUNTS__ATTEMPT_DEADLINE", "60s")
    })
    .await;
    for bad in ["", "auth/../x", "a b"] {
        let (status, body) = app.post("/v1/auth-attempts", &json!({ "attempt_id": bad })).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(app.get("/v1/auth-attempts/auth_unknown").await.0, 404);
    assert_eq!(app.get("/v1/auth-attempts/auth%2F..").await.0, 400);
    assert_eq!(app.post("/v1/auth-attempts", &json!({ "attempt_id": "auth_never_a" })).await.0, 200);
    assert_eq!(app.get("/v1/auth-attempts/auth_never_a").await.0, 200);
    let other = app
        .http
        .get(format!("{}/v1/auth-attempts/auth_never_a", app.hook))
        .bearer_auth("tenant-b-token")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 404, "another tenant's attempt is invisible");
    let (status, body) = app.post("/v1/auth-attempts", &json!({ "attempt_id": "auth_never_b" })).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "full");
}

#[tokio::test]
async fn each_state_change_is_posted_to_the_callback_signed() {
    let receiver = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    let app = spawn_with(
        Opts::default()
            .env("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", POLL)
            .env("KEEPTYPING__ACCOUNTS__CALLBACK_URL", &format!("{}/onboarding", receiver.uri()))
            .env("KEEPTYPING_CALLBACK_SECRET", "callback-secret"),
    )
    .await;
    let attempt = "auth_2fa_callback";
    app.post("/v1/auth-attempts", &json!({ "attempt_id": attempt })).await;
    follow(&app, attempt, Duration::from_secs(10), &["connected"]).await;
    let got = || async { receiver.received_requests().await.unwrap_or_default().len() >= 2 };
    assert!(eventually(Duration::from_secs(2), got).await);
    let requests = receiver.received_requests().await.unwrap();
    let states: Vec<String> = requests
        .iter()
        .map(|r| {
            let sig = r.headers.get("signature").unwrap().to_str().unwrap();
            assert!(signing::verify(b"callback-secret", &r.body, sig), "callback signature");
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["attempt_id"], attempt);
            assert_eq!(v["event"], "auth_attempt.state_changed");
            v["state"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(states, ["needs_2fa", "connected"]);
    assert!(requests.iter().all(|r| !r.headers.contains_key("authorization")), "no API key to the callback");
}
