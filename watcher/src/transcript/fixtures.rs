//! Builders for transcript lines in the real (v2.1) format, for tests, benches
//! and e2e scenarios. Each function returns one JSONL line without its newline.
//!
//! Records share one session ([`SESSION_ID`], [`CWD`], [`VERSION`],
//! [`GIT_BRANCH`]) and a fixed timestamp; `parentUuid` is null (the decoder
//! renders in file order and never follows the chain). Use [`with_fields`] to
//! set anything else (`isSidechain`, `agentId`, `parentUuid`, another `cwd` …).

use serde_json::{json, Map, Value};

use super::{TitleSource, Usage};

pub const SESSION_ID: &str = "5b0c8a9e-3f1d-4c2b-9a77-0d1e2f3a4b5c";
pub const CWD: &str = "/workspace";
pub const VERSION: &str = "2.1.140";
pub const GIT_BRANCH: &str = "main";
pub const MODEL: &str = "claude-opus-4-6";
pub const TIMESTAMP: &str = "2026-03-04T09:15:02.128Z";

/// A usage block with the four counted fields.
pub fn usage(input: u64, output: u64, cache_write: u64, cache_read: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cache_creation_input_tokens: cache_write,
        cache_read_input_tokens: cache_read,
    }
}

/// The envelope fields of a chain record.
fn envelope(ty: &str, uuid: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("parentUuid".into(), Value::Null);
    m.insert("isSidechain".into(), json!(false));
    m.insert("userType".into(), json!("external"));
    m.insert("cwd".into(), json!(CWD));
    m.insert("sessionId".into(), json!(SESSION_ID));
    m.insert("version".into(), json!(VERSION));
    m.insert("gitBranch".into(), json!(GIT_BRANCH));
    m.insert("type".into(), json!(ty));
    m.insert("uuid".into(), json!(uuid));
    m.insert("timestamp".into(), json!(TIMESTAMP));
    m
}

fn line(m: Map<String, Value>) -> String {
    Value::Object(m).to_string()
}

fn usage_json(u: Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0
        },
        "output_tokens": u.output_tokens,
        "service_tier": "standard"
    })
}

/// Adds or replaces top-level fields of `line` (an object given as JSON).
/// Returns `line` unchanged when either is not a JSON object.
pub fn with_fields(line: &str, fields: Value) -> String {
    match (serde_json::from_str::<Value>(line), fields) {
        (Ok(Value::Object(mut m)), Value::Object(f)) => {
            m.extend(f);
            Value::Object(m).to_string()
        }
        _ => line.to_owned(),
    }
}

/// A user record with string content: a prompt typed by the human.
pub fn user_prompt(uuid: &str, text: &str) -> String {
    user_content(uuid, json!(text))
}

/// A user record with any `message.content` (string or array of blocks).
pub fn user_content(uuid: &str, content: Value) -> String {
    let mut m = envelope("user", uuid);
    m.insert(
        "message".into(),
        json!({"role": "user", "content": content}),
    );
    line(m)
}

/// An assistant line carrying one content block.
pub fn assistant_block(uuid: &str, msg_id: &str, block: Value, usage: Usage) -> String {
    let mut m = envelope("assistant", uuid);
    m.insert(
        "message".into(),
        json!({
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [block],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage_json(usage),
        }),
    );
    m.insert("requestId".into(), json!(format!("req_{msg_id}")));
    line(m)
}

/// An assistant text block (one line of response `msg_id`).
pub fn assistant_text(uuid: &str, msg_id: &str, text: &str, usage: Usage) -> String {
    assistant_block(uuid, msg_id, json!({"type": "text", "text": text}), usage)
}

/// An assistant thinking block.
pub fn thinking(uuid: &str, msg_id: &str, text: &str, usage: Usage) -> String {
    assistant_block(
        uuid,
        msg_id,
        json!({"type": "thinking", "thinking": text, "signature": "EuYBCkYIBxgCKkBfixture"}),
        usage,
    )
}

/// An assistant `tool_use` block.
pub fn tool_use(
    uuid: &str,
    msg_id: &str,
    tool_id: &str,
    name: &str,
    input: Value,
    usage: Usage,
) -> String {
    assistant_block(
        uuid,
        msg_id,
        json!({"type": "tool_use", "id": tool_id, "name": name, "input": input}),
        usage,
    )
}

/// A user record carrying one `tool_result`. `is_error: None` leaves the field
/// out (it then means false).
pub fn tool_result(uuid: &str, tool_id: &str, content: &str, is_error: Option<bool>) -> String {
    let mut block = json!({"tool_use_id": tool_id, "type": "tool_result", "content": content});
    if let (Some(e), Some(obj)) = (is_error, block.as_object_mut()) {
        obj.insert("is_error".into(), json!(e));
    }
    let mut m = envelope("user", uuid);
    m.insert(
        "message".into(),
        json!({"role": "user", "content": [block]}),
    );
    let tool_use_result = if is_error == Some(true) {
        json!(format!("Error: {content}"))
    } else {
        json!({"stdout": content, "stderr": "", "interrupted": false, "isImage": false})
    };
    m.insert("toolUseResult".into(), tool_use_result);
    line(m)
}

/// A title metadata line (`summary`, `ai-title` or `custom-title`).
pub fn title(source: TitleSource, text: &str) -> String {
    match source {
        TitleSource::Summary => json!({"type": "summary", "summary": text, "leafUuid": null}),
        TitleSource::AiTitle => {
            json!({"type": "ai-title", "aiTitle": text, "sessionId": SESSION_ID})
        }
        TitleSource::CustomTitle => {
            json!({"type": "custom-title", "customTitle": text, "sessionId": SESSION_ID})
        }
    }
    .to_string()
}

/// A `system` record with `subtype` and extra fields.
pub fn system(uuid: &str, subtype: &str, extra: Value) -> String {
    let mut m = envelope("system", uuid);
    m.insert("subtype".into(), json!(subtype));
    m.insert("isMeta".into(), json!(false));
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    line(m)
}

/// A `compact_boundary` system record.
pub fn compact_boundary(uuid: &str, trigger: &str, pre_tokens: u64) -> String {
    system(
        uuid,
        "compact_boundary",
        json!({
            "content": "Conversation compacted",
            "level": "info",
            "compactMetadata": {"trigger": trigger, "preTokens": pre_tokens}
        }),
    )
}

/// The compaction summary user record that follows a boundary.
pub fn compact_summary(uuid: &str, text: &str) -> String {
    with_fields(
        &user_prompt(uuid, text),
        json!({"isCompactSummary": true, "isVisibleInTranscriptOnly": true}),
    )
}

/// A `turn_duration` system record.
pub fn turn_duration(uuid: &str, ms: u64) -> String {
    system(uuid, "turn_duration", json!({"durationMs": ms}))
}

/// A synthetic assistant API-error row (`model: "<synthetic>"`, zero usage).
pub fn api_error_row(uuid: &str, text: &str) -> String {
    let mut m = envelope("assistant", uuid);
    m.insert(
        "message".into(),
        json!({
            "id": uuid, "model": "<synthetic>", "role": "assistant", "type": "message",
            "stop_reason": "stop_sequence", "stop_sequence": "",
            "usage": usage_json(Usage::default()),
            "content": [{"type": "text", "text": text}]
        }),
    );
    m.insert("error".into(), json!("server_error"));
    m.insert("isApiErrorMessage".into(), json!(true));
    m.insert("apiErrorStatus".into(), json!(529));
    line(m)
}

/// A `queue-operation` metadata line (`enqueue`, `dequeue`, `remove` …).
pub fn queue_operation(operation: &str, text: &str) -> String {
    json!({
        "type": "queue-operation", "operation": operation, "timestamp": TIMESTAMP,
        "sessionId": SESSION_ID, "content": text
    })
    .to_string()
}

/// A `queued_command` attachment: a prompt typed while the agent was busy.
pub fn queued_command(uuid: &str, text: &str) -> String {
    let mut m = envelope("attachment", uuid);
    m.insert(
        "attachment".into(),
        json!({"type": "queued_command", "prompt": text, "commandMode": "prompt"}),
    );
    line(m)
}

/// The text agent teams deliver a teammate's message with (a `user` record's
/// content): "Another Claude session sent a message:" and one
/// `<teammate-message>` element.
pub fn teammate_text(teammate: &str, color: &str, body: &str) -> String {
    format!(
        "Another Claude session sent a message:\n<teammate-message teammate_id=\"{teammate}\" color=\"{color}\">\n{body}\n</teammate-message>"
    )
}

/// A `user` record relaying a teammate's message (agent teams).
pub fn teammate_message(uuid: &str, teammate: &str, color: &str, body: &str) -> String {
    user_prompt(uuid, &teammate_text(teammate, color, body))
}

/// Steering input as several CLI versions record it: only a
/// `queue-operation` `remove` carrying the text (no enqueue, no attachment).
pub fn steering_remove(text: &str) -> String {
    with_fields(
        &queue_operation("remove", text),
        json!({"reason": "absorbed_mid_turn"}),
    )
}

/// A user record of the wrong shape: `message` is a string, not an object.
pub fn user_with_message_string(uuid: &str, text: &str) -> String {
    let mut m = envelope("user", uuid);
    m.insert("message".into(), json!(text));
    line(m)
}

/// An assistant record whose `message.content` key is misspelt.
pub fn assistant_with_misspelt_content(uuid: &str, text: &str) -> String {
    let mut m = envelope("assistant", uuid);
    m.insert(
        "message".into(),
        json!({"role": "assistant", "model": MODEL, "contnet": [{"type": "text", "text": text}]}),
    );
    line(m)
}
