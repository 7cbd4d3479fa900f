//! The agentmon watcher: follows a Claude Code transcript and streams it to Discord.
//!
//! Modules follow the data flow: `discover` finds the transcript, `tail` follows it,
//! `transcript` decodes lines into events, `render` turns events into embeds,
//! `deliver` batches and posts them, `checkpoint` remembers what was acknowledged.

pub mod checkpoint;
pub mod discover;
pub mod render;
pub mod tail;
pub mod transcript;
