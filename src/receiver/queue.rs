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
//! Handing a chunk over does not wake the receiver each time: that cross-thread wake-up (an
//! `eventfd` write, a context switch) cost more than everything else a small chunk does. The
//! receiver says how many queued bytes it wants to be woken for ([`QueueTaker::wake_at`]): 0
//! while it has no open batch (the first chunk starts its `batch_wait` clock), else the room
//! left in its fullest open batch, so a full batch still leaves at once; what arrives below
//! that is taken when its batch-wait timer fires ([`QueueTaker::take`]). A batch's age counts
//! from when its first chunk was queued, not from when the receiver took it.
//!
//! [`QueueSender::close`] stops accepting: later pushes, and pushes still waiting for room,
//! return without finishing their chunk, so it is not acknowledged and is read again after a
//! restart (SPEC §4.4).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
// Tokio's clock: batch ages start at `queued_at`, and tests drive them under paused time.
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tokio::time::Instant;

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
        inbox: Inbox::default(),
    });
    (
        QueueSender::new(shared.clone()),
        QueueReceiver {
            shared,
            taken: VecDeque::new(),
        },
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
    /// Chunks queued and not yet taken by the receiver.
    inbox: Inbox,
}

/// The hand-over between the senders and the receiver (a bounded channel would wake the
/// receiver for every chunk; see the module's header).
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    waker: AtomicWaker,
    /// Live [`QueueSender`]s (pushes in progress hold one): at 0 the receiver's input ended.
    senders: AtomicUsize,
}

#[derive(Default)]
struct InboxState {
    chunks: Vec<QueuedChunk>,
    /// The queue cost of `chunks`.
    bytes: usize,
    /// Wake the receiver once `bytes` reaches this (0: at the first chunk).
    wake_at: usize,
    /// The receiver is gone: chunks are dropped (unfinished) instead of kept.
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // The state is consistent between statements: a panic elsewhere cannot break it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a chunk over, waking the receiver if it asked to be woken for this much.
    fn put(&self, item: QueuedChunk, cost: usize) {
        let mut state = self.lock();
        if state.closed {
            // The receiver is gone (stopped): dropped unfinished, as on shutdown.
            drop(state);
            drop(item);
            return;
        }
        state.chunks.push(item);
        state.bytes += cost;
        let wake = state.bytes >= state.wake_at;
        drop(state);
        if wake {
            self.waker.wake();
        }
    }

    /// Everything handed over so far.
    fn take(&self) -> Vec<QueuedChunk> {
        let mut state = self.lock();
        state.bytes = 0;
        std::mem::take(&mut state.chunks)
    }
}

impl Shared {
    /// Queues `chunk`, which took `cost` permits of room (given back when it is released).
    fn enqueue(self: &Arc<Self>, chunk: Arc<Chunk>, cost: u32) {
        let cost = cost as usize;
        self.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        self.queued_chunks.fetch_add(1, Ordering::AcqRel);
        let queued = QueuedChunk {
            chunk,
            permit: Some(Permit {
                shared: self.clone(),
                bytes: cost,
                room: cost,
            }),
            queued_at: Instant::now(),
            finished: AtomicBool::new(false),
        };
        self.inbox.put(queued, cost);
    }

    /// The queue is closed to `chunk`: unfinished (read again after a restart), unless the
    /// receiver was removed (then it is finished as dropped).
    fn refused(&self, chunk: &Chunk) {
        if self.retired.load(Ordering::Acquire) {
            self.release(chunk);
        }
    }

    /// Finishes a chunk the retired receiver will never send, counting it as dropped.
    fn release(&self, chunk: &Chunk) {
        let entries = chunk.entries.len() as u64;
        self.dropped_entries.fetch_add(entries, Ordering::Relaxed);
        telemetry::dropped(
            &self.name,
            SendDrop::ReceiverRemoved,
            entries,
            chunk.bytes() as u64,
        );
        chunk.finish();
    }
}

/// The forwarder's end of a queue; cheap to clone. The receiver's input ends when the last
/// clone is dropped (pushes in progress hold one).
pub struct QueueSender {
    shared: Arc<Shared>,
}

impl Clone for QueueSender {
    fn clone(&self) -> QueueSender {
        QueueSender::new(self.shared.clone())
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        if self.shared.inbox.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.inbox.waker.wake();
        }
    }
}

impl QueueSender {
    fn new(shared: Arc<Shared>) -> QueueSender {
        shared.inbox.senders.fetch_add(1, Ordering::AcqRel);
        QueueSender { shared }
    }

    /// Queues a chunk. The future resolves once the chunk is queued, dropped (`on_full =
    /// "drop"`, finished and counted) or refused because the queue is closed (not finished).
    /// It holds no borrow of `self`, so the forwarder can await many at once.
    ///
    /// With room at once (the usual case, and always the decision of `drop`) the chunk is
    /// queued before this returns, and the future holds nothing: only a chunk that waits for
    /// room keeps a sender (and so the receiver's input) alive while it waits.
    pub fn push(&self, chunk: Arc<Chunk>) -> impl Future<Output = ()> + Send + 'static {
        let shared = &self.shared;
        let cost = cost(&chunk, shared.capacity);
        let waiting = match shared.room.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                shared.enqueue(chunk, cost);
                None
            }
            Err(TryAcquireError::Closed) => {
                shared.refused(&chunk);
                None
            }
            Err(TryAcquireError::NoPermits) => match shared.on_full {
                OnFull::Drop => {
                    let entries = chunk.entries.len() as u64;
                    shared.dropped_entries.fetch_add(entries, Ordering::Relaxed);
                    telemetry::dropped(
                        &shared.name,
                        SendDrop::QueueFull,
                        entries,
                        chunk.bytes() as u64,
                    );
                    chunk.finish();
                    None
                }
                OnFull::Block => Some((self.clone(), chunk)),
            },
        };
        async move {
            let Some((sender, chunk)) = waiting else {
                return;
            };
            let shared = &sender.shared;
            match shared.room.acquire_many(cost).await {
                Ok(permit) => {
                    permit.forget();
                    shared.enqueue(chunk, cost);
                }
                Err(_closed) => shared.refused(&chunk),
            }
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
    chunk.bytes().clamp(1, capacity) as u32
}

/// The receiver's end of a queue. Dropping it drops (unfinished) what is still queued.
pub struct QueueReceiver {
    shared: Arc<Shared>,
    /// Taken and not yet returned by [`QueueReceiver::recv`].
    taken: VecDeque<QueuedChunk>,
}

impl QueueReceiver {
    /// The next queued chunk; `None` once every sender is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<QueuedChunk> {
        if self.taken.is_empty() {
            let taken = futures::future::poll_fn(|cx| poll_take(&self.shared, cx)).await?;
            self.taken.extend(taken);
        }
        self.taken.pop_front()
    }

    /// Bytes held by queued, batched and in-flight chunks.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// The receiver's name.
    pub fn name(&self) -> &Arc<str> {
        &self.shared.name
    }

    /// A handle to take chunks outside the stream and to say when to be woken.
    pub fn taker(&self) -> QueueTaker {
        QueueTaker {
            shared: self.shared.clone(),
        }
    }

    /// What was queued, as a stream of hand-overs for an actor's `add_stream`: each item is
    /// every chunk queued since the last one, yielded once they reach the receiver's
    /// [`QueueTaker::wake_at`] (or the input ended); the stream ends once every sender is gone.
    pub fn into_batches(self) -> impl futures::Stream<Item = Vec<QueuedChunk>> + Unpin {
        futures::stream::poll_fn(move |cx| poll_take(&self.shared, cx))
    }

    /// The chunks one by one, each waking the receiver (the `[stdout]` printer).
    pub fn into_stream(self) -> impl futures::Stream<Item = QueuedChunk> + Unpin {
        use futures::StreamExt;
        self.into_batches().flat_map(futures::stream::iter)
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let orphans = {
            let mut state = self.shared.inbox.lock();
            state.closed = true;
            state.bytes = 0;
            std::mem::take(&mut state.chunks)
        };
        // Dropped outside the lock: a retired queue's chunks are released (finished) on drop.
        drop(orphans);
    }
}

/// Takes what is queued when the receiver is woken (or when it wants it), or `None` once every
/// sender is gone and nothing is left.
fn poll_take(shared: &Shared, cx: &mut Context<'_>) -> Poll<Option<Vec<QueuedChunk>>> {
    let inbox = &shared.inbox;
    inbox.waker.register(cx.waker());
    // Read before the chunks: a sender's last push happens before its drop.
    let ended = inbox.senders.load(Ordering::Acquire) == 0;
    let mut state = inbox.lock();
    if !state.chunks.is_empty() && (ended || state.bytes >= state.wake_at) {
        state.bytes = 0;
        return Poll::Ready(Some(std::mem::take(&mut state.chunks)));
    }
    if ended && state.chunks.is_empty() {
        return Poll::Ready(None);
    }
    Poll::Pending
}

/// The receiver actor's hold on its queue besides the stream: taking what is queued when a
/// timer fires, and saying how much must be queued before the stream wakes it.
#[derive(Clone)]
pub struct QueueTaker {
    shared: Arc<Shared>,
}

impl QueueTaker {
    /// Everything queued and not yet taken, whatever its size.
    pub fn take(&self) -> Vec<QueuedChunk> {
        self.shared.inbox.take()
    }

    /// Wake the receiver (its stream yields) once this many bytes are queued and not taken;
    /// 0 wakes it at the next chunk. Already reached: it is woken now.
    pub fn wake_at(&self, bytes: usize) {
        let inbox = &self.shared.inbox;
        let mut state = inbox.lock();
        state.wake_at = bytes;
        let wake = !state.chunks.is_empty() && state.bytes >= bytes;
        drop(state);
        if wake {
            inbox.waker.wake();
        }
    }
}

/// A chunk taken from a queue with the room it holds; the room is given back on drop.
#[derive(Debug)]
pub struct QueuedChunk {
    pub chunk: Arc<Chunk>,
    permit: Option<Permit>,
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
            permit: None,
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
        if let Some(p) = &self.permit
            && !*self.finished.get_mut()
            && p.shared.retired.load(Ordering::Acquire)
        {
            p.shared.release(&self.chunk);
        }
    }
}

/// The queue room of a batch's chunks, given back at once when the batch is dropped: one
/// release of the queue's semaphore (which takes its lock) per batch, where each chunk's room
/// took that lock again (at 5,000 quiet streams, a batch is thousands of one-line chunks).
/// The chunks keep their own accounting (queued bytes and chunks, the idle signal);
/// a batch drops its room before its chunks, so the room is back when the queue says idle.
/// A batch's chunks all come from one queue: a receiver keeps its queue for life (a reload
/// that changes it starts a new receiver).
#[derive(Debug, Default)]
pub struct Room(Option<(Arc<Semaphore>, usize)>);

impl Room {
    /// Takes over the queue room `item` holds.
    pub fn hold(&mut self, item: &mut QueuedChunk) {
        let Some(permit) = item.permit.as_mut() else {
            return;
        };
        let taken = std::mem::take(&mut permit.room);
        if taken == 0 {
            return;
        }
        match &mut self.0 {
            Some((_, held)) => *held += taken,
            None => self.0 = Some((permit.shared.room.clone(), taken)),
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some((room, permits)) = self.0.take() {
            room.add_permits(permits);
        }
    }
}

/// A queued chunk's share of the queue: its bytes in the counters, and the room (semaphore
/// permits, taken with `forget` and given back with `add_permits`: no `Arc` of the semaphore
/// per chunk) it holds until a batch takes that over.
struct Permit {
    shared: Arc<Shared>,
    bytes: usize,
    /// Permits of the queue's semaphore this chunk still holds (0 once batched).
    room: usize,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({} bytes)", self.bytes)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // The room first: it is back when the queue says idle.
        if self.room > 0 {
            self.shared.room.add_permits(self.room);
        }
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
    async fn a_batch_holds_its_chunks_room_until_it_is_dropped() {
        let (tx, mut rx) = channel("r".into(), 10, OnFull::Drop);
        tx.push(chunk_of(&["12345"], 1, None)).await;
        tx.push(chunk_of(&["12345"], 2, None)).await;
        let first = rx.recv().await.unwrap();
        let second = rx.recv().await.unwrap();
        let batch = crate::receiver::batch::Batch::of(None, [first, second], Instant::now());
        // The room moved to the batch: the queue is still full.
        tx.push(chunk_of(&["x"], 3, None)).await;
        assert_eq!(tx.dropped_entries(), 1);
        assert_eq!(tx.queued_bytes(), 10);
        drop(batch);
        assert_eq!(tx.queued_bytes(), 0);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        assert!(tx.wait_empty(deadline).await, "idle once the batch is gone");
        tx.push(chunk_of(&["1234567890"], 4, None)).await;
        assert_eq!(tx.dropped_entries(), 1, "all the room is back");
        assert_eq!(tx.queued_bytes(), 10);
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

    /// Counts the wake-ups of the task polling the queue.
    struct CountWakes(AtomicUsize);

    impl futures::task::ArcWake for CountWakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_receiver_is_woken_only_once_its_threshold_is_queued() {
        use futures::StreamExt;
        let (tx, rx) = channel("r".into(), 100, OnFull::Block);
        let taker = rx.taker();
        let mut batches = rx.into_batches();
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut poll = || batches.poll_next_unpin(&mut cx).map(|b| b.map(|b| b.len()));

        // Nothing queued, no threshold: the first chunk wakes.
        assert_eq!(poll(), Poll::Pending);
        tx.push(chunk_of(&["ab"], 1, None)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(), Poll::Ready(Some(1)));

        // A batch is open with 10 bytes of room: 4 + 5 bytes do not wake, the 10th does.
        taker.wake_at(10);
        assert_eq!(poll(), Poll::Pending);
        tx.push(chunk_of(&["abcd"], 2, None)).await;
        tx.push(chunk_of(&["abcde"], 3, None)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "below the threshold");
        assert_eq!(poll(), Poll::Pending);
        tx.push(chunk_of(&["a"], 4, None)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(), Poll::Ready(Some(3)));

        // Below the threshold, a timer takes what is there; lowering it to what is queued wakes.
        tx.push(chunk_of(&["abc"], 5, None)).await;
        let taken: Vec<u64> = taker.take().iter().map(|q| q.chunk.seq).collect();
        assert_eq!(taken, [5]);
        tx.push(chunk_of(&["abc"], 6, None)).await;
        assert_eq!(poll(), Poll::Pending);
        let before = wakes.0.load(Ordering::SeqCst);
        taker.wake_at(0);
        assert_eq!(wakes.0.load(Ordering::SeqCst), before + 1);
        assert_eq!(poll(), Poll::Ready(Some(1)));

        // The last sender gone: what is left comes out whatever the threshold, then the end.
        taker.wake_at(50);
        assert_eq!(poll(), Poll::Pending);
        tx.push(chunk_of(&["x"], 7, None)).await;
        drop(tx);
        assert_eq!(poll(), Poll::Ready(Some(1)));
        assert_eq!(poll(), Poll::Ready(None));
    }

    #[tokio::test]
    async fn chunks_queued_for_a_receiver_that_is_gone_free_their_room() {
        let (tx, rx) = channel("r".into(), 10, OnFull::Block);
        rx.taker().wake_at(100);
        tx.push(chunk_of(&["1234"], 1, None)).await;
        assert_eq!(tx.queued_bytes(), 4);
        drop(rx);
        assert_eq!(
            tx.queued_bytes(),
            0,
            "queued chunks dropped with the receiver"
        );
        tx.push(chunk_of(&["1234"], 2, None)).await;
        assert_eq!(tx.queued_bytes(), 0, "later pushes dropped at once");
    }
}
