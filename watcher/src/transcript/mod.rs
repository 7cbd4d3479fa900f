//! Transcript records: the typed model and the tolerant decoder.

pub mod decode;
#[doc(hidden)]
pub mod fixtures;
pub mod model;

pub use model::{Event, EventKind, LinePos, Notice, Source, TitleSource, Usage};
