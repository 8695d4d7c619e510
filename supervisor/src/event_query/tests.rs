use super::*;

fn now() -> jiff::Timestamp {
    "2026-11-30T12:00:00Z".parse().unwrap()
}

fn brief(line: &str) -> Brief<'_> {
    serde_json::from_str(line).unwrap()
}

#[test]
fn since_takes_durations_and_rfc3339_times() {
    let b = Bound::parse("--since", "1h", now()).unwrap();
    assert_eq!(b.text, "2026-11-30T11:00:00.000Z");
    let b = Bound::parse("--since", "2026-11-30T13:00:00+02:00", now()).unwrap();
    assert_eq!(b.text, "2026-11-30T11:00:00.000Z");
    let e = Bound::parse("--since", "yesterday", now())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--since \"yesterday\"") && e.contains("RFC 3339"),
        "{e}"
    );
}

#[test]
fn the_window_compares_text_and_parses_other_forms() {
    let f = Filter::new(
        None,
        &[],
        &[],
        Some(Bound::parse("--since", "1h", now()).unwrap()),
        Some(Bound::parse("--until", "30m", now()).unwrap()),
    )
    .unwrap();
    assert!(!f.in_window("2026-11-30T10:59:59.999Z"));
    assert!(f.in_window("2026-11-30T11:00:00.000Z"));
    assert!(f.in_window("2026-11-30T11:29:59.999Z"));
    assert!(!f.in_window("2026-11-30T11:30:00.000Z"));
    // Not the supervisor's form: parsed.
    assert!(f.in_window("2026-11-30T12:10:00+01:00"));
    assert!(!f.in_window("2026-11-30T11:10:00-01:00"));
    assert!(!f.in_window("not a time"));
}

#[test]
fn unknown_kinds_and_reasons_list_the_valid_ones() {
    let e = Filter::new(None, &["recyle".into()], &[], None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"recyle\"") && e.contains("recycle, recycle_queued"),
        "{e}"
    );
    let e = Filter::new(None, &[], &["memroy".into()], None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"memroy\"") && e.contains("manual, file_change"),
        "{e}"
    );
    let f = Filter::new(
        None,
        &["recycle,crashed".into()],
        &["manual".into()],
        None,
        None,
    )
    .unwrap();
    assert_eq!(f.kinds, [EventKind::Recycle, EventKind::Crashed]);
}

/// Every reason a recycle can have is a name `--reason` accepts.
#[test]
fn reason_names_are_complete() {
    let all = [
        RecycleReason::Manual,
        RecycleReason::FileChange {
            paths: vec![],
            count: 0,
            change: String::new(),
        },
        RecycleReason::WatchOverflow,
        RecycleReason::SoftChangeLimit {
            changes: 1,
            limit: 1,
        },
        RecycleReason::Memory {
            kind: String::new(),
            bytes: 0,
            limit: 0,
        },
        RecycleReason::Requests { count: 0, limit: 0 },
        RecycleReason::Age {
            age_ms: 0,
            limit_ms: 0,
        },
        RecycleReason::Schedule { at: String::new() },
        RecycleReason::Unhealthy {
            detail: String::new(),
        },
        RecycleReason::ConfigChange {
            config_generation: 0,
        },
    ];
    let names: Vec<&str> = all.iter().map(|r| r.name()).collect();
    assert_eq!(names, RecycleReason::NAMES);
}

#[test]
fn stats_join_drains_to_their_recycle_and_group_failures_by_exit() {
    let lines = [
        r#"{"time":"2026-11-30T11:00:00.000Z","app":"web","kind":"ready","pid":10,"startup_ms":300}"#,
        r#"{"time":"2026-11-30T11:01:00.000Z","app":"web","kind":"recycle","reason":"manual","old_pid":10,"new_pid":11,"startup_ms":100}"#,
        r#"{"time":"2026-11-30T11:01:01.000Z","app":"web","kind":"retired","pid":10,"drain_ms":40}"#,
        r#"{"time":"2026-11-30T11:02:00.000Z","app":"web","kind":"recycle","reason":"memory","old_pid":11,"new_pid":12,"startup_ms":200}"#,
        r#"{"time":"2026-11-30T11:02:05.000Z","app":"web","kind":"killed","pid":11,"drain_ms":5000}"#,
        r#"{"time":"2026-11-30T11:03:00.000Z","app":"web","kind":"crashed","pid":12,"signal":"SIGKILL"}"#,
        r#"{"time":"2026-11-30T11:03:01.000Z","app":"web","kind":"startup_failed","pid":13,"exit_code":1}"#,
        r#"{"time":"2026-11-30T11:03:02.000Z","app":"web","kind":"startup_failed","pid":14,"detail":"not ready within startup_timeout 1s; killed"}"#,
        r#"{"time":"2026-11-30T11:04:00.000Z","app":"web","kind":"recycle","reason":"manual","old_pid":15,"new_pid":16,"startup_ms":300}"#,
        r#"{"time":"2026-11-30T11:05:00.000Z","app":"web","kind":"retired","pid":16,"drain_ms":7}"#,
        r#"{"time":"2026-11-30T11:05:00.000Z","app":"api","kind":"recycle","reason":"manual","old_pid":1,"new_pid":2,"startup_ms":50}"#,
    ];
    let mut s = Stats::default();
    for l in lines {
        s.add(&brief(l));
    }
    let rows = s.rows(&[]);
    let get = |app: &str, reason: &str| {
        rows.iter()
            .find(|r| r.app == app && r.reason == reason)
            .unwrap_or_else(|| panic!("no row {app} {reason}: {rows:?}"))
            .clone()
    };
    assert_eq!(rows[0].app, "api");
    let manual = get("web", "manual");
    assert_eq!(manual.recycles, 2);
    assert_eq!(manual.startup.mean_ms, Some(200.0));
    assert_eq!(manual.startup.p95_ms, Some(300));
    assert_eq!((manual.drain.count, manual.drain.mean_ms), (1, Some(40.0)));
    let memory = get("web", "memory");
    assert_eq!((memory.recycles, memory.drain.p95_ms), (1, Some(5000)));
    assert_eq!(get("web", "SIGKILL").crashes, 1);
    assert_eq!(get("web", "exit 1").startup_failures, 1);
    assert_eq!(get("web", "startup_timeout").startup_failures, 1);
    assert_eq!(get("web", "start").startup.count, 1);
    // A drain with no recycle before it: a stop.
    assert_eq!(get("web", "stop").drain.mean_ms, Some(7.0));
    let total = get("web", ALL_REASONS);
    assert_eq!(
        (total.recycles, total.crashes, total.startup_failures),
        (3, 1, 2)
    );
    assert_eq!(total.startup.count, 4);
    assert_eq!(total.drain.count, 3);
    // Only the reasons asked for, without totals.
    let only = {
        let mut s = Stats::default();
        for l in lines {
            s.add(&brief(l));
        }
        s.rows(&["memory".into()])
    };
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].reason, "memory");
}

/// The head is read from the form the supervisor writes, and anything else is
/// left to the parser.
#[test]
fn the_head_of_a_written_event_is_read_without_a_parser() {
    let e = crate::events::Event::new("web", EventKind::Recycle).because(&RecycleReason::Manual);
    let line = serde_json::to_string(&e).unwrap();
    let h = Head::of(line.as_bytes()).expect("the supervisor's form");
    assert_eq!(
        (h.time, h.app, h.kind),
        (e.time.as_str(), "web", EventKind::Recycle)
    );
    // Torn (no closing brace), escaped, reordered, or an unknown kind: no head.
    assert_eq!(Head::of(&line.as_bytes()[..line.len() - 3]), None);
    assert_eq!(
        Head::of(br#"{"time":"t","app":"a\"b","kind":"ready"}"#),
        None
    );
    assert_eq!(Head::of(br#"{"app":"a","time":"t","kind":"ready"}"#), None);
    assert_eq!(Head::of(br#"{"time":"t","app":"a","kind":"nope"}"#), None);
    assert_eq!(Head::of(br#"{"time":"t","app":"a","kind":"readyx"}"#), None);
    assert!(Head::of(br#"{"time":"t","app":"a","kind":"ready"}"#).is_some());
}

#[test]
fn p95_is_the_nearest_rank() {
    let s = Summary::of((1..=100).collect());
    assert_eq!(
        (s.p95_ms, s.mean_ms, s.max_ms),
        (Some(95), Some(50.5), Some(100))
    );
    assert_eq!(Summary::of(vec![7]).p95_ms, Some(7));
    assert_eq!(Summary::of((1..=20).collect()).p95_ms, Some(19));
}
