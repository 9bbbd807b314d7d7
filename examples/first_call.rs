//! Delay from a start hook to the first typing call at the mock, over 100 starts.
//!
//! Run: `cargo run --release --example first_call` (a few seconds).

#![allow(clippy::unwrap_used, reason = "a measuring script")]

use std::collections::HashMap;
use std::time::Duration;

use keeptyping::app::App;
use keeptyping::config;
use keeptyping::mock::{MockConfig, MockUpstream, RecordQuery};
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let mock =
        MockUpstream::start("127.0.0.1:0".parse()?, MockConfig { limit_per_minute: None, ..MockConfig::default() })
            .await?;
    let env: HashMap<String, String> = [
        ("KEEPTYPING__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__UPSTREAM__BASE_URL", mock.url()),
        ("KEEPTYPING__HOOKS__ALLOW_UNAUTHENTICATED", "true".to_owned()),
        // A latency measurement, not a budget one: 100 first indicators in 2 s would exceed a
        // Basic key's typing share (the budget scenario covers that).
        ("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "100000".to_owned()),
        ("ONLYFANSAPI_API_KEY", "first-call-key".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let app = App::build(config::load(None, &env)?).await?;
    let hooks = format!("http://127.0.0.1:{}", app.port());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    let http = reqwest::Client::new();
    let mut asked = Vec::with_capacity(n);
    for i in 0..n {
        let chat = format!("{}", 900_000 + i);
        let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": chat });
        let t = mock.state().now_ms();
        http.post(format!("{hooks}/v1/typing/start")).json(&body).send().await?.error_for_status()?;
        asked.push((chat, t));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = mock.state().records(&RecordQuery { kind: Some("typing".to_owned()), ..RecordQuery::default() });
    let mut delays: Vec<f64> = asked
        .iter()
        .map(|(chat, t)| calls.iter().find(|r| &r.chat == chat).map_or(f64::INFINITY, |r| r.t_ms - t))
        .collect();
    delays.sort_by(f64::total_cmp);
    println!(
        "start hook -> first typing call at the mock, {n} starts: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays[n / 2],
        delays[(n * 99 / 100).min(n - 1)],
        delays[n - 1]
    );
    stop.cancel();
    server.await??;
    mock.stop().await;
    Ok(())
}
