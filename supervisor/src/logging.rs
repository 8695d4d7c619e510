//! The supervisor's own log: `tracing` events to stderr, as text, JSON lines, or
//! journald lines.
//!
//! This is the debug and operations log of the supervisor itself. The restart log,
//! `events.jsonl`, is the product's record and stays what it is (see [`crate::events`]);
//! each event written there is also logged here as one readable line.
//!
//! # Formats
//! - `text` (default): a timestamp, the level, the module and the sentence; colours only
//!   when stderr is a terminal and `NO_COLOR` is unset.
//! - `json` (`--log-format json`): one JSON object per line (`timestamp`, `level`,
//!   `target`, `message` and the event's fields), for a log shipper.
//! - journald: chosen by itself when stderr *is* the journal stream systemd gave us
//!   (`JOURNAL_STREAM` names the device and inode of stderr, as `systemd.exec(5)`
//!   describes — checked against `fstat(2)` so a child that inherited the variable
//!   but writes to a file is not fooled). Then each line starts with the `<N>`
//!   syslog priority of sd-daemon(3) (`<3>` error, `<4>` warning, `<6>` info, `<7>`
//!   debug), and carries no timestamp (the journal adds its own) and no colour. With
//!   `--log-format json` under systemd, JSON wins: the user asked for it.
//!
//! # Filter
//! `RUST_LOG`'s usual forms (`debug`, `appvisor::trigger::watch=debug`,
//! `info,appvisor_store=trace`), read by `tracing-subscriber`'s `Targets`; `info` when
//! unset. An invalid directive is skipped rather than fatal. Not `EnvFilter`: its
//! span and field directives need the `regex` crate, whose code and compiled
//! directive regexes cost the supervisor about 2 MiB of resident memory for a
//! feature a supervisor's log does not need (measured with the README demo).
//!
//! # Never die of our own output
//! A supervisor must outlive a closed terminal, `appvisor run | head -1`, or a
//! stalled pager. So:
//! - every write ignores its error (EPIPE, EIO, …): the line is lost, nothing else;
//! - `tracing-subscriber`'s fmt layer would `eprintln!` its own write errors — which
//!   panics on a closed stderr — so that is turned off (`log_internal_errors(false)`);
//! - for `appvisor run`, lines go through a bounded queue to one writer thread
//!   (`LogWriter::background`): if stderr is full (a paused pager, a stuck pipe)
//!   the runtime thread never blocks on it; lines beyond the queue are dropped and
//!   counted, and the count is written once stderr drains. The thread sleeps on the
//!   queue, so it adds no wake-up while nothing is logged.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (journald lines under systemd).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How lines are shaped, once the environment is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text { ansi: bool },
    Json,
    Journald,
}

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 1024;

/// Keeps the log working; dropping it flushes what is queued (call before `exit`).
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    writer: Option<(LogWriter, JoinHandle<()>)>,
    shape: Shape,
}

impl LogGuard {
    /// Whether stderr carries machine-read lines (JSON, or journald's `<N>` prefix),
    /// so a fatal error must go through the log rather than as a bare message.
    pub fn is_structured(&self) -> bool {
        !matches!(self.shape, Shape::Text { .. })
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((writer, thread)) = self.writer.take() {
            // The subscriber keeps a clone of the sender; closing the queue is what
            // ends the thread, after it wrote everything already queued.
            writer.close();
            let _ = thread.join();
        }
    }
}

/// Installs the global subscriber. `background` puts stderr writes on their own
/// thread (for the long-running `appvisor run`); short CLI commands write directly.
pub fn install(format: LogFormat, background: bool) -> LogGuard {
    let shape = shape(format);
    let (writer, guard) = if background {
        match LogWriter::background() {
            Ok((w, thread)) => (w.clone(), Some((w, thread))),
            Err(_) => (LogWriter::direct(), None),
        }
    } else {
        (LogWriter::direct(), None)
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter())
        .with(layer(shape, writer));
    // Only fails if a subscriber is already set (a test harness): keep that one.
    let _ = tracing::subscriber::set_global_default(subscriber);
    LogGuard {
        writer: guard,
        shape,
    }
}

/// `RUST_LOG`, or `info`.
fn filter() -> Targets {
    parse_filter(std::env::var("RUST_LOG").ok().as_deref().unwrap_or(""))
}

/// Each comma-separated directive on its own, so one invalid directive is skipped
/// and the others still apply (`Targets`' own parser refuses the whole string).
fn parse_filter(spec: &str) -> Targets {
    let mut targets = Targets::new().with_default(LevelFilter::INFO);
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let Ok(parsed) = directive.parse::<Targets>() else {
            continue;
        };
        if let Some(level) = parsed.default_level() {
            targets = targets.with_default(level);
        }
        for (target, level) in parsed.iter() {
            targets = targets.with_target(target, level);
        }
    }
    targets
}

fn shape(format: LogFormat) -> Shape {
    match format {
        LogFormat::Json => Shape::Json,
        LogFormat::Text if stderr_is_journal() => Shape::Journald,
        LogFormat::Text => {
            use std::io::IsTerminal;
            Shape::Text {
                ansi: io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            }
        }
    }
}

/// `JOURNAL_STREAM=DEV:INODE` and stderr is that very stream.
fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM")
        .and_then(|v| v.to_str().map(str::to_owned))
        .is_some_and(|v| is_stream(io::stderr().as_fd(), &v))
}

/// Whether `fd` is the stream `DEV:INODE` names (as systemd sets `JOURNAL_STREAM`).
fn is_stream(fd: std::os::fd::BorrowedFd<'_>, value: &str) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(fd) {
        // dev_t and ino_t are not u64 on every target.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// The formatting layer for `shape`, writing through `writer`.
fn layer<S, W>(shape: Shape, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .log_internal_errors(false);
    match shape {
        Shape::Text { ansi } => Box::new(base.with_ansi(ansi)),
        Shape::Json => Box::new(
            base.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
        ),
        Shape::Journald => Box::new(base.with_ansi(false).event_format(JournaldLine)),
    }
}

/// `<6>appvisor::daemon: Supervising 1 app …`: the sd-daemon(3) priority prefix on
/// every physical line (a multi-line message keeps its level), no timestamp.
struct JournaldLine;

impl<S, N> FormatEvent<S, N> for JournaldLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut text = String::new();
        ctx.field_format()
            .format_fields(Writer::new(&mut text), event)?;
        let target = event.metadata().target();
        for (i, line) in text.lines().enumerate() {
            if i == 0 {
                writeln!(writer, "<{priority}>{target}: {line}")?;
            } else {
                writeln!(writer, "<{priority}>{line}")?;
            }
        }
        Ok(())
    }
}

/// Where formatted lines go: stderr directly, or a queue to the writer thread.
/// Either way a write never fails and never panics.
#[derive(Clone)]
pub struct LogWriter {
    queue: Option<Arc<Queue>>,
}

struct Queue {
    tx: std::sync::Mutex<Option<SyncSender<Vec<u8>>>>,
    dropped: AtomicU64,
}

impl LogWriter {
    /// Writes go straight to stderr, errors ignored.
    pub fn direct() -> LogWriter {
        LogWriter { queue: None }
    }

    /// Writes are queued for a thread that writes them to stderr.
    fn background() -> io::Result<(LogWriter, JoinHandle<()>)> {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        let queue = Arc::new(Queue {
            tx: std::sync::Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
        });
        let q = queue.clone();
        let thread = std::thread::Builder::new()
            .name("appvisor-log".into())
            .spawn(move || write_queued(rx, &q, &mut io::stderr()))?;
        Ok((LogWriter { queue: Some(queue) }, thread))
    }

    fn close(&self) {
        if let Some(q) = &self.queue {
            q.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    fn put(&self, line: &[u8]) {
        let Some(q) = &self.queue else {
            let _ = io::stderr().lock().write_all(line);
            return;
        };
        let tx = q.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            // Closed (the supervisor is exiting): write it ourselves.
            let _ = io::stderr().lock().write_all(line);
            return;
        };
        match tx.try_send(line.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                q.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The writer thread: every queued line to `out`, errors ignored; after a loss, one
/// line saying how many were dropped.
fn write_queued(rx: Receiver<Vec<u8>>, queue: &Queue, out: &mut dyn Write) {
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        let dropped = queue.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            // The note is a JSON object: a JSON reader still parses every line, and
            // a person still reads it.
            let note = format!(
                "{{\"level\":\"WARN\",\"target\":\"appvisor::logging\",\"message\":\"{dropped} log lines were dropped: stderr was not being read\"}}\n"
            );
            let _ = out.write_all(note.as_bytes());
        }
    }
}

/// The `io::Write` handed to the fmt layer for one event.
pub struct LineWriter<'a> {
    to: &'a LogWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to.put(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { to: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives_are_read_one_by_one() {
        use tracing::Level;
        let t = parse_filter("");
        assert!(t.would_enable("appvisor", &Level::INFO));
        assert!(!t.would_enable("appvisor", &Level::DEBUG));
        let t = parse_filter("debug");
        assert!(t.would_enable("appvisor_store", &Level::DEBUG));
        let t = parse_filter("warn,appvisor::trigger::watch=debug");
        assert!(t.would_enable("appvisor::trigger::watch::thread", &Level::DEBUG));
        assert!(!t.would_enable("appvisor::pool", &Level::INFO));
        // An invalid directive is skipped; the others still apply.
        let t = parse_filter("appvisor_store=loud,appvisor_store=trace");
        assert!(t.would_enable("appvisor_store", &Level::TRACE));
        assert!(t.would_enable("appvisor", &Level::INFO));
    }
    use std::sync::Mutex;

    /// Collects what a layer writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn emit(shape: Shape) -> String {
        let cap = Capture::default();
        let subscriber = tracing_subscriber::registry().with(layer(shape, cap.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(app = "web", "Supervising 1 app \"web\"");
            tracing::warn!("two\nlines");
            tracing::debug!(path = "a/b.py", "content hash equal");
        });
        let out = cap.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_parse() {
        let out = emit(Shape::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        for l in lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        }
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(first["message"], "Supervising 1 app \"web\"");
        assert_eq!(first["app"], "web");
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_time() {
        let out = emit(Shape::Journald);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("<6>appvisor::logging::tests: Supervising"),
            "{out}"
        );
        assert_eq!(lines[1], "<4>appvisor::logging::tests: two");
        assert_eq!(lines[2], "<4>lines", "a continuation line keeps its level");
        assert!(lines[3].starts_with("<7>"), "{out}");
        assert!(!out.contains("\x1b["), "no colour");
    }

    #[test]
    fn text_lines_have_time_and_level() {
        let out = emit(Shape::Text { ansi: false });
        let first = out.lines().next().unwrap();
        assert!(
            first.contains(" INFO ") && first.contains("Supervising"),
            "{first}"
        );
        assert!(
            first.as_bytes()[..4].iter().all(u8::is_ascii_digit),
            "{first}"
        );
    }

    #[test]
    fn journal_stream_must_name_the_fd_itself() {
        use std::os::unix::fs::MetadataExt;
        let path = std::env::temp_dir().join(format!("appvisor-journal-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let value = format!("{}:{}", meta.dev(), meta.ino());
        assert!(is_stream(file.as_fd(), &value));
        assert!(!is_stream(
            file.as_fd(),
            &format!("{}:{}", meta.dev(), meta.ino() + 1)
        ));
        assert!(!is_stream(file.as_fd(), "garbage"));
        std::fs::remove_file(&path).unwrap();
    }

    /// A writer whose every write fails, as a closed stderr does.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_closed_output_is_ignored() {
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        let queue = Arc::new(Queue {
            tx: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
        });
        let w = LogWriter {
            queue: Some(queue.clone()),
        };
        for _ in 0..5 {
            let _ = w.make_writer().write_all(b"line\n");
        }
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        w.close();
        let mut out = Vec::new();
        write_queued(rx, &queue, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("line\n"), "{text}");
        assert!(text.contains("3 log lines were dropped"), "{text}");
        let note = text.lines().nth(1).unwrap();
        serde_json::from_str::<serde_json::Value>(note).unwrap();
        // And a dead output is no reason to stop or panic.
        let (tx, rx) = sync_channel::<Vec<u8>>(2);
        tx.send(b"x\n".to_vec()).unwrap();
        drop(tx);
        write_queued(rx, &queue, &mut Closed);
    }
}
