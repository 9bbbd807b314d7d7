//! The operator's status page on the admin listener, for whoever has no Grafana at hand.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | one self-contained HTML page (inline CSS and JS, no external asset) that polls |
//! | `GET /status.json` | what the page shows: sessions, refire counters, budgets, paused accounts, last upstream errors |
//!
//! Everything comes from the state the numbers are made of: sessions, calls in flight, budgets
//! (with their lit and waiting sessions), paused accounts and recent errors from the
//! [`Engine`](crate::engine::Engine) handle; the refire counters from
//! [`metrics::refire_counts`](crate::metrics::refire_counts), counted where the Prometheus
//! counters are recorded. Nothing parses `/metrics` back. Rates per second are computed here,
//! from samples of those counters taken as `/status.json` is polled (at most one a second, kept
//! [`RATE_WINDOW`]), so that every viewer sees the same rate and a page that just opened has one
//! at once. The page itself (HTML, CSS, JS) is `status.html`, compiled in.
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
use super::budget::BudgetView;
use crate::engine::RecentError;
use crate::metrics;

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
    /// Live typing sessions (on this replica).
    pub(super) sessions_active: usize,
    /// The state backend: `memory`, or `redis` with this replica's id, the replicas seen and
    /// the shards this one owns.
    pub(super) state: crate::state::StateView,
    /// Typing calls on the wire.
    pub(super) in_flight: usize,
    /// Typing calls since start (`keeptyping_refires_total` summed over every label).
    pub(super) refires_total: u64,
    /// Typing calls by `outcome`, summed over platforms.
    pub(super) refires_by_outcome: BTreeMap<&'static str, u64>,
    /// Typing calls per second over the last few seconds (`null` until two samples exist).
    pub(super) refires_per_second: Option<f64>,
    /// Failed typing calls (any outcome but `ok`) per second, likewise.
    pub(super) failed_per_second: Option<f64>,
    /// Due refires not sent (`keeptyping_refires_skipped_total` summed over every reason).
    pub(super) refires_skipped_total: u64,
    /// Every budget, with its lit and waiting sessions and all its keys.
    pub(super) budgets: Vec<BudgetView>,
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
    let counts = metrics::refire_counts();
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
    let refires_total = counts.total();
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52; rates are shown to two decimals")]
    let rates = rates(Sample { at: now, refires: refires_total as f64, failed: counts.failed() as f64 });
    let body = StatusResponse {
        version: env!("CARGO_PKG_VERSION"),
        ready: state.ready.load(Ordering::Acquire) && !engine.is_draining(),
        draining: engine.is_draining(),
        sessions_active: engine.active_count(),
        state: state.backend.view(),
        in_flight: engine.in_flight(),
        refires_total,
        refires_per_second: rates.map(|r| r.0),
        failed_per_second: rates.map(|r| r.1),
        refires_skipped_total: counts.skipped,
        refires_by_outcome: counts.by_outcome,
        budgets: engine.budgets().into_iter().map(|(state, keys)| BudgetView::new(state, keys)).collect(),
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

/// The page (`status.html`): inline CSS and JS only, so it works air-gapped and behind any
/// proxy.
const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

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
