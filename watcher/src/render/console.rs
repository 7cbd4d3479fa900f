//! The console sink: one readable line per event. (STUB: being written.)

use super::Stats;
use crate::transcript::Event;

pub fn line(_ev: &Event, _color: bool) -> Option<String> {
    None
}

pub fn summary_line(_stats: &Stats, _color: bool) -> String {
    String::new()
}
