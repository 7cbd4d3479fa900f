//! For the fakes' own binary tests: start one, read its listening line,
//! check `--help`, stop it with SIGTERM. These panic on failure: they are
//! assertions.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a fake binary gets to print its listening line or to exit.
const WITHIN: Duration = Duration::from_secs(20);

/// Runs `bin --help`, asserts it succeeds and names every one of `flags`.
pub async fn assert_help_lists(bin: &str, flags: &[&str]) {
    let out = Command::new(bin)
        .arg("--help")
        .output()
        .await
        .expect("run --help");
    assert!(out.status.success(), "--help failed: {out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in flags {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

/// Starts `bin` with `args` and an empty environment (killed when dropped)
/// and returns it with its listening line, parsed.
pub async fn start<I, S>(bin: &str, args: I) -> (Child, serde_json::Value)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the fake");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WITHIN, lines.next_line())
        .await
        .expect("listening line in time")
        .expect("read stdout")
        .expect("a line");
    assert!(line.contains("listening"), "{line}");
    let v = serde_json::from_str(&line).expect("the listening line is JSON");
    (child, v)
}

/// Sends SIGTERM and asserts the process exits 0 in time.
pub async fn sigterm_exits_0(mut child: Child) {
    let pid = child.id().expect("still running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WITHIN, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait for the fake");
    assert_eq!(status.code(), Some(0));
}
