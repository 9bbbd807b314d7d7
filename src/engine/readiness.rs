//! Account readiness: which accounts may not be typed to right now, and why.
//!
//! An account answering 503 (re-authenticating) or reported expired by a webhook is paused: its
//! sessions keep their leases but send nothing (each skipped refire is counted). A pause has a
//! probe time; after it the pause is over: the next due refire is sent, and its answer leaves the
//! account running or pauses it again. A resume event or any successful call ends the pause at
//! once. Pauses past their probe time are forgotten (the map only holds paused accounts).

use dashmap::DashMap;
use serde::Serialize;
use tokio::time::Instant;

use crate::ids::AccountId;
use crate::metrics;

/// Why an account is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// It answered 503: re-authenticating.
    Reauthenticating,
    /// A webhook said its session expired.
    SessionExpired,
    /// A webhook said its authentication failed.
    AuthenticationFailed,
}

impl PauseCause {
    /// The reason string of start's `"outcome": "paused"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reauthenticating => "reauthenticating",
            Self::SessionExpired => "session_expired",
            Self::AuthenticationFailed => "authentication_failed",
        }
    }
}

/// A paused account.
#[derive(Debug, Clone, Copy)]
pub struct Paused {
    /// Why.
    pub cause: PauseCause,
    /// When a refire may probe it again.
    pub probe_at: Instant,
}

/// Paused accounts. Methods are synchronous and hold no guard beyond themselves.
#[derive(Debug, Default)]
pub struct Readiness {
    paused: DashMap<AccountId, Paused>,
}

// === impl Readiness ===

impl Readiness {
    /// Pauses `account` for `cause` until at least `probe_at`.
    pub fn pause(&self, account: &AccountId, cause: PauseCause, probe_at: Instant) {
        self.paused
            .entry(account.clone())
            .and_modify(|p| {
                p.cause = cause;
                p.probe_at = p.probe_at.max(probe_at);
            })
            .or_insert(Paused { cause, probe_at });
        metrics::accounts_paused(self.paused.len());
    }

    /// Resumes `account`. Returns whether it was paused.
    pub fn resume(&self, account: &AccountId) -> bool {
        let was = self.paused.remove(account).is_some();
        if was {
            metrics::accounts_paused(self.paused.len());
        }
        was
    }

    /// The pause of `account` at `now`, if any (none once its probe time has come).
    pub fn get(&self, account: &AccountId, now: Instant) -> Option<Paused> {
        if self.paused.is_empty() {
            return None;
        }
        self.paused.get(account).map(|p| *p).filter(|p| now < p.probe_at)
    }

    /// Whether a refire for `account` must be skipped at `now`.
    pub fn blocks(&self, account: &AccountId, now: Instant) -> bool {
        self.get(account, now).is_some()
    }

    /// Whether any account is paused or was until its probe time (a resume would change it).
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty()
    }

    /// Forgets pauses whose probe time has come: the account is probed by its next refire, and
    /// a failing probe pauses it again.
    pub fn sweep(&self, now: Instant) {
        if self.paused.is_empty() {
            return;
        }
        let before = self.paused.len();
        self.paused.retain(|_, p| now < p.probe_at);
        if self.paused.len() != before {
            metrics::accounts_paused(self.paused.len());
        }
    }

    /// Every paused account at `now`.
    pub fn list(&self, now: Instant) -> Vec<(AccountId, Paused)> {
        self.paused.iter().filter(|e| now < e.value().probe_at).map(|e| (e.key().clone(), *e.value())).collect()
    }
}
