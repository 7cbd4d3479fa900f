//! Cutting messages down to Discord's limits, visibly and at char boundaries.
//!
//! Discord refuses a whole message (400) when any one limit is exceeded, and a
//! refused message is a lost event. So every message is passed through
//! [`fit_message`] before it is sent: it never fails, it cuts what is too long,
//! marks every cut with [`MARKER`] and reports which fields it cut, for the
//! `watcher_truncations_total{field}` metric.

use crate::embed::{Embed, WebhookMessage};
use crate::limits;
use crate::sanitize::{balance_fences, fence_open, CLOSING_FENCE, ZWSP};

/// Appended to every cut text so a reader knows there was more.
pub const MARKER: &str = "… [truncated]";

/// Content used when a message would otherwise be empty (Discord rejects those).
pub const EMPTY_MESSAGE: &str = "(empty message)";

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Byte index of the end of the first `n` chars of `s` (or `s.len()`).
fn char_boundary(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// Cuts `s` to at most `max` chars, marker included, at a char boundary. Returns
/// `s` unchanged (and `false`) when it fits. When `max` is too small for the
/// marker, the text is cut bare: the content matters more than the marker.
pub fn truncate_chars(s: &str, max: usize) -> (String, bool) {
    if chars(s) <= max {
        return (s.to_owned(), false);
    }
    let marker = chars(MARKER);
    if max <= marker {
        return (s[..char_boundary(s, max)].to_owned(), true);
    }
    let mut out = s[..char_boundary(s, max - marker)].to_owned();
    out.push_str(MARKER);
    (out, true)
}

/// [`truncate_chars`], then closes a code block the cut left open, still within
/// `max`. Returns `None` when `s` already fits.
fn cut(s: &str, max: usize) -> Option<String> {
    if chars(s) <= max {
        return None;
    }
    let (first, _) = truncate_chars(s, max);
    if !fence_open(&first) {
        return Some(first);
    }
    let room = max.saturating_sub(chars(CLOSING_FENCE));
    let (shorter, _) = truncate_chars(s, room);
    let balanced = balance_fences(&shorter);
    // Too small for a closing fence: an unbalanced fence is still valid for Discord.
    Some(if chars(&balanced) <= max {
        balanced
    } else {
        first
    })
}

/// Which part of a message was cut; the `field` label of the truncation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Content,
    Title,
    Description,
    FieldName,
    FieldValue,
    Footer,
    Author,
    Username,
    /// Fields beyond 25 in one embed were dropped.
    Fields,
    /// Embeds beyond 10 in one message were dropped.
    Embeds,
    /// The 6000-char budget over all embeds forced cuts (recorded once per message).
    Total,
    /// Files beyond the per-message count or size budget were dropped.
    Files,
}

impl Field {
    /// All variants, for pre-registering metric label values.
    pub const ALL: [Field; 12] = [
        Field::Content,
        Field::Title,
        Field::Description,
        Field::FieldName,
        Field::FieldValue,
        Field::Footer,
        Field::Author,
        Field::Username,
        Field::Fields,
        Field::Embeds,
        Field::Total,
        Field::Files,
    ];

    /// The snake_case metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Content => "content",
            Field::Title => "title",
            Field::Description => "description",
            Field::FieldName => "field_name",
            Field::FieldValue => "field_value",
            Field::Footer => "footer",
            Field::Author => "author",
            Field::Username => "username",
            Field::Fields => "fields",
            Field::Embeds => "embeds",
            Field::Total => "total",
            Field::Files => "files",
        }
    }
}

/// Cuts `slot` to `max` chars, recording `field` when it had to.
fn fit_text(slot: &mut String, max: usize, field: Field, cuts: &mut Vec<Field>) {
    if let Some(shorter) = cut(slot, max) {
        *slot = shorter;
        cuts.push(field);
    }
}

/// Discord rejects empty or whitespace-only field names and values.
fn fill_blank(s: &mut String) {
    if s.trim().is_empty() {
        *s = ZWSP.to_string();
    }
}

/// Webhook usernames may not contain these (case-insensitive); Discord answers 400.
pub const FORBIDDEN_USERNAME_WORDS: [&str; 2] = ["clyde", "discord"];

/// Whether Discord accepts `name` as a webhook username override.
pub fn username_allowed(name: &str) -> bool {
    let lower = name.to_lowercase();
    !name.trim().is_empty() && !FORBIDDEN_USERNAME_WORDS.iter().any(|w| lower.contains(w))
}

/// Makes any message valid by Discord's limits (see [`crate::validate`]): cuts every
/// text to its limit, drops embeds beyond 10 and fields beyond 25, shrinks texts
/// until all embeds together fit in 6000 chars (largest descriptions first, then
/// field values, footers, field names, titles, author names), keeps code fences
/// balanced, fills blank field names/values, masks colours to 24 bits and sets
/// `allowed_mentions.parse = []`. Returns one [`Field`] per cut.
pub fn fit_message(msg: &mut WebhookMessage) -> Vec<Field> {
    let mut cuts = Vec::new();
    msg.allowed_mentions.parse.clear();

    if let Some(content) = msg.content.as_mut() {
        fit_text(content, limits::CONTENT, Field::Content, &mut cuts);
    }
    if let Some(name) = msg.username.as_mut() {
        fit_text(name, limits::USERNAME, Field::Username, &mut cuts);
    }
    if msg
        .username
        .as_deref()
        .is_some_and(|n| !username_allowed(n))
    {
        // The webhook's own name is used instead; better than a refused message.
        msg.username = None;
        cuts.push(Field::Username);
    }
    if msg.embeds.len() > limits::EMBEDS_PER_MESSAGE {
        msg.embeds.truncate(limits::EMBEDS_PER_MESSAGE);
        cuts.push(Field::Embeds);
    }
    for embed in &mut msg.embeds {
        fit_embed(embed, &mut cuts);
    }
    if fit_total(&mut msg.embeds) {
        cuts.push(Field::Total);
    }
    if fit_files(msg) {
        cuts.push(Field::Files);
    }

    let has_content = msg.content.as_deref().is_some_and(|c| !c.trim().is_empty());
    if !has_content && msg.embeds.is_empty() && msg.files.is_empty() {
        msg.content = Some(EMPTY_MESSAGE.to_owned());
    }
    cuts
}

fn fit_embed(embed: &mut Embed, cuts: &mut Vec<Field>) {
    if let Some(title) = embed.title.as_mut() {
        fit_text(title, limits::EMBED_TITLE, Field::Title, cuts);
    }
    if let Some(description) = embed.description.as_mut() {
        fit_text(
            description,
            limits::EMBED_DESCRIPTION,
            Field::Description,
            cuts,
        );
    }
    if embed.fields.len() > limits::EMBED_FIELDS {
        embed.fields.truncate(limits::EMBED_FIELDS);
        cuts.push(Field::Fields);
    }
    for field in &mut embed.fields {
        fit_text(&mut field.name, limits::FIELD_NAME, Field::FieldName, cuts);
        fit_text(
            &mut field.value,
            limits::FIELD_VALUE,
            Field::FieldValue,
            cuts,
        );
        fill_blank(&mut field.name);
        fill_blank(&mut field.value);
    }
    if let Some(footer) = embed.footer.as_mut() {
        fit_text(&mut footer.text, limits::FOOTER_TEXT, Field::Footer, cuts);
    }
    if let Some(author) = embed.author.as_mut() {
        fit_text(&mut author.name, limits::AUTHOR_NAME, Field::Author, cuts);
    }
    if let Some(color) = embed.color.as_mut() {
        *color &= 0xFF_FFFF;
    }
}

/// Characters all `embeds` count against the 6000 budget.
pub fn total_chars(embeds: &[Embed]) -> usize {
    embeds.iter().map(Embed::char_count).sum()
}

/// Shrinks texts until the embeds fit the per-message budget. Returns whether it cut.
fn fit_total(embeds: &mut [Embed]) -> bool {
    let total = total_chars(embeds);
    if total <= limits::EMBEDS_TOTAL {
        return false;
    }
    let mut excess = total - limits::EMBEDS_TOTAL;
    // Each stage, in order, until the excess is gone. Field names and values keep
    // one char, since Discord rejects empty ones: 10 × 25 fields × 2 chars is far
    // below the budget, so the last stage always succeeds.
    excess = shrink_largest_first(
        embeds
            .iter_mut()
            .filter_map(|e| e.description.as_mut())
            .collect(),
        excess,
        0,
    );
    excess = shrink_largest_first(
        embeds
            .iter_mut()
            .flat_map(|e| e.fields.iter_mut().map(|f| &mut f.value))
            .collect(),
        excess,
        1,
    );
    excess = shrink_largest_first(
        embeds
            .iter_mut()
            .filter_map(|e| e.footer.as_mut().map(|f| &mut f.text))
            .collect(),
        excess,
        0,
    );
    excess = shrink_largest_first(
        embeds
            .iter_mut()
            .flat_map(|e| e.fields.iter_mut().map(|f| &mut f.name))
            .collect(),
        excess,
        1,
    );
    excess = shrink_largest_first(
        embeds.iter_mut().filter_map(|e| e.title.as_mut()).collect(),
        excess,
        0,
    );
    shrink_largest_first(
        embeds
            .iter_mut()
            .filter_map(|e| e.author.as_mut().map(|a| &mut a.name))
            .collect(),
        excess,
        0,
    );
    for embed in embeds.iter_mut() {
        // An emptied optional text is dropped rather than sent as "".
        if embed.description.as_deref() == Some("") {
            embed.description = None;
        }
        if embed.title.as_deref() == Some("") {
            embed.title = None;
        }
        if embed.footer.as_ref().is_some_and(|f| f.text.is_empty()) {
            embed.footer = None;
        }
        if embed.author.as_ref().is_some_and(|a| a.name.is_empty()) {
            embed.author = None;
        }
        for field in &mut embed.fields {
            fill_blank(&mut field.name);
            fill_blank(&mut field.value);
        }
    }
    true
}

/// Removes `excess` chars from `slots`, always from the longest ones: the longest
/// are cut down to the next-longest length (ties share the cut) until the excess
/// is gone or every slot is at `min`. Returns the excess still left.
fn shrink_largest_first(mut slots: Vec<&mut String>, mut excess: usize, min: usize) -> usize {
    while excess > 0 {
        let lens: Vec<usize> = slots.iter().map(|s| chars(s)).collect();
        let Some(&longest) = lens.iter().max() else {
            break;
        };
        if longest <= min {
            break;
        }
        let tied = lens.iter().filter(|&&l| l == longest).count();
        let next = lens
            .iter()
            .copied()
            .filter(|&l| l < longest)
            .max()
            .unwrap_or(0)
            .max(min);
        let target = longest.saturating_sub(excess.div_ceil(tied)).max(next);
        for (slot, &len) in slots.iter_mut().zip(&lens) {
            if len != longest {
                continue;
            }
            if let Some(mut shorter) = cut(slot, target) {
                if min > 0 {
                    // A field cut down to blank is filled here, not later, so the
                    // filler is counted.
                    fill_blank(&mut shorter);
                }
                excess = excess.saturating_sub(len.saturating_sub(chars(&shorter)));
                **slot = shorter;
            }
        }
    }
    excess
}

/// Drops files beyond the per-message count and byte budget. Returns whether it did.
fn fit_files(msg: &mut WebhookMessage) -> bool {
    let before = msg.files.len();
    let mut bytes = 0usize;
    let mut kept = 0usize;
    msg.files.retain(|f| {
        bytes = bytes.saturating_add(f.bytes.len());
        kept += 1;
        kept <= limits::ATTACHMENTS_PER_MESSAGE && bytes <= limits::ATTACHMENT_BYTES
    });
    msg.files.len() != before
}

/// Groups `embeds`, in order, into messages of at most `max_embeds` (clamped to
/// 1–10) embeds and 6000 chars each. An embed that alone exceeds the budget (it
/// should have been fitted first) goes into a group of its own.
pub fn split_embeds(embeds: Vec<Embed>, max_embeds: usize) -> Vec<Vec<Embed>> {
    let max_embeds = max_embeds.clamp(1, limits::EMBEDS_PER_MESSAGE);
    let mut groups: Vec<Vec<Embed>> = Vec::new();
    let mut current: Vec<Embed> = Vec::new();
    let mut current_chars = 0;
    for embed in embeds {
        let n = embed.char_count();
        if !current.is_empty()
            && (current.len() >= max_embeds || current_chars + n > limits::EMBEDS_TOTAL)
        {
            groups.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        current_chars += n;
        current.push(embed);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{Attachment, EmbedAuthor, EmbedField, EmbedFooter};
    use crate::sanitize::fence_count;

    fn embed_with_description(n: usize) -> Embed {
        Embed {
            description: Some("d".repeat(n)),
            ..Embed::default()
        }
    }

    #[test]
    fn truncate_keeps_short_text_and_marks_long_text() {
        assert_eq!(truncate_chars("hello", 5), ("hello".to_owned(), false));
        let (t, cut) = truncate_chars("hello world, this is long", 20);
        assert!(cut);
        assert_eq!(t.chars().count(), 20);
        assert!(t.starts_with("hello w") && t.ends_with(MARKER));
    }

    #[test]
    fn truncate_cuts_at_char_boundaries() {
        let s = "日本語".repeat(20);
        let (t, cut) = truncate_chars(&s, 17);
        assert!(cut);
        assert_eq!(t.chars().count(), 17);
        let (t, _) = truncate_chars("🦀🦀🦀", 2);
        assert_eq!(t, "🦀🦀");
        assert_eq!(truncate_chars("abc", 0), (String::new(), true));
    }

    #[test]
    fn cut_code_is_closed() {
        let s = format!(
            "```rust
{}
```",
            "x".repeat(3000)
        );
        let mut msg = WebhookMessage {
            content: Some(s),
            ..WebhookMessage::default()
        };
        assert_eq!(fit_message(&mut msg), vec![Field::Content]);
        let content = msg.content.unwrap_or_default();
        assert_eq!(content.chars().count(), limits::CONTENT);
        assert!(content.ends_with(&format!("{MARKER}\n```")), "{content}");
        assert_eq!(fence_count(&content), 2);
    }

    #[test]
    fn every_limit_is_applied_and_reported() {
        let field = EmbedField {
            name: "n".repeat(300),
            value: "v".repeat(2000),
            inline: false,
        };
        let embed = Embed {
            title: Some("t".repeat(300)),
            description: Some("d".repeat(5000)),
            color: Some(0x1FF_FFFF),
            fields: vec![field; 30],
            footer: Some(EmbedFooter {
                text: "f".repeat(3000),
            }),
            author: Some(EmbedAuthor {
                name: "a".repeat(300),
            }),
            ..Embed::default()
        };
        let mut msg = WebhookMessage {
            content: Some("c".repeat(2001)),
            username: Some("u".repeat(81)),
            embeds: vec![embed; 11],
            files: vec![
                Attachment {
                    filename: "f".into(),
                    bytes: vec![0]
                };
                11
            ],
            ..WebhookMessage::default()
        };
        msg.allowed_mentions.parse = vec!["everyone".into()];
        let cuts = fit_message(&mut msg);
        assert_eq!(crate::validate::validate(&msg), Ok(()));
        assert!(msg.allowed_mentions.parse.is_empty());
        for f in [
            Field::Content,
            Field::Username,
            Field::Embeds,
            Field::Title,
            Field::Description,
            Field::Fields,
            Field::FieldName,
            Field::FieldValue,
            Field::Footer,
            Field::Author,
            Field::Total,
            Field::Files,
        ] {
            assert!(cuts.contains(&f), "{f:?} not reported in {cuts:?}");
        }
        assert_eq!(cuts.iter().filter(|f| **f == Field::Embeds).count(), 1);
        assert_eq!(cuts.iter().filter(|f| **f == Field::Total).count(), 1);
    }

    #[test]
    fn total_budget_shrinks_the_largest_description_first() {
        let mut msg = WebhookMessage {
            embeds: vec![
                embed_with_description(4000),
                embed_with_description(100),
                embed_with_description(3000),
            ],
            ..WebhookMessage::default()
        };
        assert_eq!(fit_message(&mut msg), vec![Field::Total]);
        let lens: Vec<_> = msg.embeds.iter().map(Embed::char_count).collect();
        assert_eq!(lens.iter().sum::<usize>(), limits::EMBEDS_TOTAL);
        assert_eq!(lens[1], 100, "small description untouched: {lens:?}");
        // 1100 over: the 4000 one goes down to 3000 first, then both share the rest.
        assert_eq!(lens, vec![2950, 100, 2950]);
    }

    #[test]
    fn total_budget_reaches_fields_when_descriptions_are_gone() {
        let field = EmbedField {
            name: "n".repeat(256),
            value: "v".repeat(1024),
            inline: true,
        };
        let embed = Embed {
            fields: vec![field; 25],
            ..Embed::default()
        };
        let mut msg = WebhookMessage {
            embeds: vec![embed; 10],
            ..WebhookMessage::default()
        };
        fit_message(&mut msg);
        assert_eq!(crate::validate::validate(&msg), Ok(()));
        assert_eq!(msg.embeds.len(), 10);
        assert!(msg.embeds.iter().all(|e| e.fields.len() == 25));
    }

    #[test]
    fn blank_fields_names_and_empty_messages_are_made_acceptable() {
        let mut msg = WebhookMessage {
            username: Some("My Discord Bot".into()),
            ..WebhookMessage::default()
        };
        assert_eq!(fit_message(&mut msg), vec![Field::Username]);
        assert_eq!(msg.username, None);
        assert_eq!(msg.content.as_deref(), Some(EMPTY_MESSAGE));

        let mut msg = WebhookMessage {
            embeds: vec![Embed {
                fields: vec![EmbedField::default()],
                ..Embed::default()
            }],
            ..WebhookMessage::default()
        };
        assert!(fit_message(&mut msg).is_empty());
        assert_eq!(crate::validate::validate(&msg), Ok(()));
    }

    #[test]
    fn split_respects_count_and_char_budget_in_order() {
        let embeds: Vec<_> = (0..7).map(|i| embed_with_description(1000 + i)).collect();
        let groups = split_embeds(embeds.clone(), 4);
        let sizes: Vec<_> = groups.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4, 3]);
        let big: Vec<_> = (0..12).map(|_| embed_with_description(2500)).collect();
        let groups = split_embeds(big, 10);
        assert!(groups
            .iter()
            .all(|g| g.len() == 2 && total_chars(g) <= limits::EMBEDS_TOTAL));
        assert_eq!(groups.len(), 6);
        let flat: Vec<_> = split_embeds(embeds.clone(), 0)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(
            flat, embeds,
            "order kept, nothing lost; max 0 is clamped to 1"
        );
        assert!(split_embeds(Vec::new(), 10).is_empty());
    }

    #[test]
    fn field_labels_are_snake_case_and_distinct() {
        let labels: std::collections::HashSet<_> = Field::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(labels.len(), Field::ALL.len());
        assert_eq!(Field::FieldValue.as_str(), "field_value");
    }
}
