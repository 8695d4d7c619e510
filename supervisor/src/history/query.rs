//! Reading the history back: a window of records, thinned to what a client draws,
//! with the restart log's marks joined in.
//!
//! A window is answered at full resolution where full segments cover it (the last
//! hour) and from the one-minute buckets before that. The restart log is read
//! backwards from its end, only as far as the window reaches, so a long
//! `events.jsonl` costs nothing to a client that asks for the last minutes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use appvisor_config::AppConfig;

use super::file::{self, Kind, Rec};
use super::wire::{HistoryLimits, HistoryMark, HistoryPoint, HistoryReply};
use crate::events::Event;

/// The records of a window, and what was wrong with the files on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Oldest first.
    pub records: Vec<Rec>,
    /// Records skipped for a bad checksum.
    pub bad: usize,
    /// Files that are not history files at all.
    pub foreign: Vec<PathBuf>,
    /// Segment files in the app's directory.
    pub segments: usize,
}

/// Reads `dir`'s records in `from_ms..=to_ms`: full records where there are any,
/// buckets for the time before the first of them.
pub fn load(dir: &Path, from_ms: u64, to_ms: u64) -> io::Result<Loaded> {
    let segs = file::list(dir)?;
    let mut out = Loaded {
        segments: segs.len(),
        ..Loaded::default()
    };
    let read_tier = |kind: Kind, out: &mut Loaded| -> io::Result<Vec<Rec>> {
        let tier: Vec<&file::Segment> = segs.iter().filter(|s| s.kind == kind).collect();
        let mut recs = Vec::new();
        for (i, seg) in tier.iter().enumerate() {
            let ends_before = tier.get(i + 1).is_some_and(|n| n.start_ms < from_ms);
            if seg.start_ms > to_ms || ends_before {
                continue;
            }
            let read = match file::read_segment(seg, from_ms, to_ms) {
                Ok(r) => r,
                // Deleted by retention between listing and reading.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.bad += read.bad;
            if read.foreign {
                out.foreign.push(seg.path.clone());
            }
            recs.extend(read.records);
        }
        Ok(recs)
    };
    let full = read_tier(Kind::Full, &mut out)?;
    let first_full = full.iter().map(|r| r.t_ms).min().unwrap_or(u64::MAX);
    let coarse = read_tier(Kind::Coarse, &mut out)?;
    out.records = coarse
        .into_iter()
        .filter(|r| r.t_ms + r.width_ms <= first_full)
        .chain(full)
        .collect();
    out.records
        .sort_by_key(|r| (r.t_ms, r.worker, r.generation));
    Ok(out)
}

/// The app's limits as the wire carries them.
pub fn limits_of(app: &AppConfig) -> HistoryLimits {
    let rc = &app.recycle;
    HistoryLimits {
        private_memory: rc.private_memory,
        rss: rc.rss,
        virtual_memory: rc.virtual_memory,
        memory_hard_limit: rc.memory_hard_limit,
        requests: rc.requests,
        interval_s: rc.interval.map(|d| d.as_secs_f64()),
    }
}

/// One `history` request, resolved by the control server.
#[derive(Debug, Clone)]
pub struct Ask {
    pub app: String,
    /// The app's history directory.
    pub dir: PathBuf,
    /// The restart log.
    pub events: PathBuf,
    pub limits: HistoryLimits,
    pub sample_interval_s: f64,
    pub since_s: u64,
    pub max_points: u32,
}

/// One window answered for the control socket, ending at `now_ms`.
pub fn answer(ask: Ask, now_ms: u64) -> io::Result<HistoryReply> {
    let Ask {
        app,
        dir,
        events,
        limits,
        sample_interval_s,
        since_s,
        max_points,
    } = ask;
    let (app, dir, events) = (app.as_str(), dir.as_path(), events.as_path());
    let from_ms = now_ms.saturating_sub(since_s.saturating_mul(1000));
    let loaded = load(dir, from_ms, now_ms)?;
    let points = thin(&loaded.records, from_ms, now_ms, max_points.max(1));
    let marks = read_events(events, app, from_ms, now_ms)?
        .iter()
        .filter_map(mark_of)
        .collect();
    Ok(HistoryReply {
        app: app.to_string(),
        sample_interval_s,
        from: from_ms as f64 / 1000.0,
        to: now_ms as f64 / 1000.0,
        limits,
        points,
        marks,
    })
}

/// At most `max_points` points per worker generation: the window is cut into
/// `max_points` equal slices, and the records of one generation in one slice become
/// one point (means of the means, min of the mins, max of the maxes, last counters).
pub fn thin(records: &[Rec], from_ms: u64, to_ms: u64, max_points: u32) -> Vec<HistoryPoint> {
    let span = (to_ms.saturating_sub(from_ms)).max(1);
    let slice_ms = span.div_ceil(max_points as u64).max(1);
    struct Acc {
        point: HistoryPoint,
        n: u64,
        sum_private: f64,
        sum_rss: f64,
        sum_virtual: f64,
    }
    let mut order: Vec<(u64, u32, u64)> = Vec::new();
    let mut accs: HashMap<(u64, u32, u64), Acc> = HashMap::new();
    for r in records {
        let slice = r.t_ms.saturating_sub(from_ms) / slice_ms;
        let key = (slice, r.worker, r.generation);
        let acc = accs.entry(key).or_insert_with(|| {
            order.push(key);
            Acc {
                point: HistoryPoint {
                    t: r.t_ms as f64 / 1000.0,
                    worker: r.worker,
                    generation: r.generation,
                    pid: r.pid,
                    private_min: u64::MAX,
                    ..HistoryPoint::default()
                },
                n: 0,
                sum_private: 0.0,
                sum_rss: 0.0,
                sum_virtual: 0.0,
            }
        });
        let w = r.count.max(1) as u64;
        acc.n += w;
        acc.sum_private += r.private as f64 * w as f64;
        acc.sum_rss += r.rss as f64 * w as f64;
        acc.sum_virtual += r.virtual_ as f64 * w as f64;
        let p = &mut acc.point;
        p.private_min = p.private_min.min(r.private_min);
        p.private_max = p.private_max.max(r.private_max);
        p.rss_max = p.rss_max.max(r.rss_max);
        p.virtual_max = p.virtual_max.max(r.virtual_max);
        p.cpu_s = r.cpu_ms as f64 / 1000.0;
        p.requests = r.requests;
        p.uptime_s = r.uptime_ms as f64 / 1000.0;
        p.samples += w as u32;
    }
    order
        .into_iter()
        .filter_map(|k| accs.remove(&k))
        .map(|a| {
            let n = a.n.max(1) as f64;
            HistoryPoint {
                private: (a.sum_private / n) as u64,
                rss: (a.sum_rss / n) as u64,
                virtual_memory: (a.sum_virtual / n) as u64,
                ..a.point
            }
        })
        .collect()
}

/// The kinds of events that become marks on a chart.
const MARKED: &[&str] = &[
    "recycle",
    "crashed",
    "startup_failed",
    "killed",
    "rapid_fail_stopped",
];

fn mark_of(e: &Event) -> Option<HistoryMark> {
    let kind = e.kind.as_str();
    if !MARKED.contains(&kind) {
        return None;
    }
    Some(HistoryMark {
        t: event_ms(e)? as f64 / 1000.0,
        kind: kind.to_string(),
        // A memory recycle names the limit (`private_memory`), as a chart labels it.
        reason: match &e.cause {
            Some(crate::reason::RecycleReason::Memory { kind, .. }) => Some(kind.clone()),
            _ => e.reason.clone(),
        },
        worker: e.worker,
        generation: e.generation,
        detail: e.detail.clone(),
    })
}

/// An event's time, unix ms.
pub fn event_ms(e: &Event) -> Option<u64> {
    let t: jiff::Timestamp = e.time.parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

/// `app`'s events in `from_ms..=to_ms` from the restart log at `path`, oldest
/// first, read backwards from the end only as far as `from_ms`. A missing log has
/// none; lines that are not events are skipped.
pub fn read_events(path: &Path, app: &str, from_ms: u64, to_ms: u64) -> io::Result<Vec<Event>> {
    // The restart log rotates (`events.jsonl.1` …): newest file first, each read
    // backwards, until a line older than the window.
    let mut out = Vec::new();
    for opened in crate::rotation::files_oldest_first(path)?.into_iter().rev() {
        let mut older = Vec::new();
        let reached_start = read_events_backwards(opened.file, app, from_ms, to_ms, &mut older)?;
        older.append(&mut out);
        out = older;
        if reached_start {
            break;
        }
    }
    Ok(out)
}

/// One file of the set, read from its end: its events of `app` in the window, oldest
/// first, appended to `out`. True when a line older than the window was met.
fn read_events_backwards(
    mut f: File,
    app: &str,
    from_ms: u64,
    to_ms: u64,
    events: &mut Vec<Event>,
) -> io::Result<bool> {
    let mut pos = f.seek(SeekFrom::End(0))?;
    const CHUNK: u64 = 256 * 1024;
    let mut carry: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let app_field = format!("\"app\":{}", serde_json::to_string(app).unwrap_or_default());
    let mut done = false;
    while pos > 0 && !done {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&carry);
        pos = start;
        // The first (partial) line waits for the next chunk, unless this is the start.
        let (head, body) = match (pos > 0, chunk.iter().position(|b| *b == b'\n')) {
            (true, Some(i)) => (chunk[..i].to_vec(), &chunk[i + 1..]),
            (true, None) => {
                carry = chunk;
                continue;
            }
            (false, _) => (Vec::new(), &chunk[..]),
        };
        for line in body.rsplit(|b| *b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            if line.is_empty() {
                continue;
            }
            let Some(t) = line_ms(line) else { continue };
            if t < from_ms {
                done = true;
                break;
            }
            if t > to_ms || !line.contains(&app_field) {
                continue;
            }
            if let Ok(e) = serde_json::from_str::<Event>(line) {
                if e.app == app {
                    out.push(e);
                }
            }
        }
        carry = head;
    }
    out.reverse();
    events.append(&mut out);
    Ok(done)
}

/// The time of an event line without parsing the rest (it is the first field).
fn line_ms(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"time\":\"")?;
    let end = rest.find('"')?;
    let t: jiff::Timestamp = rest[..end].parse().ok()?;
    u64::try_from(t.as_millisecond()).ok()
}

#[cfg(test)]
mod tests {
    use super::super::recorder::{Bounds, Recorder, Sample};
    use super::*;
    use crate::events::{EventKind, EventLog};
    use std::time::Duration;

    const T0: u64 = 1_700_000_000_000;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("appvisor-query-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_long_window_uses_buckets_before_the_full_hour_and_thins_per_generation() {
        let d = dir("window");
        let bounds = Bounds {
            max_bytes: 64 << 20,
            retention: Duration::from_secs(86_400),
        };
        let mut r = Recorder::open("web", &d, bounds, T0).unwrap();
        // 3 hours, one sample a second, one worker.
        let end = T0 + 3 * 3_600_000;
        let mut t = T0;
        while t < end {
            let s = Sample {
                generation: 1,
                pid: 7,
                private: (10 << 20) + (t - T0),
                uptime_ms: t - T0,
                ..Sample::default()
            };
            r.record(t, &[s]);
            t += 1000;
        }
        let loaded = load(&d, T0, end).unwrap();
        let full = loaded.records.iter().filter(|r| r.width_ms == 0).count();
        let coarse = loaded.records.len() - full;
        assert!((3600..=3600 + 300).contains(&full), "{full} full records");
        assert!((110..=125).contains(&coarse), "{coarse} buckets");
        let points = thin(&loaded.records, T0, end, 100);
        assert!(points.len() <= 100, "{}", points.len());
        assert!(points.len() >= 95, "{}", points.len());
        assert!(points.windows(2).all(|w| w[0].t < w[1].t));
        let p = &points[50];
        assert!(p.private_min <= p.private && p.private <= p.private_max);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn events_are_read_backwards_only_as_far_as_the_window() {
        let d = dir("events");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("events.jsonl");
        let log = EventLog::open(&path).unwrap();
        for i in 0..5000 {
            let mut e = Event::new(if i % 2 == 0 { "web" } else { "api" }, EventKind::Recycle);
            let t = jiff::Timestamp::from_millisecond((T0 + i * 1000) as i64).unwrap();
            e.time = format!("{t:.3}");
            e.reason = Some("manual".into());
            log.emit(e);
        }
        let got = read_events(&path, "web", T0 + 4000 * 1000, u64::MAX).unwrap();
        assert_eq!(got.len(), 500);
        assert!(got.iter().all(|e| e.app == "web"));
        assert!(got.windows(2).all(|w| w[0].time < w[1].time));
        assert_eq!(read_events(&path, "web", 0, u64::MAX).unwrap().len(), 2500);
        assert!(read_events(&d.join("none"), "web", 0, u64::MAX)
            .unwrap()
            .is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
