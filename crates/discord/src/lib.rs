//! Discord, as agentmon needs it: the webhook message model with Discord's limits as
//! data, text sanitising and truncation, rate-limit header parsing and a limiter
//! that waits before a request would be refused, and the HTTP clients.

pub mod embed;
pub mod limits;
