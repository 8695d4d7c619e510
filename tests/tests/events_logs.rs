//! Issue 9 items 4 and 5 (and the log files' part of issue 12): `appvisor events`
//! with its filters, `--follow` and `--stats`, the event log's rotation, and
//! `appvisor logs` with `-n`, `--worker` and `-f` across recycles and rotations;
//! worker log files that are deleted, or on a full disk. Real binary, real workers.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appvisor_e2e::*;
use serde_json::Value;

fn demo_app(name: &str, port: u16, processes: u32, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = [\"{demo}\"]\nprocesses = {processes}\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.watch]\nenabled = false\n{extra}\n",
        demo = example_bin("demo").display()
    )
}

/// An app of `flood.py` printing `lines` numbered lines at `rate` a second (0: as
/// fast as it can), ready after 100 ms.
fn flood_app(lines: u64, rate: u32) -> String {
    format!(
        "[[app]]\nname = \"flood\"\ncommand = [\"python3\", \"{script}\", \"{lines}\", \"{rate}\"]\nready = \"delay:100ms\"\n[app.watch]\nenabled = false\n",
        script = worker_script("flood.py").display()
    )
}

/// `appvisor ARGS` left running (`-f`), its stdout lines collected by a thread.
/// Killed (by its own pid) when dropped.
struct Streaming {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Streaming {
    fn start(dir: &std::path::Path, args: &[&str]) -> Streaming {
        let mut child = Command::new(appvisor_bin())
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start appvisor");
        let collect = |from: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(from).lines() {
                    let Ok(l) = l else { break };
                    sink.lock().unwrap().push(l);
                }
            });
            lines
        };
        let lines = collect(Box::new(child.stdout.take().unwrap()));
        let errors = collect(Box::new(child.stderr.take().unwrap()));
        Streaming {
            child,
            lines,
            errors,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    /// Waits until at least `n` lines came.
    fn wait_lines(&self, n: usize, what: &str) -> Vec<String> {
        wait_until(Duration::from_secs(30), what, || {
            let l = self.lines();
            (l.len() >= n).then_some(l)
        })
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `appvisor ARGS` must fail with one line on stderr that contains every `needle`.
fn refused(sv: &Supervisor, args: &[&str], needles: &[&str]) {
    let out = sv.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
}

fn recycle_n(sv: &Supervisor, app: &str, n: usize) {
    for _ in 0..n {
        sv.ok(&["recycle", app]);
    }
}

/// `--kind`, `--reason`, `--since`/`--until`, `--app`, `--stats` on the record of a
/// real run, and a clear one-line error for each bad value.
#[test]
fn events_filters_and_stats() {
    let sb = Sandbox::new("evq");
    sb.config(&format!(
        "{}{}",
        demo_app("web", free_port(), 2, ""),
        demo_app("api", free_port(), 1, "")
    ));
    let sv = sb.start();
    sv.wait_running("web", 2);
    sv.wait_running("api", 1);
    recycle_n(&sv, "web", 3);
    recycle_n(&sv, "api", 1);
    // The last retirements are written after the recycle returns.
    wait_until(Duration::from_secs(10), "7 retirements", || {
        (sv.events_of("retired").len() == 7).then_some(())
    });

    let recycles = json_lines(
        &sv.ok(&["events", "--json", "--kind", "recycle"])
            .into_bytes(),
    );
    assert_eq!(recycles.len(), 7);
    assert!(recycles.iter().all(|e| e["kind"] == "recycle"));
    let web = json_lines(
        &sv.ok(&[
            "events",
            "--json",
            "--app",
            "web",
            "--kind",
            "recycle,retired",
        ])
        .into_bytes(),
    );
    assert_eq!(web.len(), 12, "{web:?}");
    assert!(web.iter().all(|e| e["app"] == "web"));
    let manual = json_lines(
        &sv.ok(&["events", "--json", "--reason", "manual"])
            .into_bytes(),
    );
    assert_eq!(manual.len(), 7);
    assert!(manual.iter().all(|e| e["reason"] == "manual"));
    assert!(sv.ok(&["events", "--reason", "memory"]).is_empty());

    // The window: from the time of the third web recycle on, and before it.
    let third = recycles[2]["time"].as_str().unwrap().to_string();
    let from = json_lines(
        &sv.ok(&["events", "--json", "--kind", "recycle", "--since", &third])
            .into_bytes(),
    );
    assert_eq!(from.len(), 5);
    assert_eq!(from[0]["time"].as_str(), Some(third.as_str()));
    let before = json_lines(
        &sv.ok(&["events", "--json", "--kind", "recycle", "--until", &third])
            .into_bytes(),
    );
    assert_eq!(before.len(), 2);
    assert_eq!(
        json_lines(
            &sv.ok(&["events", "--json", "--kind", "recycle", "--since", "1h"])
                .into_bytes()
        )
        .len(),
        7
    );
    assert!(sv
        .ok(&["events", "--kind", "recycle", "--until", "1h"])
        .is_empty());

    // --stats: per app and reason, over the window.
    let stats: Value = serde_json::from_str(&sv.ok(&["events", "--stats", "--json"])).unwrap();
    let row = |app: &str, reason: &str| -> Value {
        stats["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["app"] == app && r["reason"] == reason)
            .cloned()
            .unwrap_or_else(|| panic!("no row {app}/{reason}: {stats}"))
    };
    let w = row("web", "manual");
    assert_eq!(w["recycles"], 6);
    assert_eq!(w["startup"]["count"], 6);
    assert_eq!(
        w["drain"]["count"], 6,
        "each drain joined to its recycle: {w}"
    );
    assert!(
        w["startup"]["p95_ms"].as_u64().unwrap()
            >= w["startup"]["mean_ms"].as_f64().unwrap() as u64
    );
    assert_eq!(row("web", "start")["startup"]["count"], 2);
    assert_eq!(row("api", "manual")["recycles"], 1);
    assert_eq!(row("web", "*")["crashes"], 0);
    let since: Value = serde_json::from_str(&sv.ok(&[
        "events", "--stats", "--json", "--app", "web", "--since", &third,
    ]))
    .unwrap();
    let rows = since["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["app"] == "web"));
    let m = rows.iter().find(|r| r["reason"] == "manual").unwrap();
    assert_eq!(m["recycles"], 4);
    let table = sv.ok(&["events", "--stats"]);
    assert!(
        table.contains("REASON")
            && table
                .lines()
                .any(|l| l.starts_with("web") && l.contains("manual")),
        "{table}"
    );

    // Bad input: one line, naming what is valid.
    refused(
        &sv,
        &["events", "--kind", "recyle"],
        &["\"recyle\"", "recycle, recycle_queued", "crashed"],
    );
    refused(
        &sv,
        &["events", "--reason", "memroy"],
        &["\"memroy\"", "memory", "manual"],
    );
    refused(
        &sv,
        &["events", "--since", "yesterday"],
        &["--since \"yesterday\"", "RFC 3339"],
    );
    refused(
        &sv,
        &["events", "--stats", "--until", "soon"],
        &["--until \"soon\""],
    );
    refused(
        &sv,
        &["events", "--app", "nope"],
        &["no app named \"nope\"", "apps: web, api"],
    );
    refused(
        &sv,
        &["events", "--stats", "--app", "nope"],
        &["no app named \"nope\""],
    );
    refused(
        &sv,
        &["events", "--since", "1h", "--until", "2h"],
        &["after --until"],
    );
    assert!(sv.stop().success());
}

/// `--follow` with a filter prints only what matches, as it happens.
#[test]
fn events_follow_with_a_filter() {
    let sb = Sandbox::new("evfollow");
    sb.config(&format!(
        "{}{}",
        demo_app("web", free_port(), 1, ""),
        demo_app("api", free_port(), 1, "")
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    sv.wait_running("api", 1);
    recycle_n(&sv, "web", 1);
    // `-n 1`: the last matching event first — printed once the follower has
    // subscribed and read the log, so what follows cannot be missed.
    let f = Streaming::start(
        &sb.dir,
        &[
            "events", "-f", "--json", "-n", "1", "--app", "web", "--kind", "recycle", "--reason",
            "manual",
        ],
    );
    f.wait_lines(1, "the last web recycle from the log");
    recycle_n(&sv, "api", 1);
    recycle_n(&sv, "web", 2);
    recycle_n(&sv, "api", 1);
    recycle_n(&sv, "web", 1);
    let got = f.wait_lines(4, "three followed web recycles");
    let mut gens = Vec::new();
    for l in &got {
        let e: Value = serde_json::from_str(l).unwrap();
        assert_eq!(
            (e["app"].as_str(), e["kind"].as_str(), e["reason"].as_str()),
            (Some("web"), Some("recycle"), Some("manual")),
            "{l}"
        );
        gens.push(e["generation"].as_u64().unwrap());
    }
    assert_eq!(
        gens,
        [2, 3, 4, 5],
        "each web recycle once, in order, nothing else"
    );
    assert!(sv.stop().success());
}

/// The event log rotates under a storm of events (a rejected reload per SIGHUP,
/// 4 KiB files): no file passes its size, no line is torn, and reading the rotated
/// files back gives exactly what a follower saw as it happened — nothing lost,
/// nothing twice, in order.
#[test]
fn the_event_log_rotates_under_a_storm_without_losing_or_tearing_a_line() {
    let sb = Sandbox::new("evrot");
    let valid = format!(
        "[supervisor]\nevents_max_size = \"4KiB\"\nevents_keep = 1000\n{}",
        demo_app("web", free_port(), 1, "")
    );
    sb.config(&valid);
    let sv = sb.start();
    sv.wait_running("web", 1);
    // `-n 1`: the one `ready` event from the log first, printed once the follower
    // has subscribed; then every rejected reload as it happens.
    let g = Streaming::start(
        &sb.dir,
        &[
            "events",
            "-f",
            "--json",
            "-n",
            "1",
            "--kind",
            "ready,config_rejected",
        ],
    );
    g.wait_lines(1, "the follower to be up");
    sb.config(&format!("{valid}\nbogus_key = 1\n"));
    let storm = 600;
    for i in 0..storm {
        // SAFETY: kill with the pid of the supervisor this test started.
        unsafe { libc::kill(sv.pid(), libc::SIGHUP) };
        // Paced so that signals do not merge into one: one reload each, mostly.
        std::thread::sleep(Duration::from_millis(1));
        if i % 50 == 49 {
            let _ = sv.cli(&["reload"]);
        }
    }
    let _ = sv.cli(&["reload"]);
    // Everything the follower saw is in the files, whole and in order.
    let read_back = || {
        let out = sv.cli(&[
            "events",
            "--json",
            "--kind",
            "ready,config_rejected",
            "-n",
            "1000000",
        ]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("not an event"), "torn lines: {err}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (followed, files) = wait_until(
        Duration::from_secs(30),
        "the follower and the files to agree",
        || {
            let followed = g.lines();
            let files = read_back();
            (followed.len() >= 8 && followed == files).then_some((followed, files))
        },
    );
    assert_eq!(followed.len(), files.len());
    let state = sb.path(".appvisor");
    let mut rotated = 0;
    for e in std::fs::read_dir(&state).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("events.jsonl") {
            let len = e.metadata().unwrap().len();
            assert!(len <= 4096, "{name} is {len} bytes");
            rotated += usize::from(name != "events.jsonl");
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                serde_json::from_str::<Value>(l).unwrap_or_else(|err| panic!("{name}: {err}: {l}"));
            }
        }
    }
    assert!(rotated >= 5, "only {rotated} rotated files");
    // The first event (before the storm) is still read, from the oldest file.
    assert!(files[0].contains("\"ready\""), "{}", files[0]);
    assert!(followed.len() > 200, "{} events", followed.len());
    sb.config(&valid);
    assert!(sv.stop().success());
}

/// The generation and worker slot of every line of `flood` in its log output.
fn flood_numbers(lines: &[String], gen: u64) -> Vec<u64> {
    let tag = format!("flood {gen} ");
    lines
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once(&tag)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// `logs -f` follows the app's output across a recycle (the new generation's
/// lines, with its generation and pid) and across rotations under a flood: every
/// line once, in order, none torn. The rotated files hold them all too.
#[test]
fn logs_follow_across_a_recycle_and_rotations() {
    let sb = Sandbox::new("logsf");
    let lines = 20_000; // 2.5 MiB: 40 rotations of 64 KiB
    sb.config(&format!(
        "[supervisor]\nlog_max_size = \"64KiB\"\nlog_keep = 300\n{}",
        flood_app(lines, 0)
    ));
    let sv = sb.start();
    sv.wait_running("flood", 1);
    let last = format!("flood 1 {:08} ", lines - 1);
    wait_until(Duration::from_secs(30), "generation 1's flood", || {
        sv.app_log("flood")
            .iter()
            .any(|l| l.contains(&last))
            .then_some(())
    });
    let f = Streaming::start(&sb.dir, &["logs", "flood", "-f", "-n", "1"]);
    f.wait_lines(1, "the last line of generation 1");
    sv.ok(&["recycle", "flood"]);
    let pid = sv.wait_running("flood", 1)[0];
    let got = wait_until(
        Duration::from_secs(60),
        "generation 2's flood in logs -f",
        || {
            let l = f.lines();
            (flood_numbers(&l, 2).len() >= lines as usize).then_some(l)
        },
    );
    assert_eq!(
        flood_numbers(&got, 2),
        (0..lines).collect::<Vec<_>>(),
        "logs -f shows every line of the new generation once, in order"
    );
    let tagged = format!("w0 g2 [{pid}]  flood 2 ");
    assert_eq!(
        got.iter().filter(|l| l.contains(&tagged)).count(),
        lines as usize,
        "each line carries worker, generation and pid"
    );
    assert!(got[0].contains("flood 1 "), "{}", got[0]);
    // The files, rotated and current, hold the same lines.
    let logs = sb.path(".appvisor/logs");
    let n_files = std::fs::read_dir(&logs).unwrap().count();
    assert!(n_files > 30, "{n_files} files");
    let out = sv.cli(&["logs", "flood", "-n", "1000000"]);
    let text: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(flood_numbers(&text, 2), (0..lines).collect::<Vec<_>>());
    assert_eq!(flood_numbers(&text, 1), (0..lines).collect::<Vec<_>>());
    assert!(sv.stop().success());
}

/// `logs -n N` shows the last N lines; `--worker W` only that slot's, each with
/// its pid; a worker that does not exist, or an unknown app, is a one-line error.
#[test]
fn logs_last_lines_and_one_worker() {
    let sb = Sandbox::new("logsn");
    sb.config(&demo_app("web", free_port(), 2, ""));
    let sv = sb.start();
    let pids = sv.wait_running("web", 2);
    let status = sv.app("web");
    let w1 = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == 1)
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    assert!(pids.contains(&w1));
    wait_until(Duration::from_secs(10), "both workers' ready lines", || {
        let log = sv.app_log("web");
        (log.iter().filter(|l| l.contains("demo: ready")).count() == 2).then_some(())
    });
    let two = sv.ok(&["logs", "web", "-n", "2"]);
    assert_eq!(two.lines().count(), 2, "{two}");
    let all = sv.ok(&["logs", "web", "-n", "1000"]);
    assert!(
        all.ends_with(&two),
        "-n 2 is the end of the log:\n{all}\n--\n{two}"
    );
    let one = sv.ok(&["logs", "web", "--worker", "1", "-n", "1000"]);
    assert!(!one.is_empty());
    for l in one.lines() {
        assert!(l.contains(&format!(" w1 g1 [{w1}]")), "{l}");
    }
    assert!(one.contains("demo: ready"));
    assert!(one.lines().count() < all.lines().count());
    refused(
        &sv,
        &["logs", "web", "--worker", "2"],
        &["no worker 2", "slots 0 to 1"],
    );
    refused(
        &sv,
        &["logs", "nope"],
        &["no app named \"nope\"", "apps: web"],
    );
    assert!(sv.stop().success());
}

/// A worker log deleted while the worker writes is made again (0600) and written;
/// so is one that went with the whole state dir.
#[test]
fn a_deleted_log_file_is_made_again() {
    let sb = Sandbox::new("logdel");
    sb.config(&flood_app(1_000_000, 200));
    let sv = sb.start();
    sv.wait_running("flood", 1);
    let path = sb.path(".appvisor/logs/flood.log");
    wait_until(Duration::from_secs(10), "output", || {
        (!sv.app_log("flood").is_empty()).then_some(())
    });
    std::fs::remove_file(&path).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the log made again with new lines",
        || (sv.app_log("flood").len() > 10).then_some(()),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    remove_tree(&sb.path(".appvisor"));
    wait_until(
        Duration::from_secs(20),
        "the state dir's log made again",
        || (sv.app_log("flood").len() > 10).then_some(()),
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let fresh = sv.app_log("flood");
    assert!(fresh.iter().all(|l| l.contains(" w0 g1 [")), "{fresh:?}");
    assert!(sv.stop().success());
}

/// Bytes a process has written (`wchar` of `/proc/PID/io`).
fn written(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar: ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Issue 12, disk full: the state dir on a full tmpfs. The worker keeps writing
/// (its pipe is drained: it writes far more than a pipe holds), the supervisor
/// keeps answering, the worker log and the event log each report once (a warning
/// and a `log_write_failed` event, seen by a follower since the event log cannot
/// take it either), no line is torn, and both resume by themselves when space
/// returns, saying how much was dropped.
#[test]
fn a_full_disk_drops_and_counts_log_lines_and_both_logs_recover() {
    let sb = Sandbox::new("logfull");
    sb.config(&flood_app(100_000_000, 2000));
    let Some(fs) = Tmpfs::mount(&sb.path(".appvisor"), "1m") else {
        return;
    };
    let sv = sb.start();
    let pid = sv.wait_running("flood", 1)[0];
    let f = Streaming::start(
        &sb.dir,
        &[
            "events",
            "-f",
            "--json",
            "-n",
            "1",
            "--kind",
            "ready,log_write_failed,log_write_resumed",
        ],
    );
    f.wait_lines(1, "the follower to be up");
    let filler = fs.fill();
    let at_full = written(pid);
    // 512 KiB more from the worker: 8 times what its pipe holds, so the supervisor
    // has been reading (and dropping) all along.
    wait_until(Duration::from_secs(30), "the worker writing on", || {
        (written(pid) > at_full + 512 * 1024).then_some(())
    });
    let failed = |lines: &[String], app: &str| {
        lines
            .iter()
            .filter(|l| {
                l.contains("\"log_write_failed\"") && l.contains(&format!("\"app\":\"{app}\""))
            })
            .count()
    };
    wait_until(Duration::from_secs(30), "the worker log's failure", || {
        (failed(&f.lines(), "flood") > 0).then_some(())
    });
    // The event log's last page may still take that event: rejected reloads (long
    // details) until it is full too.
    let valid = flood_app(100_000_000, 2000);
    sb.config(&format!("{valid}\nbogus_key = 1\n"));
    wait_until(Duration::from_secs(60), "the event log's failure", || {
        let _ = sv.cli(&["reload"]);
        (failed(&f.lines(), "-") > 0).then_some(())
    });
    sb.config(&valid);
    let seen = f.lines();
    assert_eq!(failed(&seen, "flood"), 1, "{seen:?}");
    assert_eq!(failed(&seen, "-"), 1, "{seen:?}");
    let status = sv.app("flood");
    assert_eq!(status["workers"][0]["pid"].as_i64(), Some(pid as i64));

    std::fs::remove_file(filler).unwrap();
    let events = wait_until(Duration::from_secs(30), "both logs resumed", || {
        let ev = sv.events_of("log_write_resumed");
        (ev.len() >= 2).then_some(ev)
    });
    let flood = events
        .iter()
        .find(|e| e["app"] == "flood")
        .expect("the worker log resumed");
    let detail = flood["detail"].as_str().unwrap();
    let dropped: u64 = detail
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(dropped > 1000, "{detail}");
    assert!(events.iter().any(|e| e["app"] == "-"), "{events:?}");
    // Once each, not once per line; and no torn line in any file.
    assert_eq!(failed(&f.lines(), "flood"), 1);
    let err = sv.stderr();
    assert_eq!(
        err.matches("Cannot append to the event log").count(),
        1,
        "{err}"
    );
    for name in ["flood.log"] {
        let text = std::fs::read_to_string(sb.path(&format!(".appvisor/logs/{name}"))).unwrap();
        for l in text.lines() {
            assert!(
                l.contains(" w0 g1 [") && l.ends_with('x'),
                "a torn line in {name}: {l:?}"
            );
        }
    }
    drop(f);
    assert!(sv.stop().success());
    drop(fs);
}

/// A follower more than the event channel's 1,024 lines behind (its terminal
/// paused: here the process is stopped) is told on stderr how many events it
/// missed, instead of a silent gap, and follows on.
#[test]
fn a_follower_that_falls_behind_is_told_how_many_events_it_missed() {
    let sb = Sandbox::new("lagged");
    let valid = demo_app("web", free_port(), 1, "");
    sb.config(&valid);
    let sv = sb.start();
    sv.wait_running("web", 1);
    let f = Streaming::start(&sb.dir, &["events", "-f", "--json", "-n", "1"]);
    f.wait_lines(1, "the follower to be up");
    let follower = f.child.id() as i32;
    // SAFETY: signals to the follower this test started (and still holds).
    unsafe { libc::kill(follower, libc::SIGSTOP) };
    // 3,000 rejected reloads on one connection: an event each, far more than the
    // channel and both socket buffers hold.
    sb.config(&format!("{valid}\nbogus_key = 1\n"));
    let mut c = std::os::unix::net::UnixStream::connect(sb.path(".appvisor/control.sock")).unwrap();
    let mut replies = std::io::BufReader::new(c.try_clone().unwrap());
    for _ in 0..3000 {
        use std::io::Write;
        c.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        assert!(reply.contains("\"ok\":false"), "{reply}");
    }
    sb.config(&valid);
    // SAFETY: as above.
    unsafe { libc::kill(follower, libc::SIGCONT) };
    let said = wait_until(
        Duration::from_secs(30),
        "the follower told of the gap",
        || {
            f.errors()
                .into_iter()
                .find(|l| l.contains("events skipped"))
        },
    );
    let n: u64 = said
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!((1..3000).contains(&n), "{said}");
    assert!(said.contains("events.jsonl"), "{said}");
    // It follows on: the next event, after the gap, reaches it.
    let before = f.lines().len();
    let r = sv.cli(&["recycle", "web"]);
    assert!(r.status.success(), "{r:?}");
    wait_until(Duration::from_secs(30), "an event after the gap", || {
        (f.lines().len() > before).then_some(())
    });
    // Every line it printed is an event: the notice went to stderr only.
    for l in f.lines() {
        let v: Value = serde_json::from_str(&l).unwrap();
        assert!(v["kind"].is_string(), "{l}");
    }
}
