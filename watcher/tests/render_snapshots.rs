//! Snapshots of what every event kind renders to (embeds, attachments, cuts) and
//! of its console line. Events are built directly with the model types; times are
//! fixed (nothing here depends on the clock).
//!
//! Update after an intended change: `INSTA_UPDATE=always cargo test -p watcher
//! --test render_snapshots`, then review the `.snap` diffs.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use watcher::render::{console, CostTable, Filters, RenderConfig, Rendered, Renderer, RunInfo};
use watcher::transcript::decode::{Decoder, DecoderConfig};
use watcher::transcript::fixtures as fx;
use watcher::transcript::{Event, EventKind, Notice, Source, TitleSource, Usage};

const TS: &str = "2025-06-01T12:01:02.345Z";

fn cfg(parity: bool) -> RenderConfig {
    RenderConfig {
        parity,
        filters: Filters::default(),
        costs: CostTable::builtin(),
        run: RunInfo {
            task_id: Some("TASK-42".into()),
            attempt: Some("2".into()),
            run_id: Some("run-7f3a".into()),
            short_id: Some("7f3a".into()),
        },
        inline_output_chars: 1000,
    }
}

fn ev(kind: EventKind) -> Event {
    Event {
        source: Source::Main,
        uuid: Some("0b7e4a6c-1111-4222-8333-944445555666".into()),
        timestamp: Some(TS.into()),
        kind,
    }
}

fn tool_use(id: &str, name: &str, input: Value) -> Event {
    ev(EventKind::ToolUse {
        id: id.into(),
        name: name.into(),
        input,
    })
}

fn tool_result(id: &str, name: Option<&str>, content: &str, is_error: bool) -> Event {
    ev(EventKind::ToolResult {
        tool_use_id: id.into(),
        tool_name: name.map(Into::into),
        content: content.into(),
        is_error,
    })
}

/// What a rendering looks like as data: embeds as sent, files by name and size
/// (with the first bytes), cuts by metric label.
fn snap(r: &Rendered) -> Value {
    json!({
        "embeds": r.embeds,
        "files": r.files.iter().map(|f| json!({
            "filename": f.filename,
            "bytes": f.bytes.len(),
            "starts": String::from_utf8_lossy(&f.bytes[..f.bytes.len().min(80)]),
        })).collect::<Vec<_>>(),
        "truncated": r.truncated.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
    })
}

fn render_one(parity: bool, e: &Event) -> Value {
    snap(&Renderer::new(cfg(parity)).render(e))
}

#[test]
fn session_meta_usage_and_title_render_nothing() {
    let mut r = Renderer::new(cfg(true));
    let events = [
        ev(EventKind::SessionMeta {
            session_id: "5f0c2a9e-aaaa-4bbb-8ccc-dddddddddddd".into(),
            cwd: Some("/workspace".into()),
            version: Some("2.1.3".into()),
            git_branch: Some("main".into()),
        }),
        ev(EventKind::Usage {
            message_id: "msg_01".into(),
            model: "claude-sonnet-4-5-20250929".into(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 20,
                cache_creation_input_tokens: 30,
                cache_read_input_tokens: 40,
            },
        }),
        ev(EventKind::Title {
            title: "Fix the flaky test".into(),
            source: TitleSource::AiTitle,
        }),
    ];
    for e in &events {
        let out = r.render(e);
        assert!(out.embeds.is_empty() && out.files.is_empty(), "{e:?}");
    }
    assert_eq!(r.stats().title.as_deref(), Some("Fix the flaky test"));
    assert_eq!(r.stats().usage.cache_read_input_tokens, 40);
}

#[test]
fn user_prompt() {
    let e = ev(EventKind::UserPrompt {
        text: "Please fix the failing test in `watcher`, @everyone should see it".into(),
        images: 2,
    });
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn assistant_text() {
    let e = ev(EventKind::AssistantText {
        text: "I'll run the tests first.\n\n```rust\nfn main() {}\n```\nThen <@123> review.".into(),
        model: Some("claude-sonnet-4-5-20250929".into()),
    });
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn assistant_text_long_without_and_with_parity() {
    let text = format!("Start. {}", "word ".repeat(1200));
    let e = ev(EventKind::AssistantText { text, model: None });
    insta::assert_json_snapshot!("assistant_text_long_soft_cap", render_one(false, &e));
    insta::assert_json_snapshot!("assistant_text_long_parity", render_one(true, &e));
}

#[test]
fn thinking_with_parity() {
    let e = ev(EventKind::Thinking {
        text: "The test fails because the clock is not paused.".into(),
    });
    assert!(render_one(false, &e)["embeds"]
        .as_array()
        .unwrap()
        .is_empty());
    insta::assert_json_snapshot!(render_one(true, &e));
}

#[test]
fn tool_use_bash() {
    let e = tool_use(
        "toolu_01",
        "Bash",
        json!({"command": "cargo test -p watcher 2>&1 | tail -n 20", "description": "Run the watcher tests", "timeout": 120000}),
    );
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn tool_use_edit() {
    let e = tool_use(
        "toolu_02",
        "Edit",
        json!({"file_path": "/workspace/src/lib.rs", "old_string": "let x = 1;\nlet y = 2;", "new_string": "let x = 10;"}),
    );
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn tool_use_multi_edit() {
    let e = tool_use(
        "toolu_03",
        "MultiEdit",
        json!({"file_path": "/workspace/README.md", "edits": [
            {"old_string": "# Old", "new_string": "# New"},
            {"old_string": "foo", "new_string": "bar", "replace_all": true}
        ]}),
    );
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn tool_use_write() {
    let e = tool_use(
        "toolu_04",
        "Write",
        json!({"file_path": "/workspace/src/new.rs", "content": "pub fn hello() -> &'static str {\n    \"hello\"\n}\n"}),
    );
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn tool_use_read_glob_grep() {
    let read = tool_use(
        "toolu_05",
        "Read",
        json!({"file_path": "/workspace/Cargo.toml", "offset": 10, "limit": 40}),
    );
    let glob = tool_use(
        "toolu_06",
        "Glob",
        json!({"pattern": "**/*.rs", "path": "/workspace"}),
    );
    let grep = tool_use(
        "toolu_07",
        "Grep",
        json!({"pattern": "fn render", "path": "watcher/src", "glob": "*.rs", "output_mode": "content"}),
    );
    insta::assert_json_snapshot!(json!([
        render_one(false, &read),
        render_one(false, &glob),
        render_one(false, &grep)
    ]));
}

#[test]
fn tool_use_web() {
    let fetch = tool_use(
        "toolu_08",
        "WebFetch",
        json!({"url": "https://docs.rs/insta", "prompt": "How do JSON snapshots work?"}),
    );
    let search = tool_use(
        "toolu_09",
        "WebSearch",
        json!({"query": "discord embed limits"}),
    );
    insta::assert_json_snapshot!(json!([
        render_one(false, &fetch),
        render_one(false, &search)
    ]));
}

#[test]
fn tool_use_task_todo_and_mcp() {
    let task = tool_use(
        "toolu_10",
        "Task",
        json!({"description": "Audit the tail module", "subagent_type": "general-purpose", "prompt": "Read watcher/src/tail and list every place a partial line is handled."}),
    );
    let todo = tool_use(
        "toolu_11",
        "TodoWrite",
        json!({"todos": [
            {"content": "Write the renderer", "status": "completed", "activeForm": "Writing"},
            {"content": "Snapshot tests", "status": "in_progress", "activeForm": "Testing"},
            {"content": "Ask for review", "status": "pending", "activeForm": "Asking"}
        ]}),
    );
    let mcp = tool_use(
        "toolu_12",
        "mcp__github__create_issue",
        json!({"repo": "acme/agentmon", "title": "Flaky test", "labels": ["bug"]}),
    );
    insta::assert_json_snapshot!(json!([
        render_one(false, &task),
        render_one(false, &todo),
        render_one(false, &mcp)
    ]));
}

#[test]
fn tool_result_ok_and_error() {
    let ok = tool_result(
        "toolu_01",
        Some("Bash"),
        "running 3 tests\ntest a ... ok\n\x1b[32mok\x1b[0m\n",
        false,
    );
    let err = tool_result(
        "toolu_01",
        Some("Bash"),
        "Exit code 101\n\x1b[1;31merror[E0425]\x1b[0m: cannot find value `x`",
        true,
    );
    let edit_err = tool_result(
        "toolu_02",
        Some("Edit"),
        "<tool_use_error>File has not been read yet. Read it first before writing to it.</tool_use_error>",
        true,
    );
    let empty = tool_result("toolu_13", Some("Bash"), "", false);
    insta::assert_json_snapshot!(json!([
        render_one(false, &ok),
        render_one(false, &err),
        render_one(false, &edit_err),
        render_one(false, &empty)
    ]));
}

#[test]
fn tool_result_long_output_is_attached() {
    let long: String = (1..=400)
        .map(|i| format!("line {i}: some build output\n"))
        .collect();
    let e = tool_result("toolu_01", Some("Bash"), &long, false);
    insta::assert_json_snapshot!(render_one(false, &e));
}

#[test]
fn tool_result_quiet_tools_without_parity() {
    let content = "     1→[package]\n     2→name = \"watcher\"\n     3→version = \"0.1.0\"\n";
    let e = tool_result("toolu_05", Some("Read"), content, false);
    insta::assert_json_snapshot!("tool_result_read_quiet", render_one(false, &e));
    insta::assert_json_snapshot!("tool_result_read_parity", render_one(true, &e));
}

/// The decoder names a result after its call (the record itself carries no
/// name); the renderer posts it under that name.
#[test]
fn tool_result_named_after_its_call() {
    let mut d = Decoder::new(DecoderConfig {
        dedupe_capacity: 16,
    });
    let mut r = Renderer::new(cfg(false));
    let call = fx::tool_use(
        "u1",
        "m1",
        "toolu_20",
        "Grep",
        json!({"pattern": "x"}),
        fx::usage(1, 1, 0, 0),
    );
    let result = fx::tool_result("u2", "toolu_20", "src/a.rs\nsrc/b.rs", None);
    let mut posted = Vec::new();
    for line in [call, result] {
        for mut e in d
            .decode_line(line.as_bytes(), &Source::Main)
            .unwrap()
            .events
        {
            e.timestamp = Some(TS.into());
            let out = r.render(&e);
            if matches!(e.kind, EventKind::ToolResult { .. }) {
                posted.push(out);
            }
        }
    }
    assert_eq!(posted.len(), 1);
    insta::assert_json_snapshot!(snap(&posted[0]));
}

#[test]
fn notices() {
    let n = |notice, text: &str| {
        render_one(
            false,
            &ev(EventKind::Notice {
                notice,
                text: text.into(),
            }),
        )
    };
    insta::assert_json_snapshot!(json!([
        // As decoded: the decoder strips the CLI's tags from command text.
        n(Notice::Command, "/model\nopus"),
        n(
            Notice::Interrupted,
            "[Request interrupted by user for tool use]"
        ),
        n(
            Notice::ApiError,
            "API Error: 529 {\"type\":\"overloaded_error\"}"
        ),
        n(
            Notice::CompactBoundary,
            "Conversation compacted (auto, 155,000 tokens before)"
        ),
        n(
            Notice::CompactSummary,
            "This session is being continued from a previous conversation that ran out of context."
        ),
        n(Notice::System, "Stop hook ran: lint passed"),
    ]));
}

#[test]
fn subagent_events_are_marked() {
    let mut described = tool_use("toolu_30", "Bash", json!({"command": "ls"}));
    described.source = Source::Subagent {
        agent_id: Some("a1b2c3".into()),
        description: Some("Audit the tail module".into()),
        workflow: None,
    };
    let mut anonymous = ev(EventKind::AssistantText {
        text: "Done.".into(),
        model: None,
    });
    anonymous.source = Source::Subagent {
        agent_id: Some("a1b2c3".into()),
        description: None,
        workflow: None,
    };
    insta::assert_json_snapshot!(json!([
        render_one(false, &described),
        render_one(false, &anonymous)
    ]));
}

#[test]
fn workflow_and_unnamed_subagents_are_labelled() {
    let mut workflow = ev(EventKind::AssistantText {
        text: "Reviewed the API.".into(),
        model: None,
    });
    workflow.source = Source::Subagent {
        agent_id: Some("a7748a49cbfabf1b6".into()),
        description: Some("review api".into()),
        workflow: Some("wf_57c6a296-6f2".into()),
    };
    // An inline sidechain record without an agent id.
    let mut unnamed = ev(EventKind::AssistantText {
        text: "Done.".into(),
        model: None,
    });
    unnamed.source = Source::Subagent {
        agent_id: None,
        description: None,
        workflow: None,
    };
    let authors: Vec<Option<String>> = [&workflow, &unnamed]
        .iter()
        .map(|e| {
            Renderer::new(cfg(false)).render(e).embeds[0]
                .author
                .as_ref()
                .map(|a| a.name.clone())
        })
        .collect();
    assert_eq!(
        authors,
        vec![
            Some("subagent: review api · workflow wf_57c6a296-6f2".into()),
            Some("subagent".into())
        ]
    );
    insta::assert_json_snapshot!(json!([
        render_one(false, &workflow),
        console::line(&workflow, false),
        console::line(&unnamed, false)
    ]));
}

#[test]
fn teammate_message_is_its_own_kind() {
    let msg = ev(EventKind::TeammateMessage {
        teammate: "zl-reviewer".into(),
        summary: Some("review done".into()),
        text: "findings: the parser drops <@123> mentions".into(),
    });
    let rendered = Renderer::new(cfg(false)).render(&msg);
    assert_eq!(
        rendered.embeds[0].title.as_deref(),
        Some("🤝 from zl-reviewer")
    );
    insta::assert_json_snapshot!(json!([snap(&rendered), console::line(&msg, false)]));
}

#[test]
fn a_summary_counts_teammate_messages_apart_from_prompts() {
    let mut r = Renderer::new(cfg(false));
    r.render(&ev(EventKind::UserPrompt {
        text: "go".into(),
        images: 0,
    }));
    r.render(&ev(EventKind::TeammateMessage {
        teammate: "w1".into(),
        summary: None,
        text: "done".into(),
    }));
    assert_eq!((r.stats().prompts, r.stats().teammate_messages), (1, 1));
    let activity = summary_field(&r, "Activity").unwrap();
    assert!(
        activity.starts_with("1 prompt · 1 teammate message ·"),
        "{activity}"
    );
}

#[test]
fn todo_items_given_as_bare_strings_show_their_text() {
    let todo = tool_use(
        "toolu_13",
        "TodoWrite",
        json!({"todos": ["Write the renderer", {"content": "Ship it", "status": "completed"}]}),
    );
    let r = Renderer::new(cfg(false)).render(&todo);
    let d = r.embeds[0].description.clone().unwrap_or_default();
    assert!(d.contains("☐ Write the renderer"), "{d}");
    assert!(d.contains("☑ Ship it"), "{d}");
}

#[test]
fn a_summary_without_any_usage_costs_nothing_not_unknown() {
    let mut r = Renderer::new(cfg(false));
    r.render(&ev(EventKind::UserPrompt {
        text: "hi".into(),
        images: 0,
    }));
    let cost = summary_field(&r, "Cost");
    assert_eq!(cost.as_deref(), Some("$0.00 (no usage recorded)"));
}

/// The value of the summary's field `name`, the run ended at 12:05.
fn summary_field(r: &Renderer, name: &str) -> Option<String> {
    r.summary("2025-06-01T12:05:00.000Z")
        .fields
        .into_iter()
        .find(|f| f.name == name)
        .map(|f| f.value)
}

/// A small session, then the header and summary it produces.
fn session() -> (Renderer, Vec<Event>) {
    let mut r = Renderer::new(cfg(false));
    let at = |secs: u32, kind| {
        let mut e = ev(kind);
        e.timestamp = Some(format!(
            "2025-06-01T12:{:02}:{:02}.000Z",
            secs / 60,
            secs % 60
        ));
        e
    };
    let events = vec![
        at(
            0,
            EventKind::SessionMeta {
                session_id: "5f0c2a9e-aaaa-4bbb-8ccc-dddddddddddd".into(),
                cwd: Some("/workspace".into()),
                version: Some("2.1.3".into()),
                git_branch: Some("main".into()),
            },
        ),
        at(
            1,
            EventKind::UserPrompt {
                text: "Fix the test".into(),
                images: 0,
            },
        ),
        at(
            5,
            EventKind::AssistantText {
                text: "Running the tests.".into(),
                model: Some("claude-sonnet-4-5-20250929".into()),
            },
        ),
        at(
            5,
            EventKind::Usage {
                message_id: "msg_1".into(),
                model: "claude-sonnet-4-5-20250929".into(),
                usage: Usage {
                    input_tokens: 12_000,
                    output_tokens: 800,
                    cache_creation_input_tokens: 3_000,
                    cache_read_input_tokens: 40_000,
                },
            },
        ),
        at(
            6,
            EventKind::ToolUse {
                id: "t1".into(),
                name: "Bash".into(),
                input: json!({"command": "cargo test"}),
            },
        ),
        at(
            70,
            EventKind::ToolResult {
                tool_use_id: "t1".into(),
                tool_name: Some("Bash".into()),
                content: "Exit code 101".into(),
                is_error: true,
            },
        ),
        at(
            71,
            EventKind::ToolUse {
                id: "t2".into(),
                name: "Read".into(),
                input: json!({"file_path": "src/lib.rs"}),
            },
        ),
        at(
            72,
            EventKind::ToolResult {
                tool_use_id: "t2".into(),
                tool_name: Some("Read".into()),
                content: "     1→fn x() {}".into(),
                is_error: false,
            },
        ),
        at(
            80,
            EventKind::ToolUse {
                id: "t3".into(),
                name: "Bash".into(),
                input: json!({"command": "cargo test"}),
            },
        ),
        at(
            130,
            EventKind::ToolResult {
                tool_use_id: "t3".into(),
                tool_name: Some("Bash".into()),
                content: "ok".into(),
                is_error: false,
            },
        ),
        at(
            131,
            EventKind::Notice {
                notice: Notice::ApiError,
                text: "API Error: 529 overloaded".into(),
            },
        ),
        at(
            133,
            EventKind::Usage {
                message_id: "msg_2".into(),
                model: "claude-haiku-4-5-20251001".into(),
                usage: Usage {
                    input_tokens: 500,
                    output_tokens: 50,
                    ..Usage::default()
                },
            },
        ),
        at(
            134,
            EventKind::Title {
                title: "Fix the flaky watcher test".into(),
                source: TitleSource::CustomTitle,
            },
        ),
    ];
    for e in &events {
        r.render(e);
    }
    (r, events)
}

#[test]
fn header_and_summary() {
    let (r, _) = session();
    insta::assert_json_snapshot!("header", r.header("2025-06-01T12:00:00.000Z"));
    insta::assert_json_snapshot!("summary", r.summary("2025-06-01T12:05:00.000Z"));
    insta::assert_json_snapshot!("stats", r.stats());
}

#[test]
fn summary_with_an_unpriced_model() {
    let mut r = Renderer::new(cfg(false));
    r.render(&ev(EventKind::Usage {
        message_id: "m".into(),
        model: "claude-opus-4-9-20270101".into(),
        usage: Usage {
            input_tokens: 100,
            output_tokens: 10,
            ..Usage::default()
        },
    }));
    let cost = summary_field(&r, "Cost");
    assert_eq!(
        cost.as_deref(),
        Some("unknown (no price for: claude-opus-4-9-20270101)")
    );
    assert_eq!(r.stats().cost_usd, None);
}

#[test]
fn console_lines() {
    let (r, events) = session();
    let mut lines: Vec<String> = events
        .iter()
        .filter_map(|e| console::line(e, false))
        .collect();
    lines.push(console::summary_line(r.stats(), false));
    insta::assert_json_snapshot!(lines);
}
