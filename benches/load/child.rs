//! The two baselines, run as children of the bench (the bench binary re-executes itself with
//! `KEEPTYPING_BENCH_CHILD` set), each in its own process so that its CPU and memory are its own.
//!
//! - `naive`: one tokio task per session on a `tokio::time::interval_at` of absolute deadlines
//!   (`MissedTickBehavior::Delay`), each task awaiting its own typing call through one shared
//!   plain `reqwest::Client` (its URL and `Authorization` value built once, when the task
//!   starts; the answer's body read and dropped): the design a chat library would write. It is
//!   driven through the same hook routes and JSON as keeptyping (`/v1/typing/start`, `/stop`,
//!   `/batch`, bearer token, ids parsed by `keeptyping::ids`) and calls the same OnlyFansAPI
//!   route ([`keeptyping::upstream::typing_path`]), so the mock answers both alike.
//! - `naive-sleep`: the earlier baseline: one task per session sending through keeptyping's own
//!   [`OnlyFansClient`] and sleeping until one interval after it sent.
//! - `ceiling`: a client sending typing calls back to back at a fixed concurrency, no
//!   scheduling at all: keeptyping's own ([`OnlyFansClient`], `keeptyping`) or the naive
//!   design's plain `reqwest::Client` (`reqwest`). It measures its own CPU from
//!   `/proc/self/stat` and prints one JSON line.
//!
//! Neither is product code: they exist only to give keeptyping's figures a reference.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keeptyping::api::typing::{BatchEvent, BatchRequest, RawId, StartRequest, StopRequest};
use keeptyping::config::{AccountScope, ApiKey, UpstreamSettings};
use keeptyping::ids::{AccountId, ChatId, SessionKey};
use keeptyping::upstream::{OnlyFansClient, Upstream};
use serde_json::{Value, json};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

/// Environment variable naming the child mode.
pub(crate) const CHILD_ENV: &str = "KEEPTYPING_BENCH_CHILD";
/// The API key every system sends (the mock accepts any key when unlimited).
pub(crate) const API_KEY: &str = "sk_bench_key";
/// The hook token every system accepts.
pub(crate) const HOOK_TOKEN: &str = "bench_hook_token";
/// Environment variable naming a PEM file the children using keeptyping's client trust
/// (its `upstream.ca_file`): the mock's certificate in TLS mode.
pub(crate) const CA_FILE_ENV: &str = "KEEPTYPING_BENCH_CA_FILE";
/// Environment variable naming the client of a ceiling run: `keeptyping` or `reqwest`.
pub(crate) const CEILING_CLIENT_ENV: &str = "KEEPTYPING_BENCH_CEILING_CLIENT";
/// OnlyFans refire interval (keeptyping's default), used by the naive baseline.
pub(crate) const INTERVAL: Duration = Duration::from_millis(3500);

/// The typing client every system uses: keeptyping's own, with its default settings.
pub(crate) fn client(base_url: &str) -> anyhow::Result<Arc<dyn Upstream>> {
    let settings = UpstreamSettings {
        base_url: base_url.to_owned(),
        ca_file: std::env::var_os(CA_FILE_ENV).map(Into::into),
        ..UpstreamSettings::default()
    };
    let key = ApiKey {
        name: "default".to_owned(),
        budget: "default".to_owned(),
        accounts: AccountScope::All,
        secret: API_KEY.to_owned().into(),
    };
    Ok(Arc::new(OnlyFansClient::build(&settings, &[key])?))
}

/// Runs the child named by `mode` to completion.
pub(crate) fn run(mode: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    match mode {
        "naive" | "naive-sleep" => rt.block_on(naive(
            var("KEEPTYPING_BENCH_LISTEN")?.parse()?,
            &var("KEEPTYPING_BENCH_UPSTREAM")?,
            mode == "naive-sleep",
        )),
        "ceiling" => rt.block_on(ceiling(
            &var("KEEPTYPING_BENCH_UPSTREAM")?,
            var("KEEPTYPING_BENCH_CALLS")?.parse()?,
            var("KEEPTYPING_BENCH_CONCURRENCY")?.parse()?,
            &var(CEILING_CLIENT_ENV)?,
        )),
        other => anyhow::bail!("unknown child mode {other:?}"),
    }
}

// === naive ===

struct Naive {
    upstream: Arc<dyn Upstream>,
    /// The plain client of the interval design.
    http: reqwest::Client,
    base_url: String,
    /// The earlier design: keeptyping's client, sleeping one interval after each send.
    sleep_after_send: bool,
    /// One task per live session. A std mutex: sections are a map insert or remove.
    sessions: Mutex<HashMap<SessionKey, AbortHandle>>,
}

async fn naive(listen: SocketAddr, upstream_url: &str, sleep_after_send: bool) -> anyhow::Result<()> {
    // One shared client with reqwest's defaults, bounded like keeptyping's calls (2 s).
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let state = Arc::new(Naive {
        upstream: client(upstream_url)?,
        http,
        base_url: upstream_url.trim_end_matches('/').to_owned(),
        sleep_after_send,
        sessions: Mutex::new(HashMap::new()),
    });
    let app = axum::Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/v1/typing/start", post(start))
        .route("/v1/typing/stop", post(stop))
        .route("/v1/typing/batch", post(batch))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {HOOK_TOKEN}"))
}

fn key(account: &str, chat: &RawId, platform: Option<keeptyping::ids::Platform>) -> Option<SessionKey> {
    let platform = platform.unwrap_or_default();
    let chat = match chat {
        RawId::Text(s) => s.clone(),
        RawId::Number(n) => n.to_string(),
    };
    Some(SessionKey {
        platform,
        account: AccountId::parse(platform, account).ok()?,
        chat: ChatId::parse(platform, &chat).ok()?,
    })
}

impl Naive {
    fn start(self: &Arc<Self>, req: &StartRequest) -> Value {
        let Some(key) = key(&req.account_id, &req.chat_id, req.platform) else {
            return json!({ "outcome": "error" });
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.contains_key(&key) {
            return json!({ "outcome": "refreshed" });
        }
        let task = if self.sleep_after_send {
            let upstream = Arc::clone(&self.upstream);
            let task_key = key.clone();
            tokio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    let _ = upstream.typing(&task_key, 0).await;
                    sleep_until(sent + INTERVAL).await;
                }
            })
        } else {
            let http = self.http.clone();
            let url = format!("{}{}", self.base_url, keeptyping::upstream::typing_path(&key));
            tokio::spawn(async move {
                let auth = format!("Bearer {API_KEY}");
                let mut ticks = tokio::time::interval_at(Instant::now(), INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    if let Ok(resp) = http.post(&url).header(header::AUTHORIZATION, &auth).send().await {
                        let _ = resp.bytes().await;
                    }
                }
            })
        };
        sessions.insert(key, task.abort_handle());
        json!({ "outcome": "started" })
    }

    fn stop(&self, req: &StopRequest) -> Value {
        let Some(key) = key(&req.account_id, &req.chat_id, req.platform) else {
            return json!({ "outcome": "error" });
        };
        let task = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
        match task {
            Some(t) => {
                t.abort();
                json!({ "outcome": "stopped" })
            }
            None => json!({ "outcome": "not_found" }),
        }
    }
}

async fn start(State(n): State<Arc<Naive>>, headers: HeaderMap, Json(req): Json<StartRequest>) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(n.start(&req)).into_response()
}

async fn stop(State(n): State<Arc<Naive>>, headers: HeaderMap, Json(req): Json<StopRequest>) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(n.stop(&req)).into_response()
}

async fn batch(State(n): State<Arc<Naive>>, headers: HeaderMap, Json(req): Json<BatchRequest>) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let results: Vec<Value> = req
        .events
        .iter()
        .map(|e| match e {
            BatchEvent::Start(s) => n.start(s),
            BatchEvent::Stop(s) => n.stop(s),
        })
        .collect();
    Json(json!({ "results": results })).into_response()
}

// === ceiling ===

/// One typing call of a ceiling run; `true` when it succeeded.
type CeilingCall = Arc<dyn Fn(&SessionKey) -> keeptyping::upstream::BoxFuture<bool> + Send + Sync>;

/// The typing call of the ceiling's `client`: keeptyping's own, or the naive design's plain
/// reqwest client (its URL and `Authorization` value built per call, its body read and dropped).
fn ceiling_call(upstream_url: &str, client_name: &str) -> anyhow::Result<CeilingCall> {
    match client_name {
        "keeptyping" => {
            let upstream = client(upstream_url)?;
            Ok(Arc::new(move |k: &SessionKey| {
                let call = upstream.typing(k, 0);
                Box::pin(async move { call.await.result.is_ok() })
            }))
        }
        "reqwest" => {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
            let base = upstream_url.trim_end_matches('/').to_owned();
            Ok(Arc::new(move |k: &SessionKey| {
                let url = format!("{base}{}", keeptyping::upstream::typing_path(k));
                let sent = http.post(&url).header(header::AUTHORIZATION, format!("Bearer {API_KEY}")).send();
                Box::pin(async move {
                    match sent.await {
                        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                        Err(_) => false,
                    }
                })
            }))
        }
        other => anyhow::bail!("unknown ceiling client {other:?}"),
    }
}

async fn ceiling(upstream_url: &str, calls: usize, concurrency: usize, client_name: &str) -> anyhow::Result<()> {
    let call = ceiling_call(upstream_url, client_name)?;
    let keys: Arc<Vec<SessionKey>> = Arc::new(
        (0..10_000u64)
            .map(|i| {
                let raw = RawId::Text((3_000_000_000 + i).to_string());
                key(crate::ACCOUNT, &raw, None).context("bench ids are valid")
            })
            .collect::<anyhow::Result<_>>()?,
    );
    // Warm-up: open the connections the measured part will reuse.
    let warm: Vec<_> = (0..concurrency)
        .map(|i| {
            let call = Arc::clone(&call);
            let keys = Arc::clone(&keys);
            tokio::spawn(async move { call(&keys[i % keys.len()]).await })
        })
        .collect();
    for w in warm {
        let _ = w.await;
    }
    let pid = std::process::id();
    let cpu0 = crate::procs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, keys, next, ok) = (Arc::clone(&call), Arc::clone(&keys), Arc::clone(&next), Arc::clone(&ok));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        break;
                    }
                    if call(&keys[i % keys.len()]).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = crate::procs::cpu_seconds(pid)? - cpu0;
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({ "client": client_name, "concurrency": concurrency, "calls": calls, "ok": ok, "cpu_s": cpu, "wall_s": wall })
    );
    Ok(())
}
