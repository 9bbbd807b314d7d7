//! The Redis mode of the load bench (`--systems keeptyping,keeptyping-redis`): three keeptyping
//! replicas sharing one `redis-server` (started here, on a free loopback port, without
//! persistence), driven through the first replica's hook API (two thirds of the hooks are then
//! forwarded to the replica owning the chat). The replicas' CPU is summed; Redis's own CPU and
//! the commands it ran (`INFO commandstats`, scripts' inner commands included) are reported
//! beside it.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;

use crate::procs::{self, Proc, free_port};

/// Replicas in the Redis mode.
pub(crate) const REPLICAS: usize = 3;

/// The `redis-server` of a Redis run.
pub(crate) struct RedisServer {
    proc_: Proc,
    port: u16,
}

/// What Redis cost over the hold window.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RedisCost {
    pub(crate) cpu_s: f64,
    pub(crate) commands: u64,
    pub(crate) commands_per_refire: f64,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port; fails loudly when it is not installed.
    pub(crate) fn start(log: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        let proc_ = Proc::spawn("redis-server", cmd, log)
            .context("redis-server must be installed (apt-get install redis-server)")?;
        for _ in 0..100 {
            if Self::cli(port, &["PING"]).is_ok_and(|o| o.trim() == "PONG") {
                return Ok(Self { proc_, port });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("redis-server on port {port} did not answer PING")
    }

    /// `redis://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output()?;
        anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Commands Redis has run so far (every `cmdstat_*` of `INFO commandstats` but `INFO` itself).
    pub(crate) fn commands(&self) -> anyhow::Result<u64> {
        let text = Self::cli(self.port, &["INFO", "commandstats"])?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
            .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum())
    }

    /// Redis's CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        procs::cpu_seconds(self.proc_.pid())
    }
}
