//! bot-bridge: the cluster service that owns agentmon's Discord bot.
//!
//! It provisions one channel (or thread) and webhook per agent run for the
//! watchers (`runs`, `api::runs`), relays operator input from slash commands to
//! a run's watcher (`api::interactions`, `relay`), and archives or deletes
//! channels after retention (`retention`). State lives in a `store`; Discord is
//! reached through the `guild::DiscordApi` trait. `main.rs` only wires these
//! together with the shared `ops` runtime.

pub mod access;
pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod events;
pub mod guild;
pub mod handoff;
pub mod leader;
pub mod reconcile;
pub mod relay;
pub mod retention;
pub mod runs;
pub mod store;

pub use api::api_router;
pub use app::{AppState, HealthParts, Settings};
