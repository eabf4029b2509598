//! The forwarder fanning chunks out to real receivers, against the simulator's Loki sink over
//! real sockets: every receiver gets every line, acknowledgements wait for all of them, and
//! shutdown flushes until its deadline.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
// Shutdown deadlines and elapsed-time checks are wall-clock here.
use std::time::{Duration, Instant};

use actix::Actor as _;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::{Forward, Forwarder, SetReceivers, Shutdown};
use crate::chunk::test_support::plain_chunk;
use crate::chunk::{AckSender, Chunk};
use crate::config::{LogFormat, LokiConfig, OnFull, StdoutConfig};
use crate::receiver::{start_loki, start_stdout_to};
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
async fn a_fanout_pushes_into_the_queues_itself_and_follows_reloads_and_the_shutdown() {
    let (a, b) = (
        LokiSink::start("127.0.0.1:0").await.unwrap(),
        LokiSink::start("127.0.0.1:0").await.unwrap(),
    );
    let ra = start_loki("a".into(), config(&a)).unwrap();
    let rb = start_loki("b".into(), config(&b)).unwrap();
    let forwarder = Forwarder::new(vec![ra.clone()]);
    let fanout = forwarder.fanout();
    let forwarder = forwarder.start();
    let (ack, mut acked) = unbounded_channel();
    let ack: AckSender = Arc::new(ack);
    for seq in 0..5 {
        assert!(fanout.send(chunk(seq, 3, None, &ack)).await);
    }
    assert_eq!(acks(&mut acked, 5).await, (0..5).collect::<Vec<_>>());
    // A reload adds `b`: the next chunks go to both, and are acknowledged once both have them.
    forwarder.send(SetReceivers(vec![ra, rb])).await.unwrap();
    for seq in 5..10 {
        assert!(fanout.send(chunk(seq, 3, None, &ack)).await);
    }
    assert_eq!(acks(&mut acked, 5).await, (5..10).collect::<Vec<_>>());
    assert_eq!(counts(&a.entries()), expected(0..10, 3));
    assert_eq!(counts(&b.entries()), expected(5..10, 3));
    // After the shutdown a chunk is dropped unfinished: read again after the restart.
    forwarder
        .send(Shutdown {
            deadline: Instant::now() + WAIT,
        })
        .await
        .unwrap();
    assert!(fanout.send(chunk(10, 3, None, &ack)).await);
    assert!(
        acked.try_recv().is_err(),
        "nothing acknowledged after the shutdown"
    );
    // The forwarder gone: the fanout says so.
    drop(forwarder);
    let deadline = Instant::now() + WAIT;
    while fanout.send(chunk(11, 1, None, &ack)).await {
        assert!(Instant::now() < deadline, "the forwarder never stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
        assert_eq!(c.bytes(), 100);
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
    let forwarder = Forwarder::new(vec![start_loki("r".into(), config(&sink)).unwrap()]).start();
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
            format: LogFormat::Logfmt,
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
