//! Accounts: onboarding a creator account and knowing when it is usable.
//!
//! [`Accounts`] is the cloneable handle the hook handlers call:
//! - [`Accounts::create_client_session`] mints the `ofapi_cs_…` token a browser hands to
//!   `startOnlyFansAuthentication` (the API key never leaves this server);
//! - [`Accounts::watch`] / [`Accounts::attempt`] watch an authentication attempt and read its
//!   latest state. The polling belongs to a tokio-cron-scheduler [`JobScheduler`] owned by this
//!   handle (one repeated job per watched attempt, see [`attempts`]); handlers never spawn;
//! - [`Accounts::verify_webhook`] checks the `Signature` of an OnlyFansAPI webhook.
//!
//! Each state change of a watched attempt is counted, optionally POSTed to
//! `accounts.callback_url` (signed like OnlyFansAPI's webhooks), and a connected attempt is
//! reported to the [`OnConnected`] hook that `App` wires to the engine's readiness. This module
//! does not import the engine or axum: pausing and resuming typing is the engine's, routing the
//! webhook events is the API's.

pub mod attempts;
pub mod client_sessions;
pub mod signing;

use std::sync::{Arc, Weak};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

pub use attempts::{AttemptId, AttemptSnapshot, AttemptState, Attempts, WatchError};
pub use client_sessions::{FieldError, parse_fields};

use crate::config::AccountsSettings;
use crate::metrics;
use crate::upstream::{AccountCallError, ClientSession, KeyIndex, NewClientSession, OnlyFansClient};
use attempts::{AttemptKey, RunPlan};

/// Called with the account id of every attempt that reaches `connected`.
pub type OnConnected = Arc<dyn Fn(&str) + Send + Sync>;

/// Why a webhook's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WebhookAuthError {
    /// `KEEPTYPING_WEBHOOK_SECRET` is not set: no webhook can be verified.
    #[error("no webhook signing secret is configured")]
    NotConfigured,
    /// No `Signature` header, or it does not verify.
    #[error("the webhook signature does not verify")]
    Invalid,
}

/// The handle.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AccountsSettings,
    client: OnlyFansClient,
    attempts: Attempts,
    scheduler: JobScheduler,
    webhook_secret: Option<SecretString>,
    callback_secret: Option<SecretString>,
    on_connected: OnConnected,
    /// Cancelled at shutdown: job runs that start afterwards do nothing.
    token: CancellationToken,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").field("watching", &self.inner.attempts.watching()).finish_non_exhaustive()
    }
}

/// The callback body: one state change of a watched attempt.
#[derive(Debug, Serialize)]
struct CallbackBody<'a> {
    event: &'static str,
    tenant: &'a str,
    attempt_id: &'a str,
    #[serde(flatten)]
    state: &'a AttemptState,
    history: &'a [&'static str],
}

// === impl Accounts ===

impl Accounts {
    /// Builds the handle and starts its job scheduler.
    ///
    /// # Errors
    /// When the job scheduler cannot be created or started.
    pub async fn build(
        settings: AccountsSettings,
        client: OnlyFansClient,
        webhook_secret: Option<SecretString>,
        callback_secret: Option<SecretString>,
        on_connected: OnConnected,
    ) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        scheduler.start().await?;
        let inner = Inner {
            settings,
            client,
            attempts: Attempts::default(),
            scheduler,
            webhook_secret,
            callback_secret,
            on_connected,
            token: CancellationToken::new(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Stops polling: runs that start afterwards do nothing, polls on the wire are cut, and the
    /// job scheduler shuts down.
    pub async fn shutdown(&self) {
        self.inner.token.cancel();
        let mut scheduler = self.inner.scheduler.clone();
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = ?e, "the attempt scheduler did not shut down cleanly");
        }
    }

    /// `POST /api/client-sessions` with API key `key`.
    ///
    /// # Errors
    /// [`AccountCallError`] as the upstream call failed.
    pub async fn create_client_session(
        &self,
        key: KeyIndex,
        fields: &NewClientSession,
    ) -> Result<ClientSession, AccountCallError> {
        self.inner.client.create_client_session(key, fields).await
    }

    /// Starts watching attempt `id` for `tenant`, polling with API key `key`. Watching an
    /// attempt already watched (or finished and not yet forgotten) changes nothing and returns
    /// it with `false`; a new one returns `true`.
    ///
    /// # Errors
    /// [`WatchError`] when the table is full or the scheduler is not running.
    pub async fn watch(
        &self,
        tenant: Arc<str>,
        id: AttemptId,
        key: KeyIndex,
    ) -> Result<(AttemptSnapshot, bool), WatchError> {
        let s = &self.inner.settings;
        let attempt_key: AttemptKey = (tenant, id);
        let now = Instant::now();
        if let Some(existing) =
            self.inner.attempts.insert(&attempt_key, key, s.max_attempts.as_usize(), s.attempt_retention, now)?
        {
            return Ok((existing, false));
        }
        metrics::auth_attempt("pending");
        let job = self.job(attempt_key.clone()).map_err(|_| WatchError::NotRunning);
        let added = match job {
            Ok(job) if !self.inner.token.is_cancelled() => {
                self.inner.scheduler.add(job).await.map_err(|_| WatchError::NotRunning)
            }
            Ok(_) | Err(_) => Err(WatchError::NotRunning),
        };
        match added {
            Ok(job_id) => self.inner.attempts.set_job(&attempt_key, job_id),
            Err(e) => {
                self.inner.attempts.remove(&attempt_key);
                return Err(e);
            }
        }
        metrics::auth_attempts_watched(self.inner.attempts.watching());
        tracing::info!(attempt = %attempt_key.1, tenant = %attempt_key.0, "watching an authentication attempt");
        let snapshot = self.inner.attempts.get(&attempt_key, s.attempt_retention, now).ok_or(WatchError::NotRunning)?;
        Ok((snapshot, true))
    }

    /// The latest state of `tenant`'s attempt `id`, unless unknown or forgotten.
    pub fn attempt(&self, tenant: Arc<str>, id: AttemptId) -> Option<AttemptSnapshot> {
        self.inner.attempts.get(&(tenant, id), self.inner.settings.attempt_retention, Instant::now())
    }

    /// Checks an OnlyFansAPI webhook's `Signature` header against its raw body.
    ///
    /// # Errors
    /// [`WebhookAuthError::NotConfigured`] without a secret; [`WebhookAuthError::Invalid`] when
    /// the header is missing or does not verify.
    pub fn verify_webhook(&self, body: &[u8], signature: Option<&str>) -> Result<(), WebhookAuthError> {
        let secret = self.inner.webhook_secret.as_ref().ok_or(WebhookAuthError::NotConfigured)?;
        let sig = signature.ok_or(WebhookAuthError::Invalid)?;
        if signing::verify(secret.expose_secret().as_bytes(), body, sig) {
            Ok(())
        } else {
            Err(WebhookAuthError::Invalid)
        }
    }

    /// The repeated job polling `key`. It holds a `Weak` handle: the scheduler owns the job and
    /// this handle owns the scheduler, so a strong one would be a cycle.
    fn job(&self, key: AttemptKey) -> Result<Job, JobSchedulerError> {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.settings.poll_interval.max(Duration::from_secs(1));
        Job::new_repeated_async(every, move |job_id, scheduler| {
            let weak: Weak<Inner> = Weak::clone(&weak);
            let key = key.clone();
            Box::pin(async move {
                let Some(inner) = weak.upgrade() else { return };
                if inner.run(&key).await {
                    // Removing waits for the scheduler's deleter, which runs apart from this job.
                    if let Err(e) = scheduler.remove(&job_id).await {
                        tracing::warn!(error = ?e, attempt = %key.1, "could not remove a finished attempt's job");
                    }
                    metrics::auth_attempts_watched(inner.attempts.watching());
                }
            })
        })
    }
}

// === impl Inner ===

impl Inner {
    /// One job run for `key`. Returns whether the job should be removed.
    async fn run(&self, key: &AttemptKey) -> bool {
        if self.token.is_cancelled() {
            return false;
        }
        let api_key = match self.attempts.plan(key, self.settings.attempt_deadline, Instant::now()) {
            RunPlan::Skip => return false,
            RunPlan::Stop(changed) => {
                if let Some(s) = changed {
                    self.changed(&key.0, &s).await;
                }
                return true;
            }
            RunPlan::Poll(api_key) => api_key,
        };
        let polled = tokio::select! {
            () = self.token.cancelled() => return false,
            r = self.client.poll_authentication(api_key, key.1.as_str()) => r,
        };
        let outcome = match polled {
            Ok(poll) => Ok(AttemptState::from_poll(&poll)),
            Err(e) => {
                tracing::debug!(attempt = %key.1, error = %e, "authentication poll failed");
                Err((e.error.label(), AttemptState::from_poll_error(&e.error, e.upstream_message.as_deref())))
            }
        };
        let changed = self.attempts.record(key, outcome, Instant::now());
        let Some(s) = changed else { return false };
        self.changed(&key.0, &s).await;
        !s.watching
    }

    /// Reports a state change: metric, log, engine hook, callback.
    async fn changed(&self, tenant: &str, s: &AttemptSnapshot) {
        metrics::auth_attempt(s.state.name());
        tracing::info!(attempt = %s.id, tenant, state = s.state.name(), "authentication attempt changed state");
        if let AttemptState::Connected { account_id: Some(account) } = &s.state {
            (self.on_connected)(account);
        }
        self.callback(tenant, s).await;
    }

    /// POSTs the change to `accounts.callback_url`, signed. One attempt; failures are logged
    /// and counted (the state stays readable with GET).
    async fn callback(&self, tenant: &str, s: &AttemptSnapshot) {
        let (url, Some(secret)) = (&self.settings.callback_url, &self.callback_secret) else { return };
        if url.is_empty() {
            return;
        }
        let body = CallbackBody {
            event: "auth_attempt.state_changed",
            tenant,
            attempt_id: s.id.as_str(),
            state: &s.state,
            history: &s.history,
        };
        let Ok(bytes) = serde_json::to_vec(&body) else { return };
        let signature = signing::sign(secret.expose_secret().as_bytes(), &bytes);
        let sent = self
            .client
            .http()
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signing::SIGNATURE_HEADER, signature)
            .body(bytes)
            .send();
        let outcome = tokio::select! {
            () = self.token.cancelled() => return,
            r = sent => r,
        };
        match outcome {
            Ok(resp) if resp.status().is_success() => metrics::auth_callback("ok"),
            Ok(resp) => {
                tracing::warn!(status = resp.status().as_u16(), attempt = %s.id, "the attempt callback was refused");
                metrics::auth_callback("refused");
            }
            Err(e) => {
                // A reqwest error names the URL, never a header.
                tracing::warn!(error = %e, attempt = %s.id, "the attempt callback failed");
                metrics::auth_callback("failed");
            }
        }
    }
}
