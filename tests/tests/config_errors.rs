//! Bad config files: each gives a message naming the place (line:column or the
//! field) and what to do, a non-zero exit, and no panic — through the real CLI.

use appvisor_e2e::*;

/// Runs `appvisor check` and `appvisor run` on `toml`; both must fail cleanly with
/// every `expect` fragment in the message.
fn rejects(name: &str, toml: &str, expect: &[&str]) {
    let sb = Sandbox::new(name);
    sb.config(toml);
    for cmd in ["check", "run"] {
        let out = sb.cli(&[cmd]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: `appvisor {cmd}` accepted it"
        );
        assert_ne!(
            out.status.code(),
            Some(101),
            "{name}: `appvisor {cmd}` panicked: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        for e in expect {
            assert!(
                stderr.contains(e),
                "{name}: `appvisor {cmd}` said {stderr:?}, expected {e:?}"
            );
        }
    }
}

const OK_APP: &str = "[[app]]\nname = \"web\"\ncommand = [\"/bin/true\"]\n";

#[test]
fn toml_syntax_error_names_line_and_column() {
    rejects(
        "syntax",
        "[[app]]\nname = \"web\ncommand = [\"x\"]\n",
        &["appvisor.toml:2:"],
    );
}

#[test]
fn unknown_key_is_an_error_with_a_suggestion() {
    rejects(
        "unknown",
        &format!("{OK_APP}procesess = 2\n"),
        &["appvisor.toml:4:1", "procesess", "processes"],
    );
}

#[test]
fn bad_duration_names_the_field() {
    rejects(
        "duration",
        &format!("{OK_APP}[app.recycle]\nstartup_timeout = \"9x\"\n"),
        &["appvisor.toml:5:", "recycle.startup_timeout", "90s"],
    );
}

#[test]
fn bad_size_names_the_field() {
    rejects(
        "size",
        &format!("{OK_APP}[app.recycle]\nprivate_memory = \"lots\"\n"),
        &["appvisor.toml:5:", "private_memory"],
    );
}

#[test]
fn empty_command_is_refused() {
    rejects(
        "emptycmd",
        "[[app]]\nname = \"web\"\ncommand = []\n",
        &["appvisor.toml:3:", "command"],
    );
}

#[test]
fn command_as_a_string_explains_the_argv_form() {
    rejects(
        "strcmd",
        "[[app]]\nname = \"web\"\ncommand = \"python app.py\"\n",
        &["appvisor.toml:3:", "command", "["],
    );
}

#[test]
fn duplicate_app_name_points_at_the_second() {
    rejects(
        "dup",
        &format!("{OK_APP}{OK_APP}"),
        &["appvisor.toml:5:", "web"],
    );
}

#[test]
fn bad_listen_address_is_explained() {
    rejects(
        "listen",
        &format!("{OK_APP}listen = [\"tcp://127.0.0.1:99999\"]\n"),
        &["appvisor.toml:4:", "listen"],
    );
}

#[test]
fn zero_processes_is_refused() {
    rejects(
        "procs",
        &format!("{OK_APP}processes = 0\n"),
        &["appvisor.toml:4:", "processes"],
    );
}

#[test]
fn unknown_signal_is_refused() {
    rejects(
        "signal",
        &format!("{OK_APP}[app.recycle]\nstop_signal = \"SIGFOO\"\n"),
        &["appvisor.toml:5:", "stop_signal"],
    );
}

#[test]
fn unknown_ready_kind_is_refused() {
    rejects(
        "ready",
        &format!("{OK_APP}ready = \"tcp:80\"\n"),
        &["appvisor.toml:4:", "ready"],
    );
}

#[test]
fn missing_config_file_names_the_path() {
    let sb = Sandbox::new("missing");
    let out = sb.cli(&["check", "nope.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

#[test]
fn port_in_use_names_the_app_and_the_address() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    rejects(
        "inuse",
        &format!("{OK_APP}listen = [\"tcp://127.0.0.1:{port}\"]\n"),
        &["\"web\"", &format!("127.0.0.1:{port}"), "already in use"],
    );
}

#[test]
fn a_valid_config_prints_every_default() {
    let sb = Sandbox::new("valid");
    sb.config(OK_APP);
    let out = sb.cli(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "startup_timeout = \"1m30s\"",
        "rapid_fail_max_crashes = 5",
        "overlapped = true",
    ] {
        assert!(text.contains(key), "missing {key} in\n{text}");
    }
}

#[test]
fn the_cli_shows_the_offending_line_with_a_caret_under_the_column() {
    let sb = Sandbox::new("caret");
    sb.config(&format!("{OK_APP}processes = \"two\"\n"));
    for cmd in ["check", "run"] {
        let out = sb.cli(&[cmd]);
        assert!(!out.status.success(), "`appvisor {cmd}` accepted it");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Today's one-line message first, then the line and a caret under column 13.
        assert!(
            stderr.starts_with("appvisor: appvisor.toml:4:13: app \"web\" field processes: "),
            "`appvisor {cmd}` said {stderr:?}"
        );
        assert!(
            stderr.contains("\n  |\n4 | processes = \"two\"\n  |             ^^^^^\n"),
            "`appvisor {cmd}` said {stderr:?}"
        );
    }
}

/// Issue 12, defect 12: `check` passed a state dir too long for the unix sockets
/// `run` makes in it; both now refuse it, naming the field and what to do.
#[test]
fn a_state_dir_too_long_for_a_unix_socket_is_refused_by_check_too() {
    let long = "s".repeat(90);
    rejects(
        "longsd",
        &format!("[supervisor]\nstate_dir = \"{long}\"\n{OK_APP}"),
        &[
            "appvisor.toml",
            "[supervisor] state_dir",
            "too long",
            "choose a shorter `state_dir`",
        ],
    );
}

/// Issue 12, defect 12: a `unix:` listen path in a directory that does not exist.
#[test]
fn a_unix_listen_path_in_a_missing_directory_is_refused_by_check_too() {
    rejects(
        "nodir",
        &format!("{OK_APP}listen = [\"unix:nodir/app.sock\"]\n"),
        &[
            "appvisor.toml",
            "app \"web\"",
            "nodir",
            "does not exist",
            "mkdir -p",
        ],
    );
}
