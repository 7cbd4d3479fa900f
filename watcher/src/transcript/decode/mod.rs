//! The tolerant decoder: one transcript line → zero or more events.
//!
//! The input format is open and unstable (`TRANSCRIPT_FORMAT.md`): unknown record
//! types, content blocks and fields are normal and are skipped silently. Only
//! damaged lines are errors, and each error names its metric label
//! ([`DecodeError::reason`]). Damaged lines that could be repaired decode
//! normally; [`Decoder::last_repair`] says what was repaired so the caller can
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
//!   `attachment` not an object) yields nothing, is reported by
//!   [`Decoder::last_skip`] and does **not** mark its uuid as seen, so a valid
//!   record with the same uuid after it is still delivered.
//! - The subagent source comes from the file, or from `isSidechain: true` in a
//!   main file; an `agentId` alone (main-thread records of some versions carry
//!   one) does not make a record a subagent's.
//! - Titles are emitted when their text changes for their [`TitleSource`];
//!   ranking sources is the renderer's job.

use std::borrow::{Borrow, Cow};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};

use memchr::memmem;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Event, EventKind, LinePos, Notice, Source, TitleSource, Usage};

/// How many tool-use ids (→ tool name) and `message.id`s (→ usage reported so
/// far) are remembered. A response's lines and a tool's result follow closely,
/// so a few thousand is plenty.
const ID_MAP_CAPACITY: usize = 4096;
/// How many sessions' identity (`cwd`, `version`, `gitBranch`) are remembered.
const SESSION_CAPACITY: usize = 64;
/// At most this many entries of a bounded map are reserved when it is made.
const BOUNDED_RESERVE: usize = 1 << 14;
/// How many shown queued prompts are remembered for their other appearances.
const QUEUED_CAPACITY: usize = 32;
/// At most this many candidate starts are tried when looking for a record
/// fused behind a torn prefix.
const FUSED_MAX_ATTEMPTS: usize = 256;

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
    /// What the last `decode_line` call repaired, if anything.
    last_repair: Option<Repair>,
    /// The first record the last `decode_line` call dropped for its shape.
    last_skip: Option<Skip>,
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
            last_repair: None,
            last_skip: None,
        }
    }

    /// Counts `uuid` as already delivered: its record, if read again, yields
    /// nothing (restart seeding from the checkpoint).
    pub fn remember(&mut self, uuid: &str) {
        self.seen.insert_new(uuid_key(uuid));
    }

    /// What the most recent [`decode_line`](Self::decode_line) call had to
    /// repair (the first repair when there were several), for metrics.
    pub fn last_repair(&self) -> Option<Repair> {
        self.last_repair
    }

    /// The first record the most recent [`decode_line`](Self::decode_line)
    /// call dropped for its shape, for metrics and one log line.
    pub fn last_skip(&self) -> Option<Skip> {
        self.last_skip
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
    pub fn decode_line(
        &mut self,
        raw: &[u8],
        _pos: &LinePos,
        source: &Source,
    ) -> Result<Vec<Event>, DecodeError> {
        self.last_repair = None;
        self.last_skip = None;
        let mut out = Vec::new();
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
            self.last_repair = Some(Repair::Nul);
        }
        let bytes = trim_ascii(trimmed);
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        if bytes.len() != raw.len() && self.decode_fast(bytes, source, &mut out) {
            return Ok(out);
        }
        let (values, repair) = parse_slow(bytes)?;
        if self.last_repair.is_none() {
            self.last_repair = repair;
        }
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
    fn decode_fast(&mut self, bytes: &[u8], source: &Source, out: &mut Vec<Event>) -> bool {
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

    fn process(&mut self, rec: &mut Record<'_>, given: &Source, out: &mut Vec<Event>) {
        // Taken out of the record so that the envelope can borrow them while the
        // handlers below take the record mutably.
        let uuid_field = rec.uuid.0.take();
        let timestamp_field = rec.timestamp.0.take();
        let ty_field = rec.ty.0.take();
        let ty = ty_field.as_deref().unwrap_or("");
        // Before the uuid is remembered: a dropped record must not make the
        // valid record with its uuid a duplicate.
        if let Some(skip) = shape_problem(ty, rec) {
            self.last_skip.get_or_insert(skip);
            return;
        }
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
        "local_command" => {
            let content = rec.content.text();
            let content = content.trim();
            let text = if is_tagged(content) {
                match readable_tagged(content) {
                    Some(t) => t,
                    None => return,
                }
            } else {
                content.to_owned()
            };
            if text.is_empty() {
                return;
            }
            (Notice::Command, text)
        }
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
        _ => {
            let content = rec.content.text();
            let content = content.trim();
            if content.is_empty() {
                return;
            }
            let text = if is_tagged(content) {
                match readable_tagged(content) {
                    Some(t) => t,
                    None => return,
                }
            } else {
                content.to_owned()
            };
            (Notice::System, text)
        }
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
        self.event(EventKind::Notice { notice, text })
    }
}

// ---------------------------------------------------------------------------
// Tagged user text
// ---------------------------------------------------------------------------

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
fn is_tagged(s: &str) -> bool {
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
fn teammate_messages(text: &str) -> Option<Vec<EventKind>> {
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
fn readable_tagged(s: &str) -> Option<String> {
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

/// Cuts `<system-reminder>…</system-reminder>` blocks that start a line (the
/// harness appends them to tool results and prompts; they are for the model).
fn strip_system_reminders(text: String) -> String {
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

// ---------------------------------------------------------------------------
// Raw bytes: trimming and repairs
// ---------------------------------------------------------------------------

fn trim_nuls(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != 0).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != 0).map_or(start, |i| i + 1);
    b.get(start..end.max(start)).unwrap_or(&[])
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.get(start..end.max(start)).unwrap_or(&[])
}

/// The fast path's parse, into `rec`: one vectorised UTF-8 check of the whole
/// line lets serde_json read it as `str` and skip validating every key and
/// value again. `false` sends the line to the slow path (`rec` may then be
/// partly filled and is to be dropped).
fn parse_fast<'a>(bytes: &'a [u8], rec: &mut Record<'a>) -> bool {
    let Ok(text) = simdutf8::basic::from_utf8(bytes) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(FillIn(rec)).is_ok() && de.end().is_ok()
}

/// The slow path: a line the typed parse rejected. Returns the record(s) it
/// holds (two when a torn-off record is fused with a complete one) and the
/// first repair that was needed.
fn parse_slow(bytes: &[u8]) -> Result<(Vec<Value>, Option<Repair>), DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => return Ok((vec![v], None)),
        Ok(_) => return Err(DecodeError::NotObject),
        Err(_) => {}
    }
    let mut buf: Cow<'_, [u8]> = Cow::Borrowed(bytes);
    let mut repair = None;
    let mut failure = DecodeError::Torn;
    if std::str::from_utf8(bytes).is_err() {
        buf = Cow::Owned(String::from_utf8_lossy(bytes).into_owned().into_bytes());
        repair = Some(Repair::InvalidUtf8);
        failure = DecodeError::InvalidUtf8;
    }
    if let Some(fixed) = fix_lone_surrogates(&buf) {
        buf = Cow::Owned(fixed);
        repair.get_or_insert(Repair::Surrogate);
        if failure == DecodeError::Torn {
            failure = DecodeError::Surrogate;
        }
    }
    if repair.is_some() {
        match serde_json::from_slice::<Value>(&buf) {
            Ok(v) if v.is_object() => return Ok((vec![v], repair)),
            Ok(_) => return Err(DecodeError::NotObject),
            Err(_) => {}
        }
    }
    match recover_fused(&buf) {
        Some(values) => Ok((values, Some(repair.unwrap_or(Repair::Fused)))),
        None => Err(failure),
    }
}

/// A torn prefix glued to a complete record (`{"parentUu{"parentUuid":…}`):
/// the earliest `{"` from which the rest of the line parses as one object is
/// the trailing record. When the prefix itself is a complete object (two
/// records missing their newline), it is kept too.
fn recover_fused(b: &[u8]) -> Option<Vec<Value>> {
    if b.last() != Some(&b'}') {
        return None; // a record always ends with '}': this is a plain torn line
    }
    let mut attempts = 0;
    for p in memchr::memchr_iter(b'{', b).skip_while(|&p| p == 0) {
        if b.get(p + 1) != Some(&b'"') {
            continue;
        }
        attempts += 1;
        if attempts > FUSED_MAX_ATTEMPTS {
            return None;
        }
        let tail = b.get(p..)?;
        if serde_json::from_slice::<IgnoredAny>(tail).is_err() {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Value>(tail) else {
            continue;
        };
        if !record.is_object() {
            continue;
        }
        let mut values = Vec::with_capacity(2);
        if let Ok(head) = serde_json::from_slice::<Value>(b.get(..p)?) {
            if head.is_object() {
                values.push(head);
            }
        }
        values.push(record);
        return Some(values);
    }
    None
}

/// Replaces `\uD800`–`\uDFFF` escapes that are not part of a high+low pair with
/// `\uFFFD`. Returns `None` when there was nothing to replace.
fn fix_lone_surrogates(b: &[u8]) -> Option<Vec<u8>> {
    let hex4 = |at: usize| -> Option<u16> {
        let digits = b.get(at..at + 4)?;
        let s = std::str::from_utf8(digits).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let is_high = |u: u16| (0xD800..=0xDBFF).contains(&u);
    let is_low = |u: u16| (0xDC00..=0xDFFF).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let j = i + off;
        match b.get(j + 1) {
            Some(b'u') => {
                let Some(unit) = hex4(j + 2) else {
                    i = j + 2;
                    continue;
                };
                let lone = if is_high(unit) {
                    let paired = b.get(j + 6) == Some(&b'\\')
                        && b.get(j + 7) == Some(&b'u')
                        && hex4(j + 8).is_some_and(is_low);
                    if paired {
                        i = j + 12;
                        continue;
                    }
                    true
                } else {
                    is_low(unit)
                };
                if lone {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
                    o.extend_from_slice(b.get(copied..j).unwrap_or(&[]));
                    o.extend_from_slice(b"\\uFFFD");
                    copied = j + 6;
                }
                i = j + 6;
            }
            Some(_) => i = j + 2,
            None => break,
        }
    }
    let mut o = out?;
    o.extend_from_slice(b.get(copied..).unwrap_or(&[]));
    Some(o)
}

// ---------------------------------------------------------------------------
// Bounded state
// ---------------------------------------------------------------------------

/// A map that forgets its oldest insertions beyond `cap` entries.
///
/// Hashed with foldhash: keys are ids looked up on every line, where SipHash
/// was a measurable share of decoding; foldhash is still seeded per process.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, V, foldhash::fast::RandomState>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        // Reserved up front (bounded) so that replaying a long transcript from
        // the beginning does not pay for growing and rehashing step by step.
        let reserve = cap.min(BOUNDED_RESERVE);
        Self {
            map: HashMap::with_capacity_and_hasher(reserve, Default::default()),
            order: VecDeque::with_capacity(reserve),
            cap,
        }
    }

    fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(k)
    }

    fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(k)
    }

    /// Inserts or updates; an update keeps the entry's age. The owned key is
    /// only made when the key is new; with `Arc<str>` keys the map and the
    /// eviction order then share that one allocation.
    fn insert<Q>(&mut self, k: &Q, v: V)
    where
        K: Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.map.get_mut(k) {
            *slot = v;
            return;
        }
        self.push(K::from(k), v);
    }

    /// Adds a key known to be absent, evicting the oldest entries to fit.
    fn push(&mut self, k: K, v: V) {
        if self.cap == 0 {
            return;
        }
        self.order.push_back(k.clone());
        self.map.insert(k, v);
        self.evict_over_cap();
    }

    /// Forgets the oldest entries until at most `cap` are left. The newest
    /// key is at the back of `order`, so with `cap >= 1` it always stays.
    fn evict_over_cap(&mut self) {
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

impl<K: Hash + Eq + Clone> Bounded<K, ()> {
    /// `true` when `k` was not remembered (and now is). With capacity 0 every
    /// key is new. One probe: insert first, evict after.
    fn insert_new(&mut self, k: K) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.map.insert(k.clone(), ()).is_some() {
            return false;
        }
        self.order.push_back(k);
        self.evict_over_cap();
        true
    }
}

/// A record uuid as the 16 bytes the dedupe window stores.
///
/// A canonical UUID (8-4-4-4-12 hex digits, either case) is its own value, so
/// those keys are exact. Anything else is the first 16 bytes of its SHA-256:
/// for such a key to drop a record wrongly it would have to collide with one
/// of at most `dedupe_capacity` others, at odds of 2^-128 each. Plain `u128`
/// keys halve the window's memory against a string-or-number enum, and the
/// window is probed once per line at random, so its size is time: this
/// measured 3 % of decoding.
fn uuid_key(s: &str) -> u128 {
    /// Hex digit values; 0xff marks a non-digit.
    const HEX: [u8; 256] = {
        let mut t = [0xff; 256];
        let mut i = 0;
        while i < 16 {
            t[b"0123456789abcdef"[i] as usize] = i as u8;
            t[b"0123456789ABCDEF"[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    let b = s.as_bytes();
    if b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') {
        // Branch-free per digit: a non-digit sets high bits in `bad`.
        let (mut n, mut bad) = (0u128, 0u8);
        for group in [&b[..8], &b[9..13], &b[14..18], &b[19..23], &b[24..]] {
            for &c in group {
                let d = HEX[usize::from(c)];
                bad |= d;
                n = (n << 4) | u128::from(d & 0x0f);
            }
        }
        if bad & 0xf0 == 0 {
            return n;
        }
    }
    let digest = Sha256::digest(b);
    let mut head = [0u8; 16];
    head.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(head)
}

// ---------------------------------------------------------------------------
// Lenient borrowed record types
// ---------------------------------------------------------------------------

/// Any JSON value seen through a lenient field: scalars are kept, containers
/// are skipped.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Other,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map).map(|_| Scalar::Other)
    }
}

/// A string field; any other type reads as absent.
#[derive(Default)]
struct LStr<'a>(Option<Cow<'a, str>>);

impl<'a> LStr<'a> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match d.deserialize_any(ScalarVisitor)? {
            Scalar::Str(s) => LStr(Some(s)),
            _ => LStr(None),
        })
    }
}

/// Declares a lenient `Copy` scalar field: `$read` maps the [`Scalar`] seen
/// to the value, `None` (absent) for any other type.
macro_rules! lenient_scalar {
    ($(#[$meta:meta])* $name:ident($ty:ty), $read:expr) => {
        $(#[$meta])*
        #[derive(Default)]
        struct $name(Option<$ty>);

        impl $name {
            fn get(&self) -> Option<$ty> {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let read: fn(Scalar<'de>) -> Option<$ty> = $read;
                Ok($name(read(d.deserialize_any(ScalarVisitor)?)))
            }
        }
    };
}

lenient_scalar!(
    /// A boolean field; any other type reads as absent.
    LBool(bool),
    |s| match s {
        Scalar::Bool(b) => Some(b),
        _ => None,
    }
);

lenient_scalar!(
    /// A non-negative number field (floats truncated); anything else is absent.
    LU64(u64),
    |s| match s {
        Scalar::U64(n) => Some(n),
        Scalar::I64(n) => u64::try_from(n).ok(),
        // Truncation is intended: token counts written as floats.
        Scalar::F64(f) if f.is_finite() && f >= 0.0 => Some(f as u64),
        _ => None,
    }
);

lenient_scalar!(
    /// A number field as `f64`; anything else is absent.
    LF64(f64),
    |s| match s {
        Scalar::U64(n) => Some(n as f64),
        Scalar::I64(n) => Some(n as f64),
        Scalar::F64(f) => Some(f),
        _ => None,
    }
);

/// Visitor methods for the scalar types a lenient container field does not
/// accept: each reads as `$absent` instead of failing the record.
macro_rules! scalars_read_as {
    ($absent:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
}

/// A lenient struct that is filled from the entries of a JSON object: every
/// field starts as its `Default` (absent) and unknown keys are skipped.
trait Fill<'de>: Default {
    fn fill<A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error>;
}

impl<'de, T: Fill<'de>> Fill<'de> for Box<T> {
    fn fill<A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error> {
        (**self).fill(map)
    }
}

/// Fills a caller-owned `T` from the object a deserializer holds, so that the
/// top-level record is never moved (it is the largest value of a parse).
struct FillIn<'r, T>(&'r mut T);

impl<'de, T: Fill<'de>> Visitor<'de> for FillIn<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.fill(map)
    }
}

/// Declares a lenient struct and its [`Fill`], mapping JSON keys to fields.
///
/// Hand-rolled rather than `#[derive(Deserialize)]` with `#[serde(default)]`:
/// the derive keeps an `Option` per field beside a whole `Default` value,
/// assembles the struct at the end and returns it through every `Result` on
/// the way up. For the 30-field [`Record`] those copies were the largest cost
/// after string scanning. Here each value is written straight into its field.
/// A repeated key keeps its last value, as the slow path's
/// `serde_json::Value` does, instead of failing the fast path.
macro_rules! lenient_struct {
    (
        $(#[$meta:meta])*
        struct $name:ident $(<$lt:lifetime>)? {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        struct $name $(<$lt>)? {
            $( $(#[$fmeta])* $field: $ty, )*
        }

        const _: () = {
            #[allow(non_camel_case_types)]
            enum Key {
                $($field,)*
                Other,
            }

            impl<'de> Deserialize<'de> for Key {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl Visitor<'_> for V {
                        type Value = Key;
                        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                            f.write_str("a field name")
                        }
                        fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                            Ok(match v {
                                $($key => Key::$field,)*
                                _ => Key::Other,
                            })
                        }
                    }
                    d.deserialize_identifier(V)
                }
            }

            impl<'de $(: $lt, $lt)?> Fill<'de> for $name $(<$lt>)? {
                fn fill<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
                    while let Some(key) = map.next_key::<Key>()? {
                        match key {
                            $(Key::$field => self.$field = map.next_value::<$ty>()?,)*
                            Key::Other => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(())
                }
            }
        };
    };
}

/// An object field filled as `T`; any other type reads as absent.
struct Obj<T>(Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Fill<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Fill<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut t = T::default();
                t.fill(map)?;
                Ok(Obj(Some(t)))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Obj(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            scalars_read_as!(Obj(None));
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// `message.content` (and tool-result content): a string or an array of blocks.
#[derive(Default)]
enum Content<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<Block<'a>>),
    #[default]
    None,
}

impl<'a> Content<'a> {
    /// Prompt text (text blocks joined by newlines) and the number of images.
    fn prompt(&self) -> (String, usize) {
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
    fn into_prompt(self) -> (String, usize) {
        match self {
            Content::Text(t) => (t.into_owned(), 0),
            other => other.prompt(),
        }
    }

    /// [`result_text`](Self::result_text), moving a lone string.
    fn into_result_text(self) -> String {
        match self {
            Content::Text(t) => t.into_owned(),
            other => other.result_text(),
        }
    }

    /// Plain text of a string field (`system.content`, queue `content`).
    fn text(&self) -> String {
        self.prompt().0
    }

    /// Tool-result content: text blocks joined, images as `[image]`.
    fn result_text(&self) -> String {
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
    fn to_usage(&self) -> Usage {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::transcript::fixtures as fx;

    fn pos() -> LinePos {
        LinePos {
            file: "/t/session.jsonl".into(),
            start: 0,
            end: 0,
        }
    }

    fn decoder() -> Decoder {
        Decoder::new(DecoderConfig {
            dedupe_capacity: 1000,
        })
    }

    fn decode(d: &mut Decoder, line: &str) -> Vec<EventKind> {
        d.decode_line(line.as_bytes(), &pos(), &Source::Main)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Decodes and drops `SessionMeta`, which the first record of a session adds.
    fn kinds(d: &mut Decoder, line: &str) -> Vec<EventKind> {
        decode(d, line)
            .into_iter()
            .filter(|k| !matches!(k, EventKind::SessionMeta { .. }))
            .collect()
    }

    fn one(line: &str) -> Vec<EventKind> {
        kinds(&mut decoder(), line)
    }

    fn prompt(text: &str) -> EventKind {
        EventKind::UserPrompt {
            text: text.into(),
            images: 0,
        }
    }

    fn notice(notice: Notice, text: &str) -> EventKind {
        EventKind::Notice {
            notice,
            text: text.into(),
        }
    }

    fn err(line: &[u8]) -> &'static str {
        decoder()
            .decode_line(line, &pos(), &Source::Main)
            .unwrap_err()
            .reason()
    }

    // ---- pitfalls (TRANSCRIPT_FORMAT.md §6) ----

    #[test]
    fn pitfall_02_torn_line_is_counted_and_the_next_line_still_decodes() {
        let full = fx::user_prompt("11111111-1111-4111-8111-111111111111", "hello");
        let mut d = decoder();
        let torn = &full.as_bytes()[..full.len() / 2];
        let e = d.decode_line(torn, &pos(), &Source::Main).unwrap_err();
        assert_eq!(e.reason(), "torn");
        assert_eq!(kinds(&mut d, &full), vec![prompt("hello")]);
        assert_eq!(err(b"{"), "torn");
        assert_eq!(err(b"not json at all"), "torn");
        assert_eq!(err(b"{\"type\":\"user\",}"), "torn");
    }

    #[test]
    fn pitfall_03_fused_record_behind_a_torn_prefix_is_recovered() {
        let a = fx::user_prompt("11111111-1111-4111-8111-111111111111", "first");
        let b = fx::user_prompt("22222222-2222-4222-8222-222222222222", "second");
        let fused = format!("{}{}", &a[..a.len() - 20], b);
        let mut d = decoder();
        assert_eq!(kinds(&mut d, &fused), vec![prompt("second")]);
        assert_eq!(d.last_repair().map(|r| r.reason()), Some("fused"));
        // Two whole records missing their newline: both are kept.
        let mut d = decoder();
        assert_eq!(
            kinds(&mut d, &format!("{a}{b}")),
            vec![prompt("first"), prompt("second")]
        );
        // A torn prefix glued to a torn record: nothing to recover.
        assert_eq!(err(format!("{}{}", &a[..30], &b[..60]).as_bytes()), "torn");
    }

    #[test]
    fn pitfall_04_nul_runs_and_nuls_before_a_record() {
        assert_eq!(err(b"\0\0\0\0"), "nul");
        let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "after nuls");
        let mut d = decoder();
        let mut raw = vec![0u8; 64];
        raw.extend_from_slice(line.as_bytes());
        raw.extend_from_slice(b"\0\0");
        let evs = d.decode_line(&raw, &pos(), &Source::Main).unwrap();
        assert_eq!(evs.last().unwrap().kind, prompt("after nuls"));
        assert_eq!(d.last_repair(), Some(Repair::Nul));
        // An empty line is not an error.
        assert!(decoder()
            .decode_line(b"", &pos(), &Source::Main)
            .unwrap()
            .is_empty());
        assert!(decoder()
            .decode_line(b"  \r", &pos(), &Source::Main)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn pitfall_05_invalid_utf8_is_decoded_lossily() {
        let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "caf@ ok");
        let raw = line.replace('@', "\u{1}").into_bytes();
        let raw: Vec<u8> = raw
            .into_iter()
            .map(|b| if b == 1 { 0xFF } else { b })
            .collect();
        let mut d = decoder();
        let evs = d.decode_line(&raw, &pos(), &Source::Main).unwrap();
        assert_eq!(evs.last().unwrap().kind, prompt("caf\u{FFFD} ok"));
        assert_eq!(d.last_repair(), Some(Repair::InvalidUtf8));
        // Invalid UTF-8 in a line that is also torn: counted as invalid_utf8.
        assert_eq!(err(&raw[..raw.len() - 5]), "invalid_utf8");
    }

    #[test]
    fn pitfall_06_lone_surrogate_escapes_become_replacement_chars() {
        let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "cut @ emoji");
        let raw = line.replace('@', "\\ud83d");
        assert!(
            serde_json::from_str::<Value>(&raw).is_err(),
            "serde rejects it"
        );
        let mut d = decoder();
        assert_eq!(kinds(&mut d, &raw), vec![prompt("cut \u{FFFD} emoji")]);
        assert_eq!(d.last_repair(), Some(Repair::Surrogate));
        // A lone low surrogate, and a valid pair next to a lone one.
        let raw = line.replace('@', "\\uDE00 \\ud83d\\ude00 \\ud83d");
        assert_eq!(one(&raw), vec![prompt("cut \u{FFFD} 😀 \u{FFFD} emoji")]);
        // An escaped backslash followed by "ud83d" is plain text, not an escape.
        let raw = line.replace('@', "\\\\ud83d");
        assert_eq!(one(&raw), vec![prompt("cut \\ud83d emoji")]);
        // Torn and surrogate: counted as surrogate.
        let raw = line.replace('@', "\\ud83d");
        assert_eq!(err(&raw.as_bytes()[..raw.len() - 3]), "surrogate");
    }

    #[test]
    fn lone_surrogate_in_a_skipped_field_needs_no_repair() {
        let line = fx::with_fields(
            &fx::user_prompt("11111111-1111-4111-8111-111111111111", "hi"),
            json!({"toolUseResult": "@"}),
        )
        .replace('@', "\\ud83d");
        let mut d = decoder();
        assert_eq!(kinds(&mut d, &line), vec![prompt("hi")]);
        assert_eq!(d.last_repair(), None);
    }

    #[test]
    fn pitfall_07_megabyte_image_line_decodes() {
        let data = "A".repeat(3 << 20);
        let line = fx::user_content(
            "11111111-1111-4111-8111-111111111111",
            json!([
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                {"type": "text", "text": "what is this?"}
            ]),
        );
        assert_eq!(
            one(&line),
            vec![EventKind::UserPrompt {
                text: "what is this?".into(),
                images: 1
            }]
        );
    }

    #[test]
    fn pitfall_08_unknown_types_blocks_and_fields_are_ignored_silently() {
        let mut d = decoder();
        for line in [
            r#"{"type":"hologram","uuid":"x1","payload":{"frames":12}}"#,
            r#"{"type":"file-history-snapshot","messageId":"m","snapshot":{}}"#,
            r#"{"type":"pr-link","prNumber":1,"prUrl":"https://x"}"#,
            r#"{"no_type_at_all":true}"#,
            r#"{"type":42}"#,
        ] {
            assert_eq!(decode(&mut d, line), vec![], "{line}");
        }
        let line = fx::assistant_block(
            "11111111-1111-4111-8111-111111111111",
            "msg_1",
            json!({"type": "quantum_block", "qubits": 3}),
            fx::usage(1, 1, 0, 0),
        );
        let line = fx::with_fields(&line, json!({"brandNewField": {"deep": [1, 2]}}));
        let evs = one(&line);
        assert!(
            matches!(evs.as_slice(), [EventKind::Usage { .. }]),
            "{evs:?}"
        );
        // Fields of an unexpected type read as absent instead of failing the record.
        let line = fx::with_fields(
            &fx::user_prompt("22222222-2222-4222-8222-222222222222", "typed"),
            json!({"isMeta": "yes", "timestamp": 5, "cwd": ["x"]}),
        );
        assert_eq!(one(&line), vec![prompt("typed")]);
    }

    #[test]
    fn not_an_object_is_its_own_reason() {
        assert_eq!(err(b"[1,2,3]"), "not_object");
        assert_eq!(err(b"\"user\""), "not_object");
        assert_eq!(err(b"42"), "not_object");
        assert_eq!(err(b"[\"user\"]"), "not_object");
    }

    #[test]
    fn pitfall_09_session_id_and_snake_case_duplicate_reads_session_id() {
        let line = fx::with_fields(
            &fx::user_prompt("11111111-1111-4111-8111-111111111111", "hi"),
            json!({"session_id": "other-value"}),
        );
        let evs = decode(&mut decoder(), &line);
        assert_eq!(
            evs[0],
            EventKind::SessionMeta {
                session_id: fx::SESSION_ID.into(),
                cwd: Some(fx::CWD.into()),
                version: Some(fx::VERSION.into()),
                git_branch: Some(fx::GIT_BRANCH.into()),
            }
        );
        assert_eq!(evs[1], prompt("hi"));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_on_the_fast_path() {
        let line =
            r#"{"type":"user","uuid":"u1","uuid":"u2","message":{"role":"user","content":"dup"}}"#;
        assert!(parse_fast(line.as_bytes(), &mut Record::default()));
        let mut d = decoder();
        let evs = d
            .decode_line(line.as_bytes(), &pos(), &Source::Main)
            .unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].uuid.as_deref(), Some("u2"));
        assert_eq!(evs[0].kind, prompt("dup"));
    }

    #[test]
    fn pitfall_10_same_uuid_twice_is_delivered_once() {
        let line = fx::user_prompt("11111111-1111-4111-8111-111111111111", "once");
        let mut d = decoder();
        assert_eq!(kinds(&mut d, &line), vec![prompt("once")]);
        assert_eq!(decode(&mut d, &line), vec![]);
        // Case of the hex digits does not matter.
        let lower = fx::user_prompt("abcdef01-1111-4111-8111-111111111111", "hex");
        assert_eq!(kinds(&mut d, &lower), vec![prompt("hex")]);
        assert_eq!(
            decode(&mut d, &lower.replace("abcdef01", "ABCDEF01")),
            vec![]
        );
        // A non-hex digit makes it an opaque key, never a canonical look-alike.
        let odd = lower.replace("abcdef01", "gbcdef01");
        assert_eq!(kinds(&mut d, &odd), vec![prompt("hex")]);
        let near = lower.replace("abcdef01", "fbcdef01");
        assert_eq!(kinds(&mut d, &near), vec![prompt("hex")]);
        assert_eq!(decode(&mut d, &odd), vec![]);
    }

    #[test]
    fn uuid_keys_are_exact_for_canonical_uuids_and_hashed_otherwise() {
        let canonical = "0123abcd-4567-4890-8abc-def012345678";
        assert_eq!(uuid_key(canonical), 0x0123abcd_4567_4890_8abc_def012345678);
        assert_eq!(uuid_key(canonical), uuid_key(&canonical.to_uppercase()));
        // Not canonical: hashed, stable, and distinct from each other.
        let odd = [
            "u1",
            "u2",
            "",
            "0123abcd-4567-4890-8abc-def01234567",
            "0123abcd_4567",
        ];
        for (i, a) in odd.iter().enumerate() {
            assert_eq!(uuid_key(a), uuid_key(a));
            assert_ne!(uuid_key(a), uuid_key(canonical));
            for b in &odd[i + 1..] {
                assert_ne!(uuid_key(a), uuid_key(b), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn dedupe_capacity_evicts_the_oldest_uuid_first() {
        let mut d = Decoder::new(DecoderConfig { dedupe_capacity: 2 });
        let a = fx::user_prompt("a", "a");
        let b = fx::user_prompt("b", "b");
        let c = fx::user_prompt("c", "c");
        assert_eq!(kinds(&mut d, &a), vec![prompt("a")]);
        assert_eq!(kinds(&mut d, &b), vec![prompt("b")]);
        assert_eq!(kinds(&mut d, &b), vec![]);
        assert_eq!(kinds(&mut d, &c), vec![prompt("c")]); // evicts "a"
        assert_eq!(kinds(&mut d, &a), vec![prompt("a")]);
        let mut off = Decoder::new(DecoderConfig { dedupe_capacity: 0 });
        assert_eq!(kinds(&mut off, &a), vec![prompt("a")]);
        assert_eq!(kinds(&mut off, &a), vec![prompt("a")]);
    }

    #[test]
    fn pitfall_11_one_response_over_lines_reports_usage_once_as_deltas() {
        let mut d = decoder();
        let u1 = fx::usage(10, 8, 6000, 11000);
        let u3 = fx::usage(10, 611, 6000, 11000);
        let l1 = fx::thinking("a1", "msg_A", "hmm", u1);
        let l2 = fx::assistant_text("a2", "msg_A", "Let me look.", u1);
        let l3 = fx::tool_use(
            "a3",
            "msg_A",
            "toolu_1",
            "Read",
            json!({"file_path": "/x"}),
            u3,
        );
        let l4 = fx::assistant_text(
            "a4",
            "msg_A",
            "late line, smaller usage",
            fx::usage(1, 2, 3, 4),
        );
        let mut total = Usage::default();
        let mut all = Vec::new();
        for l in [&l1, &l2, &l3, &l4] {
            for k in kinds(&mut d, l) {
                if let EventKind::Usage {
                    usage,
                    message_id,
                    model,
                } = &k
                {
                    assert_eq!(message_id, "msg_A");
                    assert_eq!(model, fx::MODEL);
                    total = total.add(*usage);
                }
                all.push(k);
            }
        }
        assert_eq!(total, u3, "max per field, never the sum of lines");
        let usage_events: Vec<_> = all
            .iter()
            .filter_map(|k| match k {
                EventKind::Usage { usage, .. } => Some(*usage),
                _ => None,
            })
            .collect();
        assert_eq!(usage_events, vec![u1, fx::usage(0, 603, 0, 0)]);
        assert_eq!(all[0], EventKind::Thinking { text: "hmm".into() });
        assert_eq!(
            all[2],
            EventKind::AssistantText {
                text: "Let me look.".into(),
                model: Some(fx::MODEL.into())
            }
        );
    }

    #[test]
    fn pitfall_12_replay_after_rewrite_posts_nothing_twice() {
        let lines = [
            fx::user_prompt("u-1", "one"),
            fx::assistant_text("u-2", "msg_1", "two", fx::usage(1, 2, 0, 0)),
            fx::tool_result("u-3", "toolu_x", "three", None),
        ];
        let mut d = decoder();
        let first: usize = lines.iter().map(|l| decode(&mut d, l).len()).sum();
        assert!(first >= 4);
        // The file was rewritten: everything is read again from offset 0.
        let again: usize = lines.iter().map(|l| decode(&mut d, l).len()).sum();
        assert_eq!(again, 0);
    }

    #[test]
    fn pitfall_14_content_shapes_and_is_error_variants() {
        let mut d = decoder();
        kinds(
            &mut d,
            &fx::tool_use(
                "a1",
                "m1",
                "toolu_1",
                "Bash",
                json!({"command": "ls"}),
                fx::usage(1, 1, 0, 0),
            ),
        );
        let array = fx::user_content(
            "u1",
            json!([{"tool_use_id": "toolu_1", "type": "tool_result",
                    "content": [{"type": "text", "text": "line a"}, {"type": "text", "text": "line b"},
                                {"type": "image", "source": {"data": "AAAA"}}],
                    "is_error": null}]),
        );
        let array = fx::with_fields(&array, json!({"toolUseResult": [{"type": "text"}]}));
        assert_eq!(
            kinds(&mut d, &array),
            vec![EventKind::ToolResult {
                tool_use_id: "toolu_1".into(),
                tool_name: Some("Bash".into()),
                content: "line a\nline b\n[image]".into(),
                is_error: false,
            }]
        );
        let absent = fx::tool_result("u2", "toolu_unknown", "plain", None);
        assert_eq!(
            kinds(&mut d, &absent),
            vec![EventKind::ToolResult {
                tool_use_id: "toolu_unknown".into(),
                tool_name: None,
                content: "plain".into(),
                is_error: false,
            }]
        );
        let failed = fx::tool_result(
            "u3",
            "toolu_1",
            "Exit code 1\n\u{1b}[31merror\u{1b}[0m",
            Some(true),
        );
        assert_eq!(
            kinds(&mut d, &failed),
            vec![EventKind::ToolResult {
                tool_use_id: "toolu_1".into(),
                tool_name: Some("Bash".into()),
                content: "Exit code 1\n\u{1b}[31merror\u{1b}[0m".into(),
                is_error: true,
            }]
        );
        // Prompt content as an array of text blocks.
        let blocks = fx::user_content(
            "u4",
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        );
        assert_eq!(kinds(&mut d, &blocks), vec![prompt("a\nb")]);
    }

    #[test]
    fn pitfall_15_nul_escapes_and_control_chars_inside_strings_are_kept() {
        let line = fx::tool_result("u1", "t", "a\u{0}b\u{7}c\u{1b}[0m\r\n", Some(false));
        assert!(line.contains("\\u0000"));
        match &one(&line)[0] {
            EventKind::ToolResult { content, .. } => {
                assert_eq!(content, "a\u{0}b\u{7}c\u{1b}[0m\r\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pitfall_16_trailing_carriage_return_is_trimmed() {
        let line = format!("{}\r", fx::user_prompt("u1", "windows"));
        assert_eq!(one(&line), vec![prompt("windows")]);
    }

    // ---- record kinds ----

    #[test]
    fn user_record_priority_order() {
        let meta = fx::with_fields(&fx::user_prompt("u1", "injected"), json!({"isMeta": true}));
        assert_eq!(one(&meta), vec![]);
        let summary = fx::compact_summary(
            "u2",
            "This session is being continued from a previous conversation that ran out of context.",
        );
        assert_eq!(
            one(&summary),
            vec![notice(
                Notice::CompactSummary,
                "This session is being continued from a previous conversation that ran out of context."
            )]
        );
        let hidden_summary = fx::with_fields(&summary, json!({"isMeta": true}));
        assert_eq!(one(&hidden_summary), vec![]);
        let interrupted = fx::user_content(
            "u3",
            json!([{"type": "text", "text": "[Request interrupted by user for tool use]"}]),
        );
        assert_eq!(
            one(&interrupted),
            vec![notice(
                Notice::Interrupted,
                "[Request interrupted by user for tool use]"
            )]
        );
        // A tool result wins over isMeta.
        let result = fx::with_fields(
            &fx::tool_result("u4", "t1", "ok", None),
            json!({"isMeta": true}),
        );
        assert!(matches!(
            one(&result).as_slice(),
            [EventKind::ToolResult { .. }]
        ));
    }

    #[test]
    fn tagged_user_text_becomes_readable_command_notices() {
        let cases = [
            (
                "<command-name>/clear</command-name>\n            <command-message>clear</command-message>\n            <command-args>all of it</command-args>",
                Some("/clear all of it"),
            ),
            (
                "<command-name>/compact</command-name>\n<command-message>compact</command-message>\n<command-args></command-args>",
                Some("/compact"),
            ),
            ("<command-name>model</command-name><command-args>sonnet</command-args>", Some("/model sonnet")),
            ("<local-command-stdout>Compacted </local-command-stdout>", Some("Compacted")),
            ("<local-command-stdout></local-command-stdout>", None),
            ("<bash-input>git status --short</bash-input>", Some("$ git status --short")),
            (
                "<bash-stdout> M src/a.rs\n?? notes.md</bash-stdout><bash-stderr></bash-stderr>",
                Some(" M src/a.rs\n?? notes.md"),
            ),
            (
                "<task-notification><task-id>b1</task-id><summary>Background task done</summary></task-notification>",
                Some("b1\nBackground task done"),
            ),
            ("<system-reminder>model only</system-reminder>", None),
            ("<local-command-caveat>Caveat: ...</local-command-caveat>", None),
        ];
        for (text, want) in cases {
            let got = one(&fx::user_prompt("u1", text));
            let want: Vec<EventKind> = want
                .map(|w| notice(Notice::Command, w))
                .into_iter()
                .collect();
            assert_eq!(got, want, "{text}");
        }
        // Angle brackets in a real prompt do not make it a command.
        assert_eq!(
            one(&fx::user_prompt("u2", "<div> is not closed, why?")),
            vec![prompt("<div> is not closed, why?")]
        );
    }

    #[test]
    fn prompt_with_images_counts_them() {
        let line = fx::user_content(
            "u1",
            json!([{"type": "image", "source": {"data": "AAAA"}}, {"type": "image", "source": {"data": "BBBB"}},
                   {"type": "text", "text": "compare these"}]),
        );
        assert_eq!(
            one(&line),
            vec![EventKind::UserPrompt {
                text: "compare these".into(),
                images: 2
            }]
        );
        let only_image =
            fx::user_content("u2", json!([{"type": "image", "source": {"data": "A"}}]));
        assert_eq!(
            one(&only_image),
            vec![EventKind::UserPrompt {
                text: String::new(),
                images: 1
            }]
        );
    }

    #[test]
    fn system_reminders_are_cut_from_tool_results() {
        let line = fx::tool_result(
            "u1",
            "t1",
            "     1→fn main() {}\n\n<system-reminder>\nfor the model\n</system-reminder>\n",
            None,
        );
        match &one(&line)[0] {
            EventKind::ToolResult { content, .. } => assert_eq!(content, "     1→fn main() {}"),
            other => panic!("{other:?}"),
        }
        // Mid-line mentions stay.
        let line = fx::tool_result(
            "u2",
            "t1",
            "grep hit: <system-reminder> x </system-reminder>",
            None,
        );
        match &one(&line)[0] {
            EventKind::ToolResult { content, .. } => {
                assert_eq!(content, "grep hit: <system-reminder> x </system-reminder>");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn assistant_blocks_map_to_events_and_tool_names_flow_to_results() {
        let mut d = decoder();
        let u = fx::usage(3, 5, 0, 0);
        let evs = kinds(
            &mut d,
            &fx::tool_use("a1", "m1", "toolu_9", "Grep", json!({"pattern": "fn"}), u),
        );
        assert_eq!(
            evs,
            vec![
                EventKind::ToolUse {
                    id: "toolu_9".into(),
                    name: "Grep".into(),
                    input: json!({"pattern": "fn"}),
                },
                EventKind::Usage {
                    message_id: "m1".into(),
                    model: fx::MODEL.into(),
                    usage: u
                },
            ]
        );
        let evs = kinds(
            &mut d,
            &fx::tool_result("u1", "toolu_9", "src/a.rs:1:fn", None),
        );
        assert!(matches!(&evs[0], EventKind::ToolResult { tool_name: Some(n), .. } if n == "Grep"));
        let redacted = fx::assistant_block(
            "a2",
            "m2",
            json!({"type": "redacted_thinking", "data": "xx"}),
            u,
        );
        assert_eq!(
            kinds(&mut d, &redacted)[0],
            EventKind::Thinking {
                text: String::new()
            }
        );
        let blank = fx::assistant_text("a3", "m3", "\n\n", u);
        assert!(matches!(
            kinds(&mut d, &blank).as_slice(),
            [EventKind::Usage { .. }]
        ));
        let fallback = fx::assistant_block(
            "a4",
            "m4",
            json!({"type": "fallback", "from": {"model": "claude-opus-4-6"}, "to": {"model": "claude-sonnet-4-6"}}),
            u,
        );
        assert_eq!(
            kinds(&mut d, &fallback)[0],
            notice(
                Notice::System,
                "Model fallback: claude-opus-4-6 → claude-sonnet-4-6"
            )
        );
    }

    #[test]
    fn synthetic_api_error_rows_are_notices_without_usage() {
        let line = fx::api_error_row("a1", "API Error: Repeated 529 Overloaded errors");
        assert_eq!(
            one(&line),
            vec![notice(
                Notice::ApiError,
                "API Error: Repeated 529 Overloaded errors"
            )]
        );
        let no_response = fx::with_fields(
            &fx::api_error_row("a2", "No response requested."),
            json!({"isApiErrorMessage": false}),
        );
        assert_eq!(
            one(&no_response),
            vec![notice(Notice::System, "No response requested.")]
        );
    }

    #[test]
    fn system_subtypes() {
        let cases = [
            (
                fx::compact_boundary("s1", "manual", 48211),
                Some((
                    Notice::CompactBoundary,
                    "Conversation compacted (manual, 48211 tokens before)",
                )),
            ),
            (
                fx::system(
                    "s2",
                    "microcompact_boundary",
                    json!({"microcompactMetadata": {"trigger": "auto", "preTokens": 9000}}),
                ),
                Some((
                    Notice::CompactBoundary,
                    "Context microcompacted (auto, 9000 tokens before)",
                )),
            ),
            (
                fx::system(
                    "s3",
                    "api_error",
                    json!({"level": "error", "error": {"status": 529, "message": "Overloaded"}, "retryInMs": 1130.4, "retryAttempt": 1, "maxRetries": 10}),
                ),
                Some((
                    Notice::ApiError,
                    "API error 529: Overloaded (retry 1/10 in 1.1s)",
                )),
            ),
            (
                fx::turn_duration("s4", 48213),
                Some((Notice::System, "Turn completed in 48.2s")),
            ),
            (
                fx::turn_duration("s5", 125_000),
                Some((Notice::System, "Turn completed in 2m 5s")),
            ),
            (
                fx::system(
                    "s6",
                    "local_command",
                    json!({"content": "<command-name>/model</command-name>\n<command-args>sonnet</command-args>"}),
                ),
                Some((Notice::Command, "/model sonnet")),
            ),
            (
                fx::system("s7", "stop_hook_summary", json!({"hookErrors": []})),
                None,
            ),
            (
                fx::system(
                    "s8",
                    "stop_hook_summary",
                    json!({"hookErrors": ["notify.sh exited 1"]}),
                ),
                Some((Notice::System, "Stop hook failed: notify.sh exited 1")),
            ),
            (
                fx::system(
                    "s9",
                    "informational",
                    json!({"content": "Auto-update available"}),
                ),
                Some((Notice::System, "Auto-update available")),
            ),
            (
                fx::system("s10", "brand_new_subtype", json!({"x": 1})),
                None,
            ),
            (
                fx::with_fields(&fx::turn_duration("s11", 5), json!({"isMeta": true})),
                None,
            ),
        ];
        for (line, want) in cases {
            let want: Vec<EventKind> = want.map(|(n, t)| notice(n, t)).into_iter().collect();
            assert_eq!(one(&line), want, "{line}");
        }
    }

    #[test]
    fn titles_are_emitted_when_they_change() {
        let mut d = decoder();
        let t = |s: &str, src| EventKind::Title {
            title: s.into(),
            source: src,
        };
        assert_eq!(
            kinds(&mut d, &fx::title(TitleSource::Summary, "S")),
            vec![t("S", TitleSource::Summary)]
        );
        assert_eq!(kinds(&mut d, &fx::title(TitleSource::Summary, "S")), vec![]);
        assert_eq!(
            kinds(&mut d, &fx::title(TitleSource::AiTitle, "A")),
            vec![t("A", TitleSource::AiTitle)]
        );
        assert_eq!(
            kinds(&mut d, &fx::title(TitleSource::CustomTitle, "C")),
            vec![t("C", TitleSource::CustomTitle)]
        );
        assert_eq!(kinds(&mut d, &fx::title(TitleSource::AiTitle, "A")), vec![]);
        assert_eq!(
            kinds(&mut d, &fx::title(TitleSource::Summary, "S2")),
            vec![t("S2", TitleSource::Summary)]
        );
        assert_eq!(
            kinds(&mut d, r#"{"type":"agent-name","agentName":"x"}"#),
            vec![]
        );
    }

    #[test]
    fn queued_prompt_is_shown_once_across_queue_operation_and_attachment() {
        let mut d = decoder();
        assert_eq!(
            kinds(
                &mut d,
                &fx::queue_operation("enqueue", "also check compose")
            ),
            vec![prompt("also check compose")]
        );
        assert_eq!(
            kinds(&mut d, &fx::queue_operation("remove", "also check compose")),
            vec![]
        );
        assert_eq!(
            kinds(&mut d, &fx::queued_command("q1", "also check compose")),
            vec![]
        );
        // Attachment first, then the same text as a user record.
        assert_eq!(
            kinds(&mut d, &fx::queued_command("q2", "and the README")),
            vec![prompt("and the README")]
        );
        assert_eq!(
            kinds(&mut d, &fx::user_prompt("q3", "and the README")),
            vec![]
        );
        // Afterwards the same words are a new prompt again.
        assert_eq!(
            kinds(&mut d, &fx::user_prompt("q4", "and the README")),
            vec![prompt("and the README")]
        );
        let bash_mode = fx::with_fields(
            &fx::queued_command("q5", "ls"),
            json!({"attachment": {"type": "queued_command", "prompt": "ls", "commandMode": "bash"}}),
        );
        assert_eq!(kinds(&mut d, &bash_mode), vec![]);
    }

    #[test]
    fn a_wrong_shape_record_is_skipped_without_taking_its_uuid() {
        let mut d = decoder();
        let cases = [
            (fx::user_with_message_string("dup-1", "hi"), Skip::Message),
            (
                fx::assistant_with_misspelt_content("dup-2", "hello"),
                Skip::Content,
            ),
            (
                fx::with_fields(&fx::user_prompt("dup-3", "x"), json!({"message": [1, 2]})),
                Skip::Message,
            ),
            (
                fx::with_fields(
                    &fx::queued_command("dup-4", "x"),
                    json!({"attachment": "queued"}),
                ),
                Skip::Attachment,
            ),
            (
                fx::with_fields(
                    &fx::user_prompt("dup-5", "x"),
                    json!({"message": {"role": "user", "content": {"text": "x"}}}),
                ),
                Skip::Content,
            ),
        ];
        for (bad, reason) in cases {
            assert_eq!(decode(&mut d, &bad), vec![], "{bad}");
            assert_eq!(d.last_skip(), Some(reason), "{bad}");
        }
        // The valid records with the same uuids are still delivered.
        assert_eq!(
            kinds(&mut d, &fx::user_prompt("dup-1", "hi")),
            vec![prompt("hi")]
        );
        assert_eq!(d.last_skip(), None);
        let text = fx::assistant_text("dup-2", "m1", "hello", fx::usage(1, 1, 0, 0));
        assert!(kinds(&mut d, &text).contains(&EventKind::AssistantText {
            text: "hello".into(),
            model: Some(fx::MODEL.into())
        }));
        // Unknown kinds and metadata lines are not shape errors.
        for line in [
            r#"{"type":"brand-new","uuid":"n1","message":"text"}"#,
            r#"{"type":"progress","uuid":"n2","data":{"type":"bash_progress"}}"#,
            r#"{"type":"summary","summary":"t","leafUuid":"x"}"#,
        ] {
            decode(&mut d, line);
            assert_eq!(d.last_skip(), None, "{line}");
        }
        // An empty block list is a valid (if silent) assistant message.
        let empty = fx::assistant_block("e1", "m2", json!(null), fx::usage(0, 0, 0, 0));
        let empty = fx::with_fields(
            &empty,
            json!({"message": {"role": "assistant", "id": "m2", "content": []}}),
        );
        decode(&mut d, &empty);
        assert_eq!(d.last_skip(), None);
    }

    #[test]
    fn teammate_messages_are_their_own_kind_not_prompts() {
        let mut d = decoder();
        assert_eq!(
            kinds(
                &mut d,
                &fx::teammate_message("t1", "reviewer", "yellow", "findings: 2 bugs")
            ),
            vec![EventKind::TeammateMessage {
                teammate: "reviewer".into(),
                summary: None,
                text: "findings: 2 bugs".into()
            }]
        );
        // Several in one record, a summary attribute, a protocol JSON body,
        // and no prefix.
        let text = concat!(
            "<teammate-message teammate_id=\"lead\" color=\"blue\" summary=\"new task\">",
            "Claim task #2</teammate-message>\n",
            "<teammate-message teammate_id=\"w1\">",
            r#"{"type":"idle_notification","from":"w1","idleReason":"available"}"#,
            "</teammate-message>"
        );
        assert_eq!(
            kinds(&mut d, &fx::user_prompt("t2", text)),
            vec![
                EventKind::TeammateMessage {
                    teammate: "lead".into(),
                    summary: Some("new task".into()),
                    text: "Claim task #2".into()
                },
                EventKind::TeammateMessage {
                    teammate: "w1".into(),
                    summary: None,
                    text: "[idle_notification] available".into()
                },
            ]
        );
        // Delivered mid-turn as a queued command: still a teammate message.
        assert_eq!(
            kinds(
                &mut d,
                &fx::queued_command("t3", &fx::teammate_text("w2", "red", "done"))
            ),
            vec![EventKind::TeammateMessage {
                teammate: "w2".into(),
                summary: None,
                text: "done".into()
            }]
        );
        // Text merely mentioning the tag is a prompt.
        assert_eq!(
            kinds(
                &mut d,
                &fx::user_prompt("t4", "what does <teammate-message> mean?")
            ),
            vec![prompt("what does <teammate-message> mean?")]
        );
    }

    #[test]
    fn steering_recorded_only_as_a_remove_is_shown_once() {
        let mut d = decoder();
        assert_eq!(
            kinds(&mut d, &fx::steering_remove("also run the linter")),
            vec![prompt("also run the linter")]
        );
        // The same input arriving by another route after it is not repeated.
        assert_eq!(
            kinds(&mut d, &fx::queued_command("s1", "also run the linter")),
            vec![]
        );
        // A remove without text (the usual mid-turn path) shows nothing; the
        // attachment carrying the text does.
        assert_eq!(
            kinds(
                &mut d,
                &fx::with_fields(&fx::steering_remove(""), json!({"content": null}))
            ),
            vec![]
        );
        assert_eq!(
            kinds(&mut d, &fx::queued_command("s2", "and the docs")),
            vec![prompt("and the docs")]
        );
        // enqueue → remove → attachment → user record: once.
        let mut d = decoder();
        let mut shown = Vec::new();
        for line in [
            fx::queue_operation("enqueue", "stop after this"),
            fx::steering_remove("stop after this"),
            fx::queued_command("s3", "stop after this"),
            fx::user_prompt("s4", "stop after this"),
        ] {
            shown.extend(kinds(&mut d, &line));
        }
        assert_eq!(shown, vec![prompt("stop after this")]);
        // A queued task notification is CLI status, not a prompt.
        assert_eq!(
            kinds(
                &mut d,
                &fx::queue_operation(
                    "enqueue",
                    "<task-notification>\n<task-id>b1</task-id>\n</task-notification>"
                )
            ),
            vec![]
        );
    }

    #[test]
    fn an_agent_id_alone_does_not_make_a_main_record_a_subagent_one() {
        let mut d = decoder();
        let line = fx::with_fields(&fx::user_prompt("m1", "hi"), json!({"agentId": "a1"}));
        let evs = d
            .decode_line(line.as_bytes(), &pos(), &Source::Main)
            .unwrap();
        assert!(evs.iter().all(|e| e.source == Source::Main), "{evs:?}");
    }

    #[test]
    fn a_complete_record_is_told_from_a_torn_one() {
        assert!(Decoder::is_complete_record(br#"{"type":"user"}"#));
        assert!(Decoder::is_complete_record(b"{\"a\":1}\r"));
        assert!(!Decoder::is_complete_record(br#"{"type":"us"#));
        assert!(!Decoder::is_complete_record(b"[1]"));
        assert!(!Decoder::is_complete_record(b""));
    }

    #[test]
    fn session_meta_first_time_and_on_change() {
        let mut d = decoder();
        let meta = |branch: &str, version: &str| EventKind::SessionMeta {
            session_id: fx::SESSION_ID.into(),
            cwd: Some(fx::CWD.into()),
            version: Some(version.into()),
            git_branch: Some(branch.into()),
        };
        assert_eq!(
            decode(&mut d, &fx::user_prompt("u1", "a"))[0],
            meta("main", fx::VERSION)
        );
        assert_eq!(
            decode(&mut d, &fx::user_prompt("u2", "b")),
            vec![prompt("b")]
        );
        let moved = fx::with_fields(&fx::user_prompt("u3", "c"), json!({"gitBranch": "feat/x"}));
        assert_eq!(
            decode(&mut d, &moved),
            vec![meta("feat/x", fx::VERSION), prompt("c")]
        );
        // A record without the field does not count as a change.
        let bare = r#"{"type":"user","uuid":"u4","sessionId":"5b0c8a9e-3f1d-4c2b-9a77-0d1e2f3a4b5c","message":{"content":"d"}}"#;
        assert_eq!(decode(&mut d, bare), vec![prompt("d")]);
        let upgraded = fx::with_fields(
            &fx::user_prompt("u5", "e"),
            json!({"gitBranch": "feat/x", "version": "2.2.0"}),
        );
        assert_eq!(
            decode(&mut d, &upgraded),
            vec![meta("feat/x", "2.2.0"), prompt("e")]
        );
        // Metadata lines never emit it.
        let mut d = decoder();
        assert_eq!(
            decode(&mut d, &fx::title(TitleSource::AiTitle, "t")).len(),
            1
        );
    }

    #[test]
    fn subagent_records_get_a_subagent_source() {
        let mut d = decoder();
        let line = fx::with_fields(
            &fx::user_prompt("u1", "sub"),
            json!({"isSidechain": true, "agentId": "a1b2"}),
        );
        let evs = d
            .decode_line(line.as_bytes(), &pos(), &Source::Main)
            .unwrap();
        assert_eq!(evs.len(), 1, "no SessionMeta for subagent records: {evs:?}");
        assert_eq!(
            evs[0].source,
            Source::Subagent {
                agent_id: Some("a1b2".into()),
                description: None,
                workflow: None,
            }
        );
        let inline = fx::with_fields(
            &fx::user_prompt("u2", "old layout"),
            json!({"isSidechain": true}),
        );
        let evs = d
            .decode_line(inline.as_bytes(), &pos(), &Source::Main)
            .unwrap();
        assert_eq!(
            evs[0].source,
            Source::Subagent {
                agent_id: None,
                description: None,
                workflow: None,
            }
        );
        // The file's source wins, with the agent id filled in when it lacked one.
        let given = Source::Subagent {
            agent_id: None,
            description: Some("explore".into()),
            workflow: None,
        };
        let line = fx::with_fields(
            &fx::user_prompt("u3", "x"),
            json!({"isSidechain": true, "agentId": "a9"}),
        );
        let evs = d.decode_line(line.as_bytes(), &pos(), &given).unwrap();
        assert_eq!(
            evs[0].source,
            Source::Subagent {
                agent_id: Some("a9".into()),
                description: Some("explore".into()),
                workflow: None,
            }
        );
        let main = d
            .decode_line(
                fx::user_prompt("u4", "main").as_bytes(),
                &pos(),
                &Source::Main,
            )
            .unwrap();
        assert!(main.iter().all(|e| e.source == Source::Main));
    }

    #[test]
    fn events_carry_uuid_and_timestamp() {
        let evs = decoder()
            .decode_line(fx::user_prompt("u1", "x").as_bytes(), &pos(), &Source::Main)
            .unwrap();
        assert!(evs.iter().all(|e| e.uuid.as_deref() == Some("u1")));
        assert!(evs
            .iter()
            .all(|e| e.timestamp.as_deref() == Some(fx::TIMESTAMP)));
        let title = decoder()
            .decode_line(
                fx::title(TitleSource::AiTitle, "t").as_bytes(),
                &pos(),
                &Source::Main,
            )
            .unwrap();
        assert_eq!(title[0].uuid, None);
    }

    /// Clean lines of every kind take the fast typed path (the slow path is
    /// several times slower and meant for damaged lines only).
    #[test]
    fn clean_lines_take_the_fast_path() {
        let u = fx::usage(1, 2, 3, 4);
        for line in [
            fx::user_prompt("u1", "hi"),
            fx::user_content("u2", json!([{"type": "text", "text": "a"}])),
            fx::assistant_text("a1", "m1", "text", u),
            fx::thinking("a2", "m1", "hmm", u),
            fx::tool_use("a3", "m1", "t1", "Bash", json!({"command": "ls"}), u),
            fx::tool_result("u3", "t1", "out", Some(true)),
            fx::tool_result("u4", "t1", "out", None),
            fx::title(TitleSource::Summary, "s"),
            fx::title(TitleSource::AiTitle, "s"),
            fx::compact_boundary("s1", "auto", 1),
            fx::compact_summary("u5", "This session is being continued"),
            fx::turn_duration("s2", 1),
            fx::api_error_row("a4", "API Error"),
            fx::queue_operation("enqueue", "q"),
            fx::queued_command("q1", "q"),
        ] {
            assert!(
                parse_fast(line.as_bytes(), &mut Record::default()),
                "{line}"
            );
        }
    }

    #[test]
    fn surrogate_fixer_only_touches_lone_escapes() {
        assert_eq!(fix_lone_surrogates(br#""\ud83d\ude00""#), None);
        assert_eq!(fix_lone_surrogates(br#""\n\t\u0041""#), None);
        assert_eq!(
            fix_lone_surrogates(br#""\ud83d""#).unwrap(),
            br#""\uFFFD""#.to_vec()
        );
        assert_eq!(
            fix_lone_surrogates(br#""\ud83d\ud83d\ude00""#).unwrap(),
            br#""\uFFFD\ud83d\ude00""#.to_vec()
        );
        assert_eq!(fix_lone_surrogates(br#""\ud8"#), None);
    }
}
