//! The fault suite: every upstream fault the mock can switch on at run time, each checked for
//! what a chat tool relies on. For each fault, with sessions typing and the in-flight cap at 8:
//! - the process stays up (`/livez` 200, the app task still running);
//! - hooks keep answering at once (p99 under 50 ms while the upstream is a black hole);
//! - typing calls in flight never exceed the cap (sampled from the engine, and for the black
//!   hole also counted at the mock: every black-holed call stays open for the whole upstream
//!   timeout, so calls received well within it of each other were open at once);
//! - no typing call for a chat after its stop is answered;
//! - sessions nobody refreshes still end by their lease;
//! - once the fault clears, every held session gets a successful call within one refire
//!   interval (plus the pause a 429 asked for, which is part of that fault).
//!
//! Memory under a steady fault is measured on the real binary in `tests/fault_memory.rs`, where
//! no other test shares the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use keeptyping::mock::{Fault, MockConfig};
use serde_json::json;
use tokio::time::Instant;

use crate::helpers::*;

const CAP: usize = 8;
const HELD: usize = 16;
const ABANDONED: usize = 4;
const STOPPED: usize = 4;
const LEASE_MS: u64 = 600;
/// Scheduling slack on top of one interval for the recovery bound (loaded CI machines).
const SLACK_MS: f64 = 200.0;

fn healthy() -> MockConfig {
    MockConfig { limit_per_minute: None, ..MockConfig::default() }
}

fn fault(f: Fault) -> MockConfig {
    MockConfig { fault: f, ..healthy() }
}

fn status_429(retry_after: Option<&str>) -> MockConfig {
    MockConfig { fault_status: 429, retry_after: retry_after.map(str::to_owned), ..fault(Fault::Status) }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Runs the scenario with `cfg` as the fault; `latency_bound` applies to hook latency p99.
async fn survives(base: u32, cfg: MockConfig, latency_bound: Option<Duration>) {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ENGINE__MAX_IN_FLIGHT", &CAP.to_string())).await;
    let chat = |i: usize| format!("{}", base as usize + i);
    // Arrange: held sessions, and abandoned ones with a short lease nobody refreshes.
    for i in 0..HELD {
        assert_eq!(app.start(&chat(i)).await.0, 200);
    }
    for i in HELD..HELD + ABANDONED {
        let body = json!({ "account_id": ACCOUNT, "chat_id": chat(i), "ttl_ms": LEASE_MS });
        assert_eq!(app.post("/v1/typing/start", &body).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(3 * INTERVAL_MS)).await;

    // Sample in-flight calls while the fault runs.
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (engine, max, on) = (app.engine.clone(), Arc::clone(&max_in_flight), Arc::clone(&sampling));
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                max.fetch_max(engine.in_flight(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // Act: the fault, with hooks refreshing the held sessions meanwhile.
    let fault_from = app.now_ms();
    app.mock.state().set_config(cfg.clone());
    let mut latencies = Vec::new();
    let mut stopped_at = Vec::new();
    // At least 1.5 s of fault and 200 hooks (so p99 is not one outlier), at most 10 s.
    let (min_until, max_until) =
        (Instant::now() + Duration::from_millis(1500), Instant::now() + Duration::from_secs(10));
    let mut n = 0usize;
    while Instant::now() < max_until && (Instant::now() < min_until || n < 200) {
        let t = Instant::now();
        let (status, body) = app.start(&chat(STOPPED + n % (HELD - STOPPED))).await;
        latencies.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        n += 1;
        if n == 20 {
            // Stops in the middle of the fault.
            for i in 0..STOPPED {
                assert_eq!(app.stop(&chat(i)).await.1["outcome"], "stopped");
                stopped_at.push((chat(i), app.now_ms()));
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();

    // Assert, under the fault.
    assert_eq!(app.admin_status("/livez").await, 200, "the process stays up");
    let max = max_in_flight.load(Ordering::Relaxed);
    assert!(max <= CAP, "{max} typing calls in flight, cap {CAP}");
    if let Some(bound) = latency_bound {
        let p = p99(latencies.clone());
        assert!(p < bound, "hook latency p99 {p:?} under the fault (bound {bound:?}) over {} hooks", latencies.len());
    }
    for (c, at) in &stopped_at {
        // A call already on the wire when the stop was answered lands within a few ms.
        let late: Vec<f64> = app.calls(c).iter().map(|r| r.t_ms).filter(|t| *t > at + 20.0).collect();
        assert!(late.is_empty(), "chat {c}: typing calls after its stop: {late:?}");
    }
    let live: Vec<String> = app.engine.sessions(|_| true).iter().map(|s| s.chat_id.to_string()).collect();
    for i in HELD..HELD + ABANDONED {
        assert!(!live.contains(&chat(i)), "chat {}: outlived its {LEASE_MS} ms lease under the fault", chat(i));
    }
    let typing_in_fault = app.mock.state().records(&Default::default()).iter().filter(|r| r.t_ms >= fault_from).count();
    assert!(typing_in_fault > 0, "the fault saw no typing call");

    // The fault clears: every held session is lit again within one interval (after any pause
    // the upstream asked for).
    app.mock.state().set_config(healthy());
    let cleared = app.now_ms();
    // Calls on the wire when the fault cleared answer within the 150 ms upstream timeout; a
    // 429 among them may still set the pause, so read it after they are in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pause_ms = app.get("/v1/budget").await.1["budgets"][0]["paused_for_ms"].as_f64().unwrap_or(0.0);
    let bound = (app.now_ms() + pause_ms).max(cleared) + INTERVAL_MS as f64 + SLACK_MS;
    tokio::time::sleep(Duration::from_millis(pause_ms as u64 + 2 * INTERVAL_MS + SLACK_MS as u64)).await;
    for i in STOPPED..HELD {
        let first_ok = app.calls(&chat(i)).iter().find(|r| r.t_ms >= cleared && r.status == 200).map(|r| r.t_ms);
        assert!(pause_ms < 5000.0, "the budget is paused {pause_ms} ms after a 1.5 s storm");
        assert!(
            first_ok.is_some_and(|t| t <= bound),
            "chat {}: first good call at {first_ok:?}, fault cleared at {cleared} (bound {bound})",
            chat(i)
        );
    }
    assert_eq!(app.admin_status("/livez").await, 200);
}

#[tokio::test]
async fn latency_spikes_of_3_s_are_cut_at_the_upstream_timeout() {
    survives(71_000, MockConfig { slow_rate: 0.3, slow_ms: 3000, ..healthy() }, None).await;
}

#[tokio::test]
async fn thirty_percent_5xx_skips_beats_only() {
    survives(72_000, MockConfig { error_rate: 0.3, error_status: 500, ..healthy() }, None).await;
}

#[tokio::test]
async fn connection_resets_skip_beats_only() {
    survives(73_000, fault(Fault::Reset), None).await;
}

#[tokio::test]
async fn a_black_hole_never_makes_hooks_wait() {
    let cfg = fault(Fault::BlackHole);
    survives(74_000, cfg, Some(Duration::from_millis(50))).await;
}

#[tokio::test]
async fn a_black_hole_holds_at_most_the_cap_open_at_the_mock() {
    let app = spawn_with(Opts::default().env("KEEPTYPING__ENGINE__MAX_IN_FLIGHT", &CAP.to_string())).await;
    app.mock.state().set_config(fault(Fault::BlackHole));
    for i in 0..40 {
        app.start(&format!("{}", 74_500 + i)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut t: Vec<f64> = app.all_requests().iter().filter(|r| r.kind == "typing").map(|r| r.t_ms).collect();
    t.sort_by(f64::total_cmp);
    assert!(t.len() > CAP, "only {} calls", t.len());
    // Every call hangs for the whole 150 ms upstream timeout from its send, and reaches the mock
    // within a few ms of it on loopback: calls received within 100 ms of each other were open
    // at the same time (50 ms of margin for a receipt that lags its send).
    let most = (0..t.len()).map(|i| t[i..].iter().take_while(|x| **x < t[i] + 100.0).count()).max().unwrap();
    assert!(most <= CAP, "{most} black-holed calls open at once, cap {CAP}");
}

#[tokio::test]
async fn a_429_storm_with_retry_after_pauses_then_recovers() {
    survives(75_000, status_429(Some("1")), None).await;
}

#[tokio::test]
async fn a_429_storm_without_retry_after_backs_off_then_recovers() {
    survives(76_000, status_429(None), None).await;
}

#[tokio::test]
async fn garbage_bodies_are_survived() {
    survives(77_000, fault(Fault::Garbage), None).await;
}

#[tokio::test]
async fn truncated_bodies_are_survived() {
    survives(78_000, fault(Fault::Truncated), None).await;
}

#[tokio::test]
async fn a_meta_with_odd_types_is_survived() {
    survives(79_000, fault(Fault::OddMeta), None).await;
}
