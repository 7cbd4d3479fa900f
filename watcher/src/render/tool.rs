//! The emoji and colour scheme, and what each tool's call is "about".
//!
//! Shared by the embed renderer and the console so that both speak the same
//! visual language (DESIGN.md §3, render).

use serde_json::Value;

pub const COLOR_BASH: u32 = 0xF39C12;
pub const COLOR_EDIT: u32 = 0xE67E22;
pub const COLOR_READ: u32 = 0x7F8C8D;
pub const COLOR_WEB: u32 = 0x16A085;
pub const COLOR_OTHER_TOOL: u32 = 0x95A5A6;
pub const COLOR_TEXT: u32 = 0x3498DB;
pub const COLOR_ERROR: u32 = 0xE74C3C;
pub const COLOR_OUTPUT: u32 = 0x27AE60;
pub const COLOR_THINKING: u32 = 0x9B59B6;
pub const COLOR_PROMPT: u32 = 0x1ABC9C;
pub const COLOR_TEAMMATE: u32 = 0x8E44AD;
pub const COLOR_NOTICE: u32 = 0x95A5A6;
pub const COLOR_RUN: u32 = 0x5865F2;

pub const EMOJI_TEXT: &str = "💭";
pub const EMOJI_THINKING: &str = "🧠";
pub const EMOJI_PROMPT: &str = "👤";
pub const EMOJI_TEAMMATE: &str = "🤝";
pub const EMOJI_OUTPUT: &str = "✅";
pub const EMOJI_ERROR: &str = "❌";

/// Families of tools that share an emoji and a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    Bash,
    /// Write / Edit / MultiEdit (and NotebookEdit).
    Edit,
    /// Read / Glob / Grep.
    Read,
    /// WebSearch / WebFetch.
    Web,
    /// Everything else: Task/Agent, TodoWrite, `mcp__server__tool`, unknown tools.
    Other,
}

impl ToolKind {
    pub fn of(name: &str) -> ToolKind {
        match name {
            "Bash" | "BashOutput" => ToolKind::Bash,
            "Write" | "Edit" | "MultiEdit" | "NotebookEdit" => ToolKind::Edit,
            "Read" | "Glob" | "Grep" | "LS" => ToolKind::Read,
            "WebSearch" | "WebFetch" => ToolKind::Web,
            _ => ToolKind::Other,
        }
    }

    pub fn emoji(self) -> &'static str {
        match self {
            ToolKind::Bash => "⚡",
            ToolKind::Edit => "📝",
            ToolKind::Read => "👁️",
            ToolKind::Web => "🔍",
            ToolKind::Other => "🔧",
        }
    }

    pub fn color(self) -> u32 {
        match self {
            ToolKind::Bash => COLOR_BASH,
            ToolKind::Edit => COLOR_EDIT,
            ToolKind::Read => COLOR_READ,
            ToolKind::Web => COLOR_WEB,
            ToolKind::Other => COLOR_OTHER_TOOL,
        }
    }

    /// Tools whose successful output is routine (file contents, "file updated",
    /// match lists): without parity only a one-line summary of it is posted.
    pub fn quiet_output(name: &str) -> bool {
        matches!(
            name,
            "Read"
                | "Write"
                | "Edit"
                | "MultiEdit"
                | "NotebookEdit"
                | "Glob"
                | "Grep"
                | "LS"
                | "TodoWrite"
        )
    }
}

/// A string argument of a tool input.
pub fn arg<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One line saying what a call does: the command, the path, the pattern, the
/// query… (raw: the caller sanitises and cuts).
pub fn subject(name: &str, input: &Value) -> String {
    let first = |keys: &[&str]| keys.iter().find_map(|k| arg(input, k)).map(str::to_owned);
    let s = match name {
        "Bash" => first(&["command"]),
        "Read" | "Write" | "Edit" | "MultiEdit" => first(&["file_path", "path"]),
        "NotebookEdit" => first(&["notebook_path", "file_path"]),
        "Glob" | "Grep" => arg(input, "pattern").map(|p| match arg(input, "path") {
            Some(path) => format!("{p}  in {path}"),
            None => p.to_owned(),
        }),
        "WebFetch" => first(&["url"]),
        "WebSearch" => first(&["query"]),
        "Task" | "Agent" => first(&["description", "subagent_type", "prompt"]),
        "TodoWrite" => input
            .get("todos")
            .and_then(Value::as_array)
            .map(|t| format!("{} todos", t.len())),
        _ => None,
    };
    s.or_else(|| {
        // Unknown and MCP tools: the first string argument, if any.
        input
            .as_object()
            .and_then(|o| o.values().find_map(Value::as_str).map(str::to_owned))
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scheme() {
        assert_eq!(ToolKind::of("Bash").emoji(), "⚡");
        assert_eq!(ToolKind::of("Bash").color(), 0xF39C12);
        assert_eq!(ToolKind::of("MultiEdit").emoji(), "📝");
        assert_eq!(ToolKind::of("Grep").emoji(), "👁️");
        assert_eq!(ToolKind::of("WebFetch").emoji(), "🔍");
        assert_eq!(ToolKind::of("mcp__github__create_issue").emoji(), "🔧");
        assert_eq!(ToolKind::of("Task").emoji(), "🔧");
        assert_eq!(
            ToolKind::of("bash"),
            ToolKind::Other,
            "names are case-sensitive"
        );
    }

    #[test]
    fn subjects() {
        assert_eq!(
            subject("Bash", &json!({"command": "cargo test"})),
            "cargo test"
        );
        assert_eq!(subject("Read", &json!({"file_path": "/a/b.rs"})), "/a/b.rs");
        assert_eq!(
            subject("Grep", &json!({"pattern": "fn main", "path": "src"})),
            "fn main  in src"
        );
        assert_eq!(subject("mcp__x__y", &json!({"q": "hi", "n": 1})), "hi");
        assert_eq!(subject("Bash", &json!("not an object")), "");
    }
}
