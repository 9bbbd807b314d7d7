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

/// The `redis-server` of a Redis run, and the hook URLs of the replicas sharing it (`r0`, `r1`, ...).
pub(crate) struct RedisServer {
    proc_: Proc,
    port: u16,
    pub(crate) replica_hooks: Vec<String>,
}

/// Chat ids of the stop probe's sessions start here.
pub(crate) const PROBE_BASE: u64 = 3_000_000_000;
/// Sessions in the stop probe: enough for a p99.
pub(crate) const PROBE_CHATS: usize = 200;

/// What Redis cost over the hold window.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RedisCost {
    pub(crate) cpu_s: f64,
    pub(crate) commands: u64,
    pub(crate) commands_per_refire: f64,
    /// Stop latency through a replica that does not own the chat, one stop after another while
    /// the N sessions refire (the stop probe).
    pub(crate) stop_via_non_owner_ms: crate::Quantiles,
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
                return Ok(Self { proc_, port, replica_hooks: Vec::new() });
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

    /// The replica owning each shard now (`kt:{ctl}:owners`), by replica index.
    fn shard_owners(&self) -> anyhow::Result<std::collections::BTreeMap<usize, usize>> {
        let table = Self::cli(self.port, &["HGETALL", "kt:{ctl}:owners"])?;
        let lines: Vec<&str> = table.lines().collect();
        let mut owners = std::collections::BTreeMap::new();
        for pair in lines.chunks(2) {
            if let [shard, owner] = pair {
                let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>().parse::<usize>();
                if let (Ok(shard), Ok(owner)) = (digits(shard), digits(owner)) {
                    owners.insert(shard, owner);
                }
            }
        }
        Ok(owners)
    }

    /// The stop probe, on [`PROBE_CHATS`] sessions already started from [`PROBE_BASE`]: each is
    /// stopped in turn through a replica that does not own it (the next one after its owner);
    /// returns each stop's latency in milliseconds.
    pub(crate) async fn stop_probe(&self, http: &reqwest::Client, token: &str) -> anyhow::Result<Vec<f64>> {
        let owners = self.shard_owners()?;
        let account = keeptyping::ids::AccountId::parse(keeptyping::ids::Platform::default(), crate::ACCOUNT)?;
        let mut took = Vec::with_capacity(PROBE_CHATS);
        for i in 0..PROBE_CHATS {
            let chat = (PROBE_BASE + i as u64).to_string();
            let key = keeptyping::ids::SessionKey {
                platform: keeptyping::ids::Platform::default(),
                account: account.clone(),
                chat: keeptyping::ids::ChatId::parse(keeptyping::ids::Platform::default(), &chat)?,
            };
            let owner = *owners
                .get(&keeptyping::state::redis::wire::shard_of(&key))
                .context("a shard without an owner during the stop probe")?;
            let via = &self.replica_hooks[(owner + 1) % self.replica_hooks.len()];
            let sent = tokio::time::Instant::now();
            let resp = http
                .post(format!("{via}/v1/typing/stop"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(format!(r#"{{"account_id":"{}","chat_id":"{chat}"}}"#, crate::ACCOUNT))
                .send()
                .await?;
            let status = resp.status();
            let body = resp.text().await?;
            took.push(sent.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status.is_success() && body.contains("\"stopped\""), "stop probe: {status} {body}");
        }
        Ok(took)
    }

    /// Redis's CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        procs::cpu_seconds(self.proc_.pid())
    }
}

/// What the fault run (`--redis-faults N`) measured: three replicas on one Redis holding N
/// sessions through a `kill -9` of one replica and a rolling restart of all three.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultReport {
    pub(crate) n: usize,
    pub(crate) lease_ms: u64,
    /// Longest gap between two typing calls of one chat that overlaps the `kill -9` window, the
    /// p99 over chats of each chat's longest such gap, and the bound the promise allows.
    pub(crate) kill_gap_max_ms: f64,
    pub(crate) kill_gap_p99_ms: f64,
    pub(crate) kill_bound_ms: f64,
    /// Time from the `kill -9` to each chat's first call after it: the longest and the p99 over
    /// chats (the promise: within `state.lease` + one interval).
    pub(crate) kill_refire_max_ms: f64,
    pub(crate) kill_refire_p99_ms: f64,
    /// The same for the rolling restart, and the indicator's coverage over it (mean over chats,
    /// and the first percentile).
    pub(crate) roll_gap_max_ms: f64,
    pub(crate) roll_gap_p99_ms: f64,
    pub(crate) roll_coverage: f64,
    /// Longest time any chat's indicator was dark during the rolling restart (a gap between
    /// calls less the indicator's 4 s lifetime).
    pub(crate) roll_dark_max_ms: f64,
    pub(crate) roll_coverage_p1: f64,
    /// For reference, the same gaps in steady state: the longest gap between two calls of one chat
    /// that lies wholly within the 5 s before the `kill -9` (no replica moving), and the p99 over
    /// chats. The scheduler sends each call one interval after the last one left; this is what
    /// the client, the network and the mock add to that.
    pub(crate) steady_gap_max_ms: f64,
    pub(crate) steady_gap_p99_ms: f64,
    /// Pairs of calls of one chat closer than half an interval (two replicas refiring it), over
    /// the whole run, and within the `kill -9` hand-over.
    pub(crate) duplicates: usize,
    pub(crate) duplicates_in_kill_window: usize,
    /// Calls received more than 50 ms after their chat's stop was answered.
    pub(crate) after_stop: usize,
    pub(crate) stop_ms: crate::Quantiles,
    pub(crate) sessions_started: usize,
}

impl FaultReport {
    pub(crate) fn markdown(&self) -> String {
        format!(
            "| N | kill -9: first call after it, longest / p99 ms (bound) | kill -9: longest gap / p99 ms | rolling restart: longest gap / p99 ms (longest dark) | coverage over the restart (p1 chat) | duplicate calls (in the kill hand-over) | calls after stop | stop batch p99 ms |\n\
             |---|---|---|---|---|---|---|---|\n\
             | {} | {:.0} / {:.0} ({:.0}) | {:.0} / {:.0} | {:.0} / {:.0} ({:.0}) | {:.2}% ({:.2}%) | {} ({}) | {} | {:.1} |\n",
            self.n,
            self.kill_refire_max_ms,
            self.kill_refire_p99_ms,
            self.kill_bound_ms,
            self.kill_gap_max_ms,
            self.kill_gap_p99_ms,
            self.roll_gap_max_ms,
            self.roll_gap_p99_ms,
            self.roll_dark_max_ms,
            self.roll_coverage * 100.0,
            self.roll_coverage_p1 * 100.0,
            self.duplicates,
            self.duplicates_in_kill_window,
            self.after_stop,
            self.stop_ms.p99,
        ) + &format!(
            "\nSteady state (the 5 s before the kill -9): longest gap {:.0} ms, p99 {:.0} ms.\n",
            self.steady_gap_max_ms, self.steady_gap_p99_ms
        )
    }
}

/// Longest gap of `calls` (sorted) that overlaps `[from, to]`, with the time before the first
/// call and after the last one in the window counted as gaps too.
fn longest_gap(calls: &[f64], from: f64, to: f64) -> f64 {
    let mut longest = 0.0_f64;
    for w in calls.windows(2) {
        if w[1] >= from && w[0] <= to {
            longest = longest.max(w[1] - w[0]);
        }
    }
    longest
}

/// The gaps longer than an interval (plus 20 ms) that end after one rolling-restart event and
/// before the next.
#[derive(Clone, Copy)]
struct LateGaps {
    count: usize,
    /// How long after the event the first and the last of them ended, in ms.
    ending: (f64, f64),
    /// By how much the least and the most late exceeded the interval, in ms.
    over: (f64, f64),
}

/// Prints, for the gaps longer than an interval (plus 20 ms) that end during the rolling
/// restart, how many end after each restart event and how late, so that a late hand-over shows
/// which step it follows.
fn late_gaps_by_event(calls: &[Vec<f64>], from: f64, events: &[(f64, String)], interval_ms: f64) {
    let none = LateGaps { count: 0, ending: (f64::INFINITY, 0.0), over: (f64::INFINITY, 0.0) };
    let mut by = vec![none; events.len()];
    for w in calls.iter().flat_map(|c| c.windows(2)) {
        let over = w[1] - w[0] - interval_ms;
        if w[1] < from || over <= 20.0 {
            continue;
        }
        if let Some(i) = events.iter().rposition(|(t, _)| *t <= w[1]) {
            let after = w[1] - events[i].0;
            let g = &mut by[i];
            g.count += 1;
            g.ending = (g.ending.0.min(after), g.ending.1.max(after));
            g.over = (g.over.0.min(over), g.over.1.max(over));
        }
    }
    for ((t, name), g) in events.iter().zip(by) {
        let at = t - from;
        if g.count == 0 {
            eprintln!("late gaps after {name} (at {at:.0} ms): none");
        } else {
            eprintln!(
                "late gaps after {name} (at {at:.0} ms): {}, ending {:.0}..{:.0} ms after it, {:.0}..{:.0} ms over the interval",
                g.count, g.ending.0, g.ending.1, g.over.0, g.over.1
            );
        }
    }
}

/// Longest gap of `calls` (sorted) that lies wholly within `[from, to]`.
fn longest_gap_within(calls: &[f64], from: f64, to: f64) -> f64 {
    calls.windows(2).filter(|w| w[0] >= from && w[1] <= to).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// Share of `[from, to]` during which an indicator lit by one of `calls` was showing.
fn coverage(calls: &[f64], from: f64, to: f64) -> f64 {
    let mut lit = 0.0;
    let mut until = from;
    for &t in calls {
        let (start, end) = (t.max(until), (t + crate::analysis::LIFETIME_MS).min(to));
        if end > start {
            lit += end - start;
            until = end;
        }
    }
    lit / (to - from)
}

impl crate::Bench {
    /// Starts replica `r` of a fault run; returns it with its hook URL.
    async fn replica(&self, r: usize, redis: &RedisServer, n: usize, lease: &str) -> anyhow::Result<(Proc, String)> {
        let log = self.logs.join(format!("faults-r{r}-{}.log", std::process::id()));
        let env = [
            ("KEEPTYPING__STATE__BACKEND", "redis".to_owned()),
            ("KEEPTYPING_REDIS_URL", redis.url()),
            ("KEEPTYPING_REPLICA_ID", format!("r{r}")),
            ("KEEPTYPING__STATE__LEASE", lease.to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        let (p, hook, _) = self.spawn_keeptyping(&self.bin, n, crate::free_port()?, &log, &env).await?;
        Ok((p, hook))
    }

    /// The fault run: N sessions on three replicas, a `kill -9` of one, a rolling restart of
    /// all three, then every session stopped; the mock's record says what fans saw.
    pub(crate) async fn redis_faults(&mut self, n: usize) -> anyhow::Result<FaultReport> {
        use tokio::time::{Duration, Instant, sleep};
        let lease = Duration::from_secs(2);
        let interval_ms = crate::child::INTERVAL.as_secs_f64() * 1000.0;
        let redis = RedisServer::start(&self.logs.join("faults-redis.log"))?;
        let mut replicas = Vec::new();
        for r in 0..REPLICAS {
            replicas.push(self.replica(r, &redis, n, "2s").await?);
        }
        sleep(Duration::from_secs(3)).await;
        self.reset_mock().await?;
        self.calibrate().await?;
        // N starts over one interval, batches sent to the replicas in turn.
        let batches = n.div_ceil(crate::MAX_BATCH);
        let pace = crate::child::INTERVAL / u32::try_from(batches).unwrap_or(u32::MAX);
        let t0 = Instant::now();
        let mut started = 0;
        for b in 0..batches {
            tokio::time::sleep_until(t0 + pace * u32::try_from(b).unwrap_or(u32::MAX)).await;
            let range = b * crate::MAX_BATCH..((b + 1) * crate::MAX_BATCH).min(n);
            let hook = replicas[b % REPLICAS].1.clone();
            started += self.batch(&hook, "start", crate::MAIN_BASE, range, "started").await?;
        }
        sleep(Duration::from_secs(6)).await;
        // kill -9 of the last replica.
        let kill_from = self.mock_ms(Instant::now());
        drop(replicas.pop());
        sleep(lease + crate::child::INTERVAL + Duration::from_secs(3)).await;
        let kill_to = self.mock_ms(Instant::now());
        replicas.push(self.replica(REPLICAS - 1, &redis, n, "2s").await?);
        sleep(Duration::from_secs(4)).await;
        // Rolling restart: each replica drained (SIGTERM) and replaced in turn.
        let roll_from = self.mock_ms(Instant::now());
        let mut events = Vec::new();
        for r in 0..REPLICAS {
            let (mut p, _) = replicas.remove(r);
            events.push((self.mock_ms(Instant::now()), format!("r{r} TERM")));
            p.signal("TERM")?;
            anyhow::ensure!(
                p.wait_exit(std::time::Duration::from_secs(20))?,
                "replica r{r} did not exit after SIGTERM"
            );
            events.push((self.mock_ms(Instant::now()), format!("r{r} exited")));
            drop(p);
            replicas.insert(r, self.replica(r, &redis, n, "2s").await?);
            events.push((self.mock_ms(Instant::now()), format!("r{r} ready")));
            sleep(Duration::from_secs(2)).await;
        }
        let roll_to = self.mock_ms(Instant::now());
        sleep(Duration::from_secs(3)).await;
        // Every session stopped, through the replicas in turn.
        let mut stop_at = vec![f64::INFINITY; n];
        let mut stop_lat = Vec::new();
        for b in 0..batches {
            let range = b * crate::MAX_BATCH..((b + 1) * crate::MAX_BATCH).min(n);
            let hook = replicas[b % REPLICAS].1.clone();
            let sent = Instant::now();
            self.batch(&hook, "stop", crate::MAIN_BASE, range.clone(), "stopped").await?;
            stop_lat.push(sent.elapsed().as_secs_f64() * 1000.0);
            let answered = self.mock_ms(Instant::now());
            for s in &mut stop_at[range] {
                *s = answered;
            }
        }
        sleep(crate::LAND).await;
        for (p, _) in &mut replicas {
            p.check_alive()?;
        }
        let tsv = self.http.get(format!("{}/_mock/requests.tsv?kind=typing", self.mock)).send().await?.text().await?;
        let calls = crate::analysis::parse(&tsv, (crate::MAIN_BASE, n), (crate::STORM_BASE, 0));
        let (mut kill_gaps, mut roll_gaps, mut covs) = (Vec::new(), Vec::new(), Vec::new());
        let mut steady_gaps = Vec::new();
        let mut refire_after_kill = Vec::new();
        let (mut duplicates, mut dup_kill, mut after_stop) = (0, 0, 0);
        for (chat, c) in calls.main.iter().enumerate() {
            steady_gaps.push(longest_gap_within(c, kill_from - 5000.0, kill_from));
            kill_gaps.push(longest_gap(c, kill_from, kill_to));
            if let Some(first) = c.iter().find(|t| **t >= kill_from) {
                refire_after_kill.push(first - kill_from);
            }
            roll_gaps.push(longest_gap(c, roll_from, roll_to));
            covs.push(coverage(c, roll_from, roll_to));
            for w in c.windows(2) {
                if w[1] - w[0] < interval_ms / 2.0 {
                    duplicates += 1;
                    if w[1] >= kill_from && w[0] <= kill_to {
                        dup_kill += 1;
                    }
                    if duplicates <= 3 {
                        eprintln!(
                            "two calls {:.0} ms apart for chat {chat}, at {:.0} ms from the kill (kill window ends at {:.0}, the rolling restart runs from {:.0} to {:.0})",
                            w[1] - w[0],
                            w[0] - kill_from,
                            kill_to - kill_from,
                            roll_from - kill_from,
                            roll_to - kill_from
                        );
                    }
                }
            }
            after_stop += c.iter().filter(|t| **t > stop_at[chat] + crate::analysis::AFTER_STOP_SLACK_MS).count();
        }
        late_gaps_by_event(&calls.main, roll_from, &events, interval_ms);
        let kill = crate::Quantiles::of(kill_gaps);
        let refire = crate::Quantiles::of(refire_after_kill);
        let roll = crate::Quantiles::of(roll_gaps);
        let steady = crate::Quantiles::of(steady_gaps);
        covs.sort_by(f64::total_cmp);
        #[allow(clippy::cast_precision_loss, reason = "chat counts")]
        let mean = covs.iter().sum::<f64>() / covs.len().max(1) as f64;
        Ok(FaultReport {
            n,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            kill_gap_max_ms: kill.max,
            kill_gap_p99_ms: kill.p99,
            kill_bound_ms: lease.as_secs_f64() * 1000.0 + interval_ms,
            kill_refire_max_ms: refire.max,
            kill_refire_p99_ms: refire.p99,
            roll_gap_max_ms: roll.max,
            roll_gap_p99_ms: roll.p99,
            roll_coverage: mean,
            roll_dark_max_ms: (roll.max - crate::analysis::LIFETIME_MS).max(0.0),
            roll_coverage_p1: crate::analysis::quantile(&covs, 0.01),
            steady_gap_max_ms: steady.max,
            steady_gap_p99_ms: steady.p99,
            duplicates,
            duplicates_in_kill_window: dup_kill,
            after_stop,
            stop_ms: crate::Quantiles::of(stop_lat),
            sessions_started: started,
        })
    }
}
