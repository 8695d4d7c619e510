//! Starting a worker process the way a supervisor does, and talking to it.
//!
//! Everything here waits on a condition with a deadline ([`DEADLINE`]), never
//! on a fixed sleep: a slow machine makes the tests slower, not flaky.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "appvisor-worker-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the `demo` example (once per test run) and returns its path.
///
/// `cargo test --test sdk` alone does not build examples, so the test asks
/// cargo for it; when the example is up to date this is a no-op.
pub fn demo_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let test_exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/sdk-<hash> → target/<profile>
            let profile_dir = test_exe
                .parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "appvisor-worker",
                    "--example",
                    "demo",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build --example demo");
            assert!(
                status.success(),
                "cargo build --example demo failed: {status}"
            );
            let demo = profile_dir.join("examples").join("demo");
            assert!(demo.exists(), "{} missing after build", demo.display());
            demo
        })
        .clone()
}

/// The Python no-SDK worker's path.
pub fn python_worker_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workers/py_http.py")
}

/// The listening socket the test owns and passes to the worker as fd 3.
pub enum Passed {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Passed {
    pub fn tcp() -> Passed {
        Passed::Tcp(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
    }

    pub fn unix(dir: &TempDir) -> Passed {
        let path = dir.path().join("app.sock");
        Passed::Unix(UnixListener::bind(&path).expect("bind unix listener"), path)
    }

    pub fn target(&self) -> Target {
        match self {
            Passed::Tcp(l) => Target::Tcp(l.local_addr().expect("local_addr")),
            Passed::Unix(_, path) => Target::Unix(path.clone()),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Passed::Tcp(l) => l.as_raw_fd(),
            Passed::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

/// Where to send HTTP requests.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The test's end of `NOTIFY_SOCKET`.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// The value for `NOTIFY_SOCKET`.
    pub env_value: String,
    /// Every assignment received so far, in order.
    pub seen: Vec<String>,
}

impl NotifySocket {
    /// A socket at a path in `dir`.
    pub fn bind(dir: &TempDir) -> NotifySocket {
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket {
            socket,
            env_value: path.display().to_string(),
            seen: Vec::new(),
        }
    }

    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`).
    pub fn bind_abstract(label: &str) -> NotifySocket {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "appvisor-worker-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        NotifySocket {
            socket,
            env_value: format!("@{name}"),
            seen: Vec::new(),
        }
    }

    /// Receives until an assignment satisfies `matches`, and returns it.
    /// Assignments already seen count too.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        if let Some(hit) = self.seen.iter().find(|m| matches(m)) {
            return hit.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} on NOTIFY_SOCKET within {DEADLINE:?}; got {:?}",
                self.seen
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut hit = None;
                    for assignment in datagram.split('\n').filter(|a| !a.is_empty()) {
                        if hit.is_none() && matches(assignment) {
                            hit = Some(assignment.to_owned());
                        }
                        self.seen.push(assignment.to_owned());
                    }
                    if let Some(hit) = hit {
                        return hit;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv on notify socket: {e}"),
            }
        }
    }

    /// Waits for `X_APPVISOR_REQUESTS=n` with n ≥ `at_least`; returns n.
    pub fn wait_for_requests(&mut self, at_least: u64) -> u64 {
        let hit = self.wait_for(&format!("X_APPVISOR_REQUESTS>={at_least}"), |m| {
            requests_value(m).is_some_and(|n| n >= at_least)
        });
        requests_value(&hit).expect("matched above")
    }
}

fn requests_value(assignment: &str) -> Option<u64> {
    assignment
        .strip_prefix("X_APPVISOR_REQUESTS=")?
        .parse()
        .ok()
}

/// A worker process started with fd 3 and the supervisor's variables.
pub struct WorkerProcess {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// What to pass at fd 3.
pub enum Fd3<'a> {
    Listener(&'a Passed),
    File(&'a File),
}

impl WorkerProcess {
    /// Starts `program args…` with `fd3` at fd 3, `LISTEN_FDS=1`,
    /// `LISTEN_FDNAMES=http`, `LISTEN_PID` = its own pid, `NOTIFY_SOCKET` and
    /// `env`. It runs in its own process group so that the test can kill
    /// whatever it spawned.
    pub fn spawn(
        dir: &TempDir,
        program: &Path,
        args: &[&str],
        fd3: Fd3<'_>,
        notify: &NotifySocket,
        env: &[(&str, &str)],
    ) -> WorkerProcess {
        let fd = match fd3 {
            Fd3::Listener(passed) => passed.raw_fd(),
            Fd3::File(file) => file.as_raw_fd(),
        };
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut command = Command::new("sh");
        // LISTEN_PID must be the worker's pid, known only after fork: the
        // shell sets it to its own pid ($$) and exec keeps that pid.
        command
            .arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(program)
            .args(args)
            .env_remove("LISTEN_PID")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env("NOTIFY_SOCKET", &notify.env_value)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only dup2 and fcntl, which are async-signal-safe and do not
        // allocate. `fd` is open in the parent for the whole spawn, so it is
        // open in the child too.
        unsafe {
            command.pre_exec(move || {
                if fd == 3 {
                    // dup2(3, 3) would leave FD_CLOEXEC set: clear it by hand.
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn worker");
        WorkerProcess {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signo: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signo) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signo}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the worker's stdout has a line containing `needle`.
    pub fn wait_for_stdout(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(line) = out.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stdout within {DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on the process group we created for this child.
            unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// An HTTP/1.1 client connection that can read several responses in turn.
pub struct Connection {
    stream: Box<dyn Duplex>,
    buffered: Vec<u8>,
}

impl Connection {
    pub fn open(target: &Target) -> Connection {
        let stream: Box<dyn Duplex> = match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                Box::new(s)
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path).expect("connect unix");
                s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                Box::new(s)
            }
        };
        Connection {
            stream,
            buffered: Vec::new(),
        }
    }

    /// Sends `GET path` asking to keep the connection open.
    pub fn send_get(&mut self, path: &str) -> io::Result<()> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
    }

    /// Reads one response (Content-Length framed, or up to EOF).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buffered, b"\r\n\r\n") {
                break i;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} byte(s) of a response",
                        self.buffered.len()
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buffered[..head_end]).into_owned();
        self.buffered.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match length {
            Some(length) => {
                while self.buffered.len() < length {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "body cut short",
                        ));
                    }
                }
            }
            None => while self.fill()? > 0 {},
        }
        let body_len = length.unwrap_or(self.buffered.len());
        let body = String::from_utf8_lossy(&self.buffered[..body_len]).into_owned();
        self.buffered.drain(..body_len);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Whether the server has closed the connection (reads EOF, nothing buffered).
    pub fn is_closed_by_server(&mut self) -> io::Result<bool> {
        Ok(self.buffered.is_empty() && self.fill()? == 0)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        self.buffered.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection, with `Connection: close`.
pub fn get(target: &Target, path: &str) -> Response {
    let mut conn = Connection::open(target);
    write!(
        conn.stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    conn.read_response()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}
