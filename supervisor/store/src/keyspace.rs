//! The data: one namespace ([`Db`]) per app, each a hash table of string keys with
//! optional absolute expiry times.
//!
//! Memory is the point of this layout. An [`Entry`] is 24 bytes in the table: one
//! shared allocation holding `[key length: u32][key][value]` and an expiry in unix
//! milliseconds (0 = none). No per-key `Box` for the key, no `Option` padding, no
//! second allocation for the value. The allocation is an `Arc` so that a log
//! rewrite can snapshot the whole keyspace by reference counting, not copying.
//!
//! Expiry is lazy (every lookup removes a key whose time has passed) plus active:
//! each `Db` keeps a min-heap of `(deadline, key hash)` that the purge task pops
//! when due. Heap entries are never updated in place; a stale one (the key was
//! deleted or its expiry moved) is recognised when popped and skipped, and the heap
//! is rebuilt when stale entries outnumber live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use tokio::sync::Notify;

use super::pubsub::PubSub;

/// One key and its value, in a single allocation.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    data: Arc<[u8]>,
    /// Absolute unix time in ms; 0 means no expiry.
    pub expires_at: u64,
}

impl Entry {
    fn build(key: &[u8], value: &[u8], expires_at: u64, scratch: &mut Vec<u8>) -> Entry {
        scratch.clear();
        scratch.extend_from_slice(&(key.len() as u32).to_le_bytes());
        scratch.extend_from_slice(key);
        scratch.extend_from_slice(value);
        Entry {
            data: Arc::from(&scratch[..]),
            expires_at,
        }
    }

    fn key_len(&self) -> usize {
        u32::from_le_bytes([self.data[0], self.data[1], self.data[2], self.data[3]]) as usize
    }

    pub fn key(&self) -> &[u8] {
        &self.data[4..4 + self.key_len()]
    }

    pub fn value(&self) -> &[u8] {
        &self.data[4 + self.key_len()..]
    }

    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }

    /// What this entry costs the allocator: Arc counts, malloc's header, rounding.
    fn heap_size(&self) -> usize {
        alloc_size(self.data.len() + 16)
    }
}

/// glibc malloc's chunk for a request of `n` bytes (8-byte header, 16-byte steps).
fn alloc_size(n: usize) -> usize {
    (n + 8).max(32).next_multiple_of(16)
}

/// One app's keys, expiry heap, watchers and channels.
#[derive(Debug)]
pub(crate) struct Db {
    pub name: Arc<str>,
    table: HashTable<Entry>,
    hasher: RandomState,
    /// Keys with an expiry (INFO's `expires=`).
    expiring: usize,
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// Sum of the entries' allocations.
    data_bytes: usize,
    /// Bumped whenever the table may have moved entries (a resize or an in-place
    /// rehash), which invalidates SCAN cursors minted before.
    layout_epoch: u16,
    /// WATCHed keys and the flags of the connections watching them.
    watchers: HashMap<Box<[u8]>, Vec<Arc<AtomicBool>>>,
    pub pubsub: PubSub,
    /// Reused to assemble a new entry before it is copied into its allocation.
    scratch: Vec<u8>,
    alarm: Arc<PurgeAlarm>,
    /// Keys removed (or replaced) because their deadline passed, since start
    /// (metrics: `appvisor_store_expired_keys_total`).
    pub expired: u64,
}

/// How a new deadline reaches the purge task: it sleeps until `at`, and is woken
/// when a key gets an earlier one.
#[derive(Debug)]
pub(crate) struct PurgeAlarm {
    /// Unix ms of the purge task's next wake; u64::MAX when it sleeps until told.
    pub at: AtomicU64,
    pub notify: Notify,
}

impl Default for PurgeAlarm {
    fn default() -> Self {
        PurgeAlarm {
            at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }
}

impl PurgeAlarm {
    fn deadline_set(&self, at: u64) {
        if at < self.at.load(Ordering::Relaxed) {
            self.at.store(at, Ordering::Relaxed);
            self.notify.notify_one();
        }
    }
}

/// How far a SCAN call got.
pub(crate) struct ScanStep {
    /// 0 when the iteration is complete.
    pub cursor: u64,
}

const CURSOR_INDEX_BITS: u32 = 40;

impl Db {
    pub fn new(name: Arc<str>, alarm: Arc<PurgeAlarm>) -> Db {
        Db {
            name,
            table: HashTable::new(),
            hasher: RandomState::default(),
            expiring: 0,
            deadlines: BinaryHeap::new(),
            data_bytes: 0,
            layout_epoch: 0,
            watchers: HashMap::new(),
            pubsub: PubSub::default(),
            scratch: Vec::new(),
            alarm,
            expired: 0,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn expiring(&self) -> usize {
        self.expiring
    }

    /// Estimated bytes held: entries, the table, the expiry heap.
    pub fn memory(&self) -> usize {
        self.data_bytes
            + self.table.allocation_size()
            + self.deadlines.capacity() * std::mem::size_of::<Reverse<(u64, u64)>>()
    }

    /// Finds `key`'s bucket, removing it first (and announcing it) if it expired.
    fn locate(&mut self, key: &[u8], now: u64) -> Option<usize> {
        let hash = self.hash(key);
        let index = self.table.find_bucket_index(hash, |e| e.key() == key)?;
        let expired = self
            .table
            .get_bucket(index)
            .is_some_and(|e| e.is_expired(now));
        if expired {
            self.remove_bucket(index, true);
            return None;
        }
        Some(index)
    }

    fn remove_bucket(&mut self, index: usize, expired: bool) -> Option<Entry> {
        let entry = self.table.get_bucket_entry(index).ok()?.remove().0;
        self.forget(&entry);
        self.touch(entry.key());
        if expired {
            self.expired += 1;
            self.pubsub.publish_expired(entry.key());
        }
        Some(entry)
    }

    fn forget(&mut self, entry: &Entry) {
        self.data_bytes -= entry.heap_size();
        if entry.expires_at != 0 {
            self.expiring -= 1;
        }
    }

    pub fn get(&mut self, key: &[u8], now: u64) -> Option<&Entry> {
        let index = self.locate(key, now)?;
        self.table.get_bucket(index)
    }

    pub fn contains(&mut self, key: &[u8], now: u64) -> bool {
        self.locate(key, now).is_some()
    }

    /// Stores `value` under `key` with `expires_at` (0 = none), replacing what was there.
    pub fn set(&mut self, key: &[u8], value: &[u8], expires_at: u64, now: u64) {
        let hash = self.hash(key);
        if let Some(index) = self.table.find_bucket_index(hash, |e| e.key() == key) {
            let expired = self
                .table
                .get_bucket(index)
                .is_some_and(|e| e.is_expired(now));
            if expired {
                // Announce the old key's end before it is replaced, as Redis does.
                self.expired += 1;
                self.pubsub.publish_expired(key);
            }
            let entry = self.table.get_bucket_mut(index).expect("bucket just found");
            let old_expiry = entry.expires_at;
            let key_len = key.len();
            let same_size = entry.data.len() == 4 + key_len + value.len();
            match Arc::get_mut(&mut entry.data) {
                // Same size and not shared with a log rewrite: overwrite in place.
                Some(data) if same_size => data[4 + key_len..].copy_from_slice(value),
                _ => {
                    let new = Entry::build(key, value, 0, &mut self.scratch);
                    self.data_bytes = self.data_bytes - entry.heap_size() + new.heap_size();
                    entry.data = new.data;
                }
            }
            entry.expires_at = expires_at;
            self.expiry_changed(old_expiry, expires_at, hash);
        } else {
            self.before_insert();
            let entry = Entry::build(key, value, expires_at, &mut self.scratch);
            self.data_bytes += entry.heap_size();
            let hasher = &self.hasher;
            self.table
                .insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
            self.expiry_changed(0, expires_at, hash);
        }
        self.touch(key);
    }

    /// An insert into a full table resizes or rehashes it: SCAN cursors go stale.
    fn before_insert(&mut self) {
        if self.table.len() == self.table.capacity() {
            self.layout_epoch = self.layout_epoch.wrapping_add(1);
        }
    }

    fn expiry_changed(&mut self, old: u64, new: u64, hash: u64) {
        match (old != 0, new != 0) {
            (false, true) => self.expiring += 1,
            (true, false) => self.expiring -= 1,
            _ => {}
        }
        if new != 0 && new != old {
            self.deadlines.push(Reverse((new, hash)));
            self.alarm.deadline_set(new);
            // Sliding expiry pushes an entry per renewal; rebuilding once stale
            // entries outnumber live ones keeps the heap within 2× (amortised O(1)).
            if self.deadlines.len() > 2 * self.expiring + 1024 {
                self.rebuild_deadlines();
            }
        }
    }

    /// Removes `key`; false if it did not exist (or had already expired).
    pub fn remove(&mut self, key: &[u8], now: u64) -> bool {
        match self.locate(key, now) {
            Some(index) => self.remove_bucket(index, false).is_some(),
            None => false,
        }
    }

    /// Removes `key` and hands back its entry (GETDEL).
    pub fn take(&mut self, key: &[u8], now: u64) -> Option<Entry> {
        let index = self.locate(key, now)?;
        self.remove_bucket(index, false)
    }

    /// Sets or clears (`at == 0`) the expiry of a live key; false if absent.
    pub fn set_expiry(&mut self, key: &[u8], at: u64, now: u64) -> bool {
        let Some(index) = self.locate(key, now) else {
            return false;
        };
        let hash = self.hash(key);
        let entry = self.table.get_bucket_mut(index).expect("bucket just found");
        let old = entry.expires_at;
        entry.expires_at = at;
        self.expiry_changed(old, at, hash);
        self.touch(key);
        true
    }

    /// Removes every key (FLUSHDB), waking every watcher.
    pub fn flush(&mut self) {
        for flags in self.watchers.values() {
            for flag in flags {
                flag.store(true, Ordering::Relaxed);
            }
        }
        self.table = HashTable::new();
        self.deadlines = BinaryHeap::new();
        self.expiring = 0;
        self.data_bytes = 0;
        self.layout_epoch = self.layout_epoch.wrapping_add(1);
    }

    /// Marks the connections WATCHing `key` as conflicted.
    fn touch(&self, key: &[u8]) {
        if self.watchers.is_empty() {
            return;
        }
        if let Some(flags) = self.watchers.get(key) {
            for flag in flags {
                flag.store(true, Ordering::Relaxed);
            }
        }
    }

    pub fn watch(&mut self, key: &[u8], flag: &Arc<AtomicBool>) {
        let flags = self.watchers.entry(key.into()).or_default();
        if !flags.iter().any(|f| Arc::ptr_eq(f, flag)) {
            flags.push(flag.clone());
        }
    }

    pub fn unwatch(&mut self, key: &[u8], flag: &Arc<AtomicBool>) {
        if let Some(flags) = self.watchers.get_mut(key) {
            flags.retain(|f| !Arc::ptr_eq(f, flag));
            if flags.is_empty() {
                self.watchers.remove(key);
            }
        }
    }

    /// The earliest deadline in the heap (possibly stale: waking early is harmless).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes keys whose deadline has passed, at most `budget` heap pops. Returns
    /// how many keys expired.
    pub fn purge(&mut self, now: u64, budget: usize) -> usize {
        let mut expired = 0;
        for _ in 0..budget {
            match self.deadlines.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, hash))) = self.deadlines.pop() else {
                break;
            };
            let hasher = &self.hasher;
            let found = self.table.find_bucket_index(hash, |e| {
                e.expires_at == at && hasher.hash_one(e.key()) == hash
            });
            if let Some(index) = found {
                self.remove_bucket(index, true);
                expired += 1;
            }
        }
        expired
    }

    fn rebuild_deadlines(&mut self) {
        let hasher = &self.hasher;
        let live: Vec<_> = self
            .table
            .iter()
            .filter(|e| e.expires_at != 0)
            .map(|e| Reverse((e.expires_at, hasher.hash_one(e.key()))))
            .collect();
        self.deadlines = BinaryHeap::from(live);
    }

    /// Visits buckets from `cursor` on until `count` entries were seen (or a bound on
    /// empty buckets), skipping expired ones, and returns the next cursor.
    ///
    /// A cursor is `[epoch: 16 bits][bucket index: 40 bits]`. Entries never move
    /// between buckets unless the table resizes or rehashes; when it did since the
    /// cursor was minted the walk restarts at bucket 0, so every key present for the
    /// whole iteration is still returned (some perhaps twice, which SCAN allows).
    pub fn scan<'s>(
        &'s self,
        cursor: u64,
        count: usize,
        now: u64,
        mut visit: impl FnMut(&'s Entry),
    ) -> ScanStep {
        let epoch = (cursor >> CURSOR_INDEX_BITS) as u16;
        let mut index = (cursor & ((1 << CURSOR_INDEX_BITS) - 1)) as usize;
        if cursor != 0 && epoch != self.layout_epoch {
            index = 0;
        }
        let buckets = self.table.num_buckets();
        let mut seen = 0;
        let mut visited = 0;
        let max_visits = count.saturating_mul(10).max(100);
        while index < buckets && seen < count && visited < max_visits {
            if let Some(e) = self.table.get_bucket(index) {
                seen += 1;
                if !e.is_expired(now) {
                    visit(e);
                }
            }
            index += 1;
            visited += 1;
        }
        if index >= buckets {
            return ScanStep { cursor: 0 };
        }
        ScanStep {
            cursor: (u64::from(self.layout_epoch) << CURSOR_INDEX_BITS) | index as u64,
        }
    }

    /// Every live entry, by reference count (for a log rewrite).
    pub fn snapshot(&self, now: u64, into: &mut Vec<(Arc<str>, Entry)>) {
        into.extend(
            self.table
                .iter()
                .filter(|e| !e.is_expired(now))
                .map(|e| (self.name.clone(), e.clone())),
        );
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    /// The data bytes as counted, and as the entries add up (equal unless the
    /// accounting drifted).
    #[cfg(test)]
    pub fn data_bytes_recounted(&self) -> (usize, usize) {
        (
            self.data_bytes,
            self.table.iter().map(Entry::heap_size).sum(),
        )
    }
}

/// Credentials and the namespaces of every app, plus per-batch bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Keyspace {
    pub dbs: Vec<Db>,
    by_name: HashMap<Arc<str>, usize>,
    /// app → password. An app without an entry here (removed from the config) keeps
    /// its data but no new connection can log in as it.
    passwords: HashMap<Arc<str>, String>,
    /// Log records produced since the last hand-off to the log writer.
    pub log: Vec<u8>,
    /// Whether mutations are logged at all (`persist != "no"`).
    pub logging: bool,
    pub alarm: Arc<PurgeAlarm>,
    /// Commands run since start, every connection's (metrics:
    /// `appvisor_store_commands_total`).
    pub commands: u64,
}

impl Keyspace {
    pub fn new(logging: bool) -> Keyspace {
        Keyspace {
            logging,
            ..Keyspace::default()
        }
    }

    /// The namespace of `app`, created on first use.
    pub fn db_id(&mut self, app: &str) -> usize {
        if let Some(&id) = self.by_name.get(app) {
            return id;
        }
        let name: Arc<str> = Arc::from(app);
        self.dbs.push(Db::new(name.clone(), self.alarm.clone()));
        self.by_name.insert(name, self.dbs.len() - 1);
        self.dbs.len() - 1
    }

    #[cfg(test)]
    pub fn find_db(&self, app: &str) -> Option<usize> {
        self.by_name.get(app).copied()
    }

    /// Replaces the credential list (config load and reload).
    pub fn set_apps<'a>(&mut self, apps: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.passwords.clear();
        for (app, password) in apps {
            let id = self.db_id(app);
            self.passwords
                .insert(self.dbs[id].name.clone(), password.to_owned());
        }
    }

    /// Checks a login. With a username it must be an app name; with only a password
    /// (`AUTH password`, clients that predate ACLs) the app whose token it is.
    pub fn authenticate(&self, user: Option<&[u8]>, password: &[u8]) -> Option<usize> {
        let app = match user {
            Some(user) => {
                let user = std::str::from_utf8(user).ok()?;
                let (app, expected) = self.passwords.get_key_value(user)?;
                constant_time_eq(expected.as_bytes(), password).then_some(app)?
            }
            None => {
                let mut found = None;
                for (app, expected) in &self.passwords {
                    if constant_time_eq(expected.as_bytes(), password) {
                        found = Some(app);
                    }
                }
                found?
            }
        };
        self.by_name.get(app).copied()
    }

    pub fn keys(&self) -> usize {
        self.dbs.iter().map(Db::len).sum()
    }

    pub fn memory(&self) -> usize {
        self.dbs.iter().map(Db::memory).sum()
    }
}

/// Compares secrets without an early exit that would leak how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_overwrite_remove() {
        let mut db = Db::new("a".into(), Arc::default());
        db.set(b"k", b"v1", 0, 1);
        assert_eq!(db.get(b"k", 1).unwrap().value(), b"v1");
        db.set(b"k", b"v2", 0, 1); // in place
        assert_eq!(db.get(b"k", 1).unwrap().value(), b"v2");
        db.set(b"k", b"longer", 0, 1);
        assert_eq!(db.get(b"k", 1).unwrap().value(), b"longer");
        assert_eq!(db.get(b"k", 1).unwrap().key(), b"k");
        assert!(db.remove(b"k", 1));
        assert!(!db.remove(b"k", 1));
        assert_eq!(db.len(), 0);
        assert_eq!(db.data_bytes, 0);
    }

    #[test]
    fn lazy_and_active_expiry() {
        let mut db = Db::new("a".into(), Arc::default());
        db.set(b"lazy", b"v", 100, 0);
        db.set(b"active", b"v", 200, 0);
        db.set(b"moved", b"v", 150, 0);
        assert!(db.set_expiry(b"moved", 1000, 0));
        assert_eq!(db.expiring(), 3);
        assert!(db.get(b"lazy", 100).is_none());
        assert_eq!(db.len(), 2);
        assert_eq!(
            db.purge(300, 100),
            1,
            "only 'active' is due; 'moved' was pushed back"
        );
        assert_eq!(db.len(), 1);
        assert_eq!(db.purge(1000, 100), 1);
        assert_eq!(db.len(), 0);
        assert_eq!(db.expiring(), 0);
        assert_eq!(db.next_deadline(), None);
    }

    #[test]
    fn scan_visits_everything_once_without_resize() {
        let mut db = Db::new("a".into(), Arc::default());
        for i in 0..1000 {
            db.set(format!("k{i}").as_bytes(), b"v", 0, 0);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        loop {
            let step = db.scan(cursor, 10, 0, |e| {
                assert!(seen.insert(e.key().to_vec()), "duplicate");
            });
            cursor = step.cursor;
            if cursor == 0 {
                break;
            }
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn scan_survives_a_resize_mid_iteration() {
        let mut db = Db::new("a".into(), Arc::default());
        for i in 0..100 {
            db.set(format!("old{i}").as_bytes(), b"v", 0, 0);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = db.scan(0, 10, 0, |e| {
            seen.insert(e.key().to_vec());
        });
        // Growing the table moves entries: the stale cursor restarts the walk.
        for i in 0..10_000 {
            db.set(format!("new{i}").as_bytes(), b"v", 0, 0);
        }
        while cursor.cursor != 0 {
            cursor = db.scan(cursor.cursor, 100, 0, |e| {
                seen.insert(e.key().to_vec());
            });
        }
        for i in 0..100 {
            assert!(seen.contains(format!("old{i}").as_bytes()), "old{i} missed");
        }
    }

    #[test]
    fn auth_by_user_or_password_alone() {
        let mut ks = Keyspace::new(false);
        ks.set_apps([("shop", "s3cret"), ("blog", "t0ken")]);
        let shop = ks.find_db("shop").unwrap();
        assert_eq!(ks.authenticate(Some(b"shop"), b"s3cret"), Some(shop));
        assert_eq!(ks.authenticate(Some(b"shop"), b"t0ken"), None);
        assert_eq!(ks.authenticate(None, b"t0ken"), ks.find_db("blog"));
        assert_eq!(ks.authenticate(Some(b"nobody"), b"s3cret"), None);
    }
}
