//! [`Settings::describe`]: the effective settings as TOML and the names (never the values) of
//! the resolved secrets, for `keeptyping check-config`.

use super::{AccountScope, Secrets, Settings};

impl Settings {
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
        if let Some(url) = &secrets.redis_url {
            use secrecy::ExposeSecret;
            let nodes = url.expose_secret().split(',').filter(|u| !u.trim().is_empty()).count();
            out.push_str(&format!("# redis url: set ({nodes} node(s))\n"));
        }
        out
    }
}

fn scope_text(scope: &AccountScope) -> String {
    match scope {
        AccountScope::All => "all accounts".to_owned(),
        AccountScope::Only(set) => format!("{} account(s)", set.len()),
    }
}
