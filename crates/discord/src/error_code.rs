//! Discord's JSON error codes agentmon acts on (the `code` of an error body).

/// The guild already has its maximum of channels (500).
pub const MAX_GUILD_CHANNELS: u64 = 30013;
/// The channel already has its maximum of webhooks.
pub const MAX_WEBHOOKS: u64 = 30007;
