//! The hook API and the admin listener.
//!
//! Hook API (`server.listen`), JSON in and out, bearer-token auth:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/typing/start` | start or refresh a chat's typing session |
//! | `POST /v1/typing/stop` | release it; no typing call leaves once answered |
//! | `POST /v1/typing/batch` | several starts and stops, validated whole |
//! | `GET /v1/typing/sessions` | the caller's live sessions |
//! | `GET /v1/budget` | the state of the budgets the caller's keys spend from |
//! | `POST /v1/client-sessions` | mint the `ofapi_cs_…` token a browser hands to `startOnlyFansAuthentication` |
//! | `POST /v1/auth-attempts` | watch an authentication attempt |
//! | `GET /v1/auth-attempts/{attempt_id}` | its latest state |
//! | `POST /v1/webhooks/onlyfansapi` | OnlyFansAPI webhooks (signature, not bearer token) |
//! | `GET /openapi.json` | the OpenAPI document of the hook API (no token needed) |
//!
//! Admin (`admin.listen`): `GET /metrics`, `/livez`, `/readyz`, and the status page `GET /`
//! (with `GET /status.json`; account ids only with the admin token).
//!
//! Handlers call only [`Engine`] and [`Accounts`]: they never call the upstream for typing and
//! never spawn.

pub mod accounts;
mod admin;
pub mod auth;
pub mod budget;
pub mod error;
mod limit;
pub mod openapi;
pub mod replay;
mod status;
pub mod typing;
pub mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use admin::admin_router;
pub use auth::{Caller, Tokens};
pub use error::{ApiError, AppJson};
pub use limit::HookLimiter;

use crate::accounts::Accounts;
use crate::config::Settings;
use crate::engine::Engine;
use crate::ids::Platform;

/// What the hook handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The engine.
    pub engine: Engine,
    /// Where sessions live: this process, or Redis shared by replicas (hooks go through it).
    pub backend: crate::state::State,
    /// Hook tokens.
    pub tokens: Arc<Tokens>,
    /// Per-token rate limit.
    pub hook_limit: Arc<HookLimiter>,
    /// False once the drain starts (and before the app is ready).
    pub ready: Arc<AtomicBool>,
    /// The metrics handle (`/metrics`).
    pub metrics: PrometheusHandle,
    /// `engine.idle_timeout`
    pub idle_timeout: Duration,
    /// `engine.max_lifetime`
    pub max_lifetime: Duration,
    /// `hooks.max_batch_events`
    pub max_batch_events: usize,
    /// Cadence per platform.
    pub platforms: crate::config::PlatformsSettings,
    /// Client sessions, watched attempts, webhook signatures.
    pub accounts: Accounts,
    /// `accounts.unavailable_pause`: how long a webhook-paused account waits before a probe.
    pub unavailable_pause: Duration,
    /// SHA-256 of the admin token; the status page shows account ids only to its holders.
    pub admin_token: Option<[u8; 32]>,
    /// Verified webhook bodies seen recently (replays are dropped).
    pub webhook_replays: Arc<replay::ReplayGuard>,
}

impl ApiState {
    /// The refire interval of `platform`.
    pub fn refire_interval(&self, platform: Platform) -> Duration {
        self.platforms.get(platform).refire_interval
    }

    /// Builds the state from settings and its parts.
    pub fn new(
        settings: &Settings,
        engine: Engine,
        tokens: Tokens,
        metrics: PrometheusHandle,
        accounts: Accounts,
    ) -> Self {
        let hook_limit = HookLimiter::new(
            settings.hooks.tokens.len() + 1,
            settings.hooks.rate_limit_per_second,
            settings.hooks.rate_limit_burst,
        );
        Self {
            backend: crate::state::State::Memory(engine.clone()),
            engine,
            tokens: Arc::new(tokens),
            hook_limit: Arc::new(hook_limit),
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            idle_timeout: settings.engine.idle_timeout,
            max_lifetime: settings.engine.max_lifetime,
            max_batch_events: settings.hooks.max_batch_events.as_usize(),
            platforms: settings.platforms.clone(),
            accounts,
            unavailable_pause: settings.accounts.unavailable_pause,
            admin_token: None,
            webhook_replays: Arc::new(replay::ReplayGuard::default()),
        }
    }
}

/// The hook router.
pub fn router(state: ApiState, settings: &Settings) -> Router {
    let timeout = settings.server.request_timeout;
    // Served and described from one list: a route outside `openapi::routes` would be missing
    // from the document, so there is none.
    let (routes, _described) = openapi::routes().split_for_parts();
    let mut app = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), refuse_while_draining))
        .layer(DefaultBodyLimit::max(settings.server.max_body_bytes))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async { ApiError::Timeout }))
                .timeout(timeout),
        )
        .layer(middleware::from_fn(record_metrics))
        .with_state(state);
    if !settings.hooks.cors_allowed_origins.is_empty() {
        let origins: Vec<_> = settings.hooks.cors_allowed_origins.iter().filter_map(|o| o.parse().ok()).collect();
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers([axum::http::header::AUTHORIZATION, axum::http::header::CONTENT_TYPE]),
        );
    }
    app
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn refuse_while_draining(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if state.engine.is_draining() {
        return ApiError::ShuttingDown.into_response();
    }
    next.run(req).await
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    crate::metrics::hook_request(&route, resp.status().as_u16(), started.elapsed());
    resp
}

/// Marks the service ready (`/readyz` 200) or not.
pub fn set_ready(ready: &AtomicBool, value: bool) {
    ready.store(value, Ordering::Release);
}
