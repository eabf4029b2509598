//! The chunk being filled: each line through the cursor, the timestamp parser and the
//! long-line policy into an entry (SPEC §5.2–§5.3).
//!
//! The read loop pushes every line it splits; [`Pending::line`] discards the `skip` lines the
//! cursor says were already read, and writes the rest in Loki's wire form ([`Entries`]) until
//! the loop sends them as one chunk ([`Pending::take`]).

use jiff::Timestamp;

use super::line;
use crate::chunk::Entries;
use crate::config::model::{OnLongLine, TailConfig};
use crate::cursor::{Admit, ReadCursor};
use crate::telemetry::{self, LineDrop};

/// Upper bound of a chunk's line bytes, whatever `chunk_lines` says: keeps one message (and one
/// receiver's batch growth) bounded when lines are long.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// The chunk being filled.
pub struct Pending {
    pub entries: Entries,
    pub read_at: std::time::Instant,
    pub last_timestamp: Option<Timestamp>,
    /// Lines dropped by policy since the last chunk (they move the position).
    pub dropped: bool,
    /// The second of the last line with a timestamp in this stream.
    last_second: Option<i64>,
    /// When the last line of this stream's last chunk was read (tokio's clock): a stream that
    /// sent one less than [`LINGER`] ago is busy and gathers its lines
    /// ([`Pending::linger_until`]).
    last_sent: Option<tokio::time::Instant>,
    /// When the last line was read.
    last_read: tokio::time::Instant,
    /// Room the next chunk's first line reserves: a tenth more than the last chunk took.
    room: usize,
    /// This stream's timestamps (it remembers their minute).
    parser: line::LineParser,
}

/// A busy stream (one that sent a chunk less than this ago) gathers its lines into one chunk
/// for up to this long, rather than sending a chunk for every few lines the connection hands
/// over: each chunk costs a hand-over, an acknowledgement and a positions update, whatever its
/// size. A quiet stream's line is sent at once.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

impl Default for Pending {
    fn default() -> Pending {
        Pending::new()
    }
}

impl Pending {
    /// Empty, without room allocated: an idle tailer holds no entry buffer (SPEC §10).
    pub fn new() -> Pending {
        Pending {
            entries: Entries::new(),
            read_at: std::time::Instant::now(),
            last_timestamp: None,
            dropped: false,
            last_second: None,
            last_sent: None,
            last_read: tokio::time::Instant::now(),
            room: 0,
            parser: line::LineParser::default(),
        }
    }

    /// A new stream begins: a line without a timestamp no longer borrows the last one's second,
    /// and the stream is not busy yet.
    pub fn new_stream(&mut self) {
        self.last_second = None;
        self.last_sent = None;
    }

    /// Until when the lines gathered so far may wait for more before they are sent: `None`
    /// (send now) unless there are some and the stream is busy.
    pub fn linger_until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.last_sent
            .map(|t| t + LINGER)
            .filter(|&until| until > now && !self.entries.is_empty())
    }

    /// Whether the chunk should go out now.
    pub fn full(&self, chunk_lines: usize) -> bool {
        self.entries.len() >= chunk_lines || self.entries.line_bytes() >= MAX_CHUNK_BYTES
    }

    /// The chunk so far; `self` starts over, empty. The entries are handed over as they were
    /// written, not copied: the next chunk's first line reserves a tenth more room than this
    /// chunk took (little spare in a busy stream's chunks, and mimalloc keeps a block that
    /// shrinks by less than half where it is), and a tailer whose stream went quiet after its
    /// last chunk holds no buffer.
    pub fn take(&mut self) -> Pending {
        self.last_sent = Some(self.last_read);
        let written = self.entries.wire_len();
        self.room = written + written / 8;
        let mut entries = std::mem::take(&mut self.entries);
        entries.shrink_to_fit();
        Pending {
            entries,
            read_at: self.read_at,
            last_timestamp: self.last_timestamp.take(),
            dropped: std::mem::take(&mut self.dropped),
            last_second: self.last_second,
            last_sent: self.last_sent,
            last_read: self.last_read,
            room: self.room,
            parser: line::LineParser::default(),
        }
    }

    /// Handles one line, read at `read_at`: cursor, timestamp, long-line policy; adds it to the
    /// chunk. Returns whether the line was new (delivered, or dropped by policy). The read time
    /// is the caller's, one clock reading for all the lines of a read: at thousands of quiet
    /// streams each line is a read of its own, and the clock was read three times for it.
    pub fn line(
        &mut self,
        l: line::Line<'_>,
        cursor: &mut ReadCursor,
        config: &TailConfig,
        read_at: tokio::time::Instant,
    ) -> bool {
        self.last_read = read_at;
        let parsed = self.parser.parse(l.bytes);
        let (timestamp, second) = match parsed.timestamp {
            Some(ts) => (ts, ts.as_second()),
            None => {
                // The kubelet filtered this line by a timestamp we cannot read; its neighbour's
                // second is the best guess for the cursor (the read time could be far ahead
                // of an old log and push `since` past unread lines).
                let second = self.last_second.unwrap_or(cursor.position().since);
                (Timestamp::now(), second)
            }
        };
        if cursor.admit(second) == Admit::Skip {
            return false;
        }
        if parsed.timestamp.is_none() {
            telemetry::line_without_timestamp();
        } else {
            self.last_second = Some(second);
        }
        let max = config.max_line_size;
        let text = if l.truncated || parsed.text.len() > max {
            match config.on_long_line {
                OnLongLine::Drop => {
                    telemetry::lines_dropped(LineDrop::TooLong, 1);
                    self.dropped = true;
                    return true;
                }
                OnLongLine::Truncate => {
                    telemetry::line_truncated();
                    line::truncate_utf8(parsed.text, max)
                }
            }
        } else {
            parsed.text
        };
        if self.entries.is_empty() {
            self.read_at = read_at.into_std();
            self.entries.reserve(self.room);
        }
        self.last_timestamp = Some(timestamp);
        self.entries.push(timestamp, text);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;
    use std::time::Duration;
    use tokio::time::Instant;

    fn add(pending: &mut Pending, cursor: &mut ReadCursor, text: &str) {
        let text = format!("2024-05-01T10:00:00Z {text}");
        let l = line::Line {
            bytes: text.as_bytes(),
            truncated: false,
        };
        assert!(pending.line(l, cursor, &TailConfig::default(), Instant::now()));
    }

    #[test]
    fn between_chunks_a_stream_holds_no_buffer_and_the_next_chunk_reserves_like_the_last() {
        let mut pending = Pending::new();
        let mut cursor = ReadCursor::new(Cursor::BEGINNING);
        for n in 0..100 {
            add(
                &mut pending,
                &mut cursor,
                &format!("line {n} of a busy stream"),
            );
        }
        let taken = pending.take();
        assert_eq!(taken.entries.len(), 100);
        assert_eq!(
            taken.entries.capacity(),
            taken.entries.wire_len(),
            "no spare room queued"
        );
        assert_eq!(
            pending.entries.capacity(),
            0,
            "nothing held while the stream is quiet"
        );
        add(&mut pending, &mut cursor, "the next chunk's first line");
        assert!(pending.entries.capacity() >= taken.entries.wire_len());
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_busy_stream_with_lines_gathered_lingers() {
        let mut pending = Pending::new();
        let mut cursor = ReadCursor::new(Cursor::BEGINNING);
        add(&mut pending, &mut cursor, "first");
        assert_eq!(
            pending.linger_until(Instant::now()),
            None,
            "quiet: send now"
        );
        let sent = Instant::now();
        pending.take();
        assert_eq!(pending.linger_until(sent), None, "nothing gathered");
        tokio::time::advance(Duration::from_millis(10)).await;
        add(&mut pending, &mut cursor, "second");
        assert_eq!(pending.linger_until(Instant::now()), Some(sent + LINGER));
        tokio::time::advance(LINGER).await;
        assert_eq!(
            pending.linger_until(Instant::now()),
            None,
            "lingered long enough"
        );
        pending.new_stream();
        assert_eq!(pending.linger_until(sent), None, "a new stream is not busy");
    }
}
