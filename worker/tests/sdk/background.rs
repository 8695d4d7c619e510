//! The background pieces on tokio's paused clock: the request reporter's
//! rate rule, the watchdog's pause/resume, and the shutdown latch.
//!
//! Time here is tokio's virtual time, so the assertions on it check the
//! rules (what is sent when), not the machine's speed.

use std::time::Duration;

use appvisor_worker::requests::REPORT_INTERVAL;
use appvisor_worker::{Notifier, RequestCounter, Shutdown, ShutdownCause, Watchdog};
use tokio::net::UnixDatagram;
use tokio::time::Instant;

use crate::harness::TempDir;

fn notify_pair(dir: &TempDir) -> (Notifier, UnixDatagram) {
    let path = dir.path().join("notify.sock");
    let receiver = UnixDatagram::bind(&path).expect("bind");
    let notifier = Notifier::to_socket(path.to_str().expect("utf-8")).expect("notifier");
    (notifier, receiver)
}

async fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).await.expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Whatever is queued right now, without waiting.
fn queued(socket: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = socket.try_recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn request_reports_are_immediate_after_quiet_then_coalesced() {
    let dir = TempDir::new("reporter");
    let (notifier, receiver) = notify_pair(&dir);
    let counter = RequestCounter::new();
    let _reporter = counter.spawn_reporter(notifier, REPORT_INTERVAL);

    // Nothing is sent while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queued(&receiver), Vec::<String>::new());

    // The first request after a quiet spell is reported at once.
    let start = Instant::now();
    counter.increment();
    assert_eq!(recv(&receiver).await, "X_APPVISOR_REQUESTS=1");
    assert_eq!(start.elapsed(), Duration::ZERO);

    // A burst within the interval becomes one trailing report, one interval later.
    for _ in 0..50 {
        counter.increment();
    }
    assert_eq!(recv(&receiver).await, "X_APPVISOR_REQUESTS=51");
    assert_eq!(start.elapsed(), REPORT_INTERVAL);
    tokio::time::sleep(REPORT_INTERVAL * 3).await;
    assert_eq!(
        queued(&receiver),
        Vec::<String>::new(),
        "no duplicate reports"
    );

    // After another quiet spell, immediate again.
    let again = Instant::now();
    counter.increment();
    assert_eq!(recv(&receiver).await, "X_APPVISOR_REQUESTS=52");
    assert_eq!(again.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn watchdog_pings_every_half_interval_and_can_be_paused() {
    let dir = TempDir::new("watchdog");
    let (notifier, receiver) = notify_pair(&dir);
    let start = Instant::now();
    let watchdog = Watchdog::spawn(notifier, Duration::from_millis(200));
    for expected_ms in [0, 100, 200] {
        assert_eq!(recv(&receiver).await, "WATCHDOG=1");
        assert_eq!(start.elapsed(), Duration::from_millis(expected_ms));
    }

    watchdog.pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        queued(&receiver),
        Vec::<String>::new(),
        "no pings while paused"
    );

    watchdog.resume();
    assert_eq!(recv(&receiver).await, "WATCHDOG=1");

    watchdog.stop();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let _ = queued(&receiver);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        queued(&receiver),
        Vec::<String>::new(),
        "no pings once stopped"
    );
    watchdog.resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(queued(&receiver), Vec::<String>::new(), "stop is final");
}

#[tokio::test]
async fn shutdown_latch_wakes_every_clone_and_keeps_the_first_cause() {
    let shutdown = Shutdown::new();
    assert!(!shutdown.is_triggered());
    let waiter = {
        let clone = shutdown.clone();
        tokio::spawn(async move { clone.wait().await })
    };
    shutdown.trigger();
    assert_eq!(waiter.await.expect("join"), ShutdownCause::Requested);
    // A wait that starts after the trigger resolves at once.
    assert_eq!(shutdown.clone().wait().await, ShutdownCause::Requested);
    assert_eq!(shutdown.cause(), Some(ShutdownCause::Requested));
}

#[tokio::test]
async fn a_signal_sets_the_latch() {
    // SIGUSR2: a stop signal here would race with other tests' processes;
    // this one is ours alone.
    let shutdown = Shutdown::on_signals(&[libc::SIGUSR2]).expect("install handler");
    // SAFETY: raise(3) sends a signal to this process, whose handler tokio
    // installed just above.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    assert_eq!(shutdown.wait().await, ShutdownCause::Signal("SIGUSR2"));
}

#[test]
fn notify_socket_values_are_checked() {
    assert!(Notifier::to_socket("relative/path").is_err());
    let err = Notifier::to_socket("relative/path")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NOTIFY_SOCKET") && err.contains("absolute path"),
        "{err}"
    );
    assert!(Notifier::to_socket("@abstract-name")
        .expect("abstract")
        .is_enabled());
    assert!(!Notifier::disabled().is_enabled());
    assert!(
        Notifier::disabled().send("READY=1").is_ok(),
        "a disabled notifier is a no-op"
    );
}
