use super::*;

fn app(hard: Option<u64>) -> AppConfig {
    let text = "[[app]]\nname = \"web\"\ncommand = [\"worker\"]\n";
    let config = appvisor_config::parse(text, Path::new("/tmp/appvisor.toml")).unwrap();
    let mut a = config.apps[0].clone();
    a.recycle.memory_hard_limit = hard;
    a
}

const T0: u64 = 1_700_000_000_000;

/// One generation, one sample a second for `secs`, leaking `per_s` bytes a
/// second and `per_req` bytes a request at 10 requests a second.
fn run(generation: u64, start_ms: u64, secs: u64, base: u64, per_s: u64) -> Vec<Rec> {
    (0..secs)
        .map(|i| {
            let private = base + per_s * i + if i % 7 == 0 { 3 << 20 } else { 0 };
            Rec {
                t_ms: start_ms + i * 1000,
                worker: 0,
                generation,
                pid: generation as i32,
                phase: PHASE_SERVING,
                count: 1,
                private,
                private_min: private,
                private_max: private,
                rss: private + (5 << 20),
                rss_max: private + (5 << 20),
                virtual_: 1 << 30,
                virtual_max: 1 << 30,
                requests: i * 10,
                uptime_ms: i * 1000,
                ..Rec::default()
            }
        })
        .collect()
}

#[test]
fn a_leak_is_measured_and_the_limit_fires_before_the_hard_limit() {
    let recs = run(1, T0, 600, 50 << 20, 100 << 10); // 100 KiB/s
    let r = analyse(
        &app(Some(400 << 20)),
        &recs,
        &[],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        T0 + 600_000,
        None,
    );
    assert!(r.enough_data);
    let p = &r.metrics["private_memory"];
    let per_h = p.growth_bytes_per_hour.unwrap() / MIB;
    assert!((per_h - 351.5).abs() < 351.5 * 0.05, "{per_h}");
    let per_1000 = p.growth_bytes_per_1000_requests.unwrap() / 1024.0;
    assert!((per_1000 - 10_000.0).abs() < 500.0, "{per_1000} KiB");
    assert!(p.leak);
    let rec = p.recommended.unwrap();
    assert!(rec < 400 << 20 && rec > 50 << 20, "{rec}");
    assert!(r.interval.recommended.is_some());
    assert!(r.requests.recommended.is_some());
    assert!(r.toml.contains("private_memory = \""), "{}", r.toml);
    assert_eq!(r.limits[0].name, "memory_hard_limit");
    assert!(r.limits[0].time_to_limit_s.is_some());
}

#[test]
fn a_flat_worker_has_no_leak_and_too_little_data_says_how_much_more() {
    let recs = run(1, T0, 600, 50 << 20, 0);
    let r = analyse(
        &app(None),
        &recs,
        &[],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        T0 + 600_000,
        None,
    );
    let p = &r.metrics["private_memory"];
    assert!(!p.leak, "{p:?}");
    assert!(p.reason.starts_with("No leak"), "{}", p.reason);
    assert!(r.interval.recommended.is_none() && r.requests.recommended.is_none());
    let short = run(1, T0, 10, 50 << 20, 0);
    let r = analyse(
        &app(None),
        &short,
        &[],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        T0 + 10_000,
        None,
    );
    assert!(!r.enough_data);
    assert!(r.needs_s.unwrap() >= 50.0);
    assert!(render(&r).contains("Too little data"), "{}", render(&r));
}

#[test]
fn what_if_replays_each_generation() {
    // 1 MiB/s from 20 MiB for 100 s: a 50 MiB limit is crossed at ≈ 31 s (the
    // spikes add 3 MiB now and then), so 3 recycles in 100 s.
    let recs = run(1, T0, 100, 20 << 20, 1 << 20);
    let w = parse_what_if("private_memory = \"50MiB\"").unwrap();
    let r = analyse(
        &app(None),
        &recs,
        &[],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        T0 + 100_000,
        Some(&w),
    );
    let wi = r.what_if.unwrap();
    assert_eq!(wi.recycles, 3, "{wi:?}");
    assert_eq!(wi.times.len(), 3);
    let w = parse_what_if("interval = \"20s\", requests = 150").unwrap();
    assert_eq!(w.requests, Some(150));
    let r = analyse(
        &app(None),
        &recs,
        &[],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        T0 + 100_000,
        Some(&w),
    );
    // requests ≥ 150 at 15 s comes before the 20 s interval: ⌊99 / 15⌋.
    assert_eq!(r.what_if.unwrap().recycles, 6);
}

#[test]
fn bad_what_if_input_is_one_clear_line() {
    for (text, words) in [
        ("private_memory", "expected KEY = VALUE"),
        ("private_memory = \"lots\"", "private_memory = \"lots\""),
        ("colour = 3", "unknown setting \"colour\""),
        ("requests = -3", "whole number"),
        ("interval = \"0s\"", "longer than zero"),
        ("", "empty"),
    ] {
        let e = parse_what_if(text).unwrap_err();
        assert!(e.contains(words), "{text}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
