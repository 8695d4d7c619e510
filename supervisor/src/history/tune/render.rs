//! The report in words.

use super::what_if::describe_what_if;
use super::*;

fn local(t_s: f64) -> String {
    jiff::Timestamp::from_millisecond((t_s * 1000.0) as i64)
        .map(|t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// The report in words.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "appvisor tune {} — the last {} ({} → {}): {} samples of {} worker{}, {} generation{}",
        r.app,
        human_s(r.window_s as f64),
        local(r.from),
        local(r.to),
        r.samples,
        r.workers,
        if r.workers == 1 { "" } else { "s" },
        r.generations,
        if r.generations == 1 { "" } else { "s" },
    );
    if !r.enough_data {
        let _ = writeln!(
            o,
            "Too little data: {} of worker life after warm-up; tune needs at least {} — let it run about {} more, then ask again.",
            human_s(r.usable_s.floor()),
            human_s(MIN_USABLE_S),
            human_s(r.needs_s.unwrap_or(MIN_USABLE_S))
        );
    } else {
        let _ = writeln!(
            o,
            "\nMemory after warm-up (robust fit per generation, median over generations):"
        );
        for (name, m) in &r.metrics {
            let growth = match m.growth_bytes_per_hour {
                Some(g) => format!("≈ {:.1} MiB/hour", g / MIB),
                None => "-".into(),
            };
            let per_req = match m.growth_bytes_per_1000_requests {
                Some(g) => format!("≈ {:.2} MiB per 1,000 requests", g / MIB),
                None => "per request: -".into(),
            };
            let _ = writeln!(
                o,
                "  {:<15} level {:>10}  growth {:<20} {:<32} {}",
                name,
                m.level_bytes
                    .map(|b| mib(b as f64))
                    .unwrap_or_else(|| "-".into()),
                growth,
                per_req,
                if m.leak { "LEAK" } else { "no leak" }
            );
        }
        if let Some(rate) = r.requests_per_s {
            let _ = writeln!(o, "  requests: ≈ {rate:.1} per second per worker");
        }
    }
    if !r.limits.is_empty() {
        let _ = writeln!(o, "\nConfigured limits, time from a fresh worker:");
        for l in &r.limits {
            let value = if l.name.contains("memory") || l.name == "rss" {
                mib(l.value)
            } else if l.name == "interval" {
                human_s(l.value)
            } else {
                format!("{}", l.value as u64)
            };
            let eta = l
                .time_to_limit_s
                .map(|s| format!("≈ {}", human_s(s)))
                .unwrap_or_else(|| "not reached at this rate".into());
            let _ = writeln!(o, "  {:<18} {:>10}: {eta}", l.name, value);
        }
    }
    let _ = writeln!(o, "\nFired in the window:");
    if r.fired.is_empty() {
        let _ = writeln!(o, "  nothing: no recycle, crash or startup failure");
    }
    for f in &r.fired {
        let _ = writeln!(
            o,
            "  {:<16} {:<18} {:>5}×{}",
            f.kind,
            f.reason,
            f.count,
            f.last_detail
                .as_ref()
                .map(|d| format!("  (last: {d})"))
                .unwrap_or_default()
        );
    }
    let t = |x: &Timing| match (x.mean_ms, x.p95_ms) {
        (Some(m), Some(p)) => format!("mean {m:.0} ms, p95 {p:.0} ms ({} seen)", x.count),
        _ => "none seen".into(),
    };
    let _ = writeln!(
        o,
        "  startup: {}; drain: {}",
        t(&r.startup_ms),
        t(&r.drain_ms)
    );
    if r.enough_data {
        let _ = writeln!(o, "\nRecommendation:");
        if let Some(m) = r.metrics.get("private_memory") {
            let _ = writeln!(
                o,
                "  private_memory {}: {}",
                m.recommended
                    .map(|b| format!("= \"{}\"", format_size(b)))
                    .unwrap_or_else(|| "-".into()),
                m.reason
            );
        }
        let _ = writeln!(
            o,
            "  requests {}: {}",
            r.requests
                .recommended
                .map(|n| format!("= {}", n as u64))
                .unwrap_or_else(|| "unset".into()),
            r.requests.reason
        );
        let _ = writeln!(
            o,
            "  interval {}: {}",
            r.interval
                .recommended
                .map(|s| format!("= \"{}\"", human_s(s)))
                .unwrap_or_else(|| "unset".into()),
            r.interval.reason
        );
        let _ = writeln!(o, "\n{}", r.toml.trim_end());
    }
    if let Some(w) = &r.what_if {
        let _ = writeln!(
            o,
            "\nWhat if {}: {} recycle{} in the window (≈ {:.1} per day; {} really happened, for every reason){}",
            describe_what_if(&w.settings),
            w.recycles,
            if w.recycles == 1 { "" } else { "s" },
            w.per_day,
            w.actual_recycles,
            if w.times.is_empty() { "." } else { ", at:" }
        );
        for t in &w.times {
            let _ = writeln!(o, "  {}", local(*t));
        }
        if w.recycles as usize > w.times.len() {
            let _ = writeln!(o, "  … and {} more", w.recycles as usize - w.times.len());
        }
    }
    o
}
