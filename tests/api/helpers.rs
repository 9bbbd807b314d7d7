//! `spawn_app()`: the real `App` on 127.0.0.1:0 (both listeners) wired to a real mock
//! OnlyFansAPI on loopback, with short intervals; and `TestApp` helpers to drive and observe it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use keeptyping::app::App;
use keeptyping::config;
use keeptyping::engine::Engine;
use keeptyping::mock::{MockConfig, MockUpstream, Record, RecordQuery};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
pub const OTHER_ACCOUNT: &str = "acct_fedcba9876543210fedcba9876543210";
pub const API_KEY: &str = "sk_test_api_key_5f2c9a";
pub const HOOK_TOKEN: &str = "hook_token_test_8d41e7";
/// Refire interval and indicator lifetime used by the tests (OnlyFans).
pub const INTERVAL_MS: u64 = 200;
pub const LIFETIME_MS: u64 = 400;

pub struct Opts {
    pub mock: MockConfig,
    pub env: Vec<(String, String)>,
    pub config_toml: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            mock: MockConfig { limit_per_minute: None, ..MockConfig::default() },
            env: Vec::new(),
            config_toml: None,
        }
    }
}

impl Opts {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

pub struct TestApp {
    pub hook: String,
    pub admin: String,
    pub mock: MockUpstream,
    pub http: reqwest::Client,
    pub engine: Engine,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_with(Opts::default()).await
}

pub async fn spawn_with(opts: Opts) -> TestApp {
    init_tracing();
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap(), opts.mock).await.unwrap();
    let mut env: HashMap<String, String> = [
        ("KEEPTYPING__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ("KEEPTYPING__UPSTREAM__BASE_URL", mock.url()),
        ("KEEPTYPING__UPSTREAM__TIMEOUT", "150ms".to_owned()),
        ("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", format!("{INTERVAL_MS}ms")),
        ("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", format!("{LIFETIME_MS}ms")),
        ("KEEPTYPING__SHUTDOWN__GRACE", "2s".to_owned()),
        // Tests of cadence and stops run many sessions at a 200 ms cadence; the budget has its
        // own tests (tests/api/budget.rs) with small limits.
        ("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "1000000".to_owned()),
        ("KEEPTYPING__BUDGET__BURST", "1000".to_owned()),
        ("ONLYFANSAPI_API_KEY", API_KEY.to_owned()),
        ("KEEPTYPING_HOOK_TOKEN", HOOK_TOKEN.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    env.extend(opts.env);
    let file = opts.config_toml.map(|text| {
        let path = std::env::temp_dir().join(format!("kt-test-{}-{}.toml", std::process::id(), rand_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    });
    let cfg = config::load(file.as_deref(), &env).unwrap();
    let app = App::build(cfg).await.unwrap();
    let hook = format!("http://127.0.0.1:{}", app.port());
    let admin = format!("http://127.0.0.1:{}", app.admin_port());
    let engine = app.engine();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone().cancelled_owned()));
    TestApp { hook, admin, mock, http: reqwest::Client::new(), engine, stop, handle }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn init_tracing() {
    if std::env::var("TEST_LOG").is_ok() {
        keeptyping::telemetry::init(false);
    }
}

pub fn chat_body(chat: &str) -> Value {
    json!({ "account_id": ACCOUNT, "chat_id": chat })
}

impl TestApp {
    /// POSTs `body` to `path` with the default hook token.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with(path, body, Some(HOOK_TOKEN)).await
    }

    pub async fn post_with(&self, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.hook)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.hook)).bearer_auth(HOOK_TOKEN).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    pub async fn start(&self, chat: &str) -> (u16, Value) {
        self.post("/v1/typing/start", &chat_body(chat)).await
    }

    pub async fn stop(&self, chat: &str) -> (u16, Value) {
        self.post("/v1/typing/stop", &chat_body(chat)).await
    }

    /// Typing calls the mock received for `chat`, in order.
    pub fn calls(&self, chat: &str) -> Vec<Record> {
        self.mock.state().records(&RecordQuery {
            kind: Some("typing".to_owned()),
            chat: Some(chat.to_owned()),
            ..RecordQuery::default()
        })
    }

    /// Every request the mock received.
    pub fn all_requests(&self) -> Vec<Record> {
        self.mock.state().records(&RecordQuery::default())
    }

    pub fn now_ms(&self) -> f64 {
        self.mock.state().now_ms()
    }

    /// The mock's clock (`now_ms`), for tasks the test spawns.
    pub fn clock(&self) -> impl Fn() -> f64 + Send + Sync + 'static {
        let state = self.mock.state().clone();
        move || state.now_ms()
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn admin_status(&self, path: &str) -> u16 {
        self.http.get(format!("{}{path}", self.admin)).send().await.unwrap().status().as_u16()
    }

    /// Fires the shutdown trigger and waits for `run_until_stopped` to return; gives the time
    /// it took.
    pub async fn trigger_shutdown(self) -> (Duration, anyhow::Result<()>, MockUpstream) {
        let started = Instant::now();
        self.stop.cancel();
        let result = self.handle.await.unwrap();
        (started.elapsed(), result, self.mock)
    }
}

/// The value of counter/gauge `name` with exactly `labels` (e.g. `reason="idle"`), 0 if absent.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    let want = if labels.is_empty() { name.to_owned() } else { format!("{name}{{{labels}}}") };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| *series == want)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Sums every series of `name` whose labels contain all of `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| *series == name || series.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|(series, _)| parts.iter().all(|p| series.contains(p)))
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 20 ms until it is true or `timeout` passes; returns the final answer.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Gaps between consecutive receive times, in ms.
pub fn gaps(calls: &[Record]) -> Vec<f64> {
    calls.windows(2).map(|w| w[1].t_ms - w[0].t_ms).collect()
}
