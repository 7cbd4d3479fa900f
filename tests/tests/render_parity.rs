//! `watcher render` is the live watcher's own sink loop with a sink that
//! prints: for every sample transcript, the payloads it prints are the
//! payloads the live watcher posts to (fake) Discord, embed for embed.

// Scenarios fail fast on anything unexpected; that is the point of a test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{eventually, run_to_end, FakeDiscordProc, Proc};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// The environment both runs share: the same run identity and rendering.
fn common_env() -> Vec<(&'static str, String)> {
    vec![
        ("TASK_ID", "task-parity".to_string()),
        ("ATTEMPT", "1".to_string()),
        ("RUN_ID", "run-parity".to_string()),
    ]
}

/// The sample transcripts: the repository's own, and the shared corpus when
/// it is present beside the checkout.
fn samples() -> Vec<PathBuf> {
    let mut files = vec![e2e::workspace_root().join("examples/session.jsonl")];
    match e2e::shared_transcripts()
        .or_else(|| std::env::var_os("SHARED_TRANSCRIPTS").map(PathBuf::from))
    {
        Some(dir) => {
            let mut shared: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            shared.sort();
            files.extend(shared);
        }
        None => eprintln!(
            "SKIP the shared corpus: ../shared/transcripts absent (present beside CI); \
             comparing the repository's examples only"
        ),
    }
    files
}

/// What a payload says, without the clock: the header's start and the
/// summary's end are the watcher's wall clock live and the transcript's own
/// times in a preview.
fn normalised(embed: &Value) -> Value {
    let mut e = embed.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("timestamp");
        if let Some(Value::Array(fields)) = o.get_mut("fields") {
            fields.retain(|f| !matches!(f["name"].as_str(), Some("Started" | "Ended")));
        }
    }
    e
}

fn embeds_of(payloads: &[Value]) -> Vec<Value> {
    payloads
        .iter()
        .flat_map(|p| p["embeds"].as_array().cloned().unwrap_or_default())
        .map(|e| normalised(&e))
        .collect()
}

fn rendered(sample: &Path, env: &[(&str, String)]) -> Vec<Value> {
    let (code, out, err) = run_to_end(
        "watcher",
        &["render", "--format", "json", sample.to_str().unwrap()],
        env,
    );
    assert_eq!(code, 0, "{}: {err}", sample.display());
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn posted(fake: &FakeDiscordProc, sample: &Path, env: &[(&str, String)]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(sample.file_name().unwrap());
    std::fs::copy(sample, &file).unwrap();
    let mut env = env.to_vec();
    env.extend(e2e::webhook_watcher_env(
        fake,
        &file,
        &dir.path().join("state"),
    ));
    // The summary follows once the transcript has been idle this long.
    env.push(("IDLE_COMPLETE_AFTER", "1s".to_string()));
    let before = fake.messages().await.len();
    let mut w = Proc::start("watcher", &[], &env);
    let messages = eventually("the live summary", DEADLINE, || async {
        let all = fake.messages().await;
        let ours = all[before.min(all.len())..].to_vec();
        ours.iter()
            .any(|m| {
                m["payload"]
                    .to_string()
                    .to_lowercase()
                    .contains("run complete")
            })
            .then_some(ours)
    })
    .await;
    w.sigterm();
    w.wait_exit(Duration::from_secs(15)).await;
    messages.iter().map(|m| m["payload"].clone()).collect()
}

async fn render_equals_live(fake_args: &[&str], env: &[(&str, String)]) {
    let fake = FakeDiscordProc::start(fake_args).await;
    for sample in samples() {
        let preview = embeds_of(&rendered(&sample, env));
        let live = embeds_of(&posted(&fake, &sample, env).await);
        assert!(
            preview.len() >= 3,
            "{}: header, events, summary",
            sample.display()
        );
        assert_eq!(
            preview.len(),
            live.len(),
            "{}: as many embeds previewed as posted",
            sample.display()
        );
        for (i, (p, l)) in preview.iter().zip(&live).enumerate() {
            assert_eq!(p, l, "{}: embed {i} differs", sample.display());
        }
    }
}

#[tokio::test]
async fn render_prints_the_payloads_the_live_watcher_posts() {
    render_equals_live(&["--no-rate-limits"], &common_env()).await;
}

#[tokio::test]
async fn render_prints_the_payloads_the_live_watcher_posts_in_parity_mode() {
    let mut env = common_env();
    env.push(("PARITY_MODE", "true".to_string()));
    render_equals_live(&["--no-rate-limits"], &env).await;
}
