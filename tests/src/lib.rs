//! The end-to-end harness: the real `appvisor` binary, real workers, real sockets.
//!
//! # Layout
//! - [`Sandbox`] — a fresh directory with an `appvisor.toml`; runs the CLI.
//! - [`Supervisor`] — a running `appvisor run`, killed (SIGKILL) if a test forgets it.
//! - [`load`] — HTTP clients that count failed requests and the slowest one.
//! - [`wait_until`] — every wait is on a condition with a deadline, never a sleep.
//!
//! # Theory of operation
//! Binaries come from the workspace's target dir (`cargo test --workspace` builds
//! the `appvisor` binary and the worker examples before running any test). Each
//! test gets its own directory under `/tmp` (short, so unix socket paths fit) and
//! its own ports, so tests run in parallel.

pub mod load;
pub mod recovery;
pub mod sessions;

use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `target/debug` (or whichever profile built this test).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    // target/debug/deps/e2e-xxxx → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn built(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build --workspace --all-targets` first)",
        path.display()
    );
    path
}

/// The `appvisor` binary.
pub fn appvisor_bin() -> PathBuf {
    built(target_dir().join("appvisor"))
}

/// A worker example of the `appvisor-worker` crate, e.g. `demo`.
pub fn example_bin(name: &str) -> PathBuf {
    built(target_dir().join("examples").join(name))
}

/// `tests/workers/<name>`: workers written without the SDK.
pub fn worker_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workers")
        .join(name)
}

/// A tmpfs mounted for one test (a small disk to fill), unmounted (lazily) when
/// dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` at `dir`; `None` (with the reason printed) where
    /// mounting is impossible — a failure when the environment variable `CI` is set
    /// (CI runs as root).
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        let msg = format!("cannot mount a tmpfs (root and CAP_SYS_ADMIN are needed): {why}");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipped: {msg}");
        None
    }

    /// Fills the file system to the last byte; returns the filler file.
    pub fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write(&chunk).map(|n| n > 0).unwrap_or(false) {}
        // Then byte by byte, until not even one fits in a page.
        while f.write(&[0u8]).map(|n| n > 0).unwrap_or(false) {}
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `rm -rf path` while a supervisor may be writing into it: a file created between
/// `remove_dir_all`'s listing and its `rmdir` gives ENOTEMPTY, so it is tried again
/// until the tree is gone (as a user's second `rm -rf` would).
pub fn remove_tree(path: &Path) {
    wait_until(
        Duration::from_secs(10),
        "the tree removed",
        || match std::fs::remove_dir_all(path) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => None,
            Err(e) => panic!("rm -rf {}: {e}", path.display()),
        },
    )
}

/// Polls `cond` every 10 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub fn wait_until<T>(timeout: Duration, what: &str, cond: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, cond)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`wait_until`] without the panic: `None` when `timeout` passed first.
pub fn poll_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Pids of the direct children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// One GET over a fresh connection; the body, or an error.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// `appvisor ARGS` run in `dir`, waited for.
pub fn run_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(appvisor_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run appvisor")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A directory for one test, removed when dropped (kept if the test panicked).
pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = PathBuf::from(format!(
            "/tmp/av-{}-{}-{}",
            name,
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn config(&self, toml: &str) -> PathBuf {
        self.write("appvisor.toml", toml)
    }

    /// Runs `appvisor ARGS` in the sandbox and waits for it.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.dir, args)
    }

    /// Starts `appvisor run` in the sandbox; returns once the control socket answers.
    /// Its stdout and stderr go to `supervisor.out` and `supervisor.err`.
    pub fn start(&self) -> Supervisor {
        self.start_with_env(&[])
    }

    /// [`Sandbox::start`] with extra environment variables for the supervisor.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Supervisor {
        let out = std::fs::File::create(self.dir.join("supervisor.out")).unwrap();
        let err = std::fs::File::create(self.dir.join("supervisor.err")).unwrap();
        self.start_with(
            Command::new(appvisor_bin())
                .envs(env.iter().copied())
                .stdout(out)
                .stderr(err),
        )
    }

    /// Starts `appvisor run` from `cmd` (a `Command` of [`appvisor_bin`] with its
    /// stdout and stderr already chosen: a pipe nobody reads, `/dev/full`, …);
    /// returns once the control socket answers.
    pub fn start_with(&self, cmd: &mut Command) -> Supervisor {
        let child = cmd
            .arg("run")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("start appvisor run");
        let mut sv = Supervisor {
            child: Some(child),
            dir: self.dir.clone(),
        };
        let sock = self.dir.join(".appvisor/control.sock");
        wait_until(Duration::from_secs(20), "the control socket", || {
            if let Some(status) = sv.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "appvisor run exited ({status}) before it was up:\n{}",
                    std::fs::read_to_string(self.dir.join("supervisor.err")).unwrap_or_default()
                );
            }
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ())
        });
        sv
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running `appvisor run`.
pub struct Supervisor {
    child: Option<Child>,
    pub dir: PathBuf,
}

impl Supervisor {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// `appvisor status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = Command::new(appvisor_bin())
            .args(["status", "--json"])
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The status of one app.
    pub fn app(&self, name: &str) -> Value {
        let s = self.status();
        s["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no app {name} in status: {s}"))
    }

    /// Pids of the app's workers in state `ready`.
    pub fn ready_pids(&self, app: &str) -> Vec<i32> {
        self.app(app)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .map(|w| w["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    /// Waits until `app` is `running` with `n` ready workers and nothing else.
    pub fn wait_running(&self, app: &str, n: usize) -> Vec<i32> {
        wait_until(
            Duration::from_secs(30),
            &format!("{app} running with {n} ready workers"),
            || {
                let a = self.app(app);
                let workers = a["workers"].as_array().unwrap();
                (a["state"] == "running"
                    && workers.len() == n
                    && workers.iter().all(|w| w["state"] == "ready"))
                .then(|| {
                    workers
                        .iter()
                        .map(|w| w["pid"].as_i64().unwrap() as i32)
                        .collect()
                })
            },
        )
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.dir.join(".appvisor/events.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("event line is JSON"))
            .collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// Waits for the first event matching `pred`.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(timeout, what, || {
            self.events().into_iter().find(|e| pred(e))
        })
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(&self.dir, args)
    }

    /// `appvisor ARGS`, killed and failed if it has not answered within `timeout`:
    /// for tests where a hang is the defect.
    pub fn cli_within(&self, timeout: Duration, args: &[&str]) -> Output {
        let mut child = Command::new(appvisor_bin())
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run appvisor");
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("appvisor {args:?} did not answer within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `appvisor ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "appvisor {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_until(Duration::from_secs(60), "the supervisor to exit", || {
            child.try_wait().unwrap()
        })
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The supervisor's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("supervisor.err")).unwrap_or_default()
    }

    /// Lines of the app's log file.
    pub fn app_log(&self, app: &str) -> Vec<String> {
        let f = std::fs::File::open(self.dir.join(format!(".appvisor/logs/{app}.log")));
        match f {
            Ok(f) => std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Graceful first, so workers are not left to the guard.
            // SAFETY: kill with a pid we own.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
