//! `appvisor top` without a terminal: the model's keys and data, and snapshots of
//! every screen drawn by ratatui's `TestBackend` at 80×24.
//!
//! Snapshots are plain text files in `src/top/snapshots/` (the cells' symbols, one
//! row a line, trailing blanks trimmed; colours are not kept). A change to the
//! screen fails the test with both versions printed; after checking the new one,
//! `UPDATE_SNAPSHOTS=1 cargo test -p appvisor --lib top` rewrites the files.

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;

use super::model::*;
use super::render;
use crate::control::SupervisorStatus;
use crate::events::Event;
use crate::history::wire::{HistoryLimits, HistoryMark, HistoryPoint, HistoryReply};
use crate::pool::{AppRunState, AppStatus, WorkerRunState, WorkerStatus};

/// 2027-01-15 08:00:00 UTC.
const NOW: f64 = 1_800_000_000.0;
const MIB: u64 = 1_048_576;

fn worker(slot: u32, pid: i32, generation: u64, uptime_s: u64, rss_mib: u64) -> WorkerStatus {
    WorkerStatus {
        worker: slot,
        pid,
        generation,
        state: WorkerRunState::Ready,
        uptime_ms: uptime_s * 1000,
        rss: Some(rss_mib * MIB),
        private: None,
        virtual_memory: None,
        cpu_s: None,
        requests: 1200 + u64::from(slot),
        status: Some("ok".into()),
        cgroup: None,
    }
}

fn app(name: &str, workers: Vec<WorkerStatus>) -> AppStatus {
    AppStatus {
        name: name.into(),
        state: AppRunState::Running,
        listen: vec!["tcp://127.0.0.1:8080".into()],
        workers,
        recycles: 2,
        crashes: 0,
        last_recycle: None,
        config_generation: 1,
        watch: None,
        next_schedule: None,
        memory_limits: vec![],
        escaped: vec![],
    }
}

fn status(apps: Vec<AppStatus>) -> SupervisorStatus {
    SupervisorStatus {
        pid: 4242,
        config: "/srv/appvisor.toml".into(),
        config_generation: 1,
        uptime_ms: 3_725_000,
        rss: Some(9 * MIB),
        store: None,
        apps,
    }
}

fn event(json: &str) -> Event {
    serde_json::from_str(json).expect("a valid event")
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

/// A model that watched `site` (2 workers; worker 0 leaking 1 MiB/s, recycled for
/// its RSS 100 s ago) and `api` for 4 minutes, one status poll a second.
fn watched() -> Model {
    let mut m = Model::new("/srv/state/control.sock".into(), jiff::tz::TimeZone::UTC);
    let mut limits = std::collections::BTreeMap::new();
    limits.insert(
        "site".to_string(),
        HistoryLimits {
            rss: Some(200 * MIB),
            requests: Some(5000),
            interval_s: Some(3600.0),
            ..Default::default()
        },
    );
    m.config_limits = limits;
    m.on_event(event(
        r#"{"time":"2027-01-15T07:58:20Z","app":"site","kind":"recycle","reason":"rss","detail":"RSS 201.0 MiB over the 200 MiB limit","worker":0,"generation":2}"#,
    ));
    m.on_event(event(
        r#"{"time":"2027-01-15T07:40:00Z","app":"site","kind":"crashed","reason":"exit","detail":"exit code 1","worker":1,"generation":1}"#,
    ));
    for i in 0..=240u64 {
        let t = NOW - 240.0 + i as f64;
        // Worker 0: generation 1 grows from 60 MiB, is recycled at -100 s into
        // generation 2, which starts at 40 MiB again; worker 1 stays flat.
        let w0 = if i < 140 {
            worker(0, 1001, 1, 1000 + i, 60 + i)
        } else {
            worker(0, 1002, 2, i - 140, 40 + (i - 140))
        };
        let w1 = worker(1, 1003, 1, 1000 + i, 50);
        let mut site = app("site", vec![w0, w1]);
        site.next_schedule = Some("2027-01-15 12:30".into());
        let api = app("api", vec![worker(0, 2001, 5, 30 + i, 20)]);
        m.on_status(t, status(vec![site, api]));
    }
    m
}

fn screen(m: &Model) -> String {
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).expect("a test terminal");
    terminal
        .draw(|f| render::draw(f, m))
        .expect("drawing works");
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn assert_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/top/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no snapshot {} ({e}); this screen is:\n{actual}\nwrite it with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "the screen differs from {}\n--- expected\n{expected}--- actual\n{actual}\
         (UPDATE_SNAPSHOTS=1 rewrites the snapshot once the new screen is right)",
        path.display()
    );
}

#[test]
fn main_view_snapshot() {
    let m = watched();
    let s = screen(&m);
    assert_snapshot("main", &s);
    // What the snapshot must show, said plainly so a reviewer need not diff it.
    assert!(s.contains("▶ site"), "{s}");
    assert!(s.contains("next 12:30 (in 4h30m)"), "{s}");
    assert!(s.contains("1002     2"), "worker 0's new generation:\n{s}");
    assert!(s.contains("1m/1h00m"), "age against interval:\n{s}");
    assert!(s.contains("1200/5000"), "requests against the limit:\n{s}");
    assert!(s.contains("╌╌╌"), "the limit line:\n{s}");
    assert!(s.contains(" rss 200M "), "the limit's label:\n{s}");
    assert!(s.contains('R'), "the recycle marker:\n{s}");
    assert!(s.contains("07:58:20 recycle rss: RSS 201.0 MiB"), "{s}");
}

#[test]
fn confirm_dialog_snapshot() {
    let mut m = watched();
    assert_eq!(m.on_key(key('r')), None);
    assert_eq!(m.mode, Mode::Confirm(Action::Recycle, "site".into()));
    let s = screen(&m);
    assert_snapshot("confirm", &s);
    assert!(s.contains("Recycle site?"), "{s}");
    assert!(s.contains("y: yes    n: no"), "{s}");
}

#[test]
fn help_snapshot() {
    let mut m = watched();
    m.on_key(key('?'));
    assert_eq!(m.mode, Mode::Help);
    let s = screen(&m);
    assert_snapshot("help", &s);
    assert!(s.contains("recycle the selected app"), "{s}");
}

#[test]
fn no_supervisor_snapshot() {
    let mut m = Model::new("/srv/state/control.sock".into(), jiff::tz::TimeZone::UTC);
    m.on_down(
        NOW,
        "no supervisor is running for appvisor.toml (nothing answers at /srv/state/control.sock); start one with `appvisor run appvisor.toml`".into(),
    );
    let s = screen(&m);
    assert_snapshot("no_supervisor", &s);
    assert!(s.contains("No supervisor answers."), "{s}");
    assert!(s.contains("not connected"), "{s}");
}

#[test]
fn no_apps_snapshot() {
    let mut m = Model::new("/srv/state/control.sock".into(), jiff::tz::TimeZone::UTC);
    m.on_status(NOW, status(vec![]));
    let s = screen(&m);
    assert_snapshot("no_apps", &s);
    assert!(s.contains("The supervisor runs no apps."), "{s}");
}

#[test]
fn confirmation_runs_the_action_only_on_yes() {
    let mut m = watched();
    m.on_key(key('x'));
    assert_eq!(m.on_key(key('n')), None);
    assert_eq!(m.mode, Mode::Main);
    assert_eq!(m.message.as_deref(), Some("site: stop cancelled"));
    m.on_key(key('x'));
    // Other keys leave the question open.
    assert_eq!(m.on_key(key('r')), None);
    assert_eq!(m.mode, Mode::Confirm(Action::Stop, "site".into()));
    assert_eq!(
        m.on_key(key('y')),
        Some(Command::Act(Action::Stop, "site".into()))
    );
    assert_eq!(m.mode, Mode::Main);
    m.on_key(key('s'));
    assert_eq!(
        m.on_key(key('y')),
        Some(Command::Act(Action::Start, "site".into()))
    );
}

#[test]
fn keys_switch_apps_ranges_and_quit() {
    let mut m = watched();
    assert_eq!(m.selected.as_deref(), Some("site"));
    m.on_key(code(KeyCode::Down));
    assert_eq!(m.selected.as_deref(), Some("api"));
    m.on_key(code(KeyCode::Down));
    assert_eq!(m.selected.as_deref(), Some("site"), "wraps around");
    m.on_key(code(KeyCode::Up));
    assert_eq!(m.selected.as_deref(), Some("api"));
    assert_eq!(m.range_label(), "5m");
    m.on_key(code(KeyCode::Left));
    assert_eq!(m.range_label(), "5m", "no range below the first");
    for _ in 0..10 {
        m.on_key(code(KeyCode::Right));
    }
    assert_eq!(m.range_label(), "7d");
    m.on_key(key('?'));
    assert_eq!(m.on_key(key('j')), None, "any key closes the help");
    assert_eq!(m.mode, Mode::Main);
    assert_eq!(m.on_key(key('q')), Some(Command::Quit));
    assert_eq!(
        m.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Some(Command::Quit)
    );
}

#[test]
fn the_selection_follows_the_app_not_its_position() {
    let mut m = watched();
    m.on_key(code(KeyCode::Down));
    assert_eq!(m.selected.as_deref(), Some("api"));
    // A reload reorders the apps: still `api`.
    m.on_status(
        NOW + 1.0,
        status(vec![app("api", vec![]), app("site", vec![])]),
    );
    assert_eq!(m.selected.as_deref(), Some("api"));
    // `api` removed: the first app.
    m.on_status(NOW + 2.0, status(vec![app("site", vec![])]));
    assert_eq!(m.selected.as_deref(), Some("site"));
}

#[test]
fn the_chart_uses_polls_without_history() {
    let m = watched();
    let d = m.chart().expect("a chart");
    assert_eq!(d.source, "polls");
    assert_eq!(d.metric, Metric::Rss);
    // One line per worker generation: (0,1), (0,2), (1,1).
    let gens: Vec<(u32, u64)> = d.series.iter().map(|s| (s.worker, s.generation)).collect();
    assert_eq!(gens, vec![(0, 1), (0, 2), (1, 1)]);
    let g1 = &d.series[0].points;
    assert_eq!(g1.first(), Some(&(-240.0, 60.0)));
    assert_eq!(g1.last(), Some(&(-101.0, 199.0)));
    assert_eq!(
        d.limits,
        vec![LimitLine {
            name: "rss",
            mib: 200.0
        }]
    );
    assert_eq!(d.y_max_mib, 250.0);
    // The recycle event 100 s ago; the crash 20 minutes ago is outside 5 minutes.
    assert_eq!(d.marks, vec![(-100.0, 'R')]);
}

#[test]
fn the_chart_prefers_the_recorded_history_and_its_limits() {
    let mut m = watched();
    let point = |t: f64, private: u64| HistoryPoint {
        t,
        worker: 0,
        generation: 7,
        pid: 1,
        private: private * MIB,
        private_min: private * MIB,
        private_max: private * MIB,
        rss: 2 * private * MIB,
        ..Default::default()
    };
    m.on_history(HistoryReply {
        app: "site".into(),
        sample_interval_s: 1.0,
        from: NOW - 300.0,
        to: NOW - 10.0,
        limits: HistoryLimits {
            private_memory: Some(300 * MIB),
            memory_hard_limit: Some(400 * MIB),
            ..Default::default()
        },
        points: vec![
            point(NOW - 400.0, 10),
            point(NOW - 200.0, 30),
            point(NOW - 10.0, 50),
        ],
        marks: vec![HistoryMark {
            t: NOW - 150.0,
            kind: "recycle".into(),
            reason: Some("private_memory".into()),
            worker: Some(0),
            generation: Some(7),
            detail: None,
        }],
    });
    let d = m.chart().expect("a chart");
    assert_eq!(d.source, "history");
    assert_eq!(d.metric, Metric::Private, "the limit set is private_memory");
    // History points in range; the polls after its end carry no private figure
    // (this status has none), so they draw nothing rather than a drop to 0.
    assert_eq!(d.series.len(), 1, "{:?}", d.series);
    assert_eq!(d.series[0].generation, 7);
    assert_eq!(d.series[0].points, vec![(-200.0, 30.0), (-10.0, 50.0)]);
    assert_eq!(
        d.limits,
        vec![
            LimitLine {
                name: "private_memory",
                mib: 300.0
            },
            LimitLine {
                name: "memory_hard_limit",
                mib: 400.0
            }
        ]
    );
    // The history's mark only: the recycle event 100 s ago falls before the
    // reply's end (-10 s), so the history already covers that time.
    assert_eq!(d.marks, vec![(-150.0, 'R')]);
    assert_eq!(
        m.limits("site").requests,
        None,
        "the supervisor's limits win"
    );
}

#[test]
fn the_ring_is_bounded() {
    let mut m = Model::new(String::new(), jiff::tz::TimeZone::UTC);
    for i in 0..RING_CAP + 10 {
        m.on_status(
            i as f64,
            status(vec![app("a", vec![worker(0, 1, 1, 1, 1)])]),
        );
    }
    assert_eq!(m.series["a"].ring.len(), RING_CAP);
    assert_eq!(m.series["a"].ring.front().unwrap().t, 10.0);
}

#[test]
fn small_helpers() {
    assert_eq!(nice_ceiling(0.3), 1.0);
    assert_eq!(nice_ceiling(181.5), 200.0);
    assert_eq!(nice_ceiling(220.0), 250.0);
    assert_eq!(nice_ceiling(440.0), 500.0);
    assert_eq!(age(59.9), "59s");
    assert_eq!(age(3600.0), "1h00m");
    assert_eq!(age(90_000.0), "1d01h");
    assert_eq!(human_mib(200 * MIB), "200M");
    assert_eq!(human_mib(MIB / 2), "0.5M");
}

/// A stand-in supervisor on a real unix socket that answers `history` first with
/// a reply, then as a supervisor that does not know the request.
#[test]
fn history_is_used_when_answered_and_dropped_when_unknown() {
    use super::source::{HistoryAnswer, Source};
    use std::io::{BufRead, BufReader, Write};
    let dir = std::env::temp_dir().join(format!("av-top-source-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut w = stream.try_clone().unwrap();
        let mut lines = BufReader::new(stream).lines();
        let mut asked = Vec::new();
        for answer in [
            r#"{"ok":true,"history":{"app":"a","sample_interval_s":1.0,"from":1.0,"to":2.0,"limits":{"private_memory":1048576,"rss":null,"virtual_memory":null,"memory_hard_limit":null,"requests":null,"interval_s":null},"points":[],"marks":[]}}"#,
            r#"{"ok":false,"error":"bad request: unknown variant `history`, expected one of `ping`, `status`"}"#,
        ] {
            asked.push(lines.next().unwrap().unwrap());
            writeln!(w, "{answer}").unwrap();
        }
        asked
    });
    let mut src = Source::new(socket, "appvisor.toml".into());
    match src.history("a", 300, 160) {
        HistoryAnswer::Reply(h) => {
            assert_eq!(h.app, "a");
            assert_eq!(h.limits.private_memory, Some(MIB));
        }
        other => panic!("expected a reply, got {other:?}"),
    }
    assert!(src.has_history());
    assert!(matches!(
        src.history("a", 300, 160),
        HistoryAnswer::Unsupported
    ));
    assert!(!src.has_history(), "not asked again on this connection");
    let asked = server.join().unwrap();
    let req: serde_json::Value = serde_json::from_str(&asked[0]).unwrap();
    assert_eq!(
        req,
        serde_json::json!({"cmd": "history", "app": "a", "since_s": 300, "max_points": 160})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Any terminal size draws without a panic (a resize to a tiny window over ssh),
/// dialogs included.
#[test]
fn every_size_draws() {
    let mut m = watched();
    for (w, h) in [(1, 1), (20, 5), (40, 10), (80, 8), (81, 25), (200, 60)] {
        for mode in [
            Mode::Main,
            Mode::Help,
            Mode::Confirm(Action::Recycle, "site".into()),
        ] {
            m.mode = mode;
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| render::draw(f, &m)).unwrap();
        }
    }
}
