//! Chunks to the forwarder (SPEC §2, §4.4): the tailer shell sends what it read as one
//! [`Chunk`], awaiting the send (a full receiver queue pushes back to the stream), and records
//! the position after it with the target's acknowledgement tracker.

use std::sync::Arc;

use tokio::sync::watch;

use super::stream::Shell;
use crate::chunk::{AckSender, Chunk};
use crate::cursor::{Position, SentChunk};
use crate::target::{Stream, Target};
use crate::telemetry;

/// The target's stream (labels, tenant) that chunks carry, taken again only when the target
/// changed. Reading it from the target's watch for every chunk took the watch's lock: at
/// 5,000 quiet containers every chunk is one line and every target's watch is cold in the
/// cache, so that lock was a tenth of a chunk's cost. Its own receiver, because whether the
/// container's state changed is the other receiver's business ([`super::decide`]).
pub(super) struct CurrentStream {
    target: watch::Receiver<Target>,
    stream: Arc<Stream>,
}

impl CurrentStream {
    pub(super) fn new(target: &watch::Receiver<Target>) -> CurrentStream {
        let mut target = target.clone();
        let stream = target.borrow_and_update().stream.clone();
        CurrentStream { target, stream }
    }

    /// The stream as the target has it now.
    fn get(&mut self) -> Arc<Stream> {
        // A closed watch (the target is gone) keeps the last stream: the drain sends with it.
        if self.target.has_changed().unwrap_or(false) {
            self.stream = self.target.borrow_and_update().stream.clone();
        }
        self.stream.clone()
    }
}

impl Shell {
    /// Sends the pending chunk (awaiting the forwarder: back-pressure). False when the
    /// forwarder is gone.
    pub(super) async fn flush(&mut self) -> bool {
        let position = Position {
            container_id: self.machine.container_id.clone(),
            cursor: self.cursor.position(),
        };
        if self.pending.entries.is_empty() {
            if std::mem::take(&mut self.pending.dropped) {
                self.args.acks.moved(position);
            }
            return true;
        }
        let pending = self.pending.take();
        // The totals go to the tracker; the status only learns of a new container instance.
        self.show_container();
        let (lines, bytes) = (
            pending.entries.len() as u64,
            pending.entries.line_bytes() as u64,
        );
        let seq = self.args.acks.send(
            position,
            SentChunk {
                read_at: pending.read_at,
                lines,
                bytes,
                last_entry: pending.last_timestamp,
            },
        );
        let stream = self.stream.get();
        let acks = Some(self.args.acks.clone() as AckSender);
        let chunk = Chunk::new(stream, pending.entries, seq, pending.read_at, acks);
        telemetry::lines_read(lines, bytes);
        self.args.forwarder.send(chunk).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::test_support::{stream, target_id};

    fn target(tenant: &str) -> Target {
        Target {
            id: target_id("p"),
            stream: stream(Some(tenant), &[("app", "a")]),
            discovered: Default::default(),
            container_id: None,
            state: None,
        }
    }

    #[test]
    fn chunks_carry_the_stream_the_target_has_now_and_the_last_one_once_it_is_gone() {
        let (tx, rx) = watch::channel(target("one"));
        let mut current = CurrentStream::new(&rx);
        assert_eq!(current.get().tenant.as_deref(), Some("one"));
        tx.send(target("two")).unwrap();
        assert_eq!(current.get().tenant.as_deref(), Some("two"), "relabelled");
        assert!(
            rx.has_changed().unwrap(),
            "the other receiver still sees the change"
        );
        drop(tx);
        assert_eq!(current.get().tenant.as_deref(), Some("two"), "target gone");
    }
}
