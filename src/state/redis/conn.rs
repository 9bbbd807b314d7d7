//! The connection to Redis: one multiplexed connection to a single server (reconnecting by
//! itself), or a Redis Cluster connection routing each command to its slot's node; every call
//! bounded by [`OP_TIMEOUT`] so that nothing waits on a Redis that does not answer.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};
use tokio::time::Instant;

use crate::metrics::{self, StateOp};

/// Longest any Redis operation may take before it counts as failed: a hook waits at most this
/// long for Redis before it answers 503.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(450);

/// A Redis operation failed or timed out. Never holds the URL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFault {
    /// Redis answered an error, or the connection broke.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the operation timeout.
    #[error("redis did not answer within {OP_TIMEOUT:?}")]
    Timeout,
}

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Conn::Single",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

/// Whether a command on a single server's connection failed only because the connection could
/// not be made. After an outage the connection manager keeps the error of its last failed
/// reconnection and gives it to the next command even when Redis answers again, then
/// reconnects: without a second try, the first command after Redis is back fails (on a
/// cluster, the publishing connection is used for nothing else, so that command was a
/// forwarded hook's reply, lost). Such a command never reached Redis, so sending it once more
/// is safe; both tries together stay within [`OP_TIMEOUT`].
fn refused(e: &redis::RedisError) -> bool {
    e.is_connection_refusal()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if refused(&e) => c.req_packed_command(cmd).await,
                    answer => answer,
                }
            }),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => Box::pin(async move {
                match c.req_packed_commands(cmd, offset, count).await {
                    Err(e) if refused(&e) => c.req_packed_commands(cmd, offset, count).await,
                    answers => answers,
                }
            }),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the replicas' Redis is, parsed from the URL secret.
#[derive(Clone)]
pub(crate) struct Target {
    /// The node URLs (one, or the cluster's seed nodes).
    pub(crate) urls: Vec<String>,
    /// Whether they form a cluster.
    pub(crate) cluster: bool,
}

impl Target {
    /// `host:port` of the first node, for messages (never the password).
    pub(crate) fn shown(&self) -> String {
        self.urls.first().map_or_else(|| "?".to_owned(), |u| host_port(u))
    }
}

/// `host:port` of a Redis URL, without user or password.
pub(crate) fn host_port(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}:{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(6379)),
        Err(_) => "?".to_owned(),
    }
}

/// Opens the connection and checks that Redis answers.
pub(crate) async fn connect(target: &Target) -> Result<Conn, RedisFault> {
    let conn = if target.cluster { connect_cluster(target).await? } else { connect_node(target).await? };
    let mut probe = conn.clone();
    let _: String = query(&mut probe, &redis::cmd("PING"), StateOp::Control).await?;
    Ok(conn)
}

/// A connection to the first node only: pub/sub. On a cluster, `PUBLISH` reaches subscribers on
/// every node, but counts only the receivers on the node it was sent to; replicas subscribe on
/// the first node and publish there, so the count says whether the receiver listens.
pub(crate) async fn connect_bus(target: &Target) -> Result<Conn, RedisFault> {
    connect_node(target).await
}

async fn connect_node(target: &Target) -> Result<Conn, RedisFault> {
    let url = target.urls.first().map(String::as_str).unwrap_or_default();
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(OP_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(2);
    Ok(Conn::Single(bounded(ConnectionManager::new_with_config(client, config)).await??))
}

async fn connect_cluster(target: &Target) -> Result<Conn, RedisFault> {
    Ok(if target.cluster {
        let client = ClusterClient::builder(target.urls.clone())
            .connection_timeout(OP_TIMEOUT)
            .response_timeout(OP_TIMEOUT)
            .build()?;
        Conn::Cluster(bounded(client.get_async_connection()).await??)
    } else {
        connect_node(target).await?
    })
}

async fn bounded<F: Future>(f: F) -> Result<F::Output, RedisFault> {
    tokio::time::timeout(OP_TIMEOUT * 3, f).await.map_err(|_| RedisFault::Timeout)
}

/// Runs `cmd`, timed and counted under `op`.
pub(crate) async fn query<T: FromRedisValue>(conn: &mut Conn, cmd: &Cmd, op: StateOp) -> Result<T, RedisFault> {
    timed(op, cmd.query_async(conn)).await
}

/// Runs `pipe`, timed and counted under `op`.
pub(crate) async fn pipe<T: FromRedisValue>(conn: &mut Conn, pipe: &Pipeline, op: StateOp) -> Result<T, RedisFault> {
    timed(op, pipe.query_async(conn)).await
}

/// Runs `script` with `keys` and `args`, timed and counted under `op`.
pub(crate) async fn script<T: FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    keys: &[&str],
    args: &[String],
    op: StateOp,
) -> Result<T, RedisFault> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    for a in args {
        inv.arg(a.as_str());
    }
    timed(op, inv.invoke_async(conn)).await
}

async fn timed<T>(op: StateOp, f: impl Future<Output = redis::RedisResult<T>>) -> Result<T, RedisFault> {
    let started = Instant::now();
    let out = match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RedisFault::Redis(e)),
        Err(_) => Err(RedisFault::Timeout),
    };
    metrics::state_redis(op, started.elapsed(), out.is_err());
    out
}
