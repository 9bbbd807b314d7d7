//! Child processes of the load bench and what `/proc` says about them.
//!
//! Every child is held by a [`Proc`] guard that kills and reaps it when dropped, so an error or
//! a panic in the driver never leaves a mock, a service or a baseline running.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use anyhow::Context;

/// A child process, killed when dropped.
pub(crate) struct Proc {
    child: Child,
    name: String,
    /// Processes measured with this one (the other replicas of a Redis run): CPU and memory
    /// are summed over all of them.
    peers: Vec<Proc>,
}

impl Proc {
    /// Spawns `cmd` with its output appended to `log`.
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { child, name: name.to_owned(), peers: Vec::new() })
    }

    /// This process measured together with `peers`.
    pub(crate) fn with_peers(mut self, peers: Vec<Proc>) -> Self {
        self.peers = peers;
        self
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU seconds the process has used so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut total = cpu_seconds(self.pid())?;
        for p in &self.peers {
            total += p.cpu_seconds()?;
        }
        Ok(total)
    }

    /// Resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let mut total = self.own_rss_kib()?;
        for p in &self.peers {
            total += p.rss_kib()?;
        }
        Ok(total)
    }

    fn own_rss_kib(&self) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no VmRSS for {}", self.name))
    }

    /// Sends `signal` (`TERM`, `STOP`, ...) to the process.
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {} failed", self.pid());
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; returns whether it did.
    pub(crate) fn wait_exit(&mut self, timeout: std::time::Duration) -> anyhow::Result<bool> {
        let until = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < until {
            if self.child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(false)
    }

    /// Fails if the process has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.peers {
            p.check_alive()?;
        }
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited early ({status}); see its log under target/bench/logs", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Our own child, by its handle: never a broad kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU seconds used so far by process `pid` (fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; fields are counted after its closing paren.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("malformed /proc stat");
    // After the paren, field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let total = ticks(11)? + ticks(12)?;
    #[allow(clippy::cast_precision_loss, reason = "CPU ticks of one run, far below 2^52")]
    Ok(total as f64 / clock_ticks())
}

/// `getconf CLK_TCK`, or 100.
fn clock_ticks() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Open sockets of process `pid` (its file descriptors that are sockets); 0 if it is gone.
pub(crate) fn sockets(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:")))
        .count()
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
