//! Redis unavailable: hooks answer 503 `state_unavailable` with `Retry-After` within 1 s,
//! `/readyz` stays 200, owners stop refiring once their leases lapse, and when Redis is back
//! the sessions it still holds resume within one interval and new starts work. Two ways: Redis
//! frozen for 4 s (SIGSTOP, then SIGCONT: no data lost) and Redis killed and restarted empty.
//! Each runs on a single Redis and on a local three-master Redis Cluster, where every node is
//! frozen and thawed at the same instant (one signal to all three, so that no node answers
//! before the others), or killed at once and restarted on its port with its `nodes.conf`, so
//! that the same cluster re-forms with every node empty.

use std::time::Duration;

use serde_json::json;

use crate::checker::{Rules, Spell, by_chat, check};
use crate::fleet::{ACCOUNT, Answer, Fleet, Hooks, Params, TempDir, chats, serial};
use crate::servers::Redis;

/// A start for a new chat and a stop for a live one on every replica, all at once, each with a
/// 3 s client timeout: every answer must be a 503 `state_unavailable` with `Retry-After`, within
/// 1 s.
async fn probe(hooks: &Hooks, new_chat: u64, live: &[String], label: &str, phase: &str) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for (r, live_chat) in live.iter().enumerate().take(hooks.urls.len()) {
        let start = json!({"account_id": ACCOUNT, "chat_id": (new_chat + r as u64).to_string()});
        let stop = json!({"account_id": ACCOUNT, "chat_id": live_chat});
        for (path, body) in [("/v1/typing/start", start), ("/v1/typing/stop", stop)] {
            let hooks = hooks.clone();
            tasks.push(tokio::spawn(async move { hooks.post_timeout(r, path, &body, Duration::from_secs(3)).await }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let took: Vec<String> = answers.iter().map(|a| format!("{} {:.0}ms", a.status, a.took_ms())).collect();
    eprintln!("{label}: hooks {phase}: {took:?}");
    for a in &answers {
        assert_eq!(a.status, 503, "{label} ({phase}): answered {} {}", a.status, a.body);
        assert_eq!(a.error_code().as_deref(), Some("state_unavailable"), "{label} ({phase}): {}", a.body);
        assert!(a.retry_after.is_some(), "{label} ({phase}): no Retry-After on {}", a.body);
        assert!(a.took_ms() <= 1000.0, "{label} ({phase}): answered after {:.0} ms", a.took_ms());
    }
    answers
}

async fn assert_ready(fleet: &Fleet, label: &str) {
    for i in 0..fleet.replicas.len() {
        let (status, _) = fleet.admin_get(i, "/readyz").await;
        assert_eq!(status, 200, "{label}: /readyz of {} answered {status}", fleet.replicas[i].id);
    }
}

/// Starts `chat` on each replica in turn, every 100 ms, until one answers `started`; gives the
/// answer, which replica gave it, and the statuses answered before.
async fn start_until_works(hooks: &Hooks, chat: &str, within: Duration, label: &str) -> (Answer, usize, Vec<u16>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut before = Vec::new();
    let mut r = 0;
    loop {
        let replica = r % hooks.urls.len();
        let a = hooks
            .post_timeout(replica, "/v1/typing/start", &crate::fleet::chat_body(chat), Duration::from_secs(2))
            .await;
        if a.status == 200 {
            assert_eq!(a.outcome(), "started", "{label}: {}", a.body);
            return (a, replica, before);
        }
        before.push(a.status);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: starts still failing after {within:?}: {} {} (before: {before:?})",
            a.status,
            a.body
        );
        r += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_frozen_hooks_answer_503_owners_stop_and_everything_resumes() {
    let _serial = serial().await;
    let dir = TempDir::new("redis-frozen");
    let redis = Redis::single(&dir.0).await;
    redis_frozen(redis, &dir.0, "Redis frozen").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_while_every_node_is_frozen_hooks_answer_503_owners_stop_and_everything_resumes() {
    let _serial = serial().await;
    let dir = TempDir::new("redis-frozen-cluster");
    let redis = Redis::cluster(&dir.0).await;
    redis_frozen(redis, &dir.0, "Redis frozen, cluster").await;
}

/// The frozen-Redis test itself, on a single Redis or on a cluster (every node frozen).
pub async fn redis_frozen(redis: Redis, dir: &std::path::Path, label: &str) {
    let params = Params::default();
    let (interval, lifetime, lease) = (params.interval_ms as f64, params.lifetime_ms as f64, params.lease_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();
    let chats = chats(8_100_000, 30);
    hooks.start_all(&chats).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;

    // Act: Redis (every node of a cluster) is frozen for 4 s: it answers nothing, its data
    // stays.
    let frozen = fleet.clock.now();
    redis.freeze();
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe(&hooks, 8_190_000, &chats, label, "at once").await;
    assert_ready(&fleet, label).await;
    let later = frozen + lease + 500.0 - fleet.clock.now();
    tokio::time::sleep(Duration::from_millis(later.max(0.0) as u64)).await;
    probe(&hooks, 8_190_010, &chats, label, "after the lease").await;
    assert_ready(&fleet, label).await;
    assert!(fleet.clock.now() < frozen + 3500.0, "{label}: the probes outlasted the freeze");
    let until = frozen + 4000.0 - fleet.clock.now();
    tokio::time::sleep(Duration::from_millis(until.max(0.0) as u64)).await;
    // Nothing can answer before this instant.
    let back = fleet.clock.now();
    redis.thaw();
    tokio::time::sleep(Duration::from_millis((2.0 * interval) as u64 + 500)).await;

    let calls = fleet.calls(frozen - interval).await;
    let per_chat = by_chat(&calls);
    // Owners fence themselves: nothing from lease (+ tick and wire) after the freeze began
    // until Redis was back.
    let fenced_from = frozen + lease + 200.0;
    let during: Vec<f64> = calls.iter().filter(|c| c.t > fenced_from && c.t < back).map(|c| c.t - frozen).collect();
    let last_before = calls.iter().filter(|c| c.t < back).map(|c| c.t - frozen).fold(f64::MIN, f64::max);
    // Every session resumes within one interval of Redis answering again; the three whose stop
    // was answered 503 during the freeze may or may not have ended (a 503 says "retry", not
    // "nothing happened"), so they are reported, not required.
    let probed = &chats[..3];
    let resumed: Vec<f64> = chats[3..]
        .iter()
        .map(|c| per_chat.get(c).and_then(|ts| ts.iter().find(|t| **t > back)).map_or(f64::MAX, |t| t - back))
        .collect();
    let slowest = resumed.iter().copied().fold(0.0, f64::max);
    let silent: Vec<&String> =
        chats[3..].iter().zip(&resumed).filter(|(_, t)| **t == f64::MAX).map(|(c, _)| c).collect();
    let probed_after: Vec<usize> =
        probed.iter().map(|c| per_chat.get(c).map_or(0, |ts| ts.iter().filter(|t| **t > back).count())).collect();
    let ghost_starts = calls.iter().filter(|c| c.chat.starts_with("81900") && c.t > back).count();
    eprintln!(
        "{label}: Redis frozen for {:.0} ms; last typing call {last_before:.0} ms after the freeze began \
         (calls later than lease + 200 ms: {}); every chat typing again within {slowest:.0} ms of Redis answering; \
         {} of 27 chats never typed again: {silent:?}; the chats whose stop got a 503 during the freeze, \
         {probed:?}, typed {probed_after:?} times after it; the chats whose start got a 503, {ghost_starts} times",
        back - frozen,
        during.len(),
        silent.len(),
    );
    assert!(during.is_empty(), "{label}: typing calls without a valid lease, at +{during:?} ms");
    assert!(slowest <= interval, "{label}: a chat resumed {slowest:.0} ms after Redis was back");

    // New starts work again, and stops: nothing fires after them. The chats whose stop got a
    // 503 may have ended already; the chats whose start got a 503 may be typing.
    let (fresh, _, failed) = start_until_works(&hooks, "8199999", Duration::from_secs(5), label).await;
    eprintln!(
        "{label}: a new start sent {:.0} ms after Redis was back answered {} in {:.1} ms, after {} refusals {failed:?}",
        fresh.sent - back,
        fresh.outcome(),
        fresh.took_ms(),
        failed.len()
    );
    let mut spells = Vec::new();
    let before = fleet.clock.now();
    let maybe: Vec<String> = (0..3)
        .flat_map(|r| [8_190_000 + r, 8_190_010 + r])
        .map(|c: u64| c.to_string())
        .chain(probed.to_vec())
        .collect();
    for (i, c) in chats[3..].iter().chain(std::iter::once(&"8199999".to_owned())).chain(&maybe).enumerate() {
        let stop = hooks.stop(i % 3, c).await;
        let may_be_gone = maybe.contains(c) && stop.outcome() == "not_found";
        assert!(
            stop.status == 200 && (stop.outcome() == "stopped" || may_be_gone),
            "{label}: chat {c}: {} {}",
            stop.status,
            stop.body
        );
        spells.push(Spell { chat: c.clone(), start: before, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let f = check(&fleet.calls(before).await, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    f.assert_clean(label);
    fleet.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_is_killed_hooks_answer_503_and_after_a_restart_new_starts_work() {
    let _serial = serial().await;
    let dir = TempDir::new("redis-killed");
    let redis = Redis::single(&dir.0).await;
    redis_killed(redis, &dir.0, "Redis killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_when_every_node_is_killed_hooks_answer_503_and_after_a_restart_new_starts_work() {
    let _serial = serial().await;
    let dir = TempDir::new("redis-killed-cluster");
    let redis = Redis::cluster(&dir.0).await;
    redis_killed(redis, &dir.0, "Redis killed, cluster").await;
}

/// The killed-Redis test itself, on a single Redis or on a cluster (every node killed, then
/// restarted empty).
pub async fn redis_killed(mut redis: Redis, dir: &std::path::Path, label: &str) {
    let params = Params::default();
    let (interval, lifetime, lease) = (params.interval_ms as f64, params.lifetime_ms as f64, params.lease_ms as f64);
    let mut fleet = Fleet::start(&redis, dir, 3, params.clone()).await;
    fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(6)).await;
    let hooks = fleet.hooks();
    let chats = chats(8_200_000, 30);
    hooks.start_all(&chats).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Act: SIGKILL Redis (every node of a cluster); hooks fail fast, readiness holds, owners
    // stop once their leases lapse.
    let killed = fleet.clock.now();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe(&hooks, 8_290_000, &chats, label, "at once").await;
    assert_ready(&fleet, label).await;
    let later = killed + lease + 500.0 - fleet.clock.now();
    tokio::time::sleep(Duration::from_millis(later.max(0.0) as u64)).await;
    probe(&hooks, 8_290_010, &chats, label, "after the lease").await;
    assert_ready(&fleet, label).await;
    let restarting = fleet.clock.now();
    // Every node starts again, empty; a cluster re-forms from its nodes' config files.
    redis.restart().await;
    let back = fleet.clock.now();

    // New starts work again once the replicas reconnect.
    let (fresh, fresh_on, failed) = start_until_works(&hooks, "8299999", Duration::from_secs(10), label).await;
    tokio::time::sleep(Duration::from_millis((2.0 * interval) as u64 + 500)).await;
    let calls = fleet.calls(killed - interval).await;
    let fenced_from = killed + lease + 200.0;
    let during: Vec<f64> =
        calls.iter().filter(|c| c.t > fenced_from && c.t < restarting).map(|c| c.t - killed).collect();
    let old_after: usize = calls.iter().filter(|c| c.t > back && chats.contains(&c.chat)).count();
    let fresh_calls = calls.iter().filter(|c| c.chat == "8299999").count();
    eprintln!(
        "{label}: Redis down for {:.0} ms, up again {:.0} ms after its restart began; first successful start \
         {:.0} ms after Redis was up again (refusals before: {failed:?}); calls later than lease + 200 ms \
         while it was down: {}; the new chat's calls: {fresh_calls}; calls for the sessions lost with Redis's \
         data after the restart: {old_after}",
        restarting - killed,
        back - restarting,
        fresh.at - back,
        during.len()
    );
    assert!(during.is_empty(), "{label}: typing calls without a valid lease, at +{during:?} ms");
    assert!(fresh_calls >= 2, "{label}: the chat started after the restart is not typing ({fresh_calls} calls)");

    // Every replica serves hooks again; the new chat stops through another replica.
    for r in 0..3 {
        let chat = format!("82999{r}0");
        let a = retried(label, || hooks.start(r, &chat)).await;
        assert_eq!((a.status, a.outcome()), (200, "started"), "{label}: start on {}: {}", fleet.replicas[r].id, a.body);
    }
    let stop = retried(label, || hooks.stop((fresh_on + 1) % 3, "8299999")).await;
    assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: {}", stop.body);
    let mut spells = vec![Spell { chat: "8299999".into(), start: fresh.sent, stop: Some(stop.at) }];
    for r in 0..3 {
        let chat = format!("82999{r}0");
        let stop = retried(label, || hooks.stop((r + 2) % 3, &chat)).await;
        assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{label}: {}", stop.body);
        spells.push(Spell { chat, start: fresh.sent, stop: Some(stop.at) });
    }
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let f = check(&fleet.calls(fresh.sent).await, &spells, &Rules::new(interval, lifetime, fleet.clock.now()));
    f.assert_clean(label);
    fleet.assert_no_panics();
}

/// A hook answered 503 is sent again, as the answer asks, for up to 5 s: a Redis Cluster that has
/// just been restarted can report itself down for a moment after it first answered (its nodes
/// still agreeing that they are all up). A replica that stays unable to serve fails the test.
async fn retried<F, Fut>(label: &str, mut call: F) -> Answer
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let a = call().await;
        if a.status != 503 || tokio::time::Instant::now() >= deadline {
            return a;
        }
        eprintln!("{label}: a hook answered 503 after the restart, sent again: {}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
