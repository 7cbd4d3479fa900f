//! Strict checks of request bodies against Discord's documented limits, with
//! Discord's own error shape:
//!
//! ```json
//! {"code": 50035, "message": "Invalid Form Body",
//!  "errors": {"embeds": {"0": {"title": {"_errors": [
//!      {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 256 or fewer in length."}]}}}}}
//! ```
//!
//! Every violation is reported (not only the first), and each carries a short
//! `reason` (`content_length`, `embed_title_length`, …) that the stats count.
//! Lengths are counted in chars, as Discord documents. Unknown fields are
//! accepted, as Discord does.

use serde_json::{json, Map, Value};

/// Discord's limits (developer docs, "Embed Limits" and "Execute Webhook").
pub mod limits {
    pub const CONTENT: usize = 2000;
    pub const EMBEDS: usize = 10;
    pub const TITLE: usize = 256;
    pub const DESCRIPTION: usize = 4096;
    pub const FIELDS: usize = 25;
    pub const FIELD_NAME: usize = 256;
    pub const FIELD_VALUE: usize = 1024;
    pub const FOOTER: usize = 2048;
    pub const AUTHOR: usize = 256;
    pub const EMBEDS_TOTAL: usize = 6000;
    pub const USERNAME: usize = 80;
    pub const ATTACHMENTS: usize = 10;
    pub const ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;
    pub const MAX_COLOR: u64 = 0xFF_FFFF;
    pub const URL: usize = 2048;
    pub const CHANNEL_NAME: usize = 100;
    /// Channels under one category (threads not counted).
    pub const CHANNELS_PER_CATEGORY: usize = 50;
    /// Channels in one guild, categories included, threads not.
    pub const CHANNELS_PER_GUILD: usize = 500;
    pub const WEBHOOKS_PER_CHANNEL: usize = 15;
    pub const WEBHOOK_NAME: usize = 80;
    pub const COMMANDS: usize = 100;
    pub const COMMAND_NAME: usize = 32;
    pub const COMMAND_DESCRIPTION: usize = 100;
    pub const COMMAND_OPTIONS: usize = 25;
}

/// Discord's JSON error codes used here.
pub mod codes {
    pub const UNKNOWN_CHANNEL: u32 = 10003;
    pub const UNKNOWN_GUILD: u32 = 10004;
    pub const UNKNOWN_WEBHOOK: u32 = 10015;
    pub const CHANNEL_WRITE_RATE_LIMIT: u32 = 20028;
    pub const MAX_WEBHOOKS: u32 = 30007;
    pub const MAX_GUILD_CHANNELS: u32 = 30013;
    pub const REQUEST_TOO_LARGE: u32 = 40005;
    pub const EMPTY_MESSAGE: u32 = 50006;
    pub const INVALID_FORM_BODY: u32 = 50035;
    pub const THREAD_LOCKED: u32 = 50083;
    pub const INVALID_JSON: u32 = 50109;
}

/// One rule broken, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path segments, e.g. `["embeds", "0", "title"]`.
    pub path: Vec<String>,
    /// Discord's error code string, e.g. `BASE_TYPE_MAX_LENGTH`.
    pub code: &'static str,
    pub message: String,
    /// The stats label, e.g. `embed_title_length`.
    pub reason: &'static str,
}

/// A refused body: what the 400 says and why, for the stats.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: u32,
    pub message: String,
    pub violations: Vec<Violation>,
    /// Reasons of a rejection without violations (e.g. `empty_message`).
    pub reason: Option<&'static str>,
}

impl Rejection {
    /// A rejection without per-field errors, e.g. `50006 Cannot send an empty message`.
    pub fn plain(code: u32, message: impl Into<String>, reason: &'static str) -> Self {
        Self {
            code,
            message: message.into(),
            violations: Vec::new(),
            reason: Some(reason),
        }
    }

    /// `50035 Invalid Form Body` with these violations.
    pub fn form(violations: Vec<Violation>) -> Self {
        Self {
            code: codes::INVALID_FORM_BODY,
            message: "Invalid Form Body".into(),
            violations,
            reason: None,
        }
    }

    /// Distinct stats reasons, in first-seen order.
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.reason.into_iter().collect();
        for v in &self.violations {
            if !out.contains(&v.reason) {
                out.push(v.reason);
            }
        }
        out
    }

    /// Discord's JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({"code": self.code, "message": self.message});
        if !self.violations.is_empty() {
            let mut errors = Map::new();
            for v in &self.violations {
                insert(
                    &mut errors,
                    &v.path,
                    json!({"code": v.code, "message": v.message}),
                );
            }
            body["errors"] = Value::Object(errors);
        }
        body
    }
}

fn insert(map: &mut Map<String, Value>, path: &[String], error: Value) {
    let Some((first, rest)) = path.split_first() else {
        let list = map
            .entry("_errors")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = list {
            list.push(error);
        }
        return;
    };
    let child = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    if let Value::Object(child) = child {
        insert(child, rest, error);
    }
}

/// Collects violations while walking a body.
#[derive(Debug, Default)]
pub struct Checker {
    pub violations: Vec<Violation>,
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn path(at: &[&str], leaf: &str) -> Vec<String> {
    at.iter()
        .map(|s| (*s).to_owned())
        .chain((!leaf.is_empty()).then(|| leaf.to_owned()))
        .collect()
}

impl Checker {
    pub fn push(
        &mut self,
        path: Vec<String>,
        code: &'static str,
        message: String,
        reason: &'static str,
    ) {
        self.violations.push(Violation {
            path,
            code,
            message,
            reason,
        });
    }

    /// `obj[key]` as an optional string; `null` is absent.
    pub fn string<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        at: &[&str],
        key: &str,
        reason: &'static str,
    ) -> Option<&'v str> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.push(
                    path(at, key),
                    "BASE_TYPE_STRING",
                    format!("Could not interpret \"{other}\" as string."),
                    reason,
                );
                None
            }
        }
    }

    /// A string of at most `max` chars.
    pub fn max_len(
        &mut self,
        obj: &Map<String, Value>,
        at: &[&str],
        key: &str,
        max: usize,
        reason: &'static str,
    ) -> usize {
        let Some(s) = self.string(obj, at, key, "type") else {
            return 0;
        };
        let n = chars(s);
        if n > max {
            self.push(
                path(at, key),
                "BASE_TYPE_MAX_LENGTH",
                format!("Must be {max} or fewer in length."),
                reason,
            );
        }
        n
    }

    /// A required string of 1..=`max` chars that is not blank.
    pub fn required_len(
        &mut self,
        obj: &Map<String, Value>,
        at: &[&str],
        key: &str,
        max: usize,
        reason: &'static str,
    ) -> usize {
        match self.string(obj, at, key, "type") {
            None if !obj.contains_key(key) || obj.get(key) == Some(&Value::Null) => {
                self.push(
                    path(at, key),
                    "BASE_TYPE_REQUIRED",
                    "This field is required".into(),
                    reason,
                );
                0
            }
            None => 0,
            Some(s) => {
                let n = chars(s);
                if s.trim().is_empty() || n > max {
                    self.push(
                        path(at, key),
                        "BASE_TYPE_BAD_LENGTH",
                        format!("Must be between 1 and {max} in length."),
                        reason,
                    );
                }
                n
            }
        }
    }

    /// An optional http(s) URL.
    pub fn url(&mut self, obj: &Map<String, Value>, at: &[&str], key: &str) {
        if let Some(u) = self.string(obj, at, key, "type") {
            let scheme_ok = ["http://", "https://", "attachment://"]
                .iter()
                .any(|p| u.len() > p.len() && u.starts_with(p));
            if !scheme_ok || chars(u) > limits::URL || u.chars().any(char::is_whitespace) {
                self.push(
                    path(at, key),
                    "URL_TYPE_INVALID_URL",
                    "Not a well formed URL.".into(),
                    "invalid_url",
                );
            }
        }
    }

    pub fn boolean(&mut self, obj: &Map<String, Value>, at: &[&str], key: &str) {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null() && !v.is_boolean()) {
            self.push(
                path(at, key),
                "BASE_TYPE_BOOLEAN",
                format!("Value \"{v}\" is not boolean."),
                "type",
            );
        }
    }

    /// An optional object; `None` when absent or of another type (reported).
    pub fn object<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        at: &[&str],
        key: &str,
    ) -> Option<&'v Map<String, Value>> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.push(
                    path(at, key),
                    "MODEL_TYPE_CONVERT",
                    "Only dictionaries may be used in a ModelType".into(),
                    "type",
                );
                None
            }
        }
    }

    /// An optional array of at most `max` items; `None` when absent.
    pub fn array<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        at: &[&str],
        key: &str,
        max: usize,
        reason: &'static str,
    ) -> Option<&'v Vec<Value>> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                if a.len() > max {
                    self.push(
                        path(at, key),
                        "BASE_TYPE_MAX_LENGTH",
                        format!("Must be {max} or fewer in length."),
                        reason,
                    );
                }
                Some(a)
            }
            Some(_) => {
                self.push(
                    path(at, key),
                    "BASE_TYPE_LIST",
                    "Only iterables may be used in a ListType".into(),
                    "type",
                );
                None
            }
        }
    }

    fn embed(&mut self, i: usize, v: &Value) -> usize {
        let idx = i.to_string();
        let at = ["embeds", idx.as_str()];
        let Some(e) = v.as_object() else {
            self.push(
                path(&at, ""),
                "MODEL_TYPE_CONVERT",
                "Only dictionaries may be used in a ModelType".into(),
                "type",
            );
            return 0;
        };
        let mut total = 0;
        total += self.max_len(e, &at, "title", limits::TITLE, "embed_title_length");
        total += self.max_len(
            e,
            &at,
            "description",
            limits::DESCRIPTION,
            "embed_description_length",
        );
        self.url(e, &at, "url");
        match e.get("color") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => match n.as_u64() {
                Some(c) if c <= limits::MAX_COLOR => {}
                Some(_) => self.push(
                    path(&at, "color"),
                    "NUMBER_TYPE_MAX",
                    format!(
                        "int value should be less than or equal to {}.",
                        limits::MAX_COLOR
                    ),
                    "embed_color_range",
                ),
                None => self.push(
                    path(&at, "color"),
                    "NUMBER_TYPE_COERCE",
                    format!("Value \"{n}\" is not int."),
                    "embed_color_range",
                ),
            },
            Some(other) => self.push(
                path(&at, "color"),
                "NUMBER_TYPE_COERCE",
                format!("Value \"{other}\" is not int."),
                "type",
            ),
        }
        if let Some(ts) = self.string(e, &at, "timestamp", "type") {
            if !is_iso8601(ts) {
                self.push(
                    path(&at, "timestamp"),
                    "DATE_TIME_TYPE_PARSE",
                    format!("Could not parse {ts}. Should be ISO8601."),
                    "embed_timestamp_format",
                );
            }
        }
        if let Some(footer) = self.object(e, &at, "footer") {
            let fat = ["embeds", idx.as_str(), "footer"];
            total += self.required_len(footer, &fat, "text", limits::FOOTER, "embed_footer_length");
            self.url(footer, &fat, "icon_url");
        }
        if let Some(author) = self.object(e, &at, "author") {
            let aat = ["embeds", idx.as_str(), "author"];
            total += self.required_len(author, &aat, "name", limits::AUTHOR, "embed_author_length");
            self.url(author, &aat, "url");
            self.url(author, &aat, "icon_url");
        }
        for media in ["image", "thumbnail"] {
            if let Some(m) = self.object(e, &at, media) {
                let mat = ["embeds", idx.as_str(), media];
                if m.get("url").is_none_or(Value::is_null) {
                    self.push(
                        path(&mat, "url"),
                        "BASE_TYPE_REQUIRED",
                        "This field is required".into(),
                        "embed_media_url",
                    );
                }
                self.url(m, &mat, "url");
            }
        }
        if let Some(fields) = self.array(e, &at, "fields", limits::FIELDS, "embed_fields_count") {
            for (j, f) in fields.iter().enumerate() {
                let jdx = j.to_string();
                let fat = ["embeds", idx.as_str(), "fields", jdx.as_str()];
                let Some(f) = f.as_object() else {
                    self.push(
                        path(&fat, ""),
                        "MODEL_TYPE_CONVERT",
                        "Only dictionaries may be used in a ModelType".into(),
                        "type",
                    );
                    continue;
                };
                total +=
                    self.required_len(f, &fat, "name", limits::FIELD_NAME, "field_name_length");
                total +=
                    self.required_len(f, &fat, "value", limits::FIELD_VALUE, "field_value_length");
                self.boolean(f, &fat, "inline");
            }
        }
        total
    }
}

/// What the execute handler learnt while validating, for the record and stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecuteInfo {
    /// `allowed_mentions` was present (agentmon always sends `{"parse": []}`).
    pub allowed_mentions: bool,
    /// `allowed_mentions.parse` named something (users, roles, everyone).
    pub mentions_parse_nonempty: bool,
    pub embeds: usize,
}

/// Checks an "Execute Webhook" body. `files` are the uploaded files' sizes
/// (multipart only).
pub fn execute(payload: &Value, files: &[usize]) -> Result<ExecuteInfo, Rejection> {
    let Some(obj) = payload.as_object() else {
        return Err(Rejection::plain(
            codes::INVALID_JSON,
            "The request body contains invalid JSON.",
            "invalid_json",
        ));
    };
    let mut c = Checker::default();
    c.max_len(obj, &[], "content", limits::CONTENT, "content_length");
    let has_content = obj
        .get("content")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    if obj.get("username").is_some_and(|v| !v.is_null()) {
        let n = c.required_len(obj, &[], "username", limits::USERNAME, "username_length");
        if n > 0 {
            if let Some(name) = obj.get("username").and_then(Value::as_str) {
                let lower = name.to_lowercase();
                for word in ["discord", "clyde"] {
                    if lower.contains(word) {
                        c.push(
                            path(&[], "username"),
                            "USERNAME_INVALID_CONTAINS",
                            format!("Username cannot contain \"{word}\""),
                            "username_forbidden",
                        );
                    }
                }
            }
        }
    }
    c.url(obj, &[], "avatar_url");
    c.boolean(obj, &[], "tts");
    let mut embeds = 0;
    if let Some(list) = c.array(obj, &[], "embeds", limits::EMBEDS, "embeds_count") {
        embeds = list.len();
        let total: usize = list.iter().enumerate().map(|(i, e)| c.embed(i, e)).sum();
        if total > limits::EMBEDS_TOTAL {
            c.push(
                path(&["embeds"], ""),
                "MAX_EMBED_SIZE_EXCEEDED",
                format!(
                    "Embed size exceeds maximum size of {}",
                    limits::EMBEDS_TOTAL
                ),
                "embeds_total_length",
            );
        }
    }
    let mut info = ExecuteInfo {
        embeds,
        ..ExecuteInfo::default()
    };
    if let Some(am) = c.object(obj, &[], "allowed_mentions") {
        info.allowed_mentions = true;
        if let Some(parse) = c.array(am, &["allowed_mentions"], "parse", 3, "allowed_mentions") {
            for (i, p) in parse.iter().enumerate() {
                match p.as_str() {
                    Some("users" | "roles" | "everyone") => info.mentions_parse_nonempty = true,
                    _ => c.push(
                        vec!["allowed_mentions".into(), "parse".into(), i.to_string()],
                        "ENUM_TYPE_COERCE",
                        format!("Value \"{p}\" is not a valid enum value."),
                        "allowed_mentions",
                    ),
                }
            }
        }
    }
    if files.len() > limits::ATTACHMENTS {
        c.push(
            path(&["files"], ""),
            "BASE_TYPE_MAX_LENGTH",
            format!("Must be {} or fewer in length.", limits::ATTACHMENTS),
            "attachments_count",
        );
    }
    if let Some(list) = c.array(
        obj,
        &[],
        "attachments",
        limits::ATTACHMENTS,
        "attachments_count",
    ) {
        for (i, a) in list.iter().enumerate() {
            let id = a.get("id").and_then(|id| {
                id.as_u64()
                    .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
            });
            let known = id
                .and_then(|id| usize::try_from(id).ok())
                .is_some_and(|id| id < files.len());
            if !known {
                c.push(
                    vec!["attachments".into(), i.to_string(), "id".into()],
                    "ATTACHMENT_NOT_FOUND",
                    "Attachment data not found".into(),
                    "attachment_unknown",
                );
            }
        }
    }
    if !c.violations.is_empty() {
        return Err(Rejection::form(c.violations));
    }
    let has_components = obj
        .get("components")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let has_poll = obj.get("poll").is_some_and(|p| !p.is_null());
    if !has_content && embeds == 0 && files.is_empty() && !has_components && !has_poll {
        return Err(Rejection::plain(
            codes::EMPTY_MESSAGE,
            "Cannot send an empty message",
            "empty_message",
        ));
    }
    Ok(info)
}

/// Checks the body of "Edit Original Interaction Response" (no field is
/// required, the limits are those of a message).
pub fn edit_message(payload: &Value) -> Result<(), Rejection> {
    let Some(obj) = payload.as_object() else {
        return Err(Rejection::plain(
            codes::INVALID_JSON,
            "The request body contains invalid JSON.",
            "invalid_json",
        ));
    };
    let mut c = Checker::default();
    c.max_len(obj, &[], "content", limits::CONTENT, "content_length");
    if let Some(list) = c.array(obj, &[], "embeds", limits::EMBEDS, "embeds_count") {
        let total: usize = list.iter().enumerate().map(|(i, e)| c.embed(i, e)).sum();
        if total > limits::EMBEDS_TOTAL {
            c.push(
                path(&["embeds"], ""),
                "MAX_EMBED_SIZE_EXCEEDED",
                format!(
                    "Embed size exceeds maximum size of {}",
                    limits::EMBEDS_TOTAL
                ),
                "embeds_total_length",
            );
        }
    }
    if c.violations.is_empty() {
        Ok(())
    } else {
        Err(Rejection::form(c.violations))
    }
}

/// A guild text/forum channel name as Discord stores it: lowercase
/// `[a-z0-9-_]`, 1..=100. (Discord rewrites other names; this fake refuses
/// them, so a caller that does not normalise is caught.)
pub fn text_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= limits::CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A slash command name: 1..=32 lowercase letters, digits, `-` or `_`.
pub fn command_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=limits::COMMAND_NAME).contains(&n)
        && name.chars().all(|c| {
            c == '-' || c == '_' || c.is_numeric() || (c.is_alphabetic() && !c.is_uppercase())
        })
}

fn digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// ISO 8601 date and time: `YYYY-MM-DD[T ]HH:MM[:SS[.fff…]][Z|±HH:MM|±HHMM]`.
pub fn is_iso8601(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 16 || !digits(&b[0..4]) || b[4] != b'-' || !digits(&b[5..7]) || b[7] != b'-' {
        return false;
    }
    if !digits(&b[8..10]) || !matches!(b[10], b'T' | b't' | b' ') {
        return false;
    }
    let num = |r: &[u8]| -> u32 { r.iter().fold(0, |a, d| a * 10 + u32::from(d - b'0')) };
    let (month, day) = (num(&b[5..7]), num(&b[8..10]));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return false;
    }
    if !digits(&b[11..13]) || b[13] != b':' || !digits(&b[14..16]) {
        return false;
    }
    if num(&b[11..13]) > 23 || num(&b[14..16]) > 59 {
        return false;
    }
    let mut rest = &b[16..];
    if let [b':', s1, s2, tail @ ..] = rest {
        if !s1.is_ascii_digit() || !s2.is_ascii_digit() || num(&[*s1, *s2]) > 60 {
            return false;
        }
        rest = tail;
        if let [b'.' | b',', tail @ ..] = rest {
            let n = tail.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            rest = &tail[n..];
        }
    }
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] | [b'+' | b'-', h1, h2, m1, m2] => {
            digits(&[*h1, *h2, *m1, *m2]) && num(&[*h1, *h2]) <= 23 && num(&[*m1, *m2]) <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(v: &Value) -> Vec<&'static str> {
        execute(v, &[])
            .err()
            .map(|r| r.reasons())
            .unwrap_or_default()
    }

    #[test]
    fn agentmon_payload_is_accepted() {
        let v = json!({
            "embeds": [{"title": "⚡ Bash", "description": "ls", "color": 0xF3_9C12,
                        "timestamp": "2025-01-02T03:04:05.678Z",
                        "footer": {"text": "run 1"}, "author": {"name": "agent"},
                        "fields": [{"name": "exit", "value": "0", "inline": true}]}],
            "username": "agentmon",
            "allowed_mentions": {"parse": []},
            "unknown_field": 1
        });
        let info = execute(&v, &[]).unwrap();
        assert!(info.allowed_mentions);
        assert!(!info.mentions_parse_nonempty);
        assert_eq!(info.embeds, 1);
    }

    #[test]
    fn each_limit_is_enforced_with_its_path() {
        let r = execute(&json!({"content": "x".repeat(2001)}), &[]).unwrap_err();
        assert_eq!(r.code, 50035);
        assert_eq!(
            r.body()["errors"]["content"]["_errors"][0]["code"],
            "BASE_TYPE_MAX_LENGTH"
        );
        // Counted in chars, not bytes.
        assert!(execute(&json!({"content": "é".repeat(2000)}), &[]).is_ok());

        let embed = |e: Value| json!({"embeds": [e]});
        let cases = [
            (
                embed(json!({"title": "t".repeat(257)})),
                "embed_title_length",
            ),
            (
                embed(json!({"description": "d".repeat(4097)})),
                "embed_description_length",
            ),
            (embed(json!({"color": 0x100_0000})), "embed_color_range"),
            (
                embed(json!({"timestamp": "yesterday"})),
                "embed_timestamp_format",
            ),
            (
                embed(json!({"footer": {"text": "f".repeat(2049)}})),
                "embed_footer_length",
            ),
            (
                embed(json!({"author": {"name": "a".repeat(257)}})),
                "embed_author_length",
            ),
            (
                embed(json!({"fields": vec![json!({"name": "n", "value": "v"}); 26]})),
                "embed_fields_count",
            ),
            (
                embed(json!({"fields": [{"name": "n".repeat(257), "value": "v"}]})),
                "field_name_length",
            ),
            (
                embed(json!({"fields": [{"name": "n", "value": "v".repeat(1025)}]})),
                "field_value_length",
            ),
            (
                embed(json!({"fields": [{"name": "n", "value": " "}]})),
                "field_value_length",
            ),
            (
                json!({"embeds": vec![json!({"title": "t"}); 11]}),
                "embeds_count",
            ),
            (
                json!({"content": "x", "username": "x".repeat(81)}),
                "username_length",
            ),
            (
                json!({"content": "x", "username": "My Discord bot"}),
                "username_forbidden",
            ),
            (
                json!({"content": "x", "username": "clyde"}),
                "username_forbidden",
            ),
        ];
        for (payload, reason) in cases {
            assert_eq!(reasons(&payload), vec![reason], "{payload}");
        }
    }

    #[test]
    fn embed_total_is_6000_chars_across_embeds() {
        let e = json!({"description": "d".repeat(3000)});
        assert!(execute(&json!({"embeds": [e.clone(), e.clone()]}), &[]).is_ok());
        let r = execute(&json!({"embeds": [e.clone(), e, {"title": "x"}]}), &[]).unwrap_err();
        assert_eq!(r.reasons(), vec!["embeds_total_length"]);
        assert_eq!(
            r.body()["errors"]["embeds"]["_errors"][0]["code"],
            "MAX_EMBED_SIZE_EXCEEDED"
        );
    }

    #[test]
    fn nested_errors_have_discords_shape() {
        let r = execute(
            &json!({"embeds": [{"title": "ok"}, {"title": "t".repeat(300), "fields": [{"name": "", "value": "v"}]}]}),
            &[],
        )
        .unwrap_err();
        let body = r.body();
        assert_eq!(body["message"], "Invalid Form Body");
        assert_eq!(
            body["errors"]["embeds"]["1"]["title"]["_errors"][0]["message"],
            "Must be 256 or fewer in length."
        );
        assert_eq!(
            body["errors"]["embeds"]["1"]["fields"]["0"]["name"]["_errors"][0]["code"],
            "BASE_TYPE_BAD_LENGTH"
        );
    }

    #[test]
    fn a_message_needs_content_embeds_or_files() {
        for empty in [json!({}), json!({"content": "  "}), json!({"embeds": []})] {
            let r = execute(&empty, &[]).unwrap_err();
            assert_eq!((r.code, r.reasons()), (50006, vec!["empty_message"]));
        }
        assert!(execute(&json!({}), &[3]).is_ok());
        assert_eq!(reasons(&json!({"content": "x"})), Vec::<&str>::new());
        assert_eq!(reasons(&json!([1])), vec!["invalid_json"]);
        assert_eq!(reasons(&json!({"content": 5})), vec!["type"]);
    }

    #[test]
    fn attachments_are_limited_and_must_match_files() {
        assert_eq!(
            execute(&json!({"content": "x"}), &[1; 11])
                .unwrap_err()
                .reasons(),
            vec!["attachments_count"]
        );
        let p = json!({"attachments": [{"id": 0, "filename": "a"}, {"id": "1"}]});
        assert!(execute(&p, &[1, 2]).is_ok());
        assert_eq!(
            execute(&p, &[1]).unwrap_err().reasons(),
            vec!["attachment_unknown"]
        );
    }

    #[test]
    fn allowed_mentions_is_tracked() {
        let info = execute(&json!({"content": "x"}), &[]).unwrap();
        assert!(!info.allowed_mentions);
        let info = execute(
            &json!({"content": "x", "allowed_mentions": {"parse": ["users"]}}),
            &[],
        )
        .unwrap();
        assert!(info.allowed_mentions && info.mentions_parse_nonempty);
        assert_eq!(
            reasons(&json!({"content": "x", "allowed_mentions": {"parse": ["all"]}})),
            vec!["allowed_mentions"]
        );
    }

    #[test]
    fn iso8601() {
        for ok in [
            "2025-01-02T03:04:05Z",
            "2025-01-02T03:04:05.123456+00:00",
            "2025-01-02 03:04",
            "2025-12-31T23:59:60-0530",
            "2025-01-02T03:04:05",
        ] {
            assert!(is_iso8601(ok), "{ok}");
        }
        for bad in [
            "",
            "2025-01-02",
            "2025-13-02T03:04:05Z",
            "2025-01-02T24:00Z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05 UTC",
            "1735787045",
        ] {
            assert!(!is_iso8601(bad), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(text_channel_name("run-task-1-abc_d"));
        for bad in ["", "Run-1", "run 1", "run.1", &"a".repeat(101)] {
            assert!(!text_channel_name(bad), "{bad}");
        }
        assert!(command_name("input") && command_name("status-2"));
        assert!(!command_name("Input") && !command_name("") && !command_name(&"a".repeat(33)));
    }
}
