//! Issue: supervise an app — shared sockets, readiness, overlapped recycle, crash
//! policy, restart log. Every test drives the real binary and real workers.

use std::time::Duration;

use appvisor_e2e::load::Load;
use appvisor_e2e::*;

fn demo_app(name: &str, port: u16, processes: u32, extra: &str) -> String {
    format!(
        r#"
[[app]]
name = "{name}"
command = ["{demo}"]
processes = {processes}
listen = ["tcp://127.0.0.1:{port}"]
{extra}
"#,
        demo = example_bin("demo").display()
    )
}

fn recycles_under_load(keep_alive: bool) {
    let sb = Sandbox::new(if keep_alive { "ka" } else { "noka" });
    let port = free_port();
    sb.config(&demo_app("web", port, 2, "[app.watch]\nenabled = false\n"));
    let sv = sb.start();
    let first = sv.wait_running("web", 2);
    let load = Load::start(port, 4, keep_alive, "/");
    load.wait_for_requests(200);
    for i in 0..20 {
        let out = sv.ok(&["recycle", "web"]);
        assert!(out.contains("recycled 2 worker(s)"), "recycle {i}: {out}");
        load.wait_for_requests(50);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert!(report.ok > 1000, "only {} requests succeeded", report.ok);

    let recycles = sv.events_of("recycle");
    assert_eq!(recycles.len(), 40, "20 recycles × 2 workers");
    for e in &recycles {
        assert_eq!(e["reason"], "manual");
        let (old, new) = (
            e["old_pid"].as_i64().unwrap(),
            e["new_pid"].as_i64().unwrap(),
        );
        assert_ne!(old, new);
    }
    // Every generation served: the load saw the first and the last workers.
    let last = sv.wait_running("web", 2);
    assert!(first.iter().any(|p| report.pids.contains(p)));
    assert!(last.iter().all(|p| !first.contains(p)));
    assert!(sv.stop().success());
}

#[test]
fn twenty_recycles_under_keep_alive_load_fail_no_request() {
    recycles_under_load(true);
}

#[test]
fn twenty_recycles_under_load_without_keep_alive_fail_no_request() {
    recycles_under_load(false);
}

/// `batch = 4` of 8 workers: each recycle starts 4 new workers beside the old
/// ones, then the next 4, and no request fails.
#[test]
fn a_batch_recycle_starts_four_at_once_and_fails_no_request() {
    let sb = Sandbox::new("batch");
    let port = free_port();
    sb.config(&demo_app(
        "web",
        port,
        8,
        "[app.watch]\nenabled = false\n[app.recycle]\nbatch = 4\n",
    ));
    let sv = sb.start();
    sv.wait_running("web", 8);
    let load = Load::start(port, 4, true, "/");
    load.wait_for_requests(200);
    for i in 0..3 {
        let out = sv.ok(&["recycle", "web"]);
        assert!(out.contains("recycled 8 worker(s)"), "recycle {i}: {out}");
        load.wait_for_requests(50);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);

    // Per recycle: 4 new workers started before the first of them took a slot.
    let kinds: Vec<String> = sv
        .events()
        .iter()
        .filter(|e| e["generation"].as_u64().is_some_and(|g| g > 1))
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .filter(|k| k == "started" || k == "recycle")
        .collect();
    let first_batches: Vec<usize> = kinds
        .split(|k| k == "recycle")
        .map(|run| run.len())
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(sv.events_of("recycle").len(), 24, "3 recycles × 8 workers");
    assert_eq!(
        first_batches.iter().max(),
        Some(&4),
        "started/recycle sequence: {kinds:?}"
    );
    assert!(sv.stop().success());
}

#[test]
fn python_worker_without_sdk_is_supervised_and_recycled() {
    let sb = Sandbox::new("py");
    let port = free_port();
    sb.config(&format!(
        r#"
[[app]]
name = "py"
command = ["python3", "{}"]
processes = 2
listen = ["tcp://127.0.0.1:{port}"]
[app.watch]
enabled = false
"#,
        worker_script("py_http.py").display()
    ));
    let sv = sb.start();
    let before = sv.wait_running("py", 2);
    let (code, body) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("generation="), "{body}");
    let load = Load::start(port, 4, false, "/");
    load.wait_for_requests(100);
    for _ in 0..5 {
        sv.ok(&["recycle", "py"]);
        load.wait_for_requests(30);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    let after = sv.wait_running("py", 2);
    assert!(after.iter().all(|p| !before.contains(p)));
    assert_eq!(sv.events_of("recycle").len(), 10);
    // A clean drain: every old worker exited 0 on SIGTERM, none was killed.
    let retired = sv.events_of("retired");
    assert_eq!(retired.len(), 10, "{retired:?}");
    assert!(retired.iter().all(|e| e["exit_code"] == 0), "{retired:?}");
    assert!(sv.events_of("killed").is_empty());
}

#[test]
fn a_generation_that_never_gets_ready_leaves_the_old_one_serving() {
    let sb = Sandbox::new("never");
    let port = free_port();
    // The worker never sends READY=1 once the file `broken` exists.
    sb.config(&format!(
        r#"
[[app]]
name = "web"
command = ["sh", "-c", "if [ -e broken ]; then DEMO_NEVER_READY=1 exec {demo}; else exec {demo}; fi"]
listen = ["tcp://127.0.0.1:{port}"]
[app.recycle]
startup_timeout = "1s"
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1);
    sb.write("broken", "");
    let load = Load::start(port, 4, true, "/");
    load.wait_for_requests(100);
    let out = sv.cli(&["recycle", "web"]);
    assert!(!out.status.success(), "a failed recycle exits non-zero");
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("previous generation keeps serving"), "{msg}");
    load.wait_for_requests(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.errors);
    assert_eq!(
        report.pids.iter().copied().collect::<Vec<_>>(),
        old,
        "only the old worker served"
    );
    let failed = sv.wait_event("startup_failed", Duration::from_secs(10), |e| {
        e["kind"] == "startup_failed"
    });
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("startup_timeout"),
        "{failed}"
    );
    assert_eq!(sv.wait_running("web", 1), old);
    assert!(sv.events_of("recycle").is_empty());
}

#[test]
fn a_worker_ignoring_sigterm_and_its_grandchild_are_killed_after_shutdown_timeout() {
    let sb = Sandbox::new("stubborn");
    let port = free_port();
    sb.config(&demo_app(
        "web",
        port,
        1,
        "env = { DEMO_IGNORE_SIGTERM = \"1\" }\n[app.recycle]\nshutdown_timeout = \"1s\"\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let old = sv.wait_running("web", 1)[0];
    let grandchildren = wait_until(Duration::from_secs(10), "the grandchild", || {
        let c = children(old);
        (!c.is_empty()).then_some(c)
    });
    sv.ok(&["recycle", "web"]);
    let killed = sv.wait_event("killed", Duration::from_secs(10), |e| e["kind"] == "killed");
    assert_eq!(killed["pid"], old);
    wait_until(
        Duration::from_secs(5),
        "the worker and its grandchild to be gone",
        || (!alive(old) && grandchildren.iter().all(|p| !alive(*p))).then_some(()),
    );
    assert!(
        sv.events_of("retired").is_empty(),
        "it never exited by itself"
    );
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker_and_frees_the_port() {
    let sb = Sandbox::new("kill9");
    let port = free_port();
    sb.config(&demo_app(
        "web",
        port,
        2,
        "env = { DEMO_IGNORE_SIGTERM = \"1\" }\n[app.watch]\nenabled = false\n",
    ));
    let sv = sb.start();
    let workers = sv.wait_running("web", 2);
    let mut all = workers.clone();
    for w in &workers {
        let c = wait_until(Duration::from_secs(10), "grandchildren", || {
            let c = children(*w);
            (!c.is_empty()).then_some(c)
        });
        all.extend(c);
    }
    sv.kill9();
    wait_until(
        Duration::from_secs(5),
        "every worker and grandchild to die",
        || all.iter().all(|p| !alive(*p)).then_some(()),
    );
    wait_until(Duration::from_secs(5), "the port to be free", || {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
}

#[test]
fn a_crash_loop_trips_rapid_fail_protection_and_start_revives_the_app() {
    let sb = Sandbox::new("rapid");
    let port = free_port();
    sb.config(&format!(
        r#"
[[app]]
name = "web"
command = ["sh", "-c", "if [ -e fixed ]; then exec {demo}; else echo 'cannot open database' >&2; exit 3; fi"]
listen = ["tcp://127.0.0.1:{port}"]
[app.failure]
rapid_fail_max_crashes = 3
rapid_fail_interval = "1m"
backoff_initial = "20ms"
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    ));
    let sv = sb.start();
    let stopped = sv.wait_event("rapid_fail_stopped", Duration::from_secs(20), |e| {
        e["kind"] == "rapid_fail_stopped"
    });
    assert!(
        stopped["detail"]
            .as_str()
            .unwrap()
            .contains("appvisor start web"),
        "{stopped}"
    );
    let failures = sv
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "startup_failed" || e["kind"] == "crashed")
        .count();
    assert_eq!(failures, 3);
    let tail = sv.events_of("startup_failed")[0]["stderr_tail"].clone();
    assert!(tail.to_string().contains("cannot open database"), "{tail}");
    wait_until(Duration::from_secs(10), "status to say rapid-fail", || {
        (sv.app("web")["state"] == "stopped (rapid-fail)").then_some(())
    });
    let text = sv.ok(&["status"]);
    assert!(text.contains("stopped (rapid-fail)"), "{text}");

    sb.write("fixed", "");
    let out = sv.ok(&["start", "web"]);
    assert!(out.contains("started"), "{out}");
    sv.wait_running("web", 1);
    assert_eq!(http_get(port, "/").unwrap().0, 200);
}

#[test]
fn a_crashed_worker_is_restarted_and_logged_with_its_exit() {
    let sb = Sandbox::new("crash");
    let port = free_port();
    sb.config(&demo_app("web", port, 1, "[app.watch]\nenabled = false\n"));
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    // SAFETY: kill with a pid we just read.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let crashed = sv.wait_event("crashed", Duration::from_secs(10), |e| {
        e["kind"] == "crashed"
    });
    assert_eq!(crashed["pid"], pid);
    assert_eq!(crashed["signal"], "SIGKILL");
    let new = sv.wait_running("web", 1);
    assert_ne!(new[0], pid);
    assert_eq!(http_get(port, "/").unwrap().0, 200);
}

#[test]
fn worker_environment_follows_the_socket_activation_contract() {
    let sb = Sandbox::new("env");
    let port = free_port();
    sb.config(&demo_app("web", port, 1, "[app.watch]\nenabled = false\n"));
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    let env = |name: &str| {
        http_get(port, &format!("/env/{name}"))
            .unwrap()
            .1
            .trim()
            .to_string()
    };
    assert_eq!(env("APPVISOR_APP"), "web");
    assert_eq!(env("APPVISOR_WORKER"), "0");
    assert_eq!(env("APPVISOR_GENERATION"), "1");
    // The SDK unsets LISTEN_* once it has taken the fds (like libsystemd), so look
    // at the environment the worker was started with.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(vars.contains(&format!("LISTEN_PID={pid}")), "{vars:?}");
    assert!(vars.contains(&"LISTEN_FDS=1".to_string()));
    assert!(vars.contains(&"LISTEN_FDNAMES=web".to_string()));
    assert!(vars.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")));
    // The worker's own log file got its output, and `status` shows its STATUS=.
    wait_until(Duration::from_secs(5), "the worker's log line", || {
        sv.app_log("web")
            .iter()
            .any(|l| l.contains(&format!("[{pid}]")))
            .then_some(())
    });
}

#[test]
fn cli_without_a_running_supervisor_says_how_to_start_one() {
    let sb = Sandbox::new("norun");
    sb.config(&demo_app("web", free_port(), 1, ""));
    let out = sb.cli(&["status"]);
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("no supervisor is running") && msg.contains("appvisor run"),
        "{msg}"
    );
}

#[test]
fn stop_and_start_an_app_by_hand() {
    let sb = Sandbox::new("stopstart");
    let port = free_port();
    sb.config(&demo_app("web", port, 2, "[app.watch]\nenabled = false\n"));
    let sv = sb.start();
    let pids = sv.wait_running("web", 2);
    sv.ok(&["stop", "web"]);
    assert_eq!(sv.app("web")["state"], "stopped");
    assert!(pids.iter().all(|p| !alive(*p)));
    sv.ok(&["start", "web"]);
    sv.wait_running("web", 2);
    let events = sv.ok(&["events", "--app", "web"]);
    assert!(events.contains("stopped"), "{events}");
}

#[test]
fn events_follow_prints_each_restart_as_it_happens() {
    use std::io::BufRead;
    let sb = Sandbox::new("follow");
    let port = free_port();
    sb.config(&demo_app("web", port, 1, "[app.watch]\nenabled = false\n"));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let mut follow = std::process::Command::new(appvisor_bin())
        .args(["events", "--follow", "-n", "0"])
        .current_dir(&sb.dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Recycle until the follower has printed the recycle line (it subscribes
    // asynchronously, so the first one may precede its subscription).
    let line = wait_until(
        Duration::from_secs(30),
        "a recycle line from events --follow",
        || {
            sv.ok(&["recycle", "web"]);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while let Ok(l) =
                rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            {
                if l.contains(" recycle ") {
                    return Some(l);
                }
            }
            None
        },
    );
    assert!(
        line.contains("web recycle") && line.contains("manual recycle"),
        "{line}"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
}
