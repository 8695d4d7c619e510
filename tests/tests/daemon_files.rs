//! Issue 12 (hardening), the daemon's own files: the state dir's lock, its modes,
//! the event log under failure, and the CLI when the config is broken — each
//! provoked for real with the real binary.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use appvisor_e2e::*;

fn demo_app(name: &str, port: u16) -> String {
    format!(
        r#"
[[app]]
name = "{name}"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{port}"]
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    )
}

/// `appvisor run`, which is expected to refuse: its exit status and stderr. One that
/// starts after all is killed after 20 s (and the test fails on its status).
fn run_refused(sb: &Sandbox) -> (std::process::ExitStatus, String) {
    let err_path = sb.path("refused.err");
    let mut child = Command::new(appvisor_bin())
        .arg("run")
        .current_dir(&sb.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, std::fs::read_to_string(err_path).unwrap())
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Fault "a second supervisor": two `appvisor run` on one state dir started at the
/// same instant. Exactly one runs; the other refuses at once naming its pid, and
/// the survivor's control socket, notify sockets and workers are unharmed.
#[test]
fn two_supervisors_started_at_once_one_refuses_naming_the_other() {
    let sb = Sandbox::new("twosv");
    let port = free_port();
    sb.config(&demo_app("web", port));
    let spawn = |n: u32| {
        Command::new(appvisor_bin())
            .arg("run")
            .current_dir(&sb.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sb.path(&format!("sv{n}.err"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut a = spawn(1);
    let mut b = spawn(2);
    // The loser exits on its own, quickly.
    let (loser, winner, loser_err) = wait_until(Duration::from_secs(20), "one to refuse", || {
        if let Some(st) = a.try_wait().unwrap() {
            return Some((st, 2, "sv1.err"));
        }
        b.try_wait().unwrap().map(|st| (st, 1, "sv2.err"))
    });
    let (mut winner_child, mut other) = if winner == 1 { (a, b) } else { (b, a) };
    assert!(!loser.success(), "the second supervisor must refuse");
    let err = std::fs::read_to_string(sb.path(loser_err)).unwrap();
    let winner_pid = winner_child.id();
    assert!(
        err.contains("another supervisor") && err.contains(&format!("pid {winner_pid}")),
        "the refusal names the running supervisor's pid {winner_pid}: {err}"
    );
    assert!(
        winner_child.try_wait().unwrap().is_none(),
        "the first supervisor keeps running"
    );
    let _ = other.try_wait();

    // The survivor is whole: its control socket answers, its worker gets READY
    // through its own notify socket and serves. (The loser may refuse before the
    // winner has bound its control socket.)
    wait_until(Duration::from_secs(20), "the control socket", || {
        std::os::unix::net::UnixStream::connect(sb.path(".appvisor/control.sock")).ok()
    });
    let out = sb.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pid"].as_u64(), Some(winner_pid as u64));
    wait_until(Duration::from_secs(30), "web ready", || {
        let out = sb.cli(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["apps"][0]["state"] == "running" && s["apps"][0]["workers"][0]["state"] == "ready")
            .then_some(())
    });
    let out = sb.cli(&["recycle", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_get(port, "/").unwrap().0, 200);
    assert_eq!(
        std::fs::read_to_string(sb.path(".appvisor/lock"))
            .unwrap()
            .trim(),
        winner_pid.to_string()
    );

    // SAFETY: kill with a pid we own.
    unsafe { libc::kill(winner_pid as i32, libc::SIGTERM) };
    let st = wait_until(Duration::from_secs(30), "the supervisor to stop", || {
        winner_child.try_wait().unwrap()
    });
    assert!(st.success());
}

/// Defect 10: a state dir others can write is fixed to 0700, with a warning.
#[test]
fn an_open_state_dir_is_tightened_with_a_warning() {
    let sb = Sandbox::new("opendir");
    sb.config(&demo_app("web", free_port()));
    let state = sb.path(".appvisor");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sv = sb.start();
    sv.wait_running("web", 1);
    assert_eq!(mode(&state), 0o700);
    let err = sv.stderr();
    assert!(
        err.contains("had mode 777") && err.contains("set it to 700"),
        "{err}"
    );
    assert!(sv.stop().success());
}

/// Defect 10: a symlinked `events.jsonl` is not followed: its target is untouched
/// and the supervisor refuses with a clear error.
#[test]
fn a_symlinked_event_log_is_not_followed() {
    let sb = Sandbox::new("evlink");
    sb.config(&demo_app("web", free_port()));
    let state = sb.path(".appvisor");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = sb.write("victim.txt", "precious\n");
    std::os::unix::fs::symlink(&target, state.join("events.jsonl")).unwrap();
    let (status, err) = run_refused(&sb);
    assert!(!status.success(), "started through a symlink: {err}");
    assert!(
        err.contains("events.jsonl") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

/// Defect 13, the reader: `appvisor events` reports the lines it cannot parse (how
/// many, which) instead of skipping them silently, and still shows the others.
#[test]
fn events_reports_torn_lines_by_number() {
    let sb = Sandbox::new("torn");
    sb.config(&demo_app("web", free_port()));
    let good = r#"{"time":"2026-01-02T03:04:05.678Z","app":"web","kind":"started"}"#;
    let torn = r#"{"time":"2026-01-02T03:04:05.700Z","app":"web","ki"#;
    sb.write(
        ".appvisor/events.jsonl",
        &format!("{good}\n{torn}{good}\n{good}\n"),
    );
    let out = sb.cli(&["events", "--json"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stderr.contains("1 line of") && stderr.contains("(line 2)"),
        "{stderr}"
    );
}

/// Defect 13, the writer: on a full disk an event is written whole or not at all
/// (no torn line for the next one to be glued to), the error is logged once, not
/// once per event, and writing recovers by itself when space returns.
#[test]
fn a_full_disk_tears_no_event_line_and_writing_recovers() {
    let sb = Sandbox::new("evfull");
    let valid = demo_app("web", free_port());
    sb.config(&valid);
    let Some(fs) = Tmpfs::mount(&sb.path(".appvisor"), "512k") else {
        return;
    };
    let sv = sb.start();
    sv.wait_running("web", 1);
    let filler = fs.fill();
    // Each rejected reload is one event with a long detail: enough of them to use
    // up the slack left in the event log's last page, and to fail many times.
    sb.config(&format!("{valid}\nbogus_key = 1\n"));
    for _ in 0..40 {
        let _ = sv.cli(&["reload"]);
    }
    let read = |sv: &Supervisor| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(sv.dir.join(".appvisor/events.jsonl")).unwrap();
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("line {} is torn ({e}): {l:?}", i + 1))
            })
            .collect()
    };
    let during = read(&sv);
    wait_until(Duration::from_secs(10), "the error in the log", || {
        sv.stderr()
            .contains("Cannot append to the event log")
            .then_some(())
    });
    let errors = sv
        .stderr()
        .matches("Cannot append to the event log")
        .count();
    assert_eq!(errors, 1, "one error, not one per event:\n{}", sv.stderr());

    std::fs::remove_file(filler).unwrap();
    let _ = sv.cli(&["reload"]);
    wait_until(Duration::from_secs(10), "an event written again", || {
        (read(&sv).len() > during.len()).then_some(())
    });
    // The supervisor's log goes through a queue: wait for the line.
    wait_until(Duration::from_secs(10), "the recovery in the log", || {
        sv.stderr().contains("is written again").then_some(())
    });
    sb.config(&valid);
    assert!(sv.stop().success());
    drop(fs);
}

/// `appvisor run` in `sb` whose state dir is `state` (relative to the sandbox):
/// returns once its control socket answers. Killed (SIGTERM, then SIGKILL) on drop.
struct Running(std::process::Child);

impl Running {
    fn start(sb: &Sandbox, state: &str) -> Running {
        let mut cmd = Command::new(appvisor_bin());
        cmd.arg("run");
        Running::start_with(sb, state, cmd)
    }

    /// Like [`Running::start`] with a command of one's own (a wrapper such as
    /// `prlimit` that execs `appvisor run`, so its pid is the supervisor's).
    fn start_with(sb: &Sandbox, state: &str, mut cmd: Command) -> Running {
        let child = cmd
            .current_dir(&sb.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sb.path("supervisor.err")).unwrap())
            .spawn()
            .unwrap();
        let mut r = Running(child);
        let sock = sb.path(state).join("control.sock");
        wait_until(Duration::from_secs(20), "the control socket", || {
            if let Some(st) = r.0.try_wait().unwrap() {
                panic!(
                    "appvisor run exited ({st}): {}",
                    std::fs::read_to_string(sb.path("supervisor.err")).unwrap_or_default()
                );
            }
            std::os::unix::net::UnixStream::connect(&sock).ok()
        });
        r
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Defect 11: the config of a running supervisor broken (a custom state dir, then
/// an unknown key, then a syntax error): `status` still reaches it and warns that
/// the config is invalid.
#[test]
fn status_works_while_the_config_is_invalid() {
    let sb = Sandbox::new("badcfg");
    let valid = format!(
        "[supervisor]\nstate_dir = \"state\"\n{}",
        demo_app("web", free_port())
    );
    sb.config(&valid);
    let sv = Running::start(&sb, "state");
    for broken in [
        format!("{valid}\nprocesess = 2\n"),
        format!("{valid}\n[[app]]\nname = \"x\ncommand = [\n"),
    ] {
        sb.config(&broken);
        let out = sb.cli(&["status", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "status failed: {stderr}");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["pid"].as_u64(), Some(sv.pid() as u64));
        assert!(
            stderr.contains("the config file is invalid")
                && stderr.contains(&format!("pid {}", sv.pid()))
                && stderr.contains("appvisor.toml:"),
            "{stderr}"
        );
    }
    sb.config(&valid);
}

/// The soft and hard "Max open files" of a process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut n = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

/// Defect 4 (supervisor part): started with a soft open-file limit of 256 under a
/// hard one of 4096, the supervisor raises its soft limit to 4096 (logged at
/// debug); its workers keep the 256 they would have had.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let sb = Sandbox::new("nofile");
    sb.config(&demo_app("web", free_port()));
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:4096")
        .arg(appvisor_bin())
        .arg("run")
        .env("RUST_LOG", "appvisor=debug");
    let sv = Running::start_with(&sb, ".appvisor", cmd);
    assert_eq!(nofile_of(sv.pid()), (4096, 4096));
    let worker = wait_until(Duration::from_secs(30), "the worker", || {
        let out = sb.cli(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (s["apps"][0]["workers"][0]["state"] == "ready")
            .then(|| s["apps"][0]["workers"][0]["pid"].as_u64().unwrap() as u32)
    });
    assert_eq!(nofile_of(worker), (256, 4096));
    let err = std::fs::read_to_string(sb.path("supervisor.err")).unwrap();
    assert!(err.contains("raised from 256 to 4096"), "{err}");
}

/// Control socket and per-worker notify sockets are 0600; a request line longer
/// than the limit gets an error reply and the connection is closed, and the
/// supervisor serves the next client as before.
#[test]
fn sockets_are_owner_only_and_a_huge_control_line_is_refused() {
    use std::io::{BufRead, Write};
    let sb = Sandbox::new("ctlsock");
    sb.config(&demo_app("web", free_port()));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let control = sb.path(".appvisor/control.sock");
    assert_eq!(mode(&control), 0o600);
    let notify: Vec<_> = std::fs::read_dir(sb.path(".appvisor/run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(!notify.is_empty(), "no notify socket in the run dir");
    for p in &notify {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }

    let stream = std::os::unix::net::UnixStream::connect(&control).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    // The server may hang up before all of it is written: errors are expected.
    let flood = std::thread::spawn(move || {
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..16 {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut reader = std::io::BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert!(
        reply.contains("\"ok\":false") && reply.contains("longer than 65536 bytes"),
        "{reply}"
    );
    let mut rest = String::new();
    assert_eq!(
        reader.read_line(&mut rest).unwrap(),
        0,
        "closed after: {rest}"
    );
    flood.join().unwrap();
    assert_eq!(sv.status()["apps"][0]["name"], "web");
}

/// Only the supervisor's user or root may use the control socket (`SO_PEERCRED`),
/// even when someone loosens the modes of the state dir and the socket.
#[test]
fn another_user_is_refused_by_the_control_socket() {
    if nix_euid() != 0 {
        eprintln!("skipped: needs root to run a client as another user");
        return;
    }
    let sb = Sandbox::new("peercred");
    sb.config(&demo_app("web", free_port()));
    let sv = sb.start();
    sv.wait_running("web", 1);
    std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(sb.path(".appvisor"), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(
        sb.path(".appvisor/control.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(appvisor_bin())
        .args(["status", "--json"])
        .current_dir(&sb.dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "another user was served: {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("uid 65534") && stderr.contains("refused"),
        "{stderr}"
    );
    wait_until(Duration::from_secs(10), "the refusal in the log", || {
        sv.stderr().contains("was refused").then_some(())
    });
    assert_eq!(sv.status()["apps"][0]["name"], "web");
}

fn nix_euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Fault "the state dir deleted" (defect 7): within seconds it is made again with
/// its mode, lock, event log and control socket; a warning event says so; the
/// supervisor keeps supervising (a recycle works, its new worker reports ready
/// through a notify socket in the new run dir).
#[test]
fn a_deleted_state_dir_is_made_again() {
    let sb = Sandbox::new("rmstate");
    let port = free_port();
    sb.config(&demo_app("web", port));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let state = sb.path(".appvisor");
    remove_tree(&state);
    wait_until(Duration::from_secs(10), "the control socket again", || {
        std::os::unix::net::UnixStream::connect(state.join("control.sock")).ok()
    });
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("control.sock")), 0o600);
    assert_eq!(
        std::fs::read_to_string(state.join("lock")).unwrap().trim(),
        sv.pid().to_string()
    );
    let recreated = sv.wait_event("state_dir_recreated", Duration::from_secs(10), |e| {
        e["kind"] == "state_dir_recreated"
    });
    assert!(
        recreated["detail"]
            .as_str()
            .unwrap()
            .contains("was deleted"),
        "{recreated}"
    );
    let out = sv.ok(&["recycle", "web"]);
    assert!(out.contains("recycled 1 worker"), "{out}");
    sv.wait_running("web", 1);
    assert_eq!(http_get(port, "/").unwrap().0, 200);
    // A second supervisor is still refused: the new lock is held.
    let (st, err) = run_refused(&sb);
    assert!(
        !st.success() && err.contains(&format!("pid {}", sv.pid())),
        "{err}"
    );
    assert!(sv.stop().success());
}

/// `redis-cli` on the app's store socket: its output, trimmed.
fn store_cli(sock: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The requests `status` counts for worker `pid` (reported through its notify
/// socket).
fn requests_of(sv: &Supervisor, pid: i32) -> u64 {
    sv.app("web")["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == pid)
        .and_then(|w| w["requests"].as_u64())
        .unwrap_or(0)
}

/// The state dir deleted, with the embedded store and a running worker: the
/// store's socket comes back (redis-cli reaches every key), its log is written
/// again from memory (a restarted supervisor loads every key, those from before
/// the deletion too), and the running worker's notify socket is bound again at
/// the path it was started with (its request counts still reach `status`).
#[test]
fn a_deleted_state_dir_gets_the_store_and_notify_sockets_back() {
    let sb = Sandbox::new("rmstore");
    let port = free_port();
    sb.config(&demo_app("web", port));
    let sv = sb.start();
    let worker = sv.wait_running("web", 1)[0];
    let state = sb.path(".appvisor");
    let store = state.join("store/web.sock");
    wait_until(Duration::from_secs(10), "the store's app socket", || {
        (store_cli(&store, &["PING"]) == "PONG").then_some(())
    });
    for i in 0..50 {
        assert_eq!(
            store_cli(&store, &["SET", &format!("k{i}"), "before"]),
            "OK"
        );
    }
    assert_eq!(http_get(port, "/").unwrap().0, 200);
    wait_until(Duration::from_secs(10), "the first request counted", || {
        (requests_of(&sv, worker) >= 1).then_some(())
    });

    remove_tree(&state);
    let recreated = sv.wait_event("state_dir_recreated", Duration::from_secs(10), |e| {
        e["kind"] == "state_dir_recreated"
    });
    let detail = recreated["detail"].as_str().unwrap();
    assert!(detail.contains("the store's socket"), "{detail}");
    assert!(detail.contains("the store's log"), "{detail}");
    assert!(
        detail.contains("1 running workers' notify sockets"),
        "{detail}"
    );

    // `status`, the store and the worker's notify socket all answer again.
    assert!(sv.ok(&["status"]).contains("web"));
    assert_eq!(store_cli(&store, &["GET", "k7"]), "before");
    assert_eq!(store_cli(&store, &["SET", "after", "1"]), "OK");
    let counted = requests_of(&sv, worker);
    for _ in 0..5 {
        assert_eq!(http_get(port, "/").unwrap().0, 200);
    }
    wait_until(
        Duration::from_secs(10),
        "requests after the deletion counted through the notify socket",
        || (requests_of(&sv, worker) >= counted + 5).then_some(()),
    );
    wait_until(Duration::from_secs(10), "the store's log again", || {
        state.join("store.aof").exists().then_some(())
    });
    let out = sv.ok(&["recycle", "web"]);
    assert!(out.contains("recycled 1 worker"), "{out}");
    assert!(sv.stop().success());

    // The next start loads every key from the rewritten log.
    let sv = sb.start();
    sv.wait_running("web", 1);
    wait_until(Duration::from_secs(10), "the store again", || {
        (store_cli(&store, &["PING"]) == "PONG").then_some(())
    });
    assert_eq!(store_cli(&store, &["DBSIZE"]), "51");
    assert_eq!(
        store_cli(&store, &["MGET", "k0", "k49", "after"]),
        "before\nbefore\n1"
    );
    assert!(sv.stop().success());
}
