//! Incremental line splitting with a hard cap on how much of one line is held.
//!
//! Bytes arrive in arbitrary chunks (whatever `read` returned); a line is only
//! complete once its `\n` arrives, so the tail of a chunk is kept until then.
//! A line longer than the cap is never buffered whole: once it passes the cap
//! its bytes are dropped as they arrive and only its extent is reported, so
//! memory stays at `max_line_bytes` however long the line gets.
//! Pure: no I/O, offsets are whatever the caller says the first byte was.

/// Buffer capacity kept between lines; a long line's allocation beyond this is
/// given back once the line is done so one big line does not pin memory.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One complete line, or the extent of a skipped one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A complete line. `bytes` excludes the `\n` and a trailing `\r`.
    Line {
        /// Offset of the line's first byte.
        start: u64,
        /// Offset just after its `\n`.
        end: u64,
        bytes: Vec<u8>,
    },
    /// A line longer than the cap, skipped; only where it was is known.
    Oversize { start: u64, end: u64 },
}

impl Piece {
    pub fn start(&self) -> u64 {
        match self {
            Self::Line { start, .. } | Self::Oversize { start, .. } => *start,
        }
    }

    pub fn end(&self) -> u64 {
        match self {
            Self::Line { end, .. } | Self::Oversize { end, .. } => *end,
        }
    }
}

/// Splits a byte stream into lines.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// Bytes of the current, unfinished line (never more than the cap).
    partial: Vec<u8>,
    /// Offset of the first byte of the current line: the end of the last
    /// complete line, i.e. where reading would resume without loss.
    line_start: u64,
    /// Offset just after the last byte pushed.
    pos: u64,
    /// The current line passed the cap: its bytes are being discarded until
    /// its newline.
    skipping: bool,
}

impl LineSplitter {
    /// A splitter whose first pushed byte sits at `offset`. Lines longer than
    /// `max_line_bytes` (newline excluded) are skipped.
    pub fn new(max_line_bytes: usize, offset: u64) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            partial: Vec::new(),
            line_start: offset,
            pos: offset,
            skipping: false,
        }
    }

    /// Forgets any partial line and continues at `offset` (after a rotation).
    pub fn reset(&mut self, offset: u64) {
        self.partial = Vec::new();
        self.line_start = offset;
        self.pos = offset;
        self.skipping = false;
    }

    /// End of the last complete line: a safe place to resume reading.
    pub fn line_start(&self) -> u64 {
        self.line_start
    }

    /// Offset just after the last byte pushed: where the next chunk starts.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Bytes currently held for an unfinished line (bounded by the cap).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds the next chunk; appends every line it completes to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Piece>) {
        while !chunk.is_empty() {
            let newline = memchr::memchr(b'\n', chunk);
            let (body, rest) = match newline {
                Some(i) => (&chunk[..i], &chunk[i + 1..]),
                None => (chunk, &[][..]),
            };
            self.pos += (body.len() + usize::from(newline.is_some())) as u64;
            if !self.skipping {
                if self.partial.len() + body.len() > self.max_line_bytes {
                    self.skipping = true;
                    self.release();
                } else {
                    self.partial.extend_from_slice(body);
                }
            }
            if newline.is_some() {
                self.finish_line(out);
            }
            chunk = rest;
        }
    }

    fn finish_line(&mut self, out: &mut Vec<Piece>) {
        let start = self.line_start;
        let end = self.pos;
        if self.skipping {
            self.skipping = false;
            out.push(Piece::Oversize { start, end });
        } else {
            let mut bytes = if self.partial.capacity() > KEEP_CAPACITY {
                std::mem::take(&mut self.partial)
            } else {
                let b = self.partial.clone();
                self.partial.clear();
                b
            };
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            out.push(Piece::Line { start, end, bytes });
        }
        self.line_start = end;
    }

    fn release(&mut self) {
        self.partial = Vec::new();
    }

    /// The unfinished line held now (`\r` included), unless it is being
    /// skipped for its length.
    pub fn peek_partial(&self) -> Option<&[u8]> {
        (!self.skipping && !self.partial.is_empty()).then_some(self.partial.as_slice())
    }

    /// Takes the unfinished line as if its newline had come: for the final
    /// flush at shutdown, when the writer is gone and a complete record may
    /// never get its newline. Reading continues after it.
    pub fn take_partial(&mut self) -> Option<Piece> {
        self.peek_partial()?;
        let mut bytes = std::mem::take(&mut self.partial);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let start = self.line_start;
        self.line_start = self.pos;
        Some(Piece::Line {
            start,
            end: self.pos,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]], max: usize) -> (Vec<Piece>, LineSplitter) {
        let mut s = LineSplitter::new(max, 0);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        (out, s)
    }

    fn line(start: u64, end: u64, bytes: &[u8]) -> Piece {
        Piece::Line {
            start,
            end,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_partial_line_can_be_taken_as_complete() {
        let (out, mut s) = split_all(&[b"a\n{\"b\":1}\r"], 1024);
        assert_eq!(out, vec![line(0, 2, b"a")]);
        assert_eq!(s.peek_partial(), Some(&b"{\"b\":1}\r"[..]));
        assert_eq!(s.take_partial(), Some(line(2, 10, b"{\"b\":1}")));
        assert_eq!((s.line_start(), s.peek_partial()), (10, None));
        // An oversize line being skipped is never taken.
        let (_, mut s) = split_all(&[b"xxxxxxxxxx"], 4);
        assert_eq!(s.take_partial(), None);
    }

    #[test]
    fn every_split_point_yields_the_same_lines() {
        let text: &[u8] = "{\"a\":1}\n\n{\"b\":\"é😀\"}\r\nlast\n".as_bytes();
        let (whole, _) = split_all(&[text], 1024);
        assert_eq!(
            whole,
            vec![
                line(0, 8, b"{\"a\":1}"),
                line(8, 9, b""),
                line(9, 25, "{\"b\":\"é😀\"}".as_bytes()),
                line(25, 30, b"last"),
            ]
        );
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let (pieces, s) = split_all(&[&text[..i], &text[i..j], &text[j..]], 1024);
                assert_eq!(pieces, whole, "split at {i},{j}");
                assert_eq!(s.line_start(), text.len() as u64);
            }
        }
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let text = b"one\ntwo\nthree\n";
        let chunks: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(split_all(&chunks, 64).0, split_all(&[text], 64).0);
    }

    #[test]
    fn partial_line_is_held_until_its_newline() {
        let mut s = LineSplitter::new(64, 100);
        let mut out = Vec::new();
        s.push(b"{\"par", &mut out);
        assert!(out.is_empty());
        assert_eq!((s.line_start(), s.pos(), s.buffered()), (100, 105, 5));
        s.push(b"tial\":1}", &mut out);
        assert!(out.is_empty());
        s.push(b"\n", &mut out);
        assert_eq!(out, vec![line(100, 114, b"{\"partial\":1}")]);
        assert_eq!((s.line_start(), s.buffered()), (114, 0));
    }

    #[test]
    fn crlf_is_trimmed_even_when_split_between_chunks() {
        let (out, _) = split_all(&[b"a\r", b"\nb\r\n"], 64);
        assert_eq!(out, vec![line(0, 3, b"a"), line(3, 6, b"b")]);
        // A lone \r inside a line is content.
        let (out, _) = split_all(&[b"a\rb\n"], 64);
        assert_eq!(out, vec![line(0, 4, b"a\rb")]);
    }

    #[test]
    fn oversize_line_is_skipped_in_bounded_memory_and_its_neighbours_kept() {
        let mut s = LineSplitter::new(16, 0);
        let mut out = Vec::new();
        s.push(b"ok1\n", &mut out);
        // 10 MiB line in 4 KiB chunks: the buffer never grows past the cap.
        let chunk = [b'x'; 4096];
        for _ in 0..2560 {
            s.push(&chunk, &mut out);
            assert!(s.buffered() <= 16);
        }
        s.push(b"\nok2\n", &mut out);
        let big_end = 4 + 2560 * 4096 + 1;
        assert_eq!(
            out,
            vec![
                line(0, 4, b"ok1"),
                Piece::Oversize {
                    start: 4,
                    end: big_end
                },
                line(big_end, big_end + 4, b"ok2"),
            ]
        );
    }

    #[test]
    fn a_line_exactly_at_the_cap_is_kept() {
        let (out, _) = split_all(&[b"abcd", b"\nabcde\n"], 4);
        assert_eq!(
            out,
            vec![line(0, 5, b"abcd"), Piece::Oversize { start: 5, end: 11 }]
        );
    }

    #[test]
    fn reset_forgets_the_partial_line() {
        let mut s = LineSplitter::new(64, 0);
        let mut out = Vec::new();
        s.push(b"a\nhalf", &mut out);
        s.reset(0);
        s.push(b"new\n", &mut out);
        assert_eq!(out, vec![line(0, 2, b"a"), line(0, 4, b"new")]);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Lines of arbitrary text (multi-byte characters included), no newlines.
    fn lines() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[^\n\r]{0,40}", 0..20)
    }

    proptest! {
        #[test]
        fn random_chunking_yields_exactly_the_lines(
            lines in lines(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let text: Vec<u8> = lines.iter().flat_map(|l| l.bytes().chain([b'\n'])).collect();
            // Cut anywhere, including inside a multi-byte UTF-8 character.
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
            points.sort_unstable();
            let mut s = LineSplitter::new(1024, 0);
            let mut out = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain([text.len()]) {
                s.push(&text[prev..p], &mut out);
                prev = p;
            }
            let got: Vec<String> = out
                .iter()
                .map(|p| match p {
                    Piece::Line { bytes, .. } => String::from_utf8(bytes.clone()).unwrap(),
                    Piece::Oversize { .. } => panic!("nothing is oversize here"),
                })
                .collect();
            prop_assert_eq!(&got, &lines);
            // Positions tile the input exactly.
            let mut at = 0;
            for p in &out {
                prop_assert_eq!(p.start(), at);
                at = p.end();
            }
            prop_assert_eq!(at, text.len() as u64);
            prop_assert_eq!(s.buffered(), 0);
        }

        #[test]
        fn oversize_lines_are_reported_and_never_buffered_past_the_cap(
            lens in prop::collection::vec(0usize..200, 1..15),
            chunk in 1usize..64,
        ) {
            let cap = 50;
            let text: Vec<u8> = lens.iter().flat_map(|&n| std::iter::repeat_n(b'y', n).chain([b'\n'])).collect();
            let mut s = LineSplitter::new(cap, 0);
            let mut out = Vec::new();
            for c in text.chunks(chunk) {
                s.push(c, &mut out);
                prop_assert!(s.buffered() <= cap);
            }
            prop_assert_eq!(out.len(), lens.len());
            for (p, &n) in out.iter().zip(&lens) {
                prop_assert_eq!(p.end() - p.start(), n as u64 + 1);
                prop_assert_eq!(matches!(p, Piece::Oversize { .. }), n > cap);
            }
        }
    }
}
