//! A replica that dies (`kill -9`) or freezes (SIGSTOP longer than the lease): its chats are
//! adopted by the others within `state.lease` + one interval, and a frozen replica that wakes
//! up sends nothing for the chats it lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::checker::{Rules, Spell, by_chat, check};
use crate::fleet::{Fleet, Params, TempDir, chats, owners, serial};
use crate::servers::Redis;

/// Slack over the promised bound for the tick, scheduling on a busy 2-core machine and the
/// wire.
const SLACK_MS: f64 = 250.0;

/// 60 chats typing on three replicas; replica r1 is killed with SIGKILL; every chat, r1's
/// included, refires again within lease + interval of the kill.
pub async fn kill9(redis: Redis, dir: &Path, label: &str) {
    let params = Params::default();
    let (interval, lifetime, lease) = (params.interval_ms as f64, params.lifetime_ms as f64, params.lease_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();
    let chats = chats(6_100_000, 60);
    let t0 = fleet.clock.now();
    hooks.start_all(&chats[..30]).await;
    hooks.start_all(&chats[30..]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let owner = owners(&redis, &chats).await;
    let victim = fleet.replicas[1].id.clone();
    let lost: Vec<String> = chats.iter().filter(|c| owner.get(*c) == Some(&victim)).cloned().collect();

    // Act: SIGKILL, then watch for lease + interval and some more.
    let killed = fleet.clock.now();
    fleet.kill9(1);
    eprintln!("{label}: {victim} killed at {} (+0 ms below)", fleet.clock.wall(killed));
    tokio::time::sleep(Duration::from_millis((lease + 2.0 * interval) as u64 + 1500)).await;
    let settled = fleet.wait_shards_settled(&[0, 2], 2, Duration::from_secs(5)).await;
    let end = fleet.clock.now();

    let calls = fleet.calls(t0).await;
    let per_chat = by_chat(&calls);
    // Every chat's first call after the kill, and its longest gap around it.
    let mut after: BTreeMap<&str, f64> = BTreeMap::new();
    for c in &chats {
        let first = per_chat.get(c).and_then(|ts| ts.iter().find(|t| **t > killed)).map_or(f64::MAX, |t| t - killed);
        after.insert(c, first);
    }
    let spells: Vec<Spell> =
        chats.iter().map(|c| Spell { chat: c.clone(), start: killed - interval, stop: None }).collect();
    let f = check(&calls, &spells, &Rules::new(interval, lifetime, end));
    let (gap_chat, gap) = f.max_gap();
    let slowest = after.iter().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, t)| ((*c).to_owned(), *t)).unwrap();
    let lost_gap = lost.iter().map(|c| f.longest_gap[c]).fold(0.0, f64::max);
    let kept_gap = chats
        .iter()
        .filter(|c| owner.get(*c).is_some_and(|o| *o != victim))
        .map(|c| f.longest_gap[c])
        .fold(0.0, f64::max);
    eprintln!(
        "{label}: {victim} owned {} of 60 chats (owners known for {}); after kill -9: slowest chat back after \
         {:.0} ms (chat {}), longest gap {gap:.0} ms (chat {gap_chat}), its chats' longest gap {lost_gap:.0} ms, \
         the others' {kept_gap:.0} ms; bound lease + interval = {:.0} ms; survivors {settled:?}",
        lost.len(),
        owner.len(),
        slowest.1,
        slowest.0,
        lease + interval
    );
    eprintln!("{label}: {}", f.summary());
    eprintln!("{label}: gaps over lease + interval (from the kill): {:?}", f.gaps_over(lease + interval, killed));
    f.assert_clean(label);
    assert!(
        slowest.1 <= lease + interval + SLACK_MS,
        "{label}: chat {} refired {:.0} ms after the kill; the bound is lease + interval = {:.0} ms",
        slowest.0,
        slowest.1,
        lease + interval
    );
    // The gap seen by a fan: the last call before the kill is up to one interval earlier, and
    // adoption takes up to lease + 0.5 s (the contract), then the adopted session fires at once.
    assert!(
        gap <= lease + interval + 500.0 + SLACK_MS,
        "{label}: chat {gap_chat} went {gap:.0} ms without a call around the kill"
    );
    if !owner.is_empty() {
        assert!(kept_gap <= interval + 200.0, "{label}: chats of the live replicas went {kept_gap:.0} ms dark");
    }

    // No session lost: every chat is stopped through the survivors, and nothing fires after.
    let mut spells = Vec::new();
    for (i, c) in chats.iter().enumerate() {
        let stop = hooks.stop(if i % 2 == 0 { 0 } else { 2 }, c).await;
        assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: chat {c}: {}", stop.body);
        spells.push(Spell { chat: c.clone(), start: killed, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let f = check(&fleet.calls(killed).await, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    f.assert_clean(label);
    fleet.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_a_replica_its_chats_refire_within_lease_plus_one_interval() {
    let _serial = serial().await;
    let dir = TempDir::new("kill9");
    let redis = Redis::single(&dir.0).await;
    kill9(redis, &dir.0, "kill -9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_after_kill_9_of_a_replica_its_chats_refire_within_the_bound() {
    let _serial = serial().await;
    let dir = TempDir::new("kill9-cluster");
    let redis = Redis::cluster(&dir.0).await;
    kill9(redis, &dir.0, "kill -9, cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_past_its_lease_sends_nothing_for_the_chats_it_lost_when_it_wakes() {
    let _serial = serial().await;
    let dir = TempDir::new("sigstop");
    let redis = Redis::single(&dir.0).await;
    frozen_replica(redis, &dir.0, "SIGSTOP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_replica_frozen_past_its_lease_sends_nothing_for_the_chats_it_lost() {
    let _serial = serial().await;
    let dir = TempDir::new("sigstop-cluster");
    let redis = Redis::cluster(&dir.0).await;
    frozen_replica(redis, &dir.0, "SIGSTOP, cluster").await;
}

/// The test itself, on a single Redis or on a cluster.
pub async fn frozen_replica(redis: Redis, dir: &std::path::Path, label: &str) {
    let params = Params::default();
    let (interval, lifetime, lease) = (params.interval_ms as f64, params.lifetime_ms as f64, params.lease_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();
    let chats = chats(6_200_000, 60);
    let t0 = fleet.clock.now();
    hooks.start_all(&chats).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let owner = owners(&redis, &chats).await;
    let victim = fleet.replicas[1].id.clone();
    let lost: Vec<String> = chats.iter().filter(|c| owner.get(*c) == Some(&victim)).cloned().collect();
    assert!(lost.len() >= 2, "{label}: {victim} owns {} chats (owners known for {})", lost.len(), owner.len());

    // Act: freeze r1 for three leases. Halfway, stop one of its chats through r0 (its lease
    // has lapsed: the stop must not hang) and one of another replica's through r2.
    let frozen = fleet.clock.now();
    fleet.signal(1, "STOP");
    // At once, one of its chats is stopped through r2: the owner cannot answer; the stop
    // answers once its lease has lapsed, and the owner, fenced, never sends for it again.
    let early = {
        let (hooks, chat) = (hooks.clone(), lost[1].clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            hooks.stop(2, &chat).await
        })
    };
    tokio::time::sleep(Duration::from_millis((1.5 * lease) as u64)).await;
    let early_stop = early.await.unwrap();
    let lost_stop = hooks.stop(0, &lost[0]).await;
    let other = chats.iter().find(|c| owner.get(*c).is_some_and(|o| *o != victim)).unwrap().clone();
    let other_stop = hooks.stop(2, &other).await;
    tokio::time::sleep(Duration::from_millis((1.5 * lease) as u64)).await;
    let woke = fleet.clock.now();
    fleet.signal(1, "CONT");
    tokio::time::sleep(Duration::from_millis((3.0 * interval) as u64 + 500)).await;
    let end = fleet.clock.now();

    let calls = fleet.calls(t0).await;
    let mut spells: Vec<Spell> =
        chats.iter().map(|c| Spell { chat: c.clone(), start: frozen - interval, stop: None }).collect();
    for (chat, stop) in [(&lost[0], &lost_stop), (&lost[1], &early_stop), (&other, &other_stop)] {
        spells.iter_mut().find(|s| s.chat == *chat).unwrap().stop = Some(stop.at);
    }
    // Two calls for one chat within half an interval: the woken replica firing beside the
    // adopter. Checked over the whole run (no hand-over window: the frozen replica can send
    // nothing while it is frozen).
    let mut rules = Rules::new(interval, lifetime, end);
    rules.duplicate_ms = interval / 2.0;
    let f = check(&calls, &spells, &rules);
    let close = check(&calls, &spells, &Rules::new(interval, lifetime, end)).duplicates;
    let (gap_chat, gap) = f.max_gap();
    let after_wake = calls.iter().filter(|c| c.t > woke && lost.contains(&c.chat)).count();
    eprintln!(
        "{label}: {victim} owned {} of 60 chats; stop of its chat {} through r0 while frozen: {} {} in {:.1} ms; \
         stop through r2 of another's chat: {:.1} ms; longest gap {gap:.0} ms (chat {gap_chat}); \
         calls for its chats after SIGCONT {after_wake}; pairs closer than interval - 250 ms: {}",
        lost.len(),
        lost[0],
        lost_stop.status,
        lost_stop.outcome(),
        lost_stop.took_ms(),
        other_stop.took_ms(),
        close.len()
    );
    eprintln!(
        "{label}: stop of its chat {} through r2 sent {:.0} ms after SIGSTOP: {} {} in {:.0} ms (lease {lease} ms)",
        lost[1],
        early_stop.sent - frozen,
        early_stop.status,
        early_stop.outcome(),
        early_stop.took_ms()
    );
    eprintln!("{label}: {}", f.summary());
    assert_eq!((early_stop.status, early_stop.outcome()), (200, "stopped"), "{label}: {}", early_stop.body);
    assert_eq!((lost_stop.status, lost_stop.outcome()), (200, "stopped"), "{label}: {}", lost_stop.body);
    assert_eq!((other_stop.status, other_stop.outcome()), (200, "stopped"), "{label}: {}", other_stop.body);
    assert!(lost_stop.took_ms() <= lease + 1000.0, "{label}: the stop took {:.0} ms", lost_stop.took_ms());
    f.assert_clean(label);
    assert!(close.is_empty(), "{label}: two refire loops: {:?}", &close[..close.len().min(10)]);
    // Sessions stay covered: adopted within lease + interval, as after a kill.
    assert!(
        gap <= lease + interval + 500.0 + SLACK_MS,
        "{label}: chat {gap_chat} went {gap:.0} ms without a call while {victim} was frozen"
    );
    // A stop for a frozen owner's chat answers once its lease has lapsed (and the shard is
    // adopted: within lease + 0.5 s), not later.
    assert!(
        early_stop.took_ms() <= lease + 1000.0,
        "{label}: the stop sent just after SIGSTOP took {:.0} ms (lease {lease} ms)",
        early_stop.took_ms()
    );

    // The woken replica rejoins and serves hooks again: every chat is stopped through it.
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let mut spells = Vec::new();
    for c in chats.iter().filter(|c| **c != lost[0] && **c != lost[1] && **c != other) {
        let stop = hooks.stop(1, c).await;
        assert_eq!(
            (stop.status, stop.outcome()),
            (200, "stopped"),
            "{label}: chat {c} through {victim}: {}",
            stop.body
        );
        spells.push(Spell { chat: c.clone(), start: woke, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let f = check(&fleet.calls(woke).await, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    f.assert_clean(label);
    fleet.assert_no_panics();
}
