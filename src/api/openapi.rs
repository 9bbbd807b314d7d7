//! `GET /openapi.json`: the OpenAPI 3.1 document of the hook API, built with utoipa.
//!
//! Request and response bodies come from the DTOs' `ToSchema` derives (`typing.rs`); answers
//! whose types live outside `api` (sessions, budgets) and the shared error body are described by
//! doc-only types below, which mirror the serialized shape. Paths are assembled with utoipa's
//! builder, one line per route. Every route documents its 4xx/5xx answers with the
//! `{"error": {"code", "message"}}` body. The account routes (client sessions, authentication
//! attempts, the OnlyFansAPI webhook) sit in their own section at the end of the file.
//!
//! It only describes: nothing here is on a request path other than `GET /openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    Required, Response, ResponseBuilder,
};

use super::typing::{
    BatchEvent, BatchRequest, BatchResponse, RawId, SessionRef, StartRequest, StopRequest, TypingResponse,
};
use crate::engine::Priority;
use crate::ids::Platform;

/// Name of the bearer security scheme (hook tokens).
const BEARER: &str = "hook_token";
/// Tag of the account routes, so tools can include or exclude them as a group.
pub const ACCOUNTS_TAG: &str = "accounts";

// === doc-only types: the serialized shape of answers built outside `api` ===

/// An error answer.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct ErrorResponse {
    /// The error.
    error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_chat_id`, `forbidden_account`, `rate_limited`.
    code: String,
    /// Human-readable message.
    message: String,
}

/// A live session (`GET /v1/typing/sessions`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct SessionInfo {
    platform: Platform,
    account_id: String,
    chat_id: String,
    /// The caller's chatter ids holding it (`null` for the caller's anonymous holder); other
    /// tenants' holders are not listed.
    holders: Vec<Option<String>>,
    priority: Priority,
    /// Milliseconds since it started.
    age_ms: u64,
    /// Milliseconds until it ends unless refreshed.
    expires_in_ms: u64,
    /// Whether its account is paused.
    paused: bool,
    /// Whether it holds a lit slot of its budget (every refire paid on time); false while it
    /// waits for one and is refired from what the budget has left.
    lit_slot: bool,
}

/// Answer of `GET /v1/typing/sessions`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct SessionList {
    /// Number of sessions listed.
    count: u64,
    /// The caller's live sessions.
    sessions: Vec<SessionInfo>,
}

/// Where a budget's limit comes from.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub enum LimitSource {
    /// Reported by the upstream's `limit_minute`.
    Upstream,
    /// Configured, until the upstream reports one.
    Config,
}

/// What paused a budget.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub enum PauseReason {
    /// The upstream answered 429.
    RateLimited,
    /// `remaining_minute` reached the reserve.
    Reserve,
    /// `remaining_day` reached the reserve share of `limit_day`.
    DailyReserve,
}

/// One budget (`GET /v1/budget`).
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct BudgetInfo {
    name: String,
    limit_per_minute: u32,
    limit_source: LimitSource,
    remaining_minute: Option<u32>,
    typing_per_minute: f64,
    effective_typing_per_minute: f64,
    tokens: f64,
    sent_last_minute: u64,
    paused: bool,
    paused_for_ms: Option<u64>,
    pause_reason: Option<PauseReason>,
    /// Fans the budget can keep fully lit at the OnlyFans cadence right now.
    capacity_fans: f64,
    /// Sessions holding a lit slot.
    sessions_lit: u64,
    /// Sessions waiting for a slot.
    sessions_waiting: u64,
    /// First indicators paid in the last minute.
    first_indicators_last_minute: u64,
    /// `limit_day`, when the upstream reports a number.
    limit_day: Option<u32>,
    /// `remaining_day`, when the upstream reports a number.
    remaining_day: Option<u32>,
    /// Names of the caller's usable API keys spending from it.
    keys: Vec<String>,
}

/// Answer of `GET /v1/budget`.
#[derive(ToSchema)]
#[allow(dead_code, reason = "describes a JSON shape; never constructed")]
pub struct BudgetList {
    /// The budgets of the keys the caller's token may use (empty when it may use none).
    budgets: Vec<BudgetInfo>,
}

// === the document ===

/// The document, built once.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(build)
}

/// `GET /openapi.json`
pub async fn openapi_json() -> Json<&'static OpenApi> {
    Json(document())
}

fn build() -> OpenApi {
    let paths = PathsBuilder::new()
        .path(
            "/v1/typing/start",
            post(
                "startTyping",
                "Start or refresh a chat's typing session",
                "StartRequest",
                "TypingResponse",
                &[400, 401, 403, 413, 415, 422, 429, 502, 503],
            ),
        )
        .path(
            "/v1/typing/stop",
            post(
                "stopTyping",
                "Release a chat; no typing call leaves once answered",
                "StopRequest",
                "TypingResponse",
                &[400, 401, 403, 413, 415, 422, 429, 503],
            ),
        )
        .path(
            "/v1/typing/batch",
            post(
                "typingBatch",
                "Several starts and stops, validated whole",
                "BatchRequest",
                "BatchResponse",
                &[400, 401, 403, 413, 415, 422, 429, 503],
            ),
        )
        .path("/v1/typing/sessions", get("listSessions", "The caller's live sessions", "SessionList", &[401, 429, 503]))
        .path(
            "/v1/budget",
            get("getBudget", "The state of the budgets the caller's keys spend from", "BudgetList", &[401, 429, 503]),
        )
        .path("/openapi.json", PathItem::new(HttpMethod::Get, openapi_operation()));
    let paths = accounts::paths(paths);
    let components = ComponentsBuilder::new()
        .schema_from::<StartRequest>()
        .schema_from::<StopRequest>()
        .schema_from::<BatchRequest>()
        .schema_from::<BatchEvent>()
        .schema_from::<RawId>()
        .schema_from::<Platform>()
        .schema_from::<Priority>()
        .schema_from::<TypingResponse>()
        .schema_from::<SessionRef>()
        .schema_from::<BatchResponse>()
        .schema_from::<SessionList>()
        .schema_from::<SessionInfo>()
        .schema_from::<BudgetList>()
        .schema_from::<BudgetInfo>()
        .schema_from::<LimitSource>()
        .schema_from::<PauseReason>()
        .schema_from::<ErrorResponse>()
        .schema_from::<ErrorDetail>()
        .security_scheme(BEARER, SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    let components = accounts::components(components).build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("keeptyping hook API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Keeps the \"Model is typing...\" indicator alive while a chatter composes. \
                     Authenticate with `Authorization: Bearer <hook token>`.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

fn json_content(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(schema))).build()
}

fn ok(description: &str, schema: &str) -> Response {
    ResponseBuilder::new().description(description).content("application/json", json_content(schema)).build()
}

/// The error answer for `status`.
fn error(status: u16) -> Response {
    let description = match status {
        400 => "Bad JSON or an invalid field",
        401 => "No or unknown bearer token (or a bad webhook signature)",
        403 => "The token may not act on this account, or no API key covers it",
        404 => "No such resource",
        413 => "The body exceeds server.max_body_bytes",
        415 => "Content-Type is not application/json",
        422 => "An id does not match its platform's pattern",
        429 => "The token's hook rate limit; retry after Retry-After seconds",
        502 => "The upstream refused the API key or failed",
        503 => "Shutting down, at the session cap, or the request timed out; retry after Retry-After",
        _ => "Error",
    };
    let mut b =
        ResponseBuilder::new().description(description).content("application/json", json_content("ErrorResponse"));
    if matches!(status, 429 | 503) {
        let seconds = ObjectBuilder::new().schema_type(Type::String).description(Some("Seconds to wait"));
        b = b.header("Retry-After", HeaderBuilder::new().schema(seconds).build());
    }
    b.build()
}

fn operation(id: &str, summary: &str, ok_schema: &str, errors: &[u16]) -> OperationBuilder {
    let mut op = OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .response("200", ok("Success", ok_schema))
        .security(SecurityRequirement::new::<&str, [&str; 0], &str>(BEARER, []));
    for status in errors {
        op = op.response(status.to_string(), error(*status));
    }
    op
}

fn body(schema: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new().content("application/json", json_content(schema)).required(Some(Required::True)).build()
}

fn post(id: &str, summary: &str, request: &str, answer: &str, errors: &[u16]) -> PathItem {
    PathItem::new(
        HttpMethod::Post,
        operation(id, summary, answer, errors).tag("typing").request_body(Some(body(request))).build(),
    )
}

fn get(id: &str, summary: &str, answer: &str, errors: &[u16]) -> PathItem {
    PathItem::new(HttpMethod::Get, operation(id, summary, answer, errors).tag("typing").build())
}

fn openapi_operation() -> Operation {
    let any = ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object))).build();
    OperationBuilder::new()
        .operation_id(Some("openapi"))
        .summary(Some("This document"))
        .tag("meta")
        .securities(Some(Vec::<SecurityRequirement>::new()))
        .response("200", ResponseBuilder::new().description("The OpenAPI document").content("application/json", any))
        .response("503", error(503))
        .build()
}

// === account routes =========================================================================
//
// Client-session minting, authentication attempts and the OnlyFansAPI webhook (DESIGN.md's hook
// API table), described apart from the typing routes; tagged
// `accounts`.

mod accounts {
    use utoipa::ToSchema;
    use utoipa::openapi::ComponentsBuilder;

    use super::*;

    /// Body of `POST /v1/client-sessions`.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct ClientSessionRequest {
        /// Shown in OnlyFansAPI's dashboard.
        display_name: String,
        /// The caller's own reference for this login.
        client_reference_id: Option<String>,
        /// Proxy country for the login (an opaque lowercase code).
        proxy_country: Option<String>,
    }

    /// The client-session token minted upstream (`ofapi_cs_...`), for the browser login.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct ClientSessionResponse {
        token: String,
        display_name: String,
        client_reference_id: Option<String>,
        proxy_country: Option<String>,
    }

    /// Body of `POST /v1/auth-attempts`.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct AuthAttemptRequest {
        /// The `auth_...` id OnlyFansAPI returned.
        attempt_id: String,
    }

    /// State of an authentication attempt.
    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) enum AuthState {
        Pending,
        #[serde(rename = "needs_2fa")]
        Needs2fa,
        MobilePending,
        Connected,
        Failed,
        TimedOut,
    }

    /// The latest state of a watched authentication attempt.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct AuthAttemptResponse {
        /// On `POST`: `watching` (new) or `already_watching`.
        outcome: Option<String>,
        attempt_id: String,
        state: AuthState,
        /// `pending`: the upstream's progress.
        progress: Option<String>,
        /// `needs_2fa`: last digits of the phone the code went to.
        otp_phone_ending: Option<String>,
        /// `mobile_pending`: the deeplink that opens the app.
        mobile_deeplink: Option<String>,
        /// `connected`: the connected account.
        account_id: Option<String>,
        /// `failed`: the upstream's error code.
        error_code: Option<String>,
        /// `failed`: the upstream's message.
        error_message: Option<String>,
        /// Every state reached, in order.
        history: Vec<String>,
        /// Whether it is still polled.
        watching: bool,
        /// Polls sent so far.
        polls: u32,
        /// Milliseconds since watching started.
        age_ms: u64,
        /// Outcome label of the last failed poll.
        last_error: Option<String>,
    }

    /// Answer of the webhook route.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct WebhookAnswer {
        /// `paused`, `resumed`, `stopped`, `not_found` or `ignored`.
        outcome: String,
        /// Why it was ignored.
        reason: Option<String>,
    }

    /// An OnlyFansAPI webhook envelope.
    #[derive(ToSchema)]
    #[allow(dead_code, reason = "describes a JSON shape; never constructed")]
    pub(super) struct WebhookEnvelope {
        /// e.g. `accounts.session_expired`, `messages.sent`.
        event: String,
        account_id: Option<String>,
        #[schema(value_type = Option<Object>)]
        payload: Option<serde_json::Value>,
    }

    pub(super) fn paths(p: utoipa::openapi::path::PathsBuilder) -> utoipa::openapi::path::PathsBuilder {
        let tagged = |op: OperationBuilder| op.tag(ACCOUNTS_TAG);
        let mint = tagged(operation(
            "createClientSession",
            "Mint an OnlyFansAPI client-session token",
            "ClientSessionResponse",
            &[400, 401, 403, 413, 415, 422, 429, 502, 503],
        ))
        .request_body(Some(body("ClientSessionRequest")))
        .build();
        let watch = tagged(operation(
            "watchAuthAttempt",
            "Watch an authentication attempt",
            "AuthAttemptResponse",
            &[400, 401, 413, 415, 429, 503],
        ))
        .request_body(Some(body("AuthAttemptRequest")))
        .build();
        let attempt_id = ParameterBuilder::new()
            .name("attempt_id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        let state = tagged(operation(
            "getAuthAttempt",
            "Latest state of an authentication attempt",
            "AuthAttemptResponse",
            &[400, 401, 404, 429, 503],
        ))
        .parameter(attempt_id)
        .build();
        let signature = ParameterBuilder::new()
            .name("Signature")
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some("Hex HMAC-SHA256 of the raw body with the webhook signing secret"))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        let mut hook = OperationBuilder::new()
            .operation_id(Some("onlyfansapiWebhook"))
            .summary(Some("OnlyFansAPI webhook (authenticated by its Signature, not a bearer token)"))
            .tag(ACCOUNTS_TAG)
            .securities(Some(Vec::<SecurityRequirement>::new()))
            .parameter(signature)
            .request_body(Some(body("WebhookEnvelope")))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Accepted")
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("WebhookAnswer"))).build(),
                    )
                    .build(),
            );
        for status in [400, 401, 413, 415, 503] {
            hook = hook.response(status.to_string(), error(status));
        }
        p.path("/v1/client-sessions", PathItem::new(HttpMethod::Post, mint))
            .path("/v1/auth-attempts", PathItem::new(HttpMethod::Post, watch))
            .path("/v1/auth-attempts/{attempt_id}", PathItem::new(HttpMethod::Get, state))
            .path("/v1/webhooks/onlyfansapi", PathItem::new(HttpMethod::Post, hook.build()))
    }

    pub(super) fn components(c: ComponentsBuilder) -> ComponentsBuilder {
        c.schema_from::<ClientSessionRequest>()
            .schema_from::<ClientSessionResponse>()
            .schema_from::<AuthAttemptRequest>()
            .schema_from::<AuthAttemptResponse>()
            .schema_from::<AuthState>()
            .schema_from::<WebhookEnvelope>()
            .schema_from::<WebhookAnswer>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::to_value(document()).unwrap()
    }

    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_to_a_component() {
        let d = doc();
        let mut all = Vec::new();
        refs(&d, &mut all);
        assert!(all.len() > 20, "{all:?}");
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("odd ref {r}"));
            assert!(d["components"]["schemas"][name].is_object(), "unresolved {r}");
        }
    }

    #[test]
    fn every_route_is_described_with_its_errors() {
        let d = doc();
        let routes = [
            ("/v1/typing/start", "post"),
            ("/v1/typing/stop", "post"),
            ("/v1/typing/batch", "post"),
            ("/v1/typing/sessions", "get"),
            ("/v1/budget", "get"),
            ("/openapi.json", "get"),
            ("/v1/client-sessions", "post"),
            ("/v1/auth-attempts", "post"),
            ("/v1/auth-attempts/{attempt_id}", "get"),
            ("/v1/webhooks/onlyfansapi", "post"),
        ];
        for (path, method) in routes {
            let op = &d["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not described");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{path}");
            assert!(responses.contains_key("503"), "{path}: every route can answer 503");
            for (status, resp) in responses.iter().filter(|(s, _)| s.as_str() >= "400") {
                assert_eq!(
                    resp["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorResponse",
                    "{path} {status}"
                );
            }
        }
        assert_eq!(d["paths"].as_object().unwrap().len(), routes.len(), "a route is described but not listed here");
    }

    #[test]
    fn the_typing_schemas_match_what_the_handlers_accept() {
        let d = doc();
        let start = &d["components"]["schemas"]["StartRequest"];
        let required: Vec<&str> = start["required"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
        assert_eq!(required, ["account_id", "chat_id"]);
        let platform = &d["components"]["schemas"]["Platform"]["enum"];
        assert_eq!(platform, &serde_json::json!(["onlyfans", "fansly", "fanvue"]));
        assert!(d["components"]["securitySchemes"][BEARER].is_object());
    }
}
