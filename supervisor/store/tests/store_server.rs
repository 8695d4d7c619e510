//! The embedded session store, driven by the clients users run: `redis-cli`,
//! redis-py, the Rust `redis` crate, and raw sockets for what no client sends.
//!
//! Each test starts the store in-process on its own thread and current-thread
//! runtime (as the supervisor runs it) on a socket in a fresh temporary directory.
//! The kill -9 tests run the store in a child process: this test binary re-run
//! with a filter that selects `persistence::child_store_process`.
//!
//! Python tests need the `redis` package (`pip install redis`); they fail, loudly,
//! without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use appvisor_config::Persist;
use appvisor_store::{self as store, AppCredential, StoreError, StoreHandle, StoreOptions};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short: unix socket paths are limited to 107 bytes.
        let path = std::env::temp_dir().join(format!("avs-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SHOP: (&str, &str) = ("shop", "shop-token-1");
const BLOG: (&str, &str) = ("blog", "blog-token-2");

fn creds(list: &[(&str, &str)]) -> Vec<AppCredential> {
    list.iter()
        .map(|(app, password)| AppCredential {
            app: (*app).into(),
            password: (*password).into(),
        })
        .collect()
}

fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        unix_path: dir.join("store.sock"),
        app_socket_dir: Some(dir.join("apps")),
        tcp: None,
        aof_path: None,
        persist: Persist::No,
        max_memory: None,
        max_value_size: 1 << 20,
        max_clients: 10_000,
        apps: creds(&[SHOP, BLOG]),
        rewrite_min_size: store::DEFAULT_REWRITE_MIN_SIZE,
        max_output: store::DEFAULT_MAX_OUTPUT,
        max_anonymous: store::DEFAULT_MAX_ANONYMOUS,
        auth_timeout: store::DEFAULT_AUTH_TIMEOUT,
    }
}

fn persistent_options(dir: &Path, persist: Persist) -> StoreOptions {
    StoreOptions {
        aof_path: Some(dir.join("store.aof")),
        persist,
        ..options(dir)
    }
}

/// A store running on its own thread, stopped (and its log synced) when dropped.
struct Server {
    handle: StoreHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(opts: StoreOptions) -> Server {
        Server::try_start(opts).expect("store starts")
    }

    fn try_start(opts: StoreOptions) -> Result<Server, StoreError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let shutdown = async move {
                    let _ = stop_rx.await;
                };
                match store::serve(opts, shutdown).await {
                    Ok(handle) => {
                        let _ = handle_tx.send(Ok(handle.clone()));
                        handle.closed().await;
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            });
        });
        match handle_rx.recv().expect("store thread reports") {
            Ok(handle) => Ok(Server {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    fn sock(&self) -> PathBuf {
        self.handle.unix_path().to_owned()
    }

    /// Shuts down and waits until the log is synced.
    fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("store thread");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Runs `cmd` with `input` on stdin, failing the test if it outlives `limit`.
fn run(mut cmd: Command, input: &[u8], limit: Duration) -> (String, String, bool) {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = feeder.join();
    (
        out_reader.join().expect("stdout"),
        err_reader.join().expect("stderr"),
        status.success(),
    )
}

fn cli_command(sock: &Path, auth: Option<(&str, &str)>) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-s").arg(sock).arg("--no-auth-warning");
    if let Some((user, pass)) = auth {
        cmd.args(["--user", user, "--pass", pass]);
    }
    cmd
}

/// `redis-cli -s SOCK [--user U --pass P] ARGS…`, raw output, trimmed.
fn cli(sock: &Path, auth: Option<(&str, &str)>, args: &[&str]) -> String {
    let mut cmd = cli_command(sock, auth);
    cmd.args(args);
    let (out, err, _) = run(cmd, b"", Duration::from_secs(20));
    format!(
        "{}{}",
        out.trim_end_matches('\n'),
        err.trim_end_matches('\n')
    )
}

/// Commands fed to one redis-cli connection on stdin, one per line.
fn cli_script(sock: &Path, auth: Option<(&str, &str)>, script: &str) -> Vec<String> {
    let (out, err, _) = run(
        cli_command(sock, auth),
        script.as_bytes(),
        Duration::from_secs(20),
    );
    assert!(err.is_empty(), "redis-cli stderr: {err}");
    out.lines().map(str::to_owned).collect()
}

fn python(script: &str, env: &[(&str, &str)]) -> String {
    let (_, err, ok) = run(
        {
            let mut c = Command::new("python3");
            c.args(["-c", "import redis"]);
            c
        },
        b"",
        Duration::from_secs(30),
    );
    assert!(
        ok,
        "python3 cannot import the 'redis' package ({err}). Install it: `pip install redis` \
         (.ci/run must install it too); these tests check the store against redis-py."
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, err, ok) = run(cmd, b"", Duration::from_secs(60));
    assert!(ok, "python failed:\n--- stdout\n{out}\n--- stderr\n{err}");
    out
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A hand-driven RESP connection.
struct Raw {
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let stream = UnixStream::connect(sock).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            reader: BufReader::new(stream),
        }
    }

    fn login(sock: &Path, (user, pass): (&str, &str)) -> Raw {
        let mut raw = Raw::connect(sock);
        assert_eq!(raw.call(&["AUTH", user, pass]), "+OK");
        raw
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    fn send(&mut self, args: &[&str]) {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            frame.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        self.send_bytes(&frame);
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    /// One reply rendered on one line: `+OK`, `:1`, `$bar`, `$nil`, `*[… …]`,
    /// `%{k v …}`, `>[…]`, `-ERR …`, `_`.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed while waiting for a reply");
        let line = line.trim_end_matches("\r\n").to_owned();
        let (kind, rest) = line.split_at(1);
        match kind {
            "$" | "=" => {
                let len: i64 = rest.parse().expect("bulk length");
                if len < 0 {
                    return "$nil".into();
                }
                let mut buf = vec![0; len as usize + 2];
                self.reader.read_exact(&mut buf).expect("bulk");
                format!("${}", String::from_utf8_lossy(&buf[..len as usize]))
            }
            "*" | ">" | "~" | "%" => {
                let n: i64 = rest.parse().expect("aggregate length");
                if n < 0 {
                    return "*nil".into();
                }
                let n = if kind == "%" { 2 * n } else { n };
                let items: Vec<String> = (0..n).map(|_| self.reply()).collect();
                let (open, close) = if kind == "%" { ("{", "}") } else { ("[", "]") };
                format!("{kind}{open}{}{close}", items.join(" "))
            }
            _ => line,
        }
    }

    /// Whether the server closed the connection (EOF, or a reset because it
    /// closed with our bytes unread) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

// ---------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------

mod clients {
    use super::*;

    #[test]
    fn redis_cli_string_commands_and_expiry() {
        let dir = TempDir::new("cli");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        let c = |args: &[&str]| cli(&sock, Some(SHOP), args);
        assert_eq!(c(&["PING"]), "PONG");
        assert_eq!(c(&["SET", "greeting", "hello world"]), "OK");
        assert_eq!(c(&["GET", "greeting"]), "hello world");
        assert_eq!(c(&["SET", "greeting", "x", "NX"]), "");
        assert_eq!(c(&["SET", "greeting", "hi", "XX", "GET"]), "hello world");
        assert_eq!(c(&["TYPE", "greeting"]), "string");
        assert_eq!(c(&["TYPE", "nothing"]), "none");
        assert_eq!(c(&["EXPIRE", "greeting", "100"]), "1");
        let ttl: i64 = c(&["TTL", "greeting"]).parse().unwrap();
        assert!((99..=100).contains(&ttl), "ttl {ttl}");
        assert_eq!(c(&["EXPIRE", "greeting", "50", "GT"]), "0");
        assert_eq!(c(&["EXPIRE", "greeting", "50", "LT"]), "1");
        assert_eq!(c(&["PERSIST", "greeting"]), "1");
        assert_eq!(c(&["TTL", "greeting"]), "-1");
        assert_eq!(c(&["TTL", "nothing"]), "-2");
        assert_eq!(c(&["SET", "session", "data", "PX", "600000"]), "OK");
        let pttl: i64 = c(&["PTTL", "session"]).parse().unwrap();
        assert!(pttl > 0 && pttl <= 600_000, "pttl {pttl}");
        assert_eq!(c(&["PEXPIRE", "session", "100"]), "1");
        wait_until("the session to expire", Duration::from_secs(5), || {
            c(&["EXISTS", "session"]) == "0"
        });
        assert_eq!(c(&["GET", "session"]), "");
        assert_eq!(c(&["MSET", "a", "1", "b", "2", "c", "3"]), "OK");
        assert_eq!(c(&["MGET", "a", "nope", "c"]), "1\n\n3");
        assert_eq!(c(&["EXISTS", "a", "b", "a", "nope"]), "3");
        assert_eq!(c(&["GETEX", "a", "EX", "1000"]), "1");
        assert!(c(&["TTL", "a"]).parse::<i64>().unwrap() > 990);
        assert_eq!(c(&["GETEX", "a", "PERSIST"]), "1");
        assert_eq!(c(&["TTL", "a"]), "-1");
        assert_eq!(c(&["GETDEL", "b"]), "2");
        assert_eq!(c(&["GET", "b"]), "");
        assert_eq!(c(&["DEL", "a", "b", "c"]), "2");
        assert_eq!(c(&["UNLINK", "greeting"]), "1");
        assert_eq!(c(&["DBSIZE"]), "0");
        assert_eq!(c(&["SELECT", "0"]), "OK");
        assert_eq!(c(&["SELECT", "1"]), "ERR DB index is out of range");
        assert_eq!(
            c(&["SET", "k", "v", "EX", "0"]),
            "ERR invalid expire time in 'set' command"
        );
        assert_eq!(
            c(&["SET", "k", "v", "EX", "ten"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            c(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            c(&["HSET", "h", "f", "v"]),
            "ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "
        );
        assert!(c(&["INFO", "memory"]).contains("used_memory:"));
        assert_eq!(c(&["CONFIG", "GET", "save"]), "save");
        assert_eq!(c(&["CONFIG", "GET", "appendonly"]), "appendonly\nno");
        assert_eq!(c(&["CLIENT", "SETNAME", "tester"]), "OK");
        assert_eq!(c(&["ECHO", "hi"]), "hi");
        assert_eq!(c(&["SETEX", "sx", "100", "v"]), "OK");
        assert_eq!(c(&["SETNX", "sx", "w"]), "0");
        assert_eq!(c(&["FLUSHDB"]), "OK");
    }

    #[test]
    fn redis_cli_scan_pipe_and_transactions() {
        let dir = TempDir::new("pipe");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        // 2000 pipelined SETs through `redis-cli --pipe` (one write, replies streamed).
        let mut bulk = String::new();
        for i in 0..2000 {
            bulk.push_str(&format!("SET sess:{i} value-{i}\r\n"));
        }
        bulk.push_str("SET other 1\r\n");
        let mut cmd = cli_command(&sock, Some(SHOP));
        cmd.arg("--pipe");
        let (out, err, ok) = run(cmd, bulk.as_bytes(), Duration::from_secs(30));
        assert!(ok, "redis-cli --pipe: {out}{err}");
        assert!(out.contains("errors: 0, replies: 2001"), "{out}");
        assert_eq!(cli(&sock, Some(SHOP), &["DBSIZE"]), "2001");
        // SCAN with MATCH and COUNT returns every matching key exactly once here.
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_owned();
        loop {
            let out = cli(
                &sock,
                Some(SHOP),
                &[
                    "SCAN", &cursor, "MATCH", "sess:*", "COUNT", "100", "TYPE", "string",
                ],
            );
            let mut lines = out.lines();
            cursor = lines.next().unwrap().to_owned();
            for key in lines {
                assert!(key.starts_with("sess:"), "{key}");
                assert!(seen.insert(key.to_owned()), "{key} returned twice");
            }
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 2000);
        // `redis-cli --scan` drives the same cursor loop.
        let scanned = cli(&sock, Some(SHOP), &["--scan", "--pattern", "sess:1*"]);
        assert_eq!(scanned.lines().count(), 1111);

        // MULTI/EXEC on one connection.
        let out = cli_script(&sock, Some(SHOP), "MULTI\nSET t 1\nGET t\nEXEC\nGET t\n");
        assert_eq!(out, ["OK", "QUEUED", "QUEUED", "OK", "1", "1"]);
        // A queueing error aborts the whole transaction.
        // (redis-cli follows each error with a blank line; no reply here is nil.)
        let out = cli_script(&sock, Some(SHOP), "MULTI\nSET t 2\nGET\nEXEC\nGET t\n");
        let out: Vec<&String> = out.iter().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            out,
            [
                "OK",
                "QUEUED",
                "ERR wrong number of arguments for 'get' command",
                "EXECABORT Transaction discarded because of previous errors.",
                "1"
            ]
        );
        let out = cli_script(&sock, Some(SHOP), "MULTI\nSET t 3\nDISCARD\nGET t\nEXEC\n");
        let out: Vec<&String> = out.iter().filter(|l| !l.is_empty()).collect();
        assert_eq!(out, ["OK", "QUEUED", "OK", "1", "ERR EXEC without MULTI"]);
    }

    #[test]
    fn watch_aborts_on_change_and_on_expiry() {
        let dir = TempDir::new("watch");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        let mut a = Raw::login(&sock, SHOP);
        let mut b = Raw::login(&sock, SHOP);
        a.call(&["SET", "counter", "1"]);
        assert_eq!(a.call(&["WATCH", "counter"]), "+OK");
        assert_eq!(b.call(&["SET", "counter", "2"]), "+OK");
        assert_eq!(a.call(&["MULTI"]), "+OK");
        assert_eq!(a.call(&["SET", "counter", "from-a"]), "+QUEUED");
        assert_eq!(a.call(&["EXEC"]), "*nil");
        assert_eq!(a.call(&["GET", "counter"]), "$2");
        // Untouched: EXEC runs.
        assert_eq!(a.call(&["WATCH", "counter"]), "+OK");
        assert_eq!(a.call(&["MULTI"]), "+OK");
        assert_eq!(a.call(&["SET", "counter", "3"]), "+QUEUED");
        assert_eq!(a.call(&["EXEC"]), "*[+OK]");
        // An expiry counts as a change, even if nobody read the key since.
        // (A second is far more than WATCH needs, so the key is alive when watched.)
        a.call(&["SET", "lease", "x", "PX", "1000"]);
        assert_eq!(a.call(&["WATCH", "lease"]), "+OK");
        let deadline = Instant::now() + Duration::from_millis(1050);
        wait_until(
            "the lease's deadline to pass",
            Duration::from_secs(5),
            || Instant::now() > deadline,
        );
        assert_eq!(a.call(&["MULTI"]), "+OK");
        assert_eq!(a.call(&["SET", "lease", "renewed"]), "+QUEUED");
        assert_eq!(a.call(&["EXEC"]), "*nil");
        // DEL of a watched key and FLUSHDB abort too.
        a.call(&["SET", "k", "v"]);
        assert_eq!(a.call(&["WATCH", "k"]), "+OK");
        assert_eq!(b.call(&["FLUSHDB"]), "+OK");
        assert_eq!(a.call(&["MULTI"]), "+OK");
        assert_eq!(a.call(&["EXEC"]), "*nil");
        assert_eq!(a.call(&["MULTI"]), "+OK");
        assert_eq!(
            a.call(&["WATCH", "k"]),
            "-ERR WATCH inside MULTI is not allowed"
        );
        assert_eq!(a.call(&["MULTI"]), "-ERR MULTI calls can not be nested");
    }

    #[test]
    fn hello_3_pushes_and_resp3_types() {
        let dir = TempDir::new("resp3");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        let mut raw = Raw::connect(&sock);
        assert_eq!(
            raw.call(&["HELLO", "3"]),
            "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
        );
        let hello = raw.call(&["HELLO", "3", "AUTH", SHOP.0, SHOP.1, "SETNAME", "r3"]);
        assert!(
            hello.starts_with("%{$server $redis $version $7."),
            "{hello}"
        );
        assert!(hello.contains("$proto :3"), "{hello}");
        assert_eq!(raw.call(&["GET", "missing"]), "_");
        assert_eq!(raw.call(&["CLIENT", "GETNAME"]), "$r3");
        assert_eq!(
            raw.call(&["CONFIG", "GET", "appendonly"]),
            "%{$appendonly $no}"
        );
        assert_eq!(raw.call(&["SUBSCRIBE", "news"]), ">[$subscribe $news :1]");
        // In RESP3 a subscribed connection can still run commands.
        assert_eq!(raw.call(&["SET", "k", "v"]), "+OK");
        let mut publisher = Raw::login(&sock, SHOP);
        assert_eq!(publisher.call(&["PUBLISH", "news", "hello"]), ":1");
        assert_eq!(raw.reply(), ">[$message $news $hello]");
        assert_eq!(
            raw.call(&["PSUBSCRIBE", "__keyevent@0__:*"]),
            ">[$psubscribe $__keyevent@0__:* :2]"
        );
        assert_eq!(raw.call(&["SET", "short", "v", "PX", "50"]), "+OK");
        assert_eq!(
            raw.reply(),
            ">[$pmessage $__keyevent@0__:* $__keyevent@0__:expired $short]"
        );
        assert_eq!(
            raw.call(&["HELLO", "4"]),
            "-NOPROTO unsupported protocol version"
        );
        // RESP2 subscribed mode refuses other commands, as Redis does.
        let mut r2 = Raw::login(&sock, SHOP);
        assert_eq!(r2.call(&["SUBSCRIBE", "a", "b"]), "*[$subscribe $a :1]");
        assert_eq!(r2.reply(), "*[$subscribe $b :2]");
        assert!(r2
            .call(&["GET", "k"])
            .starts_with("-ERR Can't execute 'get'"));
        assert_eq!(r2.call(&["PING"]), "*[$pong $]");
        // Without arguments: every channel, in no particular order (as in Redis).
        let first = r2.call(&["UNSUBSCRIBE"]);
        let second = r2.reply();
        assert!(
            first.ends_with(":1]") && second.ends_with(":0]"),
            "{first} {second}"
        );
        let name = |reply: &str| reply.split(' ').nth(1).unwrap_or_default().to_owned();
        let mut channels = [name(&first), name(&second)];
        channels.sort();
        assert_eq!(channels, ["$a", "$b"]);
        assert_eq!(r2.call(&["GET", "k"]), "$v");
    }

    #[test]
    fn inline_commands_like_telnet() {
        let dir = TempDir::new("inline");
        let server = Server::start(options(dir.path()));
        let mut raw = Raw::connect(&server.sock());
        raw.send_bytes(
            format!("AUTH {} {}\r\nPING\r\nSET a 1\nGET a\r\n", SHOP.0, SHOP.1).as_bytes(),
        );
        assert_eq!(raw.reply(), "+OK");
        assert_eq!(raw.reply(), "+PONG");
        assert_eq!(raw.reply(), "+OK");
        assert_eq!(raw.reply(), "$1");
    }

    const PY_CLIENT: &str = r#"
import os, time, redis
url = os.environ["URL"]
r = redis.from_url(url, decode_responses=True, protocol=int(os.environ.get("PROTO", "2")))
assert r.ping()
r.flushdb()
assert r.set("sess:1", "alice", ex=100)
assert r.get("sess:1") == "alice"
assert 99 <= r.ttl("sess:1") <= 100
assert r.expire("sess:1", 200) and r.ttl("sess:1") > 100
assert r.setex("sess:2", 100, "bob")
assert r.getex("sess:2", px=50000) == "bob" and 0 < r.pttl("sess:2") <= 50000
assert r.getdel("sess:2") == "bob" and r.get("sess:2") is None
r.mset({"m1": "1", "m2": "2"})
assert r.mget("m1", "m2", "m3") == ["1", "2", None]
assert sorted(r.scan_iter(match="m*", count=1)) == ["m1", "m2"]
assert r.exists("m1", "m2", "nope") == 2
assert r.delete("m1", "m2") == 2

# pipeline (no transaction): one round trip, ordered replies
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(f"p:{i}", i)
p.get("p:42")
assert p.execute()[-1] == "42"

# transaction with WATCH: a concurrent change makes it fail
other = redis.from_url(url, decode_responses=True)
with r.pipeline() as tx:
    tx.watch("p:1")
    other.set("p:1", "changed")
    tx.multi()
    tx.set("p:1", "mine")
    try:
        tx.execute()
        raise SystemExit("WATCH conflict was not detected")
    except redis.WatchError:
        pass
assert r.get("p:1") == "changed"
with r.pipeline() as tx:
    tx.watch("p:1")
    tx.multi()
    tx.set("p:1", "mine")
    assert tx.execute() == [True]
assert r.get("p:1") == "mine"

# a session ends out of process: the expiry event reaches a subscriber
ps = r.pubsub()
ps.subscribe("__keyevent@0__:expired")
ps.psubscribe("__keyspace@0__:sess:*")
deadline = time.time() + 5
confirmed = 0
while confirmed < 2 and time.time() < deadline:
    m = ps.get_message(timeout=0.5)
    if m and m["type"] in ("subscribe", "psubscribe"):
        confirmed += 1
r.set("sess:short", "x", px=100)
got = set()
while len(got) < 2 and time.time() < deadline:
    m = ps.get_message(timeout=0.5)
    if m and m["type"] == "message":
        assert m["channel"] == "__keyevent@0__:expired" and m["data"] == "sess:short", m
        got.add("event")
    if m and m["type"] == "pmessage":
        assert m["channel"] == "__keyspace@0__:sess:short" and m["data"] == "expired", m
        got.add("keyspace")
assert got == {"event", "keyspace"}, got
ps.close()
print("python ok")
"#;

    #[test]
    fn redis_py_resp2_and_resp3() {
        let dir = TempDir::new("py");
        let server = Server::start(options(dir.path()));
        let url = server.handle.url_for(SHOP.0).expect("url for shop");
        for proto in ["2", "3"] {
            let out = python(PY_CLIENT, &[("URL", &url), ("PROTO", proto)]);
            assert!(out.contains("python ok"), "{out}");
        }
        // The main socket with explicit credentials (username = app, password = token).
        let main = format!(
            "unix://{}:{}@localhost{}",
            SHOP.0,
            SHOP.1,
            server.sock().display()
        );
        let out = python(PY_CLIENT, &[("URL", &main), ("PROTO", "2")]);
        assert!(out.contains("python ok"), "{out}");
    }

    /// The one URL handed to workers works unchanged in redis-py and in the Rust
    /// `redis` crate, and lands in the app's own namespace.
    #[test]
    fn worker_url_is_accepted_by_rust_and_python_clients() {
        let dir = TempDir::new("url");
        let server = Server::start(options(dir.path()));
        let url = server.handle.url_for(SHOP.0).expect("url");
        assert!(
            url.starts_with("unix://shop:shop-token-1@localhost/"),
            "{url}"
        );

        let client = redis::Client::open(url.as_str()).expect("redis crate parses the URL");
        let mut con = client.get_connection().expect("redis crate connects");
        let () = redis::cmd("SET")
            .arg("from-rust")
            .arg("1")
            .query(&mut con)
            .expect("SET");

        let out = python(
            r#"
import os, redis
r = redis.from_url(os.environ["URL"], decode_responses=True)
assert r.get("from-rust") == "1", r.get("from-rust")
r.set("from-python", "2")
print("ok")
"#,
            &[("URL", &url)],
        );
        assert_eq!(out.trim(), "ok");
        let value: String = redis::cmd("GET")
            .arg("from-python")
            .query(&mut con)
            .expect("GET");
        assert_eq!(value, "2");
        // Both wrote into shop's namespace, invisible to blog.
        assert_eq!(
            cli(
                &server.sock(),
                Some(SHOP),
                &["MGET", "from-rust", "from-python"]
            ),
            "1\n2"
        );
        assert_eq!(
            cli(
                &server.sock(),
                Some(BLOG),
                &["EXISTS", "from-rust", "from-python"]
            ),
            "0"
        );

        // A URL for an unknown app does not exist.
        assert!(server.handle.url_for("nobody").is_none());
    }

    #[test]
    fn tcp_requires_auth_and_its_url_works() {
        let dir = TempDir::new("tcp");
        let opts = StoreOptions {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            ..options(dir.path())
        };
        let server = Server::start(opts);
        let addr = server.handle.tcp_addr().expect("tcp bound");
        let port = addr.port().to_string();
        let out = run(
            {
                let mut c = Command::new("redis-cli");
                c.args(["-h", "127.0.0.1", "-p", &port, "GET", "x"]);
                c
            },
            b"",
            Duration::from_secs(20),
        );
        assert!(out.0.contains("NOAUTH"), "{out:?}");
        let url = server.handle.tcp_url_for(SHOP.0).expect("tcp url");
        assert_eq!(url, format!("redis://shop:shop-token-1@127.0.0.1:{port}/0"));
        let client = redis::Client::open(url.as_str()).expect("parse");
        let mut con = client.get_connection().expect("connect over tcp");
        let pong: String = redis::cmd("PING").query(&mut con).expect("PING");
        assert_eq!(pong, "PONG");
    }
}

// ---------------------------------------------------------------------------
// Isolation between apps
// ---------------------------------------------------------------------------

mod isolation {
    use super::*;

    #[test]
    fn apps_see_only_their_own_keys() {
        let dir = TempDir::new("iso");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        let shop = |args: &[&str]| cli(&sock, Some(SHOP), args);
        let blog = |args: &[&str]| cli(&sock, Some(BLOG), args);
        shop(&["MSET", "sess:1", "cart", "sess:2", "order"]);
        assert_eq!(blog(&["GET", "sess:1"]), "");
        assert_eq!(blog(&["EXISTS", "sess:1", "sess:2"]), "0");
        assert_eq!(blog(&["SCAN", "0", "COUNT", "1000"]), "0");
        assert_eq!(blog(&["KEYS", "*"]), "");
        assert_eq!(blog(&["DBSIZE"]), "0");
        assert_eq!(blog(&["DEL", "sess:1"]), "0");
        assert_eq!(blog(&["SET", "sess:1", "blog's own"]), "OK");
        assert_eq!(blog(&["FLUSHDB"]), "OK");
        assert_eq!(blog(&["FLUSHALL"]), "OK");
        assert_eq!(shop(&["MGET", "sess:1", "sess:2"]), "cart\norder");
        assert_eq!(shop(&["DBSIZE"]), "2");
        let info = blog(&["INFO", "keyspace"]);
        assert!(
            info.contains("# Keyspace") && !info.contains("db0:"),
            "{info}"
        );

        // Notifications do not cross either: blog hears only its own expiries.
        let mut blog_sub = Raw::login(&sock, BLOG);
        assert_eq!(
            blog_sub.call(&["SUBSCRIBE", "__keyevent@0__:expired"]),
            "*[$subscribe $__keyevent@0__:expired :1]"
        );
        let mut shop_sub = Raw::login(&sock, SHOP);
        assert_eq!(
            shop_sub.call(&["SUBSCRIBE", "__keyevent@0__:expired"]),
            "*[$subscribe $__keyevent@0__:expired :1]"
        );
        shop(&["SET", "shop-short", "x", "PX", "20"]);
        assert_eq!(
            shop_sub.reply(),
            "*[$message $__keyevent@0__:expired $shop-short]"
        );
        blog(&["SET", "blog-short", "x", "PX", "20"]);
        // The first message blog receives is its own key, not shop's.
        assert_eq!(
            blog_sub.reply(),
            "*[$message $__keyevent@0__:expired $blog-short]"
        );
        assert_eq!(blog(&["PUBLISH", "__keyevent@0__:expired", "fake"]), "1");
        assert_eq!(
            blog_sub.reply(),
            "*[$message $__keyevent@0__:expired $fake]"
        );
        // Per-app sockets log in as their app.
        let shop_socket = dir.path().join("apps/shop.sock");
        assert_eq!(cli(&shop_socket, None, &["GET", "sess:1"]), "cart");
        assert_eq!(
            cli(&dir.path().join("apps/blog.sock"), None, &["GET", "sess:1"]),
            ""
        );
        use std::os::unix::fs::PermissionsExt;
        for sock in [&sock, &shop_socket] {
            let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", sock.display());
        }
    }

    #[test]
    fn authentication_is_required_and_checked() {
        let dir = TempDir::new("auth");
        let server = Server::start(options(dir.path()));
        let sock = server.sock();
        assert_eq!(
            cli(&sock, None, &["GET", "k"]),
            "NOAUTH Authentication required."
        );
        assert_eq!(
            cli(&sock, None, &["SCAN", "0"]),
            "NOAUTH Authentication required."
        );
        let wrong = cli(&sock, Some((SHOP.0, "not-the-token")), &["GET", "k"]);
        assert!(wrong.contains("WRONGPASS"), "{wrong}");
        assert!(wrong.contains("NOAUTH"), "{wrong}");
        // Another app's token for this app's name is wrong too.
        assert!(cli(&sock, Some((SHOP.0, BLOG.1)), &["PING"]).contains("WRONGPASS"));
        let mut raw = Raw::connect(&sock);
        assert_eq!(raw.call(&["PING"]), "-NOAUTH Authentication required.");
        assert_eq!(
            raw.call(&["AUTH", "nobody", "x"]),
            "-WRONGPASS invalid username-password pair or user is disabled."
        );
        // Password-only AUTH (pre-ACL clients) finds the app by its token.
        assert_eq!(raw.call(&["AUTH", SHOP.1]), "+OK");
        raw.call(&["SET", "mine", "1"]);
        assert_eq!(cli(&sock, Some(SHOP), &["GET", "mine"]), "1");
        // RESET logs out.
        assert_eq!(raw.call(&["RESET"]), "+RESET");
        assert_eq!(
            raw.call(&["GET", "mine"]),
            "-NOAUTH Authentication required."
        );

        // A reload drops blog and adds wiki: blog can no longer log in (its data
        // stays), wiki can and gets its own socket.
        server
            .handle
            .set_apps(&creds(&[SHOP, ("wiki", "wiki-token")]))
            .expect("reload");
        assert!(cli(&sock, Some(BLOG), &["PING"]).contains("WRONGPASS"));
        assert_eq!(cli(&sock, Some(("wiki", "wiki-token")), &["PING"]), "PONG");
        assert_eq!(
            cli(&dir.path().join("apps/wiki.sock"), None, &["PING"]),
            "PONG"
        );
        assert!(!dir.path().join("apps/blog.sock").exists());
        assert!(server.handle.url_for("blog").is_none());
        assert!(server.handle.url_for("wiki").is_some());
    }
}

// ---------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------

mod persistence {
    use super::*;

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    /// Issue 12, "the state dir deleted": the store's directory is removed under
    /// it and made again (the supervisor does that); `restore_files` binds the
    /// sockets again and writes the log again from memory, so redis-cli reaches
    /// it on both sockets, a connection open across the deletion goes on, and
    /// the next start loads every key — those written before the deletion too.
    #[test]
    fn a_deleted_directory_gets_its_sockets_and_log_back() {
        let dir = TempDir::new("rmdir");
        let server = Server::start(persistent_options(dir.path(), Persist::EverySec));
        let sock = server.sock();
        let mut open = Raw::login(&sock, SHOP);
        for i in 0..100 {
            assert_eq!(open.call(&["SET", &format!("k{i}"), "before"]), "+OK");
        }
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        assert_eq!(
            server.handle.restore_files().unwrap(),
            [
                "its socket",
                "the apps' sockets",
                "its log (rewritten from memory)"
            ]
        );
        assert_eq!(open.call(&["SET", "after", "1"]), "+OK");
        assert_eq!(cli(&sock, Some(SHOP), &["GET", "k7"]), "before");
        let app_sock = dir.path().join("apps/shop.sock");
        assert_eq!(cli(&app_sock, None, &["GET", "after"]), "1");
        wait_until("the log written again", Duration::from_secs(10), || {
            dir.path().join("store.aof").exists()
        });
        assert!(
            server.handle.restore_files().unwrap().is_empty(),
            "nothing is missing any more"
        );
        assert_eq!(open.call(&["SET", "later", "2"]), "+OK");
        drop(open);
        server.stop();

        let server = Server::start(persistent_options(dir.path(), Persist::EverySec));
        assert_eq!(server.handle.load_report().keys, 102);
        let sock = server.sock();
        assert_eq!(
            cli(&sock, Some(SHOP), &["MGET", "k0", "k99", "after", "later"]),
            "before\nbefore\n1\n2"
        );
    }

    #[test]
    fn data_survives_a_restart_with_absolute_ttls() {
        let dir = TempDir::new("aof");
        let server = Server::start(persistent_options(dir.path(), Persist::EverySec));
        let sock = server.sock();
        let shop = |args: &[&str]| cli(&sock, Some(SHOP), args);
        shop(&["SET", "plain", "v1"]);
        shop(&["SET", "ttl", "v2", "EX", "1000"]);
        shop(&["MSET", "gone", "x", "kept", "y"]);
        shop(&["DEL", "gone"]);
        shop(&["SET", "persisted", "p", "EX", "1000"]);
        shop(&["PERSIST", "persisted"]);
        shop(&["SET", "moved", "m"]);
        shop(&["PEXPIREAT", "moved", &(now_ms() + 500_000).to_string()]);
        shop(&["GETEX", "kept", "PX", "600000"]);
        shop(&["SET", "renamed", "old"]);
        shop(&["SET", "renamed", "new", "KEEPTTL"]);
        cli(&sock, Some(BLOG), &["SET", "blogkey", "b"]);
        cli(&sock, Some(BLOG), &["FLUSHDB"]);
        cli(&sock, Some(BLOG), &["SET", "after-flush", "a"]);
        let expiry_before: u64 = shop(&["PEXPIRETIME", "ttl"]).parse().unwrap();
        server.stop();

        let server = Server::start(persistent_options(dir.path(), Persist::EverySec));
        let sock = server.sock();
        let shop = |args: &[&str]| cli(&sock, Some(SHOP), args);
        assert_eq!(
            shop(&[
                "MGET",
                "plain",
                "ttl",
                "gone",
                "kept",
                "persisted",
                "moved",
                "renamed"
            ]),
            "v1\nv2\n\ny\np\nm\nnew"
        );
        // Expiry times are absolute in the log: not stretched by the restart.
        assert_eq!(
            shop(&["PEXPIRETIME", "ttl"]).parse::<u64>().unwrap(),
            expiry_before
        );
        assert_eq!(shop(&["TTL", "persisted"]), "-1");
        assert!(shop(&["TTL", "moved"]).parse::<i64>().unwrap() > 400);
        assert!(shop(&["TTL", "kept"]).parse::<i64>().unwrap() > 500);
        assert_eq!(cli(&sock, Some(BLOG), &["KEYS", "*"]), "after-flush");
        let report = server.handle.load_report();
        assert_eq!(report.keys, 7);
        assert!(report.truncated.is_none());
    }

    #[test]
    fn keys_that_expired_while_down_are_dropped() {
        let dir = TempDir::new("exp");
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        let sock = server.sock();
        cli(&sock, Some(SHOP), &["SET", "short", "x", "PX", "200"]);
        cli(&sock, Some(SHOP), &["SET", "long", "y", "EX", "1000"]);
        let deadline = now_ms() + 200;
        server.stop();
        wait_until("the key's deadline to pass", Duration::from_secs(5), || {
            now_ms() > deadline
        });
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        assert_eq!(server.handle.load_report().expired, 1);
        assert_eq!(
            cli(&server.sock(), Some(SHOP), &["MGET", "short", "long"]),
            "\ny"
        );
    }

    #[test]
    fn a_torn_tail_is_truncated_with_a_warning() {
        let dir = TempDir::new("torn");
        let aof = dir.path().join("store.aof");
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        cli(&server.sock(), Some(SHOP), &["SET", "a", "1"]);
        cli(&server.sock(), Some(SHOP), &["SET", "b", "2"]);
        server.stop();
        let good_len = std::fs::metadata(&aof).unwrap().len();
        // A record cut short, as a kill -9 in the middle of a write leaves it.
        let mut f = std::fs::OpenOptions::new().append(true).open(&aof).unwrap();
        f.write_all(b"*4\r\n$3\r\nSET\r\n$4\r\nshop\r\n$1\r\nc\r\n$10\r\n12345")
            .unwrap();
        drop(f);
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        let cut = server
            .handle
            .load_report()
            .truncated
            .clone()
            .expect("truncation reported");
        assert_eq!(cut.at, good_len);
        assert!(cut.reason.contains("incomplete"), "{}", cut.reason);
        assert!(cut.saved_to.is_none());
        assert_eq!(std::fs::metadata(&aof).unwrap().len(), good_len);
        assert_eq!(
            cli(&server.sock(), Some(SHOP), &["MGET", "a", "b", "c"]),
            "1\n2"
        );
        // Writing after the cut appends to a clean log.
        cli(&server.sock(), Some(SHOP), &["SET", "d", "4"]);
        server.stop();

        // Garbage is cut too, and kept aside for inspection.
        let mut f = std::fs::OpenOptions::new().append(true).open(&aof).unwrap();
        f.write_all(b"this is not a record\r\n*2\r\n$3\r\nDEL\r\n")
            .unwrap();
        drop(f);
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        let cut = server
            .handle
            .load_report()
            .truncated
            .clone()
            .expect("truncation reported");
        let saved = cut.saved_to.expect("garbage saved");
        assert!(std::fs::read(&saved)
            .unwrap()
            .starts_with(b"this is not a record"));
        assert_eq!(
            cli(&server.sock(), Some(SHOP), &["MGET", "a", "b", "d"]),
            "1\n2\n4"
        );
    }

    #[test]
    fn the_log_is_compacted_and_stays_correct() {
        let dir = TempDir::new("rw");
        let aof = dir.path().join("store.aof");
        let opts = || StoreOptions {
            rewrite_min_size: 64 * 1024,
            ..persistent_options(dir.path(), Persist::EverySec)
        };
        let server = Server::start(opts());
        let sock = server.sock();
        // 3000 overwrites of 20 keys: the log grows far past twice the live data.
        let mut script = String::new();
        for i in 0..3000 {
            script.push_str(&format!(
                "SET key:{} value-{i}-{}\r\n",
                i % 20,
                "x".repeat(64)
            ));
        }
        // Every burst makes the log due again: each is compacted, not only the
        // first.
        for burst in 0..3 {
            let mut cmd = cli_command(&sock, Some(SHOP));
            cmd.arg("--pipe");
            let (out, _, ok) = run(cmd, script.as_bytes(), Duration::from_secs(30));
            assert!(ok && out.contains("errors: 0"), "{out}");
            wait_until(
                &format!("the automatic rewrite after burst {burst}"),
                Duration::from_secs(10),
                || {
                    std::fs::metadata(&aof)
                        .map(|m| m.len() < 16 * 1024)
                        .unwrap_or(false)
                },
            );
        }
        // Changes made after the rewrite land in the new log.
        cli(&sock, Some(SHOP), &["SET", "after", "rewrite"]);
        cli(&sock, Some(SHOP), &["DEL", "key:0"]);
        // BGREWRITEAOF asks for one explicitly.
        assert_eq!(
            cli(&sock, Some(SHOP), &["BGREWRITEAOF"]),
            "Background append only file rewriting started"
        );
        server.stop();
        let server = Server::start(opts());
        let sock = server.sock();
        assert_eq!(cli(&sock, Some(SHOP), &["DBSIZE"]), "20");
        assert_eq!(cli(&sock, Some(SHOP), &["GET", "after"]), "rewrite");
        assert_eq!(cli(&sock, Some(SHOP), &["GET", "key:0"]), "");
        assert_eq!(
            cli(&sock, Some(SHOP), &["GET", "key:19"]),
            format!("value-2999-{}", "x".repeat(64))
        );
    }

    const CHILD_DIR: &str = "APPVISOR_STORE_TEST_CHILD_DIR";
    const CHILD_PERSIST: &str = "APPVISOR_STORE_TEST_CHILD_PERSIST";
    const CHILD_READY: &str = "store-child-ready";
    /// Optional: the child's max_value_size in bytes.
    pub(super) const CHILD_MAX_VALUE: &str = "APPVISOR_STORE_TEST_CHILD_MAX_VALUE";

    /// Not a test by itself: the body of the child process that the kill -9 tests
    /// start (this binary re-run with `--exact persistence::child_store_process`).
    /// Without the environment variable it returns at once.
    #[test]
    fn child_store_process() {
        let Ok(dir) = std::env::var(CHILD_DIR) else {
            return;
        };
        let persist = match std::env::var(CHILD_PERSIST).as_deref() {
            Ok("always") => Persist::Always,
            _ => Persist::EverySec,
        };
        let mut opts = persistent_options(Path::new(&dir), persist);
        if let Some(max) = std::env::var(CHILD_MAX_VALUE)
            .ok()
            .and_then(|v| v.parse().ok())
        {
            opts.max_value_size = max;
        }
        let server = Server::start(opts);
        // libtest prints "test … ... " first: the marker goes on its own line.
        println!("\n{CHILD_READY}");
        std::io::stdout().flush().unwrap();
        // Serve until killed, or until the parent test is gone (stdin closes), so
        // no store outlives a test run that was itself killed.
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        drop(server);
    }

    /// The child process, killed when dropped.
    pub(super) struct ChildStore(Child);

    impl ChildStore {
        pub(super) fn start(dir: &Path, persist: &str) -> ChildStore {
            ChildStore::start_with(dir, persist, &[])
        }

        /// With extra environment: [`CHILD_MAX_VALUE`].
        pub(super) fn start_with(dir: &Path, persist: &str, env: &[(&str, &str)]) -> ChildStore {
            let exe = std::env::current_exe().expect("test binary path");
            let child = Command::new(exe)
                .args([
                    "--exact",
                    "persistence::child_store_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir)
                .env(CHILD_PERSIST, persist)
                .envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn child store");
            let mut guard = ChildStore(child);
            let stdout = guard.0.stdout.take().expect("stdout");
            let stderr = guard.0.stderr.take().expect("stderr");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains(CHILD_READY) {
                        let _ = tx.send(());
                    }
                }
            });
            // Forwarded, so a failing child explains itself in the test's output.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("child store: {line}");
                }
            });
            rx.recv_timeout(Duration::from_secs(30))
                .expect("child store became ready");
            guard
        }

        pub(super) fn pid(&self) -> u32 {
            self.0.id()
        }

        fn kill_9(mut self) {
            self.0.kill().expect("SIGKILL");
            self.0.wait().expect("reap");
        }
    }

    impl Drop for ChildStore {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn always_loses_nothing_acknowledged_on_kill_9() {
        let dir = TempDir::new("k9a");
        let child = ChildStore::start(dir.path(), "always");
        let sock = dir.path().join("store.sock");
        let mut raw = Raw::login(&sock, SHOP);
        for i in 0..300 {
            assert_eq!(
                raw.call(&["SET", &format!("k{i}"), &format!("v{i}")]),
                "+OK"
            );
        }
        // Pipelined: all acknowledged in one batch.
        let mut pipeline = Vec::new();
        for i in 300..600 {
            pipeline.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\nk{i}\r\n${}\r\nv{i}\r\n",
                    format!("k{i}").len(),
                    format!("v{i}").len()
                )
                .as_bytes(),
            );
        }
        raw.send_bytes(&pipeline);
        for _ in 300..600 {
            assert_eq!(raw.reply(), "+OK");
        }
        child.kill_9();
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        assert_eq!(cli(&server.sock(), Some(SHOP), &["DBSIZE"]), "600");
        assert_eq!(cli(&server.sock(), Some(SHOP), &["GET", "k599"]), "v599");
    }

    /// `always` with many clients writing at once, killed mid-stream: a lone
    /// client's write is synced by the event loop itself, a group's by the log's
    /// thread (aof/mod.rs); both must acknowledge only what is on disk. Every
    /// write any client saw acknowledged before the kill is there after restart.
    #[test]
    fn always_loses_nothing_acknowledged_by_concurrent_clients_on_kill_9() {
        let dir = TempDir::new("k9c");
        let child = ChildStore::start(dir.path(), "always");
        let sock = dir.path().join("store.sock");
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let writers: Vec<_> = (0..8)
            .map(|client| {
                let sock = sock.clone();
                let acked = acked.clone();
                std::thread::spawn(move || {
                    let mut raw = Raw::login(&sock, SHOP);
                    // Until the store dies: each SET counts once its +OK is read.
                    for i in 0.. {
                        let key = format!("c{client}:{i}");
                        let frame = format!(
                            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{key}\r\n",
                            key.len(),
                            key.len()
                        );
                        if raw.reader.get_mut().write_all(frame.as_bytes()).is_err() {
                            return;
                        }
                        let mut line = String::new();
                        match raw.reader.read_line(&mut line) {
                            Ok(n) if n > 0 && line == "+OK\r\n" => {
                                acked.lock().unwrap().push(key);
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        // Kill it while every client still writes.
        wait_until(
            "2,000 acknowledged writes",
            Duration::from_secs(120),
            || acked.lock().unwrap().len() >= 2000,
        );
        child.kill_9();
        for writer in writers {
            writer.join().expect("writer thread");
        }
        let acked = acked.lock().unwrap().clone();
        let server = Server::start(persistent_options(dir.path(), Persist::Always));
        let mut raw = Raw::login(&server.sock(), SHOP);
        let missing: Vec<&String> = acked
            .iter()
            .filter(|key| raw.call(&["EXISTS", key]) != ":1")
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)]
        );
    }

    #[test]
    fn everysec_loses_at_most_the_last_second_on_kill_9() {
        let dir = TempDir::new("k9e");
        let child = ChildStore::start(dir.path(), "everysec");
        let sock = dir.path().join("store.sock");
        let mut raw = Raw::login(&sock, SHOP);
        for i in 0..500 {
            assert_eq!(
                raw.call(&["SET", &format!("k{i}"), &format!("v{i}")]),
                "+OK"
            );
        }
        // With no further request, shutdown or sync, the last acknowledged record
        // reaches the log by itself (within ~10 ms; how fast is for the benchmark).
        let aof = dir.path().join("store.aof");
        wait_until(
            "the last record in the log",
            Duration::from_secs(10),
            || {
                std::fs::read(&aof)
                    .map(|b| b.ends_with(b"$4\r\nk499\r\n$4\r\nv499\r\n"))
                    .unwrap_or(false)
            },
        );
        child.kill_9();
        let server = Server::start(persistent_options(dir.path(), Persist::EverySec));
        assert_eq!(cli(&server.sock(), Some(SHOP), &["DBSIZE"]), "500");
    }
}

// ---------------------------------------------------------------------------
// Limits and hostile input
// ---------------------------------------------------------------------------

mod limits {
    use super::*;

    #[test]
    fn oversized_values_are_refused_and_huge_frames_cut_the_connection() {
        let dir = TempDir::new("big");
        let server = Server::start(StoreOptions {
            max_value_size: 4096,
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut raw = Raw::login(&sock, SHOP);
        let big = "x".repeat(5000);
        let reply = raw.call(&["SET", "k", &big]);
        assert!(
            reply.starts_with(
                "-ERR value of 5000 bytes is larger than the store's max_value_size (4096 bytes)"
            ),
            "{reply}"
        );
        assert_eq!(raw.call(&["MSET", "a", "1", "b", &big]), reply);
        assert_eq!(raw.call(&["GET", "a"]), "$nil", "MSET is all or nothing");
        assert_eq!(raw.call(&["SET", "k", &"y".repeat(4096)]), "+OK");
        // A bulk length far past max_value_size: protocol error, connection closed,
        // before the store buffers any of it.
        let mut bystander = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: invalid bulk length");
        assert!(raw.closed());
        assert_eq!(bystander.call(&["PING"]), "+PONG");
        // Before AUTH, only small requests are read at all.
        let mut anonymous = Raw::connect(&sock);
        anonymous.send_bytes(b"*2\r\n$3\r\nGET\r\n$5000\r\n");
        assert_eq!(
            anonymous.reply(),
            "-ERR Protocol error: invalid bulk length"
        );
        assert!(anonymous.closed());
        let mut raw = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*99999999\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: invalid multibulk length");
        assert!(raw.closed());
        let mut raw = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*1\r\n+PING\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: expected '$'");
        assert!(raw.closed());
        assert_eq!(bystander.call(&["GET", "k"]).len(), 4097);
    }

    #[test]
    fn max_memory_refuses_writes_like_noeviction() {
        let dir = TempDir::new("oom");
        let server = Server::start(StoreOptions {
            max_memory: Some(256 * 1024),
            ..options(dir.path())
        });
        let mut raw = Raw::login(&server.sock(), SHOP);
        let value = "v".repeat(1000);
        let mut refused_at = None;
        for i in 0..2000 {
            let reply = raw.call(&["SET", &format!("k{i}"), &value]);
            if reply != "+OK" {
                assert_eq!(
                    reply,
                    "-OOM command not allowed when used memory > 'maxmemory'."
                );
                refused_at = Some(i);
                break;
            }
        }
        let refused_at = refused_at.expect("writes refused before 2 MB");
        assert!(refused_at > 100, "refused too early, at {refused_at}");
        let used = server.handle.stats().memory;
        assert!(used > 256 * 1024 && used < 300 * 1024, "used {used}");
        // Reads, deletes and expiries still work; deleting makes room again.
        assert_eq!(raw.call(&["GET", "k0"]).len(), 1001);
        assert_eq!(raw.call(&["EXPIRE", "k1", "100"]), ":1");
        for i in 0..50 {
            raw.call(&["DEL", &format!("k{i}")]);
        }
        assert_eq!(raw.call(&["SET", "again", &value]), "+OK");
    }

    #[test]
    fn max_clients_turns_away_the_extra_connection() {
        let dir = TempDir::new("maxc");
        let server = Server::start(StoreOptions {
            max_clients: 2,
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut first = Raw::login(&sock, SHOP);
        let second = Raw::login(&sock, SHOP);
        let mut third = Raw::connect(&sock);
        assert_eq!(third.reply(), "-ERR max number of clients reached");
        assert!(third.closed());
        drop(second);
        wait_until("a slot to free up", Duration::from_secs(5), || {
            let mut next = Raw::connect(&sock);
            next.send(&["AUTH", SHOP.0, SHOP.1]);
            next.reply() == "+OK"
        });
        assert_eq!(first.call(&["PING"]), "+PONG");
        assert_eq!(
            server.handle.stats().clients,
            1,
            "the probe connections are gone"
        );
    }

    /// Random bytes, truncated frames and valid commands, over real sockets:
    /// every hostile connection ends (the store never waits forever on it), and a
    /// well-behaved client keeps being served throughout.
    #[test]
    fn garbage_over_sockets_harms_no_one() {
        let dir = TempDir::new("fuzz");
        let server = Server::start(StoreOptions {
            max_value_size: 64 * 1024,
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut healthy = Raw::login(&sock, SHOP);
        healthy.call(&["SET", "canary", "alive"]);
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        let valid: &[&[u8]] = &[
            b"*1\r\n$4\r\nPING\r\n",
            b"*2\r\n$3\r\nGET\r\n$6\r\ncanary\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"PING\r\n",
            b"*2\r\n$4\r\nAUTH\r\n$12\r\nshop-token-1\r\n",
            b"*1\r\n$5\r\nMULTI\r\n",
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n",
        ];
        for round in 0..300 {
            let mut data = Vec::new();
            for _ in 0..rng.below(8) {
                match rng.below(4) {
                    0 => data.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                    1 => {
                        let frame = valid[rng.below(valid.len() as u64) as usize];
                        data.extend_from_slice(
                            &frame[..rng.below(frame.len() as u64 + 1) as usize],
                        );
                    }
                    2 => data.extend_from_slice(valid[rng.below(valid.len() as u64) as usize]),
                    _ => data.extend_from_slice(
                        format!("*{}\r\n${}\r\n", rng.below(5), rng.below(100_000)).as_bytes(),
                    ),
                }
            }
            let mut conn = UnixStream::connect(&sock).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = conn.write_all(&data);
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let started = Instant::now();
            match conn.read_to_end(&mut sink) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => {
                    panic!("round {round}: the store did not close a hostile connection: {e}")
                }
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            assert_eq!(healthy.call(&["GET", "canary"]), "$alive", "round {round}");
        }
        wait_until(
            "hostile connections to be gone",
            Duration::from_secs(5),
            || server.handle.stats().clients == 1,
        );
    }

    /// A small deterministic generator (no dependency, reproducible failures).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }
}

// ---------------------------------------------------------------------------
// Hardening (issue 12): memory bounds, large pipelines, hostile connections
// ---------------------------------------------------------------------------

mod hardening {
    use super::persistence::{ChildStore, CHILD_MAX_VALUE};
    use super::*;

    /// The peak resident set of process `pid` (VmHWM), in bytes.
    fn peak_rss(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }

    /// The first line of the next reply, without reading the rest of it.
    fn reply_head(raw: &mut Raw) -> String {
        let mut line = String::new();
        raw.reader.read_line(&mut line).expect("read reply");
        line.trim_end_matches("\r\n").to_owned()
    }

    /// Defect 5: `MGET` of a 1 MiB key 800 times took 831 MB. The reply is cut at
    /// the client's output limit: that client gets an error and is closed, the
    /// store's memory stays put, and every other client is served.
    #[test]
    fn a_reply_past_the_output_limit_closes_that_client_only() {
        let dir = TempDir::new("mget");
        let child = ChildStore::start(dir.path(), "everysec");
        let sock = dir.path().join("store.sock");
        let mut raw = Raw::login(&sock, SHOP);
        let mut bystander = Raw::login(&sock, SHOP);
        assert_eq!(raw.call(&["SET", "big", &"v".repeat(1 << 20)]), "+OK");
        let before = peak_rss(child.pid());
        let mut mget = vec!["MGET"];
        mget.extend(std::iter::repeat_n("big", 800));
        raw.send(&mget);
        let head = reply_head(&mut raw);
        assert!(
            head.starts_with("-ERR reply too large"),
            "the reply was not refused: {head}"
        );
        assert!(raw.closed(), "the client is disconnected");
        let grown = peak_rss(child.pid()).saturating_sub(before);
        eprintln!(
            "MGET x800: the store's peak RSS grew by {} MiB",
            grown >> 20
        );
        assert!(
            grown < 160 << 20,
            "the store's peak memory grew by {} MiB",
            grown >> 20
        );
        assert_eq!(bystander.call(&["EXISTS", "big"]), ":1");
    }

    /// Defect 5: output that waits for a slow reader is memory too: it counts
    /// against max_memory (writes are refused while it is queued), and stops
    /// counting once the reader has taken it.
    #[test]
    fn queued_output_counts_against_max_memory() {
        let dir = TempDir::new("outmem");
        let server = Server::start(StoreOptions {
            max_memory: Some(3_300_000),
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut writer = Raw::login(&sock, SHOP);
        let value = "v".repeat(1_000_000);
        for key in ["a", "b", "c"] {
            assert_eq!(writer.call(&["SET", key, &value]), "+OK");
        }
        assert_eq!(writer.call(&["SET", "x", "1"]), "+OK", "data alone fits");
        let mut reader = Raw::login(&sock, SHOP);
        for _ in 0..32 {
            reader.send(&["GET", "a"]);
        }
        wait_until(
            "a write refused while the replies wait",
            Duration::from_secs(10),
            || writer.call(&["SET", "x", "1"]).starts_with("-OOM"),
        );
        for _ in 0..32 {
            assert_eq!(reader.reply().len(), 1_000_001);
        }
        wait_until(
            "writes accepted once the reader caught up",
            Duration::from_secs(10),
            || writer.call(&["SET", "x", "1"]) == "+OK",
        );
    }

    /// Requests read ahead and not run yet are memory too: a client that writes
    /// a large pipeline while its replies wait makes the store hold it, so it
    /// counts against max_memory (INFO's mem_clients_normal shows it, as
    /// Redis's does) until the requests have run.
    #[test]
    fn requests_read_ahead_count_against_max_memory() {
        let dir = TempDir::new("inmem");
        let server = Server::start(StoreOptions {
            max_memory: Some(5_000_000),
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut writer = Raw::login(&sock, SHOP);
        assert_eq!(writer.call(&["SET", "a", &"v".repeat(1_000_000)]), "+OK");
        let mut pipeliner = Raw::login(&sock, SHOP);
        // Two 1 MB replies make the store pause running this client's requests
        // (about 2 MB wait, under the limit with the data); then 8 MB of
        // requests with small replies, read ahead while it waits.
        pipeliner.send(&["GET", "a"]);
        pipeliner.send(&["GET", "a"]);
        let key = "k".repeat(1000);
        let exists = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{key}\r\n", key.len());
        const PIPELINED: usize = 8000;
        pipeliner.send_bytes(exists.repeat(PIPELINED).as_bytes());
        wait_until(
            "a write refused while the pipeline waits to run",
            Duration::from_secs(10),
            || writer.call(&["SET", "x", "1"]).starts_with("-OOM"),
        );
        let info = writer.call(&["INFO", "memory"]);
        let clients: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("mem_clients_normal:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("mem_clients_normal in INFO");
        assert!(
            clients > 4_000_000,
            "the read-ahead is not counted: mem_clients_normal:{clients}"
        );
        for _ in 0..2 {
            assert_eq!(pipeliner.reply().len(), 1_000_001);
        }
        for _ in 0..PIPELINED {
            assert_eq!(pipeliner.reply(), ":0");
        }
        wait_until(
            "writes accepted once the pipeline has run",
            Duration::from_secs(10),
            || writer.call(&["SET", "x", "1"]) == "+OK",
        );
    }

    /// Defect 5: max_memory has a default when `[store]` sets none.
    #[test]
    fn max_memory_has_a_default() {
        let config = appvisor_config::EmbeddedStore {
            tcp: None,
            persist: Persist::EverySec,
            max_memory: None,
            max_value_size: 1 << 20,
            max_clients: 10_000,
        };
        let opts = StoreOptions::from_config(Path::new("/tmp/x"), &config, Vec::new());
        let max = opts.max_memory.expect("a default max_memory");
        assert!((64 << 20..=1 << 30).contains(&max), "{max}");
        let set = appvisor_config::EmbeddedStore {
            max_memory: Some(5 << 30),
            ..config
        };
        let opts = StoreOptions::from_config(Path::new("/tmp/x"), &set, Vec::new());
        assert_eq!(opts.max_memory, Some(5 << 30), "a configured value is kept");
    }

    /// Defect 5, the same bound for a transaction: the commands a MULTI queues are
    /// copies held until EXEC, so they may not take more than `max_output`
    /// either; past it the transaction is refused whole (EXECABORT).
    #[test]
    fn a_multi_queue_is_bounded_by_max_output() {
        let dir = TempDir::new("multiq");
        let server = Server::start(StoreOptions {
            max_value_size: 4096,
            max_output: 64 * 1024,
            ..options(dir.path())
        });
        let mut raw = Raw::login(&server.sock(), SHOP);
        let value = "q".repeat(1000);
        assert_eq!(raw.call(&["MULTI"]), "+OK");
        let mut refused = None;
        for i in 0..200 {
            let reply = raw.call(&["SET", &format!("m{i}"), &value]);
            if reply != "+QUEUED" {
                refused = Some((i, reply));
                break;
            }
        }
        let (at, reply) = refused.expect("200 KB of queued commands refused");
        assert!(at > 50, "refused too early, at {at}");
        assert!(reply.starts_with("-ERR MULTI queue"), "{reply}");
        assert!(raw.call(&["EXEC"]).starts_with("-EXECABORT"));
        assert_eq!(raw.call(&["EXISTS", "m0"]), ":0", "nothing of it ran");
        assert_eq!(raw.call(&["PING"]), "+PONG");
    }

    const PY_PIPELINES: &str = r#"
import os, time, redis
r = redis.Redis.from_url(os.environ["URL"], socket_timeout=20)
started = time.monotonic()
p = r.pipeline(transaction=False)
for i in range(50000):
    p.set(f"p{i}", f"value-{i}")
assert all(x is True for x in p.execute())
p = r.pipeline(transaction=True)
for i in range(50000):
    p.get(f"p{i}")
got = p.execute()
assert len(got) == 50000 and got[0] == b"value-0" and got[49999] == b"value-49999", got[:3]
print("pipelines ok in", round(time.monotonic() - started, 2), "s")
"#;

    /// Defect 6: redis-py writes a whole pipeline before reading any reply. 50,000
    /// SETs, then a MULTI of 50,000 GETs, over the app's unix socket and over TCP.
    #[test]
    fn redis_py_pipeline_of_50000_and_multi_of_50000() {
        let dir = TempDir::new("pipe");
        let server = Server::start(StoreOptions {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            ..options(dir.path())
        });
        for url in [
            server.handle.url_for("shop").unwrap(),
            server.handle.tcp_url_for("shop").unwrap(),
        ] {
            let out = python(PY_PIPELINES, &[("URL", &url)]);
            assert!(out.contains("pipelines ok"), "{out}");
            let over = if url.starts_with("unix") {
                "unix"
            } else {
                "tcp"
            };
            eprintln!("{over}: {}", out.trim());
        }
    }

    /// Defect 6 with a raw socket: 50,000 SETs written in one go, then a MULTI of
    /// 50,000 GETs, each written whole before a single byte is read.
    #[test]
    fn a_client_that_writes_its_whole_pipeline_before_reading() {
        let dir = TempDir::new("rawpipe");
        let server = Server::start(options(dir.path()));
        let mut raw = Raw::login(&server.sock(), SHOP);
        raw.reader
            .get_ref()
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut sets = Vec::new();
        for i in 0..50_000 {
            let key = format!("k{i}");
            append_command(&mut sets, &[b"SET", key.as_bytes(), &[b'x'; 100]]);
        }
        raw.send_bytes(&sets);
        for i in 0..50_000 {
            assert_eq!(raw.reply(), "+OK", "reply {i}");
        }
        let mut multi = Vec::new();
        append_command(&mut multi, &[b"MULTI"]);
        for i in 0..50_000 {
            append_command(&mut multi, &[b"GET", format!("k{i}").as_bytes()]);
        }
        append_command(&mut multi, &[b"EXEC"]);
        raw.send_bytes(&multi);
        assert_eq!(raw.reply(), "+OK");
        for _ in 0..50_000 {
            assert_eq!(raw.reply(), "+QUEUED");
        }
        assert_eq!(reply_head(&mut raw), "*50000");
        for _ in 0..50_000 {
            assert_eq!(raw.reply().len(), 101);
        }
        assert_eq!(raw.call(&["PING"]), "+PONG");
    }

    fn append_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for part in parts {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Limits: a bulk header of 2 GiB and an array header of absurd length are
    /// refused as soon as the header is read, even when max_value_size is the
    /// largest Redis allows.
    #[test]
    fn a_2_gib_bulk_header_and_an_absurd_array_header_are_refused() {
        let dir = TempDir::new("hdr");
        let server = Server::start(StoreOptions {
            max_value_size: 512 << 20,
            ..options(dir.path())
        });
        let sock = server.sock();
        let mut raw = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2147483648\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: invalid bulk length");
        assert!(raw.closed());
        let mut raw = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*2147483648\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: invalid multibulk length");
        assert!(raw.closed());
        let mut raw = Raw::login(&sock, SHOP);
        raw.send_bytes(b"*9223372036854775807\r\n");
        assert_eq!(raw.reply(), "-ERR Protocol error: invalid multibulk length");
        assert!(raw.closed());
    }

    /// Limits: a bulk header within the limits reserves no memory for its value
    /// up front: the read buffer grows with the bytes that actually arrive.
    #[test]
    fn a_large_bulk_header_reserves_nothing_before_its_bytes_come() {
        let dir = TempDir::new("hdr2");
        let child = ChildStore::start_with(
            dir.path(),
            "everysec",
            &[(CHILD_MAX_VALUE, &(256u64 << 20).to_string())],
        );
        let sock = dir.path().join("store.sock");
        let mut bystander = Raw::login(&sock, SHOP);
        let before = peak_rss(child.pid());
        let mut claims = Vec::new();
        for _ in 0..4 {
            let mut raw = Raw::login(&sock, SHOP);
            raw.send_bytes(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$268435000\r\nsome bytes");
            claims.push(raw);
        }
        // The store has read those headers once it answers a later request; then
        // more bytes come, to be read into the buffer made for them.
        assert_eq!(bystander.call(&["PING"]), "+PONG");
        for raw in &mut claims {
            raw.send_bytes(b"and more bytes");
        }
        assert_eq!(bystander.call(&["PING"]), "+PONG");
        let grown = peak_rss(child.pid()).saturating_sub(before);
        assert!(
            grown < 16 << 20,
            "four 256 MiB headers grew the store by {} MiB",
            grown >> 20
        );
    }
}

mod strangers {
    use super::*;
    use std::net::TcpStream;

    /// Reads one line (a reply's first) from a TCP connection; None at EOF.
    fn line(conn: &mut BufReader<TcpStream>) -> Option<String> {
        let mut line = String::new();
        match conn.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading from the store: {e}"),
        }
    }

    fn tcp(addr: std::net::SocketAddr) -> BufReader<TcpStream> {
        let conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        BufReader::new(conn)
    }

    fn call(conn: &mut BufReader<TcpStream>, args: &[&str]) -> Option<String> {
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.get_mut().write_all(frame.as_bytes()).expect("write");
        line(conn)
    }

    /// The quota is for TCP: the owner's unix socket takes a burst of connections
    /// that log in only after all are open (`redis-benchmark -c 50` does so),
    /// more than `max_anonymous` of them.
    #[test]
    fn a_burst_of_local_connections_is_not_refused() {
        let dir = TempDir::new("burst");
        let server = Server::start(StoreOptions {
            max_anonymous: 4,
            ..options(dir.path())
        });
        let mut conns: Vec<Raw> = (0..50).map(|_| Raw::connect(&server.sock())).collect();
        for conn in &mut conns {
            assert_eq!(conn.call(&["AUTH", SHOP.0, SHOP.1]), "+OK");
        }
    }

    /// Defect 4: with `[store] tcp` on, connections that never log in have their
    /// own small quota and a deadline, so they cannot take the apps' seats.
    #[test]
    fn strangers_on_tcp_cannot_lock_the_apps_out() {
        let dir = TempDir::new("anon");
        let deadline = Duration::from_millis(500);
        let server = Server::start(StoreOptions {
            tcp: Some("127.0.0.1:0".parse().unwrap()),
            max_clients: 8,
            max_anonymous: 4,
            auth_timeout: deadline,
            ..options(dir.path())
        });
        let addr = server.handle.tcp_addr().unwrap();
        let mut app_tcp = tcp(addr);
        assert_eq!(
            call(&mut app_tcp, &["AUTH", SHOP.0, SHOP.1]).unwrap(),
            "+OK"
        );

        // Fifty strangers: four get an anonymous seat, the rest are turned away.
        let mut waiting = Vec::new();
        let mut refused = 0;
        for _ in 0..50 {
            let mut conn = tcp(addr);
            conn.get_ref()
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut first = String::new();
            match conn.read_line(&mut first) {
                Ok(_) if first.starts_with("-ERR max number of unauthenticated clients") => {
                    refused += 1
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.get_ref()
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    waiting.push((conn, Instant::now()));
                }
                other => panic!("unexpected answer to a stranger: {other:?} {first:?}"),
            }
        }
        assert_eq!((waiting.len(), refused), (4, 46));

        // The apps are not locked out: on their own socket, and already logged in
        // over TCP.
        let mut app = Raw::connect(&dir.path().join("apps/shop.sock"));
        assert_eq!(app.call(&["SET", "still", "served"]), "+OK");
        assert_eq!(call(&mut app_tcp, &["GET", "still"]).unwrap(), "$6");

        // Each idle stranger is closed at its deadline, not before.
        for (mut conn, since) in waiting {
            let said = line(&mut conn);
            let waited = since.elapsed();
            assert_eq!(
                said.as_deref(),
                Some("-ERR not logged in in time (AUTH); closing the connection")
            );
            assert_eq!(line(&mut conn), None, "closed after saying why");
            assert!(
                waited >= deadline - Duration::from_millis(150) && waited < Duration::from_secs(5),
                "closed after {waited:?}"
            );
        }
        // Their seats are free again: an app logs in over TCP.
        wait_until("an anonymous seat", Duration::from_secs(5), || {
            call(&mut tcp(addr), &["AUTH", SHOP.0, SHOP.1]).as_deref() == Some("+OK")
        });
        let mut late = tcp(addr);
        assert_eq!(call(&mut late, &["AUTH", SHOP.0, SHOP.1]).unwrap(), "+OK");
        assert_eq!(call(&mut late, &["PING"]).unwrap(), "+PONG");
        // A logged-in connection has no deadline.
        std::thread::sleep(deadline + Duration::from_millis(200));
        assert_eq!(call(&mut late, &["PING"]).unwrap(), "+PONG");
    }
}

mod disk_full {
    use super::*;
    use std::sync::{Mutex, Once};

    /// Every line the store logs (at info and above), for tests that check what
    /// it reports and how often. The subscriber is process-wide: tests find their
    /// own lines by the paths in them.
    fn captured_log() -> String {
        static LOG: Mutex<String> = Mutex::new(String::new());
        static INIT: Once = Once::new();
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                LOG.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(buf));
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Capture)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        });
        LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A small tmpfs, unmounted when dropped (also when the test fails).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        /// None (with the reason printed) where mounting is impossible; in CI
        /// (`CI` set) that fails the test instead.
        fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
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
                Ok(out) if out.status.success() => return Some(Tmpfs(dir.to_owned())),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => format!("cannot run mount: {e}"),
            };
            let msg =
                format!("this test needs a small tmpfs to fill (it mounts one as root): {why}");
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            None
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let ok = Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }

    /// Disk full under the log (issue 12, store part), `persist = "always"`: the
    /// write that could not be logged is not acknowledged, later writes are
    /// refused with MISCONF while reads go on, the failure is reported once, and
    /// all recovers by itself when space returns; every acknowledged write is
    /// in the log.
    #[test]
    fn a_full_disk_refuses_writes_and_recovers_by_itself() {
        captured_log();
        let dir = TempDir::new("full");
        let disk = dir.path().join("disk");
        let Some(_tmpfs) = Tmpfs::mount(&disk, "1m") else {
            return;
        };
        // Leave room for a few values only.
        let filler = disk.join("filler");
        std::fs::write(&filler, vec![0u8; 640 * 1024]).unwrap();
        let opts = || StoreOptions {
            aof_path: Some(disk.join("store.aof")),
            persist: Persist::Always,
            ..options(dir.path())
        };
        let server = Server::start(opts());
        let sock = server.sock();

        // A writer with 64 KiB values, on its own thread: the write that hits the
        // full disk waits (unacknowledged) until space returns.
        let (acked_tx, acked) = std::sync::mpsc::channel::<usize>();
        let writer_sock = sock.clone();
        let writer = std::thread::spawn(move || {
            let mut raw = Raw::login(&writer_sock, SHOP);
            raw.reader
                .get_ref()
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let value = "v".repeat(64 * 1024);
            // 12 values fit once the filler is gone (768 KiB of 1 MiB); about
            // five fit beside it.
            for i in 0..12 {
                let reply = raw.call(&["SET", &format!("w{i}"), &value]);
                assert_eq!(reply, "+OK", "write {i}");
                if acked_tx.send(i).is_err() {
                    return;
                }
            }
        });
        wait_until("the log to fail", Duration::from_secs(20), || {
            server.handle.stats().log_failed
        });
        let acked_before: Vec<usize> = acked.try_iter().collect();
        assert!(
            acked_before.len() < 12,
            "every write was acknowledged on a full disk"
        );

        // While it is full: writes refused as Redis does, reads served.
        let mut other = Raw::login(&sock, SHOP);
        for _ in 0..3 {
            let reply = other.call(&["SET", "other", "x"]);
            assert!(reply.starts_with("-MISCONF "), "{reply}");
        }
        assert_eq!(other.call(&["EXISTS", "w0"]), ":1");
        // The writer retries each second: let two retries fail, then check that
        // the failure was reported once and the waiting write still waits.
        let aof = disk.join("store.aof");
        let aof_shown = aof.display().to_string();
        let failures = || {
            captured_log()
                .lines()
                .filter(|l| l.contains(&aof_shown) && l.contains("refusing writes"))
                .count()
        };
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(failures(), 1, "reported once:\n{}", captured_log());
        assert!(
            acked.try_iter().next().is_none(),
            "a write was acknowledged that the log did not hold"
        );

        // Space returns: everything goes on by itself.
        std::fs::remove_file(&filler).unwrap();
        wait_until("writes accepted again", Duration::from_secs(10), || {
            other.call(&["SET", "other", "x"]) == "+OK"
        });
        writer
            .join()
            .expect("every write acknowledged once space returned");
        assert_eq!(failures(), 1);
        assert!(
            captured_log()
                .lines()
                .any(|l| l.contains(&aof_shown) && l.contains("writable again")),
            "the recovery is reported"
        );
        server.stop();
        let server = Server::start(opts());
        assert_eq!(cli(&server.sock(), Some(SHOP), &["DBSIZE"]), "13");
        server.stop();
    }

    /// The same with `persist = "everysec"`: a write is acknowledged before it is
    /// logged (that is everysec's promise), so the one that meets the full disk
    /// is acknowledged and kept for the retry; every write after it is refused
    /// with MISCONF until space returns; nothing acknowledged is lost.
    #[test]
    fn everysec_on_a_full_disk_refuses_writes_and_loses_nothing_acknowledged() {
        captured_log();
        let dir = TempDir::new("fulle");
        let disk = dir.path().join("disk");
        let Some(_tmpfs) = Tmpfs::mount(&disk, "1m") else {
            return;
        };
        let filler = disk.join("filler");
        std::fs::write(&filler, vec![0u8; 640 * 1024]).unwrap();
        let opts = || StoreOptions {
            aof_path: Some(disk.join("store.aof")),
            persist: Persist::EverySec,
            ..options(dir.path())
        };
        let server = Server::start(opts());
        let mut raw = Raw::login(&server.sock(), SHOP);
        let value = "v".repeat(64 * 1024);
        let mut acked = 0;
        let refused = loop {
            let reply = raw.call(&["SET", &format!("e{acked}"), &value]);
            if reply != "+OK" {
                break reply;
            }
            acked += 1;
            assert!(acked < 16, "16 writes of 64 KiB fit on a full 1 MiB disk");
        };
        assert!(refused.starts_with("-MISCONF "), "{refused}");
        for _ in 0..3 {
            assert!(raw.call(&["SET", "again", "x"]).starts_with("-MISCONF "));
        }
        let aof_shown = disk.join("store.aof").display().to_string();
        let failures = || {
            captured_log()
                .lines()
                .filter(|l| l.contains(&aof_shown) && l.contains("refusing writes"))
                .count()
        };
        // The refusal can be seen a moment before the writer thread's line.
        wait_until("the failure reported", Duration::from_secs(5), || {
            failures() > 0
        });
        assert_eq!(failures(), 1, "reported once");
        std::fs::remove_file(&filler).unwrap();
        wait_until("writes accepted again", Duration::from_secs(10), || {
            raw.call(&["SET", "again", "x"]) == "+OK"
        });
        server.stop();
        let server = Server::start(opts());
        let keys = cli(&server.sock(), Some(SHOP), &["DBSIZE"]);
        assert_eq!(
            keys,
            (acked + 1).to_string(),
            "every acknowledged write kept"
        );
        server.stop();
    }
}

// ---------------------------------------------------------------------------
// Counters for the supervisor's metrics (`StoreHandle::counters`)
// ---------------------------------------------------------------------------

mod counters {
    use super::*;

    #[test]
    fn commands_and_expirations_are_counted() {
        let dir = TempDir::new("count");
        let server = Server::start(options(dir.path()));
        let before = server.handle.counters();
        assert_eq!(before.expired, 0);
        let mut raw = Raw::login(&server.sock(), SHOP);
        let after_login = server.handle.counters().commands;
        assert_eq!(raw.call(&["SET", "a", "1"]), "+OK");
        assert_eq!(raw.call(&["GET", "a"]), "$1");
        assert!(raw.call(&["NOSUCHCOMMAND"]).starts_with("-ERR"));
        assert_eq!(
            server.handle.counters().commands,
            after_login + 3,
            "SET, GET and the unknown command each count once"
        );
        // Three keys that expire (the purge task removes them at their deadline).
        assert_eq!(raw.call(&["SET", "x", "1", "PX", "1"]), "+OK");
        assert_eq!(raw.call(&["SET", "y", "1", "PX", "1"]), "+OK");
        assert_eq!(raw.call(&["SET", "z", "1", "PX", "1"]), "+OK");
        assert_eq!(raw.call(&["SET", "kept", "1", "EX", "3600"]), "+OK");
        wait_until("three keys expired", Duration::from_secs(5), || {
            server.handle.counters().expired == 3
        });
        assert_eq!(raw.call(&["GET", "x"]), "$nil");
        assert_eq!(raw.call(&["EXISTS", "kept"]), ":1");
        assert_eq!(server.handle.counters().expired, 3, "each key counted once");
        server.stop();
    }
}
