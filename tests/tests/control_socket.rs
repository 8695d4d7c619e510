//! Issue 12: the control socket bounds what a client may hold. A connection that
//! sends no request line is answered with an error and hung up on after
//! `control::REQUEST_TIMEOUT` (10 s), so silent clients cannot pin the
//! connection slots; `events --follow`, once asked for, streams for as long as
//! it likes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use appvisor_e2e::*;

#[test]
fn a_silent_client_is_hung_up_on_and_a_follower_is_not() {
    let sb = Sandbox::new("ctl-timeout");
    let port = free_port();
    sb.config(&format!(
        "[[app]]\nname = \"web\"\ncommand = [\"{}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n",
        example_bin("demo").display()
    ));
    let sv = sb.start();
    sv.wait_running("web", 1);
    let sock = sb.path(".appvisor/control.sock");

    let mut follower = UnixStream::connect(&sock).unwrap();
    follower.write_all(b"{\"cmd\":\"follow\"}\n").unwrap();
    follower
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut follower = BufReader::new(follower);
    let mut first = String::new();
    follower.read_line(&mut first).unwrap();
    assert!(first.contains("\"ok\":true"), "{first}");

    let connected = Instant::now();
    let mut silent = UnixStream::connect(&sock).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    silent
        .read_to_string(&mut answer)
        .expect("the silent connection is closed by the supervisor");
    let waited = connected.elapsed();
    assert!(
        answer.contains("no request line within 10 s"),
        "the hang-up says why: {answer:?}"
    );
    assert!(
        waited >= Duration::from_secs(9),
        "hung up on after {waited:?}, before its time"
    );

    // The follower, connected longer than the timeout, still gets events.
    sv.ok(&["recycle", "web"]);
    loop {
        let mut line = String::new();
        let n = follower
            .read_line(&mut line)
            .expect("the follower still reads events");
        assert!(n > 0, "the follower was hung up on");
        if line.contains("\"kind\":\"recycle\"") {
            break;
        }
    }
    sv.stop();
}
