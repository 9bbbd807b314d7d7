//! `GET /v1/budget`: every budget's limit, upstream-reported remaining count, local tokens,
//! pause, and how many fans it can keep fully lit.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use super::auth::Caller;
use crate::budget::BudgetSnapshot;

/// One budget in the answer.
#[derive(Debug, Serialize)]
pub struct BudgetView {
    /// The state.
    #[serde(flatten)]
    pub state: BudgetSnapshot,
    /// Names of the API keys spending from it.
    pub keys: Vec<String>,
}

/// Answer of `GET /v1/budget`.
#[derive(Debug, Serialize)]
pub struct BudgetResponse {
    /// Every budget.
    pub budgets: Vec<BudgetView>,
}

/// `GET /v1/budget`
pub async fn budget(State(state): State<ApiState>, _caller: Caller) -> Json<BudgetResponse> {
    let budgets = state.engine.budgets().into_iter().map(|(state, keys)| BudgetView { state, keys }).collect();
    Json(BudgetResponse { budgets })
}
