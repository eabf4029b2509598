//! Chunks to the forwarder (SPEC §2, §4.4): the tailer shell sends what it read as one
//! [`Chunk`], awaiting the send (a full receiver queue pushes back to the stream), and records
//! the position after it with the target's acknowledgement tracker.

use super::stream::Shell;
use crate::chunk::{AckSender, Chunk};
use crate::cursor::{Position, SentChunk};
use crate::telemetry;

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
        let (lines, bytes) = (pending.entries.len() as u64, pending.bytes as u64);
        let seq = self.args.acks.send(
            position,
            SentChunk {
                read_at: pending.read_at,
                lines,
                bytes,
                last_entry: pending.last_timestamp,
            },
        );
        let stream = self.args.target.borrow().stream.clone();
        let acks = Some(self.args.acks.clone() as AckSender);
        let chunk = Chunk::new(
            self.args.id.clone(),
            stream,
            pending.entries,
            seq,
            pending.read_at,
            acks,
        );
        telemetry::lines_read(lines, bytes);
        self.args.forwarder.send(chunk).await
    }
}
