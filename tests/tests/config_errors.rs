//! Bad configuration fails fast: one clear line naming the key, a non-zero
//! exit, nothing started.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use e2e::run_to_end;

fn assert_config_error(name: &str, args: &[&str], env: &[(&str, String)], key: &str) {
    let (code, stdout, stderr) = run_to_end(name, args, env);
    assert_ne!(code, 0, "{name} must fail; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line expected, got:\n{stderr}");
    assert!(
        lines[0].contains(key),
        "the error names {key}: {}",
        lines[0]
    );
    assert!(
        !stdout.contains("\"started\""),
        "nothing may start: {stdout}"
    );
}

#[test]
fn watcher_rejects_unknown_file_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "poll_interval_ms = 100\npol_interval = 3\n").unwrap();
    assert_config_error(
        "watcher",
        &["check-config", "--config", file.to_str().unwrap()],
        &[],
        "pol_interval",
    );
}

#[test]
fn watcher_rejects_malformed_webhook_url() {
    assert_config_error(
        "watcher",
        &["check-config"],
        &[(
            "DISCORD_WEBHOOK_URL",
            "https://discord.com/api/webhooks/notanid/SeCrEtToKeN".into(),
        )],
        "DISCORD_WEBHOOK_URL",
    );
    let (_, out, err) = run_to_end(
        "watcher",
        &["check-config"],
        &[(
            "DISCORD_WEBHOOK_URL",
            "https://discord.com/api/webhooks/notanid/SeCrEtToKeN".into(),
        )],
    );
    assert!(
        !out.contains("SeCrEtToKeN") && !err.contains("SeCrEtToKeN"),
        "token leaked: {err}"
    );
}

#[test]
fn watcher_rejects_bad_values_naming_the_key() {
    // The bot-bridge bearer: a token or a token file, exactly one.
    assert_config_error(
        "watcher",
        &["check-config"],
        &[
            ("BRIDGE_URL", "http://127.0.0.1:1".into()),
            ("BRIDGE_TOKEN", "bridge-SeCrEt".into()),
            (
                "BRIDGE_TOKEN_FILE",
                "/var/run/secrets/agentmon/token".into(),
            ),
        ],
        "BRIDGE_TOKEN_FILE",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("BRIDGE_URL", "http://127.0.0.1:1".into())],
        "BRIDGE_TOKEN",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("BATCH_SIZE", "11".into())],
        "BATCH_SIZE",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("OPS_ADDR", "localhost".into())],
        "OPS_ADDR",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("QUEUE_MAX_BYTES", "lots".into())],
        "QUEUE_MAX_BYTES",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("DELIVERY_MAX_ELAPSED", "soon".into())],
        "DELIVERY_MAX_ELAPSED",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("CHANNEL_WINDOW", "10ms".into())],
        "CHANNEL_WINDOW",
    );
    assert_config_error(
        "watcher",
        &["check-config"],
        &[("FILTERS", "{not json".into())],
        "FILTERS",
    );
}

#[test]
fn watcher_rejects_unreadable_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    assert_config_error(
        "watcher",
        &["check-config", "--config", missing.to_str().unwrap()],
        &[],
        "nope.toml",
    );
    // A directory cannot be read as a file either.
    let d = dir.path().join("dir.toml");
    std::fs::create_dir(&d).unwrap();
    assert_config_error(
        "watcher",
        &["check-config", "--config", d.to_str().unwrap()],
        &[],
        "dir.toml",
    );
}

#[test]
fn watcher_reports_port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, _out, err) = run_to_end(
        "watcher",
        &[],
        &[
            ("OPS_ADDR", addr.clone()),
            (
                "TRANSCRIPT_PATH",
                dir.path().join("t.jsonl").display().to_string(),
            ),
            ("STATE_DIR", dir.path().join("s").display().to_string()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("OPS_ADDR") && err.contains(&addr), "{err}");
}

#[test]
fn bot_bridge_rejects_bad_config_naming_the_key() {
    let base = |extra: (&'static str, String)| {
        let mut env = vec![
            ("API_TOKEN", "t0k3n-abcdefghijklmnop".to_string()),
            ("DISCORD_BOT_TOKEN", "b0t-abcdefghijklmnop".to_string()),
            ("GUILD_ID", "1".to_string()),
            ("API_ADDR", "127.0.0.1:0".to_string()),
            ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ];
        env.retain(|(k, _)| *k != extra.0);
        env.push(extra);
        env
    };
    assert_config_error(
        "bot-bridge",
        &[],
        &base(("DISCORD_API_BASE", "not a url".into())),
        "DISCORD_API_BASE",
    );
    // Pod tokens need the Kubernetes API to review them.
    assert_config_error(
        "bot-bridge",
        &[],
        &base(("TOKEN_REVIEW_AUDIENCE", "agentmon".into())),
        "KUBE_CONFIG",
    );
    assert_config_error(
        "bot-bridge",
        &[],
        &base(("API_ADDR", "nowhere".into())),
        "API_ADDR",
    );
    assert_config_error(
        "bot-bridge",
        &[],
        &base(("RETENTION", "forever".into())),
        "RETENTION",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.toml");
    std::fs::write(&file, "retention = \"1h\"\nretension = \"2h\"\n").unwrap();
    assert_config_error(
        "bot-bridge",
        &["--config", file.to_str().unwrap()],
        &base(("GUILD_ID", "1".into())),
        "retension",
    );
}

#[test]
fn watcher_names_settings_that_have_no_effect() {
    let webhook = "https://discord.com/api/webhooks/123/SeCrEtToKeN".to_string();
    let cases: [(&[(&str, String)], &str); 3] = [
        (
            &[
                ("DISCORD_WEBHOOK_URL", webhook.clone()),
                ("BRIDGE_URL", "http://bridge:8080".into()),
                ("BRIDGE_TOKEN", "bridge-SeCrEt".into()),
            ],
            "BRIDGE_URL is ignored",
        ),
        (
            &[("BRIDGE_TOKEN", "bridge-SeCrEt".into())],
            "BRIDGE_TOKEN is ignored",
        ),
        (&[("DISCORD_WEBHOOK_URL", webhook.clone())], ""),
    ];
    for (env, expected) in cases {
        let (code, stdout, stderr) = run_to_end("watcher", &["check-config"], env);
        assert_eq!(code, 0, "a warning is not an error: {stderr}");
        let cfg: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let warnings: Vec<&str> = cfg["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w.as_str())
            .collect();
        if expected.is_empty() {
            assert!(warnings.is_empty(), "{warnings:?}");
        } else {
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains(expected), "{warnings:?}");
        }
        assert!(!stdout.contains("SeCrEt") && !stderr.contains("SeCrEt"));
    }
}

#[test]
fn watcher_counts_an_empty_run_identity_as_unset() {
    // A chart or compose file that renders `TASK_ID=""` must not send an empty
    // identity that bot-bridge refuses on every attempt: empty means unset.
    let (code, stdout, stderr) = run_to_end(
        "watcher",
        &["check-config"],
        &[
            ("TASK_ID", String::new()),
            ("ATTEMPT", "  ".into()),
            ("SHORT_ID", "abc".into()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["task_id"], serde_json::Value::Null, "{stdout}");
    assert_eq!(v["attempt"], serde_json::Value::Null, "{stdout}");
    assert_eq!(v["short_id"], "abc", "{stdout}");
}

#[test]
fn watcher_bounds_every_duration_naming_the_key() {
    for key in [
        "SHUTDOWN_TIMEOUT",
        "DELIVERY_MAX_ELAPSED",
        "SINK_UNHEALTHY_AFTER",
        "IDLE_COMPLETE_AFTER",
    ] {
        assert_config_error(
            "watcher",
            &["check-config"],
            &[(key, "500000000years".into())],
            key,
        );
    }
}

/// A config file that does not parse is reported by line, never quoted: the
/// line may hold a token.
#[test]
fn a_config_file_syntax_error_never_echoes_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(
        &file,
        "poll_interval_ms = 100\nbridge_token = \"hunter2-in-a-file\n",
    )
    .unwrap();
    for (name, args) in [
        (
            "watcher",
            vec!["check-config", "--config", file.to_str().unwrap()],
        ),
        ("bot-bridge", vec!["--config", file.to_str().unwrap()]),
    ] {
        let (code, out, err) = run_to_end(name, &args, &[]);
        assert_ne!(code, 0, "{name}: {err}");
        assert!(err.contains("line 2"), "{name} names the line: {err}");
        assert!(
            !err.contains("hunter2") && !out.contains("hunter2"),
            "{name} echoed the secret: {err}"
        );
    }
}

#[test]
fn check_config_hides_credentials_in_urls() {
    let (code, out, err) = run_to_end(
        "watcher",
        &["check-config"],
        &[
            (
                "BRIDGE_URL",
                "http://agent:hunter2@bridge:8080/?token=hunter3".into(),
            ),
            ("BRIDGE_TOKEN", "t0k3n".into()),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://tenant:hunter4@collector:4318/?api_key=hunter5".into(),
            ),
            ("INPUT_ADDR", "127.0.0.1:0".into()),
            ("AGENT_INPUT_FIFO", "/tmp/in.fifo".into()),
            ("INPUT_URL", "http://op:hunter6@watcher:8081".into()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hunter") && !err.contains("hunter"), "{out}");
    assert!(
        out.contains("bridge:8080") && out.contains("collector:4318"),
        "{out}"
    );
    let (code, _, err) = run_to_end(
        "watcher",
        &["check-config"],
        &[("BRIDGE_URL", "ftp://agent:hunter2@bridge/".into())],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("BRIDGE_URL") && !err.contains("hunter2"),
        "{err}"
    );
}

/// A token from a Secret made with `--from-file` ends with a newline: it is
/// dropped, so the token matches; anything else stray is refused at start.
#[test]
fn a_trailing_newline_on_a_token_is_dropped_and_other_whitespace_refused() {
    let (code, out, err) = run_to_end(
        "watcher",
        &["check-config"],
        &[
            ("BRIDGE_URL", "http://bridge:8080".into()),
            ("BRIDGE_TOKEN", "t0k3n\n".into()),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"kind\": \"bridge\""), "{out}");
    assert_config_error(
        "watcher",
        &["check-config"],
        &[
            ("BRIDGE_URL", "http://bridge:8080".into()),
            ("BRIDGE_TOKEN", "t0k3n\n\n".into()),
        ],
        "BRIDGE_TOKEN",
    );
    assert_config_error(
        "bot-bridge",
        &[],
        &[
            ("API_TOKEN", "t0k3n-abcdefghijklmnop \n".to_string()),
            ("DISCORD_BOT_TOKEN", "b0t-abcdefghijklmnop".to_string()),
            ("GUILD_ID", "1".to_string()),
        ],
        "API_TOKEN",
    );
}
