//! Sessions against a real store, once per backend (the embedded store in this
//! process, and a `redis-server` of the test's own or the one named by
//! `APPVISOR_TEST_STORE_URL`), with a key prefix per test so tests never see
//! each other's keys.
//!
//! HTTP behaviour (commit only on success, cookies, concurrent requests of
//! one user) goes through the real layer over real loopback TCP with hyper.

use crate::harness::{per_backend, Backend, TestStore};

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{
    self, id_from_cookie_header, SessionHandle, SessionId, SessionMode, Sessions, SessionsConfig,
    SESSION_ID_LEN,
};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;

// ---------------------------------------------------------------- harness

impl TestStore {
    async fn sessions(&self, mode: SessionMode, timeout: Duration) -> Sessions {
        let mut config = SessionsConfig::new(Some(&self.url), mode, timeout);
        config.key_prefix = self.prefix.clone();
        Sessions::with_config(config).await.unwrap()
    }

    fn key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.as_str())
    }

    async fn pttl(&self, id: &SessionId) -> i64 {
        redis::cmd("PTTL")
            .arg(self.key(id))
            .query_async(&mut self.raw().await)
            .await
            .unwrap()
    }

    async fn exists(&self, id: &SessionId) -> bool {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.key(id))
            .query_async(&mut self.raw().await)
            .await
            .unwrap();
        n == 1
    }

    /// Pretends time passed: cuts the key's remaining TTL to `ms`.
    async fn age(&self, id: &SessionId, ms: u64) {
        let set: i64 = redis::cmd("PEXPIRE")
            .arg(self.key(id))
            .arg(ms)
            .query_async(&mut self.raw().await)
            .await
            .unwrap();
        assert_eq!(set, 1, "key must exist to age it");
    }
}

const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- ids

#[test]
fn ids_are_long_random_and_strictly_parsed() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10_000 {
        let id = SessionId::generate().unwrap();
        let text = id.as_str();
        assert_eq!(text.len(), SESSION_ID_LEN);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(SessionId::parse(text).unwrap(), id);
        assert!(seen.insert(id), "duplicate id");
    }
    let good = SessionId::generate().unwrap();
    let good = good.as_str();
    for bad in [
        "",
        &good[..SESSION_ID_LEN - 1],
        &format!("{good}A"),
        &format!("{}=", &good[..SESSION_ID_LEN - 1]),
        &format!("{}/", &good[..SESSION_ID_LEN - 1]),
        &format!("{}é", &good[..SESSION_ID_LEN - 2]),
        &"A".repeat(1 << 20),
        "../../../etc/passwd......",
    ] {
        assert!(SessionId::parse(bad).is_err(), "accepted {bad:?}");
    }
    // Cookie parsing only ever yields parsed ids.
    assert!(id_from_cookie_header("appvisor_sid=../../x; a=b", "appvisor_sid").is_none());
}

// ---------------------------------------------------------------- API

async fn store_mode_round_trip_writes_through(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let sessions = store.sessions(SessionMode::Store, MINUTE).await;
    let mut s = sessions.new_session().unwrap();
    assert!(s.is_new());
    s.set("user", &json!({"name": "ada", "roles": ["admin"]}))
        .unwrap();
    s.incr("visits", 1).unwrap();
    let outcome = sessions.commit(&mut s).await.unwrap();
    assert!(outcome.written && !outcome.merged && outcome.conflicts.is_empty());
    assert_eq!(outcome.version, 1);
    assert!(store.exists(s.id()).await, "store mode writes at commit");

    // A different Sessions (another worker) sees it.
    let other = store.sessions(SessionMode::Store, MINUTE).await;
    let loaded = other.load(s.id()).await.unwrap();
    assert!(!loaded.is_new());
    assert_eq!(loaded.version(), 1);
    assert_eq!(loaded.get::<i64>("visits").unwrap(), Some(1));
    assert_eq!(
        loaded.get::<serde_json::Value>("user").unwrap(),
        Some(json!({"name": "ada", "roles": ["admin"]}))
    );

    // Commit without changes writes nothing.
    let mut unchanged = loaded.clone();
    let outcome = other.commit(&mut unchanged).await.unwrap();
    assert!(!outcome.written);

    // Remove and abandon.
    let mut s2 = other.load(s.id()).await.unwrap();
    assert_eq!(
        s2.remove("user"),
        Some(json!({"name": "ada", "roles": ["admin"]}))
    );
    other.commit(&mut s2).await.unwrap();
    assert_eq!(sessions.load(s.id()).await.unwrap().get_value("user"), None);
    sessions.abandon(s.id()).await.unwrap();
    assert!(!store.exists(s.id()).await);
    assert!(sessions.load(s.id()).await.unwrap().is_new());
}

async fn expiry_slides_on_load_and_commit(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let timeout = Duration::from_secs(600);
    let sessions = store.sessions(SessionMode::Store, timeout).await;
    let mut s = sessions.new_session().unwrap();
    s.incr("n", 1).unwrap();
    sessions.commit(&mut s).await.unwrap();
    let full = 600_000;
    assert!(store.pttl(s.id()).await > full - 5_000);

    // Nine minutes pass; a load renews to the full timeout.
    store.age(s.id(), 60_000).await;
    assert!(store.pttl(s.id()).await <= 60_000);
    let mut loaded = sessions.load(s.id()).await.unwrap();
    assert!(store.pttl(s.id()).await > full - 5_000, "load renews");

    // Again; a commit renews too.
    store.age(s.id(), 60_000).await;
    loaded.incr("n", 1).unwrap();
    sessions.commit(&mut loaded).await.unwrap();
    assert!(store.pttl(s.id()).await > full - 5_000, "commit renews");

    // A handoff worker picking the session up from the store renews it.
    store.age(s.id(), 60_000).await;
    let handoff = store.sessions(SessionMode::Handoff, timeout).await;
    assert_eq!(
        handoff.load(s.id()).await.unwrap().get::<i64>("n").unwrap(),
        Some(2)
    );
    assert!(
        store.pttl(s.id()).await > full - 5_000,
        "handoff load renews"
    );

    // And an expired session is gone (real expiry, short timeout).
    store.age(s.id(), 1).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.exists(s.id()).await {
        assert!(Instant::now() < deadline, "key did not expire");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sessions.load(s.id()).await.unwrap().is_new());
}

/// Two requests of one user load the same version, then both commit at the
/// same moment from two threads: no lock, nobody waits, nothing is lost.
async fn concurrent_increments_merge(mode: SessionMode, store: &TestStore) {
    let sessions = store.sessions(mode, MINUTE).await;
    let mut first = sessions.new_session().unwrap();
    first.set("n", &10).unwrap();
    sessions.commit(&mut first).await.unwrap();
    let id = *first.id();

    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let sessions = sessions.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut s = sessions.load(&id).await.unwrap();
                    let loaded_at = s.version();
                    s.incr("n", 1).unwrap();
                    // Both have loaded before either commits.
                    barrier.wait().await;
                    (loaded_at, sessions.commit(&mut s).await.unwrap())
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        assert_eq!(outcomes[0].0, outcomes[1].0, "both loaded the same version");
        assert_eq!(
            outcomes.iter().filter(|(_, o)| o.merged).count(),
            1,
            "exactly one of the two had to merge: {outcomes:?}"
        );
        assert!(outcomes.iter().all(|(_, o)| o.conflicts.is_empty()));
        let n: i64 = sessions.load(&id).await.unwrap().get("n").unwrap().unwrap();
        assert_eq!(n, 10 + 2 * (round + 1), "{mode}: both increments counted");
    }

    // A true conflict: both set the same key to different values. The later
    // writer wins, and the conflict is reported, never silent.
    let mut a = sessions.load(&id).await.unwrap();
    let mut b = sessions.load(&id).await.unwrap();
    a.set("color", "red").unwrap();
    a.set("only_a", &1).unwrap();
    b.set("color", "blue").unwrap();
    b.incr("n", 5).unwrap();
    let oa = sessions.commit(&mut a).await.unwrap();
    let ob = sessions.commit(&mut b).await.unwrap();
    assert!(!oa.merged && oa.conflicts.is_empty());
    assert!(ob.merged);
    assert_eq!(ob.conflicts, vec!["color".to_owned()]);
    let now = sessions.load(&id).await.unwrap();
    assert_eq!(now.get::<String>("color").unwrap().as_deref(), Some("blue"));
    assert_eq!(
        now.get::<i64>("only_a").unwrap(),
        Some(1),
        "a's other key kept"
    );
    assert_eq!(now.get::<i64>("n").unwrap(), Some(10 + 40 + 5));
    assert!(sessions.stats().conflicts >= 1);
}

async fn concurrent_increments_both_count_in_store_mode(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    concurrent_increments_merge(SessionMode::Store, &store).await;
}

async fn concurrent_increments_both_count_in_handoff_mode(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    concurrent_increments_merge(SessionMode::Handoff, &store).await;
}

async fn many_concurrent_writers_in_store_mode_lose_nothing(backend: Backend) {
    // 8 tasks × 25 increments on one session, racing through WATCH/EXEC.
    let store = TestStore::start(backend, "t", &[]).await;
    let sessions = store.sessions(SessionMode::Store, MINUTE).await;
    let mut s = sessions.new_session().unwrap();
    s.set("n", &0).unwrap();
    sessions.commit(&mut s).await.unwrap();
    let id = *s.id();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let sessions = sessions.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    let mut s = sessions.load(&id).await.unwrap();
                    s.incr("n", 1).unwrap();
                    sessions.commit(&mut s).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = sessions.load(&id).await.unwrap().get("n").unwrap().unwrap();
    assert_eq!(n, 200);
}

async fn handoff_sessions_survive_a_recycle_via_drain(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let gen1 = store.sessions(SessionMode::Handoff, MINUTE).await;
    let mut ids = Vec::new();
    for i in 0..500 {
        let mut s = gen1.new_session().unwrap();
        s.set("i", &i).unwrap();
        s.incr("hits", 3).unwrap();
        gen1.commit(&mut s).await.unwrap();
        ids.push(*s.id());
    }
    assert_eq!(gen1.resident(), 500);
    assert!(
        !store.exists(&ids[0]).await,
        "handoff keeps sessions in memory"
    );

    let report = gen1.drain().await.unwrap();
    assert_eq!(report.flushed, 500);
    assert_eq!(report.merged, 0);
    // Nothing dirty is left: a second drain writes nothing.
    assert_eq!(gen1.drain().await.unwrap().flushed, 0);
    let ttl = store.pttl(&ids[0]).await;
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "flushed with the sliding TTL: {ttl}"
    );
    drop(gen1);

    // The next generation: empty memory, falls back to the store.
    let gen2 = store.sessions(SessionMode::Handoff, MINUTE).await;
    assert_eq!(gen2.resident(), 0);
    for (i, id) in ids.iter().enumerate() {
        let s = gen2.load(id).await.unwrap();
        assert!(!s.is_new(), "session {i} lost in the handoff");
        assert_eq!(s.get::<usize>("i").unwrap(), Some(i));
        assert_eq!(s.get::<i64>("hits").unwrap(), Some(3));
    }
    // Sessions gen2 did not change are not written back.
    assert_eq!(gen2.drain().await.unwrap().flushed, 0);
}

async fn overlapping_generations_merge_at_flush(backend: Backend) {
    // Overlapped recycle: the old generation still holds unflushed changes
    // while the new one already serves the same user from the store copy.
    let store = TestStore::start(backend, "t", &[]).await;
    let old = store.sessions(SessionMode::Handoff, MINUTE).await;
    let mut s = old.new_session().unwrap();
    s.set("n", &1).unwrap();
    s.set("theme", "dark").unwrap();
    old.commit(&mut s).await.unwrap();
    old.flush_dirty().await.unwrap();
    let id = *s.id();

    let new = store.sessions(SessionMode::Handoff, MINUTE).await;
    let mut in_new = new.load(&id).await.unwrap();
    in_new.incr("n", 10).unwrap();
    in_new.set("lang", "fr").unwrap();
    new.commit(&mut in_new).await.unwrap();

    let mut in_old = old.load(&id).await.unwrap();
    in_old.incr("n", 100).unwrap();
    in_old.set("theme", "light").unwrap();
    old.commit(&mut in_old).await.unwrap();

    let r = old.drain().await.unwrap();
    assert_eq!((r.flushed, r.merged), (1, 0));
    let r = new.drain().await.unwrap();
    assert_eq!((r.flushed, r.merged, r.conflicts), (1, 1, 0));

    let next = store.sessions(SessionMode::Store, MINUTE).await;
    let s = next.load(&id).await.unwrap();
    assert_eq!(s.get::<i64>("n").unwrap(), Some(111));
    assert_eq!(s.get::<String>("theme").unwrap().as_deref(), Some("light"));
    assert_eq!(s.get::<String>("lang").unwrap().as_deref(), Some("fr"));
}

/// Two handoff generations serve the same users at once while both keep
/// flushing (an overlapped recycle with periodic flushes): every increment
/// made anywhere ends up in the store exactly once.
async fn flushes_racing_commits_and_another_generation_lose_nothing(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let old = store.sessions(SessionMode::Handoff, MINUTE).await;
    let new = store.sessions(SessionMode::Handoff, MINUTE).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let mut s = old.new_session().unwrap();
        s.set("n", &0).unwrap();
        old.commit(&mut s).await.unwrap();
        ids.push(*s.id());
    }
    old.flush_dirty().await.unwrap();
    let ids = Arc::new(ids);
    const PER_GENERATION: usize = 1500;

    let writers: Vec<_> = [old.clone(), new.clone()]
        .into_iter()
        .map(|generation| {
            let ids = ids.clone();
            tokio::spawn(async move {
                for i in 0..PER_GENERATION {
                    let mut s = generation.load(&ids[i % ids.len()]).await.unwrap();
                    s.incr("n", 1).unwrap();
                    generation.commit(&mut s).await.unwrap();
                    if i.is_multiple_of(7) {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let flusher = {
        let (old, new) = (old.clone(), new.clone());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let mut flushes = 0;
            while !stop.load(Ordering::SeqCst) && flushes < 100_000 {
                old.flush_dirty().await.unwrap();
                new.flush_dirty().await.unwrap();
                flushes += 1;
            }
            flushes
        });
        (task, done)
    };
    for w in writers {
        w.await.unwrap();
    }
    flusher.1.store(true, Ordering::SeqCst);
    let flushes = flusher.0.await.unwrap();
    assert!(flushes > 0);
    old.drain().await.unwrap();
    new.drain().await.unwrap();

    let reader = store.sessions(SessionMode::Store, MINUTE).await;
    let mut total = 0;
    for id in ids.iter() {
        total += reader
            .load(id)
            .await
            .unwrap()
            .get::<i64>("n")
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        total,
        2 * PER_GENERATION as i64,
        "after {flushes} racing flushes"
    );
    assert!(
        old.stats().merges + new.stats().merges > 0,
        "the race was exercised"
    );
}

async fn inproc_sessions_do_not_survive_a_recycle(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    // inproc ignores the store entirely (it does not even connect).
    let gen1 = store.sessions(SessionMode::Inproc, MINUTE).await;
    let mut s = gen1.new_session().unwrap();
    s.incr("n", 1).unwrap();
    gen1.commit(&mut s).await.unwrap();
    assert_eq!(
        gen1.load(s.id()).await.unwrap().get::<i64>("n").unwrap(),
        Some(1)
    );
    assert_eq!(gen1.drain().await.unwrap().flushed, 0);
    assert!(!store.exists(s.id()).await);
    drop(gen1);
    let gen2 = store.sessions(SessionMode::Inproc, MINUTE).await;
    assert!(
        gen2.load(s.id()).await.unwrap().is_new(),
        "inproc forgets on recycle"
    );
}

async fn config_errors_say_what_to_do(backend: Backend) {
    let err = Sessions::new(None, SessionMode::Handoff, MINUTE)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("APPVISOR_STORE_URL"), "{err}");
    assert!(err.contains("inproc"), "{err}");

    let missing = std::env::temp_dir().join("appvisor-no-such-dir/store.sock");
    let url = format!("unix://{}?user=shop&pass=hunter2", missing.display());
    let err = Sessions::new(Some(&url), SessionMode::Store, MINUTE)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("store.sock"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");

    let err = Sessions::new(Some("http://x"), SessionMode::Store, MINUTE)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a usable Redis URL"), "{err}");

    // A value under a session key that this SDK did not write.
    let store = TestStore::start(backend, "t", &[]).await;
    let sessions = store.sessions(SessionMode::Store, MINUTE).await;
    let id = SessionId::generate().unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.key(&id))
        .arg("not a session")
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    let err = sessions.load(&id).await.unwrap_err().to_string();
    assert!(
        err.contains("unreadable") && !err.contains(id.as_str()),
        "{err}"
    );
}

// ---------------------------------------------------------------- HTTP

type Body = Full<Bytes>;

/// The app under test: a few routes that use the session.
#[derive(Clone)]
struct App {
    barrier: Arc<Barrier>,
}

impl hyper::service::Service<Request<Incoming>> for App {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, std::io::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let barrier = self.barrier.clone();
        Box::pin(async move {
            let session = request
                .extensions()
                .get::<SessionHandle>()
                .expect("the layer puts a SessionHandle in every request")
                .clone();
            let text = |status: StatusCode, body: String| {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                Ok(r)
            };
            match request.uri().path() {
                "/incr" => text(StatusCode::OK, session.incr("n", 1).unwrap().to_string()),
                "/get" => text(
                    StatusCode::OK,
                    session
                        .get::<i64>("n")
                        .unwrap()
                        .map_or("none".into(), |n| n.to_string()),
                ),
                "/incr-then-500" => {
                    session.incr("n", 1).unwrap();
                    text(StatusCode::INTERNAL_SERVER_ERROR, "boom".into())
                }
                "/incr-then-error" => {
                    session.incr("n", 1).unwrap();
                    Err(std::io::Error::other("handler failed"))
                }
                "/incr-then-404" => {
                    session.incr("n", 1).unwrap();
                    text(StatusCode::NOT_FOUND, "not here, but counted".into())
                }
                "/incr-together" => {
                    let n = session.incr("n", 1).unwrap();
                    barrier.wait().await;
                    text(StatusCode::OK, n.to_string())
                }
                "/logout" => {
                    session.abandon();
                    text(StatusCode::OK, "bye".into())
                }
                _ => text(StatusCode::NOT_FOUND, String::new()),
            }
        })
    }
}

async fn serve_app(sessions: Sessions) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = sessions::layer(sessions).around(App {
        barrier: Arc::new(Barrier::new(2)),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Reply {
    status: StatusCode,
    set_cookie: Vec<String>,
    body: String,
}

/// One request on its own connection; `Err` when the server dropped it.
async fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Result<Reply, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = Request::get(path).header("host", "localhost");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await?;
    let status = response.status();
    let set_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        set_cookie,
        body: String::from_utf8(body.to_vec()).unwrap(),
    })
}

fn cookie_of(reply: &Reply) -> String {
    let header = reply.set_cookie.first().expect("a Set-Cookie header");
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Path=/")
    );
    header.split(';').next().unwrap().to_owned()
}

async fn http_commits_only_successful_requests(mode: SessionMode, backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let sessions = store.sessions(mode, MINUTE).await;
    let addr = serve_app(sessions.clone()).await;

    // No session touched → no cookie, nothing stored.
    let r = get(addr, "/get", None).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "none"));
    assert!(r.set_cookie.is_empty());

    let r = get(addr, "/incr", None).await.unwrap();
    assert_eq!(r.body, "1");
    let cookie = cookie_of(&r);
    let r = get(addr, "/incr", Some(&cookie)).await.unwrap();
    assert_eq!(r.body, "2");
    assert!(r.set_cookie.is_empty(), "known session: no new cookie");

    // A 5xx response and a failed handler both leave the session as it was.
    let r = get(addr, "/incr-then-500", Some(&cookie)).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(get(addr, "/incr-then-error", Some(&cookie)).await.is_err());
    let r = get(addr, "/get", Some(&cookie)).await.unwrap();
    assert_eq!(r.body, "2", "{mode}: failed requests must not commit");
    // A 4xx is a successful request as far as state goes (as in ASP.NET).
    let r = get(addr, "/incr-then-404", Some(&cookie)).await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(get(addr, "/get", Some(&cookie)).await.unwrap().body, "3");

    // Two requests of one user at once: both run (no lock — the handler
    // waits for the other one to be inside too) and both count.
    let (a, b) = tokio::join!(
        get(addr, "/incr-together", Some(&cookie)),
        get(addr, "/incr-together", Some(&cookie))
    );
    assert_eq!(a.unwrap().body, "4");
    assert_eq!(b.unwrap().body, "4");
    assert_eq!(get(addr, "/get", Some(&cookie)).await.unwrap().body, "5");
    assert!(sessions.stats().merges >= 1);

    // An id the server never issued is not adopted (no fixation).
    let forged = format!("appvisor_sid={}", SessionId::generate().unwrap().as_str());
    let r = get(addr, "/incr", Some(&forged)).await.unwrap();
    assert_eq!(r.body, "1");
    assert_ne!(cookie_of(&r), forged);

    // Logout: data gone, browser told to drop the cookie.
    let r = get(addr, "/logout", Some(&cookie)).await.unwrap();
    assert!(r.set_cookie[0].contains("Max-Age=0"), "{:?}", r.set_cookie);
    assert_eq!(get(addr, "/get", Some(&cookie)).await.unwrap().body, "none");
}

async fn http_store_mode_commits_only_successful_requests(backend: Backend) {
    http_commits_only_successful_requests(SessionMode::Store, backend).await;
}

async fn http_handoff_mode_commits_only_successful_requests(backend: Backend) {
    http_commits_only_successful_requests(SessionMode::Handoff, backend).await;
}

async fn http_inproc_mode_commits_only_successful_requests(backend: Backend) {
    http_commits_only_successful_requests(SessionMode::Inproc, backend).await;
}

async fn http_session_survives_a_handoff_recycle(backend: Backend) {
    let store = TestStore::start(backend, "t", &[]).await;
    let gen1 = store.sessions(SessionMode::Handoff, MINUTE).await;
    let addr1 = serve_app(gen1.clone()).await;
    let r = get(addr1, "/incr", None).await.unwrap();
    let cookie = cookie_of(&r);
    get(addr1, "/incr", Some(&cookie)).await.unwrap();
    gen1.drain().await.unwrap();

    let gen2 = store.sessions(SessionMode::Handoff, MINUTE).await;
    let addr2 = serve_app(gen2).await;
    assert_eq!(get(addr2, "/incr", Some(&cookie)).await.unwrap().body, "3");
}

/// The service type must satisfy the SDK server's bounds.
#[allow(dead_code)]
fn layered_service_fits_the_sdk_server(sessions: Sessions) {
    fn assert_server_service<S>(_: &S)
    where
        S: hyper::service::Service<Request<Incoming>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
    }
    let inner = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    assert_server_service(&sessions::layer(sessions).around(inner));
}

// ---------------------------------------------------------------- axum

/// The promise: an axum app gets survivable sessions in one line
/// (`.layer(sessions::layer(sessions))`), and its counter carries on across
/// a handoff recycle.
async fn axum_app_gets_survivable_sessions_in_one_line(backend: Backend) {
    use axum::routing::get as route_get;
    use axum::{Extension, Router};

    async fn counter(Extension(session): Extension<SessionHandle>) -> String {
        session.incr("n", 1).unwrap().to_string()
    }
    async fn fail(Extension(session): Extension<SessionHandle>) -> StatusCode {
        session.incr("n", 1000).unwrap();
        StatusCode::INTERNAL_SERVER_ERROR
    }
    async fn axum_app(sessions: Sessions) -> SocketAddr {
        let app = Router::new()
            .route("/incr", route_get(counter))
            .route("/fail", route_get(fail))
            .layer(sessions::layer(sessions));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    let store = TestStore::start(backend, "t", &[]).await;
    let gen1 = store.sessions(SessionMode::Handoff, MINUTE).await;
    let addr = axum_app(gen1.clone()).await;
    let r = get(addr, "/incr", None).await.unwrap();
    assert_eq!(r.body, "1");
    let cookie = cookie_of(&r);
    assert_eq!(get(addr, "/incr", Some(&cookie)).await.unwrap().body, "2");
    let r = get(addr, "/fail", Some(&cookie)).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(gen1.drain().await.unwrap().flushed, 1);

    let gen2 = store.sessions(SessionMode::Handoff, MINUTE).await;
    let addr = axum_app(gen2).await;
    assert_eq!(get(addr, "/incr", Some(&cookie)).await.unwrap().body, "3");
}

per_backend!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    store_mode_round_trip_writes_through,
    expiry_slides_on_load_and_commit,
    concurrent_increments_both_count_in_store_mode,
    concurrent_increments_both_count_in_handoff_mode,
    many_concurrent_writers_in_store_mode_lose_nothing,
    handoff_sessions_survive_a_recycle_via_drain,
    overlapping_generations_merge_at_flush,
    flushes_racing_commits_and_another_generation_lose_nothing,
    inproc_sessions_do_not_survive_a_recycle,
    config_errors_say_what_to_do,
    http_store_mode_commits_only_successful_requests,
    http_handoff_mode_commits_only_successful_requests,
    http_inproc_mode_commits_only_successful_requests,
    http_session_survives_a_handoff_recycle,
    axum_app_gets_survivable_sessions_in_one_line,
);
