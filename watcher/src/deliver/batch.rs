//! Coalescing rendered units into Discord messages.
//!
//! A unit is what one event rendered to (embeds, maybe files) plus the line it
//! came from. Units are never split across messages, so a line is acknowledged
//! exactly when the message carrying its last unit is.

use std::collections::VecDeque;

use discord::embed::{AllowedMentions, Attachment, Embed, WebhookMessage};
use tokio::time::Instant;

use crate::transcript::LinePos;

/// What one event rendered to, waiting to be sent.
#[derive(Debug, Clone)]
pub struct Unit {
    pub embeds: Vec<Embed>,
    pub files: Vec<Attachment>,
    pub pos: Option<LinePos>,
    pub read_at: Instant,
}

impl Unit {
    fn chars(&self) -> usize {
        self.embeds.iter().map(Embed::char_count).sum()
    }

    fn file_bytes(&self) -> usize {
        self.files.iter().map(|f| f.bytes.len()).sum()
    }
}

/// A message ready to send and the units it acknowledges.
#[derive(Debug)]
pub struct Batch {
    pub message: WebhookMessage,
    pub units: Vec<Unit>,
}

/// Units waiting for a send permit, in order.
#[derive(Debug)]
pub struct Batcher {
    pending: VecDeque<Unit>,
    max_embeds: usize,
    username: Option<String>,
}

impl Batcher {
    pub fn new(max_embeds: usize, username: Option<String>) -> Self {
        Self {
            pending: VecDeque::new(),
            max_embeds: max_embeds.clamp(1, discord::limits::EMBEDS_PER_MESSAGE),
            username,
        }
    }

    pub fn push(&mut self, unit: Unit) {
        self.pending.push_back(unit);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the oldest waiting unit was read (`watcher_oldest_pending_age_seconds`).
    pub fn oldest(&self) -> Option<Instant> {
        self.pending.iter().map(|u| u.read_at).min()
    }

    /// Embeds waiting; the caller stops pulling from the queue at a full message.
    pub fn pending_embeds(&self) -> usize {
        self.pending.iter().map(|u| u.embeds.len().max(1)).sum()
    }

    /// Whether a full message is already waiting (no point in pulling more).
    pub fn has_full_message(&self) -> bool {
        self.pending_embeds() >= self.max_embeds
            || self.pending.iter().map(Unit::chars).sum::<usize>() >= discord::limits::EMBEDS_TOTAL
    }

    /// Takes the longest prefix of units that fits in one message: at most
    /// `max_embeds` embeds, 6000 characters, 10 files and Discord's upload
    /// limit in file bytes (each file fits it alone, two large tool outputs
    /// together need not). The first unit is always taken (it was fitted to
    /// the limits when rendered).
    pub fn next_batch(&mut self) -> Option<Batch> {
        let first = self.pending.pop_front()?;
        let mut embeds = first.embeds.len();
        let mut chars = first.chars();
        let mut files = first.files.len();
        let mut file_bytes = first.file_bytes();
        let mut units = vec![first];
        while let Some(next) = self.pending.front() {
            let e = embeds + next.embeds.len();
            let c = chars + next.chars();
            let f = files + next.files.len();
            let fb = file_bytes + next.file_bytes();
            if e > self.max_embeds
                || c > discord::limits::EMBEDS_TOTAL
                || f > discord::limits::ATTACHMENTS_PER_MESSAGE
                || fb > discord::limits::ATTACHMENT_BYTES
            {
                break;
            }
            embeds = e;
            chars = c;
            files = f;
            file_bytes = fb;
            if let Some(u) = self.pending.pop_front() {
                units.push(u);
            }
        }
        let message = WebhookMessage {
            username: self.username.clone(),
            embeds: units
                .iter()
                .flat_map(|u| u.embeds.iter().cloned())
                .collect(),
            files: units.iter().flat_map(|u| u.files.iter().cloned()).collect(),
            allowed_mentions: AllowedMentions { parse: vec![] },
            ..Default::default()
        };
        Some(Batch { message, units })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(desc: &str) -> Unit {
        Unit {
            embeds: vec![Embed {
                description: Some(desc.to_owned()),
                ..Default::default()
            }],
            files: vec![],
            pos: None,
            read_at: Instant::now(),
        }
    }

    #[test]
    fn batches_respect_embed_count_and_total_chars_in_order() {
        let mut b = Batcher::new(10, None);
        for i in 0..25 {
            b.push(unit(&format!("u{i}")));
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| b.next_batch())
            .map(|m| m.units.len())
            .collect();
        assert_eq!(sizes, [10, 10, 5]);

        let mut b = Batcher::new(10, None);
        for _ in 0..4 {
            b.push(unit(&"x".repeat(2500)));
        }
        let batches: Vec<Batch> = std::iter::from_fn(|| b.next_batch()).collect();
        assert_eq!(batches.len(), 2);
        for batch in &batches {
            let total: usize = batch.message.embeds.iter().map(Embed::char_count).sum();
            assert!(total <= 6000);
        }
    }

    #[test]
    fn batches_respect_the_upload_limit_in_file_bytes() {
        let with_file = |name: &str, len: usize| {
            let mut u = unit(name);
            u.files.push(Attachment {
                filename: format!("{name}.txt"),
                bytes: vec![b'x'; len],
            });
            u
        };
        let mut b = Batcher::new(10, None);
        for i in 0..3 {
            b.push(with_file(&format!("big{i}"), 4 << 20));
        }
        for i in 0..12 {
            b.push(with_file(&format!("small{i}"), 10));
        }
        let batches: Vec<Batch> = std::iter::from_fn(|| b.next_batch()).collect();
        let shape: Vec<usize> = batches.iter().map(|m| m.units.len()).collect();
        // 4 + 4 MiB fit the 10 MiB limit, a third does not; the small ones
        // then fill the rest of its message.
        assert_eq!(shape, [2, 10, 3]);
        for batch in &batches {
            assert!(discord::validate::validate(&batch.message).is_ok());
        }
    }
}
