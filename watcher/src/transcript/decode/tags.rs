//! Tagged user text: the `<command-name>`, `<bash-stdout>`, `<system-reminder>`,
//! `<teammate-message>` … markup the CLI wraps around what is not a typed prompt.

use std::sync::LazyLock;

use memchr::memmem;
use serde_json::Value;

use crate::transcript::EventKind;

/// Tags the CLI wraps around commands and status text.
const KNOWN_TAGS: &[&str] = &[
    "command-name",
    "command-message",
    "command-args",
    "command-contents",
    "local-command-stdout",
    "local-command-stderr",
    "local-command-caveat",
    "bash-input",
    "bash-stdout",
    "bash-stderr",
    "task-notification",
    "system-reminder",
    "user-prompt-submit-hook",
    "user-memory-input",
];

/// Tags whose content is for the model only.
const HIDDEN_TAGS: &[&str] = &["system-reminder", "local-command-caveat"];

/// The tag name at the start of `s` (`<name>` → `name`), if `s` opens with one.
fn leading_tag(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('<')?;
    let end = rest.find('>')?;
    let name = &rest[..end];
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    ok.then_some(name)
}

/// Whether (trimmed) user text is CLI status text rather than a prompt: it
/// opens with a known tag, or with any hyphenated tag that is closed later.
pub(super) fn is_tagged(s: &str) -> bool {
    let Some(name) = leading_tag(s) else {
        return false;
    };
    KNOWN_TAGS.contains(&name) || (name.contains('-') && s.contains(&format!("</{name}>")))
}

/// Splits text into top-level `<tag>inner</tag>` elements and loose text.
fn elements(s: &str) -> Vec<(Option<&str>, &str)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            out.push((None, rest));
            break;
        };
        if lt > 0 {
            out.push((None, &rest[..lt]));
            rest = &rest[lt..];
        }
        let Some(name) = leading_tag(rest) else {
            // A lone '<': loose text up to the next '<'.
            let next = rest[1..].find('<').map_or(rest.len(), |i| i + 1);
            out.push((None, &rest[..next]));
            rest = &rest[next..];
            continue;
        };
        let open_len = name.len() + 2;
        let close = format!("</{name}>");
        match rest[open_len..].find(&close) {
            Some(i) => {
                out.push((Some(name), &rest[open_len..open_len + i]));
                rest = &rest[open_len + i + close.len()..];
            }
            None => {
                out.push((Some(name), &rest[open_len..]));
                break;
            }
        }
    }
    out
}

/// What a `user` text starts with when it relays another agent's message.
const TEAMMATE_PREFIX: &str = "Another Claude session sent a message:";
const TEAMMATE_OPEN: &str = "<teammate-message";
const TEAMMATE_CLOSE: &str = "</teammate-message>";

/// The teammate messages of an agent team's relay text: `<teammate-message
/// teammate_id=".." color=".." summary="..">body</teammate-message>`
/// elements, optionally after [`TEAMMATE_PREFIX`]. `None` when the text is
/// not such a relay.
pub(super) fn teammate_messages(text: &str) -> Option<Vec<EventKind>> {
    let body = text
        .strip_prefix(TEAMMATE_PREFIX)
        .unwrap_or(text)
        .trim_start();
    if !body.starts_with(TEAMMATE_OPEN) {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.find(TEAMMATE_OPEN) {
        let after = &rest[at + TEAMMATE_OPEN.len()..];
        let Some(gt) = after.find('>') else { break };
        let attrs = &after[..gt];
        let inner_and_rest = &after[gt + 1..];
        let (inner, next) = match inner_and_rest.find(TEAMMATE_CLOSE) {
            Some(c) => (
                &inner_and_rest[..c],
                &inner_and_rest[c + TEAMMATE_CLOSE.len()..],
            ),
            None => (inner_and_rest, ""),
        };
        let teammate = attr(attrs, "teammate_id").unwrap_or("teammate");
        out.push(EventKind::TeammateMessage {
            teammate: teammate.to_owned(),
            summary: attr(attrs, "summary").map(str::to_owned),
            text: teammate_text(inner.trim()),
        });
        rest = next;
    }
    (!out.is_empty()).then_some(out)
}

/// `name="value"` in a tag's attribute text.
fn attr<'s>(attrs: &'s str, name: &str) -> Option<&'s str> {
    let mut rest = attrs;
    loop {
        let at = rest.find(name)?;
        let before_ok = at == 0 || rest[..at].ends_with(char::is_whitespace);
        let after = &rest[at + name.len()..];
        if let (true, Some(v)) = (before_ok, after.strip_prefix("=\"")) {
            return v.find('"').map(|end| &v[..end]).filter(|v| !v.is_empty());
        }
        rest = after;
    }
}

/// A teammate message body: text as sent, or for the team protocol's JSON
/// messages (`idle_notification`, `shutdown_request`, …) their type and the
/// first human-readable field.
fn teammate_text(body: &str) -> String {
    if body.starts_with('{') {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body) {
            if let Some(ty) = m.get("type").and_then(Value::as_str) {
                let detail = ["summary", "message", "content", "reason", "idleReason"]
                    .iter()
                    .find_map(|k| m.get(*k).and_then(Value::as_str))
                    .filter(|d| !d.trim().is_empty());
                return match detail {
                    Some(d) => format!("[{ty}] {d}"),
                    None => format!("[{ty}]"),
                };
            }
        }
    }
    body.to_owned()
}

/// Removes anything that looks like a tag (`<name>`, `</name>`), keeping text.
fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (tag, inner) in elements(s) {
        match tag {
            Some(t) if HIDDEN_TAGS.contains(&t) => {}
            Some(_) => {
                let inner = strip_tags(inner);
                let inner = inner.trim();
                if !inner.is_empty() {
                    if !out.is_empty() && !out.ends_with('\n') {
                        out.push('\n');
                    }
                    out.push_str(inner);
                }
            }
            None => out.push_str(inner),
        }
    }
    out.trim().to_owned()
}

/// A readable line for tagged CLI text: `/name args` for commands, `$ cmd` for
/// bash mode, the inner text otherwise. `None` when nothing is left to show.
pub(super) fn readable_tagged(s: &str) -> Option<String> {
    let els = elements(s);
    let find = |name: &str| {
        els.iter()
            .find(|(t, _)| *t == Some(name))
            .map(|(_, inner)| inner.trim())
    };
    if let Some(cmd) = find("command-name") {
        let mut text = String::new();
        if !cmd.starts_with('/') {
            text.push('/');
        }
        text.push_str(cmd);
        if let Some(args) = find("command-args").filter(|a| !a.is_empty()) {
            text.push(' ');
            text.push_str(args);
        }
        return Some(text);
    }
    let mut parts: Vec<String> = Vec::new();
    for (tag, inner) in &els {
        let piece = match tag {
            Some(t) if HIDDEN_TAGS.contains(t) => continue,
            Some("bash-input") => format!("$ {}", inner.trim()),
            // Leading spaces are meaningful in command output (`git status --short`).
            Some("bash-stdout" | "bash-stderr") => inner.trim_matches('\n').trim_end().to_owned(),
            Some(_) => strip_tags(inner),
            None => inner.trim().to_owned(),
        };
        if !piece.trim().is_empty() {
            parts.push(piece);
        }
    }
    let text = parts.join("\n");
    (!text.trim().is_empty()).then_some(text)
}

/// The text of a [`Notice::Command`](crate::transcript::Notice::Command): no
/// `<tag>` markers left, even those that were inside command arguments or
/// output, which [`readable_tagged`] keeps as written.
pub(super) fn command_text(s: &str) -> String {
    strip_markers(s)
}

/// `<tag>` / `</tag>` markers removed, their contents kept; other angle
/// brackets (`a < b`, `<@123>`, `<x y>`) kept.
pub(super) fn strip_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let name = after.strip_prefix('/').unwrap_or(after);
        let len = name
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(name.len());
        let is_tag = len > 0
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name[len..].starts_with('>');
        if is_tag {
            let consumed = (after.len() - name.len()) + len + 1;
            rest = &after[consumed..];
        } else {
            out.push('<');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A `system` record's text as shown: tagged CLI text made readable, plain
/// text trimmed; `None` when nothing is left to show.
pub(super) fn status_text(content: &str) -> Option<String> {
    let content = content.trim();
    let text = if is_tagged(content) {
        readable_tagged(content)?
    } else {
        content.to_owned()
    };
    (!text.is_empty()).then_some(text)
}

/// Cuts `<system-reminder>…</system-reminder>` blocks that start a line (the
/// harness appends them to tool results and prompts; they are for the model).
pub(super) fn strip_system_reminders(text: String) -> String {
    const OPEN: &str = "<system-reminder>";
    const CLOSE: &str = "</system-reminder>";
    // Built once: `memmem::find` would build (and rank) a searcher per call,
    // and this runs on every tool result and prompt.
    static FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(OPEN.as_bytes()));
    if FINDER.find(text.as_bytes()).is_none() {
        return text;
    }
    let s = text.as_str();
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut removed = false;
    while let Some(i) = rest.find(OPEN) {
        let at_line_start =
            i == 0 && (out.is_empty() || out.ends_with('\n')) || rest[..i].ends_with('\n');
        let close = rest[i..].find(CLOSE).map(|c| i + c + CLOSE.len());
        match (at_line_start, close) {
            (true, Some(end)) => {
                out.push_str(&rest[..i]);
                rest = &rest[end..];
                rest = rest.strip_prefix('\n').unwrap_or(rest);
                removed = true;
            }
            _ => {
                out.push_str(&rest[..i + OPEN.len()]);
                rest = &rest[i + OPEN.len()..];
            }
        }
    }
    out.push_str(rest);
    if removed {
        let keep = out.trim_end().len();
        out.truncate(keep);
    }
    out
}
