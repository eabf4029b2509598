//! The exactly-once data that the tailer and the positions store share (SPEC §4.4, §5.3).
//!
//! - [`read`]: the `(since, skip)` [`Cursor`] a reconnect resumes from, the [`ReadCursor`] that
//!   keeps it while a stream is read, and the [`Position`] (a cursor and the container instance
//!   it belongs to) that positions persist.
//! - [`acks`]: the acknowledgement tracker of one target, which moves its acknowledged
//!   [`Position`] only past chunks every receiver finished with; the positions table collects
//!   the moved positions from it when it writes.
//!
//! A leaf below `tail` and `positions`: it imports only the data types `target` and `chunk`.

pub mod acks;
pub mod read;

pub use acks::{AckTracker, AckView, Sent, SentChunk, TargetAcks};
pub use read::{Admit, Cursor, Position, REORDER_WINDOW_SECONDS, ReadCursor};
