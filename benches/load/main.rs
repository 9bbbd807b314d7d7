//! The load benchmark: `cargo bench --bench load [-- --quick | --n 1000,10000,50000,100000 ...]`.
//!
//! Starts the mock OnlyFansAPI (`keeptyping mock-upstream`, unlimited) in its own process, then
//! for every N and every system (keeptyping `serve`, and the naive task-per-session baseline,
//! each a fresh process) opens N sessions through the hook API, paced over one refire interval,
//! holds them, runs a start/stop storm while they refire, stops them all, and reads the mock's
//! record. The ceiling baselines (keeptyping's own client, and the naive design's plain reqwest
//! client, each sending back to back) run once per concurrency. CPU and memory come from `/proc`
//! of each process. Results go to the terminal as a Markdown table and to
//! `target/bench/load-<unix time>.json` and `target/bench/load-latest.json`.
//!
//! Not part of `cargo test` (`harness = false`; `cargo test` does not build or run benches).

mod analysis;
mod child;
mod procs;
mod replicas;
mod report;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::time::{Instant, sleep, sleep_until};

use analysis::{Cadence, Quantiles, Spell};
use procs::{Proc, free_port};

/// The creator account every session is on.
pub(crate) const ACCOUNT: &str = "acct_0123456789abcdef0123456789abcdef";
/// Chat ids of the held sessions start here.
const MAIN_BASE: u64 = 1_000_000_000;
/// Chat ids of the storm sessions start here.
const STORM_BASE: u64 = 2_000_000_000;
/// Most events per batch request (keeptyping's default `hooks.max_batch_events`).
const MAX_BATCH: usize = 500;
/// Time allowed after the stops for calls already on the wire to land.
const LAND: Duration = Duration::from_millis(2500);
/// Lateness p99 a system must stay under to "hold" N sessions.
const HOLD_BOUND_MS: f64 = 20.0;
/// Storm hook p99 a system must stay under to "hold" N sessions.
const HOLD_HOOK_MS: f64 = 10.0;
/// Share of the expected refire rate a system must reach to "hold" N sessions.
const HOLD_RATE: f64 = 0.99;

/// Command-line options.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Opts {
    pub(crate) n: Vec<usize>,
    pub(crate) hold_s: f64,
    pub(crate) repeat: usize,
    pub(crate) systems: Vec<String>,
    pub(crate) ceiling_calls: usize,
    pub(crate) ceiling_concurrency: Vec<usize>,
    pub(crate) storm_pairs: usize,
    pub(crate) storm_rate: f64,
    /// The mock's delay before every answer.
    pub(crate) mock_latency_ms: u64,
    /// The mock serves HTTPS (a certificate made at its start, trusted by keeptyping through
    /// `upstream.ca_file`, by the naive baseline's plain client through `SSL_CERT_FILE`).
    pub(crate) tls: bool,
    /// In TLS mode, the mock offers HTTP/2 by ALPN as well.
    pub(crate) tls_h2: bool,
    /// `--redis-faults N`: only the fault run of three replicas on Redis with N sessions.
    pub(crate) redis_faults: Option<usize>,
}

impl Opts {
    fn parse() -> anyhow::Result<Self> {
        let mut o = Self {
            n: vec![1_000, 10_000, 50_000],
            hold_s: 20.0,
            repeat: 1,
            systems: vec!["keeptyping".to_owned(), "naive".to_owned()],
            ceiling_calls: 100_000,
            ceiling_concurrency: vec![8, 1024],
            storm_pairs: 1500,
            storm_rate: 500.0,
            mock_latency_ms: 0,
            tls: false,
            tls_h2: false,
            redis_faults: None,
        };
        let mut args = std::env::args().skip(1);
        let list = |v: Option<String>| -> anyhow::Result<Vec<usize>> {
            v.context("missing value")?.split(',').map(|s| s.trim().parse().context("not a number")).collect()
        };
        while let Some(a) = args.next() {
            match a.as_str() {
                // `cargo bench` passes `--bench`; a filter may follow it.
                "--bench" => {}
                "--quick" => {
                    o.n = vec![1_000, 10_000];
                    o.hold_s = 8.0;
                    o.ceiling_calls = 30_000;
                    o.storm_pairs = 500;
                }
                "--n" => o.n = list(args.next())?,
                "--hold" => o.hold_s = args.next().context("--hold SECONDS")?.parse()?,
                "--repeat" => o.repeat = args.next().context("--repeat R")?.parse()?,
                "--systems" => {
                    o.systems = args.next().context("--systems a,b")?.split(',').map(str::to_owned).collect();
                }
                "--ceiling-calls" => o.ceiling_calls = args.next().context("--ceiling-calls M")?.parse()?,
                "--ceiling-concurrency" => o.ceiling_concurrency = list(args.next())?,
                "--storm" => o.storm_pairs = args.next().context("--storm PAIRS")?.parse()?,
                "--mock-latency" => o.mock_latency_ms = args.next().context("--mock-latency MS")?.parse()?,
                "--tls" => o.tls = true,
                "--tls-h2" => (o.tls, o.tls_h2) = (true, true),
                "--redis-faults" => o.redis_faults = Some(args.next().context("--redis-faults N")?.parse()?),
                "-h" | "--help" => {
                    println!(
                        "cargo bench --bench load -- [--quick] [--n 1000,10000,50000] [--hold SECONDS] [--repeat R]\n  \
                         [--systems keeptyping,naive,naive-sleep,keeptyping@BIN,naive@BENCH_BIN] [--ceiling-calls M]\n  \
                         [--ceiling-concurrency 8,1024] [--storm PAIRS] [--mock-latency MS] [--tls | --tls-h2]\n  \
                         [--redis-faults N]"
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(o)
    }
}

/// CPU and memory of one process over the quiet hold window.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Cost {
    pub(crate) cpu_s: f64,
    pub(crate) refires: usize,
    pub(crate) cpu_s_per_1k_refires: f64,
    pub(crate) rss_idle_kib: u64,
    pub(crate) rss_hold_kib: u64,
    pub(crate) bytes_per_session: f64,
    pub(crate) mock_cpu_s: f64,
    /// Open sockets of the process at the end of the hold window, and the most seen while it
    /// lasted and during the storm (sampled every 500 ms): hook connections, listeners and
    /// upstream connections together.
    pub(crate) sockets_hold: usize,
    pub(crate) sockets_max: usize,
    /// Redis's CPU and commands over the window (Redis runs only).
    pub(crate) redis: Option<replicas::RedisCost>,
}

/// keeptyping's own counters (from `/metrics`), for the record.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counters {
    pub(crate) refires_total: f64,
    pub(crate) refires_skipped_total: f64,
    /// `keeptyping_upstream_in_flight` at the end of the run.
    pub(crate) in_flight: f64,
    pub(crate) lateness_mean_ms: f64,
    /// Storm hooks (start and stop routes) as keeptyping's own middleware timed them: how many,
    /// and the share that took longer than 1 ms and 5 ms inside the process.
    pub(crate) hook_server_count: f64,
    pub(crate) hook_server_over_1ms: f64,
    pub(crate) hook_server_over_5ms: f64,
}

/// One system at one N.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) system: String,
    pub(crate) n: usize,
    pub(crate) repeat: usize,
    pub(crate) started: usize,
    pub(crate) ramp_s: f64,
    pub(crate) hold_s: f64,
    pub(crate) expected_rps: f64,
    pub(crate) achieved_rps: f64,
    pub(crate) failed_calls: usize,
    pub(crate) cadence: Cadence,
    pub(crate) cost: Cost,
    pub(crate) hook_ms: Quantiles,
    pub(crate) hook_errors: usize,
    pub(crate) storm_after_stop: usize,
    /// First call after a single start (the storm's, while the N sessions refire): the first
    /// call received minus the start's send time, over the storm chats that got one before
    /// their stop.
    pub(crate) storm_first_ms: Quantiles,
    pub(crate) storm_after_stop_strict: usize,
    pub(crate) counters: Option<Counters>,
}

/// The clients whose ceiling is measured: keeptyping's own and the naive design's.
const CEILING_CLIENTS: [&str; 2] = ["keeptyping", "reqwest"];

/// The ceiling of one client at one concurrency.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(crate) struct Ceiling {
    /// `keeptyping` (its own client) or `reqwest` (the naive design's).
    pub(crate) client: String,
    pub(crate) concurrency: usize,
    pub(crate) calls: usize,
    pub(crate) ok: usize,
    pub(crate) cpu_s: f64,
    pub(crate) wall_s: f64,
}

impl Ceiling {
    pub(crate) fn cpu_s_per_1k(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "call counts far below 2^52")]
        let calls = self.calls as f64;
        self.cpu_s / calls * 1000.0
    }
}

/// The driver's view of the world.
struct Bench {
    http: reqwest::Client,
    mock: String,
    bin: PathBuf,
    logs: PathBuf,
    /// The mock's certificate (PEM) in TLS mode: keeptyping's `upstream.ca_file`, the file the
    /// children that use keeptyping's client read from `KEEPTYPING_BENCH_CA_FILE`, and
    /// `SSL_CERT_FILE` for the naive baseline's plain reqwest client.
    cert: Option<PathBuf>,
    /// A driver instant and the mock's clock at that instant.
    clock: (Instant, f64),
}

fn main() -> anyhow::Result<()> {
    if let Ok(mode) = std::env::var(child::CHILD_ENV) {
        return child::run(&mode);
    }
    let opts = Opts::parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(opts))
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("bench");
    let logs = target.join("logs");
    std::fs::create_dir_all(&logs)?;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_keeptyping"));
    let port = free_port()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["mock-upstream", "--listen", &format!("127.0.0.1:{port}"), "--limit-per-minute", "0"]);
    cmd.args(["--latency-ms", &opts.mock_latency_ms.to_string()]);
    let cert = opts.tls.then(|| logs.join("mock-cert.pem"));
    if let Some(c) = &cert {
        let _ = std::fs::remove_file(c);
        cmd.arg("--tls-cert-out").arg(c);
        if opts.tls_h2 {
            cmd.arg("--http2");
        }
    }
    cmd.env("RUST_LOG", "warn");
    let mock_proc = Proc::spawn("mock-upstream", cmd, &logs.join("mock.log"))?;
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        // Bounds every driver request: a system that stops answering fails its run.
        .timeout(Duration::from_secs(60));
    if let Some(c) = &cert {
        for _ in 0..100 {
            if c.exists() {
                break;
            }
            sleep(Duration::from_millis(50)).await;
        }
        let pem = std::fs::read(c).context("the mock wrote no certificate")?;
        http = http.tls_certs_merge([reqwest::Certificate::from_pem(&pem)?]);
    }
    let scheme = if opts.tls { "https://localhost" } else { "http://127.0.0.1" };
    let mut bench =
        Bench { http: http.build()?, mock: format!("{scheme}:{port}"), bin, logs, cert, clock: (Instant::now(), 0.0) };
    bench.wait_ready(&format!("{}/_mock/now", bench.mock)).await.context("mock-upstream did not start")?;
    let machine = report::machine();
    eprintln!("machine: {machine}; options: {opts:?}");
    if let Some(n) = opts.redis_faults {
        let report = bench.redis_faults(n).await?;
        let md = report.markdown();
        println!("\nMachine: {machine}. Three replicas on one redis-server, state.lease 2s.\n\n{md}");
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let text = serde_json::to_string_pretty(&serde_json::json!({ "machine": machine, "faults": report }))?;
        std::fs::write(target.join(format!("redis-faults-{stamp}.json")), &text)?;
        eprintln!("wrote {}", target.join(format!("redis-faults-{stamp}.json")).display());
        drop(mock_proc);
        return Ok(());
    }
    let started = Instant::now();
    let mut ceilings = Vec::new();
    // `--ceiling-calls 0` skips the ceiling (with a slow mock it would take minutes).
    for &c in opts.ceiling_concurrency.iter().filter(|_| opts.ceiling_calls > 0) {
        for client in CEILING_CLIENTS {
            let ceiling = bench.ceiling(opts.ceiling_calls, c, client).await?;
            eprintln!(
                "ceiling {client} c={c}: {} calls in {:.1} s, {:.3} CPU s per 1k calls",
                ceiling.calls,
                ceiling.wall_s,
                ceiling.cpu_s_per_1k()
            );
            ceilings.push(ceiling);
        }
    }
    let mut runs = Vec::new();
    for &n in &opts.n {
        for r in 0..opts.repeat {
            for system in &opts.systems {
                // A system that falls over at some N is reported, and the bench goes on. One
                // that collapses without failing (a naive design's connections piling up under
                // overload) is stopped at the run's bound: dropping the run kills its process.
                let bound = run_bound(n, &opts);
                match tokio::time::timeout(bound, bench.run(system, n, r, &opts, &mock_proc)).await {
                    Ok(Ok(run)) => {
                        eprintln!("{}", report::line(&run));
                        runs.push(run);
                    }
                    Ok(Err(e)) => eprintln!("{system} at n={n} failed: {e:#}"),
                    Err(_) => {
                        eprintln!("{system} at n={n} failed: did not finish within {} s (collapsed)", bound.as_secs())
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    report::write(&target, &opts, &machine, &ceilings, &runs, elapsed)?;
    drop(mock_proc);
    Ok(())
}

/// How long one run of one system may take before it counts as collapsed: its ramp, hold and
/// storm at the planned pace, plus 30 s and 45 s per 10,000 sessions for starting the process,
/// the start and stop batches and the mock's record (a run at 40,000 sessions that held took
/// 110 s of its 227).
fn run_bound(n: usize, opts: &Opts) -> Duration {
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let planned = child::INTERVAL.as_secs_f64() + 1.0 + opts.hold_s + opts.storm_pairs as f64 / opts.storm_rate;
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_n = 45.0 * (n as f64 / 10_000.0).max(1.0);
    Duration::from_secs_f64(planned + 30.0 + per_n)
}

// === impl Bench ===

impl Bench {
    async fn wait_ready(&self, url: &str) -> anyhow::Result<()> {
        for _ in 0..200 {
            if self.http.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{url} did not answer within 10 s")
    }

    async fn mock_now(&self) -> anyhow::Result<f64> {
        let v: serde_json::Value = self.http.get(format!("{}/_mock/now", self.mock)).send().await?.json().await?;
        v["now_ms"].as_f64().context("no now_ms")
    }

    /// Puts the driver's clock on the mock's: the reading with the shortest round trip wins.
    async fn calibrate(&mut self) -> anyhow::Result<()> {
        let mut best = (Duration::MAX, Instant::now(), 0.0);
        for _ in 0..20 {
            let t0 = Instant::now();
            let m = self.mock_now().await?;
            let rtt = t0.elapsed();
            if rtt < best.0 {
                best = (rtt, t0 + rtt / 2, m);
            }
        }
        self.clock = (best.1, best.2);
        Ok(())
    }

    /// `t` on the mock's clock, in ms.
    fn mock_ms(&self, t: Instant) -> f64 {
        let (base, m) = self.clock;
        if t >= base { m + (t - base).as_secs_f64() * 1000.0 } else { m - (base - t).as_secs_f64() * 1000.0 }
    }

    async fn reset_mock(&self) -> anyhow::Result<()> {
        self.http.post(format!("{}/_mock/reset", self.mock)).send().await?.error_for_status()?;
        Ok(())
    }

    async fn ceiling(&self, calls: usize, concurrency: usize, client: &str) -> anyhow::Result<Ceiling> {
        self.reset_mock().await?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(child::CHILD_ENV, "ceiling")
            .env(child::CEILING_CLIENT_ENV, client)
            .env("KEEPTYPING_BENCH_UPSTREAM", &self.mock)
            .env("KEEPTYPING_BENCH_CALLS", calls.to_string())
            .env("KEEPTYPING_BENCH_CONCURRENCY", concurrency.to_string());
        if let Some(c) = &self.cert {
            cmd.env(child::CA_FILE_ENV, c);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        anyhow::ensure!(out.status.success(), "ceiling failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout)?;
        let c: Ceiling = serde_json::from_str(line.trim()).context("ceiling output")?;
        anyhow::ensure!(c.ok == c.calls, "ceiling: {} of {} calls failed", c.calls - c.ok, c.calls);
        self.reset_mock().await?;
        Ok(c)
    }

    /// Starts `system` as a fresh process; returns it with its hook base URL and admin URL.
    async fn spawn_system(
        &self,
        system: &str,
        n: usize,
        repeat: usize,
    ) -> anyhow::Result<(Proc, String, Option<String>, Option<replicas::RedisServer>)> {
        let hook_port = free_port()?;
        let log = self.logs.join(format!("{}-{n}-{repeat}.log", system.replace(['/', '@'], "_")));
        // `keeptyping@PATH` runs another build of the service (an earlier commit, say) in the
        // same run; `naive@PATH` another build of this bench (its baselines).
        let (name, bin, bench_bin) = match system.split_once('@') {
            Some((name, path)) => (name, PathBuf::from(path), PathBuf::from(path)),
            None => (system, self.bin.clone(), std::env::current_exe()?),
        };
        // keeptyping trusts the mock through `upstream.ca_file`; another build of it (which may
        // predate the key) and the naive baseline's plain client through `SSL_CERT_FILE`, which
        // reqwest's verifier reads; the children using keeptyping's client through the key too.
        let trust = |cmd: &mut Command| {
            if let Some(c) = &self.cert {
                if name == "keeptyping" && !system.contains('@') {
                    cmd.env("KEEPTYPING__UPSTREAM__CA_FILE", c);
                } else {
                    cmd.env("SSL_CERT_FILE", c).env(child::CA_FILE_ENV, c);
                }
            }
        };
        match name {
            "keeptyping" => {
                let (p, hook, admin) = self.spawn_keeptyping(&bin, n, hook_port, &log, &[]).await?;
                Ok((p, hook, Some(admin), None))
            }
            "keeptyping-redis" => {
                let redis = replicas::RedisServer::start(&log.with_extension("redis.log"))?;
                let mut procs = Vec::new();
                let mut urls = Vec::new();
                for r in 0..replicas::REPLICAS {
                    let port = if r == 0 { hook_port } else { free_port()? };
                    let env = [
                        ("KEEPTYPING__STATE__BACKEND", "redis".to_owned()),
                        ("KEEPTYPING_REDIS_URL", redis.url()),
                        ("KEEPTYPING_REPLICA_ID", format!("r{r}")),
                    ];
                    let (p, hook, admin) =
                        self.spawn_keeptyping(&bin, n, port, &log.with_extension(format!("r{r}.log")), &env).await?;
                    procs.push(p);
                    urls.push((hook, admin));
                }
                // Every replica has taken its shards before the first start.
                sleep(Duration::from_secs(2)).await;
                let mut all = procs.into_iter();
                let main = all.next().context("no replica")?;
                // Hooks go to the first replica, which forwards those of chats it does not own.
                let mut redis = redis;
                redis.replica_hooks = urls.iter().map(|(hook, _)| hook.clone()).collect();
                let (hook, admin) = urls.swap_remove(0);
                Ok((main.with_peers(all.collect()), hook, Some(admin), Some(redis)))
            }
            "naive" | "naive-sleep" => {
                let mut cmd = Command::new(&bench_bin);
                cmd.env(child::CHILD_ENV, name)
                    .env("KEEPTYPING_BENCH_LISTEN", format!("127.0.0.1:{hook_port}"))
                    .env("KEEPTYPING_BENCH_UPSTREAM", &self.mock);
                trust(&mut cmd);
                let p = Proc::spawn(name, cmd, &log)?;
                let hook = format!("http://127.0.0.1:{hook_port}");
                self.wait_ready(&format!("{hook}/livez")).await?;
                Ok((p, hook, None, None))
            }
            other => anyhow::bail!(
                "unknown system {other:?} (keeptyping, keeptyping-redis, keeptyping@PATH, naive, naive-sleep)"
            ),
        }
    }

    /// Starts one keeptyping process on `hook_port` with the bench's settings and `env`;
    /// returns it with its hook and admin URLs once ready.
    async fn spawn_keeptyping(
        &self,
        bin: &std::path::Path,
        n: usize,
        hook_port: u16,
        log: &std::path::Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<(Proc, String, String)> {
        let admin_port = free_port()?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env("RUST_LOG", "warn")
            .env("KEEPTYPING__SERVER__LISTEN", format!("127.0.0.1:{hook_port}"))
            .env("KEEPTYPING__ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("KEEPTYPING__UPSTREAM__BASE_URL", &self.mock)
            .env("ONLYFANSAPI_API_KEY", child::API_KEY)
            .env("KEEPTYPING_HOOK_TOKEN", child::HOOK_TOKEN)
            // Default budget settings but the limit: the bucket holds one second of
            // refill when that is more than `budget.burst`.
            .env("KEEPTYPING__BUDGET__LIMIT_PER_MINUTE", "100000000")
            .env("KEEPTYPING__HOOKS__RATE_LIMIT_PER_SECOND", "0")
            .env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "10m")
            .env("KEEPTYPING__ENGINE__MAX_SESSIONS", (n + 100_000).to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(c) = &self.cert {
            cmd.env("SSL_CERT_FILE", c);
        }
        let p = Proc::spawn("keeptyping", cmd, log)?;
        let admin = format!("http://127.0.0.1:{admin_port}");
        self.wait_ready(&format!("{admin}/readyz")).await?;
        Ok((p, format!("http://127.0.0.1:{hook_port}"), admin))
    }

    async fn post(&self, url: &str, body: String) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .http
            .post(url)
            .bearer_auth(child::HOOK_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        anyhow::ensure!(status.is_success(), "{url} answered {status}");
        Ok(resp.json().await?)
    }

    /// Sends one batch of `action` for chats `base + range`; returns the number of events whose
    /// outcome is `want`.
    async fn batch(
        &self,
        hook: &str,
        action: &str,
        base: u64,
        range: std::ops::Range<usize>,
        want: &str,
    ) -> anyhow::Result<usize> {
        let events: Vec<String> = range
            .map(|i| format!(r#"{{"action":"{action}","account_id":"{ACCOUNT}","chat_id":"{}"}}"#, base + i as u64))
            .collect();
        let v =
            self.post(&format!("{hook}/v1/typing/batch"), format!(r#"{{"events":[{}]}}"#, events.join(","))).await?;
        let results = v["results"].as_array().context("no results")?;
        Ok(results.iter().filter(|r| r["outcome"] == want).count())
    }

    async fn run(&mut self, system: &str, n: usize, repeat: usize, opts: &Opts, mock: &Proc) -> anyhow::Result<Run> {
        let (mut proc_, hook, admin, redis) = self.spawn_system(system, n, repeat).await?;
        self.reset_mock().await?;
        self.calibrate().await?;
        sleep(Duration::from_millis(300)).await;
        let rss_idle = proc_.rss_kib()?;
        // Ramp: N starts spread evenly over one refire interval, as chatters arrive, not in one
        // instant; batches of at most 500.
        let interval_ms = child::INTERVAL.as_secs_f64() * 1000.0;
        let per_batch = (n / 50).clamp(10, MAX_BATCH);
        let batches = n.div_ceil(per_batch);
        let pace = child::INTERVAL / u32::try_from(batches).unwrap_or(u32::MAX);
        let mut spells = vec![Spell { start_ms: f64::NAN, stop_ms: f64::INFINITY }; n];
        let mut started = 0;
        let t0 = Instant::now();
        for b in 0..batches {
            sleep_until(t0 + pace * u32::try_from(b).unwrap_or(u32::MAX)).await;
            let range = b * per_batch..((b + 1) * per_batch).min(n);
            let sent = self.mock_ms(Instant::now());
            started += self.batch(&hook, "start", MAIN_BASE, range.clone(), "started").await?;
            for s in &mut spells[range] {
                s.start_ms = sent;
            }
        }
        let ramp_s = t0.elapsed().as_secs_f64();
        proc_.check_alive()?;
        // Quiet hold: the cost window.
        sleep(Duration::from_secs(1)).await;
        let (cpu0, mock_cpu0, m0) = (proc_.cpu_seconds()?, mock.cpu_seconds()?, self.mock_ms(Instant::now()));
        let redis0 = match &redis {
            Some(r) => Some((r.cpu_seconds()?, r.commands()?)),
            None => None,
        };
        // Sockets sampled while the window and the storm last (reading `/proc` costs the
        // driver, not the process measured).
        let pid = proc_.pid();
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sampling = {
            let most = std::sync::Arc::clone(&most);
            tokio::spawn(async move {
                loop {
                    most.fetch_max(procs::sockets(pid), std::sync::atomic::Ordering::Relaxed);
                    sleep(Duration::from_millis(500)).await;
                }
            })
        };
        sleep(Duration::from_secs_f64(opts.hold_s)).await;
        let (cpu1, mock_cpu1, m1) = (proc_.cpu_seconds()?, mock.cpu_seconds()?, self.mock_ms(Instant::now()));
        let redis1 = match &redis {
            Some(r) => Some((r.cpu_seconds()?, r.commands()?)),
            None => None,
        };
        let rss_hold = proc_.rss_kib()?;
        let sockets_hold = procs::sockets(pid);
        // The storm, while the N sessions keep refiring.
        let timeline = self.logs.join(format!("storm-{}-{n}-{repeat}.tsv", system.replace(['/', '@'], "_")));
        let (hook_ms, hook_errors, storm_spells) = self.storm(&hook, opts, &timeline).await;
        sampling.abort();
        let sockets_max = procs::sockets(pid).max(most.load(std::sync::atomic::Ordering::Relaxed));
        // Redis runs: stops through a non-owner, one after another, while the N sessions refire.
        let stop_via_non_owner_ms = match &redis {
            Some(r) => {
                let range = 0..replicas::PROBE_CHATS;
                self.batch(&hook, "start", replicas::PROBE_BASE, range, "started").await?;
                sleep(Duration::from_millis(500)).await;
                Quantiles::of(r.stop_probe(&self.http, child::HOOK_TOKEN).await?)
            }
            None => Quantiles::default(),
        };
        // Stop everything.
        for b in 0..n.div_ceil(MAX_BATCH) {
            let range = b * MAX_BATCH..((b + 1) * MAX_BATCH).min(n);
            self.batch(&hook, "stop", MAIN_BASE, range.clone(), "stopped").await?;
            let answered = self.mock_ms(Instant::now());
            for s in &mut spells[range] {
                s.stop_ms = answered;
            }
        }
        sleep(LAND).await;
        proc_.check_alive()?;
        let counters = match &admin {
            Some(a) => Some(self.counters(a).await?),
            None => None,
        };
        drop(proc_);
        drop(redis);
        let tsv = self.http.get(format!("{}/_mock/requests.tsv?kind=typing", self.mock)).send().await?.text().await?;
        let calls = analysis::parse(&tsv, (MAIN_BASE, n), (STORM_BASE, storm_spells.len()));
        let cadence = analysis::cadence(&calls.main, &spells, interval_ms);
        let (storm_after_stop, storm_after_stop_strict) = analysis::after_stop(&calls.storm, &storm_spells);
        let storm_first_ms = Quantiles::of(
            calls.storm.iter().zip(&storm_spells).filter_map(|(c, s)| Some(c.first()? - s.start_ms)).collect(),
        );
        let in_window = calls.all.iter().filter(|t| **t >= m0 && **t < m1).count();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let (in_window_f, n_f) = (in_window as f64, n as f64);
        let window_s = (m1 - m0) / 1000.0;
        let cpu_s = cpu1 - cpu0;
        Ok(Run {
            system: system.to_owned(),
            n,
            repeat,
            started,
            ramp_s,
            hold_s: window_s,
            expected_rps: n_f / child::INTERVAL.as_secs_f64(),
            achieved_rps: in_window_f / window_s,
            failed_calls: calls.failed,
            cadence,
            cost: Cost {
                cpu_s,
                refires: in_window,
                cpu_s_per_1k_refires: cpu_s / in_window_f * 1000.0,
                rss_idle_kib: rss_idle,
                rss_hold_kib: rss_hold,
                #[allow(clippy::cast_precision_loss, reason = "KiB of one process")]
                bytes_per_session: (rss_hold as f64 - rss_idle as f64) * 1024.0 / n_f,
                mock_cpu_s: mock_cpu1 - mock_cpu0,
                sockets_hold,
                sockets_max,
                redis: redis0.zip(redis1).map(|((c0, k0), (c1, k1))| replicas::RedisCost {
                    cpu_s: c1 - c0,
                    commands: k1 - k0,
                    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
                    commands_per_refire: (k1 - k0) as f64 / in_window_f,
                    stop_via_non_owner_ms,
                }),
            },
            hook_ms,
            hook_errors,
            storm_after_stop,
            storm_first_ms,
            storm_after_stop_strict,
            counters,
        })
    }

    /// Open-loop start/stop pairs at `storm_rate` pairs per second on fresh chats: each pair
    /// sends a start and, once answered, a stop. Returns hook latencies (both requests), errors,
    /// and each storm chat's spell; writes every hook's send time and latency to `timeline_file`.
    async fn storm(&self, hook: &str, opts: &Opts, timeline_file: &std::path::Path) -> (Quantiles, usize, Vec<Spell>) {
        let t0 = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / opts.storm_rate);
        let mut tasks = Vec::with_capacity(opts.storm_pairs);
        for k in 0..opts.storm_pairs {
            sleep_until(t0 + gap * u32::try_from(k).unwrap_or(u32::MAX)).await;
            let (http, hook) = (self.http.clone(), hook.to_owned());
            let chat = STORM_BASE + k as u64;
            tasks.push(tokio::spawn(async move {
                let body = format!(r#"{{"account_id":"{ACCOUNT}","chat_id":"{chat}"}}"#);
                let mut lat = Vec::with_capacity(2);
                let mut ok = true;
                let mut stop_at = None;
                let mut start_at = None;
                for route in ["start", "stop"] {
                    let sent = Instant::now();
                    start_at.get_or_insert(sent);
                    let r = http
                        .post(format!("{hook}/v1/typing/{route}"))
                        .bearer_auth(child::HOOK_TOKEN)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let done = Instant::now();
                    ok &= match r {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    lat.push(((sent - t0).as_secs_f64() * 1000.0, (done - sent).as_secs_f64() * 1000.0));
                    stop_at = Some(Instant::now());
                }
                (lat, ok, stop_at, start_at)
            }));
        }
        let mut lat = Vec::new();
        let mut timeline = String::from("sent_ms\tlatency_ms\n");
        let mut errors = 0;
        let mut spells = Vec::with_capacity(tasks.len());
        for t in tasks {
            match t.await {
                Ok((l, ok, stop_at, start_at)) => {
                    for (sent, ms) in l {
                        timeline.push_str(&format!("{sent:.3}\t{ms:.3}\n"));
                        lat.push(ms);
                    }
                    errors += usize::from(!ok);
                    let stop_ms = match (ok, stop_at) {
                        (true, Some(s)) => self.mock_ms(s),
                        _ => f64::INFINITY,
                    };
                    let start_ms = start_at.map_or(f64::NAN, |t| self.mock_ms(t));
                    spells.push(Spell { start_ms, stop_ms });
                }
                Err(_) => {
                    errors += 1;
                    spells.push(Spell { start_ms: f64::NAN, stop_ms: f64::INFINITY });
                }
            }
        }
        let _ = std::fs::write(timeline_file, timeline);
        (Quantiles::of(lat), errors, spells)
    }

    /// keeptyping's own counters from its `/metrics`.
    async fn counters(&self, admin: &str) -> anyhow::Result<Counters> {
        let text = self.http.get(format!("{admin}/metrics")).send().await?.text().await?;
        // Sum of the series of `name` whose labels include every one of `labels`.
        let sum_where = |name: &str, labels: &[&str]| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter(|l| labels.iter().all(|label| l.contains(label)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let sum = |name: &str| sum_where(name, &[]);
        let count = sum("keeptyping_refire_lateness_seconds_count");
        // The storm uses only the start and stop routes (the ramp and the stop-all use batch).
        let hook = |series: &str, le: &[&str]| -> f64 {
            let name = format!("keeptyping_hook_request_duration_seconds_{series}");
            ["route=\"/v1/typing/start\"", "route=\"/v1/typing/stop\""]
                .iter()
                .map(|route| sum_where(&name, &[&[*route], le].concat()))
                .sum()
        };
        let hook_count = hook("count", &[]);
        let (le_1ms, le_5ms) = (hook("bucket", &["le=\"0.001\""]), hook("bucket", &["le=\"0.005\""]));
        let share_over = |le: f64| if hook_count > 0.0 { 1.0 - le / hook_count } else { 0.0 };
        Ok(Counters {
            hook_server_count: hook_count,
            hook_server_over_1ms: share_over(le_1ms),
            hook_server_over_5ms: share_over(le_5ms),
            refires_total: sum("keeptyping_refires_total"),
            refires_skipped_total: sum("keeptyping_refires_skipped_total"),
            in_flight: sum("keeptyping_upstream_in_flight"),
            lateness_mean_ms: if count > 0.0 {
                sum("keeptyping_refire_lateness_seconds_sum") / count * 1000.0
            } else {
                0.0
            },
        })
    }
}
