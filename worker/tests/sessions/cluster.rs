//! Sessions on a real Redis Cluster: three `redis-server` masters each test
//! starts and joins with `redis-cli --cluster create`. The SDK is given one
//! node's URL, as a user would, and must find the rest, send each session to
//! the master of its slot, follow a slot that moves (MOVED) or is moving
//! (ASK), flush a handoff across slots, and report session ends from every
//! master.

use crate::harness::{wait_until, RedisCluster};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{SessionId, SessionMode, Sessions, SessionsConfig};

const MINUTE: Duration = Duration::from_secs(60);
static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn cluster() -> RedisCluster {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    RedisCluster::start(&format!("cluster-{}-{n}", std::process::id())).await
}

fn config(cluster: &RedisCluster, mode: SessionMode, timeout: Duration) -> SessionsConfig {
    let mut config = SessionsConfig::new(Some(&cluster.url), mode, timeout);
    config.key_prefix = "shop:s:".into();
    config
}

async fn store_sessions(cluster: &RedisCluster) -> Sessions {
    Sessions::with_config(config(cluster, SessionMode::Store, MINUTE))
        .await
        .unwrap()
}

fn key(id: &SessionId) -> String {
    format!("shop:s:{}", id.as_str())
}

/// A new session with counter `n` = `value`, committed.
async fn session_with(sessions: &Sessions, value: i64) -> SessionId {
    let mut session = sessions.new_session().unwrap();
    session.set("n", &value).unwrap();
    assert!(sessions.commit(&mut session).await.unwrap().written);
    *session.id()
}

async fn counter(sessions: &Sessions, id: &SessionId) -> Option<i64> {
    let session = sessions.load(id).await.unwrap();
    session.get::<i64>("n").unwrap()
}

async fn increment(sessions: &Sessions, id: &SessionId) {
    let mut session = sessions.load(id).await.unwrap();
    session.incr("n", 1).unwrap();
    sessions.commit(&mut session).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_every_master_and_another_worker_reads_them() {
    let cluster = cluster().await;
    let first = store_sessions(&cluster).await;
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(session_with(&first, i).await);
    }
    // Each master holds some: the SDK wrote each key where its slot lives
    // (a wrong node would have answered MOVED, not stored it).
    for &port in &cluster.ports {
        let keys: i64 = cluster.query(port, redis::cmd("DBSIZE")).await.unwrap();
        assert!(keys > 0, "master {port} holds none of 300 sessions");
    }
    // A second worker, given the same single-node URL, reads every one.
    let second = store_sessions(&cluster).await;
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(counter(&second, id).await, Some(i as i64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_on_a_cluster_lose_no_update() {
    let cluster = cluster().await;
    let sessions = Arc::new(store_sessions(&cluster).await);
    let id = session_with(&sessions, 0).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let sessions = Arc::clone(&sessions);
        tasks.push(tokio::spawn(async move { increment(&sessions, &id).await }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(counter(&sessions, &id).await, Some(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_being_migrated_and_then_moved_is_followed() {
    let cluster = cluster().await;
    let sessions = store_sessions(&cluster).await;
    let id = session_with(&sessions, 1).await;
    let from = cluster.owner(&key(&id)).await;
    let to = *cluster.ports.iter().find(|&&p| p != from).unwrap();

    // Mid-migration: the key is already on `to`, `from` answers ASK.
    let slot = cluster.begin_move(&key(&id), from, to).await;
    let asked: redis::RedisResult<Option<String>> = cluster
        .query(from, redis::cmd("GET").arg(key(&id)).clone())
        .await;
    assert_eq!(
        asked.unwrap_err().kind(),
        redis::ErrorKind::Ask,
        "the source must redirect with ASK during the move"
    );
    assert_eq!(counter(&sessions, &id).await, Some(1));
    increment(&sessions, &id).await;

    // Moved for good: the SDK's slot map is stale and `from` says MOVED.
    cluster.finish_move(slot, to).await;
    let moved: redis::RedisResult<Option<String>> = cluster
        .query(from, redis::cmd("GET").arg(key(&id)).clone())
        .await;
    assert_eq!(moved.unwrap_err().kind(), redis::ErrorKind::Moved);
    increment(&sessions, &id).await;
    assert_eq!(counter(&sessions, &id).await, Some(3));
    assert_eq!(cluster.owner(&key(&id)).await, to);
    sessions.abandon(&id).await.unwrap();
    assert_eq!(counter(&sessions, &id).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_flushes_sessions_of_every_slot_and_the_successor_waits_for_it() {
    let cluster = cluster().await;
    let pid = std::process::id();
    let mut old_config = config(&cluster, SessionMode::Handoff, MINUTE);
    old_config.pid = pid;
    let old = Sessions::with_config(old_config).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..2000 {
        ids.push(session_with(&old, i).await);
    }
    // Held in memory only, so far.
    for &port in &cluster.ports {
        let stored: i64 = cluster.query(port, redis::cmd("DBSIZE")).await.unwrap();
        assert_eq!(stored, 0);
    }

    // The successor (another pid) waits for the old one's marker: this
    // process stays alive, so only the marker can release it.
    let mut new_config = config(&cluster, SessionMode::Handoff, MINUTE);
    new_config.pid = pid.wrapping_add(1);
    new_config.predecessors = vec![pid];
    new_config.predecessor_wait = Duration::from_secs(120);
    let new = Sessions::with_config(new_config).await.unwrap();

    let report = old.begin_handoff().await.unwrap();
    assert_eq!(report.flushed, 2000);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(counter(&new, id).await, Some(i as i64));
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the successor read only after its wait bound, not after the marker"
    );
    let mut per_master = Vec::new();
    for &port in &cluster.ports {
        let keys: i64 = cluster.query(port, redis::cmd("DBSIZE")).await.unwrap();
        per_master.push(keys);
    }
    assert!(per_master.iter().all(|&k| k > 0), "{per_master:?}");
    // 2000 sessions + the marker.
    assert_eq!(per_master.iter().sum::<i64>(), 2001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ends_are_reported_from_every_master() {
    let cluster = cluster().await;
    let short = Duration::from_millis(300);
    let sessions = Sessions::with_config(config(&cluster, SessionMode::Store, short))
        .await
        .unwrap();
    let mut ends = sessions.on_end().await.unwrap();
    let mut expected = std::collections::HashSet::new();
    let mut owners = std::collections::HashSet::new();
    for i in 0..30 {
        let id = session_with(&sessions, i).await;
        owners.insert(cluster.owner(&key(&id)).await);
        expected.insert(id);
    }
    assert_eq!(owners.len(), 3, "30 sessions should land on all 3 masters");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !expected.is_empty() {
        let ended = tokio::time::timeout_at(deadline.into(), ends.recv())
            .await
            .unwrap_or_else(|_| panic!("{} sessions never reported ended", expected.len()))
            .expect("subscriber alive");
        expected.remove(&ended);
    }
    wait_until("the keys are gone", async || {
        let mut total = 0;
        for &port in &cluster.ports {
            total += cluster
                .query::<i64>(port, redis::cmd("DBSIZE"))
                .await
                .unwrap();
        }
        total == 0
    })
    .await;
}
