//! Redis work is batched: over a steady window with about 600 sessions on three replicas, the
//! commands Redis executed (`INFO commandstats`, every command including those run inside
//! scripts, less the test's own INFO) per typing call stay at or below 0.05. Refires every
//! 300 ms, so that 600 sessions refire about 2,000 times a second, near the rate of 10,000
//! sessions at the OnlyFans cadence (2,857 a second); the lease is the default 2 s. The load
//! bench measures 10,000 sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fleet::{Fleet, Params, TempDir, chats, serial};
use crate::servers::Redis;

const SESSIONS: usize = 600;
const STEADY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_per_refire_stay_at_or_below_five_hundredths() {
    let _serial = serial().await;
    let label = "Redis cost";
    let dir = TempDir::new("cost");
    let redis = Redis::single(&dir.0).await;
    let params =
        Params { interval_ms: 300, lifetime_ms: 400, lease_ms: 2000, upstream_timeout_ms: 250, ..Params::default() };
    let mut fleet = Fleet::start(&redis, &dir.0, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(10)).await;
    let chats = chats(9_500_000, SESSIONS);
    fleet.hooks().start_all(&chats).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Act: a steady window, measured at both ends.
    let before = redis.commandstats().await;
    let typing_before = fleet.typing_total().await;
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(STEADY).await;
    let after = redis.commandstats().await;
    let typing_after = fleet.typing_total().await;
    let secs = t0.elapsed().as_secs_f64();

    let mut delta: BTreeMap<String, u64> = after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // The test's own INFO commandstats (one, counted in `after`).
    delta.remove("info");
    let commands: u64 = delta.values().sum();
    let refires = typing_after - typing_before;
    let per_refire = commands as f64 / refires.max(1) as f64;
    let mut top: Vec<(&String, &u64)> = delta.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    eprintln!(
        "{label}: {SESSIONS} sessions on 3 replicas, {:.1} s steady: {refires} typing calls ({:.0}/s), {commands} \
         Redis commands ({:.1}/s): {per_refire:.4} commands per refire; by command {:?}",
        secs,
        refires as f64 / secs,
        commands as f64 / secs,
        &top[..top.len().min(12)]
    );
    eprintln!(
        "{label}: refires skipped by reason {:?}; typing calls by outcome {:?}",
        fleet.metric_by("keeptyping_refires_skipped_total", "reason").await,
        fleet.metric_by("keeptyping_refires_total", "outcome").await
    );
    let expected = SESSIONS as f64 * secs * 1000.0 / params.interval_ms as f64;
    assert!(refires as f64 >= 0.9 * expected, "{label}: {refires} typing calls, expected about {expected:.0}");
    assert!(per_refire <= 0.05, "{label}: {per_refire:.4} Redis commands per refire (at most 0.05)");
    fleet.assert_no_panics();
}
