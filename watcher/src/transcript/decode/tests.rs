#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::repair::fix_lone_surrogates;
use super::tags::strip_markers;
use super::*;
use crate::transcript::fixtures as fx;

fn decoder() -> Decoder {
    Decoder::new(DecoderConfig {
        dedupe_capacity: 1000,
    })
}

/// One main-file line, decoded.
fn decode_raw(d: &mut Decoder, raw: &[u8]) -> Decoded {
    d.decode_line(raw, &Source::Main).unwrap()
}

/// What decoding `raw` reported as repaired, with its events' kinds
/// (`SessionMeta` dropped).
fn repaired(d: &mut Decoder, raw: &[u8]) -> (Vec<EventKind>, Option<Repair>) {
    let decoded = decode_raw(d, raw);
    let kinds = decoded
        .events
        .into_iter()
        .map(|e| e.kind)
        .filter(|k| !matches!(k, EventKind::SessionMeta { .. }))
        .collect();
    (kinds, decoded.repair)
}

fn decode(d: &mut Decoder, text: &str) -> Vec<EventKind> {
    decode_raw(d, text.as_bytes())
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Decodes and drops `SessionMeta`, which the first record of a session adds.
fn kinds(d: &mut Decoder, line: &str) -> Vec<EventKind> {
    decode(d, line)
        .into_iter()
        .filter(|k| !matches!(k, EventKind::SessionMeta { .. }))
        .collect()
}

fn one(line: &str) -> Vec<EventKind> {
    kinds(&mut decoder(), line)
}

fn prompt(text: &str) -> EventKind {
    EventKind::UserPrompt {
        text: text.into(),
        images: 0,
    }
}

fn notice(notice: Notice, text: &str) -> EventKind {
    EventKind::Notice {
        notice,
        text: text.into(),
    }
}

fn err(line: &[u8]) -> &'static str {
    decoder()
        .decode_line(line, &Source::Main)
        .unwrap_err()
        .reason()
}

// ---- pitfalls (TRANSCRIPT_FORMAT.md §6) ----

#[test]
fn pitfall_02_torn_line_is_counted_and_the_next_line_still_decodes() {
    let full = fx::user_prompt("11111111-1111-4111-8111-111111111111", "hello");
    let mut d = decoder();
    let torn = &full.as_bytes()[..full.len() / 2];
    let e = d.decode_line(torn, &Source::Main).unwrap_err();
    assert_eq!(e.reason(), "torn");
    assert_eq!(kinds(&mut d, &full), vec![prompt("hello")]);
    assert_eq!(err(b"{"), "torn");
    assert_eq!(err(b"not json at all"), "torn");
    assert_eq!(err(b"{\"type\":\"user\",}"), "torn");
}

#[test]
fn pitfall_03_fused_record_behind_a_torn_prefix_is_recovered() {
    let a = fx::user_prompt("11111111-1111-4111-8111-111111111111", "first");
    let b = fx::user_prompt("22222222-2222-4222-8222-222222222222", "second");
    let fused = format!("{}{}", &a[..a.len() - 20], b);
    let (kinds_, repair) = repaired(&mut decoder(), fused.as_bytes());
    assert_eq!(kinds_, vec![prompt("second")]);
    assert_eq!(repair.map(|r| r.reason()), Some("fused"));
    // Two whole records missing their newline: both are kept.
    let mut d = decoder();
    assert_eq!(
        kinds(&mut d, &format!("{a}{b}")),
        vec![prompt("first"), prompt("second")]
    );
    // A torn prefix glued to a torn record: nothing to recover.
    assert_eq!(err(format!("{}{}", &a[..30], &b[..60]).as_bytes()), "torn");
}

#[test]
fn pitfall_04_nul_runs_and_nuls_before_a_record() {
    assert_eq!(err(b"\0\0\0\0"), "nul");
    let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "after nuls");
    let mut d = decoder();
    let mut raw = vec![0u8; 64];
    raw.extend_from_slice(line.as_bytes());
    raw.extend_from_slice(b"\0\0");
    let (kinds_, repair) = repaired(&mut d, &raw);
    assert_eq!(kinds_, vec![prompt("after nuls")]);
    assert_eq!(repair, Some(Repair::Nul));
    // An empty line is not an error.
    assert!(decode_raw(&mut decoder(), b"").events.is_empty());
    assert!(decode_raw(&mut decoder(), b"  \r").events.is_empty());
}

#[test]
fn pitfall_05_invalid_utf8_is_decoded_lossily() {
    let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "caf@ ok");
    let raw = line.replace('@', "\u{1}").into_bytes();
    let raw: Vec<u8> = raw
        .into_iter()
        .map(|b| if b == 1 { 0xFF } else { b })
        .collect();
    let mut d = decoder();
    let (kinds_, repair) = repaired(&mut d, &raw);
    assert_eq!(kinds_, vec![prompt("caf\u{FFFD} ok")]);
    assert_eq!(repair, Some(Repair::InvalidUtf8));
    // Invalid UTF-8 in a line that is also torn: counted as invalid_utf8.
    assert_eq!(err(&raw[..raw.len() - 5]), "invalid_utf8");
}

#[test]
fn pitfall_06_lone_surrogate_escapes_become_replacement_chars() {
    let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "cut @ emoji");
    let raw = line.replace('@', "\\ud83d");
    assert!(
        serde_json::from_str::<Value>(&raw).is_err(),
        "serde rejects it"
    );
    let (kinds_, repair) = repaired(&mut decoder(), raw.as_bytes());
    assert_eq!(kinds_, vec![prompt("cut \u{FFFD} emoji")]);
    assert_eq!(repair, Some(Repair::Surrogate));
    // A lone low surrogate, and a valid pair next to a lone one.
    let raw = line.replace('@', "\\uDE00 \\ud83d\\ude00 \\ud83d");
    assert_eq!(one(&raw), vec![prompt("cut \u{FFFD} 😀 \u{FFFD} emoji")]);
    // An escaped backslash followed by "ud83d" is plain text, not an escape.
    let raw = line.replace('@', "\\\\ud83d");
    assert_eq!(one(&raw), vec![prompt("cut \\ud83d emoji")]);
    // Torn and surrogate: counted as surrogate.
    let raw = line.replace('@', "\\ud83d");
    assert_eq!(err(&raw.as_bytes()[..raw.len() - 3]), "surrogate");
}

#[test]
fn lone_surrogate_in_a_skipped_field_needs_no_repair() {
    let line = fx::with_fields(
        &fx::user_prompt("11111111-1111-4111-8111-111111111111", "hi"),
        json!({"toolUseResult": "@"}),
    )
    .replace('@', "\\ud83d");
    let (kinds_, repair) = repaired(&mut decoder(), line.as_bytes());
    assert_eq!(kinds_, vec![prompt("hi")]);
    assert_eq!(repair, None);
}

#[test]
fn pitfall_07_megabyte_image_line_decodes() {
    let data = "A".repeat(3 << 20);
    let line = fx::user_content(
        "11111111-1111-4111-8111-111111111111",
        json!([
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
            {"type": "text", "text": "what is this?"}
        ]),
    );
    assert_eq!(
        one(&line),
        vec![EventKind::UserPrompt {
            text: "what is this?".into(),
            images: 1
        }]
    );
}

#[test]
fn pitfall_08_unknown_types_blocks_and_fields_are_ignored_silently() {
    let mut d = decoder();
    for line in [
        r#"{"type":"hologram","uuid":"x1","payload":{"frames":12}}"#,
        r#"{"type":"file-history-snapshot","messageId":"m","snapshot":{}}"#,
        r#"{"type":"pr-link","prNumber":1,"prUrl":"https://x"}"#,
        r#"{"no_type_at_all":true}"#,
        r#"{"type":42}"#,
    ] {
        assert_eq!(decode(&mut d, line), vec![], "{line}");
    }
    let line = fx::assistant_block(
        "11111111-1111-4111-8111-111111111111",
        "msg_1",
        json!({"type": "quantum_block", "qubits": 3}),
        fx::usage(1, 1, 0, 0),
    );
    let line = fx::with_fields(&line, json!({"brandNewField": {"deep": [1, 2]}}));
    let evs = one(&line);
    assert!(
        matches!(evs.as_slice(), [EventKind::Usage { .. }]),
        "{evs:?}"
    );
    // Fields of an unexpected type read as absent instead of failing the record.
    let line = fx::with_fields(
        &fx::user_prompt("22222222-2222-4222-8222-222222222222", "typed"),
        json!({"isMeta": "yes", "timestamp": 5, "cwd": ["x"]}),
    );
    assert_eq!(one(&line), vec![prompt("typed")]);
}

#[test]
fn not_an_object_is_its_own_reason() {
    assert_eq!(err(b"[1,2,3]"), "not_object");
    assert_eq!(err(b"\"user\""), "not_object");
    assert_eq!(err(b"42"), "not_object");
    assert_eq!(err(b"[\"user\"]"), "not_object");
}

#[test]
fn pitfall_09_session_id_and_snake_case_duplicate_reads_session_id() {
    let line = fx::with_fields(
        &fx::user_prompt("11111111-1111-4111-8111-111111111111", "hi"),
        json!({"session_id": "other-value"}),
    );
    let evs = decode(&mut decoder(), &line);
    assert_eq!(
        evs[0],
        EventKind::SessionMeta {
            session_id: fx::SESSION_ID.into(),
            cwd: Some(fx::CWD.into()),
            version: Some(fx::VERSION.into()),
            git_branch: Some(fx::GIT_BRANCH.into()),
        }
    );
    assert_eq!(evs[1], prompt("hi"));
}

#[test]
fn duplicate_keys_keep_the_last_value_on_the_fast_path() {
    let line =
        r#"{"type":"user","uuid":"u1","uuid":"u2","message":{"role":"user","content":"dup"}}"#;
    assert!(parse_fast(line.as_bytes(), &mut Record::default()));
    let mut d = decoder();
    let evs = d
        .decode_line(line.as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].uuid.as_deref(), Some("u2"));
    assert_eq!(evs[0].kind, prompt("dup"));
}

#[test]
fn pitfall_10_same_uuid_twice_is_delivered_once() {
    let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "once");
    let mut d = decoder();
    assert_eq!(kinds(&mut d, &line), vec![prompt("once")]);
    assert_eq!(decode(&mut d, &line), vec![]);
    // Case of the hex digits does not matter.
    let lower = fx::user_prompt("abcdef01-1111-4111-8111-111111111111", "hex");
    assert_eq!(kinds(&mut d, &lower), vec![prompt("hex")]);
    assert_eq!(
        decode(&mut d, &lower.replace("abcdef01", "ABCDEF01")),
        vec![]
    );
    // A non-hex digit makes it an opaque key, never a canonical look-alike.
    let odd = lower.replace("abcdef01", "gbcdef01");
    assert_eq!(kinds(&mut d, &odd), vec![prompt("hex")]);
    let near = lower.replace("abcdef01", "fbcdef01");
    assert_eq!(kinds(&mut d, &near), vec![prompt("hex")]);
    assert_eq!(decode(&mut d, &odd), vec![]);
}

#[test]
fn uuid_keys_are_exact_for_canonical_uuids_and_hashed_otherwise() {
    let canonical = "0123abcd-4567-4890-8abc-def012345678";
    assert_eq!(uuid_key(canonical), 0x0123abcd_4567_4890_8abc_def012345678);
    assert_eq!(uuid_key(canonical), uuid_key(&canonical.to_uppercase()));
    // Not canonical: hashed, stable, and distinct from each other.
    let odd = [
        "u1",
        "u2",
        "",
        "0123abcd-4567-4890-8abc-def01234567",
        "0123abcd_4567",
    ];
    for (i, a) in odd.iter().enumerate() {
        assert_eq!(uuid_key(a), uuid_key(a));
        assert_ne!(uuid_key(a), uuid_key(canonical));
        for b in &odd[i + 1..] {
            assert_ne!(uuid_key(a), uuid_key(b), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn dedupe_capacity_evicts_the_oldest_uuid_first() {
    let mut d = Decoder::new(DecoderConfig { dedupe_capacity: 2 });
    let a = fx::user_prompt("a", "a");
    let b = fx::user_prompt("b", "b");
    let c = fx::user_prompt("c", "c");
    assert_eq!(kinds(&mut d, &a), vec![prompt("a")]);
    assert_eq!(kinds(&mut d, &b), vec![prompt("b")]);
    assert_eq!(kinds(&mut d, &b), vec![]);
    assert_eq!(kinds(&mut d, &c), vec![prompt("c")]); // evicts "a"
    assert_eq!(kinds(&mut d, &a), vec![prompt("a")]);
    let mut off = Decoder::new(DecoderConfig { dedupe_capacity: 0 });
    assert_eq!(kinds(&mut off, &a), vec![prompt("a")]);
    assert_eq!(kinds(&mut off, &a), vec![prompt("a")]);
}

#[test]
fn pitfall_11_one_response_over_lines_reports_usage_once_as_deltas() {
    let mut d = decoder();
    let u1 = fx::usage(10, 8, 6000, 11000);
    let u3 = fx::usage(10, 611, 6000, 11000);
    let l1 = fx::thinking("a1", "msg_A", "hmm", u1);
    let l2 = fx::assistant_text("a2", "msg_A", "Let me look.", u1);
    let l3 = fx::tool_use(
        "a3",
        "msg_A",
        "toolu_1",
        "Read",
        json!({"file_path": "/x"}),
        u3,
    );
    let l4 = fx::assistant_text(
        "a4",
        "msg_A",
        "late line, smaller usage",
        fx::usage(1, 2, 3, 4),
    );
    let mut total = Usage::default();
    let mut all = Vec::new();
    for l in [&l1, &l2, &l3, &l4] {
        for k in kinds(&mut d, l) {
            if let EventKind::Usage {
                usage,
                message_id,
                model,
            } = &k
            {
                assert_eq!(message_id, "msg_A");
                assert_eq!(model, fx::MODEL);
                total = total.add(*usage);
            }
            all.push(k);
        }
    }
    assert_eq!(total, u3, "max per field, never the sum of lines");
    let usage_events: Vec<_> = all
        .iter()
        .filter_map(|k| match k {
            EventKind::Usage { usage, .. } => Some(*usage),
            _ => None,
        })
        .collect();
    assert_eq!(usage_events, vec![u1, fx::usage(0, 603, 0, 0)]);
    assert_eq!(all[0], EventKind::Thinking { text: "hmm".into() });
    assert_eq!(
        all[2],
        EventKind::AssistantText {
            text: "Let me look.".into(),
            model: Some(fx::MODEL.into())
        }
    );
}

#[test]
fn pitfall_12_replay_after_rewrite_posts_nothing_twice() {
    let lines = [
        fx::user_prompt("u-1", "one"),
        fx::assistant_text("u-2", "msg_1", "two", fx::usage(1, 2, 0, 0)),
        fx::tool_result("u-3", "toolu_x", "three", None),
    ];
    let mut d = decoder();
    let first: usize = lines.iter().map(|l| decode(&mut d, l).len()).sum();
    assert!(first >= 4);
    // The file was rewritten: everything is read again from offset 0.
    let again: usize = lines.iter().map(|l| decode(&mut d, l).len()).sum();
    assert_eq!(again, 0);
}

#[test]
fn pitfall_14_content_shapes_and_is_error_variants() {
    let mut d = decoder();
    kinds(
        &mut d,
        &fx::tool_use(
            "a1",
            "m1",
            "toolu_1",
            "Bash",
            json!({"command": "ls"}),
            fx::usage(1, 1, 0, 0),
        ),
    );
    let array = fx::user_content(
        "u1",
        json!([{"tool_use_id": "toolu_1", "type": "tool_result",
                "content": [{"type": "text", "text": "line a"}, {"type": "text", "text": "line b"},
                            {"type": "image", "source": {"data": "AAAA"}}],
                "is_error": null}]),
    );
    let array = fx::with_fields(&array, json!({"toolUseResult": [{"type": "text"}]}));
    assert_eq!(
        kinds(&mut d, &array),
        vec![EventKind::ToolResult {
            tool_use_id: "toolu_1".into(),
            tool_name: Some("Bash".into()),
            content: "line a\nline b\n[image]".into(),
            is_error: false,
        }]
    );
    let absent = fx::tool_result("u2", "toolu_unknown", "plain", None);
    assert_eq!(
        kinds(&mut d, &absent),
        vec![EventKind::ToolResult {
            tool_use_id: "toolu_unknown".into(),
            tool_name: None,
            content: "plain".into(),
            is_error: false,
        }]
    );
    let failed = fx::tool_result(
        "u3",
        "toolu_1",
        "Exit code 1\n\u{1b}[31merror\u{1b}[0m",
        Some(true),
    );
    assert_eq!(
        kinds(&mut d, &failed),
        vec![EventKind::ToolResult {
            tool_use_id: "toolu_1".into(),
            tool_name: Some("Bash".into()),
            content: "Exit code 1\n\u{1b}[31merror\u{1b}[0m".into(),
            is_error: true,
        }]
    );
    // Prompt content as an array of text blocks.
    let blocks = fx::user_content(
        "u4",
        json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
    );
    assert_eq!(kinds(&mut d, &blocks), vec![prompt("a\nb")]);
}

#[test]
fn pitfall_15_nul_escapes_and_control_chars_inside_strings_are_kept() {
    let line = fx::tool_result("u1", "t", "a\u{0}b\u{7}c\u{1b}[0m\r\n", Some(false));
    assert!(line.contains("\\u0000"));
    match &one(&line)[0] {
        EventKind::ToolResult { content, .. } => {
            assert_eq!(content, "a\u{0}b\u{7}c\u{1b}[0m\r\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pitfall_16_trailing_carriage_return_is_trimmed() {
    let line = format!("{}\r", fx::user_prompt("u1", "windows"));
    assert_eq!(one(&line), vec![prompt("windows")]);
}

// ---- record kinds ----

#[test]
fn user_record_priority_order() {
    let meta = fx::with_fields(&fx::user_prompt("u1", "injected"), json!({"isMeta": true}));
    assert_eq!(one(&meta), vec![]);
    let summary = fx::compact_summary(
        "u2",
        "This session is being continued from a previous conversation that ran out of context.",
    );
    assert_eq!(
        one(&summary),
        vec![notice(
            Notice::CompactSummary,
            "This session is being continued from a previous conversation that ran out of context."
        )]
    );
    let hidden_summary = fx::with_fields(&summary, json!({"isMeta": true}));
    assert_eq!(one(&hidden_summary), vec![]);
    let interrupted = fx::user_content(
        "u3",
        json!([{"type": "text", "text": "[Request interrupted by user for tool use]"}]),
    );
    assert_eq!(
        one(&interrupted),
        vec![notice(
            Notice::Interrupted,
            "[Request interrupted by user for tool use]"
        )]
    );
    // A tool result wins over isMeta.
    let result = fx::with_fields(
        &fx::tool_result("u4", "t1", "ok", None),
        json!({"isMeta": true}),
    );
    assert!(matches!(
        one(&result).as_slice(),
        [EventKind::ToolResult { .. }]
    ));
}

#[test]
fn tagged_user_text_becomes_readable_command_notices() {
    let cases = [
        (
            "<command-name>/clear</command-name>\n            <command-message>clear</command-message>\n            <command-args>all of it</command-args>",
            Some("/clear all of it"),
        ),
        (
            "<command-name>/compact</command-name>\n<command-message>compact</command-message>\n<command-args></command-args>",
            Some("/compact"),
        ),
        ("<command-name>model</command-name><command-args>sonnet</command-args>", Some("/model sonnet")),
        ("<local-command-stdout>Compacted </local-command-stdout>", Some("Compacted")),
        ("<local-command-stdout></local-command-stdout>", None),
        ("<bash-input>git status --short</bash-input>", Some("$ git status --short")),
        (
            "<bash-stdout> M src/a.rs\n?? notes.md</bash-stdout><bash-stderr></bash-stderr>",
            Some(" M src/a.rs\n?? notes.md"),
        ),
        (
            "<task-notification><task-id>b1</task-id><summary>Background task done</summary></task-notification>",
            Some("b1\nBackground task done"),
        ),
        ("<system-reminder>model only</system-reminder>", None),
        ("<local-command-caveat>Caveat: ...</local-command-caveat>", None),
    ];
    for (text, want) in cases {
        let got = one(&fx::user_prompt("u1", text));
        let want: Vec<EventKind> = want
            .map(|w| notice(Notice::Command, w))
            .into_iter()
            .collect();
        assert_eq!(got, want, "{text}");
    }
    // Markup inside command output or arguments is stripped too, here and
    // nowhere else: the renderer shows command text as decoded.
    assert_eq!(
        one(&fx::user_prompt(
            "u3",
            "<bash-input>cat a.html</bash-input><bash-stdout><b>bold</b> a < b</bash-stdout>"
        )),
        vec![notice(Notice::Command, "$ cat a.html\nbold a < b")]
    );
    // Angle brackets in a real prompt do not make it a command.
    assert_eq!(
        one(&fx::user_prompt("u2", "<div> is not closed, why?")),
        vec![prompt("<div> is not closed, why?")]
    );
}

#[test]
fn prompt_with_images_counts_them() {
    let line = fx::user_content(
        "u1",
        json!([{"type": "image", "source": {"data": "AAAA"}}, {"type": "image", "source": {"data": "BBBB"}},
               {"type": "text", "text": "compare these"}]),
    );
    assert_eq!(
        one(&line),
        vec![EventKind::UserPrompt {
            text: "compare these".into(),
            images: 2
        }]
    );
    let only_image = fx::user_content("u2", json!([{"type": "image", "source": {"data": "A"}}]));
    assert_eq!(
        one(&only_image),
        vec![EventKind::UserPrompt {
            text: String::new(),
            images: 1
        }]
    );
}

#[test]
fn system_reminders_are_cut_from_tool_results() {
    let line = fx::tool_result(
        "u1",
        "t1",
        "     1→fn main() {}\n\n<system-reminder>\nfor the model\n</system-reminder>\n",
        None,
    );
    match &one(&line)[0] {
        EventKind::ToolResult { content, .. } => assert_eq!(content, "     1→fn main() {}"),
        other => panic!("{other:?}"),
    }
    // Mid-line mentions stay.
    let line = fx::tool_result(
        "u2",
        "t1",
        "grep hit: <system-reminder> x </system-reminder>",
        None,
    );
    match &one(&line)[0] {
        EventKind::ToolResult { content, .. } => {
            assert_eq!(content, "grep hit: <system-reminder> x </system-reminder>");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn assistant_blocks_map_to_events_and_tool_names_flow_to_results() {
    let mut d = decoder();
    let u = fx::usage(3, 5, 0, 0);
    let evs = kinds(
        &mut d,
        &fx::tool_use("a1", "m1", "toolu_9", "Grep", json!({"pattern": "fn"}), u),
    );
    assert_eq!(
        evs,
        vec![
            EventKind::ToolUse {
                id: "toolu_9".into(),
                name: "Grep".into(),
                input: json!({"pattern": "fn"}),
            },
            EventKind::Usage {
                message_id: "m1".into(),
                model: fx::MODEL.into(),
                usage: u
            },
        ]
    );
    let evs = kinds(
        &mut d,
        &fx::tool_result("u1", "toolu_9", "src/a.rs:1:fn", None),
    );
    assert!(matches!(&evs[0], EventKind::ToolResult { tool_name: Some(n), .. } if n == "Grep"));
    let redacted = fx::assistant_block(
        "a2",
        "m2",
        json!({"type": "redacted_thinking", "data": "xx"}),
        u,
    );
    assert_eq!(
        kinds(&mut d, &redacted)[0],
        EventKind::Thinking {
            text: String::new()
        }
    );
    let blank = fx::assistant_text("a3", "m3", "\n\n", u);
    assert!(matches!(
        kinds(&mut d, &blank).as_slice(),
        [EventKind::Usage { .. }]
    ));
    let fallback = fx::assistant_block(
        "a4",
        "m4",
        json!({"type": "fallback", "from": {"model": "claude-opus-4-6"}, "to": {"model": "claude-sonnet-4-6"}}),
        u,
    );
    assert_eq!(
        kinds(&mut d, &fallback)[0],
        notice(
            Notice::System,
            "Model fallback: claude-opus-4-6 → claude-sonnet-4-6"
        )
    );
}

#[test]
fn synthetic_api_error_rows_are_notices_without_usage() {
    let line = fx::api_error_row("a1", "API Error: Repeated 529 Overloaded errors");
    assert_eq!(
        one(&line),
        vec![notice(
            Notice::ApiError,
            "API Error: Repeated 529 Overloaded errors"
        )]
    );
    let no_response = fx::with_fields(
        &fx::api_error_row("a2", "No response requested."),
        json!({"isApiErrorMessage": false}),
    );
    assert_eq!(
        one(&no_response),
        vec![notice(Notice::System, "No response requested.")]
    );
}

#[test]
fn system_subtypes() {
    let cases = [
        (
            fx::compact_boundary("s1", "manual", 48211),
            Some((
                Notice::CompactBoundary,
                "Conversation compacted (manual, 48211 tokens before)",
            )),
        ),
        (
            fx::system(
                "s2",
                "microcompact_boundary",
                json!({"microcompactMetadata": {"trigger": "auto", "preTokens": 9000}}),
            ),
            Some((
                Notice::CompactBoundary,
                "Context microcompacted (auto, 9000 tokens before)",
            )),
        ),
        (
            fx::system(
                "s3",
                "api_error",
                json!({"level": "error", "error": {"status": 529, "message": "Overloaded"}, "retryInMs": 1130.4, "retryAttempt": 1, "maxRetries": 10}),
            ),
            Some((
                Notice::ApiError,
                "API error 529: Overloaded (retry 1/10 in 1.1s)",
            )),
        ),
        (
            fx::turn_duration("s4", 48213),
            Some((Notice::System, "Turn completed in 48.2s")),
        ),
        (
            fx::turn_duration("s5", 125_000),
            Some((Notice::System, "Turn completed in 2m 5s")),
        ),
        (
            fx::system(
                "s6",
                "local_command",
                json!({"content": "<command-name>/model</command-name>\n<command-args>sonnet</command-args>"}),
            ),
            Some((Notice::Command, "/model sonnet")),
        ),
        (
            fx::system("s7", "stop_hook_summary", json!({"hookErrors": []})),
            None,
        ),
        (
            fx::system(
                "s8",
                "stop_hook_summary",
                json!({"hookErrors": ["notify.sh exited 1"]}),
            ),
            Some((Notice::System, "Stop hook failed: notify.sh exited 1")),
        ),
        (
            fx::system(
                "s9",
                "informational",
                json!({"content": "Auto-update available"}),
            ),
            Some((Notice::System, "Auto-update available")),
        ),
        (
            fx::system("s10", "brand_new_subtype", json!({"x": 1})),
            None,
        ),
        (
            fx::with_fields(&fx::turn_duration("s11", 5), json!({"isMeta": true})),
            None,
        ),
    ];
    for (line, want) in cases {
        let want: Vec<EventKind> = want.map(|(n, t)| notice(n, t)).into_iter().collect();
        assert_eq!(one(&line), want, "{line}");
    }
}

#[test]
fn titles_are_emitted_when_they_change() {
    let mut d = decoder();
    let t = |s: &str, src| EventKind::Title {
        title: s.into(),
        source: src,
    };
    assert_eq!(
        kinds(&mut d, &fx::title(TitleSource::Summary, "S")),
        vec![t("S", TitleSource::Summary)]
    );
    assert_eq!(kinds(&mut d, &fx::title(TitleSource::Summary, "S")), vec![]);
    assert_eq!(
        kinds(&mut d, &fx::title(TitleSource::AiTitle, "A")),
        vec![t("A", TitleSource::AiTitle)]
    );
    assert_eq!(
        kinds(&mut d, &fx::title(TitleSource::CustomTitle, "C")),
        vec![t("C", TitleSource::CustomTitle)]
    );
    assert_eq!(kinds(&mut d, &fx::title(TitleSource::AiTitle, "A")), vec![]);
    assert_eq!(
        kinds(&mut d, &fx::title(TitleSource::Summary, "S2")),
        vec![t("S2", TitleSource::Summary)]
    );
    assert_eq!(
        kinds(&mut d, r#"{"type":"agent-name","agentName":"x"}"#),
        vec![]
    );
}

#[test]
fn queued_prompt_is_shown_once_across_queue_operation_and_attachment() {
    let mut d = decoder();
    assert_eq!(
        kinds(
            &mut d,
            &fx::queue_operation("enqueue", "also check compose")
        ),
        vec![prompt("also check compose")]
    );
    assert_eq!(
        kinds(&mut d, &fx::queue_operation("remove", "also check compose")),
        vec![]
    );
    assert_eq!(
        kinds(&mut d, &fx::queued_command("q1", "also check compose")),
        vec![]
    );
    // Attachment first, then the same text as a user record.
    assert_eq!(
        kinds(&mut d, &fx::queued_command("q2", "and the README")),
        vec![prompt("and the README")]
    );
    assert_eq!(
        kinds(&mut d, &fx::user_prompt("q3", "and the README")),
        vec![]
    );
    // Afterwards the same words are a new prompt again.
    assert_eq!(
        kinds(&mut d, &fx::user_prompt("q4", "and the README")),
        vec![prompt("and the README")]
    );
    let bash_mode = fx::with_fields(
        &fx::queued_command("q5", "ls"),
        json!({"attachment": {"type": "queued_command", "prompt": "ls", "commandMode": "bash"}}),
    );
    assert_eq!(kinds(&mut d, &bash_mode), vec![]);
}

#[test]
fn a_wrong_shape_record_is_skipped_without_taking_its_uuid() {
    let mut d = decoder();
    let cases = [
        (fx::user_with_message_string("dup-1", "hi"), Skip::Message),
        (
            fx::assistant_with_misspelt_content("dup-2", "hello"),
            Skip::Content,
        ),
        (
            fx::with_fields(&fx::user_prompt("dup-3", "x"), json!({"message": [1, 2]})),
            Skip::Message,
        ),
        (
            fx::with_fields(
                &fx::queued_command("dup-4", "x"),
                json!({"attachment": "queued"}),
            ),
            Skip::Attachment,
        ),
        (
            fx::with_fields(
                &fx::user_prompt("dup-5", "x"),
                json!({"message": {"role": "user", "content": {"text": "x"}}}),
            ),
            Skip::Content,
        ),
    ];
    for (bad, reason) in cases {
        let decoded = decode_raw(&mut d, bad.as_bytes());
        assert_eq!(decoded.events, vec![], "{bad}");
        assert_eq!(decoded.skip, Some(reason), "{bad}");
    }
    // The valid records with the same uuids are still delivered.
    let valid = decode_raw(&mut d, fx::user_prompt("dup-1", "hi").as_bytes());
    assert_eq!(valid.events.last().map(|e| &e.kind), Some(&prompt("hi")));
    assert_eq!(valid.skip, None);
    let text = fx::assistant_text("dup-2", "m1", "hello", fx::usage(1, 1, 0, 0));
    assert!(kinds(&mut d, &text).contains(&EventKind::AssistantText {
        text: "hello".into(),
        model: Some(fx::MODEL.into())
    }));
    // Unknown kinds and metadata lines are not shape errors.
    for raw in [
        r#"{"type":"brand-new","uuid":"n1","message":"text"}"#,
        r#"{"type":"progress","uuid":"n2","data":{"type":"bash_progress"}}"#,
        r#"{"type":"summary","summary":"t","leafUuid":"x"}"#,
    ] {
        assert_eq!(decode_raw(&mut d, raw.as_bytes()).skip, None, "{raw}");
    }
    // An empty block list is a valid (if silent) assistant message.
    let empty = fx::assistant_block("e1", "m2", json!(null), fx::usage(0, 0, 0, 0));
    let empty = fx::with_fields(
        &empty,
        json!({"message": {"role": "assistant", "id": "m2", "content": []}}),
    );
    assert_eq!(decode_raw(&mut d, empty.as_bytes()).skip, None);
}

#[test]
fn teammate_messages_are_their_own_kind_not_prompts() {
    let mut d = decoder();
    assert_eq!(
        kinds(
            &mut d,
            &fx::teammate_message("t1", "reviewer", "yellow", "findings: 2 bugs")
        ),
        vec![EventKind::TeammateMessage {
            teammate: "reviewer".into(),
            summary: None,
            text: "findings: 2 bugs".into()
        }]
    );
    // Several in one record, a summary attribute, a protocol JSON body,
    // and no prefix.
    let text = concat!(
        "<teammate-message teammate_id=\"lead\" color=\"blue\" summary=\"new task\">",
        "Claim task #2</teammate-message>\n",
        "<teammate-message teammate_id=\"w1\">",
        r#"{"type":"idle_notification","from":"w1","idleReason":"available"}"#,
        "</teammate-message>"
    );
    assert_eq!(
        kinds(&mut d, &fx::user_prompt("t2", text)),
        vec![
            EventKind::TeammateMessage {
                teammate: "lead".into(),
                summary: Some("new task".into()),
                text: "Claim task #2".into()
            },
            EventKind::TeammateMessage {
                teammate: "w1".into(),
                summary: None,
                text: "[idle_notification] available".into()
            },
        ]
    );
    // Delivered mid-turn as a queued command: still a teammate message.
    assert_eq!(
        kinds(
            &mut d,
            &fx::queued_command("t3", &fx::teammate_text("w2", "red", "done"))
        ),
        vec![EventKind::TeammateMessage {
            teammate: "w2".into(),
            summary: None,
            text: "done".into()
        }]
    );
    // Text merely mentioning the tag is a prompt.
    assert_eq!(
        kinds(
            &mut d,
            &fx::user_prompt("t4", "what does <teammate-message> mean?")
        ),
        vec![prompt("what does <teammate-message> mean?")]
    );
}

#[test]
fn steering_recorded_only_as_a_remove_is_shown_once() {
    let mut d = decoder();
    assert_eq!(
        kinds(&mut d, &fx::steering_remove("also run the linter")),
        vec![prompt("also run the linter")]
    );
    // The same input arriving by another route after it is not repeated.
    assert_eq!(
        kinds(&mut d, &fx::queued_command("s1", "also run the linter")),
        vec![]
    );
    // A remove without text (the usual mid-turn path) shows nothing; the
    // attachment carrying the text does.
    assert_eq!(
        kinds(
            &mut d,
            &fx::with_fields(&fx::steering_remove(""), json!({"content": null}))
        ),
        vec![]
    );
    assert_eq!(
        kinds(&mut d, &fx::queued_command("s2", "and the docs")),
        vec![prompt("and the docs")]
    );
    // enqueue → remove → attachment → user record: once.
    let mut d = decoder();
    let mut shown = Vec::new();
    for line in [
        fx::queue_operation("enqueue", "stop after this"),
        fx::steering_remove("stop after this"),
        fx::queued_command("s3", "stop after this"),
        fx::user_prompt("s4", "stop after this"),
    ] {
        shown.extend(kinds(&mut d, &line));
    }
    assert_eq!(shown, vec![prompt("stop after this")]);
    // A queued task notification is CLI status, not a prompt.
    assert_eq!(
        kinds(
            &mut d,
            &fx::queue_operation(
                "enqueue",
                "<task-notification>\n<task-id>b1</task-id>\n</task-notification>"
            )
        ),
        vec![]
    );
}

#[test]
fn an_agent_id_alone_does_not_make_a_main_record_a_subagent_one() {
    let mut d = decoder();
    let line = fx::with_fields(&fx::user_prompt("m1", "hi"), json!({"agentId": "a1"}));
    let evs = d
        .decode_line(line.as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert!(evs.iter().all(|e| e.source == Source::Main), "{evs:?}");
}

#[test]
fn a_complete_record_is_told_from_a_torn_one() {
    assert!(Decoder::is_complete_record(br#"{"type":"user"}"#));
    assert!(Decoder::is_complete_record(b"{\"a\":1}\r"));
    assert!(!Decoder::is_complete_record(br#"{"type":"us"#));
    assert!(!Decoder::is_complete_record(b"[1]"));
    assert!(!Decoder::is_complete_record(b""));
}

#[test]
fn session_meta_first_time_and_on_change() {
    let mut d = decoder();
    let meta = |branch: &str, version: &str| EventKind::SessionMeta {
        session_id: fx::SESSION_ID.into(),
        cwd: Some(fx::CWD.into()),
        version: Some(version.into()),
        git_branch: Some(branch.into()),
    };
    assert_eq!(
        decode(&mut d, &fx::user_prompt("u1", "a"))[0],
        meta("main", fx::VERSION)
    );
    assert_eq!(
        decode(&mut d, &fx::user_prompt("u2", "b")),
        vec![prompt("b")]
    );
    let moved = fx::with_fields(&fx::user_prompt("u3", "c"), json!({"gitBranch": "feat/x"}));
    assert_eq!(
        decode(&mut d, &moved),
        vec![meta("feat/x", fx::VERSION), prompt("c")]
    );
    // A record without the field does not count as a change.
    let bare = r#"{"type":"user","uuid":"u4","sessionId":"5b0c8a9e-3f1d-4c2b-9a77-0d1e2f3a4b5c","message":{"content":"d"}}"#;
    assert_eq!(decode(&mut d, bare), vec![prompt("d")]);
    let upgraded = fx::with_fields(
        &fx::user_prompt("u5", "e"),
        json!({"gitBranch": "feat/x", "version": "2.2.0"}),
    );
    assert_eq!(
        decode(&mut d, &upgraded),
        vec![meta("feat/x", "2.2.0"), prompt("e")]
    );
    // Metadata lines never emit it.
    let mut d = decoder();
    assert_eq!(
        decode(&mut d, &fx::title(TitleSource::AiTitle, "t")).len(),
        1
    );
}

#[test]
fn subagent_records_get_a_subagent_source() {
    let mut d = decoder();
    let line = fx::with_fields(
        &fx::user_prompt("u1", "sub"),
        json!({"isSidechain": true, "agentId": "a1b2"}),
    );
    let evs = d
        .decode_line(line.as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert_eq!(evs.len(), 1, "no SessionMeta for subagent records: {evs:?}");
    assert_eq!(
        evs[0].source,
        Source::Subagent {
            agent_id: Some("a1b2".into()),
            description: None,
            workflow: None,
        }
    );
    let inline = fx::with_fields(
        &fx::user_prompt("u2", "old layout"),
        json!({"isSidechain": true}),
    );
    let evs = d
        .decode_line(inline.as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert_eq!(
        evs[0].source,
        Source::Subagent {
            agent_id: None,
            description: None,
            workflow: None,
        }
    );
    // The file's source wins, with the agent id filled in when it lacked one.
    let given = Source::Subagent {
        agent_id: None,
        description: Some("explore".into()),
        workflow: None,
    };
    let line = fx::with_fields(
        &fx::user_prompt("u3", "x"),
        json!({"isSidechain": true, "agentId": "a9"}),
    );
    let evs = d.decode_line(line.as_bytes(), &given).unwrap().events;
    assert_eq!(
        evs[0].source,
        Source::Subagent {
            agent_id: Some("a9".into()),
            description: Some("explore".into()),
            workflow: None,
        }
    );
    let main = d
        .decode_line(fx::user_prompt("u4", "main").as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert!(main.iter().all(|e| e.source == Source::Main));
}

#[test]
fn events_carry_uuid_and_timestamp() {
    let evs = decoder()
        .decode_line(fx::user_prompt("u1", "x").as_bytes(), &Source::Main)
        .unwrap()
        .events;
    assert!(evs.iter().all(|e| e.uuid.as_deref() == Some("u1")));
    assert!(evs
        .iter()
        .all(|e| e.timestamp.as_deref() == Some(fx::TIMESTAMP)));
    let title = decoder()
        .decode_line(
            fx::title(TitleSource::AiTitle, "t").as_bytes(),
            &Source::Main,
        )
        .unwrap()
        .events;
    assert_eq!(title[0].uuid, None);
}

/// Clean lines of every kind take the fast typed path (the slow path is
/// several times slower and meant for damaged lines only).
#[test]
fn clean_lines_take_the_fast_path() {
    let u = fx::usage(1, 2, 3, 4);
    for line in [
        fx::user_prompt("u1", "hi"),
        fx::user_content("u2", json!([{"type": "text", "text": "a"}])),
        fx::assistant_text("a1", "m1", "text", u),
        fx::thinking("a2", "m1", "hmm", u),
        fx::tool_use("a3", "m1", "t1", "Bash", json!({"command": "ls"}), u),
        fx::tool_result("u3", "t1", "out", Some(true)),
        fx::tool_result("u4", "t1", "out", None),
        fx::title(TitleSource::Summary, "s"),
        fx::title(TitleSource::AiTitle, "s"),
        fx::compact_boundary("s1", "auto", 1),
        fx::compact_summary("u5", "This session is being continued"),
        fx::turn_duration("s2", 1),
        fx::api_error_row("a4", "API Error"),
        fx::queue_operation("enqueue", "q"),
        fx::queued_command("q1", "q"),
    ] {
        assert!(
            parse_fast(line.as_bytes(), &mut Record::default()),
            "{line}"
        );
    }
}

#[test]
fn surrogate_fixer_only_touches_lone_escapes() {
    assert_eq!(fix_lone_surrogates(br#""\ud83d\ude00""#), None);
    assert_eq!(fix_lone_surrogates(br#""\n\t\u0041""#), None);
    assert_eq!(
        fix_lone_surrogates(br#""\ud83d""#).unwrap(),
        br#""\uFFFD""#.to_vec()
    );
    assert_eq!(
        fix_lone_surrogates(br#""\ud83d\ud83d\ude00""#).unwrap(),
        br#""\uFFFD\ud83d\ude00""#.to_vec()
    );
    assert_eq!(fix_lone_surrogates(br#""\ud8"#), None);
}

#[test]
fn command_tags_are_removed_and_other_angles_kept() {
    assert_eq!(
        strip_markers("<command-name>/model</command-name>\n<command-args>opus</command-args>"),
        "/model\nopus"
    );
    assert_eq!(
        strip_markers("a < b and <@123> <x y>"),
        "a < b and <@123> <x y>"
    );
    assert_eq!(strip_markers("<unclosed"), "<unclosed");
}
