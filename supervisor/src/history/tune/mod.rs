//! `appvisor tune APP`: limits recommended from the app's own recorded history,
//! and `--what-if`, a dry run of a proposed limit against it.
//!
//! It reads the history files and `events.jsonl` directly — the supervisor may be
//! stopped — and the app's current limits from the config file.
//!
//! # Method
//! 1. The window's records (full resolution for the last hour, one-minute buckets
//!    before) are split per worker generation; only samples of a serving worker
//!    count, and the first part of each life (the warm-up: 10 % of what was seen of
//!    it, at least 10 s, at most 5 min) is left out.
//! 2. Each generation gets a Theil–Sen line of memory against its age and against
//!    its request count; the app's level and growth are the medians of those,
//!    weighted by how long each generation was seen.
//! 3. A leak is growth of at least 1 MiB/hour that adds at least 1 MiB and three
//!    times the noise over what was seen, and keeps growing in the later half.
//! 4. Recommendations follow from the level, the growth, the configured
//!    `memory_hard_limit`, `memory_check_interval` and the startup and drain times
//!    of the restart log.
//! 5. `--what-if` replays each recorded generation: the proposed limit would have
//!    recycled it when its own curve first crossed the limit, and the fresh worker
//!    would have grown the same way again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use appvisor_config::{format_duration, format_size, parse_duration, parse_size, AppConfig};
use serde::Serialize;

use super::file::{Rec, PHASE_SERVING};
use super::fit::{self, Line};
use super::query;
use super::recorder::app_dir;
use crate::events::{Event, EventKind};

const MIB: f64 = 1048576.0;
/// Seen after warm-up, summed over generations, before `tune` says anything.
pub const MIN_USABLE_S: f64 = 60.0;
/// Samples of one generation after warm-up before it is fitted.
const MIN_POINTS: usize = 10;

/// What `appvisor tune` was asked.
#[derive(Debug, Clone)]
pub struct TuneArgs {
    pub app: String,
    pub since: Duration,
    pub json: bool,
    pub what_if: Option<String>,
}

mod render;
#[cfg(test)]
mod tests;
mod what_if;

pub use render::render;
use what_if::replay;
pub use what_if::{parse_what_if, WhatIf};

/// One worker generation's serving samples, oldest first.
#[derive(Debug, Clone)]
struct Series {
    worker: u32,
    recs: Vec<Rec>,
}

impl Series {
    fn warmup_s(&self) -> f64 {
        let life = self
            .recs
            .last()
            .map_or(0.0, |r| r.uptime_ms as f64 / 1000.0);
        (life * 0.1).clamp(10.0, 300.0)
    }

    /// Samples after warm-up.
    fn settled(&self) -> Vec<Rec> {
        let w = self.warmup_s() * 1000.0;
        self.recs
            .iter()
            .filter(|r| r.uptime_ms as f64 >= w)
            .copied()
            .collect()
    }
}

fn series_of(records: &[Rec]) -> Vec<Series> {
    let mut by: BTreeMap<(u32, u64, i32), Vec<Rec>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.phase == PHASE_SERVING) {
        by.entry((r.worker, r.generation, r.pid))
            .or_default()
            .push(*r);
    }
    by.into_iter()
        .map(|((worker, _, _), mut recs)| {
            recs.sort_by_key(|r| r.uptime_ms);
            Series { worker, recs }
        })
        .collect()
}

/// One memory figure's analysis.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub level_bytes: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub growth_bytes_per_hour: Option<f64>,
    pub growth_bytes_per_1000_requests: Option<f64>,
    pub leak: bool,
    pub recommended: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
enum Figure {
    Private,
    Rss,
    Virtual,
}

impl Figure {
    fn of(self, r: &Rec) -> f64 {
        match self {
            Figure::Private => r.private as f64,
            Figure::Rss => r.rss as f64,
            Figure::Virtual => r.virtual_ as f64,
        }
    }
    fn max_of(self, r: &Rec) -> u64 {
        match self {
            Figure::Private => r.private_max,
            Figure::Rss => r.rss_max,
            Figure::Virtual => r.virtual_max,
        }
    }
}

/// Level, growth per second and per request, leak, peak — of one figure.
struct Fitted {
    level: f64,
    per_s: f64,
    per_request: Option<f64>,
    leak: bool,
    peak: u64,
}

fn fit_figure(series: &[Series], fig: Figure) -> Option<Fitted> {
    let mut levels = Vec::new();
    let mut slopes = Vec::new();
    let mut per_req = Vec::new();
    let mut leak_votes = (0.0, 0.0);
    let mut peak = 0;
    for s in series {
        let settled = s.settled();
        if settled.len() < MIN_POINTS {
            continue;
        }
        peak = settled
            .iter()
            .map(|r| fig.max_of(r))
            .max()
            .unwrap_or(0)
            .max(peak);
        let pts: Vec<(f64, f64)> = settled
            .iter()
            .map(|r| (r.uptime_ms as f64 / 1000.0, fig.of(r)))
            .collect();
        let Some(line) = fit::theil_sen(&pts) else {
            continue;
        };
        let x0 = pts[0].0;
        let seen = pts[pts.len() - 1].0 - x0;
        let weight = seen.max(1.0);
        levels.push((line.at(x0), weight));
        slopes.push((line.slope, weight));
        let sustained = fit::theil_sen(&pts[pts.len() / 2..])
            .is_some_and(|late: Line| late.slope >= 0.3 * line.slope);
        let grew = line.slope * seen;
        let leaks =
            line.slope * 3600.0 >= MIB && grew >= MIB && grew >= 3.0 * line.noise && sustained;
        if leaks {
            leak_votes.0 += weight;
        }
        leak_votes.1 += weight;
        let rq: Vec<(f64, f64)> = settled
            .iter()
            .map(|r| (r.requests as f64, fig.of(r)))
            .collect();
        let distinct = rq
            .first()
            .zip(rq.last())
            .is_some_and(|(a, b)| b.0 - a.0 >= 10.0);
        if distinct {
            if let Some(l) = fit::theil_sen(&rq) {
                per_req.push((l.slope, weight));
            }
        }
    }
    Some(Fitted {
        level: fit::weighted_median(&mut levels)?,
        per_s: fit::weighted_median(&mut slopes)?,
        per_request: fit::weighted_median(&mut per_req),
        leak: leak_votes.1 > 0.0 && leak_votes.0 * 2.0 >= leak_votes.1,
        peak,
    })
}

/// Counts of one reason a limit or failure fired.
#[derive(Debug, Clone, Serialize)]
pub struct Fired {
    pub kind: String,
    pub reason: String,
    pub count: u64,
    pub last_detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub count: usize,
    pub mean_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

fn timing(mut v: Vec<f64>) -> Timing {
    let count = v.len();
    let mean_ms = (count > 0).then(|| v.iter().sum::<f64>() / count as f64);
    Timing {
        count,
        mean_ms,
        p95_ms: fit::quantile(&mut v, 0.95),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitEta {
    pub name: String,
    pub value: f64,
    /// From a fresh worker, seconds; `None` if it is never reached at this rate.
    pub time_to_limit_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub recommended: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WhatIfResult {
    pub settings: WhatIf,
    pub recycles: u64,
    pub per_day: f64,
    /// Unix seconds of the first replayed recycles (at most 20).
    pub times: Vec<f64>,
    /// Recycles that really happened in the window (every reason).
    pub actual_recycles: u64,
}

/// Everything `tune` found; `--json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub app: String,
    pub window_s: u64,
    pub from: f64,
    pub to: f64,
    pub samples: u64,
    pub workers: usize,
    pub generations: usize,
    /// Seconds of worker life seen after warm-up.
    pub usable_s: f64,
    pub enough_data: bool,
    /// When not enough: how many more seconds are needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub needs_s: Option<f64>,
    pub metrics: BTreeMap<String, Metric>,
    pub requests_per_s: Option<f64>,
    pub requests: Recommendation,
    pub interval: Recommendation,
    pub limits: Vec<LimitEta>,
    pub fired: Vec<Fired>,
    pub startup_ms: Timing,
    pub drain_ms: Timing,
    pub toml: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what_if: Option<WhatIfResult>,
}

/// Rounds a recommended size: up (or down) to 8 MiB under 1 GiB, 64 MiB above.
fn round_size(bytes: f64, up: bool) -> u64 {
    let step = if bytes < 1024.0 * MIB {
        8.0 * MIB
    } else {
        64.0 * MIB
    };
    let n = if up {
        (bytes / step).ceil()
    } else {
        (bytes / step).floor()
    };
    (n.max(1.0) * step) as u64
}

/// Two significant digits, down.
fn round_count(n: f64) -> u64 {
    if n < 100.0 {
        return n.max(1.0) as u64;
    }
    let mag = 10f64.powi(n.log10().floor() as i32 - 1);
    ((n / mag).floor() * mag) as u64
}

/// A duration rounded to a readable unit (down).
fn round_secs(s: f64) -> f64 {
    let unit = if s >= 2.0 * 3600.0 {
        3600.0
    } else if s >= 600.0 {
        300.0
    } else if s >= 120.0 {
        60.0
    } else if s >= 20.0 {
        10.0
    } else {
        1.0
    };
    ((s / unit).floor() * unit).max(1.0)
}

fn mib(b: f64) -> String {
    if b.abs() >= 10.0 * MIB {
        format!("{:.0} MiB", b / MIB)
    } else {
        format!("{:.1} MiB", b / MIB)
    }
}

fn human_s(s: f64) -> String {
    format_duration(Duration::from_secs_f64(s.max(0.0).round()))
}

/// Analyses `records` and `events` of `app` (`now_ms` is the window's end).
pub fn analyse(
    app: &AppConfig,
    records: &[Rec],
    events: &[Event],
    window: Duration,
    sample_interval: Duration,
    now_ms: u64,
    what_if: Option<&WhatIf>,
) -> Report {
    let series = series_of(records);
    let rc = &app.recycle;
    let usable: f64 = series
        .iter()
        .map(|s| {
            let st = s.settled();
            if st.len() < 2 {
                0.0
            } else {
                (st[st.len() - 1].uptime_ms - st[0].uptime_ms) as f64 / 1000.0
            }
        })
        .sum();
    let fitted_any = series.iter().any(|s| s.settled().len() >= MIN_POINTS);
    let enough = usable >= MIN_USABLE_S && fitted_any;
    let mut workers: Vec<u32> = series.iter().map(|s| s.worker).collect();
    workers.sort_unstable();
    workers.dedup();

    // Limits fired, startup and drain times.
    let mut fired: BTreeMap<(String, String), Fired> = BTreeMap::new();
    let (mut startups, mut drains) = (Vec::new(), Vec::new());
    let mut actual_recycles = 0;
    for e in events {
        let kind = e.kind;
        if let Some(ms) = e.startup_ms {
            if matches!(kind, EventKind::Ready | EventKind::Recycle) {
                startups.push(ms as f64);
            }
        }
        if let Some(ms) = e.drain_ms {
            drains.push(ms as f64);
        }
        let counted = matches!(
            kind,
            EventKind::Recycle
                | EventKind::Crashed
                | EventKind::StartupFailed
                | EventKind::Killed
                | EventKind::RapidFailStopped
        );
        if !counted {
            continue;
        }
        if kind == EventKind::Recycle {
            actual_recycles += 1;
        }
        let reason = match &e.cause {
            Some(crate::reason::RecycleReason::Memory { kind, .. }) => kind.clone(),
            _ => e.reason.clone().unwrap_or_else(|| "-".into()),
        };
        let f = fired
            .entry((kind.as_str().to_string(), reason.clone()))
            .or_insert(Fired {
                kind: kind.as_str().to_string(),
                reason,
                count: 0,
                last_detail: None,
            });
        f.count += 1;
        f.last_detail = e.detail.clone();
    }
    let startup = timing(startups);
    let drain = timing(drains);

    let private = if enough {
        fit_figure(&series, Figure::Private)
    } else {
        None
    };
    let rss = if enough {
        fit_figure(&series, Figure::Rss)
    } else {
        None
    };
    let virt = if enough {
        fit_figure(&series, Figure::Virtual)
    } else {
        None
    };

    // Requests per second per worker.
    let mut rates: Vec<(f64, f64)> = series
        .iter()
        .filter_map(|s| {
            let st = s.settled();
            let (a, b) = (st.first()?, st.last()?);
            let dt = (b.uptime_ms - a.uptime_ms) as f64 / 1000.0;
            (dt > 0.0).then(|| ((b.requests - a.requests.min(b.requests)) as f64 / dt, dt))
        })
        .collect();
    let requests_per_s = fit::weighted_median(&mut rates);

    let check_s = rc
        .memory_check_interval
        .as_secs_f64()
        .max(sample_interval.as_secs_f64());
    let startup_s = startup.p95_ms.unwrap_or(1000.0) / 1000.0;
    let drain_s = drain.p95_ms.unwrap_or(1000.0) / 1000.0;
    // Memory a leaking worker gains between crossing a limit and being gone: the
    // check, the successor's startup, the drain — twice, for safety.
    let overshoot = |per_s: f64| per_s.max(0.0) * 2.0 * (check_s + startup_s + drain_s);

    let mut metrics = BTreeMap::new();
    let mut private_rec: Option<u64> = None;
    let metric = |f: &Option<Fitted>, reason: String, recommended: Option<u64>| Metric {
        level_bytes: f.as_ref().map(|f| f.level.max(0.0) as u64),
        peak_bytes: f.as_ref().map(|f| f.peak),
        growth_bytes_per_hour: f.as_ref().map(|f| f.per_s * 3600.0),
        growth_bytes_per_1000_requests: f.as_ref().and_then(|f| f.per_request).map(|b| b * 1000.0),
        leak: f.as_ref().is_some_and(|f| f.leak),
        recommended,
        reason,
    };
    let private_reason = match &private {
        None => "Too little data to say.".to_string(),
        Some(p) => {
            let room = (p.level * 0.5).max(64.0 * MIB);
            let mut target = if p.leak {
                p.level + room
            } else {
                (p.peak as f64 * 1.25).max(p.level + room)
            };
            let mut capped = false;
            if let Some(hard) = rc.memory_hard_limit {
                let ceiling = hard as f64 * 0.95 - overshoot(if p.leak { p.per_s } else { 0.0 });
                if target > ceiling {
                    target = ceiling;
                    capped = true;
                }
            }
            let rec = round_size(target, !capped);
            let too_low = (rec as f64) <= p.level * 1.05;
            private_rec = Some(rec);
            if too_low {
                format!(
                    "It leaks so fast (≈ {} MiB/hour) that no limit fits between its level ({}) and memory_hard_limit ({}) with room for a graceful recycle: raise memory_hard_limit or fix the leak.",
                    (p.per_s * 3600.0 / MIB).round(),
                    mib(p.level),
                    mib(rc.memory_hard_limit.unwrap_or(0) as f64)
                )
            } else if p.leak {
                let life = (rec as f64 - p.level) / p.per_s;
                let before_kill = rc
                    .memory_hard_limit
                    .map(|h| {
                        format!(
                            ", ≈ {} before memory_hard_limit ({}) would kill it mid-request",
                            human_s((h as f64 - rec as f64) / p.per_s),
                            mib(h as f64)
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "It grows ≈ {:.1} MiB/hour from {}: {} recycles it gracefully after ≈ {}{}.",
                    p.per_s * 3600.0 / MIB,
                    mib(p.level),
                    mib(rec as f64),
                    human_s(life),
                    before_kill
                )
            } else {
                format!(
                    "No leak: it stays near {} (peak {}); {} leaves room for load peaks and still catches a runaway worker.",
                    mib(p.level),
                    mib(p.peak as f64),
                    mib(rec as f64)
                )
            }
        }
    };
    metrics.insert(
        "private_memory".to_string(),
        metric(&private, private_reason, private_rec),
    );
    let other = "private_memory is the limit to set: it is what a recycle frees; this figure also counts shared pages.".to_string();
    metrics.insert("rss".to_string(), metric(&rss, other.clone(), None));
    metrics.insert(
        "virtual_memory".to_string(),
        metric(
            &virt,
            "Reserved address space, not memory in use: only a runaway mapping shows here.".into(),
            None,
        ),
    );

    let leak = private.as_ref().filter(|p| p.leak && p.per_s > 0.0);
    let requests = match (leak, private_rec) {
        (Some(p), Some(limit)) if p.per_request.is_some_and(|b| b > 0.0) => {
            let b = p.per_request.unwrap();
            let n = round_count((limit as f64 - p.level) / b * 0.8);
            Recommendation {
                recommended: Some(n as f64),
                jitter: Some(round_count(n as f64 * 0.1) as f64),
                reason: format!(
                    "Memory grows ≈ {:.2} MiB per 1,000 requests, so {n} requests take a worker about 80 % of the way to the private_memory limit: a recycle by count comes first, at a predictable moment.",
                    b * 1000.0 / MIB
                ),
            }
        }
        (Some(_), _) => Recommendation {
            recommended: None,
            jitter: None,
            reason: "Not needed: its growth does not follow its requests (no traffic was recorded, or too little).".into(),
        },
        _ => Recommendation {
            recommended: None,
            jitter: None,
            reason: "Not needed: memory does not grow with requests.".into(),
        },
    };
    let interval = match (leak, private_rec) {
        (Some(p), Some(limit)) if (limit as f64) > p.level => {
            let life = (limit as f64 - p.level) / p.per_s;
            let every = round_secs(life * 0.8);
            let jitter = round_secs((every * 0.1).max(1.0));
            Recommendation {
                recommended: Some(every),
                jitter: Some(jitter),
                reason: format!(
                    "A worker reaches the private_memory limit after ≈ {}; recycling every {} (plus up to {} of jitter, so workers do not recycle together) replaces it at a planned moment first.",
                    human_s(life),
                    human_s(every),
                    human_s(jitter)
                ),
            }
        }
        _ => Recommendation {
            recommended: None,
            jitter: None,
            reason: "Not needed: without a leak, age alone is no reason to recycle.".into(),
        },
    };

    // Time from a fresh worker to each configured limit.
    let mut limits = Vec::new();
    let memory_limits = [
        ("private_memory", rc.private_memory, &private),
        ("rss", rc.rss, &rss),
        ("virtual_memory", rc.virtual_memory, &virt),
        ("memory_hard_limit", rc.memory_hard_limit, &private),
    ];
    for (name, limit, f) in memory_limits {
        if let Some(limit) = limit {
            let eta = f.as_ref().and_then(|f| {
                if f.level >= limit as f64 {
                    Some(0.0)
                } else if f.per_s > 0.0 && f.leak {
                    Some((limit as f64 - f.level) / f.per_s)
                } else {
                    None
                }
            });
            limits.push(LimitEta {
                name: name.into(),
                value: limit as f64,
                time_to_limit_s: eta,
            });
        }
    }
    if let Some(n) = rc.requests {
        limits.push(LimitEta {
            name: "requests".into(),
            value: n as f64,
            time_to_limit_s: requests_per_s.filter(|r| *r > 0.0).map(|r| n as f64 / r),
        });
    }
    if let Some(d) = rc.interval {
        limits.push(LimitEta {
            name: "interval".into(),
            value: d.as_secs_f64(),
            time_to_limit_s: Some(d.as_secs_f64()),
        });
    }

    // The TOML to paste.
    let mut toml = format!(
        "# appvisor tune {}: under the [[app]] named {:?}\n[app.recycle]\n",
        app.name, app.name
    );
    match private_rec {
        Some(b) => {
            let _ = writeln!(toml, "private_memory = \"{}\"", format_size(b));
        }
        None => toml.push_str("# private_memory: too little data\n"),
    }
    match (requests.recommended, requests.jitter) {
        (Some(n), j) => {
            let _ = writeln!(toml, "requests = {}", n as u64);
            if let Some(j) = j {
                let _ = writeln!(toml, "requests_jitter = {}", j as u64);
            }
        }
        _ => toml.push_str("# requests: not needed\n"),
    }
    match (interval.recommended, interval.jitter) {
        (Some(s), j) => {
            let _ = writeln!(toml, "interval = \"{}\"", human_s(s));
            if let Some(j) = j {
                let _ = writeln!(toml, "interval_jitter = \"{}\"", human_s(j));
            }
        }
        _ => toml.push_str("# interval: not needed\n"),
    }

    let from_ms = now_ms.saturating_sub(window.as_millis() as u64);
    let samples: u64 = records.iter().map(|r| r.count.max(1) as u64).sum();
    let what_if = what_if.map(|w| replay(&series, w, window, actual_recycles, sample_interval));
    Report {
        app: app.name.clone(),
        window_s: window.as_secs(),
        from: from_ms as f64 / 1000.0,
        to: now_ms as f64 / 1000.0,
        samples,
        workers: workers.len(),
        generations: series.len(),
        usable_s: usable,
        enough_data: enough,
        needs_s: (!enough).then(|| {
            (MIN_USABLE_S - usable).max(MIN_POINTS as f64 * sample_interval.as_secs_f64())
        }),
        metrics: if enough { metrics } else { BTreeMap::new() },
        requests_per_s,
        requests,
        interval,
        limits,
        fired: fired.into_values().collect(),
        startup_ms: startup,
        drain_ms: drain,
        toml,
        what_if,
    }
}

/// `appvisor tune`: loads, analyses, prints. The exit code is 0 (also when there is
/// too little data: the report says so); errors are one line.
pub fn run(config_path: &Path, args: &TuneArgs) -> anyhow::Result<String> {
    let what_if = args
        .what_if
        .as_deref()
        .map(parse_what_if)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let config = appvisor_config::load(config_path)?;
    let Some(app) = config.app(&args.app) else {
        let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
        bail!(
            "no app named {:?} in {}; configured apps: {}",
            args.app,
            config.path.display(),
            names.join(", ")
        );
    };
    let state = &config.supervisor.state_dir;
    let dir = app_dir(state, &app.name);
    let now_ms = super::now_ms();
    let from_ms = now_ms.saturating_sub(args.since.as_millis() as u64);
    let loaded = query::load(&dir, from_ms, now_ms).with_context(|| {
        format!(
            "cannot read the history of app {:?} in {}",
            app.name,
            dir.display()
        )
    })?;
    if loaded.segments == 0 {
        bail!(
            "no history of app {:?} yet ({} is empty or missing): the supervisor records it while it runs (`appvisor run`), every [supervisor] sample_interval",
            app.name,
            dir.display()
        );
    }
    if loaded.records.is_empty() {
        if loaded.bad > 0 || !loaded.foreign.is_empty() {
            bail!(
                "the history of app {:?} in {} is corrupt: {} record(s) failed their checksum and none is readable; move the directory away to start afresh",
                app.name,
                dir.display(),
                loaded.bad
            );
        }
        bail!(
            "no samples of app {:?} in the last {} ({}); try a longer --since",
            app.name,
            human_s(args.since.as_secs_f64()),
            dir.display()
        );
    }
    for f in &loaded.foreign {
        tracing::warn!("{} is not a history file; skipped (remove it)", f.display());
    }
    if loaded.bad > 0 {
        tracing::warn!(
            "{} record(s) of the history in {} failed their checksum and were skipped",
            loaded.bad,
            dir.display()
        );
    }
    let events = query::read_events(&state.join("events.jsonl"), &app.name, from_ms, now_ms)
        .with_context(|| format!("cannot read {}", state.join("events.jsonl").display()))?;
    let report = analyse(
        app,
        &loaded.records,
        &events,
        args.since,
        config.supervisor.sample_interval,
        now_ms,
        what_if.as_ref(),
    );
    if args.json {
        Ok(serde_json::to_string_pretty(&report)? + "\n")
    } else {
        Ok(render(&report))
    }
}
