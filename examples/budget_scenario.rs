//! The budget scenario of the README: a 120-per-minute key, typing_share 0.5, 30 fans starting
//! one every 2 s and composing at the real OnlyFans cadence (3.5 s), their chat tool re-sending
//! start every 10 s, and the tool's own traffic on the same key: 30 requests a minute, then 90
//! a minute from the half-way mark, against the mock OnlyFansAPI on loopback. Prints the
//! first-indicator delays, the fans lit, the coverage of slot holders, the typing calls in the
//! busiest 60 s and the 429s seen.
//!
//! Run: `cargo run --release --example budget_scenario` (takes 4 minutes; `-- 120` for seconds).

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
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(240.0);
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
    let state = mock.state().clone();
    let t0 = state.now_ms();
    let end = t0 + secs * 1000.0;
    let half = t0 + secs * 500.0;
    // The tool's own "send message" traffic on the same key.
    let tool = {
        let (http, url, state) = (http.clone(), format!("{}/api/{ACCOUNT}/messages", mock.url()), state.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while state.now_ms() < end {
                let every = if state.now_ms() < half { 2000 } else { 667 };
                let r =
                    http.post(&url).bearer_auth("scenario-key").json(&serde_json::json!({"text": "hi"})).send().await;
                statuses.push(r.map_or(0, |r| r.status().as_u16()));
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
            statuses
        })
    };
    let chat = |i: usize| format!("{}", 500 + i);
    let mut asked: Vec<f64> = Vec::new();
    let mut last_start = vec![f64::NEG_INFINITY; 30];
    // Per chat: was it lit at every one-second sample of each half?
    let mut lit_always = [vec![true; 30], vec![true; 30]];
    let mut lit_counts = [Vec::new(), Vec::new()];
    while state.now_ms() < end {
        let now = state.now_ms();
        while asked.len() < 30 && now - t0 >= asked.len() as f64 * 2000.0 {
            asked.push(state.now_ms());
        }
        for (i, last) in last_start.iter_mut().enumerate().take(asked.len()) {
            if now - *last >= 10_000.0 {
                let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": chat(i) });
                http.post(format!("{hooks}/v1/typing/start")).json(&body).send().await?.error_for_status()?;
                *last = state.now_ms();
            }
        }
        if asked.len() == 30 {
            let phase = usize::from(now >= half);
            let sessions: serde_json::Value =
                http.get(format!("{hooks}/v1/typing/sessions")).send().await?.json().await?;
            let lit: Vec<usize> = sessions["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["lit_slot"] == true)
                .map(|s| s["chat_id"].as_str().unwrap().parse::<usize>().unwrap() - 500)
                .collect();
            lit_counts[phase].push(lit.len());
            for (i, always) in lit_always[phase].iter_mut().enumerate() {
                *always &= lit.contains(&i);
            }
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let stop_ms = state.now_ms();
    for i in 0..30 {
        let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": chat(i) });
        http.post(format!("{hooks}/v1/typing/stop")).json(&body).send().await?;
    }
    let tool = tool.await?;
    let calls = state.records(&RecordQuery { kind: Some("typing".to_owned()), ..RecordQuery::default() });
    let mut delays: Vec<f64> = (0..30)
        .map(|i| {
            calls.iter().find(|r| r.chat == chat(i) && r.status == 200).map_or(f64::INFINITY, |r| r.t_ms - asked[i])
        })
        .collect();
    let slow: Vec<String> = delays
        .iter()
        .enumerate()
        .filter(|(_, d)| **d > 1000.0)
        .map(|(i, d)| format!("fan {i} at {:.0} s: {:.1} s", (asked[i] - t0) / 1000.0, d / 1000.0))
        .collect();
    delays.sort_by(f64::total_cmp);
    let times: Vec<f64> = calls.iter().map(|r| r.t_ms).collect();
    let busiest =
        times.iter().map(|s| times.iter().filter(|t| **t >= *s && **t < s + 60_000.0).count()).max().unwrap_or(0);
    println!(
        "budget 120/min, typing_share 0.5, 30 fans (one every 2 s), the tool 30/min then 90/min from {:.0} s",
        (half - t0) / 1000.0
    );
    println!("first-indicator delay: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms", delays[15], delays[26], delays[29]);
    if !slow.is_empty() {
        println!("first indicators later than 1 s: {}", slow.join("; "));
    }
    for (phase, name, from, to) in [(0, "tool 30/min", t0 + 60_000.0, half), (1, "tool 90/min", half, stop_ms)] {
        let mut counts = lit_counts[phase].clone();
        counts.sort_unstable();
        let holders: Vec<usize> = (0..30).filter(|i| lit_always[phase][*i]).collect();
        let cov: Vec<String> = holders
            .iter()
            .map(|i| {
                let t: Vec<f64> =
                    calls.iter().filter(|r| r.chat == chat(*i) && r.status == 200).map(|r| r.t_ms).collect();
                format!("{:.2}%", lit_ms(&t, from, to, 4000.0) / (to - from) * 100.0)
            })
            .collect();
        println!(
            "{name}: fans lit median {} (min {}, max {}); slot holders throughout {:?}, coverage {}",
            counts.get(counts.len() / 2).copied().unwrap_or(0),
            counts.first().copied().unwrap_or(0),
            counts.last().copied().unwrap_or(0),
            holders.iter().map(|i| chat(*i)).collect::<Vec<_>>(),
            cov.join(", ")
        );
    }
    println!("typing calls: {} in all, {busiest} in the busiest 60 s (share 60)", calls.len());
    println!(
        "429s: typing {}, the tool's own traffic {} of {}",
        calls.iter().filter(|r| r.status == 429).count(),
        tool.iter().filter(|s| **s == 429).count(),
        tool.len()
    );
    stop.cancel();
    server.await??;
    mock.stop().await;
    Ok(())
}
