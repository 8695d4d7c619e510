//! `--what-if`: the proposed setting parsed, and each recorded generation replayed
//! under it.

use super::*;

/// A proposed setting for `--what-if`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhatIf {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_hard_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
}

const WHAT_IF_KEYS: &str =
    "private_memory, rss, virtual_memory, memory_hard_limit, requests, interval";

/// Parses `private_memory = "300MiB"` (several separated by `,`, `;` or lines), the
/// `[app.recycle]` syntax.
pub fn parse_what_if(text: &str) -> Result<WhatIf, String> {
    let mut w = WhatIf::default();
    let example = "e.g. --what-if 'private_memory = \"300MiB\"'";
    let parts: Vec<&str> = text
        .split([',', ';', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(format!("--what-if is empty; give a setting, {example}"));
    }
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "--what-if {part:?}: expected KEY = VALUE, {example}"
            ));
        };
        let key = key.trim();
        let raw = value.trim();
        let value = raw.trim_matches('"').trim_matches('\'');
        let bad = |e: String| format!("--what-if {key} = {raw}: {e}");
        match key {
            "private_memory" | "rss" | "virtual_memory" | "memory_hard_limit" => {
                let n = parse_size(value).map_err(|e| bad(e.to_string()))?;
                if n == 0 {
                    return Err(bad(
                        "a limit of 0 would recycle at once; give a size such as \"300MiB\"".into(),
                    ));
                }
                match key {
                    "private_memory" => w.private_memory = Some(n),
                    "rss" => w.rss = Some(n),
                    "virtual_memory" => w.virtual_memory = Some(n),
                    _ => w.memory_hard_limit = Some(n),
                }
            }
            "requests" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| bad("expected a whole number of requests, e.g. 10000".into()))?;
                if n == 0 {
                    return Err(bad("must be at least 1".into()));
                }
                w.requests = Some(n);
            }
            "interval" => {
                let d = parse_duration(value).map_err(|e| bad(e.to_string()))?;
                if d.is_zero() {
                    return Err(bad("must be longer than zero".into()));
                }
                w.interval_s = Some(d.as_secs_f64());
            }
            other => {
                return Err(format!(
                    "--what-if: unknown setting {other:?}; one of {WHAT_IF_KEYS}"
                ))
            }
        }
    }
    Ok(w)
}

/// The age at which `w` would first have fired on this generation's own curve.
pub(super) fn first_crossing(s: &Series, w: &WhatIf) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut take = |age_s: f64| best = Some(best.map_or(age_s, |b: f64| b.min(age_s)));
    for r in &s.recs {
        let age = r.uptime_ms as f64 / 1000.0;
        let over = |v: u64, l: Option<u64>| l.is_some_and(|l| v > l);
        if over(r.private_max, w.private_memory)
            || over(r.private_max, w.memory_hard_limit)
            || over(r.rss_max, w.rss)
            || over(r.virtual_max, w.virtual_memory)
            || w.requests.is_some_and(|n| r.requests >= n)
        {
            take(age);
            break;
        }
    }
    if let Some(i) = w.interval_s {
        if s.recs
            .last()
            .is_some_and(|r| r.uptime_ms as f64 / 1000.0 >= i)
        {
            take(i);
        }
    }
    best
}

/// `--what-if`: each generation, replayed. A worker recycled at age `a` is followed
/// by one that grows as it did, so over a life of `L` it would have been recycled
/// `⌊L / a⌋` times, at `start + a`, `start + 2a`, …
pub(super) fn replay(
    series: &[Series],
    w: &WhatIf,
    window: Duration,
    actual: u64,
    sample_interval: Duration,
) -> WhatIfResult {
    let mut times = Vec::new();
    let mut recycles = 0u64;
    for s in series {
        let (Some(first), Some(last)) = (s.recs.first(), s.recs.last()) else {
            continue;
        };
        let Some(age) = first_crossing(s, w) else {
            continue;
        };
        // A limit below where a worker starts recycles it as fast as one can start.
        let age = age.max(sample_interval.as_secs_f64());
        let started_ms = first.t_ms as f64 - first.uptime_ms as f64;
        let life = last.uptime_ms as f64 / 1000.0;
        let n = (life / age).floor() as u64;
        recycles += n;
        for k in 1..=n.min(20) {
            times.push((started_ms / 1000.0) + k as f64 * age);
        }
    }
    times.sort_by(f64::total_cmp);
    times.truncate(20);
    // Per day of what was recorded, not of the window asked for.
    let first = series
        .iter()
        .filter_map(|s| s.recs.first())
        .map(|r| r.t_ms)
        .min();
    let last = series
        .iter()
        .filter_map(|s| s.recs.last())
        .map(|r| r.t_ms)
        .max();
    let covered_ms = match (first, last) {
        (Some(a), Some(b)) => (b - a).max(1000),
        _ => window.as_millis() as u64,
    };
    let days = covered_ms as f64 / 86_400_000.0;
    WhatIfResult {
        settings: w.clone(),
        recycles,
        per_day: recycles as f64 / days,
        times,
        actual_recycles: actual,
    }
}

pub(super) fn describe_what_if(w: &WhatIf) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("private_memory", w.private_memory),
        ("rss", w.rss),
        ("virtual_memory", w.virtual_memory),
        ("memory_hard_limit", w.memory_hard_limit),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} = \"{}\"", format_size(v)));
        }
    }
    if let Some(n) = w.requests {
        parts.push(format!("requests = {n}"));
    }
    if let Some(s) = w.interval_s {
        parts.push(format!("interval = \"{}\"", human_s(s)));
    }
    parts.join(", ")
}
