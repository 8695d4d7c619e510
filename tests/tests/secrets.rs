//! Issue 12, secrets: env values marked `secret_env` and the store's per-app
//! passwords never appear in `check`, `status`, events or the supervisor's logs.

use std::time::Duration;

use appvisor_e2e::*;

const SECRET: &str = "hunter2-e2e-secret";

/// The value of `name` in the environment of `pid`.
fn environ(pid: i32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{name}=")).map(str::to_string)
    })
}

#[test]
fn secrets_stay_out_of_check_status_events_and_logs() {
    let sb = Sandbox::new("secrets");
    let port = free_port();
    let store_port = free_port();
    sb.config(&format!(
        r#"
[store]
tcp = "127.0.0.1:{store_port}"

[[app]]
name = "web"
command = ["{demo}"]
listen = ["tcp://127.0.0.1:{port}"]
env = {{ DB_PASSWORD = "{SECRET}", MODE = "prod" }}
secret_env = ["DB_PASSWORD"]
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    ));

    let check = sb.cli(&["check"]);
    assert!(check.status.success(), "{check:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(!text.contains(SECRET), "check shows the secret: {text}");
    assert!(text.contains("DB_PASSWORD = \"(redacted)\""), "{text}");
    assert!(text.contains("MODE = \"prod\""), "{text}");

    let sv = sb.start();
    let pid = sv.wait_running("web", 1)[0];
    // The worker itself gets the real values.
    assert_eq!(environ(pid, "DB_PASSWORD").as_deref(), Some(SECRET));
    let store_url = environ(pid, "APPVISOR_STORE_URL").expect("a store url");
    let token = store_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(creds, _)| creds.rsplit_once(':'))
        .map(|(_, pw)| pw.to_string())
        .expect("a password in the store url");
    assert!(token.len() >= 16, "{store_url}");

    sv.ok(&["recycle", "web"]);
    sv.wait_running("web", 1);
    let status = sv.ok(&["status"]);
    let status_json = sv.ok(&["status", "--json"]);
    assert!(sv.stop().success());
    wait_until(Duration::from_secs(5), "the event log", || {
        std::fs::metadata(sb.path(".appvisor/events.jsonl")).ok()
    });
    let mut seen = vec![
        ("status", status),
        ("status --json", status_json),
        ("supervisor stderr", sv_file(&sb, "supervisor.err")),
        ("supervisor stdout", sv_file(&sb, "supervisor.out")),
        ("events", sv_file(&sb, ".appvisor/events.jsonl")),
    ];
    if let Ok(dir) = std::fs::read_dir(sb.path(".appvisor/logs")) {
        for f in dir.flatten() {
            seen.push(("log", std::fs::read_to_string(f.path()).unwrap_or_default()));
        }
    }
    for (what, text) in seen {
        assert!(
            !text.contains(SECRET),
            "{what} shows the secret env value: {text}"
        );
        assert!(
            !text.contains(&token),
            "{what} shows the store password: {text}"
        );
    }
}

fn sv_file(sb: &Sandbox, rel: &str) -> String {
    std::fs::read_to_string(sb.path(rel)).unwrap_or_default()
}
