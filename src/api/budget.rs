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
use crate::budget::BudgetSnapshot;
use crate::config::AccountScope;
use crate::engine::KeyRing;
use crate::ids::AccountId;
use crate::upstream::KeyIndex;

/// One budget in the answer.
#[derive(Debug, Serialize)]
pub struct BudgetView {
    /// The state.
    #[serde(flatten)]
    pub state: BudgetSnapshot,
    /// Names of the caller's usable API keys spending from it.
    pub keys: Vec<String>,
}

/// Answer of `GET /v1/budget`.
#[derive(Debug, Serialize)]
pub struct BudgetResponse {
    /// The budgets of the keys the caller may use (empty when it may use none).
    pub budgets: Vec<BudgetView>,
}

/// `GET /v1/budget`
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
            (!keys.is_empty()).then_some(BudgetView { state, keys })
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
            usable.extend(
                accounts
                    .iter()
                    .filter_map(|a| AccountId::parse_any(a).ok())
                    .filter_map(|a| keys.resolve(&a, caller.api_key)),
            );
        }
    }
    usable
}
