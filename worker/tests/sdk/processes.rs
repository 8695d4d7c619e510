//! Real worker processes under a test that plays the supervisor.

use std::fs::File;
use std::io::Write;
use std::net::TcpStream;

use crate::harness::{
    demo_path, get, python_worker_path, Connection, Fd3, NotifySocket, Passed, TempDir,
    WorkerProcess,
};

#[test]
fn demo_gets_ready_serves_reports_requests_and_finishes_a_slow_request_on_sigterm() {
    let dir = TempDir::new("drain");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    let mut worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[
            ("APPVISOR_APP", "shop"),
            ("APPVISOR_GENERATION", "7"),
            ("APPVISOR_WORKER", "1"),
        ],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    worker.wait_for_stdout("demo: listening on 127.0.0.1:");

    let index = get(&target, "/");
    assert_eq!(index.status, 200, "{index:?}");
    let expected = format!(
        "app=shop pid={} generation=7 worker=1 requests=1",
        worker.pid()
    );
    assert_eq!(index.body.trim(), expected);
    assert_eq!(notify.wait_for_requests(1), 1);

    // The SDK took the fds and removed the variables, so children cannot
    // mistake the sockets for their own.
    assert_eq!(get(&target, "/env/LISTEN_FDS").status, 404);
    assert_eq!(get(&target, "/env/LISTEN_PID").status, 404);

    let slow_target = target.clone();
    let slow = std::thread::spawn(move || get(&slow_target, "/slow?ms=1500"));
    // The fourth request is the slow one: once counted, it is in flight.
    notify.wait_for_requests(4);
    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", |m| m == "STOPPING=1");

    // A client that connects now is not accepted by the draining worker; it
    // waits in the listen backlog, which the next generation (here: the test)
    // takes over.
    let late = TcpStream::connect(match &target {
        crate::harness::Target::Tcp(addr) => addr,
        crate::harness::Target::Unix(_) => unreachable!(),
    })
    .expect("connect during drain");

    let slow = slow.join().expect("slow request thread");
    assert_eq!(slow.status, 200, "{slow:?}");
    assert!(slow.body.starts_with("slept 1500 ms"), "{slow:?}");
    assert_eq!(slow.header("connection"), Some("close"));

    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
    worker.wait_for_stdout("demo: drained after SIGTERM");

    let Passed::Tcp(listener) = &passed else {
        unreachable!()
    };
    listener.set_nonblocking(true).expect("nonblocking");
    let (_, peer) = listener
        .accept()
        .expect("the late connection waits in the backlog");
    assert_eq!(peer, late.local_addr().expect("local addr"));
}

#[test]
fn a_keep_alive_request_during_the_grace_is_answered_with_connection_close() {
    let dir = TempDir::new("keepalive");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    // A long grace so the test's second request surely falls inside it.
    let mut worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[("DEMO_IDLE_GRACE_MS", "20000")],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");

    let mut conn = Connection::open(&target);
    conn.send_get("/").expect("send");
    let first = conn.read_response().expect("first response");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("connection"),
        None,
        "keep-alive before the drain: {first:?}"
    );

    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", |m| m == "STOPPING=1");

    conn.send_get("/healthz")
        .expect("send on the kept-alive connection");
    let second = conn
        .read_response()
        .expect("a late request on an idle connection is answered, not reset");
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"), "{second:?}");
    assert!(
        conn.is_closed_by_server().expect("read after close"),
        "server closes after Connection: close"
    );

    // That was the last connection: the worker exits without waiting out the grace.
    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_grace() {
    let dir = TempDir::new("idle");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    let mut worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[("DEMO_IDLE_GRACE_MS", "50")],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");

    let mut conn = Connection::open(&target);
    conn.send_get("/").expect("send");
    assert_eq!(conn.read_response().expect("response").status, 200);

    worker.signal(libc::SIGTERM);
    // A clean close (EOF), not a reset, and no stray bytes.
    assert!(
        conn.is_closed_by_server().expect("clean EOF"),
        "idle connection closed"
    );
    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
    worker.wait_for_stdout("1 connection(s) open at drain");
}

#[test]
fn demo_serves_a_unix_socket_and_notifies_an_abstract_socket() {
    let dir = TempDir::new("unix");
    let passed = Passed::unix(&dir);
    let target = passed.target();
    let mut notify = NotifySocket::bind_abstract("unix");
    let mut worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    worker.wait_for_stdout("demo: listening on unix:");

    let response = get(&target, "/healthz");
    assert_eq!((response.status, response.body.as_str()), (200, "ok\n"));

    worker.signal(libc::SIGINT);
    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
    worker.wait_for_stdout("demo: drained after SIGINT");
}

#[test]
fn demo_pings_the_watchdog_when_asked_and_hides_the_variables_from_children() {
    let dir = TempDir::new("watchdog");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    let _worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[("WATCHDOG_USEC", "100000")],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    notify.wait_for("WATCHDOG=1", |m| m == "WATCHDOG=1");
    assert_eq!(get(&target, "/env/WATCHDOG_USEC").status, 404);
    assert_eq!(get(&target, "/watchdog/pause").status, 200);
    assert_eq!(get(&target, "/watchdog/resume").status, 200);
}

#[test]
fn demo_ignoring_sigterm_keeps_serving_and_has_a_grandchild() {
    let dir = TempDir::new("stubborn");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    let worker = WorkerProcess::spawn(
        &dir,
        &demo_path(),
        &[],
        Fd3::Listener(&passed),
        &notify,
        &[("DEMO_IGNORE_SIGTERM", "1")],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    let grandchild = worker.wait_for_stdout("demo: grandchild pid");
    let grandchild: i32 = grandchild
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("grandchild pid");

    worker.signal(libc::SIGTERM);
    worker.wait_for_stdout("demo: ignoring SIGTERM");
    assert_eq!(
        get(&target, "/healthz").status,
        200,
        "still serving after SIGTERM"
    );
    // SAFETY: signal 0 only checks that the pid exists.
    assert_eq!(unsafe { libc::kill(grandchild, 0) }, 0, "grandchild alive");
    // Dropping `worker` kills its process group, grandchild included.
}

#[test]
fn a_passed_fd_that_is_not_a_listening_socket_is_a_clear_error() {
    let dir = TempDir::new("badfd");
    let path = dir.path().join("not-a-socket");
    File::create(&path)
        .and_then(|mut f| f.write_all(b"x"))
        .expect("file");
    let file = File::open(&path).expect("open");
    let notify = NotifySocket::bind(&dir);
    let mut worker = WorkerProcess::spawn(&dir, &demo_path(), &[], Fd3::File(&file), &notify, &[]);
    let status = worker.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", worker.logs());
    let logs = worker.logs();
    assert!(
        logs.contains(
            "inherited fd 3 (LISTEN_FDS) is not a listening stream socket (not a socket)"
        ),
        "{logs}"
    );
}

#[test]
fn python_worker_without_the_sdk_serves_and_drains() {
    let dir = TempDir::new("python");
    let passed = Passed::tcp();
    let target = passed.target();
    let mut notify = NotifySocket::bind(&dir);
    let script = python_worker_path();
    let mut worker = WorkerProcess::spawn(
        &dir,
        "python3".as_ref(),
        &[script.to_str().expect("utf-8 path")],
        Fd3::Listener(&passed),
        &notify,
        &[("APPVISOR_GENERATION", "3")],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    let index = get(&target, "/");
    assert_eq!(index.status, 200, "{index:?}");
    assert!(
        index
            .body
            .starts_with(&format!("pid={} generation=3", worker.pid())),
        "{index:?}"
    );

    let slow_target = target.clone();
    let slow = std::thread::spawn(move || get(&slow_target, "/slow?ms=1000"));
    // The worker logs when /slow starts: from then on it is in flight.
    worker.wait_for_stdout("py_http: slow request started");
    worker.signal(libc::SIGTERM);
    notify.wait_for("STOPPING=1", |m| m == "STOPPING=1");
    let slow = slow.join().expect("slow thread");
    assert_eq!(slow.status, 200, "{slow:?}");
    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
    worker.wait_for_stdout("py_http: drained");
}

#[test]
fn python_worker_serves_a_unix_socket() {
    let dir = TempDir::new("python-unix");
    let passed = Passed::unix(&dir);
    let target = passed.target();
    let mut notify = NotifySocket::bind_abstract("python-unix");
    let script = python_worker_path();
    let mut worker = WorkerProcess::spawn(
        &dir,
        "python3".as_ref(),
        &[script.to_str().expect("utf-8 path")],
        Fd3::Listener(&passed),
        &notify,
        &[],
    );
    notify.wait_for("READY=1", |m| m == "READY=1");
    let response = get(&target, "/healthz");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "ok\n"),
        "{}",
        worker.logs()
    );
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit();
    assert!(status.success(), "exit {status}\n{}", worker.logs());
}
