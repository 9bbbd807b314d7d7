//! The mock's state: its run-time configuration, the per-key sliding windows of its rate limit,
//! and the record of every request. One `std` mutex guards it; sections are short and never
//! await (the answer's delay is slept outside the lock).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::Plan;

/// A fault applied to `/api/...` requests (with probability `fault_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Accept the request and never answer.
    BlackHole,
    /// Drop the connection without an answer.
    Reset,
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer 200 with a JSON body cut in the middle.
    Truncated,
    /// Answer 200 with `_meta._rate_limits` fields of the wrong types.
    OddMeta,
    /// Answer `fault_status` (with the configured retry headers).
    Status,
}

/// The mock's run-time configuration (`POST /_mock/config` replaces it whole).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Requests per minute per API key; `null` for no limit (reported as `null`).
    pub limit_per_minute: Option<u32>,
    /// The sliding window the limit counts over (60000; tests shorten it to scale time).
    pub window_ms: u64,
    /// Delay before every answer.
    pub latency_ms: u64,
    /// Share of requests delayed by `slow_ms` instead (latency spikes).
    pub slow_rate: f64,
    /// The spike's delay.
    pub slow_ms: u64,
    /// Share of requests answered `error_status`.
    pub error_rate: f64,
    /// Status of random errors.
    pub error_status: u16,
    /// The fault in force.
    pub fault: Fault,
    /// Share of requests the fault applies to.
    pub fault_rate: f64,
    /// API keys the fault applies to; `null` for every key.
    pub fault_keys: Option<Vec<String>>,
    /// Status answered by `Fault::Status`.
    pub fault_status: u16,
    /// `Retry-After` sent with `Fault::Status`.
    pub retry_after: Option<String>,
    /// `retry-after-ms` sent with `Fault::Status`.
    pub retry_after_ms: Option<String>,
    /// Status answered for every typing call of an account.
    pub account_status: BTreeMap<String, u16>,
    /// When set, only these API keys are accepted; others get 401.
    pub valid_keys: Option<Vec<String>>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            limit_per_minute: Some(1000),
            window_ms: 60_000,
            latency_ms: 0,
            slow_rate: 0.0,
            slow_ms: 3000,
            error_rate: 0.0,
            error_status: 500,
            fault: Fault::None,
            fault_rate: 1.0,
            fault_keys: None,
            fault_status: 429,
            retry_after: None,
            retry_after_ms: None,
            account_status: BTreeMap::new(),
            valid_keys: None,
        }
    }
}

/// One request the mock received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the mock started, at receipt.
    pub t_ms: f64,
    /// `typing`, `client_session`, `authenticate`, `auth_poll`, `auth_code` or `other`.
    pub kind: String,
    /// Platform of a typing call.
    pub platform: String,
    /// Account path segment, as received (decoded); the attempt id of `auth_poll`/`auth_code`.
    pub account: String,
    /// Chat path segment, as received (decoded).
    pub chat: String,
    /// Status answered (0: none, the connection was dropped or left hanging).
    pub status: u16,
    /// First 8 hex digits of SHA-256 of the API key (the key itself is never stored).
    pub key_id: String,
}

/// Filters of `GET /_mock/requests`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RecordQuery {
    /// Only requests received at or after this many ms since start.
    pub since_ms: Option<f64>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this account.
    pub account: Option<String>,
    /// Only this chat.
    pub chat: Option<String>,
}

/// First 8 hex digits of SHA-256 of an API key: how the record names keys.
pub fn key_id(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..4])
}

#[derive(Debug)]
struct Inner {
    config: MockConfig,
    windows: HashMap<String, VecDeque<Instant>>,
    records: Vec<Record>,
}

/// The mock's state.
#[derive(Debug)]
pub struct MockState {
    started: Instant,
    inner: Mutex<Inner>,
    /// Scripted authentication attempts (`mock/accounts.rs`).
    pub attempts: super::accounts::MockAttempts,
}

impl MockState {
    /// Fresh state with `config`.
    pub fn new(config: MockConfig) -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::new(Inner { config, windows: HashMap::new(), records: Vec::new() }),
            attempts: super::accounts::MockAttempts::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Milliseconds since the mock started.
    pub fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// The configuration.
    pub fn config(&self) -> MockConfig {
        self.lock().config.clone()
    }

    /// Replaces the configuration.
    pub fn set_config(&self, c: MockConfig) {
        self.lock().config = c;
    }

    /// Forgets every record and window.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.records.clear();
        g.windows.clear();
    }

    /// Records matching `q`.
    pub fn records(&self, q: &RecordQuery) -> Vec<Record> {
        let g = self.lock();
        g.records
            .iter()
            .filter(|r| q.since_ms.is_none_or(|s| r.t_ms >= s))
            .filter(|r| q.kind.as_deref().is_none_or(|k| r.kind == k))
            .filter(|r| q.account.as_deref().is_none_or(|a| r.account == a))
            .filter(|r| q.chat.as_deref().is_none_or(|c| r.chat == c))
            .cloned()
            .collect()
    }

    /// Counts by status and kind.
    pub fn stats(&self) -> serde_json::Value {
        let g = self.lock();
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        let mut typing = 0u64;
        for r in &g.records {
            *by_status.entry(r.status.to_string()).or_default() += 1;
            if r.kind == "typing" {
                typing += 1;
            }
        }
        serde_json::json!({ "total": g.records.len(), "typing": typing, "by_status": by_status })
    }

    /// Whether the next `/api` request's connection should be dropped.
    pub(crate) fn should_reset(&self) -> bool {
        let g = self.lock();
        g.config.fault == Fault::Reset && rand::rng().random_bool(g.config.fault_rate.clamp(0.0, 1.0))
    }

    /// Records a dropped connection.
    pub(crate) fn record_reset(&self, path: &str) {
        let t_ms = self.now_ms();
        let kind = if path.ends_with("/typing") { "typing" } else { "other" };
        self.lock().records.push(Record {
            t_ms,
            kind: kind.to_owned(),
            platform: String::new(),
            account: String::new(),
            chat: String::new(),
            status: 0,
            key_id: String::new(),
        });
    }

    /// Decides the answer to one `/api` request and records it.
    pub(crate) fn admit(&self, kind: &str, platform: &str, account: String, chat: String, key: &str) -> Plan {
        let now = Instant::now();
        let t_ms = self.now_ms();
        let mut rng = rand::rng();
        let mut g = self.lock();
        let cfg = g.config.clone();
        let key_ok = cfg.valid_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key));
        // The per-minute window of this key.
        let limit = cfg.limit_per_minute;
        let period = Duration::from_millis(cfg.window_ms.max(1));
        let window = g.windows.entry(key.to_owned()).or_default();
        while window.front().is_some_and(|t| now.saturating_duration_since(*t) >= period) {
            window.pop_front();
        }
        let mut headers = Vec::new();
        let (status, mut body, remaining) = if !key_ok {
            (401, r#"{"error":"Unauthorized. Invalid API key."}"#.to_owned(), None)
        } else if limit.is_some_and(|l| window.len() >= l as usize) {
            let oldest = window.front().copied().unwrap_or(now);
            let wait = (oldest + period).saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
            headers.push(("retry-after", format!("{wait}")));
            (429, r#"{"error":"Too Many Requests"}"#.to_owned(), Some(0))
        } else {
            window.push_back(now);
            let remaining = limit.map(|l| l.saturating_sub(u32::try_from(window.len()).unwrap_or(u32::MAX)));
            match cfg.account_status.get(&account).copied().filter(|_| kind == "typing") {
                Some(s) => (s, format!(r#"{{"error":"status {s} for this account"}}"#), remaining),
                None if rng.random_bool(cfg.error_rate.clamp(0.0, 1.0)) => {
                    (cfg.error_status, r#"{"error":"Internal Server Error"}"#.to_owned(), remaining)
                }
                None => (200, r#"{"data":{"success":true}}"#.to_owned(), remaining),
            }
        };
        let meta = serde_json::json!({
            "_credits": {"used": 0, "balance": 224_907, "note": "Always"},
            "_cache": {"is_cached": false, "note": "Cache disabled for this endpoint"},
            "_rate_limits": {
                "limit_minute": limit, "remaining_minute": remaining,
                "limit_day": null, "remaining_day": null, "notice": "mock"
            }
        });
        if body.starts_with('{') {
            body.insert_str(body.len() - 1, &format!(r#","_meta":{meta}"#));
        }
        let mut status = status;
        let mut black_hole = false;
        let key_faulted = cfg.fault_keys.as_ref().is_none_or(|keys| keys.iter().any(|k| k == key));
        let faulted =
            cfg.fault != Fault::None && key_faulted && status != 429 && rng.random_bool(cfg.fault_rate.clamp(0.0, 1.0));
        if faulted {
            match cfg.fault {
                Fault::None | Fault::Reset => {}
                Fault::BlackHole => black_hole = true,
                Fault::Garbage => {
                    status = 200;
                    body = "<html>502 Bad Gateway</html>\u{0}\u{1}".to_owned();
                }
                Fault::Truncated => {
                    status = 200;
                    body = r#"{"data":{"success":true},"_meta":{"_rate_li"#.to_owned();
                }
                Fault::OddMeta => {
                    status = 200;
                    body = r#"{"data":{"success":true},"_meta":{"_rate_limits":{"limit_minute":"lots","remaining_minute":{"n":1},"limit_day":[],"remaining_day":"x"}}}"#.to_owned();
                }
                Fault::Status => {
                    status = cfg.fault_status;
                    body = format!(r#"{{"error":"forced {status}"}}"#);
                    if let Some(v) = &cfg.retry_after {
                        headers.push(("retry-after", v.clone()));
                    }
                    if let Some(v) = &cfg.retry_after_ms {
                        headers.push(("retry-after-ms", v.clone()));
                    }
                }
            }
        }
        g.records.push(Record {
            t_ms,
            kind: kind.to_owned(),
            platform: platform.to_owned(),
            account,
            chat,
            status: if black_hole { 0 } else { status },
            key_id: key_id(key),
        });
        drop(g);
        if black_hole {
            return Plan::BlackHole;
        }
        let delay = if cfg.slow_rate > 0.0 && rng.random_bool(cfg.slow_rate.clamp(0.0, 1.0)) {
            Duration::from_millis(cfg.slow_ms)
        } else {
            Duration::from_millis(cfg.latency_ms)
        };
        Plan::Answer { delay, status, body, headers }
    }
}
