//! The tolerant decoder: one transcript line → zero or more events.
//! (STUB: being written.)

use super::{Event, LinePos, Source};

#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// How many record uuids are remembered for deduplication.
    pub dedupe_capacity: usize,
}

/// Why a line was skipped; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON")]
    Torn,
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Torn => "torn",
        }
    }
}

/// Keeps the cross-line state: seen uuids, usage per `message.id`, tool names
/// by tool_use id, titles.
#[derive(Debug)]
pub struct Decoder {
    _cfg: DecoderConfig,
}

impl Decoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        Self { _cfg: cfg }
    }

    /// Decodes one line (without its newline). `source` is the file's source;
    /// records say themselves when they are subagent records.
    pub fn decode_line(
        &mut self,
        _raw: &[u8],
        _pos: &LinePos,
        _source: &Source,
    ) -> Result<Vec<Event>, DecodeError> {
        Ok(Vec::new())
    }
}
