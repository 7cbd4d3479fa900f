//! Discord, as agentmon needs it: the webhook message model with Discord's limits as
//! data, text sanitising and truncation, rate-limit header parsing and a limiter
//! that waits before a request would be refused, and the HTTP clients.
//!
//! The model modules (`embed`, `error_code`, `limits`, `permission`, `sanitize`,
//! `truncate`, `validate`, `webhook_url`) are pure; only `webhook` and `rest` do I/O.

pub mod embed;
pub mod error_code;
pub mod limits;
pub mod permission;
pub mod ratelimit;
pub mod rest;
pub mod sanitize;
pub mod truncate;
pub mod validate;
pub mod webhook;
pub mod webhook_url;
