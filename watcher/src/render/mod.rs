//! Events → Discord embeds (and the console's one-line rendering).
//!
//! - [`embed`]: one event → its embeds and attachments (layouts, soft caps);
//! - [`summary`]: the run totals ([`Stats`]), the header and the completion summary;
//! - [`cost`]: `MODEL_COSTS`, USD per million tokens by model family;
//! - [`filter`]: `FILTERS`, which tool events are posted without parity;
//! - [`tool`]: the emoji/colour scheme and what each tool call is about;
//! - [`text`]: sanitising and fitting text to Discord's limits;
//! - [`console`]: one readable line per event for the console sink.
//!
//! Every embed produced here is valid on its own: within Discord's per-field
//! limits and within 6000 *bytes* (see [`text::EMBED_BYTES`]), ANSI stripped,
//! mentions neutralised, fences balanced, and every cut marked and reported in
//! [`Rendered::truncated`].

pub mod console;
pub mod cost;
pub mod embed;
pub mod filter;
pub mod summary;
pub mod text;
pub mod tool;

use std::collections::{HashMap, VecDeque};

use discord::embed::{Attachment, Embed};
use discord::truncate::Field;

pub use cost::CostTable;
pub use filter::Filters;
pub use summary::Stats;

use crate::transcript::{Event, EventKind};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Invalid(String),
    #[error("not valid JSON: {0}")]
    Json(String),
    /// A value under `key` is wrong.
    #[error("`{key}`: {problem}")]
    Key { key: String, problem: String },
}

impl RenderError {
    fn key(key: &str, problem: impl Into<String>) -> RenderError {
        RenderError::Key {
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Run identity shown in the header.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub task_id: Option<String>,
    pub attempt: Option<String>,
    pub run_id: Option<String>,
    pub short_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RenderConfig {
    /// `PARITY_MODE`: post everything (thinking too), no soft caps, no filters.
    pub parity: bool,
    pub filters: Filters,
    pub costs: CostTable,
    pub run: RunInfo,
    /// Tool output longer than this is posted as an excerpt plus an attachment.
    pub inline_output_chars: usize,
}

/// What one event rendered to.
#[derive(Debug, Default)]
pub struct Rendered {
    pub embeds: Vec<Embed>,
    pub files: Vec<Attachment>,
    /// Fields that had to be cut (`watcher_truncations_total{field}`).
    pub truncated: Vec<Field>,
}

/// Tool calls waiting for their result, by id, with whether the call was
/// posted: the result is posted (or not) with its call. Names are the
/// decoder's business (`ToolResult::tool_name`).
#[derive(Debug, Default)]
struct PendingCalls {
    shown: HashMap<String, bool>,
    /// Insertion order, to forget the oldest calls whose result never came.
    order: VecDeque<String>,
}

/// Calls remembered at most; a result beyond that is treated as an orphan.
const MAX_PENDING_CALLS: usize = 4096;

impl PendingCalls {
    fn insert(&mut self, id: &str, shown: bool) {
        if self.shown.insert(id.to_owned(), shown).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.shown.len() > MAX_PENDING_CALLS {
            match self.order.pop_front() {
                Some(old) => {
                    self.shown.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Whether the call `id` was posted; `None` when it was never seen (or
    /// forgotten).
    fn remove(&mut self, id: &str) -> Option<bool> {
        let shown = self.shown.remove(id)?;
        if let Some(i) = self.order.iter().position(|o| o == id) {
            self.order.remove(i);
        }
        Some(shown)
    }
}

pub struct Renderer {
    cfg: RenderConfig,
    stats: Stats,
    pending: PendingCalls,
}

impl Renderer {
    pub fn new(cfg: RenderConfig) -> Self {
        Self {
            cfg,
            stats: Stats::default(),
            pending: PendingCalls::default(),
        }
    }

    /// Counts `ev` in the stats and renders it; events that are not posted
    /// (usage, titles, session metadata, filtered tools, empty text, thinking
    /// without parity) render to nothing.
    pub fn render(&mut self, ev: &Event) -> Rendered {
        self.stats.observe(ev, &self.cfg.costs);
        let seq = self.stats.events;
        let cfg = &self.cfg;
        let out = match &ev.kind {
            EventKind::SessionMeta { .. } | EventKind::Usage { .. } | EventKind::Title { .. } => {
                Rendered::default()
            }
            EventKind::UserPrompt { text, images } => {
                embed::user_prompt(cfg, ev, text, *images, seq)
            }
            EventKind::TeammateMessage {
                teammate,
                summary,
                text,
            } => embed::teammate_message(cfg, ev, teammate, summary.as_deref(), text, seq),
            EventKind::AssistantText { text, .. } => embed::assistant_text(cfg, ev, text, seq),
            EventKind::Thinking { text } => embed::thinking(cfg, ev, text, seq),
            EventKind::ToolUse { id, name, input } => {
                let shown = cfg.parity || cfg.filters.allows_call(name, input);
                self.pending.insert(id, shown);
                if shown {
                    embed::tool_use(cfg, ev, name, input)
                } else {
                    Rendered::default()
                }
            }
            EventKind::ToolResult {
                tool_use_id,
                tool_name,
                content,
                is_error,
            } => {
                let name = tool_name.as_deref();
                let shown = match self.pending.remove(tool_use_id) {
                    _ if cfg.parity => true,
                    Some(call_shown) => call_shown,
                    None => cfg.filters.allows_orphan_result(name, content),
                };
                if shown {
                    let output = embed::ToolOutput {
                        tool_use_id,
                        name,
                        content,
                        is_error: *is_error,
                        min_chars: if cfg.parity {
                            0
                        } else {
                            cfg.filters.min_stdout_length
                        },
                    };
                    embed::tool_result(cfg, ev, &output)
                } else {
                    Rendered::default()
                }
            }
            EventKind::Notice { notice, text } => embed::notice(cfg, ev, *notice, text, seq),
        };
        self.stats.embeds += out.embeds.len() as u64;
        out
    }

    /// The first embed of the run (task, attempt, run, model, start, title).
    pub fn header(&self, started_rfc3339: &str) -> Embed {
        summary::header(&self.cfg.run, &self.stats, started_rfc3339)
    }

    /// The completion summary (duration, tokens, cost, tools, errors, counts).
    pub fn summary(&self, ended_rfc3339: &str) -> Embed {
        summary::summary(&self.cfg.run, &self.stats, ended_rfc3339)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Continues from checkpointed totals; the cost is recomputed with the
    /// current price table.
    pub fn restore_stats(&mut self, stats: Stats) {
        self.stats = stats;
        self.stats.reprice(&self.cfg.costs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::Source;
    use serde_json::json;

    fn cfg(parity: bool, filters: Filters) -> RenderConfig {
        RenderConfig {
            parity,
            filters,
            costs: CostTable::builtin(),
            run: RunInfo::default(),
            inline_output_chars: 1000,
        }
    }

    fn ev(kind: EventKind) -> Event {
        Event {
            source: Source::Main,
            uuid: None,
            timestamp: None,
            kind,
        }
    }

    fn call(id: &str, name: &str) -> Event {
        ev(EventKind::ToolUse {
            id: id.into(),
            name: name.into(),
            input: json!({"command": "ls", "file_path": "README.md"}),
        })
    }

    /// A result as the decoder makes it: named after its call.
    fn result(id: &str, name: &str, content: &str) -> Event {
        ev(EventKind::ToolResult {
            tool_use_id: id.into(),
            tool_name: Some(name.into()),
            content: content.into(),
            is_error: false,
        })
    }

    #[test]
    fn filtered_calls_hide_their_results_and_still_count() {
        let filters = Filters {
            include_tools: vec!["Bash".into()],
            ..Filters::default()
        };
        let mut r = Renderer::new(cfg(false, filters.clone()));
        assert_eq!(r.render(&call("1", "Read")).embeds.len(), 0);
        assert_eq!(r.render(&result("1", "Read", "text")).embeds.len(), 0);
        assert_eq!(r.render(&call("2", "Bash")).embeds.len(), 1);
        let out = r.render(&result("2", "Bash", "file"));
        assert_eq!(out.embeds[0].title.as_deref(), Some("✅ Bash"));
        assert_eq!(r.stats().tools.get("Read"), Some(&1));

        let mut parity = Renderer::new(cfg(true, filters));
        assert_eq!(parity.render(&call("1", "Read")).embeds.len(), 1);
    }

    #[test]
    fn min_stdout_length_hides_short_output_but_not_errors() {
        let filters = Filters {
            min_stdout_length: 10,
            ..Filters::default()
        };
        let mut r = Renderer::new(cfg(false, filters));
        r.render(&call("1", "Bash"));
        assert!(r
            .render(&result("1", "Bash", "  short  "))
            .embeds
            .is_empty());
        let mut err = result("2", "Bash", "no");
        if let EventKind::ToolResult { is_error, .. } = &mut err.kind {
            *is_error = true;
        }
        assert_eq!(r.render(&err).embeds.len(), 1);
        assert_eq!(r.stats().tool_errors, 1);
    }

    #[test]
    fn thinking_only_with_parity_and_never_empty() {
        let t = |s: &str| ev(EventKind::Thinking { text: s.into() });
        let mut r = Renderer::new(cfg(false, Filters::default()));
        assert!(r.render(&t("hmm")).embeds.is_empty());
        let mut p = Renderer::new(cfg(true, Filters::default()));
        assert_eq!(p.render(&t("hmm")).embeds.len(), 1);
        assert!(p.render(&t("  ")).embeds.is_empty());
        assert_eq!(p.stats().thinking_blocks, 2);
    }

    #[test]
    fn pending_calls_are_bounded() {
        let mut p = PendingCalls::default();
        for i in 0..MAX_PENDING_CALLS + 10 {
            p.insert(&i.to_string(), true);
        }
        assert_eq!(p.shown.len(), MAX_PENDING_CALLS);
        assert!(p.remove("0").is_none());
        assert!(p.remove(&(MAX_PENDING_CALLS + 9).to_string()).is_some());
    }

    #[test]
    fn restore_reprices_with_the_current_table() {
        let mut r = Renderer::new(RenderConfig {
            costs: CostTable::from_json(r#"{"m": [1, 1, 1, 1]}"#).unwrap_or_default(),
            ..cfg(false, Filters::default())
        });
        let mut s = Stats::default();
        s.usage_by_model.insert(
            "m".into(),
            crate::transcript::Usage {
                input_tokens: 1_000_000,
                ..Default::default()
            },
        );
        r.restore_stats(s);
        assert_eq!(r.stats().cost_usd, Some(1.0));
    }
}
