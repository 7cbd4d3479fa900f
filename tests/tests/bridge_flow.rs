//! bot-bridge and the watcher together, as real processes, against the strict
//! fake Discord: a run is provisioned, streamed, talked to from a signed
//! `/input` interaction, survives a deleted webhook and a dead bot-bridge, and
//! ends revoked and archived. Every captured byte is scanned for secrets.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{
    check_monitoring_names, count, eventually, get_text, metric_value, started_ops_addr,
    transcript, BridgeProc, FakeDiscordProc, Proc,
};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const BOT_TOKEN: &str = "bot-token-SECRET-4d1e";
const API_TOKEN: &str = "api-token-SECRET-8c2f";
const APP_ID: &str = "4242";
const TASK: &str = "task-7";
/// The run token the test presents as the run's creator; the watcher finds it
/// in its STATE_DIR, as after a restart.
const RUN_TOKEN: &str = "run-token-SECRET-0123456789abcdef01";
/// Discord ids of the operators (bot-bridge's OPERATOR_* lists).
const OPERATOR_ROLE: &str = "555";
const OPERATOR_USER: &str = "99";
const SHORT: &str = "abc123";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn bridge_env(fake: &FakeDiscordProc, db: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("API_TOKEN", API_TOKEN.to_string()),
        ("DISCORD_BOT_TOKEN", BOT_TOKEN.to_string()),
        ("DISCORD_API_BASE", fake.api_base.clone()),
        ("DISCORD_APPLICATION_ID", APP_ID.to_string()),
        (
            "DISCORD_PUBLIC_KEY",
            hex::encode(signing_key().verifying_key().to_bytes()),
        ),
        ("GUILD_ID", "1".to_string()),
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
        ("RETENTION", "2s".to_string()),
        ("RETENTION_INTERVAL", "200ms".to_string()),
        ("RUST_LOG", "debug".to_string()),
        ("INPUT_URL_ALLOW", "127.0.0.1/32".to_string()),
        ("OPERATOR_ROLE_IDS", OPERATOR_ROLE.to_string()),
        ("OPERATOR_USER_IDS", OPERATOR_USER.to_string()),
    ]
}

/// Starts bot-bridge on `api_addr` (`127.0.0.1:0` for any port; a restart
/// reuses the old one, as a Kubernetes Service would keep the address).
async fn start_bridge(
    fake: &FakeDiscordProc,
    db: &Path,
    api_addr: &str,
    extra: &[(&'static str, String)],
) -> BridgeProc {
    let mut env = bridge_env(fake, db);
    env.push(("API_ADDR", api_addr.to_owned()));
    env.extend_from_slice(extra);
    BridgeProc::start(&env).await
}

/// What these tests do with bot-bridge, on the harness's process.
trait FlowApi {
    fn url(&self, path: &str) -> String;
    async fn create_run(&self) -> (reqwest::StatusCode, Value);
    /// `POST /v1/runs` for the test's run key plus `extra` fields, presenting
    /// `run_token` (or none).
    async fn create_run_as(
        &self,
        run_token: Option<&str>,
        extra: &Value,
    ) -> (reqwest::StatusCode, Value);
    async fn get(&self, path: &str) -> (reqwest::StatusCode, String);
    /// `GET /v1/runs/{run_id}`, which must answer 200.
    async fn view(&self, run_id: &str) -> Value;
    async fn interact(&self, key: &SigningKey, ts: i64, body: &Value) -> reqwest::Response;
    async fn interact_traced(
        &self,
        key: &SigningKey,
        ts: i64,
        body: &Value,
        traceparent: Option<&str>,
    ) -> reqwest::Response;
    async fn input(&self, id: &str, channel_id: &str, text: &str) -> String;
    async fn input_as(&self, member: Value, id: &str, channel_id: &str, text: &str) -> String;
    async fn input_from(&self, body: Value) -> String;
}

impl FlowApi for BridgeProc {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    async fn create_run(&self) -> (reqwest::StatusCode, Value) {
        self.create_run_as(Some(RUN_TOKEN), &json!({})).await
    }

    async fn create_run_as(
        &self,
        run_token: Option<&str>,
        extra: &Value,
    ) -> (reqwest::StatusCode, Value) {
        let mut body = json!({"task_id": TASK, "attempt": 1, "short_id": SHORT});
        for (k, v) in extra.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let mut req = reqwest::Client::new()
            .post(self.url("/v1/runs"))
            .bearer_auth(API_TOKEN)
            .json(&body);
        if let Some(t) = run_token {
            req = req.header("x-agentmon-run-token", t);
        }
        let r = req.send().await.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn view(&self, run_id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/runs/{run_id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Posts an interaction signed at `ts` (with `key`), as Discord would.
    async fn interact(&self, key: &SigningKey, ts: i64, body: &Value) -> reqwest::Response {
        self.interact_traced(key, ts, body, None).await
    }

    async fn interact_traced(
        &self,
        key: &SigningKey,
        ts: i64,
        body: &Value,
        traceparent: Option<&str>,
    ) -> reqwest::Response {
        let raw = body.to_string();
        let ts = ts.to_string();
        let sig = key.sign(format!("{ts}{raw}").as_bytes());
        let mut req = reqwest::Client::new().post(self.url("/interactions"));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        req.header("content-type", "application/json")
            .header("x-signature-ed25519", hex::encode(sig.to_bytes()))
            .header("x-signature-timestamp", ts)
            .body(raw)
            .send()
            .await
            .unwrap()
    }

    /// A fresh, validly signed `/input` and the ephemeral reply's text.
    async fn input(&self, id: &str, channel_id: &str, text: &str) -> String {
        self.input_from(input(id, channel_id, text)).await
    }

    /// A signed `/input` with its member replaced by `member`.
    async fn input_as(&self, member: Value, id: &str, channel_id: &str, text: &str) -> String {
        let mut body = input(id, channel_id, text);
        body["member"] = member;
        self.input_from(body).await
    }

    async fn input_from(&self, body: Value) -> String {
        let r = self.interact(&signing_key(), now_unix(), &body).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["data"]["flags"], 64, "replies are ephemeral: {v}");
        v["data"]["content"].as_str().unwrap_or("").to_owned()
    }
}

/// The `/input text:` application command Discord sends for `channel_id`.
fn input(id: &str, channel_id: &str, text: &str) -> Value {
    json!({
        "id": id,
        "type": 2,
        "application_id": APP_ID,
        "channel_id": channel_id,
        "guild_id": "1",
        "token": format!("interaction-token-{id}"),
        "member": {"user": {"id": OPERATOR_USER, "username": "operator"}, "roles": []},
        "data": {"id": "1", "name": "input", "type": 1,
                 "options": [{"name": "text", "type": 3, "value": text}]},
    })
}

/// A real FIFO the test reads like the agent would: every line it received.
struct Fifo {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Fifo {
    /// Opened read-write so the reader never sees EOF between writers; a gate
    /// lets a test hold reading back to fill the pipe.
    fn open(dir: &Path, gate: Option<std::sync::mpsc::Receiver<()>>) -> Fifo {
        let path = dir.join("agent-input.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Fifo { path, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, needle: &str) -> Value {
        eventually(&format!("FIFO line with {needle:?}"), DEADLINE, || async {
            self.lines()
                .iter()
                .find(|l| l.contains(needle))
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
        })
        .await
    }
}

fn watcher_env(
    bridge: &BridgeProc,
    transcript: &Path,
    state: &Path,
    fifo: &Path,
) -> Vec<(&'static str, String)> {
    let mut env = e2e::watcher_env(transcript, state);
    env.extend([
        ("BRIDGE_URL", format!("http://{}", bridge.api)),
        ("BRIDGE_TOKEN", API_TOKEN.to_string()),
        ("TASK_ID", TASK.to_string()),
        ("ATTEMPT", "1".to_string()),
        ("SHORT_ID", SHORT.to_string()),
        ("INPUT_ADDR", "127.0.0.1:0".to_string()),
        ("AGENT_INPUT_FIFO", fifo.display().to_string()),
        ("RUST_LOG", "debug".to_string()),
    ]);
    env
}

/// Every payload the fake accepted in `channel_id`, as one string.
async fn channel_text(fake: &FakeDiscordProc, channel_id: &str) -> String {
    fake.payload_text(&format!("?channel_id={channel_id}"))
        .await
}

async fn wait_channel_has(
    fake: &FakeDiscordProc,
    channel_id: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    fake.wait_markers(
        &format!("?channel_id={channel_id}"),
        prefix,
        range,
        DEADLINE,
    )
    .await;
}

/// The live (not deleted) webhooks of a channel.
async fn live_webhooks(fake: &FakeDiscordProc, channel_id: &str) -> Vec<Value> {
    fake.admin_list("webhooks")
        .await
        .into_iter()
        .filter(|w| w["channel_id"] == channel_id && w["deleted"] != true)
        .collect()
}

fn append(path: &Path, text: &str) {
    e2e::append_chunked(path, text.as_bytes(), 4096, 3);
}

#[tokio::test]
async fn a_run_is_provisioned_streamed_talked_to_and_archived() {
    let fake = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bridge.db");
    let mut bridge = start_bridge(&fake, &db, "127.0.0.1:0", &[]).await;
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut responses: Vec<String> = Vec::new();

    // Creating the run twice gives the same channel, and the channel is a
    // read-only room for everyone in the runs category.
    let (first, created) = bridge.create_run().await;
    assert_eq!(first, 201, "{created}");
    let (again, same) = bridge.create_run().await;
    assert_eq!(again, 200, "{same}");
    assert_eq!(created["run_id"], same["run_id"]);
    assert_eq!(created["channel_id"], same["channel_id"]);
    assert_eq!(created["webhook_url"], same["webhook_url"]);
    let run_id = created["run_id"].as_str().unwrap().to_owned();
    let channel_id = created["channel_id"].as_str().unwrap().to_owned();
    let input_secret = created["input_secret"].as_str().unwrap().to_owned();
    assert!(input_secret.len() >= 16);
    let channels = fake.admin_list("channels").await;
    let channel = channels.iter().find(|c| c["id"] == channel_id).unwrap();
    assert_eq!(channel["name"], format!("run-{TASK}-1-{SHORT}"));
    let runs_category = channels
        .iter()
        .find(|c| c["id"] == channel["parent_id"])
        .unwrap();
    assert_eq!(runs_category["name"], "Agent Runs");
    let everyone = channel["permission_overwrites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == "1")
        .expect("an @everyone overwrite (its id is the guild id)")
        .clone();
    let deny: u64 = everyone["deny"].as_str().unwrap().parse().unwrap();
    let allow: u64 = everyone["allow"].as_str().unwrap_or("0").parse().unwrap();
    assert_ne!(deny & (1 << 11), 0, "@everyone may not send: {everyone}");
    assert_eq!(allow & (1 << 11), 0);
    // Slash commands: denied to @everyone in the channel, allowed to the
    // operators, and registered hidden from non-admins.
    const USE_APPLICATION_COMMANDS: u64 = 1 << 31;
    assert_ne!(deny & USE_APPLICATION_COMMANDS, 0, "{everyone}");
    for (id, kind) in [(OPERATOR_ROLE, 0), (OPERATOR_USER, 1)] {
        let o = channel["permission_overwrites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id)
            .unwrap_or_else(|| panic!("an overwrite for operator {id}: {channel}"));
        assert_eq!(o["type"], kind, "{o}");
        let allow: u64 = o["allow"].as_str().unwrap().parse().unwrap();
        assert_ne!(allow & USE_APPLICATION_COMMANDS, 0, "{o}");
    }
    let registered = eventually("slash commands registered", DEADLINE, || async {
        let all = fake.admin_list("commands").await;
        all.into_iter()
            .find(|c| c["application_id"] == APP_ID)
            .map(|c| c["commands"].as_array().cloned().unwrap_or_default())
    })
    .await;
    assert!(!registered.is_empty());
    for c in &registered {
        assert_eq!(c["default_member_permissions"], "0", "{c}");
    }
    // Another API_TOKEN holder re-posting the run's key (without its run
    // token, or with its own) gets 403 and none of the run's secrets.
    for token in [None, Some("another-watcher-token-0123456789abcd")] {
        let (status, body) = bridge
            .create_run_as(token, &json!({"input_url": "http://127.0.0.1:47777"}))
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        let text = body.to_string();
        assert!(!text.contains(&input_secret), "{text}");
        assert!(
            !text.contains(created["webhook_url"].as_str().unwrap()),
            "{text}"
        );
    }

    // The watcher provisions the same run and streams the session into it.
    let transcript_path = dir.path().join("session.jsonl");
    std::fs::write(&transcript_path, transcript::prompts("flow", 0..5)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("run-token"), RUN_TOKEN).unwrap();
    let fifo = Fifo::open(dir.path(), None);
    let env = watcher_env(&bridge, &transcript_path, &state, &fifo.path);
    let mut watcher = Proc::start("watcher", &[], &env);
    started_ops_addr(&watcher).await;
    let provisioned = watcher
        .wait_log("run provisioned by bot-bridge", DEADLINE)
        .await;
    assert_eq!(provisioned["run_id"], run_id.as_str());
    assert_eq!(provisioned["channel_id"], channel_id.as_str());
    wait_channel_has(&fake, &channel_id, "flow", 0..5).await;
    let view = bridge.view(&run_id).await;
    assert!(
        view["input_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "the watcher registered its input listener: {view}"
    );

    // /input in the run channel reaches the agent's FIFO as one JSON line.
    let reply = bridge
        .input("9001", &channel_id, "please run the tests")
        .await;
    assert_eq!(reply, "forwarded");
    let line = fifo.wait_for("please run the tests").await;
    assert_eq!(line["type"], "operator_input");
    assert_eq!(line["id"], "9001");
    assert_eq!(line["run_id"], run_id.as_str());
    assert_eq!(line["user"], "operator");

    // A W3C trace continues from the caller through bot-bridge to the watcher.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = bridge
        .interact_traced(
            &signing_key(),
            now_unix(),
            &input("9010", &channel_id, "traced input"),
            Some(&format!("00-{trace_id}-00f067aa0ba902b7-01")),
        )
        .await;
    assert_eq!(traced.status(), 200);
    fifo.wait_for("traced input").await;
    for (proc, route) in [(&bridge.proc, "/interactions"), (&watcher, "/v1/input")] {
        eventually(
            &format!("{} logs trace {trace_id}", proc.name),
            DEADLINE,
            || async {
                proc.stdout()
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|v| {
                        v["message"] == "request served"
                            && v["route"] == route
                            && v["trace_id"] == trace_id
                    })
                    .then_some(())
            },
        )
        .await;
    }

    // Refused: wrong key, stale timestamp (401); another channel (not a run).
    let body = input("9002", &channel_id, "forged");
    let forged = bridge
        .interact(&SigningKey::from_bytes(&[9u8; 32]), now_unix(), &body)
        .await;
    assert_eq!(forged.status(), 401);
    responses.push(forged.text().await.unwrap());
    let stale = bridge
        .interact(
            &signing_key(),
            now_unix() - 600,
            &input("9003", &channel_id, "stale"),
        )
        .await;
    assert_eq!(stale.status(), 401);
    responses.push(stale.text().await.unwrap());
    assert_eq!(
        bridge.input("9004", "123456789", "elsewhere").await,
        "not a run channel"
    );
    // A guild member who can read the channel but is no operator is refused
    // (ephemerally); an operator by role gets through.
    let intruder = bridge
        .input_as(
            json!({"user": {"id": "31337", "username": "mallory"}, "roles": ["777"]}),
            "9020",
            &channel_id,
            "intruder: rm -rf / please",
        )
        .await;
    assert!(intruder.contains("only operators"), "{intruder}");
    assert_eq!(
        bridge
            .input_as(
                json!({"user": {"id": "4040", "username": "rolly"}, "roles": ["777", OPERATOR_ROLE]}),
                "9021",
                &channel_id,
                "by role",
            )
            .await,
        "forwarded"
    );
    // A replayed interaction (same id) is acknowledged but written once.
    assert_eq!(
        bridge
            .input("9001", &channel_id, "please run the tests")
            .await,
        "forwarded"
    );
    // A marker after the refused ones: the FIFO is ordered, so once it is
    // there, anything written for the refused ones would be there too.
    assert_eq!(
        bridge.input("9005", &channel_id, "marker").await,
        "forwarded"
    );
    fifo.wait_for("marker").await;
    let lines = fifo.lines();
    assert_eq!(lines.len(), 4, "only the four valid inputs: {lines:?}");
    for refused in ["forged", "stale", "elsewhere", "intruder"] {
        assert!(!lines.iter().any(|l| l.contains(refused)), "{lines:?}");
    }
    // Discord lets /input carry 4000 characters: all of them reach the agent,
    // as one line, even though the encoded line is longer than PIPE_BUF.
    let long = format!("long-input {}", "\"é🙂x".repeat(997));
    assert_eq!(long.chars().count(), 3999);
    assert_eq!(bridge.input("9022", &channel_id, &long).await, "forwarded");
    let line = fifo.wait_for("long-input").await;
    assert_eq!(line["text"], long.as_str());

    // The webhook is deleted mid-run: the watcher re-provisions and nothing is lost.
    let old_hooks = live_webhooks(&fake, &channel_id).await;
    assert_eq!(old_hooks.len(), 1, "{old_hooks:?}");
    let old_id = old_hooks[0]["id"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .delete(fake.admin(&format!("webhooks/{old_id}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    append(&transcript_path, &transcript::prompts("flow", 5..15));
    wait_channel_has(&fake, &channel_id, "flow", 5..15).await;
    let new_hooks = live_webhooks(&fake, &channel_id).await;
    assert_eq!(new_hooks.len(), 1, "{new_hooks:?}");
    assert_ne!(new_hooks[0]["id"], old_id.as_str(), "a new webhook");

    // bot-bridge dies: the watcher keeps posting to the webhook it knows.
    bridge.proc.kill9();
    outputs.push(("bot-bridge (killed)".into(), bridge.proc.output()));
    append(&transcript_path, &transcript::prompts("flow", 15..25));
    wait_channel_has(&fake, &channel_id, "flow", 15..25).await;

    // Restarted on the same database: the run, its channel and input are intact.
    let api_addr = bridge.api.clone();
    bridge = start_bridge(&fake, &db, &api_addr, &[]).await;
    let view = bridge.view(&run_id).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["channel_id"], channel_id.as_str());
    let (_, again) = bridge.create_run().await;
    assert_eq!(again["channel_id"], channel_id.as_str());
    assert_eq!(again["input_secret"], input_secret.as_str());
    assert_eq!(
        bridge.input("9006", &channel_id, "after restart").await,
        "forwarded"
    );
    fifo.wait_for("after restart").await;

    // The agent exits: the watcher posts the summary and completes the run;
    // bot-bridge revokes the webhook and archives the channel after retention.
    watcher.sigterm();
    assert!(
        watcher.wait_exit(Duration::from_secs(6)).await.is_some(),
        "the watcher exits within its shutdown budget"
    );
    let text = channel_text(&fake, &channel_id).await;
    for i in 0..25 {
        assert!(
            count(&text, &format!("flow-{i:04}")) >= 1,
            "flow-{i:04} lost"
        );
    }
    assert!(text.contains("Run complete"), "summary posted:\n{text}");
    let view = eventually("run completed", DEADLINE, || async {
        let v = bridge.view(&run_id).await;
        (v["status"] != "active").then_some(v)
    })
    .await;
    assert!(view["completed_at"].is_string(), "{view}");
    assert!(live_webhooks(&fake, &channel_id).await.is_empty());
    let revoked = reqwest::Client::new()
        .post(again["webhook_url"].as_str().unwrap())
        .json(&json!({"content": "late", "allowed_mentions": {"parse": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 404, "the revoked webhook is gone");
    eventually("channel archived", DEADLINE, || async {
        let v = bridge.view(&run_id).await;
        (v["status"] == "archived").then_some(())
    })
    .await;
    let channels = fake.admin_list("channels").await;
    let channel = channels.iter().find(|c| c["id"] == channel_id).unwrap();
    let parent = channels
        .iter()
        .find(|c| c["id"] == channel["parent_id"])
        .unwrap();
    assert_eq!(parent["name"], "Archived Runs", "{channel}");
    // Finished runs refuse input.
    assert_eq!(
        bridge.input("9007", &channel_id, "too late").await,
        "run finished"
    );
    // A watcher started again for the finished run (a sidecar restarted after
    // its summary) is refused once, says why, stays not ready, and does not
    // retry a refusal that cannot clear; SIGTERM still stops it cleanly.
    let mut rerun = Proc::start("watcher", &[], &env);
    rerun
        .wait_log(
            "bot-bridge already completed this run; not retrying",
            DEADLINE,
        )
        .await;
    let rerun_ops = started_ops_addr(&rerun).await;
    let (code, ready) = get_text(&format!("http://{rerun_ops}/readyz")).await;
    assert_eq!(code, 503, "{ready}");
    assert!(ready.contains("already completed"), "{ready}");
    rerun.sigterm();
    let status = rerun.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        rerun.output()
    );
    assert!(
        !rerun.output().contains("will retry"),
        "a completed run is not retried:\n{}",
        rerun.output()
    );
    outputs.push(("watcher (rerun)".into(), rerun.output()));

    // What happened is visible in the metrics (DESIGN.md §5 names).
    let metrics = get_text(&format!("http://{}/metrics", bridge.ops)).await.1;
    for name in [
        "bridge_runs_created_total",
        "bridge_runs_active",
        "bridge_forwarded_messages_total",
        "bridge_errors_total",
        "bridge_discord_requests_total",
        "bridge_discord_rate_limited_total",
        "bridge_interactions_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let forbidden = metric_value(
        &metrics,
        r#"bridge_interactions_total{command="input",outcome="forbidden"}"#,
    );
    // The restarted process saw no refused input: the series exists at 0.
    assert_eq!(forbidden, Some(0.0), "{metrics}");
    let forwarded = metric_value(
        &metrics,
        r#"bridge_interactions_total{command="input",outcome="forwarded"}"#,
    )
    .unwrap_or(0.0);
    assert!(
        forwarded >= 1.0,
        "the input after the restart is counted:\n{metrics}"
    );
    // After a whole lifecycle every series exists, also those only a first
    // Discord request creates: the shipped alerts and dashboards query only these.
    check_monitoring_names(
        "bot-bridge",
        &metrics,
        &["bridge_", "http_server_", "process_"],
    );
    responses.push(metrics);

    // Secrets: nothing but the authenticated POST /v1/runs answer carries them.
    let (_, listed) = bridge.get("/v1/runs").await;
    responses.push(listed);
    responses.push(bridge.get(&format!("/v1/runs/{run_id}")).await.1);
    let unauth = reqwest::Client::new()
        .post(bridge.url("/v1/runs"))
        .json(&json!({"task_id": TASK, "attempt": 1, "short_id": SHORT}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    responses.push(unauth.text().await.unwrap());
    bridge.proc.sigterm();
    assert!(bridge
        .proc
        .wait_exit(Duration::from_secs(5))
        .await
        .is_some());
    outputs.push(("bot-bridge".into(), bridge.proc.output()));
    outputs.push(("watcher".into(), watcher.output()));
    let webhook_tokens: Vec<String> = fake
        .admin_list("webhooks")
        .await
        .iter()
        .filter(|w| w["channel_id"] == channel_id)
        .map(|w| w["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(webhook_tokens.len(), 2);
    let mut secrets = vec![
        BOT_TOKEN.to_owned(),
        API_TOKEN.to_owned(),
        input_secret,
        RUN_TOKEN.to_owned(),
    ];
    secrets.extend(webhook_tokens);
    for (what, text) in outputs
        .iter()
        .map(|(w, t)| (w.as_str(), t.as_str()))
        .chain(responses.iter().map(|r| ("API response", r.as_str())))
    {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} leaks a secret:\n{text}"
            );
        }
    }
}

/// Discord's scale limits, against the fake that enforces them: a full
/// category (50 channels) overflows into `Agent Runs 2`.
#[tokio::test]
async fn a_full_category_overflows_into_the_next() {
    let fake = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let category = fake
        .admin_post("channels", json!({"name": "Agent Runs", "type": 4}))
        .await;
    for i in 0..50 {
        fake.admin_post(
            "channels",
            json!({"name": format!("run-old-{i}"), "type": 0, "parent_id": category["id"]}),
        )
        .await;
    }
    let bridge = start_bridge(&fake, &dir.path().join("b.db"), "127.0.0.1:0", &[]).await;
    let (status, run) = bridge.create_run().await;
    assert_eq!(status, 201, "{run}");
    let channels = fake.admin_list("channels").await;
    let channel = channels
        .iter()
        .find(|c| c["id"] == run["channel_id"])
        .unwrap();
    let parent = channels
        .iter()
        .find(|c| c["id"] == channel["parent_id"])
        .unwrap();
    assert_eq!(parent["name"], "Agent Runs 2", "{channel}");
    assert_eq!(parent["type"], 4);
}

/// `RUN_CONTAINER=thread`: each run is a thread of one channel, and the
/// watcher's posts land in that thread through the parent's webhook.
#[tokio::test]
async fn thread_mode_streams_into_the_runs_thread() {
    let fake = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let parent = fake
        .admin_post("channels", json!({"name": "agent-runs", "type": 0}))
        .await;
    let parent_id = parent["id"].as_str().unwrap().to_owned();
    let bridge = start_bridge(
        &fake,
        &dir.path().join("b.db"),
        "127.0.0.1:0",
        &[
            ("RUN_CONTAINER", "thread".to_string()),
            ("THREAD_PARENT_CHANNEL_ID", parent_id.clone()),
        ],
    )
    .await;
    let transcript_path = dir.path().join("s.jsonl");
    std::fs::write(&transcript_path, transcript::prompts("thread", 0..4)).unwrap();
    let fifo = Fifo::open(dir.path(), None);
    let env = watcher_env(
        &bridge,
        &transcript_path,
        &dir.path().join("state"),
        &fifo.path,
    );
    let watcher = Proc::start("watcher", &[], &env);
    let provisioned = watcher
        .wait_log("run provisioned by bot-bridge", DEADLINE)
        .await;
    let thread_id = provisioned["channel_id"].as_str().unwrap().to_owned();
    let thread = fake
        .admin_list("channels")
        .await
        .into_iter()
        .find(|c| c["id"] == thread_id.as_str())
        .unwrap();
    assert_eq!(thread["parent_id"], parent_id.as_str(), "{thread}");
    fake.wait_markers(&format!("?thread_id={thread_id}"), "thread", 0..4, DEADLINE)
        .await;
    assert!(
        fake.messages()
            .await
            .iter()
            .all(|m| m["thread_id"] == thread_id.as_str()),
        "nothing lands in the parent channel itself"
    );

    // Another run gets its own webhook on the parent, not a shared one.
    let (status, other) = bridge
        .create_run_as(Some(RUN_TOKEN), &json!({"short_id": "other-run"}))
        .await;
    assert_eq!(status, 201, "{other}");
    let other_url = other["webhook_url"].as_str().unwrap().to_owned();
    let hooks = live_webhooks(&fake, &parent_id).await;
    assert_eq!(hooks.len(), 2, "one webhook per run: {hooks:?}");
    let own = hooks
        .iter()
        .find(|w| !other_url.contains(&format!("/webhooks/{}/", w["id"].as_str().unwrap())))
        .unwrap();
    let own_url = format!(
        "{}/webhooks/{}/{}?thread_id={thread_id}",
        fake.api_base,
        own["id"].as_str().unwrap(),
        own["token"].as_str().unwrap()
    );
    // The run completes: its URL stops working; the other run's still posts.
    let mut watcher = watcher;
    watcher.sigterm();
    assert!(watcher.wait_exit(Duration::from_secs(6)).await.is_some());
    eventually("run A's webhook revoked", DEADLINE, || async {
        (live_webhooks(&fake, &parent_id).await.len() == 1).then_some(())
    })
    .await;
    let post = |url: String| async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"content": "late", "allowed_mentions": {"parse": []}}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        post(own_url).await,
        404,
        "a completed run's URL still posts"
    );
    let other_thread = other["channel_id"].as_str().unwrap();
    assert!(other_url.ends_with(&format!("?thread_id={other_thread}")));
    assert!((200..300).contains(&post(other_url).await));
}

fn sign_input(secret: &str, ts: &str, body: &[u8]) -> String {
    protocol::sign(secret.as_bytes(), ts, body)
}

fn rss_kib(pid: i32) -> u64 {
    e2e::rss_kib(pid).expect("VmRSS of a live process")
}

/// 100 `/input` per second for 10 s at one watcher whose agent stops reading:
/// every answer is 202, 429 or 503, the listener never wedges, memory stays
/// bounded, and the agent gets exactly the accepted inputs, each a whole line.
#[tokio::test]
async fn input_under_load_sheds_without_deadlock_or_partial_lines() {
    const SECRET: &str = "load-input-secret-SECRET-77";
    let dir = tempfile::tempdir().unwrap();
    let transcript_path = dir.path().join("s.jsonl");
    std::fs::write(&transcript_path, "").unwrap();
    let (open_gate, gate) = std::sync::mpsc::channel();
    let fifo = Fifo::open(dir.path(), Some(gate));
    let env = vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("TRANSCRIPT_PATH", transcript_path.display().to_string()),
        ("STATE_DIR", dir.path().join("state").display().to_string()),
        ("INPUT_ADDR", "127.0.0.1:0".to_string()),
        ("INPUT_SECRET", SECRET.to_string()),
        ("AGENT_INPUT_FIFO", fifo.path.display().to_string()),
    ];
    let watcher = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&watcher).await;
    let listening = watcher.wait_log("operator input listening", DEADLINE).await;
    let input_addr = listening["input_addr"].as_str().unwrap().to_owned();
    let rss_before = rss_kib(watcher.pid());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Lines of ~3 KiB so the 64 KiB pipe fills within the burst the rate
    // limiter lets through, while the agent is not reading.
    let filler = "x".repeat(3000);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        tick.tick().await;
        let body = serde_json::to_vec(&json!({
            "run_id": "run-load", "user": "op", "id": format!("load-{i}"),
            "text": format!("load-{i} {filler}"),
        }))
        .unwrap();
        let ts = now_unix().to_string();
        let sig = sign_input(SECRET, &ts, &body);
        let req = client
            .post(format!("http://{input_addr}/v1/input"))
            .header("content-type", "application/json")
            .header("x-agentmon-timestamp", ts)
            .header("x-agentmon-signature", sig)
            .body(body);
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (i, r.status().as_u16())
        }));
        if i == 500 {
            // The agent resumes reading halfway through.
            open_gate.send(()).unwrap();
        }
    }
    let mut accepted = Vec::new();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        *by_status.entry(status).or_default() += 1;
        assert!(
            matches!(status, 202 | 429 | 503),
            "load-{i} answered {status}"
        );
        if status == 202 {
            accepted.push(format!("load-{i}"));
        }
    }
    eprintln!("input load: answers by status {by_status:?}");
    assert!(
        by_status.get(&429).copied().unwrap_or(0) > 0,
        "the rate limit sheds"
    );
    assert!(
        by_status.get(&503).copied().unwrap_or(0) > 0,
        "a full pipe sheds"
    );
    assert!(accepted.len() >= 100, "inputs keep flowing: {by_status:?}");

    // The listener is alive and answers at once.
    let live = client
        .get(format!("http://{ops}/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let rss_after = rss_kib(watcher.pid());
    eprintln!("input load: watcher RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory stays bounded: {rss_before} → {rss_after} KiB"
    );

    let lines = eventually("every accepted input read", DEADLINE, || async {
        let lines = fifo.lines();
        (lines.len() >= accepted.len()).then_some(lines)
    })
    .await;
    let mut ids = Vec::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("partial line {e}: {l}"));
        assert!(v["text"].as_str().unwrap().ends_with(&filler));
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    ids.sort();
    accepted.sort();
    assert_eq!(ids, accepted, "the agent read exactly the accepted inputs");
}
