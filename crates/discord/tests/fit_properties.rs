//! Properties of `fit_message`: whatever goes in, what comes out is accepted by
//! our validator and by twilight-validate (an independent implementation of
//! Discord's rules), and no cut splits a char.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use discord::embed::{Embed, EmbedAuthor, EmbedField, EmbedFooter, WebhookMessage};
use discord::limits;
use discord::sanitize::{clean_text, fence_open};
use discord::truncate::{fit_message, split_embeds, truncate_chars, MARKER};
use discord::validate::validate;
use proptest::prelude::*;

/// Text with multi-byte chars, fences and blanks, sometimes far over every limit.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zé日🦀` \n]{0,40}".boxed(),
        (proptest::char::any(), 0..max)
            .prop_map(|(c, n)| c.to_string().repeat(n))
            .boxed(),
        ("[a-z`\n]{0,20}", 0..max)
            .prop_map(|(s, n)| format!("```{s}\n{}", "x".repeat(n)))
            .boxed(),
    ]
}

fn ascii_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z` \n]{0,40}".boxed(),
        ("[a-z]", 0..max).prop_map(|(c, n)| c.repeat(n)).boxed(),
        ("[a-z`\n]{0,20}", 0..max)
            .prop_map(|(s, n)| format!("```{s}\n{}", "x".repeat(n)))
            .boxed(),
    ]
}

fn embed(t: fn(usize) -> BoxedStrategy<String>) -> impl Strategy<Value = Embed> {
    (
        proptest::option::of(t(300)),
        proptest::option::of(t(5000)),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec((t(300), t(1200), any::<bool>()), 0..30),
        proptest::option::of(t(2100)),
        proptest::option::of(t(300)),
    )
        .prop_map(
            |(title, description, color, fields, footer, author)| Embed {
                title,
                description,
                color,
                fields: fields
                    .into_iter()
                    .map(|(name, value, inline)| EmbedField {
                        name,
                        value,
                        inline,
                    })
                    .collect(),
                footer: footer.map(|text| EmbedFooter { text }),
                author: author.map(|name| EmbedAuthor { name }),
                ..Embed::default()
            },
        )
}

fn message(t: fn(usize) -> BoxedStrategy<String>) -> impl Strategy<Value = WebhookMessage> {
    (
        proptest::option::of(t(2500)),
        proptest::option::of(t(100)),
        proptest::collection::vec(embed(t), 0..13),
    )
        .prop_map(|(content, username, embeds)| WebhookMessage {
            content,
            username,
            embeds,
            ..WebhookMessage::default()
        })
}

fn any_text(max: usize) -> BoxedStrategy<String> {
    text(max).boxed()
}

fn ascii(max: usize) -> BoxedStrategy<String> {
    ascii_text(max).boxed()
}

/// twilight's embed, with the non-ASCII chars `fit_message` itself adds (the
/// zero-width space filling blank fields, the marker's ellipsis) mapped to one
/// ASCII char each: one char for Discord, but three bytes for twilight's
/// byte-counting total.
fn to_twilight(embed: &Embed) -> twilight_model::channel::message::Embed {
    let json = serde_json::to_string(embed)
        .unwrap()
        .replace('\u{200B}', "_")
        .replace('…', ".");
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["type"] = "rich".into();
    serde_json::from_value(value).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fitted_messages_are_valid(mut msg in message(any_text)) {
        let before = msg.clone();
        let cuts = fit_message(&mut msg);
        prop_assert_eq!(validate(&msg), Ok(()));
        prop_assert!(msg.allowed_mentions.parse.is_empty());
        if cuts.is_empty() {
            // Nothing was cut: no text lost (blank fields may have been filled).
            if msg.content.as_deref() != Some(discord::truncate::EMPTY_MESSAGE) {
                prop_assert_eq!(&msg.content, &before.content);
            }
            prop_assert_eq!(msg.embeds.len(), before.embeds.len());
            for (after, before) in msg.embeds.iter().zip(&before.embeds) {
                prop_assert_eq!(&after.description, &before.description);
                prop_assert_eq!(after.fields.len(), before.fields.len());
            }
        }
        // Fitting twice changes nothing more.
        let again = msg.clone();
        prop_assert!(fit_message(&mut msg).is_empty());
        prop_assert_eq!(msg, again);
    }

    /// twilight counts the 6000 total in UTF-8 bytes (Discord counts chars), so the
    /// oracle gets ASCII text, where the two agree.
    #[test]
    fn fitted_messages_pass_twilight_validate(mut msg in message(ascii)) {
        fit_message(&mut msg);
        if let Some(content) = &msg.content {
            prop_assert!(twilight_validate::message::content(content).is_ok());
        }
        let embeds: Vec<_> = msg.embeds.iter().map(to_twilight).collect();
        let verdict = twilight_validate::message::embeds(&embeds);
        prop_assert!(verdict.is_ok(), "{:?}", verdict);
    }

    #[test]
    fn truncation_never_splits_a_char(s in any_text(3000), max in 0usize..3000) {
        let (out, cut) = truncate_chars(&s, max);
        prop_assert!(out.chars().count() <= max);
        prop_assert_eq!(cut, s.chars().count() > max);
        let kept = out.strip_suffix(MARKER).unwrap_or(&out);
        prop_assert!(s.starts_with(kept), "output is a prefix of the input (plus marker)");
    }

    #[test]
    fn cut_fences_stay_balanced(body in "[a-z`\n]{0,50}", n in 1990usize..4000) {
        let mut msg = WebhookMessage {
            content: Some(format!("```{body}{}", "y".repeat(n))),
            ..WebhookMessage::default()
        };
        let balanced_before = !fence_open(msg.content.as_deref().unwrap_or(""));
        let cut = !fit_message(&mut msg).is_empty();
        if cut && !balanced_before {
            prop_assert!(!fence_open(msg.content.as_deref().unwrap_or("")));
        }
    }

    #[test]
    fn split_groups_are_sendable(embeds in proptest::collection::vec(embed(any_text), 0..25), max in 0usize..12) {
        let fitted: Vec<Embed> = embeds
            .into_iter()
            .map(|e| {
                let mut m = WebhookMessage { embeds: vec![e], ..WebhookMessage::default() };
                fit_message(&mut m);
                m.embeds.remove(0)
            })
            .collect();
        let groups = split_embeds(fitted.clone(), max);
        for g in &groups {
            prop_assert!(!g.is_empty() && g.len() <= max.clamp(1, limits::EMBEDS_PER_MESSAGE));
            let msg = WebhookMessage { embeds: g.clone(), ..WebhookMessage::default() };
            prop_assert_eq!(validate(&msg), Ok(()));
        }
        prop_assert_eq!(groups.into_iter().flatten().collect::<Vec<_>>(), fitted);
    }

    #[test]
    fn cleaned_text_has_no_escapes_or_controls(s in "[a-z\u{1b}\r\n\t\u{0}\u{7f}\\[\\];@<>&!0-9]{0,80}") {
        let out = clean_text(&s);
        prop_assert!(!out.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{:?}", out);
        prop_assert!(!out.contains("@everyone") && !out.contains("<@1"));
    }
}
