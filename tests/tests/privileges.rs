//! Issue 12, privileges: per-app `user`/`group`, rlimits and umask, applied in the
//! worker before exec; unknown users are config errors with their place. These
//! tests need root (the e2e suite runs as root); as another user they check only
//! what a non-root supervisor can do.

use appvisor_e2e::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `field` of /proc/<pid>/status, e.g. "Uid" → "65534\t65534\t65534\t65534".
fn proc_status(pid: i32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn demo_app(port: u16, extra: &str) -> String {
    format!(
        r#"
[[app]]
name = "web"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{port}"]
{extra}
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    )
}

#[test]
fn worker_drops_to_nobody_becomes_ready_and_recycles() {
    if !is_root() {
        return;
    }
    let sb = Sandbox::new("nobody");
    let port = free_port();
    sb.config(&demo_app(port, "user = \"nobody\""));
    let sv = sb.start();
    let first = sv.wait_running("web", 1)[0];
    // Ready through sd_notify: the notify socket is reachable as nobody.
    let uid = proc_status(first, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
    let gid = proc_status(first, "Gid");
    assert!(gid.split_whitespace().all(|g| g == "65534"), "Gid: {gid}");
    assert_eq!(proc_status(first, "Groups"), "65534");
    let (code, _) = http_get(port, "/").unwrap();
    assert_eq!(code, 200);

    let out = sv.ok(&["recycle", "web"]);
    assert!(out.contains("recycled 1 worker(s)"), "{out}");
    let second = sv.wait_running("web", 1)[0];
    assert_ne!(first, second);
    let uid = proc_status(second, "Uid");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "Uid: {uid}");
    // Its cgroup is delegated to it.
    if let Some(cg) = sv.app("web")["workers"][0]["cgroup"].as_str() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(cg).unwrap().uid(), 65534);
    }
    assert!(sv.stop().success());
    // Running as root without `user` is named, not refused; this app set one.
    assert!(!sv_stderr_names_root(&sb), "{}", sb.dir.display());
}

fn sv_stderr_names_root(sb: &Sandbox) -> bool {
    std::fs::read_to_string(sb.path("supervisor.err"))
        .unwrap_or_default()
        .contains("run as root")
}

#[test]
fn worker_left_as_root_is_named_once_in_a_warning() {
    if !is_root() {
        return;
    }
    let sb = Sandbox::new("asroot");
    sb.config(&demo_app(free_port(), ""));
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    assert!(proc_status(pid, "Uid").starts_with('0'));
    sv.ok(&["recycle", "web"]);
    sv.wait_running("web", 1);
    assert!(sv.stop().success());
    let err = std::fs::read_to_string(sb.path("supervisor.err")).unwrap();
    let named = err
        .lines()
        .filter(|l| l.contains("run as root") && l.contains("web"))
        .count();
    assert_eq!(named, 1, "{err}");
}

#[test]
fn rlimits_and_umask_apply_to_the_worker() {
    let sb = Sandbox::new("rlimits");
    sb.config(&demo_app(
        free_port(),
        "umask = \"027\"\n[app.rlimits]\nnofile = 777\ncore = 0\nnproc = 4321\n",
    ));
    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("Max open files"), ["777", "777"], "{limits}");
    assert_eq!(row("Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(row("Max processes"), ["4321", "4321"], "{limits}");
    assert_eq!(proc_status(pid, "Umask"), "0027");
    assert!(sv.stop().success());
}

#[test]
fn unknown_user_and_group_are_config_errors_with_their_place() {
    let sb = Sandbox::new("baduser");
    sb.config(
        "[[app]]\nname = \"web\"\ncommand = [\"/bin/true\"]\nuser = \"no-such-user-x\"\ngroup = \"no-such-group-x\"\numask = \"99\"\n",
    );
    for cmd in ["check", "run"] {
        let out = sb.cli(&[cmd]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted it");
        for e in [
            "appvisor.toml:4:8",
            "user",
            "unknown user \"no-such-user-x\"",
            "appvisor.toml:5:9",
            "unknown group \"no-such-group-x\"",
            "appvisor.toml:6:9",
            "umask",
        ] {
            assert!(stderr.contains(e), "{cmd}: {stderr:?} lacks {e:?}");
        }
    }
}
