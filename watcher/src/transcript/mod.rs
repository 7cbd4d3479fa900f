//! Transcript records: the typed model and the tolerant decoder.

pub mod decode;
#[cfg(any(test, feature = "test-util"))]
pub mod fixtures;
pub mod model;

pub use model::{Event, EventKind, LinePos, Notice, Source, TitleSource, Usage};
