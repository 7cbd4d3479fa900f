//! Making agent output safe and readable in Discord.
//!
//! Transcripts carry raw terminal output: colour codes, progress bars redrawn with
//! `\r`, NUL bytes, and whatever text a model wrote, including `@everyone`. Discord
//! shows escape codes as garbage and would ping people, so every text that reaches
//! a message goes through [`clean_text`] first. `allowed_mentions: {"parse": []}`
//! is always sent as well; neutralising mentions here is belt and braces (and keeps
//! the text from *looking* like a ping).
//!
//! Two things would let agent output mislead a reader: a masked link
//! `[docs](https://evil.example)` shows text that hides where it points, and the
//! Unicode bidi overrides and isolates (U+202A–U+202E, U+2066–U+2069) reorder
//! what is displayed (a `exe.txt` that is really `txt.exe`). Masked links are
//! broken with a zero-width space between `]` and `(` so the URL shows as text;
//! bidi controls are removed.

use crate::truncate::truncate_chars;

/// Zero-width space: invisible, but breaks `@everyone` and fence recognition.
pub const ZWSP: char = '\u{200B}';

const ESC: char = '\u{1b}';
const BEL: char = '\u{07}';
/// The single-character (C1) form of CSI.
const C1_CSI: char = '\u{9b}';

/// Returns `s` as Discord should show it: ANSI escape sequences removed, line
/// endings normalised (`\r\n` → `\n`, and for carriage-return redraws only the
/// text after the line's last `\r`, as a terminal would finally show it), control
/// characters other than `\n` and `\t` and bidi overrides removed, mentions
/// neutralised with a zero-width space after the `@`, and masked links broken
/// with one between `]` and `(`.
pub fn clean_text(s: &str) -> String {
    let stripped = strip_ansi(s);
    let mut lines = String::with_capacity(stripped.len());
    for (i, line) in stripped.split('\n').enumerate() {
        if i > 0 {
            lines.push('\n');
        }
        let line = line.trim_end_matches('\r');
        let shown = line.rsplit('\r').next().unwrap_or(line);
        lines.extend(
            shown
                .chars()
                .filter(|c| (!c.is_control() || *c == '\t') && !is_bidi_control(*c)),
        );
    }
    break_masked_links(&neutralise_mentions(&lines))
}

/// The bidi embeddings, overrides (U+202A–U+202E) and isolates (U+2066–U+2069).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Puts a zero-width space between `]` and `(`, so `[text](url)` is shown as
/// written instead of as a link labelled `text`. Idempotent.
fn break_masked_links(s: &str) -> String {
    if !s.contains("](") {
        return s.to_owned();
    }
    s.replace("](", "]\u{200B}(")
}

/// Removes CSI (`ESC [ … final`), OSC/DCS/SOS/PM/APC strings (terminated by BEL or
/// `ESC \`) and other `ESC`-introduced sequences. An unterminated sequence at the
/// end of the text is dropped: it was cut mid-way and cannot be shown anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ESC => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                Some(c) if ('\u{20}'..='\u{2f}').contains(&c) => {
                    // nF sequence: intermediates, then one final byte.
                    while chars
                        .next_if(|c| ('\u{20}'..='\u{2f}').contains(c))
                        .is_some()
                    {}
                    chars.next();
                }
                // Two-character sequence (ESC 7, ESC =, ESC c, ...); the char is dropped.
                Some(_) | None => {}
            },
            C1_CSI => skip_csi(&mut chars),
            c => out.push(c),
        }
    }
    out
}

fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    // Parameter and intermediate bytes are 0x20..=0x3F; the final byte is 0x40..=0x7E.
    // Anything outside the grammar ends the sequence and is kept, so a malformed
    // sequence cannot swallow the rest of the text.
    while let Some(c) = chars.next_if(|c| ('\u{20}'..='\u{7e}').contains(c)) {
        if ('\u{40}'..='\u{7e}').contains(&c) {
            break;
        }
    }
}

fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            BEL => break,
            ESC => {
                chars.next_if_eq(&'\\');
                break;
            }
            _ => {}
        }
    }
}

/// Puts a zero-width space after the `@` of `@everyone`, `@here`, `<@id>`,
/// `<@!id>` and `<@&id>`. Idempotent: an `@` already followed by one is left alone.
fn neutralise_mentions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    for (i, c) in s.char_indices() {
        out.push(c);
        if c == '@' {
            let rest = &s[i + 1..];
            let broadcast = rest.starts_with("everyone") || rest.starts_with("here");
            let user_or_role = prev == Some('<')
                && rest
                    .chars()
                    .next()
                    .is_some_and(|n| n.is_ascii_digit() || n == '!' || n == '&');
            if broadcast || user_or_role {
                out.push(ZWSP);
            }
        }
        prev = Some(c);
    }
    out
}

/// Number of ```` ``` ```` fences in `s` (non-overlapping, left to right, as Discord's
/// markdown reads them).
pub fn fence_count(s: &str) -> usize {
    s.matches("```").count()
}

/// Whether `s` leaves a code block open (an odd number of fences).
pub fn fence_open(s: &str) -> bool {
    fence_count(s) & 1 == 1
}

/// The closing fence [`balance_fences`] appends.
pub const CLOSING_FENCE: &str = "\n```";

/// Closes a code block left open (odd number of fences), so that a message cut
/// inside a block does not turn everything after it into code.
pub fn balance_fences(s: &str) -> String {
    let mut out = s.to_owned();
    if fence_open(s) {
        out.push_str(CLOSING_FENCE);
    }
    out
}

/// Breaks every run of three backticks with a zero-width space, so `body` cannot
/// close the block it is wrapped in.
pub fn escape_fences(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            if run == 2 {
                out.push(ZWSP);
                run = 0;
            }
            run += 1;
        } else {
            run = 0;
        }
        out.push(c);
    }
    out
}

/// Wraps `body` in a fenced code block of language `lang` that is at most
/// `max_chars` long, fences included. Inner fences are escaped; a body that does
/// not fit is cut at a char boundary and marked. Returns the block and whether it
/// was cut. When not even the fences fit, the language is dropped, and failing
/// that the result is empty (and reported as cut when the body was not empty).
pub fn code_block(lang: &str, body: &str, max_chars: usize) -> (String, bool) {
    let body = escape_fences(body);
    // A language tag is one word; anything else would be read as code.
    let lang = if lang
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-_#.".contains(c))
    {
        lang
    } else {
        ""
    };
    let overhead = |lang: &str| "```".len() * 2 + 2 + lang.chars().count();
    let lang = if overhead(lang) <= max_chars {
        lang
    } else {
        ""
    };
    let Some(room) = max_chars.checked_sub(overhead(lang)) else {
        return (String::new(), !body.is_empty());
    };
    let (body, cut) = truncate_chars(&body, room);
    (format!("```{lang}\n{body}\n```"), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colour_cursor_and_title_sequences() {
        let s = "\u{1b}[1;31mred\u{1b}[0m \u{1b}]0;title\u{07}ok \u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{1b}\\ \u{1b}(Bdone\u{1b}7";
        assert_eq!(clean_text(s), "red ok link done");
    }

    #[test]
    fn unterminated_sequences_do_not_swallow_plain_text_forever() {
        assert_eq!(clean_text("a\u{1b}[12"), "a");
        assert_eq!(clean_text("a\u{1b}[1\nb"), "a\nb");
        assert_eq!(clean_text("a\u{1b}"), "a");
    }

    #[test]
    fn carriage_returns_show_what_a_terminal_shows() {
        assert_eq!(clean_text("a\r\nb\r\n"), "a\nb\n");
        assert_eq!(clean_text(" 10%\r 50%\r100%\ndone"), "100%\ndone");
        assert_eq!(clean_text("progress\r"), "progress");
    }

    #[test]
    fn control_characters_go_tabs_and_newlines_stay() {
        assert_eq!(clean_text("a\u{0}b\u{7}c\td\u{7f}e\u{85}f\n"), "abc\tdef\n");
    }

    #[test]
    fn mentions_are_neutralised_once() {
        let s = "@everyone @here <@123> <@!456> <@&789> mail@example.com @ever";
        let cleaned = clean_text(s);
        assert_eq!(
            cleaned,
            "@\u{200B}everyone @\u{200B}here <@\u{200B}123> <@\u{200B}!456> <@\u{200B}&789> mail@example.com @ever"
        );
        assert_eq!(clean_text(&cleaned), cleaned);
    }

    #[test]
    fn masked_links_show_their_target() {
        let s = "see [the docs](https://evil.example/x) and [a]( b)";
        let cleaned = clean_text(s);
        assert_eq!(
            cleaned,
            "see [the docs]\u{200B}(https://evil.example/x) and [a]\u{200B}( b)"
        );
        assert!(!cleaned.contains("]("));
        assert_eq!(clean_text(&cleaned), cleaned);
        assert_eq!(
            clean_text("plain https://x.example [x] (y)"),
            "plain https://x.example [x] (y)"
        );
    }

    #[test]
    fn bidi_overrides_are_removed() {
        let s = "invoice\u{202E}fdp.exe \u{2066}iso\u{2069} \u{202A}a\u{202B}b\u{202C}c\u{202D}d \u{2067}\u{2068}e";
        let cleaned = clean_text(s);
        assert_eq!(cleaned, "invoicefdp.exe iso abcd e");
        assert!(!cleaned.chars().any(is_bidi_control));
        // Right-to-left text itself is kept.
        assert_eq!(clean_text("שלום"), "שלום");
    }

    #[test]
    fn odd_fences_are_closed() {
        assert_eq!(balance_fences("```rust\nfn x"), "```rust\nfn x\n```");
        assert_eq!(balance_fences("```a```"), "```a```");
        assert_eq!(balance_fences("no code"), "no code");
    }

    #[test]
    fn code_block_escapes_inner_fences() {
        let (block, cut) = code_block("sh", "echo ```x`````` y", 100);
        assert!(!cut);
        assert_eq!(fence_count(&block), 2, "{block}");
        assert!(block.starts_with("```sh\n") && block.ends_with("\n```"));
    }

    #[test]
    fn code_block_fits_and_marks_the_cut() {
        let body = "é".repeat(500);
        let (block, cut) = code_block("text", &body, 100);
        assert!(cut);
        assert_eq!(block.chars().count(), 100);
        assert!(block.contains(crate::truncate::MARKER));
        assert_eq!(fence_count(&block), 2);
    }

    #[test]
    fn code_block_degrades_when_tiny() {
        assert_eq!(
            code_block("rust", "x", 9),
            ("```\nx\n```".to_owned(), false)
        );
        assert_eq!(code_block("rust", "x", 3), (String::new(), true));
        assert_eq!(code_block("bad lang", "x", 50).0, "```\nx\n```");
    }
}
