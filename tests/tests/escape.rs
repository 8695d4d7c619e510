//! Issue 12, defect 3: a worker that double-forks a `setsid` daemon must not leave
//! it behind. Each worker runs in its own cgroup v2, and every way a worker ends —
//! recycle, stop, supervisor shutdown, SIGKILL of the supervisor (through the
//! guard) — kills its whole cgroup.

use std::path::Path;
use std::time::Duration;

use appvisor_e2e::*;

fn escaper_app(sb: &Sandbox, port: u16) {
    sb.config(&format!(
        r#"
[[app]]
name = "esc"
command = ["{script}"]
listen = ["tcp://127.0.0.1:{port}"]
ready = "delay:50ms"
env = {{ ESCAPE_DIR = "{dir}" }}
[app.watch]
enabled = false
[app.recycle]
shutdown_timeout = "5s"
"#,
        script = worker_script("escaper.sh").display(),
        dir = sb.dir.display(),
    ));
}

/// The daemon left by worker `worker`, once it has written its pid.
fn daemon_of(dir: &Path, worker: i32) -> i32 {
    let file = dir.join(format!("daemon.{worker}"));
    let pid = wait_until(Duration::from_secs(10), "the daemon's pid file", || {
        std::fs::read_to_string(&file)
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    });
    assert!(alive(pid), "the daemon {pid} should run");
    pid
}

fn wait_gone(pid: i32, after: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("the escaped daemon {pid} to be gone after {after}"),
        || (!alive(pid)).then_some(()),
    );
}

/// Starts the escaper app and returns the supervisor, the worker and its daemon.
fn start(name: &str) -> (Sandbox, Supervisor, i32) {
    let sb = Sandbox::new(name);
    escaper_app(&sb, free_port());
    let sv = sb.start();
    let worker = sv.wait_running("esc", 1)[0];
    let daemon = daemon_of(&sb.dir, worker);
    (sb, sv, daemon)
}

#[test]
fn escaped_daemon_dies_with_its_worker_on_recycle() {
    let (sb, sv, daemon) = start("escrec");
    let first = sv.wait_running("esc", 1)[0];
    sv.ok(&["recycle", "esc"]);
    wait_gone(daemon, "recycle");
    // The new generation's daemon is alive: only the retired worker's cgroup died.
    let second = sv.wait_running("esc", 1)[0];
    assert_ne!(first, second);
    let next = daemon_of(&sb.dir, second);
    assert!(alive(next));
    assert!(sv.stop().success());
    wait_gone(next, "shutdown");
}

#[test]
fn escaped_daemon_dies_on_stop() {
    let (_sb, sv, daemon) = start("escstop");
    sv.ok(&["stop", "esc"]);
    wait_gone(daemon, "stop");
    assert!(sv.stop().success());
}

#[test]
fn escaped_daemon_dies_on_shutdown() {
    let (_sb, sv, daemon) = start("escdown");
    assert!(sv.stop().success());
    wait_gone(daemon, "shutdown");
}

#[test]
fn escaped_daemon_dies_when_the_supervisor_is_killed() {
    let (_sb, sv, daemon) = start("esckill");
    sv.kill9();
    wait_gone(daemon, "SIGKILL of the supervisor");
}

#[test]
fn status_names_the_worker_cgroup() {
    let (_sb, sv, _daemon) = start("esccg");
    let app = sv.app("esc");
    let w = &app["workers"][0];
    let cgroup = w["cgroup"].as_str().expect("a cgroup in status");
    let procs = std::fs::read_to_string(Path::new(cgroup).join("cgroup.procs")).unwrap();
    let pid = w["pid"].as_i64().unwrap().to_string();
    assert!(procs.lines().any(|l| l == pid), "{pid} not in {procs}");
    assert!(sv.stop().success());
    wait_until(Duration::from_secs(10), "the cgroup removed", || {
        (!Path::new(cgroup).exists()).then_some(())
    });
}

/// Where no cgroup can be made (`APPVISOR_CGROUPS=off` forces it), the escaped
/// daemon cannot be killed, but it is named in a warning instead of silently left.
#[test]
fn without_cgroups_the_escaped_daemon_is_named() {
    let sb = Sandbox::new("escnocg");
    escaper_app(&sb, free_port());
    let sv = sb.start_with_env(&[("APPVISOR_CGROUPS", "off")]);
    let worker = sv.wait_running("esc", 1)[0];
    let daemon = daemon_of(&sb.dir, worker);
    assert!(sv.app("esc")["workers"][0]["cgroup"].is_null());
    sv.ok(&["recycle", "esc"]);
    let line = wait_until(
        Duration::from_secs(10),
        "a warning naming the daemon",
        || {
            sv.stderr()
                .lines()
                .find(|l| l.contains("outlive it") && l.contains(&daemon.to_string()))
                .map(str::to_string)
        },
    );
    assert!(line.contains(&worker.to_string()), "{line}");
    let next = daemon_of(&sb.dir, sv.wait_running("esc", 1)[0]);
    assert!(sv.stop().success());
    assert!(sv_stderr_says_no_cgroup(&sb));
    // Nothing else kills them: clean up after ourselves.
    for pid in [daemon, next] {
        // SAFETY: kill with pids this test's workers started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn sv_stderr_says_no_cgroup(sb: &Sandbox) -> bool {
    std::fs::read_to_string(sb.path("supervisor.err"))
        .unwrap_or_default()
        .contains("Workers get no cgroup of their own")
}

/// Without cgroups, the escaped daemon is named where a user looks: an `escaped`
/// event (worker, pid, the daemon's pid) and `appvisor status` (JSON and text)
/// while it runs; once it is gone, `status` stops naming it.
#[test]
fn without_cgroups_an_event_and_status_name_the_escaped_pids() {
    let sb = Sandbox::new("escevent");
    escaper_app(&sb, free_port());
    let sv = sb.start_with_env(&[("APPVISOR_CGROUPS", "off")]);
    let worker = sv.wait_running("esc", 1)[0];
    let daemon = daemon_of(&sb.dir, worker);
    sv.ok(&["recycle", "esc"]);
    let event = sv.wait_event("an escaped event", Duration::from_secs(10), |e| {
        e["kind"] == "escaped" && e["app"] == "esc" && e["pid"] == worker
    });
    let detail = event["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("pids {daemon}")), "{detail}");
    assert_eq!(sv.app("esc")["escaped"], serde_json::json!([daemon]));
    let text = sv.ok(&["status"]);
    assert!(
        text.contains(&format!("escaped: pids {daemon} ")),
        "status does not name {daemon}:\n{text}"
    );

    // Gone (here: killed by hand, as the event says to): no longer listed.
    // SAFETY: kill with a pid this test's worker started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(10),
        "status to drop the dead pid",
        || sv.app("esc")["escaped"].is_null().then_some(()),
    );
    let next = daemon_of(&sb.dir, sv.wait_running("esc", 1)[0]);
    assert!(sv.stop().success());
    // SAFETY: as above.
    unsafe { libc::kill(next, libc::SIGKILL) };
}
