//! Talking to the session store (the embedded one, or any Redis/Valkey).
//!
//! Two kinds of connection:
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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value as RedisValue};
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use super::codec;
use super::error::SessionError;
use super::handoff::{MARKER_TTL, MARKER_VALUE};
use super::id::SessionId;
use super::memory::{FlushItem, Flushed};
use super::mode::redact_url;
use super::session::Session;
use super::CommitOutcome;

/// Rounds of WATCH/GET/MULTI/EXEC before a commit gives up. Each lost round
/// means another writer of the same session committed in between, so with n
/// concurrent writers one always wins; with the jittered exponential backoff
/// below, losing 32 rounds in a row takes a session hammered by far more
/// concurrent writers than one user's browser can produce.
pub(crate) const COMMIT_ATTEMPTS: u32 = 32;
/// Sessions per flush transaction. Redis's WATCH costs about 1.5 µs per key
/// plus a scan of the keys the connection already watches, so it grows
/// quadratically with the chunk: 1000 keys cost 5.6 ms of server time per
/// WATCH, 100 keys 0.15 ms. At 100 the round trips are still hidden by
/// [`FLUSH_CONNECTIONS`] chunks in flight (measured with the
/// `sessions_handoff_bench` example: 100 beat 50, 200, 250 and 1000).
const FLUSH_CHUNK: usize = 100;
/// Flush transactions in flight at once, each on its own connection.
const FLUSH_CONNECTIONS: usize = 4;
/// Dedicated connections kept for reuse.
const MAX_IDLE: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A store that does not answer within this fails the request instead of
/// hanging it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Store {
    client: redis::Client,
    shared: ConnectionManager,
    idle: Mutex<Vec<MultiplexedConnection>>,
    prefix: String,
    /// For error messages: the URL with its password hidden.
    url: String,
}

impl Store {
    pub(crate) async fn connect(url: &str, prefix: &str) -> Result<Store, SessionError> {
        let redacted = redact_url(url);
        let client = redis::Client::open(url).map_err(|source| SessionError::BadStoreUrl {
            url: redacted.clone(),
            source,
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            // Fail fast on a store that is not there (the redis crate's
            // default backoff waits minutes), and reconnect quickly after a
            // store restart: 2 retries, at most 500 ms apart.
            .set_factor(2)
            .set_max_delay(500)
            .set_number_of_retries(2);
        let shared = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|source| SessionError::Connect {
                url: redacted.clone(),
                source,
            })?;
        Ok(Store {
            client,
            shared,
            idle: Mutex::new(Vec::new()),
            prefix: prefix.to_owned(),
            url: redacted,
        })
    }

    /// The client, for connections of other kinds (the `ends` subscriber).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The shared connection, for one-off commands of other modules.
    pub(crate) fn shared(&self) -> ConnectionManager {
        self.shared.clone()
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

    fn store_error(&self, op: &'static str) -> impl FnOnce(redis::RedisError) -> SessionError + '_ {
        move |source| SessionError::Store {
            url: self.url.clone(),
            op,
            source,
        }
    }

    async fn checkout(&self) -> Result<MultiplexedConnection, SessionError> {
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
            .map_err(|source| SessionError::Connect {
                url: self.url.clone(),
                source,
            })
    }

    fn checkin(&self, conn: MultiplexedConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Reads a session and renews its expiry in the same command (GETEX).
    pub(crate) async fn load(
        &self,
        id: &SessionId,
        ttl: Duration,
    ) -> Result<Option<codec::Stored>, SessionError> {
        let raw: Option<Vec<u8>> = redis::cmd("GETEX")
            .arg(self.key(id))
            .arg("PX")
            .arg(ttl_millis(ttl))
            .query_async(&mut self.shared.clone())
            .await
            .map_err(self.store_error("load"))?;
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
        let key = self.key(session.id());
        let mut conn = self.checkout().await?;
        for attempt in 1..=COMMIT_ATTEMPTS {
            let (raw,): (Option<Vec<u8>>,) = redis::pipe()
                .cmd("WATCH")
                .arg(&key)
                .ignore()
                .cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(self.store_error("commit"))?;
            let stored = match raw.as_deref().map(codec::decode).transpose() {
                Ok(stored) => stored,
                Err(reason) => {
                    // Leave the connection clean before giving it back.
                    let _: Result<(), _> = redis::cmd("UNWATCH").query_async(&mut conn).await;
                    return Err(SessionError::Corrupt {
                        key: self.shown_key(session.id()),
                        reason,
                    });
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
            let exec: RedisValue = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(codec::encode(version, &data))
                .arg("PX")
                .arg(ttl_millis(ttl))
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(self.store_error("commit"))?;
            if exec != RedisValue::Nil {
                self.checkin(conn);
                let outcome = CommitOutcome::written(version, merged, conflicts, attempt);
                return Ok((outcome, data));
            }
            // EXEC answered nil: someone wrote between our GET and EXEC.
            // Back off a little, with jitter, so racing writers spread out.
            backoff(attempt).await;
        }
        self.checkin(conn);
        Err(SessionError::Contention {
            attempts: COMMIT_ATTEMPTS,
        })
    }

    pub(crate) async fn delete(&self, id: &SessionId) -> Result<(), SessionError> {
        redis::cmd("DEL")
            .arg(self.key(id))
            .query_async::<()>(&mut self.shared.clone())
            .await
            .map_err(self.store_error("abandon"))
    }

    /// The handoff marker of the worker with process id `pid`.
    fn marker_key(&self, pid: u32) -> String {
        format!("{}handoff:{pid}", self.prefix)
    }

    /// Says to successors that the worker `pid` has flushed every session
    /// it held: `{prefix}handoff:{pid}` = `flushed`, for [`MARKER_TTL`].
    pub(crate) async fn mark_handed_off(&self, pid: u32) -> Result<(), SessionError> {
        redis::cmd("SET")
            .arg(self.marker_key(pid))
            .arg(MARKER_VALUE)
            .arg("PX")
            .arg(ttl_millis(MARKER_TTL))
            .query_async::<()>(&mut self.shared.clone())
            .await
            .map_err(self.store_error("handoff"))
    }

    /// Removes a marker: a new worker clears the one a long-gone worker
    /// with the same (reused) pid may have left.
    pub(crate) async fn clear_handoff_mark(&self, pid: u32) -> Result<(), SessionError> {
        redis::cmd("DEL")
            .arg(self.marker_key(pid))
            .query_async::<()>(&mut self.shared.clone())
            .await
            .map_err(self.store_error("handoff"))
    }

    /// For each pid, whether its marker says `flushed` (one MGET).
    pub(crate) async fn handoff_marked(&self, pids: &[u32]) -> Result<Vec<bool>, SessionError> {
        let keys: Vec<String> = pids.iter().map(|pid| self.marker_key(*pid)).collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.shared.clone())
            .await
            .map_err(self.store_error("handoff"))?;
        Ok(values
            .iter()
            .map(|v| v.as_deref() == Some(MARKER_VALUE.as_bytes()))
            .collect())
    }

    /// Writes many sessions: chunks of [`FLUSH_CHUNK`], each one
    /// `WATCH keys… ; MGET keys…` then `MULTI ; SET … PX … ×n ; EXEC`, with
    /// [`FLUSH_CONNECTIONS`] chunks in flight. Returns every item with what
    /// happened to it, so the caller can settle its memory entry.
    pub(crate) async fn flush(
        self: &Arc<Self>,
        items: Vec<FlushItem>,
    ) -> Vec<(FlushItem, Result<Flushed, Arc<SessionError>>)> {
        let mut chunks: Vec<Vec<FlushItem>> = Vec::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(FLUSH_CHUNK).collect());
        }
        let lanes = FLUSH_CONNECTIONS.min(chunks.len()).max(1);
        let mut per_lane: Vec<Vec<Vec<FlushItem>>> = (0..lanes).map(|_| Vec::new()).collect();
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
        chunks: Vec<Vec<FlushItem>>,
    ) -> Vec<(FlushItem, Result<Flushed, Arc<SessionError>>)> {
        let mut out = Vec::new();
        let mut conn = None;
        for chunk in chunks {
            let result = match conn.take() {
                Some(c) => Ok(c),
                None => self.checkout().await,
            };
            let result = match result {
                Ok(mut c) => match self.flush_chunk(&mut c, &chunk).await {
                    Ok(flushed) => {
                        conn = Some(c);
                        Ok(flushed)
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(flushed) => out.extend(chunk.into_iter().zip(flushed.into_iter().map(Ok))),
                Err(e) => {
                    let e = Arc::new(e);
                    out.extend(chunk.into_iter().map(|item| (item, Err(Arc::clone(&e)))));
                }
            }
        }
        if let Some(c) = conn {
            self.checkin(c);
        }
        out
    }

    async fn flush_chunk(
        &self,
        conn: &mut MultiplexedConnection,
        chunk: &[FlushItem],
    ) -> Result<Vec<Flushed>, SessionError> {
        let keys: Vec<String> = chunk.iter().map(|item| self.key(&item.id)).collect();
        for attempts in 1..=COMMIT_ATTEMPTS {
            let (raws,): (Vec<Option<Vec<u8>>>,) = redis::pipe()
                .cmd("WATCH")
                .arg(&keys)
                .ignore()
                .cmd("MGET")
                .arg(&keys)
                .query_async(conn)
                .await
                .map_err(self.store_error("flush"))?;
            let mut results = Vec::with_capacity(chunk.len());
            let mut write = redis::pipe();
            write.atomic();
            for ((item, key), raw) in chunk.iter().zip(&keys).zip(raws) {
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
            let exec: RedisValue = write
                .query_async(conn)
                .await
                .map_err(self.store_error("flush"))?;
            if exec != RedisValue::Nil {
                return Ok(results);
            }
            backoff(attempts).await;
        }
        Err(SessionError::Contention {
            attempts: COMMIT_ATTEMPTS,
        })
    }
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
