//! Configuration: the `Settings` tree, its layered loading and its validation, and the secrets
//! resolved beside it. One concept per file:
//!
//! | file | what |
//! |---|---|
//! | `settings.rs` | the [`Settings`] tree, one struct per section, and every default |
//! | `load.rs` | [`load`]: defaults, then the TOML file, then `KEEPTYPING__*` overrides |
//! | `validate.rs` | [`Settings::validate`]: ranges and cross-field checks, each error naming its key |
//! | `secrets.rs` | [`Secrets`] resolved from the environment and files; [`AccountScope`], parsed once |
//! | `describe.rs` | [`Settings::describe`], what `keeptyping check-config` prints |
//!
//! Layers, later wins: defaults in code ([`Settings::default`]), the TOML file given by
//! `--config`, then environment variables `KEEPTYPING__SECTION__KEY`. Secrets (API keys, hook
//! tokens, the webhook signing secret) never live in the TOML: the TOML names an environment
//! variable or a file, and [`load`] resolves them into [`Secrets`], whose `Debug` redacts them.
//! This module does not start anything; it only produces values.

mod describe;
mod load;
mod secrets;
mod settings;
mod validate;
mod values;

pub use load::load;
pub use secrets::{AccountScope, ApiKey, HookToken, Secrets, token_digest};
pub use settings::{
    AccountsSettings, AdminSettings, ApiKeySettings, Backend, BudgetSettings, DEFAULT_ATTEMPT_DEADLINE,
    DEFAULT_ATTEMPT_RETENTION, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_ADMIN_CONNECTIONS, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_HOOK_CONNECTIONS, DEFAULT_STATE_LEASE, EngineSettings, HookSettings, HookTokenSettings,
    PlatformSettings, PlatformsSettings, ServerSettings, Settings, ShutdownSettings, StateSettings, UpstreamSettings,
};
pub use values::{Count, Reserve, Share};

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
/// Environment variable holding the Redis URL (`state.backend = "redis"`); it may hold a
/// password, so it is a secret like the others.
pub const ENV_REDIS_URL: &str = "KEEPTYPING_REDIS_URL";
/// Prefix of layered overrides: `KEEPTYPING__ENGINE__IDLE_TIMEOUT=45s`.
pub const ENV_PREFIX: &str = "KEEPTYPING";
/// Name given to the key, token and budget created by the single-tenant shortcuts.
pub const DEFAULT_NAME: &str = "default";

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

#[cfg(test)]
mod test_support {
    //! Helpers shared by the tests of every file here.

    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    pub(super) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    pub(super) fn default_toml() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml")
    }

    pub(super) fn write_toml(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kt-cfg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}
