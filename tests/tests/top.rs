//! `appvisor top` in a real terminal: tmux at 80×24 runs it against a real
//! supervisor with a leaking demo worker; the test reads the screen with
//! `capture-pane`, presses keys with `send-keys`, and waits on what the screen
//! shows (with deadlines, never sleeps).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appvisor_e2e::*;

const LONG: Duration = Duration::from_secs(30);

/// A tmux server of the test's own (its socket in the sandbox), one 80×24 pane.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Runs `cmd` (a shell command) in a detached 80×24 session. When `cmd`
    /// ends, the pane says `EXITED <code>` and waits, so its last screen stays.
    fn start(sb: &Sandbox, cmd: &str) -> Tmux {
        let t = Tmux {
            socket: sb.path("tmux.sock"),
        };
        let pane = format!("{cmd}; echo EXITED $?; read _");
        let out = t
            .tmux()
            .args(["new-session", "-d", "-x", "80", "-y", "24", "-s", "top"])
            .arg(pane)
            .output()
            .expect("tmux runs (the Debian package `tmux`; .ci/run installs it)");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&self.socket)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null());
        c
    }

    /// The pane as text, one line per row.
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self
            .tmux()
            .args(["send-keys", "-t", "top", keys])
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux send-keys {keys}");
    }

    /// Waits until the screen satisfies `cond` (polled every 20 ms, like
    /// `wait_until`); on timeout the message has the last screen.
    fn wait<T>(&self, what: &str, mut cond: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + LONG;
        loop {
            let screen = self.screen();
            if let Some(v) = cond(&screen) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {LONG:?} waiting for {what}; the screen was:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

/// One worker row of the screen: (worker, pid, generation, state, rss MiB).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    worker: u32,
    pid: i32,
    generation: u64,
    state: String,
    mib: f64,
}

/// The worker rows under the `W PID GEN …` header.
fn rows(screen: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut in_table = false;
    for line in screen.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"W") && f.get(1) == Some(&"PID") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let parsed = (|| {
            Some(Row {
                worker: f.first()?.parse().ok()?,
                pid: f.get(1)?.parse().ok()?,
                generation: f.get(2)?.parse().ok()?,
                state: f.get(3)?.to_string(),
                mib: f.get(6)?.trim_end_matches('M').parse().ok()?,
            })
        })();
        match parsed {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

fn is_braille(c: char) -> bool {
    ('\u{2801}'..='\u{28ff}').contains(&c)
}

#[test]
fn top_shows_a_leaking_worker_against_its_limit_and_recycles_it() {
    let sb = Sandbox::new("top");
    let port = free_port();
    sb.config(&format!(
        "[[app]]\nname = \"leaky\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n\
         env = {{ DEMO_LEAK_MB_PER_SEC = \"4\" }}\n[app.recycle]\nrss = \"500MiB\"\n[app.watch]\nenabled = false\n",
        demo = example_bin("demo").display()
    ));
    let sv = sb.start();
    sv.wait_running("leaky", 1);
    let tmux = Tmux::start(
        &sb,
        &format!(
            "cd {} && {} top",
            sb.dir.display(),
            appvisor_bin().display()
        ),
    );

    // The memory chart of the app, with the rss limit's dashed line and label.
    let first = tmux.wait("the chart with the limit line", |s| {
        let title = s.contains("memory of leaky (rss, MiB)");
        let limit = s
            .lines()
            .any(|l| l.contains(" rss 500M ") && l.matches('╌').count() >= 20);
        let r = rows(s);
        (title && limit && r.len() == 1).then(|| r[0].clone())
    });
    assert_eq!(first.generation, 1);
    assert_eq!(first.state, "ready");
    // The worker leaks: its figure grows on screen, and its line is drawn.
    tmux.wait("the leak to show", |s| {
        let r = rows(s);
        let grown = r.len() == 1 && r[0].mib >= first.mib + 8.0;
        let drawn = s
            .lines()
            .any(|l| l.contains('│') && l.chars().any(is_braille));
        (grown && drawn).then_some(())
    });
    assert_eq!(sv.app("leaky")["workers"][0]["pid"], first.pid);

    // Recycle: the key asks first; `y` confirms.
    tmux.keys("r");
    tmux.wait("the confirmation", |s| {
        (s.contains("Recycle leaky?") && s.contains("y: yes    n: no")).then_some(())
    });
    assert!(
        sv.events_of("recycle").is_empty(),
        "nothing happens before y"
    );
    tmux.keys("y");
    let new = tmux.wait("generation 2 on the screen", |s| {
        rows(s)
            .into_iter()
            .find(|r| r.generation == 2 && r.state == "ready" && r.pid != first.pid)
    });
    let app = sv.app("leaky");
    assert_eq!(app["workers"][0]["pid"], new.pid, "{app}");
    assert_eq!(app["workers"][0]["generation"], 2, "{app}");
    let recycle = sv.wait_event("the recycle event", LONG, |e| e["kind"] == "recycle");
    assert_eq!(recycle["reason"], "manual");
    // Its marker and reason on the chart and in the last recycles.
    tmux.wait("the recycle in the last recycles", |s| {
        s.lines()
            .any(|l| l.contains("recycle manual"))
            .then_some(())
    });

    // q leaves the alternate screen and exits 0.
    tmux.keys("q");
    tmux.wait("top to exit", |s| s.contains("EXITED 0").then_some(()));
    sv.stop();
}

#[test]
fn top_without_a_terminal_prints_the_status_table() {
    let sb = Sandbox::new("topplain");
    let port = free_port();
    sb.config(&format!(
        "[[app]]\nname = \"plain\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.watch]\nenabled = false\n",
        demo = example_bin("demo").display()
    ));
    let sv = sb.start();
    sv.wait_running("plain", 1);
    let mut top = Command::new(appvisor_bin())
        .arg("top")
        .current_dir(&sb.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = top.stdout.take().unwrap();
    let mut seen = Vec::new();
    wait_until(LONG, "two refreshes of the table", || {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        (text.matches("supervisor pid").count() >= 2).then_some(())
    });
    let _ = top.kill();
    let _ = top.wait();
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("plain  running"), "{text}");
    assert!(
        !text.contains("\x1b[?1049h"),
        "no alternate screen without a terminal: {text:?}"
    );
    sv.stop();
}

#[test]
fn top_started_before_the_supervisor_says_so_and_connects_when_it_runs() {
    let sb = Sandbox::new("topwait");
    let port = free_port();
    sb.config(&format!(
        "[[app]]\nname = \"late\"\ncommand = [\"{demo}\"]\nlisten = [\"tcp://127.0.0.1:{port}\"]\n[app.watch]\nenabled = false\n",
        demo = example_bin("demo").display()
    ));
    let tmux = Tmux::start(
        &sb,
        &format!(
            "cd {} && {} top",
            sb.dir.display(),
            appvisor_bin().display()
        ),
    );
    tmux.wait("the no-supervisor screen", |s| {
        (s.contains("No supervisor answers.") && s.contains("not connected")).then_some(())
    });
    let sv = sb.start();
    sv.wait_running("late", 1);
    tmux.wait("the app once the supervisor runs", |s| {
        (s.contains("▶ late") && rows(s).len() == 1).then_some(())
    });
    tmux.keys("q");
    tmux.wait("top to exit", |s| s.contains("EXITED 0").then_some(()));
    sv.stop();
}
