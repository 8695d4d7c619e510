//! The in-worker session table used by `inproc` and `handoff` modes.
//!
//! A fixed number of shards, each a `HashMap` behind a std mutex held only
//! for map operations (never across an await), so requests on different
//! sessions rarely touch the same lock and no request waits on another
//! request's handler. Data sits in `Arc`s: a load clones a pointer, and the
//! request copies the map only when it first writes.
//!
//! In `handoff` mode each entry also remembers what the store last saw of it
//! (`store_version`) and every change made since (`pending`). A flush writes
//! the data when the store still holds `store_version`; when another
//! generation wrote the session meanwhile (overlapped recycle), the flush
//! replays `pending` onto the stored copy instead, like a request commit.

use std::collections::hash_map::{DefaultHasher, Entry as MapEntry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::changes::ChangeSet;
use super::id::SessionId;
use super::outcome::CommitOutcome;
use super::session::Session;

const SHARDS: usize = 32;

struct Entry {
    data: Arc<Map<String, Value>>,
    version: u64,
    expires_at: Instant,
    /// Changed since the store last saw it (handoff).
    dirty: bool,
    /// The version the store held when this entry last synced with it; 0
    /// when the store had nothing.
    store_version: u64,
    /// Changes since that sync, with their bases (handoff).
    pending: ChangeSet,
}

/// A dirty session taken out for a flush.
pub(crate) struct FlushItem {
    pub(crate) id: SessionId,
    pub(crate) data: Arc<Map<String, Value>>,
    pub(crate) version: u64,
    pub(crate) store_version: u64,
    pub(crate) pending: ChangeSet,
    pub(crate) ttl: Duration,
}

/// What the store ended up holding after a flush of one item.
pub(crate) struct Flushed {
    pub(crate) version: u64,
    /// `Some` when the store held another writer's version and `pending`
    /// was replayed onto it: the merged data.
    pub(crate) merged: Option<Arc<Map<String, Value>>>,
    pub(crate) conflicts: Vec<String>,
}

pub(crate) struct MemoryTable {
    shards: Box<[Mutex<HashMap<SessionId, Entry>>]>,
    /// Handoff keeps `pending` change sets; inproc never needs them.
    track_pending: bool,
    /// Where the ids of expired sessions go (`inproc` session ends).
    listeners: Mutex<Vec<mpsc::Sender<SessionId>>>,
}

impl MemoryTable {
    pub(crate) fn new(track_pending: bool) -> MemoryTable {
        MemoryTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            track_pending,
            listeners: Mutex::new(Vec::new()),
        }
    }

    /// Sends `tx` the ids of sessions that expire here from now on: found
    /// expired on access, replaced by a commit after expiring, or swept. A
    /// receiver that falls its channel's capacity behind misses the newer
    /// ones; a dropped one is forgotten. (The channel is made by
    /// [`ends`](super::ends), which owns how much a receiver buffers.)
    pub(crate) fn listen(&self, tx: mpsc::Sender<SessionId>) {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
    }

    /// Whether `id` is held here and not expired.
    pub(crate) fn is_live(&self, id: &SessionId) -> bool {
        let now = Instant::now();
        self.shard(id)
            .get(id)
            .is_some_and(|entry| entry.expires_at > now)
    }

    fn ended(&self, ids: &[SessionId]) {
        if ids.is_empty() {
            return;
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|tx| {
            ids.iter()
                .all(|id| !matches!(tx.try_send(*id), Err(mpsc::error::TrySendError::Closed(_))))
        });
    }

    fn shard(&self, id: &SessionId) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        let index = (hasher.finish() as usize) % self.shards.len();
        // A panic while holding a shard lock leaves the map consistent (every
        // mutation is a single insert/assign), so poison is safe to ignore.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live entry's version and data, renewing its expiry.
    pub(crate) fn get(
        &self,
        id: &SessionId,
        timeout: Duration,
    ) -> Option<(u64, Arc<Map<String, Value>>)> {
        let now = Instant::now();
        let mut shard = self.shard(id);
        let entry = shard.get_mut(id)?;
        if entry.expires_at <= now {
            shard.remove(id);
            drop(shard);
            self.ended(&[*id]);
            return None;
        }
        entry.expires_at = now + timeout;
        Some((entry.version, entry.data.clone()))
    }

    /// Takes in a session just read from the store (handoff miss). When a
    /// concurrent request got there first, its entry wins and is returned.
    pub(crate) fn adopt(
        &self,
        id: &SessionId,
        version: u64,
        data: Arc<Map<String, Value>>,
        timeout: Duration,
    ) -> (u64, Arc<Map<String, Value>>) {
        let now = Instant::now();
        let mut shard = self.shard(id);
        match shard.entry(*id) {
            MapEntry::Occupied(mut slot) if slot.get().expires_at > now => {
                let entry = slot.get_mut();
                entry.expires_at = now + timeout;
                (entry.version, entry.data.clone())
            }
            slot => {
                let entry = Entry {
                    data: data.clone(),
                    version,
                    expires_at: now + timeout,
                    dirty: false,
                    store_version: version,
                    pending: ChangeSet::default(),
                };
                match slot {
                    MapEntry::Occupied(mut slot) => {
                        slot.insert(entry);
                    }
                    MapEntry::Vacant(slot) => {
                        slot.insert(entry);
                    }
                }
                (version, data)
            }
        }
    }

    /// Takes in what the store holds after a write-through commit made while
    /// memory already served (a request loaded while the predecessors were
    /// alive, committed after they exited). Store versions only grow, so an
    /// older `version` than the entry has seen is ignored. A dirty entry
    /// keeps its pending changes, laid on top of the stored data, exactly as
    /// a merging flush would; a missing entry is created clean, so a request
    /// that read the store a moment before this commit adopts this copy
    /// instead of its older one.
    pub(crate) fn absorb(
        &self,
        id: &SessionId,
        version: u64,
        data: Arc<Map<String, Value>>,
        timeout: Duration,
    ) {
        let now = Instant::now();
        let mut shard = self.shard(id);
        match shard.get_mut(id) {
            Some(entry) if entry.expires_at > now => {
                if entry.dirty || !entry.pending.is_empty() {
                    if version > entry.store_version {
                        let mut merged = (*data).clone();
                        entry.pending.replay_onto(&mut merged);
                        entry.data = Arc::new(merged);
                        entry.version = entry.version.max(version) + 1;
                        entry.store_version = version;
                    }
                } else if version > entry.version {
                    entry.data = data;
                    entry.version = version;
                    entry.store_version = version;
                }
                entry.expires_at = now + timeout;
            }
            _ => {
                shard.insert(
                    *id,
                    Entry {
                        data,
                        version,
                        expires_at: now + timeout,
                        dirty: false,
                        store_version: version,
                        pending: ChangeSet::default(),
                    },
                );
            }
        }
    }

    /// Applies a request's changes. The whole compare-and-merge happens under
    /// the shard lock, so it always succeeds at the first attempt.
    pub(crate) fn commit(
        &self,
        session: &Session,
        timeout: Duration,
    ) -> (CommitOutcome, Arc<Map<String, Value>>) {
        let now = Instant::now();
        let mut shard = self.shard(session.id());
        let live = shard
            .get(session.id())
            .is_some_and(|entry| entry.expires_at > now);
        if !live && shard.contains_key(session.id()) {
            // An expired entry the sweeper has not reached yet: it ended.
            self.ended(&[*session.id()]);
        }
        if !live {
            // Brand new, or it expired / was abandoned while the request ran:
            // start over from nothing plus this request's changes.
            let (data, conflicts) = if session.version == 0 {
                (session.data.clone(), Vec::new())
            } else {
                let mut data = Map::new();
                let conflicts = session.changes.replay_onto(&mut data);
                (Arc::new(data), conflicts)
            };
            let version = session.version + 1;
            shard.insert(
                *session.id(),
                Entry {
                    data: data.clone(),
                    version,
                    expires_at: now + timeout,
                    dirty: true,
                    store_version: 0,
                    pending: if self.track_pending {
                        session.changes.clone()
                    } else {
                        ChangeSet::default()
                    },
                },
            );
            let merged = session.version != 0;
            return (CommitOutcome::written(version, merged, conflicts, 1), data);
        }
        let entry = shard.get_mut(session.id()).expect("checked live above");
        let (merged, conflicts) = if entry.version == session.version {
            entry.data = session.data.clone();
            (false, Vec::new())
        } else {
            let mut data = (*entry.data).clone();
            let conflicts = session.changes.replay_onto(&mut data);
            entry.data = Arc::new(data);
            (true, conflicts)
        };
        entry.version = entry.version.max(session.version) + 1;
        entry.expires_at = now + timeout;
        entry.dirty = true;
        if self.track_pending {
            entry.pending.then(session.changes.clone());
        }
        (
            CommitOutcome::written(entry.version, merged, conflicts, 1),
            entry.data.clone(),
        )
    }

    pub(crate) fn remove(&self, id: &SessionId) {
        self.shard(id).remove(id);
    }

    /// Drops expired entries; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut ended = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|id, entry| {
                let live = entry.expires_at > now;
                if !live {
                    ended.push(*id);
                }
                live
            });
        }
        self.ended(&ended);
        ended.len()
    }

    /// Live sessions held.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Takes every live dirty entry out for a flush: its data snapshot and
    /// its pending changes (which restart empty, so commits landing during
    /// the flush are tracked separately). Entries are marked clean; a failed
    /// flush puts them back with [`flush_failed`](Self::flush_failed).
    pub(crate) fn take_dirty(&self) -> Vec<FlushItem> {
        let now = Instant::now();
        // Sized once for the worst case: growing a vector of 100k items
        // step by step costs more than the flush of a small table.
        let mut items = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (id, entry) in shard.iter_mut() {
                if !entry.dirty || entry.expires_at <= now {
                    continue;
                }
                entry.dirty = false;
                items.push(FlushItem {
                    id: *id,
                    data: entry.data.clone(),
                    version: entry.version,
                    store_version: entry.store_version,
                    pending: std::mem::take(&mut entry.pending),
                    ttl: entry.expires_at - now,
                });
            }
        }
        items
    }

    /// Records that the store now holds `flushed` for the item.
    pub(crate) fn flushed(&self, item: &FlushItem, flushed: &Flushed) {
        let mut shard = self.shard(&item.id);
        let Some(entry) = shard.get_mut(&item.id) else {
            return;
        };
        entry.store_version = flushed.version;
        let untouched = entry.version == item.version;
        match (&flushed.merged, untouched) {
            (None, _) => {}
            (Some(merged), true) => {
                entry.data = merged.clone();
                entry.version = flushed.version;
            }
            // Requests committed while the flush ran: their changes sit in
            // the fresh `pending`, relative to the snapshot; lay them on top
            // of what the store now holds.
            (Some(merged), false) => {
                let mut data = (**merged).clone();
                entry.pending.replay_onto(&mut data);
                entry.data = Arc::new(data);
                entry.version = entry.version.max(flushed.version) + 1;
            }
        }
    }

    /// Puts a taken item back as dirty after its flush failed.
    pub(crate) fn flush_failed(&self, item: FlushItem) {
        let mut shard = self.shard(&item.id);
        if let Some(entry) = shard.get_mut(&item.id) {
            let newer = std::mem::take(&mut entry.pending);
            let mut pending = item.pending;
            pending.then(newer);
            entry.pending = pending;
            entry.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(table: &MemoryTable, timeout: Duration) -> SessionId {
        let mut session = Session::fresh(SessionId::generate().unwrap());
        session.set("user", "ada").unwrap();
        table.commit(&session, timeout);
        *session.id()
    }

    /// Every way an entry ends here reaches a listener, once: found expired
    /// by a read, replaced by a commit after expiring, or swept. A live one
    /// does not.
    #[test]
    fn expired_sessions_reach_the_listeners() {
        let table = MemoryTable::new(false);
        let (tx, mut ends) = mpsc::channel(16);
        table.listen(tx);
        // A zero timeout: expired from the moment it is written.
        let read = committed(&table, Duration::ZERO);
        let rewritten = committed(&table, Duration::ZERO);
        let swept = committed(&table, Duration::ZERO);
        let live = committed(&table, Duration::from_secs(60));

        assert!(table.get(&read, Duration::from_secs(60)).is_none());
        assert_eq!(ends.try_recv().ok(), Some(read));

        let again = Session::fresh(rewritten);
        table.commit(&again, Duration::from_secs(60));
        assert_eq!(ends.try_recv().ok(), Some(rewritten));

        assert_eq!(table.sweep(), 1);
        assert_eq!(ends.try_recv().ok(), Some(swept));
        assert!(ends.try_recv().is_err(), "nothing else ended");
        assert!(table.get(&live, Duration::from_secs(60)).is_some());

        // A dropped listener is forgotten, not an error.
        drop(ends);
        committed(&table, Duration::ZERO);
        assert_eq!(table.sweep(), 1);
        assert!(table.listeners.lock().unwrap().is_empty());
    }
}
