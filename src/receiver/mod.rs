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
use self::queue::{QueueReceiver, QueueSender, QueueStats, QueueTaker, QueuedChunk};
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
    let client = PushClient::new(&name, &config).map_err(|source| ReceiverError::Client {
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
    /// Takes queued chunks when a timer fires; says when the queue should wake the actor.
    inbox: QueueTaker,
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
        telemetry::receiver_queue_capacity(&self.shared.name, self.queue.capacity());
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
        let inbox = rx.taker();
        ctx.add_stream(rx.into_batches());
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
            inbox,
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

    /// Batches what was queued, closes what is due, sends what may be sent, arms the timer for
    /// the next expiry, and tells the queue when to wake the actor again: at the first chunk
    /// while no batch is open (its clock starts), else when the fullest open batch would fill.
    /// Anything queued below that is taken when the timer fires.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        self.batch(self.inbox.take());
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
        let wake_at = match self.batcher.room() {
            Some(room) if !self.flushing => room,
            _ => 0,
        };
        self.inbox.wake_at(wake_at);
        if self.input_ended && self.batcher.is_empty() {
            ctx.stop();
        }
    }

    /// Adds taken chunks to their batches, each aged from when it was queued.
    fn batch(&mut self, items: Vec<QueuedChunk>) {
        for item in items {
            let queued_at = item.queued_at;
            self.batcher.add(item, queued_at);
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
                telemetry::propagation_latencies(
                    name,
                    batch.chunks.iter().map(|item| item.chunk.read_at.elapsed()),
                );
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

impl StreamHandler<Vec<QueuedChunk>> for LokiReceiver {
    fn handle(&mut self, items: Vec<QueuedChunk>, ctx: &mut Context<Self>) {
        self.batch(items);
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

/// The chunk builders of the receiver's tests (they live with [`Chunk`]).
#[cfg(test)]
pub(crate) use crate::chunk::test_support;
