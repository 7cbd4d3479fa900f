//! Discord's documented payload limits, as data.
//!
//! Source: Discord developer docs, "Embed Limits" and "Execute Webhook".
//! Limits on text are counted in Unicode scalar values (chars), as Discord does.

pub const CONTENT: usize = 2000;
pub const EMBEDS_PER_MESSAGE: usize = 10;
pub const EMBED_TITLE: usize = 256;
pub const EMBED_DESCRIPTION: usize = 4096;
pub const EMBED_FIELDS: usize = 25;
pub const FIELD_NAME: usize = 256;
pub const FIELD_VALUE: usize = 1024;
pub const FOOTER_TEXT: usize = 2048;
pub const AUTHOR_NAME: usize = 256;
/// Sum of title, description, field names and values, footer text and author
/// name over all embeds of one message.
pub const EMBEDS_TOTAL: usize = 6000;
pub const USERNAME: usize = 80;
pub const ATTACHMENTS_PER_MESSAGE: usize = 10;
/// Upload limit for a message without server boosts.
pub const ATTACHMENT_BYTES: usize = 10 * 1024 * 1024;
pub const CHANNEL_NAME: usize = 100;
/// Channels under one category.
pub const CHANNELS_PER_CATEGORY: usize = 50;
/// Channels (all kinds, categories included) in one guild.
pub const CHANNELS_PER_GUILD: usize = 500;
/// Webhooks one channel may hold (Discord raised it from 10 to 15 in 2023).
pub const WEBHOOKS_PER_CHANNEL: usize = 15;
