//! Which API key (and so which budget) a chat's typing calls use, and which keys the upstream
//! has refused.
//!
//! Built once from the resolved secrets; the secret values themselves stay in the upstream
//! client. A key the upstream answered 401 to is refused for [`REFUSED_FOR`], after which one
//! call may try it again (the key may have been restored).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{BudgetIndex, Budgets};
use crate::config::{AccountScope, ApiKey};
use crate::ids::AccountId;
use crate::upstream::KeyIndex;

/// How long a key stays refused after a 401 before it is tried again.
pub const REFUSED_FOR: Duration = Duration::from_secs(60);

/// One configured key, without its secret.
#[derive(Debug)]
pub struct KeyEntry {
    /// Its name.
    pub name: String,
    /// Its budget.
    pub budget: BudgetIndex,
    /// The accounts it covers.
    pub accounts: AccountScope,
}

/// The configured keys, in configuration order (the order of [`KeyIndex`]).
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<KeyEntry>,
    /// When each key stops being refused. `std` mutex: a copy in or out, never held over await.
    refused_until: Mutex<Vec<Option<Instant>>>,
}

// === impl KeyRing ===

impl KeyRing {
    /// Builds the ring from the resolved keys; `budgets` must hold every key's budget name.
    pub fn new(keys: &[ApiKey], budgets: &Budgets) -> Self {
        let keys: Vec<KeyEntry> = keys
            .iter()
            .map(|k| KeyEntry {
                name: k.name.clone(),
                budget: budgets.index(&k.budget).unwrap_or(0),
                accounts: k.accounts.clone(),
            })
            .collect();
        let refused_until = Mutex::new(vec![None; keys.len()]);
        Self { keys, refused_until }
    }

    /// The key for `account`: `preferred` when it covers the account, else the first key
    /// naming the account explicitly, else the first key covering all accounts.
    pub fn resolve(&self, account: &AccountId, preferred: Option<KeyIndex>) -> Option<KeyIndex> {
        if let Some(i) = preferred.filter(|i| self.keys.get(*i).is_some_and(|k| k.accounts.allows(account))) {
            return Some(i);
        }
        self.keys
            .iter()
            .position(|k| matches!(&k.accounts, AccountScope::Only(set) if set.contains(account.as_str())))
            .or_else(|| self.keys.iter().position(|k| k.accounts == AccountScope::All))
    }

    /// The index of the key called `name`.
    pub fn by_name(&self, name: &str) -> Option<KeyIndex> {
        self.keys.iter().position(|k| k.name == name)
    }

    /// The entry of key `i`.
    pub fn get(&self, i: KeyIndex) -> Option<&KeyEntry> {
        self.keys.get(i)
    }

    /// Every key.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.keys
    }

    /// Marks key `i` refused from `now`.
    pub fn refuse(&self, i: KeyIndex, now: Instant) {
        let mut r = self.refused_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = r.get_mut(i) {
            *slot = Some(now + REFUSED_FOR);
        }
    }

    /// Whether key `i` is refused at `now`.
    pub fn is_refused(&self, i: KeyIndex, now: Instant) -> bool {
        let r = self.refused_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.get(i).copied().flatten().is_some_and(|until| now < until)
    }
}
