//! Sessions over TLS (`rediss://`): a real `redis-server` with TLS, a CA and a
//! server certificate made here with the `openssl` command, and the CA handed to
//! the client the standard OpenSSL way (`SSL_CERT_FILE`).

use crate::harness::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appvisor_worker::sessions::{SessionMode, Sessions};

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for localhost / 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    run(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=appvisor-test-ca",
        ],
    );
    run(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

struct TlsRedis {
    child: Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> TlsRedis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            "srv.crt",
            "--tls-key-file",
            "srv.key",
            "--tls-ca-cert-file",
            "ca.crt",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                "ca.crt",
                "-p",
                &port.to_string(),
                "ping",
            ])
            .current_dir(dir)
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS redis-server did not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis { child, port }
}

/// Set for the child process of [`sessions_round_trip_over_rediss`].
const CHILD: &str = "APPVISOR_TLS_TEST_CHILD";

/// The test runs in a process of its own: it sets `SSL_CERT_FILE` (OpenSSL reads
/// the trusted CAs from the environment), and changing the environment is only
/// sound while no other thread reads it — this binary runs many tests at once.
/// So it re-runs this binary with a filter that selects only
/// [`rediss_round_trip_in_own_process`], and that process runs just it.
#[test]
fn sessions_round_trip_over_rediss() {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "tls::rediss_round_trip_in_own_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the TLS round trip failed in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Not a test by itself: the body of [`sessions_round_trip_over_rediss`]'s child
/// process. Without the environment variable it returns at once.
#[tokio::test]
async fn rediss_round_trip_in_own_process() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("appvisor-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let server = start(&dir);
    let url = format!("rediss://localhost:{}", server.port);

    // Not yet trusted (the system's CAs do not include ours): refused.
    let untrusted = Sessions::new(Some(&url), SessionMode::Store, Duration::from_secs(60)).await;
    if let Ok(s) = untrusted {
        let probe = s.new_session().unwrap();
        assert!(
            s.load(probe.id()).await.is_err(),
            "an untrusted certificate was accepted"
        );
    }

    // OpenSSL reads the trusted CAs from here; this process runs only this test.
    std::env::set_var("SSL_CERT_FILE", dir.join("ca.crt"));

    let writer = Sessions::new(Some(&url), SessionMode::Store, Duration::from_secs(60))
        .await
        .unwrap();
    let mut session = writer.new_session().unwrap();
    session.incr("counter", 7).unwrap();
    writer.commit(&mut session).await.unwrap();

    // Another instance (the next generation) reads it back over TLS.
    let reader = Sessions::new(Some(&url), SessionMode::Store, Duration::from_secs(60))
        .await
        .unwrap();
    let loaded = reader.load(session.id()).await.unwrap();
    assert_eq!(loaded.get::<i64>("counter").unwrap(), Some(7));

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
