//! `POST /v1/client-sessions`, `POST /v1/auth-attempts`, `GET /v1/auth-attempts/{attempt_id}`:
//! onboarding a creator account, with request and response DTOs. The calls go to [`Accounts`];
//! the caller's tenant decides which API key mints the token and polls the attempt.
//!
//! Upstream failures become clear errors: a refused API key is 502 `api_key_refused`, a refused
//! field 422 `unprocessable`, anything else 502 `upstream_failed`. Messages never carry the API
//! key, and the network details of a failure are logged, not answered.
//!
//! [`Accounts`]: crate::accounts::Accounts

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::Caller;
use super::error::{
    ApiError, AppJson, BadGateway, BadRequest, Forbidden, NotFound, PayloadTooLarge, ServiceUnavailable,
    TooManyRequests, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::openapi::ACCOUNTS_TAG;
use crate::accounts::{AttemptId, AttemptSnapshot, AttemptState, WatchError, parse_fields};
use crate::config::{AccountScope, DEFAULT_NAME};
use crate::upstream::{AccountCallError, KeyIndex, UpstreamError};

/// Body of `POST /v1/client-sessions`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ClientSessionRequest {
    /// Shown to the creator in the login frame (required, at most 100 characters).
    #[serde(default)]
    pub display_name: Option<String>,
    /// The chat tool's own reference for this onboarding.
    #[serde(default)]
    pub client_reference_id: Option<String>,
    /// Proxy country, an opaque lowercase string (e.g. `us`).
    #[serde(default)]
    pub proxy_country: Option<String>,
}

/// Answer of `POST /v1/client-sessions`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientSessionResponse {
    /// `ofapi_cs_…`: hand it to `startOnlyFansAuthentication` in the browser.
    pub token: String,
    /// The display name.
    pub display_name: String,
    /// The reference id, if sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_reference_id: Option<String>,
    /// The proxy country, if sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_country: Option<String>,
}

/// Body of `POST /v1/auth-attempts`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct WatchAttemptRequest {
    /// The `attempt_id` (`auth_…`) that `startOnlyFansAuthentication` reported.
    pub attempt_id: String,
}

/// An attempt's latest state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptResponse {
    /// On `POST`: `watching` (new) or `already_watching`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub outcome: Option<&'static str>,
    /// The attempt.
    pub attempt_id: String,
    /// Where it stands; the fields below that belong to this state are set.
    pub state: AttemptStateName,
    /// `pending`: the upstream's progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// `needs_2fa`: last digits of the phone the code went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otp_phone_ending: Option<String>,
    /// `mobile_pending`: the deeplink that opens the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_deeplink: Option<String>,
    /// `connected`: the connected account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `failed`: the upstream's error code (or `upstream_<status>` when the poll was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `failed`: the upstream's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Every state reached, in order.
    #[schema(value_type = Vec<String>)]
    pub history: Vec<&'static str>,
    /// Whether it is still polled.
    pub watching: bool,
    /// Polls sent so far.
    pub polls: u32,
    /// Milliseconds since watching started.
    pub age_ms: u64,
    /// Outcome label of the last failed poll (`timeout`, `server_error`, ...), if the last poll failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub last_error: Option<&'static str>,
}

/// The state of an authentication attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStateName {
    /// Still going; nothing is asked of the creator.
    Pending,
    /// A 2FA code is needed.
    #[serde(rename = "needs_2fa")]
    Needs2fa,
    /// A mobile-app login is pending.
    MobilePending,
    /// Authenticated: the account is connected.
    Connected,
    /// The attempt failed.
    Failed,
    /// No terminal state within `accounts.attempt_deadline`; polling stopped.
    TimedOut,
}

impl AttemptResponse {
    fn new(s: AttemptSnapshot, outcome: Option<&'static str>) -> Self {
        let mut r = Self {
            outcome,
            attempt_id: s.id.to_string(),
            state: AttemptStateName::Pending,
            progress: None,
            otp_phone_ending: None,
            mobile_deeplink: None,
            account_id: None,
            error_code: None,
            error_message: None,
            history: s.history,
            watching: s.watching,
            polls: s.polls,
            age_ms: u64::try_from(s.age.as_millis()).unwrap_or(u64::MAX),
            last_error: s.last_error,
        };
        match s.state {
            AttemptState::Pending { progress } => r.progress = progress,
            AttemptState::NeedsTwoFactor { otp_phone_ending } => {
                (r.state, r.otp_phone_ending) = (AttemptStateName::Needs2fa, otp_phone_ending);
            }
            AttemptState::MobilePending { mobile_deeplink } => {
                (r.state, r.mobile_deeplink) = (AttemptStateName::MobilePending, mobile_deeplink);
            }
            AttemptState::Connected { account_id } => {
                (r.state, r.account_id) = (AttemptStateName::Connected, account_id)
            }
            AttemptState::Failed { error_code, error_message } => {
                (r.state, r.error_code, r.error_message) = (AttemptStateName::Failed, error_code, error_message);
            }
            AttemptState::TimedOut => r.state = AttemptStateName::TimedOut,
        }
        r
    }
}

/// `POST /v1/client-sessions`
#[utoipa::path(
    post,
    path = "/v1/client-sessions",
    operation_id = "createClientSession",
    summary = "Mint an OnlyFansAPI client-session token",
    tag = ACCOUNTS_TAG,
    security(("hook_token" = [])),
    request_body = ClientSessionRequest,
    responses(
        (status = 200, description = "The minted token", body = ClientSessionResponse),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, TooManyRequests,
        BadGateway, ServiceUnavailable,
    )
)]
///
/// # Errors
/// 400 for a missing or out-of-bounds field, 403 without a usable API key, 502/422 as the
/// upstream answered.
pub async fn create_client_session(
    State(state): State<ApiState>,
    caller: Caller,
    AppJson(req): AppJson<ClientSessionRequest>,
) -> Result<Json<ClientSessionResponse>, ApiError> {
    let fields =
        parse_fields(req.display_name.as_deref(), req.client_reference_id.as_deref(), req.proxy_country.as_deref())
            .map_err(|e| ApiError::InvalidField(e.0))?;
    let key = api_key(&state, &caller)?;
    let minted = state.accounts.create_client_session(key, &fields).await.map_err(|e| upstream_error(&e))?;
    tracing::info!(tenant = %caller.name, "client session minted");
    Ok(Json(ClientSessionResponse {
        token: minted.token,
        display_name: minted.display_name.unwrap_or(fields.display_name),
        client_reference_id: minted.client_reference_id.or(fields.client_reference_id),
        proxy_country: fields.proxy_country,
    }))
}

/// `POST /v1/auth-attempts`
#[utoipa::path(
    post,
    path = "/v1/auth-attempts",
    operation_id = "watchAuthAttempt",
    summary = "Watch an authentication attempt",
    tag = ACCOUNTS_TAG,
    security(("hook_token" = [])),
    request_body = WatchAttemptRequest,
    responses(
        (status = 200, description = "The attempt, now watched", body = AttemptResponse),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, TooManyRequests,
        ServiceUnavailable,
    )
)]
///
/// # Errors
/// 400 for a bad `attempt_id`, 403 without a usable API key, 503 when too many attempts are
/// remembered or the service is stopping.
pub async fn watch_attempt(
    State(state): State<ApiState>,
    caller: Caller,
    AppJson(req): AppJson<WatchAttemptRequest>,
) -> Result<Json<AttemptResponse>, ApiError> {
    let id = AttemptId::parse(req.attempt_id.trim()).map_err(ApiError::InvalidField)?;
    let key = api_key(&state, &caller)?;
    let (snapshot, new) = state.accounts.watch(caller.name.clone(), id, key).await.map_err(|e| match e {
        WatchError::Full => ApiError::Full(e.to_string()),
        WatchError::NotRunning => ApiError::ShuttingDown,
    })?;
    let outcome = if new { "watching" } else { "already_watching" };
    Ok(Json(AttemptResponse::new(snapshot, Some(outcome))))
}

/// `GET /v1/auth-attempts/{attempt_id}`
#[utoipa::path(
    get,
    path = "/v1/auth-attempts/{attempt_id}",
    operation_id = "getAuthAttempt",
    summary = "Latest state of an authentication attempt",
    tag = ACCOUNTS_TAG,
    security(("hook_token" = [])),
    params(("attempt_id" = String, Path, description = "The `auth_…` id being watched")),
    responses(
        (status = 200, description = "The attempt", body = AttemptResponse),
        BadRequest, Unauthorized, NotFound, TooManyRequests, ServiceUnavailable,
    )
)]
///
/// # Errors
/// 400 for a bad id; 404 when this tenant watches no such attempt (or it was forgotten).
pub async fn get_attempt(
    State(state): State<ApiState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AttemptResponse>, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::InvalidField("attempt_id is not valid text".to_owned()))?;
    let id = AttemptId::parse(&raw).map_err(ApiError::InvalidField)?;
    let snapshot = state
        .accounts
        .attempt(caller.name.clone(), id)
        .ok_or_else(|| ApiError::NotFound("no such authentication attempt is watched".to_owned()))?;
    Ok(Json(AttemptResponse::new(snapshot, None)))
}

/// The API key the caller's account calls use: its tenant's key, else the `default` key, else
/// the first key covering all accounts, else the first key.
fn api_key(state: &ApiState, caller: &Caller) -> Result<KeyIndex, ApiError> {
    let keys = state.engine.keys();
    caller
        .api_key
        .or_else(|| keys.by_name(DEFAULT_NAME))
        .or_else(|| keys.entries().iter().position(|k| k.accounts == AccountScope::All))
        .or_else(|| (!keys.entries().is_empty()).then_some(0))
        .ok_or(ApiError::NoApiKey)
}

/// Maps a failed account call to the answer; the details go to the log only.
fn upstream_error(e: &AccountCallError) -> ApiError {
    tracing::warn!(error = %e.error, "client session call failed");
    match &e.error {
        UpstreamError::Status { status: 401, .. } => ApiError::ApiKeyRefused,
        UpstreamError::Status { status: 422, .. } => ApiError::Unprocessable(match &e.upstream_message {
            Some(m) => format!("the upstream refused the client session: {m}"),
            None => "the upstream refused the client session fields".to_owned(),
        }),
        UpstreamError::Status { status, .. } => ApiError::Upstream(format!("the upstream answered {status}")),
        UpstreamError::Timeout => ApiError::Upstream("the upstream did not answer in time".to_owned()),
        UpstreamError::Network(_) => ApiError::Upstream("the upstream could not be reached".to_owned()),
        UpstreamError::InvalidBody(_) => ApiError::Upstream("the upstream answer was malformed".to_owned()),
    }
}
