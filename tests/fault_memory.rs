#![allow(clippy::unwrap_used, missing_docs, reason = "a test binary: it may panic")]

//! Memory under steady upstream faults, on the real binary (its own process, so no other test
//! disturbs its resident memory): for each fault in turn, with 300 sessions typing, the
//! service's RSS in the last seconds of the fault is no higher than in its first seconds (with
//! a small tolerance), and the process is still up afterwards.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

const HOOK_TOKEN: &str = "memory-hook-token-5e1b";
const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
const SESSIONS: usize = 300;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn up(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_while_a_fault_is_steady() {
    let bin = env!("CARGO_BIN_EXE_keeptyping");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let (mock_port, hook_port, admin_port) = (free_port(), free_port(), free_port());
    let mock = format!("http://127.0.0.1:{mock_port}");
    let hook = format!("http://127.0.0.1:{hook_port}");
    let _mock = Kill(
        Command::new(bin)
            .args(["mock-upstream", "--listen", &format!("127.0.0.1:{mock_port}"), "--limit-per-minute", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    up(&http, &format!("{mock}/_mock/stats")).await;
    let service = Kill(
        Command::new(bin)
            .arg("serve")
            .env("KEEPTYPING__SERVER__LISTEN", format!("127.0.0.1:{hook_port}"))
            .env("KEEPTYPING__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("KEEPTYPING__UPSTREAM__BASE_URL", &mock)
            .env("KEEPTYPING__UPSTREAM__TIMEOUT", "150ms")
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "200ms")
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", "400ms")
            .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "10000000")
            .env("KEEPTYPING__BUDGET__BURST", "100000")
            .env("KEEPTYPING__ENGINE__MAX_IN_FLIGHT", "64")
            .env("KEEPTYPING__ACCOUNTS__UNAVAILABLE_PAUSE", "1s")
            .env("ONLYFANSAPI_API_KEY", "memory-api-key")
            .env("KEEPTYPING_HOOK_TOKEN", HOOK_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    up(&http, &format!("http://127.0.0.1:{admin_port}/readyz")).await;
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
