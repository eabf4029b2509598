//! Per-tenant batching (SPEC §6): when a receiver sends what it has queued.
//!
//! Chunks are batched whole, per tenant (the target's `__tenant_id__`, else the receiver's
//! `tenant_id`). A tenant's open batch is *closed* when its bytes reach `batch_size` or its
//! oldest chunk is `batch_wait` old. Because chunks are never split, a batch exceeds
//! `batch_size` by at most one chunk (the one that crossed the line).
//!
//! Each tenant has at most one batch in flight, so a tenant's lines reach Loki in order; closed
//! batches wait behind it in their tenant's line, and tenants never wait for each other. Memory
//! stays bounded because every chunk keeps its queue permit ([`QueuedChunk`]) until its batch
//! is done. Time is passed in, never read, so every rule is tested with explicit `Instant`s.

use std::collections::VecDeque;
use std::time::Duration;

// Tokio's clock, so tests with paused time drive `batch_wait` (same as std outside them).
use tokio::time::Instant;

use super::queue::{QueuedChunk, Room};

/// Whole chunks of one tenant, sent in one push request.
#[derive(Debug)]
pub struct Batch {
    /// The `X-Scope-OrgID` to send, if any.
    pub tenant: Option<String>,
    /// The queue room of the chunks, given back at once. Declared before `chunks`: dropped
    /// first, so the room is back when the last chunk says the queue is idle.
    room: Room,
    /// The chunks, in arrival order.
    pub chunks: Vec<QueuedChunk>,
    /// Sum of the chunks' line bytes.
    pub bytes: usize,
    /// Number of entries.
    pub entries: usize,
    /// When the oldest chunk was added.
    pub oldest: Instant,
}

impl Batch {
    fn new(tenant: Option<String>, now: Instant) -> Batch {
        Batch {
            tenant,
            room: Room::default(),
            chunks: Vec::new(),
            bytes: 0,
            entries: 0,
            oldest: now,
        }
    }

    /// A batch of `chunks` for `tenant`, opened at `now` (benchmarks and tests; the
    /// [`Batcher`] builds batches as chunks arrive).
    pub fn of(
        tenant: Option<String>,
        chunks: impl IntoIterator<Item = QueuedChunk>,
        now: Instant,
    ) -> Batch {
        let mut batch = Batch::new(tenant, now);
        for item in chunks {
            batch.add(item);
        }
        batch
    }

    fn add(&mut self, mut item: QueuedChunk) {
        self.room.hold(&mut item);
        self.bytes += item.chunk.bytes();
        self.entries += item.chunk.entries.len();
        self.chunks.push(item);
    }
}

/// The batches of one tenant.
#[derive(Debug)]
struct TenantLine {
    tenant: Option<String>,
    open: Option<Batch>,
    closed: VecDeque<Batch>,
    in_flight: bool,
}

/// The batching state of one receiver, keyed by tenant.
#[derive(Debug)]
pub struct Batcher {
    batch_size: usize,
    batch_wait: Duration,
    default_tenant: Option<String>,
    /// A handful of tenants in practice: a linear search beats hashing a key per chunk.
    tenants: Vec<TenantLine>,
}

impl Batcher {
    /// A batcher closing batches at `batch_size` bytes or `batch_wait` age; chunks without a
    /// tenant of their own go to `default_tenant`.
    pub fn new(batch_size: usize, batch_wait: Duration, default_tenant: Option<String>) -> Batcher {
        Batcher {
            batch_size: batch_size.max(1),
            batch_wait,
            default_tenant,
            tenants: Vec::new(),
        }
    }

    /// Adds a chunk to its tenant's open batch, closing the batch when it reached `batch_size`.
    pub fn add(&mut self, item: QueuedChunk, now: Instant) {
        let tenant = item
            .chunk
            .stream
            .tenant
            .as_deref()
            .or(self.default_tenant.as_deref());
        let index = match self
            .tenants
            .iter()
            .position(|t| t.tenant.as_deref() == tenant)
        {
            Some(i) => i,
            None => {
                self.tenants.push(TenantLine {
                    tenant: tenant.map(str::to_owned),
                    open: None,
                    closed: VecDeque::new(),
                    in_flight: false,
                });
                self.tenants.len() - 1
            }
        };
        let line = &mut self.tenants[index];
        let batch = line
            .open
            .get_or_insert_with(|| Batch::new(line.tenant.clone(), now));
        batch.add(item);
        if batch.bytes >= self.batch_size {
            line.closed.extend(line.open.take());
        }
    }

    /// Closes every open batch whose oldest chunk is `batch_wait` old at `now`.
    pub fn close_expired(&mut self, now: Instant) {
        for line in &mut self.tenants {
            if line
                .open
                .as_ref()
                .is_some_and(|b| now.duration_since(b.oldest) >= self.batch_wait)
            {
                line.closed.extend(line.open.take());
            }
        }
    }

    /// Closes every open batch whatever its age (flush on shutdown).
    pub fn close_all(&mut self) {
        for line in &mut self.tenants {
            line.closed.extend(line.open.take());
        }
    }

    /// Closes the open batches of tenants with nothing in flight or waiting: while flushing on
    /// shutdown, a tenant's chunks gather behind its request in flight instead of each
    /// becoming a request of its own.
    pub fn close_idle(&mut self) {
        for line in &mut self.tenants {
            if !line.in_flight && line.closed.is_empty() {
                line.closed.extend(line.open.take());
            }
        }
    }

    /// When the next open batch expires, if any.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.tenants
            .iter()
            .filter_map(|t| t.open.as_ref())
            .map(|b| b.oldest + self.batch_wait)
            .min()
    }

    /// Bytes the fullest open batch can take before it closes; `None` with no open batch.
    pub fn room(&self) -> Option<usize> {
        self.tenants
            .iter()
            .filter_map(|t| t.open.as_ref())
            .map(|b| self.batch_size.saturating_sub(b.bytes).max(1))
            .min()
    }

    /// Takes the closed batches that may be sent now — the oldest of each tenant with nothing
    /// in flight — and marks those tenants in flight.
    pub fn take_sendable(&mut self) -> Vec<Batch> {
        let mut out = Vec::new();
        for line in &mut self.tenants {
            if !line.in_flight
                && let Some(batch) = line.closed.pop_front()
            {
                line.in_flight = true;
                out.push(batch);
            }
        }
        out
    }

    /// The batch of `tenant` in flight is done (acknowledged or dropped).
    pub fn done(&mut self, tenant: Option<&str>) {
        if let Some(i) = self
            .tenants
            .iter()
            .position(|t| t.tenant.as_deref() == tenant)
        {
            let line = &mut self.tenants[i];
            line.in_flight = false;
            // Forget idle tenants so a stream of short-lived tenants does not grow the list.
            if line.open.is_none() && line.closed.is_empty() {
                self.tenants.swap_remove(i);
            }
        }
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.tenants.iter().filter(|t| t.in_flight).count()
    }

    /// True when nothing is batched, waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.tenants
            .iter()
            .all(|t| t.open.is_none() && t.closed.is_empty() && !t.in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::test_support::chunk_with;

    fn item(tenant: Option<&str>, bytes: usize, seq: u64) -> QueuedChunk {
        QueuedChunk::detached(chunk_with(tenant, &["x".repeat(bytes).as_str()], seq))
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.chunks.iter().map(|c| c.chunk.seq).collect()
    }

    #[test]
    fn closes_by_size_exceeding_by_at_most_one_chunk() {
        let t0 = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(1), None);
        b.add(item(None, 60, 1), t0);
        assert!(b.take_sendable().is_empty());
        b.add(item(None, 60, 2), t0);
        let sent = b.take_sendable();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (seqs(&sent[0]), sent[0].bytes, sent[0].entries),
            (vec![1, 2], 120, 2)
        );
        // Exactly batch_size closes too.
        b.done(None);
        b.add(item(None, 100, 3), t0);
        assert_eq!(seqs(&b.take_sendable()[0]), vec![3]);
    }

    #[test]
    fn room_is_what_the_fullest_open_batch_can_take() {
        let t0 = Instant::now();
        let mut b = Batcher::new(100, Duration::from_secs(1), None);
        assert_eq!(b.room(), None, "no open batch");
        b.add(item(None, 30, 1), t0);
        b.add(item(Some("t"), 60, 2), t0);
        assert_eq!(b.room(), Some(40));
        b.add(item(Some("t"), 40, 3), t0);
        assert_eq!(b.room(), Some(70), "the full batch closed");
        b.close_all();
        assert_eq!(b.room(), None);
    }

    #[test]
    fn closes_by_age_of_the_oldest_chunk() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(500);
        let mut b = Batcher::new(1000, wait, None);
        assert_eq!(b.next_expiry(), None);
        b.add(item(None, 10, 1), t0);
        b.add(item(None, 10, 2), t0 + Duration::from_millis(400));
        assert_eq!(b.next_expiry(), Some(t0 + wait));
        b.close_expired(t0 + Duration::from_millis(499));
        assert!(b.take_sendable().is_empty());
        b.close_expired(t0 + wait);
        let sent = b.take_sendable();
        assert_eq!(seqs(&sent[0]), vec![1, 2]);
        assert_eq!(b.next_expiry(), None);
    }

    #[test]
    fn tenants_batch_apart_and_one_in_flight_each() {
        let t0 = Instant::now();
        let mut b = Batcher::new(10, Duration::from_secs(1), Some("default".into()));
        b.add(item(Some("a"), 10, 1), t0);
        b.add(item(None, 10, 2), t0);
        b.add(item(Some("a"), 10, 3), t0);
        b.add(item(Some("default"), 10, 4), t0);
        let first = b.take_sendable();
        let got: Vec<_> = first.iter().map(|x| (x.tenant.clone(), seqs(x))).collect();
        assert_eq!(
            got,
            vec![
                (Some("a".into()), vec![1]),
                (Some("default".into()), vec![2])
            ]
        );
        assert_eq!(b.in_flight(), 2);
        // Nothing more until a tenant's batch is done; then its next batch, in order.
        assert!(b.take_sendable().is_empty());
        b.done(Some("default"));
        let next = b.take_sendable();
        assert_eq!(
            (next[0].tenant.as_deref(), seqs(&next[0])),
            (Some("default"), vec![4])
        );
        b.done(Some("a"));
        assert_eq!(seqs(&b.take_sendable()[0]), vec![3]);
        b.done(Some("a"));
        b.done(Some("default"));
        assert!(b.is_empty());
    }

    #[test]
    fn close_all_flushes_young_batches() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1000, Duration::from_secs(60), None);
        b.add(item(None, 1, 1), t0);
        b.add(item(Some("t"), 1, 2), t0);
        b.close_expired(t0);
        assert!(b.take_sendable().is_empty());
        b.close_all();
        assert_eq!(b.take_sendable().len(), 2);
        assert!(!b.is_empty());
    }

    #[test]
    fn close_idle_gathers_behind_the_batch_in_flight() {
        let t0 = Instant::now();
        let mut b = Batcher::new(1000, Duration::from_secs(60), None);
        b.add(item(None, 1, 1), t0);
        b.close_idle();
        assert_eq!(seqs(&b.take_sendable()[0]), vec![1]);
        b.add(item(None, 1, 2), t0);
        b.add(item(None, 1, 3), t0);
        b.close_idle();
        assert!(b.take_sendable().is_empty(), "tenant busy: keep gathering");
        b.done(None);
        b.close_idle();
        assert_eq!(seqs(&b.take_sendable()[0]), vec![2, 3]);
    }
}
