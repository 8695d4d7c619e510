//! The baseline: what every watched file looked like when the running generation
//! started, and the comparison of the tree's present state against it.
//!
//! # The choice
//!
//! With `compare = "content"`, a change only counts if the bytes differ from the
//! baseline, so the baseline must know the *old* content. It cannot be read later: by
//! the time an event arrives the old bytes are gone. So the baseline hashes every
//! watched file once, at set-up, on the watcher's own thread (never the async thread),
//! and stores `(kind, size, mtime, ctime, inode, hash)` per path. That costs one read
//! of the watched tree (the benchmark measures it: 100,000 small files take well under
//! the 2 s budget) and about 100 bytes of memory per file.
//!
//! The stat fields make full rescans cheap: after an inotify queue overflow (and at
//! every `poll`), every file is stat'ed and only those whose stat differs are
//! re-hashed. Files named by an event are always re-hashed (a write within one clock
//! tick can leave size and mtime unchanged).
//!
//! Rules for `compare = "content"`:
//! - same bytes (touch, chmod, identical rewrite, identical atomic save) → not a
//!   change; the path is reported as *ignored* so the event log can say so;
//! - **a file under a directory named `bin` replaced by a new inode** (a deploy that
//!   renames new binaries into place) → a change even with identical bytes: replacing a
//!   binary is a deploy and the operator expects the new file to be the one running.
//!   Elsewhere (configs, code), editors save by rename all the time, and an unchanged
//!   save must not recycle;
//! - created, removed (including by deleting or renaming a directory) → a change;
//! - a symlink compares by its target text.
//!
//! With `compare = "mtime"` (ASP.NET's behaviour) any event on a watched path is a
//! change, and rescans compare stat fields only (nothing is hashed).
//!
//! If a file cannot be read (permission denied), its "hash" is derived from its stat,
//! so it degrades to mtime comparison rather than failing the watch.
//!
//! # Special files and large files
//! Only regular files are ever opened. A FIFO, a socket or a device in a watched
//! directory is not watched at all — not an entry of the baseline, its appearance or
//! a write into it no change: opening a FIFO blocks until a writer comes and a
//! device such as `/dev/zero` reads forever, so hashing either would freeze the
//! watch, and neither is code or configuration. The type is checked before opening
//! (`lstat`), and again on the open file (`fstat`), which is opened with `O_NONBLOCK`
//! and `O_NOFOLLOW` so a file swapped for a FIFO or a symlink in between cannot
//! block it either.
//!
//! At most [`MAX_HASHED_BYTES`] (256 MiB) of a file are hashed. A larger file's
//! "hash" is its first 256 MiB plus its size, mtime and ctime: past the bound it
//! compares as under `mtime` (an identical rewrite of a 1 GiB file is a change),
//! and a change within the bound is still seen by its bytes. Reading 256 MiB takes a
//! fraction of a second, and the watcher's thread is never held longer.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::hash::Hasher;
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use appvisor_config::Compare;

use super::plan::Matcher;
use super::{ChangeKind, Flags};

/// Bytes of one file hashed at most (see the module docs).
pub(crate) const MAX_HASHED_BYTES: u64 = 256 << 20;

/// A FIFO, socket or device: never watched, never opened (see the module docs).
fn is_special(meta: &Metadata) -> bool {
    let ft = meta.file_type();
    !(ft.is_file() || ft.is_dir() || ft.is_symlink())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// 48 bytes per watched path, plus the path itself.
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    /// The scan that last saw this entry (see [`Snapshot::epoch`]).
    seen: u32,
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    /// Content hash (SipHash-1-3 of the bytes) under `compare = "content"`; 0 otherwise.
    hash: u64,
}

impl Entry {
    fn same_stat(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.len == other.len
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.ino == other.ino
    }
}

fn stat_entry(meta: &Metadata) -> Entry {
    let ft = meta.file_type();
    Entry {
        kind: if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        },
        seen: 0,
        len: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
        hash: 0,
    }
}

/// The result of comparing part of the tree with the baseline.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Paths (relative to the cwd) that changed, in path order.
    pub changes: Vec<(PathBuf, ChangeKind)>,
    /// Paths named by an event whose content turned out identical.
    pub ignored: Vec<PathBuf>,
}

/// Figures from building the baseline.
#[derive(Debug, Clone, Default)]
pub(crate) struct Built {
    pub files: usize,
    pub bytes: u64,
    /// Every directory the plan covers (relative): what to put inotify watches on.
    pub dirs: Vec<PathBuf>,
}

/// Called for each watched entry a scan finds.
type Visit<'a> = &'a mut dyn FnMut(PathBuf, &Metadata);

#[derive(Debug)]
pub(crate) struct Snapshot {
    compare: Compare,
    /// Relative path → entry. Ordered, so a directory's descendants are one contiguous
    /// range right after it (paths order component by component). `Box<Path>` rather
    /// than `PathBuf`: 8 bytes less per entry.
    entries: BTreeMap<Box<Path>, Entry>,
    /// Bumped by every scan; an entry whose `seen` differs after a scan was not found.
    /// (Marking entries is cheaper than building a set of 100,000 found paths.)
    epoch: u32,
    buf: Vec<u8>,
    /// Whether debug lines are wanted, read once per comparison: per path, even a
    /// disabled `debug!` costs a little, and a burst can name 100,000 paths.
    debug: bool,
}

impl Snapshot {
    /// Walks the planned directories and records every watched entry; under `content`
    /// hashes every file, on up to 4 threads (reading is most of the set-up cost).
    pub fn build(matcher: &Matcher, compare: Compare) -> (Snapshot, Built) {
        let mut list: Vec<(Box<Path>, Entry)> = Vec::new();
        let mut dirs = Vec::new();
        scan_all(matcher, Some(&mut dirs), &mut |rel, meta| {
            list.push((rel.into_boxed_path(), stat_entry(meta)))
        });
        if compare == Compare::Content {
            hash_all(&matcher.cwd, &mut list);
        }
        list.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        list.dedup_by(|a, b| a.0 == b.0);
        let mut built = Built {
            dirs,
            ..Default::default()
        };
        for (_, e) in list.iter().filter(|(_, e)| e.kind == Kind::File) {
            built.files += 1;
            built.bytes += e.len;
        }
        let snap = Snapshot {
            compare,
            entries: list.into_iter().collect(),
            epoch: 0,
            buf: vec![0; 64 * 1024],
            debug: false,
        };
        (snap, built)
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch
    }

    /// Compares the whole tree with the baseline (after the watches were installed, and
    /// after a queue overflow), re-hashing only entries whose stat changed.
    pub fn rescan(&mut self, matcher: &Matcher) -> Outcome {
        self.debug = tracing::enabled!(tracing::Level::DEBUG);
        let epoch = self.next_epoch();
        let mut out = Outcome::default();
        scan_all(matcher, None, &mut |rel, meta| {
            self.compare_one(matcher, rel, meta, false, Flags::default(), epoch, &mut out)
        });
        let gone: Vec<Box<Path>> = self
            .entries
            .iter()
            .filter(|(_, e)| e.seen != epoch)
            .map(|(k, _)| k.clone())
            .collect();
        for rel in gone {
            self.entries.remove(&rel);
            out.changes.push((rel.into_path_buf(), ChangeKind::Removed));
        }
        out.changes.sort();
        out
    }

    /// Compares the paths named by one burst of events with the baseline, and updates
    /// the baseline to what is on disk now.
    pub fn reconcile(&mut self, matcher: &Matcher, dirty: &BTreeMap<PathBuf, Flags>) -> Outcome {
        self.debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut out = Outcome::default();
        // Regions already compared as a whole; `dirty` is in path order, so an ancestor
        // always comes before its descendants.
        let mut regions: Vec<&Path> = Vec::new();
        for (rel, flags) in dirty {
            if regions.iter().any(|r| rel.starts_with(r)) {
                continue;
            }
            let abs = matcher.cwd.join(rel);
            // A special file is not watched: as if it were not there (a watched file
            // replaced by a FIFO is removed).
            let meta = fs::symlink_metadata(&abs).and_then(|m| {
                if is_special(&m) {
                    Err(io::ErrorKind::Unsupported.into())
                } else {
                    Ok(m)
                }
            });
            let exists_as_file = matches!(&meta, Ok(m) if !m.is_dir());
            if flags.structural() || meta.is_err() || (exists_as_file && self.has_descendants(rel))
            {
                self.reconcile_region(matcher, rel, *flags, dirty, &mut out);
                regions.push(rel);
            } else if let Ok(meta) = meta {
                if matcher.is_watched(rel) {
                    let epoch = self.epoch;
                    self.compare_one(matcher, rel.clone(), &meta, true, *flags, epoch, &mut out);
                }
            }
        }
        out.changes.sort();
        out.changes.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Compares `rel` and everything the plan watches below it (a created, removed or
    /// renamed file or directory).
    fn reconcile_region(
        &mut self,
        matcher: &Matcher,
        rel: &Path,
        flags: Flags,
        dirty: &BTreeMap<PathBuf, Flags>,
        out: &mut Outcome,
    ) {
        let epoch = self.next_epoch();
        scan_region(matcher, rel, &mut |path, meta| {
            let direct = dirty.get(&path);
            let f = direct.copied().unwrap_or_default() | flags;
            self.compare_one(matcher, path, meta, direct.is_some(), f, epoch, out);
        });
        let gone: Vec<Box<Path>> = self
            .entries
            .range::<Path, _>((Bound::Included(rel), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(_, e)| e.seen != epoch)
            .map(|(k, _)| k.clone())
            .collect();
        for path in gone {
            self.entries.remove(&path);
            let f = dirty.get(&*path).copied().unwrap_or_default() | flags;
            let kind = if f.renamed() {
                ChangeKind::Renamed
            } else {
                ChangeKind::Removed
            };
            out.changes.push((path.into_path_buf(), kind));
        }
    }

    fn has_descendants(&self, rel: &Path) -> bool {
        self.entries
            .range::<Path, _>((Bound::Excluded(rel), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(rel))
    }

    /// For polling: the entries whose stat differs from the baseline, in path order,
    /// without changing the baseline (the decision's `reconcile` does that). Each comes
    /// with a fingerprint of what was seen, so two polls can tell "still changing" from
    /// "changed, now quiet".
    pub fn stat_diff(&mut self, matcher: &Matcher) -> Vec<(PathBuf, Flags, u64)> {
        let epoch = self.next_epoch();
        let mut out = Vec::new();
        scan_all(matcher, None, &mut |rel, meta| {
            let now = stat_entry(meta);
            let differs = match self.entries.get_mut(rel.as_path()) {
                None => Some(Flags::CREATED),
                Some(old) => {
                    old.seen = epoch;
                    if old.kind != now.kind || old.ino != now.ino {
                        Some(Flags::CREATED | Flags::REMOVED)
                    } else if old.kind != Kind::Dir && !old.same_stat(&now) {
                        Some(Flags::MODIFIED)
                    } else {
                        None
                    }
                }
            };
            if let Some(flags) = differs {
                let mut h = std::hash::DefaultHasher::new();
                h.write_u64(now.len);
                h.write_i64(now.mtime_ns);
                h.write_i64(now.ctime_ns);
                h.write_u64(now.ino);
                out.push((rel, flags, h.finish()));
            }
        });
        for (k, e) in &self.entries {
            if e.seen != epoch {
                out.push((k.to_path_buf(), Flags::REMOVED, 0));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Compares one present entry with its baseline, records the verdict and marks the
    /// entry seen in `epoch`. `direct`: an event named this path (versus: found while
    /// scanning).
    #[allow(clippy::too_many_arguments)]
    fn compare_one(
        &mut self,
        matcher: &Matcher,
        rel: PathBuf,
        meta: &Metadata,
        direct: bool,
        flags: Flags,
        epoch: u32,
        out: &mut Outcome,
    ) {
        let now = Entry {
            seen: epoch,
            ..stat_entry(meta)
        };
        let Some(old) = self.entries.get(rel.as_path()).copied() else {
            let entry = self.hashed(&matcher.cwd, &rel, now);
            self.entries.insert(rel.clone().into_boxed_path(), entry);
            let kind = if flags.renamed() {
                ChangeKind::Renamed
            } else {
                ChangeKind::Created
            };
            if self.debug {
                tracing::debug!(path = %rel.display(), change = kind.as_str(), "not in the baseline");
            }
            out.changes.push((rel, kind));
            return;
        };
        let put = |entries: &mut BTreeMap<Box<Path>, Entry>, e: Entry| {
            if let Some(slot) = entries.get_mut(rel.as_path()) {
                *slot = e;
            }
        };
        if old.kind != now.kind {
            let entry = self.hashed(&matcher.cwd, &rel, now);
            put(&mut self.entries, entry);
            out.changes.push((rel, ChangeKind::Modified));
            return;
        }
        if now.kind == Kind::Dir {
            // A directory's own mtime moves whenever an entry is added; only its
            // metadata (chmod, chown) can be a change, and only under `mtime`.
            put(&mut self.entries, now);
            if self.compare == Compare::Mtime && direct && flags.metadata() {
                out.changes.push((rel, ChangeKind::Modified));
            }
            return;
        }
        if old.same_stat(&now) && !direct {
            put(&mut self.entries, Entry { seen: epoch, ..old });
            return;
        }
        match self.compare {
            Compare::Mtime => {
                if self.debug {
                    tracing::debug!(path = %rel.display(), "stat differs from the baseline (compare = mtime)");
                }
                put(&mut self.entries, now);
                out.changes.push((rel, ChangeKind::Modified));
            }
            Compare::Content => {
                let entry = self.hashed(&matcher.cwd, &rel, now);
                put(&mut self.entries, entry);
                let changed = entry.len != old.len
                    || entry.hash != old.hash
                    || (entry.ino != old.ino && under_bin(&rel));
                if self.debug {
                    tracing::debug!(
                        path = %rel.display(),
                        size = entry.len,
                        content = if entry.hash == old.hash { "equal" } else { "different" },
                        changed,
                        "compared the content with the baseline"
                    );
                }
                if changed {
                    out.changes.push((rel, ChangeKind::Modified));
                } else if direct {
                    out.ignored.push(rel);
                }
            }
        }
    }

    /// `entry` with, under `content`, the hash of its bytes (or its link target).
    fn hashed(&mut self, cwd: &Path, rel: &Path, mut entry: Entry) -> Entry {
        if self.compare == Compare::Content {
            entry.hash = content_hash(&cwd.join(rel), &entry, &mut self.buf);
        }
        entry
    }
}

/// Hashes the files of `list` on up to 4 threads, taking blocks of 256 entries from a
/// shared cursor so one thread stuck on a large file does not hold the others up.
fn hash_all(cwd: &Path, list: &mut [(Box<Path>, Entry)]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let blocks = Mutex::new(list.chunks_mut(256));
    let work = || {
        let mut buf = vec![0; 64 * 1024];
        loop {
            let Some(block) = blocks.lock().ok().and_then(|mut b| b.next()) else {
                return;
            };
            for (rel, e) in block {
                e.hash = content_hash(&cwd.join(rel), e, &mut buf);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
}

fn content_hash(abs: &Path, e: &Entry, buf: &mut [u8]) -> u64 {
    match e.kind {
        Kind::Dir => 0,
        Kind::Symlink => match fs::read_link(abs) {
            Ok(target) => {
                let mut h = std::hash::DefaultHasher::new();
                h.write(target.as_os_str().as_encoded_bytes());
                h.finish()
            }
            Err(_) => stat_hash(e),
        },
        Kind::File => hash_file(abs, buf, MAX_HASHED_BYTES).unwrap_or_else(|_| stat_hash(e)),
    }
}

/// Whether `rel` lies under a directory named `bin` (see the module docs: a new inode
/// there is a deploy).
fn under_bin(rel: &Path) -> bool {
    rel.parent()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == "bin"))
}

/// SipHash-1-3 (std's `DefaultHasher`, fixed keys) over the file's bytes, at most
/// `limit` of them (past it, the size and times stand in for the rest). Collisions
/// are a 2⁻⁶⁴ event; this is change detection, not integrity. Anything but a regular
/// file is an error, without a read: `O_NONBLOCK` makes the open of a FIFO return at
/// once, `O_NOFOLLOW` refuses a symlink, and `fstat` checks what was opened.
fn hash_file(abs: &Path, buf: &mut [u8], limit: u64) -> io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(abs)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut h = std::hash::DefaultHasher::new();
    let mut reader = file.take(limit);
    let mut read = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read += n as u64;
        h.write(&buf[..n]);
    }
    if read >= limit {
        h.write(b"beyond the bound");
        h.write_u64(meta.len());
        h.write_i64(meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
        h.write_i64(meta.ctime() * 1_000_000_000 + meta.ctime_nsec());
    }
    Ok(h.finish())
}

/// Stand-in for a file that cannot be read: changes whenever its stat does.
fn stat_hash(e: &Entry) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(b"unreadable");
    h.write_u64(e.len);
    h.write_i64(e.mtime_ns);
    h.write_u64(e.ino);
    h.finish()
}

/// Visits every watched entry in every planned directory, and (if asked) collects the
/// directories walked.
fn scan_all(matcher: &Matcher, mut dirs: Option<&mut Vec<PathBuf>>, visit: Visit<'_>) {
    for d in &matcher.dirs {
        scan_dir(
            matcher,
            &d.rel,
            d.recursive,
            dirs.as_deref_mut(),
            Some(&mut *visit),
        );
    }
}

/// Every directory the plan covers that exists now: the planned ones and, under a
/// recursive one, all its subdirectories except ignored ones. Reads directories only
/// (no stat of files).
pub(crate) fn plan_dirs(matcher: &Matcher) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for d in &matcher.dirs {
        scan_dir(matcher, &d.rel, d.recursive, Some(&mut dirs), None);
    }
    dirs
}

/// `rel` and all its subdirectories except ignored ones.
pub(crate) fn subdirs(matcher: &Matcher, rel: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    scan_dir(matcher, rel, true, Some(&mut dirs), None);
    dirs
}

/// Visits every watched entry the plan covers at or below `rel`: `rel` itself if its
/// parent is watched, all of it if it lies in a recursive directory, and every planned
/// directory inside it.
fn scan_region(matcher: &Matcher, rel: &Path, visit: Visit<'_>) {
    let parent_watched = matcher.in_recursive(rel)
        || matcher
            .dirs
            .iter()
            .any(|d| Some(d.rel.as_path()) == rel.parent());
    if parent_watched && matcher.is_watched(rel) {
        if let Ok(meta) = entry_metadata(matcher, rel) {
            if !is_special(&meta) {
                visit(rel.to_path_buf(), &meta);
            }
        }
    }
    if matcher.in_recursive(rel) {
        scan_dir(matcher, rel, true, None, Some(visit));
        return;
    }
    for d in &matcher.dirs {
        if d.rel.starts_with(rel) {
            scan_dir(matcher, &d.rel, d.recursive, None, Some(&mut *visit));
        }
    }
}

/// A planned directory may be a symlink (`bin -> releases/42/bin`): follow it. Entries
/// inside are taken as they are.
fn entry_metadata(matcher: &Matcher, rel: &Path) -> io::Result<Metadata> {
    let abs = matcher.cwd.join(rel);
    let meta = fs::symlink_metadata(&abs)?;
    if meta.file_type().is_symlink() && matcher.dirs.iter().any(|d| d.rel == rel) {
        return fs::metadata(&abs);
    }
    Ok(meta)
}

/// Lists `rel` (and, if `recursive`, everything below it, not following symlinks,
/// pruning ignored directories). Each directory read goes to `dirs`; each watched
/// entry to `visit` (when there is no `visit`, files are not even stat'ed). A missing
/// directory is simply empty.
fn scan_dir(
    matcher: &Matcher,
    rel: &Path,
    recursive: bool,
    mut dirs: Option<&mut Vec<PathBuf>>,
    mut visit: Option<Visit<'_>>,
) {
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = fs::read_dir(matcher.cwd.join(&dir)) else {
            continue;
        };
        for ent in read.flatten() {
            let name = ent.file_name();
            let Ok(ft) = ent.file_type() else {
                continue;
            };
            if visit.is_none() && !(recursive && ft.is_dir()) {
                continue;
            }
            let child = dir.join(&name);
            if matcher.is_ignored_entry(&child, Path::new(&name)) {
                continue;
            }
            if recursive && ft.is_dir() {
                stack.push(child.clone());
            }
            if let Some(visit) = visit.as_mut() {
                if matcher.is_glob_match(&child) {
                    let meta = if ft.is_symlink() {
                        entry_metadata(matcher, &child)
                    } else {
                        ent.metadata()
                    };
                    if let Ok(meta) = meta {
                        if !is_special(&meta) {
                            visit(child, &meta);
                        }
                    }
                }
            }
        }
        if let Some(dirs) = dirs.as_deref_mut() {
            dirs.push(dir);
        }
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
