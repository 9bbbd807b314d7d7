//! [`Settings::validate`]: every range and cross-field rule, each refusal naming its dotted key
//! in one line. Rules that belong to a value live on its type (an account list is an
//! [`AccountScope`], parsed by [`AccountScope::parse`]); this file says which key each applies to.

use std::collections::HashSet;
use std::time::Duration;

use super::settings::MAX_TICK;
use super::{AccountScope, ConfigError, Settings, invalid};
use crate::ids::Platform;

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
        self.upstream.ca_roots()?;
        if self.engine.idle_timeout.is_zero() {
            return Err(invalid("engine.idle_timeout", "must be greater than zero"));
        }
        if self.engine.max_lifetime < self.engine.idle_timeout {
            return Err(invalid("engine.max_lifetime", "must be at least engine.idle_timeout"));
        }
        if self.engine.tick > MAX_TICK {
            return Err(invalid("engine.tick", "must be at most 100ms"));
        }
        if !(Duration::from_millis(500)..=Duration::from_secs(60)).contains(&self.state.lease) {
            return Err(invalid("state.lease", "must be between 500ms and 60s"));
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
        if self.accounts.attempt_retention.is_zero() {
            return Err(invalid("accounts.attempt_retention", "must be greater than zero"));
        }
        if !self.accounts.callback_url.is_empty() {
            match reqwest::Url::parse(&self.accounts.callback_url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => return Err(invalid("accounts.callback_url", "must be an http(s) URL or empty")),
            }
        }
        for (listener, timeout) in
            [("server", self.server.header_read_timeout), ("admin", self.admin.header_read_timeout)]
        {
            if timeout.is_zero() {
                return Err(invalid(format!("{listener}.header_read_timeout"), "must be greater than zero"));
            }
        }
        if self.admin.token_env.is_some() && self.admin.token_file.is_some() {
            return Err(invalid("admin.token", "set at most one of token_env, token_file"));
        }
        if self.server.max_body_bytes < 256 {
            return Err(invalid("server.max_body_bytes", "must be at least 256"));
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
            AccountScope::parse(&k.accounts).map_err(|p| invalid(format!("{at}.accounts"), p))?;
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
            AccountScope::parse(&t.accounts).map_err(|p| invalid(format!("{at}.accounts"), p))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::test_support::env;

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
            ("KEEPTYPING__BUDGET__BURST", "0", "budget.burst"),
            ("KEEPTYPING__BUDGET__RESERVE", "1", "budget.reserve"),
            ("KEEPTYPING__HOOKS__MAX_BATCH_EVENTS", "0", "hooks.max_batch_events"),
        ];
        for (var, value, key) in cases {
            let err = load(None, &env(&[(var, value)])).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_value_refused_by_its_type_reads_like_any_other_refusal() {
        for (var, value, line) in [
            ("KEEPTYPING__BUDGET__BURST", "0", "config: budget.burst: must be at least 1"),
            ("KEEPTYPING__BUDGET__TYPING_SHARE", "0", "config: budget.typing_share: must be in (0, 1]"),
            ("KEEPTYPING__BUDGET__RESERVE", "1.0", "config: budget.reserve: must be in [0, 1)"),
            ("KEEPTYPING__ENGINE__MAX_SESSIONS", "0", "config: engine.max_sessions: must be at least 1"),
            ("KEEPTYPING__BUDGET__LIMITS__TEAM", "0", "config: budget.limits.team: must be at least 1"),
        ] {
            assert_eq!(load(None, &env(&[(var, value)])).unwrap_err().to_string(), line, "{var}={value}");
        }
    }
}
