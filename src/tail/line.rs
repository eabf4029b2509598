//! Lines of a `pods/log` body: bounded splitting and timestamp parsing (SPEC §5.2).
//!
//! The body arrives in byte slices of any size. [`LineSplitter`] cuts it at `\n` without ever
//! holding more than `max` bytes of one line: a longer line keeps its first `max` bytes and the
//! rest is skipped up to the next `\n` (the caller truncates or drops it, per `on_long_line`).
//! Lines are borrowed: a line that lies whole inside one slice is a sub-slice of it; only a line
//! that spans two reads is copied, once, into the splitter's bounded buffer. The caller copies
//! what it keeps into its chunk ([`crate::chunk::Entries`]) before it asks for the next line.
//!
//! [`parse_line`] then splits `<RFC3339Nano> <text>`. The kubelet prints Go's `RFC3339Nano`,
//! which trims trailing zeros of the fraction (`…:05.1Z`, `…:05Z`), so every fraction length from
//! 0 to 9 digits occurs. A hand-written parser handles that fixed UTC form without allocating;
//! anything else (an offset instead of `Z`) falls back to jiff's parser.

use jiff::Timestamp;

/// One line cut from the body, without its `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line, at most the splitter's `max` bytes.
    pub bytes: &'a [u8],
    /// The line was longer than `max`: `bytes` holds only its beginning.
    pub truncated: bool,
}

/// Splits a byte stream into lines, holding at most `max` bytes of an unfinished line.
#[derive(Debug)]
pub struct LineSplitter {
    max: usize,
    /// The beginning of a line that continues in the next slice (≤ `max` bytes), or the line
    /// handed out last when it was assembled here (`handed_out`).
    partial: Vec<u8>,
    /// The current unfinished line already exceeded `max`: skip to the next `\n`.
    overflow: bool,
    /// `partial` holds a line already handed out: forget it before going on.
    handed_out: bool,
}

impl LineSplitter {
    /// A splitter keeping at most `max` bytes of a line (`max` ≥ 1).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max: max.max(1),
            partial: Vec::new(),
            overflow: false,
            handed_out: false,
        }
    }

    /// The next line that `data[*at..]` completes, moving `*at` past it; `None` when the rest of
    /// `data` holds no `\n` (it is kept as the beginning of the next line, and `*at` moves to
    /// the end). Feed every slice of the body in order, each until this returns `None`.
    pub fn next_line<'a>(&'a mut self, data: &'a [u8], at: &mut usize) -> Option<Line<'a>> {
        if std::mem::take(&mut self.handed_out) {
            self.partial.clear();
            self.overflow = false;
        }
        let rest = data.get(*at..).filter(|r| !r.is_empty())?;
        // memchr compares 32 bytes per step: this scan is the one thing done to every byte
        // the relay reads (SPEC §10).
        match memchr::memchr(b'\n', rest) {
            Some(len) => {
                *at += len + 1;
                if self.partial.is_empty() && !self.overflow {
                    // The common case: the whole line is inside this slice.
                    return Some(Line {
                        bytes: &rest[..len.min(self.max)],
                        truncated: len > self.max,
                    });
                }
                self.append(&rest[..len]);
                self.handed_out = true;
                Some(Line {
                    bytes: &self.partial,
                    truncated: self.overflow,
                })
            }
            None => {
                self.append(rest);
                *at = data.len();
                None
            }
        }
    }

    /// The unfinished last line at the end of a body that will not continue (a non-following
    /// read), if any. A *cut* stream must not call this: its fragment will be read again whole.
    pub fn finish(&mut self) -> Option<Line<'_>> {
        if std::mem::take(&mut self.handed_out) {
            self.reset();
        }
        if self.partial.is_empty() && !self.overflow {
            return None;
        }
        self.handed_out = true;
        Some(Line {
            bytes: &self.partial,
            truncated: self.overflow,
        })
    }

    /// Forgets an unfinished line (the stream was cut; the line will be read again).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.overflow = false;
        self.handed_out = false;
    }

    /// Bytes held for an unfinished line.
    pub fn buffered(&self) -> usize {
        if self.handed_out {
            0
        } else {
            self.partial.len()
        }
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

/// A line split into its timestamp and text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    /// The kubelet's timestamp, `None` when the line does not start with one.
    pub timestamp: Option<Timestamp>,
    /// The text after the timestamp and its space (the whole line without a timestamp).
    pub text: &'a [u8],
}

/// Splits `<RFC3339Nano> <text>`; a line without a parsable timestamp keeps all its bytes.
/// (Without the per-stream cache of [`LineParser`]: for one-off lines and tests.)
pub fn parse_line(line: &[u8]) -> ParsedLine<'_> {
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
    /// Splits `<RFC3339Nano> <text>`, like [`parse_line`].
    pub fn parse<'a>(&mut self, line: &'a [u8]) -> ParsedLine<'a> {
        if let Some((timestamp, len)) = self.kubelet(line)
            && line.get(len) == Some(&b' ')
        {
            return ParsedLine {
                timestamp: Some(timestamp),
                text: &line[len + 1..],
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
                // One to nine digits, read in the same pass that finds their end: the first
                // eight at once when they are all digits (a runtime's nanoseconds, trimmed of
                // trailing zeros, are nine digits nine times in ten).
                let (mut fraction, mut digits) = match s.get(20..28).and_then(eight_digits) {
                    Some(eight) => (eight, 8),
                    None => (0, 0),
                };
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
fn parse_any(line: &[u8]) -> ParsedLine<'_> {
    if let Some(space) = line.iter().take(64).position(|&b| b == b' ')
        && let Some(ts) = parse_timestamp(&line[..space])
    {
        return ParsedLine {
            timestamp: Some(ts),
            text: &line[space + 1..],
        };
    }
    // A truncated line may have lost its space: `<timestamp>` alone is an empty text.
    if let Some(ts) = parse_timestamp(line) {
        return ParsedLine {
            timestamp: Some(ts),
            text: &[],
        };
    }
    ParsedLine {
        timestamp: None,
        text: line,
    }
}

/// Shortens `text` to at most `max` bytes without splitting a UTF-8 character.
pub fn truncate_utf8(text: &[u8], max: usize) -> &[u8] {
    if text.len() <= max {
        return text;
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
    &text[..end]
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

/// The value of eight ASCII digits, `None` unless all eight are digits: each byte checked and
/// converted in the same 64-bit word (the well-known SWAR digit tricks, as simdjson's).
#[inline]
fn eight_digits(s: &[u8]) -> Option<u32> {
    let word = u64::from_le_bytes(s.try_into().ok()?);
    // A digit is 0x30..=0x39: its high nibble is 3, and adding 6 does not carry out of its low.
    let high = word & 0xF0F0_F0F0_F0F0_F0F0;
    let carried = (word.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4;
    if high | carried != 0x3333_3333_3333_3333 {
        return None;
    }
    // Pairs of digits, then fours, then all eight; the first byte is the most significant.
    let word = (word & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561) >> 8;
    let word = (word & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
    Some(((word & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32) as u32)
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

    /// Every line `data` completes, owned.
    fn push(s: &mut LineSplitter, data: &[u8]) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(l) = s.next_line(data, &mut at) {
            out.push((l.bytes.to_vec(), l.truncated));
        }
        out
    }

    fn split_all(max: usize, parts: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut s = LineSplitter::new(max);
        parts.iter().flat_map(|p| push(&mut s, p)).collect()
    }

    fn line(s: &str, truncated: bool) -> (Vec<u8>, bool) {
        (s.as_bytes().to_vec(), truncated)
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
            let want: Vec<(Vec<u8>, bool)> = want.iter().map(|(s, t)| line(s, *t)).collect();
            assert_eq!(got, want, "input {parts:?}");
        }
    }

    #[test]
    fn never_buffers_more_than_max() {
        let mut s = LineSplitter::new(8);
        let mut n = 0;
        for _ in 0..1000 {
            n += push(&mut s, b"0123456789").len();
            assert!(s.buffered() <= 8);
        }
        n += push(&mut s, b"\nok\n").len();
        assert_eq!(n, 2);
    }

    #[test]
    fn whole_lines_are_slices_of_the_body() {
        let body = b"one\ntwo\n";
        let mut s = LineSplitter::new(100);
        let mut at = 0;
        s.next_line(body, &mut at);
        let two = s.next_line(body, &mut at).unwrap();
        assert_eq!(two.bytes.as_ptr(), body[4..].as_ptr());
        assert_eq!(s.next_line(body, &mut at), None);
    }

    #[test]
    fn finish_returns_the_unterminated_tail_once() {
        let mut s = LineSplitter::new(4);
        push(&mut s, b"x\nabcdef");
        let tail = s.finish().map(|l| (l.bytes.to_vec(), l.truncated));
        assert_eq!(tail, Some(line("abcd", true)));
        assert_eq!(s.finish(), None);
        push(&mut s, b"zz");
        s.reset();
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_line_assembled_across_reads_is_forgotten_once_handed_out() {
        let mut s = LineSplitter::new(100);
        assert!(push(&mut s, b"ab").is_empty());
        assert_eq!(s.buffered(), 2);
        assert_eq!(push(&mut s, b"c\nd"), vec![line("abc", false)]);
        assert_eq!(s.buffered(), 1);
        assert_eq!(push(&mut s, b"\n"), vec![line("d", false)]);
        assert_eq!(s.buffered(), 0);
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
            ("2024-01-02T03:04:05.12345678Z", 123_456_780),
            ("2024-01-02T03:04:05.00000001Z", 10),
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
        let l = b"2024-01-02T03:04:05.1Z hello world";
        let p = parse_line(l);
        assert_eq!(p.timestamp.map(|t| t.as_second()), Some(1_704_164_645));
        assert_eq!(p.text.as_ptr(), l[23..].as_ptr());
        assert_eq!(p.text, b"hello world");

        let l = b"no timestamp here";
        let p = parse_line(l);
        assert_eq!(p.timestamp, None);
        assert_eq!(p.text, l);

        let p = parse_line(b"2024-01-02T03:04:05Z");
        assert!(p.timestamp.is_some());
        assert!(p.text.is_empty());
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        let t = "aé€".as_bytes(); // 1 + 2 + 3 bytes
        assert_eq!(truncate_utf8(t, 6), "aé€".as_bytes());
        assert_eq!(truncate_utf8(t, 5), "aé".as_bytes());
        assert_eq!(truncate_utf8(t, 4), "aé".as_bytes());
        assert_eq!(truncate_utf8(t, 2), "a".as_bytes());
        let bad = [0x80, 0x80, 0x80, 0x80, 0x80];
        assert_eq!(truncate_utf8(&bad, 4).len(), 4);
    }

    #[test]
    fn eight_digits_at_once_or_none() {
        assert_eq!(eight_digits(b"12345678"), Some(12_345_678));
        assert_eq!(eight_digits(b"00000000"), Some(0));
        assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
        for bad in [
            b"1234567Z",
            b"/2345678",
            b":2345678",
            b"1234 678",
            b"\xb23456789",
        ] {
            assert_eq!(eight_digits(bad), None, "{bad:?}");
        }
        assert_eq!(eight_digits(b"1234567"), None, "too short");
    }

    proptest! {
        #[test]
        fn eight_digits_agrees_with_a_plain_parse(word in proptest::array::uniform8(any::<u8>())) {
            let plain = word
                .iter()
                .all(u8::is_ascii_digit)
                .then(|| std::str::from_utf8(&word).unwrap().parse().unwrap());
            prop_assert_eq!(eight_digits(&word), plain);
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
            let expected: Vec<(Vec<u8>, bool)> = body
                .split(|&b| b == b'\n')
                .take(body.iter().filter(|&&b| b == b'\n').count())
                .map(|l| (l[..l.len().min(max)].to_vec(), l.len() > max))
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
                prop_assert_eq!(parser.parse(line.as_bytes()), parse_any(line.as_bytes()), "{}", line);
                if kind >= 2 {
                    prop_assert_eq!(parser.parse(line.as_bytes()).timestamp, Some(ts));
                }
            }
        }
    }
}
