//! Cluster-true health of the watcher (issue 16), over the real binaries and
//! fake-discord with its limits on: an outage of Discord or bot-bridge never
//! fails liveness, shows in readiness and the sink metrics within seconds and
//! clears within seconds of recovery, loses nothing; a SIGTERM keeps the
//! summary and bot-bridge's `complete` within the budget, and ends
//! provisioning at once.
//!
//! The two outage scenarios run at full length (three and two minutes); they
//! only wait, so they run in parallel with everything else.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::transcript;
use e2e::{append_chunked, count, eventually, get_text, metric_value, started_ops_addr};
use e2e::{FakeDiscordProc, Proc, WebhookWatcher};
use serde_json::{json, Value};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(40);
const API_TOKEN: &str = "api-token-SECRET-5b7e";
const BOT_TOKEN: &str = "bot-token-SECRET-1c9a";
/// How soon an outage must show, and how soon after recovery it must clear.
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);
const CLEARED_WITHIN: Duration = Duration::from_secs(5);

/// One look at the watcher's ops endpoints, taken every second.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    livez: u16,
    readyz: u16,
    sink_up: Option<f64>,
    oldest_pending_age: Option<f64>,
}

/// Samples `/livez`, `/readyz` and `/metrics` each second until dropped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(ops: &str) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = samples.clone();
        let ops = ops.to_owned();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let status = |path: &'static str| {
                let http = http.clone();
                let url = format!("http://{ops}{path}");
                async move {
                    http.get(url)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16())
                }
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let at = Instant::now();
                let livez = status("/livez").await;
                let readyz = status("/readyz").await;
                let metrics = match http.get(format!("http://{ops}/metrics")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                sink.lock().unwrap().push(Sample {
                    at,
                    livez,
                    readyz,
                    sink_up: metric_value(&metrics, "watcher_sink_up"),
                    oldest_pending_age: metric_value(
                        &metrics,
                        "watcher_oldest_pending_age_seconds",
                    ),
                });
            }
        });
        Sampler { samples, task }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The first sample at or after `from` that satisfies `pred`.
    fn first_after(&self, from: Instant, pred: impl Fn(&Sample) -> bool) -> Option<Sample> {
        self.samples().into_iter().find(|s| s.at >= from && pred(s))
    }

    /// Clears fake-discord's faults and waits until the watcher shows its sink
    /// up and is ready again, which must take at most [`CLEARED_WITHIN`]: how
    /// long it took.
    async fn clear_and_wait_up(&self, fake: &FakeDiscordProc, after: &str) -> Duration {
        fake.clear_faults().await;
        let back = Instant::now();
        let up = eventually(
            &format!("watcher_sink_up back to 1 after {after}"),
            DEADLINE,
            || async { self.first_after(back, |s| s.sink_up == Some(1.0) && s.readyz == 200) },
        )
        .await;
        let took = up.at - back;
        assert!(
            took <= CLEARED_WITHIN,
            "cleared only {took:?} after {after} stopped"
        );
        took
    }

    /// Every sample so far answered `/livez` 200, one a second without gaps.
    fn assert_always_live(&self, since: Instant) {
        let samples: Vec<Sample> = self
            .samples()
            .into_iter()
            .filter(|s| s.at >= since)
            .collect();
        assert!(samples.len() > 10, "too few samples: {}", samples.len());
        for s in &samples {
            assert_eq!(s.livez, 200, "/livez failed at {:?}: {s:?}", s.at - since);
        }
        for pair in samples.windows(2) {
            assert!(
                pair[1].at - pair[0].at < Duration::from_millis(2500),
                "a sampling gap hides what /livez said: {pair:?}"
            );
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Appends `prefix-{i}` prompts for `range` to the transcript.
fn append(file: &Path, prefix: &str, range: std::ops::Range<usize>) {
    append_chunked(file, transcript::prompts(prefix, range).as_bytes(), 4096, 7);
}

/// Appends a few prompts every `every` until `until`, returning how many.
async fn keep_writing(
    file: &Path,
    prefix: &str,
    start: usize,
    until: Instant,
    every: Duration,
) -> usize {
    let mut next = start;
    while Instant::now() < until {
        append(file, prefix, next..next + 2);
        next += 2;
        tokio::time::sleep_until((Instant::now() + every).min(until)).await;
    }
    next
}

/// Each marker `prefix-{i:04}` of `range` appears exactly once in `text`.
fn assert_each_once(text: &str, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        let n = count(text, &format!("{prefix}-{i:04}"));
        assert_eq!(n, 1, "{prefix}-{i:04} delivered {n} times");
    }
}

/// The run a webhook watcher here reports as.
fn health_ids() -> [(&'static str, String); 2] {
    [
        ("TASK_ID", "task-16".to_string()),
        ("RUN_ID", "run-health".to_string()),
    ]
}

#[tokio::test]
async fn a_discord_outage_of_503s_then_silence_never_fails_liveness_shows_in_the_sink_metrics_and_loses_nothing(
) {
    let fake = FakeDiscordProc::start(&[]).await;
    let WebhookWatcher {
        dir: _dir,
        file,
        proc: _w,
        ops,
    } = WebhookWatcher::start(&fake, &health_ids()).await;
    append(&file, "out", 0..4);
    fake.wait_markers("", "out", 0..4, DEADLINE).await;
    let sampler = Sampler::start(&ops);
    let began = Instant::now();
    eventually("a first sample, sink up", DEADLINE, || async {
        sampler
            .first_after(began, |s| s.sink_up == Some(1.0) && s.readyz == 200)
            .map(|_| ())
    })
    .await;

    // 120 s of 503s, with the agent writing on.
    fake.inject(json!({"kind": "status", "status": 503, "count": 1_000_000}))
        .await;
    let outage = Instant::now();
    let mut next = keep_writing(
        &file,
        "out",
        4,
        outage + Duration::from_secs(120),
        Duration::from_secs(10),
    )
    .await;
    let down = sampler
        .first_after(outage, |s| s.sink_up == Some(0.0))
        .expect("watcher_sink_up never showed the 503s");
    assert!(
        down.at - outage <= VISIBLE_WITHIN,
        "the outage showed only after {:?}",
        down.at - outage
    );
    assert!(
        sampler
            .first_after(outage, |s| s.readyz == 503)
            .is_some_and(|s| s.at - outage <= VISIBLE_WITHIN),
        "/readyz did not show the outage within {VISIBLE_WITHIN:?}"
    );
    eprintln!("503s: watcher_sink_up 0 after {:?}", down.at - outage);
    let late = sampler.samples().last().cloned().unwrap();
    assert_eq!(late.sink_up, Some(0.0), "still down at 120 s: {late:?}");
    assert!(
        late.oldest_pending_age.unwrap() >= 100.0,
        "the oldest pending record counts the whole outage: {late:?}"
    );

    // Discord is back: the retries (capped at 3 s) find it within seconds.
    let took = sampler.clear_and_wait_up(&fake, "the 503s").await;
    eprintln!(
        "503s: cleared {took:?} after recovery (oldest pending then {:?} s)",
        late.oldest_pending_age
    );

    // Then 60 s of a Discord that takes connections and never answers.
    fake.inject(json!({"kind": "hang", "count": 1_000_000}))
        .await;
    let silent = Instant::now();
    next = keep_writing(
        &file,
        "out",
        next,
        silent + Duration::from_secs(60),
        Duration::from_secs(10),
    )
    .await;
    let down = sampler
        .first_after(silent, |s| s.sink_up == Some(0.0) && s.readyz == 503)
        .expect("the silent Discord never showed");
    assert!(
        down.at - silent <= VISIBLE_WITHIN,
        "the silence showed only after {:?}",
        down.at - silent
    );
    eprintln!("silence: watcher_sink_up 0 after {:?}", down.at - silent);
    assert!(
        sampler
            .samples()
            .iter()
            .filter(|s| s.at >= silent + VISIBLE_WITHIN)
            .all(|s| s.sink_up == Some(0.0) && s.readyz == 503),
        "the silent Discord must show for the whole minute"
    );

    // Discord answers again (the request it held included).
    let took = sampler.clear_and_wait_up(&fake, "the silence").await;
    eprintln!("silence: cleared {took:?} after recovery");
    let text = fake.wait_markers("", "out", 0..next, DEADLINE * 3).await;
    eventually("nothing pending any more", DEADLINE * 3, || async {
        let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
        (metric_value(&metrics, "watcher_oldest_pending_age_seconds") == Some(0.0)).then_some(())
    })
    .await;
    sampler.assert_always_live(began);
    eprintln!(
        "discord outage: /livez 200 in all {} samples; {next} records each delivered once",
        sampler.samples().len()
    );
    assert_each_once(&text, "out", 0..next);
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    assert_eq!(
        metric_value(&metrics, "watcher_dlq_messages_total"),
        Some(0.0),
        "nothing dead-lettered"
    );
    assert!(
        metric_value(
            &metrics,
            "watcher_webhook_retries_total{reason=\"server_error\"}"
        )
        .unwrap()
            > 10.0,
        "the 503s were retried:\n{metrics}"
    );
    let stats = fake.stats().await;
    assert!(
        stats["faults_served"]["hang"].as_u64().unwrap_or(0) >= 2,
        "the silence was met by requests: {stats}"
    );
}

/// Environment of a bot-bridge on `api_addr`.
fn bridge_env(fake: &FakeDiscordProc, db: &Path, api_addr: &str) -> Vec<(&'static str, String)> {
    let mut env = e2e::bridge_env(API_TOKEN, BOT_TOKEN, &fake.api_base, db);
    env.push(("API_ADDR", api_addr.to_string()));
    env
}

fn bridge_watcher_env(
    bridge_api: &str,
    file: &Path,
    state: &Path,
    attempt: &str,
) -> Vec<(&'static str, String)> {
    let mut env = e2e::watcher_env(file, state);
    env.extend([
        ("BRIDGE_URL", format!("http://{bridge_api}")),
        ("BRIDGE_TOKEN", API_TOKEN.to_string()),
        ("TASK_ID", "task-16".to_string()),
        ("ATTEMPT", attempt.to_string()),
        ("SHORT_ID", "h16".to_string()),
    ]);
    env
}

/// A loopback address nothing listens on (yet).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

async fn run_view(bridge_api: &str, run_id: &str) -> Value {
    e2e::get_json_authed(&format!("http://{bridge_api}/v1/runs/{run_id}"), API_TOKEN).await
}

#[tokio::test]
async fn bot_bridge_unreachable_at_start_never_fails_liveness_names_why_there_is_no_channel_and_loses_nothing(
) {
    let fake = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    append(&file, "nb", 0..3);
    let api = free_addr();
    let w = Proc::start(
        "watcher",
        &[],
        &bridge_watcher_env(&api, &file, &dir.path().join("state"), "1"),
    );
    let ops = started_ops_addr(&w).await;
    let began = Instant::now();

    // Every outcome is a series from the first scrape.
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    for outcome in [
        "ok",
        "unreachable",
        "unauthorized",
        "conflict",
        "unavailable",
        "rejected",
        "invalid",
    ] {
        let series = format!("watcher_provision_attempts_total{{outcome=\"{outcome}\"}}");
        assert!(
            metric_value(&metrics, &series).is_some(),
            "{series} missing from the first scrape:\n{metrics}"
        );
    }
    let sampler = Sampler::start(&ops);
    let (code, body) = eventually(
        "/readyz names why there is no channel",
        VISIBLE_WITHIN,
        || async {
            let (code, body) = get_text(&format!("http://{ops}/readyz")).await;
            body.contains("no channel yet: bot-bridge unreachable")
                .then_some((code, body))
        },
    )
    .await;
    assert_eq!(code, 503, "{body}");
    let down = eventually("watcher_sink_up 0", VISIBLE_WITHIN, || async {
        sampler.first_after(began, |s| s.sink_up == Some(0.0))
    })
    .await;
    assert!(down.at - began <= VISIBLE_WITHIN);
    eprintln!(
        "bot-bridge down: watcher_sink_up 0 after {:?}; {body}",
        down.at - began
    );

    // bot-bridge comes up on its address after 120 s.
    append(&file, "nb", 3..6);
    tokio::time::sleep_until(began + Duration::from_secs(120)).await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    let unreachable = metric_value(
        &metrics,
        "watcher_provision_attempts_total{outcome=\"unreachable\"}",
    )
    .unwrap();
    assert!(
        unreachable >= 20.0,
        "retried all along, every few seconds: {unreachable}"
    );
    let age = metric_value(&metrics, "watcher_oldest_pending_age_seconds").unwrap();
    assert!(age >= 100.0, "the queued records wait for a channel: {age}");
    let db = dir.path().join("bridge.db");
    let bridge = Proc::start("bot-bridge", &[], &bridge_env(&fake, &db, &api));
    let back = eventually("bot-bridge answers", DEADLINE, || async {
        tokio::net::TcpStream::connect(&api)
            .await
            .ok()
            .map(|_| Instant::now())
    })
    .await;
    let up = eventually("watcher_sink_up back to 1", DEADLINE, || async {
        sampler.first_after(back, |s| s.sink_up == Some(1.0) && s.readyz == 200)
    })
    .await;
    assert!(
        up.at - back <= CLEARED_WITHIN,
        "cleared only {:?} after bot-bridge came up",
        up.at - back
    );
    eprintln!(
        "bot-bridge down: cleared {:?} after it came up; {unreachable} unreachable attempts, oldest pending {age:.0} s",
        up.at - back
    );
    let provisioned = w.wait_log("run provisioned by bot-bridge", DEADLINE).await;
    let channel = provisioned["channel_id"].as_str().unwrap().to_owned();
    let text = fake
        .wait_markers(&format!("?channel_id={channel}"), "nb", 0..6, DEADLINE)
        .await;
    assert_each_once(&text, "nb", 0..6);
    sampler.assert_always_live(began);
    eprintln!(
        "bot-bridge down: /livez 200 in all {} samples",
        sampler.samples().len()
    );
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    assert_eq!(
        metric_value(&metrics, "watcher_provision_attempts_total{outcome=\"ok\"}"),
        Some(1.0)
    );
    drop(bridge);
}

#[tokio::test]
async fn sigterm_while_every_discord_request_takes_2_5_s_exits_within_the_budget_and_nothing_is_lost(
) {
    let fake = FakeDiscordProc::start(&["--bot-token", BOT_TOKEN]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bridge.db");
    let bridge = Proc::start("bot-bridge", &[], &bridge_env(&fake, &db, "127.0.0.1:0"));
    let started = bridge.wait_log("started", DEADLINE).await;
    let api = started["api_addr"].as_str().unwrap().to_owned();
    let budget = Duration::from_secs(5);

    // Where in the send in flight the signal lands: at its start, midway, near its end.
    for (attempt, offset_ms) in [("1", 0u64), ("2", 1200), ("3", 2300)] {
        let file = dir.path().join(format!("s{attempt}.jsonl"));
        append(&file, "sl", 0..3);
        let mut env = bridge_watcher_env(
            &api,
            &file,
            &dir.path().join(format!("state{attempt}")),
            attempt,
        );
        env.push(("SHUTDOWN_TIMEOUT", "5s".to_string()));
        let mut w = Proc::start("watcher", &[], &env);
        started_ops_addr(&w).await;
        let provisioned = w.wait_log("run provisioned by bot-bridge", DEADLINE).await;
        let run_id = provisioned["run_id"].as_str().unwrap().to_owned();
        let channel = provisioned["channel_id"].as_str().unwrap().to_owned();
        let query = format!("?channel_id={channel}");
        fake.wait_markers(&query, "sl", 0..3, DEADLINE).await;

        let served_before = fake.stats().await["faults_served"]["slow"].as_u64();
        // From now on every Discord request takes 2.5 s; the agent keeps writing.
        fake.inject(json!({"kind": "slow", "delay_ms": 2500, "count": 1_000_000}))
            .await;
        append(&file, "sl", 3..40);
        // A send is in flight once the fake holds a request.
        eventually("a slow send in flight", DEADLINE, || async {
            let stats = fake.stats().await;
            (stats["faults_served"]["slow"].as_u64() > served_before).then_some(())
        })
        .await;
        // The deliberate phase of the signal within that send.
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        let signalled = Instant::now();
        w.sigterm();
        let status = w.wait_exit(budget + Duration::from_secs(3)).await;
        let took = signalled.elapsed();
        let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", w.output()));
        assert!(status.success(), "{status:?}\n{}", w.output());
        eprintln!("offset {offset_ms} ms: exited {took:?} after SIGTERM");
        assert!(
            took <= budget + Duration::from_millis(500),
            "offset {offset_ms} ms: exit {took:?} after SIGTERM, budget {budget:?}\n{}",
            w.output()
        );
        // What the budget could not deliver (the cut send first) was handed
        // to bot-bridge, which delivers it at Discord's (slow) pace, then
        // the summary, then completes the run: every record arrives, the
        // cut one at most twice.
        let output = w.output();
        let view = eventually(
            &format!("offset {offset_ms} ms: run completed by bot-bridge; watcher:\n{output}"),
            DEADLINE,
            || async {
                let view = run_view(&api, &run_id).await;
                (view["status"] != "active").then_some(view)
            },
        )
        .await;
        assert!(view["completed_at"].is_string(), "{view}");
        let text = fake.payload_text(&query).await;
        assert_eq!(count(&text, "Run complete"), 1, "one summary:\n{output}");
        for i in 0..40 {
            let n = count(&text, &format!("sl-{i:04}"));
            assert!(
                (1..=2).contains(&n),
                "offset {offset_ms} ms: marker {i} seen {n} times:\n{output}"
            );
        }
        fake.clear_faults().await;
    }
    drop(bridge);
}

#[tokio::test]
async fn sigterm_during_provisioning_exits_within_the_budget() {
    // A bot-bridge that accepts connections and never answers: the watcher's
    // POST /v1/runs is in flight when the signal comes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = accepted.clone();
    let hold = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            held.lock().unwrap().push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    append(&file, "pv", 0..2);
    let mut env = bridge_watcher_env(&api, &file, &dir.path().join("state"), "1");
    env.push(("SHUTDOWN_TIMEOUT", "5s".to_string()));
    let mut w = Proc::start("watcher", &[], &env);
    let ops = started_ops_addr(&w).await;
    eventually("the provisioning request in flight", DEADLINE, || async {
        (!accepted.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    let (code, _) = get_text(&format!("http://{ops}/livez")).await;
    assert_eq!(code, 200);
    let signalled = Instant::now();
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", w.output()));
    assert!(status.success(), "{status:?}\n{}", w.output());
    eprintln!("SIGTERM during provisioning: exited {took:?} after the signal");
    assert!(
        took <= Duration::from_secs(5),
        "exit {took:?} after SIGTERM during provisioning, budget 5 s"
    );
    hold.abort();
}

/// The watcher metric names of DESIGN.md §5 (the paragraph starting
/// "watcher:"), labels stripped.
fn design_watcher_metrics() -> Vec<String> {
    let design = std::fs::read_to_string(e2e::workspace_root().join("docs/DESIGN.md")).unwrap();
    let section = design
        .split("### Metric names")
        .nth(1)
        .expect("DESIGN.md has a metric names section");
    let watcher = section.split("\nbot-bridge:").next().unwrap();
    watcher
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|n| n.starts_with("watcher_"))
        .map(|n| n.split('{').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_watcher_metric_design_lists_is_exported_from_the_first_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.jsonl");
    std::fs::write(&file, "").unwrap();
    let w = Proc::start(
        "watcher",
        &[],
        &e2e::watcher_env(&file, &dir.path().join("state")),
    );
    let ops = started_ops_addr(&w).await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await.1;
    let names = design_watcher_metrics();
    for required in [
        "watcher_sink_up",
        "watcher_oldest_pending_age_seconds",
        "watcher_provision_attempts_total",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "DESIGN.md §5 lacks {required}"
        );
    }
    for name in &names {
        // A histogram's samples carry suffixes.
        let sample = if name == "watcher_latency_seconds" {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        assert!(
            metrics
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(sample.as_str())),
            "DESIGN.md §5 lists {name}, which /metrics lacks:\n{metrics}"
        );
    }
    assert_eq!(metric_value(&metrics, "watcher_sink_up"), Some(1.0));
    assert_eq!(
        metric_value(&metrics, "watcher_oldest_pending_age_seconds"),
        Some(0.0)
    );
}

#[tokio::test]
async fn with_the_fakes_limits_off_a_short_outage_also_shows_and_clears_within_seconds() {
    let fake = FakeDiscordProc::start(&["--no-rate-limits"]).await;
    let WebhookWatcher {
        dir: _dir,
        file,
        proc: _w,
        ops,
    } = WebhookWatcher::start(&fake, &health_ids()).await;
    append(&file, "off", 0..2);
    fake.wait_markers("", "off", 0..2, DEADLINE).await;
    let sampler = Sampler::start(&ops);
    let began = Instant::now();
    fake.inject(json!({"kind": "reset", "count": 1_000_000}))
        .await;
    let outage = Instant::now();
    let next = keep_writing(
        &file,
        "off",
        2,
        outage + Duration::from_secs(20),
        Duration::from_secs(5),
    )
    .await;
    let down = sampler
        .first_after(outage, |s| s.sink_up == Some(0.0) && s.readyz == 503)
        .expect("connection resets never showed");
    assert!(down.at - outage <= VISIBLE_WITHIN, "{:?}", down.at - outage);
    sampler.clear_and_wait_up(&fake, "the resets").await;
    let text = fake.wait_markers("", "off", 0..next, DEADLINE).await;
    assert_each_once(&text, "off", 0..next);
    sampler.assert_always_live(began);
}
