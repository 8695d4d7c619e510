//! Sessions that survive a recycle: ASP.NET session state, without its lock.
//!
//! An axum (or any tower/hyper) app gets them in one line:
//!
//! ```no_run
//! use appvisor_worker::sessions::{self, SessionHandle, Sessions};
//! use axum::{routing::get, Extension, Router};
//!
//! async fn counter(Extension(session): Extension<SessionHandle>) -> String {
//!     session.incr("n", 1).unwrap().to_string()
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = Sessions::from_env().await?;
//! let app = Router::new()
//!     .route("/counter", get(counter))
//!     .layer(sessions::layer(sessions.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! // On shutdown, after the requests: hand dirty sessions to the store.
//! sessions.drain().await?;
//! # Ok(())
//! # }
//! ```
//!
//! With hyper's `service_fn` and the SDK's own server it is
//! `sessions::layer(sessions).around(service_fn(handler))`; see the
//! `sessions_demo` example.
//!
//! # Layout
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | [`Sessions`]: load / commit / abandon / flush / drain, per mode |
//! | `mode.rs` | [`SessionMode`], [`SessionsConfig`] from `APPVISOR_*` variables |
//! | `id.rs` | [`SessionId`]: 144 CSPRNG bits, 24 base64url chars, strict parse |
//! | `cookie.rs` | `Set-Cookie` writing, `Cookie` parsing, [`CookieOptions`] |
//! | `session.rs` | [`Session`]: one request's copy plus its recorded changes |
//! | `changes.rs` | per-key change sets and their replay (the merge) |
//! | `codec.rs` | the stored value: `as1 <version>\n<json>` |
//! | `memory.rs` | the sharded in-worker table (inproc, handoff) |
//! | `store.rs` | Redis protocol access: GETEX, WATCH/MULTI/EXEC, bulk flush |
//! | `layer.rs` | the tower layer and [`SessionHandle`] |
//!
//! # Theory of operation
//!
//! *Environment.* appvisor sets `APPVISOR_STORE_URL` (a Redis URL with this
//! app's credentials), `APPVISOR_SESSION_MODE` and
//! `APPVISOR_SESSION_TIMEOUT_MS` from `[app.sessions]`; [`Sessions::from_env`]
//! reads them. Keys are `"{APPVISOR_APP}:s:{id}"` (or `"s:{id}"` with no app
//! name): the embedded store isolates apps on its own, the app part keeps
//! them apart on a shared real Redis.
//!
//! *A request* loads the session — which renews its sliding expiry (GETEX …
//! PX in the store, the deadline in memory) — works on its own copy, and at
//! the end commits only if it succeeded. Changes are recorded per key
//! (set / remove / increment) together with the value each key had when
//! first touched.
//!
//! *No lock.* Each session carries a version. A commit whose loaded version
//! is still current writes straight through; otherwise it re-reads and
//! replays its changes onto the newer copy: increments add, keys only one
//! side touched merge, and a key both sides set to different values is a
//! conflict — last writer wins for that key, and [`CommitOutcome::conflicts`]
//! names it. Concurrent requests of one user never queue (ASP.NET's
//! per-session lock serialized them). In the store the round is
//! WATCH/GET then MULTI/SET/EXEC, retried up to a bound; in memory it is one
//! compare-and-merge under a shard mutex.
//!
//! *Modes.* `store` writes through at every successful request, so sessions
//! survive crashes too. `handoff` keeps sessions in memory, marks commits
//! dirty, and [`Sessions::drain`] flushes every dirty one in pipelined
//! transactions of a hundred; the next generation misses in its empty
//! memory, falls back to the store, and carries on. If two generations
//! overlap, the flush merges exactly like a request commit, so neither side's
//! changes are lost. `inproc` is memory only: a recycle forgets everything.
//!
//! *Expiry.* Memory entries expire at their sliding deadline (checked on
//! access, swept in the background); store keys carry a PX TTL renewed on
//! every load and write. A commit with no changes writes nothing: the load
//! a moment earlier already renewed the expiry.

mod changes;
mod codec;
mod cookie;
mod error;
mod id;
mod layer;
mod memory;
mod mode;
mod session;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use cookie::{
    expire_cookie_header, id_from_cookie_header, id_from_headers, set_cookie_header, CookieOptions,
    SameSite, DEFAULT_COOKIE_NAME,
};
pub use error::SessionError;
pub use id::{InvalidSessionId, SessionId, SESSION_ID_LEN};
pub use layer::{layer, SessionHandle, SessionLayer, SessionService};
pub use mode::{
    redact_url, SessionMode, SessionsConfig, APP_VAR, DEFAULT_TIMEOUT, MODE_VAR, STORE_URL_VAR,
    TIMEOUT_VAR,
};
pub use session::Session;

use memory::MemoryTable;
use store::Store;

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The session's version after the commit.
    pub version: u64,
    /// False when there was nothing to write.
    pub written: bool,
    /// True when another request had committed since this one loaded, and
    /// this request's changes were replayed onto that newer copy.
    pub merged: bool,
    /// Keys both requests set to different values: this request's value
    /// won, the other one's was overwritten. Empty in the normal case.
    pub conflicts: Vec<String>,
    /// Optimistic rounds it took (1 when nobody raced; 0 when not written).
    pub attempts: u32,
}

impl CommitOutcome {
    pub(crate) fn written(
        version: u64,
        merged: bool,
        conflicts: Vec<String>,
        attempts: u32,
    ) -> Self {
        CommitOutcome {
            version,
            written: true,
            merged,
            conflicts,
            attempts,
        }
    }
}

/// What a flush of dirty sessions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Sessions written to the store.
    pub flushed: usize,
    /// Of those, how many had been changed in the store by another writer
    /// and were merged.
    pub merged: usize,
    /// Keys overwritten in conflict, summed over all sessions.
    pub conflicts: usize,
    /// Wall time of the flush.
    pub elapsed: Duration,
}

/// Counters since start, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Loads that found a session.
    pub hits: u64,
    /// Loads that found nothing.
    pub misses: u64,
    /// Commits that wrote.
    pub commits: u64,
    /// Commits that had to merge with a concurrent one.
    pub merges: u64,
    /// Conflicting keys reported.
    pub conflicts: u64,
    /// Sessions written by flushes.
    pub flushed: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    commits: AtomicU64,
    merges: AtomicU64,
    conflicts: AtomicU64,
    flushed: AtomicU64,
}

/// The session provider of one worker. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    mode: SessionMode,
    timeout: Duration,
    memory: Option<MemoryTable>,
    store: Option<Arc<Store>>,
    counters: Counters,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("mode", &self.inner.mode)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Sessions {
    /// Sessions as appvisor configured them for this worker (see
    /// [`SessionsConfig::from_env`]); connects to the store when the mode
    /// uses one.
    pub async fn from_env() -> Result<Sessions, SessionError> {
        Sessions::with_config(SessionsConfig::from_env()?).await
    }

    /// Sessions with the key prefix `s:`; `store_url` may be `None` only for
    /// [`SessionMode::Inproc`].
    pub async fn new(
        store_url: Option<&str>,
        mode: SessionMode,
        timeout: Duration,
    ) -> Result<Sessions, SessionError> {
        Sessions::with_config(SessionsConfig::new(store_url, mode, timeout)).await
    }

    /// Sessions from a full config.
    pub async fn with_config(config: SessionsConfig) -> Result<Sessions, SessionError> {
        let millis = config.timeout.as_millis();
        if millis == 0 || millis > (1u128 << 62) {
            return Err(SessionError::TimeoutOutOfRange { millis });
        }
        let store = if config.mode.uses_store() {
            let url = config
                .store_url
                .as_deref()
                .ok_or(SessionError::NoStoreUrl { mode: config.mode })?;
            Some(Arc::new(Store::connect(url, &config.key_prefix).await?))
        } else {
            None
        };
        let memory = match config.mode {
            SessionMode::Store => None,
            SessionMode::Inproc => Some(MemoryTable::new(false)),
            SessionMode::Handoff => Some(MemoryTable::new(true)),
        };
        let sweeps = memory.is_some();
        let inner = Arc::new(Inner {
            mode: config.mode,
            timeout: config.timeout,
            memory,
            store,
            counters: Counters::default(),
        });
        if sweeps {
            spawn_sweeper(Arc::downgrade(&inner), config.timeout);
        }
        Ok(Sessions { inner })
    }

    /// The configured mode.
    pub fn mode(&self) -> SessionMode {
        self.inner.mode
    }

    /// The sliding timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// A new, empty session under a fresh id. Nothing is stored until it is
    /// committed with changes.
    pub fn new_session(&self) -> Result<Session, SessionError> {
        let id = SessionId::generate().map_err(|source| SessionError::Entropy { source })?;
        Ok(Session::fresh(id))
    }

    /// The session stored under `id`, renewing its expiry; an empty one
    /// ([`Session::is_new`]) when there is none. In handoff mode a miss in
    /// memory falls back to the store — how a new generation picks up the
    /// sessions its predecessor handed off.
    pub async fn load(&self, id: &SessionId) -> Result<Session, SessionError> {
        let inner = &self.inner;
        let timeout = inner.timeout;
        let found = match (&inner.memory, &inner.store) {
            (Some(memory), store) => match memory.get(id, timeout) {
                Some(hit) => Some(hit),
                None => match store {
                    Some(store) => store
                        .load(id, timeout)
                        .await?
                        .map(|(version, data)| memory.adopt(id, version, Arc::new(data), timeout)),
                    None => None,
                },
            },
            (None, Some(store)) => store
                .load(id, timeout)
                .await?
                .map(|(version, data)| (version, Arc::new(data))),
            (None, None) => unreachable!("every mode has memory or a store"),
        };
        Ok(match found {
            Some((version, data)) => {
                inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                Session::loaded(*id, version, data, false)
            }
            None => {
                inner.counters.misses.fetch_add(1, Ordering::Relaxed);
                Session::fresh(*id)
            }
        })
    }

    /// Makes the session's recorded changes durable for its mode (memory
    /// for inproc/handoff, the store for store mode), merging with whatever
    /// was committed since it was loaded. On success `session` is rebased on
    /// the result (new version and data, no pending changes), so it can be
    /// changed and committed again.
    pub async fn commit(&self, session: &mut Session) -> Result<CommitOutcome, SessionError> {
        if !session.is_dirty() {
            return Ok(CommitOutcome {
                version: session.version,
                written: false,
                merged: false,
                conflicts: Vec::new(),
                attempts: 0,
            });
        }
        let inner = &self.inner;
        let (outcome, data) = match (&inner.memory, &inner.store) {
            (Some(memory), _) => memory.commit(session, inner.timeout),
            (None, Some(store)) => store.commit(session, inner.timeout).await?,
            (None, None) => unreachable!("every mode has memory or a store"),
        };
        let counters = &inner.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        if outcome.merged {
            counters.merges.fetch_add(1, Ordering::Relaxed);
        }
        counters
            .conflicts
            .fetch_add(outcome.conflicts.len() as u64, Ordering::Relaxed);
        session.version = outcome.version;
        session.data = data;
        session.changes = Default::default();
        session.is_new = false;
        Ok(outcome)
    }

    /// Ends a session now, in memory and in the store.
    pub async fn abandon(&self, id: &SessionId) -> Result<(), SessionError> {
        if let Some(memory) = &self.inner.memory {
            memory.remove(id);
        }
        if let Some(store) = &self.inner.store {
            store.delete(id).await?;
        }
        Ok(())
    }

    /// Handoff mode: writes every session changed since the last flush to
    /// the store (each with its remaining sliding TTL). Sessions whose flush
    /// failed stay dirty, so calling again retries them. A no-op in the
    /// other modes.
    pub async fn flush_dirty(&self) -> Result<FlushReport, SessionError> {
        let started = Instant::now();
        let (Some(memory), Some(store), SessionMode::Handoff) =
            (&self.inner.memory, &self.inner.store, self.inner.mode)
        else {
            return Ok(FlushReport::default());
        };
        let items = memory.take_dirty();
        let results = store.flush(items).await;
        let mut report = FlushReport::default();
        let mut failed = 0;
        let mut first_error = None;
        for (item, result) in results {
            match result {
                Ok(flushed) => {
                    report.flushed += 1;
                    report.merged += usize::from(flushed.merged.is_some());
                    report.conflicts += flushed.conflicts.len();
                    memory.flushed(&item, &flushed);
                }
                Err(error) => {
                    failed += 1;
                    first_error.get_or_insert(error);
                    memory.flush_failed(item);
                }
            }
        }
        let counters = &self.inner.counters;
        counters
            .flushed
            .fetch_add(report.flushed as u64, Ordering::Relaxed);
        counters
            .merges
            .fetch_add(report.merged as u64, Ordering::Relaxed);
        counters
            .conflicts
            .fetch_add(report.conflicts as u64, Ordering::Relaxed);
        report.elapsed = started.elapsed();
        match first_error {
            None => Ok(report),
            Some(source) => Err(SessionError::Flush {
                failed,
                flushed: report.flushed,
                source,
            }),
        }
    }

    /// Call when the worker shuts down, after in-flight requests finished:
    /// in handoff mode hands every dirty session to the store for the next
    /// generation; nothing to do in the other modes.
    pub async fn drain(&self) -> Result<FlushReport, SessionError> {
        self.flush_dirty().await
    }

    /// Sessions held in this worker's memory (0 in store mode).
    pub fn resident(&self) -> usize {
        self.inner.memory.as_ref().map_or(0, MemoryTable::len)
    }

    /// Counters since start.
    pub fn stats(&self) -> SessionStats {
        let c = &self.inner.counters;
        SessionStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            merges: c.merges.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            flushed: c.flushed.load(Ordering::Relaxed),
        }
    }
}

/// Drops expired memory entries every quarter timeout (between 1 s and
/// 60 s), and stops when the last `Sessions` clone is gone.
fn spawn_sweeper(inner: Weak<Inner>, timeout: Duration) {
    let period = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { break };
            if let Some(memory) = &inner.memory {
                memory.sweep();
            }
        }
    });
}
