//! Tenants and secrets: tokens stored as SHA-256 digests, each limited to its accounts on every
//! route; the per-token hook rate limit; CORS off by default and an allow-list when configured;
//! body limits and timeouts on every route; and the API key and hook token never appear in a
//! log line or an error body, through a full session and a fault storm on the real binary.

use std::process::{Command, Stdio};
use std::time::Duration;

use keeptyping::mock::{Fault, MockConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const TOKEN_A: &str = "tenant-a-token-0f7e1c55";
const TOKEN_B: &str = "tenant-b-token-93d0a6b2";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Two tenants, configured by digest only: A may touch ACCOUNT, B may touch OTHER_ACCOUNT.
fn two_tenants() -> Opts {
    let toml = format!(
        r#"
[[hooks.tokens]]
name = "a"
token_sha256 = "{}"
accounts = ["{ACCOUNT}"]

[[hooks.tokens]]
name = "b"
token_sha256 = "{}"
accounts = ["{OTHER_ACCOUNT}"]
"#,
        sha(TOKEN_A),
        sha(TOKEN_B)
    );
    Opts { config_toml: Some(toml), ..Opts::default() }
}

/// Every hook route, as (method, path, body with `{account}` for the account it targets).
/// Add a route in one line; the check below applies to all of them.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("POST", "/v1/typing/start", Some(r#"{"account_id":"{account}","chat_id":"81001"}"#)),
    ("POST", "/v1/typing/stop", Some(r#"{"account_id":"{account}","chat_id":"81000"}"#)),
    ("POST", "/v1/typing/batch", Some(r#"{"events":[{"action":"start","account_id":"{account}","chat_id":"81002"}]}"#)),
    (
        "POST",
        "/v1/typing/batch",
        Some(
            r#"{"events":[{"action":"start","account_id":"acct_0123456789abcdef0123456789abcdef","chat_id":"81003"},{"action":"stop","account_id":"{account}","chat_id":"81000"}]}"#,
        ),
    ),
    ("GET", "/v1/typing/sessions", None),
    ("GET", "/v1/budget", None),
];

async fn send(app: &TestApp, method: &str, path: &str, body: Option<String>, token: Option<&str>) -> reqwest::Response {
    let url = format!("{}{path}", app.hook);
    let mut req = match method {
        "GET" => app.http.get(url),
        _ => app.http.post(url).header("content-type", "application/json").body(body.unwrap_or_default()),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_token_never_touches_accounts_outside_its_list_on_any_route() {
    let app = spawn_with(two_tenants()).await;
    // B holds a session on its own account; A must neither see nor change it.
    let b_chat = json!({ "account_id": OTHER_ACCOUNT, "chat_id": "81000" });
    assert_eq!(app.post_with("/v1/typing/start", &b_chat, Some(TOKEN_B)).await.0, 200);
    for (method, path, body) in ROUTES {
        let body = body.map(|b| b.replace("{account}", OTHER_ACCOUNT));
        let resp = send(&app, method, path, body.clone(), Some(TOKEN_A)).await;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // Either refused as forbidden, or answered without a word about the other account.
        if status == 403 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "forbidden_account", "{method} {path}");
        } else {
            assert_eq!(status, 200, "{method} {path}: {text}");
            assert!(!text.contains(OTHER_ACCOUNT), "{method} {path} showed another tenant's account: {text}");
        }
        assert!(
            status == 403 || body.is_none(),
            "{method} {path} {body:?} acted on another tenant's account: {status}"
        );
    }
    // Nothing of B's changed: its session is live and alone on its account, and A's refused
    // batch (one good event, one forbidden) applied nothing.
    let on_other: Vec<_> = app.engine.sessions(|a| a.as_str() == OTHER_ACCOUNT);
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    assert!(app.engine.sessions(|a| a.as_str() == ACCOUNT).is_empty());
    // And A on its own account works, B is refused there.
    assert_eq!(app.post_with("/v1/typing/start", &chat_body("81004"), Some(TOKEN_A)).await.0, 200);
    assert_eq!(app.post_with("/v1/typing/start", &chat_body("81005"), Some(TOKEN_B)).await.0, 403);
}

#[tokio::test]
async fn tokens_configured_as_sha256_digests_authenticate_and_others_do_not() {
    let app = spawn_with(two_tenants()).await;
    assert_eq!(app.post_with("/v1/typing/start", &chat_body("82001"), Some(TOKEN_A)).await.0, 200);
    // The digest itself is not a token, nor is a prefix of one.
    for bad in [sha(TOKEN_A).as_str(), &TOKEN_A[..TOKEN_A.len() - 1], "x"] {
        let (status, body) = app.post_with("/v1/typing/start", &chat_body("82002"), Some(bad)).await;
        assert_eq!(status, 401, "{bad}");
        assert_eq!(body["error"]["code"], "invalid_token");
    }
    let (status, body) = app.post_with("/v1/typing/start", &chat_body("82003"), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("missing_token")));
}

#[tokio::test]
async fn the_hook_rate_limit_answers_429_with_retry_after_per_token() {
    let app = spawn_with(
        two_tenants()
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "2")
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_BURST", "3"),
    )
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let resp = send(&app, "GET", "/v1/typing/sessions", None, Some(TOKEN_A)).await;
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("10 quick hooks with a limit of 2/s and a burst of 3 were never limited");
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another tenant is not slowed by A's burst.
    assert_eq!(send(&app, "GET", "/v1/typing/sessions", None, Some(TOKEN_B)).await.status(), 200);
    // And A is served again once Retry-After has passed.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(send(&app, "GET", "/v1/typing/sessions", None, Some(TOKEN_A)).await.status(), 200);
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/typing/start", app.hook))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let app = spawn_app().await;
    let resp = preflight(&app, "https://tool.example").await;
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "{:?}", resp.headers());
    let (_, _) = app.start("83001").await;
    let resp = app
        .http
        .post(format!("{}/v1/typing/start", app.hook))
        .header("origin", "https://tool.example")
        .bearer_auth(HOOK_TOKEN)
        .json(&chat_body("83002"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_with(Opts {
        config_toml: Some("[hooks]\ncors_allowed_origins = [\"https://tool.example\"]\n".to_owned()),
        ..Opts::default()
    })
    .await;
    let ok = preflight(&app, "https://tool.example").await;
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://tool.example");
    let methods = ok.headers()["access-control-allow-methods"].to_str().unwrap().to_uppercase();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight(&app, "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none(), "{:?}", other.headers());
}

#[tokio::test]
async fn every_route_has_a_body_limit_and_a_timeout() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__SERVER__MAX_BODY_BYTES", "1024")).await;
    let big = format!(r#"{{"account_id":"{ACCOUNT}","chat_id":"1","chatter_id":"{}"}}"#, "a".repeat(4096));
    for (method, path, _) in ROUTES.iter().filter(|(m, _, _)| *m == "POST") {
        let resp = send(&app, method, path, Some(big.clone()), Some(HOOK_TOKEN)).await;
        assert_eq!(resp.status(), 413, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large");
    }
    // A request whose body never finishes arriving is cut at server.request_timeout.
    let app = spawn_with(Opts::default().env("KEEPTYPING__SERVER__REQUEST_TIMEOUT", "300ms")).await;
    let addr = app.hook.trim_start_matches("http://").to_owned();
    for (method, path, _) in ROUTES.iter().filter(|(m, _, _)| *m == "POST") {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {HOOK_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"account_id\":"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let t = tokio::time::Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&answer).contains("\"timeout\"") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok() && text.starts_with("HTTP/1.1 503"), "{method} {path}: {text}");
        assert!(text.contains("\"timeout\""), "{text}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn neither_the_api_key_nor_the_hook_token_reaches_a_log_line_or_an_error_body() {
    // The real binary, debug logging, a full session and a fault storm.
    let mock = keeptyping::mock::MockUpstream::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig { limit_per_minute: None, ..MockConfig::default() },
    )
    .await
    .unwrap();
    let port = |l: std::net::TcpListener| l.local_addr().unwrap().port();
    let hook_port = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let admin_port = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let log_path = std::env::temp_dir().join(format!("kt-secrets-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keeptyping"))
        .arg("serve")
        .env("KEEPTYPING__SERVER__LISTEN", format!("127.0.0.1:{hook_port}"))
        .env("KEEPTYPING__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("KEEPTYPING__UPSTREAM__BASE_URL", mock.url())
        .env("KEEPTYPING__UPSTREAM__TIMEOUT", "150ms")
        .env("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "200ms")
        .env("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", "400ms")
        .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "1000000")
        .env("KEEPTYPING__BUDGET__BURST", "1000")
        .env("KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE", "200ms")
        .env("ONLYFANSAPI_API_KEY", API_KEY)
        .env("KEEPTYPING_HOOK_TOKEN", HOOK_TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let hook = format!("http://127.0.0.1:{hook_port}");
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    let up = eventually(Duration::from_secs(10), || async {
        http.get(format!("http://127.0.0.1:{admin_port}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(up, "the service did not come up");
    let post = |path: &str, body: Value, token: Option<&str>| {
        let mut req = http.post(format!("{hook}{path}")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // A full session, then wrong tokens, bad bodies, and a near-miss of the token.
    for (path, body, token) in [
        ("/v1/typing/start", chat_body("84001"), Some(HOOK_TOKEN)),
        ("/v1/typing/start", chat_body("84001"), Some(&format!("{HOOK_TOKEN}x") as &str)),
        ("/v1/typing/start", chat_body("84001"), Some(API_KEY)),
        (
            "/v1/typing/batch",
            json!({"events": [{"action": "start", "account_id": ACCOUNT, "chat_id": "1", "chatter_id": "x y"}]}),
            Some(HOOK_TOKEN),
        ),
    ] {
        let resp = post(path, body, token.map(str::to_owned).as_deref()).await.unwrap();
        bodies.push_str(&resp.text().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The fault storm: every fault in turn, ending with a 401 that refuses the key.
    for cfg in [
        MockConfig { fault: Fault::Status, fault_status: 429, retry_after: Some("1".into()), ..MockConfig::default() },
        MockConfig { error_rate: 1.0, ..MockConfig::default() },
        MockConfig { fault: Fault::Reset, ..MockConfig::default() },
        MockConfig { fault: Fault::BlackHole, ..MockConfig::default() },
        MockConfig { fault: Fault::Garbage, ..MockConfig::default() },
        MockConfig { fault: Fault::Truncated, ..MockConfig::default() },
        MockConfig { fault: Fault::OddMeta, ..MockConfig::default() },
        MockConfig { account_status: [(ACCOUNT.to_owned(), 503)].into(), ..MockConfig::default() },
        MockConfig { valid_keys: Some(vec!["another-key".into()]), ..MockConfig::default() },
    ] {
        mock.state().set_config(MockConfig { limit_per_minute: None, ..cfg });
        let resp = post("/v1/typing/start", chat_body("84002"), Some(HOOK_TOKEN)).await.unwrap();
        bodies.push_str(&resp.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let resp = post("/v1/typing/start", chat_body("84003"), Some(HOOK_TOKEN)).await.unwrap();
    bodies.push_str(&resp.text().await.unwrap());
    assert!(bodies.contains("api_key_refused"), "the storm ended with a refused key: {bodies}");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    // check-config prints the effective config with secrets redacted.
    let check = Command::new(env!("CARGO_BIN_EXE_keeptyping"))
        .arg("check-config")
        .env("ONLYFANSAPI_API_KEY", API_KEY)
        .env("KEEPTYPING_HOOK_TOKEN", HOOK_TOKEN)
        .output()
        .unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    mock.stop().await;
    assert!(logs.lines().count() > 20, "debug logging produced almost nothing: {logs}");
    let config_text = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    for secret in [API_KEY, HOOK_TOKEN] {
        for (what, text) in [("log", &logs), ("error body", &bodies), ("check-config", &config_text)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{secret} in a {what}: {line}");
            }
        }
    }
}
