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
//! The stat fields make full rescans cheap: after the watches are installed and after
//! an inotify queue overflow, every file is stat'ed and only those whose stat differs
//! are re-hashed. Files named by an event are always re-hashed (a write within one
//! clock tick can leave size and mtime unchanged).
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

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, Metadata};
use std::hash::Hasher;
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use appvisor_config::Compare;

use super::plan::Matcher;
use super::{ChangeKind, Flags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
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
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BuildFigures {
    pub files: usize,
    pub bytes: u64,
    /// Directories an inotify recursive watch of the planned directories needs.
    pub dirs: usize,
}

#[derive(Debug)]
pub(crate) struct Snapshot {
    compare: Compare,
    /// Relative path → entry. Ordered, so a directory's descendants are one contiguous
    /// range right after it (paths order component by component).
    entries: BTreeMap<PathBuf, Entry>,
    buf: Vec<u8>,
}

impl Snapshot {
    /// Walks the planned directories and records (and, for `content`, hashes) every
    /// watched entry.
    pub fn build(matcher: &Matcher, compare: Compare) -> (Snapshot, BuildFigures) {
        let mut snap = Snapshot {
            compare,
            entries: BTreeMap::new(),
            buf: vec![0; 64 * 1024],
        };
        let mut found = Vec::new();
        let dirs = scan_all(matcher, &mut found);
        let mut figures = BuildFigures {
            dirs,
            ..Default::default()
        };
        for (rel, meta) in found {
            let entry = snap.entry_for(&matcher.cwd.join(&rel), &meta);
            if entry.kind == Kind::File {
                figures.files += 1;
                figures.bytes += entry.len;
            }
            snap.entries.insert(rel, entry);
        }
        (snap, figures)
    }

    /// Compares the whole tree with the baseline (after the watches were installed, and
    /// after a queue overflow), re-hashing only entries whose stat changed.
    pub fn rescan(&mut self, matcher: &Matcher) -> Outcome {
        let mut found = Vec::new();
        scan_all(matcher, &mut found);
        let mut out = Outcome::default();
        let mut present = HashSet::with_capacity(found.len());
        for (rel, meta) in found {
            self.compare_one(matcher, &rel, &meta, false, Flags::default(), &mut out);
            present.insert(rel);
        }
        let gone: Vec<PathBuf> = self
            .entries
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for rel in gone {
            self.entries.remove(&rel);
            out.changes.push((rel, ChangeKind::Removed));
        }
        out.changes.sort();
        out
    }

    /// Compares the paths named by one burst of events with the baseline, and updates
    /// the baseline to what is on disk now.
    pub fn reconcile(&mut self, matcher: &Matcher, dirty: &BTreeMap<PathBuf, Flags>) -> Outcome {
        let mut out = Outcome::default();
        // Regions already compared as a whole; `dirty` is in path order, so an ancestor
        // always comes before its descendants.
        let mut regions: Vec<&Path> = Vec::new();
        for (rel, flags) in dirty {
            if regions.iter().any(|r| rel.starts_with(r)) {
                continue;
            }
            let abs = matcher.cwd.join(rel);
            let meta = fs::symlink_metadata(&abs);
            let exists_as_file = matches!(&meta, Ok(m) if !m.is_dir());
            if flags.structural() || meta.is_err() || (exists_as_file && self.has_descendants(rel))
            {
                self.reconcile_region(matcher, rel, *flags, dirty, &mut out);
                regions.push(rel);
            } else if let Ok(meta) = meta {
                if matcher.is_watched(rel) {
                    self.compare_one(matcher, rel, &meta, true, *flags, &mut out);
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
        let mut found = Vec::new();
        scan_region(matcher, rel, &mut found);
        let mut present = HashSet::with_capacity(found.len());
        for (path, meta) in found {
            let direct = dirty.get(&path);
            let f = direct.copied().unwrap_or_default() | flags;
            self.compare_one(matcher, &path, &meta, direct.is_some(), f, out);
            present.insert(path);
        }
        let gone: Vec<PathBuf> = self
            .entries
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(k, _)| !present.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for path in gone {
            self.entries.remove(&path);
            let f = dirty.get(&path).copied().unwrap_or_default() | flags;
            let kind = if f.renamed() {
                ChangeKind::Renamed
            } else {
                ChangeKind::Removed
            };
            out.changes.push((path, kind));
        }
    }

    fn has_descendants(&self, rel: &Path) -> bool {
        self.entries
            .range::<Path, _>((Bound::Excluded(rel), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(rel))
    }

    /// For polling: the entries whose stat differs from the baseline, without touching
    /// the baseline (the decision's `reconcile` does that). Each comes with a
    /// fingerprint of what was seen, so two polls can tell "still changing" from
    /// "changed, now quiet".
    pub fn stat_diff(&self, matcher: &Matcher) -> Vec<(PathBuf, Flags, u64)> {
        let mut found = Vec::new();
        scan_all(matcher, &mut found);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut base = self.entries.iter().peekable();
        for (rel, meta) in found {
            let now = stat_entry(&meta);
            while let Some((k, _)) = base.next_if(|(k, _)| **k < rel) {
                out.push((k.clone(), Flags::REMOVED, 0));
            }
            let differs = match base.next_if(|(k, _)| **k == rel) {
                None => Some(Flags::CREATED),
                Some((_, old)) if old.kind != now.kind || old.ino != now.ino => {
                    Some(Flags::CREATED | Flags::REMOVED)
                }
                Some((_, old)) if old.kind != Kind::Dir && !old.same_stat(&now) => {
                    Some(Flags::MODIFIED)
                }
                Some(_) => None,
            };
            if let Some(flags) = differs {
                let mut h = std::hash::DefaultHasher::new();
                h.write_u64(now.len);
                h.write_i64(now.mtime_ns);
                h.write_i64(now.ctime_ns);
                h.write_u64(now.ino);
                out.push((rel, flags, h.finish()));
            }
        }
        for (k, _) in base {
            out.push((k.clone(), Flags::REMOVED, 0));
        }
        out
    }

    /// Compares one present entry with its baseline and records the verdict.
    /// `direct`: an event named this path (versus: found while rescanning).
    fn compare_one(
        &mut self,
        matcher: &Matcher,
        rel: &Path,
        meta: &Metadata,
        direct: bool,
        flags: Flags,
        out: &mut Outcome,
    ) {
        let now = stat_entry(meta);
        let Some(old) = self.entries.get(rel).copied() else {
            let entry = self.entry_for(&matcher.cwd.join(rel), meta);
            self.entries.insert(rel.to_path_buf(), entry);
            let kind = if flags.renamed() {
                ChangeKind::Renamed
            } else {
                ChangeKind::Created
            };
            out.changes.push((rel.to_path_buf(), kind));
            return;
        };
        if old.kind != now.kind {
            let entry = self.entry_for(&matcher.cwd.join(rel), meta);
            self.entries.insert(rel.to_path_buf(), entry);
            out.changes.push((rel.to_path_buf(), ChangeKind::Modified));
            return;
        }
        if now.kind == Kind::Dir {
            // A directory's own mtime moves whenever an entry is added; only its
            // metadata (chmod, chown) can be a change, and only under `mtime`.
            if self.compare == Compare::Mtime && direct && flags.metadata() {
                out.changes.push((rel.to_path_buf(), ChangeKind::Modified));
            }
            self.entries
                .insert(rel.to_path_buf(), Entry { hash: 0, ..now });
            return;
        }
        let same_stat = old.same_stat(&now);
        if same_stat && !direct {
            return;
        }
        match self.compare {
            Compare::Mtime => {
                self.entries.insert(rel.to_path_buf(), now);
                out.changes.push((rel.to_path_buf(), ChangeKind::Modified));
            }
            Compare::Content => {
                let entry = self.entry_for(&matcher.cwd.join(rel), meta);
                self.entries.insert(rel.to_path_buf(), entry);
                let changed = entry.len != old.len
                    || entry.hash != old.hash
                    || (entry.ino != old.ino && under_bin(rel));
                if changed {
                    out.changes.push((rel.to_path_buf(), ChangeKind::Modified));
                } else if direct {
                    out.ignored.push(rel.to_path_buf());
                }
            }
        }
    }

    /// The stat of `abs` plus, under `content`, the hash of its bytes (or its link
    /// target).
    fn entry_for(&mut self, abs: &Path, meta: &Metadata) -> Entry {
        let mut entry = stat_entry(meta);
        if self.compare == Compare::Content {
            entry.hash = match entry.kind {
                Kind::Dir => 0,
                Kind::Symlink => match fs::read_link(abs) {
                    Ok(target) => {
                        let mut h = std::hash::DefaultHasher::new();
                        h.write(target.as_os_str().as_encoded_bytes());
                        h.finish()
                    }
                    Err(_) => stat_hash(&entry),
                },
                Kind::File => hash_file(abs, &mut self.buf).unwrap_or_else(|_| stat_hash(&entry)),
            };
        }
        entry
    }
}

/// Whether `rel` lies under a directory named `bin` (see the module docs: a new inode
/// there is a deploy).
fn under_bin(rel: &Path) -> bool {
    rel.parent()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == "bin"))
}

/// SipHash-1-3 (std's `DefaultHasher`, fixed keys) over the file's bytes. Collisions
/// are a 2⁻⁶⁴ event; this is change detection, not integrity.
fn hash_file(abs: &Path, buf: &mut [u8]) -> io::Result<u64> {
    let mut file = fs::File::open(abs)?;
    let mut h = std::hash::DefaultHasher::new();
    loop {
        let n = match file.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.write(&buf[..n]);
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

/// Every watched entry in every planned directory. Returns how many directories an
/// inotify watch of the plan needs.
fn scan_all(matcher: &Matcher, found: &mut Vec<(PathBuf, Metadata)>) -> usize {
    let mut dirs = 0;
    for d in &matcher.dirs {
        dirs += scan_dir(matcher, &d.rel, d.recursive, found);
    }
    dirs
}

/// Every watched entry the plan covers at or below `rel`: `rel` itself if its parent is
/// watched, all of it if it lies in a recursive directory, and every planned
/// directory inside it.
fn scan_region(matcher: &Matcher, rel: &Path, found: &mut Vec<(PathBuf, Metadata)>) {
    let in_recursive = matcher
        .dirs
        .iter()
        .any(|d| d.recursive && rel.starts_with(&d.rel));
    let parent_watched = matcher
        .dirs
        .iter()
        .any(|d| Some(d.rel.as_path()) == rel.parent() || (d.recursive && rel.starts_with(&d.rel)));
    if parent_watched && matcher.is_watched(rel) {
        if let Ok(meta) = entry_metadata(matcher, rel) {
            found.push((rel.to_path_buf(), meta));
        }
    }
    if in_recursive {
        scan_dir(matcher, rel, true, found);
        return;
    }
    for d in &matcher.dirs {
        if d.rel.starts_with(rel) {
            scan_dir(matcher, &d.rel, d.recursive, found);
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
/// pruning ignored directories), collecting watched entries. Returns the number of
/// directories visited. A missing directory is simply empty.
fn scan_dir(
    matcher: &Matcher,
    rel: &Path,
    recursive: bool,
    found: &mut Vec<(PathBuf, Metadata)>,
) -> usize {
    let mut visited = 0;
    let mut stack = vec![rel.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(read) = fs::read_dir(matcher.cwd.join(&dir)) else {
            continue;
        };
        visited += 1;
        for ent in read.flatten() {
            let name = ent.file_name();
            let child = dir.join(&name);
            if matcher.is_ignored_entry(&child, Path::new(&name)) {
                continue;
            }
            let Ok(ft) = ent.file_type() else {
                continue;
            };
            if recursive && ft.is_dir() {
                stack.push(child.clone());
            }
            if matcher.is_glob_match(&child) {
                let meta = if ft.is_symlink() {
                    entry_metadata(matcher, &child)
                } else {
                    ent.metadata()
                };
                if let Ok(meta) = meta {
                    found.push((child, meta));
                }
            }
        }
    }
    visited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_rule() {
        assert!(under_bin(Path::new("bin/app.dll")));
        assert!(under_bin(Path::new("bin/x/app.so")));
        assert!(under_bin(Path::new("sub/bin/app")));
        assert!(!under_bin(Path::new("bin")));
        assert!(!under_bin(Path::new("web.config")));
        assert!(!under_bin(Path::new("binary/app")));
    }
}
