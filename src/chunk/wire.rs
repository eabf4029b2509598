//! A chunk's entries, written in Loki's wire form as the tailer reads them (SPEC §2, §6).
//!
//! [`Entries`] holds the bytes a `logproto.StreamAdapter` carries for its `entries` field: one
//! length-delimited `EntryAdapter` (timestamp, line) after another, exactly as prost's derived
//! encoder writes them (a test holds them equal). A receiver's push body is then, per stream,
//! its labels, the chunks' entries copied as they are, and its hash: nothing per line is done
//! twice, and nothing is done per line on the receivers' threads at all.
//!
//! Why not a `Vec` of entries, each line a `Bytes` slice of the read buffer it was cut from:
//! that made every line an atomic reference count taken on the tailers' thread and released
//! on a receiver's, the receiver's encoder walked every line again (UTF-8, lengths, copy) long
//! after it left the cache, and each read buffer stayed alive, and was faulted in afresh for
//! the next read, until Loki acknowledged its last line. Written here, a line is copied once
//! while it is hot, and the connection's read buffer is free for its next read at once.
//!
//! Protobuf `string` fields must hold UTF-8, and Loki refuses the whole request otherwise, so a
//! line with invalid bytes is converted lossily here (each bad sequence becomes U+FFFD).

use jiff::Timestamp;
use prost::encoding::{decode_varint, encoded_len_varint};

/// The `EntryAdapter` field of a `StreamAdapter` (2, length-delimited).
const ENTRY_KEY: u8 = 2 << 3 | 2;
/// `EntryAdapter.timestamp` (1, length-delimited).
const TIMESTAMP_KEY: u8 = 1 << 3 | 2;
/// `EntryAdapter.line` (2, length-delimited).
const LINE_KEY: u8 = 2 << 3 | 2;
/// `Timestamp.seconds` (1, varint).
const SECONDS_KEY: u8 = 1 << 3;
/// `Timestamp.nanos` (2, varint).
const NANOS_KEY: u8 = 2 << 3;

/// Entries in Loki's wire form, in the order they were pushed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Entries {
    wire: Vec<u8>,
    len: usize,
    /// Sum of the lines' lengths (as written: after any UTF-8 conversion).
    line_bytes: usize,
    /// The longest line's length, so a receiver whose limit it does not exceed takes the
    /// entries as they are.
    longest: usize,
}

/// One entry read back from [`Entries`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub timestamp: Timestamp,
    pub line: &'a str,
}

impl Entries {
    /// No entries and no room: an idle tailer holds no buffer.
    pub const fn new() -> Entries {
        Entries {
            wire: Vec::new(),
            len: 0,
            line_bytes: 0,
            longest: 0,
        }
    }

    /// No entries, room for `bytes` of wire form.
    pub fn with_capacity(bytes: usize) -> Entries {
        Entries {
            wire: Vec::with_capacity(bytes),
            ..Entries::new()
        }
    }

    /// Appends an entry; a line that is not UTF-8 is converted lossily first.
    pub fn push(&mut self, timestamp: Timestamp, line: &[u8]) {
        match std::str::from_utf8(line) {
            Ok(text) => self.push_str(timestamp, text),
            Err(_) => self.push_str(timestamp, &String::from_utf8_lossy(line)),
        }
    }

    /// Appends an entry whose line is known to be UTF-8.
    pub fn push_str(&mut self, timestamp: Timestamp, line: &str) {
        // The head (every key and length, up to the line's bytes) is assembled on the stack
        // and copied with the line in two appends, not a byte at a time.
        let seconds = timestamp.as_second() as u64;
        // int32 is written as a sign-extended varint, as prost does.
        let nanos = i64::from(timestamp.subsec_nanosecond()) as u64;
        let mut timestamp_len = 0;
        if seconds != 0 {
            timestamp_len += 1 + encoded_len_varint(seconds);
        }
        if nanos != 0 {
            timestamp_len += 1 + encoded_len_varint(nanos);
        }
        let line_len = if line.is_empty() {
            0
        } else {
            1 + encoded_len_varint(line.len() as u64) + line.len()
        };
        let entry_len = 2 + timestamp_len + line_len;
        let mut head = [0u8; 48];
        let mut at = 0;
        let mut put = |byte: u8| {
            head[at] = byte;
            at += 1;
        };
        put(ENTRY_KEY);
        varint(entry_len as u64, &mut put);
        put(TIMESTAMP_KEY);
        put(timestamp_len as u8);
        if seconds != 0 {
            put(SECONDS_KEY);
            varint(seconds, &mut put);
        }
        if nanos != 0 {
            put(NANOS_KEY);
            varint(nanos, &mut put);
        }
        if !line.is_empty() {
            put(LINE_KEY);
            varint(line.len() as u64, &mut put);
        }
        self.wire.reserve(at + line.len());
        self.wire.extend_from_slice(&head[..at]);
        self.wire.extend_from_slice(line.as_bytes());
        self.len += 1;
        self.line_bytes += line.len();
        self.longest = self.longest.max(line.len());
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the lines' lengths.
    pub fn line_bytes(&self) -> usize {
        self.line_bytes
    }

    /// The longest line's length.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The wire form: `StreamAdapter.entries` fields, one after another.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Bytes of wire form written so far.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// Bytes of room for wire form, used or not.
    pub fn capacity(&self) -> usize {
        self.wire.capacity()
    }

    /// Room for at least `bytes` more of wire form.
    pub fn reserve(&mut self, bytes: usize) {
        self.wire.reserve(bytes);
    }

    /// Gives back the room beyond what the entries need.
    pub fn shrink_to_fit(&mut self) {
        self.wire.shrink_to_fit();
    }

    /// The entries, read back (the stdout receiver, a receiver whose line limit some line
    /// exceeds, tests).
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.wire }
    }
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = EntryRef<'a>;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<L: AsRef<[u8]>> FromIterator<(Timestamp, L)> for Entries {
    fn from_iter<I: IntoIterator<Item = (Timestamp, L)>>(iter: I) -> Entries {
        let mut entries = Entries::new();
        for (timestamp, line) in iter {
            entries.push(timestamp, line.as_ref());
        }
        entries
    }
}

/// Writes `value` as a protobuf varint through `put`.
fn varint(mut value: u64, put: &mut impl FnMut(u8)) {
    while value >= 0x80 {
        put(value as u8 | 0x80);
        value >>= 7;
    }
    put(value as u8);
}

/// The entries of an [`Entries`], in order.
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Iter<'a> {
    type Item = EntryRef<'a>;

    fn next(&mut self) -> Option<EntryRef<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // Only [`Entries::push_str`] writes the wire form, so it is well formed.
        let (key, entry) = field(&mut self.rest);
        debug_assert_eq!(key, ENTRY_KEY);
        let mut entry = entry;
        let (mut seconds, mut nanos, mut line) = (0, 0, "");
        while !entry.is_empty() {
            match field(&mut entry) {
                (TIMESTAMP_KEY, mut timestamp) => {
                    while let Some(&key) = timestamp.first() {
                        timestamp = &timestamp[1..];
                        let value = decode_varint(&mut timestamp).expect("written by push");
                        match key {
                            SECONDS_KEY => seconds = value as i64,
                            _ => nanos = value as i64 as i32,
                        }
                    }
                }
                (_, bytes) => line = std::str::from_utf8(bytes).expect("written as UTF-8"),
            }
        }
        let timestamp = Timestamp::new(seconds, nanos).expect("written from a Timestamp");
        Some(EntryRef { timestamp, line })
    }
}

/// A length-delimited field at the start of `rest`: its key and its bytes; `rest` moves past.
fn field<'a>(rest: &mut &'a [u8]) -> (u8, &'a [u8]) {
    let key = rest[0];
    *rest = &rest[1..];
    let len = decode_varint(rest).expect("written by push") as usize;
    let (bytes, after) = rest.split_at(len);
    *rest = after;
    (key, bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::logproto::{EntryAdapter, StreamAdapter};

    /// The same entries as prost's derived encoder writes them inside a `StreamAdapter`.
    fn prost_wire(entries: &[(Timestamp, String)]) -> Vec<u8> {
        StreamAdapter {
            labels: String::new(),
            entries: entries
                .iter()
                .map(|(t, line)| EntryAdapter {
                    timestamp: Some((*t).into()),
                    line: line.clone(),
                    structured_metadata: Vec::new(),
                })
                .collect(),
            hash: 0,
        }
        .encode_to_vec()
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted_as_written() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let entries: Entries = [(t, &b"ok \xff\xfe end"[..])].into_iter().collect();
        let read: Vec<EntryRef> = entries.iter().collect();
        assert_eq!(read[0].line, "ok \u{fffd}\u{fffd} end");
        assert_eq!(entries.line_bytes(), read[0].line.len());
        assert_eq!(entries.longest(), read[0].line.len());
    }

    #[test]
    fn empty_lines_and_the_epoch_are_written_as_prost_writes_them() {
        let entries = [
            (Timestamp::UNIX_EPOCH, String::new()),
            (Timestamp::new(-1, -5).unwrap(), "before 1970".to_string()),
            (Timestamp::new(0, 7).unwrap(), "x".repeat(300)),
        ];
        let ours: Entries = entries.iter().map(|(t, l)| (*t, l)).collect();
        assert_eq!(ours.wire(), prost_wire(&entries));
        let back: Vec<(Timestamp, String)> = ours
            .iter()
            .map(|e| (e.timestamp, e.line.to_string()))
            .collect();
        assert_eq!(back, entries);
    }

    proptest! {
        #[test]
        fn the_wire_is_prosts_and_reads_back(
            entries in proptest::collection::vec(
                (-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000, ".{0,200}"),
                0..20,
            ),
        ) {
            let entries: Vec<(Timestamp, String)> = entries
                .into_iter()
                .map(|(s, n, l)| (Timestamp::new(s, n).unwrap(), l))
                .collect();
            let ours: Entries = entries.iter().map(|(t, l)| (*t, l)).collect();
            let prosts = prost_wire(&entries);
            prop_assert_eq!(ours.wire(), prosts.as_slice());
            prop_assert_eq!(ours.len(), entries.len());
            prop_assert_eq!(ours.line_bytes(), entries.iter().map(|(_, l)| l.len()).sum::<usize>());
            prop_assert_eq!(
                ours.longest(),
                entries.iter().map(|(_, l)| l.len()).max().unwrap_or(0)
            );
            let back: Vec<(Timestamp, String)> =
                ours.iter().map(|e| (e.timestamp, e.line.to_string())).collect();
            prop_assert_eq!(back, entries);
        }
    }
}
