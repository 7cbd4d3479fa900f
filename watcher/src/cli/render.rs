//! `watcher render FILE`: what would be posted, without posting it. The
//! records go through the live watcher's own sink loop ([`Pipeline`]), only
//! into a sink that prints, so the preview cannot drift from what is posted.
//!
//! Like the live watcher, the session's subagent files (`<session>/subagents/`,
//! any depth, and flat `agent-*.jsonl` of the session) are rendered too, after
//! the session file, so counts and cost match a live run.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ops::Shutdown;
use tokio::time::Instant;

use crate::app::{render_config, AppError, VERSION};
use crate::config::{Config, RenderFormat};
use crate::deliver::{ConsoleSink, NoopObserver, PayloadSink, Sink};
use crate::pipeline::{Drain, Pipeline, PipelineConfig, Wall};
use crate::queue::{QueueTx, Record};
use crate::render::Renderer;
use crate::state::RunStore;
use crate::tail::FileIdentity;
use crate::transcript::decode::{Decoder, DecoderConfig};
use crate::transcript::{LinePos, Source};

/// Records between the reader and the sink loop (a bound, not a buffer:
/// the file is the buffer, as in a live run).
const QUEUE_RECORDS: usize = 1024;
const QUEUE_BYTES: usize = 64 << 20;

/// `watcher render FILE [--format text|json]`.
pub async fn render_file(cfg: &Config, file: &Path, format: RenderFormat) -> Result<(), AppError> {
    match format {
        RenderFormat::Text => {
            let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
            render_into(cfg, file, ConsoleSink::new(color)).await
        }
        RenderFormat::Json => render_into(cfg, file, PayloadSink).await,
    }
}

/// Runs `file` (and its subagents) through the sink loop into `sink`.
pub async fn render_into<S: Sink + 'static>(
    cfg: &Config,
    file: &Path,
    sink: S,
) -> Result<(), AppError> {
    let renderer = Renderer::new(render_config(cfg)?);
    let health = ops::health::Health::new(VERSION);
    let pipeline = Pipeline::new(
        PipelineConfig {
            batch_size: cfg.batch_size,
            send_bound: Duration::from_secs(3600),
            idle_complete_after: None,
            wall: Wall::Transcript,
        },
        renderer,
        RunStore::in_memory(),
        sink,
        Arc::new(NoopObserver),
        health.heartbeat("pipeline", Duration::from_secs(30)),
    );
    let (tx, rx) = crate::queue::bounded(QUEUE_RECORDS, QUEUE_BYTES);
    let drain = Drain::new(Shutdown::new(), Duration::from_secs(60));
    let sink_loop = tokio::spawn(pipeline.run(rx, drain));
    let read = read_session(file, &tx).await;
    drop(tx);
    sink_loop
        .await
        .map_err(|e| AppError::Other(format!("render failed: {e}")))?;
    read
}

/// The session file and its subagents' files, in the order they are read.
fn session_files(file: &Path) -> Vec<(PathBuf, Source)> {
    let mut files = vec![(file.to_path_buf(), Source::Main)];
    if let Some(dir) = file.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        for f in crate::discover::SubagentScanner::default().scan(dir, file) {
            let source = Source::Subagent {
                description: crate::discover::meta_description(&f.path),
                agent_id: Some(f.agent_id),
                workflow: f.workflow,
            };
            files.push((f.path, source));
        }
    }
    files
}

/// Reads every line of the session's files into the queue, once, to the end.
async fn read_session(file: &Path, tx: &QueueTx) -> Result<(), AppError> {
    let mut decoder = Decoder::new(DecoderConfig {
        dedupe_capacity: 1_000_000,
    });
    let mut line = Vec::new();
    for (file, source) in &session_files(file) {
        let f = match crate::tail::open_regular(file) {
            Ok(crate::tail::Opened::File(f, _)) => f,
            Ok(crate::tail::Opened::NotRegular) => {
                eprintln!("watcher: {}: not a regular file; skipped", file.display());
                continue;
            }
            Err(e) => return Err(AppError::Io(format!("cannot open {}: {e}", file.display()))),
        };
        let file_name: Arc<str> = Arc::from(file.display().to_string());
        let mut offset = 0u64;
        let mut reader = std::io::BufReader::new(f);
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AppError::Io(format!("cannot read {}: {e}", file.display())))?;
            if n == 0 {
                break;
            }
            let pos = LinePos {
                file: file_name.clone(),
                start: offset,
                end: offset + n as u64,
            };
            offset += n as u64;
            let raw = line.strip_suffix(b"\n").unwrap_or(&line);
            let events = match decoder.decode_line(raw, source) {
                Ok(decoded) => {
                    if let Some(s) = decoded.skip {
                        eprintln!(
                            "watcher: {}:{}: dropped a record of the wrong shape ({})",
                            file.display(),
                            pos.start,
                            s.reason()
                        );
                    }
                    decoded.events
                }
                Err(e) => {
                    eprintln!(
                        "watcher: {}:{}: skipped line ({})",
                        file.display(),
                        pos.start,
                        e.reason()
                    );
                    continue;
                }
            };
            let record = Record {
                pos,
                identity: FileIdentity::default(),
                events,
                read_at: Instant::now(),
                bytes: n,
            };
            if tx.send(record).await.is_err() {
                return Err(AppError::Other(
                    "render: the sink loop stopped early".into(),
                ));
            }
        }
    }
    Ok(())
}
