//! The chunk being filled: each line through the cursor, the timestamp parser and the
//! long-line policy into an entry (SPEC §5.2–§5.3).
//!
//! The read loop pushes every line it splits; [`Pending::line`] discards the `skip` lines the
//! cursor says were already read, and collects the rest until the loop sends them as one chunk
//! ([`Pending::take`]).

use jiff::Timestamp;

use super::line;
use crate::chunk::Entry;
use crate::config::model::{OnLongLine, TailConfig};
use crate::cursor::{Admit, ReadCursor};
use crate::telemetry::{self, LineDrop};

/// Upper bound of a chunk's line bytes, whatever `chunk_lines` says: keeps one message (and one
/// receiver's batch growth) bounded when lines are long.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// The chunk being filled.
pub struct Pending {
    pub entries: Vec<Entry>,
    pub bytes: usize,
    pub read_at: std::time::Instant,
    pub last_timestamp: Option<Timestamp>,
    /// Lines dropped by policy since the last chunk (they move the position).
    pub dropped: bool,
    /// The second of the last line with a timestamp in this stream.
    last_second: Option<i64>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending::new()
    }
}

impl Pending {
    /// Empty, without room allocated: an idle tailer holds no entry buffer (SPEC §10).
    pub fn new() -> Pending {
        Pending {
            entries: Vec::new(),
            bytes: 0,
            read_at: std::time::Instant::now(),
            last_timestamp: None,
            dropped: false,
            last_second: None,
        }
    }

    /// A new stream begins: a line without a timestamp no longer borrows the last one's second.
    pub fn new_stream(&mut self) {
        self.last_second = None;
    }

    /// Whether the chunk should go out now.
    pub fn full(&self, chunk_lines: usize) -> bool {
        self.entries.len() >= chunk_lines || self.bytes >= MAX_CHUNK_BYTES
    }

    /// The chunk so far, with its entries in an exactly sized vector (a chunk waiting in a
    /// receiver's queue holds no spare room); `self` starts over, keeping its buffer for the
    /// next chunk (at most `chunk_lines` entries, or 1 MiB of lines).
    pub fn take(&mut self) -> Pending {
        Pending {
            entries: self.entries.drain(..).collect(),
            bytes: std::mem::take(&mut self.bytes),
            read_at: self.read_at,
            last_timestamp: self.last_timestamp.take(),
            dropped: std::mem::take(&mut self.dropped),
            last_second: self.last_second,
        }
    }

    /// Handles one line: cursor, timestamp, long-line policy; adds it to the chunk. Returns
    /// whether the line was new (delivered, or dropped by policy).
    pub fn line(&mut self, l: line::Line, cursor: &mut ReadCursor, config: &TailConfig) -> bool {
        let parsed = line::parse_line(l.bytes);
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
                    line::truncate_utf8(&parsed.text, max)
                }
            }
        } else {
            parsed.text
        };
        if self.entries.is_empty() {
            self.read_at = std::time::Instant::now();
        }
        self.bytes += text.len();
        self.last_timestamp = Some(timestamp);
        self.entries.push(Entry {
            timestamp,
            line: text,
        });
        true
    }
}
