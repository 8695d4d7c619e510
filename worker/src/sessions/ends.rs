//! Session ends (ASP.NET's `Session_End`), out of process: the store's key
//! expiry notifications, filtered down to this app's session ids.
//!
//! When a key expires, the store publishes its name on the channel
//! `__keyevent@<db>__:expired`. appvisor's embedded store always does, in
//! each app's own namespace; a real Redis only with `notify-keyspace-events`
//! containing `E` and `x`, which [`subscribe`] checks with `CONFIG GET` and,
//! when missing, tries to add with `CONFIG SET` (keeping the flags already
//! there). A server that refuses gets a [`SessionError::ExpiryEventsOff`]
//! naming the command to run; one that refuses `CONFIG GET` altogether (a
//! managed Redis) is trusted, with one `tracing` warning.
//!
//! A dedicated pub/sub connection carries the events: a subscribed
//! connection can run no other commands, so it cannot be the shared one. A
//! background task reads it, keeps payloads that start with this app's
//! session prefix and whose rest passes [`SessionId::parse`] (everything
//! else — handoff markers, other apps' keys on a shared Redis, foreign
//! keys — is dropped), and hands the ids to [`SessionEnds`] through a
//! bounded channel. When the connection drops it reconnects with doubling
//! backoff (50 ms … 5 s), warning (a `tracing` event) once per outage. Pub/sub is
//! fire-and-forget, so expiries during an outage are lost; a slow consumer
//! that lets the channel fill up holds the reader, and the server then
//! buffers (and may eventually drop the connection, which reconnects).
//!
//! The first subscription happens before [`subscribe`] returns: every key
//! that expires after that is reported (while connected).
//!
//! *Memory.* In `inproc` mode the ids come from the worker's memory table
//! as it expires sessions (no store, no task). In `handoff` mode both feed
//! one receiver, and a store expiry of a session the memory holds live is
//! dropped: between hand-offs its store copy is not renewed.
//!
//! *Cluster.* A node publishes the expiry of its own keys only, so on a
//! Redis Cluster every master is checked (and `CONFIG SET` if needed) and
//! gets a subscriber; the masters are looked up again when a subscriber
//! loses its connection and every 30 s, so failovers and new masters are
//! followed.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use redis::aio::PubSubStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::error::SessionError;
use super::id::SessionId;
use super::memory::MemoryTable;
use super::store::{Node, Store};

/// Ids buffered between the subscriber task (or the memory table) and the app.
pub(crate) const BUFFER: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the masters of a cluster are looked up again.
const RESYNC: Duration = Duration::from_secs(30);

/// The ids of this app's sessions whose store keys expired, as they expire.
/// From [`Sessions::on_end`](super::Sessions::on_end). Dropping it stops
/// the subscriber and closes its connection.
#[derive(Debug)]
pub struct SessionEnds {
    ids: mpsc::Receiver<SessionId>,
    /// The store subscriber; None for in-memory (`inproc`) ends.
    task: Option<tokio::task::AbortHandle>,
}

impl SessionEnds {
    /// The next ended session. Waits for as long as it takes; the
    /// subscriber reconnects on its own, so this only returns `None` if the
    /// subscriber task died (its runtime shut down).
    pub async fn recv(&mut self) -> Option<SessionId> {
        self.ids.recv().await
    }

    /// An ended session already received, if any, without waiting.
    pub fn try_recv(&mut self) -> Option<SessionId> {
        self.ids.try_recv().ok()
    }
}

impl Drop for SessionEnds {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Ends of sessions kept in worker memory (`inproc`), fed by the memory
/// table as entries expire.
pub(crate) fn in_memory(memory: &MemoryTable) -> SessionEnds {
    let (tx, ids) = mpsc::channel(BUFFER);
    memory.listen(tx);
    SessionEnds { ids, task: None }
}

/// Where subscribers send ids, and which ids they keep.
#[derive(Clone)]
struct Sink {
    /// This app's session key prefix.
    prefix: String,
    /// `handoff`: the worker's memory; a store expiry of a session it holds
    /// live is not an end (only the unrenewed store copy lapsed).
    memory: Option<Arc<MemoryTable>>,
    tx: mpsc::Sender<SessionId>,
}

/// Makes sure the store publishes expiry events, subscribes, and starts the
/// task that forwards this app's expired session ids. With `memory`
/// (`handoff`), the ids its own expiries report go to the same receiver.
pub(crate) async fn subscribe(
    store: Arc<Store>,
    memory: Option<Arc<MemoryTable>>,
) -> Result<SessionEnds, SessionError> {
    let masters = store.masters().await?;
    for (name, node) in &masters {
        ensure_expiry_events(&store, name, node).await?;
    }
    let channel = format!("__keyevent@{}__:expired", store.db());
    let (tx, ids) = mpsc::channel(BUFFER);
    if let Some(memory) = &memory {
        memory.listen(tx.clone());
    }
    let sink = Sink {
        prefix: store.prefix().to_owned(),
        memory,
        tx,
    };
    let mut subscribers = JoinSet::new();
    let mut subscribed = HashSet::new();
    for (name, node) in masters {
        let messages = connect(&node, &channel)
            .await
            .map_err(|source| SessionError::Connect {
                url: name.clone(),
                source,
            })?;
        watch_server(&sink, &mut subscribers, &mut subscribed, name, messages);
    }
    let task = tokio::spawn(keep_subscribed(
        store,
        channel,
        sink,
        subscribers,
        subscribed,
    ));
    Ok(SessionEnds {
        ids,
        task: Some(task.abort_handle()),
    })
}

async fn ensure_expiry_events(store: &Store, name: &str, node: &Node) -> Result<(), SessionError> {
    let mut conn = node.shared();
    let got: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await;
    let flags = match got {
        Ok(pair) => pair.get(1).cloned().unwrap_or_default(),
        Err(e) => {
            // Managed Redis services often disable CONFIG but let their
            // users switch the events on in a console: trust, and say so.
            tracing::warn!(
                "cannot check notify-keyspace-events on the session store at \
                 {name} ({e}); session end events arrive only if it has `E` and `x`"
            );
            return Ok(());
        }
    };
    let Some(wanted) = flags_with_expiry(&flags) else {
        return Ok(());
    };
    let set: Result<(), _> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(&mut conn)
        .await;
    set.map_err(|source| SessionError::ExpiryEventsOff {
        url: if store.is_cluster() {
            format!("{} (cluster node {name})", store.redacted_url())
        } else {
            name.to_owned()
        },
        flags,
        wanted,
        source: Box::new(source),
    })
}

/// `None` when `flags` already publish expired events on the keyevent
/// channel (`E` plus `x` or its alias `A`); otherwise the flags with what
/// is missing added.
fn flags_with_expiry(flags: &str) -> Option<String> {
    let has_event = flags.contains('E');
    let has_expired = flags.contains('x') || flags.contains('A');
    if has_event && has_expired {
        return None;
    }
    let mut wanted = flags.to_owned();
    if !has_event {
        wanted.push('E');
    }
    if !has_expired {
        wanted.push('x');
    }
    Some(wanted)
}

async fn connect(node: &Node, channel: &str) -> Result<PubSubStream, redis::RedisError> {
    let attempt = async {
        let mut pubsub = node.client().get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub.into_on_message())
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no SUBSCRIBE answer within {CONNECT_TIMEOUT:?}"),
        ))),
    }
}

/// Starts the subscriber of the server `name` and notes that it has one.
fn watch_server(
    sink: &Sink,
    subscribers: &mut JoinSet<Option<String>>,
    subscribed: &mut HashSet<String>,
    name: String,
    messages: PubSubStream,
) {
    subscribers.spawn(forward(sink.clone(), name.clone(), messages));
    subscribed.insert(name);
}

/// One subscriber: forwards ids until its connection ends (returns the
/// server's name) or the receiver goes away (returns None).
async fn forward(sink: Sink, name: String, mut messages: PubSubStream) -> Option<String> {
    let Sink { prefix, memory, tx } = sink;
    loop {
        let next = tokio::select! {
            next = next_message(&mut messages) => next,
            () = tx.closed() => return None,
        };
        let Some(message) = next else {
            return Some(name);
        };
        let Ok(key) = message.get_payload::<Vec<u8>>() else {
            continue;
        };
        if let Some(id) = session_of(&prefix, &key) {
            if memory.as_ref().is_some_and(|m| m.is_live(&id)) {
                continue;
            }
            if tx.send(id).await.is_err() {
                return None;
            }
        }
    }
}

/// Keeps one subscriber on every server that holds keys: when one loses
/// its connection it is re-established with doubling backoff (warning once
/// per outage); on a cluster the masters are also looked up again every
/// [`RESYNC`], so that a failover or a new master is followed.
async fn keep_subscribed(
    store: Arc<Store>,
    channel: String,
    sink: Sink,
    mut subscribers: JoinSet<Option<String>>,
    mut subscribed: HashSet<String>,
) {
    let tx = sink.tx.clone();
    let mut backoff = FIRST_BACKOFF;
    let mut warned = false;
    let mut outage = false;
    loop {
        let resync = tokio::select! {
            ended = subscribers.join_next(), if !subscribers.is_empty() => {
                match ended {
                    Some(Ok(Some(name))) => {
                        tracing::warn!(
                            "session end events: lost the connection to \
                             {name}; reconnecting (sessions expiring meanwhile are not reported)"
                        );
                        subscribed.remove(&name);
                        outage = true;
                        true
                    }
                    // The receiver is gone (or a subscriber panicked).
                    _ => return,
                }
            }
            () = tokio::time::sleep(RESYNC), if store.is_cluster() => true,
            () = tx.closed() => return,
        };
        if !resync {
            continue;
        }
        // (Re)subscribe where missing, until every server has a subscriber.
        loop {
            let missing: Result<Vec<_>, SessionError> = store.masters().await.map(|masters| {
                masters
                    .into_iter()
                    .filter(|(name, _)| !subscribed.contains(name))
                    .collect()
            });
            let mut failed = None;
            match missing {
                Ok(missing) => {
                    for (name, node) in missing {
                        match connect(&node, &channel).await {
                            Ok(messages) => {
                                if outage || warned {
                                    tracing::info!("session end events: reconnected to {name}");
                                }
                                watch_server(
                                    &sink,
                                    &mut subscribers,
                                    &mut subscribed,
                                    name,
                                    messages,
                                );
                            }
                            Err(e) => failed = Some(format!("cannot subscribe at {name}: {e}")),
                        }
                    }
                }
                Err(e) => failed = Some(e.to_string()),
            }
            let Some(why) = failed else {
                backoff = FIRST_BACKOFF;
                warned = false;
                outage = false;
                break;
            };
            if !warned {
                tracing::warn!("session end events: {why}; retrying");
                warned = true;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

async fn next_message(messages: &mut PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *messages).poll_next(cx)).await
}

/// The session id in an expired key, if the key is one of this app's
/// sessions.
fn session_of(prefix: &str, key: &[u8]) -> Option<SessionId> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    SessionId::parse(std::str::from_utf8(rest).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_apps_session_keys_are_ends() {
        let id = SessionId::generate().unwrap();
        let key = format!("shop:s:{}", id.as_str());
        assert_eq!(session_of("shop:s:", key.as_bytes()), Some(id));
        assert_eq!(session_of("cart:s:", key.as_bytes()), None);
        assert_eq!(session_of("shop:s:", b"shop:s:handoff:4121"), None);
        assert_eq!(session_of("shop:s:", b"shop:s:"), None);
        let long = format!("{key}x");
        assert_eq!(session_of("shop:s:", long.as_bytes()), None);
        assert_eq!(session_of("shop:s:", b"shop:s:\xff\xfe"), None);
    }

    #[test]
    fn expiry_flags_are_added_not_replaced() {
        assert_eq!(flags_with_expiry("").as_deref(), Some("Ex"));
        assert_eq!(flags_with_expiry("xE"), None);
        assert_eq!(flags_with_expiry("KEA"), None);
        assert_eq!(flags_with_expiry("Kg").as_deref(), Some("KgEx"));
        assert_eq!(flags_with_expiry("Eg").as_deref(), Some("Egx"));
    }
}
