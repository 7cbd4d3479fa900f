//! Transcript records: the typed model and the tolerant decoder.

pub mod decode;
pub mod model;

pub use model::{Event, EventKind, LinePos, Notice, Source, TitleSource, Usage};
