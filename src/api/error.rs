//! `ApiError`: every error a hook can answer, mapped to status and JSON in one `match`, and the
//! `AppJson` extractor that turns malformed bodies into `ApiError` instead of axum's plain text.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    BadJson(String),
    /// 400: a field is missing or has the wrong type or value.
    #[error("{0}")]
    InvalidField(String),
    /// 401: no bearer token.
    #[error("missing bearer token")]
    MissingToken,
    /// 401: the bearer token is not known.
    #[error("invalid bearer token")]
    InvalidToken,
    /// 401: a webhook signature did not verify.
    #[error("invalid webhook signature")]
    InvalidSignature,
    /// 403: the token may not touch this account.
    #[error("this token may not act on account {0}")]
    ForbiddenAccount(String),
    /// 403: no API key is configured for the account.
    #[error("no api key is configured for account {0}")]
    AccountNotConfigured(String),
    /// 404: no such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body exceeds `server.max_body_bytes`.
    #[error("the body is too large")]
    PayloadTooLarge,
    /// 415: not `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: an id does not match its platform's pattern.
    #[error("{message}")]
    InvalidId {
        /// `invalid_account_id` or `invalid_chat_id`.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 422: the upstream refused a well-formed value.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: the token's hook rate limit.
    #[error("too many hook requests")]
    RateLimited {
        /// Seconds until a request will be accepted.
        retry_after_secs: u64,
    },
    /// 502: the upstream refused the API key.
    #[error("the upstream refused the api key")]
    ApiKeyRefused,
    /// 502: the upstream failed.
    #[error("the upstream failed: {0}")]
    Upstream(String),
    /// 503: shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// 503: the session cap is reached.
    #[error("the session cap is reached")]
    AtCapacity,
    /// 503: the request took longer than `server.request_timeout`.
    #[error("the request timed out")]
    Timeout,
    /// 503: the shared state (Redis, or the replica owning the chat) did not answer in time.
    #[error("the shared state is unavailable; retry shortly")]
    StateUnavailable,
    /// 503: a bounded table is full.
    #[error("{0}")]
    Full(String),
    /// 403: no API key is configured that this caller's calls could use.
    #[error("no api key is configured for this token")]
    NoApiKey,
    /// 503: `KEEPTYPING_WEBHOOK_SECRET` is not set, so no webhook can be verified.
    #[error("no webhook signing secret is configured (KEEPTYPING_WEBHOOK_SECRET)")]
    WebhookSecretMissing,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_chat_id`, `forbidden_account`, `rate_limited`.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// Status and stable snake_case code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            Self::InvalidField(_) => (StatusCode::BAD_REQUEST, "invalid_field"),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            Self::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            Self::ForbiddenAccount(_) => (StatusCode::FORBIDDEN, "forbidden_account"),
            Self::AccountNotConfigured(_) => (StatusCode::FORBIDDEN, "account_not_configured"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::InvalidId { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::ApiKeyRefused => (StatusCode::BAD_GATEWAY, "api_key_refused"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::AtCapacity => (StatusCode::SERVICE_UNAVAILABLE, "at_capacity"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "full"),
            Self::StateUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable"),
            Self::NoApiKey => (StatusCode::FORBIDDEN, "no_api_key"),
            Self::WebhookSecretMissing => (StatusCode::SERVICE_UNAVAILABLE, "webhook_secret_not_configured"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorResponse { error: ErrorDetail { code, message: self.to_string() } };
        let mut resp = (status, Json(body)).into_response();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::ShuttingDown | Self::Timeout => Some(5),
            Self::AtCapacity | Self::Full(_) | Self::StateUnavailable => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(from_rejection(&rejection)),
        }
    }
}

fn from_rejection(r: &JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::InvalidField(data_error_text(&e.body_text())),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadJson(data_error_text(&e.body_text())),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadJson(other.body_text()),
    }
}

/// Trims serde's message ("Failed to deserialize the JSON body into the target type: ...").
fn data_error_text(text: &str) -> String {
    let t = text.split_once(": ").map_or(text, |(_, rest)| rest);
    t.chars().take(300).collect()
}

// === the error answers as the OpenAPI document lists them ===
//
// One type per status, named in each handler's `#[utoipa::path(responses(...))]`; the body is
// always [`ErrorResponse`]. 429 and 503 carry `Retry-After` (see `IntoResponse` above).

/// 400: bad JSON or an invalid field.
#[derive(utoipa::IntoResponses)]
#[response(status = 400, description = "Bad JSON or an invalid field")]
pub struct BadRequest(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 401: no or unknown bearer token.
#[derive(utoipa::IntoResponses)]
#[response(status = 401, description = "No or unknown bearer token (or a bad webhook signature)")]
pub struct Unauthorized(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 403: the token may not act on the account, or no API key covers it.
#[derive(utoipa::IntoResponses)]
#[response(status = 403, description = "The token may not act on this account, or no API key covers it")]
pub struct Forbidden(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 404: no such resource.
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "No such resource")]
pub struct NotFound(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 413: the body exceeds `server.max_body_bytes`.
#[derive(utoipa::IntoResponses)]
#[response(status = 413, description = "The body exceeds server.max_body_bytes")]
pub struct PayloadTooLarge(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 415: the body is not `application/json`.
#[derive(utoipa::IntoResponses)]
#[response(status = 415, description = "Content-Type is not application/json")]
pub struct UnsupportedMediaType(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 422: an id does not match its platform's pattern, or the upstream refused a value.
#[derive(utoipa::IntoResponses)]
#[response(status = 422, description = "An id does not match its platform's pattern, or the upstream refused a value")]
pub struct Unprocessable(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 429: the token's hook rate limit.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 429,
    description = "The token's hook rate limit; retry after Retry-After seconds",
    headers(("Retry-After" = String, description = "Seconds to wait"))
)]
pub struct TooManyRequests(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 502: the upstream refused the API key or failed.
#[derive(utoipa::IntoResponses)]
#[response(status = 502, description = "The upstream refused the API key or failed")]
pub struct BadGateway(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);

/// 503: shutting down, at a cap, or timed out.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "Shutting down, at the session cap, or the request timed out; retry after Retry-After",
    headers(("Retry-After" = String, description = "Seconds to wait"))
)]
pub struct ServiceUnavailable(#[allow(dead_code, reason = "names the body for the document")] ErrorResponse);
