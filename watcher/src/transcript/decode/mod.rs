//! The tolerant decoder: one transcript line → zero or more events.
//!
//! The input format is open and unstable (`TRANSCRIPT_FORMAT.md`): unknown record
//! types, content blocks and fields are normal and are skipped silently. Only
//! damaged lines are errors, and each error names its metric label
//! ([`DecodeError::reason`]). Damaged lines that could be repaired decode
//! normally; the [`Decoded`] line says what was repaired so the caller can
//! count it too.
//!
//! # Parsing strategy
//!
//! The fast path fills borrowed, *lenient* structs in place
//! (`lenient_struct!`): every field we read accepts any JSON type (a wrong
//! type reads as absent instead of failing the record) and every field we do
//! not read (the big `toolUseResult`, base64 images, signatures, …) is skipped
//! by serde without allocating. Only when that fails does the slow path run: parse into
//! [`serde_json::Value`] (tolerates duplicate keys, tells "not an object" from
//! "torn"), then the repairs of §6 in order: lossy UTF-8, lone UTF-16
//! surrogate escapes → `\uFFFD`, and recovery of a record fused behind a torn
//! prefix.
//!
//! # Decisions the format leaves open
//!
//! - Empty (or whitespace-only) lines are `Ok(vec![])`; a line of only NUL bytes
//!   is [`DecodeError::Nul`] so that it is counted; NULs around a record are
//!   stripped ([`Repair::Nul`]).
//! - `SessionMeta` comes from main-agent chain records only (metadata lines carry
//!   no `cwd`/`version`; subagent records carry the parent's session). A field a
//!   record leaves out counts as unchanged.
//! - `system` records: `compact_boundary`/`microcompact_boundary` →
//!   `CompactBoundary`; `api_error` → `ApiError`; `local_command` → `Command`;
//!   `turn_duration` → `System` ("Turn completed in …"); `stop_hook_summary` →
//!   `System` only when a hook failed; any other subtype → `System` when it has
//!   a text `content`, else skipped.
//! - Assistant rows: `isApiErrorMessage` → `ApiError`; a `<synthetic>` row whose
//!   text does not start with "API Error" (e.g. "No response requested.") →
//!   `System`. Neither carries usage. `fallback` blocks → `System` ("Model
//!   fallback: a → b"); `redacted_thinking` → `Thinking` with empty text; text
//!   blocks that are only whitespace are skipped.
//! - `<system-reminder>` blocks (model-only text injected by the harness) are cut
//!   from tool results and prompts when they start a line; a message that is
//!   only such a reminder (or a `<local-command-caveat>`) is hidden.
//! - Queued (steering) prompts (`queue-operation` `enqueue`, a `remove` or
//!   `dequeue` that carries the text, a `queued_command` attachment) become
//!   `UserPrompt`s; the same text arriving again by another of these routes, or
//!   as a user record, is shown only once. Queued text that is CLI status
//!   (`<task-notification>` …) is not a prompt and is not shown from the queue.
//! - Teammate messages (agent teams: `<teammate-message teammate_id=…>` in a
//!   user record or a queued prompt, optionally after "Another Claude session
//!   sent a message:") become one `TeammateMessage` per element, never a
//!   `UserPrompt`.
//! - A record of a known kind with the wrong shape (`message` missing or not
//!   an object, `message.content` missing or neither a string nor an array,
//!   `attachment` not an object) yields nothing, is reported in
//!   [`Decoded::skip`] and does **not** mark its uuid as seen, so a valid
//!   record with the same uuid after it is still delivered.
//! - The subagent source comes from the file, or from `isSidechain: true` in a
//!   main file; an `agentId` alone (main-thread records of some versions carry
//!   one) does not make a record a subagent's.
//! - Titles are emitted when their text changes for their [`TitleSource`];
//!   ranking sources is the renderer's job.

#[macro_use]
mod lenient;
mod repair;
mod tags;
#[cfg(test)]
mod tests;
mod window;
mod wire;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use serde::de::{Deserializer, IgnoredAny};
use serde_json::Value;

use self::lenient::{FillIn, LStr};
use self::repair::{parse_fast, parse_slow, trim_ascii, trim_nuls};
use self::tags::{
    command_text, is_tagged, readable_tagged, status_text, strip_system_reminders,
    teammate_messages,
};
use self::window::{uuid_key, Bounded};
use self::wire::{Block, Content, Record};
use super::{Event, EventKind, Notice, Source, TitleSource, Usage};

/// How many tool-use ids (→ tool name) and `message.id`s (→ usage reported so
/// far) are remembered. A response's lines and a tool's result follow closely,
/// so a few thousand is plenty.
const ID_MAP_CAPACITY: usize = 4096;
/// How many sessions' identity (`cwd`, `version`, `gitBranch`) are remembered.
const SESSION_CAPACITY: usize = 64;
/// How many shown queued prompts are remembered for their other appearances.
const QUEUED_CAPACITY: usize = 32;

#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// How many record uuids are remembered for deduplication (FIFO eviction;
    /// 0 disables deduplication).
    pub dedupe_capacity: usize,
}

/// Why a line was skipped; `reason()` is the metric label.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid JSON, even after the repairs: a torn line, or garbage.
    #[error("malformed JSON")]
    Torn,
    /// The line held nothing but NUL bytes.
    #[error("line of NUL bytes")]
    Nul,
    /// The line had invalid UTF-8 and still did not parse after a lossy decode.
    #[error("invalid UTF-8 that lossy decoding could not repair")]
    InvalidUtf8,
    /// The line had lone UTF-16 surrogate escapes and still did not parse
    /// after replacing them.
    #[error("lone surrogate escapes that replacement could not repair")]
    Surrogate,
    /// Valid JSON, but not an object (`[…]`, a string, a number …).
    #[error("JSON value is not an object")]
    NotObject,
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Torn => "torn",
            Self::Nul => "nul",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Surrogate => "surrogate",
            Self::NotObject => "not_object",
        }
    }
}

/// A record the decoder dropped for its shape (valid JSON, a known record
/// kind, but not the structure that kind has). `reason()` is the label of
/// `watcher_transcript_skipped_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A `user`/`assistant` record whose `message` is missing or not an object.
    Message,
    /// A `user`/`assistant` message whose `content` is missing or neither a
    /// string nor an array.
    Content,
    /// An `attachment` record whose `attachment` is missing or not an object.
    Attachment,
}

impl Skip {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Skip; 3] = [Self::Message, Self::Content, Self::Attachment];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Message => "message_shape",
            Self::Content => "content_shape",
            Self::Attachment => "attachment_shape",
        }
    }
}

/// The shape problem of a record of kind `ty`, if any.
fn shape_problem(ty: &str, rec: &Record<'_>) -> Option<Skip> {
    match ty {
        "user" | "assistant" => match &rec.message.0 {
            None => Some(Skip::Message),
            Some(m) if matches!(m.content, Content::None) => Some(Skip::Content),
            Some(_) => None,
        },
        "attachment" if rec.attachment.0.is_none() => Some(Skip::Attachment),
        _ => None,
    }
}

/// How a queued prompt reached the transcript; a text is shown once per
/// appearance set (see [`Decoder::queued_prompt`]).
#[derive(Debug, Clone, Copy)]
enum Route {
    Enqueue = 1,
    Remove = 2,
    Attachment = 4,
    UserRecord = 8,
}

/// A damage the decoder repaired: the line decoded, but it was not clean.
/// `reason()` uses the same labels as [`DecodeError::reason`] (plus `fused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// NUL bytes before or after the record were stripped.
    Nul,
    /// Invalid UTF-8 was replaced by U+FFFD.
    InvalidUtf8,
    /// Lone surrogate escapes were replaced by `\uFFFD`.
    Surrogate,
    /// A record was recovered from behind a torn prefix.
    Fused,
}

impl Repair {
    /// Every repair, for pre-registering metric labels.
    pub const ALL: [Repair; 4] = [Self::Nul, Self::InvalidUtf8, Self::Surrogate, Self::Fused];

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Nul => "nul",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Surrogate => "surrogate",
            Self::Fused => "fused",
        }
    }
}

/// What one line decoded to: its events, and what the decoder had to do to
/// get them, for metrics.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Event>,
    /// What had to be repaired (the first repair when there were several).
    pub repair: Option<Repair>,
    /// The first record dropped for its shape (for metrics and one log line).
    pub skip: Option<Skip>,
}

/// Keeps the cross-line state: seen uuids, usage per `message.id`, tool names
/// by tool_use id, titles.
#[derive(Debug)]
pub struct Decoder {
    /// Uuids already delivered: a replayed or double-written record is dropped.
    seen: Bounded<u128, ()>,
    /// Tool name by `tool_use` id, so results can say which tool they belong to.
    tools: Bounded<Arc<str>, String>,
    /// Usage already reported per `message.id` (field-wise max so far): later
    /// lines of the same response only report growth.
    usage: Bounded<Arc<str>, Usage>,
    /// Last identity seen per `sessionId`.
    sessions: Bounded<Arc<str>, SessionState>,
    /// Queued prompt texts already shown, with the [`Route`]s (bits) they
    /// appeared by: a later appearance by another route is the same prompt.
    queued: VecDeque<(String, u8)>,
    /// Last title emitted per source (indexed by [`title_slot`]).
    titles: [Option<String>; 3],
}

#[derive(Debug, Default, Clone)]
struct SessionState {
    cwd: Option<String>,
    version: Option<String>,
    git_branch: Option<String>,
}

impl Decoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        Self {
            seen: Bounded::new(cfg.dedupe_capacity),
            tools: Bounded::new(ID_MAP_CAPACITY),
            usage: Bounded::new(ID_MAP_CAPACITY),
            sessions: Bounded::new(SESSION_CAPACITY),
            queued: VecDeque::new(),
            titles: [None, None, None],
        }
    }

    /// Counts `uuid` as already delivered: its record, if read again, yields
    /// nothing (restart seeding from the checkpoint).
    pub fn remember(&mut self, uuid: &str) {
        self.seen.insert_new(uuid_key(uuid));
    }

    /// Whether `raw` (a line without its newline) holds one whole JSON
    /// object: used at shutdown to tell a complete last record left without
    /// its newline from a torn one still being written.
    pub fn is_complete_record(raw: &[u8]) -> bool {
        let b = trim_ascii(trim_nuls(raw));
        b.first() == Some(&b'{') && serde_json::from_slice::<IgnoredAny>(b).is_ok()
    }

    /// Only the typed parse of the fast path (UTF-8 check + serde), without
    /// building events: the decode benchmark reports it so that the cost of
    /// parsing and of event building can be told apart. `true` when the line
    /// took the fast path.
    #[doc(hidden)]
    pub fn parse_only(raw: &[u8]) -> bool {
        parse_fast(raw, &mut Record::default())
    }

    /// Decodes one line (without its newline). `source` is the file's source;
    /// records say themselves when they are subagent records.
    pub fn decode_line(&mut self, raw: &[u8], source: &Source) -> Result<Decoded, DecodeError> {
        let mut out = Decoded::default();
        // The fast path runs on the line as read: JSON allows whitespace (a
        // CR too) around the record, and a NUL or any damage fails the parse,
        // so only lines that need trimming are trimmed. Trimming first read
        // each line's last byte before its first, a cache miss per line that
        // measured 3 % of decoding.
        if self.decode_fast(raw, source, &mut out) {
            return Ok(out);
        }
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let trimmed = trim_nuls(line);
        if trimmed.len() != line.len() {
            if trim_ascii(trimmed).is_empty() {
                return Err(DecodeError::Nul);
            }
            out.repair = Some(Repair::Nul);
        }
        let bytes = trim_ascii(trimmed);
        if bytes.is_empty() {
            return Ok(out);
        }
        if bytes.len() != raw.len() && self.decode_fast(bytes, source, &mut out) {
            return Ok(out);
        }
        let (values, repair) = parse_slow(bytes)?;
        out.repair = out.repair.or(repair);
        for value in &values {
            // Lenient fields make this infallible in practice; a failure would be
            // a bug in the lenient types, reported as a torn line, never a panic.
            let mut rec = Record::default();
            value
                .deserialize_map(FillIn(&mut rec))
                .map_err(|_| DecodeError::Torn)?;
            self.process(&mut rec, source, &mut out);
        }
        Ok(out)
    }

    /// The fast path for one object line: `false` (with `out` untouched) when
    /// the line needs the slow path.
    fn decode_fast(&mut self, bytes: &[u8], source: &Source, out: &mut Decoded) -> bool {
        if bytes.first() != Some(&b'{') {
            return false;
        }
        let mut rec = Record::default();
        if !parse_fast(bytes, &mut rec) {
            return false;
        }
        self.process(&mut rec, source, out);
        true
    }

    fn process(&mut self, rec: &mut Record<'_>, given: &Source, line: &mut Decoded) {
        // Taken out of the record so that the envelope can borrow them while the
        // handlers below take the record mutably.
        let uuid_field = rec.uuid.0.take();
        let timestamp_field = rec.timestamp.0.take();
        let ty_field = rec.ty.0.take();
        let ty = ty_field.as_deref().unwrap_or("");
        // Before the uuid is remembered: a dropped record must not make the
        // valid record with its uuid a duplicate.
        if let Some(skip) = shape_problem(ty, rec) {
            line.skip.get_or_insert(skip);
            return;
        }
        let out = &mut line.events;
        let uuid = uuid_field.as_deref();
        if let Some(u) = uuid {
            if !self.seen.insert_new(uuid_key(u)) {
                return;
            }
        }
        let source = resolve_source(
            given,
            rec.is_sidechain.get() == Some(true),
            rec.agent_id.get(),
        );
        let ctx = Ctx {
            source,
            uuid,
            timestamp: timestamp_field.as_deref(),
        };
        if ctx.uuid.is_some() && ctx.source == Source::Main {
            if let Some(kind) = self.session_meta(rec) {
                out.push(ctx.event(kind));
            }
        }
        match ty {
            "user" => self.user(rec, &ctx, out),
            "assistant" => self.assistant(rec, &ctx, out),
            "system" => system(rec, &ctx, out),
            "attachment" => self.attachment(rec, &ctx, out),
            "queue-operation" => {
                let route = match rec.operation.get() {
                    Some("enqueue") => Route::Enqueue,
                    // Several CLI versions record steering input only as a
                    // `remove` (or `dequeue`) that carries the text.
                    Some("remove" | "dequeue") => Route::Remove,
                    _ => return,
                };
                let text = rec.content.text();
                self.queued_prompt(&text, route, &ctx, out);
            }
            "summary" => self.title(rec.summary.get(), TitleSource::Summary, &ctx, out),
            "ai-title" => self.title(rec.ai_title.get(), TitleSource::AiTitle, &ctx, out),
            "custom-title" => {
                self.title(rec.custom_title.get(), TitleSource::CustomTitle, &ctx, out);
            }
            _ => {}
        }
    }

    fn session_meta(&mut self, rec: &Record<'_>) -> Option<EventKind> {
        let sid = rec.session_id.get()?;
        let (cwd, version, branch) = (rec.cwd.get(), rec.version.get(), rec.git_branch.get());
        let state = match self.sessions.get_mut(sid) {
            Some(st) => {
                let changed = changes(&st.cwd, cwd)
                    || changes(&st.version, version)
                    || changes(&st.git_branch, branch);
                if !changed {
                    return None;
                }
                update(&mut st.cwd, cwd);
                update(&mut st.version, version);
                update(&mut st.git_branch, branch);
                st.clone()
            }
            None => {
                let st = SessionState {
                    cwd: cwd.map(str::to_owned),
                    version: version.map(str::to_owned),
                    git_branch: branch.map(str::to_owned),
                };
                self.sessions.insert(sid, st.clone());
                st
            }
        };
        Some(EventKind::SessionMeta {
            session_id: sid.to_owned(),
            cwd: state.cwd,
            version: state.version,
            git_branch: state.git_branch,
        })
    }

    /// `user` records, in the priority order of TRANSCRIPT_FORMAT.md §4.
    fn user(&mut self, rec: &mut Record<'_>, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let Some(msg) = rec.message.0.as_mut() else {
            return;
        };
        if let Content::Blocks(blocks) = &mut msg.content {
            if blocks.iter().any(|b| b.ty.get() == Some("tool_result")) {
                for b in blocks
                    .iter_mut()
                    .filter(|b| b.ty.get() == Some("tool_result"))
                {
                    let id = b.tool_use_id.get().unwrap_or("");
                    // Moved, not copied: tool output is the bulk of a transcript.
                    let content = std::mem::take(&mut b.content).into_result_text();
                    out.push(ctx.event(EventKind::ToolResult {
                        tool_use_id: id.to_owned(),
                        tool_name: self.tools.get(id).cloned(),
                        content: strip_system_reminders(content),
                        is_error: b.is_error.get() == Some(true),
                    }));
                }
                return;
            }
        }
        if rec.is_meta.get() == Some(true) {
            return;
        }
        let (text, images) = std::mem::take(&mut msg.content).into_prompt();
        if rec.is_compact_summary.get() == Some(true) {
            out.push(ctx.notice(Notice::CompactSummary, text.trim().to_owned()));
            return;
        }
        let trimmed = text.trim();
        if let Some(messages) = teammate_messages(trimmed) {
            out.extend(messages.into_iter().map(|k| ctx.event(k)));
            return;
        }
        if is_tagged(trimmed) {
            if let Some(readable) = readable_tagged(trimmed) {
                out.push(ctx.notice(Notice::Command, readable));
            }
            return;
        }
        if trimmed.starts_with("[Request interrupted by user") {
            out.push(ctx.notice(Notice::Interrupted, trimmed.to_owned()));
            return;
        }
        let text = strip_system_reminders(text);
        if text.trim().is_empty() && images == 0 {
            return;
        }
        if self.queued_seen(text.trim(), Route::UserRecord) {
            return;
        }
        out.push(ctx.event(EventKind::UserPrompt { text, images }));
    }

    fn assistant(&mut self, rec: &mut Record<'_>, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let Some(msg) = rec.message.0.as_mut() else {
            return;
        };
        let model = msg.model.get();
        let api_error = rec.is_api_error_message.get() == Some(true);
        if api_error || model == Some("<synthetic>") {
            let text = msg.content.prompt().0;
            let text = text.trim();
            let notice = if api_error || text.starts_with("API Error") {
                Notice::ApiError
            } else {
                Notice::System
            };
            let text = match (text.is_empty(), rec.api_error_status.get()) {
                (false, _) => text.to_owned(),
                (true, Some(status)) => format!("API Error: status {status}"),
                (true, None) if api_error => "API Error".to_owned(),
                (true, None) => return,
            };
            out.push(ctx.notice(notice, text));
            return;
        }
        let mut blocks: Vec<Block<'_>> = match std::mem::take(&mut msg.content) {
            Content::Blocks(b) => b,
            Content::Text(t) => vec![Block {
                ty: LStr(Some(Cow::Borrowed("text"))),
                text: LStr(Some(t)),
                ..Block::default()
            }],
            Content::None => Vec::new(),
        };
        // By reference: moving each (large) block out of the vector was a
        // measurable copy per block.
        for b in &mut blocks {
            match b.ty.get().unwrap_or("") {
                "text" => {
                    let text = b.text.0.take().unwrap_or_default();
                    if !text.trim().is_empty() {
                        out.push(ctx.event(EventKind::AssistantText {
                            text: text.into_owned(),
                            model: model.map(str::to_owned),
                        }));
                    }
                }
                "thinking" => out.push(ctx.event(EventKind::Thinking {
                    text: b.thinking.0.take().unwrap_or_default().into_owned(),
                })),
                "redacted_thinking" => out.push(ctx.event(EventKind::Thinking {
                    text: String::new(),
                })),
                "tool_use" => {
                    let id = b.id.get().unwrap_or("").to_owned();
                    let name = b.name.get().unwrap_or("").to_owned();
                    if !id.is_empty() && !name.is_empty() {
                        self.tools.insert(id.as_str(), name.clone());
                    }
                    out.push(
                        ctx.event(EventKind::ToolUse {
                            id,
                            name,
                            input: b
                                .input
                                .take()
                                .unwrap_or_else(|| Value::Object(Default::default())),
                        }),
                    );
                }
                "fallback" => {
                    let from = model_name(b.from.as_deref());
                    let to = model_name(b.to.as_deref());
                    out.push(ctx.notice(Notice::System, format!("Model fallback: {from} → {to}")));
                }
                _ => {}
            }
        }
        if let Some(raw) = &msg.usage.0 {
            let Some(key) = msg.id.get().or(rec.request_id.get()).or(ctx.uuid) else {
                return;
            };
            let line = raw.to_usage();
            let before = self.usage.get(key).copied().unwrap_or_default();
            let now = before.max(line);
            let delta = now.saturating_sub(before);
            if !delta.is_zero() {
                self.usage.insert(key, now);
                out.push(ctx.event(EventKind::Usage {
                    message_id: key.to_owned(),
                    model: model.unwrap_or("").to_owned(),
                    usage: delta,
                }));
            }
        }
    }

    fn attachment(&mut self, rec: &mut Record<'_>, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let Some(att) = &rec.attachment.0 else { return };
        if att.ty.get() != Some("queued_command") {
            return;
        }
        if !matches!(att.command_mode.get(), None | Some("prompt")) {
            return;
        }
        let mut text = att.prompt.prompt().0;
        if text.trim().is_empty() {
            text = att.content.prompt().0;
        }
        self.queued_prompt(&text, Route::Attachment, ctx, out);
    }

    /// A prompt typed while the agent was busy (steering input). CLI versions
    /// write it by one or more routes: a `queue-operation` `enqueue`, a
    /// `remove`/`dequeue` carrying the text, a `queued_command` attachment, a
    /// user record. The first appearance is shown and remembered; a later
    /// appearance by a route the text has not used yet is the same prompt.
    /// The same words by a route already used are a new prompt.
    fn queued_prompt(&mut self, text: &str, route: Route, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
        let text = text.trim();
        if text.is_empty() || self.queued_seen(text, route) {
            return;
        }
        if let Some(messages) = teammate_messages(text) {
            out.extend(messages.into_iter().map(|k| ctx.event(k)));
        } else if is_tagged(text) {
            // CLI status (`<task-notification>` …) queued for the model: shown,
            // if at all, when it arrives as a user record.
            return;
        } else {
            out.push(ctx.event(EventKind::UserPrompt {
                text: text.to_owned(),
                images: 0,
            }));
        }
        if self.queued.len() >= QUEUED_CAPACITY {
            self.queued.pop_front();
        }
        self.queued.push_back((text.to_owned(), route as u8));
    }

    /// Whether `text` is a queued prompt already shown that has not appeared
    /// by `route` yet (and marks that it now has).
    fn queued_seen(&mut self, text: &str, route: Route) -> bool {
        let bit = route as u8;
        match self
            .queued
            .iter_mut()
            .rev()
            .find(|(t, routes)| routes & bit == 0 && t == text)
        {
            Some((_, routes)) => {
                *routes |= bit;
                true
            }
            None => false,
        }
    }

    fn title(
        &mut self,
        text: Option<&str>,
        source: TitleSource,
        ctx: &Ctx<'_>,
        out: &mut Vec<Event>,
    ) {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return;
        };
        let slot = &mut self.titles[title_slot(source)];
        if slot.as_deref() == Some(text) {
            return;
        }
        *slot = Some(text.to_owned());
        out.push(ctx.event(EventKind::Title {
            title: text.to_owned(),
            source,
        }));
    }
}

fn title_slot(source: TitleSource) -> usize {
    match source {
        TitleSource::Summary => 0,
        TitleSource::AiTitle => 1,
        TitleSource::CustomTitle => 2,
    }
}

/// `system` records: status only (see the module docs for the mapping).
fn system(rec: &Record<'_>, ctx: &Ctx<'_>, out: &mut Vec<Event>) {
    if rec.is_meta.get() == Some(true) {
        return;
    }
    let subtype = rec.subtype.get().unwrap_or("");
    let (notice, text) = match subtype {
        "compact_boundary" | "microcompact_boundary" => {
            let meta = rec
                .compact_metadata
                .as_deref()
                .or(rec.microcompact_metadata.as_deref());
            let what = if subtype == "compact_boundary" {
                "Conversation compacted"
            } else {
                "Context microcompacted"
            };
            let trigger = meta.and_then(|m| m.get("trigger")).and_then(Value::as_str);
            let pre = meta
                .and_then(|m| m.get("preTokens"))
                .and_then(Value::as_u64);
            let text = match (trigger, pre) {
                (Some(t), Some(p)) => format!("{what} ({t}, {p} tokens before)"),
                (Some(t), None) => format!("{what} ({t})"),
                (None, Some(p)) => format!("{what} ({p} tokens before)"),
                (None, None) => what.to_owned(),
            };
            (Notice::CompactBoundary, text)
        }
        "api_error" => (Notice::ApiError, api_error_text(rec)),
        "turn_duration" => match rec.duration_ms.get() {
            Some(ms) => (
                Notice::System,
                format!("Turn completed in {}", human_ms(ms)),
            ),
            None => return,
        },
        "local_command" => match status_text(&rec.content.text()) {
            Some(text) => (Notice::Command, text),
            None => return,
        },
        "stop_hook_summary" => {
            let errors = match rec.hook_errors.as_deref() {
                Some(Value::Array(errs)) if !errs.is_empty() => errs,
                _ => return,
            };
            let list: Vec<String> = errors
                .iter()
                .map(|e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            (
                Notice::System,
                format!("Stop hook failed: {}", list.join("; ")),
            )
        }
        _ => match status_text(&rec.content.text()) {
            Some(text) => (Notice::System, text),
            None => return,
        },
    };
    out.push(ctx.notice(notice, text));
}

fn api_error_text(rec: &Record<'_>) -> String {
    let err = rec.error.as_deref();
    // `error` is `{status, message}`, sometimes the API body `{error: {message}}`,
    // or a plain string.
    let inner = err.and_then(|e| e.get("error"));
    let status = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_u64)
        .or(rec.api_error_status.get());
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .or_else(|| inner.and_then(|i| i.get("message")).and_then(Value::as_str))
        .or_else(|| err.and_then(Value::as_str));
    let mut text = String::from("API error");
    if let Some(s) = status {
        text.push_str(&format!(" {s}"));
    }
    if let Some(m) = message {
        text.push_str(&format!(": {m}"));
    }
    if let Some(a) = rec.retry_attempt.get() {
        match rec.max_retries.get() {
            Some(max) => text.push_str(&format!(" (retry {a}/{max}")),
            None => text.push_str(&format!(" (retry {a}")),
        }
        if let Some(ms) = rec.retry_in_ms.get() {
            text.push_str(&format!(" in {}", human_ms(ms)));
        }
        text.push(')');
    }
    text
}

/// `1130.4` → "1.1s"; `48213` → "48.2s"; `125000` → "2m 5s".
fn human_ms(ms: f64) -> String {
    let ms = if ms.is_finite() && ms > 0.0 { ms } else { 0.0 };
    if ms < 60_000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else {
        // Truncation is fine: whole seconds for display.
        let secs = (ms / 1000.0) as u64;
        format!("{}m {}s", secs / 60, secs % 60)
    }
}

fn model_name(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        _ => "?".to_owned(),
    }
}

fn changes(old: &Option<String>, new: Option<&str>) -> bool {
    matches!(new, Some(n) if old.as_deref() != Some(n))
}

fn update(old: &mut Option<String>, new: Option<&str>) {
    if let Some(n) = new {
        *old = Some(n.to_owned());
    }
}

fn resolve_source(given: &Source, sidechain: bool, agent_id: Option<&str>) -> Source {
    match given {
        Source::Subagent {
            agent_id: known,
            description,
            workflow,
        } => Source::Subagent {
            agent_id: known.clone().or_else(|| agent_id.map(str::to_owned)),
            description: description.clone(),
            workflow: workflow.clone(),
        },
        // Only the sidechain flag makes a main-file record a subagent's:
        // main-thread records of some versions carry an `agentId` too.
        Source::Main if sidechain => Source::Subagent {
            agent_id: agent_id.map(str::to_owned),
            description: None,
            workflow: None,
        },
        Source::Main => Source::Main,
    }
}

/// The envelope fields shared by every event of one record, borrowed from the
/// line until an event is made.
struct Ctx<'r> {
    source: Source,
    uuid: Option<&'r str>,
    timestamp: Option<&'r str>,
}

impl Ctx<'_> {
    fn event(&self, kind: EventKind) -> Event {
        Event {
            source: self.source.clone(),
            uuid: self.uuid.map(str::to_owned),
            timestamp: self.timestamp.map(str::to_owned),
            kind,
        }
    }

    fn notice(&self, notice: Notice, text: String) -> Event {
        // The one place command text loses its CLI markup.
        let text = match notice {
            Notice::Command => command_text(&text),
            _ => text,
        };
        self.event(EventKind::Notice { notice, text })
    }
}
