//! A chat capped after `engine.max_lifetime` stays capped when its owner dies: the cap is
//! recorded with the chat, the replica taking the shard over answers its starts `capped` and
//! sends nothing, and a stop through any replica lifts it, as in one process.

use std::time::Duration;

use crate::fleet::{Fleet, Params, TempDir, owners, serial};
use crate::servers::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_chat_stays_capped_when_its_owner_dies_and_a_stop_lifts_the_cap() {
    let _serial = serial().await;
    let dir = TempDir::new("capped");
    let redis = Redis::single(&dir.0).await;
    let params =
        Params::default().env("KEEPTYPING__ENGINE__MAX_LIFETIME", "3s").env("KEEPTYPING__ENGINE__IDLE_TIMEOUT", "3s");
    let lease = params.lease_ms;
    let mut fleet = Fleet::start(&redis, &dir.0, 3, params).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();
    let chat = "7100001".to_owned();
    let owner = loop {
        let a = hooks.start(0, &chat).await;
        assert_eq!(a.status, 200, "start: {}", a.body);
        if let Some(o) = owners(&redis, std::slice::from_ref(&chat)).await.get(&chat) {
            break o.clone();
        }
    };
    let victim = fleet.replicas.iter().position(|r| r.id == owner).unwrap();
    let via = (victim + 1) % 3;
    // The chat tool re-sends its start every 200 ms: one session of 3 s, then `capped`. (The
    // idle lease, 3 s as well, outlasts the failover below, as the default 30 s outlasts a 2 s
    // lease: a cap ends when starts pause for that long.)
    let started = fleet.clock.now();
    let mut outcomes = Vec::new();
    while fleet.clock.now() - started < 4000.0 {
        let a = hooks.start(via, &chat).await;
        assert_eq!(a.status, 200, "start: {}", a.body);
        outcomes.push(a.outcome().to_owned());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(outcomes.last().map(String::as_str), Some("capped"), "before the kill: {outcomes:?}");
    // Its owner dies; the starts keep coming through another replica.
    let killed = fleet.clock.now();
    fleet.kill9(victim);
    let mut after = Vec::new();
    while fleet.clock.now() - killed < lease as f64 + 2500.0 {
        let a = hooks.start(via, &chat).await;
        after.push((a.status, a.outcome().to_owned()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = fleet.calls(killed).await;
    let sent: Vec<f64> = calls.iter().filter(|c| c.chat == chat).map(|c| c.t - killed).collect();
    let adopter = owners(&redis, std::slice::from_ref(&chat)).await.get(&chat).cloned();
    eprintln!(
        "capped: owner {owner} killed; starts after the kill {after:?}; taken over by {adopter:?}; typing calls {sent:?}"
    );
    // Nothing but `capped` (or a 503 while the shard had no owner), and no typing call.
    assert!(after.iter().all(|(s, o)| (*s == 200 && o == "capped") || *s == 503), "after the kill: {after:?}");
    assert!(after.last().is_some_and(|(s, o)| *s == 200 && o == "capped"), "after the kill: {after:?}");
    assert!(adopter.is_some_and(|a| a != owner), "the shard was not taken over");
    assert!(sent.is_empty(), "typing calls for a capped chat after its owner died: {sent:?}");
    // A stop through any replica lifts the cap: the next start opens a new session.
    let stop = hooks.stop((via + 1) % 3, &chat).await;
    assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "stop: {}", stop.body);
    let again = hooks.start(via, &chat).await;
    assert_eq!((again.status, again.outcome()), (200, "started"), "start after the stop: {}", again.body);
    fleet.assert_no_panics();
}
