#![allow(clippy::unwrap_used, missing_docs, reason = "a test binary: it may panic")]

//! Memory under steady upstream faults, on the real binary (its own process, so no other test
//! disturbs its resident memory): for each fault in turn, with 300 sessions typing, the
//! service's RSS in the last seconds of the fault is no higher than in its first seconds (with
//! a small tolerance), and the process is still up afterwards.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

mod child;
use child::{Kill, free_port, wait_up};

const HOOK_TOKEN: &str = "memory-hook-token-5e1b";
const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
const SESSIONS: usize = 300;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_while_a_fault_is_steady() {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (hook_port, admin_port) = (free_port(), free_port());
    let hook = format!("http://127.0.0.1:{hook_port}");
    let (_mock, mock) = child::mock(&http, free_port()).await;
    let service = Kill(
        child::serve(hook_port, admin_port, &mock, "memory-api-key", HOOK_TOKEN)
            .env("KEEPTYPING__UPSTREAM__TIMEOUT", "150ms")
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "200ms")
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", "400ms")
            .env("KEEPTYPING__ENGINE__MAX_IN_FLIGHT", "64")
            .env("KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE", "1s")
            .spawn()
            .unwrap(),
    );
    wait_up(&http, &format!("http://127.0.0.1:{admin_port}/readyz")).await;
    let pid = service.0.id();
    let faults = [
        json!({"slow_rate": 0.3, "slow_ms": 3000}),
        json!({"error_rate": 0.3}),
        json!({"fault": "reset"}),
        json!({"fault": "black_hole"}),
        json!({"fault": "status", "fault_status": 429, "retry_after": "1"}),
        json!({"fault": "status", "fault_status": 429}),
        json!({"fault": "garbage"}),
        json!({"fault": "truncated"}),
        json!({"fault": "odd_meta"}),
    ];
    let mut report = Vec::new();
    for (n, fault) in faults.iter().enumerate() {
        let mut cfg = fault.clone();
        cfg["limit_per_minute"] = Value::Null;
        assert!(http.post(format!("{mock}/_mock/config")).json(&cfg).send().await.unwrap().status().is_success());
        // The mock records every request; forget them so its memory stays flat too.
        http.post(format!("{mock}/_mock/reset")).send().await.unwrap();
        let mut samples = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            // Keep the sessions held (and some churning) through the fault.
            let events: Vec<Value> = (0..SESSIONS)
                .map(|i| json!({"action": "start", "account_id": ACCOUNT, "chat_id": format!("{}", 1000 * (n + 1) + i % SESSIONS)}))
                .collect();
            let resp = http
                .post(format!("{hook}/v1/typing/batch"))
                .bearer_auth(HOOK_TOKEN)
                .json(&json!({"events": events}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "fault {fault}");
            samples.push((t0.elapsed(), rss_kib(pid)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let window = |from: u64, to: u64| {
            samples
                .iter()
                .filter(|(t, _)| *t >= Duration::from_secs(from) && *t < Duration::from_secs(to))
                .map(|(_, r)| *r)
                .max()
                .unwrap()
        };
        let (early, late) = (window(1, 3), window(4, 6));
        report.push(format!("{fault}: {early} -> {late} KiB"));
        // Allow 5% and 1 MiB for allocator noise; steady growth over 3 s exceeds it.
        assert!(late <= early + early / 20 + 1024, "RSS grew under a steady fault {fault}: {early} -> {late} KiB");
    }
    assert!(http.get(format!("http://127.0.0.1:{admin_port}/livez")).send().await.unwrap().status().is_success());
    println!("{}", report.join("\n"));
}
