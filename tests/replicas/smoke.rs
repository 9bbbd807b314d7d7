//! The harness itself: three replicas come up on one Redis, see each other, split the shards,
//! and one session started on one replica types through whichever owns it.

use std::time::Duration;

use crate::checker::{Rules, Spell, check};
use crate::fleet::{Fleet, Params, SHARDS, TempDir, owners, serial};
use crate::servers::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_split_the_shards_and_type() {
    let _serial = serial().await;
    let dir = TempDir::new("smoke");
    let redis = Redis::single(&dir.0).await;
    let params = Params::default();
    let mut fleet = Fleet::start(&redis, &dir.0, 3, params.clone()).await;

    // Every replica reports the Redis backend, its own id and the other two; the shards are
    // all owned, and spread (no replica owns every shard).
    let states = fleet.wait_shards_settled(&[0, 1, 2], 3, Duration::from_secs(3 * params.lease_ms / 1000 + 5)).await;
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s["backend"], "redis", "{s}");
        assert_eq!(s["replica"], fleet.replicas[i].id.as_str(), "{s}");
    }
    let owned: Vec<u64> = states.iter().map(|s| s["shards_owned"].as_u64().unwrap()).collect();
    eprintln!("smoke: shards owned per replica {owned:?}");
    assert!(owned.iter().all(|n| *n < SHARDS as u64), "one replica owns every shard: {owned:?}");
    let table = redis.cli(&["HLEN", "kt:{ctl}:owners"]).await;
    assert_eq!(table.trim(), SHARDS.to_string(), "kt:{{ctl}}:owners holds {table}");

    // One chat started on r0, stopped on r2: typed on cadence, nothing after the stop.
    let hooks = fleet.hooks();
    let chat = "4100001".to_owned();
    let start = hooks.start(0, &chat).await;
    assert_eq!((start.status, start.outcome()), (200, "started"), "{}", start.body);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let owner = owners(&redis, std::slice::from_ref(&chat)).await;
    eprintln!("smoke: chat {chat} owned by {:?}", owner.get(&chat));
    tokio::time::sleep(Duration::from_millis(params.interval_ms * 3)).await;
    let stop = hooks.stop(2, &chat).await;
    assert_eq!((stop.status, stop.outcome()), (200, "stopped"), "{}", stop.body);
    tokio::time::sleep(Duration::from_millis(params.interval_ms + 500)).await;
    let calls = fleet.calls(0.0).await;
    let spells = [Spell { chat: chat.clone(), start: start.sent, stop: Some(stop.at) }];
    let f = check(&calls, &spells, &Rules::new(params.interval_ms as f64, params.lifetime_ms as f64, stop.at));
    eprintln!("smoke: {}; stop took {:.1} ms", f.summary(), stop.took_ms());
    f.assert_clean("smoke");
    assert!((3..=5).contains(&f.calls), "{} typing calls in about 3 intervals", f.calls);
    assert!(f.first_call[&chat].is_some_and(|d| d < 200.0), "first call: {:?}", f.first_call);
    fleet.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_an_unreachable_redis_exits_with_one_line_naming_it_and_never_the_password() {
    let _serial = serial().await;
    let dir = TempDir::new("unreachable");
    // Nobody listens on this port.
    let port = crate::child::free_port();
    let log = dir.0.join("serve.log");
    let mut serve = crate::child::Kill(
        crate::child::serve(crate::child::free_port(), crate::child::free_port(), "http://127.0.0.1:9", "k", "t")
            .env("KEEPTYPING__STATE__BACKEND", "redis")
            .env("KEEPTYPING_REDIS_URL", format!("redis://:hunter2-secret@127.0.0.1:{port}"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = tokio::time::Instant::now();
    let status = loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "serve still running 15 s without its Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!("unreachable Redis: exit {status} after {:?}: {}", started.elapsed(), text.trim());
    assert!(!status.success(), "serve exited 0 without its Redis");
    assert!(text.contains(&format!("state: cannot reach Redis at 127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "the password reached the log: {text}");
}
