//! The load bench's output: one line per run while it goes, then a Markdown summary (medians
//! over repeats, both ratios, the largest N held) and the JSON files under `target/bench/`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::{Ceiling, HOLD_BOUND_MS, HOLD_HOOK_MS, HOLD_RATE, Opts, Run};

/// `nproc` and the CPU model.
pub(crate) fn machine() -> String {
    let sh = |c: &str| {
        Command::new("sh")
            .args(["-c", c])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let model = sh("lscpu | grep 'Model name' | head -1 | cut -d: -f2");
    format!("{} cores ({}), {}", sh("nproc"), model.trim(), sh("uname -sr"))
}

/// One run as a progress line.
pub(crate) fn line(r: &Run) -> String {
    let c = &r.cadence;
    let server = r.counters.as_ref().map_or_else(String::new, |k| {
        format!(
            " (in process: {:.0} hooks, {:.2}% over 1 ms, {:.2}% over 5 ms; skipped {:.0}, in flight {:.0})",
            k.hook_server_count,
            k.hook_server_over_1ms * 100.0,
            k.hook_server_over_5ms * 100.0,
            k.refires_skipped_total,
            k.in_flight
        )
    });
    let redis = r.cost.redis.as_ref().map_or_else(String::new, |c| {
        format!(
            " redis: {} commands ({:.4} per refire), {:.2} CPU s; stop via a non-owner p50/p99 {:.2}/{:.2} ms",
            c.commands, c.commands_per_refire, c.cpu_s, c.stop_via_non_owner_ms.p50, c.stop_via_non_owner_ms.p99
        )
    });
    format!(
        "{:>10} n={:<6} rps {:.0}/{:.0} late p50/p99/max {:.1}/{:.1}/{:.1} ms cov {:.4} first p50/p99 {:.1}/{:.1} ms \
         single-start first p50/p99 {:.1}/{:.1} ms after-stop {} cpu {:.3} s/1k rss {:.0} B/session sockets {}/{} hook p50/p99 {:.2}/{:.2} ms (errors {}){}{}",
        r.system,
        r.n,
        r.achieved_rps,
        r.expected_rps,
        c.lateness_ms.p50,
        c.lateness_ms.p99,
        c.lateness_ms.max,
        c.coverage,
        c.first_call_ms.p50,
        c.first_call_ms.p99,
        r.storm_first_ms.p50,
        r.storm_first_ms.p99,
        c.after_stop + r.storm_after_stop,
        r.cost.cpu_s_per_1k_refires,
        r.cost.bytes_per_session,
        r.cost.sockets_hold,
        r.cost.sockets_max,
        r.hook_ms.p50,
        r.hook_ms.p99,
        r.hook_errors,
        server,
        redis,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians of one system at one N over its repeats.
#[derive(Debug, Clone, serde::Serialize)]
struct Summary {
    system: String,
    n: usize,
    runs: usize,
    achieved_rps: f64,
    expected_rps: f64,
    lateness_p50_ms: f64,
    lateness_p99_ms: f64,
    lateness_max_ms: f64,
    coverage: f64,
    coverage_p1: f64,
    first_call_p50_ms: f64,
    first_call_p99_ms: f64,
    after_stop: usize,
    cpu_s_per_1k_refires: f64,
    bytes_per_session: f64,
    rss_hold_kib: f64,
    hook_p50_ms: f64,
    hook_p99_ms: f64,
    single_start_first_p99_ms: f64,
    sockets_max: f64,
    hook_errors: usize,
    failed_calls: usize,
    /// Redis runs: commands Redis ran per refire, and its CPU seconds per 1k refires.
    redis_commands_per_refire: Option<f64>,
    redis_cpu_s_per_1k_refires: Option<f64>,
    redis_stop_via_non_owner_p99_ms: Option<f64>,
}

fn summarise(runs: &[Run], system: &str, n: usize) -> Option<Summary> {
    let rs: Vec<&Run> = runs.iter().filter(|r| r.system == system && r.n == n).collect();
    if rs.is_empty() {
        return None;
    }
    let m = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
    Some(Summary {
        system: system.to_owned(),
        n,
        runs: rs.len(),
        achieved_rps: m(&|r| r.achieved_rps),
        expected_rps: m(&|r| r.expected_rps),
        lateness_p50_ms: m(&|r| r.cadence.lateness_ms.p50),
        lateness_p99_ms: m(&|r| r.cadence.lateness_ms.p99),
        lateness_max_ms: m(&|r| r.cadence.lateness_ms.max),
        coverage: m(&|r| r.cadence.coverage),
        coverage_p1: m(&|r| r.cadence.coverage_p1),
        first_call_p50_ms: m(&|r| r.cadence.first_call_ms.p50),
        first_call_p99_ms: m(&|r| r.cadence.first_call_ms.p99),
        after_stop: rs.iter().map(|r| r.cadence.after_stop + r.storm_after_stop).sum(),
        cpu_s_per_1k_refires: m(&|r| r.cost.cpu_s_per_1k_refires),
        bytes_per_session: m(&|r| r.cost.bytes_per_session),
        #[allow(clippy::cast_precision_loss, reason = "KiB of one process")]
        rss_hold_kib: m(&|r| r.cost.rss_hold_kib as f64),
        hook_p50_ms: m(&|r| r.hook_ms.p50),
        hook_p99_ms: m(&|r| r.hook_ms.p99),
        single_start_first_p99_ms: m(&|r| r.storm_first_ms.p99),
        #[allow(clippy::cast_precision_loss, reason = "socket counts")]
        sockets_max: m(&|r| r.cost.sockets_max as f64),
        hook_errors: rs.iter().map(|r| r.hook_errors).sum(),
        failed_calls: rs.iter().map(|r| r.failed_calls).sum(),
        redis_commands_per_refire: rs[0]
            .cost
            .redis
            .is_some()
            .then(|| m(&|r| r.cost.redis.as_ref().map_or(f64::NAN, |c| c.commands_per_refire))),
        redis_cpu_s_per_1k_refires: rs[0].cost.redis.is_some().then(|| {
            #[allow(clippy::cast_precision_loss, reason = "refire counts far below 2^52")]
            m(&|r| r.cost.redis.as_ref().map_or(f64::NAN, |c| c.cpu_s / r.cost.refires as f64 * 1000.0))
        }),
        redis_stop_via_non_owner_p99_ms: rs[0]
            .cost
            .redis
            .is_some()
            .then(|| m(&|r| r.cost.redis.as_ref().map_or(f64::NAN, |c| c.stop_via_non_owner_ms.p99))),
    })
}

fn held(s: &Summary) -> bool {
    s.lateness_p99_ms <= HOLD_BOUND_MS
        && s.hook_p99_ms <= HOLD_HOOK_MS
        && s.after_stop == 0
        && s.failed_calls == 0
        && s.achieved_rps >= HOLD_RATE * s.expected_rps
}

/// Prints the summary and writes `target/bench/load-<unix time>.json` and `load-latest.json`.
pub(crate) fn write(
    dir: &Path,
    opts: &Opts,
    machine: &str,
    ceilings: &[Ceiling],
    runs: &[Run],
    elapsed_s: f64,
) -> anyhow::Result<()> {
    // keeptyping's own client at its cheapest concurrency.
    let ceiling =
        ceilings.iter().filter(|c| c.client == "keeptyping").map(Ceiling::cpu_s_per_1k).fold(f64::INFINITY, f64::min);
    let mut summaries = Vec::new();
    for &n in &opts.n {
        for system in &opts.systems {
            summaries.extend(summarise(runs, system, n));
        }
    }
    let find = |system: &str, n: usize| summaries.iter().find(|s| s.system == system && s.n == n);
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. Runs per cell: {}; figures are medians over them.", opts.repeat);
    let _ = writeln!(
        md,
        "Hold {:.0} s per run; storm {} start/stop pairs at {:.0} pairs/s.\n",
        opts.hold_s, opts.storm_pairs, opts.storm_rate
    );
    let _ = writeln!(
        md,
        "| N | system | refires/s (expected) | lateness p50 / p99 / max ms | coverage (p1 session) | first call p50 / p99 ms (batch; single start p99) | after stop | CPU s per 1k refires | bytes per session | sockets (most) | hook p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &summaries {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ({:.0}) | {:.1} / {:.1} / {:.1} | {:.2}% ({:.2}%) | {:.1} / {:.1} ({:.1}) | {} | {:.3} | {:.0} | {:.0} | {:.2} / {:.2} |",
            s.n,
            s.system,
            s.achieved_rps,
            s.expected_rps,
            s.lateness_p50_ms,
            s.lateness_p99_ms,
            s.lateness_max_ms,
            s.coverage * 100.0,
            s.coverage_p1 * 100.0,
            s.first_call_p50_ms,
            s.first_call_p99_ms,
            s.single_start_first_p99_ms,
            s.after_stop,
            s.cpu_s_per_1k_refires,
            s.bytes_per_session,
            s.sockets_max,
            s.hook_p50_ms,
            s.hook_p99_ms,
        );
    }
    let _ = writeln!(
        md,
        "\n| N | keeptyping / naive: CPU per refire | memory per session | lateness p99 | keeptyping / ceiling: CPU per call |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &n in &opts.n {
        let (Some(k), naive) = (find("keeptyping", n), find("naive", n)) else { continue };
        let r = |f: fn(&Summary) -> f64| naive.map_or(f64::NAN, |v| f(k) / f(v));
        let row = json!({
            "n": n,
            "cpu_per_refire_vs_naive": r(|s| s.cpu_s_per_1k_refires),
            "memory_per_session_vs_naive": r(|s| s.bytes_per_session),
            "lateness_p99_vs_naive": r(|s| s.lateness_p99_ms),
            // No ceiling run (`--ceiling-calls 0`): no ratio, rather than one against infinity.
            "cpu_per_call_vs_ceiling": if ceiling.is_finite() { k.cpu_s_per_1k_refires / ceiling } else { f64::NAN },
        });
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            ratio(&row["cpu_per_refire_vs_naive"]),
            ratio(&row["memory_per_session_vs_naive"]),
            ratio(&row["lateness_p99_vs_naive"]),
            ratio(&row["cpu_per_call_vs_ceiling"]),
        );
        ratios.push(row);
    }
    let redis_rows: Vec<&Summary> = summaries.iter().filter(|s| s.redis_commands_per_refire.is_some()).collect();
    if !redis_rows.is_empty() {
        let _ = writeln!(
            md,
            "\n| N | 3 replicas on Redis: lateness p99 ms | CPU s per 1k refires (replicas) | vs memory backend | Redis commands per refire | Redis CPU s per 1k refires | hook p99 ms (2/3 forwarded) | stop via a non-owner p99 ms |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for s in redis_rows {
            let memory = find("keeptyping", s.n).map_or(f64::NAN, |k| s.cpu_s_per_1k_refires / k.cpu_s_per_1k_refires);
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.3} | {:.2} | {:.4} | {:.3} | {:.2} | {:.2} |",
                s.n,
                s.lateness_p99_ms,
                s.cpu_s_per_1k_refires,
                memory,
                s.redis_commands_per_refire.unwrap_or(f64::NAN),
                s.redis_cpu_s_per_1k_refires.unwrap_or(f64::NAN),
                s.hook_p99_ms,
                s.redis_stop_via_non_owner_p99_ms.unwrap_or(f64::NAN),
            );
        }
    }
    let largest = |system: &str| summaries.iter().filter(|s| s.system == system && held(s)).map(|s| s.n).max();
    let mut held_by = serde_json::Map::new();
    for system in &opts.systems {
        held_by.insert(system.clone(), json!(largest(system)));
    }
    let held_ratio = match (largest("keeptyping"), largest("naive")) {
        #[allow(clippy::cast_precision_loss, reason = "session counts")]
        (Some(k), Some(n)) => json!(k as f64 / n as f64),
        _ => serde_json::Value::Null,
    };
    let _ = writeln!(
        md,
        "\nLargest N held (refire rate >= {:.0}% of expected, lateness p99 <= {HOLD_BOUND_MS} ms, storm hook p99 <= {HOLD_HOOK_MS} ms, no call after stop, no failed call), among N = {:?}: {}; keeptyping / naive: {}.",
        HOLD_RATE * 100.0,
        opts.n,
        opts.systems
            .iter()
            .map(|s| format!("{s} {}", largest(s).map_or("none".to_owned(), |n| n.to_string())))
            .collect::<Vec<_>>()
            .join(", "),
        held_ratio.as_f64().map_or("n/a".to_owned(), |r| format!("{r:.2}")),
    );
    let _ = writeln!(md, "\nCeiling (one client, back to back, no scheduling):");
    for c in ceilings {
        let _ = writeln!(
            md,
            "- {} client, concurrency {}: {:.0} calls/s, {:.3} CPU s per 1k calls",
            c.client,
            c.concurrency,
            c.calls as f64 / c.wall_s,
            c.cpu_s_per_1k()
        );
    }
    // Marginal memory: what one more session costs once the pool and runtime are paid.
    let mut marginal = serde_json::Map::new();
    for system in &opts.systems {
        let pts: Vec<&Summary> = summaries.iter().filter(|s| &s.system == system).collect();
        if let (Some(a), Some(b)) = (pts.first(), pts.last()) {
            if b.n > a.n {
                #[allow(clippy::cast_precision_loss, reason = "session counts")]
                let per = (b.rss_hold_kib - a.rss_hold_kib) * 1024.0 / (b.n - a.n) as f64;
                let _ =
                    writeln!(md, "- {system}: {per:.0} bytes per extra session between N = {} and N = {}", a.n, b.n);
                marginal.insert(system.clone(), json!(per));
            }
        }
    }
    let _ = writeln!(md, "\nWhole run: {elapsed_s:.0} s.");
    println!("\n{md}");
    let doc = json!({
        "machine": machine,
        "options": opts,
        "elapsed_s": elapsed_s,
        "ceiling": ceilings,
        "ceiling_cpu_s_per_1k_min": ceiling,
        "summaries": summaries,
        "ratios": ratios,
        "largest_n_held": held_by,
        "largest_n_held_ratio": held_ratio,
        "marginal_bytes_per_session": marginal,
        "runs": runs,
        "markdown": md,
    });
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(dir.join(format!("load-{stamp}.json")), &text)?;
    std::fs::write(dir.join("load-latest.json"), &text)?;
    eprintln!("wrote {}", dir.join(format!("load-{stamp}.json")).display());
    Ok(())
}

/// A ratio for the report: two decimals, or `n/a` when one side was not measured (a NaN, which
/// the JSON holds as `null`).
fn ratio(v: &serde_json::Value) -> String {
    v.as_f64().filter(|r| r.is_finite()).map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}
