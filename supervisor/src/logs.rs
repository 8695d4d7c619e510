//! `appvisor logs APP [-f] [-n N] [--worker W]`: worker output from the app's log
//! files, with time, worker slot, generation and pid on every line.
//!
//! # Theory of operation
//! The supervisor writes each line of a worker's output to `logs/<app>.log` with a
//! prefix it alone knows (`output.rs`): `TIME wSLOT gGEN [PID]MARK TEXT`. This
//! module parses that back. The last lines come from the rotated files too
//! (oldest first); `-f` then follows the file being written across rotations, and
//! across recycles for free — every generation of an app writes to the same file.
//! Following sleeps on inotify (the logs directory) and wakes at least once a
//! second, so a logs directory deleted and made again is found again.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::rotation::{DirWatch, Follower};

/// One line of an app's log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// RFC 3339, UTC, as written.
    pub time: &'a str,
    /// `None` in lines written before slots and generations were recorded.
    pub slot: Option<u32>,
    pub generation: Option<u64>,
    pub pid: i32,
    /// The line came from the worker's stderr.
    pub stderr: bool,
    pub text: &'a str,
}

/// Parses `TIME wSLOT gGEN [PID]MARK TEXT` (and the older `TIME [PID]MARK TEXT`).
pub fn parse(line: &str) -> Option<LogLine<'_>> {
    let (time, mut rest) = line.split_once(' ')?;
    let mut slot = None;
    let mut generation = None;
    if let Some(r) = rest.strip_prefix('w') {
        let (s, r) = r.split_once(' ')?;
        slot = Some(s.parse().ok()?);
        let r = r.strip_prefix('g')?;
        let (g, r) = r.split_once(' ')?;
        generation = Some(g.parse().ok()?);
        rest = r;
    }
    let rest = rest.strip_prefix('[')?;
    let (pid, rest) = rest.split_once(']')?;
    let pid = pid.parse().ok()?;
    let mut chars = rest.chars();
    let stderr = match chars.next()? {
        '!' => true,
        ' ' => false,
        _ => return None,
    };
    let text = chars.as_str().strip_prefix(' ').unwrap_or(chars.as_str());
    Some(LogLine {
        time,
        slot,
        generation,
        pid,
        stderr,
        text,
    })
}

/// Which lines to show.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFilter {
    pub worker: Option<u32>,
}

impl LogFilter {
    fn keeps(&self, l: &LogLine<'_>) -> bool {
        self.worker.is_none_or(|w| l.slot == Some(w))
    }
}

/// A line for the terminal: local time, then as in the file.
pub fn render(l: &LogLine<'_>) -> String {
    let time = l
        .time
        .parse::<jiff::Timestamp>()
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| l.time.to_string());
    let mark = if l.stderr { '!' } else { ' ' };
    match (l.slot, l.generation) {
        (Some(s), Some(g)) => format!("{time} w{s} g{g} [{}]{mark} {}", l.pid, l.text),
        _ => format!("{time} [{}]{mark} {}", l.pid, l.text),
    }
}

/// Prints the last `n` lines of `path` (and its rotated files) that `filter`
/// keeps, then, with `follow`, every new one until stdout closes. Lines that are
/// not in the log's form (a file edited by hand) are shown as they are.
pub fn show(
    path: &Path,
    filter: LogFilter,
    n: usize,
    follow: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let mut last = std::collections::VecDeque::with_capacity(n.min(4096));
    let files = crate::rotation::files_oldest_first(path)?;
    let mut newest = None;
    for mut f in files {
        crate::rotation::for_each_line(&mut f.file, 1 << 20, |raw| {
            let text = String::from_utf8_lossy(raw);
            let keep = match parse(&text) {
                Some(l) => filter.keeps(&l),
                None => filter.worker.is_none(),
            };
            if keep && n > 0 {
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(text.into_owned());
            }
        })?;
        if f.path == path {
            newest = Some(f.file);
        }
    }
    let print = |line: &str, out: &mut dyn Write| -> std::io::Result<()> {
        match parse(line) {
            Some(l) if filter.keeps(&l) => writeln!(out, "{}", render(&l)),
            Some(_) => Ok(()),
            None if filter.worker.is_none() => writeln!(out, "{line}"),
            None => Ok(()),
        }
    };
    for line in &last {
        print(line, out)?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut follower = match newest {
        Some(file) => Follower::continue_from(path, file),
        None => Follower::at_end(path),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut watch = DirWatch::new(dir)?;
    loop {
        let mut result = Ok(());
        follower.read_new(&mut |raw| {
            if result.is_ok() {
                result = print(&String::from_utf8_lossy(raw), out);
            }
        })?;
        result?;
        out.flush()?;
        watch.wait(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back_in_both_forms() {
        let l = parse("2026-11-30T21:26:33.123Z w1 g3 [4242]  hello  world").unwrap();
        assert_eq!(
            l,
            LogLine {
                time: "2026-11-30T21:26:33.123Z",
                slot: Some(1),
                generation: Some(3),
                pid: 4242,
                stderr: false,
                text: "hello  world",
            }
        );
        let l = parse("2026-11-30T21:26:33.123Z w0 g12 [7]! oops").unwrap();
        assert_eq!((l.stderr, l.generation, l.text), (true, Some(12), "oops"));
        let l = parse("2026-11-30T21:26:33.123Z [7]  old form").unwrap();
        assert_eq!((l.slot, l.pid, l.text), (None, 7, "old form"));
        let l = parse("2026-11-30T21:26:33.123Z w0 g1 [7] ").unwrap();
        assert_eq!(l.text, "");
        assert!(parse("garbage").is_none());
        assert!(parse("2026-11-30T21:26:33.123Z wx g1 [7]  a").is_none());
    }
}
