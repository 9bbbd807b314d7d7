//! Hook authentication: `Authorization: Bearer <token>` resolved to a [`Caller`] (a tenant and
//! the accounts it may touch).
//!
//! Tokens are held only as SHA-256 digests and compared in constant time against every
//! configured digest (no early exit on the first match), so neither the token nor its position
//! leaks through timing.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

use super::ApiState;
use super::error::ApiError;
use crate::config::{AccountScope, HookToken, token_digest};
use crate::ids::AccountId;
use crate::upstream::KeyIndex;

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant name (`anonymous` when unauthenticated hooks are allowed).
    pub name: Arc<str>,
    /// Index of the token in the configured list (`None` for anonymous), for rate limiting.
    pub token_index: Option<usize>,
    /// Accounts it may touch.
    pub accounts: Arc<AccountScope>,
    /// The API key its calls prefer.
    pub api_key: Option<KeyIndex>,
    /// Prefix of the holder ids this caller's chatters get in the engine (see [`Caller::holder`]).
    holder_ns: Arc<str>,
}

/// Separates a caller's namespace from the chatter id in an engine holder id. Chatter ids
/// cannot contain it (`typing::chatter`), so a namespace never ends inside a chatter id.
const HOLDER_SEPARATOR: char = '/';

impl Caller {
    /// # Errors
    /// A caller allowed on every account, for tests of what consumes callers.
    #[cfg(test)]
    pub(crate) fn for_tests(token_index: Option<usize>) -> Self {
        Self {
            name: Arc::from("t"),
            token_index,
            accounts: Arc::new(AccountScope::All),
            api_key: None,
            holder_ns: holder_namespace(token_index),
        }
    }

    /// [`ApiError::ForbiddenAccount`] when `account` is outside the caller's list.
    pub fn check(&self, account: &AccountId) -> Result<(), ApiError> {
        if self.accounts.allows(account) { Ok(()) } else { Err(ApiError::ForbiddenAccount(account.to_string())) }
    }

    /// The holder id the engine keeps for `chatter` (`None`: the caller's anonymous holder).
    /// Holders are namespaced by token, so two tenants whose accounts overlap, or who pick the
    /// same chatter ids, never release each other's hold on a chat.
    pub fn holder(&self, chatter: Option<&str>) -> Arc<str> {
        Arc::from(format!("{}{}", self.holder_ns, chatter.unwrap_or_default()))
    }

    /// The chatter id behind an engine holder id when the holder is this caller's:
    /// `Some(None)` for its anonymous holder, `None` for another caller's holder.
    pub fn own_chatter<'h>(&self, holder: &'h str) -> Option<Option<&'h str>> {
        let chatter = holder.strip_prefix(&*self.holder_ns)?;
        if chatter.contains(HOLDER_SEPARATOR) {
            return None;
        }
        Some((!chatter.is_empty()).then_some(chatter))
    }
}

fn holder_namespace(token_index: Option<usize>) -> Arc<str> {
    match token_index {
        Some(i) => Arc::from(format!("{i}{HOLDER_SEPARATOR}")),
        None => Arc::from(format!("-{HOLDER_SEPARATOR}")),
    }
}

/// The configured tokens.
#[derive(Debug)]
pub struct Tokens {
    tokens: Vec<(HookToken, Arc<AccountScope>, Option<KeyIndex>)>,
    allow_unauthenticated: bool,
}

impl Tokens {
    /// Builds the table; `key_index` maps a key name to its index.
    pub fn new(
        tokens: &[HookToken],
        allow_unauthenticated: bool,
        key_index: impl Fn(&str) -> Option<KeyIndex>,
    ) -> Self {
        let tokens = tokens
            .iter()
            .map(|t| (t.clone(), Arc::new(t.accounts.clone()), t.api_key.as_deref().and_then(&key_index)))
            .collect();
        Self { tokens, allow_unauthenticated }
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Resolves the `Authorization` header value.
    ///
    /// # Errors
    /// 401 when the token is missing (and unauthenticated hooks are not allowed) or unknown.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, ApiError> {
        let Some(raw) = header else {
            return if self.allow_unauthenticated { Ok(anonymous()) } else { Err(ApiError::MissingToken) };
        };
        let token = std::str::from_utf8(raw)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::InvalidToken)?;
        let digest = token_digest(token);
        let mut found = None;
        for (i, (t, _, _)) in self.tokens.iter().enumerate() {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        let i = found.ok_or(ApiError::InvalidToken)?;
        let (t, scope, key) = &self.tokens[i];
        Ok(Caller {
            name: Arc::from(t.name.as_str()),
            token_index: Some(i),
            accounts: Arc::clone(scope),
            api_key: *key,
            holder_ns: holder_namespace(Some(i)),
        })
    }
}

fn anonymous() -> Caller {
    Caller {
        name: Arc::from("anonymous"),
        token_index: None,
        accounts: Arc::new(AccountScope::All),
        api_key: None,
        holder_ns: holder_namespace(None),
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).map(axum::http::HeaderValue::as_bytes);
        let caller = state.tokens.authenticate(header)?;
        state.hook_limit.check(&caller)?;
        Ok(caller)
    }
}
