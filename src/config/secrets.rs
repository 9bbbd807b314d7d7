//! Secrets and what they may touch: API keys, hook tokens (held as SHA-256 digests), the
//! webhook and callback signing secrets and the admin token, resolved from the environment or
//! files that the settings name; never from the TOML itself, and never shown by `Debug`.
//! [`AccountScope`] is the parsed form of an `accounts = [...]` list.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    ConfigError, DEFAULT_NAME, ENV_ADMIN_TOKEN, ENV_API_KEY, ENV_CALLBACK_SECRET, ENV_HOOK_TOKEN, ENV_REDIS_URL,
    ENV_WEBHOOK_SECRET, Settings, invalid,
};
use crate::ids::AccountId;

/// Which accounts a key or a token covers: an `accounts = [...]` list, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountScope {
    /// Every account (`["*"]`).
    All,
    /// Only these accounts.
    Only(HashSet<AccountId>),
}

impl AccountScope {
    /// Parses an `accounts` list: `"*"` anywhere means every account; otherwise each entry must
    /// be an account id of some platform.
    ///
    /// # Errors
    /// What is wrong with the list, in words (the caller names the key).
    pub fn parse(list: &[String]) -> Result<Self, String> {
        if list.is_empty() {
            return Err("list the accounts, or [\"*\"] for all".to_owned());
        }
        let mut ids = HashSet::new();
        for a in list.iter().filter(|a| *a != "*") {
            ids.insert(AccountId::parse_any(a).map_err(|_| format!("{a:?} is not an account id"))?);
        }
        Ok(if list.iter().any(|a| a == "*") { Self::All } else { Self::Only(ids) })
    }

    /// Whether `account` is covered.
    pub fn allows(&self, account: &AccountId) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(account),
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

#[cfg(test)]
impl ApiKey {
    /// A key named `default` on budget `default` for every account, with `secret`.
    pub(crate) fn for_tests(secret: &str) -> Self {
        Self {
            name: "default".to_owned(),
            budget: "default".to_owned(),
            accounts: AccountScope::All,
            secret: secret.to_owned().into(),
        }
    }
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
    /// The Redis URL(s) (`state.redis_url_env`, `state.redis_url_file` or `KEEPTYPING_REDIS_URL`),
    /// with `state.backend = "redis"`; it may hold a password.
    pub redis_url: Option<SecretString>,
}

// === impl Settings ===

impl Settings {
    pub(super) fn resolve_secrets(&self, env: &HashMap<String, String>) -> Result<Secrets, ConfigError> {
        let mut secrets = Secrets::default();
        for (i, k) in self.upstream.keys.iter().enumerate() {
            let at = format!("upstream.keys[{i}]");
            let secret = read_secret(&at, k.key_env.as_deref(), k.key_file.as_deref(), env)?;
            secrets.api_keys.push(ApiKey {
                name: k.name.clone(),
                budget: k.budget.clone().unwrap_or_else(|| k.name.clone()),
                accounts: AccountScope::parse(&k.accounts).map_err(|p| invalid(format!("{at}.accounts"), p))?,
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
                accounts: AccountScope::parse(&t.accounts).map_err(|p| invalid(format!("{at}.accounts"), p))?,
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
        if self.state.backend == crate::config::Backend::Redis {
            let url = match (&self.state.redis_url_env, &self.state.redis_url_file) {
                (None, None) => env
                    .get(ENV_REDIS_URL)
                    .map(|v| v.trim())
                    .filter(|v| !v.is_empty())
                    .map(|v| SecretString::from(v.to_owned()))
                    .ok_or_else(|| {
                        invalid(
                            "state.redis_url",
                            format!("state.backend is redis, so {ENV_REDIS_URL} (or state.redis_url_env / state.redis_url_file) must be set"),
                        )
                    })?,
                (var, file) => read_secret("state.redis_url", var.as_deref(), file.as_deref(), env)?,
            };
            crate::state::redis_urls(url.expose_secret(), self.state.cluster)
                .map_err(|reason| invalid("state.redis_url", reason))?;
            secrets.redis_url = Some(url);
        }
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
    use std::collections::HashMap;

    use super::super::load;
    use super::super::test_support::{env, write_toml};
    use super::*;

    #[test]
    fn shortcuts_create_default_key_and_token_and_debug_redacts_them() {
        let cfg = load(None, &env(&[(ENV_API_KEY, "sk_live_secret"), (ENV_HOOK_TOKEN, "hook-secret")])).unwrap();
        assert_eq!(cfg.secrets.api_keys.len(), 1);
        assert_eq!(cfg.secrets.api_keys[0].secret.expose_secret(), "sk_live_secret");
        assert_eq!(cfg.secrets.hook_tokens[0].digest, token_digest("hook-secret"));
        let shown = format!("{cfg:?}{}", cfg.settings.describe(&cfg.secrets));
        assert!(!shown.contains("sk_live_secret") && !shown.contains("hook-secret"), "{shown}");
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

    #[test]
    fn the_redis_backend_needs_a_well_formed_url_and_never_shows_it() {
        let backend = ("KEEPTYPING__STATE__BACKEND", "redis");
        let missing = load(None, &env(&[backend])).unwrap_err().to_string();
        assert!(missing.contains("state.redis_url") && missing.contains(ENV_REDIS_URL), "{missing}");

        let bad = load(None, &env(&[backend, (ENV_REDIS_URL, "http://user:hunter2@cache:6379")])).unwrap_err();
        let bad = bad.to_string();
        assert!(bad.contains("state.redis_url") && !bad.contains("hunter2"), "{bad}");

        let two = "redis://:hunter2@a:6379,redis://:hunter2@b:6379";
        let several = load(None, &env(&[backend, (ENV_REDIS_URL, two)])).unwrap_err().to_string();
        assert!(several.contains("state.cluster") && !several.contains("hunter2"), "{several}");
        let cluster = load(None, &env(&[backend, ("KEEPTYPING__STATE__CLUSTER", "true"), (ENV_REDIS_URL, two)]));
        assert!(cluster.is_ok());

        let ok = load(None, &env(&[backend, (ENV_REDIS_URL, "redis://:hunter2@cache:6379/0")])).unwrap();
        let shown = ok.settings.describe(&ok.secrets);
        assert!(shown.contains("# redis url: set (1 node(s))") && !shown.contains("hunter2"), "{shown}");
        assert!(!format!("{:?}", ok.secrets).contains("hunter2"));

        // The memory backend (the default) needs no URL and ignores one.
        assert!(load(None, &env(&[])).unwrap().secrets.redis_url.is_none());
        let lease = load(None, &env(&[("KEEPTYPING__STATE__LEASE", "100ms")])).unwrap_err().to_string();
        assert!(lease.contains("state.lease"), "{lease}");
    }
}
