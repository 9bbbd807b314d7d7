//! The harness: the mock upstream and N `keeptyping serve` replicas on one Redis (or cluster),
//! each a child process with its own hook and admin ports and its log in the test's directory;
//! the hooks sent to a chosen replica, timed on the mock's clock; the mock's record read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::checker::Call;
use crate::child::{self, Kill, free_port};
use crate::servers::Redis;

pub const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
pub const API_KEY: &str = "replicas-api-key-3c9e";
pub const HOOK_TOKEN: &str = "replicas-hook-token-7a21";
/// Virtual shards of the Redis backend (its contract).
pub const SHARDS: usize = 32;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test at a time in this binary: each runs several processes and measures time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A directory for one test's Redis data and logs; removed when the test passes, kept (and
/// named on stderr) when it fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kt-replicas-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Timing settings shared by every replica of a fleet.
#[derive(Debug, Clone)]
pub struct Params {
    pub interval_ms: u64,
    pub lifetime_ms: u64,
    pub lease_ms: u64,
    pub upstream_timeout_ms: u64,
    /// Further `KEEPTYPING__...` settings.
    pub env: Vec<(String, String)>,
}

impl Default for Params {
    /// Refires every second (indicator 1.4 s) and a 1 s state lease: the tests stay short.
    fn default() -> Self {
        Self { interval_ms: 1000, lifetime_ms: 1400, lease_ms: 1000, upstream_timeout_ms: 500, env: Vec::new() }
    }
}

impl Params {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// The mock's clock as seen from the test: `Instant`s mapped to the record's `t_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    offset_ms: f64,
}

impl Clock {
    /// Reads `/_mock/now` a few times and keeps the reading with the shortest round trip.
    pub async fn calibrate(http: &reqwest::Client, mock: &str) -> Self {
        let base = Instant::now();
        let mut best = (f64::MAX, 0.0);
        for _ in 0..15 {
            let sent = base.elapsed().as_secs_f64() * 1000.0;
            let body: Value = http.get(format!("{mock}/_mock/now")).send().await.unwrap().json().await.unwrap();
            let got = base.elapsed().as_secs_f64() * 1000.0;
            let now = body["now_ms"].as_f64().unwrap();
            if got - sent < best.0 {
                best = (got - sent, now - (sent + got) / 2.0);
            }
        }
        Self { base, offset_ms: best.1 }
    }

    /// `at` on the mock's clock (ms).
    pub fn at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.base).as_secs_f64() * 1000.0 + self.offset_ms
    }

    pub fn now(&self) -> f64 {
        self.at(Instant::now())
    }

    /// `t` (mock ms) as wall-clock time, to find it in the replicas' logs.
    pub fn wall(&self, t: f64) -> String {
        let ago = Duration::from_secs_f64(((self.now() - t) / 1000.0).max(0.0));
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - ago).to_string()
    }
}

/// One hook answer, timed.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 0: no answer (refused, reset or timed out).
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    /// Sent and answered, on the mock's clock.
    pub sent: f64,
    pub at: f64,
}

impl Answer {
    pub fn took_ms(&self) -> f64 {
        self.at - self.sent
    }

    pub fn outcome(&self) -> &str {
        self.body["outcome"].as_str().unwrap_or("")
    }

    /// `error.code`, or `error` when it is a plain string.
    pub fn error_code(&self) -> Option<String> {
        let e = &self.body["error"];
        e["code"].as_str().or(e.as_str()).map(str::to_owned)
    }

    /// What must be identical to one process: status, outcome, reason, holders, error code,
    /// the session named, the cadence and lease.
    pub fn comparable(&self) -> Value {
        let b = &self.body;
        let one = |b: &Value| {
            json!({
                "outcome": b["outcome"], "reason": b["reason"], "holders": b["holders"],
                "session": b["session"], "refire_interval_ms": b["refire_interval_ms"],
                "lease_ms": b["lease_ms"], "error": b["error"]["code"].as_str().or(b["error"].as_str()),
            })
        };
        let results: Vec<Value> = b["results"].as_array().map(|r| r.iter().map(one).collect()).unwrap_or_default();
        json!({ "status": self.status, "answer": one(b), "results": results })
    }
}

/// The hook side of a fleet, cheap to clone into tasks.
#[derive(Clone)]
pub struct Hooks {
    pub http: reqwest::Client,
    pub urls: Vec<String>,
    pub clock: Clock,
}

impl Hooks {
    pub async fn post(&self, replica: usize, path: &str, body: &Value) -> Answer {
        self.post_timeout(replica, path, body, Duration::from_secs(5)).await
    }

    pub async fn post_timeout(&self, replica: usize, path: &str, body: &Value, timeout: Duration) -> Answer {
        let sent = self.clock.now();
        let resp = self
            .http
            .post(format!("{}{path}", self.urls[replica]))
            .bearer_auth(HOOK_TOKEN)
            .timeout(timeout)
            .json(body)
            .send()
            .await;
        match resp {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = resp.json::<Value>().await.unwrap_or(Value::Null);
                Answer { status, body, retry_after, sent, at: self.clock.now() }
            }
            Err(_) => Answer { status: 0, body: Value::Null, retry_after: None, sent, at: self.clock.now() },
        }
    }

    /// `GET path` on a replica's hook API with the hook token.
    pub async fn get(&self, replica: usize, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.urls[replica])).bearer_auth(HOOK_TOKEN).send().await;
        match resp {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub async fn start(&self, replica: usize, chat: &str) -> Answer {
        self.post(replica, "/v1/typing/start", &chat_body(chat)).await
    }

    pub async fn stop(&self, replica: usize, chat: &str) -> Answer {
        self.post(replica, "/v1/typing/stop", &chat_body(chat)).await
    }

    /// Starts `chats` with one batch per `per_batch` chats, the batches dealt round-robin over
    /// the replicas; every event must answer `started`.
    pub async fn start_all(&self, chats: &[String]) {
        for (n, chunk) in chats.chunks(200).enumerate() {
            let events: Vec<Value> =
                chunk.iter().map(|c| json!({"action": "start", "account_id": ACCOUNT, "chat_id": c})).collect();
            let replica = n % self.urls.len();
            let a = self.post(replica, "/v1/typing/batch", &json!({ "events": events })).await;
            assert_eq!(a.status, 200, "batch start on replica {replica}: {}", a.body);
            let results = a.body["results"].as_array().unwrap();
            assert!(results.iter().all(|r| r["outcome"] == "started"), "batch start on replica {replica}: {}", a.body);
        }
    }
}

/// `keeptyping mock-upstream` with no rate limit on a free port, its stderr kept in `dir`
/// (as `tests/child` starts it, but a test here can tell afterwards how it ended).
async fn mock(http: &reqwest::Client, dir: &Path) -> (Kill, String) {
    for _ in 0..3 {
        let port = free_port();
        let log = std::fs::File::create(dir.join("mock.log")).unwrap();
        let mut child = Kill(
            Command::new(child::BIN)
                .args(["mock-upstream", "--listen", &format!("127.0.0.1:{port}"), "--limit-per-minute", "0"])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if http.get(format!("{url}/_mock/stats")).send().await.is_ok_and(|r| r.status().is_success()) {
                return (child, url);
            }
            if child.0.try_wait().unwrap().is_some() {
                break; // its port was taken: another one
            }
            assert!(Instant::now() < deadline, "the mock upstream did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the mock upstream could not bind a free port three times");
}

pub fn chat_body(chat: &str) -> Value {
    json!({ "account_id": ACCOUNT, "chat_id": chat })
}

/// `n` chat ids from `first` on.
pub fn chats(first: u64, n: usize) -> Vec<String> {
    (0..n as u64).map(|i| (first + i).to_string()).collect()
}

pub struct Replica {
    pub id: String,
    pub hook: String,
    pub admin: String,
    pub child: Option<Kill>,
    pub log: PathBuf,
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().0.id()
    }
}

/// The mock and the replicas.
pub struct Fleet {
    pub http: reqwest::Client,
    pub mock_url: String,
    mock: Kill,
    pub redis_url: String,
    pub cluster: bool,
    pub replicas: Vec<Replica>,
    pub params: Params,
    pub clock: Clock,
    dir: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.mock.0.try_wait() {
                Ok(Some(status)) => eprintln!("--- the mock upstream had exited: {status}"),
                Ok(None) => {}
                Err(e) => eprintln!("--- the mock upstream: {e}"),
            }
            match self.mock.0.try_wait() {
                Ok(Some(status)) => eprintln!("--- the mock upstream had exited: {status}"),
                Ok(None) => {}
                Err(e) => eprintln!("--- the mock upstream: {e}"),
            }
            for r in &self.replicas {
                let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("--- {} ({}), last lines:", r.id, r.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Fleet {
    /// The mock, then `n` replicas `r0..` on `redis`, each ready.
    pub async fn start(redis: &Redis, dir: &Path, n: usize, params: Params) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (mock, mock_url) = mock(&http, dir).await;
        let clock = Clock::calibrate(&http, &mock_url).await;
        // The figures the tests print depend on what else the machine is doing.
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        eprintln!("load average at start: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
        let mut fleet = Self {
            http,
            mock_url,
            mock,
            redis_url: redis.url(),
            cluster: redis.is_cluster(),
            replicas: Vec::new(),
            params,
            clock,
            dir: dir.to_owned(),
        };
        for i in 0..n {
            fleet.spawn(&format!("r{i}"));
        }
        for i in 0..n {
            fleet.wait_ready(i).await;
        }
        fleet
    }

    fn command(&self, id: &str, hook_port: u16, admin_port: u16) -> Command {
        let p = &self.params;
        let mut cmd = child::serve(hook_port, admin_port, &self.mock_url, API_KEY, HOOK_TOKEN);
        cmd.env("KEEPTYPING__STATE__BACKEND", "redis")
            .env("KEEPTYPING_REDIS_URL", &self.redis_url)
            .env("KEEPTYPING__STATE__LEASE", format!("{}ms", p.lease_ms))
            .env("KEEPTYPING_REPLICA_ID", id)
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "0")
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", format!("{}ms", p.interval_ms))
            .env("KEEPTYPING__PLATFORMS__ONLYFANS__INDICATOR_LIFETIME", format!("{}ms", p.lifetime_ms))
            .env("KEEPTYPING__UPSTREAM__TIMEOUT", format!("{}ms", p.upstream_timeout_ms))
            .env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "60s")
            .env("KEEPTYPING__SHUTDOWN__GRACE", "5s")
            .env("RUST_LOG", std::env::var("KT_REPLICA_LOG").unwrap_or_else(|_| "info".to_owned()))
            .env("NO_COLOR", "1");
        if self.cluster {
            cmd.env("KEEPTYPING__STATE__CLUSTER", "true");
        }
        for (k, v) in &p.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns replica `id` on fresh ports; it is the last of `replicas`.
    pub fn spawn(&mut self, id: &str) -> usize {
        let (hook_port, admin_port) = (free_port(), free_port());
        let log = self.dir.join(format!("{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = self.command(id, hook_port, admin_port).stderr(file).spawn().unwrap();
        self.replicas.push(Replica {
            id: id.to_owned(),
            hook: format!("http://127.0.0.1:{hook_port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            child: Some(Kill(child)),
            log,
        });
        self.replicas.len() - 1
    }

    /// Replaces replica `i` (already exited) by a new process `id` on fresh ports.
    pub fn respawn(&mut self, i: usize, id: &str) {
        let new = self.spawn(id);
        let r = self.replicas.remove(new);
        self.replicas[i] = r;
    }

    /// Waits up to 20 s for `/readyz` of replica `i`; fails with its log if it exits.
    pub async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut tries = 0;
        loop {
            let url = format!("{}/readyz", self.replicas[i].admin);
            if self.http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            let r = &mut self.replicas[i];
            if let Some(status) = r.child.as_mut().and_then(|c| c.0.try_wait().unwrap()) {
                let log = std::fs::read_to_string(&r.log).unwrap_or_default();
                // A free port can be taken between choosing and binding it (by an outgoing
                // connection's ephemeral port): try other ports.
                if log.contains("Address already in use") && tries < 3 {
                    tries += 1;
                    let id = r.id.clone();
                    eprintln!("replica {id}: a port was taken before it bound it; starting it on other ports");
                    self.respawn(i, &id);
                    continue;
                }
                panic!("replica {} exited before it was ready ({status}):\n{log}", r.id);
            }
            assert!(Instant::now() < deadline, "replica {} was not ready within 20 s", self.replicas[i].id);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn hooks(&self) -> Hooks {
        Hooks {
            http: self.http.clone(),
            urls: self.replicas.iter().map(|r| r.hook.clone()).collect(),
            clock: self.clock,
        }
    }

    /// Typing calls the mock received at or after `since` (mock ms).
    pub async fn calls(&self, since: f64) -> Vec<Call> {
        let resp =
            self.http.get(format!("{}/_mock/requests.tsv?kind=typing&since_ms={since}", self.mock_url)).send().await;
        let text = match resp {
            Ok(r) => r.text().await.unwrap(),
            Err(e) => panic!("the mock's record cannot be read ({e}); the mock: {:?}", self.mock_exit()),
        };
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some(Call {
                    t: f.first()?.parse().ok()?,
                    chat: (*f.get(4)?).to_owned(),
                    status: f.get(5)?.parse().ok()?,
                })
            })
            .collect()
    }

    /// How the mock process ended, if it did (killed by a signal, or exited).
    pub fn mock_exit(&self) -> Option<String> {
        let pid = self.mock.0.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        match status {
            Some(s) if !s.contains(") Z ") => None,
            _ => Some(format!("pid {pid} is gone or a zombie")),
        }
    }

    /// Typing calls the mock received so far (a cheap count).
    pub async fn typing_total(&self) -> u64 {
        let stats: Value =
            self.http.get(format!("{}/_mock/stats", self.mock_url)).send().await.unwrap().json().await.unwrap();
        stats["typing"].as_u64().unwrap()
    }

    /// `kill -<sig> <pid>` of replica `i`.
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.replicas[i].pid().to_string();
        let ok = Command::new("kill").args([&format!("-{sig}"), &pid]).status().unwrap();
        assert!(ok.success(), "kill -{sig} {pid}");
    }

    /// SIGKILL of replica `i`, reaped.
    pub fn kill9(&mut self, i: usize) {
        drop(self.replicas[i].child.take());
    }

    /// SIGTERM to replica `i`; waits up to `within` for it to exit and gives its status and how
    /// long it took.
    pub async fn sigterm(&mut self, i: usize, within: Duration) -> (ExitStatus, Duration) {
        self.signal(i, "TERM");
        let sent = Instant::now();
        loop {
            let r = &mut self.replicas[i];
            if let Some(status) = r.child.as_mut().unwrap().0.try_wait().unwrap() {
                r.child = None;
                return (status, sent.elapsed());
            }
            assert!(sent.elapsed() < within, "replica {} still running {within:?} after SIGTERM", r.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn admin_get(&self, i: usize, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.replicas[i].admin)).timeout(Duration::from_secs(2)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// Waits up to `within` until the live replicas together own every shard, each owns some
    /// and sees `expect` replicas; gives the last `state` objects.
    pub async fn wait_shards_settled(&self, live: &[usize], expect: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let mut states = Vec::new();
            for &i in live {
                // A replica busy starting may miss one poll: it counts as not settled yet.
                let (status, text) = self.admin_get(i, "/status.json").await;
                let body: Value =
                    if status == 200 { serde_json::from_str(&text).unwrap_or_default() } else { Value::Null };
                states.push(body["state"].clone());
            }
            let owned: u64 = states.iter().filter_map(|s| s["shards_owned"].as_u64()).sum();
            let seen = states.iter().all(|s| s["replicas"].as_u64() == Some(expect as u64));
            // Shards move to the replica that should own them gradually: settled when each
            // live replica owns some.
            let spread = states.iter().all(|s| s["shards_owned"].as_u64().is_some_and(|n| n > 0));
            if owned == SHARDS as u64 && seen && spread {
                return states;
            }
            assert!(
                Instant::now() < deadline,
                "shards not settled within {within:?}: {owned} of {SHARDS} owned, states {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `name` summed over the live replicas, by the value of `label` (e.g. skipped refires by
    /// reason); zero series left out.
    pub async fn metric_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for i in 0..self.replicas.len() {
            if self.replicas[i].child.is_none() {
                continue;
            }
            let (_, text) = self.admin_get(i, "/metrics").await;
            for line in text.lines().filter(|l| l.starts_with(name)) {
                let Some((series, value)) = line.rsplit_once(' ') else { continue };
                if series != name && !series.starts_with(&format!("{name}{{")) {
                    continue;
                }
                let key = series
                    .split_once(&format!("{label}=\""))
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map_or_else(String::new, |(v, _)| v.to_owned());
                *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        out.retain(|_, v| *v > 0.0);
        out
    }

    /// No replica logged a panic, and every replica that should run still does.
    pub fn assert_no_panics(&mut self) {
        for r in &mut self.replicas {
            let log = std::fs::read_to_string(&r.log).unwrap_or_default();
            let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked")).take(5).collect();
            assert!(panics.is_empty(), "replica {} panicked: {panics:?}", r.id);
            if let Some(c) = r.child.as_mut() {
                assert!(c.0.try_wait().unwrap().is_none(), "replica {} exited on its own", r.id);
            }
        }
    }
}

/// Which replica owns each chat, read from Redis by the backend's key layout: the shard whose
/// session registry (`kt:{sN}:sessions`) names the chat, and that shard's owner in
/// `kt:{ctl}:owners`. Chats it cannot place are left out (an empty map when the layout does
/// not show owners).
pub async fn owners(redis: &Redis, chats: &[String]) -> BTreeMap<String, String> {
    let table = redis.cli(&["HGETALL", "kt:{ctl}:owners"]).await;
    let lines: Vec<&str> = table.lines().collect();
    let mut shard_owner: BTreeMap<usize, String> = BTreeMap::new();
    for pair in lines.chunks(2) {
        if let [shard, owner] = pair {
            let digits: String = shard.chars().filter(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                shard_owner.insert(n, (*owner).to_owned());
            }
        }
    }
    let mut map = BTreeMap::new();
    for n in 0..SHARDS {
        let fields = redis.cli(&["HKEYS", &format!("kt:{{s{n}}}:sessions")]).await;
        for field in fields.lines() {
            let tokens: Vec<&str> = field.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
            if let Some(chat) = chats.iter().find(|c| tokens.contains(&c.as_str())) {
                if let Some(owner) = shard_owner.get(&n) {
                    map.insert(chat.clone(), owner.clone());
                }
            }
        }
    }
    map
}
