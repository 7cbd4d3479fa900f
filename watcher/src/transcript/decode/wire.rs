//! The record as the decoder reads it: every field of every record kind it
//! uses, declared with the lenient types.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::lenient::{Fill, LBool, LStr, Obj, LF64, LU64};
use crate::transcript::Usage;

/// `message.content` (and tool-result content): a string or an array of blocks.
#[derive(Default)]
pub(super) enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
    #[default]
    None,
}

impl<'a> Content<'a> {
    /// Prompt text (text blocks joined by newlines) and the number of images.
    pub(super) fn prompt(&self) -> (String, usize) {
        match self {
            Content::Text(t) => (t.as_ref().to_owned(), 0),
            Content::Blocks(blocks) => {
                let mut text = String::new();
                let mut images = 0;
                for b in blocks {
                    match b.ty.get() {
                        Some("text") => {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(b.text.get().unwrap_or(""));
                        }
                        Some("image") => images += 1,
                        _ => {}
                    }
                }
                (text, images)
            }
            Content::None => (String::new(), 0),
        }
    }

    /// [`prompt`](Self::prompt), moving a lone string instead of copying it.
    pub(super) fn into_prompt(self) -> (String, usize) {
        match self {
            Content::Text(t) => (t.into_owned(), 0),
            other => other.prompt(),
        }
    }

    /// [`result_text`](Self::result_text), moving a lone string.
    pub(super) fn into_result_text(self) -> String {
        match self {
            Content::Text(t) => t.into_owned(),
            other => other.result_text(),
        }
    }

    /// Plain text of a string field (`system.content`, queue `content`).
    pub(super) fn text(&self) -> String {
        self.prompt().0
    }

    /// Tool-result content: text blocks joined, images as `[image]`.
    pub(super) fn result_text(&self) -> String {
        match self {
            Content::Text(t) => t.as_ref().to_owned(),
            Content::Blocks(blocks) => {
                let mut parts: Vec<&str> = Vec::new();
                for b in blocks {
                    match b.ty.get() {
                        Some("text") => parts.push(b.text.get().unwrap_or("")),
                        Some("image") => parts.push("[image]"),
                        _ => {}
                    }
                }
                parts.join("\n")
            }
            Content::None => String::new(),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content blocks")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Content::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut blocks = Vec::new();
                while let Some(Obj(block)) = seq.next_element::<Obj<Block<'a>>>()? {
                    blocks.extend(block);
                }
                Ok(Content::Blocks(blocks))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Content::None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            scalars_read_as!(Content::None);
        }
        d.deserialize_any(V(PhantomData))
    }
}

lenient_struct! {
    /// One content block; which fields are set depends on `type`.
    struct Block<'a> {
        "type" => ty: LStr<'a>,
        "text" => text: LStr<'a>,
        "thinking" => thinking: LStr<'a>,
        "id" => id: LStr<'a>,
        "name" => name: LStr<'a>,
        "input" => input: Option<Value>,
        "tool_use_id" => tool_use_id: LStr<'a>,
        "content" => content: Content<'a>,
        "is_error" => is_error: LBool,
        "from" => from: Option<Box<Value>>,
        "to" => to: Option<Box<Value>>,
    }
}

lenient_struct! {
    struct Message<'a> {
        "id" => id: LStr<'a>,
        "model" => model: LStr<'a>,
        "content" => content: Content<'a>,
        "usage" => usage: Obj<RawUsage>,
    }
}

lenient_struct! {
    struct RawUsage {
        "input_tokens" => input_tokens: LU64,
        "output_tokens" => output_tokens: LU64,
        "cache_creation_input_tokens" => cache_creation_input_tokens: LU64,
        "cache_read_input_tokens" => cache_read_input_tokens: LU64,
    }
}

impl RawUsage {
    pub(super) fn to_usage(&self) -> Usage {
        Usage {
            input_tokens: self.input_tokens.get().unwrap_or(0),
            output_tokens: self.output_tokens.get().unwrap_or(0),
            cache_creation_input_tokens: self.cache_creation_input_tokens.get().unwrap_or(0),
            cache_read_input_tokens: self.cache_read_input_tokens.get().unwrap_or(0),
        }
    }
}

lenient_struct! {
    struct Attachment<'a> {
        "type" => ty: LStr<'a>,
        "commandMode" => command_mode: LStr<'a>,
        "prompt" => prompt: Content<'a>,
        "content" => content: Content<'a>,
    }
}

lenient_struct! {
    /// Every top-level field the decoder reads, of every record kind. Only
    /// `sessionId` is mapped, never `session_id`: some lines carry both, with
    /// different values.
    struct Record<'a> {
        "type" => ty: LStr<'a>,
        "subtype" => subtype: LStr<'a>,
        "uuid" => uuid: LStr<'a>,
        "sessionId" => session_id: LStr<'a>,
        "timestamp" => timestamp: LStr<'a>,
        "cwd" => cwd: LStr<'a>,
        "version" => version: LStr<'a>,
        "gitBranch" => git_branch: LStr<'a>,
        "isSidechain" => is_sidechain: LBool,
        "agentId" => agent_id: LStr<'a>,
        "isMeta" => is_meta: LBool,
        "isCompactSummary" => is_compact_summary: LBool,
        "isApiErrorMessage" => is_api_error_message: LBool,
        "apiErrorStatus" => api_error_status: LU64,
        "requestId" => request_id: LStr<'a>,
        "message" => message: Obj<Message<'a>>,
        /// `system.content`, `queue-operation.content`.
        "content" => content: Content<'a>,
        "compactMetadata" => compact_metadata: Option<Box<Value>>,
        "microcompactMetadata" => microcompact_metadata: Option<Box<Value>>,
        "durationMs" => duration_ms: LF64,
        "error" => error: Option<Box<Value>>,
        "retryAttempt" => retry_attempt: LU64,
        "maxRetries" => max_retries: LU64,
        "retryInMs" => retry_in_ms: LF64,
        "hookErrors" => hook_errors: Option<Box<Value>>,
        "attachment" => attachment: Obj<Box<Attachment<'a>>>,
        "summary" => summary: LStr<'a>,
        "aiTitle" => ai_title: LStr<'a>,
        "customTitle" => custom_title: LStr<'a>,
        "operation" => operation: LStr<'a>,
    }
}
