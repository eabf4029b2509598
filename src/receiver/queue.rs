//! A receiver's queue, bounded in bytes (SPEC §2, §4.5 `buffer_size`, `on_full`).
//!
//! Room is a semaphore of byte permits. The forwarder's [`QueueSender::push`] takes a chunk's
//! bytes from it — waiting for room with `on_full = "block"`, or dropping the chunk (counted,
//! and finished: dropped by policy is done) with `on_full = "drop"`. The permit travels with the
//! chunk as a [`QueuedChunk`] through batching and sending, so the memory of a chunk is released
//! only once it was delivered or dropped: queued + batched + in flight ≤ `buffer_size`
//! (SPEC §9, memory is bounded by the queues).
//!
//! A chunk costs its line bytes, at least 1 (a chunk of empty lines still takes memory), and at
//! most the whole buffer (a chunk larger than the buffer waits for an empty queue rather than
//! forever).
//!
//! [`QueueSender::close`] stops accepting: later pushes, and pushes still waiting for room,
//! return without finishing their chunk, so it is not acknowledged and is read again after a
//! restart (SPEC §4.4).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::chunk::Chunk;
use crate::config::OnFull;
use crate::telemetry::{self, SendDrop};

/// Creates a queue of `buffer_size` bytes for receiver `name`.
pub fn channel(
    name: Arc<str>,
    buffer_size: usize,
    on_full: OnFull,
) -> (QueueSender, QueueReceiver) {
    // The semaphore counts in u32 batches; 4 GiB of buffer is far beyond any sane setting.
    let capacity = buffer_size.clamp(1, u32::MAX as usize);
    let (tx, rx) = unbounded_channel();
    let shared = Arc::new(Shared {
        name,
        capacity,
        on_full,
        room: Arc::new(Semaphore::new(capacity)),
        queued_bytes: AtomicUsize::new(0),
        queued_chunks: AtomicUsize::new(0),
        dropped_entries: AtomicU64::new(0),
        idle: Notify::new(),
        retired: AtomicBool::new(false),
    });
    (
        QueueSender {
            shared: shared.clone(),
            tx,
        },
        QueueReceiver { shared, rx },
    )
}

struct Shared {
    name: Arc<str>,
    capacity: usize,
    on_full: OnFull,
    room: Arc<Semaphore>,
    queued_bytes: AtomicUsize,
    queued_chunks: AtomicUsize,
    /// Entries dropped because the queue was full (for status and tests).
    dropped_entries: AtomicU64,
    /// Woken when the last held chunk is released.
    idle: Notify,
    /// The receiver was removed by a reload: a chunk it lets go unfinished is finished as
    /// dropped (`receiver_removed`), so the targets' positions are not held back by it.
    retired: AtomicBool,
}

impl Shared {
    /// Finishes a chunk the retired receiver will never send, counting it as dropped.
    fn release(&self, chunk: &Chunk) {
        let entries = chunk.entries.len() as u64;
        self.dropped_entries.fetch_add(entries, Ordering::Relaxed);
        telemetry::dropped(
            &self.name,
            SendDrop::ReceiverRemoved,
            entries,
            chunk.bytes as u64,
        );
        chunk.finish();
    }
}

/// The forwarder's end of a queue; cheap to clone.
#[derive(Clone)]
pub struct QueueSender {
    shared: Arc<Shared>,
    tx: UnboundedSender<QueuedChunk>,
}

impl QueueSender {
    /// Queues a chunk. The future resolves once the chunk is queued, dropped (`on_full =
    /// "drop"`, finished and counted) or refused because the queue is closed (not finished).
    /// It holds no borrow of `self`, so the forwarder can await many at once.
    pub fn push(&self, chunk: Arc<Chunk>) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let cost = cost(&chunk, shared.capacity);
        // Decide at once for `drop`: a dropping receiver never makes the forwarder wait.
        let immediate = match shared.on_full {
            OnFull::Block => None,
            OnFull::Drop => Some(shared.room.clone().try_acquire_many_owned(cost)),
        };
        async move {
            let permit = match immediate {
                None => match shared.room.clone().acquire_many_owned(cost).await {
                    Ok(permit) => permit,
                    Err(_closed) => {
                        if shared.retired.load(Ordering::Acquire) {
                            shared.release(&chunk);
                        }
                        return;
                    }
                },
                Some(Ok(permit)) => permit,
                Some(Err(TryAcquireError::Closed)) => {
                    if shared.retired.load(Ordering::Acquire) {
                        shared.release(&chunk);
                    }
                    return;
                }
                Some(Err(TryAcquireError::NoPermits)) => {
                    let entries = chunk.entries.len() as u64;
                    shared.dropped_entries.fetch_add(entries, Ordering::Relaxed);
                    telemetry::dropped(
                        &shared.name,
                        SendDrop::QueueFull,
                        entries,
                        chunk.bytes as u64,
                    );
                    chunk.finish();
                    return;
                }
            };
            shared
                .queued_bytes
                .fetch_add(cost as usize, Ordering::AcqRel);
            shared.queued_chunks.fetch_add(1, Ordering::AcqRel);
            let queued = QueuedChunk {
                chunk,
                _permit: Some(Permit {
                    shared: shared.clone(),
                    bytes: cost as usize,
                    _permit: permit,
                }),
                queued_at: Instant::now(),
                finished: AtomicBool::new(false),
            };
            // The receiver is gone (stopped): the chunk is dropped unfinished, as on shutdown.
            let _ = tx.send(queued);
        }
    }

    /// The queue's counters, without the power to send (which would keep the queue open).
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting chunks; pushes waiting for room return without queueing.
    pub fn close(&self) {
        self.shared.room.close();
    }

    /// Marks the receiver removed (reload): whatever it lets go from now on without sending
    /// is finished as dropped instead of holding back the positions of its targets.
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::Release);
    }

    /// Bytes held by queued, batched and in-flight chunks.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// The configured `buffer_size`.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Entries dropped so far because the queue was full.
    pub fn dropped_entries(&self) -> u64 {
        self.shared.dropped_entries.load(Ordering::Relaxed)
    }

    /// Resolves when no chunk is held any more (queued, batched or in flight), or at `deadline`;
    /// returns whether the queue is empty.
    pub async fn wait_empty(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.queued_chunks.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.shared.queued_chunks.load(Ordering::Acquire) == 0;
            }
        }
    }
}

/// Read-only counters of a queue.
#[derive(Clone)]
pub struct QueueStats {
    shared: Arc<Shared>,
}

impl QueueStats {
    /// Bytes held by queued, batched and in-flight chunks.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// The configured `buffer_size`.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Entries dropped so far because the queue was full.
    pub fn dropped_entries(&self) -> u64 {
        self.shared.dropped_entries.load(Ordering::Relaxed)
    }
}

fn cost(chunk: &Chunk, capacity: usize) -> u32 {
    chunk.bytes.clamp(1, capacity) as u32
}

/// The receiver's end of a queue.
pub struct QueueReceiver {
    shared: Arc<Shared>,
    rx: UnboundedReceiver<QueuedChunk>,
}

impl QueueReceiver {
    /// The next queued chunk; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<QueuedChunk> {
        self.rx.recv().await
    }

    /// Polls for the next queued chunk (for use as a stream).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<QueuedChunk>> {
        self.rx.poll_recv(cx)
    }

    /// Bytes held by queued, batched and in-flight chunks.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// The receiver's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// The chunks as a stream, for an actor's `add_stream`.
    pub fn into_stream(mut self) -> impl futures::Stream<Item = QueuedChunk> + Unpin {
        futures::stream::poll_fn(move |cx| self.poll_recv(cx))
    }
}

/// A chunk taken from a queue with the room it holds; the room is given back on drop.
#[derive(Debug)]
pub struct QueuedChunk {
    pub chunk: Arc<Chunk>,
    _permit: Option<Permit>,
    /// When the chunk entered the queue.
    pub queued_at: Instant,
    /// This receiver is done with the chunk ([`QueuedChunk::finish`]).
    finished: AtomicBool,
}

impl QueuedChunk {
    /// A chunk that holds no room in any queue (tests, and receivers without a queue).
    pub fn detached(chunk: Arc<Chunk>) -> QueuedChunk {
        QueuedChunk {
            chunk,
            _permit: None,
            queued_at: Instant::now(),
            finished: AtomicBool::new(false),
        }
    }

    /// This receiver is done with the chunk (delivered, or dropped by policy); once only.
    pub fn finish(&self) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.chunk.finish();
        }
    }
}

impl Drop for QueuedChunk {
    fn drop(&mut self) {
        // Unfinished: a shutdown (not acknowledged, read again after a restart) — unless the
        // receiver was removed, which drops what it still held.
        if let Some(p) = &self._permit
            && !*self.finished.get_mut()
            && p.shared.retired.load(Ordering::Acquire)
        {
            p.shared.release(&self.chunk);
        }
    }
}

struct Permit {
    shared: Arc<Shared>,
    bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({} bytes)", self.bytes)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        if self.shared.queued_chunks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::AckSender;
    use crate::receiver::test_support::chunk_full;

    fn chunk_of(lines: &[&str], seq: u64, ack: Option<AckSender>) -> Arc<Chunk> {
        chunk_full(None, &[("app", "a")], lines, seq, ack)
    }

    #[tokio::test]
    async fn drop_policy_drops_and_finishes_when_full() {
        let (tx, mut rx) = channel("r".into(), 10, OnFull::Drop);
        let (ack, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        tx.push(chunk_of(&["123456"], 1, Some(ack.clone()))).await;
        assert_eq!(tx.queued_bytes(), 6);
        // 6 + 6 > 10: dropped, finished (acknowledged) and counted.
        tx.push(chunk_of(&["abcdef"], 2, Some(ack.clone()))).await;
        assert_eq!(acks.try_recv().unwrap(), 2);
        assert_eq!(tx.dropped_entries(), 1);
        tx.push(chunk_of(&["abcd"], 3, Some(ack.clone()))).await;
        assert_eq!(tx.queued_bytes(), 10);
        let first = rx.recv().await.unwrap();
        assert_eq!(first.chunk.seq, 1);
        drop(first);
        assert_eq!(tx.queued_bytes(), 4);
        assert!(acks.try_recv().is_err(), "taking from the queue is no ack");
    }

    #[tokio::test]
    async fn block_policy_waits_for_room_and_oversized_takes_everything() {
        let (tx, mut rx) = channel("r".into(), 10, OnFull::Block);
        tx.push(chunk_of(&["12345678"], 1, None)).await;
        // 20 bytes > capacity: takes the whole buffer, so it waits until the queue is empty.
        let big = tokio::spawn(tx.push(chunk_of(&["x".repeat(20).as_str()], 2, None)));
        tokio::task::yield_now().await;
        assert!(!big.is_finished());
        let first = rx.recv().await.unwrap();
        assert_eq!(tx.queued_bytes(), 8);
        drop(first);
        big.await.unwrap();
        assert_eq!(tx.queued_bytes(), 10);
        let second = rx.recv().await.unwrap();
        assert_eq!(second.chunk.seq, 2);
    }

    #[tokio::test]
    async fn closing_refuses_without_finishing_and_wait_empty_resolves() {
        let (tx, mut rx) = channel("r".into(), 4, OnFull::Block);
        let (ack, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        tx.push(chunk_of(&["1234"], 1, Some(ack.clone()))).await;
        let waiting = tokio::spawn(tx.push(chunk_of(&["5"], 2, Some(ack.clone()))));
        tokio::task::yield_now().await;
        tx.close();
        waiting.await.unwrap();
        tx.push(chunk_of(&["6"], 3, Some(ack))).await;
        assert!(acks.try_recv().is_err());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let held = rx.recv().await.unwrap();
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.wait_empty(deadline).await })
        };
        drop(held);
        assert!(waiter.await.unwrap());
        assert_eq!(tx.queued_bytes(), 0);
    }
}
