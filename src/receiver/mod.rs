//! Receivers: where chunks go after the forwarder (SPEC §2, §4.5, §6).
//!
//! Each receiver has its own byte-bounded [`queue`] (so one slow Loki never delays another
//! unless `on_full = "block"` says so), batches per tenant ([`batch`]), applies Loki's
//! [`limits`], encodes protobuf + snappy ([`encode`](mod@encode)), pushes over HTTP ([`push`]) and follows
//! the pure retry policy ([`retry`]). When a batch is acknowledged (2xx) or dropped by policy,
//! every chunk in it is finished, which is what moves the tailers' positions (SPEC §4.4).
//! [`stdout`] is the `[stdout]` printer behind the same handle.
//!
//! The receiver is an actix actor owning its batches and status; chunks arrive as a stream
//! from its queue, and each batch's send-and-retry loop is a future spawned in the actor's
//! context, one in flight per tenant, tenants independent. All receivers run on one shared
//! [`actix::Arbiter`] (one thread), so encoding and compression use the second core while the
//! tailers read on the first ([`start_loki_on`] picks another arbiter, for tests). Timers and
//! batch ages use tokio's clock, so tests can drive a long outage under paused time.
//!
//! Shutdown ([`ReceiverHandle::shutdown`]): stop accepting, send everything queued (closing
//! batches without waiting for `batch_wait`) until the deadline, then stop; chunks not
//! delivered by then are dropped *unfinished*, so their lines are read again after a restart.

pub mod batch;
pub mod encode;
pub mod limits;
pub mod push;
pub mod queue;
pub mod retry;
pub mod stdout;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
// Tokio's clock: `batch_wait`, backoffs and timers follow paused time in tests.
use tokio::time::Instant;

use self::batch::{Batch, Batcher};
use self::encode::encode;
use self::limits::Limits;
use self::push::{ClientError, PushClient};
use self::queue::{QueueReceiver, QueueSender, QueueStats, QueuedChunk};
use self::retry::{Outcome, RetryDecision, RetryPolicy};
use crate::chunk::Chunk;
use crate::config::{LokiConfig, OnFull, StdoutConfig};
use crate::logging::RateLimited;
use crate::telemetry::{self, SendDrop};

/// Buffer of the `[stdout]` receiver, which has no `buffer_size` option.
const STDOUT_BUFFER: usize = 64 * 1024 * 1024;
/// At most one log line per receiver and kind of failure in this period (SPEC §8.4).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A receiver could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("loki.{name}: {source}")]
    Client {
        name: String,
        #[source]
        source: ClientError,
    },
}

/// What `/api/v1/receivers` shows about a receiver.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReceiverStatus {
    pub name: String,
    /// Bytes held by queued, batched and in-flight chunks.
    pub queued_bytes: usize,
    pub buffer_size: usize,
    pub in_flight_batches: usize,
    /// When Loki last acknowledged a batch.
    pub last_success: Option<jiff::Timestamp>,
    /// The last failure: a status and the first line of Loki's answer, or a transport error.
    pub last_error: Option<String>,
    /// When `last_error` happened (compare with `last_success` to tell a past failure).
    pub last_error_at: Option<jiff::Timestamp>,
    /// Entries acknowledged since start.
    pub sent_entries: u64,
    /// Entries dropped since start, for every reason.
    pub dropped_entries: u64,
}

/// Handle → receiver: close every batch now and keep doing so (shutdown).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Flush;

/// Handle → receiver: stop now; unfinished chunks stay unacknowledged.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Stop;

/// Handle → receiver: its status.
#[derive(Message, Debug)]
#[rtype(result = "ReceiverStatus")]
pub(crate) struct GetStatus;

/// The forwarder's (and the server's) handle on one receiver.
#[derive(Clone)]
pub struct ReceiverHandle {
    name: Arc<str>,
    queue: QueueSender,
    flush: Recipient<Flush>,
    stop: Recipient<Stop>,
    status: Recipient<GetStatus>,
}

impl std::fmt::Debug for ReceiverHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ReceiverHandle {
    fn new<A>(name: Arc<str>, queue: QueueSender, addr: Addr<A>) -> ReceiverHandle
    where
        A: Actor<Context = Context<A>> + Handler<Flush> + Handler<Stop> + Handler<GetStatus>,
    {
        ReceiverHandle {
            name,
            queue,
            flush: addr.clone().recipient(),
            stop: addr.clone().recipient(),
            status: addr.recipient(),
        }
    }

    /// The receiver's name (`loki.<name>` table, or `stdout`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a chunk (see [`QueueSender::push`]): waits for room with `on_full = "block"`,
    /// drops (finished, counted) with `on_full = "drop"`.
    pub fn push(&self, chunk: Arc<Chunk>) -> impl Future<Output = ()> + Send + 'static {
        self.queue.push(chunk)
    }

    /// Bytes held by queued, batched and in-flight chunks.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued_bytes()
    }

    /// The receiver's status; `None` once it stopped.
    pub async fn status(&self) -> Option<ReceiverStatus> {
        self.status.send(GetStatus).await.ok()
    }

    /// Removes the receiver (reload): like [`ReceiverHandle::shutdown`], but what it could not
    /// send by `deadline` is dropped (counted as `receiver_removed`) and finished, so that the
    /// positions of its targets move on without it.
    pub async fn retire(self, deadline: std::time::Instant) {
        self.queue.retire();
        self.shutdown(deadline).await;
    }

    /// Stops accepting chunks, sends what is queued until `deadline`, then stops the receiver.
    /// Chunks not delivered by then are not acknowledged.
    pub async fn shutdown(self, deadline: std::time::Instant) {
        self.queue.close();
        // An error means the receiver already stopped: nothing left to flush.
        if self.flush.send(Flush).await.is_ok() {
            let flushed = self.queue.wait_empty(Instant::from_std(deadline)).await;
            if !flushed {
                tracing::warn!(
                    receiver = %self.name,
                    queued_bytes = self.queue.queued_bytes(),
                    "shutdown deadline reached before every queued line was sent; \
                     those lines were not acknowledged and will be read again after a restart"
                );
            }
        }
        let _ = self.stop.send(Stop).await;
    }
}

/// Starts the receiver `[loki.<name>]` on the receivers' arbiter. Must be called inside a
/// running actix `System`.
pub fn start_loki(name: String, config: LokiConfig) -> Result<ReceiverHandle, ReceiverError> {
    start_loki_on(&receivers_arbiter(), name, config)
}

/// Starts the receiver `[loki.<name>]` on `arbiter` (tests pass `Arbiter::current()` to run it
/// on their own thread, under paused time or a thread-local metrics recorder).
pub fn start_loki_on(
    arbiter: &ArbiterHandle,
    name: String,
    config: LokiConfig,
) -> Result<ReceiverHandle, ReceiverError> {
    let client = PushClient::new(&config).map_err(|source| ReceiverError::Client {
        name: name.clone(),
        source,
    })?;
    let name: Arc<str> = name.into();
    let (queue, rx) = queue::channel(name.clone(), config.buffer_size, config.on_full);
    let stats = queue.stats();
    let actor_name = name.clone();
    let addr = LokiReceiver::start_in_arbiter(arbiter, move |ctx| {
        LokiReceiver::new(actor_name, client, config, stats, rx, ctx)
    });
    Ok(ReceiverHandle::new(name, queue, addr))
}

/// Starts the `[stdout]` receiver (named `stdout`) on the receivers' arbiter. Must be called
/// inside a running actix `System`.
pub fn start_stdout(config: StdoutConfig) -> ReceiverHandle {
    start_stdout_to(config, Box::new(std::io::stdout()))
}

/// The `[stdout]` receiver writing to `out` instead of standard output.
pub fn start_stdout_to(
    config: StdoutConfig,
    out: Box<dyn std::io::Write + Send>,
) -> ReceiverHandle {
    let name: Arc<str> = stdout::NAME.into();
    let (queue, rx) = queue::channel(name.clone(), STDOUT_BUFFER, OnFull::Block);
    let stats = queue.stats();
    let addr = stdout::StdoutReceiver::start_in_arbiter(&receivers_arbiter(), move |ctx| {
        ctx.add_stream(rx.into_stream());
        stdout::StdoutReceiver::new(config.format, out, stats)
    });
    ReceiverHandle::new(name, queue, addr)
}

/// The one arbiter (thread) all receivers of the current `System` run on.
fn receivers_arbiter() -> ArbiterHandle {
    static ARBITER: Mutex<Option<(usize, ArbiterHandle)>> = Mutex::new(None);
    let system = System::current();
    let mut slot = ARBITER.lock().unwrap_or_else(|p| p.into_inner());
    match &*slot {
        Some((id, handle)) if *id == system.id() => handle.clone(),
        _ => {
            let handle = Arbiter::new().handle();
            *slot = Some((system.id(), handle.clone()));
            handle
        }
    }
}

/// What a receiver's batches share with their send futures.
struct Shared {
    name: Arc<str>,
    client: PushClient,
    external_labels: Vec<(String, String)>,
    limits: Limits,
    policy: RetryPolicy,
}

/// How a batch ended.
enum BatchEnd {
    /// Loki acknowledged it.
    Sent,
    /// Dropped by policy; `detail` is Loki's first line or the transport error.
    Dropped { reason: SendDrop, detail: String },
    /// Nothing left to send once the limits were applied.
    Empty,
}

/// The outcome of one batch, back in the actor.
struct BatchDone {
    batch: Batch,
    end: BatchEnd,
    /// What was sent and what the limits removed (the request itself is already freed).
    built: encode::Built,
}

/// A push attempt failed and will be retried after the delay: remember why, for the status.
#[derive(Message)]
#[rtype(result = "()")]
struct AttemptFailed {
    detail: String,
    delay: Duration,
    tenant: Option<String>,
}

/// The Loki receiver actor.
struct LokiReceiver {
    shared: Arc<Shared>,
    batcher: Batcher,
    queue: QueueStats,
    /// The batch-wait timer and when it fires.
    expiry: Option<(Instant, SpawnHandle)>,
    /// Shutting down: send batches without waiting for `batch_wait`.
    flushing: bool,
    /// Every sender is gone: stop once the last batch is done.
    input_ended: bool,
    last_success: Option<jiff::Timestamp>,
    last_error: Option<(jiff::Timestamp, String)>,
    sent_entries: u64,
    dropped_entries: u64,
    /// One line per kind (`drop`, `labels`, `retry`) per [`LOG_EVERY`], on tokio's clock.
    log: RateLimited,
}

impl Actor for LokiReceiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            telemetry::receiver_queue_bytes(&act.shared.name, act.queue.queued_bytes());
        });
    }
}

impl LokiReceiver {
    fn new(
        name: Arc<str>,
        client: PushClient,
        config: LokiConfig,
        queue: QueueStats,
        rx: QueueReceiver,
        ctx: &mut Context<Self>,
    ) -> LokiReceiver {
        ctx.add_stream(rx.into_stream());
        LokiReceiver {
            batcher: Batcher::new(
                config.batch_size,
                config.batch_wait,
                config.tenant_id.clone(),
            ),
            shared: Arc::new(Shared {
                name,
                client,
                limits: Limits::from_config(&config),
                policy: RetryPolicy::from_config(&config),
                external_labels: config.external_labels,
            }),
            queue,
            expiry: None,
            flushing: false,
            input_ended: false,
            last_success: None,
            last_error: None,
            sent_entries: 0,
            dropped_entries: 0,
            log: RateLimited::new(LOG_EVERY),
        }
    }

    /// Closes what is due, sends what may be sent, and arms the timer for the next expiry.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.flushing {
            self.batcher.close_idle();
        } else {
            self.batcher.close_expired(now);
        }
        for batch in self.batcher.take_sendable() {
            let shared = self.shared.clone();
            let addr = ctx.address();
            ctx.spawn(
                send(shared, batch, addr)
                    .into_actor(self)
                    .map(|done, act, ctx| act.completed(done, ctx)),
            );
        }
        if let Some(at) = self.batcher.next_expiry()
            && self.expiry.as_ref().is_none_or(|(t, _)| at < *t)
        {
            if let Some((_, handle)) = self.expiry.take() {
                ctx.cancel_future(handle);
            }
            let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                act.expiry = None;
                act.dispatch(ctx);
            });
            self.expiry = Some((at, handle));
        }
        if self.input_ended && self.batcher.is_empty() {
            ctx.stop();
        }
    }

    fn completed(&mut self, done: BatchDone, ctx: &mut Context<Self>) {
        let BatchDone { batch, end, built } = done;
        self.batcher.done(batch.tenant.as_deref());
        self.count_limit_drops(&built);
        let sent = built.sent;
        let name = &self.shared.name;
        match end {
            BatchEnd::Sent => {
                telemetry::sent(name, sent.entries, sent.bytes);
                self.sent_entries += sent.entries;
                self.last_success = Some(jiff::Timestamp::now());
                for item in &batch.chunks {
                    telemetry::propagation_latency(name, item.chunk.read_at.elapsed());
                }
            }
            BatchEnd::Dropped { reason, detail } => {
                telemetry::dropped(name, reason, sent.entries, sent.bytes);
                self.dropped_entries += sent.entries;
                if let Some(suppressed) = self.log.check_at("drop", Instant::now().into_std()) {
                    tracing::warn!(
                        receiver = %name,
                        tenant = batch.tenant.as_deref().unwrap_or(""),
                        reason = ?reason,
                        entries = sent.entries,
                        answer = %detail,
                        suppressed,
                        "dropped a batch Loki did not accept"
                    );
                }
                self.last_error = Some((jiff::Timestamp::now(), detail));
            }
            BatchEnd::Empty => {}
        }
        for item in &batch.chunks {
            item.finish();
        }
        // Releases the batch's queue room.
        drop(batch);
        telemetry::receiver_queue_bytes(&self.shared.name, self.queue.queued_bytes());
        self.dispatch(ctx);
    }

    fn count_limit_drops(&mut self, built: &encode::Built) {
        let name = &self.shared.name;
        for (reason, count) in [
            (SendDrop::InvalidLabels, built.invalid_labels),
            (SendDrop::LineTooLong, built.line_too_long),
        ] {
            if count.entries > 0 {
                telemetry::dropped(name, reason, count.entries, count.bytes);
                self.dropped_entries += count.entries;
            }
        }
        if let Some((labels, problem)) = &built.label_problem
            && let Some(suppressed) = self.log.check_at("labels", Instant::now().into_std())
        {
            tracing::warn!(
                receiver = %name,
                labels = %labels,
                problem = %problem,
                suppressed,
                "dropped entries whose labels Loki would refuse"
            );
        }
    }
}

/// Encodes a batch and pushes it until the retry policy acknowledges or drops it.
async fn send(shared: Arc<Shared>, batch: Batch, addr: Addr<LokiReceiver>) -> BatchDone {
    let name = &shared.name;
    let encoded = match encode(&batch, &shared.external_labels, &shared.limits) {
        Ok(encoded) => encoded,
        Err(e) => {
            let mut built = encode::Built::default();
            built.sent.entries = batch.entries as u64;
            built.sent.bytes = batch.bytes as u64;
            return BatchDone {
                batch,
                end: BatchEnd::Dropped {
                    reason: SendDrop::Rejected,
                    detail: e.to_string(),
                },
                built,
            };
        }
    };
    let encode::Encoded { body, built } = encoded;
    if built.sent.entries == 0 {
        return BatchDone {
            batch,
            end: BatchEnd::Empty,
            built,
        };
    }
    let mut attempt = 0;
    let end = loop {
        attempt += 1;
        let started = Instant::now();
        let result = shared
            .client
            .push(body.clone(), batch.tenant.as_deref())
            .await;
        let (outcome, detail) = match result {
            Ok(answer) => {
                telemetry::request(
                    name,
                    &answer.status.to_string(),
                    started.elapsed(),
                    body.len(),
                );
                let detail = format!("HTTP {}: {}", answer.status, answer.first_line);
                (Outcome::Status(answer.status, answer.retry_after), detail)
            }
            Err(e) => {
                telemetry::request(name, "error", started.elapsed(), body.len());
                (Outcome::Transport, e.to_string())
            }
        };
        match retry::decide(&outcome, attempt, &shared.policy, rand::random::<f64>()) {
            RetryDecision::Ack => break BatchEnd::Sent,
            RetryDecision::Drop(reason) => break BatchEnd::Dropped { reason, detail },
            RetryDecision::RetryAfter(delay) => {
                telemetry::batch_retry(name);
                addr.do_send(AttemptFailed {
                    detail,
                    delay,
                    tenant: batch.tenant.clone(),
                });
                tokio::time::sleep(delay).await;
            }
        }
    };
    BatchDone { batch, end, built }
}

impl StreamHandler<QueuedChunk> for LokiReceiver {
    fn handle(&mut self, item: QueuedChunk, ctx: &mut Context<Self>) {
        self.batcher.add(item, Instant::now());
        self.dispatch(ctx);
    }

    /// Every sender is gone (the receiver was removed): send what is left, then stop.
    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.input_ended = true;
        self.flushing = true;
        self.dispatch(ctx);
    }
}

impl Handler<AttemptFailed> for LokiReceiver {
    type Result = ();
    fn handle(&mut self, failed: AttemptFailed, _: &mut Context<Self>) {
        if let Some(suppressed) = self.log.check_at("retry", Instant::now().into_std()) {
            tracing::warn!(
                receiver = %self.shared.name,
                tenant = failed.tenant.as_deref().unwrap_or(""),
                error = %failed.detail,
                suppressed,
                "push to Loki failed; retrying in {:.1?}",
                failed.delay
            );
        }
        self.last_error = Some((jiff::Timestamp::now(), failed.detail));
    }
}

impl Handler<Flush> for LokiReceiver {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flushing = true;
        self.dispatch(ctx);
    }
}

impl Handler<Stop> for LokiReceiver {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        telemetry::receiver_queue_bytes(&self.shared.name, 0);
        ctx.stop();
    }
}

impl Handler<GetStatus> for LokiReceiver {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ReceiverStatus {
            name: self.shared.name.to_string(),
            queued_bytes: self.queue.queued_bytes(),
            buffer_size: self.queue.capacity(),
            in_flight_batches: self.batcher.in_flight(),
            last_success: self.last_success,
            last_error_at: self.last_error.as_ref().map(|(at, _)| *at),
            last_error: self.last_error.as_ref().map(|(_, e)| e.clone()),
            sent_entries: self.sent_entries,
            dropped_entries: self.dropped_entries + self.queue.dropped_entries(),
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Chunks for the receiver's tests.
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;

    use crate::chunk::{AckSender, Chunk, Entry};
    use crate::target::{Labels, Stream, TargetId};

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

    /// A chunk as a tailer sends it to the forwarder; entry `i` is one second after entry `i-1`.
    pub fn plain_chunk(
        tenant: Option<&str>,
        labels: &[(&str, &str)],
        lines: &[&str],
        seq: u64,
        ack: Option<AckSender>,
    ) -> Chunk {
        let id = Arc::new(TargetId {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            uid: "u".into(),
        });
        let stream = Arc::new(Stream {
            labels: Labels::from_pairs(labels.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            tenant: tenant.map(str::to_owned),
        });
        let entries = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Entry {
                timestamp: jiff::Timestamp::from_second(1_700_000_000 + i as i64).unwrap(),
                line: Bytes::copy_from_slice(l.as_bytes()),
            })
            .collect();
        Chunk::new(id, stream, entries, seq, Instant::now(), ack)
    }
}

#[cfg(test)]
mod tests {
    //! Receivers and the forwarder against the simulator's Loki sink, over real sockets.
    use std::collections::BTreeMap;
    // Shutdown deadlines and elapsed-time checks are wall-clock here.
    use std::time::Instant;

    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::test_support::plain_chunk;
    use super::*;
    use crate::chunk::AckSender;
    use crate::forward::{Forward, Forwarder, Shutdown};
    use crate::sim::loki::{LokiSink, ReceivedEntry, Response};

    const WAIT: Duration = Duration::from_secs(10);

    fn config(sink: &LokiSink) -> LokiConfig {
        let mut c = LokiConfig::with_url(sink.url());
        c.batch_wait = Duration::from_millis(50);
        c.min_backoff = Duration::from_millis(50);
        c.max_backoff = Duration::from_secs(5);
        c
    }

    fn lines(seq: u64, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("line-{seq}-{i}")).collect()
    }

    /// A tailer's chunk `seq` of `n` lines.
    fn chunk(seq: u64, n: usize, tenant: Option<&str>, ack: &AckSender) -> Chunk {
        let lines = lines(seq, n);
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        plain_chunk(tenant, &[("app", "a")], &refs, seq, Some(ack.clone()))
    }

    /// Line texts with how often each arrived.
    fn counts(entries: &[ReceivedEntry]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in entries {
            *m.entry(e.line.clone()).or_insert(0) += 1;
        }
        m
    }

    fn expected(seqs: impl IntoIterator<Item = u64>, n: usize) -> BTreeMap<String, usize> {
        seqs.into_iter()
            .flat_map(|s| lines(s, n))
            .map(|l| (l, 1))
            .collect()
    }

    /// Collects `n` acknowledgements (within the deadline), sorted.
    async fn acks(rx: &mut UnboundedReceiver<u64>, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(seq)) => got.push(seq),
                _ => break,
            }
        }
        got.sort_unstable();
        got
    }

    #[actix::test]
    async fn two_receivers_each_get_every_line_once() {
        let (a, b) = (
            LokiSink::start("127.0.0.1:0").await.unwrap(),
            LokiSink::start("127.0.0.1:0").await.unwrap(),
        );
        let ra = start_loki("a".into(), config(&a)).unwrap();
        let rb = start_loki("b".into(), config(&b)).unwrap();
        let forwarder = Forwarder::new(vec![ra.clone(), rb]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        for seq in 0..20 {
            forwarder
                .send(Forward(chunk(seq, 5, None, &ack)))
                .await
                .unwrap();
        }
        assert_eq!(acks(&mut acked, 20).await, (0..20).collect::<Vec<_>>());
        let want = expected(0..20, 5);
        assert_eq!(counts(&a.entries()), want);
        assert_eq!(counts(&b.entries()), want);
        // Chunk order is kept within the stream.
        let order: Vec<String> = a.entries().into_iter().map(|e| e.line).collect();
        assert_eq!(order, (0..20).flat_map(|s| lines(s, 5)).collect::<Vec<_>>());
        let status = ra.status().await.unwrap();
        assert_eq!((status.sent_entries, status.dropped_entries), (100, 0));
        assert!(status.last_success.is_some());
        forwarder
            .send(Shutdown {
                deadline: Instant::now() + WAIT,
            })
            .await
            .unwrap();
        assert!(acked.try_recv().is_err(), "no chunk acknowledged twice");
    }

    #[actix::test]
    async fn a_failing_receiver_catches_up_while_the_other_keeps_receiving() {
        let (good, bad) = (
            LokiSink::start("127.0.0.1:0").await.unwrap(),
            LokiSink::start("127.0.0.1:0").await.unwrap(),
        );
        bad.fail_for(500, Duration::from_millis(1500));
        let forwarder = Forwarder::new(vec![
            start_loki("good".into(), config(&good)).unwrap(),
            start_loki("bad".into(), config(&bad)).unwrap(),
        ])
        .start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        for seq in 0..10 {
            forwarder
                .send(Forward(chunk(seq, 3, None, &ack)))
                .await
                .unwrap();
        }
        let want = expected(0..10, 3);
        assert!(good.wait_for(|e| e.len() == 30, WAIT).await);
        // The good receiver delivered everything while the bad one was still failing, and
        // nothing was acknowledged: every chunk still waits for the bad receiver.
        assert!(bad.entries().is_empty());
        assert!(bad.requests().iter().all(|r| r.status == 500));
        assert!(acked.try_recv().is_err());
        assert_eq!(acks(&mut acked, 10).await, (0..10).collect::<Vec<_>>());
        assert_eq!(counts(&bad.entries()), want);
        assert_eq!(counts(&good.entries()), want);
    }

    #[actix::test]
    async fn a_rejected_batch_is_dropped_without_retry_and_finished() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        sink.script(vec![Response::status(400)]);
        let receiver = start_loki("r".into(), config(&sink)).unwrap();
        let forwarder = Forwarder::new(vec![receiver.clone()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        forwarder
            .send(Forward(chunk(1, 4, None, &ack)))
            .await
            .unwrap();
        assert_eq!(
            acks(&mut acked, 1).await,
            vec![1],
            "dropped by policy = finished"
        );
        forwarder
            .send(Forward(chunk(2, 4, None, &ack)))
            .await
            .unwrap();
        assert_eq!(acks(&mut acked, 1).await, vec![2]);
        let statuses: Vec<u16> = sink.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400, 204]);
        assert_eq!(counts(&sink.entries()), expected([2], 4));
        let status = receiver.status().await.unwrap();
        assert_eq!((status.sent_entries, status.dropped_entries), (4, 4));
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("HTTP 400: scripted status 400")),
            "{status:?}"
        );
    }

    #[actix::test]
    async fn retry_after_is_honoured() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        sink.script(vec![Response::status(429).with_retry_after("2")]);
        let mut c = config(&sink);
        c.min_backoff = Duration::from_millis(10);
        let forwarder = Forwarder::new(vec![start_loki("r".into(), c).unwrap()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        forwarder
            .send(Forward(chunk(1, 2, None, &ack)))
            .await
            .unwrap();
        assert_eq!(acks(&mut acked, 1).await, vec![1]);
        let requests = sink.requests();
        let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![429, 204]);
        let gap = requests[1].time.duration_since(requests[0].time);
        assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
        assert_eq!(counts(&sink.entries()), expected([1], 2));
    }

    #[actix::test]
    async fn on_full_drop_counts_drops_exactly_and_bounds_the_queue() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        // Nothing leaves until the queue has been filled and overflowed.
        sink.fail_for(503, Duration::from_secs(1));
        let mut c = config(&sink);
        c.on_full = OnFull::Drop;
        c.buffer_size = 1000;
        c.batch_size = 100;
        let receiver = start_loki("r".into(), c).unwrap();
        let forwarder = Forwarder::new(vec![receiver.clone()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        // 30 chunks of 10 lines × 10 bytes = 100 bytes: 10 fit, 20 are dropped.
        for seq in 0..30 {
            let lines: Vec<String> = (0..10).map(|i| format!("l-{seq:03}-{i:04}")).collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            let c = plain_chunk(None, &[("app", "a")], &refs, seq, Some(ack.clone()));
            assert_eq!(c.bytes, 100);
            forwarder.send(Forward(c)).await.unwrap();
            assert!(receiver.queued_bytes() <= 1000);
        }
        assert_eq!(receiver.queued_bytes(), 1000);
        // Dropped chunks are finished at once; queued ones only once delivered.
        assert_eq!(acks(&mut acked, 20).await, (10..30).collect::<Vec<_>>());
        assert_eq!(acks(&mut acked, 10).await, (0..10).collect::<Vec<_>>());
        assert!(sink.wait_for(|e| e.len() == 100, WAIT).await);
        let first_ten: BTreeMap<String, usize> = (0..10)
            .flat_map(|s| (0..10).map(move |i| (format!("l-{s:03}-{i:04}"), 1)))
            .collect();
        assert_eq!(counts(&sink.entries()), first_ten);
        let status = receiver.status().await.unwrap();
        assert_eq!((status.sent_entries, status.dropped_entries), (100, 200));
        assert_eq!(status.queued_bytes, 0);
    }

    #[actix::test]
    async fn tenants_are_sent_apart_with_their_org_id() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        let mut c = config(&sink);
        c.tenant_id = Some("default".into());
        let forwarder = Forwarder::new(vec![start_loki("r".into(), c).unwrap()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        forwarder
            .send(Forward(chunk(1, 2, Some("team-a"), &ack)))
            .await
            .unwrap();
        forwarder
            .send(Forward(chunk(2, 2, None, &ack)))
            .await
            .unwrap();
        forwarder
            .send(Forward(chunk(3, 2, Some("team-a"), &ack)))
            .await
            .unwrap();
        assert_eq!(acks(&mut acked, 3).await, vec![1, 2, 3]);
        let by_tenant = |tenant: &str| -> Vec<String> {
            sink.entries()
                .into_iter()
                .filter(|e| e.tenant.as_deref() == Some(tenant))
                .map(|e| e.line)
                .collect()
        };
        assert_eq!(by_tenant("team-a"), [lines(1, 2), lines(3, 2)].concat());
        assert_eq!(by_tenant("default"), lines(2, 2));
        for request in sink.requests() {
            assert!(matches!(
                request.tenant.as_deref(),
                Some("team-a" | "default")
            ));
        }
    }

    #[actix::test]
    async fn shutdown_flushes_without_waiting_for_batch_wait() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        let mut c = config(&sink);
        c.batch_wait = Duration::from_secs(600);
        let forwarder = Forwarder::new(vec![start_loki("r".into(), c).unwrap()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        for seq in 0..5 {
            forwarder
                .send(Forward(chunk(seq, 3, None, &ack)))
                .await
                .unwrap();
        }
        let started = Instant::now();
        forwarder
            .send(Shutdown {
                deadline: Instant::now() + WAIT,
            })
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(acks(&mut acked, 5).await, (0..5).collect::<Vec<_>>());
        assert_eq!(counts(&sink.entries()), expected(0..5, 3));
        // After shutdown nothing is fanned out, and nothing is acknowledged.
        forwarder
            .send(Forward(chunk(9, 1, None, &ack)))
            .await
            .unwrap();
        assert!(acked.try_recv().is_err());
    }

    #[actix::test]
    async fn shutdown_gives_up_at_the_deadline_without_acknowledging() {
        let sink = LokiSink::start("127.0.0.1:0").await.unwrap();
        sink.fail_for(503, Duration::from_secs(60));
        let forwarder =
            Forwarder::new(vec![start_loki("r".into(), config(&sink)).unwrap()]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        forwarder
            .send(Forward(chunk(1, 3, None, &ack)))
            .await
            .unwrap();
        let started = Instant::now();
        forwarder
            .send(Shutdown {
                deadline: Instant::now() + Duration::from_millis(500),
            })
            .await
            .unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(sink.requests().iter().all(|r| r.status == 503));
        assert!(
            acked.try_recv().is_err(),
            "undelivered lines are not acknowledged"
        );
    }

    #[actix::test]
    async fn stdout_prints_and_acknowledges() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let receiver = start_stdout_to(
            StdoutConfig {
                format: crate::config::LogFormat::Logfmt,
            },
            Box::new(out.clone()),
        );
        assert_eq!(receiver.name(), "stdout");
        let forwarder = Forwarder::new(vec![receiver]).start();
        let (ack, mut acked) = unbounded_channel();
        let ack: AckSender = Arc::new(ack);
        forwarder
            .send(Forward(chunk(1, 2, None, &ack)))
            .await
            .unwrap();
        assert_eq!(acks(&mut acked, 1).await, vec![1]);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "ts=2023-11-14T22:13:20Z app=a line=\"line-1-0\"\n\
             ts=2023-11-14T22:13:21Z app=a line=\"line-1-1\"\n"
        );
    }
}
