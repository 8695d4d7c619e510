//! Session ends (`Sessions::on_end`) against a real store, once per backend
//! (the embedded store in this process, and a `redis-server` or the one named
//! by `APPVISOR_TEST_STORE_URL`), with a key prefix per test so tests never see
//! each other's keys. Tests that need to control the server's configuration
//! (ACLs, initial `notify-keyspace-events`, killing its connections) run only
//! against a `redis-server` of their own.

use crate::harness::{per_backend, wait_until, Backend, TestStore};

use std::time::{Duration, Instant};

use appvisor_worker::sessions::{
    SessionEnds, SessionError, SessionId, SessionMode, Sessions, SessionsConfig,
};

// ---------------------------------------------------------------- harness

/// What `notify-keyspace-events` a server we start begins with.
#[derive(Clone, Copy)]
enum Events {
    /// `Ex`, as an operator would configure it.
    On,
    /// Empty (Redis's default): the SDK has to switch them on.
    Off,
}

impl Events {
    fn flags(self) -> &'static str {
        match self {
            Events::On => "Ex",
            Events::Off => "",
        }
    }
}

impl TestStore {
    /// Always a redis-server of our own, starting with `events`.
    async fn own_with(events: Events) -> TestStore {
        TestStore::own("ends", &["--notify-keyspace-events", events.flags()]).await
    }

    /// A store on `backend`; a redis-server starts with expiry events on.
    async fn any(backend: Backend) -> TestStore {
        TestStore::start(
            backend,
            "ends",
            &["--notify-keyspace-events", Events::On.flags()],
        )
        .await
    }

    async fn sessions_at(&self, url: &str, timeout: Duration) -> Result<Sessions, SessionError> {
        let mut config = SessionsConfig::new(Some(url), SessionMode::Store, timeout);
        config.key_prefix = self.prefix.clone();
        Sessions::with_config(config).await
    }

    async fn store_sessions(&self, timeout: Duration) -> Sessions {
        self.sessions_at(&self.url, timeout).await.unwrap()
    }

    async fn set_px(&self, key: &str, ms: u64) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("x")
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.raw().await)
            .await
            .unwrap();
    }

    async fn has_key(&self, key: &str) -> bool {
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.raw().await)
            .await
            .unwrap();
        n == 1
    }
}

/// A stored session (one committed change) under `sessions`.
async fn stored_session(sessions: &Sessions) -> SessionId {
    let mut session = sessions.new_session().unwrap();
    session.set("user", "ada").unwrap();
    let outcome = sessions.commit(&mut session).await.unwrap();
    assert!(outcome.written);
    *session.id()
}

/// The next end, waiting at most until `deadline`.
async fn next_end(ends: &mut SessionEnds, deadline: Instant) -> Option<SessionId> {
    tokio::time::timeout_at(deadline.into(), ends.recv())
        .await
        .ok()
        .flatten()
}

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- tests

async fn an_expired_session_is_reported_and_other_keys_are_not(backend: Backend) {
    let store = TestStore::any(backend).await;
    let sessions = store.store_sessions(Duration::from_secs(1)).await;
    let id = stored_session(&sessions).await;
    let mut ends = sessions.on_end().await.unwrap();

    // Keys that are not this app's sessions, expiring well before the
    // session: a handoff marker, another app's session, a foreign key and
    // a session-looking key of ours with a malformed id.
    let other_id = SessionId::generate().unwrap();
    let decoys = [
        format!("{}handoff:4121", store.prefix),
        format!("other-{}{}", store.prefix, other_id.as_str()),
        format!("plain-{}", store.prefix),
        format!("{}{}!", store.prefix, &other_id.as_str()[1..]),
    ];
    for key in &decoys {
        store.set_px(key, 50).await;
    }

    let deadline = Instant::now() + WAIT;
    let ended = next_end(&mut ends, deadline)
        .await
        .expect("the session's expiry was not reported within 20 s");
    // The decoys expired first; had any been reported it would come first.
    assert_eq!(ended, id, "something other than the session was reported");
    for key in &decoys {
        assert!(
            !store.has_key(key).await,
            "{key} should have expired by now"
        );
    }
    assert_eq!(
        ends.try_recv(),
        None,
        "a decoy was reported after the session"
    );
}

#[tokio::test]
async fn a_store_without_expiry_events_gets_them_switched_on() {
    let store = TestStore::own_with(Events::Off).await;
    let sessions = store.store_sessions(Duration::from_secs(1)).await;
    let mut ends = sessions.on_end().await.unwrap();
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    assert!(
        flags.contains('E') && flags.contains('x'),
        "flags now {flags:?}"
    );
    let id = stored_session(&sessions).await;
    let ended = next_end(&mut ends, Instant::now() + WAIT).await;
    assert_eq!(ended, Some(id));
}

#[tokio::test]
async fn a_store_that_refuses_config_set_is_reported_clearly() {
    let store = TestStore::own_with(Events::Off).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg(&["on", ">secret", "~*", "&*", "+@all", "-config|set"])
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    let socket = &store.redis_server().socket;
    let url = format!("unix://{}?user=app&pass=secret", socket.display());
    let sessions = store
        .sessions_at(&url, Duration::from_secs(1))
        .await
        .unwrap();
    let err = sessions.on_end().await.unwrap_err();
    assert!(
        matches!(err, SessionError::ExpiryEventsOff { .. }),
        "got {err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("CONFIG SET notify-keyspace-events Ex") && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn the_subscriber_reconnects_after_the_connection_is_killed() {
    let store = TestStore::own_with(Events::On).await;
    let sessions = store.store_sessions(Duration::from_secs(1)).await;
    let mut ends = sessions.on_end().await.unwrap();
    let mut raw = store.raw().await;
    // Drop every pub/sub connection; the subscriber must come back by
    // itself. Keep creating sessions until one's end arrives.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let deadline = Instant::now() + WAIT;
    let mut created = Vec::new();
    loop {
        created.push(stored_session(&sessions).await);
        if let Some(ended) = next_end(&mut ends, Instant::now() + Duration::from_secs(2)).await {
            assert!(created.contains(&ended));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no session end arrived within 20 s after the connection was killed"
        );
    }
}

/// `inproc`: no store, so the worker's own memory reports the ends of the
/// sessions it expires, and not of one still in use.
#[tokio::test]
async fn inproc_sessions_end_in_the_worker() {
    let timeout = Duration::from_millis(300);
    let sessions = Sessions::new(None, SessionMode::Inproc, timeout)
        .await
        .unwrap();
    let mut ends = sessions.on_end().await.unwrap();
    let first = stored_session(&sessions).await;
    let second = stored_session(&sessions).await;
    let kept = stored_session(&sessions).await;
    // A user who keeps clicking: each load renews the sliding expiry.
    let keeper = {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            loop {
                sessions.load(&kept).await.unwrap();
                tokio::time::sleep(timeout / 10).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = std::collections::HashSet::new();
    while !(got.contains(&first) && got.contains(&second)) {
        let end = next_end(&mut ends, deadline)
            .await
            .expect("both idle sessions reported ended within 20 s");
        assert_ne!(end, kept, "a session in use was reported ended");
        got.insert(end);
    }
    keeper.abort();
    let gone = sessions.load(&first).await.unwrap();
    assert_eq!(gone.get::<String>("user").unwrap(), None);
}

/// `handoff`: between hand-offs a session lives in this worker's memory and
/// its store copy (left by an earlier generation) is not renewed. That copy
/// lapsing is not an end while the user is active; memory expiring the
/// session is.
async fn handoff_reports_the_end_from_memory_not_from_a_lapsed_store_copy(backend: Backend) {
    let store = TestStore::any(backend).await;
    let timeout = Duration::from_millis(400);
    let mut config = SessionsConfig::new(Some(&store.url), SessionMode::Handoff, timeout);
    config.key_prefix = store.prefix.clone();
    let sessions = Sessions::with_config(config).await.unwrap();
    let mut ends = sessions.on_end().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);

    // What an earlier generation's hand-off left in the store.
    let held = SessionId::generate().unwrap();
    let held_key = format!("{}{}", store.prefix, held.as_str());
    let _: () = redis::cmd("SET")
        .arg(&held_key)
        .arg("as1 1\n{\"user\":\"ada\"}")
        .arg("PX")
        .arg(timeout.as_millis() as u64)
        .query_async(&mut store.raw().await)
        .await
        .unwrap();
    // This worker takes it over, and the user keeps using it (from memory).
    let taken = sessions.load(&held).await.unwrap();
    assert_eq!(taken.get::<String>("user").unwrap().as_deref(), Some("ada"));
    let keeper = {
        let sessions = sessions.clone();
        tokio::spawn(async move {
            loop {
                sessions.load(&held).await.unwrap();
                tokio::time::sleep(timeout / 10).await;
            }
        })
    };
    // The store copy lapses (EXISTS also expires it lazily, publishing the
    // event if the server had not yet).
    wait_until("the store copy expired", async || {
        !store.has_key(&held_key).await
    })
    .await;
    // A session nobody holds, expiring now: its end comes after any end
    // published for the lapsed copy (one server, one subscription, in order).
    let nobodys = SessionId::generate().unwrap();
    store
        .set_px(&format!("{}{}", store.prefix, nobodys.as_str()), 1)
        .await;
    loop {
        let end = next_end(&mut ends, deadline)
            .await
            .expect("the expiry of a session nobody holds is reported");
        assert_ne!(end, held, "a session in use was reported ended");
        if end == nobodys {
            break;
        }
    }
    // The user leaves: memory expires the session, and that is its end.
    keeper.abort();
    assert_eq!(next_end(&mut ends, deadline).await, Some(held));
}

per_backend!(
    #[tokio::test]
    an_expired_session_is_reported_and_other_keys_are_not,
    handoff_reports_the_end_from_memory_not_from_a_lapsed_store_copy,
);
