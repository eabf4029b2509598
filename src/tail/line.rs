//! Lines of a `pods/log` body: bounded splitting and timestamp parsing (SPEC §5.2).
//!
//! The body arrives in byte slices of any size. [`LineSplitter`] cuts it at `\n` without ever
//! holding more than `max` bytes of one line: a longer line keeps its first `max` bytes and the
//! rest is skipped up to the next `\n` (the caller truncates or drops it, per `on_long_line`).
//! Lines that lie whole inside one slice are zero-copy sub-slices of it; only a line that spans
//! two reads is copied, once, into the splitter's bounded buffer.
//!
//! [`parse_line`] then splits `<RFC3339Nano> <text>`. The kubelet prints Go's `RFC3339Nano`,
//! which trims trailing zeros of the fraction (`…:05.1Z`, `…:05Z`), so every fraction length from
//! 0 to 9 digits occurs. A hand-written parser handles that fixed UTC form without allocating;
//! anything else (an offset instead of `Z`) falls back to jiff's parser.

use bytes::{Buf, Bytes, BytesMut};
use jiff::Timestamp;

/// One line cut from the body, without its `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The line, at most the splitter's `max` bytes.
    pub bytes: Bytes,
    /// The line was longer than `max`: `bytes` holds only its beginning.
    pub truncated: bool,
}

/// Splits a byte stream into lines, holding at most `max` bytes of an unfinished line.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    /// The beginning of a line that continues in the next slice (≤ `max` bytes).
    partial: BytesMut,
    /// The current unfinished line already exceeded `max`: skip to the next `\n`.
    overflow: bool,
}

impl LineSplitter {
    /// A splitter keeping at most `max` bytes of a line (`max` ≥ 1).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max: max.max(1),
            partial: BytesMut::new(),
            overflow: false,
        }
    }

    /// Feeds the next slice of the body; calls `out` for every line it completes, in order.
    pub fn push(&mut self, data: Bytes, out: &mut impl FnMut(Line)) {
        let mut start = 0;
        while start < data.len() {
            let rest = &data[start..];
            match find_newline(rest) {
                Some(nl) => {
                    let end = start + nl;
                    if self.partial.is_empty() && !self.overflow {
                        // The common case: the whole line is inside this slice.
                        let len = end - start;
                        let keep = len.min(self.max);
                        out(Line {
                            bytes: data.slice(start..start + keep),
                            truncated: len > self.max,
                        });
                    } else {
                        self.append(&data[start..end]);
                        out(Line {
                            bytes: self.partial.split().freeze(),
                            truncated: self.overflow,
                        });
                        self.overflow = false;
                    }
                    start = end + 1;
                }
                None => {
                    self.append(rest);
                    break;
                }
            }
        }
    }

    /// The unfinished last line at the end of a body that will not continue (a non-following
    /// read), if any. A *cut* stream must not call this: its fragment will be read again whole.
    pub fn finish(&mut self) -> Option<Line> {
        if self.partial.is_empty() && !self.overflow {
            return None;
        }
        let line = Line {
            bytes: self.partial.split().freeze(),
            truncated: self.overflow,
        };
        self.overflow = false;
        Some(line)
    }

    /// Forgets an unfinished line (the stream was cut; the line will be read again).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.overflow = false;
    }

    /// Bytes held for an unfinished line.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    fn append(&mut self, bytes: &[u8]) {
        let room = self.max - self.partial.len();
        if bytes.len() > room {
            self.overflow = true;
        }
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// The index of the first `\n` in `data`: eight bytes per step (SWAR), because this scan is
/// the one thing done to every byte the relay reads (SPEC §10).
pub fn find_newline(data: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const NEWLINES: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut words = data.chunks_exact(8);
    let mut offset = 0;
    for word in words.by_ref() {
        let x = u64::from_le_bytes(word.try_into().expect("chunks of 8")) ^ NEWLINES;
        // A zero byte of `x` (a `\n` in `word`) sets its high bit here; bytes above the first
        // zero may be flagged falsely, those below never are, so the lowest flag is exact.
        let found = x.wrapping_sub(ONES) & !x & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| offset + i)
}

/// A line split into its timestamp and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine {
    /// The kubelet's timestamp, `None` when the line does not start with one.
    pub timestamp: Option<Timestamp>,
    /// The text after the timestamp and its space (the whole line without a timestamp).
    pub text: Bytes,
}

/// Splits `<RFC3339Nano> <text>`; a line without a parsable timestamp keeps all its bytes.
/// (Without the per-stream cache of [`LineParser`]: for one-off lines and tests.)
pub fn parse_line(line: Bytes) -> ParsedLine {
    LineParser::default().parse(line)
}

/// [`parse_line`] for the lines of one stream, remembering the minute of the last timestamp.
///
/// The lines of a stream share their timestamps' `YYYY-MM-DDTHH:MM` for a minute at a time;
/// comparing those 16 bytes with the last line's is much cheaper than parsing and validating
/// them and converting the date to days, which was a fifth of the relay's CPU per line at
/// saturation.
#[derive(Clone, Debug, Default)]
pub struct LineParser {
    /// The last timestamp's `YYYY-MM-DDTHH:MM` and the Unix seconds at the start of that minute.
    minute: Option<([u8; 16], i64)>,
}

impl LineParser {
    /// Splits `<RFC3339Nano> <text>`, like [`parse_line`]. Takes the line by value so the text
    /// is the same buffer advanced past the timestamp, without a reference count going up and
    /// down per line.
    pub fn parse(&mut self, mut line: Bytes) -> ParsedLine {
        if let Some((timestamp, len)) = self.kubelet(&line)
            && line.get(len) == Some(&b' ')
        {
            line.advance(len + 1);
            return ParsedLine {
                timestamp: Some(timestamp),
                text: line,
            };
        }
        parse_any(line)
    }

    /// A timestamp in the kubelet's own form at the start of `s`,
    /// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` (UTC, Go's RFC3339Nano), and its length. `None` leaves
    /// `s` to the general parser.
    fn kubelet(&mut self, s: &[u8]) -> Option<(Timestamp, usize)> {
        let prefix: &[u8; 16] = s.get(..16)?.try_into().ok()?;
        let base = match self.minute {
            Some((known, base)) if known == *prefix => base,
            _ => {
                let base = minute_start(prefix)?;
                self.minute = Some((*prefix, base));
                base
            }
        };
        let (colon, tens, ones) = (*s.get(16)?, *s.get(17)?, *s.get(18)?);
        if colon != b':' || !tens.is_ascii_digit() || !ones.is_ascii_digit() {
            return None;
        }
        let second = i64::from((tens - b'0') * 10 + (ones - b'0'));
        if second > 59 {
            return None;
        }
        let (nanos, z) = match *s.get(19)? {
            b'Z' => (0, 19),
            b'.' => {
                // One to nine digits, read in the same pass that finds their end.
                let mut fraction = 0u32;
                let mut digits = 0;
                while let Some(&b) = s.get(20 + digits)
                    && b.is_ascii_digit()
                {
                    if digits == 9 {
                        return None;
                    }
                    fraction = fraction * 10 + u32::from(b - b'0');
                    digits += 1;
                }
                if digits == 0 {
                    return None;
                }
                (fraction * 10u32.pow(9 - digits as u32), 20 + digits)
            }
            _ => return None,
        };
        if s.get(z) != Some(&b'Z') {
            return None;
        }
        let timestamp = Timestamp::new(base + second, nanos as i32).ok()?;
        Some((timestamp, z + 1))
    }
}

/// The Unix seconds at the start of `YYYY-MM-DDTHH:MM` (UTC), validated.
fn minute_start(s: &[u8; 16]) -> Option<i64> {
    if s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' {
        return None;
    }
    let year = digits(&s[0..4])? as i64;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let hour = digits(&s[11..13])?;
    let minute = digits(&s[14..16])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60))
}

/// [`parse_line`] for any form: the first space within 64 bytes ends the timestamp.
fn parse_any(mut line: Bytes) -> ParsedLine {
    if let Some(space) = line.iter().take(64).position(|&b| b == b' ')
        && let Some(ts) = parse_timestamp(&line[..space])
    {
        line.advance(space + 1);
        return ParsedLine {
            timestamp: Some(ts),
            text: line,
        };
    }
    // A truncated line may have lost its space: `<timestamp>` alone is an empty text.
    if let Some(ts) = parse_timestamp(&line) {
        return ParsedLine {
            timestamp: Some(ts),
            text: Bytes::new(),
        };
    }
    ParsedLine {
        timestamp: None,
        text: line,
    }
}

/// Shortens `text` to at most `max` bytes without splitting a UTF-8 character.
pub fn truncate_utf8(text: &Bytes, max: usize) -> Bytes {
    if text.len() <= max {
        return text.clone();
    }
    let mut end = max;
    // Back up over continuation bytes (0b10xx_xxxx) so the cut lands on a character start;
    // a character is at most 4 bytes, so this looks at 3 bytes at most for valid UTF-8.
    while end > 0 && max - end < 3 && text[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    if text[end] & 0xC0 == 0x80 {
        // Not UTF-8 anyway: cut at the byte limit.
        end = max;
    }
    text.slice(..end)
}

/// Parses an RFC 3339 timestamp as the kubelet prints it (`2024-01-02T03:04:05.123Z`, fraction
/// of 0–9 digits, trailing zeros trimmed), falling back to jiff for other offsets.
pub fn parse_timestamp(s: &[u8]) -> Option<Timestamp> {
    fast_utc(s).or_else(|| {
        let s = std::str::from_utf8(s).ok()?;
        s.parse::<Timestamp>().ok()
    })
}

/// The kubelet's form alone (the whole of `s`), without a cache.
fn fast_utc(s: &[u8]) -> Option<Timestamp> {
    LineParser::default()
        .kubelet(s)
        .and_then(|(timestamp, len)| (len == s.len()).then_some(timestamp))
}

fn digits(s: &[u8]) -> Option<u32> {
    let mut n = 0u32;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u32;
    }
    Some(n)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split_all(max: usize, parts: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in parts {
            s.push(Bytes::copy_from_slice(p), &mut |l| out.push(l));
        }
        out
    }

    fn line(s: &str, truncated: bool) -> Line {
        Line {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            truncated,
        }
    }

    /// `ts` as the kubelet prints it: Go's RFC3339Nano, trailing zeros of the fraction
    /// trimmed, no fraction when zero.
    fn go_rfc3339_nano(ts: Timestamp) -> String {
        let mut s = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
        let nanos = ts.subsec_nanosecond();
        if nanos != 0 {
            let f = format!("{nanos:09}");
            s.push('.');
            s.push_str(f.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    #[test]
    fn splits_lines_across_reads() {
        type Case<'a> = (&'a [&'a [u8]], &'a [(&'a str, bool)]);
        let table: &[Case] = &[
            (&[b"a\nb\n"], &[("a", false), ("b", false)]),
            (&[b"a", b"b\n", b"c"], &[("ab", false)]),
            (&[b"\n\n"], &[("", false), ("", false)]),
            (&[b"abcdef\nxy\n"], &[("abcd", true), ("xy", false)]),
            (
                &[b"ab", b"cdef", b"gh\nxy\n"],
                &[("abcd", true), ("xy", false)],
            ),
            (&[b"abcd\n"], &[("abcd", false)]),
            (&[b"ab", b"cd", b"\n"], &[("abcd", false)]),
            (&[b"ab", b"cde", b"\n"], &[("abcd", true)]),
        ];
        for (parts, want) in table {
            let got = split_all(4, parts);
            let want: Vec<Line> = want.iter().map(|(s, t)| line(s, *t)).collect();
            assert_eq!(got, want, "input {parts:?}");
        }
    }

    #[test]
    fn never_buffers_more_than_max() {
        let mut s = LineSplitter::new(8);
        let mut n = 0;
        for _ in 0..1000 {
            s.push(Bytes::from_static(b"0123456789"), &mut |_| n += 1);
            assert!(s.buffered() <= 8);
        }
        s.push(Bytes::from_static(b"\nok\n"), &mut |_| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn whole_lines_are_zero_copy_slices() {
        let body = Bytes::from_static(b"one\ntwo\n");
        let mut s = LineSplitter::new(100);
        let mut out = Vec::new();
        s.push(body.clone(), &mut |l| out.push(l));
        assert_eq!(out[1].bytes.as_ptr(), body[4..].as_ptr());
    }

    #[test]
    fn finish_returns_the_unterminated_tail_once() {
        let mut s = LineSplitter::new(4);
        s.push(Bytes::from_static(b"x\nabcdef"), &mut |_| {});
        assert_eq!(s.finish(), Some(line("abcd", true)));
        assert_eq!(s.finish(), None);
        s.push(Bytes::from_static(b"zz"), &mut |_| {});
        s.reset();
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn parses_every_fraction_length_the_kubelet_prints() {
        let base = Timestamp::new(1_704_164_645, 0).unwrap(); // 2024-01-02T03:04:05Z
        let table: &[(&str, i32)] = &[
            ("2024-01-02T03:04:05Z", 0),
            ("2024-01-02T03:04:05.1Z", 100_000_000),
            ("2024-01-02T03:04:05.12Z", 120_000_000),
            ("2024-01-02T03:04:05.000001Z", 1_000),
            ("2024-01-02T03:04:05.123456789Z", 123_456_789),
        ];
        for (s, nanos) in table {
            let want = Timestamp::new(base.as_second(), *nanos).unwrap();
            assert_eq!(parse_timestamp(s.as_bytes()), Some(want), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for s in [
            "",
            "hello world",
            "2024-13-02T03:04:05Z",
            "2023-02-29T03:04:05Z",
            "2024-01-02T24:04:05Z",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:05.1234567890Z",
            "2024-01-02T03:04:05",
        ] {
            assert_eq!(parse_timestamp(s.as_bytes()), None, "{s}");
        }
    }

    #[test]
    fn offsets_fall_back_to_jiff() {
        let got = parse_timestamp(b"2024-01-02T04:04:05.5+01:00").unwrap();
        assert_eq!(got, Timestamp::new(1_704_164_645, 500_000_000).unwrap());
    }

    #[test]
    fn parse_line_splits_timestamp_and_text() {
        let l = Bytes::from_static(b"2024-01-02T03:04:05.1Z hello world");
        let p = parse_line(l.clone());
        assert_eq!(p.timestamp.map(|t| t.as_second()), Some(1_704_164_645));
        assert_eq!(p.text.as_ptr(), l[23..].as_ptr());
        assert_eq!(&p.text[..], b"hello world");

        let l = Bytes::from_static(b"no timestamp here");
        let p = parse_line(l.clone());
        assert_eq!(p.timestamp, None);
        assert_eq!(p.text, l);

        let p = parse_line(Bytes::from_static(b"2024-01-02T03:04:05Z"));
        assert!(p.timestamp.is_some());
        assert!(p.text.is_empty());
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let t = Bytes::from("aé€".to_string()); // 1 + 2 + 3 bytes
        assert_eq!(&truncate_utf8(&t, 6)[..], "aé€".as_bytes());
        assert_eq!(&truncate_utf8(&t, 5)[..], "aé".as_bytes());
        assert_eq!(&truncate_utf8(&t, 4)[..], "aé".as_bytes());
        assert_eq!(&truncate_utf8(&t, 2)[..], "a".as_bytes());
        let bad = Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x80]);
        assert_eq!(truncate_utf8(&bad, 4).len(), 4);
    }

    #[test]
    fn finds_the_first_newline_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                let mut data = vec![b'a'; len];
                data[at] = b'\n';
                // A later newline and bytes that look like one to a careless bit trick.
                if at + 3 < len {
                    data[at + 3] = b'\n';
                }
                if at > 0 {
                    data[at - 1] = 0x0b;
                }
                assert_eq!(find_newline(&data), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_newline(&vec![b'a'; len]), None);
        }
    }

    proptest! {
        #[test]
        fn find_newline_agrees_with_a_plain_scan(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert_eq!(find_newline(&data), data.iter().position(|&b| b == b'\n'));
        }

        #[test]
        fn any_split_yields_the_same_lines(
            body in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), Just(b'b')], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..20),
            max in 1usize..12,
        ) {
            let whole = split_all(max, &[&body]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort();
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                parts.push(&body[prev..c]);
                prev = c;
            }
            prop_assert_eq!(split_all(max, &parts), whole.clone());
            // And the lines are the body's lines, bounded.
            let expected: Vec<Line> = body
                .split(|&b| b == b'\n')
                .take(body.iter().filter(|&&b| b == b'\n').count())
                .map(|l| Line {
                    bytes: Bytes::copy_from_slice(&l[..l.len().min(max)]),
                    truncated: l.len() > max,
                })
                .collect();
            prop_assert_eq!(whole, expected);
        }

        #[test]
        fn fast_parser_agrees_with_jiff(secs in 0i64..4_102_444_800, nanos in 0i32..1_000_000_000) {
            let ts = Timestamp::new(secs, nanos).unwrap();
            prop_assert_eq!(fast_utc(go_rfc3339_nano(ts).as_bytes()), Some(ts));
        }

        /// A stream's parser remembers the last minute: whatever order the timestamps come
        /// in (the same minute, the next, an older one, a line without one), each line parses
        /// as it would alone.
        #[test]
        fn the_remembered_minute_never_changes_a_result(
            start in 0i64..4_102_444_800,
            steps in proptest::collection::vec((-130i64..130, 0i32..1_000_000_000, 0u8..8), 1..40),
        ) {
            let mut parser = LineParser::default();
            let mut secs = start;
            for (step, nanos, kind) in steps {
                secs = (secs + step).max(0);
                let ts = Timestamp::new(secs, nanos).unwrap();
                let line = match kind {
                    0 => "no timestamp at all".to_string(),
                    1 => format!("{} ", go_rfc3339_nano(ts).replace('Z', "+00:00")),
                    2 => go_rfc3339_nano(ts),
                    _ => format!("{} text {kind}", go_rfc3339_nano(ts)),
                };
                let bytes = Bytes::from(line.clone());
                prop_assert_eq!(parser.parse(bytes.clone()), parse_any(bytes), "{}", line);
                if kind >= 2 {
                    prop_assert_eq!(parser.parse(Bytes::from(line)).timestamp, Some(ts));
                }
            }
        }
    }
}
