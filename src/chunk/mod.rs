//! Chunks: the unit that crosses the pipeline (SPEC §2), and its acknowledgement.
//!
//! A tailer sends a [`Chunk`] of entries (never one message per line). The forwarder shares it
//! among every receiver as an `Arc<Chunk>` after [`Chunk::expect_finishers`]; each receiver calls
//! [`Chunk::finish`] exactly once, when Loki acknowledged it or when policy dropped it. When the
//! last receiver finishes, the chunk's sequence number goes back to its tailer, which moves its
//! acknowledged cursor (SPEC §4.4). Bookkeeping is one atomic per chunk, not per line.
//!
//! Dropping a chunk without finishing it is *not* an acknowledgement: lines a receiver never
//! delivered (shutdown timeout) must be read again after a restart.
//!
//! A chunk's entries are already in Loki's wire form ([`Entries`]).

mod wire;

pub use wire::{Entries, EntryRef};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::target::Stream;

/// Receives the sequence numbers of a tailer's acknowledged chunks, in any order.
///
/// Called from the receiver that finished a chunk last, so it must be cheap and never block for
/// long: one short lock per chunk.
pub trait Acknowledge: Send + Sync + 'static {
    /// Every receiver is done with chunk `seq`.
    fn acknowledge(&self, seq: u64);
}

/// A channel works as an acknowledgement sink (tests and tools that collect the numbers).
impl Acknowledge for UnboundedSender<u64> {
    fn acknowledge(&self, seq: u64) {
        // The receiving side may be gone already (stopped); nothing to move then.
        let _ = self.send(seq);
    }
}

/// Where acknowledgements of a tailer's chunks go.
pub type AckSender = Arc<dyn Acknowledge>;

/// A run of entries from one target, sent together.
#[derive(Debug)]
pub struct Chunk {
    /// Labels and tenant of the target it came from.
    pub stream: Arc<Stream>,
    pub entries: Entries,
    /// When the first entry was read (for `loki_write_entry_propagation_latency_seconds`).
    pub read_at: Instant,
    /// Position of this chunk in its tailer's sequence.
    pub seq: u64,
    pending: AtomicUsize,
    ack: Option<AckSender>,
}

impl std::fmt::Debug for dyn Acknowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Acknowledge")
    }
}

impl Chunk {
    /// Builds a chunk; `ack` receives `seq` once every receiver finished with it.
    pub fn new(
        stream: Arc<Stream>,
        entries: Entries,
        seq: u64,
        read_at: Instant,
        ack: Option<AckSender>,
    ) -> Chunk {
        Chunk {
            stream,
            entries,
            read_at,
            seq,
            pending: AtomicUsize::new(0),
            ack,
        }
    }

    /// Sum of the line lengths, what queues and batches account in.
    pub fn bytes(&self) -> usize {
        self.entries.line_bytes()
    }

    /// Sets how many receivers must finish this chunk; called by the forwarder before fan-out.
    /// With zero receivers the chunk is acknowledged at once.
    pub fn expect_finishers(&self, receivers: usize) {
        self.pending.store(receivers, Ordering::Release);
        if receivers == 0 {
            self.acknowledge();
        }
    }

    /// One receiver is done with this chunk (delivered, or dropped by policy).
    pub fn finish(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.acknowledge();
        }
    }

    fn acknowledge(&self) {
        if let Some(ack) = &self.ack {
            ack.acknowledge(self.seq);
        }
    }
}

/// Builders for the tests of every module that handles chunks: one target, one stream, chunks
/// of given lines.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;
    use std::time::Instant;

    use super::{AckSender, Chunk, Entries};
    use crate::target::{Labels, Stream, TargetId};

    /// The target `ns/<pod>/c` with the UID `u-<pod>`.
    pub fn target_id(pod: &str) -> TargetId {
        TargetId {
            namespace: "ns".into(),
            pod: pod.into(),
            container: "c".into(),
            uid: format!("u-{pod}"),
        }
    }

    /// A stream with `labels` for `tenant`.
    pub fn stream(tenant: Option<&str>, labels: &[(&str, &str)]) -> Arc<Stream> {
        Arc::new(Stream {
            labels: Labels::from_pairs(labels.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            tenant: tenant.map(str::to_owned),
        })
    }

    /// A chunk of `lines` for labels `{app="a"}` and `tenant`, expecting one finisher.
    pub fn chunk_with(tenant: Option<&str>, lines: &[&str], seq: u64) -> Arc<Chunk> {
        chunk_full(tenant, &[("app", "a")], lines, seq, None)
    }

    /// A chunk with every detail chosen, expecting one finisher.
    pub fn chunk_full(
        tenant: Option<&str>,
        labels: &[(&str, &str)],
        lines: &[&str],
        seq: u64,
        ack: Option<AckSender>,
    ) -> Arc<Chunk> {
        let chunk = plain_chunk(tenant, labels, lines, seq, ack);
        chunk.expect_finishers(1);
        Arc::new(chunk)
    }

    /// A chunk of target `ns/p/c` as a tailer sends it to the forwarder; entry `i` is `i`
    /// seconds after 2023-11-14T22:13:20Z.
    pub fn plain_chunk(
        tenant: Option<&str>,
        labels: &[(&str, &str)],
        lines: &[&str],
        seq: u64,
        ack: Option<AckSender>,
    ) -> Chunk {
        let entries: Entries = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let timestamp = jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap();
                (timestamp, l)
            })
            .collect();
        Chunk::new(stream(tenant, labels), entries, seq, Instant::now(), ack)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::plain_chunk;
    use super::*;

    /// Chunk 7 of two 3-byte lines, acknowledged to `ack`.
    fn chunk(ack: UnboundedSender<u64>) -> Chunk {
        plain_chunk(None, &[], &["abc", "abc"], 7, Some(Arc::new(ack)))
    }

    #[test]
    fn acknowledged_once_when_every_receiver_finished() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = chunk(tx);
        assert_eq!(c.bytes(), 6);
        c.expect_finishers(2);
        c.finish();
        assert!(rx.try_recv().is_err());
        c.finish();
        assert_eq!(rx.try_recv().unwrap(), 7);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn no_receiver_means_acknowledged_at_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        chunk(tx).expect_finishers(0);
        assert_eq!(rx.try_recv().unwrap(), 7);
    }

    #[test]
    fn dropping_unfinished_is_not_an_ack() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = chunk(tx);
        c.expect_finishers(1);
        drop(c);
        assert!(rx.try_recv().is_err());
    }
}
