//! Size-rotated files: `events.jsonl` and each app's `logs/<app>.log`.
//!
//! # Layout on disk
//! `NAME` is the file being written; `NAME.1` the newest rotated one, … `NAME.<keep>`
//! the oldest. Rotation renames `NAME.i` → `NAME.(i+1)` from the oldest down (the
//! oldest is replaced), then `NAME` → `NAME.1`, and the writer opens a fresh `NAME`.
//! Writers rotate only *between* two lines, under the lock that serializes their
//! writes, so no line is ever split across two files.
//!
//! # Readers
//! A reader that wants everything ([`files_oldest_first`]) opens every file before
//! reading any, newest first: a rotation in between can only make it open one file
//! twice (the same inode under two names, which it skips), never miss one.
//!
//! A follower ([`Follower`], `appvisor logs -f`) reads its file to the end, then
//! checks that the name still points at the same inode. When it does not (rotated,
//! or deleted and made again), it finds where its file went (`NAME.i`) and carries on
//! with the next newer one, `NAME.(i-1)` … `NAME`, so a rotation between two reads
//! loses nothing (unless `keep` rotations passed while it was not reading).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `NAME.i`.
pub fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Shifts the rotated files and moves `path` to `path.1` (or removes it when
/// `keep` is 0). The caller reopens `path`. Renames never need free space, so this
/// works on a full disk too.
pub fn rotate(path: &Path, keep: u32) -> io::Result<()> {
    for i in (1..keep).rev() {
        match std::fs::rename(numbered(path, i), numbered(path, i + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let r = if keep > 0 {
        std::fs::rename(path, numbered(path, 1))
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The numbers `i` of the `NAME.i` files beside `path`, ascending (newest first).
/// Found by listing the directory, not by `keep`: a reader may not know it, and
/// files left from a larger `keep` are still history.
pub fn rotated_numbers(path: &Path) -> Vec<u32> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name();
            let n = n.to_str()?;
            let rest = n.strip_prefix(&prefix)?;
            if rest.starts_with('0') {
                return None;
            }
            rest.parse::<u32>().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// One file of a rotated set, opened.
#[derive(Debug)]
pub struct OpenedFile {
    pub path: PathBuf,
    pub file: File,
}

/// Every file of the set, opened, oldest first (`NAME.<n>` … `NAME.1`, `NAME`).
/// Opened newest first, before any is read, and deduplicated by inode: see the
/// module docs. Missing files are skipped; other errors are returned.
pub fn files_oldest_first(path: &Path) -> io::Result<Vec<OpenedFile>> {
    let mut names = vec![path.to_path_buf()];
    names.extend(rotated_numbers(path).into_iter().map(|i| numbered(path, i)));
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for p in names {
        let file = match open_read(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let m = file.metadata()?;
        let id = (m.dev(), m.ino());
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        out.push(OpenedFile { path: p, file });
    }
    out.reverse();
    Ok(out)
}

/// Opens a state file for reading, never through a symlink.
pub fn open_read(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Calls `each` with every whole line of `file` (without its newline), reading in
/// chunks of `chunk` bytes so memory stays bounded whatever the file's size. A last
/// line without a newline is passed too. Returns the number of lines.
pub fn for_each_line(
    file: &mut File,
    chunk: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<usize> {
    let mut buf = vec![0u8; chunk.max(4096)];
    let mut filled = 0;
    let mut lines = 0;
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: grow it.
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read(&mut buf[filled..])?;
        if n == 0 {
            if filled > 0 {
                each(&buf[..filled]);
                lines += 1;
            }
            return Ok(lines);
        }
        let end = filled + n;
        // Lines end at the last newline read; the rest waits for the next read.
        let mut from = 0;
        for i in memchr::memchr_iter(b'\n', &buf[..end]) {
            each(&buf[from..i]);
            lines += 1;
            from = i + 1;
        }
        buf.copy_within(from..end, 0);
        filled = end - from;
    }
}

fn inode(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// Follows a rotated file as it is written: see the module docs.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
    /// The start of a line whose newline has not been read yet.
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the current end of `path` (or at its beginning once it exists).
    pub fn at_end(path: &Path) -> Follower {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            partial: Vec::new(),
        };
        if let Ok(file) = open_read(path) {
            use std::io::Seek;
            let mut file = file;
            if let (Ok(m), Ok(_)) = (file.metadata(), file.seek(io::SeekFrom::End(0))) {
                f.file = Some((file, inode(&m)));
            }
        }
        f
    }

    /// Goes on from where `file` (opened from `path`) was read to.
    pub fn continue_from(path: &Path, file: File) -> Follower {
        let id = file.metadata().ok().map(|m| inode(&m));
        Follower {
            path: path.to_path_buf(),
            file: id.map(|id| (file, id)),
            partial: Vec::new(),
        }
    }

    /// The file being followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Passes every whole line written since the last call to `each`, across
    /// rotations. Never blocks.
    pub fn read_new(&mut self, each: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        loop {
            if let Some((file, _)) = self.file.as_mut() {
                let mut chunk = [0u8; 64 * 1024];
                loop {
                    let n = file.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    let mut data = &chunk[..n];
                    while let Some(i) = memchr::memchr(b'\n', data) {
                        if self.partial.is_empty() {
                            each(&data[..i]);
                        } else {
                            self.partial.extend_from_slice(&data[..i]);
                            each(&self.partial);
                            self.partial.clear();
                        }
                        data = &data[i + 1..];
                    }
                    self.partial.extend_from_slice(data);
                }
            }
            // At the end of our file: is it still the one being written?
            let current = std::fs::metadata(&self.path).ok().map(|m| inode(&m));
            let ours = self.file.as_ref().map(|(_, id)| *id);
            if current.is_none() || current == ours {
                return Ok(());
            }
            // It moved (rotation) or went (deleted): carry on with the next newer
            // file. A partial line left in the old file was never finished.
            if !self.partial.is_empty() {
                each(&self.partial);
                self.partial.clear();
            }
            let Some(next) = self.next_file(ours) else {
                return Ok(());
            };
            self.file = Some(next);
        }
    }

    /// The file that follows `ours` in the set: `NAME.(i-1)` when ours is now
    /// `NAME.i`, or `NAME` when ours is `NAME.1` or gone. Checked again after
    /// opening, so a rotation meanwhile makes it try again rather than skip a file.
    fn next_file(&self, ours: Option<(u64, u64)>) -> Option<(File, (u64, u64))> {
        for _ in 0..100 {
            let at = ours.and_then(|id| self.where_is(id));
            let next = match at {
                Some(i) if i > 1 => numbered(&self.path, i - 1),
                _ => self.path.clone(),
            };
            let file = open_read(&next).ok()?;
            let id = inode(&file.metadata().ok()?);
            if ours.and_then(|o| self.where_is(o)) == at {
                return Some((file, id));
            }
        }
        None
    }

    fn where_is(&self, id: (u64, u64)) -> Option<u32> {
        rotated_numbers(&self.path).into_iter().find(|&i| {
            std::fs::symlink_metadata(numbered(&self.path, i))
                .map(|m| inode(&m) == id)
                .unwrap_or(false)
        })
    }
}

/// Waits for something to change in a directory (inotify), at most `timeout`:
/// a follower's way to sleep until its file grows or rotates.
pub struct DirWatch {
    inotify: inotify::Inotify,
    dir: PathBuf,
    watching: bool,
}

impl DirWatch {
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        let mut w = DirWatch {
            inotify: inotify::Inotify::init()?,
            dir: dir.to_path_buf(),
            watching: false,
        };
        w.add();
        Ok(w)
    }

    fn add(&mut self) {
        use inotify::WatchMask;
        self.watching = self
            .inotify
            .watches()
            .add(
                &self.dir,
                WatchMask::MODIFY
                    | WatchMask::CREATE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF,
            )
            .is_ok();
    }

    /// Returns after a change in the directory, or after `timeout` (so a directory
    /// deleted and made again is watched anew).
    pub fn wait(&mut self, timeout: std::time::Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        if !self.watching {
            self.add();
        }
        if self.watching {
            let fd = self.inotify.as_fd();
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
                .unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut fds, ms);
        } else {
            std::thread::sleep(timeout);
        }
        let mut buf = [0u8; 4096];
        while let Ok(events) = self.inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                if e.mask
                    .intersects(inotify::EventMask::IGNORED | inotify::EventMask::DELETE_SELF)
                {
                    self.watching = false;
                }
            }
            if !any {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("av-rot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn files_are_read_oldest_first_and_each_once() {
        let d = tmp("all");
        let p = d.join("events.jsonl");
        append(&p, "a\n");
        rotate(&p, 3).unwrap();
        append(&p, "b\n");
        rotate(&p, 3).unwrap();
        append(&p, "c\n");
        // A hard link to a rotated file under another number is one file.
        std::fs::hard_link(numbered(&p, 1), numbered(&p, 7)).unwrap();
        std::fs::write(d.join("events.jsonl.07"), "not ours\n").unwrap();
        let mut lines = Vec::new();
        for mut f in files_oldest_first(&p).unwrap() {
            for_each_line(&mut f.file, 4096, |l| {
                lines.push(String::from_utf8_lossy(l).into_owned())
            })
            .unwrap();
        }
        assert_eq!(lines, ["a", "b", "c"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rotation_keeps_keep_files() {
        let d = tmp("keep");
        let p = d.join("x.log");
        for i in 0..6 {
            append(&p, &format!("{i}\n"));
            rotate(&p, 2).unwrap();
        }
        assert_eq!(rotated_numbers(&p), [1, 2]);
        assert_eq!(std::fs::read_to_string(numbered(&p, 1)).unwrap(), "5\n");
        assert_eq!(std::fs::read_to_string(numbered(&p, 2)).unwrap(), "4\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn lines_longer_than_the_chunk_and_a_last_line_without_newline() {
        let d = tmp("chunk");
        let p = d.join("f");
        let long = "y".repeat(10_000);
        std::fs::write(&p, format!("a\n{long}\nlast")).unwrap();
        let mut got = Vec::new();
        let n = for_each_line(&mut File::open(&p).unwrap(), 4096, |l| got.push(l.len())).unwrap();
        assert_eq!(n, 3);
        assert_eq!(got, [1, 10_000, 4]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Two rotations between two reads: the follower still reads every line once,
    /// in order, and a line written half before a read is passed whole.
    #[test]
    fn a_follower_crosses_rotations_without_losing_a_line() {
        let d = tmp("follow");
        let p = d.join("web.log");
        append(&p, "old\n");
        let mut f = Follower::at_end(&p);
        let mut got = Vec::new();
        let mut take = |f: &mut Follower| {
            f.read_new(&mut |l| got.push(String::from_utf8_lossy(l).into_owned()))
                .unwrap()
        };
        append(&p, "1\n2");
        take(&mut f);
        append(&p, "\n3\n");
        rotate(&p, 5).unwrap();
        append(&p, "4\n");
        rotate(&p, 5).unwrap();
        append(&p, "5\n");
        take(&mut f);
        append(&p, "6\n");
        take(&mut f);
        // Deleted and made again.
        std::fs::remove_file(&p).unwrap();
        append(&p, "7\n");
        take(&mut f);
        assert_eq!(got, ["1", "2", "3", "4", "5", "6", "7"]);
        let _ = std::fs::remove_dir_all(&d);
    }
}
