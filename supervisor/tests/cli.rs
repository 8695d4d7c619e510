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
