//! Harness for agentmon's end-to-end scenarios: build and start the real
//! binaries as processes on ephemeral loopback ports, capture their output, and
//! wait on conditions with deadlines (never fixed sleeps).

#![allow(clippy::missing_panics_doc)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

static RELEASE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes [`bin`] build and run release binaries (what users deploy); benches
/// call it first. `E2E_PROFILE=release` does the same for tests.
pub fn use_release_binaries() {
    RELEASE.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The cargo profile the binaries are built with.
pub fn profile() -> &'static str {
    let env = std::env::var("E2E_PROFILE");
    if RELEASE.load(std::sync::atomic::Ordering::SeqCst) || env.as_deref() == Ok("release") {
        "release"
    } else {
        "debug"
    }
}

/// Path of a workspace binary, built once per test process (`cargo build` is a
/// no-op when up to date; cargo releases its lock before running tests).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec![
            "build",
            "--quiet",
            "-p",
            "watcher",
            "-p",
            "bot-bridge",
            "-p",
            "fake-discord",
            "--bins",
        ];
        if profile() == "release" {
            args.push("--release");
        }
        let status = Command::new(cargo)
            .current_dir(workspace_root())
            .args(&args)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let path = target_dir().join(profile()).join(name);
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A running binary with its stdout/stderr captured line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn capture<R: std::io::Read + Send + 'static>(
    r: R,
    sink: Arc<Mutex<Vec<String>>>,
    echo: Option<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(prefix) = &echo {
                eprintln!("[{prefix}] {line}");
            }
            sink.lock().expect("capture lock").push(line);
        }
    });
}

impl Proc {
    /// Starts `bin(name)` with `args` and exactly `env` (plus PATH and HOME),
    /// so the developer's environment cannot leak into a scenario.
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var_os("E2E_ECHO").map(|_| name.to_owned());
        capture(
            child.stdout.take().expect("stdout"),
            stdout.clone(),
            echo.clone(),
        );
        capture(child.stderr.take().expect("stderr"), stderr.clone(), echo);
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// All output so far, both streams.
    pub fn output(&self) -> String {
        let mut all = self.stdout();
        all.extend(self.stderr());
        all.join("\n")
    }

    /// Waits until a stdout line satisfies `pred`, returning it.
    pub async fn wait_stdout(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.stdout().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; output:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the JSON log line with `message == msg` (in either stream).
    pub async fn wait_log(&self, msg: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            for l in self.stdout().into_iter().chain(self.stderr()) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                    if v["message"] == msg {
                        return v;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for log {msg:?}; output:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits for exit with a deadline; `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a binary to completion (for `--help`, `check-config`, bad configs).
pub fn run_to_end(name: &str, args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A started fake-discord process.
pub struct FakeDiscordProc {
    pub proc: Proc,
    pub addr: String,
    pub api_base: String,
    pub webhook_url: Option<String>,
}

impl FakeDiscordProc {
    pub async fn start(extra: &[&str]) -> FakeDiscordProc {
        let mut args = vec!["--addr", "127.0.0.1:0", "--create-webhook"];
        args.extend_from_slice(extra);
        let proc = Proc::start("fake-discord", &args, &[]);
        let line = proc
            .wait_stdout(
                "fake-discord listening line",
                Duration::from_secs(20),
                |l| l.contains("listening"),
            )
            .await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("listening line is JSON");
        FakeDiscordProc {
            addr: v["listening"].as_str().expect("listening").to_owned(),
            api_base: v["api_base"].as_str().expect("api_base").to_owned(),
            webhook_url: v["webhook_url"].as_str().map(str::to_owned),
            proc,
        }
    }

    pub fn admin(&self, path: &str) -> String {
        format!(
            "http://{}/_admin/{}",
            self.addr,
            path.trim_start_matches('/')
        )
    }

    /// `GET /_admin/{path}` as JSON.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.admin(path))
            .await
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("admin GET {path} JSON: {e}"))
    }

    /// `POST /_admin/{path}` with `body`; the created object.
    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(self.admin(path))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin POST {path}: {e}"));
        assert!(r.status().is_success(), "admin POST {path}: {}", r.status());
        r.json()
            .await
            .unwrap_or_else(|e| panic!("admin POST {path} JSON: {e}"))
    }

    /// `GET /_admin/{path}` as a list (channels, webhooks, messages…).
    pub async fn admin_list(&self, path: &str) -> Vec<serde_json::Value> {
        match self.admin_get(path).await {
            serde_json::Value::Array(list) => list,
            other => panic!("admin GET {path}: not a list: {other}"),
        }
    }

    /// Messages the fake accepted, in arrival order.
    pub async fn messages(&self) -> Vec<serde_json::Value> {
        self.admin_list("messages").await
    }

    /// The payloads of the accepted messages matching `query` (e.g.
    /// `?channel_id=1`, or `""` for all), as one string for marker counting.
    pub async fn payload_text(&self, query: &str) -> String {
        self.admin_list(&format!("messages{query}"))
            .await
            .iter()
            .map(|m| m["payload"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every marker `{prefix}-{i:04}` of `range` arrived among the
    /// messages matching `query`; returns their payload text.
    pub async fn wait_markers(
        &self,
        query: &str,
        prefix: &str,
        range: std::ops::Range<usize>,
        timeout: Duration,
    ) -> String {
        eventually(
            &format!("{prefix} {range:?} delivered (messages{query})"),
            timeout,
            || {
                let r = range.clone();
                async move {
                    let text = self.payload_text(query).await;
                    r.clone()
                        .all(|i| text.contains(&format!("{prefix}-{i:04}")))
                        .then_some(text)
                }
            },
        )
        .await
    }

    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.admin("stats"))
            .await
            .expect("admin stats")
            .json()
            .await
            .expect("stats JSON")
    }

    pub async fn inject(&self, fault: serde_json::Value) {
        self.admin_post("faults", fault).await;
    }

    /// Removes every injected fault: "Discord is back".
    pub async fn clear_faults(&self) {
        let r = reqwest::Client::new()
            .delete(self.admin("faults"))
            .send()
            .await
            .expect("clear faults");
        assert!(
            r.status().is_success(),
            "clearing faults failed: {}",
            r.status()
        );
    }
}

/// The environment every watcher scenario starts from: ephemeral ops port,
/// the transcript read from its beginning, a private state dir, a short poll.
pub fn watcher_env(transcript: &Path, state: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("TRANSCRIPT_PATH", transcript.display().to_string()),
        ("START_AT", "beginning".to_string()),
        ("STATE_DIR", state.display().to_string()),
        ("POLL_INTERVAL_MS", "50".to_string()),
    ]
}

/// [`watcher_env`] posting to fake-discord's webhook.
pub fn webhook_watcher_env(
    fake: &FakeDiscordProc,
    transcript: &Path,
    state: &Path,
) -> Vec<(&'static str, String)> {
    let mut env = watcher_env(transcript, state);
    env.push((
        "DISCORD_WEBHOOK_URL",
        fake.webhook_url.clone().unwrap_or_default(),
    ));
    env
}

/// A watcher posting to fake-discord's webhook from a transcript that starts
/// empty, in a temp dir of its own (kept alive with it).
pub struct WebhookWatcher {
    pub dir: tempfile::TempDir,
    /// The transcript, `s.jsonl` in `dir`; the state dir is `dir/state`.
    pub file: PathBuf,
    pub proc: Proc,
    pub ops: String,
}

impl WebhookWatcher {
    /// Starts it with [`webhook_watcher_env`] plus `extra`, and waits for its
    /// "started" line.
    pub async fn start(fake: &FakeDiscordProc, extra: &[(&'static str, String)]) -> WebhookWatcher {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.jsonl");
        std::fs::write(&file, "").expect("create the transcript");
        let mut env = webhook_watcher_env(fake, &file, &dir.path().join("state"));
        env.extend_from_slice(extra);
        let proc = Proc::start("watcher", &[], &env);
        let ops = started_ops_addr(&proc).await;
        WebhookWatcher {
            dir,
            file,
            proc,
            ops,
        }
    }
}

/// The environment every bot-bridge scenario starts from: ephemeral ports,
/// the given tokens and Discord API base, guild 1, its store at `db`.
pub fn bridge_env(
    api_token: &str,
    bot_token: &str,
    api_base: &str,
    db: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", api_token.to_string()),
        ("DISCORD_BOT_TOKEN", bot_token.to_string()),
        ("DISCORD_API_BASE", api_base.to_string()),
        ("GUILD_ID", "1".to_string()),
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
    ]
}

/// GET `url` with a bearer token and parse the JSON answer. Panics on a
/// transport error or a body that is not JSON.
pub async fn get_json_authed(url: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET failed")
        .json()
        .await
        .expect("JSON body")
}

/// GET `url`'s body, `None` on any transport error (for polling a service
/// that may be restarting).
pub async fn try_get_text(url: &str) -> Option<String> {
    reqwest::get(url).await.ok()?.text().await.ok()
}

/// `VmRSS` of a process in KiB, `None` once it is gone.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// GET `url`: status and body. Panics on a transport error, which in these
/// tests means the service under test is gone.
pub async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET failed");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// The `ops_addr` a service logged in its "started" line.
pub async fn started_ops_addr(p: &Proc) -> String {
    let v = p.wait_log("started", Duration::from_secs(20)).await;
    v["ops_addr"]
        .as_str()
        .expect("ops_addr in started line")
        .to_owned()
}

/// A watcher's environment with operator input on: an empty transcript and
/// the agent's FIFO (`in.fifo`) in `dir`, state in `dir/state`, `secret` as
/// `INPUT_SECRET`. Also returns the FIFO's path.
pub fn input_watcher_env(dir: &Path, secret: &str) -> (Vec<(&'static str, String)>, PathBuf) {
    let transcript = dir.join("t.jsonl");
    std::fs::write(&transcript, "").expect("write the transcript");
    let fifo = dir.join("in.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .expect("make the FIFO");
    let mut env = watcher_env(&transcript, &dir.join("state"));
    env.extend([
        ("INPUT_ADDR", "127.0.0.1:0".to_string()),
        ("INPUT_SECRET", secret.to_string()),
        ("AGENT_INPUT_FIFO", fifo.display().to_string()),
    ]);
    (env, fifo)
}

/// A bot-bridge process and the API and ops addresses its "started" line
/// names; the e2e files that start bot-bridge wrap it with their own calls.
pub struct BridgeProc {
    pub proc: Proc,
    pub api: String,
    pub ops: String,
}

impl BridgeProc {
    /// Starts bot-bridge with `env` and waits for its "started" line.
    pub async fn start(env: &[(&str, String)]) -> BridgeProc {
        let proc = Proc::start("bot-bridge", &[], env);
        let started = proc.wait_log("started", Duration::from_secs(60)).await;
        let addr = |k: &str| {
            started[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} in the started line: {started}"))
                .to_owned()
        };
        BridgeProc {
            api: addr("api_addr"),
            ops: addr("ops_addr"),
            proc,
        }
    }

    /// `POST /v1/runs` with `api_token` and `body`, which must create the
    /// run (201): the answer.
    pub async fn post_run(&self, api_token: &str, body: &serde_json::Value) -> serde_json::Value {
        let res = reqwest::Client::new()
            .post(format!("http://{}/v1/runs", self.api))
            .bearer_auth(api_token)
            .json(body)
            .send()
            .await
            .expect("POST /v1/runs");
        assert_eq!(res.status(), 201, "POST /v1/runs");
        res.json().await.expect("JSON body")
    }

    /// `GET /v1/runs/{run_id}` with `api_token`.
    pub async fn run(&self, run_id: &str, api_token: &str) -> serde_json::Value {
        get_json_authed(&format!("http://{}/v1/runs/{run_id}", self.api), api_token).await
    }

    /// The ops port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.ops)).await.1
    }
}

/// `../shared/transcripts`, if present beside the repository (it is in CI).
pub fn shared_transcripts() -> Option<PathBuf> {
    let p = workspace_root().join("../shared/transcripts");
    p.is_dir().then_some(p)
}

/// Transcript lines in the real Claude Code format, for scenarios that write
/// a live session file. Each function returns one complete line with its `\n`.
pub mod transcript {
    use serde_json::json;

    pub const SESSION: &str = "7f2c5a8e-1b3d-4c6e-9f0a-2b4c6d8e0f1a";

    fn envelope(kind: &str, uuid: &str, session: &str) -> serde_json::Value {
        json!({
            "type": kind,
            "uuid": uuid,
            "parentUuid": null,
            "sessionId": session,
            "timestamp": "2026-11-30T10:00:00.000Z",
            "cwd": "/workspace",
            "version": "2.1.3",
            "isSidechain": false,
            "userType": "external",
        })
    }

    fn line(v: &serde_json::Value) -> String {
        let mut s = v.to_string();
        s.push('\n');
        s
    }

    /// A prompt typed by the operator.
    pub fn prompt(uuid: &str, session: &str, text: &str) -> String {
        let mut v = envelope("user", uuid, session);
        v["message"] = json!({"role": "user", "content": text});
        line(&v)
    }

    /// One assistant text block with its usage.
    pub fn assistant(
        uuid: &str,
        session: &str,
        msg_id: &str,
        text: &str,
        input: u64,
        output: u64,
    ) -> String {
        let mut v = envelope("assistant", uuid, session);
        v["requestId"] = json!(format!("req_{msg_id}"));
        v["message"] = json!({
            "id": msg_id, "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": input, "output_tokens": output,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        line(&v)
    }

    /// A Bash tool call.
    pub fn bash(uuid: &str, session: &str, msg_id: &str, tool_id: &str, command: &str) -> String {
        let mut v = envelope("assistant", uuid, session);
        v["message"] = json!({
            "id": msg_id, "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "tool_use", "id": tool_id, "name": "Bash",
                         "input": {"command": command, "description": "run it"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        });
        line(&v)
    }

    /// The result of a tool call.
    pub fn tool_result(
        uuid: &str,
        session: &str,
        tool_id: &str,
        text: &str,
        is_error: bool,
    ) -> String {
        let mut v = envelope("user", uuid, session);
        v["message"] = json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": text, "is_error": is_error}
        ]});
        v["toolUseResult"] = json!({"stdout": text, "stderr": "", "interrupted": false});
        line(&v)
    }

    /// `n` prompts `"{prefix}-{i:04} …"` with uuids `{prefix}-u{i}`; the text
    /// carries multi-byte characters so that chunked writes split them.
    pub fn prompts(prefix: &str, range: std::ops::Range<usize>) -> String {
        range
            .map(|i| {
                prompt(
                    &format!("{prefix}-u{i}"),
                    SESSION,
                    &format!("{prefix}-{i:04} héllo wörld 日本語 🎉"),
                )
            })
            .collect()
    }
}

/// Appends `bytes` to `path` in random chunk sizes (1..=max), flushing each,
/// so that readers see split lines and split UTF-8 sequences.
pub fn append_chunked(path: &Path, bytes: &[u8], max_chunk: usize, seed: u64) {
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open transcript for append");
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.random_range(1..=max_chunk.max(1)).min(rest.len());
        f.write_all(&rest[..n]).expect("append");
        f.flush().expect("flush");
        rest = &rest[n..];
    }
}

/// The value of one series of a Prometheus scrape, named exactly as scraped
/// (`name` or `name{label="value",…}`).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// How often `needle` occurs in `haystack`.
pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The text of the shipped alert rules and dashboards (`deploy/prometheus/*.yml`,
/// `deploy/grafana/*.json`; not the promtool tests, whose series are made up).
fn monitoring_sources() -> Vec<(String, String)> {
    let deploy = workspace_root().join("deploy");
    let mut out = Vec::new();
    for dir in ["prometheus", "grafana"] {
        let Ok(entries) = std::fs::read_dir(deploy.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|x| x.to_str()),
                Some("yml" | "yaml" | "json")
            ) {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    panic!("cannot read {}", path.display());
                };
                out.push((path.display().to_string(), text));
            }
        }
    }
    out
}

/// Metric names with one of `prefixes` in `text`: a prefix at an identifier
/// start, up to the end of the identifier.
fn metric_names(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    for prefix in prefixes {
        for (at, _) in text.match_indices(prefix) {
            if at > 0 && ident(bytes[at - 1]) {
                continue;
            }
            let len = bytes[at..].iter().take_while(|&&b| ident(b)).count();
            names.insert(text[at..at + len].to_owned());
        }
    }
    names
}

/// Name prefixes of the metrics the shipped rules read from other exporters.
const EXTERNAL_PREFIXES: &[&str] = &["kube_", "container_", "kubelet_"];

/// Every metric of another exporter the shipped rules and dashboards may use,
/// listed explicitly: the alerts on readiness, restarts, memory limits and
/// volumes join these with agentmon's own series. agentmon's binaries do not
/// export them, so they are checked against this list instead of a scrape
/// (Prometheus' own `up` is not listed: it has no prefix to recognise).
pub const EXTERNAL_METRICS: &[&str] = &[
    // kube-state-metrics
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_pod_status_ready",
    "kube_pod_container_resource_limits",
    "kube_pod_init_container_resource_limits",
    "kube_pod_init_container_status_restarts_total",
    "kube_pod_init_container_status_running",
    // cAdvisor (kubelet /metrics/cadvisor)
    "container_memory_working_set_bytes",
    // kubelet
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
];

/// Every other exporter's metric in `sources` is one of [`EXTERNAL_METRICS`].
fn check_external_names(sources: &[(String, String)]) {
    for (path, text) in sources {
        for metric in metric_names(text, EXTERNAL_PREFIXES) {
            assert!(
                EXTERNAL_METRICS.contains(&metric.as_str()),
                "{path} queries {metric}, which is neither agentmon's nor in EXTERNAL_METRICS \
                 (kube-state-metrics, cAdvisor, kubelet): a misspelt name, or add it there"
            );
        }
    }
}

/// Every metric the shipped alerts and dashboards query for this service is in
/// its real scrape: a rule on a misspelt or never-exported name would parse,
/// pass promtool, and never fire. Other exporters' metrics must be in
/// [`EXTERNAL_METRICS`] (the same mistake, against a list instead of a scrape).
pub fn check_monitoring_names(name: &str, metrics: &str, prefixes: &[&str]) {
    // Sample names, and family names from `# TYPE` (a histogram's own name).
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .filter(|n| !n.is_empty())
        .collect();
    let sources = monitoring_sources();
    check_external_names(&sources);
    assert!(
        sources.iter().any(|(p, _)| p.ends_with(".yml")),
        "deploy/prometheus has no rules file"
    );
    let mut checked = 0;
    for (path, text) in &sources {
        for metric in metric_names(text, prefixes) {
            assert!(
                exported.contains(metric.as_str()),
                "{path} queries {metric}, which {name} does not export:\n{metrics}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no {prefixes:?} metric found in deploy/");
}

impl FakeDiscordProc {
    /// Faults still queued (a lasting one counts until its time is up and a
    /// request found it so).
    pub async fn faults_pending(&self) -> usize {
        self.admin_get("faults").await["pending"]
            .as_array()
            .map_or(0, Vec::len)
    }
}

/// Discord's limits as a backlog meets them: the advertised per-webhook bucket
/// and the unadvertised per-channel window.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub webhook_limit: usize,
    pub webhook_window: Duration,
    pub channel_limit: usize,
    pub channel_window: Duration,
}

impl Limits {
    /// Discord's own: 5 per 2 s per webhook, 30 per 60 s per channel.
    pub const DISCORD: Limits = Limits {
        webhook_limit: 5,
        webhook_window: Duration::from_secs(2),
        channel_limit: 30,
        channel_window: Duration::from_secs(60),
    };

    /// Both windows `factor` times shorter (the same shape, faster).
    pub fn scaled(self, factor: u32) -> Limits {
        Limits {
            webhook_window: self.webhook_window / factor,
            channel_window: self.channel_window / factor,
            ..self
        }
    }

    /// fake-discord flags enforcing these limits strictly (no clock
    /// tolerance), the channel window counted as `channel_window` (`sliding`
    /// or `fixed`, whose phase the fake then draws at random).
    pub fn fake_args(&self, channel_window: &str) -> Vec<String> {
        vec![
            "--webhook-limit".into(),
            self.webhook_limit.to_string(),
            "--webhook-window-ms".into(),
            self.webhook_window.as_millis().to_string(),
            "--channel-messages-per-minute".into(),
            self.channel_limit.to_string(),
            "--channel-window-ms".into(),
            self.channel_window.as_millis().to_string(),
            "--channel-window".into(),
            channel_window.into(),
            "--clock-tolerance-ms".into(),
            "0".into(),
        ]
    }

    /// The earliest time after the first message at which the `n`-th (1-based)
    /// may arrive, both windows sliding (the strictest reading; fixed windows
    /// of any phase allow at least as much).
    pub fn theoretical(&self, n: usize) -> Duration {
        let mut times: Vec<Duration> = Vec::with_capacity(n);
        for k in 0..n {
            let mut t = Duration::ZERO;
            if k >= self.webhook_limit {
                t = t.max(times[k - self.webhook_limit] + self.webhook_window);
            }
            if k >= self.channel_limit {
                t = t.max(times[k - self.channel_limit] + self.channel_window);
            }
            times.push(t);
        }
        times.last().copied().unwrap_or_default()
    }
}

/// One backlog drained by a real watcher from a real fake-discord enforcing
/// `limits`, and how close it came to the limits' rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BacklogRun {
    /// `sliding` or `fixed`.
    pub channel_window: String,
    /// The fixed windows' phase the fake drew, in ms.
    pub phase_ms: Option<u64>,
    pub events: usize,
    pub messages: usize,
    pub embeds: usize,
    /// First to last arrival at the fake.
    pub seconds: f64,
    /// The least that many messages can take under the limits.
    pub theoretical_seconds: f64,
    /// `theoretical_seconds / seconds`: 1.0 is the limits' own rate.
    pub fraction_of_max: f64,
    /// 429s the fake answered (any scope).
    pub rate_limited: u64,
}

/// Drains a backlog of `events` prompts (plus the header) through the watcher
/// binary into fake-discord enforcing `limits`, the channel window counted as
/// `channel_window` (`sliding`, or `fixed` with a random phase).
pub async fn backlog_run(limits: Limits, channel_window: &str, events: usize) -> BacklogRun {
    let args = limits.fake_args(channel_window);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fake = FakeDiscordProc::start(&args).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backlog.jsonl");
    std::fs::write(&file, transcript::prompts("bl", 0..events)).expect("write backlog");
    let mut env = watcher_env(&file, &dir.path().join("state"));
    env.extend([
        (
            "DISCORD_WEBHOOK_URL",
            fake.webhook_url.clone().unwrap_or_default(),
        ),
        (
            "CHANNEL_MESSAGES_PER_MINUTE",
            limits.channel_limit.to_string(),
        ),
        (
            "CHANNEL_WINDOW",
            format!("{}ms", limits.channel_window.as_millis()),
        ),
    ]);
    let watcher = Proc::start("watcher", &[], &env);
    // Each run gets as long as a 60 s window would need, and then some.
    let slots = events / 10 + 2;
    let windows = u32::try_from(slots / limits.channel_limit + 2).unwrap_or(u32::MAX);
    let timeout = limits.channel_window * windows + Duration::from_secs(30);
    fake.wait_markers("", "bl", 0..events, timeout).await;
    drop(watcher);
    let messages = fake.messages().await;
    let at = |m: &serde_json::Value| m["received_at_mono_ms"].as_u64().unwrap_or(0);
    let first = messages.first().map_or(0, at);
    let last = messages.last().map_or(0, at);
    let seconds = last.saturating_sub(first) as f64 / 1000.0;
    let theoretical = limits.theoretical(messages.len()).as_secs_f64();
    let stats = fake.stats().await;
    BacklogRun {
        channel_window: channel_window.to_owned(),
        phase_ms: stats["channel_limit"]["phase_ms"].as_u64(),
        events,
        messages: messages.len(),
        embeds: messages
            .iter()
            .map(|m| m["payload"]["embeds"].as_array().map_or(0, Vec::len))
            .sum(),
        seconds,
        theoretical_seconds: theoretical,
        fraction_of_max: if seconds > 0.0 {
            theoretical / seconds
        } else {
            0.0
        },
        rate_limited: stats["rate_limited_total"].as_u64().unwrap_or(0),
    }
}
