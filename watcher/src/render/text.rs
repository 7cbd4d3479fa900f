//! Text fitting shared by the embed builders: sanitised, cut at char boundaries with
//! a visible marker, fences balanced, every cut reported.
//!
//! Every embed is built within [`EMBED_BYTES`] *bytes* over the parts Discord
//! counts. Discord counts chars against its 6000 budget, but twilight-validate
//! counts bytes; a char is at least one byte, so staying under 6000 bytes satisfies
//! both, and any single rendered embed can be sent on its own.

use std::time::SystemTime;

use discord::embed::{Embed, EmbedAuthor, EmbedField, EmbedFooter};
use discord::limits;
use discord::sanitize::{balance_fences, clean_text, code_block, fence_open, CLOSING_FENCE};
use discord::truncate::{truncate_chars, Field};

/// Byte budget of one embed (title, description, fields, footer, author).
pub const EMBED_BYTES: usize = limits::EMBEDS_TOTAL;

/// Shown for a field or description that would otherwise be blank.
pub const NOTHING: &str = "—";

pub fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Runs `make(max_chars)` and, while its output is over `max_bytes`, again with a
/// smaller char limit. `make` must return at most `c` chars for limit `c`.
pub fn fit_bytes(
    max_chars: usize,
    max_bytes: usize,
    make: impl Fn(usize) -> (String, bool),
) -> (String, bool) {
    let mut c = max_chars;
    loop {
        let (s, cut) = make(c);
        if s.len() <= max_bytes {
            return (s, cut);
        }
        if c == 0 {
            return (String::new(), true);
        }
        // Proportional first (multi-byte text), and always by at least one.
        let scaled = (c as u128 * max_bytes as u128 / s.len() as u128) as usize;
        c = scaled.min(c - 1);
    }
}

/// `text` (already clean) cut to `c` chars, with a code block the cut (or the
/// text itself) left open closed again within the limit.
pub fn prose(text: &str, c: usize) -> (String, bool) {
    let (t, cut) = truncate_chars(text, c);
    if !fence_open(&t) {
        return (t, cut);
    }
    let (shorter, cut2) = truncate_chars(text, c.saturating_sub(chars(CLOSING_FENCE)));
    let balanced = balance_fences(&shorter);
    if chars(&balanced) <= c {
        (balanced, cut2)
    } else {
        (t, cut)
    }
}

/// Clean text on one line, for titles, authors and console output.
pub fn one_line(s: &str) -> String {
    let cleaned = clean_text(s);
    let mut out = String::with_capacity(cleaned.len());
    for word in cleaned.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `s` as inline code on one line, at most `max_chars` chars; backticks inside
/// are turned into `ˋ` so they cannot end the span. Returns whether it was cut.
pub fn inline_code(s: &str, max_chars: usize) -> (String, bool) {
    let line = one_line(s).replace('`', "ˋ");
    if line.is_empty() {
        return (String::new(), false);
    }
    let (t, cut) = truncate_chars(&line, max_chars.saturating_sub(2).max(1));
    (format!("`{t}`"), cut)
}

/// A name safe for an attachment: `[A-Za-z0-9._-]`, at most 64 chars of `id`.
pub fn file_name(prefix: &str, id: &str, ext: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let id = if id.is_empty() { "x".to_owned() } else { id };
    format!("{prefix}-{id}.{ext}")
}

/// Text as an attachment body, capped at Discord's upload limit (cut at a char
/// boundary, marked). Returns the bytes and whether they were cut.
pub fn attachment_bytes(text: &str) -> (Vec<u8>, bool) {
    const CUT: &str = "\n… [truncated: over the upload limit]\n";
    if text.len() <= limits::ATTACHMENT_BYTES {
        return (text.as_bytes().to_vec(), false);
    }
    let mut end = limits::ATTACHMENT_BYTES - CUT.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text.as_bytes()[..end].to_vec();
    out.extend_from_slice(CUT.as_bytes());
    (out, true)
}

/// A transcript timestamp in the form Discord and twilight both accept
/// (`2025-01-01T12:00:00.000+00:00`); `None` when it does not parse.
pub fn embed_timestamp(ts: &str) -> Option<String> {
    let t = parse_time(ts)?;
    let s = humantime::format_rfc3339_millis(t).to_string();
    Some(format!("{}+00:00", s.strip_suffix('Z').unwrap_or(&s)))
}

pub fn parse_time(ts: &str) -> Option<SystemTime> {
    let ts = ts.trim();
    humantime::parse_rfc3339(ts)
        .or_else(|_| humantime::parse_rfc3339_weak(ts))
        .ok()
        .or_else(|| {
            // `+00:00` offsets (what Discord itself emits).
            let base = ts.strip_suffix("+00:00")?;
            humantime::parse_rfc3339_weak(base).ok()
        })
}

/// `HH:MM:SS` (UTC) of a timestamp, for the console.
pub fn clock(ts: &str) -> Option<String> {
    let s = humantime::format_rfc3339_seconds(parse_time(ts)?).to_string();
    s.get(11..19).map(str::to_owned)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    // ASCII digits: every index is a char boundary; after the first group the
    // rest is a whole number of groups of three.
    let first = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        r => r,
    };
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    out.push_str(&digits[..first]);
    let mut i = first;
    while i + 3 <= digits.len() {
        out.push(',');
        out.push_str(&digits[i..i + 3]);
        i += 3;
    }
    out
}

/// A duration as `1h02m03s` / `4m05s` / `6s`.
pub fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Builds one embed within Discord's limits and [`EMBED_BYTES`]: every setter
/// sanitises its text, cuts it to what is left and records the cut. Set the
/// description last: it gets whatever room the other parts leave.
#[derive(Debug, Default)]
pub struct EmbedBuilder {
    embed: Embed,
    truncated: Vec<Field>,
}

impl EmbedBuilder {
    pub fn new(title: &str, color: u32) -> Self {
        let mut b = EmbedBuilder {
            embed: Embed {
                color: Some(color & 0xFF_FFFF),
                ..Embed::default()
            },
            truncated: Vec::new(),
        };
        let (t, cut) = b.fit(&one_line(title), limits::EMBED_TITLE);
        b.note(cut, Field::Title);
        b.embed.title = (!t.is_empty()).then_some(t);
        b
    }

    fn used(&self) -> usize {
        let e = &self.embed;
        e.title.as_ref().map_or(0, String::len)
            + e.description.as_ref().map_or(0, String::len)
            + e.footer.as_ref().map_or(0, |f| f.text.len())
            + e.author.as_ref().map_or(0, |a| a.name.len())
            + e.fields
                .iter()
                .map(|f| f.name.len() + f.value.len())
                .sum::<usize>()
    }

    fn room(&self) -> usize {
        EMBED_BYTES.saturating_sub(self.used())
    }

    fn fit(&self, text: &str, max_chars: usize) -> (String, bool) {
        fit_bytes(max_chars, self.room(), |c| prose(text, c))
    }

    fn note(&mut self, cut: bool, field: Field) {
        if cut {
            self.truncated.push(field);
        }
    }

    /// Marks a subagent's events: `subagent: <description or id>`.
    pub fn author(mut self, name: &str) -> Self {
        let (t, cut) = self.fit(&one_line(name), limits::AUTHOR_NAME);
        self.note(cut, Field::Author);
        if !t.is_empty() {
            self.embed.author = Some(EmbedAuthor { name: t });
        }
        self
    }

    /// Footer text, cut to `max_chars` (≤ 2048).
    pub fn footer(mut self, text: &str, max_chars: usize) -> Self {
        let (t, cut) = self.fit(&clean_text(text), max_chars.min(limits::FOOTER_TEXT));
        self.note(cut, Field::Footer);
        if !t.trim().is_empty() {
            self.embed.footer = Some(EmbedFooter { text: t });
        }
        self
    }

    /// A field with a sanitised name and a value (markdown allowed) cut to
    /// `max_chars` (≤ 1024). Blank values show [`NOTHING`]; a field that no longer
    /// fits the budget at all is dropped and reported as `fields`.
    pub fn field(mut self, name: &str, value: &str, inline: bool, max_chars: usize) -> Self {
        if self.embed.fields.len() >= limits::EMBED_FIELDS {
            self.truncated.push(Field::Fields);
            return self;
        }
        let (name, cut) = self.fit(&one_line(name), limits::FIELD_NAME);
        self.note(cut, Field::FieldName);
        let name = if name.trim().is_empty() {
            NOTHING.to_owned()
        } else {
            name
        };
        let value = clean_text(value);
        let value = if value.trim().is_empty() {
            NOTHING.to_owned()
        } else {
            value
        };
        let room = self.room().saturating_sub(name.len());
        let (v, cut) = fit_bytes(max_chars.min(limits::FIELD_VALUE), room, |c| {
            prose(&value, c)
        });
        if v.trim().is_empty() {
            self.truncated.push(Field::Fields);
            return self;
        }
        self.note(cut, Field::FieldValue);
        self.embed.fields.push(EmbedField {
            name,
            value: v,
            inline,
        });
        self
    }

    /// The event's time, when it parses.
    pub fn timestamp(mut self, ts: Option<&str>) -> Self {
        self.embed.timestamp = ts.and_then(embed_timestamp);
        self
    }

    /// Prose description: `text` is cleaned here, cut to `max_chars` (≤ 4096) and
    /// what the other parts leave of the budget.
    pub fn description(self, text: &str, max_chars: usize) -> Self {
        let text = clean_text(text);
        self.description_with(max_chars, |c| prose(&text, c))
    }

    /// Description made by `make(c)` (at most `c` chars; inputs already clean).
    pub fn description_with(
        mut self,
        max_chars: usize,
        make: impl Fn(usize) -> (String, bool),
    ) -> Self {
        let max = max_chars.min(limits::EMBED_DESCRIPTION);
        let (d, cut) = fit_bytes(max, self.room(), make);
        self.note(cut, Field::Description);
        self.embed.description = (!d.trim().is_empty()).then_some(d);
        self
    }

    pub fn build(self) -> (Embed, Vec<Field>) {
        (self.embed, self.truncated)
    }
}

/// A description of `head` (clean markdown, kept whole when it fits), a code
/// block of `body` (clean) and `tail` (clean markdown), all within `c` chars: the
/// code block gets the room the others leave.
pub fn with_code(head: &str, lang: &str, body: &str, tail: &str, c: usize) -> (String, bool) {
    let (head, head_cut) = prose(head, c / 2);
    let (tail, tail_cut) = prose(tail, c / 4);
    let sep = |s: &str| if s.is_empty() { 0 } else { chars(s) + 1 };
    let room = c.saturating_sub(sep(&head) + sep(&tail));
    let (block, cut) = code_block(lang, body, room);
    let mut out = String::new();
    for part in [head.as_str(), block.as_str(), tail.as_str()] {
        if part.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(part);
    }
    (out, cut || head_cut || tail_cut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use discord::sanitize::fence_count;
    use discord::truncate::MARKER;

    #[test]
    fn fit_bytes_respects_both_budgets() {
        let emoji = "🦀".repeat(5000);
        let (s, cut) = fit_bytes(4096, 6000, |c| prose(&emoji, c));
        assert!(cut && s.len() <= 6000 && s.ends_with(MARKER));
        assert!(s.len() > 5900, "uses the budget: {}", s.len());
        let (s, cut) = fit_bytes(10, 6000, |c| prose("short", c));
        assert_eq!((s.as_str(), cut), ("short", false));
        let (s, _) = fit_bytes(10, 0, |c| prose("short", c));
        assert_eq!(s, "");
    }

    #[test]
    fn prose_closes_fences_it_cut_open() {
        let text = format!("intro\n```rust\n{}\n```", "x".repeat(500));
        let (s, cut) = prose(&text, 100);
        assert!(cut && chars(&s) <= 100);
        assert_eq!(fence_count(&s) % 2, 0, "{s}");
        let (s, cut) = prose("```open", 100);
        assert!(!cut);
        assert_eq!(s, "```open\n```");
    }

    #[test]
    fn with_code_keeps_everything_within_the_limit() {
        let body = "line\n".repeat(1000);
        let (s, cut) = with_code("**head**", "bash", &body, "_tail_", 300);
        assert!(cut && chars(&s) <= 300);
        assert!(s.starts_with("**head**\n```bash\n") && s.ends_with("\n_tail_"));
        assert_eq!(fence_count(&s), 2);
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(123456), "123,456");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(duration(3723), "1h02m03s");
        assert_eq!(duration(65), "1m05s");
        assert_eq!(inline_code("a`b\nc", 50), ("`aˋb c`".to_owned(), false));
        assert!(inline_code(&"x".repeat(60), 50).1);
        assert_eq!(
            file_name("output", "toolu_01/../x", "txt"),
            "output-toolu_01____x.txt"
        );
        assert_eq!(
            embed_timestamp("2025-01-01T12:00:00.5Z").as_deref(),
            Some("2025-01-01T12:00:00.500+00:00")
        );
        assert_eq!(embed_timestamp("yesterday"), None);
        assert_eq!(
            clock("2025-01-01T12:01:02.345Z").as_deref(),
            Some("12:01:02")
        );
        assert_eq!(one_line(" a\n\tb \u{1b}[31mc "), "a b c");
    }

    #[test]
    fn attachments_are_capped_at_the_upload_limit() {
        let big = "é".repeat(limits::ATTACHMENT_BYTES);
        let (bytes, cut) = attachment_bytes(&big);
        assert!(cut && bytes.len() <= limits::ATTACHMENT_BYTES);
        assert!(std::str::from_utf8(&bytes).is_ok());
    }

    #[test]
    fn builder_stays_within_the_byte_budget() {
        let huge = "日本".repeat(10_000);
        let (e, cuts) = EmbedBuilder::new(&huge, 0x1FF_FFFF)
            .author(&huge)
            .footer(&huge, 2048)
            .field(&huge, &huge, false, 1024)
            .field("n", &huge, true, 1024)
            .description(&huge, 4096)
            .build();
        let bytes = e.title.as_ref().map_or(0, String::len)
            + e.description.as_ref().map_or(0, String::len)
            + e.footer.as_ref().map_or(0, |f| f.text.len())
            + e.author.as_ref().map_or(0, |a| a.name.len())
            + e.fields
                .iter()
                .map(|f| f.name.len() + f.value.len())
                .sum::<usize>();
        assert!(bytes <= EMBED_BYTES, "{bytes}");
        assert_eq!(e.color, Some(0xFF_FFFF));
        assert!(cuts.contains(&Field::Title) && cuts.contains(&Field::Author));
    }
}
