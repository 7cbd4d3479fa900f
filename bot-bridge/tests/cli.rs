//! The binary's contract with its operator: one clear line and exit 2 on bad
//! configuration, no secret in `--help`, exit 0 soon after SIGTERM.

// Helpers outside #[test] fns fail fast too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bot-bridge");

fn base() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("DISCORD_BOT_TOKEN", "bot-token-very-secret")
        .env("API_TOKEN", "api-token-very-secret")
        .env("GUILD_ID", "123")
        .env("DATABASE_URL", "sqlite::memory:")
        .env("API_ADDR", "127.0.0.1:0")
        .env("OPS_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json");
    c
}

#[test]
fn invalid_config_exits_2_with_one_line_naming_the_key() {
    let out = base().env("API_ADDR", "not-an-address").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("API_ADDR"), "{err}");

    let out = base().env_remove("GUILD_ID").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GUILD_ID"));
}

#[test]
fn help_never_prints_secret_values() {
    let out = base().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("DISCORD_BOT_TOKEN") && help.contains("API_TOKEN"),
        "{help}"
    );
    assert!(!help.contains("very-secret"), "{help}");
}

#[test]
fn sigterm_exits_0_within_5_seconds() {
    let mut child = base()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("bot-bridge never logged 'started': {log:?}"));
        let ready = line.contains("\"started\"");
        log.push(line);
        if ready {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let code = match done_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("still running 5 s after SIGTERM");
        }
    };
    assert_eq!(code.code(), Some(0));
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        log.push(line);
    }
    let all = log.join("\n");
    assert!(!all.contains("very-secret"), "secret in logs: {all}");
    assert!(all.contains("\"level\""), "logs are not JSON lines: {all}");
}
