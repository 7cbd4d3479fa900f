//! The agentmon watcher: follows a Claude Code transcript and streams it to Discord.
//!
//! Modules follow the data flow: `discover` finds the transcript, `tail` follows it,
//! `transcript` decodes lines into events, `ingest` runs those three into the
//! bounded `queue`; `pipeline`, the sink loop, renders (`render`), batches and
//! delivers (`deliver`, behind its `Sink` trait) and advances the run state
//! (`state`: checkpoint, delivered journal, kept backlog) over what was
//! acknowledged. `input` relays operator input to the agent; `events` is the
//! telemetry; `app` wires `watcher run` for `main`, `cli` holds the other
//! subcommands.

pub mod app;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod discover;
pub mod events;
pub mod ingest;
pub mod input;
pub mod pipeline;
pub mod queue;
pub mod render;
pub mod state;
pub mod tail;
pub mod transcript;

// The run state's parts keep their old paths.
pub use state::{atomic_file, checkpoint, delivered};
