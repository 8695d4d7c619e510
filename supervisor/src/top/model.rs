//! What `appvisor top` knows and shows, without a terminal: the last status, the
//! memory samples of each app (the supervisor's recorded history, or a ring of the
//! status polls this client saw), recent lifecycle events, the selection, the time
//! range and the open dialog. Keys go in, [`Command`]s for the outside world come
//! out; [`super::render`] draws it.

use std::collections::{BTreeMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::control::SupervisorStatus;
use crate::events::{Event, EventKind};
use crate::history::wire::{HistoryLimits, HistoryMark, HistoryPoint, HistoryReply};

/// The chart's time ranges, seconds; `←`/`→` step through them.
pub const RANGES: [(u64, &str); 6] = [
    (300, "5m"),
    (900, "15m"),
    (3600, "1h"),
    (6 * 3600, "6h"),
    (24 * 3600, "24h"),
    (7 * 24 * 3600, "7d"),
];

/// Status samples kept per app when the supervisor records no history (6 hours of
/// one worker at one poll a second): bounds this client's memory, not the range.
pub const RING_CAP: usize = 6 * 3600;

/// Lifecycle events kept for the markers and the "recent" lines.
pub const EVENTS_CAP: usize = 500;

/// What a key asks the outside world to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Quit,
    /// Run this action on this app (confirmed).
    Act(Action, String),
}

/// The control requests `top` sends for the selected app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Recycle,
    Start,
    Stop,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Recycle => "recycle",
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// The dialog in front of the main view, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Main,
    /// Asks y/n before running the action on the app.
    Confirm(Action, String),
    Help,
}

/// The connection to the supervisor as the last poll found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Nothing answers (or the supervisor answered an error): why, in words.
    Down(String),
}

/// The memory figure the chart draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Private memory (RSS minus shared), what `private_memory` is checked against.
    Private,
    Rss,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Private => "private",
            Metric::Rss => "rss",
        }
    }

    fn of(self, p: &HistoryPoint) -> u64 {
        match self {
            Metric::Private => p.private,
            Metric::Rss => p.rss,
        }
    }
}

/// One app's memory samples.
#[derive(Debug, Clone, Default)]
pub struct AppSeries {
    /// Samples from status polls, oldest first; at most [`RING_CAP`].
    pub ring: VecDeque<HistoryPoint>,
    /// The supervisor's recorded history, when it answers `history`.
    pub history: Option<HistoryReply>,
}

/// One line of the chart: one worker generation's samples, x in seconds before now.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub worker: u32,
    pub generation: u64,
    /// (seconds relative to now, ≤ 0; MiB)
    pub points: Vec<(f64, f64)>,
}

/// A horizontal line at a configured limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitLine {
    /// The config key (`private_memory`, `rss`, `memory_hard_limit`).
    pub name: &'static str,
    pub mib: f64,
}

/// Everything the chart draws, computed from the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    pub metric: Metric,
    /// Seconds of the visible range (x runs from -range_s to 0).
    pub range_s: f64,
    pub y_max_mib: f64,
    pub series: Vec<Series>,
    pub limits: Vec<LimitLine>,
    /// (seconds relative to now, kind glyph)
    pub marks: Vec<(f64, char)>,
    /// Where the samples come from: "history" (the supervisor's) or "polls" (this client's).
    pub source: &'static str,
}

#[derive(Debug, Clone)]
pub struct Model {
    /// Unix seconds of the last tick; every age and x position is relative to it.
    pub now: f64,
    /// Event times and the schedule are shown in this zone (UTC in tests).
    pub tz: jiff::tz::TimeZone,
    pub link: Link,
    pub status: Option<SupervisorStatus>,
    /// The selected app, by name (the status order may change on reload).
    pub selected: Option<String>,
    /// Index into [`RANGES`].
    pub range: usize,
    pub mode: Mode,
    /// The last action's outcome, or a hint; shown above the key line.
    pub message: Option<String>,
    pub series: BTreeMap<String, AppSeries>,
    /// Recent lifecycle events of every app, oldest first.
    pub events: VecDeque<Event>,
    /// Limits per app from the config file, used when no history reply has them.
    pub config_limits: BTreeMap<String, HistoryLimits>,
    /// Where `top` looks for the supervisor, for the empty state.
    pub socket: String,
}

impl Model {
    pub fn new(socket: String, tz: jiff::tz::TimeZone) -> Model {
        Model {
            now: 0.0,
            tz,
            link: Link::Down("connecting…".into()),
            status: None,
            selected: None,
            range: 0,
            mode: Mode::Main,
            message: None,
            series: BTreeMap::new(),
            events: VecDeque::new(),
            config_limits: BTreeMap::new(),
            socket,
        }
    }

    pub fn range_s(&self) -> u64 {
        RANGES[self.range].0
    }

    pub fn range_label(&self) -> &'static str {
        RANGES[self.range].1
    }

    /// A status reply arrived at `now`: keep it and add one sample per worker to
    /// each app's ring.
    pub fn on_status(&mut self, now: f64, status: SupervisorStatus) {
        self.now = now;
        self.link = Link::Up;
        for app in &status.apps {
            let s = self.series.entry(app.name.clone()).or_default();
            for w in &app.workers {
                s.ring.push_back(HistoryPoint {
                    t: now,
                    worker: w.worker,
                    generation: w.generation,
                    pid: w.pid,
                    private: w.private.unwrap_or(0),
                    private_min: w.private.unwrap_or(0),
                    private_max: w.private.unwrap_or(0),
                    rss: w.rss.unwrap_or(0),
                    rss_max: w.rss.unwrap_or(0),
                    virtual_memory: w.virtual_memory.unwrap_or(0),
                    virtual_max: w.virtual_memory.unwrap_or(0),
                    samples: 1,
                    cpu_s: w.cpu_s.unwrap_or(0.0),
                    requests: w.requests,
                    uptime_s: w.uptime_ms as f64 / 1000.0,
                });
            }
            while s.ring.len() > RING_CAP {
                s.ring.pop_front();
            }
        }
        let names: Vec<&str> = status.apps.iter().map(|a| a.name.as_str()).collect();
        let keep = self
            .selected
            .as_deref()
            .is_some_and(|sel| names.contains(&sel));
        if !keep {
            self.selected = names.first().map(|n| n.to_string());
        }
        self.status = Some(status);
    }

    /// The supervisor did not answer.
    pub fn on_down(&mut self, now: f64, why: String) {
        self.now = now;
        self.link = Link::Down(why);
    }

    pub fn on_history(&mut self, reply: HistoryReply) {
        let app = reply.app.clone();
        self.series.entry(app).or_default().history = Some(reply);
    }

    /// A lifecycle event (from the events file or the follow stream).
    pub fn on_event(&mut self, e: Event) {
        if !is_mark(e.kind) {
            return;
        }
        self.events.push_back(e);
        while self.events.len() > EVENTS_CAP {
            self.events.pop_front();
        }
    }

    pub fn selected_app(&self) -> Option<&crate::pool::AppStatus> {
        let sel = self.selected.as_deref()?;
        self.status.as_ref()?.apps.iter().find(|a| a.name == sel)
    }

    fn select_step(&mut self, step: isize) {
        let Some(status) = &self.status else { return };
        let n = status.apps.len();
        if n == 0 {
            return;
        }
        let at = status
            .apps
            .iter()
            .position(|a| Some(&a.name) == self.selected.as_ref())
            .unwrap_or(0);
        let next = (at as isize + step).rem_euclid(n as isize) as usize;
        self.selected = Some(status.apps[next].name.clone());
    }

    /// One key press. Returns what the outside world must do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Command::Quit);
        }
        match self.mode.clone() {
            Mode::Help => {
                if key.code == KeyCode::Char('q') {
                    return Some(Command::Quit);
                }
                self.mode = Mode::Main;
                None
            }
            Mode::Confirm(action, app) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.mode = Mode::Main;
                    self.message = Some(format!("{app}: {}…", action_progress(action)));
                    Some(Command::Act(action, app))
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.mode = Mode::Main;
                    self.message = Some(format!("{app}: {} cancelled", action.verb()));
                    None
                }
                _ => None,
            },
            Mode::Main => {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Some(Command::Quit),
                    KeyCode::Up | KeyCode::Char('k') | KeyCode::BackTab => self.select_step(-1),
                    KeyCode::Down | KeyCode::Char('j') | KeyCode::Tab => self.select_step(1),
                    KeyCode::Left | KeyCode::Char('-') => self.range = self.range.saturating_sub(1),
                    KeyCode::Right | KeyCode::Char('+') | KeyCode::Char('=') => {
                        self.range = (self.range + 1).min(RANGES.len() - 1)
                    }
                    KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => {
                        self.mode = Mode::Help
                    }
                    KeyCode::Char(c @ ('r' | 's' | 'x')) => {
                        let action = match c {
                            'r' => Action::Recycle,
                            's' => Action::Start,
                            _ => Action::Stop,
                        };
                        match self.selected_app() {
                            Some(app) => self.mode = Mode::Confirm(action, app.name.clone()),
                            None => self.message = Some("no app to act on".into()),
                        }
                    }
                    _ => {}
                }
                None
            }
        }
    }

    /// The limits in force for `app`: the supervisor's (from its history reply)
    /// when it sent them, else the config file's.
    pub fn limits(&self, app: &str) -> HistoryLimits {
        self.series
            .get(app)
            .and_then(|s| s.history.as_ref())
            .map(|h| h.limits.clone())
            .or_else(|| self.config_limits.get(app).cloned())
            .unwrap_or_default()
    }

    /// The memory chart of the selected app over the selected range.
    pub fn chart(&self) -> Option<ChartData> {
        let app = self.selected_app()?;
        let limits = self.limits(&app.name);
        let range_s = self.range_s() as f64;
        let from = self.now - range_s;
        let s = self.series.get(&app.name);
        // The recorded history, then this client's polls after it (the live edge).
        let history = s.and_then(|s| s.history.as_ref());
        let after = history.map(|h| h.to).unwrap_or(f64::NEG_INFINITY);
        let mut points: Vec<&HistoryPoint> = history
            .map(|h| h.points.iter().filter(|p| p.t >= from).collect())
            .unwrap_or_default();
        if let Some(s) = s {
            points.extend(s.ring.iter().filter(|p| p.t > after && p.t >= from));
        }
        let has_private = points.iter().any(|p| p.private > 0);
        let metric = if has_private && (limits.private_memory.is_some() || limits.rss.is_none()) {
            Metric::Private
        } else {
            Metric::Rss
        };
        let mut by_gen: BTreeMap<(u32, u64), Vec<(f64, f64)>> = BTreeMap::new();
        // 0 is "not measured" (a status without the figure), never a live process.
        for p in points.into_iter().filter(|p| metric.of(p) > 0) {
            by_gen
                .entry((p.worker, p.generation))
                .or_default()
                .push((p.t - self.now, mib(metric.of(p))));
        }
        let series: Vec<Series> = by_gen
            .into_iter()
            .map(|((worker, generation), mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    worker,
                    generation,
                    points,
                }
            })
            .collect();
        let mut lines = Vec::new();
        let metric_limit = match metric {
            Metric::Private => limits.private_memory.map(|b| ("private_memory", b)),
            Metric::Rss => limits.rss.map(|b| ("rss", b)),
        };
        if let Some((name, b)) = metric_limit {
            lines.push(LimitLine { name, mib: mib(b) });
        }
        if let Some(b) = limits.memory_hard_limit {
            lines.push(LimitLine {
                name: "memory_hard_limit",
                mib: mib(b),
            });
        }
        let top = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(lines.iter().map(|l| l.mib))
            .fold(1.0_f64, f64::max);
        let marks = self.marks(&app.name, from);
        Some(ChartData {
            metric,
            range_s,
            y_max_mib: nice_ceiling(top * 1.1),
            series,
            limits: lines,
            marks,
            source: if history.is_some() {
                "history"
            } else {
                "polls"
            },
        })
    }

    /// Recycle, crash and startup-failure markers of `app` since `from`: the
    /// history reply's marks, then the events seen after it.
    fn marks(&self, app: &str, from: f64) -> Vec<(f64, char)> {
        let history = self.series.get(app).and_then(|s| s.history.as_ref());
        let mut out: Vec<(f64, char)> = Vec::new();
        let after = match history {
            Some(h) => {
                out.extend(
                    h.marks
                        .iter()
                        .filter(|m| m.t >= from)
                        .map(|m| (m.t - self.now, glyph(&m.kind))),
                );
                h.to
            }
            None => f64::NEG_INFINITY,
        };
        for e in self.events.iter().filter(|e| e.app == app) {
            if let Some(t) = unix_seconds(&e.time) {
                if t > after && t >= from {
                    out.push((t - self.now, glyph(kind_name(e.kind))));
                }
            }
        }
        out
    }

    /// The last lifecycle events of `app` worth a line ("why did it restart"),
    /// newest last: the events seen, else the history reply's marks.
    pub fn recent(&self, app: &str, n: usize) -> Vec<String> {
        let mine: Vec<&Event> = self.events.iter().filter(|e| e.app == app).collect();
        if !mine.is_empty() {
            return mine[mine.len().saturating_sub(n)..]
                .iter()
                .map(|e| {
                    let when = unix_seconds(&e.time)
                        .map(|t| self.clock(t))
                        .unwrap_or_else(|| e.time.clone());
                    let mut line = format!("{when} {}", kind_name(e.kind));
                    if let Some(r) = &e.reason {
                        line.push(' ');
                        line.push_str(r);
                    }
                    if let Some(d) = &e.detail {
                        line.push_str(": ");
                        line.push_str(d);
                    }
                    line
                })
                .collect();
        }
        let marks: Vec<&HistoryMark> = self
            .series
            .get(app)
            .and_then(|s| s.history.as_ref())
            .map(|h| h.marks.iter().collect())
            .unwrap_or_default();
        marks[marks.len().saturating_sub(n)..]
            .iter()
            .map(|m| {
                let mut line = format!("{} {}", self.clock(m.t), m.kind);
                if let Some(r) = &m.reason {
                    line.push(' ');
                    line.push_str(r);
                }
                line
            })
            .collect()
    }

    /// `HH:MM:SS` in the model's zone, with the date when not today.
    pub fn clock(&self, t: f64) -> String {
        let (Ok(at), Ok(now)) = (
            jiff::Timestamp::from_millisecond((t * 1000.0) as i64),
            jiff::Timestamp::from_millisecond((self.now * 1000.0) as i64),
        ) else {
            return "?".into();
        };
        let at = at.to_zoned(self.tz.clone());
        let now = now.to_zoned(self.tz.clone());
        if at.date() == now.date() {
            at.strftime("%H:%M:%S").to_string()
        } else {
            at.strftime("%m-%d %H:%M").to_string()
        }
    }

    /// "04:00 (in 5h12m)" for the app's next scheduled recycle (`next_schedule`
    /// is local time, `YYYY-MM-DD HH:MM`).
    pub fn next_schedule(&self, app: &crate::pool::AppStatus) -> Option<String> {
        let text = app.next_schedule.as_deref()?;
        let hhmm = text.rsplit(' ').next().unwrap_or(text);
        let at = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", text)
            .ok()
            .and_then(|dt| dt.to_zoned(self.tz.clone()).ok())
            .map(|z| z.timestamp().as_millisecond() as f64 / 1000.0);
        Some(match at {
            Some(t) if t >= self.now => format!("{hhmm} (in {})", age(t - self.now)),
            _ => hhmm.to_string(),
        })
    }
}

/// The event kinds that mark the chart and fill the "recent" lines.
fn is_mark(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Recycle
            | EventKind::Crashed
            | EventKind::StartupFailed
            | EventKind::Killed
            | EventKind::RapidFailStopped
            | EventKind::Stopped
            | EventKind::IdleStop
    )
}

pub fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Recycle => "recycle",
        EventKind::Crashed => "crashed",
        EventKind::StartupFailed => "startup_failed",
        EventKind::Killed => "killed",
        EventKind::RapidFailStopped => "rapid_fail_stopped",
        EventKind::Stopped => "stopped",
        EventKind::IdleStop => "idle_stop",
        _ => "event",
    }
}

/// The marker letter of an event kind on the chart's top row.
pub fn glyph(kind: &str) -> char {
    if kind.starts_with("recycle") {
        'R'
    } else if kind.starts_with("crash") {
        'C'
    } else if kind.starts_with("startup") {
        'F'
    } else if kind.starts_with("kill") {
        'K'
    } else {
        'S'
    }
}

fn action_progress(a: Action) -> &'static str {
    match a {
        Action::Recycle => "recycling",
        Action::Start => "starting",
        Action::Stop => "stopping",
    }
}

/// Unix seconds of an RFC 3339 time.
pub fn unix_seconds(rfc3339: &str) -> Option<f64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond() as f64 / 1000.0)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// A round number at or above `v` for the chart's top: 1, 2, 2.5 or 5 × 10ⁿ.
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A short age: `45s`, `12m`, `3h05m`, `2d04h`.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600)
    }
}

/// Bytes in MiB, one decimal under 100.
pub fn human_mib(bytes: u64) -> String {
    let m = mib(bytes);
    if m < 100.0 {
        format!("{m:.1}M")
    } else if m < 10_240.0 {
        format!("{m:.0}M")
    } else {
        format!("{:.1}G", m / 1024.0)
    }
}

/// The config's limits of every app, in the history reply's shape.
pub fn limits_from_config(config: &appvisor_config::Config) -> BTreeMap<String, HistoryLimits> {
    config
        .apps
        .iter()
        .map(|a| {
            let r = &a.recycle;
            (
                a.name.clone(),
                HistoryLimits {
                    private_memory: r.private_memory,
                    rss: r.rss,
                    virtual_memory: r.virtual_memory,
                    memory_hard_limit: r.memory_hard_limit,
                    requests: r.requests,
                    interval_s: r.interval.map(|d| d.as_secs_f64()),
                },
            )
        })
        .collect()
}
