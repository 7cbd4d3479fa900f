//! Decode throughput over a large generated transcript, against the cheapest
//! possible parse of the same lines (`serde_json` into `IgnoredAny`) as the
//! baseline. `typed_parse_only` is the decoder's parse without building events,
//! so the report shows where the time between the two goes.
//!
//! The ratio is measured first, interleaved: each round times one pass of
//! each side back to back, and the report takes each side's fastest pass.
//! Criterion's groups run one after another for seconds each, so on a shared
//! machine a slow spell can land on one side only and move the ratio by ±15 %;
//! interleaving puts the same spell on both. Writes `target/bench/decode.json`.
//! Run: `cargo bench -p watcher --bench decode`.

// Wall-clock timing of synchronous code, no runtime to pause: std's clock is
// the right one here (the workspace bans it elsewhere for testable time).
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use watcher::transcript::decode::{Decoder, DecoderConfig};
use watcher::transcript::fixtures as fx;
use watcher::transcript::{Source, TitleSource};

const TARGET_BYTES: usize = 32 << 20;

/// A realistic mix: prompts, responses split over lines, tool calls with
/// sizeable outputs, thinking, titles.
fn transcript() -> Vec<u8> {
    let mut out = String::with_capacity(TARGET_BYTES + (1 << 20));
    let output: String = (1..=40)
        .map(|i| format!("{i:>6}→    let value_{i} = compute(&input, {i}); // some source text\n"))
        .collect();
    let mut turn = 0usize;
    let mut until_title = 50;
    while out.len() < TARGET_BYTES {
        turn += 1;
        let id = |k: usize| format!("{turn:08x}-0000-4000-8000-{k:012x}");
        let msg = format!("msg_{turn:x}");
        let tool = format!("toolu_{turn:x}");
        let u1 = fx::usage(3, 12, 1200, 20_000 + turn as u64);
        let u2 = fx::usage(3, 180, 1200, 20_000 + turn as u64);
        for line in [
            fx::user_prompt(
                &id(1),
                "Please look at src/lib.rs and fix the failing test.",
            ),
            fx::thinking(
                &id(2),
                &msg,
                "The failure is probably in compute(); read it first.",
                u1,
            ),
            fx::assistant_text(&id(3), &msg, "I'll read the file first.", u1),
            fx::tool_use(
                &id(4),
                &msg,
                &tool,
                "Read",
                json!({"file_path": "/workspace/src/lib.rs"}),
                u2,
            ),
            fx::with_fields(
                &fx::tool_result(&id(5), &tool, &output, None),
                json!({"toolUseResult": {"type": "text", "file": {"filePath": "/workspace/src/lib.rs", "content": output}}}),
            ),
            fx::assistant_text(
                &id(6),
                &format!("{msg}b"),
                "Found it: the loop is off by one.",
                u2,
            ),
            fx::turn_duration(&id(7), 4200),
        ] {
            out.push_str(&line);
            out.push('\n');
        }
        until_title -= 1;
        if until_title == 0 {
            until_title = 50;
            out.push_str(&fx::title(
                TitleSource::AiTitle,
                &format!("Fix test {turn}"),
            ));
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Split once, outside the measurement: both sides time parsing only, not the
/// splitting (which the watcher does with memchr in `tail::lines`).
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

fn decode_all(lines: &[&[u8]]) -> usize {
    let mut d = Decoder::new(DecoderConfig {
        dedupe_capacity: 100_000,
    });
    let mut events = 0;
    for line in lines {
        if let Ok(decoded) = d.decode_line(line, &Source::Main) {
            events += decoded.events.len();
        }
    }
    events
}

fn parse_only(lines: &[&[u8]]) -> usize {
    lines.iter().filter(|l| Decoder::parse_only(l)).count()
}

fn ignored_any(lines: &[&[u8]]) -> usize {
    lines
        .iter()
        .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
        .count()
}

/// Rounds of the interleaved measurement; each round is one pass per side.
const ROUNDS: usize = 25;

/// The fastest of `ROUNDS` passes of each side, rotating which side goes
/// first, as `[decoder, typed_parse_only, ignored_any]` seconds.
fn interleaved(lines: &[&[u8]]) -> [f64; 3] {
    type Side = fn(&[&[u8]]) -> usize;
    let sides: [Side; 3] = [decode_all, parse_only, ignored_any];
    let mut best = [f64::INFINITY; 3];
    for round in 0..ROUNDS {
        for k in 0..3 {
            let side = (round + k) % 3;
            let start = Instant::now();
            std::hint::black_box(sides[side](std::hint::black_box(lines)));
            best[side] = best[side].min(start.elapsed().as_secs_f64());
        }
    }
    best
}

fn report(bytes: usize, lines: usize, events: usize, [decode, parse, ignored]: [f64; 3]) {
    let mib = bytes as f64 / (1 << 20) as f64;
    let report = json!({
        "transcript": {"bytes": bytes, "lines": lines, "events_per_pass": events},
        "rounds": ROUNDS,
        "decoder": {"ms": decode * 1e3, "mib_per_s": mib / decode, "events_per_s": events as f64 / decode},
        "typed_parse_only": {"ms": parse * 1e3, "mib_per_s": mib / parse},
        "ignored_any_baseline": {"ms": ignored * 1e3, "mib_per_s": mib / ignored},
        "ratio_decoder_to_baseline": ignored / decode,
        "ratio_parse_to_baseline": ignored / parse,
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    eprintln!("{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("decode.json"), &text))
    {
        eprintln!("could not write target/bench/decode.json: {e}");
    }
}

fn bench(c: &mut Criterion) {
    let bytes = transcript();
    let lines = lines(&bytes);
    let n_events = decode_all(&lines);
    let n_lines = lines.len();
    eprintln!(
        "transcript: {:.1} MB, {n_lines} lines, {n_events} events per pass",
        bytes.len() as f64 / 1e6
    );
    report(bytes.len(), n_lines, n_events, interleaved(&lines));
    let mut g = c.benchmark_group("decode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("decoder", |b| {
        b.iter(|| decode_all(std::hint::black_box(&lines)))
    });
    g.bench_function("typed_parse_only", |b| {
        b.iter(|| parse_only(std::hint::black_box(&lines)))
    });
    g.bench_function("ignored_any_baseline", |b| {
        b.iter(|| ignored_any(std::hint::black_box(&lines)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
