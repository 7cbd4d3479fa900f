//! Snapshots of what whole sample transcripts render to, event by event: the
//! repository's own `examples/session.jsonl` always, and every transcript in
//! `../shared/transcripts` when that folder is present (skipped with a printed
//! reason otherwise). Together with `render_snapshots.rs` (each event kind
//! built directly) this pins the renderer on real-shaped input.
//!
//! Update after an intended change: `INSTA_UPDATE=always cargo test -p watcher
//! --test render_samples`, then review the `.snap` diffs.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use watcher::render::Renderer;
use watcher::render::{CostTable, Filters, RenderConfig, RunInfo};
use watcher::transcript::decode::{Decoder, DecoderConfig};
use watcher::transcript::{LinePos, Source};

const STARTED: &str = "2026-01-01T00:00:00Z";

fn renderer() -> Renderer {
    Renderer::new(RenderConfig {
        parity: false,
        filters: Filters::default(),
        costs: CostTable::builtin(),
        run: RunInfo {
            task_id: Some("TASK-42".into()),
            attempt: Some("1".into()),
            run_id: Some("run-sample".into()),
            short_id: Some("sample".into()),
        },
        inline_output_chars: 1000,
    })
}

/// The variant name of an event kind (`ToolUse { .. }` → `ToolUse`).
fn kind_name(kind: &impl std::fmt::Debug) -> String {
    format!("{kind:?}")
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Header, one entry per decoded event (its kind, embeds and attachments),
/// summary; bad lines are recorded where they were skipped.
fn render(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap();
    let mut decoder = Decoder::new(DecoderConfig {
        dedupe_capacity: 100_000,
    });
    let mut r = renderer();
    let mut out = vec![json!({"header": r.header(STARTED)})];
    let file: Arc<str> = Arc::from("sample.jsonl");
    let mut last_ts = STARTED.to_owned();
    let mut offset = 0u64;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let pos = LinePos {
            file: file.clone(),
            start: offset,
            end: offset + line.len() as u64,
        };
        offset += line.len() as u64;
        let raw = line.strip_suffix(b"\n").unwrap_or(line);
        match decoder.decode_line(raw, &Source::Main) {
            Err(e) => out.push(json!({"skipped_line_at": pos.start, "reason": e.reason()})),
            Ok(decoded) => {
                for ev in decoded.events {
                    if let Some(ts) = &ev.timestamp {
                        last_ts.clone_from(ts);
                    }
                    let rendered = r.render(&ev);
                    out.push(json!({
                        "event": kind_name(&ev.kind),
                        "embeds": rendered.embeds,
                        "files": rendered.files.iter()
                            .map(|f| json!({"filename": f.filename, "bytes": f.bytes.len()}))
                            .collect::<Vec<_>>(),
                    }));
                }
            }
        }
    }
    out.push(json!({"summary": r.summary(&last_ts)}));
    Value::Array(out)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn example_session_renders_as_snapshotted() {
    let rendered = render(&workspace().join("examples/session.jsonl"));
    insta::assert_json_snapshot!("example_session", rendered);
}

#[test]
fn shared_sample_transcripts_render_as_snapshotted() {
    let dir = workspace().join("../shared/transcripts");
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent (it exists beside CI)", dir.display());
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no transcripts", dir.display());
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_json_snapshot!(format!("shared_{name}"), render(&f));
    }
}
