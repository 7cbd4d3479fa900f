//! Fleet benchmark: bot-bridge (release binaries) provisioning a 200-run burst
//! against fake-discord with Discord's bot limits (global 50 requests/s,
//! per-route buckets, 50 channels a category, 500 a guild), then operator
//! `/input` into every run, then every run completed; on SQLite with one
//! replica, on Postgres with one and with two replicas (a Lease on fake-kube
//! electing the leader). The watchers are played by this process over HTTP
//! (what a watcher sends: `POST /v1/runs` with its run token, an input
//! listener, `complete`), so the figures are bot-bridge's alone.
//!
//! Per scenario: time from the first request to the last channel against the
//! least Discord's limits allow, provisioning latency p50/p99, 429s Discord
//! answered, bot-bridge RSS and CPU time per active run, inputs delivered.
//!
//! Then the memory phase, one replica on SQLite and on Postgres:
//! `MEMORY_RUNS` (1000) runs created and left active, bot-bridge's RSS
//! sampled at start, at its peak during the burst and after it. One guild
//! holds 500 channels, so fake-discord (`--guild-channel-limit`) and
//! bot-bridge (`GUILD_CHANNEL_LIMIT`) are raised to fit them, for this
//! measurement only; every other limit stays Discord's.
//!
//! Postgres scenarios need `AGENTMON_TEST_POSTGRES_URL` (scripts/test's
//! throw-away server, or `. scripts/test-postgres.sh; start_test_postgres`);
//! without it they are skipped. `RUNS` sets the burst size (200);
//! `RUNS=0` or `MEMORY_RUNS=0` skips that phase.
//! Writes `target/bench/fleet.json` and prints it:
//! `cargo bench -p e2e --bench fleet` (`FLEET_BENCH_DEBUG=1`: debug binaries).

// A bench binary reports; failing fast on a broken set-up is right here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::post;
use e2e::{FakeDiscordProc, Proc};
use ed25519_dalek::{Signer, SigningKey};
use fake_kube::FakeKube;
use serde_json::{json, Value};
use tokio::time::Instant;

const API_TOKEN: &str = "api-token-SECRET-bench";
const BOT_TOKEN: &str = "bot-token-SECRET-bench";
const OPERATOR: &str = "99";
/// fake-discord's per-route bucket: 10 requests per second (its default).
const ROUTE_LIMIT: f64 = 10.0;

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

struct Replica {
    proc: Proc,
    api: String,
    ops: String,
}

async fn start_replica(
    name: &str,
    discord: &FakeDiscordProc,
    db: &str,
    kubeconfig: Option<&Path>,
    extra: &[(&'static str, String)],
) -> Replica {
    let mut env = e2e::bridge_env(API_TOKEN, BOT_TOKEN, &discord.api_base, Path::new("x"));
    env.retain(|(k, _)| *k != "DATABASE_URL");
    env.extend([
        ("DATABASE_URL", db.to_owned()),
        (
            "DISCORD_PUBLIC_KEY",
            hex::encode(signing_key().verifying_key().to_bytes()),
        ),
        ("DISCORD_APPLICATION_ID", "77".to_owned()),
        ("OPERATOR_USER_IDS", OPERATOR.to_owned()),
        ("INPUT_URL_ALLOW", "127.0.0.1/32".to_owned()),
        ("RETENTION", "1h".to_owned()),
        ("RUN_SILENCE_TIMEOUT", "0".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    if let Some(k) = kubeconfig {
        env.extend([
            ("KUBE_CONFIG", k.display().to_string()),
            ("RECONCILE_NAMESPACES", "agents".to_owned()),
            ("LEADER_ELECTION_LEASE", "agentmon/bot-bridge".to_owned()),
            ("LEADER_ELECTION_IDENTITY", name.to_owned()),
        ]);
    }
    env.extend(extra.iter().cloned());
    let proc = Proc::start("bot-bridge", &[], &env);
    let started = proc.wait_log("started", Duration::from_secs(60)).await;
    Replica {
        api: started["api_addr"].as_str().unwrap().to_owned(),
        ops: started["ops_addr"].as_str().unwrap().to_owned(),
        proc,
    }
}

/// A watcher's input listener for every run: counts deliveries.
async fn input_listener() -> (String, Arc<AtomicUsize>) {
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    let app = axum::Router::new().route(
        "/v1/input",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

/// The store URL of `backend` (a file in `dir`, or a fresh Postgres
/// database); `None` (and why, printed) when Postgres is not available.
async fn database(name: &str, backend: &str, dir: &Path) -> Option<String> {
    if backend == "sqlite" {
        return Some(format!("sqlite://{}", dir.join("bridge.db").display()));
    }
    let Some(url) = bot_bridge::store::postgres::test_support::fresh_database()
        .await
        .unwrap()
    else {
        eprintln!("{name}: skipped (no AGENTMON_TEST_POSTGRES_URL)");
        return None;
    };
    Some(url.expose().clone())
}

/// `POST /v1/runs` for run `i` until it succeeds (a 503 while Discord's
/// limits hold it back is retried, as the watcher does).
async fn provision(
    client: &reqwest::Client,
    api: &str,
    i: usize,
    input_url: &str,
) -> (Value, String) {
    let token = format!("run-token-{i:04}-0123456789abcdef0123456789");
    loop {
        let res = client
            .post(format!("http://{api}/v1/runs"))
            .bearer_auth(API_TOKEN)
            .header("x-agentmon-run-token", &token)
            .json(
                &json!({"task_id": "bench", "attempt": 1, "short_id": format!("r{i:04}"),
                          "input_url": input_url}),
            )
            .send()
            .await;
        if let Ok(r) = res {
            if r.status().is_success() {
                return (r.json().await.unwrap(), token);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scenario(name: &str, backend: &str, replicas_n: usize, runs: usize) -> Option<Value> {
    let dir = tempfile::tempdir().unwrap();
    let db = database(name, backend, dir.path()).await?;
    let discord = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let kube = FakeKube::start().await.unwrap();
    let kubeconfig = (replicas_n > 1).then(|| kube.kubeconfig(dir.path().join("kc")).unwrap());
    let mut replicas = Vec::new();
    for i in 0..replicas_n {
        replicas
            .push(start_replica(&format!("r{i}"), &discord, &db, kubeconfig.as_deref(), &[]).await);
    }
    let (input_url, delivered) = input_listener().await;
    let client = reqwest::Client::new();
    let cpu_before: f64 = replicas.iter().map(|r| cpu_seconds(r.proc.pid())).sum();

    // 1. The burst.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..runs {
        let (client, api, input_url) = (
            client.clone(),
            replicas[i % replicas_n].api.clone(),
            input_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let (v, token) = provision(&client, &api, i, &input_url).await;
            (v, token, sent.elapsed(), start.elapsed())
        }));
    }
    let mut provisioned = Vec::new();
    for t in tasks {
        provisioned.push(t.await.unwrap());
    }
    let last_channel = provisioned.iter().map(|p| p.3).max().unwrap_or_default();
    let mut latencies: Vec<f64> = provisioned.iter().map(|p| p.2.as_secs_f64()).collect();
    latencies.sort_by(f64::total_cmp);
    let rss_kib: u64 = replicas
        .iter()
        .map(|r| e2e::rss_kib(r.proc.pid()).unwrap_or(0))
        .sum();

    // 2. Operator input into every run, spread over the replicas.
    let key = signing_key();
    let mut inputs = Vec::new();
    for (i, (run, _, _, _)) in provisioned.iter().enumerate() {
        let body = json!({
            "id": format!("interaction-{i}"), "type": 2, "application_id": "77",
            "channel_id": run["channel_id"], "guild_id": "1",
            "token": format!("interaction-token-{i}"),
            "member": {"user": {"id": OPERATOR, "username": "operator"}, "roles": []},
            "data": {"id": "1", "name": "input", "type": 1,
                     "options": [{"name": "text", "type": 3, "value": "continue"}]},
        })
        .to_string();
        let (client, api, key) = (
            client.clone(),
            replicas[i % replicas_n].api.clone(),
            key.clone(),
        );
        inputs.push(tokio::spawn(async move {
            let ts = now_unix().to_string();
            let sig = key.sign(format!("{ts}{body}").as_bytes());
            client
                .post(format!("http://{api}/interactions"))
                .header("content-type", "application/json")
                .header("x-signature-ed25519", hex::encode(sig.to_bytes()))
                .header("x-signature-timestamp", ts)
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in inputs {
        assert_eq!(t.await.unwrap(), 200);
    }

    // 3. Every run completed.
    let mut completes = Vec::new();
    for (i, (run, token, _, _)) in provisioned.iter().enumerate() {
        let (client, api) = (client.clone(), replicas[i % replicas_n].api.clone());
        let (id, token) = (run["run_id"].as_str().unwrap().to_owned(), token.clone());
        completes.push(tokio::spawn(async move {
            loop {
                let r = client
                    .post(format!("http://{api}/v1/runs/{id}/complete"))
                    .bearer_auth(API_TOKEN)
                    .header("x-agentmon-run-token", &token)
                    .json(&json!({"summary": {}}))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    for t in completes {
        t.await.unwrap();
    }
    let total = start.elapsed();
    let cpu: f64 = replicas
        .iter()
        .map(|r| cpu_seconds(r.proc.pid()))
        .sum::<f64>()
        - cpu_before;
    let stats = discord.stats().await;
    let rest_429: u64 = stats["rest_rate_limited"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let creates = stats["rest_requests"]["POST /guilds/{guild_id}/channels"]
        .as_u64()
        .unwrap_or(0);
    let lists = stats["rest_requests"]["GET /guilds/{guild_id}/channels"]
        .as_u64()
        .unwrap_or(0);
    // The least the per-route bucket allows for the channel creations the
    // burst needs: one per run plus a category per 50 runs (429-refused
    // attempts are not needed work, so they are not counted).
    let needed = runs + runs.div_ceil(50);
    let theoretical = needed.saturating_sub(1) as f64 / ROUTE_LIMIT;
    let report = json!({
        "scenario": name,
        "backend": backend,
        "replicas": replicas_n,
        "runs": runs,
        "seconds_to_last_channel": last_channel.as_secs_f64(),
        "theoretical_seconds": theoretical,
        "ratio_to_theoretical": last_channel.as_secs_f64() / theoretical.max(0.001),
        "provision_p50_seconds": percentile(&latencies, 0.5),
        "provision_p99_seconds": percentile(&latencies, 0.99),
        "discord_429": stats["rate_limited_total"].as_u64().unwrap_or(0) + rest_429,
        "inputs_delivered": delivered.load(Ordering::SeqCst),
        "seconds_total": total.as_secs_f64(),
        "rss_kib_after_burst": rss_kib,
        "rss_kib_per_active_run": rss_kib as f64 / runs as f64,
        "cpu_seconds": cpu,
        "cpu_ms_per_run": cpu * 1000.0 / runs as f64,
        "guild_requests": {"list": lists, "create": creates},
        // Where any 429 came from: REST by scope, requests (429s included) by route.
        "discord_429_by_scope": {"rest": stats["rest_rate_limited"], "webhook": stats["rate_limited"]},
        "discord_requests_by_route": stats["rest_requests"],
    });
    eprintln!("{report}");
    Some(report)
}

/// The memory phase: `runs` runs created in one burst and left active on one
/// replica; RSS at start, at its peak (sampled every 100 ms) and after.
async fn memory_scenario(name: &str, backend: &str, runs: usize) -> Option<Value> {
    let dir = tempfile::tempdir().unwrap();
    let db = database(name, backend, dir.path()).await?;
    // Room for the runs, their categories (50 runs each) and a margin.
    let guild_limit = (runs + runs.div_ceil(50) + 10).max(500).to_string();
    let discord = FakeDiscordProc::start(&[
        "--bot-token",
        BOT_TOKEN,
        "--guild-channel-limit",
        &guild_limit,
    ])
    .await;
    let replica = start_replica(
        "r0",
        &discord,
        &db,
        None,
        &[("GUILD_CHANNEL_LIMIT", guild_limit.clone())],
    )
    .await;
    let (input_url, _) = input_listener().await;
    // A watcher gives up on an answer after a while and asks again; without
    // a timeout, 3 of 1000 requests once hung here for good.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let pid = replica.proc.pid();
    let idle = e2e::rss_kib(pid).unwrap_or(0);
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut peak = 0;
            while done.load(Ordering::SeqCst) < runs {
                peak = peak.max(e2e::rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..runs {
        let (client, api, input_url, done) = (
            client.clone(),
            replica.api.clone(),
            input_url.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            provision(&client, &api, i, &input_url).await;
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let burst = start.elapsed();
    let after = e2e::rss_kib(pid).unwrap_or(0);
    let peak = sampler.await.unwrap().max(after);
    let active = e2e::metric_value(
        &e2e::get_text(&format!("http://{}/metrics", replica.ops))
            .await
            .1,
        "bridge_runs_active",
    );
    let per_1000 = |kib: u64| kib as f64 / 1024.0 * 1000.0 / runs as f64;
    let report = json!({
        "scenario": name,
        "backend": backend,
        "active_runs": runs,
        "bridge_runs_active": active,
        "seconds_to_provision": burst.as_secs_f64(),
        "rss_kib_at_start": idle,
        "rss_kib_peak": peak,
        "rss_kib_after_burst": after,
        "rss_mib_per_1000_active_runs_total": per_1000(after),
        "rss_mib_per_1000_active_runs_above_start": per_1000(after.saturating_sub(idle)),
    });
    eprintln!("{report}");
    Some(report)
}

#[tokio::main]
async fn main() {
    if std::env::var("FLEET_BENCH_DEBUG").is_err() {
        e2e::use_release_binaries();
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut results = Vec::new();
    for (name, backend, n) in [
        ("sqlite, 1 replica", "sqlite", 1),
        ("postgres, 1 replica", "postgres", 1),
        ("postgres, 2 replicas", "postgres", 2),
    ] {
        if runs == 0 {
            break;
        }
        if let Some(r) = scenario(name, backend, n, runs).await {
            results.push(r);
        }
    }
    let memory_runs: usize = std::env::var("MEMORY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut memory = Vec::new();
    for (name, backend) in [
        ("memory, sqlite, 1 replica", "sqlite"),
        ("memory, postgres, 1 replica", "postgres"),
    ] {
        if memory_runs == 0 {
            break;
        }
        if let Some(r) = memory_scenario(name, backend, memory_runs).await {
            memory.push(r);
        }
    }
    let report = json!({"binaries": e2e::profile(), "scenarios": results, "memory": memory});
    let out = e2e::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(out.join("fleet.json"), &text).unwrap();
    println!("{text}");
}
