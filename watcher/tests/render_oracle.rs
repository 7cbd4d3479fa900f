//! Every message the renderer can produce is one Discord accepts: checked by our
//! own validator *and* by twilight-validate (an independent implementation, fed
//! through a serde round-trip of our JSON), on adversarial input: huge outputs,
//! thousands of fences, mentions, ANSI, NULs, emoji at every cut point.
#![allow(clippy::unwrap_used)]

use discord::embed::{Embed, WebhookMessage};
use discord::sanitize::{fence_count, ZWSP};
use discord::truncate::MARKER;
use proptest::prelude::*;
use serde_json::json;
use watcher::render::{CostTable, Filters, RenderConfig, Rendered, Renderer, RunInfo};
use watcher::transcript::{Event, EventKind, Notice, Source, TitleSource, Usage};

fn cfg(parity: bool) -> RenderConfig {
    RenderConfig {
        parity,
        filters: Filters::default(),
        costs: CostTable::builtin(),
        run: RunInfo {
            task_id: Some(nasty(300)),
            attempt: Some("@everyone".into()),
            run_id: Some("<@123>".into()),
            short_id: Some("\u{1b}[31mx".into()),
        },
        inline_output_chars: 1000,
    }
}

/// A text that is hostile in every way at once, `n` chars and more.
fn nasty(n: usize) -> String {
    let pieces = [
        "@everyone ",
        "@here ",
        "<@123> ",
        "<@!456> ",
        "<@&789> ",
        "\u{1b}[1;31mred\u{1b}[0m ",
        "\u{0}\u{0}",
        "```",
        "🦀",
        "👨‍👩‍👧",
        "é",
        "日本語",
        "\r\n",
        " 10%\r100%\n",
        "`",
        "\u{1b}]0;title\u{7}",
        "\t",
        "\u{7f}",
    ];
    let mut s = String::new();
    let mut i = 0;
    while s.chars().count() < n {
        s.push_str(pieces[i % pieces.len()]);
        i += 1;
    }
    s
}

/// Texts that put a multi-byte char exactly at the usual cut points.
fn emoji_at_cuts() -> Vec<String> {
    let mut out = Vec::new();
    for limit in [256usize, 1000, 1024, 2000, 4096] {
        for back in [0usize, 1, 2, 13, 14] {
            let prefix = "a".repeat(limit.saturating_sub(back));
            out.push(format!("{prefix}🦀👨‍👩‍👧🦀é{}", "🦀".repeat(20)));
        }
    }
    out
}

fn ev(kind: EventKind) -> Event {
    Event {
        source: Source::Main,
        uuid: Some("u-1".into()),
        timestamp: Some("2025-06-01T12:00:00.000Z".into()),
        kind,
    }
}

fn sub(mut e: Event, description: &str) -> Event {
    e.source = Source::Subagent {
        agent_id: Some(nasty(50)),
        description: Some(description.to_owned()),
        // A workflow run is named by a directory the agent creates.
        workflow: Some(nasty(40)),
    };
    e
}

/// Events of every kind carrying `text` wherever text can go.
fn events_with(text: &str) -> Vec<Event> {
    let id = format!("toolu_{}", &text.chars().take(40).collect::<String>());
    let mut evs = vec![
        ev(EventKind::SessionMeta {
            session_id: text.into(),
            cwd: Some(text.into()),
            version: Some(text.into()),
            git_branch: Some(text.into()),
        }),
        ev(EventKind::UserPrompt {
            text: text.into(),
            images: 3,
        }),
        ev(EventKind::AssistantText {
            text: text.into(),
            model: Some(text.into()),
        }),
        ev(EventKind::TeammateMessage {
            teammate: text.into(),
            summary: Some(text.into()),
            text: text.into(),
        }),
        ev(EventKind::Thinking { text: text.into() }),
        ev(EventKind::Title {
            title: text.into(),
            source: TitleSource::CustomTitle,
        }),
        ev(EventKind::Usage {
            message_id: text.into(),
            model: text.chars().take(100).collect(),
            usage: Usage {
                input_tokens: u64::MAX / 8,
                output_tokens: 1,
                cache_creation_input_tokens: 2,
                cache_read_input_tokens: 3,
            },
        }),
    ];
    for notice in [
        Notice::Command,
        Notice::Interrupted,
        Notice::ApiError,
        Notice::CompactBoundary,
        Notice::CompactSummary,
        Notice::System,
    ] {
        evs.push(ev(EventKind::Notice {
            notice,
            text: text.into(),
        }));
    }
    let inputs = [
        (
            "Bash",
            json!({"command": text, "description": text, "timeout": 5000, "run_in_background": true}),
        ),
        (
            "Edit",
            json!({"file_path": text, "old_string": text, "new_string": text, "replace_all": true}),
        ),
        (
            "MultiEdit",
            json!({"file_path": text, "edits": [{"old_string": text, "new_string": text}, {"old_string": text, "new_string": text}]}),
        ),
        ("Write", json!({"file_path": text, "content": text})),
        ("Read", json!({"file_path": text, "offset": 1, "limit": 2})),
        ("Glob", json!({"pattern": text, "path": text})),
        (
            "Grep",
            json!({"pattern": text, "path": text, "glob": text, "type": text, "output_mode": text}),
        ),
        ("WebFetch", json!({"url": text, "prompt": text})),
        ("WebSearch", json!({"query": text})),
        (
            "Task",
            json!({"description": text, "prompt": text, "subagent_type": text}),
        ),
        (
            "Agent",
            json!({"description": text, "prompt": text, "subagent_type": text}),
        ),
        (
            "TodoWrite",
            json!({"todos": [{"content": text, "status": "in_progress"}, {"content": text, "status": "completed"}, text]}),
        ),
        (
            "mcp__srv__tool",
            json!({"a": text, "b": [text], "c": {"d": text}}),
        ),
        (text, json!(text)),
        ("Bash", json!(null)),
    ];
    for (i, (name, input)) in inputs.into_iter().enumerate() {
        let id = format!("{id}{i}");
        evs.push(ev(EventKind::ToolUse {
            id: id.clone(),
            name: name.into(),
            input,
        }));
        for is_error in [false, true] {
            evs.push(ev(EventKind::ToolResult {
                tool_use_id: id.clone(),
                tool_name: Some(name.into()),
                content: text.into(),
                is_error,
            }));
        }
    }
    evs.push(ev(EventKind::ToolResult {
        tool_use_id: text.into(),
        tool_name: None,
        content: text.into(),
        is_error: false,
    }));
    let subs: Vec<Event> = evs.iter().take(12).map(|e| sub(e.clone(), text)).collect();
    evs.extend(subs);
    let mut bad_time = ev(EventKind::UserPrompt {
        text: "x".into(),
        images: 0,
    });
    bad_time.timestamp = Some(text.into());
    evs.push(bad_time);
    evs
}

fn twilight(embed: &Embed) -> twilight_model::channel::message::Embed {
    let mut v = serde_json::to_value(embed).unwrap();
    v["type"] = json!("rich");
    serde_json::from_value(v)
        .unwrap_or_else(|e| panic!("twilight rejects our JSON: {e}: {embed:?}"))
}

/// Packs embeds into messages of ≤ 10 embeds and ≤ 6000 bytes (twilight's
/// count), in order.
fn pack(embeds: &[Embed]) -> Vec<Vec<Embed>> {
    let mut out: Vec<Vec<Embed>> = Vec::new();
    let mut cur: Vec<Embed> = Vec::new();
    let mut bytes = 0;
    for e in embeds {
        let n = twilight_validate::embed::chars(&twilight(e));
        if !cur.is_empty() && (cur.len() == 10 || bytes + n > 6000) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(e.clone());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn texts(e: &Embed) -> Vec<&str> {
    let mut t: Vec<&str> = Vec::new();
    t.extend(e.title.as_deref());
    t.extend(e.description.as_deref());
    t.extend(e.footer.as_ref().map(|f| f.text.as_str()));
    t.extend(e.author.as_ref().map(|a| a.name.as_str()));
    for f in &e.fields {
        t.push(&f.name);
        t.push(&f.value);
    }
    t
}

fn check_embed(e: &Embed) {
    for t in texts(e) {
        assert!(
            !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t'),
            "control char in {t:?}"
        );
        for m in ["@everyone", "@here", "<@1", "<@!", "<@&"] {
            assert!(!t.contains(m), "live mention {m} in {t:?}");
        }
        assert_eq!(fence_count(t) % 2, 0, "unbalanced fences in {t:?}");
    }
    if let Some(ts) = &e.timestamp {
        assert!(
            twilight_model::util::Timestamp::parse(ts).is_ok(),
            "bad timestamp {ts}"
        );
    }
}

fn check_message(embeds: Vec<Embed>, files: Vec<discord::embed::Attachment>) {
    for e in &embeds {
        check_embed(e);
    }
    for f in &files {
        twilight_validate::message::attachment_filename(&f.filename)
            .unwrap_or_else(|e| panic!("{e}: {}", f.filename));
        assert!(f.bytes.len() <= discord::limits::ATTACHMENT_BYTES);
    }
    let tw: Vec<_> = embeds.iter().map(twilight).collect();
    if let Err(e) = twilight_validate::message::embeds(&tw) {
        panic!("twilight-validate: {:?}\n{tw:#?}", e.kind());
    }
    let msg = WebhookMessage {
        embeds,
        files,
        ..WebhookMessage::default()
    };
    if let Err(v) = discord::validate::validate(&msg) {
        panic!("discord::validate: {v:?}");
    }
}

/// Renders `events`, checks each event's message on its own and every embed
/// packed into shared messages; returns all renderings.
fn render_and_check(parity: bool, events: &[Event]) -> (Renderer, Vec<Rendered>) {
    let mut r = Renderer::new(cfg(parity));
    let mut all = Vec::new();
    for e in events {
        let out = r.render(e);
        assert!(out.embeds.len() <= 10);
        if !out.embeds.is_empty() || !out.files.is_empty() {
            check_message(out.embeds.clone(), out.files.clone());
        }
        let marked = out
            .embeds
            .iter()
            .any(|e| texts(e).iter().any(|t| t.contains(MARKER)));
        if marked {
            assert!(!out.truncated.is_empty(), "a cut was not reported: {e:?}");
        }
        all.push(out);
    }
    let embeds: Vec<Embed> = all.iter().flat_map(|o| o.embeds.iter().cloned()).collect();
    for group in pack(&embeds) {
        check_message(group, Vec::new());
    }
    let hs = vec![
        r.header("2025-06-01T12:00:00.000Z"),
        r.summary("2025-06-01T13:00:00.000Z"),
        r.header("not a time"),
        r.summary(&nasty(100)),
    ];
    for e in &hs {
        check_message(vec![e.clone()], Vec::new());
    }
    for group in pack(&hs) {
        check_message(group, Vec::new());
    }
    (r, all)
}

#[test]
fn adversarial_text_everywhere_is_valid_for_both_validators() {
    for n in [0, 1, 50, 300, 1100, 5000] {
        let evs = events_with(&nasty(n));
        render_and_check(false, &evs);
        render_and_check(true, &evs);
    }
}

#[test]
fn emoji_at_cut_points_are_valid() {
    for text in emoji_at_cuts() {
        let evs = events_with(&text);
        render_and_check(false, &evs);
        render_and_check(true, &evs);
    }
}

#[test]
fn huge_output_is_excerpted_and_attached_whole() {
    for body in [
        "x".repeat(100_000),
        "🦀".repeat(100_000),
        "line of output\n".repeat(8_000),
        nasty(100_000),
    ] {
        let call = ev(EventKind::ToolUse {
            id: "toolu_big".into(),
            name: "Bash".into(),
            input: json!({"command": "cat big"}),
        });
        let res = ev(EventKind::ToolResult {
            tool_use_id: "toolu_big".into(),
            tool_name: Some("Bash".into()),
            content: body.clone(),
            is_error: false,
        });
        for parity in [false, true] {
            let (_, out) = render_and_check(parity, &[call.clone(), res.clone()]);
            let r = &out[1];
            assert_eq!(r.files.len(), 1, "attached");
            assert_eq!(r.files[0].filename, "output-toolu_big.txt");
            let cleaned = discord::sanitize::clean_text(&body);
            assert_eq!(
                r.files[0].bytes,
                cleaned.trim_end().as_bytes(),
                "whole output"
            );
            let d = r.embeds[0].description.clone().unwrap_or_default();
            assert!(d.contains("output-toolu_big.txt"), "{d}");
            assert!(
                d.chars().count() <= 1100,
                "excerpt stays small: {}",
                d.chars().count()
            );
        }
    }
}

#[test]
fn five_thousand_fences_stay_balanced() {
    let fences = "```".repeat(5000);
    let mixed = "```rust\nfn x() {}\n".repeat(5000);
    for text in [fences, mixed, format!("{}`", "```".repeat(4999))] {
        render_and_check(false, &events_with(&text));
        render_and_check(true, &events_with(&text));
    }
}

#[test]
fn mentions_are_neutralised_not_removed() {
    let mut r = Renderer::new(cfg(false));
    let out = r.render(&ev(EventKind::AssistantText {
        text: "ping @everyone and <@123>".into(),
        model: None,
    }));
    let d = out.embeds[0].description.clone().unwrap_or_default();
    assert_eq!(d, format!("ping @{ZWSP}everyone and <@{ZWSP}123>"));
}

#[test]
fn summary_with_many_tools_and_models_is_valid() {
    let mut evs = Vec::new();
    for i in 0..300 {
        evs.push(ev(EventKind::ToolUse {
            id: format!("t{i}"),
            name: format!("mcp__server_{i}__{}", nasty(40)),
            input: json!({}),
        }));
        evs.push(ev(EventKind::Usage {
            message_id: format!("m{i}"),
            model: format!("model-{i}-{}", nasty(30)),
            usage: Usage {
                input_tokens: 1,
                ..Usage::default()
            },
        }));
    }
    let (r, _) = render_and_check(false, &evs);
    assert_eq!(r.stats().cost_usd, None);
    assert_eq!(r.stats().tools.len(), 300);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_text_renders_valid_messages(
        parts in prop::collection::vec(
            prop_oneof![
                Just("```".to_owned()),
                Just("@everyone".to_owned()),
                Just("<@1>".to_owned()),
                Just("\u{1b}[".to_owned()),
                Just("\u{0}".to_owned()),
                Just("\r".to_owned()),
                Just("🦀".to_owned()),
                "[a-z\\n ]{0,40}",
                "\\PC{0,20}",
                "[\u{0}-\u{ff}]{0,20}",
            ],
            0..400,
        ),
        parity in any::<bool>(),
    ) {
        let text: String = parts.concat();
        let evs = events_with(&text);
        render_and_check(parity, &evs);
    }
}
