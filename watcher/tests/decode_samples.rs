//! Decodes the sample transcripts and the repo's own `examples/session.jsonl`
//! and checks the exact event sequence, worked out by reading the files (see
//! TRANSCRIPT_FORMAT.md for why each line maps the way it does). Then checks
//! that damaged copies of the same files lose no good line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use watcher::transcript::decode::{Decoder, DecoderConfig};
use watcher::transcript::{Event, EventKind, Source, Usage};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/transcripts")
}

fn example_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/session.jsonl")
}

/// Reads a sample, or `None` (after saying so) when the shared folder is absent.
fn sample(name: &str) -> Option<Vec<u8>> {
    let dir = samples_dir();
    if !dir.is_dir() {
        println!("SKIP: ../shared/transcripts absent");
        return None;
    }
    Some(std::fs::read(dir.join(name)).unwrap())
}

struct Decoded {
    events: Vec<Event>,
    errors: Vec<&'static str>,
}

fn decode_all(bytes: &[u8]) -> Decoded {
    let mut d = Decoder::new(DecoderConfig {
        dedupe_capacity: 10_000,
    });
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let raw = line.strip_suffix(b"\n").unwrap_or(line);
        match d.decode_line(raw, &Source::Main) {
            Ok(decoded) => events.extend(decoded.events),
            Err(e) => errors.push(e.reason()),
        }
    }
    Decoded { events, errors }
}

/// One line per event: kind, the fields that matter, and the text.
fn summary(e: &Event) -> String {
    let who = match &e.source {
        Source::Main => String::new(),
        Source::Subagent { agent_id, .. } => {
            format!("sub({}) ", agent_id.as_deref().unwrap_or("?"))
        }
    };
    let what = match &e.kind {
        EventKind::SessionMeta {
            session_id,
            cwd,
            version,
            git_branch,
        } => format!(
            "meta {session_id} {} {} {}",
            cwd.as_deref().unwrap_or("-"),
            version.as_deref().unwrap_or("-"),
            git_branch.as_deref().unwrap_or("-")
        ),
        EventKind::UserPrompt { text, images } => format!("prompt[{images}] {text}"),
        EventKind::TeammateMessage { teammate, text, .. } => format!("teammate {teammate} {text}"),
        EventKind::AssistantText { text, model } => {
            format!("text({}) {text}", model.as_deref().unwrap_or("-"))
        }
        EventKind::Thinking { text } => format!("thinking {text}"),
        EventKind::ToolUse { id, name, .. } => format!("tool_use {name} {id}"),
        EventKind::ToolResult {
            tool_use_id,
            tool_name,
            content,
            is_error,
        } => format!(
            "result {} {tool_use_id} {} {content}",
            tool_name.as_deref().unwrap_or("?"),
            if *is_error { "err" } else { "ok" }
        ),
        EventKind::Notice { notice, text } => format!("notice {notice:?} {text}"),
        EventKind::Usage {
            message_id, usage, ..
        } => format!(
            "usage {message_id} {}/{}/{}/{}",
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_creation_input_tokens,
            usage.cache_read_input_tokens
        ),
        EventKind::Title { title, source } => format!("title {source:?} {title}"),
    };
    format!("{who}{what}")
}

/// Compares summaries with expectations: an expectation ending in `…` is a
/// prefix, any other must match exactly.
fn assert_sequence(events: &[Event], expected: &[&str]) {
    let got: Vec<String> = events.iter().map(summary).collect();
    for (i, (g, want)) in got.iter().zip(expected).enumerate() {
        let ok = match want.strip_suffix('…') {
            Some(prefix) => g.starts_with(prefix),
            None => g == want,
        };
        assert!(
            ok,
            "event {i}:\n  got:  {g:?}\n  want: {want:?}\nall: {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "event count; all: {got:#?}");
}

fn usage_total(events: &[Event], main_only: bool) -> Usage {
    events
        .iter()
        .filter(|e| !main_only || e.source == Source::Main)
        .filter_map(|e| match &e.kind {
            EventKind::Usage { usage, .. } => Some(*usage),
            _ => None,
        })
        .fold(Usage::default(), Usage::add)
}

fn u(input: u64, output: u64, cache_write: u64, cache_read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: cache_write,
        cache_read_input_tokens: cache_read,
    }
}

fn tool_counts(events: &[Event]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in events {
        if let EventKind::ToolUse { name, .. } = &e.kind {
            *counts.entry(name.clone()).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

fn tool_errors(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::ToolResult { is_error: true, .. }))
        .count()
}

fn names(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
}

/// Damages a copy of `bytes`: CRLF endings everywhere; before every third line
/// a torn half of that line, a NUL run and garbage on lines of their own; the
/// line itself glued behind a torn prefix of its predecessor. Returns the copy
/// and how many lines in it cannot be decoded.
fn corrupt(bytes: &[u8]) -> (Vec<u8>, usize) {
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut bad = 0;
    for (i, line) in lines.iter().enumerate() {
        if i % 3 == 1 {
            out.extend_from_slice(&line[..line.len() / 2]);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&[0u8; 40]);
            out.extend_from_slice(b"\n");
            out.extend_from_slice(b"}}garbage{{\"\xff\r\n");
            bad += 3;
            let prev = lines[i - 1];
            out.extend_from_slice(&prev[..prev.len() / 3]);
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    (out, bad)
}

fn assert_corruption_loses_nothing(bytes: &[u8]) {
    let clean = decode_all(bytes);
    assert!(
        clean.errors.is_empty(),
        "clean file has errors: {:?}",
        clean.errors
    );
    let (damaged, bad) = corrupt(bytes);
    let got = decode_all(&damaged);
    assert_eq!(got.errors.len(), bad, "{:?}", got.errors);
    let want: Vec<String> = clean.events.iter().map(summary).collect();
    let have: Vec<String> = got.events.iter().map(summary).collect();
    assert_eq!(have, want);
}

// ---------------------------------------------------------------------------

#[test]
fn sample_01_plain_qa_v1_0() {
    let Some(bytes) = sample("01_plain_qa_v1.0.jsonl") else {
        return;
    };
    let d = decode_all(&bytes);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let sonnet = "claude-sonnet-4-20250514";
    assert_sequence(
        &d.events,
        &[
            "title Summary Choosing anyhow vs Box<dyn Error> for a CLI",
            "meta 495db021-ac8d-4a7e-94d1-734c7eab475c /home/dev/acme-api 1.0.85 main",
            "prompt[0] What's the difference between `Box<dyn Error>` and `anyhow::Error` for a small CLI?",
            &format!("text({sonnet}) Both erase the concrete error type…"),
            "usage msg_01YJoHOHTI3WWcgaphfVqDKB 4/1/2310/13120",
            "prompt[0] Does anyhow add much to compile time?",
            &format!("text({sonnet}) Very little.…"),
            "usage msg_01ok6wocG4FaORpPn2gh7c8A 4/2/388/15430",
            "prompt[0] ok, show me a minimal main.rs using it",
            &format!("text({sonnet}) ```rust\nuse anyhow::{{Context, Result}};…"),
            "usage msg_01jJ5cihDcHgFPoEtj2I5ee6 4/3/221/15818",
        ],
    );
    assert_eq!(usage_total(&d.events, false), u(12, 6, 2919, 44368));
    assert_corruption_loses_nothing(&bytes);
}

#[test]
fn sample_02_tools_bash_read_edit_errors_v2_1() {
    let Some(bytes) = sample("02_tools_bash_read_edit_errors_v2.1.jsonl") else {
        return;
    };
    let d = decode_all(&bytes);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let opus = "claude-opus-4-6";
    assert_sequence(
        &d.events,
        &[
            "meta 05dd2e5c-2e9b-4625-b5d6-d5076a232c36 /home/dev/acme-api 2.1.140 fix/duration-parse",
            "prompt[0] The parse_duration test is failing on CI. Can you find out why and fix it?",
            &format!("text({opus}) I'll run the failing test first to see the actual assertion."),
            "usage msg_01gxhENe7SBku0FoJYeAFLGI 3/8/5128/14870",
            "tool_use Bash toolu_015sM3EBhCiEa6FaDjJCBwTO",
            "usage msg_01gxhENe7SBku0FoJYeAFLGI 0/123/0/0",
            "result Bash toolu_015sM3EBhCiEa6FaDjJCBwTO err Exit code 101\n   Compiling acme-api…",
            &format!("text({opus}) 90 instead of 5400 means minutes are multiplied by 1.…"),
            "usage msg_01cJBbrsIVJDGHpOS1KhH6jz 3/12/1422/20010",
            "tool_use Read toolu_0140eJwkB6nOIBKVE9iosFgq",
            "result Read toolu_0140eJwkB6nOIBKVE9iosFgq ok      1→use std::fmt;\n…",
            "tool_use Grep toolu_01SI65Bt3eAqzbHS8kr5GjG5",
            "usage msg_01cJBbrsIVJDGHpOS1KhH6jz 0/202/0/0",
            "result Grep toolu_01SI65Bt3eAqzbHS8kr5GjG5 ok src/duration.rs:4:/// Errors returned by…",
            "tool_use TodoWrite toolu_01mp5chydNBpoHhYCisGPJ7z",
            "usage msg_01LoByhaDhPC2jTXfuU75zIa 3/187/2876/21432",
            "result TodoWrite toolu_01mp5chydNBpoHhYCisGPJ7z ok Todos have been modified successfully.…",
            "tool_use Edit toolu_01bvHgQEOyYDe12FT650Rf1F",
            "usage msg_01B9jHVZpZVUvBoYnbItbnMX 3/162/412/24308",
            "result Edit toolu_01bvHgQEOyYDe12FT650Rf1F err <tool_use_error>String to replace not found in file.…",
            &format!("text({opus}) Whitespace mismatch — retrying with the exact line."),
            "usage msg_01xKeiaC3aYg7zXN4gtNjGeF 3/9/351/24720",
            "tool_use Edit toolu_01RSsvXsiesUSIMh0UN75u9a",
            "usage msg_01xKeiaC3aYg7zXN4gtNjGeF 0/132/0/0",
            "result Edit toolu_01RSsvXsiesUSIMh0UN75u9a ok The file /home/dev/acme-api/src/duration.rs has been updated.…",
            "tool_use Bash toolu_01XDACkOZ1LEKjhtDr2iDGUu",
            "usage msg_01cuu7epBvw7QovQz0M33Ttj 3/98/1188/25071",
            "result Bash toolu_01XDACkOZ1LEKjhtDr2iDGUu ok    Compiling acme-api v0.3.1…",
            "tool_use Write toolu_01khvnRhyTE7ZmNp2MmdWyaP",
            "usage msg_01mrQXHdvcsybuic1Na72HaO 3/233/402/26259",
            "result Write toolu_01khvnRhyTE7ZmNp2MmdWyaP ok File created successfully at: /home/dev/acme-api/tests/duration_regression.rs",
            &format!("text({opus}) Fixed. `\"m\"` was multiplied by 1 instead of 60…"),
            "usage msg_01ehqwv1xt07Z8QR9yCaojFP 3/121/310/26700",
            "notice System Turn completed in 48.2s",
        ],
    );
    // The Read result ends at the file's last line: the harness reminder is cut.
    let read = d.events.iter().find_map(|e| match &e.kind {
        EventKind::ToolResult {
            tool_name: Some(n),
            content,
            ..
        } if n == "Read" => Some(content.clone()),
        _ => None,
    });
    assert!(read.unwrap().ends_with("    59→}"));
    assert_eq!(usage_total(&d.events, false), u(24, 1287, 12089, 183370));
    assert_eq!(
        tool_counts(&d.events),
        names(&[
            ("Bash", 2),
            ("Edit", 2),
            ("Grep", 1),
            ("Read", 1),
            ("TodoWrite", 1),
            ("Write", 1)
        ])
    );
    assert_eq!(tool_errors(&d.events), 2);
    assert_corruption_loses_nothing(&bytes);
}

#[test]
fn sample_03_thinking_streaming_chunks_v2_0() {
    let Some(bytes) = sample("03_thinking_streaming_chunks_v2.0.jsonl") else {
        return;
    };
    let d = decode_all(&bytes);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let opus = "claude-opus-4-5-20251101";
    assert_sequence(
        &d.events,
        &[
            "meta f0795b63-0219-4434-9506-cdd712052d2b /home/dev/cachekit 2.0.76 main",
            "prompt[0] think hard: why does our LRU evict recently used keys under load? the code is in src/lru.rs",
            "thinking The user says recently used keys get evicted.…",
            "usage msg_01jMdHHVIlOoX575GbCXI1iz 10/8/6233/11021",
            &format!("text({opus}) Let me look at how `get` and `put` maintain recency."),
            "tool_use Read toolu_01k0bOwXT7lXjfpFSFHhRkkZ",
            "usage msg_01jMdHHVIlOoX575GbCXI1iz 0/603/0/0",
            // The same line written twice (uuid 23c4df37…) is delivered once.
            "result Read toolu_01k0bOwXT7lXjfpFSFHhRkkZ ok     40→pub struct Lru<K, V> {…",
            "thinking ", // redacted_thinking
            "usage msg_01jAkDDcADBpmz2AMgDZ3NON 6/3/1540/17254",
            &format!("text({opus}) Found it. `get()` reads the stamp but never refreshes it…"),
            "usage msg_01jAkDDcADBpmz2AMgDZ3NON 0/460/0/0",
            "prompt[0] go with option 2 and also make eviction O(1)",
            "thinking O(1) eviction needs an ordered structure. A VecDeque of keys with lazy deletion would work, or",
            "usage msg_014rWgI2VomUeId4fLdOZ9Ej 10/41/702/18790",
            "notice Interrupted [Request interrupted by user]",
            "prompt[0] actually just use the lru crate, keep it simple",
            "thinking ",
            "usage msg_01ALvlpnke3ZzeEEGKlwTLAQ 10/5/515/19180",
            &format!("text({opus}) Sounds good — `lru::LruCache` gives O(1)…"),
            "usage msg_01ALvlpnke3ZzeEEGKlwTLAQ 0/59/0/0",
        ],
    );
    assert_eq!(usage_total(&d.events, false), u(36, 1179, 8990, 66245));
    assert_corruption_loses_nothing(&bytes);
}

#[test]
fn sample_05_compaction_summary_titles_v2_1() {
    let Some(bytes) = sample("05_compaction_summary_titles_v2.1.jsonl") else {
        return;
    };
    let d = decode_all(&bytes);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let sonnet = "claude-sonnet-4-6";
    assert_sequence(
        &d.events,
        &[
            "title Summary Rate limiter token bucket design",
            "meta d59ed819-acec-4e6f-8192-54ce2daa87b3 /home/dev/acme-api 2.1.177 chore/figment-config",
            "prompt[0] Let's migrate config loading from raw toml to figment so env vars can override the file.",
            "title AiTitle Migrate config loader to figment",
            &format!("text({sonnet}) Plan: add `figment` with the `toml` and `env` features…"),
            "usage msg_01Ybm8la6qwA6AFIau9GpMqx 3/14/6020/15112",
            "tool_use Bash toolu_01egFpd8ON4QTOzBd7Ymfh8v",
            "usage msg_01Ybm8la6qwA6AFIau9GpMqx 0/106/0/0",
            "result Bash toolu_01egFpd8ON4QTOzBd7Ymfh8v ok     Updating crates.io index…",
            &format!("text({sonnet}) Dependency added. Next I'll rewrite `load()` in `src/config.rs`."),
            "usage msg_01LLGkwy5572WZCLSs16Iw9h 3/21/410/21130",
            "notice System Turn completed in 9.1s",
            "notice CompactBoundary Conversation compacted (manual, 48211 tokens before)",
            "notice CompactSummary This session is being continued from a previous conversation…",
            // isMeta caveat hidden
            "notice Command /compact",
            "notice Command Compacted",
            "title CustomTitle figment migration",
            "prompt[0] ok continue with load()",
            "tool_use Edit toolu_01MDDoEZdJGFrE63rROGnVA5",
            "usage msg_01TqimLtvCH1FPGeq3OPWYnp 3/201/3904/11850",
            "result Edit toolu_01MDDoEZdJGFrE63rROGnVA5 ok The file /home/dev/acme-api/src/config.rs has been updated.…",
            &format!("text({sonnet}) `load()` now merges the TOML file…"),
            "usage msg_01doDocWMSLuxI8xHu5YQY56 3/58/520/15750",
            "notice System Turn completed in 7.8s",
            "title Summary Migrate config loader to figment with env overrides",
        ],
    );
    assert_eq!(usage_total(&d.events, false), u(12, 400, 10854, 63842));
    assert_corruption_loses_nothing(&bytes);
}

#[test]
fn sample_06_metadata_system_unknown_types_v2_1() {
    let Some(bytes) = sample("06_metadata_system_unknown_types_v2.1.jsonl") else {
        return;
    };
    let d = decode_all(&bytes);
    assert!(
        d.errors.is_empty(),
        "unknown types are not errors: {:?}",
        d.errors
    );
    assert_sequence(
        &d.events,
        &[
            // The SessionStart hook progress record is the first chain record.
            "meta 366eb2f7-bf8e-427e-9b1d-af933176f4ad /home/dev/acme-api 2.1.66 main",
            "prompt[0] run the integration tests",
            "prompt[0] also check the docker compose file", // queue-operation enqueue
            "tool_use Bash toolu_01HnPvLoKyasz4RBrwaO3TU1",
            "usage msg_01bJ8pBgMzJyVH4tcZcypzOh 3/95/3320/16120",
            "result Bash toolu_01HnPvLoKyasz4RBrwaO3TU1 ok running 14 tests\n…",
            "notice ApiError API error 529: Overloaded (retry 1/10 in 1.1s)",
            "notice ApiError API Error: Repeated 529 Overloaded errors · check status.claude.com",
            "notice Command /model sonnet",
            "notice Command Set model to Sonnet 4.6",
            "notice Command $ git status --short",
            "notice Command  M src/api/health.rs\n?? notes.md",
            "notice System Model fallback: claude-opus-4-6 → claude-sonnet-4-6",
            "text(claude-sonnet-4-6) Integration tests pass (14/14). `notes.md` is untracked; `health.rs` has local edits.",
            "usage msg_01ZU2mZEZqhBkPWj7jqPePK4 3/44/880/19010",
            "notice System Turn completed in 27.4s",
            "title AiTitle Run integration tests",
        ],
    );
    assert_eq!(usage_total(&d.events, false), u(6, 139, 4200, 35130));
    assert_corruption_loses_nothing(&bytes);
}

#[test]
fn example_session_decodes_to_the_expected_story() {
    let bytes = std::fs::read(example_file()).unwrap();
    let d = decode_all(&bytes);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    let opus = "claude-opus-4-6";
    let w = "/workspace/todo-api";
    assert_sequence(
        &d.events,
        &[
            "meta 7f3c2a10-5b6e-4d8f-9a1b-2c3d4e5f6a7b /workspace/todo-api 2.1.140 feat/due-dates",
            "prompt[0] Add a `due` date to todo items and make `cargo test` pass.",
            "title AiTitle Add due dates to todos",
            "thinking Todo lives in src/model.rs probably;…",
            "usage msg_01DueA 3/12/4200/12000",
            &format!("text({opus}) I'll find the `Todo` struct first."),
            "tool_use Grep toolu_01Grep1",
            "usage msg_01DueA 0/84/0/0",
            "result Grep toolu_01Grep1 ok src/model.rs:3:pub struct Todo {",
            "tool_use Read toolu_01Read1",
            "usage msg_01DueB 3/40/900/16200",
            "result Read toolu_01Read1 ok      1→use serde::{Deserialize, Serialize};\n     2→\n     3→pub struct Todo {\n     4→    pub title: String,\n     5→    pub done: bool,\n     6→}",
            &format!("text({opus}) Adding `due: Option<NaiveDate>` with `#[serde(default)]`…"),
            "usage msg_01DueC 3/20/1100/17100",
            "tool_use Edit toolu_01Edit1",
            "usage msg_01DueC 0/160/0/0",
            "result Edit toolu_01Edit1 err <tool_use_error>String to replace not found in file.…",
            "tool_use Edit toolu_01Edit2",
            "usage msg_01DueD 3/150/600/18200",
            &format!("result Edit toolu_01Edit2 ok The file {w}/src/model.rs has been updated.…"),
            "tool_use Write toolu_01Write1",
            "usage msg_01DueE 3/210/700/18800",
            &format!("result Write toolu_01Write1 ok File created successfully at: {w}/tests/due.rs"),
            "tool_use Bash toolu_01Bash1",
            "usage msg_01DueF 3/60/500/19500",
            "result Bash toolu_01Bash1 err Exit code 101\n\u{1b}[0m\u{1b}[1m\u{1b}[31merror[E0063]…",
            &format!("text({opus}) A constructor in `src/store.rs` still builds `Todo` without `due`.…"),
            "usage msg_01DueG 3/30/800/20100",
            "tool_use Task toolu_01Task1",
            "usage msg_01DueG 0/110/0/0",
            "sub(a4f1c9e) prompt[0] List every place that constructs `Todo { .. }` literally, with file:line.",
            "sub(a4f1c9e) text(claude-haiku-4-5) Two literals: src/store.rs:41 and src/import.rs:88.",
            "sub(a4f1c9e) usage msg_01SubA 5/25/300/4000",
            "result Task toolu_01Task1 ok Two literals: src/store.rs:41 and src/import.rs:88.",
            "prompt[0] also update the README", // queue-operation; the attachment is the same prompt
            "tool_use Edit toolu_01Edit3",
            "usage msg_01DueH 3/120/400/21000",
            &format!("result Edit toolu_01Edit3 ok The file {w}/src/store.rs has been updated.…"),
            "tool_use Bash toolu_01Bash2",
            "usage msg_01DueI 3/50/300/21500",
            "result Bash toolu_01Bash2 ok test result: ok. 9 passed;…",
            "notice System Turn completed in 1m 35s",
            "notice CompactBoundary Conversation compacted (auto, 154000 tokens before)",
            "notice CompactSummary This session is being continued from a previous conversation…",
            "title CustomTitle todo due dates",
            "prompt[0] thanks, also bump the version to 0.4.0",
            &format!("text({opus}) Bumping the version in Cargo.toml."),
            "usage msg_01DueJ 3/15/2000/3000",
            "tool_use Bash toolu_01Bash3",
            "usage msg_01DueJ 0/55/0/0",
            "result Bash toolu_01Bash3 err The user doesn't want to proceed with this tool use.…",
            "notice Interrupted [Request interrupted by user for tool use]",
            "notice ApiError API Error: 529 {\"type\":\"error\",…",
            // the unknown `workspace-lens` record yields nothing
            "title Summary Add due dates to todo items",
            "notice System Turn completed in 12.1s",
        ],
    );
    assert_eq!(usage_total(&d.events, true), u(30, 1116, 11500, 167400));
    assert_eq!(usage_total(&d.events, false), u(35, 1141, 11800, 171400));
    assert_eq!(
        tool_counts(&d.events),
        names(&[
            ("Bash", 3),
            ("Edit", 3),
            ("Grep", 1),
            ("Read", 1),
            ("Task", 1),
            ("Write", 1)
        ])
    );
    assert_eq!(tool_errors(&d.events), 3);
    assert_corruption_loses_nothing(&bytes);
}
