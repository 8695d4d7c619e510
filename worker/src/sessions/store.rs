//! Talking to the session store (the embedded one, any Redis/Valkey, or a
//! Redis Cluster).
//!
//! Two kinds of connection per server ([`Node`]):
//!
//! * one shared, multiplexed, self-reconnecting [`ConnectionManager`] for
//!   single commands (GETEX on load, DEL on abandon), which any number of
//!   requests use at once;
//! * a small pool of dedicated connections for optimistic transactions.
//!   WATCH is per-connection state, so a WATCH … EXEC round must own its
//!   connection; a connection that errors mid-round is dropped, never pooled,
//!   so no stale WATCH or MULTI leaks into the next user.
//!
//! Handoff markers (`{prefix}handoff:{pid}`, see the `handoff` module) are
//! single commands on the shared connection too.
//!
//! A commit is two round trips: `WATCH k` + `GET k` pipelined, then
//! `MULTI` / `SET k v PX ttl` / `EXEC`. No Lua, because the embedded store
//! implements the session subset of Redis (no EVAL).
//!
//! *Cluster.* At connect, `INFO cluster` says whether the URL names a node
//! of a Redis Cluster (`cluster_enabled:1`). If so, the URL is only a seed:
//! `CLUSTER SLOTS` gives the masters, each gets its own [`Node`] (same
//! credentials and TLS settings as the URL), and every operation goes to the
//! master of its key's slot (see [`cluster`](super::cluster)). A `MOVED`
//! answer updates that slot and refreshes the map, an `ASK` answer (a slot
//! being migrated) repeats the operation on the named node after `ASKING`;
//! either way the operation is retried, up to [`REDIRECTS`] times. Each
//! session is one key, so a commit never spans slots; a bulk flush groups
//! its sessions by slot, and the handoff markers are read one slot at a
//! time. A cluster is detected, not configured: the same
//! `APPVISOR_STORE_URL = redis://any-node:port` works for every client that
//! knows clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ConnectionInfo, ErrorKind, RedisError, Value as RedisValue};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::cluster::{self, SLOTS};
use super::codec;
use super::error::SessionError;
use super::id::SessionId;
use super::memory::{FlushItem, Flushed};
use super::mode::redact_url;
use super::outcome::CommitOutcome;
use super::session::Session;

/// Rounds of WATCH/GET/MULTI/EXEC before a commit gives up. Each lost round
/// means another writer of the same session committed in between, so with n
/// concurrent writers one always wins; with the jittered exponential backoff
/// below, losing 32 rounds in a row takes a session hammered by far more
/// concurrent writers than one user's browser can produce.
/// The value of a handoff marker (see [`handoff`](super::handoff), which waits
/// for it; this module writes and reads it).
const MARKER_VALUE: &str = "flushed";
/// How long a marker lives: far longer than any successor waits for it,
/// short enough that markers of long-gone workers do not pile up.
const MARKER_TTL: Duration = Duration::from_secs(10 * 60);
pub(crate) const COMMIT_ATTEMPTS: u32 = 32;
/// Sessions per flush transaction. Redis's WATCH costs about 1.5 µs per key
/// plus a scan of the keys the connection already watches, so it grows
/// quadratically with the chunk: 1000 keys cost 5.6 ms of server time per
/// WATCH, 100 keys 0.15 ms. At 100 the round trips are still hidden by
/// [`FLUSH_CONNECTIONS`] chunks in flight (measured with the
/// `sessions_handoff_bench` example: 100 beat 50, 200, 250 and 1000).
const FLUSH_CHUNK: usize = 100;
/// Flush transactions in flight at once, each on its own connection. On a
/// cluster, where a chunk holds only the sessions of one slot (a few, unless
/// there are millions), more are in flight: per master as many as here.
const FLUSH_CONNECTIONS: usize = 4;
/// Dedicated connections kept for reuse, per node.
const MAX_IDLE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A store that does not answer within this fails the request instead of
/// hanging it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// MOVED/ASK redirections one operation follows before it fails: a slot
/// moves once per resharding step, so more than a few means a cluster whose
/// nodes disagree.
const REDIRECTS: usize = 5;
/// A slot map younger than this is not fetched again (a resharding answers
/// MOVED to many requests at once; one refresh serves them all).
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// One server: the shared connection and the idle dedicated ones.
pub(crate) struct Node {
    client: redis::Client,
    shared: ConnectionManager,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl Node {
    async fn connect(client: redis::Client) -> Result<Node, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            // Fail fast on a store that is not there (the redis crate's
            // default backoff waits minutes), and reconnect quickly after a
            // store restart: 2 retries, at most 500 ms apart.
            .set_factor(2)
            .set_max_delay(500)
            .set_number_of_retries(2);
        let shared = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Node {
            client,
            shared,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The client, for connections of other kinds (the `ends` subscriber).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The shared connection.
    pub(crate) fn shared(&self) -> ConnectionManager {
        self.shared.clone()
    }

    async fn checkout(&self) -> Result<MultiplexedConnection, RedisError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn checkin(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

/// Where operations go.
enum Route {
    Single(Arc<Node>),
    Cluster(Box<Cluster>),
}

/// A cluster node, connected on first use.
type NodeCell = Arc<OnceCell<Arc<Node>>>;

/// The nodes of a Redis Cluster and which master serves which slot.
struct Cluster {
    seed: ConnectionInfo,
    /// The seed URL's own connection: asked for the slot map when no master
    /// answers.
    seed_node: Arc<Node>,
    /// `host:port` of the master of each slot (None: no master known).
    slots: RwLock<Vec<Option<Arc<str>>>>,
    /// Connected on first use; an unreachable master fails only the
    /// operations on its slots.
    nodes: Mutex<HashMap<Arc<str>, NodeCell>>,
    /// When the slot map was last fetched; held while fetching.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

/// Why an operation failed: what the server said (redirections are retried
/// by [`Store::on_slot`]), or something about the data.
enum OpError {
    Redis(RedisError),
    Session(SessionError),
}

impl From<RedisError> for OpError {
    fn from(e: RedisError) -> Self {
        OpError::Redis(e)
    }
}

pub(crate) struct Store {
    route: Route,
    prefix: String,
    /// For error messages: the URL with its password hidden.
    url: String,
}

impl Cluster {
    fn master_of(&self, slot: u16) -> Option<Arc<str>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())[usize::from(slot)].clone()
    }

    /// The node at `addr` (`host:port`), connecting on first use.
    async fn node(&self, addr: &Arc<str>) -> Result<Arc<Node>, RedisError> {
        let cell = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.entry(Arc::clone(addr)).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let (host, port) = cluster::parse_addr(addr, cluster::host_of(&self.seed))
                .ok_or_else(|| invalid(format!("cluster node address {addr:?}")))?;
            let client = redis::Client::open(cluster::node_info(&self.seed, &host, port))?;
            Ok(Arc::new(Node::connect(client).await?))
        })
        .await
        .cloned()
    }

    async fn node_for(&self, slot: u16) -> Result<Arc<Node>, RedisError> {
        let addr = match self.master_of(slot) {
            Some(addr) => addr,
            None => {
                self.refresh().await?;
                self.master_of(slot).ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::ClusterDown,
                        "no master serves the slot",
                        format!("slot {slot}"),
                    ))
                })?
            }
        };
        self.node(&addr).await
    }

    /// Fetches the slot map (`CLUSTER SLOTS`) from a known master, else from
    /// the seed, unless it was fetched less than [`REFRESH_MIN_INTERVAL`] ago.
    async fn refresh(&self) -> Result<(), RedisError> {
        let mut refreshed = self.refreshed.lock().await;
        if refreshed.is_some_and(|at| at.elapsed() < REFRESH_MIN_INTERVAL) {
            return Ok(());
        }
        let mut asked: Vec<Arc<Node>> = {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .values()
                .filter_map(|cell| cell.get().cloned())
                .collect()
        };
        asked.push(Arc::clone(&self.seed_node));
        let mut last_error = None;
        for node in asked {
            let reply: Result<RedisValue, _> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut node.shared())
                .await;
            let host = cluster::host_of(node.client.get_connection_info());
            match reply.map(|reply| cluster::parse_slots(&reply, host)) {
                Ok(Ok(ranges)) => {
                    let mut map: Vec<Option<Arc<str>>> = vec![None; SLOTS];
                    for range in ranges {
                        let addr: Arc<str> = format!("{}:{}", range.host, range.port).into();
                        for slot in range.start..=range.end {
                            map[usize::from(slot)] = Some(Arc::clone(&addr));
                        }
                    }
                    *self.slots.write().unwrap_or_else(|p| p.into_inner()) = map;
                    *refreshed = Some(Instant::now());
                    return Ok(());
                }
                Ok(Err(why)) => last_error = Some(invalid(why)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| invalid("no cluster node to ask".into())))
    }

    /// A MOVED answer: the slot is served at `addr` from now on.
    fn moved(&self, slot: u16, addr: Arc<str>) {
        self.slots.write().unwrap_or_else(|p| p.into_inner())[usize::from(slot)] = Some(addr);
    }

    /// Every master in the slot map.
    fn masters(&self) -> Vec<Arc<str>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut masters: Vec<Arc<str>> = Vec::new();
        for addr in slots.iter().flatten() {
            if !masters.iter().any(|m| m == addr) {
                masters.push(Arc::clone(addr));
            }
        }
        masters
    }
}

fn invalid(detail: String) -> RedisError {
    RedisError::from((ErrorKind::ResponseError, "Redis Cluster", detail))
}

/// A pipeline that starts with `ASKING` when an ASK redirection sent the
/// operation to a node importing the slot.
fn asked(asking: bool) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if asking {
        pipe.cmd("ASKING").ignore();
    }
    pipe
}

/// `MULTI … EXEC` built by hand rather than with `Pipeline::atomic`, so that
/// `ASKING` can precede `MULTI` (inside MULTI it would only be queued).
/// Add the commands with `.ignore()` (their replies are `QUEUED`), then
/// [`exec`].
fn transaction(asking: bool) -> redis::Pipeline {
    let mut pipe = asked(asking);
    pipe.cmd("MULTI").ignore();
    pipe
}

/// Runs a [`transaction`]: the EXEC reply, `Nil` when a WATCHed key changed.
async fn exec(
    mut pipe: redis::Pipeline,
    conn: &mut MultiplexedConnection,
) -> Result<RedisValue, RedisError> {
    let (reply,): (RedisValue,) = pipe.cmd("EXEC").query_async(conn).await?;
    Ok(reply)
}

impl Store {
    pub(crate) async fn connect(url: &str, prefix: &str) -> Result<Store, SessionError> {
        let redacted = redact_url(url);
        let client = redis::Client::open(url).map_err(|source| SessionError::BadStoreUrl {
            url: redacted.clone(),
            source,
        })?;
        let connect_error = |source| SessionError::Connect {
            url: redacted.clone(),
            source,
        };
        let seed = Arc::new(Node::connect(client.clone()).await.map_err(connect_error)?);
        let route = if is_cluster(&seed).await {
            let cluster = Cluster {
                seed: client.get_connection_info().clone(),
                seed_node: seed,
                slots: RwLock::new(vec![None; SLOTS]),
                nodes: Mutex::new(HashMap::new()),
                refreshed: tokio::sync::Mutex::new(None),
            };
            cluster.refresh().await.map_err(connect_error)?;
            Route::Cluster(Box::new(cluster))
        } else {
            Route::Single(seed)
        };
        Ok(Store {
            route,
            prefix: prefix.to_owned(),
            url: redacted,
        })
    }

    /// Whether the store is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.route, Route::Cluster(_))
    }

    /// The database the keys live in (a cluster has only 0).
    pub(crate) fn db(&self) -> i64 {
        match &self.route {
            Route::Single(node) => node.client.get_connection_info().redis.db,
            Route::Cluster(_) => 0,
        }
    }

    /// Every server that holds keys, named for messages: the one server, or
    /// each master of the cluster (the slot map fetched again first, at most
    /// every [`REFRESH_MIN_INTERVAL`]).
    pub(crate) async fn masters(&self) -> Result<Vec<(String, Arc<Node>)>, SessionError> {
        match &self.route {
            Route::Single(node) => Ok(vec![(self.url.clone(), Arc::clone(node))]),
            Route::Cluster(cluster) => {
                let error = self.store_error("cluster topology");
                cluster.refresh().await.map_err(error)?;
                let mut out = Vec::new();
                for addr in cluster.masters() {
                    let node = cluster
                        .node(&addr)
                        .await
                        .map_err(self.store_error("cluster topology"))?;
                    out.push((addr.to_string(), node));
                }
                Ok(out)
            }
        }
    }

    /// This app's session key prefix, e.g. `shop:s:`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The store URL with its password hidden, for messages.
    pub(crate) fn redacted_url(&self) -> &str {
        &self.url
    }

    fn key(&self, id: &SessionId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + id.as_str().len());
        key.push_str(&self.prefix);
        key.push_str(id.as_str());
        key
    }

    /// The key for messages: prefix plus the redacted id.
    fn shown_key(&self, id: &SessionId) -> String {
        format!("{}{}", self.prefix, id.redacted())
    }

    fn store_error(&self, op: &'static str) -> impl FnOnce(RedisError) -> SessionError + '_ {
        move |source| SessionError::Store {
            url: self.url.clone(),
            op,
            source,
        }
    }

    /// Runs `op` on the server holding `key`: `f(node, asking)`, again after
    /// each MOVED or ASK redirection (see the module docs). On a single
    /// server it runs once.
    ///
    /// `f` gets the node by value (not `&Node`): a closure over a borrowed
    /// argument would make its future's `Send` depend on a higher-ranked
    /// lifetime, which the compiler cannot prove for spawned tasks.
    async fn on_key<T, F, Fut>(&self, key: &[u8], op: &'static str, f: F) -> Result<T, SessionError>
    where
        F: Fn(Arc<Node>, bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, OpError>>,
    {
        let cluster = match &self.route {
            Route::Single(node) => {
                return f(Arc::clone(node), false).await.map_err(|e| match e {
                    OpError::Redis(e) => self.store_error(op)(e),
                    OpError::Session(e) => e,
                })
            }
            Route::Cluster(cluster) => cluster,
        };
        let slot = cluster::slot(key);
        let mut ask: Option<Arc<Node>> = None;
        let mut redirects = 0;
        loop {
            let (node, asking) = match ask.take() {
                Some(node) => (node, true),
                None => (
                    cluster.node_for(slot).await.map_err(self.store_error(op))?,
                    false,
                ),
            };
            let error = match f(Arc::clone(&node), asking).await {
                Ok(value) => return Ok(value),
                Err(OpError::Session(e)) => return Err(e),
                Err(OpError::Redis(e)) => e,
            };
            if redirects == REDIRECTS {
                return Err(self.store_error(op)(error));
            }
            redirects += 1;
            let asked_host = cluster::host_of(node.client.get_connection_info());
            let target = error
                .redirect_node()
                .and_then(|(addr, _)| cluster::parse_addr(addr, asked_host))
                .map(|(host, port)| Arc::<str>::from(format!("{host}:{port}")));
            match (error.kind(), target) {
                (ErrorKind::Moved, Some(addr)) => {
                    cluster.moved(slot, addr);
                    // Usually a resharding moved many slots: learn them all.
                    let _ = cluster.refresh().await;
                }
                (ErrorKind::Ask, Some(addr)) => {
                    ask = Some(cluster.node(&addr).await.map_err(self.store_error(op))?);
                }
                // TRYAGAIN: a multi-key command during a slot migration;
                // EXECABORT: the slot moved between WATCH and EXEC.
                (ErrorKind::TryAgain | ErrorKind::ExecAbortError, _) => {
                    let _ = cluster.refresh().await;
                    backoff(redirects as u32).await;
                }
                _ => return Err(self.store_error(op)(error)),
            }
        }
    }

    /// Positions of `keys` grouped by hash slot (one group on a single
    /// server), so that each group can be one multi-key command.
    fn slot_groups<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> BTreeMap<u16, Vec<usize>> {
        let cluster = self.is_cluster();
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.enumerate() {
            let slot = if cluster { cluster::slot(key) } else { 0 };
            groups.entry(slot).or_default().push(i);
        }
        groups
    }

    /// Reads a session and renews its expiry in the same command (GETEX).
    pub(crate) async fn load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<codec::Stored>, SessionError> {
        let key = &self.key(id);
        let raw: Option<Vec<u8>> = self
            .on_key(key.as_bytes(), "load", |node, asking| async move {
                let (raw,) = asked(asking)
                    .cmd("GETEX")
                    .arg(key)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async(&mut node.shared())
                    .await?;
                Ok(raw)
            })
            .await?;
        raw.map(|raw| {
            codec::decode(&raw).map_err(|reason| SessionError::Corrupt {
                key: self.shown_key(id),
                reason,
            })
        })
        .transpose()
    }

    /// Writes a request's changes with optimistic concurrency: straight
    /// through when the stored version is still the one loaded, else
    /// re-read and replay the changes onto the newer copy.
    pub(crate) async fn commit(
        &self,
        session: &Session,
        ttl: Duration,
    ) -> Result<(CommitOutcome, Arc<Map<String, Value>>), SessionError> {
        let key = &self.key(session.id());
        self.on_key(key.as_bytes(), "commit", |node, asking| async move {
            let mut conn = node.checkout().await?;
            let result = self.commit_on(&mut conn, asking, key, session, ttl).await;
            // A connection that failed may hold a WATCH or a MULTI: drop it.
            if !matches!(result, Err(OpError::Redis(_))) {
                node.checkin(conn);
            }
            result
        })
        .await
    }

    async fn commit_on(
        &self,
        conn: &mut MultiplexedConnection,
        asking: bool,
        key: &str,
        session: &Session,
        ttl: Duration,
    ) -> Result<(CommitOutcome, Arc<Map<String, Value>>), OpError> {
        for attempt in 1..=COMMIT_ATTEMPTS {
            let mut read = asked(asking);
            read.cmd("WATCH").arg(key).ignore();
            ask_again(&mut read, asking).cmd("GET").arg(key);
            let (raw,): (Option<Vec<u8>>,) = read.query_async(conn).await?;
            let stored = match raw.as_deref().map(codec::decode).transpose() {
                Ok(stored) => stored,
                Err(reason) => {
                    // Leave the connection clean before giving it back.
                    let _: Result<(), _> = redis::cmd("UNWATCH").query_async(conn).await;
                    return Err(OpError::Session(SessionError::Corrupt {
                        key: self.shown_key(session.id()),
                        reason,
                    }));
                }
            };
            let stored_version = stored.as_ref().map_or(0, |(v, _)| *v);
            let (version, data, merged, conflicts) = if stored_version == session.version {
                (session.version + 1, session.data.clone(), false, Vec::new())
            } else {
                let (_, mut data) = stored.unwrap_or_default();
                let conflicts = session.changes.replay_onto(&mut data);
                let version = stored_version.max(session.version) + 1;
                (version, Arc::new(data), true, conflicts)
            };
            let mut write = transaction(asking);
            write
                .cmd("SET")
                .arg(key)
                .arg(codec::encode(version, &data))
                .arg("PX")
                .arg(ttl_millis(ttl))
                .ignore();
            if exec(write, conn).await? != RedisValue::Nil {
                let outcome = CommitOutcome::written(version, merged, conflicts, attempt);
                return Ok((outcome, data));
            }
            // EXEC answered nil: someone wrote between our GET and EXEC.
            // Back off a little, with jitter, so racing writers spread out.
            backoff(attempt).await;
        }
        Err(OpError::Session(SessionError::Contention {
            attempts: COMMIT_ATTEMPTS,
        }))
    }

    pub(crate) async fn delete(&self, id: &SessionId) -> Result<(), SessionError> {
        self.del(&self.key(id), "abandon").await
    }

    async fn del(&self, key: &str, op: &'static str) -> Result<(), SessionError> {
        self.on_key(key.as_bytes(), op, |node, asking| async move {
            let () = asked(asking)
                .cmd("DEL")
                .arg(key)
                .ignore()
                .query_async(&mut node.shared())
                .await?;
            Ok(())
        })
        .await
    }

    /// The handoff marker of the worker with process id `pid`.
    fn marker_key(&self, pid: u32) -> String {
        format!("{}handoff:{pid}", self.prefix)
    }

    /// Says to successors that the worker `pid` has flushed every session
    /// it held: `{prefix}handoff:{pid}` = `flushed`, for [`MARKER_TTL`].
    pub(crate) async fn mark_handed_off(&self, pid: u32) -> Result<(), SessionError> {
        let key = &self.marker_key(pid);
        self.on_key(key.as_bytes(), "handoff", |node, asking| async move {
            let () = asked(asking)
                .cmd("SET")
                .arg(key)
                .arg(MARKER_VALUE)
                .arg("PX")
                .arg(ttl_millis(MARKER_TTL))
                .ignore()
                .query_async(&mut node.shared())
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes a marker: a new worker clears the one a long-gone worker
    /// with the same (reused) pid may have left.
    pub(crate) async fn clear_handoff_mark(&self, pid: u32) -> Result<(), SessionError> {
        self.del(&self.marker_key(pid), "handoff").await
    }

    /// For each pid, whether its marker says `flushed` (one MGET per slot:
    /// one in all on a single server).
    pub(crate) async fn handoff_marked(&self, pids: &[u32]) -> Result<Vec<bool>, SessionError> {
        let keys: Vec<String> = pids.iter().map(|pid| self.marker_key(*pid)).collect();
        let mut marked = vec![false; keys.len()];
        for positions in self
            .slot_groups(keys.iter().map(|k| k.as_bytes()))
            .into_values()
        {
            let group: &Vec<&str> = &positions.iter().map(|&i| keys[i].as_str()).collect();
            let values: Vec<Option<Vec<u8>>> = self
                .on_key(group[0].as_bytes(), "handoff", |node, asking| async move {
                    let (values,) = asked(asking)
                        .cmd("MGET")
                        .arg(group)
                        .query_async(&mut node.shared())
                        .await?;
                    Ok(values)
                })
                .await?;
            for (i, value) in positions.into_iter().zip(values) {
                marked[i] = value.as_deref() == Some(MARKER_VALUE.as_bytes());
            }
        }
        Ok(marked)
    }

    /// Writes many sessions: chunks of at most [`FLUSH_CHUNK`] sessions of
    /// one slot (any, on a single server), each one `WATCH keys… ; MGET
    /// keys…` then `MULTI ; SET … PX … ×n ; EXEC`, with
    /// [`FLUSH_CONNECTIONS`] chunks per master in flight. Returns every item
    /// with what happened to it, so the caller can settle its memory entry.
    pub(crate) async fn flush(
        self: &Arc<Self>,
        items: Vec<FlushItem>,
    ) -> Vec<(FlushItem, Result<Flushed, Arc<SessionError>>)> {
        let keys: Vec<String> = items.iter().map(|item| self.key(&item.id)).collect();
        let groups = self.slot_groups(keys.iter().map(|k| k.as_bytes()));
        let mut slots: Vec<Option<(FlushItem, String)>> =
            items.into_iter().zip(keys).map(Some).collect();
        let mut chunks: Vec<Vec<(FlushItem, String)>> = Vec::new();
        for positions in groups.into_values() {
            for piece in positions.chunks(FLUSH_CHUNK) {
                let chunk = piece.iter().filter_map(|&i| slots[i].take()).collect();
                chunks.push(chunk);
            }
        }
        let masters = match &self.route {
            Route::Single(_) => 1,
            Route::Cluster(cluster) => cluster.masters().len().max(1),
        };
        let lanes = (FLUSH_CONNECTIONS * masters).min(chunks.len()).max(1);
        let mut per_lane: Vec<Vec<Vec<(FlushItem, String)>>> =
            (0..lanes).map(|_| Vec::new()).collect();
        for (i, chunk) in chunks.into_iter().enumerate() {
            per_lane[i % lanes].push(chunk);
        }
        let mut tasks = JoinSet::new();
        for lane in per_lane {
            let store = Arc::clone(self);
            tasks.spawn(async move { store.flush_lane(lane).await });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            // A panicking flush task is a bug in this module; surface it.
            done.extend(joined.expect("session flush task panicked"));
        }
        done
    }

    async fn flush_lane(
        &self,
        chunks: Vec<Vec<(FlushItem, String)>>,
    ) -> Vec<(FlushItem, Result<Flushed, Arc<SessionError>>)> {
        let mut out = Vec::new();
        for chunk in chunks {
            let chunk_ref = &chunk;
            let result = self
                .on_key(chunk[0].1.as_bytes(), "flush", |node, asking| async move {
                    let mut conn = node.checkout().await?;
                    let result = Self::flush_chunk(&mut conn, asking, chunk_ref).await;
                    if !matches!(result, Err(OpError::Redis(_))) {
                        node.checkin(conn);
                    }
                    result
                })
                .await;
            let items = chunk.into_iter().map(|(item, _)| item);
            match result {
                Ok(flushed) => out.extend(items.zip(flushed.into_iter().map(Ok))),
                Err(e) => {
                    let e = Arc::new(e);
                    out.extend(items.map(|item| (item, Err(Arc::clone(&e)))));
                }
            }
        }
        out
    }

    async fn flush_chunk(
        conn: &mut MultiplexedConnection,
        asking: bool,
        chunk: &[(FlushItem, String)],
    ) -> Result<Vec<Flushed>, OpError> {
        let keys: Vec<&str> = chunk.iter().map(|(_, key)| key.as_str()).collect();
        for attempts in 1..=COMMIT_ATTEMPTS {
            let mut read = asked(asking);
            read.cmd("WATCH").arg(&keys).ignore();
            ask_again(&mut read, asking).cmd("MGET").arg(&keys);
            let (raws,): (Vec<Option<Vec<u8>>>,) = read.query_async(conn).await?;
            let mut results = Vec::with_capacity(chunk.len());
            let mut write = transaction(asking);
            for ((item, key), raw) in chunk.iter().zip(raws) {
                let stored_version = match raw.as_deref().map(codec::decode_version) {
                    None => Some(0),
                    Some(Ok((version, _))) => Some(version),
                    Some(Err(_)) => None,
                };
                let flushed = if stored_version == Some(item.store_version) {
                    Flushed {
                        version: item.version,
                        merged: None,
                        conflicts: Vec::new(),
                    }
                } else {
                    // Another writer (an overlapping generation) or an
                    // unreadable value: replay our changes onto what is there.
                    let (stored_version, mut data) = match raw.as_deref().map(codec::decode) {
                        Some(Ok(stored)) => stored,
                        _ => (0, Map::new()),
                    };
                    let mut conflicts = item.pending.replay_onto(&mut data);
                    if stored_version_unreadable(raw.as_deref()) {
                        conflicts.push("(unreadable stored session replaced)".to_owned());
                    }
                    Flushed {
                        version: stored_version.max(item.version) + 1,
                        merged: Some(Arc::new(data)),
                        conflicts,
                    }
                };
                let data = flushed.merged.as_ref().unwrap_or(&item.data);
                write
                    .cmd("SET")
                    .arg(key)
                    .arg(codec::encode(flushed.version, data))
                    .arg("PX")
                    .arg(ttl_millis(item.ttl))
                    .ignore();
                results.push(flushed);
            }
            if exec(write, conn).await? != RedisValue::Nil {
                return Ok(results);
            }
            backoff(attempts).await;
        }
        Err(OpError::Session(SessionError::Contention {
            attempts: COMMIT_ATTEMPTS,
        }))
    }
}

/// `ASKING` applies to the next command only (outside MULTI): a redirected
/// pipeline repeats it before each keyed command.
fn ask_again(pipe: &mut redis::Pipeline, asking: bool) -> &mut redis::Pipeline {
    if asking {
        pipe.cmd("ASKING").ignore();
    }
    pipe
}

/// Whether the server behind `node` is a Redis Cluster node.
async fn is_cluster(node: &Node) -> bool {
    let info: Result<String, _> = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut node.shared())
        .await;
    info.is_ok_and(|info| info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}

/// After a lost round: a random pause in 0 .. 50 µs × 2^attempt, capped at
/// 10 ms, so writers that collided spread out instead of colliding again.
async fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let ceiling_us = (50u64 << attempt.min(16)).min(10_000);
    // RandomState is randomly keyed per instance: good enough for jitter.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    tokio::time::sleep(Duration::from_micros(random % ceiling_us)).await;
}

fn stored_version_unreadable(raw: Option<&[u8]>) -> bool {
    raw.is_some_and(|raw| codec::decode(raw).is_err())
}

/// Redis PX wants ≥ 1 ms; a sub-millisecond remainder rounds up.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
