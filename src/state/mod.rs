//! Where sessions and budgets live: in this process (`state.backend = "memory"`, the default)
//! or in Redis, shared by N replicas (`"redis"`, see [`redis`]). Hooks reach the engine through
//! [`State`], which applies them here or on the replica that owns the chat; the engine does not
//! know which.

pub mod redis;

use std::time::Duration;

use serde::Serialize;

pub use self::redis::{Replica, ReplicaConfig, Unavailable, redis_urls};
use crate::engine::{Engine, PauseCause, SessionInfo, StartCommand, StartError, StartOutcome, StopOutcome};
use crate::ids::{AccountId, SessionKey};
use crate::metrics::EndReason;

/// The state backend the hooks go through.
#[derive(Debug, Clone)]
pub enum State {
    /// Sessions and budgets in this process.
    Memory(Engine),
    /// Sessions and budgets in Redis; this process is one replica.
    Redis(Replica),
}

/// The backend as the status page shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StateView {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// This replica's id (`redis` only).
    pub replica: Option<String>,
    /// Live replicas seen (`redis` only).
    pub replicas: Option<usize>,
    /// Virtual shards this replica owns (`redis` only).
    pub shards_owned: Option<usize>,
}

impl State {
    /// A start.
    ///
    /// # Errors
    /// [`Unavailable`] when the shared state did not answer in time (Redis only).
    pub async fn start(
        &self,
        engine: &Engine,
        cmd: StartCommand,
    ) -> Result<Result<StartOutcome, StartError>, Unavailable> {
        match self {
            Self::Memory(_) => Ok(engine.start(cmd)),
            Self::Redis(r) => r.start_session(&cmd).await,
        }
    }

    /// A stop by `holder`.
    ///
    /// # Errors
    /// [`Unavailable`] when the shared state did not answer in time (Redis only).
    pub async fn stop(&self, key: &SessionKey, holder: Option<&str>) -> Result<StopOutcome, Unavailable> {
        match self {
            Self::Memory(engine) => Ok(engine.stop(key, holder)),
            Self::Redis(r) => r.stop_session(key, holder).await,
        }
    }

    /// Ends a chat whoever holds it (an outbound message was sent).
    ///
    /// # Errors
    /// [`Unavailable`] when the shared state did not answer in time (Redis only).
    pub async fn end_chat(&self, key: &SessionKey) -> Result<bool, Unavailable> {
        match self {
            Self::Memory(engine) => Ok(engine.end_chat(key, EndReason::MessageSent)),
            Self::Redis(r) => r.end_chat(key).await,
        }
    }

    /// The live sessions on accounts `visible` accepts (of every replica).
    ///
    /// # Errors
    /// [`Unavailable`] when Redis did not answer in time (Redis only).
    pub async fn sessions(
        &self,
        engine: &Engine,
        visible: impl Fn(&AccountId) -> bool,
    ) -> Result<Vec<SessionInfo>, Unavailable> {
        match self {
            Self::Memory(_) => Ok(engine.sessions(visible)),
            Self::Redis(r) => r.sessions(visible).await,
        }
    }

    /// Pauses typing for `account` (on every replica).
    pub async fn pause_account(&self, account: &AccountId, cause: PauseCause, probe_after: Duration) {
        match self {
            Self::Memory(engine) => engine.pause_account(account, cause, probe_after),
            Self::Redis(r) => r.pause_account(account, cause, probe_after).await,
        }
    }

    /// Resumes typing for `account` (on every replica). Returns whether it was paused here.
    pub async fn resume_account(&self, account: &AccountId) -> bool {
        match self {
            Self::Memory(engine) => engine.resume_account(account),
            Self::Redis(r) => r.resume_account(account).await,
        }
    }

    /// Hands this replica's chats to the others before it exits (Redis); nothing in memory.
    pub async fn leave(&self) {
        if let Self::Redis(r) = self {
            r.leave().await;
        }
    }

    /// The backend, for the status page.
    pub fn view(&self) -> StateView {
        match self {
            Self::Memory(_) => StateView { backend: "memory", replica: None, replicas: None, shards_owned: None },
            Self::Redis(r) => {
                let (replicas, owned) = r.membership();
                StateView {
                    backend: "redis",
                    replica: Some(r.id().to_owned()),
                    replicas: Some(replicas),
                    shards_owned: Some(owned),
                }
            }
        }
    }
}
