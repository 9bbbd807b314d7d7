//! Hostile and malformed input: the right 4xx with the JSON error shape, and the mock receives
//! nothing.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn assert_refused(app: &TestApp, path: &str, body: &Value, token: Option<&str>, status: u16, code: &str) {
    let (got, answer) = app.post_with(path, body, token).await;
    assert_eq!(got, status, "{body} -> {answer}");
    assert_eq!(answer["error"]["code"], code, "{body} -> {answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn invalid_ids_get_422_and_never_reach_a_url() {
    let app = spawn_app().await;
    let cases = [
        (json!({ "account_id": ACCOUNT, "chat_id": "../../api-keys" }), "invalid_chat_id"),
        (json!({ "account_id": ACCOUNT, "chat_id": "1%2F2" }), "invalid_chat_id"),
        (json!({ "account_id": ACCOUNT, "chat_id": "12/34" }), "invalid_chat_id"),
        (json!({ "account_id": ACCOUNT, "chat_id": "" }), "invalid_chat_id"),
        (json!({ "account_id": ACCOUNT, "chat_id": "1".repeat(21) }), "invalid_chat_id"),
        (json!({ "account_id": "acct_../../x", "chat_id": "1" }), "invalid_account_id"),
        (json!({ "account_id": "acct_a%2Fb", "chat_id": "1" }), "invalid_account_id"),
        (json!({ "account_id": "admin", "chat_id": "1" }), "invalid_account_id"),
        (json!({ "platform": "fanvue", "account_id": "fv1", "chat_id": "123" }), "invalid_chat_id"),
    ];
    for (body, code) in &cases {
        assert_refused(&app, "/v1/typing/start", body, Some(HOOK_TOKEN), 422, code).await;
        assert_refused(&app, "/v1/typing/stop", body, Some(HOOK_TOKEN), 422, code).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.all_requests().is_empty(), "{:?}", app.all_requests());
    assert_eq!(app.engine.active_count(), 0);
}

#[tokio::test]
async fn malformed_bodies_get_400_413_415() {
    let app = spawn_app().await;
    let url = format!("{}/v1/typing/start", app.hook);
    let send = |body: Vec<u8>, ct: &'static str| {
        app.http.post(&url).bearer_auth(HOOK_TOKEN).header("content-type", ct).body(body).send()
    };
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
    };
    check(send(b"{not json".to_vec(), "application/json").await.unwrap(), 400, "bad_json").await;
    check(send(b"[1,2]".to_vec(), "application/json").await.unwrap(), 400, "invalid_field").await;
    check(
        send(br#"{"account_id": 5, "chat_id": "1"}"#.to_vec(), "application/json").await.unwrap(),
        400,
        "invalid_field",
    )
    .await;
    check(send(br#"{"chat_id": "1"}"#.to_vec(), "application/json").await.unwrap(), 400, "invalid_field").await;
    let bad_platform = format!(r#"{{"account_id": "{ACCOUNT}", "chat_id": "1", "platform": "myspace"}}"#);
    check(send(bad_platform.into_bytes(), "application/json").await.unwrap(), 400, "invalid_field").await;
    let bad_ttl = format!(r#"{{"account_id": "{ACCOUNT}", "chat_id": "1", "ttl_ms": 99999999999}}"#);
    check(send(bad_ttl.into_bytes(), "application/json").await.unwrap(), 400, "invalid_field").await;
    let bad_chatter = format!(r#"{{"account_id": "{ACCOUNT}", "chat_id": "1", "chatter_id": "a b\n"}}"#);
    check(send(bad_chatter.into_bytes(), "application/json").await.unwrap(), 400, "invalid_field").await;
    let huge = format!(r#"{{"account_id": "{ACCOUNT}", "chat_id": "1", "pad": "{}"}}"#, "x".repeat(200_000));
    // The 413 is answered from the head alone and the connection closed with the body unread:
    // a client still writing the body may see its write cut instead of the answer (the hook
    // listener runs on its own thread, in parallel with this client). Every attempt is a 413 or
    // such a cut write, and one of three at least is the answer.
    let mut answered = false;
    for _ in 0..3 {
        match send(huge.clone().into_bytes(), "application/json").await {
            Ok(resp) => {
                check(resp, 413, "payload_too_large").await;
                answered = true;
                break;
            }
            Err(e) => assert!(e.is_request() && !e.is_timeout(), "{e:?}"),
        }
    }
    assert!(answered, "no oversized body was answered 413");
    let ok_body = format!(r#"{{"account_id": "{ACCOUNT}", "chat_id": "1"}}"#);
    check(send(ok_body.into_bytes(), "text/plain").await.unwrap(), 415, "unsupported_media_type").await;
    let resp = app.http.get(format!("{}/v1/nope", app.hook)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let resp = app.http.get(format!("{}/v1/typing/start", app.hook)).bearer_auth(HOOK_TOKEN).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.all_requests().is_empty());
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401() {
    let app = spawn_app().await;
    let body = chat_body("7001");
    assert_refused(&app, "/v1/typing/start", &body, None, 401, "missing_token").await;
    assert_refused(&app, "/v1/typing/start", &body, Some("not-the-token"), 401, "invalid_token").await;
    assert_refused(&app, "/v1/typing/stop", &body, Some(""), 401, "invalid_token").await;
    let resp = app.http.get(format!("{}/v1/typing/sessions", app.hook)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.all_requests().is_empty());
}

#[tokio::test]
async fn a_token_never_touches_accounts_outside_its_list() {
    let toml = format!(
        r#"
[[hooks.tokens]]
name = "tenant-a"
token_env = "TENANT_A_TOKEN"
accounts = ["{ACCOUNT}"]
"#
    );
    let app =
        spawn_with(Opts { config_toml: Some(toml), ..Opts::default() }.env("TENANT_A_TOKEN", "tenant-a-secret")).await;
    let theirs = json!({ "account_id": OTHER_ACCOUNT, "chat_id": "8001" });
    let ours = json!({ "account_id": ACCOUNT, "chat_id": "8002" });
    // The all-accounts token starts a session on the other account.
    assert_eq!(app.post_with("/v1/typing/start", &theirs, Some(HOOK_TOKEN)).await.0, 200);
    for path in ["/v1/typing/start", "/v1/typing/stop"] {
        assert_refused(&app, path, &theirs, Some("tenant-a-secret"), 403, "forbidden_account").await;
    }
    let batch = json!({ "events": [
        { "action": "start", "account_id": ACCOUNT, "chat_id": "8002" },
        { "action": "stop", "account_id": OTHER_ACCOUNT, "chat_id": "8001" },
    ]});
    assert_refused(&app, "/v1/typing/batch", &batch, Some("tenant-a-secret"), 403, "forbidden_account").await;
    // The refused batch changed nothing: its valid first event was not applied either.
    assert!(app.calls("8002").is_empty());
    assert_eq!(app.engine.active_count(), 1);
    // Its own account works, and it sees only its own sessions.
    assert_eq!(app.post_with("/v1/typing/start", &ours, Some("tenant-a-secret")).await.0, 200);
    let resp =
        app.http.get(format!("{}/v1/typing/sessions", app.hook)).bearer_auth("tenant-a-secret").send().await.unwrap();
    let listed: Value = resp.json().await.unwrap();
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["sessions"][0]["account_id"], ACCOUNT);
}

#[tokio::test]
async fn the_session_cap_answers_503_with_retry_after() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ENGINE__MAX_SESSIONS", "2")).await;
    assert_eq!(app.start("9001").await.0, 200);
    assert_eq!(app.start("9002").await.0, 200);
    let resp = app
        .http
        .post(format!("{}/v1/typing/start", app.hook))
        .bearer_auth(HOOK_TOKEN)
        .json(&chat_body("9003"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "at_capacity");
    // A refresh of a live session still works at the cap.
    assert_eq!(app.start("9001").await.1["outcome"], "refreshed");
    assert!(app.calls("9003").is_empty());
}

#[tokio::test]
async fn an_oversized_batch_is_refused_whole() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__HOOKS__MAX_BATCH_EVENTS", "3")).await;
    let events: Vec<Value> = (0..4)
        .map(|i| json!({ "action": "start", "account_id": ACCOUNT, "chat_id": format!("{}", 9100 + i) }))
        .collect();
    assert_refused(&app, "/v1/typing/batch", &json!({ "events": events }), Some(HOOK_TOKEN), 400, "invalid_field")
        .await;
    let bad = json!({ "events": [
        { "action": "start", "account_id": ACCOUNT, "chat_id": "9200" },
        { "action": "jump", "account_id": ACCOUNT, "chat_id": "9201" },
    ]});
    assert_refused(&app, "/v1/typing/batch", &bad, Some(HOOK_TOKEN), 400, "invalid_field").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.all_requests().is_empty());
}
