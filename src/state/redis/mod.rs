//! The Redis backend: N replicas share sessions and budgets through Redis.
//!
//! Chats hash to [`wire::SHARDS`] virtual shards. Each shard has one owner replica, which alone
//! applies the hooks of its chats (through its own [`Engine`], exactly as one process would)
//! and alone sends their typing calls, and only while its lease on the shard is valid by its
//! own monotonic clock ([`Ownership`]). A hook reaching another replica is forwarded to the
//! owner over pub/sub and answered with the owner's answer. Every change to a session is
//! written to its shard's record in Redis before the hook is answered (batched with the other
//! changes of the moment), so a replica that takes a shard over rebuilds its sessions from it.
//!
//! The control step ([`scripts::CONTROL`], every quarter of `state.lease`) renews this
//! replica's membership, hands over the shards another live replica should own (rendezvous
//! hashing), and takes the shards that have no live owner. Budgets are shared through a window
//! per budget in Redis ([`scripts::BUDGET`]), from which each replica reserves a second of calls
//! at a time.

mod budget;
mod conn;
mod order;
mod scripts;
mod shards;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::{Notify, OnceCell, RwLock, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::SharedWindow;
pub(crate) use conn::Target;
use conn::{Conn, RedisFault};
use shards::Shards;
use wire::{Answer, Message, Record, Request, SHARDS, shard_of};

use crate::engine::{
    Engine, Ownership, PauseCause, Recorded, SessionInfo, StartCommand, StartError, StartOutcome, StopOutcome,
};
use crate::ids::{AccountId, SessionKey};
use crate::metrics::{self, EndReason, StateOp};

/// How long a forwarded hook waits for the owner's answer before it looks again at who owns the
/// chat (the owner may have died or handed the shard over meanwhile); a live owner answers in
/// milliseconds.
const FORWARD_WAIT: Duration = Duration::from_millis(400);
/// How often the control step looks again while Redis does not answer.
const RECOVERY_EVERY: Duration = Duration::from_millis(100);
/// How long a hook may wait on an unresponsive Redis before it answers 503.
const HOOK_REDIS_BUDGET: Duration = Duration::from_millis(950);

/// A hook could not be applied: Redis (or the chat's owner) did not answer in time.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the shared state is unavailable")]
pub struct Unavailable;

/// What a replica is told at start.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Its id, unique among the replicas (`KEEPTYPING_REPLICA_ID`, the pod name).
    pub id: String,
    /// The Redis URL(s) (see [`redis_urls`]).
    pub urls: Vec<String>,
    /// Whether they name Redis Cluster nodes.
    pub cluster: bool,
    /// `state.lease`.
    pub lease: Duration,
}

/// A replica of a Redis-backed deployment.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

struct Inner {
    id: String,
    engine: Engine,
    conn: Conn,
    /// Where `PUBLISH` goes: the node the replicas subscribe on (the same as `conn` on a
    /// single Redis).
    bus: Conn,
    target: Target,
    lease: Duration,
    shards: Shards,
    /// Hooks applied here hold a read guard of their shard; a hand-over takes the write guard,
    /// so that no hook lands between the hand-over's snapshot and the release.
    locks: Vec<RwLock<()>>,
    pending: DashMap<u64, oneshot::Sender<Answer>>,
    /// Hooks forwarded here, by sender and hook id, with their answers: a hook sent again
    /// (its answer was lost on the way back) gets the same answer, not a second application.
    answered: Answered,
    next_id: AtomicU64,
    commits: mpsc::UnboundedSender<Commit>,
    /// Runs the control step now (a shard was released somewhere).
    kick: Notify,
    /// Notified when shards were taken over: their sessions' calls need a grant from the
    /// shared budget windows at once, not at the next reservation.
    regrant: Notify,
    /// Whether the last control step reached Redis.
    redis_ok: AtomicBool,
    /// Set when this replica drains: it takes no shard any more.
    leaving: AtomicBool,
    budget_names: Vec<String>,
    /// When each shard was first seen without a live owner (any replica may take it after a
    /// while, whoever rendezvous hashing prefers).
    orphaned: std::sync::Mutex<HashMap<usize, Instant>>,
}

/// Answers to forwarded hooks by sender and hook id, each with when it was first asked.
type Answered = DashMap<(String, u64), (Instant, Arc<OnceCell<Answer>>)>;

/// One change to a session record, written with the others of the moment.
struct Commit {
    shard: usize,
    field: String,
    /// The record, or `None` to delete it.
    value: Option<String>,
    done: Option<oneshot::Sender<bool>>,
}

impl Ownership for Inner {
    fn may_send(&self, key: &SessionKey, now: Instant) -> bool {
        self.shards.valid(shard_of(key), now)
    }
}

/// Parses the Redis URL secret: one URL, or (for a cluster) several separated by commas.
///
/// # Errors
/// A line saying what is wrong, never the URL itself (it may hold a password).
pub fn redis_urls(raw: &str, cluster: bool) -> Result<Vec<String>, String> {
    let urls: Vec<String> = raw.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
    if urls.is_empty() {
        return Err("is empty".to_owned());
    }
    if urls.len() > 1 && !cluster {
        return Err("names several servers; set state.cluster = true for a Redis Cluster".to_owned());
    }
    for (i, u) in urls.iter().enumerate() {
        match reqwest::Url::parse(u) {
            Ok(p) if (p.scheme() == "redis" || p.scheme() == "rediss") && p.host_str().is_some() => {}
            Ok(_) => return Err(format!("URL {} must be redis://host:port (or rediss://)", i + 1)),
            Err(e) => return Err(format!("URL {} is not a URL ({e})", i + 1)),
        }
        if u.starts_with("rediss://") {
            return Err(format!("URL {}: rediss:// (TLS) is not supported by this build", i + 1));
        }
    }
    Ok(urls)
}

impl Replica {
    /// Connects to Redis, joins the replicas and starts the background work (control step,
    /// record writer, pub/sub listener, budget reservations), all stopped by `stop`.
    ///
    /// # Errors
    /// Redis cannot be reached: one line naming `host:port`, never the password.
    pub async fn start(
        config: ReplicaConfig,
        engine: Engine,
        budget_names: Vec<String>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let ReplicaConfig { id, urls, cluster, lease } = config;
        let target = Target { urls, cluster };
        let conn = conn::connect(&target)
            .await
            .map_err(|e| anyhow::anyhow!("state: cannot reach Redis at {}: {e}", target.shown()))?;
        let bus = if target.cluster {
            conn::connect_bus(&target)
                .await
                .map_err(|e| anyhow::anyhow!("state: cannot reach Redis at {}: {e}", target.shown()))?
        } else {
            conn.clone()
        };
        let (commits, commit_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            id,
            engine: engine.clone(),
            conn,
            bus,
            target,
            lease,
            shards: Shards::new(),
            locks: (0..SHARDS).map(|_| RwLock::new(())).collect(),
            pending: DashMap::new(),
            answered: DashMap::new(),
            next_id: AtomicU64::new(wire::wall_ms() << 16),
            commits,
            kick: Notify::new(),
            regrant: Notify::new(),
            redis_ok: AtomicBool::new(true),
            leaving: AtomicBool::new(false),
            budget_names,
            orphaned: std::sync::Mutex::new(HashMap::new()),
        });
        engine.set_ownership(Arc::clone(&inner) as Arc<dyn Ownership>);
        let (ends, ends_rx) = mpsc::unbounded_channel();
        engine.set_end_listener(ends);
        // Until the first reservation comes back, typing spends nothing: fail closed.
        let now = Instant::now();
        for i in 0..inner.budget_names.len() {
            let nothing = SharedWindow { tokens: 0, first_tokens: 0, fraction: 1.0, window_used: 0, slot_calls: None };
            engine.budget_states().with(i, |b| b.set_shared_grant(nothing, now, now));
        }
        let subscribed = Arc::new(Notify::new());
        tasks.spawn(listen(Arc::clone(&inner), stop.clone(), Arc::clone(&subscribed)));
        // Forwarded hooks must find this replica listening before it takes any shard.
        let _ = tokio::time::timeout(conn::OP_TIMEOUT * 3, subscribed.notified()).await;
        tasks.spawn(write_records(inner.conn.clone(), commit_rx, stop.clone()));
        tasks.spawn(forget_ended(Arc::clone(&inner), ends_rx, stop.clone()));
        tasks.spawn(control_loop(Arc::clone(&inner), stop.clone()));
        tasks.spawn(budget::share(Arc::clone(&inner), stop));
        tracing::info!(replica = %inner.id, redis = %inner.target.shown(), cluster = inner.target.cluster, "joined the replicas on Redis");
        Ok(Self { inner })
    }

    /// This replica's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Live replicas seen at the last control step, and the shards this one owns now.
    pub fn membership(&self) -> (usize, usize) {
        (self.inner.shards.members().len(), self.inner.shards.owned_count(Instant::now()))
    }

    /// A start, applied by the owner of the chat.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis or the owner did not answer in time.
    pub async fn start_session(&self, cmd: &StartCommand) -> Result<Result<StartOutcome, StartError>, Unavailable> {
        let preferred = cmd.preferred_key.and_then(|i| self.inner.engine.keys().get(i)).map(|k| k.name.clone());
        match self.inner.route(Request::start(cmd, preferred)).await? {
            Answer::Started(s) => Ok(Ok(match s {
                wire::WireStart::Started => StartOutcome::Started,
                wire::WireStart::Refreshed => StartOutcome::Refreshed,
                wire::WireStart::Capped => StartOutcome::Capped,
                wire::WireStart::Paused(cause) => StartOutcome::Paused(pause_cause(&cause)),
            })),
            Answer::Refused(e) => Ok(Err(match e {
                wire::WireStartError::ShuttingDown => StartError::ShuttingDown,
                wire::WireStartError::AtCapacity => StartError::AtCapacity,
                wire::WireStartError::NoApiKey => StartError::NoApiKey,
                wire::WireStartError::KeyRefused => StartError::KeyRefused,
            })),
            _ => Err(Unavailable),
        }
    }

    /// A stop, applied by the owner of the chat: once this returns `Ok`, no typing call for
    /// the chat leaves any replica.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis or the owner did not answer in time.
    pub async fn stop_session(&self, key: &SessionKey, holder: Option<&str>) -> Result<StopOutcome, Unavailable> {
        let req = Request::Stop { key: wire::WireKey::of(key), holder: holder.map(str::to_owned) };
        match self.inner.route(req).await? {
            Answer::Stopped(wire::WireStop::Stopped) => Ok(StopOutcome::Stopped),
            Answer::Stopped(wire::WireStop::Released(holders)) => Ok(StopOutcome::Released { holders }),
            Answer::Stopped(wire::WireStop::NotFound) => Ok(StopOutcome::NotFound),
            _ => Err(Unavailable),
        }
    }

    /// Ends the chat whoever holds it (an outbound message), on its owner.
    ///
    /// # Errors
    /// [`Unavailable`] when Redis or the owner did not answer in time.
    pub async fn end_chat(&self, key: &SessionKey) -> Result<bool, Unavailable> {
        match self.inner.route(Request::End { key: wire::WireKey::of(key) }).await? {
            Answer::Ended(ended) => Ok(ended),
            _ => Err(Unavailable),
        }
    }

    /// The live sessions of every replica on accounts `visible` accepts: this replica's own as
    /// its engine knows them, the others' as their records say (their `lit_slot` is not
    /// recorded and shows `false`).
    ///
    /// # Errors
    /// [`Unavailable`] when Redis did not answer in time.
    pub async fn sessions(&self, visible: impl Fn(&AccountId) -> bool) -> Result<Vec<SessionInfo>, Unavailable> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut out = inner.engine.sessions(&visible);
        let reads = (0..SHARDS).filter(|s| !inner.shards.serving(*s, now)).map(|s| {
            let mut conn = inner.conn.clone();
            async move {
                conn::query::<Vec<(String, String)>>(
                    &mut conn,
                    redis::cmd("HGETALL").arg(wire::sessions_key(s)),
                    StateOp::Adopt,
                )
                .await
            }
        });
        let wall = wire::wall_ms();
        let mine = out.len();
        for shard in futures_util::future::join_all(reads).await {
            for (field, value) in shard.map_err(|_| Unavailable)? {
                let (Some(key), Ok(r)) = (wire::parse_field(&field), serde_json::from_str::<Record>(&value)) else {
                    continue;
                };
                if r.is_over(wall) || !visible(&key.account) {
                    continue;
                }
                let end = r.h.iter().map(|(_, u)| *u).max().unwrap_or(0).min(r.m);
                out.push(SessionInfo {
                    platform: key.platform,
                    paused: inner.engine.is_paused(&key.account),
                    account_id: key.account,
                    chat_id: key.chat,
                    holders: r.h.iter().map(|(id, _)| id.clone()).collect(),
                    priority: r.p,
                    age_ms: wall.saturating_sub(r.s),
                    expires_in_ms: end.saturating_sub(wall),
                    lit_slot: false,
                });
            }
        }
        // Whether a session holds a lit slot only its owner knows: ask each owner about its
        // chats, all at once (a session whose owner does not answer in time shows none).
        let mut by_owner: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in out.iter().enumerate().skip(mine) {
            let key = SessionKey { platform: s.platform, account: s.account_id.clone(), chat: s.chat_id.clone() };
            if let Some(owner) = inner.shards.owner(shard_of(&key)) {
                by_owner.entry(owner).or_default().push(i);
            }
        }
        let asks = by_owner.into_iter().map(|(owner, at)| {
            let chats: Vec<wire::WireKey> = at
                .iter()
                .filter_map(|i| out.get(*i))
                .map(|s| wire::WireKey {
                    platform: s.platform,
                    account: s.account_id.as_str().to_owned(),
                    chat: s.chat_id.as_str().to_owned(),
                })
                .collect();
            async move {
                let answer = inner.ask(&owner, |id, from| Message::LitQuery { id, from, chats }).await;
                (at, answer)
            }
        });
        for (at, answer) in futures_util::future::join_all(asks).await {
            if let Ok(Answer::Lit(lit)) = answer {
                for (i, l) in at.into_iter().zip(lit) {
                    if let Some(s) = out.get_mut(i) {
                        s.lit_slot = l;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Pauses `account` on every replica (a webhook said so).
    pub async fn pause_account(&self, account: &AccountId, cause: PauseCause, probe_after: Duration) {
        self.inner.engine.pause_account(account, cause, probe_after);
        let msg = Message::Pause {
            account: account.as_str().to_owned(),
            cause: cause.as_str().to_owned(),
            probe_after_ms: u64::try_from(probe_after.as_millis()).unwrap_or(u64::MAX),
        };
        self.inner.broadcast(&msg).await;
    }

    /// Resumes `account` on every replica.
    pub async fn resume_account(&self, account: &AccountId) -> bool {
        let was = self.inner.engine.resume_account(account);
        self.inner.broadcast(&Message::Resume { account: account.as_str().to_owned() }).await;
        was
    }

    /// Hands every shard of this replica to the others (drain): each shard's sessions leave
    /// this process with their next deadlines recorded, its lease is released, and the others
    /// are told to take it at once.
    pub async fn leave(&self) {
        let inner = &self.inner;
        inner.leaving.store(true, Ordering::Release);
        let owned = inner.shards.owned();
        inner.hand_over(&owned).await;
        inner.control_step(&owned, true).await;
        tracing::info!(shards = owned.len(), "handed every shard over to the other replicas");
    }
}

fn pause_cause(name: &str) -> PauseCause {
    [PauseCause::Reauthenticating, PauseCause::SessionExpired, PauseCause::AuthenticationFailed]
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or(PauseCause::Reauthenticating)
}

impl Inner {
    /// Applies `req` here if this replica serves the chat's shard, else forwards it to the
    /// owner; looks again at who owns the shard until one answers or the time is up.
    async fn route(&self, req: Request) -> Result<Answer, Unavailable> {
        let Some(key) = req.wire_key().key() else { return Err(Unavailable) };
        let shard = shard_of(&key);
        // A dead or frozen owner is replaced within its lease and one control step.
        let started = Instant::now();
        let deadline = started + self.lease + self.lease / 2 + FORWARD_WAIT;
        // Every try of this hook carries the same id, so that an owner that applied it and whose
        // answer was lost answers a second try alike.
        let hook = self.next_id.fetch_add(1, Ordering::Relaxed);
        loop {
            if !self.redis_ok.load(Ordering::Acquire) {
                return Err(Unavailable);
            }
            let now = Instant::now();
            if self.shards.serving(shard, now) {
                match self.apply(req.clone()).await {
                    Answer::NotOwner => {}
                    Answer::Unavailable => return Err(Unavailable),
                    answer => return Ok(answer),
                }
            } else if let Some(owner) = self.shards.owner(shard).filter(|o| *o != self.id) {
                match self.forward(&owner, hook, req.clone()).await {
                    Ok(Answer::NotOwner) => {
                        // No answer: the owner is gone or slow, or Redis stopped answering after
                        // the publish. Only the first is worth waiting for.
                        let left = (started + HOOK_REDIS_BUDGET).saturating_duration_since(Instant::now());
                        let mut conn = self.conn.clone();
                        let cmd = redis::cmd("PING");
                        let ping = tokio::time::timeout(
                            left.max(Duration::from_millis(50)),
                            conn::query::<String>(&mut conn, &cmd, StateOp::Forward),
                        );
                        if !matches!(ping.await, Ok(Ok(_))) {
                            return Err(Unavailable);
                        }
                    }
                    Ok(Answer::Unavailable) | Err(_) => return Err(Unavailable),
                    Ok(answer) => return Ok(answer),
                }
            }
            if Instant::now() >= deadline {
                return Err(Unavailable);
            }
            self.kick.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `req` to `owner` and waits for its answer (`NotOwner` when none comes in time).
    async fn forward(&self, owner: &str, hook: u64, request: Request) -> Result<Answer, RedisFault> {
        let started = Instant::now();
        let answer = self.ask(owner, |id, from| Message::Request { id, from, hook, request }).await;
        metrics::state_forwarded(started.elapsed());
        answer
    }

    /// Sends replica `owner` the message `make` builds (from a fresh request id and this
    /// replica's id) and waits for its answer; [`Answer::NotOwner`] when it does not answer
    /// within [`FORWARD_WAIT`].
    async fn ask(&self, owner: &str, make: impl FnOnce(u64, String) -> Message) -> Result<Answer, RedisFault> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx);
        let msg = make(id, self.id.clone());
        let body = serde_json::to_string(&msg).unwrap_or_default();
        let mut conn = self.bus.clone();
        let receivers: Result<i64, RedisFault> =
            conn::query(&mut conn, redis::cmd("PUBLISH").arg(wire::channel(owner)).arg(body), StateOp::Forward).await;
        let answer = match receivers {
            Err(e) => {
                self.pending.remove(&id);
                return Err(e);
            }
            // Nobody listens on the owner's channel: it is gone.
            Ok(0) => Answer::NotOwner,
            Ok(_) => match tokio::time::timeout(FORWARD_WAIT, rx).await {
                Ok(Ok(answer)) => answer,
                _ => Answer::NotOwner,
            },
        };
        self.pending.remove(&id);
        Ok(answer)
    }

    /// [`Self::apply`] for hook `hook` of replica `from`, once: a second try of the same hook
    /// gets the first one's answer (a `NotOwner` or `Unavailable` answer is not kept: the next
    /// try applies it afresh).
    async fn apply_once(&self, from: &str, hook: u64, req: Request) -> Answer {
        if hook == 0 {
            return self.apply(req).await;
        }
        let cell = Arc::clone(
            &self
                .answered
                .entry((from.to_owned(), hook))
                .or_insert_with(|| (Instant::now(), Arc::new(OnceCell::new())))
                .1,
        );
        let answer = cell.get_or_init(|| self.apply(req)).await.clone();
        if matches!(answer, Answer::NotOwner | Answer::Unavailable) {
            self.answered.remove(&(from.to_owned(), hook));
        }
        answer
    }

    /// Answers request `id` of replica `from` on its channel.
    async fn reply(&self, from: &str, id: u64, answer: Answer) {
        let body = serde_json::to_string(&Message::Reply { id, answer }).unwrap_or_default();
        let mut conn = self.bus.clone();
        let _: Result<i64, _> =
            conn::query(&mut conn, redis::cmd("PUBLISH").arg(wire::channel(from)).arg(body), StateOp::Forward).await;
    }

    /// Forgets the answers kept for second tries once no try can come any more.
    fn forget_answers(&self) {
        let keep = self.lease * 2 + HOOK_REDIS_BUDGET;
        let now = Instant::now();
        self.answered.retain(|_, (at, _)| now.saturating_duration_since(*at) < keep);
    }

    /// Applies `req` to this replica's engine, if it serves the chat's shard, and records the
    /// change in Redis before answering.
    async fn apply(&self, req: Request) -> Answer {
        let Some(key) = req.wire_key().key() else { return Answer::Unavailable };
        let shard = shard_of(&key);
        let Some(lock) = self.locks.get(shard) else { return Answer::NotOwner };
        let _serving = lock.read().await;
        if !self.shards.serving(shard, Instant::now()) {
            return Answer::NotOwner;
        }
        match req {
            Request::Start { holder, priority, ttl_ms, preferred_key, .. } => {
                let cmd = StartCommand {
                    key: key.clone(),
                    holder: holder.map(Arc::from),
                    priority,
                    ttl: ttl_ms.map(Duration::from_millis),
                    preferred_key: preferred_key.and_then(|n| self.engine.keys().by_name(&n)),
                };
                let outcome = self.engine.start(cmd);
                let recorded = match outcome {
                    Ok(StartOutcome::Started | StartOutcome::Refreshed | StartOutcome::Paused(_)) => {
                        self.save(&key, shard).await
                    }
                    // The cap moved on with this start's lease.
                    Ok(StartOutcome::Capped) => self.commit(shard, wire::field(&key), self.cap_value(&key)).await,
                    _ => true,
                };
                if recorded { Answer::from(outcome) } else { Answer::Unavailable }
            }
            Request::Stop { holder, .. } => {
                let outcome = self.engine.stop(&key, holder.as_deref());
                let recorded = match outcome {
                    // A stop also lifts a cap, which only the record may still hold (a cap that
                    // had lapsed here).
                    StopOutcome::Stopped | StopOutcome::NotFound => self.commit(shard, wire::field(&key), None).await,
                    StopOutcome::Released { .. } => self.save(&key, shard).await,
                };
                if recorded { Answer::from(outcome) } else { Answer::Unavailable }
            }
            Request::End { .. } => {
                let ended = self.engine.end_chat(&key, EndReason::MessageSent);
                if ended && !self.commit(shard, wire::field(&key), None).await {
                    return Answer::Unavailable;
                }
                Answer::Ended(ended)
            }
        }
    }

    /// Writes the record of the live session of `key` (deletes it if it is gone).
    async fn save(&self, key: &SessionKey, shard: usize) -> bool {
        let value = self.engine.record(key).map(|r| self.record_value(&r, wire::wall_ms()));
        self.commit(shard, wire::field(key), value).await
    }

    /// The record of `key`'s cap, if it is capped here.
    fn cap_value(&self, key: &SessionKey) -> Option<String> {
        let left = self.engine.cap_left(key)?;
        let c = wire::wall_ms() + u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        serde_json::to_string(&wire::Cap { c }).ok()
    }

    /// The record of a live session as stored, at wall time `now`.
    fn record_value(&self, r: &Recorded, now: u64) -> String {
        let name = self.engine.keys().get(r.api_key).map_or("", |k| k.name.as_str());
        serde_json::to_string(&Record::from_live(r, name, now)).unwrap_or_default()
    }

    /// Queues one record change and waits until Redis has it.
    async fn commit(&self, shard: usize, field: String, value: Option<String>) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commits.send(Commit { shard, field, value, done: Some(tx) }).is_err() {
            return false;
        }
        // Behind a batch that is timing out, this one would wait two timeouts: one is enough.
        matches!(tokio::time::timeout(conn::OP_TIMEOUT, rx).await, Ok(Ok(true)))
    }

    async fn broadcast(&self, msg: &Message) {
        let body = serde_json::to_string(msg).unwrap_or_default();
        let mut conn = self.bus.clone();
        let sent: Result<i64, _> =
            conn::query(&mut conn, redis::cmd("PUBLISH").arg(wire::ALL).arg(body), StateOp::Forward).await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not tell the other replicas");
        }
    }

    /// Before `shards` are handed over: the calls of their sessions that would fall due before
    /// the replicas taking them over can send leave before it, so that no chat waits for the
    /// hand-over (see [`Engine::send_due_within`]). The others are told at once and take a
    /// released shard at their next control step at the latest, a quarter lease on: that is the
    /// horizon. The calls leave within its first half; the rest of the hand-over (records,
    /// release, adoption: tens of milliseconds) fits in the other half.
    async fn send_due_before_hand_over(&self, shards: &[usize]) {
        let horizon = self.lease / 4;
        let sent = self.engine.send_due_within(|k| shards.contains(&shard_of(k)), horizon).await;
        tracing::debug!(shards = shards.len(), sent, "sent the calls due within the hand-over");
    }

    /// Stops serving `shards`, takes their sessions out of the engine and records each with its
    /// next deadline, so that the replicas taking them over keep their cadence; then drops the
    /// leases (the caller releases them in Redis). All shards go together: one pass over the
    /// sessions and one batch of records, so that the hand-over is over sooner.
    async fn hand_over(&self, shards: &[usize]) {
        if shards.is_empty() {
            return;
        }
        self.send_due_before_hand_over(shards).await;
        let mut handed = [false; SHARDS];
        for &s in shards {
            self.shards.set_serving(s, false);
            if let Some(h) = handed.get_mut(s) {
                *h = true;
            }
        }
        // In shard order, as any other hand-over running meanwhile takes them.
        let mut exclusive = Vec::with_capacity(shards.len());
        for (s, lock) in self.locks.iter().enumerate() {
            if handed[s] {
                exclusive.push(lock.write().await);
            }
        }
        let evicted = self.engine.evict(|k| handed[shard_of(k)], false);
        let now = wire::wall_ms();
        let mut waits = Vec::with_capacity(evicted.len());
        for (key, r) in &evicted {
            let value = self.record_value(r, now);
            let (tx, rx) = oneshot::channel();
            let commit = Commit { shard: shard_of(key), field: wire::field(key), value: Some(value), done: Some(tx) };
            let _ = self.commits.send(commit);
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
        for &s in shards {
            self.shards.drop_lease(s);
        }
        drop(exclusive);
    }

    /// Reads the records of `shard` and takes its sessions over; returns how many, how many of
    /// them were already due, and how long the most overdue one had waited.
    async fn adopt(&self, shard: usize) -> (usize, usize, Duration) {
        let mut conn = self.conn.clone();
        let flat: Result<Vec<(String, String)>, _> =
            conn::query(&mut conn, redis::cmd("HGETALL").arg(wire::sessions_key(shard)), StateOp::Adopt).await;
        let Ok(flat) = flat else { return (0, 0, Duration::ZERO) };
        let now = wire::wall_ms();
        let mut adopted = 0;
        let mut over = Vec::new();
        let mut overdue = Vec::new();
        for (field, value) in flat {
            if let (Some(key), Ok(cap)) = (wire::parse_field(&field), serde_json::from_str::<wire::Cap>(&value)) {
                match cap.c.checked_sub(now).filter(|left| *left > 0) {
                    Some(left) => self.engine.adopt_cap(key, Duration::from_millis(left)),
                    None => over.push(field),
                }
                continue;
            }
            let (Some(key), Ok(record)) = (wire::parse_field(&field), serde_json::from_str::<Record>(&value)) else {
                over.push(field);
                continue;
            };
            if record.is_over(now) {
                over.push(field);
                continue;
            }
            let preferred = self.engine.keys().by_name(&record.k);
            let session = record.adopted(now, false, preferred);
            if session.due_in.is_zero() {
                overdue.push((Duration::from_millis(now.saturating_sub(record.d)), key, session));
            } else if self.engine.adopt(key, &session) {
                adopted += 1;
            }
        }
        // Sessions already due go out most overdue first, spread over as long as the most
        // overdue one has waited, and at most a quarter interval. After a crash (a lease's worth
        // of deadlines overdue) that is not one burst that would come due together at every
        // interval afterwards, and the fans wait little longer than the lease; after a hand-over
        // that took longer than its horizon (a few sessions, overdue by milliseconds) it is at
        // once.
        overdue.sort_by_key(|(late, ..)| std::cmp::Reverse(*late));
        let most_overdue = overdue.first().map_or(Duration::ZERO, |(late, ..)| *late);
        let spread = most_overdue.min(self.engine.refire_interval() / 4);
        let overdue_count = overdue.len();
        let n = u32::try_from(overdue_count).unwrap_or(u32::MAX).max(1);
        for (i, (_, key, mut session)) in (0u32..).zip(overdue) {
            session.due_in = spread * i / n;
            if self.engine.adopt(key, &session) {
                adopted += 1;
            }
        }
        for field in over {
            let _ = self.commits.send(Commit { shard, field, value: None, done: None });
        }
        (adopted, overdue_count, most_overdue)
    }

    /// One control step: hands over the shards another live replica should own, renews this
    /// replica's leases, takes the shards it should own that have no live owner, and adopts
    /// their sessions.
    async fn control_step(&self, releasing: &[usize], leave: bool) {
        let me = self.id.as_str();
        let mut members = self.shards.members();
        if !leave && !members.iter().any(|m| m == me) {
            members.push(me.to_owned());
        }
        let owned = self.shards.owned();
        let now = Instant::now();
        let mut release: Vec<usize> = releasing.to_vec();
        let mut want = Vec::new();
        if !leave && !self.leaving.load(Ordering::Acquire) {
            let mut orphaned = self.orphaned.lock().map(|o| o.clone()).unwrap_or_default();
            for s in 0..SHARDS {
                let preferred = shards::preferred(s, &members);
                let mine = owned.contains(&s);
                let owner = self.shards.owner(s);
                let owner_live = owner.as_ref().is_some_and(|o| members.contains(o));
                if owner_live {
                    orphaned.remove(&s);
                } else {
                    orphaned.entry(s).or_insert(now);
                }
                let waited = orphaned.get(&s).is_some_and(|t| now.saturating_duration_since(*t) > self.lease);
                if mine && preferred != Some(me) && preferred.is_some_and(|p| members.iter().any(|m| m == p)) {
                    release.push(s);
                } else if !mine && (preferred == Some(me) || waited) {
                    want.push(s);
                }
            }
            if let Ok(mut o) = self.orphaned.lock() {
                *o = orphaned;
            }
            self.hand_over(&release).await;
        }
        let list = |v: &[usize]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        let sent = Instant::now();
        let mut conn = self.conn.clone();
        let args = [
            me.to_owned(),
            self.lease.as_millis().to_string(),
            list(&release),
            list(&want),
            if leave { "1" } else { "0" }.to_owned(),
        ];
        type View = (Vec<String>, Vec<String>);
        let result: Result<View, _> =
            conn::script(&mut conn, &scripts::CONTROL, &[wire::MEMBERS, wire::OWNERS], &args, StateOp::Control).await;
        let (members, flat) = match result {
            Ok(v) => v,
            Err(e) => {
                metrics::state_renewal_failed();
                if self.redis_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "cannot renew the shard leases; typing stops when they lapse");
                }
                self.shards.lapse_all_before(Instant::now());
                return;
            }
        };
        let recovered = !self.redis_ok.swap(true, Ordering::AcqRel);
        if recovered {
            tracing::info!("Redis answers again");
        }
        let mut owners = vec![None; SHARDS];
        for pair in flat.chunks(2) {
            if let [s, o] = pair {
                if let Some(slot) = s.parse::<usize>().ok().and_then(|s| owners.get_mut(s)) {
                    *slot = Some(o.clone());
                }
            }
        }
        let until = sent + self.lease - shards::safety_margin(self.lease);
        let mut adopted_shards = 0;
        for (s, owner) in owners.iter().enumerate() {
            let was_mine = owned.contains(&s);
            if owner.as_deref() == Some(me) && !leave {
                self.shards.renew(s, until);
                if !was_mine {
                    let (n, overdue, late) = self.adopt(s).await;
                    adopted_shards += 1;
                    tracing::info!(shard = s, sessions = n, overdue, most_overdue = ?late, "took the shard over");
                }
                self.shards.set_serving(s, true);
            } else if was_mine {
                // Another replica owns it now (this one was presumed gone): its sessions leave
                // without a word; they are the new owner's.
                self.shards.drop_lease(s);
                let lost = self.engine.evict(|k| shard_of(k) == s, true).len();
                if !release.contains(&s) {
                    tracing::warn!(shard = s, sessions = lost, "lost the shard to another replica");
                }
            }
        }
        if adopted_shards > 0 {
            metrics::state_adopted(adopted_shards);
            self.regrant.notify_one();
        }
        if recovered {
            // Redis may have lost what it held (a restart without persistence, a failover to a
            // lagging replica): the sessions this replica kept are recorded again.
            let mine = |k: &SessionKey| owners.get(shard_of(k)).is_some_and(|o| o.as_deref() == Some(me));
            for key in self.engine.live_keys(mine) {
                let shard = shard_of(&key);
                if let Some(r) = self.engine.record(&key) {
                    let value = Some(self.record_value(&r, wire::wall_ms()));
                    let _ = self.commits.send(Commit { shard, field: wire::field(&key), value, done: None });
                }
            }
            // Refires skipped meanwhile for want of a valid lease leave now.
            let hastened = self.engine.hasten(mine);
            tracing::info!(sessions = hastened, "refires missed while Redis did not answer leave now");
        }
        // Shards this replica should own under the members just read, and that nobody owns: the
        // next step runs at once rather than a quarter lease later (a replica just left).
        let free_for_me = !leave
            && !self.leaving.load(Ordering::Acquire)
            && owners.iter().enumerate().any(|(s, o)| {
                o.as_ref().is_none_or(|o| !members.contains(o)) && shards::preferred(s, &members) == Some(me)
            });
        self.shards.set_view(owners, members.clone());
        metrics::state_membership(members.len(), self.shards.owned_count(Instant::now()));
        if free_for_me {
            self.kick.notify_one();
        }
        if !release.is_empty() {
            self.broadcast(&Message::Rebalance).await;
        }
    }
}

/// Runs the control step every quarter lease, and at once when kicked.
async fn control_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let every = inner.lease / 4;
    loop {
        if inner.leaving.load(Ordering::Acquire) {
            return;
        }
        inner.control_step(&[], false).await;
        inner.forget_answers();
        // While Redis does not answer, look again soon: the leases (and typing) come back as
        // soon as it does, not a quarter lease later.
        let next = if inner.redis_ok.load(Ordering::Acquire) { every } else { every.min(RECOVERY_EVERY) };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next) => {}
            () = inner.kick.notified() => {}
        }
    }
}

/// The records of one shard to set (field, value) and to delete (field).
type ShardWrites = (Vec<(String, String)>, Vec<String>);

/// Writes record changes in batches: whatever queued while the previous batch was on the wire
/// leaves together, one `HSET` and one `HDEL` per shard.
async fn write_records(conn: Conn, mut rx: mpsc::UnboundedReceiver<Commit>, stop: CancellationToken) {
    loop {
        // Stops with the process, after the hand-over (which waits for its own writes).
        let first = tokio::select! {
            () = stop.cancelled() => return,
            next = rx.recv() => match next {
                Some(c) => c,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // The last change of each record wins.
        let mut latest: HashMap<(usize, String), Option<String>> = HashMap::new();
        let mut done = Vec::new();
        for c in batch {
            latest.insert((c.shard, c.field), c.value);
            if let Some(d) = c.done {
                done.push(d);
            }
        }
        let mut per_shard: HashMap<usize, ShardWrites> = HashMap::new();
        for ((shard, field), value) in latest {
            let entry = per_shard.entry(shard).or_default();
            match value {
                Some(v) => entry.0.push((field, v)),
                None => entry.1.push(field),
            }
        }
        // One pipeline per shard: each touches one slot, as Redis Cluster requires.
        let writes = per_shard.into_iter().map(|(shard, (sets, dels))| {
            let mut conn = conn.clone();
            async move {
                let key = wire::sessions_key(shard);
                let mut p = redis::pipe();
                if !sets.is_empty() {
                    p.cmd("HSET").arg(&key).arg(sets).ignore();
                }
                if !dels.is_empty() {
                    p.cmd("HDEL").arg(&key).arg(dels).ignore();
                }
                conn::pipe::<()>(&mut conn, &p, StateOp::Commit).await.is_ok()
            }
        });
        let ok = futures_util::future::join_all(writes).await.into_iter().all(|ok| ok);
        for d in done {
            let _ = d.send(ok);
        }
    }
}

/// Deletes the records of sessions that ended here by themselves (leases, lifetime, upstream).
async fn forget_ended(inner: Arc<Inner>, mut ends: mpsc::UnboundedReceiver<SessionKey>, stop: CancellationToken) {
    loop {
        let key = tokio::select! {
            () = stop.cancelled() => return,
            next = ends.recv() => match next {
                Some(k) => k,
                None => return,
            },
        };
        let value = inner.cap_value(&key);
        let _ = inner.commits.send(Commit { shard: shard_of(&key), field: wire::field(&key), value, done: None });
    }
}

/// Listens on this replica's channel and on the channel of all replicas; reconnects when the
/// connection breaks.
async fn listen(inner: Arc<Inner>, stop: CancellationToken, subscribed: Arc<Notify>) {
    let Some(url) = inner.target.urls.first().cloned() else { return };
    let mine = wire::channel(&inner.id);
    loop {
        let connected = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&mine).await?;
            pubsub.subscribe(wire::ALL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(conn::OP_TIMEOUT * 2, connected).await {
            Ok(Ok(mut pubsub)) => {
                subscribed.notify_one();
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => handle(&inner, msg.get_payload_bytes()),
                            None => break,
                        }
                    }
                }
                tracing::warn!("the pub/sub connection to Redis broke; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to Redis yet"),
            Err(_) => tracing::debug!("subscribing to Redis timed out"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn handle(inner: &Arc<Inner>, payload: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<Message>(payload) else { return };
    match msg {
        Message::Request { id, from, hook, request } => {
            let inner = Arc::clone(inner);
            tokio::spawn(async move {
                let answer = inner.apply_once(&from, hook, request).await;
                inner.reply(&from, id, answer).await;
            });
        }
        Message::LitQuery { id, from, chats } => {
            let lit = chats.iter().map(|c| c.key().is_some_and(|k| inner.engine.holds_slot(&k))).collect();
            let inner = Arc::clone(inner);
            tokio::spawn(async move { inner.reply(&from, id, Answer::Lit(lit)).await });
        }
        Message::Reply { id, answer } => {
            if let Some((_, tx)) = inner.pending.remove(&id) {
                let _ = tx.send(answer);
            }
        }
        Message::Rebalance => inner.kick.notify_one(),
        Message::Pause { account, cause, probe_after_ms } => {
            if let Ok(account) = AccountId::parse_any(&account) {
                inner.engine.pause_account(&account, pause_cause(&cause), Duration::from_millis(probe_after_ms));
            }
        }
        Message::Resume { account } => {
            if let Ok(account) = AccountId::parse_any(&account) {
                inner.engine.resume_account(&account);
            }
        }
    }
}
