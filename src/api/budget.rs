//! `GET /v1/budget`: the budgets of the keys the caller's token may use, each with its limit,
//! upstream-reported remaining count, local tokens, pause, and how many fans it can keep fully
//! lit. Budgets, and key names, that only other tenants' keys spend from are not shown: a
//! tenant learns nothing of another's traffic or key names here.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use super::auth::Caller;
use super::error::{ServiceUnavailable, TooManyRequests, Unauthorized};
use super::openapi::TYPING_TAG;
use crate::budget::{self, BudgetSnapshot};
use crate::config::AccountScope;
use crate::engine::KeyRing;
use crate::upstream::KeyIndex;

/// One budget in the answer: its state, and the caller's keys spending from it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetView {
    /// The budget name.
    pub name: String,
    /// The per-minute limit in force.
    pub limit_per_minute: u32,
    /// Where that limit comes from.
    pub limit_source: LimitSource,
    /// `remaining_minute` as the upstream last reported it.
    pub remaining_minute: Option<u32>,
    /// `typing_share x limit`.
    pub typing_per_minute: f64,
    /// The typing rate after the headroom cap.
    pub effective_typing_per_minute: f64,
    /// Tokens in the bucket.
    pub tokens: f64,
    /// Typing calls granted in the last minute.
    pub sent_last_minute: usize,
    /// Whether typing is paused.
    pub paused: bool,
    /// How much longer the pause lasts, in milliseconds.
    pub paused_for_ms: Option<u64>,
    /// What paused it.
    pub pause_reason: Option<PauseReason>,
    /// Fans the budget can keep fully lit at the OnlyFans cadence right now.
    pub capacity_fans: f64,
    /// Sessions holding a lit slot.
    pub sessions_lit: usize,
    /// Sessions waiting for a slot (refired from what is left).
    pub sessions_waiting: usize,
    /// First indicators paid in the last minute.
    pub first_indicators_last_minute: usize,
    /// `limit_day`, when the upstream reports a number.
    pub limit_day: Option<u32>,
    /// `remaining_day`, when the upstream reports a number.
    pub remaining_day: Option<u32>,
    /// Names of the API keys spending from it (the caller's usable ones on `/v1/budget`).
    pub keys: Vec<String>,
}

/// Where a budget's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    /// Reported by the upstream's `limit_minute`.
    Upstream,
    /// Configured, until the upstream reports one.
    Config,
}

/// What paused a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// The upstream answered 429.
    RateLimited,
    /// `remaining_minute` reached the reserve.
    Reserve,
    /// `remaining_day` reached the reserve share of `limit_day`.
    DailyReserve,
}

impl From<budget::PauseReason> for PauseReason {
    fn from(r: budget::PauseReason) -> Self {
        match r {
            budget::PauseReason::RateLimited => Self::RateLimited,
            budget::PauseReason::Reserve => Self::Reserve,
            budget::PauseReason::DailyReserve => Self::DailyReserve,
        }
    }
}

impl BudgetView {
    /// The answer for `snapshot`, listing `keys`.
    pub fn new(snapshot: BudgetSnapshot, keys: Vec<String>) -> Self {
        // Destructured without `..`: a field the budget adds fails here until it is answered
        // (and so documented) or deliberately dropped.
        let BudgetSnapshot {
            name,
            limit_per_minute,
            limit_source,
            remaining_minute,
            typing_per_minute,
            effective_typing_per_minute,
            tokens,
            sent_last_minute,
            paused,
            paused_for_ms,
            pause_reason,
            capacity_fans,
            sessions_lit,
            sessions_waiting,
            first_indicators_last_minute,
            limit_day,
            remaining_day,
        } = snapshot;
        Self {
            name,
            limit_per_minute,
            // The budget names exactly these two sources.
            limit_source: if limit_source == "upstream" { LimitSource::Upstream } else { LimitSource::Config },
            remaining_minute,
            typing_per_minute,
            effective_typing_per_minute,
            tokens,
            sent_last_minute,
            paused,
            paused_for_ms,
            pause_reason: pause_reason.map(PauseReason::from),
            capacity_fans,
            sessions_lit,
            sessions_waiting,
            first_indicators_last_minute,
            limit_day,
            remaining_day,
            keys,
        }
    }
}

/// Answer of `GET /v1/budget`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BudgetResponse {
    /// The budgets of the keys the caller may use (empty when it may use none).
    pub budgets: Vec<BudgetView>,
}

/// `GET /v1/budget`
#[utoipa::path(
    get,
    path = "/v1/budget",
    operation_id = "getBudget",
    summary = "The state of the budgets the caller's keys spend from",
    tag = TYPING_TAG,
    security(("hook_token" = [])),
    responses(
        (status = 200, description = "The caller's budgets", body = BudgetResponse),
        Unauthorized, TooManyRequests, ServiceUnavailable,
    )
)]
pub async fn budget(State(state): State<ApiState>, caller: Caller) -> Json<BudgetResponse> {
    let keys = state.engine.keys();
    let usable: BTreeSet<&str> =
        usable_keys(keys, &caller).into_iter().filter_map(|i| keys.get(i)).map(|k| k.name.as_str()).collect();
    let budgets = state
        .engine
        .budgets()
        .into_iter()
        .filter_map(|(state, names)| {
            let keys: Vec<String> = names.into_iter().filter(|n| usable.contains(n.as_str())).collect();
            (!keys.is_empty()).then(|| BudgetView::new(state, keys))
        })
        .collect();
    Json(BudgetResponse { budgets })
}

/// The keys the caller's calls may spend from: the key it names, and the key each of its
/// accounts resolves to (every key when it may touch every account).
pub(crate) fn usable_keys(keys: &KeyRing, caller: &Caller) -> BTreeSet<KeyIndex> {
    let mut usable: BTreeSet<KeyIndex> = caller.api_key.into_iter().collect();
    match caller.accounts.as_ref() {
        AccountScope::All => usable.extend(0..keys.entries().len()),
        AccountScope::Only(accounts) => {
            usable.extend(accounts.iter().filter_map(|a| keys.resolve(a, caller.api_key)));
        }
    }
    usable
}
