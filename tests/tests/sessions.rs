//! Issue: session state that survives every restart. The session counter app
//! (`worker/examples/sessions_demo.rs`) under the real supervisor, with the
//! embedded store or a real `redis-server`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use appvisor_e2e::sessions::{self, counter_of, create_users, get, SessionLoad};
use appvisor_e2e::*;

fn counter_app(port: u16, processes: u32, mode: &str) -> String {
    format!(
        "[[app]]\nname = \"counter\"\ncommand = [\"{}\"]\nprocesses = {processes}\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.sessions]\nmode = \"{mode}\"\n[app.watch]\nenabled = false\n",
        example_bin("sessions_demo").display()
    )
}

/// 1,000 users and one hot session under load through 20 recycles: every
/// response is exactly the previous counter + 1, and no request fails.
fn survive_recycles(sb: &Sandbox, sv: &Supervisor, port: u16, processes: usize) {
    sv.wait_running("counter", processes);
    let users = create_users(port, 1000);
    let load = SessionLoad::start(port, users, 4, true);
    load.wait_for_requests(500);
    for _ in 0..20 {
        sv.ok(&["recycle", "counter"]);
        load.wait_for_requests(200);
    }
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.examples);
    assert_eq!(
        report.violations, 0,
        "counters lost or repeated: {:?}",
        report.examples
    );
    assert!(report.users.iter().all(|u| u.counter >= 2));
    // And the next request of every user still counts on.
    for u in report.users.iter().take(50) {
        let (_, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(counter_of(&body), Some(u.counter + 1), "{body}");
    }
    let _ = sb;
}

#[test]
fn store_mode_sessions_survive_twenty_recycles_under_load() {
    let sb = Sandbox::new("sess-store");
    let port = free_port();
    sb.config(&counter_app(port, 2, "store"));
    let sv = sb.start();
    survive_recycles(&sb, &sv, port, 2);
}

#[test]
fn handoff_mode_sessions_survive_twenty_recycles_under_load() {
    let sb = Sandbox::new("sess-handoff");
    let port = free_port();
    sb.config(&counter_app(port, 1, "handoff"));
    let sv = sb.start();
    survive_recycles(&sb, &sv, port, 1);
    // The old generations said how many sessions they handed over.
    let handed: u64 = sv
        .events_of("retired")
        .iter()
        .filter_map(|e| e["sessions"].as_u64())
        .sum();
    assert!(handed > 0, "{:?}", sv.events_of("retired"));
}

#[test]
fn store_mode_sessions_survive_kill9_of_a_worker() {
    let sb = Sandbox::new("sess-kill");
    let port = free_port();
    sb.config(&counter_app(port, 1, "store"));
    let sv = sb.start();
    let pid = sv.wait_running("counter", 1)[0];
    let users = create_users(port, 200);
    // SAFETY: kill with a pid we just read.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    sv.wait_event("the crash", Duration::from_secs(10), |e| {
        e["kind"] == "crashed"
    });
    sv.wait_running("counter", 1);
    for u in &users {
        let (code, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(code, 200);
        assert_eq!(counter_of(&body), Some(2), "{body}");
    }
}

/// Each session's next counter, with how many sessions had skipped one: a request
/// that failed (its worker died) may still have been committed, so its session
/// counts one further than its client saw.
fn next_counters(port: u16, users: &[sessions::User]) -> u64 {
    let mut skipped = 0;
    for u in users {
        let (code, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(code, 200, "{body}");
        let n = counter_of(&body).unwrap_or(0);
        if n == u.counter + 2 {
            skipped += 1;
        } else {
            assert_eq!(n, u.counter + 1, "{}: {body}", u.cookie);
        }
    }
    skipped
}

/// Issue 12 (faults): a worker kill -9'd under load in `store` mode loses no
/// session. Sessions at rest keep their exact counter; the loaded ones count on,
/// except that a request in flight on the victim may have been committed before
/// its answer was lost — at most one skip per failed request.
#[test]
fn store_mode_kill9_of_a_worker_under_load_loses_no_session() {
    let sb = Sandbox::new("sess-kill-load");
    let port = free_port();
    sb.config(&counter_app(port, 2, "store"));
    let sv = sb.start();
    let before = sv.wait_running("counter", 2);
    let resting = create_users(port, 300);
    let clients = 4;
    let load = SessionLoad::start(port, create_users(port, 300), clients, true);
    load.wait_for_requests(300);
    let victim = before[0];
    // SAFETY: kill with the pid of a worker this test's supervisor runs.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    sv.wait_event("the crash", Duration::from_secs(10), |e| {
        e["kind"] == "crashed" && e["pid"] == victim
    });
    wait_until(Duration::from_secs(30), "a replacement worker", || {
        let pids = sv.ready_pids("counter");
        (pids.len() == 2 && !pids.contains(&victim)).then_some(())
    });
    load.wait_for_requests(500);
    let report = load.finish();
    // Each client (and the hot one) has at most one request in flight.
    assert!(
        report.failed <= clients as u64 + 1,
        "{} failed: {:?}",
        report.failed,
        report.examples
    );
    for u in &resting {
        let (code, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(counter_of(&body), Some(2), "{}: {body}", u.cookie);
    }
    let skipped = report.violations + next_counters(port, &report.users);
    assert!(
        skipped <= report.failed,
        "{skipped} sessions skipped or lost a count, {} requests failed: {:?}",
        report.failed,
        report.examples
    );
    assert!(sv.stop().success());
}

/// Issue 12 (faults): SIGTERM under load in `handoff` mode. The sessions live in
/// the worker's memory; the supervisor's shutdown makes the worker hand them to
/// the store, and the store's log is written and synced before the exit (0). The
/// next supervisor on the same state dir replays the log: every counter is intact.
#[test]
fn handoff_sessions_survive_sigterm_of_the_supervisor_under_load() {
    let sb = Sandbox::new("sess-term");
    let port = free_port();
    sb.config(&format!(
        "[store]\npersist = \"everysec\"\n{}",
        counter_app(port, 1, "handoff")
    ));
    let sv = sb.start();
    sv.wait_running("counter", 1);
    let resting = create_users(port, 300);
    for u in &resting {
        let (_, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(counter_of(&body), Some(2), "{body}");
    }
    let load = SessionLoad::start(port, create_users(port, 300), 4, true);
    load.wait_for_requests(300);
    let status = sv.stop();
    let report = load.finish();
    assert!(status.success(), "{status:?}");
    // Requests after the socket closed fail without being counted; none that
    // was answered may be lost.
    assert_eq!(
        report.violations, 0,
        "counters lost or repeated: {:?}",
        report.examples
    );
    let sv = sb.start();
    sv.wait_running("counter", 1);
    for u in &resting {
        let (code, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(counter_of(&body), Some(3), "{}: {body}", u.cookie);
    }
    // In-flight requests complete: an answered request was committed, a refused
    // one was not, so every loaded session counts on by exactly one.
    assert_eq!(next_counters(port, &report.users), 0);
    assert!(sv.stop().success());
}

#[test]
fn inproc_sessions_are_lost_on_recycle_as_documented() {
    let sb = Sandbox::new("sess-inproc");
    let port = free_port();
    sb.config(&counter_app(port, 1, "inproc"));
    let sv = sb.start();
    let old = sv.wait_running("counter", 1)[0];
    let users = create_users(port, 20);
    let (_, body, _) = get(port, "/counter", Some(&users[0].cookie)).unwrap();
    assert_eq!(counter_of(&body), Some(2));
    sv.ok(&["recycle", "counter"]);
    // `recycle` returns once the new generation serves; the old one may still
    // accept a connection or two until it handles its stop signal.
    sv.wait_event("the old generation to exit", Duration::from_secs(10), |e| {
        e["kind"] == "retired" && e["pid"] == old
    });
    // The new generation never saw these sessions: every user starts over.
    for u in &users {
        let (_, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(counter_of(&body), Some(1), "{body}");
    }
}

#[test]
fn sessions_written_before_kill9_of_the_supervisor_survive_its_restart() {
    let sb = Sandbox::new("sess-aof");
    let port = free_port();
    sb.config(&counter_app(port, 1, "store"));
    let sv = sb.start();
    sv.wait_running("counter", 1);
    let users = create_users(port, 200);
    for u in &users {
        let (_, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(counter_of(&body), Some(2));
    }
    // With persist = "everysec" the log is written at once and fsynced within a
    // second; a kill -9 of the process loses nothing that reached the kernel.
    // Wait until the log holds every session (the condition), then kill.
    let aof = sb.path(".appvisor/store.aof");
    wait_until(
        Duration::from_secs(10),
        "every session in the append-only log",
        || {
            let log = std::fs::read(&aof).ok()?;
            let text = String::from_utf8_lossy(&log);
            users
                .iter()
                .all(|u| text.contains(u.cookie.split('=').nth(1).unwrap()))
                .then_some(())
        },
    );
    let workers = sv.ready_pids("counter");
    sv.kill9();
    // The guard takes the old workers down with the supervisor; restart after.
    wait_until(
        Duration::from_secs(10),
        "the old workers to be gone",
        || workers.iter().all(|p| !alive(*p)).then_some(()),
    );
    let sv = sb.start();
    sv.wait_running("counter", 1);
    for u in &users {
        let (code, body, _) = get(port, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(counter_of(&body), Some(3), "{body}");
    }
}

fn environ(pid: i32, name: &str) -> String {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    env.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .find_map(|v| v.strip_prefix(&format!("{name}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("{name} not in the environment of {pid}"))
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed (is the `redis` package installed? `pip install redis`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn app_a_cannot_read_scan_or_delete_app_b_sessions() {
    let sb = Sandbox::new("sess-iso");
    let (pa, pb) = (free_port(), free_port());
    let a = counter_app(pa, 1, "store").replace("\"counter\"", "\"a\"");
    let b = counter_app(pb, 1, "store").replace("\"counter\"", "\"b\"");
    sb.config(&format!("{a}{b}"));
    let sv = sb.start();
    let a_pid = sv.wait_running("a", 1)[0];
    sv.wait_running("b", 1);
    let users = create_users(pb, 5);
    let a_url = environ(a_pid, "APPVISOR_STORE_URL");
    let b_key = format!("b:s:{}", users[0].cookie.split('=').nth(1).unwrap());
    // A's own credentials, a Redis client library of another language.
    let seen = python(
        r#"
import redis, sys
r = redis.from_url(sys.argv[1])
print(r.get(sys.argv[2]), sorted(k.decode() for k in r.scan_iter('*')), r.delete(sys.argv[2]), r.exists(sys.argv[2]))
r.flushdb()
"#,
        &[&a_url, &b_key],
    );
    assert_eq!(seen, "None [] 0 0", "app a saw app b's data");
    // B's sessions are untouched.
    for u in &users {
        let (_, body, _) = get(pb, "/counter", Some(&u.cookie)).unwrap();
        assert_eq!(counter_of(&body), Some(2), "{body}");
    }
    // Wrong credentials are refused outright on the main socket.
    let main_sock = sb.path(".appvisor/store.sock");
    let out = Command::new("redis-cli")
        .args([
            "-s",
            main_sock.to_str().unwrap(),
            "--user",
            "b",
            "--pass",
            "wrong",
            "get",
            &b_key,
        ])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("WRONGPASS") || text.contains("invalid"),
        "{text}"
    );
}

struct RedisServer {
    child: Child,
    pub socket: std::path::PathBuf,
}

impl RedisServer {
    fn start(dir: &std::path::Path) -> RedisServer {
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        wait_until(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                let out = Command::new("redis-cli")
                    .arg("-s")
                    .arg(&socket)
                    .arg("ping")
                    .output()
                    .ok()?;
                (String::from_utf8_lossy(&out.stdout).trim() == "PONG").then_some(())
            },
        );
        RedisServer { child, socket }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sessions_survive_recycles_with_a_real_redis_server_as_the_store() {
    let sb = Sandbox::new("sess-redis");
    let redis = RedisServer::start(&sb.dir);
    let port = free_port();
    sb.config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"unix://{}\"\n{}",
        redis.socket.display(),
        counter_app(port, 2, "store")
    ));
    let sv = sb.start();
    let store = sv.status()["store"].as_str().unwrap().to_owned();
    assert!(
        store.starts_with("redis unix://") && store.contains("reachable"),
        "{store}"
    );
    survive_recycles(&sb, &sv, port, 2);
    // The sessions really are in that redis-server.
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(&redis.socket)
        .args(["--scan", "--pattern", "counter:s:*"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 1000);
}

#[test]
fn handoff_sessions_with_a_real_redis_server_survive_recycles() {
    let sb = Sandbox::new("sess-redis-ho");
    let redis = RedisServer::start(&sb.dir);
    let port = free_port();
    sb.config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"unix://{}\"\n{}",
        redis.socket.display(),
        counter_app(port, 1, "handoff")
    ));
    let sv = sb.start();
    survive_recycles(&sb, &sv, port, 1);
}

/// Three `redis-server` masters joined by `redis-cli --cluster create`.
struct RedisCluster {
    children: Vec<Child>,
    ports: Vec<u16>,
}

impl RedisCluster {
    fn start(dir: &std::path::Path) -> RedisCluster {
        let mut cluster = RedisCluster {
            children: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..3 {
            let (port, bus) = (free_port(), free_port());
            let node_dir = dir.join(format!("redis-{port}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            wait_until(
                Duration::from_secs(10),
                "a cluster node to answer PING",
                || (cluster.cli(port, &["ping"]).trim() == "PONG").then_some(()),
            );
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli (apt-get install redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        for &port in &cluster.ports {
            wait_until(Duration::from_secs(30), "cluster_state:ok", || {
                cluster
                    .cli(port, &["cluster", "info"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
        }
        cluster
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn sessions_survive_recycles_with_a_redis_cluster_as_the_store() {
    let sb = Sandbox::new("sess-cluster");
    let cluster = RedisCluster::start(&sb.dir);
    let port = free_port();
    // One node's address, as a user would write it: the SDK finds the rest.
    sb.config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n{}",
        cluster.ports[0],
        counter_app(port, 2, "store")
    ));
    let sv = sb.start();
    let store = sv.status()["store"].as_str().unwrap().to_owned();
    assert!(
        store.starts_with("redis cluster redis://127.0.0.1:"),
        "{store}"
    );
    survive_recycles(&sb, &sv, port, 2);
    // The sessions are spread over every master.
    let per_master: Vec<u64> = cluster
        .ports
        .iter()
        .map(|&p| cluster.cli(p, &["dbsize"]).trim().parse().unwrap())
        .collect();
    assert!(per_master.iter().all(|&n| n > 0), "{per_master:?}");
    assert!(per_master.iter().sum::<u64>() >= 1000, "{per_master:?}");
}
