//! The `appvisor` binary as its package sees it.
//!
//! Besides checking the CLI's first contact with a user, this integration test is
//! what makes `cargo test --workspace` build `target/<profile>/appvisor`: cargo
//! builds a package's binaries only for that package's integration tests, and the
//! end-to-end suite (`tests/`, another package) runs that binary. Keep at least one
//! integration test in this package.

use std::process::Command;

fn appvisor(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_appvisor"))
        .args(args)
        .output()
        .expect("run appvisor")
}

#[test]
fn version_names_the_package_version() {
    let out = appvisor(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("appvisor {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_subcommand() {
    let out = appvisor(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "run", "check", "status", "recycle", "start", "stop", "events", "top", "reload", "shutdown",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "`{sub}` missing from --help:\n{stdout}"
        );
    }
}

#[test]
fn a_mistyped_subcommand_is_refused_with_a_suggestion() {
    let out = appvisor(&["recylce"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("'recylce'"), "{stderr}");
    assert!(stderr.contains("'recycle'"), "{stderr}");
}

/// A fresh directory under /tmp for one test.
fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("av-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn appvisor_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_appvisor"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run appvisor")
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn init_writes_a_config_that_check_accepts_and_never_overwrites() {
    let dir = temp_dir("init");
    let listen = format!("tcp://127.0.0.1:{}", free_port());
    let out = appvisor_in(
        &dir,
        &[
            "init",
            "--listen",
            &listen,
            "--",
            "python3",
            "-m",
            "http.server",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(dir.join("appvisor.toml")).unwrap();
    assert!(
        text.starts_with("# appvisor.toml for `python3 -m http.server`"),
        "{text}"
    );
    assert!(
        text.contains("command = [\"python3\", \"-m\", \"http.server\"]"),
        "{text}"
    );
    let check = appvisor_in(&dir, &["check"]);
    assert!(
        check.status.success(),
        "check refused what init wrote: {check:?}"
    );
    let resolved = String::from_utf8_lossy(&check.stdout);
    assert!(resolved.contains("name = \"python3\""), "{resolved}");
    assert!(resolved.contains(&listen), "{resolved}");

    let again = appvisor_in(&dir, &["init", "--", "node", "server.js"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("appvisor.toml")).unwrap(),
        text,
        "the existing file is untouched"
    );
    // `-c` names another file.
    let other = appvisor_in(
        &dir,
        &["-c", "web.toml", "init", "--name", "web", "--", "node"],
    );
    assert!(other.status.success(), "{other:?}");
    assert!(std::fs::read_to_string(dir.join("web.toml"))
        .unwrap()
        .contains("name = \"web\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn init_without_a_command_is_refused_by_the_parser() {
    let out = appvisor(&["init"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("COMMAND"));
}

#[test]
fn completions_are_scripts_each_shell_reads() {
    let dir = temp_dir("compl");
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef appvisor"),
        ("fish", "complete -c appvisor"),
    ] {
        let out = appvisor(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {marker:?} missing");
        for sub in ["recycle", "status", "events", "init", "completions"] {
            assert!(script.contains(sub), "{shell}: subcommand {sub} missing");
        }
        if shell == "bash" {
            // Sourced by bash: a syntax check, then the function it defines.
            let path = dir.join("appvisor.bash");
            std::fs::write(&path, &script).unwrap();
            let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(syntax.status.success(), "{syntax:?}");
            let defined = Command::new("bash")
                .arg("-c")
                .arg(format!("source {} && complete -p appvisor", path.display()))
                .output()
                .unwrap();
            assert!(defined.status.success(), "{defined:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_subcommand_help_shows_an_example() {
    for sub in [
        "run",
        "check",
        "init",
        "status",
        "recycle",
        "start",
        "stop",
        "events",
        "top",
        "reload",
        "shutdown",
        "completions",
    ] {
        let out = appvisor(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}: {out:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let examples = help
            .split_once("Examples:\n")
            .unwrap_or_else(|| panic!("`appvisor {sub} --help` has no example:\n{help}"))
            .1;
        assert!(
            examples.contains(&format!("appvisor {sub}")),
            "{sub}: {examples}"
        );
    }
}
