//! Configuration: the `Settings` tree, its layered loading and its validation, and the secrets
//! resolved beside it.
//!
//! Layers, later wins: defaults in code ([`Settings::default`]), the TOML file given by
//! `--config`, then environment variables `KEEPTYPING__SECTION__KEY`. Secrets (API keys, hook
//! tokens, the webhook signing secret) never live in the TOML: the TOML names an environment
//! variable or a file, and [`load`] resolves them into [`Secrets`], whose `Debug` redacts them.
//! This module does not start anything; it only produces values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AccountId, Platform};

/// Environment variable holding the default OnlyFansAPI key (the one the official SDKs read).
pub const ENV_API_KEY: &str = "ONLYFANSAPI_API_KEY";
/// Environment variable holding one hook token allowed on every account.
pub const ENV_HOOK_TOKEN: &str = "KEEPTYPING_HOOK_TOKEN";
/// Environment variable holding the OnlyFansAPI webhook signing secret.
pub const ENV_WEBHOOK_SECRET: &str = "KEEPTYPING_WEBHOOK_SECRET";
/// Environment variable holding the secret that signs authentication-attempt callbacks
/// (`accounts.callback_url`). Deliberately not the webhook secret: a chat tool that verifies
/// callbacks must not be able to forge OnlyFansAPI webhooks.
pub const ENV_CALLBACK_SECRET: &str = "KEEPTYPING_CALLBACK_SECRET";
/// Environment variable holding the admin token: with it, the status page and `/status.json`
/// show account ids to requests that present it.
pub const ENV_ADMIN_TOKEN: &str = "KEEPTYPING_ADMIN_TOKEN";
/// Prefix of layered overrides: `KEEPTYPING__ENGINE__IDLE_TIMEOUT=45s`.
pub const ENV_PREFIX: &str = "KEEPTYPING";
/// Name given to the key, token and budget created by the single-tenant shortcuts.
pub const DEFAULT_NAME: &str = "default";

/// The whole configuration, one section per module.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The hook API listener.
    pub server: ServerSettings,
    /// The admin listener (`/metrics`, `/livez`, `/readyz`).
    pub admin: AdminSettings,
    /// Hook authentication and request limits.
    pub hooks: HookSettings,
    /// Sessions and the scheduler.
    pub engine: EngineSettings,
    /// Cadence per platform.
    pub platforms: PlatformsSettings,
    /// The per-minute rate budget.
    pub budget: BudgetSettings,
    /// OnlyFansAPI itself.
    pub upstream: UpstreamSettings,
    /// Account onboarding and readiness.
    pub accounts: AccountsSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the hook API.
    pub listen: SocketAddr,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A hook request taking longer than this is answered 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait for a complete request head, counted from the moment the connection opens
    /// or its previous response was written: bounds slow headers and idle keep-alive alike.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open connections beyond which new ones are closed at once (and counted).
    pub max_connections: usize,
}

/// Default of `server.header_read_timeout` and `admin.header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server.max_connections`.
pub const DEFAULT_MAX_HOOK_CONNECTIONS: usize = 1024;
/// Default of `admin.max_connections`: Prometheus, probes and a few status pages.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 64;

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_HOOK_CONNECTIONS,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// As `server.header_read_timeout`, for the admin listener.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// As `server.max_connections`, for the admin listener.
    pub max_connections: usize,
    /// Environment variable holding the admin token (default: `KEEPTYPING_ADMIN_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the admin token (a mounted Kubernetes Secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_ADMIN_CONNECTIONS,
            token_env: None,
            token_file: None,
        }
    }
}

/// `[hooks]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookSettings {
    /// Accept hooks without a bearer token (development only).
    pub allow_unauthenticated: bool,
    /// Most events one `/v1/typing/batch` request may carry.
    pub max_batch_events: usize,
    /// Hook requests per second allowed per token (0: no limit).
    pub rate_limit_per_second: u32,
    /// Requests a token may send at once above its steady rate.
    pub rate_limit_burst: u32,
    /// Browser origins allowed to call the hooks (CORS); empty: CORS off.
    pub cors_allowed_origins: Vec<String>,
    /// Hook tokens, each with the accounts it may touch.
    pub tokens: Vec<HookTokenSettings>,
}

impl Default for HookSettings {
    fn default() -> Self {
        Self {
            allow_unauthenticated: false,
            max_batch_events: 500,
            rate_limit_per_second: 200,
            rate_limit_burst: 400,
            cors_allowed_origins: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

/// One `[[hooks.tokens]]` entry. Exactly one of `token_env`, `token_file`, `token_sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HookTokenSettings {
    /// Name of the tenant (appears in logs, never the token).
    pub name: String,
    /// Environment variable holding the token.
    pub token_env: Option<String>,
    /// File holding the token (a mounted Kubernetes Secret).
    pub token_file: Option<PathBuf>,
    /// Hex SHA-256 digest of the token, so the token itself is stored nowhere.
    pub token_sha256: Option<String>,
    /// Accounts this token may touch; `["*"]` for all.
    pub accounts: Vec<String>,
    /// The API key (by name) used for this tenant's calls that name no account.
    pub api_key: Option<String>,
}

/// `[engine]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// A holder that sends no start for this long releases the session.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Hard cap on one session, however many starts arrive.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Live sessions beyond which start answers 503.
    pub max_sessions: usize,
    /// Typing calls in flight at once, across all sessions.
    pub max_in_flight: usize,
    /// Refires due within one tick of each other leave together: the scheduler wakes at most
    /// once per tick for refires (first calls still leave at once). Up to one tick of lateness
    /// buys fewer wake-ups per call.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

/// Longest accepted `engine.tick`: far below any refire interval.
const MAX_TICK: Duration = Duration::from_millis(100);

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            max_sessions: 100_000,
            max_in_flight: 1024,
            tick: Duration::from_millis(5),
        }
    }
}

/// Cadence of one platform.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSettings {
    /// Time from one typing call to the next for one chat.
    #[serde(with = "humantime_serde")]
    pub refire_interval: Duration,
    /// How long the platform shows the indicator after one call.
    #[serde(with = "humantime_serde")]
    pub indicator_lifetime: Duration,
}

/// `[platforms.*]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformsSettings {
    /// `[platforms.onlyfans]`
    pub onlyfans: PlatformSettings,
    /// `[platforms.fansly]`
    pub fansly: PlatformSettings,
    /// `[platforms.fanvue]`
    pub fanvue: PlatformSettings,
}

impl PlatformsSettings {
    /// The cadence of `platform`.
    pub fn get(&self, platform: Platform) -> PlatformSettings {
        match platform {
            Platform::Onlyfans => self.onlyfans,
            Platform::Fansly => self.fansly,
            Platform::Fanvue => self.fanvue,
        }
    }
}

impl Default for PlatformsSettings {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            onlyfans: PlatformSettings { refire_interval: ms(3500), indicator_lifetime: ms(4000) },
            fansly: PlatformSettings { refire_interval: ms(2500), indicator_lifetime: ms(3000) },
            // Fanvue's indicator lifetime is undocumented; Fansly's shorter cadence is the
            // cautious assumption until it is observed.
            fanvue: PlatformSettings { refire_interval: ms(2500), indicator_lifetime: ms(3000) },
        }
    }
}

/// `[budget]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Requests per minute assumed until the upstream reports `limit_minute`.
    pub limit_per_minute: u32,
    /// Share of the per-minute limit typing may use.
    pub typing_share: f64,
    /// Typing pauses while upstream `remaining_minute` <= reserve x limit.
    pub reserve: f64,
    /// Tokens a bucket holds at least (a small burst); a large key's bucket holds one second of
    /// refill when that is more.
    pub burst: u32,
    /// The period the upstream counts its limit over (60 s; tests shorten it to scale time).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Per-budget overrides of `limit_per_minute` (budget name -> limit).
    pub limits: BTreeMap<String, u32>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            limit_per_minute: 1000,
            typing_share: 0.5,
            reserve: 0.1,
            burst: 10,
            window: Duration::from_secs(60),
            limits: BTreeMap::new(),
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Where typing calls go.
    pub base_url: String,
    /// One attempt per typing call; must stay below every refire interval.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time to establish a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle_per_host: usize,
    /// API keys beyond the `ONLYFANSAPI_API_KEY` shortcut.
    pub keys: Vec<ApiKeySettings>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: "https://app.onlyfansapi.com".to_owned(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 256,
            keys: Vec::new(),
        }
    }
}

/// One `[[upstream.keys]]` entry. Exactly one of `key_env`, `key_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeySettings {
    /// Name of the key (appears in logs and `/v1/budget`, never the key).
    pub name: String,
    /// Budget this key spends from; keys of one team share one.
    pub budget: Option<String>,
    /// Environment variable holding the key.
    pub key_env: Option<String>,
    /// File holding the key.
    pub key_file: Option<PathBuf>,
    /// Accounts whose calls use this key; `["*"]` for all.
    pub accounts: Vec<String>,
}

/// `[accounts]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsSettings {
    /// How often a watched authentication attempt is polled (whole seconds, at least 1s:
    /// the job scheduler rounds to seconds).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long an account answering 503 (or reported expired by a webhook) stays paused before
    /// typing is tried again.
    #[serde(with = "humantime_serde")]
    pub unavailable_pause: Duration,
    /// A watched attempt that reaches no terminal state within this long stops being polled and
    /// is reported `timed_out`.
    #[serde(with = "humantime_serde")]
    pub attempt_deadline: Duration,
    /// Most attempts remembered at once; beyond it, watching another answers 503.
    pub max_attempts: usize,
    /// How long a finished attempt stays readable before it is forgotten.
    #[serde(with = "humantime_serde")]
    pub attempt_retention: Duration,
    /// URL that receives every state change of a watched attempt (JSON, signed like
    /// OnlyFansAPI's webhooks with `KEEPTYPING_CALLBACK_SECRET`). Empty: no callback.
    pub callback_url: String,
}

/// Default of `accounts.attempt_deadline`: long enough for a creator to find a 2FA code.
pub const DEFAULT_ATTEMPT_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// Default of `accounts.attempt_retention`.
pub const DEFAULT_ATTEMPT_RETENTION: Duration = Duration::from_secs(60 * 60);
/// Default of `accounts.max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: usize = 1000;

impl Default for AccountsSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            unavailable_pause: Duration::from_secs(30),
            attempt_deadline: DEFAULT_ATTEMPT_DEADLINE,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            attempt_retention: DEFAULT_ATTEMPT_RETENTION,
            callback_url: String::new(),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Drain deadline after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long readiness and hooks answer 503 before the listeners close (load balancers and
    /// Kubernetes endpoints need a moment to stop routing here); part of `grace`.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { grace: Duration::from_secs(10), drain_delay: Duration::ZERO }
    }
}

/// Which accounts a key or a token covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountScope {
    /// Every account.
    All,
    /// Only these account ids.
    Only(HashSet<String>),
}

impl AccountScope {
    fn from_list(list: &[String]) -> Self {
        if list.iter().any(|a| a == "*") { Self::All } else { Self::Only(list.iter().cloned().collect()) }
    }

    /// Whether `account` is covered.
    pub fn allows(&self, account: &AccountId) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(account.as_str()),
        }
    }
}

/// A resolved OnlyFansAPI key.
pub struct ApiKey {
    /// The key's configured name.
    pub name: String,
    /// The budget it spends from.
    pub budget: String,
    /// The accounts whose calls use it.
    pub accounts: AccountScope,
    /// The key itself.
    pub secret: SecretString,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("budget", &self.budget)
            .field("accounts", &self.accounts)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// A resolved hook token, held only as its SHA-256 digest.
#[derive(Clone)]
pub struct HookToken {
    /// The tenant's name.
    pub name: String,
    /// The accounts it may touch.
    pub accounts: AccountScope,
    /// The API key (by name) for calls that name no account.
    pub api_key: Option<String>,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
}

impl fmt::Debug for HookToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookToken")
            .field("name", &self.name)
            .field("accounts", &self.accounts)
            .field("api_key", &self.api_key)
            .field("digest", &"[REDACTED]")
            .finish()
    }
}

/// SHA-256 of a hook token, the form in which tokens are compared and may be configured.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Secrets resolved from the environment and files.
#[derive(Debug, Default)]
pub struct Secrets {
    /// OnlyFansAPI keys, in configuration order.
    pub api_keys: Vec<ApiKey>,
    /// Hook tokens.
    pub hook_tokens: Vec<HookToken>,
    /// The OnlyFansAPI webhook signing secret.
    pub webhook_secret: Option<SecretString>,
    /// The secret signing authentication-attempt callbacks.
    pub callback_secret: Option<SecretString>,
    /// SHA-256 of the admin token (`admin.token_env`, `admin.token_file` or
    /// `KEEPTYPING_ADMIN_TOKEN`); with it, the status page shows account ids to its holders.
    pub admin_token: Option<[u8; 32]>,
}

/// Everything [`load`] produces.
#[derive(Debug)]
pub struct Config {
    /// The settings tree.
    pub settings: Settings,
    /// The secrets it names.
    pub secrets: Secrets,
}

/// Why the configuration cannot be used. `Display` is one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override could not be read or parsed.
    #[error("config: {0}")]
    Load(String),
    /// A value is out of range or inconsistent with another.
    #[error("config: {key}: {problem}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong, in words.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}

/// Loads the settings from defaults, `file` and the `KEEPTYPING__*` entries of `env`, validates
/// them and resolves the secrets they name. `env` is passed in (rather than read here) so tests
/// can supply their own environment.
///
/// # Errors
/// [`ConfigError`] naming the first key that is unreadable, invalid or names a missing secret.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let defaults =
        ::config::Config::try_from(&Settings::default()).map_err(|e| ConfigError::Load(format!("defaults: {e}")))?;
    let mut builder = ::config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Load(format!("file {} does not exist", path.display())));
        }
        builder = builder.add_source(::config::File::from(path).format(::config::FileFormat::Toml));
    }
    let overrides: ::config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        ::config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(overrides)),
    );
    let settings: Settings = builder
        .build()
        .and_then(::config::Config::try_deserialize)
        .map_err(|e| ConfigError::Load(e.to_string().replace('\n', " ")))?;
    settings.validate()?;
    let secrets = settings.resolve_secrets(env)?;
    Ok(Config { settings, secrets })
}

// === impl Settings ===

impl Settings {
    /// Cross-field checks. Called by [`load`].
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for platform in Platform::ALL {
            let p = self.platforms.get(platform);
            let key = format!("platforms.{platform}.refire_interval");
            if p.refire_interval.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
            if p.refire_interval >= p.indicator_lifetime {
                return Err(invalid(
                    key,
                    format!(
                        "must be shorter than indicator_lifetime ({}), or the indicator lapses between calls",
                        humantime::format_duration(p.indicator_lifetime)
                    ),
                ));
            }
            if self.upstream.timeout >= p.refire_interval {
                return Err(invalid(
                    "upstream.timeout",
                    format!("must be shorter than platforms.{platform}.refire_interval"),
                ));
            }
        }
        if self.upstream.timeout.is_zero() {
            return Err(invalid("upstream.timeout", "must be greater than zero"));
        }
        match reqwest::Url::parse(&self.upstream.base_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(invalid("upstream.base_url", "must be an http(s) URL")),
        }
        if self.engine.idle_timeout.is_zero() {
            return Err(invalid("engine.idle_timeout", "must be greater than zero"));
        }
        if self.engine.max_lifetime < self.engine.idle_timeout {
            return Err(invalid("engine.max_lifetime", "must be at least engine.idle_timeout"));
        }
        if self.engine.max_sessions == 0 {
            return Err(invalid("engine.max_sessions", "must be at least 1"));
        }
        if self.engine.max_in_flight == 0 {
            return Err(invalid("engine.max_in_flight", "must be at least 1"));
        }
        if self.engine.tick > MAX_TICK {
            return Err(invalid("engine.tick", "must be at most 100ms"));
        }
        if self.budget.limit_per_minute == 0 {
            return Err(invalid("budget.limit_per_minute", "must be at least 1"));
        }
        if !(self.budget.typing_share > 0.0 && self.budget.typing_share <= 1.0) {
            return Err(invalid("budget.typing_share", "must be in (0, 1]"));
        }
        if !(self.budget.reserve >= 0.0 && self.budget.reserve < 1.0) {
            return Err(invalid("budget.reserve", "must be in [0, 1)"));
        }
        if self.budget.burst == 0 {
            return Err(invalid("budget.burst", "must be at least 1"));
        }
        for (name, limit) in &self.budget.limits {
            if *limit == 0 {
                return Err(invalid(format!("budget.limits.{name}"), "must be at least 1"));
            }
        }
        if self.budget.window < Duration::from_secs(1) {
            return Err(invalid("budget.window", "must be at least 1s"));
        }
        if self.shutdown.grace.is_zero() {
            return Err(invalid("shutdown.grace", "must be greater than zero"));
        }
        if self.shutdown.drain_delay >= self.shutdown.grace {
            return Err(invalid("shutdown.drain_delay", "must be shorter than shutdown.grace"));
        }
        if self.accounts.poll_interval < Duration::from_secs(1) {
            return Err(invalid("accounts.poll_interval", "must be at least 1s"));
        }
        if self.accounts.attempt_deadline < self.accounts.poll_interval {
            return Err(invalid("accounts.attempt_deadline", "must be at least accounts.poll_interval"));
        }
        if self.accounts.max_attempts == 0 {
            return Err(invalid("accounts.max_attempts", "must be at least 1"));
        }
        if self.accounts.attempt_retention.is_zero() {
            return Err(invalid("accounts.attempt_retention", "must be greater than zero"));
        }
        if !self.accounts.callback_url.is_empty() {
            match reqwest::Url::parse(&self.accounts.callback_url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => return Err(invalid("accounts.callback_url", "must be an http(s) URL or empty")),
            }
        }
        for (listener, timeout, max) in [
            ("server", self.server.header_read_timeout, self.server.max_connections),
            ("admin", self.admin.header_read_timeout, self.admin.max_connections),
        ] {
            if timeout.is_zero() {
                return Err(invalid(format!("{listener}.header_read_timeout"), "must be greater than zero"));
            }
            if max == 0 {
                return Err(invalid(format!("{listener}.max_connections"), "must be at least 1"));
            }
        }
        if self.admin.token_env.is_some() && self.admin.token_file.is_some() {
            return Err(invalid("admin.token", "set at most one of token_env, token_file"));
        }
        if self.server.max_body_bytes < 256 {
            return Err(invalid("server.max_body_bytes", "must be at least 256"));
        }
        if self.hooks.max_batch_events == 0 {
            return Err(invalid("hooks.max_batch_events", "must be at least 1"));
        }
        self.validate_lists()
    }

    fn validate_lists(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, k) in self.upstream.keys.iter().enumerate() {
            let at = format!("upstream.keys[{i}]");
            if k.name.is_empty() || !names.insert(k.name.clone()) {
                return Err(invalid(format!("{at}.name"), "must be set and unique"));
            }
            if k.key_env.is_some() == k.key_file.is_some() {
                return Err(invalid(at, "set exactly one of key_env, key_file"));
            }
            check_accounts(&format!("{at}.accounts"), &k.accounts)?;
        }
        let mut names = HashSet::new();
        for (i, t) in self.hooks.tokens.iter().enumerate() {
            let at = format!("hooks.tokens[{i}]");
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(invalid(format!("{at}.name"), "must be set and unique"));
            }
            let sources = [t.token_env.is_some(), t.token_file.is_some(), t.token_sha256.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(at, "set exactly one of token_env, token_file, token_sha256"));
            }
            if let Some(d) = &t.token_sha256 {
                if d.len() != 64 || hex::decode(d).is_err() {
                    return Err(invalid(format!("{at}.token_sha256"), "must be 64 hex digits"));
                }
            }
            check_accounts(&format!("{at}.accounts"), &t.accounts)?;
        }
        Ok(())
    }

    fn resolve_secrets(&self, env: &HashMap<String, String>) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::default();
        for (i, k) in self.upstream.keys.iter().enumerate() {
            let at = format!("upstream.keys[{i}]");
            let secret = read_secret(&at, k.key_env.as_deref(), k.key_file.as_deref(), env)?;
            secrets.api_keys.push(ApiKey {
                name: k.name.clone(),
                budget: k.budget.clone().unwrap_or_else(|| k.name.clone()),
                accounts: AccountScope::from_list(&k.accounts),
                secret,
            });
        }
        if let Some(key) = env.get(ENV_API_KEY).filter(|v| !v.trim().is_empty()) {
            if !secrets.api_keys.iter().any(|k| k.name == DEFAULT_NAME) {
                secrets.api_keys.push(ApiKey {
                    name: DEFAULT_NAME.to_owned(),
                    budget: DEFAULT_NAME.to_owned(),
                    accounts: AccountScope::All,
                    secret: SecretString::from(key.trim().to_owned()),
                });
            }
        }
        for (i, t) in self.hooks.tokens.iter().enumerate() {
            let at = format!("hooks.tokens[{i}]");
            let digest = match &t.token_sha256 {
                Some(hex_digest) => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(hex_digest, &mut d)
                        .map_err(|_| invalid(format!("{at}.token_sha256"), "must be 64 hex digits"))?;
                    d
                }
                None => {
                    let s = read_secret(&at, t.token_env.as_deref(), t.token_file.as_deref(), env)?;
                    token_digest(s.expose_secret())
                }
            };
            if t.api_key.is_none() && self.key_count(env) > 1 {
                // Calls that name no account (client sessions, auth attempts) would otherwise
                // fall back to whichever key comes first: possibly another tenant's.
                return Err(invalid(
                    format!("{at}.api_key"),
                    "must name the tenant's key when more than one key is configured",
                ));
            }
            if let Some(name) = &t.api_key {
                let known = self.upstream.keys.iter().any(|k| &k.name == name)
                    || (name == DEFAULT_NAME && env.contains_key(ENV_API_KEY));
                if !known {
                    return Err(invalid(format!("{at}.api_key"), format!("names no key ({name})")));
                }
            }
            secrets.hook_tokens.push(HookToken {
                name: t.name.clone(),
                accounts: AccountScope::from_list(&t.accounts),
                api_key: t.api_key.clone(),
                digest,
            });
        }
        if let Some(token) = env.get(ENV_HOOK_TOKEN).filter(|v| !v.trim().is_empty()) {
            if !secrets.hook_tokens.iter().any(|t| t.name == DEFAULT_NAME) {
                secrets.hook_tokens.push(HookToken {
                    name: DEFAULT_NAME.to_owned(),
                    accounts: AccountScope::All,
                    api_key: None,
                    digest: token_digest(token.trim()),
                });
            }
        }
        secrets.webhook_secret = env
            .get(ENV_WEBHOOK_SECRET)
            .filter(|v| !v.trim().is_empty())
            .map(|v| SecretString::from(v.trim().to_owned()));
        secrets.callback_secret = env
            .get(ENV_CALLBACK_SECRET)
            .filter(|v| !v.trim().is_empty())
            .map(|v| SecretString::from(v.trim().to_owned()));
        secrets.admin_token = match (&self.admin.token_env, &self.admin.token_file) {
            (None, None) => env.get(ENV_ADMIN_TOKEN).map(|v| v.trim()).filter(|v| !v.is_empty()).map(token_digest),
            (var, file) => {
                let s = read_secret("admin.token", var.as_deref(), file.as_deref(), env)?;
                Some(token_digest(s.expose_secret()))
            }
        };
        if !self.accounts.callback_url.is_empty() && secrets.callback_secret.is_none() {
            return Err(invalid("accounts.callback_url", format!("is set, so {ENV_CALLBACK_SECRET} must be set too")));
        }
        Ok(secrets)
    }

    /// How many API keys the settings and `env` resolve to (the `ONLYFANSAPI_API_KEY` shortcut
    /// adds one unless a configured key is already called `default`).
    fn key_count(&self, env: &HashMap<String, String>) -> usize {
        let shortcut = env.get(ENV_API_KEY).is_some_and(|v| !v.trim().is_empty())
            && !self.upstream.keys.iter().any(|k| k.name == DEFAULT_NAME);
        self.upstream.keys.len() + usize::from(shortcut)
    }

    /// The effective settings as TOML, followed by the names (never the values) of the
    /// resolved secrets: what `keeptyping check-config` prints.
    pub fn describe(&self, secrets: &Secrets) -> String {
        let mut out = toml::to_string_pretty(self).unwrap_or_else(|e| format!("# unprintable: {e}\n"));
        out.push_str("\n# resolved secrets (values redacted)\n");
        for k in &secrets.api_keys {
            out.push_str(&format!("# api key {:?}: budget {:?}, {}\n", k.name, k.budget, scope_text(&k.accounts)));
        }
        for t in &secrets.hook_tokens {
            out.push_str(&format!("# hook token {:?}: {}\n", t.name, scope_text(&t.accounts)));
        }
        let webhook = if secrets.webhook_secret.is_some() { "set" } else { "not set" };
        out.push_str(&format!("# webhook signing secret: {webhook}\n"));
        let callback = if secrets.callback_secret.is_some() { "set" } else { "not set" };
        out.push_str(&format!("# callback signing secret: {callback}\n"));
        let admin = if secrets.admin_token.is_some() { "set" } else { "not set" };
        out.push_str(&format!("# admin token: {admin}\n"));
        out
    }
}

fn scope_text(scope: &AccountScope) -> String {
    match scope {
        AccountScope::All => "all accounts".to_owned(),
        AccountScope::Only(set) => format!("{} account(s)", set.len()),
    }
}

fn check_accounts(key: &str, accounts: &[String]) -> Result<(), ConfigError> {
    if accounts.is_empty() {
        return Err(invalid(key, "list the accounts, or [\"*\"] for all"));
    }
    for a in accounts.iter().filter(|a| *a != "*") {
        if AccountId::parse_any(a).is_err() {
            return Err(invalid(key, format!("{a:?} is not an account id")));
        }
    }
    Ok(())
}

fn read_secret(
    at: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<SecretString, ConfigError> {
    let value = match (env_name, file) {
        (Some(var), _) => {
            env.get(var).cloned().ok_or_else(|| invalid(at, format!("environment variable {var} is not set")))?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid(at, format!("cannot read {}: {}", path.display(), e.kind())))?,
        (None, None) => return Err(invalid(at, "no secret source")),
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(at, "the secret is empty"));
    }
    Ok(SecretString::from(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn default_toml() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
    }

    #[test]
    fn default_toml_parses_to_the_defaults() {
        let cfg = load(Some(&default_toml()), &HashMap::new()).unwrap();
        assert_eq!(cfg.settings, Settings::default());
    }

    #[test]
    fn default_toml_documents_every_key() {
        let text = std::fs::read_to_string(default_toml()).unwrap();
        let written: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table = toml::from_str(&toml::to_string(&Settings::default()).unwrap()).unwrap();
        for (section, table) in &defaults {
            let Some(table) = table.as_table() else {
                continue;
            };
            for (key, value) in table {
                if value.is_table() {
                    for sub in value.as_table().unwrap().keys() {
                        assert!(
                            written[section][key].get(sub).is_some(),
                            "{section}.{key}.{sub} missing from config/default.toml"
                        );
                    }
                } else {
                    let doc = written.get(section).and_then(|t| t.get(key));
                    assert!(doc.is_some(), "{section}.{key} missing from config/default.toml");
                }
            }
        }
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let e = env(&[
            ("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "45s"),
            ("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "3s"),
            ("KEEPTYPING__ENGINE__MAX_SESSIONS", "7"),
            ("KEEPTYPING__HOOKS__ALLOW_UNAUTHENTICATED", "true"),
        ]);
        let cfg = load(Some(&default_toml()), &e).unwrap();
        assert_eq!(cfg.settings.engine.idle_timeout, Duration::from_secs(45));
        assert_eq!(cfg.settings.platforms.onlyfans.refire_interval, Duration::from_secs(3));
        assert_eq!(cfg.settings.engine.max_sessions, 7);
        assert!(cfg.settings.hooks.allow_unauthenticated);
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "soon", "engine.idle_timeout"),
            ("KEEPTYPING__PLATFORMS__ONLYFANS__REFIRE_INTERVAL", "5s", "platforms.onlyfans.refire_interval"),
            ("KEEPTYPING__UPSTREAM__TIMEOUT", "3s", "upstream.timeout"),
            ("KEEPTYPING__BUDGET__TYPING_SHARE", "1.5", "budget.typing_share"),
            ("KEEPTYPING__ENGINE__MAX_SESSIONS", "0", "engine.max_sessions"),
            ("KEEPTYPING__UPSTREAM__BASE_URL", "ftp://x", "upstream.base_url"),
            ("KEEPTYPING__SHUTDOWN__GRACE", "0s", "shutdown.grace"),
            ("KEEPTYPING__ACCOUNTS__POLL_INTERVAL", "500ms", "accounts.poll_interval"),
            ("KEEPTYPING__ACCOUNTS__ATTEMPT_DEADLINE", "1s", "accounts.attempt_deadline"),
            ("KEEPTYPING__ACCOUNTS__MAX_ATTEMPTS", "0", "accounts.max_attempts"),
            ("KEEPTYPING__ACCOUNTS__CALLBACK_URL", "mailto:x", "accounts.callback_url"),
            ("KEEPTYPING__ACCOUNTS__CALLBACK_URL", "http://127.0.0.1:1/cb", "KEEPTYPING_CALLBACK_SECRET"),
            ("KEEPTYPING__SHUTDOWN__DRAIN_DELAY", "10s", "shutdown.drain_delay"),
            ("KEEPTYPING__SERVER__HEADER_READ_TIMEOUT", "0s", "server.header_read_timeout"),
            ("KEEPTYPING__SERVER__MAX_CONNECTIONS", "0", "server.max_connections"),
            ("KEEPTYPING__ADMIN__HEADER_READ_TIMEOUT", "0s", "admin.header_read_timeout"),
            ("KEEPTYPING__ADMIN__MAX_CONNECTIONS", "0", "admin.max_connections"),
            ("KEEPTYPING__ADMIN__TOKEN_ENV", "NOT_SET_ANYWHERE", "admin.token"),
        ];
        for (var, value, key) in cases {
            let err = load(None, &env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("kt-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typo.toml");
        std::fs::write(&path, "[engine]\nidle_timout = \"3s\"\n").unwrap();
        let err = load(Some(&path), &HashMap::new()).unwrap_err().to_string();
        assert!(err.contains("idle_timout"), "{err}");
    }

    #[test]
    fn shortcuts_create_default_key_and_token_and_debug_redacts_them() {
        let cfg = load(None, &env(&[(ENV_API_KEY, "sk_live_secret"), (ENV_HOOK_TOKEN, "hook-secret")])).unwrap();
        assert_eq!(cfg.secrets.api_keys.len(), 1);
        assert_eq!(cfg.secrets.api_keys[0].secret.expose_secret(), "sk_live_secret");
        assert_eq!(cfg.secrets.hook_tokens[0].digest, token_digest("hook-secret"));
        let shown = format!("{cfg:?}{}", cfg.settings.describe(&cfg.secrets));
        assert!(!shown.contains("sk_live_secret") && !shown.contains("hook-secret"), "{shown}");
    }

    fn write_toml(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kt-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_token_without_its_key_is_refused_when_several_keys_exist() {
        let two_keys = r#"
[[upstream.keys]]
name = "agency_a"
key_env = "KEY_A"
accounts = ["acct_a1"]
[[upstream.keys]]
name = "agency_b"
key_env = "KEY_B"
accounts = ["acct_b1"]
[[hooks.tokens]]
name = "a"
token_env = "A_TOKEN"
accounts = ["acct_a1"]
api_key = "agency_a"
[[hooks.tokens]]
name = "b"
token_env = "B_TOKEN"
accounts = ["acct_b1"]
"#;
        let e = env(&[("KEY_A", "ka"), ("KEY_B", "kb"), ("A_TOKEN", "ta"), ("B_TOKEN", "tb")]);

        let err = load(Some(&write_toml("nokey", two_keys)), &e).unwrap_err().to_string();

        assert!(err.contains("hooks.tokens[1].api_key"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // Naming the key fixes it; so does having a single key (nothing to confuse).
        let named = format!("{two_keys}api_key = \"agency_b\"\n");
        assert!(load(Some(&write_toml("named", &named)), &e).is_ok());
        let single = "[[hooks.tokens]]\nname = \"a\"\ntoken_env = \"A_TOKEN\"\naccounts = [\"*\"]\n";
        assert!(load(Some(&write_toml("single", single)), &env(&[(ENV_API_KEY, "k"), ("A_TOKEN", "t")])).is_ok());
        // The ONLYFANSAPI_API_KEY shortcut beside a configured key makes two.
        let key_and_shortcut =
            format!("[[upstream.keys]]\nname = \"agency_a\"\nkey_env = \"KEY_A\"\naccounts = [\"*\"]\n{single}");
        let e = env(&[(ENV_API_KEY, "k"), ("KEY_A", "ka"), ("A_TOKEN", "t")]);
        let err = load(Some(&write_toml("shortcut", &key_and_shortcut)), &e).unwrap_err().to_string();
        assert!(err.contains("hooks.tokens[0].api_key"), "{err}");
    }

    #[test]
    fn the_admin_token_comes_from_its_shortcut_an_env_var_or_a_file_and_is_never_shown() {
        let none = load(None, &HashMap::new()).unwrap();
        assert_eq!(none.secrets.admin_token, None);

        let shortcut = load(None, &env(&[(ENV_ADMIN_TOKEN, "admin-secret-1")])).unwrap();
        assert_eq!(shortcut.secrets.admin_token, Some(token_digest("admin-secret-1")));

        let named = load(None, &env(&[("KEEPTYPING__ADMIN__TOKEN_ENV", "OPS_TOKEN"), ("OPS_TOKEN", "admin-secret-2")]))
            .unwrap();
        assert_eq!(named.secrets.admin_token, Some(token_digest("admin-secret-2")));

        let file = write_toml("admin-token", "admin-secret-3\n");
        let path = write_toml("admin", &format!("[admin]\ntoken_file = \"{}\"\n", file.display()));
        let from_file = load(Some(&path), &HashMap::new()).unwrap();
        assert_eq!(from_file.secrets.admin_token, Some(token_digest("admin-secret-3")));

        let shown = format!("{from_file:?}{}", from_file.settings.describe(&from_file.secrets));
        assert!(!shown.contains("admin-secret") && shown.contains("# admin token: set"), "{shown}");
    }

    #[test]
    fn tenant_tokens_resolve_from_env_file_or_digest() {
        let dir = std::env::temp_dir().join(format!("kt-cfg-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = dir.join("tenants.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[[hooks.tokens]]
name = "a"
token_env = "A_TOKEN"
accounts = ["acct_a1"]
[[hooks.tokens]]
name = "b"
token_file = "{}"
accounts = ["*"]
[[hooks.tokens]]
name = "c"
token_sha256 = "{}"
accounts = ["acct_c1", "fansly_acct_c2"]
"#,
                file.display(),
                hex::encode(token_digest("digested"))
            ),
        )
        .unwrap();
        let cfg = load(Some(&path), &env(&[("A_TOKEN", "from-env")])).unwrap();
        let digests: Vec<_> = cfg.secrets.hook_tokens.iter().map(|t| t.digest).collect();
        assert_eq!(digests, vec![token_digest("from-env"), token_digest("from-file"), token_digest("digested")]);
        let missing = load(Some(&path), &HashMap::new()).unwrap_err().to_string();
        assert!(missing.contains("hooks.tokens[0]") && missing.contains("A_TOKEN"), "{missing}");
    }
}
