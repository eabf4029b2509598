//! The read loop of one tailer: the thin async shell around the decisions of [`machine`]
//! (SPEC §5).
//!
//! The shell performs each [`Action`] and reports what happened as an [`Event`]; it decides
//! nothing itself. Performing means:
//!
//! - **Open**: one `pods/log` request (the only API request of an open: the pod's state comes
//!   from the pod watch, through the target updates the registry sends), then reading the
//!   body's frames into the bounded [`LineSplitter`] (never `lines()`: a line is never
//!   buffered whole beyond `max_line_size`) and [`Pending`], which applies the cursor and
//!   writes each line into the chunk in Loki's wire form before the next is cut. A chunk goes
//!   out as soon as it holds `chunk_lines` entries or ~1 MiB, *or* the stream has no more
//!   bytes ready (a busy stream first gathers lines for up to
//!   [`LINGER`](super::pending::LINGER)); each send is awaited, so a full receiver queue
//!   pushes back to the stream. Deadlines (rotation, drain), a drain request and a reload's new client are checked
//!   while waiting for bytes *and* between reads, so a stream that never catches up still
//!   rotates, drains and swaps clients.
//! - **Decide**: [`termination::decide`] on the watched [`ContainerState`]. Only a target no
//!   watch knows (a static `[[targets]]` entry) fetches its pod.
//! - **Sleep**: a jittered backoff, cut short by a drain, a deadline, or (while waiting for the
//!   container to start) a change of its state.
//!
//! Acknowledgements go to the tailer's [`TargetAcks`], shared with its chunks: it moves the
//! acknowledged position in the positions table and the status, even after this loop ended.

use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::StreamError;
use super::line::LineSplitter;
use super::machine::{Action, Event, Settings, Tail};
use super::pending::Pending;
use super::request::{self, Read};
use super::send::CurrentStream;
use super::status::{TailerStatus, TargetState};
use super::watches::Watches;
use crate::config::model::TailConfig;
use crate::cursor::{Cursor, Position, ReadCursor, TargetAcks};
use crate::forward::Fanout;
use crate::kube::logs;
use crate::target::{Target, TargetId};
use crate::telemetry;

/// Room for `<RFC3339Nano> ` before a line's text, so `max_line_size` limits the text itself.
const TIMESTAMP_ROOM: usize = 64;

/// What waiting for a stream's next bytes ended with.
enum Waited {
    Bytes(std::io::Result<Option<Bytes>>),
    /// The linger deadline passed: send what was gathered.
    Linger,
}

/// Everything the read loop needs; built by the actor.
pub(crate) struct ReadLoop {
    pub id: Arc<TargetId>,
    /// The current target: chunks take its stream (labels, tenant) when they are built, and
    /// decisions its watched container state.
    pub target: watch::Receiver<Target>,
    /// Becomes true when the target vanished and the tailer must drain (SPEC §5.6).
    pub drain: watch::Receiver<bool>,
    /// The API client; a reload may replace it, and the open stream is then reopened with the
    /// new one from the cursor (like a `max_stream_lifetime` rotation: nothing lost or repeated).
    pub client: watch::Receiver<kube::Client>,
    pub forwarder: Fanout,
    pub config: Arc<TailConfig>,
    pub status: Arc<TailerStatus>,
    /// Where to resume (a stored position); `None` starts per `start_from`.
    pub start: Option<Position>,
    /// The acknowledgement tracker (starting at `start`), shared with every chunk sent.
    pub acks: Arc<TargetAcks>,
}

/// The shell's state: the machine, the cursor and the chunk being filled. Its performers live
/// in this file (opening and reading), [`super::decide`] (the container's state, sleeping) and
/// [`super::send`] (chunks to the forwarder).
pub(super) struct Shell {
    pub(super) args: ReadLoop,
    pub(super) machine: Tail,
    pub(super) cursor: ReadCursor,
    pub(super) pending: Pending,
    /// A stream was opened before: later opens count as reconnects.
    pub(super) opened_once: bool,
    /// The container instance the status shows.
    pub(super) shown_container: Option<Arc<str>>,
    /// The stream chunks carry.
    pub(super) stream: CurrentStream,
}

impl ReadLoop {
    /// Runs until the target finished; returns the container ID it was following.
    pub async fn run(self) -> Option<String> {
        super::fault::maybe_panic(&self.id);
        let config = self.config.clone();
        let stored = self.start.as_ref().map(|p| p.cursor);
        let (cursor, first) = request::first_read(stored, config.start_from, Timestamp::now());
        // A stored position belongs to the instance it names (possibly an older one: the first
        // stream then notices the restart and reads the previous instance's remainder first).
        let container_id = match &self.start {
            Some(p) => p.container_id.clone(),
            None => self.target.borrow().container_id.as_deref().map(Arc::from),
        };
        let settings = Settings {
            min_backoff: config.min_backoff,
            max_backoff: config.max_backoff,
            max_stream_lifetime: config.max_stream_lifetime,
            terminated_grace: config.terminated_grace,
        };
        let mut shell = Shell {
            machine: Tail::new(settings, container_id),
            cursor: ReadCursor::new(cursor),
            pending: Pending::new(),
            opened_once: false,
            shown_container: None,
            stream: CurrentStream::new(&self.target),
            args: self,
        };
        shell.run(first).await;
        shell.machine.container_id.as_deref().map(str::to_string)
    }
}

impl Shell {
    async fn run(&mut self, first: Read) {
        let mut action = self.step(Event::Started { first });
        loop {
            if let Some(a) = self.poll_drain() {
                action = a;
            }
            action = match action {
                Action::Open {
                    read,
                    from_beginning,
                } => self.read(read, from_beginning).await,
                Action::Decide { settle } => self.decide(settle).await,
                Action::Sleep { base, state } => self.sleep(base, state).await,
                Action::Finish => break,
                // Performers return only what follows them; nothing to carry on with here.
                Action::Continue => Action::Decide { settle: None },
            };
        }
        self.set_state(TargetState::Finished);
        tracing::info!(target = %self.args.id, "tailer finished");
    }

    /// Steps the machine, logging what it decided.
    pub(super) fn step(&mut self, event: Event) -> Action {
        let was_draining = self.machine.draining();
        let action = self.machine.apply(event.clone(), Instant::now());
        if self.machine.draining() && !was_draining {
            let grace = self.args.config.terminated_grace;
            tracing::info!(target = %self.args.id, ?event, "draining for at most {grace:?}");
        }
        if !matches!(action, Action::Continue) {
            tracing::debug!(target = %self.args.id, ?event, ?action, "tailer step");
        }
        action
    }

    /// A drain request not yet given to the machine, and what it changes.
    pub(super) fn poll_drain(&mut self) -> Option<Action> {
        if self.machine.draining() || !*self.args.drain.borrow() {
            return None;
        }
        self.set_state(TargetState::Draining);
        Some(self.step(Event::DrainRequested)).filter(|a| *a != Action::Continue)
    }

    /// Opens one stream and reads it to its end (or until a deadline, drain or new client).
    async fn read(&mut self, read: Read, from_beginning: bool) -> Action {
        if from_beginning {
            tracing::info!(target = %self.args.id, "following the new instance from its beginning");
            self.cursor = ReadCursor::new(Cursor::BEGINNING);
            self.show_container();
        }
        // Known to be another instance already (a restart while we were away): don't open.
        if read == Read::Follow && !self.watched_instance_is_ours() {
            return self.step(Event::InstanceChanged);
        }
        let params = request::log_params(&self.args.id.container, self.cursor.reconnect(), read);
        let client = self.args.client.borrow_and_update().clone();
        let opened = logs::log_frames(&client, &self.args.id.namespace, &self.args.id.pod, &params);
        let mut frames = match opened.await {
            Ok(frames) => frames,
            Err(e) => return self.failed(StreamError::from_kube(e)),
        };
        telemetry::stream_opened();
        // The kubelet serves the instance current when the request arrived, and the stream
        // does not say which: one that restarted while this request waited would be read with
        // the old instance's cursor. Container IDs only move forward, so if the pod still shows
        // our instance after the stream opened, the stream is ours.
        if read == Read::Follow
            && !(self.watched_instance_is_ours() && self.fetched_is_ours().await)
        {
            return self.step(Event::InstanceChanged);
        }
        let state = if self.machine.draining() {
            TargetState::Draining
        } else {
            TargetState::Running
        };
        let reconnect = std::mem::replace(&mut self.opened_once, true);
        self.args.status.update(|s| {
            s.state = state;
            // The first stream is an open, not a reconnect.
            s.reconnects += u64::from(reconnect);
        });
        tracing::debug!(target = %self.args.id, ?read, cursor = ?self.cursor.position(), "stream opened");
        self.step(Event::Opened);
        self.pump(&mut frames, read).await
    }

    /// Reads an open stream until the machine says what follows.
    async fn pump<F: Frames>(&mut self, frames: &mut F, read: Read) -> Action {
        let opened = Instant::now();
        let config = self.args.config.clone();
        let mut splitter = LineSplitter::new(config.max_line_size.saturating_add(TIMESTAMP_ROOM));
        let mut delivered = 0u64;
        let mut watches = Watches::new(&self.args.drain, &self.args.client);
        self.pending.new_stream();
        // When the last frame arrived: the read time of its lines, and "now" for the linger
        // decision right after them (the clock is read once per frame).
        let mut frame_at = opened;
        loop {
            let next = match next_frame(frames).now_or_never() {
                // A backlog: check deadlines, drain and client between reads too.
                Some(r) => match self.interrupted().await {
                    Some(action) => return action,
                    None => r,
                },
                None => {
                    // Nothing more ready: send what we have before waiting, unless the stream
                    // is busy and may gather more for a moment.
                    let linger = self.pending.linger_until(frame_at);
                    if linger.is_none() && !self.flush().await {
                        return self.step(Event::ForwarderGone);
                    }
                    match self.wait_bytes(frames, &mut watches, linger).await {
                        Ok(Waited::Bytes(r)) => r,
                        Ok(Waited::Linger) => {
                            if !self.flush().await {
                                return self.step(Event::ForwarderGone);
                            }
                            continue;
                        }
                        Err(action) => return action,
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
                        let now = Instant::now();
                        delivered +=
                            u64::from(self.pending.line(l, &mut self.cursor, &config, now));
                    }
                    if !self.flush().await {
                        return self.step(Event::ForwarderGone);
                    }
                    let open_for = opened.elapsed();
                    return self.step(Event::Ended {
                        delivered,
                        open_for,
                    });
                }
                Err(e) => {
                    if !self.flush().await {
                        return self.step(Event::ForwarderGone);
                    }
                    return self.failed(StreamError::Read(e));
                }
            };
            // Each line is written into the chunk before the next is cut: the frame is
            // dropped at the end of this block, and its buffer is free for the next read.
            frame_at = Instant::now();
            let mut at = 0;
            while let Some(l) = splitter.next_line(&bytes, &mut at) {
                let new = self.pending.line(l, &mut self.cursor, &config, frame_at);
                delivered += u64::from(new);
                if self.pending.full(config.chunk_lines) && !self.flush().await {
                    return self.step(Event::ForwarderGone);
                }
            }
        }
    }

    /// Between two reads of a busy stream: a passed deadline, a drain request or a new client
    /// that changes what the loop does (after sending what was read).
    async fn interrupted(&mut self) -> Option<Action> {
        let event = if self.machine.deadline().is_some_and(|d| d <= Instant::now()) {
            Event::DeadlinePassed
        } else if !self.machine.draining() && *self.args.drain.borrow() {
            Event::DrainRequested
        } else if self.args.client.has_changed().unwrap_or(false) {
            Event::ClientChanged
        } else {
            return None;
        };
        self.react(event).await
    }

    /// Gives the machine an event that arrived during a read; `Some` when the read ends.
    async fn react(&mut self, event: Event) -> Option<Action> {
        if event == Event::DrainRequested {
            self.set_state(TargetState::Draining);
        }
        if event == Event::ClientChanged {
            tracing::info!(target = %self.args.id, "the Kubernetes client changed (reload); reopening the stream from the cursor");
        }
        match self.step(event) {
            Action::Continue => None,
            action => Some(if self.flush().await {
                action
            } else {
                self.step(Event::ForwarderGone)
            }),
        }
    }

    /// Waits for the next bytes, or until `linger` passed; deadlines, drain and client changes
    /// meanwhile.
    async fn wait_bytes<F: Frames>(
        &mut self,
        frames: &mut F,
        watches: &mut Watches,
        linger: Option<Instant>,
    ) -> Result<Waited, Action> {
        loop {
            let deadline = self.machine.deadline();
            watches.arm(deadline);
            let draining = self.machine.draining();
            // The stream first: a tailer is woken for its bytes far more often than for
            // anything else, and a ready frame then costs no look at the other three (each a
            // cold line per tailer at 5,000 quiet streams). Whatever else is ready is seen at
            // the next wait, or between the reads of a backlog ([`Shell::interrupted`]).
            let event = tokio::select! {
                biased;
                r = next_frame(frames) => return Ok(Waited::Bytes(r)),
                changed = watches.drain.change(), if !draining => match changed {
                    Some(()) if *watches.drain.borrow() => Event::DrainRequested,
                    Some(()) => continue,
                    // The actor is gone (it aborts us when stopping): end here.
                    None => return Err(Action::Finish),
                },
                Some(()) = watches.client.change() => Event::ClientChanged,
                _ = &mut watches.timer, if deadline.is_some() => Event::DeadlinePassed,
                _ = sleep_until(linger), if linger.is_some() => return Ok(Waited::Linger),
            };
            if let Some(action) = self.react(event).await {
                return Err(action);
            }
        }
    }

    /// An open or a read failed: count it, show it, ask the machine.
    fn failed(&mut self, err: StreamError) -> Action {
        telemetry::stream_failed(err.kind());
        let message = err.to_string();
        self.args
            .status
            .update(|s| s.last_error = Some(message.clone()));
        let action = self.step(Event::Failed(err.failure()));
        if let Some(suppressed) = crate::logging::ERRORS.check("stream_failed") {
            tracing::warn!(target = %self.args.id, suppressed, ?action, "{message}");
        }
        action
    }

    pub(super) fn set_state(&self, state: TargetState) {
        self.args.status.update(|s| s.state = state);
    }

    /// Shows the container instance the machine follows in the status, if it is not shown yet
    /// (it changes at a restart only: no status lock per chunk).
    pub(super) fn show_container(&mut self) {
        if self.shown_container != self.machine.container_id {
            let id = self.machine.container_id.as_deref().map(str::to_string);
            self.args.status.update(|s| s.container_id = id);
            self.shown_container = self.machine.container_id.clone();
        }
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The frames of a log body, as hyper decoded them: [`logs::LogFrames`], or a test's stand-in.
pub(super) trait Frames: Stream<Item = std::io::Result<Bytes>> + Unpin {}

impl<T: Stream<Item = std::io::Result<Bytes>> + Unpin> Frames for T {}

/// The body's next frame (`None` at its end). Cancel-safe: a frame is taken only when it is
/// ready.
async fn next_frame<F: Frames>(frames: &mut F) -> std::io::Result<Option<Bytes>> {
    frames.next().await.transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    use actix::prelude::*;

    use crate::forward::Forward;
    use crate::tail::pending::LINGER;

    use crate::target::{Labels, Stream};

    /// Forwarder stand-in: records each chunk's line count and acknowledges it at once.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl Actor for Sizes {
        type Context = Context<Self>;
    }

    impl Handler<Forward> for Sizes {
        type Result = ();

        fn handle(&mut self, Forward(chunk): Forward, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(chunk.entries.len());
            chunk.expect_finishers(1);
            chunk.finish();
        }
    }

    /// A shell as the actor builds it, with its drain and client senders; the line count of
    /// each chunk it sends goes to `sizes`.
    fn shell(
        config: TailConfig,
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> (Shell, watch::Sender<bool>, watch::Sender<kube::Client>) {
        let forwarder: Fanout = Sizes(sizes).start().recipient().into();
        let id = TargetId {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            uid: "u".into(),
        };
        let target = Target {
            id: id.clone(),
            stream: Arc::new(Stream {
                labels: Labels::from_pairs([("pod".to_string(), "p".to_string())]),
                tenant: None,
            }),
            discovered: Default::default(),
            container_id: Some("a".into()),
            state: None,
        };
        // Never contacted: the stream is read from memory.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let (_, target) = watch::channel(target);
        let (drain_tx, drain) = watch::channel(false);
        let (client_tx, client) = watch::channel(client);
        let status = Arc::new(TailerStatus::default());
        let config = Arc::new(config);
        let settings = Settings {
            min_backoff: config.min_backoff,
            max_backoff: config.max_backoff,
            max_stream_lifetime: config.max_stream_lifetime,
            terminated_grace: config.terminated_grace,
        };
        let shell = Shell {
            machine: Tail::new(settings, Some(Arc::from("a"))),
            cursor: ReadCursor::new(Cursor::BEGINNING),
            pending: Pending::new(),
            opened_once: true,
            shown_container: None,
            stream: CurrentStream::new(&target),
            args: ReadLoop {
                acks: TargetAcks::new(id.clone(), None),
                id: Arc::new(id),
                target,
                drain,
                client,
                forwarder,
                config,
                status,
                start: None,
            },
        };
        (shell, drain_tx, client_tx)
    }

    /// A stream whose every read is ready at once: a backlog the relay never catches up with.
    fn backlog(lines: usize) -> impl Frames {
        let mut body = Vec::new();
        for i in 0..lines {
            body.extend_from_slice(format!("2024-05-01T10:00:00.{i:09}Z line {i}\n").as_bytes());
        }
        let frames: Vec<std::io::Result<Bytes>> = body
            .chunks(4096)
            .map(|frame| Ok(Bytes::copy_from_slice(frame)))
            .collect();
        futures::stream::iter(frames)
    }

    /// Opens a stream in the machine as the shell does, then pumps a backlog of `lines`.
    async fn pump_backlog(shell: &mut Shell, lines: usize) -> Action {
        let mut frames = backlog(lines);
        shell.step(Event::Started {
            first: Read::Follow,
        });
        shell.step(Event::Opened);
        shell.pump(&mut frames, Read::Follow).await
    }

    const LINES: usize = 200_000;

    /// Issue 15 item 6: a stream that never waits for bytes still rotates at its deadline,
    /// and what it read before is sent (the cursor covers exactly what was forwarded).
    #[actix_rt::test]
    async fn a_backlog_does_not_postpone_the_rotation() {
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let config = TailConfig {
            max_stream_lifetime: Duration::from_millis(20),
            ..TailConfig::default()
        };
        let (mut shell, _drain, _client) = shell(config, forwarded.clone());
        let action = pump_backlog(&mut shell, LINES).await;
        assert_eq!(
            action,
            Action::Open {
                read: Read::Follow,
                from_beginning: false
            },
            "rotated"
        );
        let sent: usize = forwarded.lock().unwrap().iter().sum();
        assert!(
            sent > 0 && sent < LINES,
            "rotated mid-backlog: {sent} lines sent"
        );
        assert_eq!(
            shell.cursor.position().skip,
            sent as u64,
            "every line read was sent"
        );
    }

    #[actix_rt::test]
    async fn a_backlog_does_not_postpone_the_drain_deadline() {
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let config = TailConfig {
            terminated_grace: Duration::from_millis(20),
            ..TailConfig::default()
        };
        let (mut shell, drain, _client) = shell(config, forwarded.clone());
        drain.send_replace(true);
        assert_eq!(pump_backlog(&mut shell, LINES).await, Action::Finish);
        assert!(shell.machine.draining());
        assert!(
            forwarded.lock().unwrap().iter().sum::<usize>() < LINES,
            "finished mid-backlog"
        );
    }

    #[actix_rt::test]
    async fn a_backlog_does_not_postpone_a_new_client() {
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let (mut shell, _drain, client) = shell(TailConfig::default(), forwarded.clone());
        client.send_modify(|_| {});
        let action = pump_backlog(&mut shell, LINES).await;
        assert_eq!(
            action,
            Action::Open {
                read: Read::Follow,
                from_beginning: false
            }
        );
        assert!(
            forwarded.lock().unwrap().iter().sum::<usize>() < LINES,
            "reopened mid-backlog"
        );
    }

    /// Lets every task on this thread run until it waits (paused time: timers do not fire).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn a_busy_stream_gathers_its_lines_and_a_quiet_one_sends_each_at_once() {
        tokio::time::pause();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (mut shell, _drain, _client) = shell(TailConfig::default(), sizes.clone());
        let (tx, rx) = futures::channel::mpsc::unbounded::<std::io::Result<Bytes>>();
        let line = |i: u32| {
            Ok(Bytes::from(format!(
                "2024-05-01T10:00:00.{i:09}Z line {i}\n"
            )))
        };
        let pump = actix_rt::spawn(async move {
            let mut frames = rx;
            shell.step(Event::Started {
                first: Read::Follow,
            });
            shell.step(Event::Opened);
            shell.pump(&mut frames, Read::Follow).await
        });
        let sent = || sizes.lock().unwrap().clone();

        // A quiet stream: its line goes at once.
        tx.unbounded_send(line(1)).unwrap();
        settle().await;
        assert_eq!(sent(), [1]);
        // Busy now (it sent a chunk 10 ms ago): lines gather until LINGER after that chunk.
        for i in 2..=4 {
            tokio::time::advance(Duration::from_millis(10)).await;
            tx.unbounded_send(line(i)).unwrap();
            settle().await;
        }
        assert_eq!(sent(), [1], "gathering");
        tokio::time::advance(LINGER).await;
        settle().await;
        assert_eq!(sent(), [1, 3], "sent together once the linger passed");
        // Quiet again a second later: at once.
        tokio::time::advance(Duration::from_secs(1)).await;
        tx.unbounded_send(line(5)).unwrap();
        settle().await;
        assert_eq!(sent(), [1, 3, 1]);
        // A stream that ends sends what it gathered.
        tokio::time::advance(Duration::from_millis(10)).await;
        tx.unbounded_send(line(6)).unwrap();
        settle().await;
        drop(tx);
        let action = pump.await.unwrap();
        assert!(
            matches!(
                action,
                Action::Decide { .. } | Action::Open { .. } | Action::Sleep { .. }
            ),
            "{action:?}"
        );
        assert_eq!(sent(), [1, 3, 1, 1]);
    }
}
