//! The typed events the watcher makes of transcript records.
//!
//! A transcript line is an open, unstable format (see TRANSCRIPT_FORMAT.md); this
//! model is the closed, stable vocabulary the rest of the pipeline speaks. The
//! decoder maps one line to zero or more [`Event`]s; the renderer maps events to
//! Discord embeds; the checkpoint only needs each line's [`LinePos`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where a line sits in which file. Events carry the position of the line they
/// came from so that delivery acknowledgements can advance the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinePos {
    /// The followed file (session file or subagent file), as an absolute path.
    pub file: Arc<str>,
    /// Byte offset of the first byte of the line.
    pub start: u64,
    /// Byte offset just after the line's newline: where reading resumes.
    pub end: u64,
}

/// Who produced a record: the main agent or one of its subagents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    #[default]
    Main,
    Subagent {
        /// `agentId` of the subagent, when known.
        agent_id: Option<String>,
        /// `description` from the agent's `.meta.json`, when present.
        description: Option<String>,
        /// The workflow run the agent belongs to: the `<run>` of
        /// `subagents/workflows/<run>/agent-<id>.jsonl`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workflow: Option<String>,
    },
}

/// One thing that happened in the session, ready to be rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub source: Source,
    /// The record's `uuid`; `None` for metadata lines.
    pub uuid: Option<String>,
    /// The record's `timestamp` as written (ISO-8601); informational only.
    pub timestamp: Option<String>,
    pub kind: EventKind,
}

/// The closed set of event kinds. Everything the format adds later is either
/// mapped onto one of these or skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// Session identity, emitted once per session file when first seen (and
    /// again when `cwd`/`version`/`gitBranch` change).
    SessionMeta {
        session_id: String,
        cwd: Option<String>,
        version: Option<String>,
        git_branch: Option<String>,
    },
    /// A prompt typed by the human (string content, or text blocks joined).
    UserPrompt { text: String, images: usize },
    /// A message from another agent of an agent team (`<teammate-message>`),
    /// delivered to this session as a `user` record: not the operator's prompt.
    TeammateMessage {
        /// `teammate_id` of the sender.
        teammate: String,
        /// `summary` the sender gave, when present.
        summary: Option<String>,
        text: String,
    },
    /// Text written by the assistant.
    AssistantText { text: String, model: Option<String> },
    /// A thinking block (often empty text in recent versions).
    Thinking { text: String },
    /// The assistant called a tool.
    ToolUse {
        id: String,
        name: String,
        input: serde_json::Value,
    },
    /// A tool's result. `tool_name` is filled from the matching `ToolUse` when
    /// the decoder saw it.
    ToolResult {
        tool_use_id: String,
        tool_name: Option<String>,
        content: String,
        is_error: bool,
    },
    /// Status lines that are not chat: commands, interruptions, compaction,
    /// API errors, turn ends.
    Notice { notice: Notice, text: String },
    /// Token usage growth of one API response. The decoder emits only the
    /// increase over what it already reported for `message_id` (usage is
    /// repeated on every line of a response and may grow), so summing all
    /// `Usage` events gives the correct totals.
    Usage {
        message_id: String,
        model: String,
        usage: Usage,
    },
    /// A title for the run (`custom-title` > `ai-title` > `summary`).
    Title { title: String, source: TitleSource },
}

impl EventKind {
    /// Every kind's [`label`](Self::label), for pre-registering metric labels.
    pub const LABELS: [&'static str; 10] = [
        "session_meta",
        "user_prompt",
        "teammate_message",
        "assistant_text",
        "thinking",
        "tool_use",
        "tool_result",
        "notice",
        "usage",
        "title",
    ];

    /// The kind's name: its `kind` tag in JSON and the `kind` label of
    /// `watcher_events_processed_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::SessionMeta { .. } => "session_meta",
            Self::UserPrompt { .. } => "user_prompt",
            Self::TeammateMessage { .. } => "teammate_message",
            Self::AssistantText { .. } => "assistant_text",
            Self::Thinking { .. } => "thinking",
            Self::ToolUse { .. } => "tool_use",
            Self::ToolResult { .. } => "tool_result",
            Self::Notice { .. } => "notice",
            Self::Usage { .. } => "usage",
            Self::Title { .. } => "title",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// `<command-name>` and other tagged user text.
    Command,
    /// `[Request interrupted by user]`.
    Interrupted,
    /// Synthetic assistant API error rows and `system` `api_error`.
    ApiError,
    /// `compact_boundary` / `microcompact_boundary`.
    CompactBoundary,
    /// The compaction summary user record.
    CompactSummary,
    /// Any other `system` subtype worth a line.
    System,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TitleSource {
    Summary,
    AiTitle,
    CustomTitle,
}

/// Token counts of one API response (or a delta of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Field-wise saturating difference `self - earlier`.
    pub fn saturating_sub(self, earlier: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_sub(earlier.input_tokens),
            output_tokens: self.output_tokens.saturating_sub(earlier.output_tokens),
            cache_creation_input_tokens: self
                .cache_creation_input_tokens
                .saturating_sub(earlier.cache_creation_input_tokens),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .saturating_sub(earlier.cache_read_input_tokens),
        }
    }

    /// Field-wise maximum: usage repeated across lines of one response only grows.
    pub fn max(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.max(other.input_tokens),
            output_tokens: self.output_tokens.max(other.output_tokens),
            cache_creation_input_tokens: self
                .cache_creation_input_tokens
                .max(other.cache_creation_input_tokens),
            cache_read_input_tokens: self
                .cache_read_input_tokens
                .max(other.cache_read_input_tokens),
        }
    }

    /// Field-wise sum, for session totals.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + other.input_tokens,
            output_tokens: self.output_tokens + other.output_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens
                + other.cache_creation_input_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens + other.cache_read_input_tokens,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// One event of every kind, so a label can be checked against the JSON tag.
    fn one_of_each() -> Vec<EventKind> {
        let text = String::new;
        vec![
            EventKind::SessionMeta {
                session_id: text(),
                cwd: None,
                version: None,
                git_branch: None,
            },
            EventKind::UserPrompt {
                text: text(),
                images: 0,
            },
            EventKind::TeammateMessage {
                teammate: text(),
                summary: None,
                text: text(),
            },
            EventKind::AssistantText {
                text: text(),
                model: None,
            },
            EventKind::Thinking { text: text() },
            EventKind::ToolUse {
                id: text(),
                name: text(),
                input: serde_json::Value::Null,
            },
            EventKind::ToolResult {
                tool_use_id: text(),
                tool_name: None,
                content: text(),
                is_error: false,
            },
            EventKind::Notice {
                notice: Notice::System,
                text: text(),
            },
            EventKind::Usage {
                message_id: text(),
                model: text(),
                usage: Usage::default(),
            },
            EventKind::Title {
                title: text(),
                source: TitleSource::Summary,
            },
        ]
    }

    #[test]
    fn every_kind_has_its_json_tag_as_label_and_is_pre_registered() {
        let kinds = one_of_each();
        let labels: Vec<&str> = kinds.iter().map(EventKind::label).collect();
        assert_eq!(labels, EventKind::LABELS);
        for kind in &kinds {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json["kind"], kind.label());
        }
    }
}
