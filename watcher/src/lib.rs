//! The agentmon watcher: follows a Claude Code transcript and streams it to Discord.
//!
//! Modules follow the data flow: `discover` finds the transcript, `tail` follows it,
//! `transcript` decodes lines into events, `ingest` runs those three into the
//! bounded `queue`; `pipeline` renders (`render`), batches and delivers
//! (`deliver`) and advances the `checkpoint` over what was acknowledged.
//! `input` relays operator input to the agent; `events` is the telemetry;
//! `app` wires it all for `main`.

pub mod app;
pub mod atomic_file;
pub mod checkpoint;
pub mod config;
pub mod deliver;
pub mod delivered;
pub mod discover;
pub mod events;
pub mod ingest;
pub mod input;
pub mod pipeline;
pub mod queue;
pub mod render;
pub mod tail;
pub mod transcript;
