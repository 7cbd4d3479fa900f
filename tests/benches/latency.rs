//! Delivery benchmark over the real watcher binary and the strict fake Discord
//! (in-process, so arrivals are timed on the same clock as the appends).
//!
//! 1. latency: append one transcript line, wait until Discord (the fake)
//!    accepted the message carrying it; 1000 times, rate limits off.
//! 2. drain: a backlog with Discord's default limits (5 req / 2 s per webhook,
//!    30 messages / 60 s per channel); embeds delivered per second against
//!    the theoretical maximum under both limits, and 429s seen.
//! 3. backlog: 20 runs of a 600-event backlog against the per-channel limit
//!    counted as a sliding window and 20 as fixed windows of a random phase
//!    (fake-discord binary, no clock tolerance), both windows scaled down
//!    `BACKLOG_SCALE` times (default 10: 30 messages per 6 s, 5 requests per
//!    200 ms) so 40 runs take minutes, not 45; 429s and the fraction of the
//!    limits' rate per run.
//! 4. idle: RSS and CPU of a watcher following a quiet transcript.
//!
//! Writes `target/bench/latency.json` and prints it. Run:
//! `cargo bench -p e2e --bench latency` (set `DRAIN_MESSAGES` or
//! `BACKLOG_RUNS` to shorten).

// A bench binary reports; failing fast on a broken set-up is right here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use e2e::transcript::{self, SESSION};
use e2e::Proc;
use fake_discord::{FakeConfig, FakeDiscord};
use serde_json::json;
use tokio::time::Instant;

/// Gap between appends in the latency run: 40 events/s.
const PACE: Duration = Duration::from_millis(25);

fn watcher_env(webhook: &str, file: &Path, state: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("OPS_ADDR", "127.0.0.1:0".to_string()),
        ("TRANSCRIPT_PATH", file.display().to_string()),
        ("START_AT", "beginning".to_string()),
        ("STATE_DIR", state.display().to_string()),
        ("DISCORD_WEBHOOK_URL", webhook.to_string()),
        ("POLL_INTERVAL_MS", "100".to_string()),
        ("RUST_LOG", "info".to_string()),
    ]
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency(events: usize) -> serde_json::Value {
    let fake = FakeDiscord::start(FakeConfig::without_rate_limits())
        .await
        .unwrap();
    let hook = fake.create_webhook("bench").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let mut env = watcher_env(&hook.url, &file, &dir.path().join("state"));
    // Limits off on both sides: the watcher's own per-channel pacing too.
    env.push(("CHANNEL_MESSAGES_PER_MINUTE", "1000000".to_string()));
    let w = Proc::start("watcher", &[], &env);
    e2e::started_ops_addr(&w).await;
    // Warm-up: the header and the first message.
    append(&file, &transcript::prompt("warm", SESSION, "warm-up"));
    assert!(
        !fake
            .wait_for_messages(1, Duration::from_secs(20))
            .await
            .is_empty(),
        "watcher delivers"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let the warm-up settle (not a sync point)
    fake.reset();
    let mut samples = Vec::with_capacity(events);
    let mut rate_limited = 0u64;
    for i in 0..events {
        let line = transcript::prompt(&format!("lat-u{i}"), SESSION, &format!("lat-{i:04}"));
        let t0 = Instant::now();
        append(&file, &line);
        let got = fake.wait_for_messages(1, Duration::from_secs(10)).await;
        let t1 = Instant::now();
        assert!(!got.is_empty(), "event {i} was not delivered");
        samples.push((t1 - t0).as_secs_f64() * 1000.0);
        // Pace the producer below the watcher's global 50 requests/s budget
        // (a Discord limit it honours even here), like a real agent would.
        tokio::time::sleep_until(t0 + PACE).await;
        rate_limited += fake.stats().rate_limited.values().sum::<u64>();
        fake.reset();
    }
    drop(w);
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    json!({
        "events": events,
        "p50_ms": percentile(&samples, 0.5),
        "p90_ms": percentile(&samples, 0.9),
        "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().unwrap_or(0.0),
        "mean_ms": mean,
        "rate_limited": rate_limited,
    })
}

/// The earliest time (s after the first send) the `n`-th message (1-based) may
/// go under both limits, both windows sliding: ≤5 per 2 s, ≤30 per 60 s.
fn theoretical_seconds(n: usize) -> f64 {
    e2e::Limits::DISCORD.theoretical(n).as_secs_f64()
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `runs` backlogs of 600 events in each way of counting the channel window.
async fn backlog(runs: usize, scale: u32) -> serde_json::Value {
    let limits = e2e::Limits::DISCORD.scaled(scale);
    let mut report = serde_json::Map::new();
    report.insert("runs_per_window".into(), json!(runs));
    report.insert("scale".into(), json!(scale));
    report.insert(
        "channel_limit".into(),
        json!(format!(
            "{} per {} ms",
            limits.channel_limit,
            limits.channel_window.as_millis()
        )),
    );
    report.insert(
        "webhook_limit".into(),
        json!(format!(
            "{} per {} ms",
            limits.webhook_limit,
            limits.webhook_window.as_millis()
        )),
    );
    for kind in ["sliding", "fixed"] {
        let mut all = Vec::with_capacity(runs);
        for _ in 0..runs {
            let run = e2e::backlog_run(limits, kind, 600).await;
            eprintln!("backlog {kind}: {}", serde_json::to_string(&run).unwrap());
            all.push(run);
        }
        let fractions: Vec<f64> = all.iter().map(|r| r.fraction_of_max).collect();
        let min = fractions.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = fractions.iter().sum::<f64>() / fractions.len().max(1) as f64;
        report.insert(
            kind.into(),
            json!({
                "runs": all.len(),
                "rate_limited_total": all.iter().map(|r| r.rate_limited).sum::<u64>(),
                "fraction_of_max_min": min,
                "fraction_of_max_mean": mean,
                "runs_detail": all,
            }),
        );
    }
    serde_json::Value::Object(report)
}

async fn drain(messages: usize) -> serde_json::Value {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("drain").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    // Enough events for `messages` full messages (10 embeds each) after the header.
    let events = messages * 10 - 1;
    std::fs::write(&file, transcript::prompts("drain", 0..events)).unwrap();
    let w = Proc::start(
        "watcher",
        &[],
        &watcher_env(&hook.url, &file, &dir.path().join("state")),
    );
    let got = fake.wait_for_messages(1, Duration::from_secs(30)).await;
    assert!(!got.is_empty());
    let all = fake
        .wait_for_messages(messages, Duration::from_secs(600))
        .await;
    drop(w);
    let first = all.first().map_or(0, |m| m.received_at_mono_ms);
    let last = all.last().map_or(0, |m| m.received_at_mono_ms);
    let embeds: usize = all
        .iter()
        .map(|m| m.payload["embeds"].as_array().map_or(0, Vec::len))
        .sum();
    let measured = (last - first) as f64 / 1000.0;
    let ideal = theoretical_seconds(all.len());
    let stats = fake.stats();
    json!({
        "messages": all.len(),
        "embeds": embeds,
        "seconds": measured,
        "theoretical_seconds": ideal,
        "fraction_of_max": if measured > 0.0 { ideal / measured } else { 0.0 },
        "embeds_per_minute": if measured > 0.0 { embeds as f64 * 60.0 / measured } else { 0.0 },
        "rate_limited": stats.rate_limited.values().sum::<u64>(),
    })
}

fn proc_stat(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    (rss_kib, ticks)
}

async fn idle(seconds: u64) -> serde_json::Value {
    let fake = FakeDiscord::start(FakeConfig::default()).await.unwrap();
    let hook = fake.create_webhook("idle").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, transcript::prompts("idle", 0..50)).unwrap();
    let w = Proc::start(
        "watcher",
        &[],
        &watcher_env(&hook.url, &file, &dir.path().join("state")),
    );
    fake.wait_for_messages(5, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // settle before measuring
    let (_, t0) = proc_stat(w.pid());
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (rss_kib, t1) = proc_stat(w.pid());
    let hz = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / hz / start.elapsed().as_secs_f64() * 100.0;
    json!({"rss_mib": rss_kib as f64 / 1024.0, "cpu_percent": cpu, "seconds": seconds})
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    e2e::use_release_binaries();
    let drain_messages: usize = std::env::var("DRAIN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let report = json!({
        "binaries": e2e::profile(),
        "latency_append_to_accepted": latency(1000).await,
        "drain_default_limits": drain(drain_messages).await,
        "backlog_600_events": backlog(
            env_usize("BACKLOG_RUNS", 20),
            u32::try_from(env_usize("BACKLOG_SCALE", 10)).unwrap_or(10),
        )
        .await,
        "idle": idle(10).await,
    });
    let out = e2e::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let text = serde_json::to_string_pretty(&report).unwrap();
    std::fs::write(out.join("latency.json"), &text).unwrap();
    println!("{text}");
}
