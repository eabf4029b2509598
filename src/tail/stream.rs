//! The read loop of one tailer: streams, chunks, reconnects and termination (SPEC §5).
//!
//! The loop is a small state machine over [`Step`]s: open a stream and read it, decide what
//! follows its end ([`termination::decide`] on a fresh pod), or sleep a backoff. Every decision
//! is made by the pure modules beside this one; this file does the I/O:
//!
//! - It reads the body with `fill_buf`/`consume` into the bounded [`LineSplitter`] (never
//!   `lines()`: a line is never buffered whole beyond `max_line_size`), passes each line through
//!   the [`ReadCursor`] (discarding the `skip` lines already read) and collects entries.
//! - A chunk goes out as soon as it holds `chunk_lines` entries or ~1 MiB, *or* the stream has
//!   no more bytes ready: lines never wait for a chunk to fill. Each send is awaited, so a full
//!   receiver queue pushes back to the stream.
//! - Acknowledgements go to the tailer's [`TargetAcks`], shared with its chunks: it moves the
//!   acknowledged position in the positions table and the status, even after this loop ended.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use futures::FutureExt;
use futures::io::{AsyncBufRead, AsyncBufReadExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::line::{self, LineSplitter};
use super::request::{self, Read};
use super::status::{TailerStatus, TargetState};
use super::termination::{self, FinishReason, Termination};
use crate::chunk::{AckSender, Chunk, Entry};
use crate::config::model::{OnLongLine, TailConfig};
use crate::cursor::TargetAcks;
use crate::cursor::{Admit, Position, ReadCursor};
use crate::forward::Forward;
use crate::target::{Target, TargetId};
use crate::telemetry::{self, LineDrop};

/// Upper bound of a chunk's line bytes, whatever `chunk_lines` says: keeps one message (and one
/// receiver's batch growth) bounded when lines are long.
const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Room for `<RFC3339Nano> ` before a line's text, so `max_line_size` limits the text itself.
const TIMESTAMP_ROOM: usize = 64;

/// How long opening a stream (until the response headers) may take before it counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A stream that ends cleanly sooner than this without a line is reopened after a backoff, not
/// at once, so a server that closes streams immediately is not hammered.
const QUICK_END: Duration = Duration::from_secs(1);

/// Everything the read loop needs; built by the actor.
pub(crate) struct ReadLoop {
    pub id: Arc<TargetId>,
    /// The current target: chunks take its stream (labels, tenant) when they are built.
    pub target: watch::Receiver<Target>,
    /// Becomes true when the target vanished and the tailer must drain (SPEC §5.6).
    pub drain: watch::Receiver<bool>,
    /// The API client; a reload may replace it, and the open stream is then reopened with the
    /// new one from the cursor (like a `max_stream_lifetime` rotation: nothing lost or repeated).
    pub client: watch::Receiver<kube::Client>,
    pub forwarder: Recipient<Forward>,
    pub config: Arc<TailConfig>,
    pub status: Arc<TailerStatus>,
    /// Where to resume (a stored position); `None` starts per `start_from`.
    pub start: Option<Position>,
    /// The acknowledgement tracker (starting at `start`), shared with every chunk sent.
    pub acks: Arc<TargetAcks>,
}

/// What the loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Open(Read),
    Decide,
    Sleep(Duration, TargetState),
    Finish,
}

/// How a stream ended.
enum End {
    /// The server closed the body; `delivered` new lines were read (skipped ones not counted).
    Clean { delivered: u64 },
    /// `max_stream_lifetime` passed: reopen from the cursor.
    Rotate,
    /// The drain deadline passed.
    DrainExpired,
    /// Opening or reading failed.
    Failed(StreamError),
    /// The forwarder is gone (shutdown): stop.
    ForwarderGone,
    /// The stream just opened may belong to a newer instance than the cursor's: decide first.
    InstanceChanged,
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("the container is not running yet: {0}")]
    Waiting(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the API server answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error("cannot open the log stream: {0}")]
    Open(#[source] kube::Error),
    #[error("opening the log stream timed out after {0:?}")]
    Timeout(Duration),
    #[error("reading the log stream failed: {0}")]
    Read(#[source] std::io::Error),
}

impl StreamError {
    fn from_kube(e: kube::Error) -> StreamError {
        match e {
            kube::Error::Api(s) if s.code == 400 && is_waiting_message(&s.message) => {
                StreamError::Waiting(s.message)
            }
            kube::Error::Api(s) if s.code == 404 => StreamError::NotFound(s.message),
            kube::Error::Api(s) => StreamError::Status {
                code: s.code,
                message: s.message,
            },
            e => StreamError::Open(e),
        }
    }

    /// The `kind` label of `kube_log_relay_stream_errors_total`.
    fn kind(&self) -> &'static str {
        match self {
            StreamError::Waiting(_) => "waiting",
            StreamError::NotFound(_) => "not_found",
            StreamError::Status { .. } => "status",
            StreamError::Open(_) => "connect",
            StreamError::Timeout(_) => "timeout",
            StreamError::Read(_) => "read",
        }
    }
}

/// The API server's 400 answers for a container that has not started (yet):
/// `container "c" in pod "p" is waiting to start: ContainerCreating`, `… PodInitializing`.
fn is_waiting_message(message: &str) -> bool {
    message.contains("is waiting to start")
        || message.contains("ContainerCreating")
        || message.contains("PodInitializing")
}

/// The chunk being filled.
struct Pending {
    entries: Vec<Entry>,
    bytes: usize,
    read_at: std::time::Instant,
    last_timestamp: Option<Timestamp>,
    /// Lines dropped by policy since the last chunk (they move the position).
    dropped: bool,
}

impl Pending {
    /// Empty, without room allocated: an idle tailer holds no entry buffer (SPEC §10).
    fn new() -> Pending {
        Pending {
            entries: Vec::new(),
            bytes: 0,
            read_at: std::time::Instant::now(),
            last_timestamp: None,
            dropped: false,
        }
    }

    /// The chunk so far, with its entries in an exactly sized vector (a chunk waiting in a
    /// receiver's queue holds no spare room); `self` starts over, keeping its buffer for the
    /// next chunk (at most `chunk_lines` entries, or 1 MiB of lines).
    fn take(&mut self) -> Pending {
        Pending {
            entries: self.entries.drain(..).collect(),
            bytes: std::mem::take(&mut self.bytes),
            read_at: self.read_at,
            last_timestamp: self.last_timestamp.take(),
            dropped: std::mem::take(&mut self.dropped),
        }
    }
}

/// The read loop's state.
struct Tail {
    args: ReadLoop,
    cursor: ReadCursor,
    container_id: Option<Arc<str>>,
    /// The new instance to follow after reading the previous one's remainder (SPEC §5.5).
    restarted_to: Option<Arc<str>>,
    acks: Arc<TargetAcks>,
    backoff: Backoff,
    drain_deadline: Option<Instant>,
    pending: Pending,
    /// A stream was opened before: later opens count as reconnects.
    opened_once: bool,
}

impl ReadLoop {
    /// Runs until the target finished; returns the container ID it was following.
    pub async fn run(self) -> Option<String> {
        let config = self.config.clone();
        let stored = self.start.as_ref().map(|p| p.cursor);
        let (cursor, first) = request::first_read(stored, config.start_from, Timestamp::now());
        // A stored position belongs to the instance it names (possibly an older one: the first
        // stream then notices the restart and reads the previous instance's remainder first).
        let container_id = match &self.start {
            Some(p) => p.container_id.clone(),
            None => self.target.borrow().container_id.as_deref().map(Arc::from),
        };
        let mut tail = Tail {
            cursor: ReadCursor::new(cursor),
            acks: self.acks.clone(),
            container_id,
            restarted_to: None,
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            drain_deadline: None,
            pending: Pending::new(),
            opened_once: false,
            args: self,
        };
        tail.run(first).await;
        tail.container_id.as_deref().map(str::to_string)
    }
}

impl Tail {
    async fn run(&mut self, first: Read) {
        // Without a known instance the first stream could attach to a newer one than the
        // cursor belongs to: learn it from the pod first.
        let mut step = if self.container_id.is_none() {
            Step::Decide
        } else {
            Step::Open(first)
        };
        loop {
            self.poll_drain();
            step = match step {
                Step::Open(read) => self.open(read).await,
                Step::Decide => self.decide().await,
                Step::Sleep(delay, state) => self.sleep(delay, state).await,
                Step::Finish => break,
            };
        }
        self.set_state(TargetState::Finished);
        tracing::info!(target = %self.args.id, "tailer finished");
    }

    /// Reads one stream and says what follows its end.
    async fn open(&mut self, read: Read) -> Step {
        let opened = Instant::now();
        let end = self.read_stream(read).await;
        let open_for = opened.elapsed();
        let draining = self.drain_deadline.is_some();
        match end {
            End::ForwarderGone | End::DrainExpired => Step::Finish,
            End::InstanceChanged => {
                tracing::info!(target = %self.args.id, "the container restarted before the stream opened; reading the previous instance first");
                Step::Decide
            }
            End::Rotate => {
                tracing::info!(target = %self.args.id, "stream open for max_stream_lifetime; reopening from the cursor");
                Step::Open(Read::Follow)
            }
            // A non-following read may have been cut too: read again from the cursor until a
            // read brings nothing new (the drain deadline bounds a remainder's re-reads).
            End::Clean { delivered } if delivered > 0 && read == Read::Previous => {
                Step::Open(Read::Previous)
            }
            End::Clean { delivered } if delivered > 0 && read == Read::Remainder => {
                Step::Open(Read::Remainder)
            }
            End::Clean { delivered } => match read {
                Read::Previous => self.follow_new_instance(),
                Read::Remainder => Step::Finish,
                // A follow stream ending while draining: the container stopped, all was read.
                _ if draining => Step::Finish,
                _ => {
                    self.backoff.stream_ended(open_for);
                    if delivered == 0 && open_for < QUICK_END {
                        // Ended at once without a new line (possibly cut again and again
                        // before the `skip` lines were past): decide after a backoff.
                        let delay = self.backoff.next_delay();
                        tracing::info!(target = %self.args.id, "stream ended at once; checking the container in {delay:.1?}");
                        Step::Sleep(delay, TargetState::Backoff)
                    } else {
                        Step::Decide
                    }
                }
            },
            End::Failed(err) => {
                telemetry::stream_error(err.kind());
                let message = err.to_string();
                self.args
                    .status
                    .update(|s| s.last_error = Some(message.clone()));
                match (read, &err) {
                    // No previous instance left at the kubelet: follow the new one.
                    (Read::Previous, StreamError::Status { code: 400, .. })
                    | (Read::Previous, StreamError::NotFound(_)) => {
                        tracing::warn!(target = %self.args.id, "the previous instance's log is gone ({message}); following the new instance");
                        self.follow_new_instance()
                    }
                    (Read::Remainder, _) => {
                        tracing::info!(target = %self.args.id, "reading the remainder failed ({message}); finishing");
                        Step::Finish
                    }
                    _ if draining => {
                        tracing::info!(target = %self.args.id, "stream failed while draining ({message}); reading the remainder");
                        Step::Open(Read::Remainder)
                    }
                    (_, StreamError::NotFound(_)) => Step::Decide,
                    (_, StreamError::Waiting(_)) => {
                        let delay = self.backoff.next_delay();
                        tracing::info!(target = %self.args.id, "container not started yet; retrying in {delay:.1?}");
                        Step::Sleep(delay, TargetState::Waiting)
                    }
                    _ => {
                        let delay = self.backoff.next_delay();
                        if let Some(suppressed) = crate::logging::ERRORS.check("stream_failed") {
                            tracing::warn!(target = %self.args.id, suppressed, "{message}; retrying in {delay:.1?}");
                        }
                        Step::Sleep(delay, TargetState::Backoff)
                    }
                }
            }
        }
    }

    /// After the previous instance's remainder: follow the new one from its beginning.
    fn follow_new_instance(&mut self) -> Step {
        if let Some(new_id) = self.restarted_to.take() {
            self.container_id = Some(new_id);
        }
        self.cursor = ReadCursor::new(crate::cursor::Cursor::BEGINNING);
        self.args
            .status
            .update(|s| s.container_id = self.container_id.as_deref().map(str::to_string));
        Step::Open(Read::Follow)
    }

    /// Fetches the pod and applies [`termination::decide`].
    async fn decide(&mut self) -> Step {
        if self.drain_deadline.is_some() {
            return Step::Open(Read::Remainder);
        }
        let api: Api<Pod> =
            Api::namespaced(self.args.client.borrow().clone(), &self.args.id.namespace);
        let pod = match api.get_opt(&self.args.id.pod).await {
            // A pod of the same name with another UID is another target.
            Ok(pod) => pod.filter(|p| p.metadata.uid.as_deref() == Some(&self.args.id.uid)),
            Err(e) => {
                let delay = self.backoff.next_delay();
                if let Some(suppressed) = crate::logging::ERRORS.check("pod_fetch_failed") {
                    tracing::warn!(target = %self.args.id, suppressed, "cannot fetch the pod: {e}; retrying in {delay:.1?}");
                }
                telemetry::stream_error("pod");
                return Step::Sleep(delay, TargetState::Backoff);
            }
        };
        let decision = termination::decide(
            pod.as_ref(),
            &self.args.id.container,
            self.container_id.as_deref(),
        );
        match decision {
            Termination::Reconnect { container_id } => {
                if self.container_id.is_none() {
                    self.container_id = container_id.map(Arc::from);
                }
                Step::Open(Read::Follow)
            }
            Termination::Restarted { new_id, .. } => {
                tracing::info!(target = %self.args.id, "container restarted as {new_id}; reading the previous instance's remainder, then following the new one");
                self.restarted_to = Some(Arc::from(new_id));
                Step::Open(Read::Previous)
            }
            Termination::Waiting => {
                let delay = self.backoff.next_delay();
                tracing::info!(target = %self.args.id, "container not running; checking again in {delay:.1?}");
                Step::Sleep(delay, TargetState::Waiting)
            }
            Termination::Finished(FinishReason::PodGone) => {
                tracing::info!(target = %self.args.id, "pod gone; finishing");
                Step::Finish
            }
            Termination::Finished(reason) => {
                tracing::info!(target = %self.args.id, "container finished ({reason:?}); reading the remainder once more");
                let grace = self.args.config.terminated_grace;
                self.drain_deadline = Some(Instant::now() + grace);
                Step::Open(Read::Remainder)
            }
        }
    }

    async fn sleep(&mut self, delay: Duration, state: TargetState) -> Step {
        self.set_state(state);
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Step::Decide,
                changed = self.args.drain.changed() => {
                    if changed.is_err() {
                        // The actor is gone.
                        return Step::Finish;
                    }
                    self.poll_drain();
                    if self.drain_deadline.is_some() {
                        return Step::Open(Read::Remainder);
                    }
                }
            }
        }
    }

    /// Opens a stream and reads it to its end.
    async fn read_stream(&mut self, read: Read) -> End {
        let params = request::log_params(&self.args.id.container, self.cursor.reconnect(), read);
        let api: Api<Pod> =
            Api::namespaced(self.args.client.borrow().clone(), &self.args.id.namespace);
        let open = tokio::time::timeout(OPEN_TIMEOUT, api.log_stream(&self.args.id.pod, &params));
        let reader = match open.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return End::Failed(StreamError::from_kube(e)),
            Err(_) => return End::Failed(StreamError::Timeout(OPEN_TIMEOUT)),
        };
        let mut reader = pin!(reader);
        telemetry::stream_opened();
        if read == Read::Follow && !self.serves_our_instance(&api).await {
            return End::InstanceChanged;
        }
        let state = if self.drain_deadline.is_some() {
            TargetState::Draining
        } else {
            TargetState::Running
        };
        let first_open = !self.opened_once;
        self.opened_once = true;
        self.args.status.update(|s| {
            s.state = state;
            // The first stream is an open, not a reconnect.
            if !first_open {
                s.reconnects += 1;
            }
        });
        tracing::debug!(target = %self.args.id, ?read, cursor = ?self.cursor.position(), "stream opened");

        let config = self.args.config.clone();
        let rotate_at = Instant::now() + config.max_stream_lifetime;
        let mut splitter = LineSplitter::new(config.max_line_size.saturating_add(TIMESTAMP_ROOM));
        let mut lines = Vec::new();
        let mut delivered = 0u64;
        let mut last_second = None;
        loop {
            let next = match next_bytes(&mut reader).now_or_never() {
                Some(r) => r,
                None => {
                    // Nothing more ready: send what we have before waiting.
                    if !self.flush().await {
                        return End::ForwarderGone;
                    }
                    match self.wait_bytes(&mut reader, rotate_at).await {
                        Waited::Bytes(r) => r,
                        Waited::Rotate => return End::Rotate,
                        Waited::DrainExpired => return End::DrainExpired,
                    }
                }
            };
            let bytes = match next {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    // A non-following read ends at the end of the log: its unterminated last
                    // line is complete. A follow stream that ends may be a cut: drop the
                    // fragment, the next stream returns the line whole.
                    if matches!(read, Read::Previous | Read::Remainder)
                        && let Some(l) = splitter.finish()
                    {
                        delivered += u64::from(self.line(l, &mut last_second));
                    }
                    if !self.flush().await {
                        return End::ForwarderGone;
                    }
                    return End::Clean { delivered };
                }
                Err(e) => {
                    if !self.flush().await {
                        return End::ForwarderGone;
                    }
                    return End::Failed(StreamError::Read(e));
                }
            };
            splitter.push(bytes, &mut |l| lines.push(l));
            for l in lines.drain(..) {
                delivered += u64::from(self.line(l, &mut last_second));
                let full = self.pending.entries.len() >= config.chunk_lines
                    || self.pending.bytes >= MAX_CHUNK_BYTES;
                if full && !self.flush().await {
                    return End::ForwarderGone;
                }
            }
        }
    }

    /// Whether a follow stream just opened reads the instance the cursor belongs to.
    ///
    /// The kubelet serves the instance that is current when the request arrives, and a log
    /// stream does not say which one that is. A container that restarted between our last look
    /// and the request would be read with the old instance's cursor: its first `skip` lines
    /// discarded and the old instance's remainder never read. The pod fetched *after* the
    /// stream opened settles it: container IDs only move forward, so if the pod still shows our
    /// instance, the stream is ours. One GET per stream opening, which is rare.
    async fn serves_our_instance(&mut self, api: &Api<Pod>) -> bool {
        let Some(expected) = self.container_id.clone() else {
            return true;
        };
        match api.get_opt(&self.args.id.pod).await {
            Ok(Some(pod)) => match termination::current_instance(&pod, &self.args.id.container) {
                Some(current) => current == &*expected,
                // No ID (waiting): nothing to compare, the read decides.
                None => true,
            },
            // Gone or unreachable: the read and the decision after it handle that.
            Ok(None) | Err(_) => true,
        }
    }

    /// Waits for the next bytes, handling acknowledgements, drain and rotation meanwhile.
    async fn wait_bytes<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
        rotate_at: Instant,
    ) -> Waited {
        loop {
            let deadline = match self.drain_deadline {
                Some(d) if d < rotate_at => d,
                _ => rotate_at,
            };
            tokio::select! {
                biased;
                changed = self.args.drain.changed(), if !*self.args.drain.borrow() => {
                    if changed.is_err() {
                        // The actor is gone (it aborts us when stopping): end here.
                        return Waited::DrainExpired;
                    }
                    self.poll_drain();
                }
                Ok(()) = self.args.client.changed() => {
                    tracing::info!(target = %self.args.id, "the Kubernetes client changed (reload); reopening the stream from the cursor");
                    return Waited::Rotate;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return if self.drain_deadline == Some(deadline) {
                        tracing::info!(target = %self.args.id, "terminated_grace passed while draining; finishing");
                        Waited::DrainExpired
                    } else {
                        Waited::Rotate
                    };
                }
                r = next_bytes(reader) => return Waited::Bytes(r),
            }
        }
    }

    /// Handles one line: cursor, timestamp, long-line policy; adds it to the pending chunk.
    /// Returns whether the line was new (delivered, or dropped by policy).
    fn line(&mut self, l: line::Line, last_second: &mut Option<i64>) -> bool {
        let parsed = line::parse_line(l.bytes);
        let (timestamp, second) = match parsed.timestamp {
            Some(ts) => (ts, ts.as_second()),
            None => {
                // The kubelet filtered this line by a timestamp we cannot read; its neighbour's
                // second is the best guess for the cursor (the read time could be far ahead
                // of an old log and push `since` past unread lines).
                let second = last_second.unwrap_or(self.cursor.position().since);
                (Timestamp::now(), second)
            }
        };
        if self.cursor.admit(second) == Admit::Skip {
            return false;
        }
        if parsed.timestamp.is_none() {
            telemetry::line_without_timestamp();
        } else {
            *last_second = Some(second);
        }
        let max = self.args.config.max_line_size;
        let text = if l.truncated || parsed.text.len() > max {
            match self.args.config.on_long_line {
                OnLongLine::Drop => {
                    telemetry::lines_dropped(LineDrop::TooLong, 1);
                    self.pending.dropped = true;
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
        let p = &mut self.pending;
        if p.entries.is_empty() {
            p.read_at = std::time::Instant::now();
        }
        p.bytes += text.len();
        p.last_timestamp = Some(timestamp);
        p.entries.push(Entry {
            timestamp,
            line: text,
        });
        true
    }

    /// Sends the pending chunk (awaiting the forwarder: back-pressure). False when the
    /// forwarder is gone.
    async fn flush(&mut self) -> bool {
        let position = Position {
            container_id: self.container_id.clone(),
            cursor: self.cursor.position(),
        };
        if self.pending.entries.is_empty() {
            if std::mem::take(&mut self.pending.dropped) {
                self.acks.moved(position);
            }
            return true;
        }
        let pending = self.pending.take();
        let lines = pending.entries.len() as u64;
        let bytes = pending.bytes as u64;
        let seq = self.acks.next_seq();
        let stream = self.args.target.borrow().stream.clone();
        let chunk = Chunk::new(
            self.args.id.clone(),
            stream,
            pending.entries,
            seq,
            pending.read_at,
            Some(self.acks.clone() as AckSender),
        );
        self.acks.sent(seq, position.clone(), pending.read_at);
        telemetry::lines_read(lines, bytes);
        self.args.status.update(|s| {
            s.lines += lines;
            s.bytes += bytes;
            s.last_read = Some(Timestamp::now());
            s.last_entry_timestamp = pending.last_timestamp;
            s.cursor_since = Timestamp::from_second(position.cursor.since).ok();
            s.cursor_skip = position.cursor.skip;
            s.container_id = position.container_id.as_deref().map(str::to_string);
        });
        self.args.forwarder.send(Forward(chunk)).await.is_ok()
    }

    /// Notices a drain request: from now on, at most `terminated_grace` more.
    fn poll_drain(&mut self) {
        if self.drain_deadline.is_none() && *self.args.drain.borrow() {
            let grace = self.args.config.terminated_grace;
            tracing::info!(target = %self.args.id, "target vanished; draining for at most {grace:?}");
            self.drain_deadline = Some(Instant::now() + grace);
            self.set_state(TargetState::Draining);
        }
    }

    fn set_state(&self, state: TargetState) {
        self.args.status.update(|s| s.state = state);
    }
}

/// The result of waiting for bytes.
enum Waited {
    Bytes(std::io::Result<Option<Bytes>>),
    Rotate,
    DrainExpired,
}

/// The next bytes of the body (`None` at its end). One copy per read: the lines inside are
/// zero-copy slices of the returned `Bytes`. Cancel-safe: nothing is consumed before the read
/// is ready, and copying and consuming happen without an await between them.
async fn next_bytes<R: AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Bytes>> {
    let buf = reader.fill_buf().await?;
    if buf.is_empty() {
        return Ok(None);
    }
    let bytes = Bytes::copy_from_slice(buf);
    reader.consume_unpin(bytes.len());
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_messages_are_recognised() {
        for m in [
            r#"container "c" in pod "p" is waiting to start: ContainerCreating"#,
            r#"container "c" in pod "p" is waiting to start: PodInitializing"#,
        ] {
            assert!(is_waiting_message(m), "{m}");
        }
        assert!(!is_waiting_message(
            r#"previous terminated container "c" in pod "p" not found"#
        ));
    }

    #[test]
    fn api_errors_are_classified() {
        let status = |code: u16, msg: &str| {
            kube::Error::Api(
                kube::core::Status::failure(msg, "BadRequest")
                    .with_code(code)
                    .boxed(),
            )
        };
        let e = StreamError::from_kube(status(
            400,
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating",
        ));
        assert_eq!(e.kind(), "waiting");
        assert_eq!(
            StreamError::from_kube(status(404, "pods \"p\" not found")).kind(),
            "not_found"
        );
        assert_eq!(StreamError::from_kube(status(500, "boom")).kind(), "status");
    }

    #[tokio::test]
    async fn next_bytes_reads_everything_then_ends() {
        let body: &[u8] = b"hello\nworld\n";
        let mut reader = futures::io::BufReader::with_capacity(4, body);
        let mut got = Vec::new();
        while let Some(b) = next_bytes(&mut reader).await.unwrap() {
            assert!(b.len() <= 4);
            got.extend_from_slice(&b);
        }
        assert_eq!(got, body);
    }
}
