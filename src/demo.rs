//! `keeptyping demo`: the whole product on one machine, no account and no network.
//!
//! Starts the mock OnlyFansAPI on loopback, the real service wired to it (hooks and admin on
//! loopback, unauthenticated hooks allowed there only), and simulated chatters who start typing
//! to fans, keep their lease fresh while composing, and stop when they "send". Every few seconds
//! it prints one summary line computed from what the mock actually received: active sessions,
//! typing calls per second, indicator coverage of finished composing spells, typing calls that
//! arrived after a stop (must stay 0), and the budget.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{self, ENV_API_KEY};
use crate::mock::{MockConfig, MockState, MockUpstream, RecordQuery};

/// The demo's creator account.
const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
/// A typing call arriving this long after a stop's answer counts as "after stop" (a call
/// launched just before the stop may still be on the wire).
const AFTER_STOP_SLACK_MS: f64 = 50.0;

/// `keeptyping demo` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated fans being written to (25 stay within a Basic key's typing share).
    #[arg(long, default_value_t = 25)]
    pub fans: u32,
    /// Stop after this long (e.g. `60s`); default: until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Hook API address (falls back to a free port if taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin address with `/metrics` (falls back to a free port if taken).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// The mock's per-minute limit.
    #[arg(long, default_value_t = 1000)]
    pub limit_per_minute: u32,
    /// Seconds between summary lines.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
}

/// One finished (or ongoing) composing spell of a simulated chatter, in mock milliseconds.
#[derive(Debug, Clone, Copy)]
struct Spell {
    chat: u64,
    start_ms: f64,
    stop_ms: Option<f64>,
}

fn free_or_ephemeral(addr: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

/// Runs the demo.
///
/// # Errors
/// When the mock or the service cannot start.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mock_cfg =
        MockConfig { limit_per_minute: Some(args.limit_per_minute), latency_ms: 25, ..MockConfig::default() };
    let mock = MockUpstream::start(SocketAddr::from(([127, 0, 0, 1], 0)), mock_cfg).await?;
    let listen = free_or_ephemeral(args.listen);
    let admin = free_or_ephemeral(args.admin);
    let env: HashMap<String, String> = [
        ("KEEPTYPING__SERVER__LISTEN", listen.to_string()),
        ("KEEPTYPING__ADMIN__LISTEN", admin.to_string()),
        ("KEEPTYPING__UPSTREAM__BASE_URL", mock.url()),
        ("KEEPTYPING__HOOKS__ALLOW_UNAUTHENTICATED", "true".to_owned()),
        (ENV_API_KEY, "demo-key-not-secret".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = config::load(None, &env)?;
    let app = App::build(cfg).await?;
    let hook_url = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine();
    println!("keeptyping demo: {} simulated fans on account {ACCOUNT}", args.fans);
    println!("  hooks    {hook_url}/v1/typing/start  (no token needed in the demo)");
    println!("  metrics  http://127.0.0.1:{}/metrics", app.admin_port());
    println!("  mock     {}/_mock/requests", mock.url());
    let stop = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));

    let spells = Arc::new(Mutex::new(Vec::<Spell>::new()));
    let http = reqwest::Client::new();
    let chatters = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..args.fans {
        let chat = 100_000 + u64::from(i);
        tasks.push(tokio::spawn(chatter(
            http.clone(),
            hook_url.clone(),
            chat,
            Arc::clone(mock.state()),
            Arc::clone(&spells),
            chatters.clone(),
        )));
    }

    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    tick.tick().await;
    let mut last_typing = 0usize;
    let mut last_t = started;
    let deadline = args.duration.map(|d| started + d);
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {
                let line = summary(&engine, mock.state(), &spells, started, &mut last_typing, &mut last_t);
                println!("{line}");
            }
            () = until_deadline => break,
            () = crate::shutdown::signal() => break,
        }
    }
    chatters.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let line = summary(&engine, mock.state(), &spells, started, &mut last_typing, &mut last_t);
    println!("final: {line}");
    stop.cancel();
    server.await??;
    mock.stop().await;
    Ok(())
}

async fn chatter(
    http: reqwest::Client,
    hook_url: String,
    chat: u64,
    mock: Arc<MockState>,
    spells: Arc<Mutex<Vec<Spell>>>,
    stop: CancellationToken,
) {
    let body = serde_json::json!({ "account_id": ACCOUNT, "chat_id": chat.to_string() });
    let pause = |lo: u64, hi: u64| Duration::from_millis(rand::rng().random_range(lo..hi));
    if wait(&stop, pause(0, 8000)).await {
        return;
    }
    loop {
        // Compose for 4 to 25 s, refreshing the lease every 10 s as a chat tool would.
        let compose = pause(4000, 25_000);
        let start_ms = mock.now_ms();
        let ok = http
            .post(format!("{hook_url}/v1/typing/start"))
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            return;
        }
        let index = {
            let mut s = spells.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.push(Spell { chat, start_ms, stop_ms: None });
            s.len() - 1
        };
        let began = tokio::time::Instant::now();
        let mut cancelled = false;
        while began.elapsed() < compose {
            let step = (compose - began.elapsed()).min(Duration::from_secs(10));
            if wait(&stop, step).await {
                cancelled = true;
                break;
            }
            if began.elapsed() < compose {
                let _ = http.post(format!("{hook_url}/v1/typing/start")).json(&body).send().await;
            }
        }
        // "Send" the reply: stop, then note when the stop was answered.
        let _ = http.post(format!("{hook_url}/v1/typing/stop")).json(&body).send().await;
        let stop_ms = mock.now_ms();
        spells.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[index].stop_ms = Some(stop_ms);
        if cancelled || wait(&stop, pause(3000, 12_000)).await {
            return;
        }
    }
}

/// Sleeps `d`; returns true when cancelled first.
async fn wait(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(d) => false,
    }
}

/// Coverage of finished spells and typing calls after a stop, from the mock's record.
fn coverage(mock: &MockState, spells: &[Spell], lifetime_ms: f64) -> (f64, usize, usize) {
    let records = mock.records(&RecordQuery { kind: Some("typing".to_owned()), ..RecordQuery::default() });
    let mut by_chat: HashMap<&str, Vec<f64>> = HashMap::new();
    for r in records.iter().filter(|r| r.status == 200) {
        by_chat.entry(r.chat.as_str()).or_default().push(r.t_ms);
    }
    let all: HashMap<&str, Vec<f64>> = records.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(r.chat.as_str()).or_default().push(r.t_ms);
        m
    });
    let (mut lit, mut total, mut after_stop, mut done) = (0.0, 0.0, 0usize, 0usize);
    for (i, s) in spells.iter().enumerate() {
        let Some(stop) = s.stop_ms else { continue };
        done += 1;
        let chat = s.chat.to_string();
        let calls = by_chat.get(chat.as_str()).map_or(&[][..], Vec::as_slice);
        lit += lit_ms(calls, s.start_ms, stop, lifetime_ms);
        total += stop - s.start_ms;
        let next_start = spells[i + 1..].iter().find(|n| n.chat == s.chat).map_or(f64::INFINITY, |n| n.start_ms);
        after_stop += all
            .get(chat.as_str())
            .map_or(0, |ts| ts.iter().filter(|t| **t > stop + AFTER_STOP_SLACK_MS && **t < next_start).count());
    }
    let ratio = if total > 0.0 { lit / total } else { 1.0 };
    (ratio, after_stop, done)
}

/// Milliseconds of `[start, stop]` covered by indicators shown from each call for `lifetime`.
pub fn lit_ms(calls: &[f64], start: f64, stop: f64, lifetime: f64) -> f64 {
    let mut covered = 0.0;
    let mut until = start;
    for &t in calls.iter().filter(|t| **t + lifetime > start && **t < stop) {
        let from = t.max(until);
        let to = (t + lifetime).min(stop);
        if to > from {
            covered += to - from;
            until = to;
        }
    }
    covered
}

fn summary(
    engine: &crate::engine::Engine,
    mock: &MockState,
    spells: &Mutex<Vec<Spell>>,
    started: tokio::time::Instant,
    last_typing: &mut usize,
    last_t: &mut tokio::time::Instant,
) -> String {
    let spells = spells.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let (cov, after_stop, done) = coverage(mock, &spells, 4000.0);
    let typing = mock.records(&RecordQuery { kind: Some("typing".to_owned()), ..RecordQuery::default() });
    let limited = typing.iter().filter(|r| r.status == 429).count();
    let dt = last_t.elapsed().as_secs_f64().max(0.001);
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let rate = (typing.len() - *last_typing) as f64 / dt;
    *last_typing = typing.len();
    *last_t = tokio::time::Instant::now();
    let budget = engine
        .budgets()
        .into_iter()
        .next()
        .map(|(b, _)| {
            format!(
                "budget {}/{:.0} typing per min, upstream remaining {}",
                b.sent_last_minute,
                b.typing_per_minute,
                b.remaining_minute.map_or_else(|| "?".to_owned(), |r| r.to_string())
            )
        })
        .unwrap_or_default();
    format!(
        "[{:>4}s] sessions {:>3} | refires/s {rate:>5.1} | coverage {:.2}% over {done} spells | after-stop {after_stop} | 429s {limited} | {budget}",
        started.elapsed().as_secs(),
        engine.active_count(),
        cov * 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::lit_ms;

    #[test]
    fn lit_ms_counts_overlapping_indicators_once() {
        assert!((lit_ms(&[0.0, 3500.0, 7000.0], 0.0, 10_000.0, 4000.0) - 10_000.0).abs() < 1e-9);
        assert!((lit_ms(&[0.0, 6000.0], 0.0, 10_000.0, 4000.0) - 8000.0).abs() < 1e-9);
        assert!((lit_ms(&[], 0.0, 10_000.0, 4000.0)).abs() < 1e-9);
    }
}
