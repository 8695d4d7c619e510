//! The append-only log: every change to the data, as a RESP command with
//! absolute expiry times, written by a dedicated thread.
//!
//! # Theory of operation
//!
//! Connections never touch the file. At the end of each batch of requests (while
//! still holding the keyspace lock, so the log's order is the order changes were
//! applied) a connection hands its records to [`LogWriter::submit`], which appends
//! them to a queue. The thread writes whatever is queued in one `write`, so under
//! load many batches share one system call, then:
//!
//! - `persist = "everysec"`: `fdatasync` at most once a second, on a thread of its
//!   own ([`syncer`]) so that appends go on meanwhile. A submit wakes the
//!   thread only if it waits for records (or the queue passed [`WAKE_BYTES`]);
//!   right after a write the thread lets records gather for [`FLUSH_DELAY`]. So
//!   records reach the kernel within ~10 ms of being acknowledged — all a
//!   `kill -9` of the supervisor can lose — while a stream of writes costs one
//!   wake-up and one `write` per 10 ms rather than per request. A power cut loses
//!   ≤ 1 s (2 s if a sync took longer than a second). Should the disk fall
//!   behind a burst of writes, connections wait once [`MAX_BACKLOG`] bytes are
//!   queued ([`LogWriter::throttle`]).
//! - `persist = "always"`: a connection whose batch changed data sends its
//!   replies only once its records are on disk ([`LogWriter::durable`]). Waiting,
//!   it wakes the *kicker* task, which the runtime runs after every connection
//!   already scheduled in this turn of its event loop, so one `write` and one
//!   `fdatasync` cover all their batches (group commit) — as Redis writes and
//!   syncs its AOF buffer once per event-loop iteration, in `beforeSleep`, before
//!   any reply goes out. Who syncs depends on the group:
//!   - *one connection* (a lone client, `redis-benchmark -c 1`): the kicker writes
//!     and syncs right there on the runtime's thread ([`LogWriter::sync_here`]),
//!     as Redis does, if the writer thread is idle. Handing the sync to the
//!     thread and being woken back costs two cross-thread wake-ups per write,
//!     which made a lone client 20 % slower than `redis-server`;
//!   - *several*: the writer thread syncs while the event loop goes on reading
//!     and running the next requests, which form the next group: syncs overlap
//!     with the work, so throughput grows with the clients.
//!
//!   A sync on the runtime's thread holds up its other tasks (in the supervisor,
//!   the pools) for as long as the disk takes. While syncs take longer than
//!   [`SLOW_INLINE_SYNC`] on average (a moving average of the last few, whoever
//!   made them) the writer thread makes them all; after a failure it does for
//!   [`INLINE_PAUSE`] and retries the failed write or sync each second.
//!
//! Whoever writes holds the open file ([`LogFile`], a lock taken before the
//! queue's), so records reach the file in the order they were queued.
//!
//! *Rewrite* (compaction). When the log is larger than the floor and twice the live
//! data, the purge task snapshots the keyspace by reference count (values are
//! `Arc`s) and queues it. The thread writes the snapshot to a temporary file in
//! 1 MiB chunks; between chunks it keeps appending new records to the old log *and*
//! remembers them, so a crash mid-rewrite loses nothing. It then appends the
//! remembered records to the new file, syncs it, and renames it over the old one.
//!
//! *Record format*: `SET app key value [PXAT ms]`, `DEL app key`,
//! `PEXPIREAT app key ms`, `PERSIST app key`, `FLUSHDB app`.

mod replay;
mod status;
mod syncer;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use appvisor_config::Persist;
use tokio::sync::watch;

use super::error::StoreError;
use super::keyspace::Entry;
use super::resp::encode_command;

pub(crate) use replay::replay;
pub use replay::{LoadReport, Truncation};
pub(crate) use status::LogStatus;
use status::{publish_durable, Health};

/// How often `everysec` syncs, and how long a failed write waits before a retry.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// `everysec`: how long records may gather after a write.
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// `everysec`: a queue this large wakes the writer at once.
const WAKE_BYTES: usize = 256 * 1024;
/// Records queued but not yet written that make connections wait: a burst of
/// writes faster than the disk is held back here, as Redis's own `write` in its
/// event loop holds it back, instead of piling up in memory where a kill -9
/// would lose more than `everysec` promises (measured without it: 1.7 GiB and
/// 5 s of acknowledged writes queued after a pipelined SET burst).
pub(crate) const MAX_BACKLOG: u64 = 16 * 1024 * 1024;
/// Snapshot bytes written between two looks at the queue during a rewrite.
const REWRITE_CHUNK: usize = 1 << 20;
/// `always`: while syncs take longer than this on average, the writer thread
/// makes them all, never the runtime's thread. An SSD syncs a small append in
/// 0.1–2 ms; a spinning disk, or one shared with heavy writers, takes 5–50 ms,
/// which the supervisor's other tasks should not wait for at every write.
const SLOW_INLINE_SYNC: Duration = Duration::from_millis(5);
/// How long the writer thread keeps the syncs after a failed one.
const INLINE_PAUSE: Duration = Duration::from_secs(1);

/// A keyspace snapshot: every live entry and its app.
pub(crate) type Snapshot = Vec<(Arc<str>, Entry)>;

#[derive(Default)]
struct Queue {
    pending: Vec<u8>,
    /// Bytes ever submitted: a record's sequence number is this after its submit.
    accepted: u64,
    /// A snapshot to rewrite from, and where in `pending` it was taken: bytes
    /// before belong to the old log only, bytes after to both.
    rewrite: Option<(Snapshot, usize)>,
    stop: bool,
    /// A write or sync on the runtime's thread failed: the writer thread takes
    /// over (retries the sync, or the write handed back in `pending`).
    take_over: bool,
    /// Where the writer thread is: a wake-up is a futex system call, worth making
    /// only if the thread waits for records.
    sleeping: Sleep,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Sleep {
    #[default]
    Awake,
    /// Parked until records come (or a sync is due): wake it for any.
    Waiting,
    /// Letting records gather after a write (`everysec`): wake it only for many.
    Gathering,
}

/// The open log and what was done to it. Whoever holds it may write and sync:
/// the writer thread, or (`always`, see [`LogWriter::sync_here`]) the kicker
/// task. Lock order: this, then the queue.
struct LogFile {
    /// None once the writer thread has stopped: the descriptor is closed with it.
    file: Option<File>,
    /// Bytes of records written to the file so far (a sequence number).
    appended: u64,
    unsynced: bool,
    last_sync: Instant,
    health: Health,
    /// `always`: the writer thread keeps the syncs until then (one on the
    /// runtime's thread failed).
    inline_paused_until: Option<Instant>,
    /// How long a sync takes: a moving average over the last ~8 (each new one
    /// weighs 1/8), so one slow sync (the first of a new file takes tens of
    /// milliseconds) sends the next few to the writer thread, not all of them.
    sync_time: Duration,
    /// The buffer the kicker swaps in for the queue's records, kept for reuse.
    spare: Vec<u8>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    log: Mutex<LogFile>,
    status: Arc<LogStatus>,
    path: PathBuf,
    durable: Arc<watch::Sender<u64>>,
    /// Bytes of records written to the file (not necessarily synced).
    written: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic in the writer thread poisons the lock; the data is still a
        // consistent byte queue, so keep using it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_log(&self) -> MutexGuard<'_, LogFile> {
        // As above: the file and its counters stay consistent across a panic.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `data` to the current log, once. A partly written record is cut
    /// off, so the log never holds a torn record in its middle; the failure
    /// refuses writes (`LogStatus::failed`) until a write succeeds.
    fn try_append(&self, log: &mut LogFile, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let status = &self.status;
        let before = status.size.load(Ordering::Relaxed);
        let file = log.file.as_mut().ok_or_else(closed)?;
        match file.write_all(data) {
            Ok(()) => {
                let size = before + data.len() as u64;
                // SeqCst: see `Inner::maybe_rewrite`.
                status.size.store(size, Ordering::SeqCst);
                if size >= status.check_size.load(Ordering::SeqCst) {
                    status.check_size.store(u64::MAX, Ordering::Relaxed);
                    status.size_reached.notify_one();
                }
                log.unsynced = true;
                log.health.recovered(status, &self.path);
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(before);
                let what = format!("cannot append to {}: {e}", self.path.display());
                log.health.failed(status, &what);
                Err(e)
            }
        }
    }

    /// Records up to `seq` are written (not yet synced): connections held back
    /// by [`LogWriter::throttle`] go on.
    fn wrote(&self, log: &mut LogFile, seq: u64) {
        log.appended = seq;
        self.written.send_replace(seq);
    }

    /// `fdatasync`s the log here and now; on success publishes what it wrote
    /// as durable.
    fn sync(&self, log: &mut LogFile) -> std::io::Result<()> {
        log.last_sync = Instant::now();
        let synced = log.file.as_ref().ok_or_else(closed)?.sync_data();
        log.sync_time = log.sync_time - log.sync_time / 8 + log.last_sync.elapsed() / 8;
        match synced {
            Ok(()) => {
                log.unsynced = false;
                log.health.recovered(&self.status, &self.path);
                publish_durable(&self.durable, log.appended);
                Ok(())
            }
            Err(e) => {
                let what = format!("cannot sync {}: {e}", self.path.display());
                log.health.failed(&self.status, &what);
                Err(e)
            }
        }
    }
}

/// The handle connections and the purge task use to feed the writer thread.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    /// `always`: wakes the kicker task; `kick_queued` avoids queueing it twice.
    kick: tokio::sync::Notify,
    kick_queued: AtomicBool,
    /// `always`: connections that asked for durability since the kicker last ran
    /// (its group).
    waiting: AtomicUsize,
    durable: watch::Receiver<u64>,
    /// Bytes of records written to the file (not necessarily synced).
    written: watch::Receiver<u64>,
    pub mode: Persist,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogWriter {
    /// Starts the writer thread appending to `path` (already replayed and, if its
    /// tail was torn, truncated).
    pub fn start(
        path: &Path,
        mode: Persist,
        status: Arc<LogStatus>,
    ) -> Result<LogWriter, StoreError> {
        let file = open_append(path)?;
        let size = file
            .metadata()
            .map_err(|source| StoreError::Log {
                path: path.to_owned(),
                source,
            })?
            .len();
        status.size.store(size, Ordering::Relaxed);
        status.base_size.store(size, Ordering::Relaxed);
        let (durable_tx, durable) = watch::channel(0);
        let durable_tx = Arc::new(durable_tx);
        let (written_tx, written) = watch::channel(0);
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            log: Mutex::new(LogFile {
                file: Some(file),
                appended: 0,
                unsynced: false,
                last_sync: Instant::now(),
                health: Health::default(),
                inline_paused_until: None,
                sync_time: Duration::ZERO,
                spare: Vec::new(),
            }),
            status,
            path: path.to_owned(),
            durable: durable_tx,
            written: written_tx,
        });
        let syncer = match mode {
            Persist::EverySec => Some(
                syncer::Syncer::start(
                    path.to_owned(),
                    shared.status.clone(),
                    shared.durable.clone(),
                )
                .map_err(|source| StoreError::Log {
                    path: path.to_owned(),
                    source,
                })?,
            ),
            _ => None,
        };
        let thread = WriterThread {
            shared: shared.clone(),
            mode,
            syncer,
        };
        let handle = std::thread::Builder::new()
            .name("appvisor-store-log".into())
            .spawn(move || thread.run())
            .map_err(|source| StoreError::Log {
                path: path.to_owned(),
                source,
            })?;
        Ok(LogWriter {
            shared,
            kick: tokio::sync::Notify::new(),
            kick_queued: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            durable,
            written,
            mode,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Queues `records` (leaving it empty) and returns their sequence number.
    ///
    /// In `always` mode the writer is not woken here: [`LogWriter::durable`] wakes
    /// the kicker task, queued behind every connection that is ready in this turn
    /// of the event loop, so one `fdatasync` covers all their batches — as Redis
    /// syncs once per event-loop iteration.
    pub fn submit(&self, records: &mut Vec<u8>) -> u64 {
        let mut q = self.shared.lock();
        q.accepted += records.len() as u64;
        if q.pending.is_empty() {
            std::mem::swap(&mut q.pending, records);
        } else {
            q.pending.extend_from_slice(records);
            records.clear();
        }
        let seq = q.accepted;
        let wake = match q.sleeping {
            Sleep::Awake => false,
            Sleep::Waiting => self.mode != Persist::Always,
            Sleep::Gathering => q.pending.len() >= WAKE_BYTES,
        };
        if wake {
            q.sleeping = Sleep::Awake;
        }
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        seq
    }

    /// Wakes the writer if it waits and records are queued.
    fn kick(&self) {
        let mut q = self.shared.lock();
        let wake = q.sleeping != Sleep::Awake && !q.pending.is_empty();
        if wake {
            q.sleeping = Sleep::Awake;
        }
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// `always`: makes everything queued durable from a task that runs after the
    /// connections already scheduled (see [`LogWriter::submit`]); until the store
    /// stops. A group of one connection is synced right here
    /// ([`LogWriter::sync_here`]), a larger one by the writer thread.
    pub async fn run_kicker(&self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.kick.notified() => {}
                _ = stop.changed() => return,
            }
            self.kick_queued.store(false, Ordering::Relaxed);
            let group = self.waiting.swap(0, Ordering::Relaxed);
            if group == 1 && self.sync_here() {
                continue;
            }
            self.kick();
        }
    }

    /// `always`: writes and syncs every queued record on the caller's thread,
    /// without waiting for anyone: false (nothing done) if the writer thread
    /// holds the file, has a rewrite or a stop to do, or keeps the syncs for now
    /// (they are slow, or one failed), or if the log is failing. A failure here
    /// is handed to the writer thread (true: nothing more to do).
    fn sync_here(&self) -> bool {
        let shared = &*self.shared;
        let mut log = match shared.log.try_lock() {
            Ok(log) => log,
            Err(TryLockError::WouldBlock) => return false,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
        };
        let now = Instant::now();
        if log.inline_paused_until.is_some_and(|until| now < until)
            || log.sync_time > SLOW_INLINE_SYNC
            || shared.status.failed.load(Ordering::Relaxed)
        {
            return false;
        }
        let mut data = std::mem::take(&mut log.spare);
        let seq = {
            let mut q = shared.lock();
            if q.rewrite.is_some() || q.stop || q.take_over {
                log.spare = data;
                return false;
            }
            // `data` is empty: the queue keeps a buffer with capacity.
            std::mem::swap(&mut q.pending, &mut data);
            q.accepted
        };
        let result = shared
            .try_append(&mut log, &data)
            .map(|()| shared.wrote(&mut log, seq))
            .and_then(|()| {
                if log.unsynced {
                    shared.sync(&mut log)
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                data.clear();
                log.spare = data;
                if log.sync_time > SLOW_INLINE_SYNC {
                    tracing::debug!(
                        "syncs of {} take {:?} on average: the log's thread makes them until they are faster",
                        shared.path.display(),
                        log.sync_time
                    );
                }
            }
            Err(_) => {
                // Reported by `try_append` or `sync`. The thread retries each
                // second; a write that failed goes back to the front of the
                // queue (the file lock keeps anyone from having taken later
                // records meanwhile).
                log.inline_paused_until = Some(Instant::now() + INLINE_PAUSE);
                let mut q = shared.lock();
                if log.appended < seq {
                    data.extend_from_slice(&q.pending);
                    q.pending = data;
                }
                q.take_over = true;
                q.sleeping = Sleep::Awake;
                drop(q);
                shared.wake.notify_one();
            }
        }
        true
    }

    /// Resolves once every record up to `seq` is on disk (`always` mode).
    pub async fn durable(&self, seq: u64) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if !self.kick_queued.swap(true, Ordering::Relaxed) {
            self.kick.notify_one();
        }
        let mut rx = self.durable.clone();
        // An error means the thread is gone (shutdown); nothing more will come.
        let _ = rx.wait_for(|&done| done >= seq).await;
    }

    /// Resolves once at most [`MAX_BACKLOG`] bytes of the records up to `seq`
    /// are still waiting to be written: at once, unless the disk lags.
    pub async fn throttle(&self, seq: u64) {
        let caught_up = |written: &u64| seq <= written.saturating_add(MAX_BACKLOG);
        if caught_up(&self.written.borrow()) {
            return;
        }
        let mut rx = self.written.clone();
        // An error means the thread is gone (shutdown); nothing more will come.
        let _ = rx.wait_for(caught_up).await;
    }

    /// Queues a rewrite from `snapshot`. Call with the keyspace locked, right
    /// after taking the snapshot, so no record falls between the two.
    pub fn rewrite(&self, snapshot: Snapshot) {
        let mut q = self.shared.lock();
        if q.rewrite.is_some() {
            return;
        }
        self.shared.status.rewriting.store(true, Ordering::Relaxed);
        let at = q.pending.len();
        q.rewrite = Some((snapshot, at));
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Writes and syncs everything queued, then stops the thread.
    pub async fn close(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// What a write or sync after the stop meets (the kicker checks the stop first).
fn closed() -> std::io::Error {
    std::io::Error::other("the log is closed")
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Log {
            path: path.to_owned(),
            source,
        })
}

struct WriterThread {
    shared: Arc<Shared>,
    mode: Persist,
    /// `everysec`: the thread that syncs.
    syncer: Option<syncer::Syncer>,
}

struct Batch {
    data: Vec<u8>,
    seq: u64,
    rewrite: Option<(Snapshot, usize)>,
    stop: bool,
}

impl WriterThread {
    fn run(&self) {
        let mut spare = Vec::new();
        let mut just_wrote = false;
        loop {
            let (mut log, mut batch) = self.next_batch(std::mem::take(&mut spare), just_wrote);
            just_wrote = !batch.data.is_empty();
            match batch.rewrite.take() {
                None => {
                    self.append(&mut log, &batch.data);
                    self.shared.wrote(&mut log, batch.seq);
                }
                Some((snapshot, at)) => {
                    // Records queued before the snapshot go to the old log only.
                    let at = at.min(batch.data.len());
                    self.append(&mut log, &batch.data[..at]);
                    let tail = batch.data[at..].to_vec();
                    self.append(&mut log, &tail);
                    let keys = snapshot.len();
                    let path = &self.shared.path;
                    let before = self.shared.status.size.load(Ordering::Relaxed);
                    tracing::debug!(
                        "rewriting {} ({before} bytes) from a snapshot of {keys} keys",
                        path.display()
                    );
                    match self.rewrite(&mut log, snapshot, tail) {
                        Ok(written) => tracing::info!(
                            "compacted {}: {before} bytes to {written} ({keys} keys)",
                            path.display()
                        ),
                        Err(e) => tracing::warn!(
                            "rewriting {} failed ({e}); still appending to the old log",
                            path.display()
                        ),
                    }
                    self.shared.status.rewriting.store(false, Ordering::Relaxed);
                    // The purge task sets the size at which to look again.
                    self.shared.status.size_reached.notify_one();
                    self.shared.wrote(&mut log, batch.seq);
                }
            }
            self.sync_if_due(&mut log, batch.stop);
            if batch.stop {
                log.file = None;
                return;
            }
            drop(log);
            batch.data.clear();
            spare = batch.data;
        }
    }

    /// Waits for records, a rewrite, a stop, or the next sync being due, then
    /// takes the queued records with the file held. Right after a write in
    /// `everysec`, it first lets records gather for up to [`FLUSH_DELAY`].
    fn next_batch(&self, mut spare: Vec<u8>, just_wrote: bool) -> (MutexGuard<'_, LogFile>, Batch) {
        let gather_until =
            (just_wrote && self.mode == Persist::EverySec).then(|| Instant::now() + FLUSH_DELAY);
        loop {
            // Read before the queue is locked (lock order); what the kicker
            // changes meanwhile it also flags in the queue (`take_over`).
            let sync_due = {
                let log = self.shared.lock_log();
                log.unsynced.then(|| log.last_sync + SYNC_INTERVAL)
            };
            let mut q = self.shared.lock();
            let now = Instant::now();
            let gathering = gather_until.filter(|&until| now < until);
            let ready = q.rewrite.is_some()
                || q.stop
                || q.take_over
                || (!q.pending.is_empty()
                    && (gathering.is_none() || q.pending.len() >= WAKE_BYTES))
                || sync_due.is_some_and(|due| now >= due);
            if ready {
                drop(q);
                let log = self.shared.lock_log();
                let mut q = self.shared.lock();
                q.take_over = false;
                spare.clear();
                std::mem::swap(&mut q.pending, &mut spare);
                let batch = Batch {
                    data: spare,
                    seq: q.accepted,
                    rewrite: q.rewrite.take(),
                    stop: q.stop,
                };
                return (log, batch);
            }
            let (state, until) = match gathering {
                Some(until) => (
                    Sleep::Gathering,
                    Some(sync_due.map_or(until, |due| due.min(until))),
                ),
                None => (Sleep::Waiting, sync_due),
            };
            q.sleeping = state;
            q = match until {
                Some(until) => {
                    self.shared
                        .wake
                        .wait_timeout(q, until.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
            };
            q.sleeping = Sleep::Awake;
        }
    }

    /// Appends to the current log, retrying each second while the disk refuses
    /// (writes are refused meanwhile through `LogStatus::failed`).
    fn append(&self, log: &mut LogFile, data: &[u8]) {
        while self.shared.try_append(log, data).is_err() {
            if self.shared.lock().stop {
                tracing::error!(
                    "giving up on {} at shutdown; the last changes are lost",
                    self.shared.path.display()
                );
                return;
            }
            std::thread::sleep(SYNC_INTERVAL);
        }
    }

    fn sync_if_due(&self, log: &mut LogFile, stopping: bool) {
        if !log.unsynced {
            return;
        }
        let due =
            stopping || self.mode == Persist::Always || log.last_sync.elapsed() >= SYNC_INTERVAL;
        if !due {
            return;
        }
        if let Some(syncer) = self.syncer.as_ref().filter(|_| !stopping) {
            log.last_sync = Instant::now();
            // everysec: the sync thread does it while appends go on; if its
            // previous sync still runs, try again in a second.
            let requested = log
                .file
                .as_ref()
                .is_some_and(|file| syncer.request(file, log.appended));
            if requested {
                log.unsynced = false;
            }
            return;
        }
        // A failure is reported; retried when due again.
        let _ = self.shared.sync(log);
    }

    /// Writes `snapshot` to a temporary file, then the records that arrived
    /// meanwhile, and renames it over the log.
    /// Returns the new log's size.
    fn rewrite(
        &self,
        log: &mut LogFile,
        snapshot: Snapshot,
        mut tail: Vec<u8>,
    ) -> std::io::Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = &self.shared.path;
        let tmp_path = path.with_extension("rewrite.tmp");
        let mut tmp = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp_path)?;
        let mut chunk = Vec::with_capacity(REWRITE_CHUNK + 4096);
        let mut written = 0u64;
        let mut digits = itoa::Buffer::new();
        for (app, entry) in &snapshot {
            if entry.expires_at == 0 {
                encode_command(
                    &mut chunk,
                    &[b"SET", app.as_bytes(), entry.key(), entry.value()],
                );
            } else {
                let at = digits.format(entry.expires_at);
                encode_command(
                    &mut chunk,
                    &[
                        b"SET",
                        app.as_bytes(),
                        entry.key(),
                        entry.value(),
                        b"PXAT",
                        at.as_bytes(),
                    ],
                );
            }
            if chunk.len() >= REWRITE_CHUNK {
                tmp.write_all(&chunk)?;
                written += chunk.len() as u64;
                chunk.clear();
                self.drain_during_rewrite(log, &mut tail);
            }
        }
        drop(snapshot);
        tmp.write_all(&chunk)?;
        written += chunk.len() as u64;
        self.drain_during_rewrite(log, &mut tail);
        tmp.write_all(&tail)?;
        written += tail.len() as u64;
        tmp.sync_all()?;
        std::fs::rename(&tmp_path, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        // Records queued after the last drain are still in the queue: they go to
        // the new file on the next turn.
        log.file = Some(open_append(path).map_err(|e| match e {
            StoreError::Log { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?);
        let status = &self.shared.status;
        status.size.store(written, Ordering::Relaxed);
        status.base_size.store(written, Ordering::Relaxed);
        Ok(written)
    }

    /// During a rewrite: moves queued records to the old log (so a crash loses
    /// nothing) and keeps a copy for the new one.
    fn drain_during_rewrite(&self, log: &mut LogFile, tail: &mut Vec<u8>) {
        let (data, seq) = {
            let mut q = self.shared.lock();
            (std::mem::take(&mut q.pending), q.accepted)
        };
        self.append(log, &data);
        self.shared.wrote(log, seq);
        tail.extend_from_slice(&data);
        self.sync_if_due(log, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::io::Read;
    use std::time::Duration;

    /// `always`, a group of one connection: the caller writes and syncs the
    /// queued records itself and publishes them as durable before it returns,
    /// unless the writer thread holds the file, in which case it leaves them.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_write_is_synced_on_the_callers_thread() {
        let dir = std::env::temp_dir().join(format!("appvisor-aof-inline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("store.aof");
        let writer =
            LogWriter::start(&path, Persist::Always, Arc::new(LogStatus::default())).unwrap();

        let seq = writer.submit(&mut b"*1\r\n$4\r\nPING\r\n".to_vec());
        assert!(writer.sync_here(), "nothing holds the file: synced here");
        assert_eq!(*writer.durable.borrow(), seq, "durable before returning");
        assert_eq!(*writer.written.borrow(), seq);
        assert_eq!(std::fs::read(&path).unwrap(), b"*1\r\n$4\r\nPING\r\n");

        // The thread is writing (it holds the file): leave the records to it.
        let held = writer.shared.lock_log();
        let seq2 = writer.submit(&mut b"*1\r\n$4\r\nPONG\r\n".to_vec());
        assert!(!writer.sync_here());
        assert_eq!(*writer.durable.borrow(), seq, "nothing more was synced");
        drop(held);
        writer.kick();
        tokio::time::timeout(Duration::from_secs(30), writer.durable(seq2))
            .await
            .expect("the writer thread syncs what was left to it");
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, seq2);

        // Slow syncs, or one that failed: the thread keeps the syncs.
        writer.submit(&mut b"*1\r\n$4\r\nPING\r\n".to_vec());
        writer.shared.lock_log().sync_time = SLOW_INLINE_SYNC * 2;
        assert!(!writer.sync_here());
        {
            let mut log = writer.shared.lock_log();
            log.sync_time = Duration::ZERO;
            log.inline_paused_until = Some(Instant::now() + INLINE_PAUSE);
        }
        assert!(!writer.sync_here());
        writer.shared.lock_log().inline_paused_until = None;
        assert!(writer.sync_here(), "fast again: synced here");
        writer.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A disk that lags, played by a FIFO whose reader reads nothing until told:
    /// the writer thread blocks in `write` once the pipe's buffer is full, so
    /// connections must be held back at [`MAX_BACKLOG`], and let go once it
    /// drains.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lagging_disk_holds_writers_back_at_the_backlog_bound() {
        let dir = std::env::temp_dir().join(format!("appvisor-aof-backlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("store.aof");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo (coreutils)");
        assert!(made.success());
        // Opening a FIFO blocks until both ends are open: the reader opens in a
        // thread, and reads only when `drain` says so.
        let (drain_tx, drain_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut file = File::open(&fifo).unwrap();
                drain_rx.recv().unwrap();
                let mut all = Vec::new();
                file.read_to_end(&mut all).unwrap();
                all.len()
            })
        };
        let writer =
            LogWriter::start(&fifo, Persist::EverySec, Arc::new(LogStatus::default())).unwrap();

        let record = vec![b'x'; 1 << 20];
        let mut seq = 0;
        for _ in 0..20 {
            seq = writer.submit(&mut record.clone());
        }
        assert_eq!(seq, 20 << 20);
        // Within the bound: no wait, whatever the disk does.
        tokio::time::timeout(Duration::from_secs(10), writer.throttle(MAX_BACKLOG))
            .await
            .expect("a backlog within the bound holds no one back");
        // Past it: held back. Nothing has been written (the pipe holds 64 KiB and
        // nobody reads), so this stays pending however long it is polled.
        let held = writer.throttle(seq);
        tokio::pin!(held);
        assert!(
            std::future::poll_fn(|cx| std::task::Poll::Ready(held.as_mut().poll(cx).is_pending()))
                .await,
            "20 MiB unwritten must hold the writer back"
        );
        // The disk catches up: let go.
        drain_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("a drained log lets the writer go");
        writer.close().await;
        assert_eq!(reader.join().unwrap(), 20 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
