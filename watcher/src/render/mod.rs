//! Events → Discord embeds (and the console's one-line rendering).
//! (STUB: being written.)

pub mod console;

use discord::embed::{Attachment, Embed};
use discord::truncate::Field;
use serde::{Deserialize, Serialize};

use crate::transcript::{Event, Usage};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Invalid(String),
}

/// `FILTERS`: which tool events to post.
#[derive(Debug, Clone, Default)]
pub struct Filters {}

impl Filters {
    pub fn from_json(_s: &str) -> Result<Filters, RenderError> {
        Ok(Filters {})
    }
}

/// `MODEL_COSTS`: USD per million tokens by model.
#[derive(Debug, Clone, Default)]
pub struct CostTable {}

impl CostTable {
    pub fn builtin() -> CostTable {
        CostTable {}
    }
    pub fn from_json(_s: &str) -> Result<CostTable, RenderError> {
        Ok(CostTable {})
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
    pub parity: bool,
    pub filters: Filters,
    pub costs: CostTable,
    pub run: RunInfo,
    /// Tool output longer than this is posted as an excerpt plus an attachment.
    pub inline_output_chars: usize,
}

/// Running totals for the completion summary; persisted in the checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub usage: Usage,
    /// `None` while any model used is not in the price table.
    pub cost_usd: Option<f64>,
}

/// What one event rendered to.
#[derive(Debug, Default)]
pub struct Rendered {
    pub embeds: Vec<Embed>,
    pub files: Vec<Attachment>,
    /// Fields that had to be cut (`watcher_truncations_total{field}`).
    pub truncated: Vec<Field>,
}

pub struct Renderer {
    _cfg: RenderConfig,
    stats: Stats,
}

impl Renderer {
    pub fn new(cfg: RenderConfig) -> Self {
        Self {
            _cfg: cfg,
            stats: Stats::default(),
        }
    }
    pub fn render(&mut self, _ev: &Event) -> Rendered {
        Rendered::default()
    }
    pub fn header(&self, _started: &str) -> Embed {
        Embed::default()
    }
    pub fn summary(&self, _ended: &str) -> Embed {
        Embed::default()
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    pub fn restore_stats(&mut self, stats: Stats) {
        self.stats = stats;
    }
}
