//! The budget scenario of the README: a 120-per-minute key, typing_share 0.5, 30 fans composing
//! for 3 minutes at the real OnlyFans cadence (3.5 s), against the mock OnlyFansAPI on loopback.
//! Prints the typing calls per minute reached, the 429s seen and the median coverage per fan.
//!
//! Run: `cargo run --release --example budget_scenario` (takes 3 minutes; `-- 30` for seconds).

#![allow(clippy::unwrap_used, clippy::cast_precision_loss, reason = "a measuring script")]

use std::collections::HashMap;
use std::time::Duration;

use keeptyping::app::App;
use keeptyping::config;
use keeptyping::demo::lit_ms;
use keeptyping::mock::{MockConfig, MockUpstream, RecordQuery};
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(180);
    let mock = MockUpstream::start(
        "127.0.0.1:0".parse()?,
        MockConfig { limit_per_minute: Some(120), ..MockConfig::default() },
    )
    .await?;
    let env: HashMap<String, String> = [
        ("KEEPTYPING__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__UPSTREAM__BASE_URL", mock.url()),
        ("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "120".to_owned()),
        ("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "10m".to_owned()),
        ("KEEPTYPING__HOOKS__ALLOW_UNAUTHENTICATED", "true".to_owned()),
        ("ONLYFANSAPI_API_KEY", "scenario-key".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = App::build(config::load(None, &env)?).await?;
    let hooks = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    let http = reqwest::Client::new();
    let start_ms = mock.state().now_ms();
    for i in 0..30 {
        let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": format!("{}", 500 + i) });
        http.post(format!("{hooks}/v1/typing/start")).json(&body).send().await?.error_for_status()?;
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for i in 0..30 {
        let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": format!("{}", 500 + i) });
        http.post(format!("{hooks}/v1/typing/stop")).json(&body).send().await?;
    }
    let stop_ms = mock.state().now_ms();
    let calls = mock.state().records(&RecordQuery { kind: Some("typing".to_owned()), ..RecordQuery::default() });
    let limited = calls.iter().filter(|r| r.status == 429).count();
    let minutes = (stop_ms - start_ms) / 60_000.0;
    let mut per_minute = Vec::new();
    let mut m = 0.0;
    while m + 1.0 <= minutes + 1e-9 {
        let from = start_ms + m * 60_000.0;
        per_minute.push(calls.iter().filter(|r| r.t_ms >= from && r.t_ms < from + 60_000.0).count());
        m += 1.0;
    }
    let mut coverage: Vec<f64> = (0..30)
        .map(|i| {
            let chat = format!("{}", 500 + i);
            let t: Vec<f64> = calls.iter().filter(|r| r.chat == chat && r.status == 200).map(|r| r.t_ms).collect();
            lit_ms(&t, start_ms, stop_ms, 4000.0) / (stop_ms - start_ms)
        })
        .collect();
    coverage.sort_by(f64::total_cmp);
    println!("budget 120/min, typing_share 0.5 (60/min), 30 fans, {secs} s at 3.5 s cadence");
    println!("typing calls per minute: {per_minute:?} (total {})", calls.len());
    println!("429s seen by typing: {limited}");
    println!(
        "coverage per fan: median {:.1}%, min {:.1}%, max {:.1}% (fully lit capacity: {:.1} fans)",
        coverage[15] * 100.0,
        coverage[0] * 100.0,
        coverage[29] * 100.0,
        60.0 / (60.0 / 3.5)
    );
    stop.cancel();
    server.await??;
    mock.stop().await;
    Ok(())
}
