//! Checking a message against Discord's rules before it is sent.
//!
//! Pure and exhaustive: it reports every violation with its JSON path, so a test
//! or the DLQ can say exactly what Discord would have refused. [`fit_message`]
//! produces messages this accepts; a property test holds the two together.
//!
//! [`fit_message`]: crate::truncate::fit_message

use std::fmt;

use crate::embed::{Embed, WebhookMessage};
use crate::limits;
use crate::truncate::{total_chars, username_allowed};

/// One rule a message breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending value, e.g. `embeds[2].fields[0].value`.
    pub path: String,
    /// What is wrong with it, e.g. `1100 chars, limit 1024`.
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for Violation {}

struct Checker {
    violations: Vec<Violation>,
}

impl Checker {
    fn push(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        self.violations.push(Violation {
            path: path.into(),
            problem: problem.into(),
        });
    }

    fn max_chars(&mut self, path: impl FnOnce() -> String, s: &str, limit: usize) {
        let n = s.chars().count();
        if n > limit {
            self.push(path(), format!("{n} chars, limit {limit}"));
        }
    }

    fn not_blank(&mut self, path: impl FnOnce() -> String, s: &str) {
        if s.trim().is_empty() {
            self.push(path(), "must not be empty or blank");
        }
    }

    fn embed(&mut self, i: usize, embed: &Embed) {
        let at = |what: &str| format!("embeds[{i}].{what}");
        if let Some(title) = &embed.title {
            self.max_chars(|| at("title"), title, limits::EMBED_TITLE);
        }
        if let Some(description) = &embed.description {
            self.max_chars(|| at("description"), description, limits::EMBED_DESCRIPTION);
        }
        if let Some(color) = embed.color {
            if color > 0xFF_FFFF {
                self.push(at("color"), format!("{color:#x} is not a 24-bit RGB value"));
            }
        }
        if embed.fields.len() > limits::EMBED_FIELDS {
            let n = embed.fields.len();
            self.push(
                at("fields"),
                format!("{n} fields, limit {}", limits::EMBED_FIELDS),
            );
        }
        for (j, field) in embed.fields.iter().enumerate() {
            let name = || at(&format!("fields[{j}].name"));
            let value = || at(&format!("fields[{j}].value"));
            self.not_blank(name, &field.name);
            self.max_chars(name, &field.name, limits::FIELD_NAME);
            self.not_blank(value, &field.value);
            self.max_chars(value, &field.value, limits::FIELD_VALUE);
        }
        if let Some(footer) = &embed.footer {
            self.max_chars(|| at("footer.text"), &footer.text, limits::FOOTER_TEXT);
        }
        if let Some(author) = &embed.author {
            self.max_chars(|| at("author.name"), &author.name, limits::AUTHOR_NAME);
        }
    }
}

/// Checks `msg` against every limit Discord enforces on "Execute Webhook"; returns
/// all violations, not just the first.
pub fn validate(msg: &WebhookMessage) -> Result<(), Vec<Violation>> {
    let mut c = Checker {
        violations: Vec::new(),
    };
    let has_content = msg.content.as_deref().is_some_and(|s| !s.trim().is_empty());
    if !has_content && msg.embeds.is_empty() && msg.files.is_empty() {
        c.push("message", "must have content, embeds or files");
    }
    if let Some(content) = &msg.content {
        c.max_chars(|| "content".into(), content, limits::CONTENT);
    }
    if let Some(username) = &msg.username {
        c.max_chars(|| "username".into(), username, limits::USERNAME);
        if !username_allowed(username) {
            c.push(
                "username",
                "must not be blank or contain \"clyde\" or \"discord\"",
            );
        }
    }
    if msg.embeds.len() > limits::EMBEDS_PER_MESSAGE {
        let n = msg.embeds.len();
        c.push(
            "embeds",
            format!("{n} embeds, limit {}", limits::EMBEDS_PER_MESSAGE),
        );
    }
    for (i, embed) in msg.embeds.iter().enumerate() {
        c.embed(i, embed);
    }
    let total = total_chars(&msg.embeds);
    if total > limits::EMBEDS_TOTAL {
        c.push(
            "embeds",
            format!(
                "{total} chars over all embeds, limit {}",
                limits::EMBEDS_TOTAL
            ),
        );
    }
    if msg.files.len() > limits::ATTACHMENTS_PER_MESSAGE {
        let n = msg.files.len();
        c.push(
            "files",
            format!("{n} files, limit {}", limits::ATTACHMENTS_PER_MESSAGE),
        );
    }
    let bytes: usize = msg.files.iter().map(|f| f.bytes.len()).sum();
    if bytes > limits::ATTACHMENT_BYTES {
        c.push(
            "files",
            format!("{bytes} bytes, limit {}", limits::ATTACHMENT_BYTES),
        );
    }
    for (i, file) in msg.files.iter().enumerate() {
        c.not_blank(|| format!("files[{i}].filename"), &file.filename);
    }
    if c.violations.is_empty() {
        Ok(())
    } else {
        Err(c.violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{EmbedField, EmbedFooter};

    fn paths(msg: &WebhookMessage) -> Vec<String> {
        validate(msg)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.path)
            .collect()
    }

    #[test]
    fn a_plain_message_is_valid() {
        let msg = WebhookMessage {
            content: Some("hello".into()),
            ..WebhookMessage::default()
        };
        assert_eq!(validate(&msg), Ok(()));
    }

    #[test]
    fn an_empty_message_is_refused() {
        let msg = WebhookMessage {
            content: Some("  \n".into()),
            ..WebhookMessage::default()
        };
        assert_eq!(paths(&msg), vec!["message"]);
    }

    #[test]
    fn every_violation_is_reported_with_its_path() {
        let embed = Embed {
            title: Some("t".repeat(257)),
            color: Some(0x100_0000),
            fields: vec![
                EmbedField {
                    name: String::new(),
                    value: "v".repeat(1025),
                    inline: false,
                },
                EmbedField {
                    name: "ok".into(),
                    value: " ".into(),
                    inline: false,
                },
            ],
            footer: Some(EmbedFooter {
                text: "f".repeat(2049),
            }),
            ..Embed::default()
        };
        let msg = WebhookMessage {
            content: Some("c".repeat(2001)),
            username: Some("clyde".into()),
            embeds: vec![Embed::default(), embed],
            ..WebhookMessage::default()
        };
        assert_eq!(
            paths(&msg),
            vec![
                "content",
                "username",
                "embeds[1].title",
                "embeds[1].color",
                "embeds[1].fields[0].name",
                "embeds[1].fields[0].value",
                "embeds[1].fields[1].value",
                "embeds[1].footer.text",
            ]
        );
        let shown = validate(&msg).err().unwrap_or_default()[0].to_string();
        assert_eq!(shown, "content: 2001 chars, limit 2000");
    }

    #[test]
    fn limits_are_counted_in_chars_not_bytes() {
        let msg = WebhookMessage {
            content: Some("é".repeat(2000)),
            ..WebhookMessage::default()
        };
        assert_eq!(validate(&msg), Ok(()));
    }

    #[test]
    fn the_total_and_count_limits_apply() {
        let embed = Embed {
            description: Some("d".repeat(4000)),
            ..Embed::default()
        };
        let msg = WebhookMessage {
            embeds: vec![embed; 11],
            ..WebhookMessage::default()
        };
        assert_eq!(paths(&msg), vec!["embeds", "embeds"]);
    }
}
