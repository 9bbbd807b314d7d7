//! `App`: binds both listeners and wires config, upstream, budget, engine and API together.
//!
//! [`App::build`] does everything fallible (binding, TLS, key headers, the attempt scheduler) so
//! `main` can report it;
//! [`App::run_until_stopped`] serves until the given signal fires, then drains in the order of
//! DESIGN.md: readiness and hooks go 503 and no typing call leaves, the scheduler stops, the
//! listeners stop accepting, and tracked work finishes within `shutdown.grace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::accounts::Accounts;
use crate::api::{self, ApiState, Tokens};
use crate::budget::Budgets;
use crate::config::{Backend, Config, Count, DEFAULT_NAME, EngineSettings, Settings};
use crate::engine::{Engine, EngineConfig, KeyRing, Scheduler};
use crate::ids::AccountId;
use crate::server::{self, Limits};
use crate::shutdown::Shutdown;
use crate::state::{Replica, ReplicaConfig, State};
use crate::upstream::{OnlyFansClient, Upstream};

/// How often the Prometheus handle's upkeep runs (histogram maintenance).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The built, not yet running, service.
pub struct App {
    hooks: TcpListener,
    admin: TcpListener,
    hook_router: axum::Router,
    admin_router: axum::Router,
    state: ApiState,
    scheduler: Scheduler,
    shutdown: Shutdown,
    /// `shutdown.drain_delay`: 503s before the listeners close.
    drain_delay: Duration,
    client: OnlyFansClient,
    accounts: Accounts,
    /// `server.header_read_timeout` and `server.max_connections`.
    hook_limits: Limits,
    /// `admin.header_read_timeout` and `admin.max_connections`.
    admin_limits: Limits,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("port", &self.port())
            .field("admin_port", &self.admin_port())
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds everything and binds both listeners.
    ///
    /// # Errors
    /// When a listener cannot be bound, no hook token is configured while unauthenticated
    /// hooks are not allowed, or the upstream client cannot be built.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let Config { settings, secrets } = config;
        if secrets.hook_tokens.is_empty() && !settings.hooks.allow_unauthenticated {
            anyhow::bail!(
                "no hook token is configured: set KEEPTYPING_HOOK_TOKEN or [[hooks.tokens]], \
                 or hooks.allow_unauthenticated = true for development"
            );
        }
        if secrets.api_keys.is_empty() {
            tracing::warn!(
                "no OnlyFansAPI key is configured (ONLYFANSAPI_API_KEY or [[upstream.keys]]): every start will answer 403"
            );
        }
        let metrics = crate::metrics::install();
        let client =
            OnlyFansClient::build(&settings.upstream, &secrets.api_keys).context("building the upstream client")?;
        let mut budget_names: Vec<String> = secrets.api_keys.iter().map(|k| k.budget.clone()).collect();
        if budget_names.is_empty() {
            budget_names.push(DEFAULT_NAME.to_owned());
        }
        let budgets = Budgets::new(&budget_names, &settings.budget, Instant::now());
        let keys = KeyRing::new(&secrets.api_keys, &budgets);
        let engine_cfg = EngineConfig {
            engine: EngineSettings { max_in_flight: socket_budget(&settings), ..settings.engine.clone() },
            platforms: settings.platforms.clone(),
            budget: settings.budget.clone(),
            unavailable_pause: settings.accounts.unavailable_pause,
        };
        let upstream: Arc<dyn Upstream> = Arc::new(client.clone());
        let (engine, scheduler) = Engine::new(engine_cfg, upstream, budgets, keys);
        let tokens =
            Tokens::new(&secrets.hook_tokens, settings.hooks.allow_unauthenticated, |name| engine.keys().by_name(name));
        // A connected attempt resumes the account's typing at once (accounts does not know the engine).
        let readiness = engine.clone();
        let on_connected = Arc::new(move |account: &str| {
            if let Ok(account) = AccountId::parse_any(account) {
                readiness.resume_account(&account);
            }
        });
        let accounts = Accounts::build(
            settings.accounts.clone(),
            client.clone(),
            secrets.webhook_secret,
            secrets.callback_secret,
            on_connected,
        )
        .await
        .context("starting the authentication-attempt scheduler")?;
        let shutdown = Shutdown::new(settings.shutdown.grace.saturating_sub(settings.shutdown.drain_delay));
        let backend = match settings.state.backend {
            Backend::Memory => State::Memory(engine.clone()),
            Backend::Redis => {
                let url = secrets.redis_url.as_ref().context("state.backend is redis but no Redis URL is set")?;
                let urls = crate::state::redis_urls(url.expose_secret(), settings.state.cluster)
                    .map_err(|reason| anyhow::anyhow!("config: state.redis_url: {reason}"))?;
                let config = ReplicaConfig {
                    id: replica_id(),
                    urls,
                    cluster: settings.state.cluster,
                    lease: settings.state.lease,
                };
                let replica = Replica::start(
                    config,
                    engine.clone(),
                    budget_names.clone(),
                    &shutdown.tracker,
                    shutdown.token.child_token(),
                )
                .await?;
                State::Redis(replica)
            }
        };
        let mut state = ApiState::new(&settings, engine, tokens, metrics, accounts.clone());
        state.backend = backend;
        state.admin_token = secrets.admin_token;
        let hook_router = api::router(state.clone(), &settings);
        let admin_router = api::admin_router(state.clone());
        let hooks = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding the hook listener on {}", settings.server.listen))?;
        let admin = TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| format!("binding the admin listener on {}", settings.admin.listen))?;
        Ok(Self {
            hooks,
            admin,
            hook_router,
            admin_router,
            state,
            scheduler,
            shutdown,
            drain_delay: settings.shutdown.drain_delay,
            client,
            accounts,
            hook_limits: Limits {
                header_read_timeout: settings.server.header_read_timeout,
                max_connections: settings.server.max_connections.as_usize(),
            },
            admin_limits: Limits {
                header_read_timeout: settings.admin.header_read_timeout,
                max_connections: settings.admin.max_connections.as_usize(),
            },
        })
    }

    /// The hook listener's port.
    pub fn port(&self) -> u16 {
        self.hooks.local_addr().map_or(0, |a| a.port())
    }

    /// The admin listener's port.
    pub fn admin_port(&self) -> u16 {
        self.admin.local_addr().map_or(0, |a| a.port())
    }

    /// The hook listener's address.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.hooks.local_addr().ok()
    }

    /// The engine handle.
    pub fn engine(&self) -> Engine {
        self.state.engine.clone()
    }

    /// The upstream client (shared with the account routes).
    pub fn client(&self) -> OnlyFansClient {
        self.client.clone()
    }

    /// Serves until `signal` completes, then drains.
    ///
    /// # Errors
    /// The hook listener's thread could not start. A failed accept is logged and retried, a
    /// failed connection is the client's.
    pub async fn run_until_stopped(self, signal: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            hooks,
            admin,
            hook_router,
            admin_router,
            state,
            scheduler,
            shutdown,
            accounts,
            drain_delay,
            hook_limits,
            admin_limits,
            ..
        } = self;
        let token = shutdown.token.clone();
        shutdown.tracker.spawn(scheduler.run(token.child_token()));
        // The attempt watcher's job scheduler stops with everything else.
        let accounts_token = token.child_token();
        shutdown.tracker.spawn(async move {
            accounts_token.cancelled().await;
            accounts.shutdown().await;
        });
        let metrics = state.metrics.clone();
        let upkeep_token = token.child_token();
        shutdown.tracker.spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tokio::select! {
                    () = upkeep_token.cancelled() => return,
                    _ = tick.tick() => metrics.run_upkeep(),
                }
            }
        });
        // Hooks are served on a thread of their own, so that a chatter's start or stop does not
        // queue behind the typing calls on this runtime's workers (see `server`).
        let hook_server = server::serve_on_own_thread(hooks, hook_router, hook_limits, "hooks", &token)
            .context("starting the hook listener's thread")?;
        let admin_server = server::serve(admin, admin_router, admin_limits, "admin", token.clone());
        shutdown.tracker.spawn(async move {
            tokio::join!(hook_server, admin_server);
        });
        api::set_ready(&state.ready, true);
        tracing::info!("keeptyping is ready");
        signal.await;
        // (1) readiness answers 503; with replicas, this one's chats move to the others first
        // (each keeps its cadence), then hooks answer 503 and no new typing call leaves.
        api::set_ready(&state.ready, false);
        state.backend.leave().await;
        state.engine.drain();
        tracing::info!(sessions = state.engine.active_count(), "draining");
        if !drain_delay.is_zero() {
            // Keep answering 503 while routers notice; nothing is sent meanwhile (drained).
            tokio::time::sleep(drain_delay).await;
        }
        // (2) stop the scheduler and the listeners; (3) wait for tracked work within the grace.
        let clean = shutdown.drain().await;
        tracing::info!(clean, "stopped");
        Ok(())
    }
}

/// `engine.max_in_flight`, or less when the open-file limit (raised to its hard limit first)
/// would not hold that many connections besides both listeners' (see [`crate::limits`]).
fn socket_budget(settings: &Settings) -> Count {
    let configured = settings.engine.max_in_flight.as_usize();
    let connections = settings.server.max_connections.as_usize() + settings.admin.max_connections.as_usize();
    let open_files = crate::limits::raise_open_file_limit();
    let budget = crate::limits::socket_budget(configured, connections, open_files);
    if budget < configured {
        tracing::warn!(
            max_in_flight = configured,
            open_files,
            used_instead = budget,
            "engine.max_in_flight does not fit the open-file limit besides the listeners' connections; \
             raise the limit (ulimit -n) or lower engine.max_in_flight"
        );
    }
    Count::of(u32::try_from(budget).unwrap_or(u32::MAX))
}

/// This replica's id: `KEEPTYPING_REPLICA_ID` (the chart sets the pod name), else the host name
/// and the process id.
fn replica_id() -> String {
    if let Some(id) = std::env::var("KEEPTYPING_REPLICA_ID").ok().filter(|v| !v.trim().is_empty()) {
        return id.trim().to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keeptyping".to_owned());
    format!("{host}-{}", std::process::id())
}
