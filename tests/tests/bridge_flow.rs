//! stub
#![allow(clippy::unwrap_used)]
#[test]
fn build_bins() {
    e2e::bin("watcher");
}
