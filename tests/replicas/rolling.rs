//! A rolling restart: each replica in turn gets SIGTERM, hands its chats to the others, exits
//! 0, and a new one (a new id, as a new pod) takes its place; the next goes once it is ready.
//! The fans see no gap longer than one interval, and coverage stays at 99% or more.

use std::time::Duration;

use crate::checker::{Rules, Spell, check};
use crate::fleet::{Fleet, Params, TempDir, chats, serial};
use crate::servers::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_keeps_coverage_and_no_gap_exceeds_one_interval() {
    let _serial = serial().await;
    let dir = TempDir::new("rolling");
    let redis = Redis::single(&dir.0).await;
    rolling_restart(redis, &dir.0, "rolling restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_rolling_restart_keeps_coverage_and_no_gap_exceeds_one_interval() {
    let _serial = serial().await;
    let dir = TempDir::new("rolling-cluster");
    let redis = Redis::cluster(&dir.0).await;
    rolling_restart(redis, &dir.0, "rolling restart, cluster").await;
}

/// The test itself, on a single Redis or on a cluster.
pub async fn rolling_restart(redis: Redis, dir: &std::path::Path, label: &str) {
    let params = Params::default();
    let (interval, lifetime) = (params.interval_ms as f64, params.lifetime_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let chats = chats(7_100_000, 60);
    let t0 = fleet.clock.now();
    eprintln!("t0 (+0 ms below) is {} in the replicas' logs", fleet.clock.wall(t0));
    fleet.hooks().start_all(&chats).await;
    // The restart is judged from here on (a batch of starts has its own test, in routing.rs).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let t1 = fleet.clock.now();

    // Act: SIGTERM r0, r1, r2 in turn; each exits, a new replica starts, is ready and owns its
    // share before the next goes.
    let mut marks = Vec::new();
    let mut unclean: Vec<String> = Vec::new();
    for i in 0..3 {
        let old = fleet.replicas[i].id.clone();
        let at = fleet.clock.now();
        let (status, took) = fleet.sigterm(i, Duration::from_secs(8)).await;
        assert!(status.success(), "{label}: {old} exited with {status} after SIGTERM");
        // A drain that completes: the hand-over is done well before `shutdown.grace` (5 s).
        let log = std::fs::read_to_string(&fleet.replicas[i].log).unwrap_or_default();
        unclean.extend(log.lines().filter(|l| l.contains("grace ran out")).map(|l| format!("{old}: {l}")));
        if took >= Duration::from_millis(4500) {
            unclean.push(format!("{old} exited {} ms after SIGTERM", took.as_millis()));
        }
        let new = format!("{old}-2");
        fleet.respawn(i, &new);
        fleet.wait_ready(i).await;
        let ready = fleet.clock.now();
        fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(8)).await;
        marks.push(format!(
            "SIGTERM {old} at +{:.0} ms, exited in {} ms, {new} ready at +{:.0} ms",
            at - t0,
            took.as_millis(),
            ready - t0
        ));
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // Watch a few more intervals: the last replica's shards move to its successor meanwhile.
    tokio::time::sleep(Duration::from_millis(3 * params.interval_ms)).await;
    let end = fleet.clock.now();

    let calls = fleet.calls(t1 - interval).await;
    let spells: Vec<Spell> = chats.iter().map(|c| Spell { chat: c.clone(), start: t1, stop: None }).collect();
    let f = check(&calls, &spells, &Rules::new(interval, lifetime, end));
    let (gap_chat, gap) = f.max_gap();
    eprintln!("{label}: {}", marks.join("; "));
    eprintln!(
        "{label}: coverage {:.3}% over the {:.1} s of the restart, longest gap {gap:.0} ms (chat {gap_chat}); {}",
        f.coverage() * 100.0,
        (end - t1) / 1000.0,
        f.summary()
    );
    eprintln!(
        "{label}: gaps over interval + 200 ms (from the first start): {:?}; refires skipped {:?}",
        f.gaps_over(interval + 200.0, t0),
        fleet.metric_by("keeptyping_refires_skipped_total", "reason").await
    );
    f.assert_clean(label);
    assert!(f.coverage() >= 0.99, "{label}: coverage {:.3}%", f.coverage() * 100.0);
    // "No gap longer than one interval", with the tick and scheduling on a busy machine.
    assert!(gap <= interval + 200.0, "{label}: chat {gap_chat} went {gap:.0} ms without a call");

    // Every session survived the restarts: each is stopped, and nothing fires after.
    let hooks = fleet.hooks();
    let mut spells = Vec::new();
    let before = fleet.clock.now();
    for (i, c) in chats.iter().enumerate() {
        let stop = hooks.stop(i % 3, c).await;
        assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: chat {c}: {}", stop.body);
        spells.push(Spell { chat: c.clone(), start: before, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let f = check(&fleet.calls(before).await, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    f.assert_clean(label);
    assert!(unclean.is_empty(), "{label}: the drains ran into the shutdown grace: {unclean:?}");
    fleet.assert_no_panics();
}
