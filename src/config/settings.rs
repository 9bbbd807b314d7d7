//! The `Settings` tree: one struct per TOML section, each with its defaults in code
//! (`impl Default`, `DEFAULT_*` consts). Plain data: checked by `validate.rs`, loaded by
//! `load.rs`.

use super::values::{Count, Reserve, Share};
use super::{ConfigError, invalid};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::ids::Platform;

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
    /// Where sessions and budgets live: this process, or Redis shared by replicas.
    pub state: StateSettings,
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
    pub max_connections: Count,
}

/// Default of `server.header_read_timeout` and `admin.header_read_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `server.max_connections`.
pub const DEFAULT_MAX_HOOK_CONNECTIONS: Count = Count::of(1024);
/// Default of `admin.max_connections`: Prometheus, probes and a few status pages.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: Count = Count::of(64);

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
    pub max_connections: Count,
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
    pub max_batch_events: Count,
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
            max_batch_events: Count::of(500),
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
    pub max_sessions: Count,
    /// Typing calls in flight at once, across all sessions.
    pub max_in_flight: Count,
    /// Refires due within one tick of each other leave together: the scheduler wakes at most
    /// once per tick for refires (first calls still leave at once). Up to one tick of lateness
    /// buys fewer wake-ups per call.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

/// Longest accepted `engine.tick`: far below any refire interval.
pub(super) const MAX_TICK: Duration = Duration::from_millis(100);

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(600),
            max_sessions: Count::of(100_000),
            max_in_flight: Count::of(16_384),
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
    pub limit_per_minute: Count,
    /// Share of the per-minute limit typing may use.
    pub typing_share: Share,
    /// Typing pauses while upstream `remaining_minute` <= reserve x limit.
    pub reserve: Reserve,
    /// Tokens a bucket holds at least (a small burst); a large key's bucket holds one second of
    /// refill when that is more.
    pub burst: Count,
    /// The period the upstream counts its limit over (60 s; tests shorten it to scale time).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Per-budget overrides of `limit_per_minute` (budget name -> limit).
    pub limits: BTreeMap<String, Count>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            limit_per_minute: Count::of(1000),
            typing_share: Share::of(0.5),
            reserve: Reserve::of(0.1),
            burst: Count::of(10),
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
    /// PEM file of root certificates trusted besides the system's: a private CA, or a test
    /// upstream's self-signed certificate. Unset: the system's roots only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// API keys beyond the `ONLYFANSAPI_API_KEY` shortcut.
    pub keys: Vec<ApiKeySettings>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: "https://app.onlyfansapi.com".to_owned(),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 16_384,
            ca_file: None,
            keys: Vec::new(),
        }
    }
}

impl UpstreamSettings {
    /// The certificates of `ca_file`, each checked to be one a TLS client can trust; none when
    /// `ca_file` is not set. Read when the configuration is validated and again when the
    /// upstream client is built.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `upstream.ca_file` when the file cannot be read, holds no
    /// PEM certificate, or one of its certificates does not parse.
    pub fn ca_roots(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        use tokio_rustls::rustls::RootCertStore;
        use tokio_rustls::rustls::pki_types::pem::PemObject;

        const KEY: &str = "upstream.ca_file";
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let at = path.display();
        let pem = std::fs::read(path).map_err(|e| invalid(KEY, format!("cannot read {at}: {e}")))?;
        // Parsing into a root store is what the TLS client will do with them: a certificate
        // refused here would be refused at startup.
        let mut store = RootCertStore::empty();
        let mut roots = Vec::new();
        for der in CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| invalid(KEY, format!("{at}: not a PEM certificate ({e})")))?;
            store.add(der.clone()).map_err(|e| invalid(KEY, format!("{at}: not a valid certificate ({e})")))?;
            roots.push(der);
        }
        if roots.is_empty() {
            return Err(invalid(KEY, format!("{at} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")));
        }
        Ok(roots)
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
    pub max_attempts: Count,
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
pub const DEFAULT_MAX_ATTEMPTS: Count = Count::of(1000);

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

/// Which state backend holds sessions and budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process: one replica, nothing else to run.
    #[default]
    Memory,
    /// In Redis, shared by N replicas.
    Redis,
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// `memory` (default) or `redis`.
    pub backend: Backend,
    /// With `redis`: how long a replica may go unheard before others take over its chats.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// With `redis`: the URL names Redis Cluster nodes (comma-separated).
    pub cluster: bool,
    /// Environment variable holding the Redis URL (or `KEEPTYPING_REDIS_URL`).
    pub redis_url_env: Option<String>,
    /// File holding the Redis URL.
    pub redis_url_file: Option<PathBuf>,
}

/// Default `state.lease`.
pub const DEFAULT_STATE_LEASE: Duration = Duration::from_secs(2);

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            lease: DEFAULT_STATE_LEASE,
            cluster: false,
            redis_url_env: None,
            redis_url_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::test_support::{env, write_toml};

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_refused_in_one_line_naming_the_key() {
        let not_pem = write_toml("ca-not-pem", "this is not a certificate\n");
        let bad_pem = write_toml("ca-bad-pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n");
        let garbage_der = write_toml("ca-bad-der", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let missing = not_pem.with_file_name("missing.pem");
        for path in [&missing, &not_pem, &bad_pem, &garbage_der] {
            let path = path.to_str().unwrap();
            let err = load(None, &env(&[("KEEPTYPING__UPSTREAM__CA_FILE", path)])).unwrap_err().to_string();
            assert!(err.starts_with("config: upstream.ca_file: "), "{path}: {err}");
            assert!(err.contains(path), "{path}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_pem_ca_file_is_accepted_and_shown_by_check_config() {
        let tls = crate::mock::Tls::self_signed(false).unwrap();
        let ca = write_toml("ca-good", tls.cert_pem());
        let cfg = load(None, &env(&[("KEEPTYPING__UPSTREAM__CA_FILE", ca.to_str().unwrap())])).unwrap();
        assert_eq!(cfg.settings.upstream.ca_roots().unwrap().len(), 1);
        let printed = cfg.settings.describe(&cfg.secrets);
        assert!(printed.contains(&format!("ca_file = {:?}", ca.to_str().unwrap())), "{printed}");
    }
}
