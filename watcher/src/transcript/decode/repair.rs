//! Raw bytes: trimming and the repairs of TRANSCRIPT_FORMAT.md §6 (lossy UTF-8,
//! lone surrogate escapes, a record fused behind a torn prefix).

use std::borrow::Cow;

use serde::de::{Deserializer, IgnoredAny};
use serde_json::Value;

use super::lenient::FillIn;
use super::wire::Record;
use super::{DecodeError, Repair};

/// At most this many candidate starts are tried when looking for a record
/// fused behind a torn prefix.
const FUSED_MAX_ATTEMPTS: usize = 256;

pub(super) fn trim_nuls(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != 0).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != 0).map_or(start, |i| i + 1);
    b.get(start..end.max(start)).unwrap_or(&[])
}

pub(super) fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.get(start..end.max(start)).unwrap_or(&[])
}

/// The fast path's parse, into `rec`: one vectorised UTF-8 check of the whole
/// line lets serde_json read it as `str` and skip validating every key and
/// value again. `false` sends the line to the slow path (`rec` may then be
/// partly filled and is to be dropped).
pub(super) fn parse_fast<'a>(bytes: &'a [u8], rec: &mut Record<'a>) -> bool {
    let Ok(text) = simdutf8::basic::from_utf8(bytes) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(FillIn(rec)).is_ok() && de.end().is_ok()
}

/// The slow path: a line the typed parse rejected. Returns the record(s) it
/// holds (two when a torn-off record is fused with a complete one) and the
/// first repair that was needed.
pub(super) fn parse_slow(bytes: &[u8]) -> Result<(Vec<Value>, Option<Repair>), DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => return Ok((vec![v], None)),
        Ok(_) => return Err(DecodeError::NotObject),
        Err(_) => {}
    }
    let mut buf: Cow<'_, [u8]> = Cow::Borrowed(bytes);
    let mut repair = None;
    let mut failure = DecodeError::Torn;
    if std::str::from_utf8(bytes).is_err() {
        buf = Cow::Owned(String::from_utf8_lossy(bytes).into_owned().into_bytes());
        repair = Some(Repair::InvalidUtf8);
        failure = DecodeError::InvalidUtf8;
    }
    if let Some(fixed) = fix_lone_surrogates(&buf) {
        buf = Cow::Owned(fixed);
        repair.get_or_insert(Repair::Surrogate);
        if failure == DecodeError::Torn {
            failure = DecodeError::Surrogate;
        }
    }
    if repair.is_some() {
        match serde_json::from_slice::<Value>(&buf) {
            Ok(v) if v.is_object() => return Ok((vec![v], repair)),
            Ok(_) => return Err(DecodeError::NotObject),
            Err(_) => {}
        }
    }
    match recover_fused(&buf) {
        Some(values) => Ok((values, Some(repair.unwrap_or(Repair::Fused)))),
        None => Err(failure),
    }
}

/// A torn prefix glued to a complete record (`{"parentUu{"parentUuid":…}`):
/// the earliest `{"` from which the rest of the line parses as one object is
/// the trailing record. When the prefix itself is a complete object (two
/// records missing their newline), it is kept too.
fn recover_fused(b: &[u8]) -> Option<Vec<Value>> {
    if b.last() != Some(&b'}') {
        return None; // a record always ends with '}': this is a plain torn line
    }
    let mut attempts = 0;
    for p in memchr::memchr_iter(b'{', b).skip_while(|&p| p == 0) {
        if b.get(p + 1) != Some(&b'"') {
            continue;
        }
        attempts += 1;
        if attempts > FUSED_MAX_ATTEMPTS {
            return None;
        }
        let tail = b.get(p..)?;
        if serde_json::from_slice::<IgnoredAny>(tail).is_err() {
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Value>(tail) else {
            continue;
        };
        if !record.is_object() {
            continue;
        }
        let mut values = Vec::with_capacity(2);
        if let Ok(head) = serde_json::from_slice::<Value>(b.get(..p)?) {
            if head.is_object() {
                values.push(head);
            }
        }
        values.push(record);
        return Some(values);
    }
    None
}

/// Replaces `\uD800`–`\uDFFF` escapes that are not part of a high+low pair with
/// `\uFFFD`. Returns `None` when there was nothing to replace.
pub(super) fn fix_lone_surrogates(b: &[u8]) -> Option<Vec<u8>> {
    let hex4 = |at: usize| -> Option<u16> {
        let digits = b.get(at..at + 4)?;
        let s = std::str::from_utf8(digits).ok()?;
        u16::from_str_radix(s, 16).ok()
    };
    let is_high = |u: u16| (0xD800..=0xDBFF).contains(&u);
    let is_low = |u: u16| (0xDC00..=0xDFFF).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = b.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let j = i + off;
        match b.get(j + 1) {
            Some(b'u') => {
                let Some(unit) = hex4(j + 2) else {
                    i = j + 2;
                    continue;
                };
                let lone = if is_high(unit) {
                    let paired = b.get(j + 6) == Some(&b'\\')
                        && b.get(j + 7) == Some(&b'u')
                        && hex4(j + 8).is_some_and(is_low);
                    if paired {
                        i = j + 12;
                        continue;
                    }
                    true
                } else {
                    is_low(unit)
                };
                if lone {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
                    o.extend_from_slice(b.get(copied..j).unwrap_or(&[]));
                    o.extend_from_slice(b"\\uFFFD");
                    copied = j + 6;
                }
                i = j + 6;
            }
            Some(_) => i = j + 2,
            None => break,
        }
    }
    let mut o = out?;
    o.extend_from_slice(b.get(copied..).unwrap_or(&[]));
    Some(o)
}
