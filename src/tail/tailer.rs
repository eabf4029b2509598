//! The tailer actor: a thin shell that owns one target's read loop (SPEC §2, §5).
//!
//! The loop (`stream.rs`) runs as its own local task so that awaiting the forwarder (back
//! pressure) never blocks the actor's mailbox: [`UpdateTarget`] and [`Drain`] reach the loop
//! through watch channels at any time, and [`Stop`] aborts it. When the loop ends on its own
//! (the container finished, the pod is gone, the drain completed) — or panics — the actor tells
//! the registry with [`TailerFinished`] and stops. A panic ends that one tailer, never the
//! process: it is counted, its message shown as the target's `last_error`, and the registry
//! restarts the tailer after a backoff (SPEC §2).

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::status::{TailerStatus, TargetState};
use super::stream::ReadLoop;
use crate::config::model::TailConfig;
use crate::cursor::Position;
use crate::cursor::TargetAcks;
use crate::forward::Fanout;
use crate::target::{Target, TargetId};

/// Everything a tailer needs.
pub struct TailerArgs {
    pub target: Target,
    pub client: kube::Client,
    pub forwarder: Fanout,
    pub config: Arc<TailConfig>,
    pub status: Arc<TailerStatus>,
    pub registry: Recipient<TailerFinished>,
    /// The position to resume from; `None` starts per `tail.start_from`.
    pub start: Option<Position>,
    /// The target's acknowledgement tracker, kept by the registry across tailer restarts so
    /// that chunk numbers continue and late acknowledgements of an earlier tailer still count.
    pub acks: Arc<TargetAcks>,
}

/// Same identity, new labels / tenant / container ID: applied to the next chunk, no reconnect.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct UpdateTarget(pub Target);

/// A reload changed the Kubernetes client: the open stream is reopened with it from the cursor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateClient(pub kube::Client);

/// The target vanished (pod deleted): keep reading until the stream ends or `terminated_grace`
/// passes, then finish (SPEC §5.6).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Drain;

/// Stop now (shutdown, reload); no [`TailerFinished`] is sent.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Stop;

/// Tailer → registry: the tailer ended on its own (finished, or its loop panicked).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct TailerFinished {
    pub id: TargetId,
    pub container_id: Option<String>,
    /// The panic message when the loop panicked: the target is not done, restart it.
    pub panicked: Option<String>,
}

/// One container's tailer.
pub struct Tailer {
    id: Arc<TargetId>,
    target: watch::Sender<Target>,
    drain: watch::Sender<bool>,
    client: watch::Sender<kube::Client>,
    status: Arc<TailerStatus>,
    registry: Recipient<TailerFinished>,
    /// The loop's arguments until `started` spawns it.
    read_loop: Option<ReadLoop>,
    /// Aborts the loop on [`Stop`] or when the actor stops.
    abort: Option<AbortHandle>,
}

impl Tailer {
    /// Starts the tailer of `args.target`.
    pub fn start(args: TailerArgs) -> Addr<Tailer> {
        let id = Arc::new(args.target.id.clone());
        let (target_tx, target_rx) = watch::channel(args.target);
        let (drain_tx, drain_rx) = watch::channel(false);
        let (client_tx, client_rx) = watch::channel(args.client);
        let acks = args.acks;
        let read_loop = ReadLoop {
            id: id.clone(),
            target: target_rx,
            drain: drain_rx,
            client: client_rx,
            forwarder: args.forwarder,
            config: args.config,
            status: args.status.clone(),
            start: args.start,
            acks,
        };
        Actor::start(Tailer {
            id,
            target: target_tx,
            drain: drain_tx,
            client: client_tx,
            status: args.status,
            registry: args.registry,
            read_loop: Some(read_loop),
            abort: None,
        })
    }
}

impl Actor for Tailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(read_loop) = self.read_loop.take() else {
            return;
        };
        tracing::info!(target = %self.id, "tailer started");
        let task = actix_rt::spawn(read_loop.run());
        self.abort = Some(task.abort_handle());
        // A panic in the loop is caught by the runtime and surfaces here as a JoinError.
        ctx.spawn(task.into_actor(self).map(|result, act, ctx| {
            let (container_id, panicked) = match result {
                Ok(container_id) => {
                    act.status.update(|s| s.state = TargetState::Finished);
                    (container_id, None)
                }
                // Aborted by Stop: the registry already knows.
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    let message = format!("tailer panicked: {}", panic_message(e));
                    tracing::error!(target = %act.id, "{message}; the registry restarts it");
                    crate::telemetry::tailer_panicked();
                    // Not finished: the target still has lines to read.
                    act.status.update(|s| {
                        s.state = TargetState::Backoff;
                        s.last_error = Some(message.clone());
                    });
                    (act.status.container_id(), Some(message))
                }
            };
            act.registry.do_send(TailerFinished {
                id: (*act.id).clone(),
                container_id,
                panicked,
            });
            ctx.stop();
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
    }
}

/// The message a panic carried (`panic!("…")` carries a `&str` or a `String`).
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => payload
                .downcast_ref::<&str>()
                .map_or_else(|| "(no message)".to_string(), |s| s.to_string()),
        },
        Err(e) => e.to_string(),
    }
}

impl Handler<UpdateTarget> for Tailer {
    type Result = ();

    fn handle(&mut self, msg: UpdateTarget, _: &mut Context<Self>) {
        if msg.0.id != *self.id {
            tracing::warn!(target = %self.id, "ignoring an update for another target ({})", msg.0.id);
            return;
        }
        // Read by the loop when it builds its next chunk.
        self.target.send_replace(msg.0);
    }
}

impl Handler<UpdateClient> for Tailer {
    type Result = ();

    fn handle(&mut self, UpdateClient(client): UpdateClient, _: &mut Context<Self>) {
        self.client.send_replace(client);
    }
}

impl Handler<Drain> for Tailer {
    type Result = ();

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) {
        self.drain.send_replace(true);
    }
}

impl Handler<Stop> for Tailer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        if let Some(abort) = self.abort.take() {
            abort.abort();
        }
        self.status.update(|s| s.state = TargetState::Finished);
        tracing::info!(target = %self.id, "tailer stopped");
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Forward;
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use crate::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim};
    use crate::target::{Labels, Stream};

    /// Forwarder stand-in: keeps every line text and acknowledges each chunk at once.
    struct Collector {
        lines: Arc<Mutex<Vec<String>>>,
        seqs: Arc<Mutex<Vec<u64>>>,
    }

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<Forward> for Collector {
        type Result = ();

        fn handle(&mut self, Forward(chunk): Forward, _: &mut Context<Self>) {
            let mut lines = self.lines.lock().unwrap();
            for e in &chunk.entries {
                lines.push(e.line.to_string());
            }
            self.seqs.lock().unwrap().push(chunk.seq);
            chunk.expect_finishers(1);
            chunk.finish();
        }
    }

    /// Registry stand-in: passes `TailerFinished` on to the test.
    struct Registry(mpsc::UnboundedSender<TailerFinished>);

    impl Actor for Registry {
        type Context = Context<Self>;
    }

    impl Handler<TailerFinished> for Registry {
        type Result = ();

        fn handle(&mut self, msg: TailerFinished, _: &mut Context<Self>) {
            let _ = self.0.send(msg);
        }
    }

    /// A running tailer of `default/web-1/c` against `sim`, with its collected lines.
    struct Harness {
        id: TargetId,
        lines: Arc<Mutex<Vec<String>>>,
        seqs: Arc<Mutex<Vec<u64>>>,
        status: Arc<TailerStatus>,
        acks: Arc<TargetAcks>,
        finished: mpsc::UnboundedReceiver<TailerFinished>,
        _tailer: Addr<Tailer>,
    }

    impl Harness {
        fn start(sim: &Sim) -> Harness {
            let pod = sim.cluster().get("default", "web-1").unwrap();
            let client =
                kube::Client::try_from(kube::Config::new(sim.url().parse().unwrap())).unwrap();
            let lines = Arc::new(Mutex::new(Vec::new()));
            let seqs = Arc::new(Mutex::new(Vec::new()));
            let forwarder = Collector {
                lines: lines.clone(),
                seqs: seqs.clone(),
            }
            .start();
            let (tx, finished) = mpsc::unbounded_channel();
            let registry = Registry(tx).start();
            let status = Arc::new(TailerStatus::default());
            let id = TargetId {
                namespace: "default".into(),
                pod: "web-1".into(),
                container: "c".into(),
                uid: pod.metadata.uid.clone().unwrap(),
            };
            let target = Target {
                id: id.clone(),
                stream: Arc::new(Stream {
                    labels: Labels::from_pairs([("pod".to_string(), "web-1".to_string())]),
                    tenant: None,
                }),
                discovered: Default::default(),
                container_id: None,
                state: None,
            };
            let config = TailConfig {
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(200),
                terminated_grace: Duration::from_secs(2),
                chunk_lines: 64,
                ..TailConfig::default()
            };
            let acks = TargetAcks::new(id.clone(), None);
            let tailer = Tailer::start(TailerArgs {
                target,
                client,
                forwarder: forwarder.recipient().into(),
                config: Arc::new(config),
                status: status.clone(),
                registry: registry.recipient(),
                start: None,
                acks: acks.clone(),
            });
            Harness {
                id,
                lines,
                seqs,
                status,
                acks,
                finished,
                _tailer: tailer,
            }
        }

        async fn wait_finished(&mut self) -> TailerFinished {
            tokio::time::timeout(Duration::from_secs(60), self.finished.recv())
                .await
                .expect("the tailer finishes after the container exited")
                .expect("registry channel open")
        }
    }

    #[actix_rt::test]
    async fn restart_reads_the_previous_remainder_then_the_new_instance() {
        let sim = Sim::start("127.0.0.1:0").await.unwrap();
        // Each instance writes 100 lines and exits 0; OnFailure does not restart it, so the
        // manual restart below makes exactly two instances.
        sim.add_pod(
            PodSpec::new("default", "web-1")
                .restart_policy(RestartPolicy::OnFailure)
                .container(
                    ContainerSpec::new("c")
                        .rate(50.0)
                        .total_lines(100, 0)
                        .same_timestamp_run(4),
                ),
        );
        let mut h = Harness::start(&sim);
        sim.wait_written("default", "web-1", "c", 40).await;
        sim.restart_container("default", "web-1", "c");

        let done = h.wait_finished().await;
        assert_eq!(done.id, h.id);
        let written = sim.written_lines("default", "web-1", "c");
        assert!(
            written.len() >= 140,
            "two instances wrote: {}",
            written.len()
        );
        let got = h.lines.lock().unwrap().clone();
        assert_eq!(got, written, "both instances, every line once, in order");
        assert_eq!(done.container_id, h.status.container_id());
        assert!(done.container_id.is_some());
    }

    #[actix_rt::test]
    async fn every_line_arrives_once_across_cuts_and_the_job_finishes() {
        let sim = Sim::start("127.0.0.1:0").await.unwrap();
        // A Job-like pod: 600 lines, runs of lines sharing a timestamp, stderr lines stamped
        // earlier than the stdout line before them, then exit 0 with restartPolicy Never.
        // Streams are cut every 150 lines (skipped ones included): at 50 lines/s the cursor's
        // window re-sends at most ~100, so each stream still makes progress.
        sim.add_pod(
            PodSpec::new("default", "web-1")
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("c")
                        .rate(50.0)
                        .total_lines(600, 0)
                        .same_timestamp_run(5)
                        .stderr_every(7, Duration::from_millis(300)),
                ),
        );
        sim.set_cut_every(Some(150));
        let mut h = Harness::start(&sim);
        let done = h.wait_finished().await;
        assert_eq!(done.id, h.id);
        let (lines, seqs, status, acks) = (
            h.lines.clone(),
            h.seqs.clone(),
            h.status.clone(),
            h.acks.clone(),
        );

        let written = sim.written_lines("default", "web-1", "c");
        assert_eq!(written.len(), 600);
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), written.len(), "every line exactly once");
        assert_eq!(got, written, "in write order");
        assert!(
            sim.log_opens("default", "web-1", "c") >= 600 / 150,
            "the stream was cut"
        );

        let snapshot = status.show(&acks);
        assert_eq!(snapshot.state, TargetState::Finished);
        assert_eq!(snapshot.lines, 600);
        let seqs = seqs.lock().unwrap().clone();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "seqs increase by one"
        );
        assert_eq!(snapshot.chunks_in_flight, 0);
        let acked = snapshot.acknowledged.expect("an acknowledged position");
        assert_eq!(
            acked.cursor,
            crate::cursor::Cursor {
                since: snapshot.cursor_since.unwrap().as_second(),
                skip: snapshot.cursor_skip
            }
        );
    }
}
