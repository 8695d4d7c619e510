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
//! let stop = {
//!     let sessions = sessions.clone();
//!     async move {
//!         let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
//!             .expect("SIGTERM handler");
//!         term.recv().await;
//!         // Told to stop: hand the sessions to the next generation now,
//!         // while the requests drain.
//!         tokio::spawn(async move { sessions.begin_handoff().await });
//!     }
//! };
//! axum::serve(listener, app).with_graceful_shutdown(stop).await?;
//! // After the requests: flush what is left (normally nothing).
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
//! | `mod.rs` | [`Sessions`]: load / commit / abandon / flush / drain, one `Backing` variant per mode |
//! | `outcome.rs` | [`CommitOutcome`], [`FlushReport`]: what a commit and a flush did |
//! | `mode.rs` | [`SessionMode`], [`SessionsConfig`] from `APPVISOR_*` variables |
//! | `id.rs` | [`SessionId`]: 144 CSPRNG bits, 24 base64url chars, strict parse |
//! | `cookie.rs` | `Set-Cookie` writing, `Cookie` parsing, [`CookieOptions`] |
//! | `session.rs` | [`Session`]: one request's copy plus its recorded changes |
//! | `changes.rs` | per-key change sets and their replay (the merge) |
//! | `codec.rs` | the stored value: `as1 <version>\n<json>` |
//! | `memory.rs` | the sharded in-worker table (inproc, handoff) |
//! | `handoff.rs` | overlapped recycles: phases, the commit gate, waiting for predecessors |
//! | `store.rs` | Redis protocol access: GETEX, WATCH/MULTI/EXEC, bulk flush, handoff markers |
//! | `cluster.rs` | Redis Cluster: hash slots, `CLUSTER SLOTS`, redirections |
//! | `ends.rs` | [`SessionEnds`]: expired session ids from the store's key events and from memory |
//!
//! Modules import downwards: `handoff` uses `store`, `ends` uses `store` and
//! `memory`, and those two use the leaves (`id`, `session`, `changes`,
//! `codec`, `outcome`, `error`); none imports this root, except `layer`, the
//! tower wrapper around [`Sessions`].
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
//! dirty, and flushes every dirty one in pipelined transactions of a hundred
//! when the worker is told to stop ([`Sessions::begin_handoff`]); the next
//! generation misses in its empty memory, falls back to the store, and
//! carries on — coherently even while both generations serve, as the next
//! paragraphs explain. `inproc` is memory only: a recycle forgets everything.
//!
//! *Overlapped recycles (handoff mode).* appvisor starts generation N+1 on
//! the same listening socket while N still serves, and only once N+1 is
//! ready tells N to stop. N then stops accepting but still answers requests
//! in flight and, for a short idle grace, requests on its open keep-alive
//! connections. So for a while a user's requests land on either worker, and
//! a plain "flush on exit" breaks: N+1 would read from the store a session
//! whose newest state is still dirty in N's memory (the user sees an older
//! counter), and N+1's own in-memory commits would be invisible to N. The
//! protocol that keeps every response coherent:
//!
//! 1. appvisor gives each new worker `APPVISOR_PREDECESSORS=pid,…`: the pids
//!    of the app's workers alive when it was spawned, the ones it replaces.
//! 2. A worker with live predecessors is *joining*: it keeps nothing in
//!    memory; every load reads the store, every commit writes it (with the
//!    version check, as in `store` mode). It switches to memory only once
//!    every predecessor has exited (a signal-0 `kill` per load while
//!    joining; zombies count as exited), because until then a predecessor
//!    may serve the same user and must see this worker's writes. A commit
//!    of a session loaded while joining still goes to the store, and its
//!    result replaces any older copy memory took in meanwhile.
//! 3. Before any store read, a worker with predecessors waits until each of
//!    them has exited or has written its marker `{prefix}handoff:{pid}` =
//!    `flushed`, polling every millisecond (one MGET of the markers, one
//!    `kill` per pid). Only reads wait: sessions already in memory, and new
//!    sessions, never do. The wait is bounded ([`SessionsConfig::predecessor_wait`],
//!    10 s): then reads go on and one `tracing` warning says so, since a
//!    predecessor that neither flushes nor exits (an old binary, a hung
//!    drain) must not stall the app. Once satisfied it is never checked
//!    again.
//! 4. The moment a worker is told to stop, the app calls
//!    [`Sessions::begin_handoff`], concurrently with its HTTP drain. Under
//!    an exclusive gate (memory commits hold it shared) it stops memory
//!    commits, so the flush that follows sees every one of them; it flushes
//!    every dirty session; then it writes its marker (PX 10 min). From the
//!    switch on, a load that hits memory still uses it (memory is the truth
//!    until the flush ends) and its commit waits for the flush; other loads
//!    read the store; after the flush everything writes through. Both
//!    generations therefore meet in the store, whose version check orders
//!    and merges their commits. [`Sessions::drain`], after the requests,
//!    flushes anything left (normally nothing) and performs the handoff
//!    itself if the app never called `begin_handoff`.
//!
//! A user whose requests alternate between N and N+1 thus sees each
//! increment exactly once and in order. The cost: the successor's reads of
//! returning users wait for the flush (measured with the
//! `sessions_handoff_bench` example on 2 cores: 0.5–0.7 s for 100,000 dirty
//! sessions, resuming within a few ms of the marker), and both generations
//! pay a store round trip per request until the old one exits. Only the
//! wait is bounded; writing through while a predecessor lives is not, since
//! it is never wrong, only slower.
//!
//! Requirements: one worker per app (`processes = 1`: with several, a
//! user's requests spread over workers that each trust their own memory, so
//! appvisor's config validation refuses `handoff` with more than one), and
//! every worker on one host, in one pid namespace, since markers and
//! liveness go by pid. A new worker deletes the marker of its own pid at
//! start, in case a long-gone worker with the same pid left one.
//!
//! *Expiry.* Memory entries expire at their sliding deadline (checked on
//! access, swept in the background); store keys carry a PX TTL renewed on
//! every load and write. A commit with no changes writes nothing: the load
//! a moment earlier already renewed the expiry.
//!
//! *Session end* (ASP.NET's `Session_End`, but out of process).
//! [`Sessions::on_end`] subscribes to the store's key expiry events
//! (`__keyevent@0__:expired`, payload: the key) on a connection of its own
//! and yields the [`SessionId`] of each of this app's session keys that
//! expires; other keys are ignored. The embedded store always publishes
//! them; on a real Redis the SDK turns on `notify-keyspace-events Ex` if it
//! may, and says what to run if it may not. Only expiries are reported, not
//! [`Sessions::abandon`] (the app knows about those). The session's data is
//! gone by then — an end handler gets only the id. Pub/sub delivers to every
//! subscriber: with `processes > 1`, *every* worker that calls `on_end`
//! receives *every* end, so either make the handler idempotent or
//! subscribe in one worker only (e.g. when `APPVISOR_WORKER` is `0`, as
//! the `sessions_demo` example does). Ends that happen while the
//! subscriber is disconnected (it reconnects with backoff) are lost, as are
//! ends while no worker runs. In `inproc` mode there is no store: `on_end`
//! reports the sessions this worker's memory expires — when a request finds
//! one expired, or when the background sweep (every quarter of the timeout,
//! 1 s to 60 s) removes it — and, as ASP.NET's InProc, not those lost with
//! the worker. In `handoff` mode a session lives in memory between
//! hand-offs while its store copy (if an earlier generation flushed one)
//! is not renewed, so a store expiry of a session this worker holds live is
//! not an end and is dropped; the end is reported when memory expires it
//! (and again if a store copy flushed after the last request outlives the
//! memory entry: end handlers must be idempotent anyway).

mod changes;
mod cluster;
mod codec;
mod cookie;
mod ends;
mod error;
mod handoff;
mod id;
mod layer;
mod memory;
mod mode;
mod outcome;
mod session;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use cookie::{
    expire_cookie_header, id_from_cookie_header, id_from_headers, set_cookie_header, CookieOptions,
    SameSite, DEFAULT_COOKIE_NAME,
};
pub use ends::SessionEnds;
pub use error::SessionError;
pub use id::{InvalidSessionId, SessionId, SESSION_ID_LEN};
pub use layer::{layer, SessionHandle, SessionLayer, SessionService};
pub use mode::{
    redact_url, SessionMode, SessionsConfig, APP_VAR, DEFAULT_PREDECESSOR_WAIT, DEFAULT_TIMEOUT,
    MODE_VAR, PREDECESSORS_VAR, STORE_URL_VAR, TIMEOUT_VAR,
};
pub use outcome::{CommitOutcome, FlushReport};
pub use session::Session;

use handoff::{Handoff, Phase};
use memory::MemoryTable;
use store::Store;

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
    timeout: Duration,
    backing: Backing,
    counters: Counters,
}

/// Where sessions live: one variant per [`SessionMode`], each holding exactly
/// what its mode uses, so no code path has to assume a combination.
// One per `Sessions`, behind its `Arc`: the size of the handoff variant costs
// nothing, and boxing it would add an indirection to every handoff-mode call.
#[allow(clippy::large_enum_variant)]
enum Backing {
    /// `inproc`: the worker's memory only.
    Memory(Arc<MemoryTable>),
    /// `store`: every load and commit goes through the store.
    Store(Arc<Store>),
    /// `handoff`: memory while this generation serves, the store across a
    /// recycle, and the protocol state between generations.
    Handoff {
        memory: Arc<MemoryTable>,
        store: Arc<Store>,
        protocol: Handoff,
    },
}

impl Backing {
    fn mode(&self) -> SessionMode {
        match self {
            Backing::Memory(_) => SessionMode::Inproc,
            Backing::Store(_) => SessionMode::Store,
            Backing::Handoff { .. } => SessionMode::Handoff,
        }
    }

    fn memory(&self) -> Option<&Arc<MemoryTable>> {
        match self {
            Backing::Memory(memory) | Backing::Handoff { memory, .. } => Some(memory),
            Backing::Store(_) => None,
        }
    }

    fn store(&self) -> Option<&Arc<Store>> {
        match self {
            Backing::Store(store) | Backing::Handoff { store, .. } => Some(store),
            Backing::Memory(_) => None,
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("mode", &self.inner.backing.mode())
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
        let backing = match config.mode {
            SessionMode::Inproc => Backing::Memory(Arc::new(MemoryTable::new(false))),
            SessionMode::Store => Backing::Store(connect(&config).await?),
            SessionMode::Handoff => {
                let store = connect(&config).await?;
                // A marker left under our pid by a long-gone worker (pids
                // get reused) must not tell our successor we handed off.
                store.clear_handoff_mark(config.pid).await?;
                Backing::Handoff {
                    memory: Arc::new(MemoryTable::new(true)),
                    store,
                    protocol: Handoff::new(
                        config.pid,
                        &config.predecessors,
                        config.predecessor_wait,
                    ),
                }
            }
        };
        let sweeps = backing.memory().is_some();
        let inner = Arc::new(Inner {
            timeout: config.timeout,
            backing,
            counters: Counters::default(),
        });
        if sweeps {
            spawn_sweeper(Arc::downgrade(&inner), config.timeout);
        }
        Ok(Sessions { inner })
    }

    /// The configured mode.
    pub fn mode(&self) -> SessionMode {
        self.inner.backing.mode()
    }

    /// The sliding timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Subscribes to session ends: the ids of this app's sessions that
    /// expire from now on (see *Session end* in the module docs, including
    /// why every worker receives every end). With a store (`store`,
    /// `handoff`), its key expiry events: on a Redis whose
    /// `notify-keyspace-events` lacks `E` or `x` it tries `CONFIG SET`, and
    /// fails with [`SessionError::ExpiryEventsOff`] if refused; each call
    /// opens its own connection, and dropping the [`SessionEnds`] closes it.
    /// In `inproc` mode, this worker's own sessions as its memory expires
    /// them (as ASP.NET's InProc `Session_End`); in `handoff` mode both: the
    /// store's expiries of sessions this worker does not hold live, and the
    /// ones its memory expires.
    pub async fn on_end(&self) -> Result<SessionEnds, SessionError> {
        match &self.inner.backing {
            Backing::Memory(memory) => Ok(ends::in_memory(memory)),
            Backing::Store(store) => ends::subscribe(Arc::clone(store), None).await,
            Backing::Handoff { memory, store, .. } => {
                ends::subscribe(Arc::clone(store), Some(Arc::clone(memory))).await
            }
        }
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
    /// sessions its predecessor handed off — after waiting for the
    /// predecessors' handoff (see *Overlapped recycles* in the module docs).
    pub async fn load(&self, id: &SessionId) -> Result<Session, SessionError> {
        let inner = &self.inner;
        let timeout = inner.timeout;
        let (found, through_store) = match &inner.backing {
            Backing::Memory(memory) => (memory.get(id, timeout), false),
            Backing::Store(store) => (store_load(store, id, timeout).await?, true),
            Backing::Handoff {
                memory,
                store,
                protocol: handoff,
            } => match handoff.phase() {
                Phase::Memory => match memory.get(id, timeout) {
                    Some(hit) => (Some(hit), false),
                    None => {
                        handoff.settle(store).await?;
                        let found = store.load(id, timeout).await?.map(|(version, data)| {
                            memory.adopt(id, version, Arc::new(data), timeout)
                        });
                        (found, false)
                    }
                },
                // Until the flush ends, memory still holds the newest copy
                // of what it holds; the commit will wait for the flush.
                Phase::Flushing => match memory.get(id, timeout) {
                    Some(hit) => (Some(hit), false),
                    None => {
                        handoff.settle(store).await?;
                        (store_load(store, id, timeout).await?, true)
                    }
                },
                Phase::Joining | Phase::Through => {
                    handoff.settle(store).await?;
                    (store_load(store, id, timeout).await?, true)
                }
            },
        };
        Ok(match found {
            Some((version, data)) => {
                inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                let mut session = Session::loaded(*id, version, data, false);
                session.through_store = through_store;
                session
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
        let timeout = inner.timeout;
        let (outcome, data) = match &inner.backing {
            Backing::Memory(memory) => memory.commit(session, timeout),
            Backing::Store(store) => store.commit(session, timeout).await?,
            Backing::Handoff {
                memory,
                store,
                protocol: handoff,
            } => {
                let in_memory = if session.through_store {
                    None
                } else {
                    handoff.in_memory(|| memory.commit(session, timeout))
                };
                match in_memory {
                    Some(done) => done,
                    None => {
                        handoff.until_flushed().await;
                        let (outcome, data) = store.commit(session, timeout).await?;
                        // Loaded while joining, committed once memory took
                        // over: memory must not keep an older copy.
                        handoff.in_memory(|| {
                            memory.absorb(session.id(), outcome.version, data.clone(), timeout)
                        });
                        (outcome, data)
                    }
                }
            }
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
        if let Some(memory) = self.inner.backing.memory() {
            memory.remove(id);
        }
        if let Some(store) = self.inner.backing.store() {
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
        let Backing::Handoff { memory, store, .. } = &self.inner.backing else {
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

    /// Handoff mode: call the moment the worker is told to stop, before (or
    /// while) it drains its requests. From then on this worker writes
    /// through like `store` mode — every load reads the store, every commit
    /// writes it — after it has flushed every dirty session, and then it
    /// writes its marker `{prefix}handoff:{pid}` = `flushed`, which lets the
    /// next generation's waiting loads go on. Returns what was handed off.
    ///
    /// Idempotent: later (or concurrent) calls wait for the first and return
    /// its report. If the flush or the marker fails, the error is returned
    /// and the next call (or [`drain`](Self::drain)) tries again. A no-op in
    /// the other modes.
    pub async fn begin_handoff(&self) -> Result<FlushReport, SessionError> {
        Ok(self.hand_off().await?.0)
    }

    /// The handoff, and whether this call is the one that completed it.
    async fn hand_off(&self) -> Result<(FlushReport, bool), SessionError> {
        let Backing::Handoff {
            store,
            protocol: handoff,
            ..
        } = &self.inner.backing
        else {
            return Ok((FlushReport::default(), false));
        };
        let mut progress = handoff.progress.lock().await;
        if progress.done {
            return Ok((progress.handed.clone(), false));
        }
        let started = *progress.started.get_or_insert_with(Instant::now);
        handoff.stop_memory_commits();
        let flushed = self.flush_dirty().await;
        // Whatever happened, commits waiting for the flush go on now (to the
        // store); sessions whose flush failed stay dirty for the next try.
        handoff.flush_finished();
        match flushed {
            Ok(report) => progress.handed.add(&report),
            Err(error) => {
                if let SessionError::Flush { flushed, .. } = &error {
                    progress.handed.flushed += flushed;
                }
                return Err(error);
            }
        }
        store.mark_handed_off(handoff.pid).await?;
        progress.done = true;
        progress.handed.elapsed = started.elapsed();
        tracing::debug!(
            "handed off: {} sessions flushed ({} merged) in {} ms; marker written for pid {}",
            progress.handed.flushed,
            progress.handed.merged,
            progress.handed.elapsed.as_millis(),
            handoff.pid
        );
        Ok((progress.handed.clone(), true))
    }

    /// Call when the worker shuts down, after in-flight requests finished.
    /// In handoff mode: performs [`begin_handoff`](Self::begin_handoff) if
    /// it has not happened yet (and then reports what it handed off), then
    /// flushes whatever is still dirty (normally nothing: after the handoff
    /// commits go to the store). Nothing to do in the other modes.
    pub async fn drain(&self) -> Result<FlushReport, SessionError> {
        let (handed, now) = self.hand_off().await?;
        let rest = self.flush_dirty().await?;
        let mut report = if now { handed } else { FlushReport::default() };
        report.add(&rest);
        Ok(report)
    }

    /// Sessions held in this worker's memory (0 in store mode).
    pub fn resident(&self) -> usize {
        self.inner.backing.memory().map_or(0, |m| m.len())
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

/// The store `config` names (the modes that use one need its URL).
async fn connect(config: &SessionsConfig) -> Result<Arc<Store>, SessionError> {
    let url = config
        .store_url
        .as_deref()
        .ok_or(SessionError::NoStoreUrl { mode: config.mode })?;
    Ok(Arc::new(Store::connect(url, &config.key_prefix).await?))
}

/// A store read, as a version and shared data.
async fn store_load(
    store: &Store,
    id: &SessionId,
    timeout: Duration,
) -> Result<Option<(u64, Arc<serde_json::Map<String, serde_json::Value>>)>, SessionError> {
    Ok(store
        .load(id, timeout)
        .await?
        .map(|(version, data)| (version, Arc::new(data))))
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
            if let Some(memory) = inner.backing.memory() {
                memory.sweep();
            }
        }
    });
}
