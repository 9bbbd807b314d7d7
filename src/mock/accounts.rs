//! The mock's account endpoints: client sessions and scripted authentication attempts.
//!
//! - `POST /api/client-sessions` answers `data.token` (`ofapi_cs_` + 32 alphanumerics) and echoes
//!   the fields; a missing `display_name`, or a `proxy_country` outside [`PROXY_COUNTRIES`],
//!   is 422 with a Laravel-style `message`. The API key check, rate limit, faults and record
//!   (kind `client_session`) are the typing endpoint's.
//! - `POST /api/authenticate` answers a fresh `attempt_id` and its `polling_url`.
//! - `GET /api/authenticate/{attempt_id}` walks the attempt's script one step per poll (the last
//!   step repeats), recorded as kind `auth_poll` with the attempt id in `account`.
//! - `PUT /api/authenticate/{attempt_id}` with `{"code"}` is accepted while at `needs_2fa`.
//! - `POST /_mock/attempts` `{"attempt_id", "steps": [...], "account_id"?}` scripts an attempt.
//!
//! Steps are `pending`, `needs_2fa`, `mobile`, `connected`, `failed`. An attempt nobody
//! scripted follows its name: containing `never` → `[pending]` forever; `fail` →
//! `[pending, failed]`; `2fa` → `[pending, needs_2fa, connected]`; `mobile` →
//! `[pending, mobile, connected]`; anything else → `[pending, connected]`. A connected attempt
//! reports `account_id` as scripted, else `acct_` + the first 32 hex digits of SHA-256 of its id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{MockState, Plan, bearer};

/// Proxy countries the mock accepts.
pub const PROXY_COUNTRIES: &[&str] = &["us", "uk", "gb", "ca", "au", "de", "fr", "es", "it", "nl"];

/// One step of a scripted attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Still going.
    Pending,
    /// A 2FA code is needed (phone ending `42`).
    #[serde(rename = "needs_2fa")]
    Needs2fa,
    /// A mobile-app login is pending (with a deeplink).
    Mobile,
    /// Authenticated.
    Connected,
    /// The login failed (`lastAttempt.success = false`).
    Failed,
}

/// Body of `POST /_mock/attempts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    /// The attempt.
    pub attempt_id: String,
    /// Its steps, one per poll.
    pub steps: Vec<Step>,
    /// The account a `connected` step reports.
    #[serde(default)]
    pub account_id: Option<String>,
}

#[derive(Debug, Clone)]
struct Script {
    steps: Vec<Step>,
    account_id: Option<String>,
    next: usize,
}

/// Scripted attempts, by id. One `std` mutex; sections are short and never await.
#[derive(Debug, Default)]
pub struct MockAttempts {
    scripts: Mutex<HashMap<String, Script>>,
}

impl MockAttempts {
    /// Scripts `attempt_id` (replacing any earlier script and its progress).
    pub fn script(&self, attempt_id: &str, steps: Vec<Step>, account_id: Option<String>) {
        let steps = if steps.is_empty() { vec![Step::Pending] } else { steps };
        self.lock().insert(attempt_id.to_owned(), Script { steps, account_id, next: 0 });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Script>> {
        self.scripts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The step answered to this poll of `attempt_id`, and the account a connection reports.
    fn poll(&self, attempt_id: &str) -> (Step, String) {
        let mut g = self.lock();
        let script = g.entry(attempt_id.to_owned()).or_insert_with(|| Script {
            steps: by_name(attempt_id),
            account_id: None,
            next: 0,
        });
        let step = script.steps[script.next.min(script.steps.len() - 1)];
        script.next += 1;
        let account = script.account_id.clone().unwrap_or_else(|| default_account(attempt_id));
        (step, account)
    }

    /// A 2FA code arrived: accepted when the last step answered was `needs_2fa`. (Scripts move
    /// one step per poll whether or not a code arrives, so a code changes nothing else.)
    fn submit_code(&self, attempt_id: &str) -> bool {
        let g = self.lock();
        let Some(s) = g.get(attempt_id) else { return false };
        s.next > 0 && s.steps[(s.next - 1).min(s.steps.len() - 1)] == Step::Needs2fa
    }
}

fn by_name(id: &str) -> Vec<Step> {
    if id.contains("never") {
        vec![Step::Pending]
    } else if id.contains("fail") {
        vec![Step::Pending, Step::Failed]
    } else if id.contains("2fa") {
        vec![Step::Pending, Step::Needs2fa, Step::Connected]
    } else if id.contains("mobile") {
        vec![Step::Pending, Step::Mobile, Step::Connected]
    } else {
        vec![Step::Pending, Step::Connected]
    }
}

fn default_account(attempt_id: &str) -> String {
    format!("acct_{}", &hex::encode(Sha256::digest(attempt_id.as_bytes()))[..32])
}

fn status_body(step: Step, account: &str) -> Value {
    match step {
        Step::Pending => json!({"state": "pending", "progress": "waiting_for_login", "twoFactorPending": false}),
        Step::Needs2fa => json!({
            "state": "pending", "progress": "otp", "twoFactorPending": true,
            "lastAttempt": {"success": false, "needs_otp": true, "otp_phone_ending": "42",
                            "error_code": null, "error_message": null}
        }),
        Step::Mobile => json!({
            "state": "pending", "twoFactorPending": false,
            "mobile_auth_session_deeplink": "onlyfans://auth/mock-session"
        }),
        Step::Connected => json!({
            "state": "authenticated", "progress": "done", "twoFactorPending": false,
            "account": {"id": account},
            "lastAttempt": {"success": true, "needs_otp": false}
        }),
        Step::Failed => json!({
            "state": "failed", "twoFactorPending": false,
            "lastAttempt": {"success": false, "needs_otp": false, "error_code": "invalid_credentials",
                            "error_message": "The email or password is incorrect."}
        }),
    }
}

/// Replaces the body of a 200 plan (the key check, limit and faults already decided the rest).
fn with_body(plan: Plan, data: &Value) -> Plan {
    match plan {
        Plan::Answer { delay, status: 200, headers, .. } => {
            Plan::Answer { delay, status: 200, body: json!({ "data": data }).to_string(), headers }
        }
        other => other,
    }
}

fn with_error(plan: Plan, status: u16, message: &str, field: &str) -> Plan {
    match plan {
        Plan::Answer { delay, status: 200, headers, .. } => {
            let body = json!({ "message": message, "errors": { field: [message] } }).to_string();
            Plan::Answer { delay, status, body, headers }
        }
        other => other,
    }
}

pub(super) async fn client_sessions(State(s): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let plan = s.admit("client_session", "", String::new(), String::new(), &bearer(&headers));
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
    let plan = match (field("display_name").filter(|n| !n.trim().is_empty()), field("proxy_country")) {
        (None, _) => with_error(plan, 422, "The display name field is required.", "display_name"),
        (Some(_), Some(c)) if !PROXY_COUNTRIES.contains(&c.as_str()) => {
            with_error(plan, 422, "The selected proxy country is invalid.", "proxy_country")
        }
        (Some(name), _) => {
            let token: String = rand::rng().sample_iter(Alphanumeric).take(32).map(char::from).collect();
            with_body(
                plan,
                &json!({
                    "token": format!("ofapi_cs_{token}"),
                    "display_name": name,
                    "client_reference_id": field("client_reference_id"),
                }),
            )
        }
    };
    plan.respond(&s).await
}

pub(super) async fn start_authentication(State(s): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    let plan = s.admit("authenticate", "", String::new(), String::new(), &bearer(&headers));
    let id: String = rand::rng().sample_iter(Alphanumeric).take(24).map(char::from).collect();
    let id = format!("auth_{id}");
    with_body(plan, &json!({ "attempt_id": id, "polling_url": format!("/api/authenticate/{id}") })).respond(&s).await
}

pub(super) async fn poll_authentication(
    State(s): State<Arc<MockState>>,
    Path(attempt_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let plan = s.admit("auth_poll", "", attempt_id.clone(), String::new(), &bearer(&headers));
    let plan = match &plan {
        Plan::Answer { status: 200, .. } => {
            let (step, account) = s.attempts.poll(&attempt_id);
            with_body(plan, &status_body(step, &account))
        }
        _ => plan,
    };
    plan.respond(&s).await
}

pub(super) async fn submit_code(
    State(s): State<Arc<MockState>>,
    Path(attempt_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let plan = s.admit("auth_code", "", attempt_id.clone(), String::new(), &bearer(&headers));
    let accepted = matches!(plan, Plan::Answer { status: 200, .. }) && s.attempts.submit_code(&attempt_id);
    with_body(plan, &json!({ "accepted": accepted })).respond(&s).await
}

pub(super) async fn script(State(s): State<Arc<MockState>>, Json(req): Json<ScriptRequest>) -> StatusCode {
    s.attempts.script(&req.attempt_id, req.steps, req.account_id);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_walk_one_step_per_poll_and_repeat_the_last() {
        let a = MockAttempts::default();
        let steps: Vec<Step> = (0..4).map(|_| a.poll("auth_2fa_x").0).collect();
        assert_eq!(steps, [Step::Pending, Step::Needs2fa, Step::Connected, Step::Connected]);
        a.script("auth_x", vec![Step::Needs2fa, Step::Failed], Some("acct_1".into()));
        assert_eq!(a.poll("auth_x").0, Step::Needs2fa);
        assert!(a.submit_code("auth_x"));
        assert_eq!(a.poll("auth_x"), (Step::Failed, "acct_1".to_owned()));
        assert!(!a.submit_code("auth_x"));
        assert_eq!(a.poll("auth_never_1").0, Step::Pending);
        assert_eq!(a.poll("auth_never_1").0, Step::Pending);
    }
}
