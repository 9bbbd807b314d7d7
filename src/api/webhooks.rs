//! `POST /v1/webhooks/onlyfansapi`: OnlyFansAPI's webhooks, authenticated by their `Signature`
//! alone (OnlyFansAPI cannot send a bearer token).
//!
//! The raw body is verified before it is parsed: a missing or wrong signature is 401
//! `invalid_signature` and changes nothing; without `KEEPTYPING_WEBHOOK_SECRET` every webhook
//! is 503 `webhook_secret_not_configured` (the operator's setup, not the sender's fault, and a
//! retrying sender gets through once it is fixed). Then, by event (a `fansly.` prefix is the same
//! event on Fansly):
//!
//! | event | effect |
//! |---|---|
//! | `accounts.session_expired`, `accounts.authentication_failed` | pause the account's typing |
//! | `accounts.connected`, `accounts.reconnected` | resume it |
//! | `messages.sent` | end that chat's session (the chatter's reply went out) |
//! | anything else | 200, ignored, counted |
//!
//! A verified body identical to one received within the last 10 minutes is a replay (the
//! envelope carries no timestamp or event id): it answers 200 `ignored`/`replay`, changes
//! nothing and is counted in `keeptyping_webhook_replays_total` ([`super::replay`]).
//!
//! Every other webhook is counted in `keeptyping_webhooks_total{event,outcome}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiState;
use super::error::{ApiError, BadRequest, PayloadTooLarge, ServiceUnavailable, Unauthorized};
use super::openapi::ACCOUNTS_TAG;
use crate::accounts::WebhookAuthError;
use crate::accounts::signing::SIGNATURE_HEADER;
use crate::engine::PauseCause;
use crate::ids::{AccountId, ChatId, Platform, SessionKey};
use crate::metrics;

/// The webhook envelope.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct WebhookRequest {
    /// `accounts.session_expired`, `messages.sent`, ... (`fansly.`-prefixed on Fansly).
    pub event: String,
    /// The creator account it is about.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Event-specific fields.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Value,
}

/// Answer of a webhook.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookResponse {
    /// `paused`, `resumed`, `stopped`, `not_found` (no session for that chat) or `ignored`.
    #[schema(value_type = String)]
    pub outcome: &'static str,
    /// Why it was ignored (`event_not_handled`, `malformed`, `replay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub reason: Option<&'static str>,
}

/// The events this route knows, as bounded metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    SessionExpired,
    AuthenticationFailed,
    Connected,
    Reconnected,
    MessageSent,
    OtpCodeRequired,
    MessageReceived,
    UserTyping,
    Other,
}

impl Event {
    fn parse(name: &str) -> (Self, bool) {
        let (name, fansly) = match name.strip_prefix("fansly.") {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let event = match name {
            "accounts.session_expired" => Self::SessionExpired,
            "accounts.authentication_failed" => Self::AuthenticationFailed,
            "accounts.connected" => Self::Connected,
            "accounts.reconnected" => Self::Reconnected,
            "messages.sent" => Self::MessageSent,
            "accounts.otp_code_required" => Self::OtpCodeRequired,
            "messages.received" => Self::MessageReceived,
            "users.typing" => Self::UserTyping,
            _ => Self::Other,
        };
        (event, fansly)
    }

    fn label(self) -> &'static str {
        match self {
            Self::SessionExpired => "accounts.session_expired",
            Self::AuthenticationFailed => "accounts.authentication_failed",
            Self::Connected => "accounts.connected",
            Self::Reconnected => "accounts.reconnected",
            Self::MessageSent => "messages.sent",
            Self::OtpCodeRequired => "accounts.otp_code_required",
            Self::MessageReceived => "messages.received",
            Self::UserTyping => "users.typing",
            Self::Other => "other",
        }
    }
}

/// `POST /v1/webhooks/onlyfansapi`
#[utoipa::path(
    post,
    path = "/v1/webhooks/onlyfansapi",
    operation_id = "onlyfansapiWebhook",
    summary = "OnlyFansAPI webhook (authenticated by its Signature, not a bearer token)",
    tag = ACCOUNTS_TAG,
    security(()),
    params(("Signature" = String, Header, description = "Hex HMAC-SHA256 of the raw body with the webhook signing secret")),
    request_body = WebhookRequest,
    responses(
        (status = 200, description = "Accepted", body = WebhookResponse),
        BadRequest, Unauthorized, PayloadTooLarge, ServiceUnavailable,
    )
)]
///
/// # Errors
/// 401 `invalid_signature`, 503 `webhook_secret_not_configured`, 413 for a body over
/// `server.max_body_bytes`, 400 for a signed body that is not a JSON envelope.
pub async fn onlyfansapi(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookResponse>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadJson("the body could not be read".to_owned())
        }
    })?;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = state.accounts.verify_webhook(&body, signature) {
        return Err(match e {
            WebhookAuthError::NotConfigured => {
                metrics::webhook("unverified", "not_configured");
                tracing::warn!("webhook refused: KEEPTYPING_WEBHOOK_SECRET is not set");
                ApiError::WebhookSecretMissing
            }
            WebhookAuthError::Invalid => {
                metrics::webhook("unverified", "invalid_signature");
                tracing::warn!("webhook refused: bad or missing signature");
                ApiError::InvalidSignature
            }
        });
    }
    if !state.webhook_replays.first_sighting(&body, tokio::time::Instant::now()) {
        // The envelope has no timestamp or event id: a verified body seen before is a replay.
        // 200, so a sender retrying a delivery it thinks failed stops; nothing is applied.
        metrics::webhook_replayed();
        tracing::warn!("webhook dropped: the same signed body was received within the replay window");
        return Ok(Json(ignored("replay")));
    }
    let envelope: WebhookRequest = serde_json::from_slice(&body).map_err(|e| {
        metrics::webhook("unverified", "malformed");
        ApiError::BadJson(e.to_string().chars().take(200).collect())
    })?;
    let (event, fansly) = Event::parse(&envelope.event);
    let answer = match apply(&state, event, fansly, &envelope).await {
        Ok(answer) => answer,
        Err(e) => {
            state.webhook_replays.forget(&body);
            return Err(e);
        }
    };
    let outcome = if answer.outcome == "ignored" {
        if answer.reason == Some("malformed") { "malformed" } else { "ignored" }
    } else {
        "applied"
    };
    metrics::webhook(event.label(), outcome);
    tracing::info!(event = event.label(), outcome = answer.outcome, "webhook handled");
    Ok(Json(answer))
}

fn ignored(reason: &'static str) -> WebhookResponse {
    WebhookResponse { outcome: "ignored", reason: Some(reason) }
}

fn applied(outcome: &'static str) -> WebhookResponse {
    WebhookResponse { outcome, reason: None }
}

/// Acts on a verified event.
async fn apply(
    state: &ApiState,
    event: Event,
    fansly: bool,
    envelope: &WebhookRequest,
) -> Result<WebhookResponse, ApiError> {
    let pause = match event {
        Event::SessionExpired => Some(PauseCause::SessionExpired),
        Event::AuthenticationFailed => Some(PauseCause::AuthenticationFailed),
        Event::Connected | Event::Reconnected | Event::MessageSent => None,
        Event::OtpCodeRequired | Event::MessageReceived | Event::UserTyping | Event::Other => {
            return Ok(ignored("event_not_handled"));
        }
    };
    let Some(account) = envelope.account_id.as_deref().and_then(|a| AccountId::parse_any(a).ok()) else {
        return Ok(ignored("malformed"));
    };
    if let Some(cause) = pause {
        tracing::info!(account = %account, cause = cause.as_str(), "webhook pauses the account");
        state.backend.pause_account(&account, cause, state.unavailable_pause).await;
        return Ok(applied("paused"));
    }
    if event != Event::MessageSent {
        state.backend.resume_account(&account).await;
        return Ok(applied("resumed"));
    }
    let platform = if fansly || account.as_str().starts_with("fansly_acct_") {
        Platform::Fansly
    } else if account.as_str().starts_with("acct_") {
        Platform::Onlyfans
    } else {
        Platform::Fanvue
    };
    let Some(chat) = chat_of(&envelope.payload).and_then(|c| ChatId::parse(platform, &c).ok()) else {
        return Ok(ignored("malformed"));
    };
    let key = SessionKey { platform, account, chat };
    match state.backend.end_chat(&key).await {
        Ok(true) => Ok(applied("stopped")),
        Ok(false) => Ok(applied("not_found")),
        Err(_) => Err(ApiError::StateUnavailable),
    }
}

/// The fan's chat of an outbound-message payload. The shape is undocumented first-party, so the
/// usual places are tried in order: `chat_id`, `chatId`, `chat.id`, `toUser.id`, `to_user.id`,
/// `withUser.id`.
fn chat_of(payload: &Value) -> Option<String> {
    let paths: [&[&str]; 6] =
        [&["chat_id"], &["chatId"], &["chat", "id"], &["toUser", "id"], &["to_user", "id"], &["withUser", "id"]];
    paths.iter().find_map(|path| {
        let v = path.iter().try_fold(payload, |v, k| v.get(*k))?;
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    })
}
