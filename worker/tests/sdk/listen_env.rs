//! The pure `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` parser.

use appvisor_worker::activation::{ListenVars, PassedFd};
use appvisor_worker::WorkerError;

const OUR_PID: u32 = 4242;

fn vars(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> ListenVars {
    ListenVars {
        pid: pid.map(str::to_owned),
        fds: fds.map(str::to_owned),
        names: names.map(str::to_owned),
    }
}

fn fd(fd: i32, name: Option<&str>) -> PassedFd {
    PassedFd {
        fd,
        name: name.map(str::to_owned),
    }
}

#[test]
fn no_variables_means_no_fds() {
    assert_eq!(vars(None, None, None).parse(OUR_PID).unwrap(), vec![]);
}

#[test]
fn fds_start_at_three_and_take_their_names() {
    let parsed = vars(Some("4242"), Some("2"), Some("http:admin"))
        .parse(OUR_PID)
        .unwrap();
    assert_eq!(parsed, vec![fd(3, Some("http")), fd(4, Some("admin"))]);
}

#[test]
fn names_are_optional() {
    let parsed = vars(Some("4242"), Some("3"), None).parse(OUR_PID).unwrap();
    assert_eq!(parsed, vec![fd(3, None), fd(4, None), fd(5, None)]);
}

#[test]
fn an_empty_name_is_no_name() {
    let parsed = vars(Some("4242"), Some("2"), Some(":admin"))
        .parse(OUR_PID)
        .unwrap();
    assert_eq!(parsed, vec![fd(3, None), fd(4, Some("admin"))]);
}

#[test]
fn another_pid_means_the_fds_are_not_ours() {
    // A child that inherited its parent's variables must not take its fds.
    let parsed = vars(Some("1"), Some("2"), Some("http:admin"))
        .parse(OUR_PID)
        .unwrap();
    assert_eq!(parsed, vec![]);
}

#[test]
fn a_pid_without_a_count_means_no_fds() {
    assert_eq!(
        vars(Some("4242"), None, None).parse(OUR_PID).unwrap(),
        vec![]
    );
}

#[test]
fn zero_fds_with_empty_names_is_fine() {
    assert_eq!(
        vars(Some("4242"), Some("0"), Some(""))
            .parse(OUR_PID)
            .unwrap(),
        vec![]
    );
}

#[test]
fn name_count_mismatch_is_an_error_naming_both_counts() {
    let err = vars(Some("4242"), Some("2"), Some("http"))
        .parse(OUR_PID)
        .unwrap_err();
    assert!(
        matches!(err, WorkerError::FdNamesMismatch { names: 1, fds: 2 }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("LISTEN_FDNAMES has 1 name(s)") && message.contains("LISTEN_FDS says 2"),
        "{message}"
    );

    let err = vars(Some("4242"), Some("1"), Some("a:b:c"))
        .parse(OUR_PID)
        .unwrap_err();
    assert!(
        matches!(err, WorkerError::FdNamesMismatch { names: 3, fds: 1 }),
        "{err:?}"
    );
}

#[test]
fn garbage_values_are_errors_naming_the_variable() {
    for (v, var) in [
        (vars(Some("abc"), Some("1"), None), "LISTEN_PID"),
        (vars(Some("0"), Some("1"), None), "LISTEN_PID"),
        (vars(Some("4242"), Some("-1"), None), "LISTEN_FDS"),
        (vars(Some("4242"), Some("one"), None), "LISTEN_FDS"),
        (vars(Some("4242"), Some("99999999999"), None), "LISTEN_FDS"),
    ] {
        let err = v.parse(OUR_PID).unwrap_err();
        assert!(err.to_string().contains(var), "{v:?}: {err}");
    }
}

#[test]
fn a_count_overflowing_fd_numbers_is_refused() {
    let err = vars(Some("4242"), Some(&i32::MAX.to_string()), None)
        .parse(OUR_PID)
        .unwrap_err();
    assert!(
        matches!(
            err,
            WorkerError::InvalidEnv {
                var: "LISTEN_FDS",
                ..
            }
        ),
        "{err:?}"
    );
}
