//! Worker output: per-app log files with size-based rotation, and the terminal.
//!
//! Each worker's stdout and stderr are pipes read here line by line. Every line is
//! appended to `<state_dir>/logs/<app>.log` (stderr lines marked `!`), and — when
//! the supervisor runs in the foreground — printed as `app[pid] line`. The last
//! lines of stderr are kept per worker so a `startup_failed` or `crashed` event can
//! say what the worker said before it died.
//!
//! # One line in the log file
//! ```text
//! 2026-11-30T21:26:33.123Z w0 g3 [4242]  listening on fd 3
//! 2026-11-30T21:26:33.125Z w0 g3 [4242]! a line on stderr
//! ```
//! The time (UTC, when the supervisor read the line), the worker's slot, its
//! generation and pid are written by the supervisor as it reads the worker's pipes:
//! it alone knows the generation, a worker's own output cannot forge another
//! worker's prefix, it needs no index beside the file, and the file stays plain
//! text for `grep` and `tail`. `appvisor logs` parses it back ([`crate::logs`]).
//!
//! # The disk is not trusted either
//! Log files are opened with `O_NOFOLLOW` and mode 0600 (`state_dir::open_append`).
//! Once a second (while lines come) the writer checks that the file's name still
//! leads to it and opens it again if not (the file or the whole state dir was
//! deleted). A line that cannot be written (a full disk) is cut back whole, dropped
//! and counted, never retried in a loop and never waited for: the worker's pipe is
//! always drained. The first failure is one warning and one `log_write_failed`
//! event; the first line written again, one `log_write_resumed` event with the
//! count of lines dropped.
//!
//! # The terminal never slows anything down
//! The log file is the record; the terminal echo is a courtesy. A stdout that
//! nobody reads (`appvisor run > fifo`, a paused pager, a stuck pipe) must not
//! stall the runtime thread — that would freeze every pool, the control socket and
//! the store with it, and then the workers blocked on their own full pipes. So echo
//! lines go through a bounded queue ([`ECHO_QUEUE_BYTES`]) to one writer thread,
//! the only code that touches stdout; a line that does not fit is dropped and
//! counted, and once stdout takes lines again the writer says how many were not
//! echoed (they are all in `logs/<app>.log`). Write errors (EPIPE after `| head`)
//! are ignored. Lines still queued when the supervisor exits are not echoed: the
//! exit must not wait on a reader that may never come.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

/// Lines of stderr kept per worker for events.
pub const TAIL_LINES: usize = 10;
/// A longer line is cut (and the rest still logged as further lines).
const MAX_LINE: usize = 16 * 1024;

/// The log file of one app, shared by all its workers.
#[derive(Clone)]
pub struct AppLog {
    inner: Arc<Mutex<LogFile>>,
    app: Arc<str>,
    echo: bool,
}

impl std::fmt::Debug for AppLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppLog({})", self.app)
    }
}

/// Which worker a line comes from: written at the start of each line in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTag {
    pub pid: i32,
    pub slot: u32,
    pub generation: u64,
}

/// How often, at most, the writer checks that the file's name still leads to it.
const NAME_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    keep: u32,
    /// The app, for events.
    app: Arc<str>,
    /// Where `log_write_failed` / `log_write_resumed` go.
    events: Option<crate::events::EventLog>,
    /// Lines dropped since the last line written (disk full, no file).
    dropped: u64,
    checked: Option<std::time::Instant>,
}

impl LogFile {
    fn new(path: PathBuf, max_size: u64, keep: u32, app: &str) -> LogFile {
        LogFile {
            path,
            file: None,
            size: 0,
            max_size: max_size.max(4096),
            keep,
            app: Arc::from(app),
            events: None,
            dropped: 0,
            checked: None,
        }
    }

    /// Appends `line`, rotating first if it would not fit, so no file ever passes
    /// `max_size` and the app's logs never take more than `max_size × (keep + 1)`
    /// however fast a worker writes. A line longer than a whole file (possible only
    /// with a `max_size` under [`MAX_LINE`]) is cut to `max_size`.
    fn write_line(&mut self, line: &[u8]) {
        self.follow_the_name();
        if self.file.is_none() {
            self.reopen();
        }
        let cut;
        let line = if line.len() as u64 > self.max_size {
            let mut l = line[..self.max_size as usize - 1].to_vec();
            l.push(b'\n');
            cut = l;
            &cut[..]
        } else {
            line
        };
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate();
        }
        let result = match self.file.as_mut() {
            Some(f) => append_whole(f, self.size, line),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the log file cannot be opened",
            )),
        };
        match result {
            Ok(()) => {
                self.size += line.len() as u64;
                if self.dropped > 0 {
                    self.resumed();
                }
            }
            Err(e) => self.failed(&e),
        }
        if self.size >= self.max_size {
            self.rotate();
        }
    }

    /// The first line lost: one warning and one event, not one per line.
    fn failed(&mut self, e: &io::Error) {
        self.dropped += 1;
        if self.dropped > 1 {
            return;
        }
        let detail = format!(
            "cannot write the log {}: {e}; worker output is dropped (and counted) until it can be written again",
            self.path.display()
        );
        match &self.events {
            Some(events) => events.emit(
                crate::events::Event::new(&self.app, crate::events::EventKind::LogWriteFailed)
                    .detail(detail),
            ),
            None => tracing::warn!("{}: {detail}", self.app),
        }
    }

    fn resumed(&mut self) {
        let detail = format!(
            "the log {} is written again; {} line(s) of worker output were dropped before",
            self.path.display(),
            self.dropped
        );
        self.dropped = 0;
        match &self.events {
            Some(events) => events.emit(
                crate::events::Event::new(&self.app, crate::events::EventKind::LogWriteResumed)
                    .detail(detail),
            ),
            None => tracing::info!("{}: {detail}", self.app),
        }
    }

    /// Once a second: is the file at `path` still ours? If it was deleted or moved
    /// away (the state dir removed, a hand-made rotation), open it again.
    fn follow_the_name(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let now = std::time::Instant::now();
        if self
            .checked
            .is_some_and(|t| now.duration_since(t) < NAME_CHECK_EVERY)
        {
            return;
        }
        self.checked = Some(now);
        let Some(f) = &self.file else { return };
        let on_disk = std::fs::symlink_metadata(&self.path).ok();
        let ours = f.metadata().ok();
        let same = matches!((&on_disk, &ours), (Some(a), Some(b)) if a.dev() == b.dev() && a.ino() == b.ino());
        if !same {
            self.file = None;
            self.reopen();
        }
    }

    fn reopen(&mut self) {
        // The logs dir may have gone with the state dir: made again (0700), but
        // never the state dir itself — the daemon makes that, with its lock.
        if let Some(dir) = self.path.parent() {
            if !dir.exists() && dir.parent().is_some_and(Path::exists) {
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
            }
        }
        match crate::state_dir::open_append(&self.path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                if self.dropped == 0 {
                    tracing::error!(
                        "Cannot open the app log {}: {e}; its worker output is lost until it can be.",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// `app.log` → `app.log.1` → … → `app.log.<keep>` (dropped).
    fn rotate(&mut self) {
        self.file = None;
        if let Err(e) = crate::rotation::rotate(&self.path, self.keep) {
            tracing::debug!("cannot rotate {}: {e}", self.path.display());
        }
        self.reopen();
    }
}

/// Appends `line` whole or not at all: a write that fails half-way (`ENOSPC`) is
/// cut back to `size`, so the next line is never glued to a torn one.
fn append_whole(file: &mut File, size: u64, line: &[u8]) -> io::Result<()> {
    match file.write_all(line) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = file.set_len(size);
            Err(e)
        }
    }
}

impl AppLog {
    pub fn open(dir: &Path, app: &str, max_size: u64, keep: u32, echo: bool) -> io::Result<AppLog> {
        std::fs::create_dir_all(dir)?;
        let mut file = LogFile::new(dir.join(format!("{app}.log")), max_size, keep, app);
        file.reopen();
        Ok(AppLog {
            inner: Arc::new(Mutex::new(file)),
            app: Arc::from(app),
            echo,
        })
    }

    /// Reports write failures and recoveries of this log as events too.
    pub fn with_events(self, events: crate::events::EventLog) -> AppLog {
        self.inner.lock().unwrap().events = Some(events);
        self
    }

    pub fn path(&self) -> PathBuf {
        self.inner.lock().unwrap().path.clone()
    }

    /// Reads a worker's stdout and stderr until both close. The stderr tail is
    /// kept in `tail`.
    pub fn attach(
        &self,
        worker: WorkerTag,
        stdout: OwnedFd,
        stderr: OwnedFd,
        tail: Arc<Mutex<VecDeque<String>>>,
    ) {
        for (fd, is_err) in [(stdout, false), (stderr, true)] {
            let log = self.clone();
            let tail = tail.clone();
            let Ok(rx) = pipe::Receiver::from_owned_fd(fd) else {
                continue;
            };
            tokio::spawn(async move {
                let mut reader = BufReader::with_capacity(8192, rx);
                let mut buf = Vec::with_capacity(256);
                loop {
                    buf.clear();
                    match read_line_bounded(&mut reader, &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let text = String::from_utf8_lossy(&buf);
                    if is_err {
                        let mut t = tail.lock().unwrap();
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(text.to_string());
                    }
                    log.line(worker, is_err, &text);
                }
            });
        }
    }

    fn line(&self, worker: WorkerTag, is_err: bool, text: &str) {
        let time = crate::events::now_rfc3339();
        let mark = if is_err { '!' } else { ' ' };
        let WorkerTag {
            pid,
            slot,
            generation,
        } = worker;
        let record = format!("{time} w{slot} g{generation} [{pid}]{mark} {text}\n");
        self.inner.lock().unwrap().write_line(record.as_bytes());
        if self.echo {
            echo(format!("{}[{pid}] {text}\n", self.app).into_bytes());
        }
    }
}

/// Echo lines (bytes) waiting for the terminal before new ones are dropped: a few
/// seconds of a fast worker at a terminal's speed, and a bound on memory.
pub const ECHO_QUEUE_BYTES: usize = 1 << 20;

/// The queue to the stdout writer thread (see the module docs).
struct Echo {
    tx: Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

/// Hands `line` to the writer thread, or drops and counts it; never blocks.
fn echo(line: Vec<u8>) {
    static ECHO: OnceLock<Option<Echo>> = OnceLock::new();
    let Some(q) = ECHO.get_or_init(start_echo) else {
        return;
    };
    q.offer(line);
}

/// The writer thread; `None` (no echo at all) if no thread can be started.
fn start_echo() -> Option<Echo> {
    let (echo, rx) = Echo::new();
    let (q, d) = (echo.queued.clone(), echo.dropped.clone());
    match std::thread::Builder::new()
        .name("appvisor-echo".into())
        .spawn(move || write_echoed(rx, &q, &d, &mut io::stdout()))
    {
        Ok(_) => Some(echo),
        Err(e) => {
            tracing::warn!(
                "Cannot start the terminal echo of worker output ({e}); it goes to the app logs only."
            );
            None
        }
    }
}

impl Echo {
    fn new() -> (Echo, Receiver<Vec<u8>>) {
        // The byte count is the bound (`offer` reserves before sending). The channel
        // itself is unbounded so it allocates only for lines actually queued: a
        // bounded one of enough slots would allocate (and touch) ~0.5 MiB up front.
        let (tx, rx) = channel::<Vec<u8>>();
        let echo = Echo {
            tx,
            queued: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (echo, rx)
    }

    fn offer(&self, line: Vec<u8>) {
        let len = line.len();
        // Reserve room first, so concurrent offers cannot overshoot the bound.
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > ECHO_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(line).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: each queued line to `out`, errors ignored. After lines were
/// dropped, one note with their count as soon as a write succeeds again — when the
/// reader has caught up, so the note is read where the gap is.
fn write_echoed(
    rx: Receiver<Vec<u8>>,
    queued: &AtomicUsize,
    dropped: &AtomicU64,
    out: &mut dyn Write,
) {
    while let Ok(line) = rx.recv() {
        let ok = out.write_all(&line).and_then(|()| out.flush()).is_ok();
        queued.fetch_sub(line.len(), Ordering::AcqRel);
        if ok {
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                let note = format!(
                    "appvisor: {lost} lines of worker output were not echoed here (stdout was not being read); the app logs have them\n"
                );
                let _ = out.write_all(note.as_bytes()).and_then(|()| out.flush());
            }
        }
    }
}

async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        let take = available.len().min(room);
        if let Some(i) = available[..take].iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&available[..=i]);
            reader.consume(i + 1);
            return Ok(buf.len());
        }
        buf.extend_from_slice(&available[..take]);
        reader.consume(take);
        if buf.len() >= MAX_LINE {
            return Ok(buf.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_by_size_and_keeps_n_files() {
        let dir = std::env::temp_dir().join(format!("appvisor-rotate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = LogFile::new(dir.join("web.log"), 4096, 2, "web");
        let line = [b'x'; 1023];
        for _ in 0..20 {
            f.write_line(&line);
            f.write_line(b"\n");
        }
        assert!(dir.join("web.log").exists());
        assert!(dir.join("web.log.1").exists());
        assert!(dir.join("web.log.2").exists());
        assert!(
            !dir.join("web.log.3").exists(),
            "only log_keep rotated files are kept"
        );
        assert!(std::fs::metadata(dir.join("web.log.1")).unwrap().len() >= 4096);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// No file passes `max_size`, whatever the line lengths: a line that would not
    /// fit goes to the next file, one longer than a file is cut.
    #[test]
    fn no_log_file_passes_max_size() {
        let dir = std::env::temp_dir().join(format!("appvisor-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = LogFile::new(dir.join("web.log"), 4096, 2, "web");
        for n in 0..200 {
            let mut line = vec![b'x'; 1 + (n * 397) % 6000];
            line.push(b'\n');
            f.write_line(&line);
            for name in ["web.log", "web.log.1", "web.log.2"] {
                let len = std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
                assert!(len <= 4096, "{name}: {len} bytes after line {n}");
            }
        }
        assert!(!dir.join("web.log.3").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn echo_drops_and_counts_beyond_its_bound_and_never_blocks() {
        let (echo, rx) = Echo::new();
        let mut line = vec![b'x'; 999];
        line.push(b'\n');
        let offered = 3 * ECHO_QUEUE_BYTES / line.len();
        // Nobody reads `rx`: every offer returns at once.
        for _ in 0..offered {
            echo.offer(line.clone());
        }
        let queued = echo.queued.load(Ordering::Relaxed);
        let dropped = echo.dropped.load(Ordering::Relaxed) as usize;
        assert!(queued <= ECHO_QUEUE_BYTES, "{queued} bytes queued");
        assert_eq!(queued / line.len() + dropped, offered);
        assert!(dropped >= offered / 2, "{dropped} of {offered} dropped");

        // The reader catches up: everything queued is written, then one note.
        drop(echo.tx);
        let mut out = Vec::new();
        write_echoed(rx, &echo.queued, &echo.dropped, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('x').count(), queued / line.len() * 999);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("appvisor: ")).count(),
            1,
            "one note"
        );
        assert!(text.contains(&format!("{dropped} lines of worker output were not echoed")));
        assert_eq!(echo.queued.load(Ordering::Relaxed), 0);
    }

    /// A stdout that fails (EPIPE after `| head -1`) is ignored, line after line.
    #[test]
    fn echo_write_errors_are_ignored() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (echo, rx) = Echo::new();
        for _ in 0..10 {
            echo.offer(b"web[1] line\n".to_vec());
        }
        drop(echo.tx);
        write_echoed(rx, &echo.queued, &echo.dropped, &mut Broken);
        assert_eq!(echo.queued.load(Ordering::Relaxed), 0);
    }
}
