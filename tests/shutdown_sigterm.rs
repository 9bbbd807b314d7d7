#![allow(clippy::unwrap_used, missing_docs, reason = "a test binary: it may panic")]

//! Shutdown under load, end to end: the real `keeptyping serve` binary with 1,000 live sessions
//! against a real `keeptyping mock-upstream` child, stopped with SIGTERM. Readiness fails and
//! hooks answer 503 while the drain runs, no typing call leaves after it starts, and the
//! process exits 0 within `shutdown.grace`.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

mod child;
use child::{Kill, free_port, wait_up};

const HOOK_TOKEN: &str = "sigterm-hook-token-41d2";
const API_KEY: &str = "sigterm-api-key-7be0";
const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
const SESSIONS: usize = 1000;
const GRACE: Duration = Duration::from_secs(5);
const DRAIN_DELAY: Duration = Duration::from_millis(1000);

/// What the watcher saw: which endpoint, its status (0: refused), when.
type Seen = (&'static str, u16, Duration);

async fn typing_records(http: &reqwest::Client, mock: &str) -> Vec<Value> {
    let body: Value =
        http.get(format!("{mock}/_mock/requests?kind=typing")).send().await.unwrap().json().await.unwrap();
    body["requests"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_1000_sessions_drains_with_503s_and_exits_0_within_grace() {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (hook_port, admin_port) = (free_port(), free_port());
    let hook = format!("http://127.0.0.1:{hook_port}");
    let admin = format!("http://127.0.0.1:{admin_port}");

    // Arrange: the mock and the service, 1,000 sessions typing.
    let (_mock, mock_url) = child::mock(&http, free_port()).await;
    let mut service = Kill(
        child::serve(hook_port, admin_port, &mock_url, API_KEY, HOOK_TOKEN)
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "0")
            .env("KEEPTYPING__SHUTDOWN__GRACE", format!("{}ms", GRACE.as_millis()))
            .env("KEEPTYPING__SHUTDOWN__DRAIN_DELAY", format!("{}ms", DRAIN_DELAY.as_millis()))
            .spawn()
            .unwrap(),
    );
    wait_up(&http, &format!("{admin}/readyz")).await;
    for chunk in (0..SESSIONS).collect::<Vec<_>>().chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"action": "start", "account_id": ACCOUNT, "chat_id": format!("{}", 10_000 + i)}))
            .collect();
        let resp = http
            .post(format!("{hook}/v1/typing/batch"))
            .bearer_auth(HOOK_TOKEN)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // Every session's first call is in (they refire every 3.5 s from then on).
    while typing_records(&http, &mock_url).await.len() < SESSIONS {
        let n = typing_records(&http, &mock_url).await.len();
        assert!(Instant::now() < deadline, "1,000 sessions did not get typing: {n} calls");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Watch readiness and a hook while the drain runs.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let watch_started = Instant::now();
    let watcher = {
        let (seen, http, hook, admin) = (Arc::clone(&seen), http.clone(), hook.clone(), admin.clone());
        tokio::spawn(async move {
            let stop_at = Instant::now() + GRACE + Duration::from_secs(1);
            while Instant::now() < stop_at {
                let ready = http.get(format!("{admin}/readyz")).send().await.map_or(0, |r| r.status().as_u16());
                let start = http
                    .post(format!("{hook}/v1/typing/start"))
                    .bearer_auth(HOOK_TOKEN)
                    .json(&json!({"account_id": ACCOUNT, "chat_id": "99"}))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                let at = watch_started.elapsed();
                seen.lock().unwrap().extend([("readyz", ready, at), ("start", start, at)]);
                if ready == 0 && start == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act: SIGTERM, then a marker request stamps the mock's clock: the signal was delivered
    // before the marker was received.
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &service.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let marker = http.post(format!("{mock_url}/api/marker")).send().await.unwrap();
    assert!(marker.status().is_success());
    let records: Value =
        http.get(format!("{mock_url}/_mock/requests?kind=other")).send().await.unwrap().json().await.unwrap();
    let signalled_ms = records["requests"].as_array().unwrap().last().unwrap()["t_ms"].as_f64().unwrap();
    let status = loop {
        if let Some(s) = service.0.try_wait().unwrap() {
            break s;
        }
        assert!(signalled.elapsed() < GRACE, "still running {:?} after SIGTERM", signalled.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    watcher.await.unwrap();

    // Assert: exit 0 within grace, after holding the 503s for the drain delay.
    assert!(status.success(), "exit status {status:?}");
    assert!(took >= DRAIN_DELAY, "exited after {took:?}, before the drain delay");
    let seen = seen.lock().unwrap().clone();
    let after = |what: &str, code: u16| seen.iter().filter(|(w, c, _)| *w == what && *c == code).count();
    assert!(after("readyz", 503) >= 3, "readiness never failed: {seen:?}");
    assert!(after("start", 503) >= 3, "hooks never answered 503 during the drain: {seen:?}");
    // Readiness failed before the listeners closed: the first 503 precedes the first refusal.
    let first = |what: &str, code: u16| seen.iter().find(|(w, c, _)| *w == what && *c == code).map(|(_, _, t)| *t);
    assert!(first("readyz", 503) < first("readyz", 0), "{seen:?}");
    // No typing call after the drain began. The marker is received after the signal was
    // delivered, but the instant the service acts on it is not visible from outside: signal
    // handling on a busy machine, plus calls handed to the HTTP client just before the drain
    // flag (queued for a connection), reach the mock up to ~100 ms later. Allow 150 ms: with
    // 1,000 sessions about 285 calls a second fall due, so a scheduler that kept launching
    // would land many calls after that bound.
    let late: Vec<f64> = typing_records(&http, &mock_url)
        .await
        .iter()
        .filter_map(|r| r["t_ms"].as_f64())
        .filter(|t| *t > signalled_ms + 150.0)
        .map(|t| t - signalled_ms)
        .collect();
    assert!(late.is_empty(), "{} typing calls after SIGTERM, at +{late:?} ms", late.len());
}
