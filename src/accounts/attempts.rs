//! Watched authentication attempts: their table, what a poll means, and the scheduler job that
//! polls each one.
//!
//! Watching an attempt inserts it (bounded by `accounts.max_attempts`) and adds one repeated
//! tokio-cron-scheduler job for it, every `accounts.poll_interval`. Each run polls
//! `GET /api/authenticate/{attempt_id}` once (skipping a run while the previous poll is still on
//! the wire), records a state change, and removes its own job once the attempt is terminal
//! (connected, failed) or past `accounts.attempt_deadline` (timed out). Finished attempts stay
//! readable for `accounts.attempt_retention`, then are forgotten (swept on the next watch or
//! read). The table is one `std` mutex: sections are short and never await.
//!
//! This file does not decide what a state change does elsewhere: the handle in `mod.rs` sends
//! the callback and tells the engine an account is connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_cron_scheduler::job::JobId;

use crate::upstream::{AuthPoll, ErrorKind, KeyIndex, UpstreamError};

/// Longest accepted attempt id.
pub const MAX_ATTEMPT_ID_LEN: usize = 128;
/// Most state changes kept in an attempt's history.
pub const MAX_HISTORY: usize = 32;

/// A validated attempt id (`auth_…`): letters, digits, `_` and `-`, bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(Arc<str>);

impl AttemptId {
    /// Parses an attempt id.
    ///
    /// # Errors
    /// A message naming the rule when `raw` is empty, too long or has other characters.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_ATTEMPT_ID_LEN
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(Arc::from(raw)))
        } else {
            Err(format!("attempt_id must be 1 to {MAX_ATTEMPT_ID_LEN} characters of letters, digits, _ and -"))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The latest known state of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state")]
pub enum AttemptState {
    /// Still going; nothing is asked of the creator.
    #[serde(rename = "pending")]
    Pending {
        /// `progress` as the upstream reports it.
        #[serde(skip_serializing_if = "Option::is_none")]
        progress: Option<String>,
    },
    /// A 2FA code is needed (submit it through OnlyFansAPI's login frame).
    #[serde(rename = "needs_2fa")]
    NeedsTwoFactor {
        /// Last digits of the phone the code went to, when given.
        #[serde(skip_serializing_if = "Option::is_none")]
        otp_phone_ending: Option<String>,
    },
    /// A mobile-app login is pending.
    #[serde(rename = "mobile_pending")]
    MobilePending {
        /// The deeplink that opens the app.
        #[serde(skip_serializing_if = "Option::is_none")]
        mobile_deeplink: Option<String>,
    },
    /// Authenticated: the account is connected.
    #[serde(rename = "connected")]
    Connected {
        /// The connected account, when reported.
        #[serde(skip_serializing_if = "Option::is_none")]
        account_id: Option<String>,
    },
    /// The attempt failed.
    #[serde(rename = "failed")]
    Failed {
        /// The upstream's error code (or `upstream_<status>` when the poll itself was refused).
        #[serde(skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
        /// The upstream's message.
        #[serde(skip_serializing_if = "Option::is_none")]
        error_message: Option<String>,
    },
    /// No terminal state within `accounts.attempt_deadline`; polling stopped.
    #[serde(rename = "timed_out")]
    TimedOut,
}

impl AttemptState {
    /// The state's name (also its metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending { .. } => "pending",
            Self::NeedsTwoFactor { .. } => "needs_2fa",
            Self::MobilePending { .. } => "mobile_pending",
            Self::Connected { .. } => "connected",
            Self::Failed { .. } => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether polling stops here.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Connected { .. } | Self::Failed { .. } | Self::TimedOut)
    }

    /// What one poll answer means (UPSTREAM.md): an account id or `state == "authenticated"` is
    /// connected; a pending 2FA wins over a failed last attempt (the failure is the missing
    /// code); `lastAttempt.success == false` is failed; a deeplink is a pending mobile login;
    /// anything else, unknown states included, is pending.
    pub fn from_poll(p: &AuthPoll) -> Self {
        if p.account_id.is_some() || p.state.as_deref() == Some("authenticated") {
            Self::Connected { account_id: p.account_id.clone() }
        } else if p.two_factor_pending || p.needs_otp {
            Self::NeedsTwoFactor { otp_phone_ending: p.otp_phone_ending.clone() }
        } else if p.last_success == Some(false) {
            Self::Failed { error_code: p.error_code.clone(), error_message: p.error_message.clone() }
        } else if p.mobile_deeplink.is_some() {
            Self::MobilePending { mobile_deeplink: p.mobile_deeplink.clone() }
        } else {
            Self::Pending { progress: p.progress.clone() }
        }
    }

    /// What a failed poll means: a refused key or a refused attempt id ends the attempt; a
    /// transient failure (timeout, 5xx, 429, 503) changes nothing and the next run polls again.
    pub fn from_poll_error(e: &UpstreamError, upstream_message: Option<&str>) -> Option<Self> {
        let UpstreamError::Status { status, .. } = e else { return None };
        match e.kind() {
            ErrorKind::Unauthorized => Some(Self::Failed {
                error_code: Some("api_key_refused".to_owned()),
                error_message: Some("the upstream refused the api key".to_owned()),
            }),
            ErrorKind::Rejected => Some(Self::Failed {
                error_code: Some(format!("upstream_{status}")),
                error_message: upstream_message.map(str::to_owned),
            }),
            ErrorKind::RateLimited { .. } | ErrorKind::Unavailable | ErrorKind::Transient => None,
        }
    }
}

/// Who watches an attempt: attempts are scoped by tenant, so one tenant never reads another's.
pub type AttemptKey = (Arc<str>, AttemptId);

/// One watched attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The API key polls use.
    pub api_key: KeyIndex,
    /// Latest state.
    pub state: AttemptState,
    /// State names in the order they were reached (bounded by [`MAX_HISTORY`]).
    pub history: Vec<&'static str>,
    /// When watching started.
    pub started_at: Instant,
    /// When it reached a terminal state.
    pub finished_at: Option<Instant>,
    /// Polls sent.
    pub polls: u32,
    /// Label of the last failed poll, cleared by a successful one.
    pub last_error: Option<&'static str>,
    /// The job polling it, once added.
    pub job: Option<JobId>,
    /// A poll is on the wire.
    busy: bool,
}

/// A copy of an attempt for readers.
#[derive(Debug, Clone)]
pub struct AttemptSnapshot {
    /// The id.
    pub id: AttemptId,
    /// Latest state.
    pub state: AttemptState,
    /// State names in order.
    pub history: Vec<&'static str>,
    /// Polls sent.
    pub polls: u32,
    /// Whether it is still polled.
    pub watching: bool,
    /// Time since watching started.
    pub age: Duration,
    /// Label of the last failed poll.
    pub last_error: Option<&'static str>,
}

/// Why an attempt cannot be watched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// `accounts.max_attempts` attempts are remembered.
    #[error("too many authentication attempts are being watched")]
    Full,
    /// The job scheduler refused the job (it is shutting down).
    #[error("the attempt watcher is not running")]
    NotRunning,
}

/// What the next job run should do, decided under the lock.
#[derive(Debug)]
pub(crate) enum RunPlan {
    /// Poll with this key.
    Poll(KeyIndex),
    /// Do nothing this time (a poll is still on the wire).
    Skip,
    /// Remove the job; `changed` is the state change to report, if any.
    Stop(Option<AttemptSnapshot>),
}

/// The table of attempts.
#[derive(Debug, Default)]
pub struct Attempts {
    inner: Mutex<HashMap<AttemptKey, Attempt>>,
}

// === impl Attempts ===

impl Attempts {
    fn lock(&self) -> MutexGuard<'_, HashMap<AttemptKey, Attempt>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Inserts a new pending attempt unless the key is known. Returns the existing snapshot, or
    /// `None` when inserted.
    ///
    /// # Errors
    /// [`WatchError::Full`] when `max` attempts are remembered after forgetting old ones.
    pub fn insert(
        &self,
        key: &AttemptKey,
        api_key: KeyIndex,
        max: usize,
        retention: Duration,
        now: Instant,
    ) -> Result<Option<AttemptSnapshot>, WatchError> {
        let mut g = self.lock();
        sweep(&mut g, retention, now);
        if let Some(a) = g.get(key) {
            return Ok(Some(snapshot(&key.1, a, now)));
        }
        if g.len() >= max {
            return Err(WatchError::Full);
        }
        g.insert(
            key.clone(),
            Attempt {
                api_key,
                state: AttemptState::Pending { progress: None },
                history: vec!["pending"],
                started_at: now,
                finished_at: None,
                polls: 0,
                last_error: None,
                job: None,
                busy: false,
            },
        );
        Ok(None)
    }

    /// Records the job polling `key`.
    pub fn set_job(&self, key: &AttemptKey, job: JobId) {
        if let Some(a) = self.lock().get_mut(key) {
            a.job = Some(job);
        }
    }

    /// Forgets `key` (its job could not be added).
    pub fn remove(&self, key: &AttemptKey) {
        self.lock().remove(key);
    }

    /// The snapshot of `key`, forgetting expired attempts first.
    pub fn get(&self, key: &AttemptKey, retention: Duration, now: Instant) -> Option<AttemptSnapshot> {
        let mut g = self.lock();
        sweep(&mut g, retention, now);
        g.get(key).map(|a| snapshot(&key.1, a, now))
    }

    /// Attempts still polled.
    pub fn watching(&self) -> usize {
        self.lock().values().filter(|a| a.finished_at.is_none()).count()
    }

    /// Decides what the job run for `key` does at `now`.
    pub(crate) fn plan(&self, key: &AttemptKey, deadline: Duration, now: Instant) -> RunPlan {
        let mut g = self.lock();
        let Some(a) = g.get_mut(key) else { return RunPlan::Stop(None) };
        if a.finished_at.is_some() {
            return RunPlan::Stop(None);
        }
        if a.busy {
            return RunPlan::Skip;
        }
        if now.saturating_duration_since(a.started_at) >= deadline {
            let changed = change(a, AttemptState::TimedOut, now);
            return RunPlan::Stop(changed.then(|| snapshot(&key.1, a, now)));
        }
        a.busy = true;
        a.polls += 1;
        RunPlan::Poll(a.api_key)
    }

    /// Records a poll's outcome: the new state (if the poll meant one) or the failure label.
    /// Returns the snapshot when the state name changed.
    pub(crate) fn record(
        &self,
        key: &AttemptKey,
        outcome: Result<AttemptState, (&'static str, Option<AttemptState>)>,
        now: Instant,
    ) -> Option<AttemptSnapshot> {
        let mut g = self.lock();
        let a = g.get_mut(key)?;
        a.busy = false;
        if a.finished_at.is_some() {
            return None;
        }
        let next = match outcome {
            Ok(state) => {
                a.last_error = None;
                state
            }
            Err((label, state)) => {
                a.last_error = Some(label);
                state?
            }
        };
        change(a, next, now).then(|| snapshot(&key.1, a, now))
    }
}

/// Moves `a` to `next`; returns whether the state *name* changed (a new `progress` or deeplink
/// within the same state is kept but not reported as a change).
fn change(a: &mut Attempt, next: AttemptState, now: Instant) -> bool {
    let renamed = a.state.name() != next.name();
    if next.is_terminal() {
        a.finished_at = Some(now);
    }
    a.state = next;
    if renamed && a.history.len() < MAX_HISTORY {
        a.history.push(a.state.name());
    }
    renamed
}

fn snapshot(id: &AttemptId, a: &Attempt, now: Instant) -> AttemptSnapshot {
    AttemptSnapshot {
        id: id.clone(),
        state: a.state.clone(),
        history: a.history.clone(),
        polls: a.polls,
        watching: a.finished_at.is_none(),
        age: now.saturating_duration_since(a.started_at),
        last_error: a.last_error,
    }
}

fn sweep(g: &mut HashMap<AttemptKey, Attempt>, retention: Duration, now: Instant) {
    g.retain(|_, a| a.finished_at.is_none_or(|f| now.saturating_duration_since(f) < retention));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AttemptKey {
        (Arc::from("t"), AttemptId::parse(id).unwrap())
    }

    #[test]
    fn attempt_ids_are_bounded_and_url_safe() {
        assert!(AttemptId::parse("auth_abc-123").is_ok());
        for bad in ["", "auth/../x", "auth%2F", "a b", &"a".repeat(129)] {
            assert!(AttemptId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn polls_map_to_states() {
        let p = |f: fn(&mut AuthPoll)| {
            let mut poll = AuthPoll::default();
            f(&mut poll);
            AttemptState::from_poll(&poll)
        };
        assert_eq!(p(|_| {}).name(), "pending");
        assert_eq!(p(|x| x.state = Some("something_new".into())).name(), "pending");
        assert_eq!(p(|x| x.two_factor_pending = true).name(), "needs_2fa");
        assert_eq!(
            p(|x| {
                x.needs_otp = true;
                x.last_success = Some(false);
            })
            .name(),
            "needs_2fa"
        );
        assert_eq!(p(|x| x.last_success = Some(false)).name(), "failed");
        assert_eq!(p(|x| x.mobile_deeplink = Some("onlyfans://x".into())).name(), "mobile_pending");
        assert_eq!(p(|x| x.account_id = Some("acct_1".into())).name(), "connected");
        assert_eq!(p(|x| x.state = Some("authenticated".into())).name(), "connected");
    }

    #[test]
    fn table_is_bounded_forgets_finished_attempts_and_times_out() {
        let t = Attempts::default();
        let now = Instant::now();
        let retention = Duration::from_secs(60);
        assert!(t.insert(&key("a"), 0, 1, retention, now).unwrap().is_none());
        assert!(t.insert(&key("a"), 0, 1, retention, now).unwrap().is_some(), "idempotent");
        assert_eq!(t.insert(&key("b"), 0, 1, retention, now).unwrap_err(), WatchError::Full);
        assert!(matches!(t.plan(&key("a"), Duration::from_secs(10), now), RunPlan::Poll(0)));
        assert!(matches!(t.plan(&key("a"), Duration::from_secs(10), now), RunPlan::Skip));
        let changed = t.record(&key("a"), Ok(AttemptState::Failed { error_code: None, error_message: None }), now);
        assert_eq!(changed.unwrap().history, vec!["pending", "failed"]);
        assert!(matches!(t.plan(&key("a"), Duration::from_secs(10), now), RunPlan::Stop(None)));
        // Forgotten after the retention, which frees the slot.
        let later = now + retention;
        assert!(t.get(&key("a"), retention, later).is_none());
        assert!(t.insert(&key("b"), 0, 1, retention, later).unwrap().is_none());
        match t.plan(&key("b"), Duration::from_secs(1), later + Duration::from_secs(1)) {
            RunPlan::Stop(Some(s)) => assert_eq!(s.state, AttemptState::TimedOut),
            other => panic!("{other:?}"),
        }
    }
}
