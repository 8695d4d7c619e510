//! Issue 10: memory limits relative to the machine. Each test makes a real memory
//! cgroup with a limit (cgroup v2 where the memory controller is enabled, else v1
//! — CI has v1 memory beside a v2 hierarchy), starts the real supervisor inside it,
//! and drives real demo workers: percentages resolved against the cgroup limit, a
//! leak recycled near its share, memory pressure recycling the one worker that
//! grew, and the kernel's OOM killer named.
//!
//! Where no memory cgroup can be made (no root, no memory controller), each test
//! says why and passes — except under `CI`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use appvisor_e2e::load::Load;
use appvisor_e2e::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const LONG: Duration = Duration::from_secs(60);

/// A memory cgroup made for one test, removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// Makes a cgroup limited to `limit` bytes, or says why it cannot.
    fn create(name: &str, limit: u64) -> Result<MemoryCgroup, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mounts: Vec<(String, String, String)> = mountinfo
            .lines()
            .filter_map(|l| {
                let (fields, rest) = l.split_once(" - ")?;
                let mut r = rest.split_whitespace();
                let (fstype, _, options) = (r.next()?, r.next()?, r.next().unwrap_or(""));
                let point = fields.split_whitespace().nth(4)?;
                Some((fstype.to_owned(), point.to_owned(), options.to_owned()))
            })
            .collect();
        let unique = format!("appvisor-test-{name}-{}", std::process::id());
        let mut why = Vec::new();
        // v2: a child of the hierarchy's root, whose subtree_control may enable
        // memory even with processes in it (the root is exempt from the
        // no-internal-processes rule).
        if let Some((_, point, _)) = mounts.iter().find(|m| m.0 == "cgroup2") {
            let root = Path::new(point);
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") {
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
                let dir = root.join(&unique);
                match std::fs::create_dir(&dir)
                    .and_then(|_| std::fs::write(dir.join("memory.max"), limit.to_string()))
                {
                    Ok(()) => return Ok(MemoryCgroup { dir, v2: true }),
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        why.push(format!("v2 at {}: {e}", dir.display()));
                    }
                }
            } else {
                why.push(format!(
                    "v2 at {point}: the memory controller is not enabled there (it is bound to v1)"
                ));
            }
        }
        if let Some((_, point, _)) = mounts
            .iter()
            .find(|m| m.0 == "cgroup" && m.2.split(',').any(|o| o == "memory"))
        {
            let dir = Path::new(point).join(&unique);
            match std::fs::create_dir(&dir)
                .and_then(|_| std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()))
            {
                Ok(()) => return Ok(MemoryCgroup { dir, v2: false }),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    why.push(format!("v1 at {}: {e}", dir.display()));
                }
            }
        } else {
            why.push("no v1 memory hierarchy is mounted".into());
        }
        Err(why.join("; "))
    }

    /// `sh -c 'echo $$ > …/cgroup.procs; exec "$0" "$@"' appvisor`: the command
    /// runs inside the cgroup from its first instruction.
    fn command(&self) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                self.dir.display()
            ))
            .arg(appvisor_bin());
        c
    }

    /// Starts `appvisor run` in the sandbox, inside this cgroup.
    fn start(&self, sb: &Sandbox) -> Supervisor {
        let out = std::fs::File::create(sb.path("supervisor.out")).unwrap();
        let err = std::fs::File::create(sb.path("supervisor.err")).unwrap();
        let sv = sb.start_with(self.command().stdout(out).stderr(err));
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == sv.pid().to_string()),
            "the supervisor {} is not in {}: {procs}",
            sv.pid(),
            self.dir.display()
        );
        sv
    }

    fn set_limit(&self, limit: u64) {
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(self.dir.join(file), limit.to_string()).unwrap();
    }

    /// Bytes charged to the cgroup now.
    fn usage(&self) -> u64 {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn describe(&self) -> String {
        format!(
            "{} (cgroup {})",
            self.dir.display(),
            if self.v2 { "v2" } else { "v1" }
        )
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The supervisor stopped with the test; its last workers may still be
        // leaving.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The cgroup, or `None` after saying why (a failure under `CI`).
fn memory_cgroup(name: &str, limit: u64) -> Option<MemoryCgroup> {
    match MemoryCgroup::create(name, limit) {
        Ok(c) => {
            eprintln!("memory cgroup: {}", c.describe());
            Some(c)
        }
        Err(why) => {
            let msg = format!("no memory cgroup can be made here, so this test cannot run: {why}");
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

fn demo_app(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[app]]\nname = \"{name}\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n{extra}\n[app.watch]\nenabled = false\n",
        demo = example_bin("demo").display()
    )
}

fn recycles(sv: &Supervisor, app: &str) -> Vec<Value> {
    sv.events_of("recycle")
        .into_iter()
        .filter(|e| e["app"] == app)
        .collect()
}

#[test]
fn a_percentage_is_a_share_of_the_cgroup_limit_and_a_leak_is_recycled_near_it() {
    let Some(cg) = memory_cgroup("share", 512 * MIB) else {
        return;
    };
    let sb = Sandbox::new("mem-share");
    let port = free_port();
    let rate_mb = 20.0;
    sb.config(&demo_app(
        "web",
        port,
        "env = { DEMO_LEAK_MB_PER_SEC = \"20\" }\n[app.recycle]\nprivate_memory = \"25%\"\nmemory_check_interval = \"500ms\"\n",
    ));

    // `check`, run in the cgroup, shows the share, its bytes and where they came from.
    let out = cg
        .command()
        .arg("check")
        .current_dir(&sb.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("private_memory = \"25%\"  # 25 % of 512 MiB, cgroup limit = 128MiB"),
        "{stdout}"
    );
    assert!(
        stderr.contains("memory percentages are shares of 512 MiB, cgroup limit"),
        "{stderr}"
    );

    let sv = cg.start(&sb);
    sv.wait_running("web", 1);
    let limits = sv.app("web")["memory_limits"].clone();
    assert_eq!(
        limits,
        serde_json::json!(["private_memory 128 MiB (25 % of 512 MiB, cgroup limit)"]),
    );
    let text = String::from_utf8_lossy(&sv.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("memory limit: private_memory 128 MiB (25 % of 512 MiB, cgroup limit)"),
        "{text}"
    );

    let load = Load::start(port, 4, true, "/");
    let r = wait_until(LONG, "a memory recycle", || {
        let r = recycles(&sv, "web");
        (!r.is_empty()).then_some(r)
    });
    load.wait_for_requests(100);
    let report = load.finish();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let cause = &r[0]["cause"];
    assert_eq!(r[0]["reason"], "memory");
    assert_eq!(cause["kind"], "private_memory");
    assert_eq!(cause["limit"].as_u64().unwrap(), 128 * MIB);
    // Near the share, not at another base's (50 % would be 256 MiB): up to 3 s of
    // leak over it. A worker starved of CPU on a busy machine leaks in a burst when
    // it runs again (a fresh clone's CI once saw 173 MiB with 1.5 s of slack); how
    // soon a crossing is acted on is measured by `bench/triggers.sh`, not here.
    let bytes = cause["bytes"].as_u64().unwrap() as f64;
    let slack = rate_mb * 3.0 * MIB as f64;
    assert!(
        bytes > (128 * MIB) as f64 && bytes <= (128 * MIB) as f64 + slack,
        "recycled at {bytes} bytes: not near 128 MiB"
    );

    // The limit changes under the running supervisor; a reload resolves the share
    // again.
    cg.set_limit(384 * MIB);
    let out = sv.cli(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    wait_until(LONG, "the share resolved again", || {
        (sv.app("web")["memory_limits"]
            == serde_json::json!(["private_memory 96 MiB (25 % of 384 MiB, cgroup limit)"]))
        .then_some(())
    });
}

/// The sum of `GET /leak?mb=` the test made the worker keep.
fn leak(port: u16, mb: u64) {
    let _ = http_get(port, &format!("/leak?mb={mb}"));
}

#[test]
fn memory_pressure_recycles_the_leaking_worker_before_the_oom_killer_and_waits_its_cooldown() {
    let Some(cg) = memory_cgroup("pressure", 512 * MIB) else {
        return;
    };
    let sb = Sandbox::new("mem-pressure");
    let (leaky, steady) = (free_port(), free_port());
    let cooldown = Duration::from_secs(15);
    sb.config(&format!(
        "[supervisor]\nmemory_pressure = {{ min_available = \"30%\", cooldown = \"15s\" }}\n{}{}",
        demo_app("leaky", leaky, ""),
        demo_app("steady", steady, ""),
    ));
    let sv = cg.start(&sb);
    let first = sv.wait_running("leaky", 1)[0];
    let steady_pid = sv.wait_running("steady", 1)[0];
    let load_leaky = Load::start(leaky, 2, true, "/");
    let load_steady = Load::start(steady, 2, true, "/");

    // Grow the leaky worker 5 MiB at a time until 10 MiB less than the 30 % of
    // 512 MiB to keep free is left (~370 MiB in use), long before the 512 MiB at
    // which the kernel would kill; then stop and wait for the recycle.
    let min_available = 512 * MIB * 3 / 10;
    let short_at = 512 * MIB - min_available + 10 * MIB;
    let mut pushed = 0;
    while cg.usage() < short_at {
        leak(leaky, 5);
        pushed += 5;
    }
    let r = wait_until(LONG, "the memory_pressure recycle", || {
        let r = recycles(&sv, "leaky");
        (!r.is_empty()).then_some(r)
    });
    let at = Instant::now();
    let e = &r[0];
    assert_eq!(e["reason"], "memory_pressure", "{e}");
    assert_eq!(e["old_pid"], first, "{e}");
    let cause = &e["cause"];
    assert_eq!(cause["min_available"].as_u64().unwrap(), min_available);
    assert!(cause["available"].as_u64().unwrap() < min_available, "{e}");
    assert!(
        cause["growth"].as_u64().unwrap() >= 200 * MIB,
        "the leak's growth: {e}"
    );
    eprintln!("recycled after {pushed} MiB were leaked: {}", e["detail"]);

    // The new worker leaks too, keeping memory short: no second recycle inside the
    // cooldown. Grown until short again, still well under the limit.
    sv.wait_running("leaky", 1);
    while cg.usage() < short_at {
        leak(leaky, 5);
    }
    while at.elapsed() < cooldown - Duration::from_secs(2) {
        assert_eq!(
            recycles(&sv, "leaky").len(),
            1,
            "a second recycle inside the cooldown"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // After it, the shortage is acted on again.
    let r = wait_until(
        LONG,
        "a second memory_pressure recycle after the cooldown",
        || {
            let r = recycles(&sv, "leaky");
            (r.len() >= 2).then_some(r)
        },
    );
    assert_eq!(r[1]["reason"], "memory_pressure");

    let (a, b) = (load_leaky.finish(), load_steady.finish());
    assert_eq!(a.failed, 0, "leaky: {:?}", a.errors);
    assert_eq!(b.failed, 0, "steady: {:?}", b.errors);
    assert!(a.ok > 0 && b.ok > 0);
    assert!(
        sv.events_of("crashed").is_empty(),
        "a worker died: {:?}",
        sv.events_of("crashed")
    );
    assert!(
        recycles(&sv, "steady").is_empty(),
        "the other app was recycled"
    );
    assert_eq!(sv.ready_pids("steady"), vec![steady_pid]);
}

#[test]
fn a_worker_the_kernel_oom_kills_is_logged_as_oom_killed() {
    let Some(cg) = memory_cgroup("oom", 192 * MIB) else {
        return;
    };
    let sb = Sandbox::new("mem-oom");
    let port = free_port();
    sb.config(&demo_app("web", port, ""));
    let sv = cg.start(&sb);
    let pid = sv.wait_running("web", 1)[0];
    // Past the cgroup's limit: the kernel's OOM killer takes the worker.
    let _ = http_get(port, "/leak?mb=400");
    let e = sv.wait_event("the crashed event", LONG, |e| {
        e["kind"] == "crashed" && e["pid"] == pid
    });
    assert_eq!(e["reason"], "oom_killed", "{e}");
    assert_eq!(e["signal"], "SIGKILL", "{e}");
    let detail = e["detail"].as_str().unwrap();
    eprintln!("crashed: {detail}");
    assert!(detail.starts_with("oom_killed: "), "{detail}");
    assert!(
        detail.contains(&format!("Killed process {pid} ")) || detail.contains("oom_kill"),
        "{detail}"
    );
    // And it is replaced.
    sv.wait_running("web", 1);
}

#[test]
fn a_sigkill_from_someone_else_is_not_called_an_oom_kill() {
    let Some(cg) = memory_cgroup("kill9", 512 * MIB) else {
        return;
    };
    let sb = Sandbox::new("mem-kill9");
    let port = free_port();
    sb.config(&demo_app("web", port, ""));
    let sv = cg.start(&sb);
    let pid = sv.wait_running("web", 1)[0];
    // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let e = sv.wait_event("the crashed event", LONG, |e| {
        e["kind"] == "crashed" && e["pid"] == pid
    });
    assert_eq!(e["signal"], "SIGKILL", "{e}");
    assert!(e.get("reason").is_none_or(|r| r.is_null()), "{e}");
}
