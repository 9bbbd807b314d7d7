//! The operator's status page on the admin listener, for whoever has no Grafana at hand.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | one self-contained HTML page (inline CSS and JS, no external asset) that polls |
//! | `GET /status.json` | what the page shows: sessions, refire counters, budgets, paused accounts, last upstream errors |
//!
//! Everything comes from the [`Engine`](crate::engine::Engine) handle, except the refire
//! counters, which are read back from the process's own Prometheus registry so that the page
//! and `/metrics` never disagree. Rates per second are computed here, from samples of those
//! counters taken as `/status.json` is polled (at most one a second, kept [`RATE_WINDOW`]), so
//! that every viewer sees the same rate and a page that just opened has one at once.
//! Nothing here names a chat or a fan. Paused creator accounts are shown by id only to a request
//! presenting the admin token (`Authorization: Bearer`, `admin.token`); without it, or when no
//! admin token is configured, they are counts and causes only. The admin port is unauthenticated
//! for Prometheus and the kubelet (`/metrics`, `/livez`, `/readyz` stay open), so nothing
//! identifying is served there to whoever reaches it. The page takes the token from
//! `?token=` once (kept in `sessionStorage`, removed from the address bar) and sends it as a
//! bearer header.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use super::ApiState;
use crate::budget::BudgetSnapshot;
use crate::engine::RecentError;

/// How often the page polls `/status.json`, in milliseconds.
pub(super) const REFRESH_MS: u64 = 2000;
/// Rates are measured over at most this much time.
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Samples closer together than this are not kept.
const SAMPLE_SPACING: Duration = Duration::from_secs(1);

/// One sample of the refire counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    refires: f64,
    failed: f64,
}

/// Counter samples for the rates. Process-wide, like the metrics registry they are read from.
/// The `std` mutex guards a few pushes and pops and is never held across an `.await`.
static SAMPLES: Mutex<VecDeque<Sample>> = Mutex::new(VecDeque::new());

/// Answer of `GET /status.json`.
#[derive(Debug, Serialize)]
pub(super) struct StatusResponse {
    /// The crate version.
    pub(super) version: &'static str,
    /// Whether `/readyz` answers 200.
    pub(super) ready: bool,
    /// Whether the drain has started.
    pub(super) draining: bool,
    /// Live typing sessions.
    pub(super) sessions_active: usize,
    /// Typing calls on the wire.
    pub(super) in_flight: usize,
    /// `keeptyping_refires_total` summed over every label.
    pub(super) refires_total: f64,
    /// `keeptyping_refires_total` by `outcome`, summed over platforms.
    pub(super) refires_by_outcome: BTreeMap<String, f64>,
    /// Typing calls per second over the last few seconds (`null` until two samples exist).
    pub(super) refires_per_second: Option<f64>,
    /// Failed typing calls (any outcome but `ok`) per second, likewise.
    pub(super) failed_per_second: Option<f64>,
    /// `keeptyping_refires_skipped_total` summed over every reason.
    pub(super) refires_skipped_total: f64,
    /// Every budget.
    pub(super) budgets: Vec<BudgetStatus>,
    /// How many accounts are paused.
    pub(super) paused_accounts_count: usize,
    /// Whether `paused_accounts` carries account ids (the request presented the admin token).
    pub(super) account_ids_shown: bool,
    /// Accounts whose typing is paused.
    pub(super) paused_accounts: Vec<PausedAccount>,
    /// The last failed typing calls, newest first.
    pub(super) recent_errors: Vec<RecentError>,
    /// How often the page polls, in milliseconds.
    pub(super) refresh_ms: u64,
}

/// One budget on the status page.
#[derive(Debug, Serialize)]
pub(super) struct BudgetStatus {
    /// The state, as `/v1/budget` shows it.
    #[serde(flatten)]
    pub(super) state: BudgetSnapshot,
    /// Names of the API keys spending from it (names only, never the keys).
    pub(super) keys: Vec<String>,
}

/// One paused account.
#[derive(Debug, Serialize)]
pub(super) struct PausedAccount {
    /// The creator account; only for holders of the admin token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) account_id: Option<String>,
    /// Why it is paused.
    pub(super) cause: &'static str,
    /// Milliseconds until a refire probes it again.
    pub(super) probe_in_ms: u64,
}

/// `GET /`
pub(super) async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

/// `GET /status.json`
pub(super) async fn status(State(state): State<ApiState>, headers: HeaderMap) -> impl IntoResponse {
    let engine = &state.engine;
    let show_ids = presents_admin_token(state.admin_token.as_ref(), &headers);
    let now = Instant::now();
    let rendered = state.metrics.render();
    let refires = sum_by_label(&rendered, crate::metrics::REFIRES, "outcome");
    let skipped = sum_by_label(&rendered, crate::metrics::REFIRES_SKIPPED, "reason");
    let mut paused_accounts: Vec<PausedAccount> = engine
        .paused_accounts()
        .into_iter()
        .map(|(account, p)| PausedAccount {
            account_id: show_ids.then(|| account.to_string()),
            cause: p.cause.as_str(),
            probe_in_ms: u64::try_from(p.probe_at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX),
        })
        .collect();
    paused_accounts.sort_by(|a, b| (&a.account_id, a.probe_in_ms).cmp(&(&b.account_id, b.probe_in_ms)));
    let refires_total = refires.values().fold(0.0, |a, b| a + b);
    let failed = refires.iter().filter(|(outcome, _)| outcome.as_str() != "ok").fold(0.0, |a, (_, b)| a + b);
    let rates = rates(Sample { at: now, refires: refires_total, failed });
    let body = StatusResponse {
        version: env!("CARGO_PKG_VERSION"),
        ready: state.ready.load(Ordering::Acquire) && !engine.is_draining(),
        draining: engine.is_draining(),
        sessions_active: engine.active_count(),
        in_flight: engine.in_flight(),
        refires_total,
        refires_per_second: rates.map(|r| r.0),
        failed_per_second: rates.map(|r| r.1),
        refires_by_outcome: refires,
        refires_skipped_total: skipped.values().fold(0.0, |a, b| a + b),
        budgets: engine.budgets().into_iter().map(|(state, keys)| BudgetStatus { state, keys }).collect(),
        paused_accounts_count: paused_accounts.len(),
        account_ids_shown: show_ids,
        paused_accounts,
        recent_errors: engine.recent_errors(),
        refresh_ms: REFRESH_MS,
    };
    ([(header::CACHE_CONTROL, "no-store")], Json(body))
}

/// Whether `headers` carry `Authorization: Bearer <admin token>`; never without a configured
/// token. Compared as SHA-256 digests in constant time, like hook tokens.
fn presents_admin_token(admin_token: Option<&[u8; 32]>, headers: &HeaderMap) -> bool {
    let Some(want) = admin_token else { return false };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
    else {
        return false;
    };
    bool::from(crate::config::token_digest(token).ct_eq(want))
}

/// Records `current` (if the last sample is old enough) and returns the refire and failure
/// rates since the oldest sample within [`RATE_WINDOW`].
fn rates(current: Sample) -> Option<(f64, f64)> {
    // A poisoned lock only means a panic elsewhere mid-push; the samples are still usable.
    let mut samples = SAMPLES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    rates_from(&mut samples, current)
}

fn rates_from(samples: &mut VecDeque<Sample>, current: Sample) -> Option<(f64, f64)> {
    while samples.front().is_some_and(|s| current.at.saturating_duration_since(s.at) > RATE_WINDOW) {
        samples.pop_front();
    }
    let base = samples.front().copied();
    if samples.back().is_none_or(|s| current.at.saturating_duration_since(s.at) >= SAMPLE_SPACING) {
        samples.push_back(current);
    }
    let base = base?;
    let dt = current.at.saturating_duration_since(base.at).as_secs_f64();
    // A counter that went down means the registry was reset: no rate from that baseline.
    (dt >= 0.5 && current.refires >= base.refires)
        .then(|| ((current.refires - base.refires) / dt, (current.failed - base.failed).max(0.0) / dt))
}

/// Sums the samples of counter `name` in Prometheus text `text`, grouped by the value of
/// `label` (samples without it count under `""`).
fn sum_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            // `name value`, but not `name_other ...`.
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = label_value(labels, label).unwrap_or_default();
        *sums.entry(key).or_insert(0.0) += v;
    }
    sums
}

/// The value of `label` in a Prometheus label set `a="x",b="y"`. Label values written by this
/// service are bounded enums without quotes or commas.
fn label_value(labels: &str, label: &str) -> Option<String> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"').to_owned())
    })
}

/// The page: inline CSS and JS only, so it works air-gapped and behind any proxy.
const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>keeptyping status</title>
<style>
  :root { --bg:#0f1115; --fg:#e6e6e6; --mute:#8a8f98; --ok:#3fb950; --warn:#d29922; --bad:#f85149; --bar:#30363d; --acc:#58a6ff; }
  * { box-sizing: border-box; }
  body { margin:0; padding:1.2rem; background:var(--bg); color:var(--fg); font:14px/1.4 system-ui, sans-serif; }
  h1 { font-size:1.2rem; margin:0 0 .2rem; }
  h2 { font-size:1rem; margin:1.4rem 0 .5rem; color:var(--mute); text-transform:uppercase; letter-spacing:.05em; }
  .sub { color:var(--mute); }
  .tiles { display:flex; flex-wrap:wrap; gap:.8rem; margin-top:1rem; }
  .tile { background:#161b22; border:1px solid var(--bar); border-radius:6px; padding:.7rem 1rem; min-width:10rem; }
  .tile .v { font-size:1.8rem; font-variant-numeric:tabular-nums; }
  .tile .l { color:var(--mute); }
  table { border-collapse:collapse; width:100%; max-width:60rem; }
  th, td { text-align:left; padding:.3rem .6rem; border-bottom:1px solid var(--bar); font-variant-numeric:tabular-nums; }
  th { color:var(--mute); font-weight:normal; }
  .bar { position:relative; height:.9rem; width:14rem; background:var(--bar); border-radius:3px; overflow:hidden; }
  .bar > span { position:absolute; left:0; top:0; bottom:0; background:var(--acc); }
  .bar.rem > span { background:var(--ok); }
  .ok { color:var(--ok); } .warn { color:var(--warn); } .bad { color:var(--bad); }
  .empty { color:var(--mute); font-style:italic; }
</style>
</head>
<body>
<h1>keeptyping <span id="version" class="sub"></span></h1>
<div class="sub"><span id="state">loading…</span> · updated <span id="updated">never</span> · refreshes every <span id="refresh">2</span> s</div>
<div class="tiles">
  <div class="tile"><div class="v" id="sessions">–</div><div class="l">active sessions</div></div>
  <div class="tile"><div class="v" id="rate">–</div><div class="l">refires / s</div></div>
  <div class="tile"><div class="v" id="errrate">–</div><div class="l">failed refires / s</div></div>
  <div class="tile"><div class="v" id="inflight">–</div><div class="l">typing calls in flight</div></div>
  <div class="tile"><div class="v" id="refires">–</div><div class="l">refires since start</div></div>
</div>
<h2>Budgets</h2>
<table>
  <thead><tr><th>budget</th><th>keys</th><th>tokens</th><th>typing used / allowed per min</th><th>upstream remaining / limit per min</th><th>fans</th><th>state</th></tr></thead>
  <tbody id="budgets"></tbody>
</table>
<h2>Paused accounts <span id="pausedcount" class="sub"></span></h2>
<table>
  <thead><tr><th>account</th><th>cause</th><th>probed again in</th></tr></thead>
  <tbody id="paused"></tbody>
</table>
<h2>Last upstream errors</h2>
<table>
  <thead><tr><th>time</th><th>platform</th><th>outcome</th><th>HTTP status</th></tr></thead>
  <tbody id="errors"></tbody>
</table>
<script>
"use strict";
let refreshMs = 2000;
const $ = (id) => document.getElementById(id);
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
function bar(value, max, cls) {
  const td = document.createElement("td");
  const b = document.createElement("div"); b.className = "bar" + (cls ? " " + cls : "");
  const s = document.createElement("span");
  const pct = max > 0 ? Math.max(0, Math.min(100, 100 * value / max)) : 0;
  s.style.width = pct.toFixed(1) + "%"; b.appendChild(s);
  const label = document.createElement("div"); label.className = "sub";
  label.textContent = value === null ? "not reported yet" : Math.round(value) + " / " + Math.round(max);
  td.appendChild(b); td.appendChild(label); return td;
}
function fill(id, rows, cols, empty) {
  const body = $(id); body.replaceChildren();
  if (rows.length === 0) { const tr = document.createElement("tr"); tr.appendChild(cell(empty, "empty")).colSpan = cols; body.appendChild(tr); return; }
  for (const r of rows) { const tr = document.createElement("tr"); for (const c of r) tr.appendChild(c); body.appendChild(tr); }
}
function render(s) {
  $("version").textContent = "v" + s.version;
  $("state").textContent = s.draining ? "draining" : (s.ready ? "ready" : "not ready");
  $("state").className = s.draining ? "warn" : (s.ready ? "ok" : "bad");
  $("sessions").textContent = s.sessions_active;
  $("inflight").textContent = s.in_flight;
  $("refires").textContent = Math.round(s.refires_total);
  $("rate").textContent = s.refires_per_second === null ? "–" : s.refires_per_second.toFixed(2);
  $("errrate").textContent = s.failed_per_second === null ? "–" : s.failed_per_second.toFixed(2);
  fill("budgets", s.budgets.map((b) => {
    const st = b.paused ? ["paused (" + (b.pause_reason || "") + ", " + Math.ceil((b.paused_for_ms || 0) / 1000) + " s)", "bad"] : ["typing", "ok"];
    return [cell(b.name), cell(b.keys.join(", ") || "–"), cell(b.tokens.toFixed(1)),
      bar(b.sent_last_minute, b.typing_per_minute),
      bar(b.remaining_minute, b.limit_per_minute, "rem"),
      cell(Math.floor(b.capacity_fans)), cell(st[0], st[1])];
  }), 7, "no budget");
  $("pausedcount").textContent = "(" + s.paused_accounts_count + (s.account_ids_shown ? ")" : "; ids need the admin token: open this page with ?token=...)");
  fill("paused", s.paused_accounts.map((p) => [cell(p.account_id || "hidden", p.account_id ? "" : "empty"), cell(p.cause, "warn"), cell(Math.ceil(p.probe_in_ms / 1000) + " s")]), 3, "none");
  fill("errors", s.recent_errors.map((e) => [cell(new Date(e.at_unix_ms).toISOString().replace("T", " ").replace("Z", " UTC")), cell(e.platform), cell(e.outcome, "bad"), cell(e.status === null ? "–" : String(e.status))]), 4, "none");
  $("updated").textContent = new Date().toLocaleTimeString();
  refreshMs = s.refresh_ms || refreshMs;
  $("refresh").textContent = (refreshMs / 1000).toString();
}
// The admin token: from ?token= once, then kept for this tab only and removed from the address bar.
const params = new URLSearchParams(location.search);
if (params.has("token")) {
  sessionStorage.setItem("keeptyping-admin-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const adminToken = sessionStorage.getItem("keeptyping-admin-token");
async function poll() {
  try {
    const headers = adminToken ? { "Authorization": "Bearer " + adminToken } : {};
    const r = await fetch("status.json", { cache: "no-store", headers });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    $("state").textContent = "unreachable (" + e.message + ")"; $("state").className = "bad";
  } finally {
    setTimeout(poll, refreshMs);
  }
}
poll();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP keeptyping_refires_total Typing calls made to the upstream, by platform and outcome.
# TYPE keeptyping_refires_total counter
keeptyping_refires_total{platform=\"onlyfans\",outcome=\"ok\"} 40
keeptyping_refires_total{platform=\"fansly\",outcome=\"ok\"} 2
keeptyping_refires_total{platform=\"onlyfans\",outcome=\"server_error\"} 3
keeptyping_refires_skipped_total{reason=\"budget\"} 7
";

    #[test]
    fn refire_counters_are_summed_by_outcome_across_platforms() {
        let sums = sum_by_label(TEXT, "keeptyping_refires_total", "outcome");

        assert_eq!(sums.get("ok"), Some(&42.0));
        assert_eq!(sums.get("server_error"), Some(&3.0));
        assert_eq!(sums.len(), 2, "the skipped counter is another family");
    }

    #[test]
    fn rates_come_from_the_oldest_sample_in_the_window() {
        let t0 = Instant::now();
        let at = |secs: u64, refires: f64, failed: f64| Sample { at: t0 + Duration::from_secs(secs), refires, failed };
        let mut samples = VecDeque::new();

        assert_eq!(rates_from(&mut samples, at(0, 0.0, 0.0)), None);
        assert_eq!(rates_from(&mut samples, at(2, 10.0, 1.0)), Some((5.0, 0.5)));
        assert_eq!(rates_from(&mut samples, at(4, 30.0, 1.0)), Some((7.5, 0.25)));
        // 20 s later every sample is out of the window: no rate until the next poll.
        assert_eq!(rates_from(&mut samples, at(24, 100.0, 1.0)), None);
        assert_eq!(rates_from(&mut samples, at(26, 104.0, 1.0)), Some((2.0, 0.0)));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "src=", "href=", "@import"] {
            assert!(!PAGE.contains(needle), "page references {needle}");
        }
    }
}
