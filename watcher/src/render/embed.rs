//! One event → its embeds (and attachments).
//!
//! Layouts per event kind (DESIGN.md §3, render). Without `PARITY_MODE` texts get
//! soft caps (short prompts, replies, commands, diffs; routine output of
//! Read/Edit/Write/Glob/Grep/TodoWrite reduced to one line); with it each text may
//! use the whole description and whatever still does not fit is attached as a
//! file. Tool output always shows an excerpt of `inline_output_chars` inline and
//! attaches the full text when it is longer.

use discord::embed::Attachment;
use discord::limits;
use discord::sanitize::clean_text;
use discord::truncate::Field;
use serde_json::Value;

use super::text::{self, chars, inline_code, one_line, with_code, EmbedBuilder};
use super::tool::{self, arg, ToolKind};
use super::{RenderConfig, Rendered};
use crate::transcript::{Event, Notice, Source};

const PROMPT_CHARS: usize = 1500;
const TEXT_CHARS: usize = 2000;
const NOTICE_CHARS: usize = 500;
const COMMAND_CHARS: usize = 1500;
const DIFF_CHARS: usize = 1200;
const WRITE_CHARS: usize = 600;
const INPUT_CHARS: usize = 800;
const QUIET_CHARS: usize = 300;
const FOOTER_CHARS: usize = 200;
const FULL: usize = limits::EMBED_DESCRIPTION;

fn cap(cfg: &RenderConfig, soft: usize) -> usize {
    if cfg.parity {
        FULL
    } else {
        soft
    }
}

/// Title, colour, subagent author and time: what every event embed starts with.
fn base(ev: &Event, title: &str, color: u32) -> EmbedBuilder {
    let b = EmbedBuilder::new(title, color).timestamp(ev.timestamp.as_deref());
    match &ev.source {
        Source::Main => b,
        Source::Subagent { .. } => b.author(&subagent_label(&ev.source)),
    }
}

/// `subagent: <description or id>`, with ` · workflow <run>` for an agent of a
/// workflow run; plain `subagent` when nothing names it.
pub fn subagent_label(source: &Source) -> String {
    let Source::Subagent {
        agent_id,
        description,
        workflow,
    } = source
    else {
        return String::new();
    };
    let who = description
        .as_deref()
        .filter(|d| !d.trim().is_empty())
        .or(agent_id.as_deref().filter(|a| !a.is_empty()));
    let mut label = match who {
        Some(w) => format!("subagent: {w}"),
        None => "subagent".to_owned(),
    };
    if let Some(run) = workflow.as_deref().filter(|w| !w.is_empty()) {
        label.push_str(&format!(" · workflow {run}"));
    }
    label
}

fn single(b: EmbedBuilder) -> Rendered {
    let (embed, truncated) = b.build();
    Rendered {
        embeds: vec![embed],
        files: Vec::new(),
        truncated,
    }
}

/// An id for attachment names: the record's uuid, else `fallback`.
fn event_id(ev: &Event, fallback: u64) -> String {
    ev.uuid.clone().unwrap_or_else(|| fallback.to_string())
}

fn attach(out: &mut Rendered, filename: String, text: &str) {
    let (bytes, cut) = text::attachment_bytes(text);
    if cut {
        out.truncated.push(Field::Files);
    }
    out.files.push(Attachment { filename, bytes });
}

/// A prose embed; with parity a text cut to fit is attached whole as
/// `<prefix>-<id>.md`.
#[allow(clippy::too_many_arguments)]
fn prose_embed(
    cfg: &RenderConfig,
    ev: &Event,
    title: &str,
    color: u32,
    text: &str,
    soft: usize,
    footer: Option<&str>,
    attach_as: (&str, u64),
) -> Rendered {
    let cleaned = clean_text(text);
    let mut b = base(ev, title, color);
    if let Some(f) = footer {
        b = b.footer(f, FOOTER_CHARS);
    }
    let b = b.description_with(cap(cfg, soft), |c| text::prose(&cleaned, c));
    let mut out = single(b);
    if cfg.parity && out.truncated.contains(&Field::Description) {
        let name = text::file_name(attach_as.0, &event_id(ev, attach_as.1), "md");
        attach(&mut out, name, &cleaned);
    }
    out
}

pub fn user_prompt(
    cfg: &RenderConfig,
    ev: &Event,
    prompt: &str,
    images: usize,
    seq: u64,
) -> Rendered {
    if prompt.trim().is_empty() && images == 0 {
        return Rendered::default();
    }
    let footer = match images {
        0 => None,
        1 => Some("+1 image".to_owned()),
        n => Some(format!("+{n} images")),
    };
    let body = if prompt.trim().is_empty() {
        "*(image)*"
    } else {
        prompt
    };
    prose_embed(
        cfg,
        ev,
        &format!("{} Prompt", tool::EMOJI_PROMPT),
        tool::COLOR_PROMPT,
        body,
        PROMPT_CHARS,
        footer.as_deref(),
        ("prompt", seq),
    )
}

/// A message from another agent of the team: its own kind, not a prompt.
pub fn teammate_message(
    cfg: &RenderConfig,
    ev: &Event,
    teammate: &str,
    summary: Option<&str>,
    text: &str,
    seq: u64,
) -> Rendered {
    if text.trim().is_empty() && summary.is_none_or(|s| s.trim().is_empty()) {
        return Rendered::default();
    }
    let body = if text.trim().is_empty() {
        summary.unwrap_or("")
    } else {
        text
    };
    let title = format!("{} from {}", tool::EMOJI_TEAMMATE, one_line(teammate));
    prose_embed(
        cfg,
        ev,
        &title,
        tool::COLOR_TEAMMATE,
        body,
        PROMPT_CHARS,
        summary.filter(|s| !s.trim().is_empty() && !text.trim().is_empty()),
        ("teammate", seq),
    )
}

pub fn assistant_text(cfg: &RenderConfig, ev: &Event, text: &str, seq: u64) -> Rendered {
    if text.trim().is_empty() {
        return Rendered::default();
    }
    prose_embed(
        cfg,
        ev,
        &format!("{} Assistant", tool::EMOJI_TEXT),
        tool::COLOR_TEXT,
        text,
        TEXT_CHARS,
        None,
        ("message", seq),
    )
}

/// Only with parity; empty thinking (the norm in recent versions) is skipped.
pub fn thinking(cfg: &RenderConfig, ev: &Event, text: &str, seq: u64) -> Rendered {
    if !cfg.parity || text.trim().is_empty() {
        return Rendered::default();
    }
    prose_embed(
        cfg,
        ev,
        &format!("{} Thinking", tool::EMOJI_THINKING),
        tool::COLOR_THINKING,
        text,
        FULL,
        None,
        ("thinking", seq),
    )
}

pub fn notice(cfg: &RenderConfig, ev: &Event, notice: Notice, body: &str, seq: u64) -> Rendered {
    let (title, color) = match notice {
        Notice::Command => ("⌨️ Command", tool::COLOR_NOTICE),
        Notice::Interrupted => ("⏹️ Interrupted", tool::COLOR_NOTICE),
        Notice::ApiError => ("❌ API error", tool::COLOR_ERROR),
        Notice::CompactBoundary => ("🗜️ Context compacted", tool::COLOR_NOTICE),
        Notice::CompactSummary => ("📋 Compaction summary", tool::COLOR_NOTICE),
        Notice::System => ("ℹ️ System", tool::COLOR_NOTICE),
    };
    // Command text comes without its CLI markup: the decoder strips tags.
    let body = body.trim();
    prose_embed(
        cfg,
        ev,
        title,
        color,
        body,
        NOTICE_CHARS,
        None,
        ("notice", seq),
    )
}

/// `-old` / `+new` lines of one replacement.
fn diff(out: &mut String, old: &str, new: &str) {
    for l in old.lines() {
        out.push('-');
        out.push_str(l);
        out.push('\n');
    }
    for l in new.lines() {
        out.push('+');
        out.push_str(l);
        out.push('\n');
    }
}

/// A code block language for a path, by extension.
fn lang_of(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "rs" => "rust",
        "py" => "python",
        "js" | "mjs" | "cjs" => "js",
        "ts" | "tsx" => "ts",
        "go" => "go",
        "json" => "json",
        "toml" => "toml",
        "yaml" | "yml" => "yaml",
        "sh" | "bash" => "bash",
        "md" => "md",
        "html" => "html",
        "css" => "css",
        "sql" => "sql",
        "c" | "h" => "c",
        "cpp" | "hpp" | "cc" => "cpp",
        "java" => "java",
        "rb" => "ruby",
        _ => "",
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{} {one}s", text::thousands(n as u64))
    }
}

/// The first lines of `text` that fit in `max` chars, marked as cut; `text`
/// itself when it fits. Cutting at a line end keeps the excerpt readable.
fn excerpt(text: &str, max: usize) -> (String, bool) {
    if chars(text) <= max {
        return (text.to_owned(), false);
    }
    let marker = discord::truncate::MARKER;
    let room = max.saturating_sub(chars(marker) + 1);
    let end = text.char_indices().nth(room).map_or(text.len(), |(i, _)| i);
    let head = &text[..end];
    let head = match head.rfind('\n') {
        Some(i) if i >= head.len() / 2 => &head[..i],
        _ => head,
    };
    (format!("{head}\n{marker}"), true)
}

pub fn tool_use(cfg: &RenderConfig, ev: &Event, name: &str, input: &Value) -> Rendered {
    // Paths and patterns are cut to a fixed size before the description is
    // fitted; such a cut is reported like any other.
    let cut = std::cell::Cell::new(false);
    let inline_code = |s: &str, max: usize| {
        let (t, c) = inline_code(s, max);
        if c {
            cut.set(true);
        }
        t
    };
    let kind = ToolKind::of(name);
    let title = format!("{} {name}", kind.emoji());
    let b = base(ev, &title, kind.color());
    let path = || {
        arg(input, "file_path")
            .or_else(|| arg(input, "path"))
            .or_else(|| arg(input, "notebook_path"))
            .unwrap_or("")
    };
    let b = match name {
        "Bash" => {
            let command = clean_text(arg(input, "command").unwrap_or(""));
            let head = arg(input, "description")
                .map(|d| format!("_{}_", one_line(d).replace('_', "\\_")))
                .unwrap_or_default();
            let mut notes = Vec::new();
            if input.get("run_in_background").and_then(Value::as_bool) == Some(true) {
                notes.push("background".to_owned());
            }
            if let Some(t) = input.get("timeout").and_then(Value::as_u64) {
                notes.push(format!("timeout {}s", t / 1000));
            }
            let b = if notes.is_empty() {
                b
            } else {
                b.footer(&notes.join(" · "), FOOTER_CHARS)
            };
            b.description_with(cap(cfg, COMMAND_CHARS), |c| {
                with_code(&head, "bash", &command, "", c)
            })
        }
        "Edit" | "MultiEdit" => {
            let mut body = String::new();
            let edits: Vec<(&str, &str)> = match input.get("edits").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .map(|e| {
                        (
                            arg(e, "old_string").unwrap_or(""),
                            arg(e, "new_string").unwrap_or(""),
                        )
                    })
                    .collect(),
                None => vec![(
                    arg(input, "old_string").unwrap_or(""),
                    arg(input, "new_string").unwrap_or(""),
                )],
            };
            for (i, (old, new)) in edits.iter().enumerate() {
                if edits.len() > 1 {
                    body.push_str(&format!("@@ edit {} @@\n", i + 1));
                }
                diff(&mut body, old, new);
            }
            let body = clean_text(body.trim_end());
            let mut head = inline_code(path(), 300);
            if edits.len() > 1 {
                head.push_str(&format!(" · {} edits", edits.len()));
            }
            if input.get("replace_all").and_then(Value::as_bool) == Some(true) {
                head.push_str(" · all occurrences");
            }
            b.description_with(cap(cfg, DIFF_CHARS), |c| {
                with_code(&head, "diff", &body, "", c)
            })
        }
        "Write" => {
            let content = clean_text(arg(input, "content").unwrap_or("").trim_end());
            let head = format!(
                "{} · {}",
                inline_code(path(), 300),
                plural(content.lines().count(), "line")
            );
            b.description_with(cap(cfg, WRITE_CHARS), |c| {
                if content.is_empty() {
                    text::prose(&head, c)
                } else {
                    with_code(&head, lang_of(path()), &content, "", c)
                }
            })
        }
        "Read" => {
            let mut d = inline_code(path(), 500);
            let offset = input.get("offset").and_then(Value::as_u64);
            let limit = input.get("limit").and_then(Value::as_u64);
            match (offset, limit) {
                (Some(o), Some(l)) => {
                    d.push_str(&format!(" · lines {o}–{}", (o + l).saturating_sub(1)))
                }
                (Some(o), None) => d.push_str(&format!(" · from line {o}")),
                (None, Some(l)) => d.push_str(&format!(" · first {l} lines")),
                (None, None) => {}
            }
            b.description_with(FULL, |c| text::prose(&d, c))
        }
        "Glob" | "Grep" => {
            let mut d = inline_code(arg(input, "pattern").unwrap_or(""), 500);
            if let Some(p) = arg(input, "path") {
                d.push_str(&format!(" in {}", inline_code(p, 300)));
            }
            for key in ["glob", "type", "output_mode"] {
                if let Some(v) = arg(input, key) {
                    d.push_str(&format!(" · {key} {}", inline_code(v, 100)));
                }
            }
            b.description_with(FULL, |c| text::prose(&d, c))
        }
        "WebFetch" | "WebSearch" => {
            let mut d = match arg(input, "url") {
                Some(u) => one_line(u),
                None => format!("**{}**", one_line(arg(input, "query").unwrap_or(""))),
            };
            if let Some(p) = arg(input, "prompt") {
                d.push_str("\n> ");
                d.push_str(&one_line(p));
            }
            b.description_with(cap(cfg, NOTICE_CHARS), |c| text::prose(&d, c))
        }
        "Task" | "Agent" => {
            let mut d = format!(
                "**{}**",
                one_line(arg(input, "description").unwrap_or("subagent"))
            );
            if let Some(t) = arg(input, "subagent_type") {
                d.push_str(&format!(" · {}", inline_code(t, 100)));
            }
            if let Some(p) = arg(input, "prompt") {
                d.push('\n');
                d.push_str(&clean_text(p));
            }
            b.description_with(cap(cfg, NOTICE_CHARS), |c| text::prose(&d, c))
        }
        "TodoWrite" => {
            let todos = input.get("todos").and_then(Value::as_array);
            let d = todos
                .map(|list| {
                    list.iter()
                        .map(|t| {
                            let mark = match arg(t, "status") {
                                Some("completed") => "☑",
                                Some("in_progress") => "▶",
                                _ => "☐",
                            };
                            // An item given as a bare string is its content.
                            let content = t.as_str().or_else(|| arg(t, "content"));
                            format!("{mark} {}", one_line(content.unwrap_or("")))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            b.description_with(cap(cfg, COMMAND_CHARS), |c| text::prose(&d, c))
        }
        _ => {
            let body = match input {
                Value::Object(o) if o.is_empty() => String::new(),
                Value::Null => String::new(),
                v => clean_text(&serde_json::to_string_pretty(v).unwrap_or_default()),
            };
            b.description_with(cap(cfg, INPUT_CHARS), |c| {
                if body.is_empty() {
                    text::prose("*(no input)*", c)
                } else {
                    with_code("", "json", &body, "", c)
                }
            })
        }
    };
    let mut out = single(b);
    if cut.get() && !out.truncated.contains(&Field::Description) {
        out.truncated.push(Field::Description);
    }
    out
}

/// The error text of a tool result, without the CLI's `<tool_use_error>` wrapper.
fn unwrap_error(content: &str) -> &str {
    let t = content.trim();
    t.strip_prefix("<tool_use_error>")
        .and_then(|r| r.strip_suffix("</tool_use_error>"))
        .unwrap_or(t)
}

pub struct ToolOutput<'a> {
    pub tool_use_id: &'a str,
    pub name: Option<&'a str>,
    pub content: &'a str,
    pub is_error: bool,
    /// `minStdoutLength` (0 with parity).
    pub min_chars: usize,
}

pub fn tool_result(cfg: &RenderConfig, ev: &Event, out: &ToolOutput<'_>) -> Rendered {
    let name = out.name.unwrap_or("tool");
    let cleaned = if out.is_error {
        clean_text(unwrap_error(out.content))
    } else {
        clean_text(out.content)
    };
    let cleaned = cleaned.trim_end();
    let n_chars = chars(cleaned.trim());
    if !out.is_error && n_chars < out.min_chars {
        return Rendered::default();
    }
    let (emoji, color) = if out.is_error {
        (tool::EMOJI_ERROR, tool::COLOR_ERROR)
    } else {
        (tool::EMOJI_OUTPUT, tool::COLOR_OUTPUT)
    };
    let title = format!("{emoji} {name}");
    let lines = cleaned.lines().count();
    if n_chars == 0 {
        return single(base(ev, &title, color).description("*(no output)*", FULL));
    }
    let footer = format!("{} · {}", plural(lines, "line"), plural(n_chars, "char"));
    let b = base(ev, &title, color).footer(&footer, FOOTER_CHARS);
    if !out.is_error && !cfg.parity && ToolKind::quiet_output(name) {
        let first = cleaned.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let (first, cut) = inline_code(first.trim(), QUIET_CHARS);
        let mut r = single(b.description_with(QUIET_CHARS, |c| text::prose(&first, c)));
        if cut && !r.truncated.contains(&Field::Description) {
            r.truncated.push(Field::Description);
        }
        return r;
    }
    let inline = cfg.inline_output_chars.clamp(1, FULL);
    let filename = text::file_name("output", out.tool_use_id, "txt");
    let render = |body: &str, tail: &str| {
        let room = (chars(body) + chars(tail) + 16).min(FULL);
        single(
            base(ev, &title, color)
                .footer(&footer, FOOTER_CHARS)
                .description_with(room, |c| with_code("", "", body, tail, c)),
        )
    };
    let whole = (n_chars <= inline).then(|| render(cleaned, ""));
    match whole {
        Some(r) if !r.truncated.contains(&Field::Description) => r,
        _ => {
            // Too long (or too many bytes) to show whole: an excerpt, and all of it
            // as a file.
            let tail = format!("📎 full output attached: {}", inline_code(&filename, 100).0);
            let (body, cut) = excerpt(cleaned, inline);
            let mut r = render(&body, &tail);
            if cut && !r.truncated.contains(&Field::Description) {
                r.truncated.push(Field::Description);
            }
            attach(&mut r, filename, cleaned);
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_lose_their_wrapper() {
        assert_eq!(
            unwrap_error("<tool_use_error>File has not been read yet</tool_use_error>"),
            "File has not been read yet"
        );
        assert_eq!(unwrap_error("Exit code 1\nboom"), "Exit code 1\nboom");
    }

    #[test]
    fn excerpts_end_at_a_line() {
        let text = "aaaa\nbbbb\ncccc\ndddd\n".repeat(10);
        let (e, cut) = excerpt(&text, 40);
        assert!(cut && chars(&e) <= 40, "{e}");
        assert_eq!(
            e,
            format!(
                "aaaa\nbbbb\ncccc\ndddd\naaaa\n{}",
                discord::truncate::MARKER
            )
        );
        assert_eq!(excerpt("short", 40), ("short".to_owned(), false));
    }

    #[test]
    fn languages_by_extension() {
        assert_eq!(lang_of("src/main.rs"), "rust");
        assert_eq!(lang_of("Makefile"), "");
        assert_eq!(lang_of("a.b/c"), "");
    }
}
