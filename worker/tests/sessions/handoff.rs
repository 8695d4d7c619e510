//! The handoff protocol of overlapped recycles (see "Overlapped recycles" in
//! `appvisor_worker::sessions`), against a real store, once per backend (the
//! embedded store in this process, and a `redis-server` or the one named by
//! `APPVISOR_TEST_STORE_URL`), with a key prefix per test.
//!
//! Two `Sessions` in this process play generation N and N+1. N's pid is
//! played by a real child process (`sleep`), so N+1's liveness checks look at
//! a real process that the test kills when N "exits"; N writes its marker
//! under that pid.

use crate::harness::{per_backend, Backend, TestStore};

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{SessionId, SessionMode, Sessions, SessionsConfig};
use tokio::sync::Notify;

const MINUTE: Duration = Duration::from_secs(60);
/// Long enough that no test passes because the bound let a read through.
const NO_BOUND: Duration = Duration::from_secs(120);
/// How long a test gives anything that must finish.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- harness

impl TestStore {
    fn config(&self) -> SessionsConfig {
        let mut config = SessionsConfig::new(Some(&self.url), SessionMode::Handoff, MINUTE);
        config.key_prefix = self.prefix.clone();
        config.predecessor_wait = NO_BOUND;
        config
    }

    /// Generation N: a handoff worker whose pid is `pid`.
    async fn old(&self, pid: u32) -> Sessions {
        let mut config = self.config();
        config.pid = pid;
        Sessions::with_config(config).await.unwrap()
    }

    /// Generation N+1: replaces the worker `predecessor`.
    async fn successor(&self, predecessor: u32, wait: Duration) -> Sessions {
        let mut config = self.config();
        config.predecessors = vec![predecessor];
        config.predecessor_wait = wait;
        Sessions::with_config(config).await.unwrap()
    }

    async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.raw().await)
            .await
            .unwrap()
    }

    fn marker(&self, pid: u32) -> String {
        format!("{}handoff:{pid}", self.prefix)
    }

    /// The counter `n` as the store holds it (no SDK in between).
    async fn stored_n(&self, id: &SessionId) -> Option<i64> {
        let raw = self.get(&format!("{}{}", self.prefix, id.as_str())).await?;
        let (_, json) = raw.split_once('\n').expect("as1 header");
        let data: serde_json::Value = serde_json::from_str(json).unwrap();
        data["n"].as_i64()
    }
}

/// A real process standing in for generation N: its pid is alive until
/// [`exit`](StandIn::exit), and reaped then, as the supervisor would.
struct StandIn(Child);

impl StandIn {
    fn spawn() -> StandIn {
        StandIn(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("cannot run `sleep`"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn exit(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.exit();
    }
}

/// Loads `id` from `sessions`, adds one to `n`, commits; the new value.
async fn bump(sessions: &Sessions, id: &SessionId) -> i64 {
    let mut s = sessions.load(id).await.unwrap();
    let n = s.incr("n", 1).unwrap();
    sessions.commit(&mut s).await.unwrap();
    n
}

/// A session with `n` = `value`, committed in `sessions`' memory.
async fn session_at(sessions: &Sessions, value: i64) -> SessionId {
    let mut s = sessions.new_session().unwrap();
    s.set("n", &value).unwrap();
    sessions.commit(&mut s).await.unwrap();
    *s.id()
}

// ------------------------------------------------------------------ tests

async fn successor_load_waits_for_the_handoff_and_sees_the_latest_value(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    // The store has an old copy (n = 5); the newest (n = 10) is dirty in N.
    let id = session_at(&old, 5).await;
    old.flush_dirty().await.unwrap();
    for want in 6..=10 {
        assert_eq!(bump(&old, &id).await, want);
    }
    assert_eq!(store.stored_n(&id).await, Some(5));
    let mut others = Vec::new();
    for i in 0..300 {
        others.push((session_at(&old, i).await, i));
    }

    let new = store.successor(stand_in.pid(), NO_BOUND).await;
    let reader = {
        let new = new.clone();
        tokio::spawn(async move { new.load(&id).await.unwrap() })
    };
    let mut reader = std::pin::pin!(reader);
    // N has not begun its handoff: N+1's read must still be waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut reader)
            .await
            .is_err(),
        "N+1 read the store before N handed off"
    );
    // A new session needs no store read, so it does not wait.
    let fresh = tokio::time::timeout(DEADLINE, session_at(&new, 1)).await;
    assert!(fresh.is_ok(), "a new session waited for the predecessor");

    let report = old.begin_handoff().await.unwrap();
    assert_eq!(report.flushed, 301);
    let seen = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.get::<i64>("n").unwrap(), Some(10), "N's latest value");
    for (other, i) in &others {
        let s = new.load(other).await.unwrap();
        assert_eq!(s.get::<i64>("n").unwrap(), Some(*i));
    }

    // The marker N+1 waited for.
    assert_eq!(
        store.get(&store.marker(stand_in.pid())).await.as_deref(),
        Some("flushed")
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(store.marker(stand_in.pid()))
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "marker TTL {ttl}");

    // Idempotent: the same report again; drain finds nothing left.
    assert_eq!(old.begin_handoff().await.unwrap().flushed, 301);
    assert_eq!(old.drain().await.unwrap().flushed, 0);
}

async fn a_hot_session_alternating_between_generations_stays_monotonic(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let mut stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    let id = session_at(&old, 0).await;
    for want in 1..=50 {
        assert_eq!(bump(&old, &id).await, want);
    }
    let new = store.successor(stand_in.pid(), NO_BOUND).await;
    old.begin_handoff().await.unwrap();

    // N is handed off (write-through), N+1 joins (write-through while N
    // lives): each increment, wherever it lands, sees the one before.
    let mut n = 50;
    for i in 0..400 {
        let generation = if i % 3 == 0 { &new } else { &old };
        n += 1;
        assert_eq!(bump(generation, &id).await, n, "request {i}");
        assert_eq!(store.stored_n(&id).await, Some(n), "written through");
    }
    assert_eq!(new.resident(), 0, "nothing kept in memory while N lives");

    // N exits: N+1 goes back to memory and keeps counting.
    stand_in.exit();
    for _ in 0..100 {
        n += 1;
        assert_eq!(bump(&new, &id).await, n);
    }
    assert_eq!(new.resident(), 1, "memory again once N is gone");
    assert!(
        store.stored_n(&id).await < Some(n),
        "commits stay in memory again"
    );
    assert_eq!(new.drain().await.unwrap().flushed, 1);
    assert_eq!(store.stored_n(&id).await, Some(n));
}

/// Many users, each a sequential client whose requests land on either
/// generation at random — N+1 gets some before N is even told to stop —
/// while N hands off mid-stream and later exits: every response is exactly
/// the previous one plus one, and the store ends with every increment.
async fn users_served_by_both_generations_through_a_recycle_see_every_increment_in_order(
    backend: Backend,
) {
    const USERS: usize = 16;
    const REQUESTS: usize = 200;
    let store = TestStore::start(backend, "h", &[]).await;
    let mut stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        users.push(session_at(&old, 0).await);
    }
    // Ballast: a flush long enough for requests to land inside it.
    for i in 0..3000 {
        session_at(&old, i).await;
    }
    let new = store.successor(stand_in.pid(), NO_BOUND).await;

    let sent_to_new = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let old_in_flight = Arc::new(AtomicUsize::new(0));
    let old_stopped = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Notify::new());

    let clients: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(u, id)| {
            let (old, new, id) = (old.clone(), new.clone(), *id);
            let (sent_to_new, answered, old_in_flight, old_stopped, progress) = (
                sent_to_new.clone(),
                answered.clone(),
                old_in_flight.clone(),
                old_stopped.clone(),
                progress.clone(),
            );
            tokio::spawn(async move {
                let mut random = 0x9E37_79B9_7F4A_7C15u64 ^ (u as u64 + 1);
                for i in 0..REQUESTS {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    // N takes requests only until it stops (it answers those
                    // in flight); the in-flight count is raised before the
                    // stop flag is checked, so the exit below waits for it.
                    old_in_flight.fetch_add(1, Ordering::SeqCst);
                    let on_old = random.is_multiple_of(2) && !old_stopped.load(Ordering::SeqCst);
                    if !on_old {
                        old_in_flight.fetch_sub(1, Ordering::SeqCst);
                        sent_to_new.fetch_add(1, Ordering::SeqCst);
                        progress.notify_waiters();
                    }
                    let n = bump(if on_old { &old } else { &new }, &id).await;
                    if on_old {
                        old_in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    assert_eq!(
                        n,
                        i as i64 + 1,
                        "user {u} request {i} on {}",
                        if on_old { "N" } else { "N+1" }
                    );
                    answered.fetch_add(1, Ordering::SeqCst);
                    progress.notify_waiters();
                }
            })
        })
        .collect();

    // Some requests reach N+1 (and wait there) before N is told to stop.
    wait_until(&progress, "3 requests went to N+1", || {
        sent_to_new.load(Ordering::SeqCst) >= 3
    })
    .await;
    let report = old.begin_handoff().await.unwrap();
    assert!(report.flushed >= 3000, "flushed {}", report.flushed);

    // Half-way, N stops taking requests, finishes those in flight, exits.
    wait_until(&progress, "half the requests were answered", || {
        answered.load(Ordering::SeqCst) >= USERS * REQUESTS / 2
    })
    .await;
    old_stopped.store(true, Ordering::SeqCst);
    wait_until(&progress, "N finished its requests", || {
        old_in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    stand_in.exit();

    for client in clients {
        tokio::time::timeout(DEADLINE, client)
            .await
            .expect("clients finish")
            .unwrap();
    }
    assert!(new.resident() > 0, "N+1 went back to memory after N exited");
    assert_eq!(old.drain().await.unwrap().flushed, 0);
    new.drain().await.unwrap();
    for id in &users {
        assert_eq!(store.stored_n(id).await, Some(REQUESTS as i64));
    }
}

/// Waits for `done` on `progress` notifications, checking at least every
/// 10 ms, for at most [`DEADLINE`].
async fn wait_until(progress: &Notify, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        let _ = tokio::time::timeout(Duration::from_millis(10), progress.notified()).await;
    }
}

async fn a_dead_predecessor_does_not_block(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let mut stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    let id = session_at(&old, 7).await;
    old.flush_dirty().await.unwrap();
    let new = store.successor(stand_in.pid(), NO_BOUND).await;
    let reader = {
        let new = new.clone();
        tokio::spawn(async move { new.load(&id).await.unwrap() })
    };
    let mut reader = std::pin::pin!(reader);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut reader)
            .await
            .is_err(),
        "N+1 read the store while N lived without a marker"
    );
    // N dies without handing off (a crash): N+1 goes on with the store copy.
    stand_in.exit();
    let seen = tokio::time::timeout(DEADLINE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.get::<i64>("n").unwrap(), Some(7));
    // And is in memory mode at once: this commit stays in memory.
    assert_eq!(bump(&new, &id).await, 8);
    assert_eq!(new.resident(), 1);
    assert_eq!(store.stored_n(&id).await, Some(7));

    // A predecessor already dead when the successor starts: no wait at all.
    let newer = store.successor(stand_in.pid(), NO_BOUND).await;
    let s = tokio::time::timeout(DEADLINE, newer.load(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get::<i64>("n").unwrap(), Some(7));
}

async fn the_wait_for_a_silent_predecessor_is_bounded(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    let id = session_at(&old, 3).await;
    old.flush_dirty().await.unwrap();
    // N lives on and never hands off (an old binary, a hung drain).
    let bound = Duration::from_millis(300);
    let new = store.successor(stand_in.pid(), bound).await;
    let started = Instant::now();
    let s = tokio::time::timeout(DEADLINE, new.load(&id))
        .await
        .expect("the wait ends at its bound")
        .unwrap();
    assert!(
        started.elapsed() >= bound,
        "it did wait for the predecessor"
    );
    assert_eq!(s.get::<i64>("n").unwrap(), Some(3));
    // Once given up, never again: a second miss goes straight to the store.
    let other = session_at(&old, 4).await;
    old.flush_dirty().await.unwrap();
    let s = tokio::time::timeout(DEADLINE, new.load(&other))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.get::<i64>("n").unwrap(), Some(4));
    // N still lives, so N+1 still writes through.
    assert_eq!(bump(&new, &id).await, 4);
    assert_eq!(store.stored_n(&id).await, Some(4));
    assert_eq!(new.resident(), 0);
}

async fn handed_off_worker_writes_through_and_drain_alone_also_hands_off(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let stand_in = StandIn::spawn();

    // An app that only calls drain() (the pre-protocol way) still marks.
    let old = store.old(stand_in.pid()).await;
    let a = session_at(&old, 1).await;
    session_at(&old, 2).await;
    assert_eq!(store.get(&store.marker(stand_in.pid())).await, None);
    assert_eq!(old.drain().await.unwrap().flushed, 2);
    assert_eq!(
        store.get(&store.marker(stand_in.pid())).await.as_deref(),
        Some("flushed")
    );
    assert_eq!(old.drain().await.unwrap().flushed, 0);
    assert_eq!(old.begin_handoff().await.unwrap().flushed, 2);

    // After the handoff every commit is in the store before it returns, and
    // every load reads the store (another writer's change is seen).
    assert_eq!(bump(&old, &a).await, 2);
    assert_eq!(store.stored_n(&a).await, Some(2));
    let other = store.old(std::process::id()).await;
    assert_eq!(bump(&other, &a).await, 3);
    other.drain().await.unwrap();
    assert_eq!(bump(&old, &a).await, 4);

    // A new worker clears a marker left under its pid by a long-gone one.
    let reused = StandIn::spawn();
    let _: () = redis::cmd("SET")
        .arg(store.marker(reused.pid()))
        .arg("flushed")
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    let _fresh = store.old(reused.pid()).await;
    assert_eq!(store.get(&store.marker(reused.pid())).await, None);
}

/// Requests that N answers while its handoff flush runs: a load still hits
/// memory (the newest copy), and its commit waits for the flush and then
/// writes through — were it to write at once, the flush would lay older
/// changes over it and the next load from memory would not see it.
async fn requests_answered_during_the_handoff_flush_stay_monotonic(backend: Backend) {
    let store = TestStore::start(backend, "h", &[]).await;
    let stand_in = StandIn::spawn();
    let old = store.old(stand_in.pid()).await;
    let id = session_at(&old, 0).await;
    // Ballast: a flush that takes far longer than one request.
    for i in 0..20_000 {
        session_at(&old, i).await;
    }
    let handing_off = {
        let old = old.clone();
        tokio::spawn(async move { old.begin_handoff().await.unwrap() })
    };
    let mut n = 0;
    let mut during = 0;
    while !handing_off.is_finished() && during < 100_000 {
        n += 1;
        assert_eq!(bump(&old, &id).await, n, "request {n}");
        during += 1;
    }
    let report = handing_off.await.unwrap();
    for _ in 0..10 {
        n += 1;
        assert_eq!(bump(&old, &id).await, n);
    }
    assert!(report.flushed >= 20_000);
    assert_eq!(store.stored_n(&id).await, Some(n));
    let new = store.successor(stand_in.pid(), NO_BOUND).await;
    n += 1;
    assert_eq!(bump(&new, &id).await, n);
}

per_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    successor_load_waits_for_the_handoff_and_sees_the_latest_value,
    a_hot_session_alternating_between_generations_stays_monotonic,
    users_served_by_both_generations_through_a_recycle_see_every_increment_in_order,
    a_dead_predecessor_does_not_block,
    the_wait_for_a_silent_predecessor_is_bounded,
    handed_off_worker_writes_through_and_drain_alone_also_hands_off,
    requests_answered_during_the_handoff_flush_stay_monotonic,
);
