//! Issue 9, `/metrics`: the page as real clients read it — fetched by `curl`,
//! parsed by Python's `prometheus_client` (the reference parsers of both text
//! formats) — and moved by a real recycle.

use std::process::{Command, Stdio};
use std::time::Duration;

use appvisor_e2e::*;
use serde_json::Value;

fn config(metrics_port: u16, port: u16) -> String {
    format!(
        r#"
[supervisor]
metrics = "127.0.0.1:{metrics_port}"

[[app]]
name = "web"
command = ["{demo}"]
processes = 2
listen = ["tcp://127.0.0.1:{port}"]
[app.watch]
enabled = false
"#,
        demo = example_bin("demo").display()
    )
}

/// `curl` the page; (content type, body).
fn curl(port: u16, accept: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "-o",
        "-",
        "-D",
        "/dev/stderr",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl (apt-get install curl)");
    assert!(out.status.success(), "curl failed: {out:?}");
    let headers = String::from_utf8_lossy(&out.stderr).to_string();
    let content_type = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    (content_type, String::from_utf8(out.stdout).unwrap())
}

/// The page parsed by `prometheus_client`'s parser for its format: every sample
/// as `{family, type, name, labels, value}`.
const PARSE: &str = r#"
import json, sys
fmt = sys.argv[1]
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

fn parse(text: &str, format: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args(["-c", PARSE, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the page (pip install prometheus_client):\n{}\n--- page ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().unwrap())
}

#[test]
fn the_page_parses_and_a_manual_recycle_counts_once() {
    let sb = Sandbox::new("metrics");
    let mport = free_port();
    sb.config(&config(mport, free_port()));
    let sv = sb.start();
    let pids = sv.wait_running("web", 2);

    let (content_type, text) = curl(mport, None);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let before = parse(&text, "prometheus");
    let families: std::collections::BTreeSet<&str> = before
        .iter()
        .map(|s| s["family"].as_str().unwrap())
        .collect();
    for family in [
        "appvisor_worker_rss_bytes",
        "appvisor_worker_requests",
        "appvisor_worker_uptime_seconds",
        "appvisor_worker_generation",
        "appvisor_app_state",
        "appvisor_startup_duration_seconds",
        "appvisor_store_keys",
        "appvisor_store_memory_bytes",
        "appvisor_store_clients",
        "appvisor_store_commands",
        "appvisor_store_expired_keys",
        "appvisor_events_log_size_bytes",
        "appvisor_history_size_bytes",
    ] {
        assert!(families.contains(family), "{family} missing from:\n{text}");
    }
    // One series per worker slot, with the figures `status` shows.
    for w in ["0", "1"] {
        let labels = [("app", "web"), ("worker", w)];
        let rss = sample(&before, "appvisor_worker_rss_bytes", &labels).unwrap();
        assert!(rss > 100_000.0, "worker {w} rss {rss}");
        assert_eq!(
            sample(&before, "appvisor_worker_generation", &labels),
            Some(1.0)
        );
        assert!(sample(&before, "appvisor_worker_uptime_seconds", &labels).unwrap() > 0.0);
        assert!(sample(&before, "appvisor_worker_requests_total", &labels).is_some());
    }
    // Filled once the history recorder samples (issue 9, item 1); absent until then.
    for w in ["0", "1"] {
        if let Some(cpu) = sample(
            &before,
            "appvisor_worker_cpu_seconds_total",
            &[("app", "web"), ("worker", w)],
        ) {
            assert!(cpu >= 0.0);
        }
    }
    assert_eq!(
        sample(
            &before,
            "appvisor_app_state",
            &[("app", "web"), ("state", "running")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &before,
            "appvisor_startup_duration_seconds_count",
            &[("app", "web")]
        ),
        Some(2.0),
        "both workers' startups observed"
    );
    assert_eq!(
        sample(
            &before,
            "appvisor_recycles_total",
            &[("app", "web"), ("reason", "manual")]
        ),
        None,
        "no recycle yet"
    );
    assert!(sample(&before, "appvisor_events_log_size_bytes", &[]).unwrap() > 0.0);

    // A recycle of the app (two workers replaced) moves the app's recycle counter
    // by exactly one and the worker counter by two.
    sv.ok(&["recycle", "web"]);
    wait_until(Duration::from_secs(20), "both old workers retired", || {
        (sv.events_of("retired").len() == 2).then_some(())
    });
    let after = wait_until(Duration::from_secs(10), "the recycle counted", || {
        let s = parse(&curl(mport, None).1, "prometheus");
        let web = [("app", "web")];
        let workers = [("app", "web"), ("reason", "manual")];
        (sample(&s, "appvisor_worker_recycles_total", &workers) == Some(2.0)
            && sample(&s, "appvisor_drain_duration_seconds_count", &web) == Some(2.0))
        .then_some(s)
    });
    assert_eq!(
        sample(
            &after,
            "appvisor_recycles_total",
            &[("app", "web"), ("reason", "manual")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "appvisor_worker_generation",
            &[("app", "web"), ("worker", "0")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &after,
            "appvisor_startup_duration_seconds_count",
            &[("app", "web")]
        ),
        Some(4.0),
        "the new workers' startups observed"
    );
    assert_ne!(sv.ready_pids("web"), pids);

    // OpenMetrics when asked for, as Prometheus asks: parsed by the strict parser.
    let (content_type, text) = curl(
        mport,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let om = parse(&text, "openmetrics");
    assert_eq!(
        sample(
            &om,
            "appvisor_recycles_total",
            &[("app", "web"), ("reason", "manual")]
        ),
        Some(1.0)
    );

    // Other paths and methods get plain answers, and the page keeps serving.
    assert_eq!(http_get(mport, "/nope").unwrap().0, 404);
    assert_eq!(http_get(mport, "/").unwrap().0, 200);
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    std::io::Write::write_all(&mut garbage, &[b'x'; 9000]).unwrap();
    drop(garbage);
    assert_eq!(http_get(mport, "/metrics").unwrap().0, 200);
    sv.stop();
}

/// A metrics address in use refuses the start before any worker runs, in one line
/// that names the address and says what to do; `check` says the same.
#[test]
fn a_metrics_address_in_use_refuses_the_start_naming_it() {
    let sb = Sandbox::new("metricsbusy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mport = taken.local_addr().unwrap().port();
    sb.config(&config(mport, free_port()));
    let out = Command::new(appvisor_bin())
        .arg("run")
        .current_dir(&sb.dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("metrics"))
        .unwrap_or_else(|| panic!("no metrics error in:\n{stderr}"));
    assert!(line.contains(&format!("127.0.0.1:{mport}")), "{line}");
    assert!(line.contains("choose another port"), "{line}");
    assert!(
        !sb.path(".appvisor/events.jsonl").exists()
            || std::fs::read_to_string(sb.path(".appvisor/events.jsonl"))
                .unwrap()
                .is_empty(),
        "no worker was started"
    );
    let check = sb.cli(&["check"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains(&format!("127.0.0.1:{mport}")));
}

/// The page has no authentication: a non-loopback address is refused unless
/// `metrics_public = true` says it is meant.
#[test]
fn a_public_metrics_address_needs_metrics_public() {
    let sb = Sandbox::new("metricspub");
    let port = free_port();
    let app = format!(
        "[[app]]\nname = \"web\"\ncommand = [\"{}\"]\nlisten = [\"tcp://127.0.0.1:{}\"]\n",
        example_bin("demo").display(),
        free_port()
    );
    sb.config(&format!(
        "[supervisor]\nmetrics = \"0.0.0.0:{port}\"\n\n{app}"
    ));
    let out = sb.cli(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("appvisor.toml:2:"), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("metrics_public = true"), "{stderr}");
    sb.config(&format!(
        "[supervisor]\nmetrics = \"0.0.0.0:{port}\"\nmetrics_public = true\n\n{app}"
    ));
    let out = sb.cli(&["check"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("metrics = \"0.0.0.0:{port}\"")));
}
