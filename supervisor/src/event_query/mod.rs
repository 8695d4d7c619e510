//! Reading the restart log back: `appvisor events` filters (`--app`, `--kind`,
//! `--reason`, `--since`, `--until`) and `--stats`.
//!
//! # Theory of operation
//! The log is `events.jsonl` and its rotated files ([`crate::rotation`]), read
//! oldest first in bounded chunks. Each line is parsed into a [`Brief`], the few
//! fields filters and statistics need, borrowed from the line (no allocation for
//! an event that is skipped); only the lines that are shown are parsed whole.
//! Times are compared as text when they have the one form the supervisor writes
//! (`2026-11-30T21:26:33.123Z`: fixed width, UTC, so text order is time order), and
//! parsed only otherwise. That keeps `--stats` over a million lines under a second
//! (`bench/events.sh`).
//!
//! Lines that are not events are counted per file with their numbers, never
//! skipped silently.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::EventKind;
use crate::reason::RecycleReason;

/// The fields of an event that filters and statistics read, borrowed from its line.
#[derive(Debug, Deserialize)]
pub struct Brief<'a> {
    #[serde(borrow)]
    pub time: Cow<'a, str>,
    #[serde(borrow)]
    pub app: Cow<'a, str>,
    pub kind: EventKind,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub old_pid: Option<i32>,
    #[serde(default)]
    pub startup_ms: Option<u64>,
    #[serde(default)]
    pub drain_ms: Option<u64>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(borrow, default)]
    pub signal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
}

/// A bad `--since`, `--until`, `--kind` or `--reason`: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{flag} {value:?}: not a duration (\"1h\", \"30m\", \"2h30m\") nor an RFC 3339 time (\"2026-11-30T21:00:00Z\", \"2026-11-30T22:00:00+01:00\")")]
    Time { flag: &'static str, value: String },
    #[error("--since {since} is after --until {until}; nothing can match")]
    EmptyWindow { since: String, until: String },
    #[error("--kind {value:?} is not an event kind; valid kinds: {valid}")]
    Kind { value: String, valid: String },
    #[error("--reason {value:?} is not a recycle reason; valid reasons: {valid}")]
    Reason { value: String, valid: String },
}

/// A point of the window, as the supervisor writes times.
#[derive(Debug, Clone)]
pub struct Bound {
    pub at: jiff::Timestamp,
    text: String,
}

impl Bound {
    pub fn new(at: jiff::Timestamp) -> Bound {
        Bound {
            at,
            text: format!("{at:.3}"),
        }
    }

    /// `1h` (that long before `now`) or an RFC 3339 time.
    pub fn parse(
        flag: &'static str,
        value: &str,
        now: jiff::Timestamp,
    ) -> Result<Bound, QueryError> {
        let err = || QueryError::Time {
            flag,
            value: value.to_string(),
        };
        if let Ok(d) = appvisor_config::parse_duration(value) {
            let d = jiff::SignedDuration::try_from(d).map_err(|_| err())?;
            return now.checked_sub(d).map(Bound::new).map_err(|_| err());
        }
        value
            .parse::<jiff::Timestamp>()
            .map(Bound::new)
            .map_err(|_| err())
    }
}

/// The time form `events.jsonl` is written in: compared as text.
fn canonical(time: &str) -> bool {
    let b = time.as_bytes();
    b.len() == 24 && b[23] == b'Z' && b[10] == b'T' && b[19] == b'.'
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub app: Option<String>,
    /// Empty: every kind.
    pub kinds: Vec<EventKind>,
    /// Empty: every reason (and events without one).
    pub reasons: Vec<String>,
    pub since: Option<Bound>,
    pub until: Option<Bound>,
}

impl Filter {
    /// Checks the names given to `--kind` and `--reason` (each may be a
    /// comma-separated list too) and the window.
    pub fn new(
        app: Option<String>,
        kinds: &[String],
        reasons: &[String],
        since: Option<Bound>,
        until: Option<Bound>,
    ) -> Result<Filter, QueryError> {
        let mut f = Filter {
            app,
            since,
            until,
            ..Default::default()
        };
        for k in kinds.iter().flat_map(|k| k.split(',')).map(str::trim) {
            match EventKind::from_name(k) {
                Some(kind) => f.kinds.push(kind),
                None => {
                    return Err(QueryError::Kind {
                        value: k.to_string(),
                        valid: EventKind::ALL.map(|k| k.as_str()).join(", "),
                    })
                }
            }
        }
        for r in reasons.iter().flat_map(|r| r.split(',')).map(str::trim) {
            if !RecycleReason::NAMES.contains(&r) {
                return Err(QueryError::Reason {
                    value: r.to_string(),
                    valid: RecycleReason::NAMES.join(", "),
                });
            }
            f.reasons.push(r.to_string());
        }
        if let (Some(s), Some(u)) = (&f.since, &f.until) {
            if s.at > u.at {
                return Err(QueryError::EmptyWindow {
                    since: s.text.clone(),
                    until: u.text.clone(),
                });
            }
        }
        Ok(f)
    }

    /// Whether `e` is in the window and of the app.
    pub fn in_scope(&self, e: &Brief<'_>) -> bool {
        if self.app.as_deref().is_some_and(|a| a != e.app) {
            return false;
        }
        self.in_window(&e.time)
    }

    /// Whether `e` passes every filter.
    pub fn matches(&self, e: &Brief<'_>) -> bool {
        self.in_scope(e) && self.kind_and_reason(e)
    }

    fn kind_and_reason(&self, e: &Brief<'_>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if !self.reasons.is_empty() {
            let Some(r) = &e.reason else { return false };
            if !self.reasons.iter().any(|x| x == r) {
                return false;
            }
        }
        true
    }

    /// `since <= time < until`.
    pub fn in_window(&self, time: &str) -> bool {
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        if canonical(time) {
            return self.since.as_ref().is_none_or(|s| time >= s.text.as_str())
                && self.until.as_ref().is_none_or(|u| time < u.text.as_str());
        }
        let Ok(t) = time.parse::<jiff::Timestamp>() else {
            return false;
        };
        self.since.as_ref().is_none_or(|s| t >= s.at)
            && self.until.as_ref().is_none_or(|u| t < u.at)
    }
}

/// What a pass over the log read.
#[derive(Debug, Default)]
pub struct Scan {
    /// The files read, oldest first.
    pub files: Vec<PathBuf>,
    /// Lines read (events or not).
    pub lines: u64,
    /// Per file: how many lines are not events, and the numbers of the first few.
    pub bad: Vec<(PathBuf, u64, Vec<u64>)>,
    /// Events of the filter's app in any window (to tell an unknown app).
    pub of_app: u64,
}

impl Scan {
    /// The warning about lines that are not events, one line per file.
    pub fn bad_lines_warnings(&self) -> Vec<String> {
        self.bad
            .iter()
            .map(|(file, n, first)| {
                let mut numbers: Vec<String> = first.iter().map(u64::to_string).collect();
                if *n > first.len() as u64 {
                    numbers.push("…".into());
                }
                let one = *n == 1;
                format!(
                    "{n} line{} of {} {} not an event and {} skipped (line{} {})",
                    if one { "" } else { "s" },
                    file.display(),
                    if one { "is" } else { "are" },
                    if one { "is" } else { "are" },
                    if one { "" } else { "s" },
                    numbers.join(", ")
                )
            })
            .collect()
    }
}

/// Bad line numbers kept per file for the warning.
const BAD_LINES_SHOWN: usize = 10;

/// The first three fields of a line as the supervisor writes it,
/// `{"time":"…","app":"…","kind":"…",…}`, read without a JSON parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    pub time: &'a str,
    pub app: &'a str,
    pub kind: EventKind,
}

impl<'a> Head<'a> {
    /// `None` for anything else (another field order, an escape in a value, a line
    /// that does not end as an object does): such lines are parsed in full.
    pub fn of(line: &'a [u8]) -> Option<Head<'a>> {
        fn field<'b>(rest: &'b [u8], key: &[u8]) -> Option<(&'b str, &'b [u8])> {
            let rest = rest.strip_prefix(key)?;
            let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            if rest[end] != b'"' {
                return None;
            }
            Some((std::str::from_utf8(&rest[..end]).ok()?, &rest[end + 1..]))
        }
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.last() != Some(&b'}') {
            return None;
        }
        let (time, rest) = field(trimmed, b"{\"time\":\"")?;
        let (app, rest) = field(rest, b",\"app\":\"")?;
        let (kind, rest) = field(rest, b",\"kind\":\"")?;
        if !matches!(rest.first(), Some(b',' | b'}')) {
            return None;
        }
        Some(Head {
            time,
            app,
            kind: EventKind::from_name(kind)?,
        })
    }
}

impl Filter {
    /// What [`Filter::matches`] can tell from the [`Head`] alone: the app, the
    /// window and the kind.
    pub fn head_matches(&self, h: &Head<'_>) -> bool {
        self.app.as_deref().is_none_or(|a| a == h.app)
            && self.in_window(h.time)
            && (self.kinds.is_empty() || self.kinds.contains(&h.kind))
    }
}

/// Reads every event of `events.jsonl` and its rotated files, oldest first, and
/// calls `each` with the line and its [`Brief`]. `app` (if any) is counted in
/// [`Scan::of_app`].
///
/// `wanted` sees the [`Head`] of each line first: a line it refuses is not parsed
/// further (most lines, for a narrow window or kind), nor checked to be whole JSON
/// — a line torn by a failed write has lost its closing brace, and that is checked.
pub fn scan(
    path: &Path,
    app: Option<&str>,
    wanted: impl Fn(&Head<'_>) -> bool,
    mut each: impl FnMut(&[u8], &Brief<'_>),
) -> io::Result<Scan> {
    let mut out = Scan::default();
    for mut f in crate::rotation::files_oldest_first(path)? {
        let mut number = 0u64;
        let mut bad = 0u64;
        let mut first_bad = Vec::new();
        crate::rotation::for_each_line(&mut f.file, 1 << 20, |line| {
            number += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            if let Some(h) = Head::of(line) {
                if app.is_some_and(|a| a == h.app) {
                    out.of_app += 1;
                }
                if !wanted(&h) {
                    return;
                }
                match serde_json::from_slice::<Brief<'_>>(line) {
                    Ok(e) => each(line, &e),
                    Err(_) => {
                        bad += 1;
                        if first_bad.len() < BAD_LINES_SHOWN {
                            first_bad.push(number);
                        }
                    }
                }
                return;
            }
            match serde_json::from_slice::<Brief<'_>>(line) {
                Ok(e) => {
                    if app.is_some_and(|a| a == e.app) {
                        out.of_app += 1;
                    }
                    each(line, &e)
                }
                Err(_) => {
                    bad += 1;
                    if first_bad.len() < BAD_LINES_SHOWN {
                        first_bad.push(number);
                    }
                }
            }
        })?;
        out.lines += number;
        if bad > 0 {
            out.bad.push((f.path.clone(), bad, first_bad));
        }
        out.files.push(f.path);
    }
    Ok(out)
}

/// Figures of one set of durations, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_ms: Option<f64>,
    /// Nearest rank: the smallest value with at least 95 % of them at or below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
}

impl Summary {
    fn of(mut v: Vec<u64>) -> Summary {
        if v.is_empty() {
            return Summary::default();
        }
        let n = v.len();
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let rank = (n * 95).div_ceil(100).max(1) - 1;
        let (_, p95, _) = v.select_nth_unstable(rank);
        let p95 = *p95;
        Summary {
            count: n as u64,
            mean_ms: Some((mean * 10.0).round() / 10.0),
            p95_ms: Some(p95),
            max_ms: v.iter().max().copied(),
        }
    }
}

/// One row of `events --stats`: an app and a reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsRow {
    pub app: String,
    /// A recycle reason (`manual`, `memory`, …); for crashes and startup failures
    /// how the worker ended (`exit 1`, `SIGKILL`, `startup_timeout`); `start` for
    /// the startups of first starts and restarts after a crash, `stop` for the
    /// drains of stops and shutdowns; `*` for the app's totals.
    pub reason: String,
    pub recycles: u64,
    pub crashes: u64,
    pub startup_failures: u64,
    pub startup: Summary,
    pub drain: Summary,
}

/// The reason label of the app's totals row.
pub const ALL_REASONS: &str = "*";

#[derive(Debug, Default)]
struct Acc {
    recycles: u64,
    crashes: u64,
    startup_failures: u64,
    startup: Vec<u64>,
    drain: Vec<u64>,
}

/// Folds events into per app and reason figures.
#[derive(Debug, Default)]
pub struct Stats {
    apps: HashMap<String, HashMap<String, Acc>>,
    /// The reason of each recycle whose old worker has not finished draining yet:
    /// `retired` and `killed` carry no reason, so their drain joins it here.
    draining: HashMap<(String, i32), String>,
    pub events: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

fn exit_label(e: &Brief<'_>) -> String {
    match (&e.signal, e.exit_code) {
        (Some(s), _) => s.to_string(),
        (None, Some(c)) => format!("exit {c}"),
        (None, None) => "exit".into(),
    }
}

impl Stats {
    fn acc(&mut self, app: &str, reason: &str) -> &mut Acc {
        if !self.apps.contains_key(app) {
            self.apps.insert(app.to_string(), HashMap::new());
        }
        let reasons = self.apps.get_mut(app).expect("just inserted");
        if !reasons.contains_key(reason) {
            reasons.insert(reason.to_string(), Acc::default());
        }
        reasons.get_mut(reason).expect("just inserted")
    }

    /// Counts one event (already filtered).
    pub fn add(&mut self, e: &Brief<'_>) {
        self.events += 1;
        if self.first.is_none() {
            self.first = Some(e.time.to_string());
        }
        // Reused, not allocated per event.
        let last = self.last.get_or_insert_with(String::new);
        last.clear();
        last.push_str(&e.time);
        match e.kind {
            EventKind::Recycle => {
                let reason = e.reason.as_deref().unwrap_or("?");
                if let Some(old) = e.old_pid {
                    self.draining
                        .insert((e.app.to_string(), old), reason.to_string());
                }
                let a = self.acc(&e.app, reason);
                a.recycles += 1;
                a.startup.extend(e.startup_ms);
            }
            EventKind::Ready => {
                if let Some(ms) = e.startup_ms {
                    self.acc(&e.app, "start").startup.push(ms);
                }
            }
            EventKind::Crashed => {
                let label = exit_label(e);
                self.acc(&e.app, &label).crashes += 1;
            }
            EventKind::StartupFailed => {
                let label = if e
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains("startup_timeout"))
                {
                    "startup_timeout".to_string()
                } else {
                    exit_label(e)
                };
                self.acc(&e.app, &label).startup_failures += 1;
            }
            EventKind::Retired | EventKind::Killed => {
                if let (Some(ms), Some(pid)) = (e.drain_ms, e.pid) {
                    let reason = self
                        .draining
                        .remove(&(e.app.to_string(), pid))
                        .unwrap_or_else(|| "stop".to_string());
                    self.acc(&e.app, &reason).drain.push(ms);
                }
            }
            _ => {}
        }
    }

    /// The rows, by app; in each app the totals (`*`) first, then the reasons by
    /// how often they happened. `reasons` (if not empty) keeps only those.
    pub fn rows(self, reasons: &[String]) -> Vec<StatsRow> {
        let mut apps: Vec<(String, HashMap<String, Acc>)> = self.apps.into_iter().collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (app, by_reason) in apps {
            let mut total = Acc::default();
            let mut rows = Vec::new();
            for (reason, a) in by_reason {
                total.recycles += a.recycles;
                total.crashes += a.crashes;
                total.startup_failures += a.startup_failures;
                total.startup.extend_from_slice(&a.startup);
                total.drain.extend_from_slice(&a.drain);
                if reasons.is_empty() || reasons.contains(&reason) {
                    rows.push(row(&app, reason, a));
                }
            }
            rows.sort_by(|a, b| {
                let n = |r: &StatsRow| r.recycles + r.crashes + r.startup_failures;
                n(b).cmp(&n(a))
                    .then(b.startup.count.cmp(&a.startup.count))
                    .then(a.reason.cmp(&b.reason))
            });
            if reasons.is_empty() {
                out.push(row(&app, ALL_REASONS.to_string(), total));
            }
            out.extend(rows);
        }
        out
    }
}

fn row(app: &str, reason: String, a: Acc) -> StatsRow {
    StatsRow {
        app: app.to_string(),
        reason,
        recycles: a.recycles,
        crashes: a.crashes,
        startup_failures: a.startup_failures,
        startup: Summary::of(a.startup),
        drain: Summary::of(a.drain),
    }
}

/// `events --stats --json`: the window and the rows.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The first and last event counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    /// Events counted (after the filters).
    pub events: u64,
    /// Lines read, in `files` files.
    pub lines: u64,
    pub files: usize,
    pub rows: Vec<StatsRow>,
}

/// Reads the log at `path` and computes the statistics of the events `filter`
/// keeps (its reasons select rows; the join of drains to their recycle needs
/// every recycle of the window).
pub fn stats(path: &Path, filter: &Filter) -> io::Result<(StatsReport, Scan)> {
    let mut stats = Stats::default();
    let mut raw = filter.clone();
    raw.reasons.clear();
    let counted = |h: &Head<'_>| {
        matches!(
            h.kind,
            EventKind::Recycle
                | EventKind::Ready
                | EventKind::Crashed
                | EventKind::StartupFailed
                | EventKind::Retired
                | EventKind::Killed
        ) && raw.head_matches(h)
    };
    let scan = scan(path, filter.app.as_deref(), counted, |_, e| {
        if raw.matches(e) {
            stats.add(e);
        }
    })?;
    let report = StatsReport {
        since: filter.since.as_ref().map(|b| b.text.clone()),
        until: filter.until.as_ref().map(|b| b.text.clone()),
        first: stats.first.clone(),
        last: stats.last.clone(),
        events: stats.events,
        lines: scan.lines,
        files: scan.files.len(),
        rows: stats.rows(&filter.reasons),
    };
    Ok((report, scan))
}

/// The last `n` lines (all of them when `None`) that pass `filter`, oldest first.
pub fn last_lines(
    path: &Path,
    filter: &Filter,
    n: Option<usize>,
) -> io::Result<(Vec<String>, Scan)> {
    let mut kept = std::collections::VecDeque::new();
    let scan = scan(
        path,
        filter.app.as_deref(),
        |h| filter.head_matches(h),
        |line, e| {
            if !filter.matches(e) || n == Some(0) {
                return;
            }
            if n.is_some_and(|n| kept.len() == n) {
                kept.pop_front();
            }
            kept.push_back(String::from_utf8_lossy(line).into_owned());
        },
    )?;
    Ok((kept.into(), scan))
}

/// `events --stats` as a table.
pub fn render_stats(r: &StatsReport) -> String {
    let mut s = String::new();
    let window = match (&r.since, &r.until) {
        (None, None) => "all of the log".to_string(),
        (Some(a), None) => format!("since {a}"),
        (None, Some(b)) => format!("until {b}"),
        (Some(a), Some(b)) => format!("{a} to {b}"),
    };
    s.push_str(&format!(
        "{} event{} ({}; {} line{} in {} file{}",
        r.events,
        if r.events == 1 { "" } else { "s" },
        window,
        r.lines,
        if r.lines == 1 { "" } else { "s" },
        r.files,
        if r.files == 1 { "" } else { "s" },
    ));
    if let (Some(a), Some(b)) = (&r.first, &r.last) {
        s.push_str(&format!("; first {a}, last {b}"));
    }
    s.push_str(")\n");
    if r.rows.is_empty() {
        return s;
    }
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.0}"));
    let p = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
    let app_w = r.rows.iter().map(|x| x.app.len()).max().unwrap_or(3).max(3);
    let reason_w = r
        .rows
        .iter()
        .map(|x| x.reason.len())
        .max()
        .unwrap_or(6)
        .max(6);
    s.push_str(&format!(
        "{:<app_w$}  {:<reason_w$}  {:>8} {:>7} {:>8}  {:>10} {:>9}  {:>8} {:>7}\n",
        "APP", "REASON", "RECYCLES", "CRASHES", "FAILURES", "STARTUP ms", "p95", "DRAIN ms", "p95"
    ));
    for row in &r.rows {
        s.push_str(&format!(
            "{:<app_w$}  {:<reason_w$}  {:>8} {:>7} {:>8}  {:>10} {:>9}  {:>8} {:>7}\n",
            row.app,
            row.reason,
            row.recycles,
            row.crashes,
            row.startup_failures,
            ms(row.startup.mean_ms),
            p(row.startup.p95_ms),
            ms(row.drain.mean_ms),
            p(row.drain.p95_ms),
        ));
    }
    s
}

#[cfg(test)]
mod tests;
