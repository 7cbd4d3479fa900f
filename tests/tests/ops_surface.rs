//! Foundation promises: both services boot observable, log JSON, expose the
//! documented ops endpoints and metrics, and stop cleanly on SIGTERM.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{
    check_monitoring_names, eventually, get_text, started_ops_addr, workspace_root,
    FakeDiscordProc, Proc,
};
use serde_json::Value;

/// `promtool check metrics` on a scrape; required when AGENTMON_REQUIRE_TOOLS=1
/// (scripts/test installs promtool), skipped with a reason otherwise.
fn promtool_check(name: &str, text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("AGENTMON_REQUIRE_TOOLS").is_none(),
            "promtool is required (AGENTMON_REQUIRE_TOOLS is set) but not installed"
        );
        eprintln!(
            "SKIP promtool check for {name}: promtool not installed (scripts/test installs it)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed for {name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The watcher metric names DESIGN.md §5 documents (every backticked
/// `watcher_…` name in that section): the spec the registry is checked against.
fn documented_watcher_metrics() -> BTreeSet<String> {
    let design = std::fs::read_to_string(workspace_root().join("docs/DESIGN.md")).unwrap();
    let section = design
        .split("\n## ")
        .find(|s| s.starts_with("5."))
        .expect("DESIGN.md has a section 5");
    let names: BTreeSet<String> = section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| {
            let name: String = code
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            name.starts_with("watcher_").then_some(name)
        })
        .collect();
    assert!(
        names.len() >= 20,
        "only {} names in DESIGN.md §5",
        names.len()
    );
    names
}

#[test]
fn every_alert_has_annotations_and_a_runbook() {
    let deploy = workspace_root().join("deploy");
    let rules = std::fs::read_to_string(deploy.join("prometheus/agentmon-rules.yml")).unwrap();
    let runbooks = std::fs::read_to_string(deploy.join("runbooks.md")).unwrap();
    let headings: BTreeSet<&str> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let mut alerts = BTreeSet::new();
    for chunk in rules.split("- alert: ").skip(1) {
        let alert = chunk.split_whitespace().next().unwrap();
        for key in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(chunk.contains(key), "{alert} lacks {key}");
        }
        let anchor = format!("/deploy/runbooks.md#{}\n", alert.to_lowercase());
        assert!(
            chunk.contains(&anchor),
            "{alert}'s runbook_url does not end in {anchor:?}"
        );
        assert!(
            headings.contains(alert),
            "deploy/runbooks.md has no \"## {alert}\" section"
        );
        alerts.insert(alert);
    }
    assert!(alerts.len() >= 10, "only {} alerts found", alerts.len());
    for heading in headings.iter().filter(|h| h.starts_with("Agentmon")) {
        assert!(
            alerts.contains(heading),
            "deploy/runbooks.md documents {heading}, which is no alert"
        );
    }
}

/// The checks shared by both services.
async fn check_ops_surface(name: &str, proc: &mut Proc, ops: &str, prefix: &str) {
    let (code, body) = get_text(&format!("http://{ops}/livez")).await;
    assert_eq!(code, 200, "{name} /livez");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );

    let (code, body) = get_text(&format!("http://{ops}/readyz")).await;
    assert!(code == 200 || code == 503, "{name} /readyz {code}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert!(
        matches!(ready["status"].as_str(), Some("ready" | "not_ready")),
        "{ready}"
    );
    assert_eq!(
        ready["status"] == "ready",
        code == 200,
        "status matches code: {ready}"
    );
    for (check, v) in ready["checks"].as_object().unwrap() {
        assert!(
            v["status"].is_string() && v["detail"].is_string() && v["since"].is_string(),
            "{check}: {v}"
        );
    }

    let (code, body) = get_text(&format!("http://{ops}/healthz")).await;
    assert_eq!(code, 200, "{name} /healthz");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(
        matches!(
            health["status"].as_str(),
            Some("healthy" | "degraded" | "unhealthy")
        ),
        "{health}"
    );
    assert!(
        health["version"].is_string() && health["uptime_seconds"].is_u64(),
        "{health}"
    );
    assert!(health["checks"].is_object(), "{health}");

    let (code, metrics) = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(code, 200);
    for needle in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        &format!("{prefix}_build_info{{version=\""),
        "http_server_requests_total{",
        "route=\"/livez\"",
        "route=\"/healthz\"",
        "http_server_request_duration_seconds_bucket{",
    ] {
        assert!(
            metrics.contains(needle),
            "{name} /metrics lacks {needle}:\n{metrics}"
        );
    }
    let livez_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_requests_total{")
                && l.contains("route=\"/livez\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no /livez request counted:\n{metrics}"));
    assert!(
        livez_line.ends_with(" 1"),
        "exactly one /livez so far: {livez_line}"
    );
    let (_, unknown) = get_text(&format!("http://{ops}/no/such/path/12345")).await;
    drop(unknown);
    let (_, metrics) = get_text(&format!("http://{ops}/metrics")).await;
    assert!(
        !metrics.contains("/no/such/path"),
        "raw paths must not become labels"
    );
    promtool_check(name, &metrics);

    proc.sigterm();
    let status = proc.wait_exit(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "{name} did not exit within 5 s of SIGTERM:\n{}",
            proc.output()
        )
    });
    assert!(
        status.success(),
        "{name} exit status {status:?}:\n{}",
        proc.output()
    );

    for line in proc.stdout() {
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{name} stdout line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "{name} log line lacks {key}: {line}");
        }
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == 24,
            "RFC 3339 with ms: {ts}"
        );
    }
}

#[tokio::test]
async fn watcher_boots_observable_and_stops_on_sigterm() {
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("session.jsonl");
    let mut watcher = Proc::start(
        "watcher",
        &[],
        &[
            ("OPS_ADDR", "127.0.0.1:0".into()),
            ("TRANSCRIPT_PATH", transcript.display().to_string()),
            ("DISCORD_WEBHOOK_URL", fake.webhook_url.clone().unwrap()),
            ("STATE_DIR", dir.path().join("state").display().to_string()),
        ],
    );
    let ops = started_ops_addr(&watcher).await;
    // No transcript yet: not ready, and the reason says so.
    let (code, body) = get_text(&format!("http://{ops}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no transcript yet"), "{body}");
    std::fs::write(&transcript, "").unwrap();
    eventually(
        "ready once the transcript exists",
        Duration::from_secs(10),
        || async {
            let (code, _) = get_text(&format!("http://{ops}/readyz")).await;
            (code == 200).then_some(())
        },
    )
    .await;
    // The instrumentation spec (DESIGN.md §5): every documented series exists
    // from the first scrape, before anything happened.
    let (_, metrics) = get_text(&format!("http://{ops}/metrics")).await;
    let documented = documented_watcher_metrics();
    for name in &documented {
        let series = |l: &&str| {
            l.strip_prefix(name.as_str()).is_some_and(|rest| {
                ["{", " ", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|end| rest.starts_with(end))
            })
        };
        assert!(
            metrics.lines().any(|l| series(&l)),
            "watcher /metrics lacks the documented {name}:\n{metrics}"
        );
    }
    // And the other way: nothing the watcher exports is missing from the spec.
    for line in metrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.split_whitespace().next())
            .filter(|n| n.starts_with("watcher_"))
        {
            assert!(
                documented.contains(name),
                "{name} is exported but not documented in DESIGN.md §5"
            );
        }
    }
    check_monitoring_names(
        "watcher",
        &metrics,
        &["watcher_", "http_server_", "process_"],
    );
    check_ops_surface("watcher", &mut watcher, &ops, "watcher").await;
}

#[tokio::test]
async fn bot_bridge_boots_observable_and_stops_on_sigterm() {
    let fake = FakeDiscordProc::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Proc::start(
        "bot-bridge",
        &[],
        &[
            ("OPS_ADDR", "127.0.0.1:0".into()),
            ("API_ADDR", "127.0.0.1:0".into()),
            ("API_TOKEN", "api-token-for-tests-0123456789".into()),
            ("DISCORD_BOT_TOKEN", "bot-token-for-tests-0123456789".into()),
            ("DISCORD_API_BASE", fake.api_base.clone()),
            ("GUILD_ID", "1".into()),
            (
                "DATABASE_URL",
                format!("sqlite://{}", dir.path().join("b.db").display()),
            ),
        ],
    );
    let ops = started_ops_addr(&bridge).await;
    check_ops_surface("bot-bridge", &mut bridge, &ops, "bridge").await;
}
