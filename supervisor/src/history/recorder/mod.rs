//! The recorder: one per app, owned by its pool, fed one tick of samples at a time.
//!
//! Each tick appends one full record per worker to the current full segment (one
//! `write` for the whole tick) and folds the samples into per-worker one-minute
//! buckets; a bucket whose minute is over (or whose worker is gone) is appended to
//! the current coarse segment. Full segments last [`FULL_SEGMENT_MS`] and are kept
//! for [`FULL_WINDOW_MS`] (the last hour at full resolution); coarse ones last
//! [`COARSE_SEGMENT_MS`] and are kept for `history_retention`. When the app's files
//! pass `history_max_size`, the oldest segments go first (coarse, then full), with
//! one warning: the size bound wins over the retention.
//!
//! In memory it keeps only the open files, the list of segments (a few dozen) and
//! one bucket per live worker: nothing grows with the hours recorded. Reads go to
//! the files ([`super::query`]).
//!
//! A write that fails (disk full) is cut back to the last whole record, and the
//! error is logged once until writing works again, as `events.jsonl` does.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::file::{self, Kind, Rec, Segment, BUCKET_MS};

/// A full segment covers this long before the next one starts.
pub const FULL_SEGMENT_MS: u64 = 5 * 60_000;
/// Full resolution is kept this long.
pub const FULL_WINDOW_MS: u64 = 3_600_000;
/// A coarse segment covers this long.
pub const COARSE_SEGMENT_MS: u64 = 6 * 3_600_000;

/// One worker's figures at one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub worker: u32,
    pub generation: u64,
    pub pid: i32,
    pub phase: u8,
    pub private: u64,
    pub rss: u64,
    pub virtual_: u64,
    pub cpu_ms: u64,
    pub requests: u64,
    pub uptime_ms: u64,
}

/// Limits of one recorder (from `[supervisor]`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_bytes: u64,
    pub retention: Duration,
}

struct Tier {
    segment_ms: u64,
    /// Oldest first; the last one is being written when `file` is open.
    segments: VecDeque<Segment>,
    file: Option<File>,
}

/// A worker's bucket being filled.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    start_ms: u64,
    sum_private: u128,
    sum_rss: u128,
    sum_virtual: u128,
    rec: Rec,
}

impl Bucket {
    fn new(start_ms: u64, s: &Sample) -> Bucket {
        Bucket {
            start_ms,
            sum_private: 0,
            sum_rss: 0,
            sum_virtual: 0,
            rec: Rec {
                t_ms: start_ms,
                worker: s.worker,
                generation: s.generation,
                pid: s.pid,
                private_min: u64::MAX,
                width_ms: BUCKET_MS,
                ..Rec::default()
            },
        }
    }

    fn add(&mut self, s: &Sample) {
        let r = &mut self.rec;
        r.count += 1;
        self.sum_private += s.private as u128;
        self.sum_rss += s.rss as u128;
        self.sum_virtual += s.virtual_ as u128;
        r.private_min = r.private_min.min(s.private);
        r.private_max = r.private_max.max(s.private);
        r.rss_max = r.rss_max.max(s.rss);
        r.virtual_max = r.virtual_max.max(s.virtual_);
        r.phase = s.phase;
        r.cpu_ms = s.cpu_ms;
        r.requests = s.requests;
        r.uptime_ms = s.uptime_ms;
    }

    fn finish(&self) -> Rec {
        let n = self.rec.count.max(1) as u128;
        Rec {
            private: (self.sum_private / n) as u64,
            rss: (self.sum_rss / n) as u64,
            virtual_: (self.sum_virtual / n) as u64,
            ..self.rec
        }
    }
}

/// See the module docs.
pub struct Recorder {
    app: String,
    dir: PathBuf,
    bounds: Bounds,
    full: Tier,
    coarse: Tier,
    buckets: HashMap<i32, Bucket>,
    buf: Vec<u8>,
    /// Bytes of every segment, kept up to date on each write and delete.
    total: u64,
    warned_bound: bool,
    failing: bool,
    /// Ticks since the directory was last checked (a deleted state dir).
    unchecked: u32,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recorder({})", self.dir.display())
    }
}

/// Where and how to open one app's recorder (the pool opens it when it starts).
#[derive(Debug, Clone)]
pub struct RecorderSpec {
    pub app: String,
    pub dir: PathBuf,
    pub bounds: Bounds,
}

impl RecorderSpec {
    pub fn open(&self, now_ms: u64) -> io::Result<Recorder> {
        Recorder::open(&self.app, &self.dir, self.bounds, now_ms)
    }
}

/// `<state_dir>/history/<app>`.
pub fn app_dir(state_dir: &Path, app: &str) -> PathBuf {
    state_dir.join("history").join(app)
}

/// The history of apps that are no longer in the config: retention and the size
/// bound applied as if they were still recorded (each configured app's recorder
/// does this for its own files as it writes; these have none), and a directory
/// left empty is removed. Run at start and after each reload.
pub fn prune_unconfigured(state_dir: &Path, configured: &[&str], bounds: Bounds, now_ms: u64) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("history")) else {
        return;
    };
    for e in entries.flatten() {
        let Some(app) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if configured.contains(&app.as_str()) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let empty = match Recorder::open(&app, &dir, bounds, now_ms) {
            Ok(r) => r.full.segments.is_empty() && r.coarse.segments.is_empty(),
            Err(err) => {
                tracing::warn!(
                    "Cannot prune the history of removed app {app:?} in {} ({err}).",
                    dir.display()
                );
                continue;
            }
        };
        if empty && std::fs::remove_dir(&dir).is_ok() {
            tracing::info!(
                "Removed the history of app {app:?}: it is no longer configured and its last sample is older than history_retention."
            );
        }
    }
}

/// `<state_dir>/history/<app>` again, owner only, if the state dir exists.
fn remake_history_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let state_dir = dir.parent().and_then(Path::parent);
    if state_dir.is_some_and(|d| !d.exists()) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the state dir is gone (the supervisor makes it again)",
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Recorder {
    /// Opens the app's history in `dir` (created 0700 if missing): cuts the torn
    /// tail of any segment a crash left (a warning names it), and applies retention
    /// and the size bound at once. New segments start with the first tick.
    pub fn open(app: &str, dir: &Path, bounds: Bounds, now_ms: u64) -> io::Result<Recorder> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut full = Tier {
            segment_ms: FULL_SEGMENT_MS,
            segments: VecDeque::new(),
            file: None,
        };
        let mut coarse = Tier {
            segment_ms: COARSE_SEGMENT_MS,
            segments: VecDeque::new(),
            file: None,
        };
        let mut total = 0;
        for mut seg in file::list(dir)? {
            if let Some(len) = file::whole_length(&seg)? {
                tracing::warn!(
                    "The history file {} ended with a partial record ({} bytes, an append cut short by a crash); cut back to its last whole record.",
                    seg.path.display(),
                    seg.bytes - len
                );
                let f = std::fs::OpenOptions::new().write(true).open(&seg.path)?;
                f.set_len(len)?;
                seg.bytes = len;
            }
            total += seg.bytes;
            match seg.kind {
                Kind::Full => full.segments.push_back(seg),
                Kind::Coarse => coarse.segments.push_back(seg),
            }
        }
        let mut r = Recorder {
            app: app.to_string(),
            dir: dir.to_path_buf(),
            bounds,
            full,
            coarse,
            buckets: HashMap::new(),
            buf: Vec::new(),
            total,
            warned_bound: false,
            failing: false,
            unchecked: 0,
        };
        r.prune(now_ms);
        Ok(r)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of history on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.total
    }

    /// Heap bytes this recorder holds (its buffers, bucket table and segment list):
    /// what the benchmark reports per worker.
    pub fn heap_bytes(&self) -> usize {
        let seg = std::mem::size_of::<Segment>();
        let segs: usize = self
            .full
            .segments
            .iter()
            .chain(&self.coarse.segments)
            .map(|s| seg + s.path.as_os_str().len())
            .sum();
        self.buf.capacity()
            + self.buckets.capacity() * (std::mem::size_of::<(i32, Bucket)>() + 8)
            + segs
            + self.dir.as_os_str().len()
    }

    /// Appends one tick: `samples` taken at `now_ms`.
    pub fn record(&mut self, now_ms: u64, samples: &[Sample]) {
        // Once a minute at 1 s: if the state dir was deleted, the open files are
        // unlinked; start new segments (the directory is made again on the way).
        self.unchecked += 1;
        if self.unchecked >= 60 {
            self.unchecked = 0;
            if !self.dir.is_dir() {
                for tier in [&mut self.full, &mut self.coarse] {
                    tier.file = None;
                    tier.segments.clear();
                }
                self.total = 0;
            }
        }
        self.buf.clear();
        for s in samples {
            Rec {
                t_ms: now_ms,
                worker: s.worker,
                generation: s.generation,
                pid: s.pid,
                phase: s.phase,
                count: 1,
                private: s.private,
                rss: s.rss,
                virtual_: s.virtual_,
                cpu_ms: s.cpu_ms,
                requests: s.requests,
                uptime_ms: s.uptime_ms,
                ..Rec::default()
            }
            .encode(Kind::Full, &mut self.buf);
        }
        let buf = std::mem::take(&mut self.buf);
        self.append(Kind::Full, now_ms, &buf);
        self.buf = buf;

        // Buckets: a finished minute, or a worker gone, closes its bucket.
        let minute = now_ms - now_ms % BUCKET_MS;
        let mut closed: Vec<Rec> = Vec::new();
        self.buckets.retain(|pid, b| {
            let live = samples.iter().any(|s| s.pid == *pid);
            if b.start_ms != minute || !live {
                closed.push(b.finish());
                false
            } else {
                true
            }
        });
        for s in samples {
            self.buckets
                .entry(s.pid)
                .or_insert_with(|| Bucket::new(minute, s))
                .add(s);
        }
        self.write_buckets(now_ms, &mut closed);
        self.prune(now_ms);
    }

    /// Writes the buckets still open (at shutdown: a partial minute is still its
    /// min, max and mean).
    pub fn flush(&mut self, now_ms: u64) {
        let mut open: Vec<Rec> = self.buckets.drain().map(|(_, b)| b.finish()).collect();
        self.write_buckets(now_ms, &mut open);
    }

    fn write_buckets(&mut self, now_ms: u64, recs: &mut [Rec]) {
        if recs.is_empty() {
            return;
        }
        recs.sort_by_key(|r| (r.t_ms, r.worker, r.generation));
        let mut buf = Vec::with_capacity(recs.len() * file::COARSE_LEN);
        for r in recs.iter() {
            r.encode(Kind::Coarse, &mut buf);
        }
        self.append(Kind::Coarse, now_ms, &buf);
    }

    fn tier(&mut self, kind: Kind) -> &mut Tier {
        match kind {
            Kind::Full => &mut self.full,
            Kind::Coarse => &mut self.coarse,
        }
    }

    /// Appends `bytes` (whole records) to the current segment of `kind`, starting a
    /// new segment when the current one is old enough (or none is open).
    fn append(&mut self, kind: Kind, now_ms: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let dir = self.dir.clone();
        let tier = self.tier(kind);
        let rotate = match (&tier.file, tier.segments.back()) {
            (Some(_), Some(seg)) => {
                now_ms >= seg.start_ms + tier.segment_ms || now_ms < seg.start_ms
            }
            _ => true,
        };
        let mut added = 0u64;
        let mut result = Ok(());
        if rotate {
            tier.file = None;
            let mut start = now_ms;
            // Names are unique even if two segments start in the same millisecond.
            while tier.segments.iter().any(|s| s.start_ms == start) {
                start += 1;
            }
            let path = file::segment_path(&dir, kind, start);
            // The state dir may have been deleted and made again meanwhile: the
            // history dir is made again (0700), never the state dir itself — the
            // daemon makes that, with its mode and lock (`create_dir_all` made it
            // 0755 here, and a test saw the remade state dir at 0755).
            let opened = remake_history_dir(&dir).and_then(|_| open_segment(&path, kind));
            match opened {
                Ok(f) => {
                    tier.file = Some(f);
                    tier.segments.push_back(Segment {
                        kind,
                        start_ms: start,
                        path,
                        bytes: file::HEADER_LEN as u64,
                    });
                    added += file::HEADER_LEN as u64;
                }
                Err(e) => result = Err(e),
            }
        }
        if let (Some(f), Some(seg)) = (tier.file.as_mut(), tier.segments.back_mut()) {
            match f.write_all(bytes) {
                Ok(()) => {
                    seg.bytes += bytes.len() as u64;
                    added += bytes.len() as u64;
                }
                Err(e) => {
                    // Whole records or nothing: cut back what went half-way.
                    let _ = f.set_len(seg.bytes);
                    result = Err(e);
                }
            }
        }
        self.total += added;
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(
                    "Writing the history of app {:?} works again ({}).",
                    self.app,
                    self.dir.display()
                );
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::error!(
                    "Cannot write the history of app {:?} in {} ({e}); samples are lost until it works again (free some disk space).",
                    self.app,
                    self.dir.display()
                );
            }
            Err(_) => {}
        }
    }

    /// Retention, then the size bound.
    fn prune(&mut self, now_ms: u64) {
        let keep_ms = self.bounds.retention.as_millis() as u64;
        let mut freed = 0;
        for (tier, window) in [
            (&mut self.full, FULL_WINDOW_MS),
            (&mut self.coarse, keep_ms),
        ] {
            // A segment ends where the next begins; the last one is current.
            while tier.segments.len() >= 2 && tier.segments[1].start_ms + window <= now_ms {
                let seg = tier.segments.pop_front().unwrap();
                freed += seg.bytes;
                let _ = std::fs::remove_file(&seg.path);
            }
            // With no file open (after a restart), the last one is old too.
            if tier.file.is_none() {
                if let Some(last) = tier.segments.back() {
                    if last.start_ms + tier.segment_ms + window <= now_ms {
                        let seg = tier.segments.pop_back().unwrap();
                        freed += seg.bytes;
                        let _ = std::fs::remove_file(&seg.path);
                    }
                }
            }
        }
        self.total -= freed.min(self.total);
        while self.total > self.bounds.max_bytes {
            // Oldest coarse data first, then the oldest full data; never the segment
            // being written unless it alone is over the bound.
            let victim = if self.coarse.segments.len() > 1
                || (self.coarse.file.is_none() && !self.coarse.segments.is_empty())
            {
                Kind::Coarse
            } else if self.full.segments.len() > 1
                || (self.full.file.is_none() && !self.full.segments.is_empty())
            {
                Kind::Full
            } else {
                // Only the two open segments are left: close the bigger one, so the
                // next append starts afresh and this one can go.
                let big = if self.full.segments.back().map(|s| s.bytes)
                    >= self.coarse.segments.back().map(|s| s.bytes)
                {
                    Kind::Full
                } else {
                    Kind::Coarse
                };
                self.tier(big).file = None;
                big
            };
            let tier = self.tier(victim);
            let Some(seg) = tier.segments.pop_front() else {
                break;
            };
            let _ = std::fs::remove_file(&seg.path);
            self.total -= seg.bytes.min(self.total);
            if !self.warned_bound {
                self.warned_bound = true;
                tracing::warn!(
                    "The history of app {:?} reached history_max_size ({} MiB); its oldest {} samples were deleted before history_retention. Raise [supervisor] history_max_size to keep more.",
                    self.app,
                    self.bounds.max_bytes >> 20,
                    victim.prefix()
                );
            }
        }
    }
}

/// Ticks that may wait for the writer, per app (a minute at 1 s and more).
const QUEUE: usize = 256;

/// What the pools send to the history writer thread.
enum Msg {
    /// A recorder, and its app's count of queued ticks.
    Open(u64, Box<Recorder>, Arc<AtomicUsize>),
    Tick(u64, u64, Vec<Sample>),
    /// The recorder is dropped (its open buckets written), then the sender hears.
    Close(u64, std::sync::mpsc::Sender<()>),
}

/// The one history writer thread of the process, shared by every app's recorder:
/// an append that waits for the disk (a burst of file creations on the same
/// filesystem can hold one for hundreds of milliseconds) must never stall the
/// pools' runtime thread, whose timers (the file watcher's debounce among them)
/// would then fire late. One thread for all apps, not one each: the pools tick on
/// the same instants (see `pool/sample.rs`), so 50 apps wake it about once per
/// tick, not 50 times.
fn writer() -> Option<std::sync::mpsc::Sender<Msg>> {
    static WRITER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Msg>>> =
        std::sync::OnceLock::new();
    let w = WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let spawned = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                let mut recorders: HashMap<u64, (Box<Recorder>, Arc<AtomicUsize>)> = HashMap::new();
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::Open(id, rec, queued) => {
                            recorders.insert(id, (rec, queued));
                        }
                        Msg::Tick(id, now_ms, samples) => {
                            if let Some((rec, queued)) = recorders.get_mut(&id) {
                                queued.fetch_sub(1, Ordering::Relaxed);
                                rec.record(now_ms, &samples);
                            }
                        }
                        Msg::Close(id, done) => {
                            // Dropping writes the open buckets.
                            drop(recorders.remove(&id));
                            let _ = done.send(());
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(
                    "Cannot start the history writer thread ({e}); no history is recorded."
                );
                None
            }
        }
    });
    w.clone()
}

/// An app's recorder, living on the history writer thread, fed through a queue
/// bounded per app: a full queue drops ticks, with one warning.
pub struct RecorderThread {
    tx: Option<std::sync::mpsc::Sender<Msg>>,
    id: u64,
    queued: Arc<AtomicUsize>,
    dir: PathBuf,
    app: String,
    dropped: u64,
}

impl std::fmt::Debug for RecorderThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecorderThread({})", self.dir.display())
    }
}

impl RecorderThread {
    pub fn start(rec: Recorder) -> io::Result<RecorderThread> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        let tx = writer().ok_or_else(|| io::Error::other("no history writer thread"))?;
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let queued = Arc::new(AtomicUsize::new(0));
        let (dir, app) = (rec.dir.clone(), rec.app.clone());
        tx.send(Msg::Open(id, Box::new(rec), queued.clone()))
            .map_err(|_| io::Error::other("the history writer thread is gone"))?;
        Ok(RecorderThread {
            tx: Some(tx),
            id,
            queued,
            dir,
            app,
            dropped: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues one tick; never blocks.
    pub fn record(&mut self, now_ms: u64, samples: Vec<Sample>) {
        let Some(tx) = &self.tx else { return };
        if self.queued.load(Ordering::Relaxed) >= QUEUE {
            self.dropped += 1;
            if self.dropped == 1 {
                tracing::warn!(
                    "The history of app {:?} cannot be written as fast as it is sampled (the disk of {} is stalled); ticks are dropped until it catches up.",
                    self.app,
                    self.dir.display()
                );
            }
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(Msg::Tick(self.id, now_ms, samples)).is_err() {
            self.tx = None;
        }
    }
}

impl Drop for RecorderThread {
    /// Waits until the writer has written this app's open buckets.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let (done, wait) = std::sync::mpsc::channel();
            if tx.send(Msg::Close(self.id, done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush(super::now_ms());
    }
}

fn open_segment(path: &Path, kind: Kind) -> io::Result<File> {
    let mut f = crate::state_dir::open_append(path)?;
    f.write_all(&file::header(kind))?;
    Ok(f)
}

#[cfg(test)]
mod tests;
