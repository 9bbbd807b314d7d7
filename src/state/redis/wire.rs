//! What replicas write to Redis and send each other: key names, the session record, and the
//! messages of the pub/sub channels. Plain data and its conversions; no I/O.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::engine::{Adopted, Priority, Recorded, StartCommand, StartError, StartOutcome, StopOutcome};
use crate::ids::{AccountId, ChatId, Platform, SessionKey};

/// Virtual shards chats are hashed to; each has one owner at a time.
pub const SHARDS: usize = 32;

/// Hash tag of the control keys (leases and members): one slot, so one script renews them all.
pub(crate) const MEMBERS: &str = "kt:{ctl}:members";
/// Shard owners (hash shard -> replica id).
pub(crate) const OWNERS: &str = "kt:{ctl}:owners";
/// Channel every replica listens to (hand-over hints, pauses and resumes).
pub(crate) const ALL: &str = "kt:all";

/// The sessions of shard `shard` (hash chat -> record).
pub(crate) fn sessions_key(shard: usize) -> String {
    format!("kt:{{s{shard}}}:sessions")
}

/// The shared window of budget `name` (hash second -> calls granted), the replicas' session
/// counts, and the first indicators granted (hash second -> calls).
pub(crate) fn budget_keys(name: &str) -> [String; 4] {
    ["win", "load", "firsts", "order"].map(|k| format!("kt:{{b:{name}}}:{k}"))
}

/// The channel of replica `id`.
pub(crate) fn channel(id: &str) -> String {
    format!("kt:r:{id}")
}

/// The shard of a chat: a fixed hash (FNV-1a) of its key, the same in every replica and release.
pub fn shard_of(key: &SessionKey) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [key.platform.as_str(), key.account.as_str(), key.chat.as_str()] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // SHARDS is far below u64::MAX; the remainder fits.
    #[allow(clippy::cast_possible_truncation, reason = "a remainder below SHARDS")]
    let shard = (h % SHARDS as u64) as usize;
    shard
}

/// The field of a chat in its shard's hash.
pub(crate) fn field(key: &SessionKey) -> String {
    format!("{}\u{1f}{}\u{1f}{}", key.platform.as_str(), key.account.as_str(), key.chat.as_str())
}

/// Parses a field back into its chat.
pub(crate) fn parse_field(field: &str) -> Option<SessionKey> {
    let mut parts = field.split('\u{1f}');
    let name = parts.next()?;
    let platform = Platform::ALL.into_iter().find(|p| p.as_str() == name)?;
    let account = AccountId::parse(platform, parts.next()?).ok()?;
    let chat = ChatId::parse(platform, parts.next()?).ok()?;
    Some(SessionKey { platform, account, chat })
}

/// Milliseconds since the Unix epoch: the only clock replicas compare.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A live session as its shard records it. Times are wall-clock milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    /// Holders: chatter id (or none) and when its lease ends.
    pub(crate) h: Vec<(Option<String>, u64)>,
    /// Priority.
    pub(crate) p: Priority,
    /// When it started.
    pub(crate) s: u64,
    /// When `engine.max_lifetime` ends it.
    pub(crate) m: u64,
    /// When its next typing call is due.
    pub(crate) d: u64,
    /// The API key its calls use (by name).
    pub(crate) k: String,
}

impl Record {
    /// The record of a live session at wall time `now`.
    pub(crate) fn from_live(r: &Recorded, key_name: &str, now: u64) -> Self {
        Self {
            h: r.holders.iter().map(|(id, left)| (id.as_deref().map(str::to_owned), now + ms(*left))).collect(),
            p: r.priority,
            s: now.saturating_sub(ms(r.age)),
            m: now + ms(r.lifetime_left),
            d: now + ms(r.due_in),
            k: key_name.to_owned(),
        }
    }

    /// What the engine needs to take it over at wall time `now`; `at_once` when the replica it
    /// comes from may have left it dark (a crash rather than a hand-over).
    pub(crate) fn adopted(&self, now: u64, at_once: bool, preferred_key: Option<usize>) -> Adopted {
        let left = |t: u64| Duration::from_millis(t.saturating_sub(now));
        Adopted {
            holders: self.h.iter().map(|(id, until)| (id.as_deref().map(Arc::from), left(*until))).collect(),
            priority: self.p,
            age: Duration::from_millis(now.saturating_sub(self.s)),
            lifetime_left: left(self.m),
            due_in: if at_once { Duration::ZERO } else { left(self.d) },
            preferred_key,
        }
    }

    /// Whether nothing is left of it at wall time `now`.
    pub(crate) fn is_over(&self, now: u64) -> bool {
        self.m <= now || self.h.iter().all(|(_, until)| *until <= now)
    }
}

/// A capped chat as its shard records it: its session reached `engine.max_lifetime`, and starts
/// are answered `capped` until `c` (wall-clock ms; each capped start moves it on).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Cap {
    pub(crate) c: u64,
}

/// A chat on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireKey {
    pub(crate) platform: Platform,
    pub(crate) account: String,
    pub(crate) chat: String,
}

impl WireKey {
    pub(crate) fn of(key: &SessionKey) -> Self {
        Self { platform: key.platform, account: key.account.as_str().to_owned(), chat: key.chat.as_str().to_owned() }
    }

    pub(crate) fn key(&self) -> Option<SessionKey> {
        Some(SessionKey {
            platform: self.platform,
            account: AccountId::parse(self.platform, &self.account).ok()?,
            chat: ChatId::parse(self.platform, &self.chat).ok()?,
        })
    }
}

/// A hook, forwarded to the owner of its chat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A start.
    Start {
        key: WireKey,
        holder: Option<String>,
        priority: Priority,
        ttl_ms: Option<u64>,
        preferred_key: Option<String>,
    },
    /// A stop by one holder.
    Stop { key: WireKey, holder: Option<String> },
    /// A chat ended whoever holds it (an outbound message).
    End { key: WireKey },
}

impl Request {
    pub(crate) fn start(cmd: &StartCommand, preferred_key: Option<String>) -> Self {
        Self::Start {
            key: WireKey::of(&cmd.key),
            holder: cmd.holder.as_deref().map(str::to_owned),
            priority: cmd.priority,
            ttl_ms: cmd.ttl.map(ms),
            preferred_key,
        }
    }

    pub(crate) fn wire_key(&self) -> &WireKey {
        match self {
            Self::Start { key, .. } | Self::Stop { key, .. } | Self::End { key } => key,
        }
    }
}

/// The owner's answer to a forwarded hook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum Answer {
    /// A start's outcome.
    Started(WireStart),
    /// A start refused.
    Refused(WireStartError),
    /// A stop's outcome.
    Stopped(WireStop),
    /// An end: whether a session ended.
    Ended(bool),
    /// The replica does not own the chat's shard (any more): ask its owner.
    NotOwner,
    /// The owner could not record the change in Redis.
    Unavailable,
    /// Whether each chat of a [`Message::LitQuery`] holds a lit slot, in its order.
    Lit(Vec<bool>),
}

/// [`StartOutcome`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) enum WireStart {
    Started,
    Refreshed,
    Paused(String),
    Capped,
}

/// [`StartError`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) enum WireStartError {
    ShuttingDown,
    AtCapacity,
    NoApiKey,
    KeyRefused,
}

/// [`StopOutcome`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) enum WireStop {
    Stopped,
    Released(usize),
    NotFound,
}

impl From<Result<StartOutcome, StartError>> for Answer {
    fn from(r: Result<StartOutcome, StartError>) -> Self {
        match r {
            Ok(StartOutcome::Started) => Self::Started(WireStart::Started),
            Ok(StartOutcome::Refreshed) => Self::Started(WireStart::Refreshed),
            Ok(StartOutcome::Paused(c)) => Self::Started(WireStart::Paused(c.as_str().to_owned())),
            Ok(StartOutcome::Capped) => Self::Started(WireStart::Capped),
            Err(StartError::ShuttingDown) => Self::Refused(WireStartError::ShuttingDown),
            Err(StartError::AtCapacity) => Self::Refused(WireStartError::AtCapacity),
            Err(StartError::NoApiKey) => Self::Refused(WireStartError::NoApiKey),
            Err(StartError::KeyRefused) => Self::Refused(WireStartError::KeyRefused),
        }
    }
}

impl From<StopOutcome> for Answer {
    fn from(o: StopOutcome) -> Self {
        Self::Stopped(match o {
            StopOutcome::Stopped => WireStop::Stopped,
            StopOutcome::Released { holders } => WireStop::Released(holders),
            StopOutcome::NotFound => WireStop::NotFound,
        })
    }
}

/// A message on a replica's channel or on [`ALL`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Message {
    /// A hook for the receiver to apply, answered on `from`'s channel with `id`. Every try of
    /// one hook carries the same `hook` (0 from a replica that does not number its hooks).
    Request {
        id: u64,
        from: String,
        #[serde(default)]
        hook: u64,
        request: Request,
    },
    /// The answer to request `id`.
    Reply { id: u64, answer: Answer },
    /// Which of `chats` hold a lit slot on the receiver (their owner), answered like a request.
    LitQuery { id: u64, from: String, chats: Vec<WireKey> },
    /// Shards were released: run the control step now rather than at the next renewal.
    Rebalance,
    /// A webhook paused an account on every replica.
    Pause { account: String, cause: String, probe_after_ms: u64 },
    /// A webhook resumed an account on every replica.
    Resume { account: String },
}
