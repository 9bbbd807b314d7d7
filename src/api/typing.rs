//! `POST /v1/typing/start`, `/v1/typing/stop`, `/v1/typing/batch`, `GET /v1/typing/sessions`:
//! request and response DTOs, their validation, and the calls into [`Engine`].
//!
//! A batch is validated whole before any event is applied: one bad event refuses the batch
//! (naming its index) and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::Caller;
use super::error::{
    ApiError, AppJson, BadGateway, BadRequest, ErrorDetail, Forbidden, PayloadTooLarge, ServiceUnavailable,
    TooManyRequests, Unauthorized, Unprocessable, UnsupportedMediaType,
};
use super::openapi::TYPING_TAG;
use crate::engine::{Priority, SessionInfo, StartCommand, StartError, StartOutcome, StopOutcome};
use crate::ids::{AccountId, ChatId, IdError, Platform, SessionKey};

/// Longest accepted chatter id.
pub const MAX_CHATTER_ID_LEN: usize = 128;

/// A chat id as tools send it: a JSON string, or a number for the numeric platforms.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RawId {
    /// `"123"`
    Text(String),
    /// `123`
    Number(u64),
}

impl RawId {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Text(s) => s.as_str().into(),
            Self::Number(n) => n.to_string().into(),
        }
    }
}

/// Body of `POST /v1/typing/start`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct StartRequest {
    /// Creator account (`acct_…`).
    pub account_id: String,
    /// The fan's chat.
    pub chat_id: RawId,
    /// Platform; default `onlyfans`.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// The chatter holding the session (several may hold one chat).
    #[serde(default)]
    pub chatter_id: Option<String>,
    /// `normal` (default) or `high`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// This holder's idle lease in milliseconds (default `engine.idle_timeout`).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// Body of `POST /v1/typing/stop`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct StopRequest {
    /// Creator account.
    pub account_id: String,
    /// The fan's chat.
    pub chat_id: RawId,
    /// Platform; default `onlyfans`.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// The chatter letting go.
    #[serde(default)]
    pub chatter_id: Option<String>,
}

/// What a batch event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchAction {
    /// As `POST /v1/typing/start`.
    Start,
    /// As `POST /v1/typing/stop`.
    Stop,
}

/// One event of a batch: the fields of a start or a stop, and the `action` saying which. A stop
/// ignores `priority` and `ttl_ms`.
// One flat object rather than a tagged union of the two bodies, so that every client generator
// reads it (`openapi-python-client` skips a `oneOf` of `allOf`, and with it the route). Read
// into a [`BatchEvent`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(as = BatchEvent)]
pub struct BatchEventBody {
    /// `start` or `stop`.
    pub action: BatchAction,
    /// Creator account (`acct_…`).
    pub account_id: String,
    /// The fan's chat.
    pub chat_id: RawId,
    /// Platform; default `onlyfans`.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// The chatter holding or letting go of the session.
    #[serde(default)]
    pub chatter_id: Option<String>,
    /// Start only: `normal` (default) or `high`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Start only: this holder's idle lease in milliseconds (default `engine.idle_timeout`).
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// One event of a batch: the start or stop it stands for.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "BatchEventBody")]
pub enum BatchEvent {
    /// A start.
    Start(StartRequest),
    /// A stop.
    Stop(StopRequest),
}

impl From<BatchEventBody> for BatchEvent {
    fn from(e: BatchEventBody) -> Self {
        let BatchEventBody { action, account_id, chat_id, platform, chatter_id, priority, ttl_ms } = e;
        match action {
            BatchAction::Start => {
                Self::Start(StartRequest { account_id, chat_id, platform, chatter_id, priority, ttl_ms })
            }
            BatchAction::Stop => Self::Stop(StopRequest { account_id, chat_id, platform, chatter_id }),
        }
    }
}

/// Body of `POST /v1/typing/batch`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    /// The events, applied in order.
    #[schema(value_type = Vec<BatchEventBody>)]
    pub events: Vec<BatchEvent>,
}

/// The session a response is about.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionRef {
    platform: Platform,
    #[schema(value_type = String)]
    account_id: AccountId,
    #[schema(value_type = String)]
    chat_id: ChatId,
}

/// Answer of start, stop, and each batch event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TypingResponse {
    /// `started`, `refreshed`, `paused`, `capped` (the chat's session reached
    /// `engine.max_lifetime`: nothing is sent until a stop or a pause in starts longer than the
    /// idle lease), `stopped`, `released`, `not_found`, or `error` (batch).
    #[schema(value_type = String)]
    pub outcome: &'static str,
    /// The session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
    /// Why it is paused (`reauthenticating`, `session_expired`, `authentication_failed`) or
    /// capped (`max_lifetime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<&'static str>,
    /// Time between typing calls for this platform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refire_interval_ms: Option<u64>,
    /// This holder's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Holders left after a release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<usize>,
    /// A batch event's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// Answer of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchResponse {
    /// One per event, in order.
    pub results: Vec<TypingResponse>,
}

/// Answer of `GET /v1/typing/sessions`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionsResponse {
    /// Number of sessions listed.
    pub count: usize,
    /// The caller's live sessions.
    pub sessions: Vec<SessionView>,
}

/// A live session (`GET /v1/typing/sessions`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// Platform.
    pub platform: Platform,
    /// Creator account.
    #[schema(value_type = String)]
    pub account_id: AccountId,
    /// The fan's chat.
    #[schema(value_type = String)]
    pub chat_id: ChatId,
    /// The caller's chatter ids holding it (`null` for the caller's anonymous holder); other
    /// tenants' holders are not listed.
    pub holders: Vec<Option<String>>,
    /// `normal` or `high`.
    pub priority: Priority,
    /// Milliseconds since it started.
    pub age_ms: u64,
    /// Milliseconds until it ends unless refreshed.
    pub expires_in_ms: u64,
    /// Whether its account is paused.
    pub paused: bool,
    /// Whether it holds a lit slot of its budget (every refire paid on time); false while it
    /// waits for one and is refired from what the budget has left.
    pub lit_slot: bool,
}

impl From<SessionInfo> for SessionView {
    fn from(s: SessionInfo) -> Self {
        // Destructured without `..`: a field the engine adds fails here until it is answered
        // (and so documented) or deliberately dropped.
        let SessionInfo { platform, account_id, chat_id, holders, priority, age_ms, expires_in_ms, paused, lit_slot } =
            s;
        Self { platform, account_id, chat_id, holders, priority, age_ms, expires_in_ms, paused, lit_slot }
    }
}

fn id_error(e: &IdError) -> ApiError {
    let code = match e {
        IdError::Account { .. } => "invalid_account_id",
        IdError::Chat { .. } => "invalid_chat_id",
    };
    ApiError::InvalidId { code, message: e.to_string() }
}

/// Parses and authorises the chat of a request.
fn session_key(
    caller: &Caller,
    platform: Option<Platform>,
    account: &str,
    chat: &RawId,
) -> Result<SessionKey, ApiError> {
    let platform = platform.unwrap_or_default();
    let account = AccountId::parse(platform, account).map_err(|e| id_error(&e))?;
    let chat = ChatId::parse(platform, &chat.text()).map_err(|e| id_error(&e))?;
    caller.check(&account)?;
    Ok(SessionKey { platform, account, chat })
}

/// Validates the chatter id and returns the caller's namespaced holder id for it.
fn chatter(caller: &Caller, raw: Option<&str>) -> Result<Arc<str>, ApiError> {
    let Some(id) = raw else { return Ok(caller.holder(None)) };
    let ok = !id.is_empty()
        && id.len() <= MAX_CHATTER_ID_LEN
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.:@".contains(&c));
    if !ok {
        return Err(ApiError::InvalidField(format!(
            "chatter_id must be 1 to {MAX_CHATTER_ID_LEN} characters of letters, digits and _-.:@"
        )));
    }
    Ok(caller.holder(Some(id)))
}

/// A start, validated.
struct ValidStart {
    cmd: StartCommand,
    lease: Duration,
}

fn validate_start(state: &ApiState, caller: &Caller, req: &StartRequest) -> Result<ValidStart, ApiError> {
    let key = session_key(caller, req.platform, &req.account_id, &req.chat_id)?;
    let holder = Some(chatter(caller, req.chatter_id.as_deref())?);
    let max = state.max_lifetime;
    let ttl = match req.ttl_ms {
        None => None,
        Some(ms) if ms >= 100 && u128::from(ms) <= max.as_millis() => Some(Duration::from_millis(ms)),
        Some(_) => {
            return Err(ApiError::InvalidField(format!(
                "ttl_ms must be between 100 and {} (engine.max_lifetime)",
                max.as_millis()
            )));
        }
    };
    let lease = ttl.unwrap_or(state.idle_timeout);
    let cmd =
        StartCommand { key, holder, priority: req.priority.unwrap_or_default(), ttl, preferred_key: caller.api_key };
    Ok(ValidStart { cmd, lease })
}

fn validate_stop(caller: &Caller, req: &StopRequest) -> Result<(SessionKey, Arc<str>), ApiError> {
    let key = session_key(caller, req.platform, &req.account_id, &req.chat_id)?;
    let holder = chatter(caller, req.chatter_id.as_deref())?;
    Ok((key, holder))
}

fn session_ref(key: &SessionKey) -> SessionRef {
    SessionRef { platform: key.platform, account_id: key.account.clone(), chat_id: key.chat.clone() }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn apply_start(state: &ApiState, v: &ValidStart) -> Result<TypingResponse, ApiError> {
    let outcome = state.backend.start(&state.engine, v.cmd.clone()).await.map_err(|_| ApiError::StateUnavailable)?;
    let outcome = outcome.map_err(|e| match e {
        StartError::ShuttingDown => ApiError::ShuttingDown,
        StartError::AtCapacity => ApiError::AtCapacity,
        StartError::NoApiKey => ApiError::AccountNotConfigured(v.cmd.key.account.to_string()),
        StartError::KeyRefused => ApiError::ApiKeyRefused,
    })?;
    let (outcome, reason) = match outcome {
        StartOutcome::Started => ("started", None),
        StartOutcome::Refreshed => ("refreshed", None),
        StartOutcome::Paused(cause) => ("paused", Some(cause.as_str())),
        StartOutcome::Capped => ("capped", Some("max_lifetime")),
    };
    Ok(TypingResponse {
        outcome,
        session: Some(session_ref(&v.cmd.key)),
        reason,
        refire_interval_ms: Some(millis(state.refire_interval(v.cmd.key.platform))),
        lease_ms: Some(millis(v.lease)),
        holders: None,
        error: None,
    })
}

async fn apply_stop(state: &ApiState, key: &SessionKey, holder: &str) -> Result<TypingResponse, ApiError> {
    let stopped = state.backend.stop(key, Some(holder)).await.map_err(|_| ApiError::StateUnavailable)?;
    let (outcome, holders) = match stopped {
        StopOutcome::Stopped => ("stopped", None),
        StopOutcome::Released { holders } => ("released", Some(holders)),
        StopOutcome::NotFound => ("not_found", None),
    };
    Ok(TypingResponse {
        outcome,
        session: Some(session_ref(key)),
        reason: None,
        refire_interval_ms: None,
        lease_ms: None,
        holders,
        error: None,
    })
}

/// `POST /v1/typing/start`
#[utoipa::path(
    post,
    path = "/v1/typing/start",
    operation_id = "startTyping",
    summary = "Start or refresh a chat's typing session",
    tag = TYPING_TAG,
    security(("hook_token" = [])),
    request_body = StartRequest,
    responses(
        (status = 200, description = "Started, refreshed, paused or capped", body = TypingResponse),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, TooManyRequests,
        BadGateway, ServiceUnavailable,
    )
)]
pub async fn start(
    State(state): State<ApiState>,
    caller: Caller,
    AppJson(req): AppJson<StartRequest>,
) -> Result<Json<TypingResponse>, ApiError> {
    let v = validate_start(&state, &caller, &req)?;
    apply_start(&state, &v).await.map(Json)
}

/// `POST /v1/typing/stop`
#[utoipa::path(
    post,
    path = "/v1/typing/stop",
    operation_id = "stopTyping",
    summary = "Release a chat; no typing call leaves once answered",
    tag = TYPING_TAG,
    security(("hook_token" = [])),
    request_body = StopRequest,
    responses(
        (status = 200, description = "Stopped, released or not found", body = TypingResponse),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, TooManyRequests,
        ServiceUnavailable,
    )
)]
pub async fn stop(
    State(state): State<ApiState>,
    caller: Caller,
    AppJson(req): AppJson<StopRequest>,
) -> Result<Json<TypingResponse>, ApiError> {
    let (key, holder) = validate_stop(&caller, &req)?;
    apply_stop(&state, &key, &holder).await.map(Json)
}

enum ValidEvent {
    Start(ValidStart),
    Stop(SessionKey, Arc<str>),
}

/// `POST /v1/typing/batch`
#[utoipa::path(
    post,
    path = "/v1/typing/batch",
    operation_id = "typingBatch",
    summary = "Several starts and stops, validated whole",
    tag = TYPING_TAG,
    security(("hook_token" = [])),
    request_body = BatchRequest,
    responses(
        (status = 200, description = "One result per event, in order", body = BatchResponse),
        BadRequest, Unauthorized, Forbidden, PayloadTooLarge, UnsupportedMediaType, Unprocessable, TooManyRequests,
        ServiceUnavailable,
    )
)]
pub async fn batch(
    State(state): State<ApiState>,
    caller: Caller,
    AppJson(req): AppJson<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    if req.events.len() > state.max_batch_events {
        return Err(ApiError::InvalidField(format!("events: at most {} per batch", state.max_batch_events)));
    }
    let mut valid = Vec::with_capacity(req.events.len());
    for (i, event) in req.events.iter().enumerate() {
        let v = match event {
            BatchEvent::Start(s) => validate_start(&state, &caller, s).map(ValidEvent::Start),
            BatchEvent::Stop(s) => validate_stop(&caller, s).map(|(k, h)| ValidEvent::Stop(k, h)),
        };
        valid.push(v.map_err(|e| prefix_index(i, e))?);
    }
    if matches!(state.backend, crate::state::State::Memory(_)) {
        let mut results = Vec::with_capacity(valid.len());
        for v in valid {
            results.push(apply_event(&state, v).await);
        }
        return Ok(Json(BatchResponse { results }));
    }
    // With replicas each chat may be answered by another replica: the events of one chat apply
    // in order, different chats at once.
    let mut index: std::collections::HashMap<SessionKey, usize> = std::collections::HashMap::new();
    let mut chats: Vec<Vec<(usize, ValidEvent)>> = Vec::new();
    for (i, v) in valid.into_iter().enumerate() {
        let key = match &v {
            ValidEvent::Start(s) => s.cmd.key.clone(),
            ValidEvent::Stop(k, _) => k.clone(),
        };
        let slot = *index.entry(key).or_insert_with(|| {
            chats.push(Vec::new());
            chats.len() - 1
        });
        chats[slot].push((i, v));
    }
    let per_chat = chats.into_iter().map(|events| {
        let state = &state;
        async move {
            let mut out = Vec::with_capacity(events.len());
            for (i, v) in events {
                out.push((i, apply_event(state, v).await));
            }
            out
        }
    });
    let mut results: Vec<(usize, TypingResponse)> =
        futures_util::future::join_all(per_chat).await.into_iter().flatten().collect();
    results.sort_by_key(|(i, _)| *i);
    Ok(Json(BatchResponse { results: results.into_iter().map(|(_, r)| r).collect() }))
}

async fn apply_event(state: &ApiState, v: ValidEvent) -> TypingResponse {
    let r = match v {
        ValidEvent::Start(s) => apply_start(state, &s).await,
        ValidEvent::Stop(k, h) => apply_stop(state, &k, &h).await,
    };
    r.unwrap_or_else(|e| error_result(&e))
}

fn prefix_index(i: usize, e: ApiError) -> ApiError {
    match e {
        ApiError::InvalidField(m) => ApiError::InvalidField(format!("events[{i}]: {m}")),
        ApiError::InvalidId { code, message } => {
            ApiError::InvalidId { code, message: format!("events[{i}]: {message}") }
        }
        other => other,
    }
}

fn error_result(e: &ApiError) -> TypingResponse {
    let (_, code) = e.status_and_code();
    TypingResponse {
        outcome: "error",
        session: None,
        reason: None,
        refire_interval_ms: None,
        lease_ms: None,
        holders: None,
        error: Some(ErrorDetail { code, message: e.to_string() }),
    }
}

/// `GET /v1/typing/sessions`
#[utoipa::path(
    get,
    path = "/v1/typing/sessions",
    operation_id = "listSessions",
    summary = "The caller's live sessions",
    tag = TYPING_TAG,
    security(("hook_token" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionsResponse),
        Unauthorized, TooManyRequests, ServiceUnavailable,
    )
)]
pub async fn sessions(State(state): State<ApiState>, caller: Caller) -> Result<Json<SessionsResponse>, ApiError> {
    let mut sessions = state
        .backend
        .sessions(&state.engine, |a| caller.accounts.allows(a))
        .await
        .map_err(|_| ApiError::StateUnavailable)?;
    for s in &mut sessions {
        // Only the caller's own chatters are named; other tenants' holders are theirs.
        s.holders = std::mem::take(&mut s.holders)
            .into_iter()
            .filter_map(|h| caller.own_chatter(h.as_deref()?).map(|c| c.map(str::to_owned)))
            .collect();
    }
    Ok(Json(SessionsResponse {
        count: sessions.len(),
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}
