//! Real `redis-server` processes for the tests: one server, or a local three-master Redis
//! Cluster, each on free loopback ports with persistence off (`--save '' --appendonly no`), in a
//! temporary directory, killed on drop, and restarted on the same ports when a test says so.
//! `redis-cli` reads them (INFO, keys); signals freeze and thaw them.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::child::{Kill, free_port};

/// Fails the test, with what to install, when `redis-server` or `redis-cli` is missing: these
/// tests must never pass by not running.
pub fn require_redis_tools() {
    for tool in ["redis-server", "redis-cli"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        assert!(
            found,
            "`{tool}` is not on PATH: the replica tests run real Redis processes \
             (`sudo apt-get install -y redis-server redis-tools`; `.ci/run` installs them). \
             They fail rather than skip."
        );
    }
}

/// Runs `redis-cli -p port args...` and gives its stdout (`--raw`). Blocking: call it from
/// `cli` in async code.
pub fn cli_blocking(port: u16, args: &[String]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p port args...` off the async threads.
pub async fn cli(port: u16, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || cli_blocking(port, &args)).await.unwrap()
}

/// `redis-cli -c` (follows cluster redirections) against `port`.
pub async fn cli_cluster(port: u16, args: &[&str]) -> String {
    let mut all = vec!["-c".to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    tokio::task::spawn_blocking(move || cli_blocking(port, &all)).await.unwrap()
}

/// Every `cmdstat_<name>:calls=N` of `INFO commandstats`, by command name.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Kill>,
}

impl RedisServer {
    /// A standalone server on a free port, up and answering PING. `DEBUG` is allowed from
    /// loopback (`--enable-debug-command local`), e.g. `DEBUG SLEEP`; the freeze tests use
    /// [`Redis::freeze`], which stops every node at one instant.
    pub async fn start(dir: &Path) -> Self {
        require_redis_tools();
        // A free port can be taken before Redis binds it: then try another.
        for _ in 0..3 {
            let port = free_port();
            let mut server = Self { port, dir: dir.to_owned(), extra: Vec::new(), child: None };
            if server.try_spawn().await {
                return server;
            }
        }
        panic!("redis-server could not bind a free port three times; logs in {}", dir.display());
    }

    async fn start_on(dir: &Path, port: u16, extra: Vec<String>) -> Self {
        require_redis_tools();
        let mut server = Self { port, dir: dir.to_owned(), extra, child: None };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        assert!(
            self.try_spawn().await,
            "redis-server on port {} exited at start; logs in {}",
            self.port,
            self.dir.display()
        );
    }

    /// Starts the server and waits for PING; false when it exited at once (its port was taken).
    async fn try_spawn(&mut self) -> bool {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--enable-debug-command", "local"])
            .args(["--dir", &self.dir.to_string_lossy(), "--logfile", &log.to_string_lossy()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(Kill(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["PING"]).await.trim() != "PONG" {
            if self.child.as_mut().and_then(|c| c.0.try_wait().unwrap()).is_some() {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the data is gone with it (no persistence).
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args).await
    }

    /// Calls per command name (`INFO commandstats`).
    pub async fn commandstats(&self) -> BTreeMap<String, u64> {
        parse_commandstats(&self.cli(&["INFO", "commandstats"]).await)
    }
}

/// Where the replicas keep their state: a standalone Redis or a three-master cluster.
pub enum Redis {
    Single(RedisServer),
    Cluster(Vec<RedisServer>),
}

impl Redis {
    /// A standalone server in `dir`.
    pub async fn single(dir: &Path) -> Self {
        Self::Single(RedisServer::start(dir).await)
    }

    /// Three masters with cluster mode on, joined by `redis-cli --cluster create` (no replicas),
    /// once every node reports `cluster_state:ok`.
    pub async fn cluster(dir: &Path) -> Self {
        require_redis_tools();
        let mut nodes = Vec::new();
        for port in cluster_ports(3) {
            let node_dir = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &node_dir.join("nodes.conf").to_string_lossy(),
                "--cluster-node-timeout",
                "5000",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            nodes.push(RedisServer::start_on(&node_dir, port, extra).await);
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(str::to_owned));
        let out = tokio::task::spawn_blocking(move || {
            Command::new("redis-cli").args(&args).stdin(Stdio::null()).output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_cluster_ok(&nodes, Duration::from_secs(20)).await;
        Self::Cluster(nodes)
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The value of `KEEPTYPING_REDIS_URL`: one URL, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(nodes) => nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(","),
        }
    }

    pub fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Self::Single(s) => vec![s],
            Self::Cluster(nodes) => nodes.iter().collect(),
        }
    }

    /// SIGKILL of every node: the data is gone with them (no persistence).
    pub fn kill(&mut self) {
        match self {
            Self::Single(s) => s.kill(),
            Self::Cluster(nodes) => nodes.iter_mut().for_each(RedisServer::kill),
        }
    }

    /// Starts every node again on its port, empty. A cluster's nodes keep their config files
    /// (`nodes.conf`: node ids, slots, epochs), so they re-form the same cluster by themselves;
    /// this waits until every node reports `cluster_state:ok` again (a master that restarts
    /// waits about 2 s before it declares the cluster ok).
    pub async fn restart(&mut self) {
        match self {
            Self::Single(s) => s.restart().await,
            Self::Cluster(nodes) => {
                for node in nodes.iter_mut() {
                    node.restart().await;
                }
                wait_cluster_ok(nodes, Duration::from_secs(20)).await;
            }
        }
    }

    /// SIGSTOP of every node at once (one `kill` for all): Redis answers nothing, keeps its
    /// data, and on a cluster no node sees another one go quiet. Undone by [`Redis::thaw`] (or
    /// by the SIGKILL on drop).
    pub fn freeze(&self) {
        self.signal_every_node("STOP");
    }

    /// SIGCONT of every node at once: they all answer again from the same instant.
    pub fn thaw(&self) {
        self.signal_every_node("CONT");
    }

    fn signal_every_node(&self, sig: &str) {
        let pids: Vec<String> =
            self.nodes().iter().map(|n| n.child.as_ref().expect("a running redis-server").0.id().to_string()).collect();
        let ok = Command::new("kill").arg(format!("-{sig}")).args(&pids).status().unwrap();
        assert!(ok.success(), "kill -{sig} {pids:?}");
    }

    /// A command on the node holding its key (cluster redirections followed).
    pub async fn cli(&self, args: &[&str]) -> String {
        match self {
            Self::Single(s) => s.cli(args).await,
            Self::Cluster(nodes) => cli_cluster(nodes[0].port, args).await,
        }
    }

    /// Calls per command name, summed over every node.
    pub async fn commandstats(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for node in self.nodes() {
            for (name, calls) in node.commandstats().await {
                *all.entry(name).or_insert(0) += calls;
            }
        }
        all
    }
}

/// Waits up to `within` until every node reports `cluster_state:ok`.
async fn wait_cluster_ok(nodes: &[RedisServer], within: Duration) {
    let deadline = Instant::now() + within;
    for node in nodes {
        while !node.cli(&["CLUSTER", "INFO"]).await.contains("cluster_state:ok") {
            assert!(
                Instant::now() < deadline,
                "the cluster never reached cluster_state:ok on node {} within {within:?}",
                node.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `n` free ports whose cluster bus ports (port + 10000) are free too.
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < n {
        let p = free_port();
        let bus_free = p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
        if bus_free && !ports.contains(&p) && !ports.iter().any(|q| q + 10_000 == p || p + 10_000 == *q) {
            ports.push(p);
        }
    }
    ports
}
