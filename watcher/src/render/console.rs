//! The console sink: one readable line per event, for a person at a terminal.
//!
//! `12:01:02 ⚡ Bash  cargo test` — time (UTC) when known, the same emoji as the
//! embeds, a label and the gist, on one line of at most [`LINE_CHARS`] chars
//! (control characters and escape sequences removed). ANSI colours only when
//! `color` is set. It mirrors what is posted without parity: thinking, usage,
//! titles and other bookkeeping get no line.

use super::summary::{cost_line, tools_line};
use super::text::{self, chars, duration, one_line, thousands};
use super::tool::{self, ToolKind};
use super::Stats;
use crate::transcript::{Event, EventKind, Notice, Source};

/// Longest line printed, in chars (colour codes not counted).
pub const LINE_CHARS: usize = 160;

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BLUE: &str = "\x1b[34m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

fn paint(s: &str, code: &str, color: bool) -> String {
    if color && !s.is_empty() {
        format!("{code}{s}{RESET}")
    } else {
        s.to_owned()
    }
}

fn tool_color(kind: ToolKind) -> &'static str {
    match kind {
        ToolKind::Bash => YELLOW,
        ToolKind::Edit => MAGENTA,
        ToolKind::Read => CYAN,
        ToolKind::Web => GREEN,
        ToolKind::Other => BOLD,
    }
}

/// Cuts `s` (one line already) to `max` chars with `…`.
fn cut(s: &str, max: usize) -> String {
    if chars(s) <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Assembles `time mark label  detail`, cutting the detail so the visible line
/// stays within [`LINE_CHARS`].
fn assemble(ev: &Event, mark: &str, label: &str, detail: &str, code: &str, color: bool) -> String {
    let time = ev.timestamp.as_deref().and_then(text::clock);
    let who = match &ev.source {
        Source::Main => String::new(),
        Source::Subagent {
            agent_id,
            description,
            workflow,
        } => {
            let name = description
                .as_deref()
                .or(agent_id.as_deref())
                .unwrap_or("subagent");
            match workflow {
                Some(run) => format!("[{} · {}] ", cut(&one_line(name), 30), cut(run, 20)),
                None => format!("[{}] ", cut(&one_line(name), 30)),
            }
        }
    };
    let label = cut(&one_line(label), 60);
    let mut prefix_len = chars(&who) + chars(mark) + 1 + chars(&label);
    if let Some(t) = &time {
        prefix_len += chars(t) + 1;
    }
    let detail = one_line(detail);
    let room = LINE_CHARS.saturating_sub(prefix_len + 2);
    let detail = cut(&detail, room);
    let mut out = String::new();
    if let Some(t) = &time {
        out.push_str(&paint(t, DIM, color));
        out.push(' ');
    }
    out.push_str(&paint(&who, DIM, color));
    out.push_str(mark);
    out.push(' ');
    if label.is_empty() {
        out.push_str(&paint(&detail, code, color));
    } else {
        out.push_str(&paint(&label, code, color));
        if !detail.is_empty() {
            out.push_str("  ");
            out.push_str(&detail);
        }
    }
    out
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// One line for `ev`, or `None` for events not worth one.
pub fn line(ev: &Event, color: bool) -> Option<String> {
    let l = match &ev.kind {
        EventKind::SessionMeta {
            session_id,
            cwd,
            version,
            git_branch,
        } => {
            let mut parts = vec![session_id.clone()];
            parts.extend(cwd.clone());
            parts.extend(git_branch.clone());
            parts.extend(version.as_ref().map(|v| format!("v{v}")));
            assemble(ev, "📂", "session", &parts.join(" · "), DIM, color)
        }
        EventKind::UserPrompt { text, images } => {
            let mut d = text.clone();
            if *images > 0 {
                d.push_str(&format!(" [+{}]", plural(*images, "image")));
            }
            if d.trim().is_empty() {
                return None;
            }
            assemble(ev, tool::EMOJI_PROMPT, "prompt", &d, BOLD, color)
        }
        EventKind::TeammateMessage { teammate, text, .. } => {
            let label = format!("from {teammate}");
            assemble(ev, tool::EMOJI_TEAMMATE, &label, text, BOLD, color)
        }
        EventKind::AssistantText { text, .. } => {
            if text.trim().is_empty() {
                return None;
            }
            assemble(ev, tool::EMOJI_TEXT, "", text, BLUE, color)
        }
        EventKind::Thinking { .. } | EventKind::Usage { .. } | EventKind::Title { .. } => {
            return None
        }
        EventKind::ToolUse { name, input, .. } => {
            let kind = ToolKind::of(name);
            let subject = tool::subject(name, input);
            assemble(ev, kind.emoji(), name, &subject, tool_color(kind), color)
        }
        EventKind::ToolResult {
            tool_name,
            content,
            is_error,
            ..
        } => {
            let name = tool_name.as_deref().unwrap_or("tool");
            let cleaned = discord::sanitize::clean_text(content);
            let cleaned = cleaned.trim();
            if *is_error {
                let first = cleaned
                    .lines()
                    .map(|l| l.trim_start_matches("<tool_use_error>"))
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                let first = first.trim_end_matches("</tool_use_error>");
                assemble(ev, tool::EMOJI_ERROR, name, first, RED, color)
            } else {
                let n = cleaned.lines().count();
                let d = if n == 0 {
                    "no output".to_owned()
                } else {
                    plural(n, "line")
                };
                assemble(ev, tool::EMOJI_OUTPUT, name, &d, GREEN, color)
            }
        }
        EventKind::Notice { notice, text } => {
            let (mark, label, code) = match notice {
                Notice::Command => ("⌨️", "command", DIM),
                Notice::Interrupted => ("⏹️", "interrupted", YELLOW),
                Notice::ApiError => ("❌", "API error", RED),
                Notice::CompactBoundary => ("🗜️", "compacted", DIM),
                Notice::CompactSummary => ("📋", "compaction summary", DIM),
                Notice::System => ("ℹ️", "system", DIM),
            };
            assemble(ev, mark, label, text, code, color)
        }
    };
    Some(l)
}

/// One line with the run's totals.
pub fn summary_line(stats: &Stats, color: bool) -> String {
    let took = stats
        .duration_secs(None)
        .map_or_else(|| "duration unknown".to_owned(), duration);
    let u = &stats.usage;
    let tokens = format!(
        "tokens in {} out {} cache write {} read {}",
        thousands(u.input_tokens),
        thousands(u.output_tokens),
        thousands(u.cache_creation_input_tokens),
        thousands(u.cache_read_input_tokens)
    );
    let tools = if stats.tools.is_empty() {
        "0 tool calls".to_owned()
    } else {
        format!(
            "{} tool calls ({})",
            stats.tool_calls(),
            cut(&tools_line(stats), 60)
        )
    };
    let errors = stats.errors();
    let errors_text = paint(
        &plural(errors as usize, "error"),
        if errors > 0 { RED } else { GREEN },
        color,
    );
    format!(
        "🏁 {} · {took} · {tokens} · cost {} · {tools} · {errors_text}",
        paint("done", BOLD, color),
        cut(&one_line(&cost_line(stats)), 80),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: EventKind) -> Event {
        Event {
            source: Source::Main,
            uuid: None,
            timestamp: Some("2025-01-01T12:01:02.000Z".into()),
            kind,
        }
    }

    #[test]
    fn tool_lines() {
        let call = ev(EventKind::ToolUse {
            id: "1".into(),
            name: "Bash".into(),
            input: json!({"command": "cargo test"}),
        });
        assert_eq!(
            line(&call, false).as_deref(),
            Some("12:01:02 ⚡ Bash  cargo test")
        );
        let out = ev(EventKind::ToolResult {
            tool_use_id: "1".into(),
            tool_name: Some("Bash".into()),
            content: "a\nb\nc\n".into(),
            is_error: false,
        });
        assert_eq!(
            line(&out, false).as_deref(),
            Some("12:01:02 ✅ Bash  3 lines")
        );
        let colored = line(&call, true).unwrap_or_default();
        assert!(colored.contains("\x1b[33mBash\x1b[0m"), "{colored:?}");
    }

    #[test]
    fn long_text_is_one_short_clean_line() {
        let text = format!("\x1b[31mred\x1b[0m\nline two\r\n\u{0}{}", "x".repeat(500));
        let l =
            line(&ev(EventKind::AssistantText { text, model: None }), false).unwrap_or_default();
        assert!(l.chars().count() <= LINE_CHARS, "{}", l.chars().count());
        assert!(l.starts_with("12:01:02 💭 red line two xxx"), "{l}");
        assert!(l.ends_with('…'));
        assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
    }

    #[test]
    fn bookkeeping_gets_no_line() {
        let usage = ev(EventKind::Usage {
            message_id: "m".into(),
            model: "x".into(),
            usage: Default::default(),
        });
        assert_eq!(line(&usage, false), None);
        assert_eq!(
            line(&ev(EventKind::Thinking { text: "t".into() }), false),
            None
        );
        assert_eq!(
            line(
                &ev(EventKind::AssistantText {
                    text: " ".into(),
                    model: None
                }),
                false
            ),
            None
        );
    }

    #[test]
    fn summary_line_has_the_totals() {
        let mut stats = Stats::default();
        stats.usage.input_tokens = 12_345;
        stats.cost_usd = Some(1.5);
        stats.tools.insert("Bash".into(), 2);
        stats.tool_errors = 1;
        let s = summary_line(&stats, false);
        assert!(s.contains("in 12,345") && s.contains("$1.50"), "{s}");
        assert!(
            s.contains("2 tool calls (Bash ×2)") && s.ends_with("1 error"),
            "{s}"
        );
    }
}
