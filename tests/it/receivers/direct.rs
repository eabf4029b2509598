//! Receivers driven directly, under paused tokio time (SPEC §4.5, §6, §8.2).
//!
//! The forwarder, the receivers and the Loki sinks share the test's thread: the receivers are
//! started on the test's own arbiter ([`start_loki_on`]) inside an actix `System` whose runtime
//! starts paused, so a 60 s outage takes no wall-clock time, and every metric goes to a
//! thread-local Prometheus recorder that the tests read back as exported text. The sockets are
//! real (loopback); the clock is virtual.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor as _;
use kube_log_relay::chunk::{AckSender, Chunk, Entries};
use kube_log_relay::config::{LokiConfig, OnFull};
use kube_log_relay::forward::{Forward, Forwarder, Shutdown};
use kube_log_relay::receiver::{ReceiverHandle, start_loki_on};
use kube_log_relay::sim::loki::{LokiSink, Response};
use kube_log_relay::target::{Labels, Stream};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use crate::support;

/// Runs `test` in an actix `System` whose (single-threaded) tokio runtime starts with paused time.
fn paused(test: impl Future<Output = ()>) {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
    })
    .block_on(test);
}

/// A Prometheus recorder for this thread only, read back as the text `/metrics` would serve.
struct Metrics(PrometheusRecorder);

impl Metrics {
    fn new() -> Metrics {
        Metrics(PrometheusBuilder::new().build_recorder())
    }

    /// The sum of every sample named `name` whose labels include `labels` (0 when none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        support::Metrics::parse(&self.0.handle().render()).sum(name, labels)
    }
}

/// Log lines written on this thread, for asserting what an operator reads.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn stream(labels: &[(&str, &str)], tenant: Option<&str>) -> Arc<Stream> {
    Arc::new(Stream {
        labels: Labels::from_pairs(labels.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
        tenant: tenant.map(str::to_owned),
    })
}

/// A tailer's chunk `seq`: `lines` lines named after it, 18 bytes each.
fn chunk(stream: &Arc<Stream>, seq: u64, lines: usize, ack: &AckSender) -> Chunk {
    let timestamp = jiff::Timestamp::from_second(1_700_000_000 + seq as i64).unwrap();
    let entries: Entries = (0..lines).map(|i| (timestamp, line(seq, i))).collect();
    Chunk::new(
        stream.clone(),
        entries,
        seq,
        std::time::Instant::now(),
        Some(ack.clone()),
    )
}

fn line(seq: u64, i: usize) -> String {
    let line = format!("chunk-{seq:04}-line-{i:02}");
    assert_eq!(line.len() * LINES, CHUNK_BYTES);
    line
}

fn acks() -> (AckSender, UnboundedReceiver<u64>) {
    let (tx, rx) = unbounded_channel();
    (Arc::new(tx), rx)
}

/// Entries the sink accepted, by counting its 2xx requests (cheaper than copying entries).
fn accepted(sink: &LokiSink) -> usize {
    sink.requests()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.entries)
        .sum()
}

/// The accepted lines, in arrival order.
fn received_lines(sink: &LokiSink) -> Vec<String> {
    sink.entries().into_iter().map(|e| e.line).collect()
}

const CHUNKS: u64 = 600;
const LINES: usize = 10;
/// One chunk every 100 ms: 600 chunks take the 60 s of the outage.
const EVERY: Duration = Duration::from_millis(100);
const OUTAGE: Duration = Duration::from_secs(60);
/// 10 lines of 18 bytes.
const CHUNK_BYTES: usize = 180;
/// Room for 22 chunks of 180 bytes.
const SMALL_BUFFER: usize = 4096;

/// `[loki.<name>]` with SPEC's defaults (batch_wait 1s, backoff 500ms → 5m, 10 attempts).
fn loki(sink: &LokiSink, on_full: OnFull, buffer_size: usize) -> LokiConfig {
    let mut config = LokiConfig::with_url(sink.url());
    config.on_full = on_full;
    config.buffer_size = buffer_size;
    config
}

/// Every line of `chunks`, in order.
fn lines_of_chunks(chunks: std::ops::Range<u64>) -> Vec<String> {
    chunks
        .flat_map(|s| (0..LINES).map(move |i| line(s, i)))
        .collect()
}

/// Collects `n` acknowledgements within `limit` of virtual time; fails naming how many came.
async fn collect_acks(rx: &mut UnboundedReceiver<u64>, n: usize, limit: Duration) -> Vec<u64> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seq)) => got.push(seq),
            _ => panic!(
                "only {} of {n} chunks acknowledged within {limit:?}: {got:?}",
                got.len()
            ),
        }
    }
    got.sort_unstable();
    got
}

/// Two receivers on this thread's arbiter behind one forwarder: `good` healthy, `bad` answering
/// 503 until the test says otherwise (the sink's own window runs on the wall clock), with a
/// small buffer and `on_full` as given.
struct Outage {
    good: LokiSink,
    bad: LokiSink,
    failing: ReceiverHandle,
    forwarder: actix::Addr<Forwarder>,
}

impl Outage {
    async fn start(tag: &str, on_full: OnFull) -> Outage {
        let (good, bad) = (support::sink().await, support::sink().await);
        bad.fail_for(503, Duration::from_secs(3600));
        let arbiter = actix::Arbiter::current();
        let healthy = start_loki_on(
            &arbiter,
            format!("outage-{tag}-good"),
            loki(&good, OnFull::Block, 64 << 20),
        )
        .unwrap();
        let failing = start_loki_on(
            &arbiter,
            format!("outage-{tag}-bad"),
            loki(&bad, on_full, SMALL_BUFFER),
        )
        .unwrap();
        let forwarder = Forwarder::new(vec![healthy, failing.clone()]).start();
        Outage {
            good,
            bad,
            failing,
            forwarder,
        }
    }
}

#[test]
fn a_60s_outage_with_on_full_drop_leaves_the_healthy_receiver_untouched_and_counts_every_drop() {
    paused(async {
        let metrics = Metrics::new();
        let _recorder = metrics::set_default_local_recorder(&metrics.0);
        let Outage {
            good,
            bad,
            failing,
            forwarder,
        } = Outage::start("drop", OnFull::Drop).await;
        let (ack, mut acked) = acks();
        let s = stream(&[("app", "outage")], None);

        let start = Instant::now();
        let produced_at: Rc<std::cell::RefCell<Vec<Instant>>> = Rc::default();
        let producer = {
            let produced_at = produced_at.clone();
            async move {
                for seq in 0..CHUNKS {
                    tokio::time::sleep_until(start + EVERY * seq as u32).await;
                    forwarder
                        .send(Forward(chunk(&s, seq, LINES, &ack)))
                        .await
                        .unwrap();
                    produced_at.borrow_mut().push(Instant::now());
                }
                forwarder
            }
        };
        // Watches every 10 ms: when each healthy line arrived, and the failing queue's size.
        let watcher = async {
            let (mut arrived, mut max_queue, mut max_gauge) = (Vec::new(), 0, 0.0f64);
            while arrived.len() < CHUNKS as usize * LINES {
                let now = Instant::now();
                let n = accepted(&good);
                arrived.resize(n, now);
                max_queue = max_queue.max(failing.queued_bytes());
                max_gauge = max_gauge.max(metrics.value(
                    "kube_log_relay_receiver_queue_bytes",
                    &[("receiver", "outage-drop-bad")],
                ));
                assert!(now - start < OUTAGE * 2, "the healthy receiver fell behind");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (arrived, max_queue, max_gauge)
        };
        let (forwarder, (arrived, max_queue, max_gauge)) = tokio::join!(producer, watcher);
        assert!(Instant::now() - start >= OUTAGE - EVERY);

        // The healthy receiver: every line once, in order, as fast as without the outage —
        // within batch_wait (1 s) of being read, plus the watcher's 10 ms and some slack.
        assert_eq!(received_lines(&good), lines_of_chunks(0..CHUNKS));
        let produced_at = produced_at.take();
        let mut latencies: Vec<Duration> = arrived
            .iter()
            .enumerate()
            .map(|(i, at)| *at - produced_at[i / LINES])
            .collect();
        latencies.sort_unstable();
        let (p50, max) = (
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1],
        );
        eprintln!("healthy receiver during the outage: latency p50 {p50:?}, max {max:?}");
        assert!(max <= Duration::from_millis(1100), "max latency {max:?}");

        // The failing receiver never held more than buffer_size.
        assert!(max_queue <= SMALL_BUFFER, "{max_queue}");
        assert!(max_gauge <= SMALL_BUFFER as f64, "{max_gauge}");
        let kept = SMALL_BUFFER / CHUNK_BYTES;
        assert_eq!(failing.queued_bytes(), kept * CHUNK_BYTES);

        // Loki comes back: the 22 chunks it kept arrive; the 578 others were dropped, counted.
        bad.fail_for(503, Duration::ZERO);
        let all = collect_acks(&mut acked, CHUNKS as usize, Duration::from_secs(600)).await;
        assert_eq!(all, (0..CHUNKS).collect::<Vec<_>>());
        assert!(acked.try_recv().is_err(), "no chunk acknowledged twice");
        assert_eq!(received_lines(&bad), lines_of_chunks(0..kept as u64));
        let dropped_chunks = CHUNKS as usize - kept;
        let bad_labels = [("receiver", "outage-drop-bad")];
        let drop_labels = [("receiver", "outage-drop-bad"), ("reason", "queue_full")];
        let m = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels);
        assert_eq!(
            m("loki_write_dropped_entries_total", &drop_labels),
            (dropped_chunks * LINES) as f64
        );
        assert_eq!(
            m("loki_write_dropped_bytes_total", &drop_labels),
            (dropped_chunks * CHUNK_BYTES) as f64
        );
        assert_eq!(
            m("loki_write_dropped_entries_total", &bad_labels),
            (dropped_chunks * LINES) as f64,
            "no other reason"
        );
        assert_eq!(
            m("loki_write_sent_entries_total", &bad_labels),
            (kept * LINES) as f64
        );
        let answered_503 = bad.requests().iter().filter(|r| r.status == 503).count();
        assert!(answered_503 >= 2, "{answered_503}");
        assert_eq!(
            m("loki_write_batch_retries_total", &bad_labels),
            answered_503 as f64
        );
        assert_eq!(
            m(
                "loki_write_request_duration_seconds_count",
                &[("receiver", "outage-drop-bad"), ("status_code", "503")]
            ),
            answered_503 as f64
        );
        let status = failing.status().await.unwrap();
        assert_eq!(
            (status.sent_entries, status.dropped_entries),
            ((kept * LINES) as u64, (dropped_chunks * LINES) as u64)
        );
        assert_eq!(status.queued_bytes, 0);
        let good_labels = [("receiver", "outage-drop-good")];
        assert_eq!(
            m("loki_write_sent_entries_total", &good_labels),
            (CHUNKS as usize * LINES) as f64
        );
        assert_eq!(m("loki_write_dropped_entries_total", &good_labels), 0.0);
        forwarder
            .send(Shutdown {
                deadline: std::time::Instant::now() + Duration::from_secs(5),
            })
            .await
            .unwrap();
    });
}

#[test]
fn a_60s_outage_with_on_full_block_pushes_back_and_loses_nothing() {
    paused(async {
        let metrics = Metrics::new();
        let _recorder = metrics::set_default_local_recorder(&metrics.0);
        let Outage {
            good,
            bad,
            failing,
            forwarder,
        } = Outage::start("block", OnFull::Block).await;
        let (ack, mut acked) = acks();
        let s = stream(&[("app", "outage")], None);

        let start = Instant::now();
        let forwarded = Rc::new(Cell::new(0u64));
        let producer = {
            let forwarded = forwarded.clone();
            async move {
                for seq in 0..CHUNKS {
                    tokio::time::sleep_until(start + EVERY * seq as u32).await;
                    forwarder
                        .send(Forward(chunk(&s, seq, LINES, &ack)))
                        .await
                        .unwrap();
                    forwarded.set(seq + 1);
                }
                forwarder
            }
        };
        // At the end of the outage: the tailer has been held back by the full queue.
        let outage = async {
            let mut max_queue = 0;
            while Instant::now() - start < OUTAGE {
                max_queue = max_queue.max(failing.queued_bytes());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let kept = (SMALL_BUFFER / CHUNK_BYTES) as u64;
            // 22 chunks fill the queue; the 23rd reached the healthy receiver and waits for room.
            assert_eq!(forwarded.get(), kept);
            assert_eq!(accepted(&good), (kept as usize + 1) * LINES);
            assert_eq!(accepted(&bad), 0);
            assert!(max_queue <= SMALL_BUFFER, "{max_queue}");
            bad.fail_for(503, Duration::ZERO);
        };
        let (forwarder, ()) = tokio::join!(producer, outage);

        let all = collect_acks(&mut acked, CHUNKS as usize, Duration::from_secs(600)).await;
        assert_eq!(all, (0..CHUNKS).collect::<Vec<_>>());
        assert!(acked.try_recv().is_err(), "no chunk acknowledged twice");
        let every = lines_of_chunks(0..CHUNKS);
        assert_eq!(received_lines(&good), every);
        assert_eq!(received_lines(&bad), every, "every line once, in order");
        for name in ["outage-block-good", "outage-block-bad"] {
            let labels = [("receiver", name)];
            assert_eq!(
                metrics.value("loki_write_dropped_entries_total", &labels),
                0.0
            );
            assert_eq!(
                metrics.value("loki_write_sent_entries_total", &labels),
                every.len() as f64
            );
        }
        assert!(
            metrics.value(
                "loki_write_batch_retries_total",
                &[("receiver", "outage-block-bad")]
            ) >= 2.0
        );
        forwarder
            .send(Shutdown {
                deadline: std::time::Instant::now() + Duration::from_secs(5),
            })
            .await
            .unwrap();
    });
}

/// What a receiver must do with one answer (or failure) of Loki.
struct Case {
    name: &'static str,
    /// Prepares the sink and the receiver's configuration.
    setup: fn(&LokiSink, &mut LokiConfig),
    /// The statuses the sink answered, in order; `None` for timeouts (abandoned requests leave
    /// no record at the sink).
    answers: Option<&'static [u16]>,
    /// Delivered (`None`) or dropped for this reason.
    dropped: Option<&'static str>,
    retries: u64,
    /// Attempts by `status_code` label.
    attempts: &'static [(&'static str, u64)],
    /// The chunk is finished within this range of virtual time after it was forwarded.
    finished_within: (Duration, Duration),
}

const MS: Duration = Duration::from_millis(1);

fn script(sink: &LokiSink, responses: Vec<Response>) {
    sink.script(responses);
}

/// An HTTP date `secs` seconds from now (wall clock: the receiver reads it against jiff's now).
fn http_date_in(secs: i64) -> String {
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs);
    jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&at)
        .unwrap()
}

fn cases() -> Vec<Case> {
    let s = Duration::from_secs;
    vec![
        Case {
            name: "200",
            setup: |k, _| script(k, vec![Response::status(200)]),
            answers: Some(&[200]),
            dropped: None,
            retries: 0,
            attempts: &[("200", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "204",
            setup: |_, _| {},
            answers: Some(&[204]),
            dropped: None,
            retries: 0,
            attempts: &[("204", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "400",
            setup: |k, _| script(k, vec![Response::status(400)]),
            answers: Some(&[400]),
            dropped: Some("rejected"),
            retries: 0,
            attempts: &[("400", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "401",
            setup: |k, _| script(k, vec![Response::status(401)]),
            answers: Some(&[401]),
            dropped: Some("rejected"),
            retries: 0,
            attempts: &[("401", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "413",
            setup: |k, _| script(k, vec![Response::status(413)]),
            answers: Some(&[413]),
            dropped: Some("rejected"),
            retries: 0,
            attempts: &[("413", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "429-retried",
            setup: |k, _| script(k, vec![Response::status(429)]),
            answers: Some(&[429, 204]),
            dropped: None,
            retries: 1,
            attempts: &[("429", 1), ("204", 1)],
            // batch_wait, then min_backoff (100 ms) jittered into [50, 100] ms.
            finished_within: (150 * MS, 300 * MS),
        },
        Case {
            name: "429-retry-after-seconds",
            setup: |k, _| script(k, vec![Response::status(429).with_retry_after("3")]),
            answers: Some(&[429, 204]),
            dropped: None,
            retries: 1,
            attempts: &[("429", 1), ("204", 1)],
            finished_within: (s(3), s(3) + 200 * MS),
        },
        Case {
            name: "429-retry-after-date",
            // HTTP dates have whole seconds: the wait is between 3 and 4 s.
            setup: |k, _| {
                script(
                    k,
                    vec![Response::status(429).with_retry_after(http_date_in(4))],
                )
            },
            answers: Some(&[429, 204]),
            dropped: None,
            retries: 1,
            attempts: &[("429", 1), ("204", 1)],
            finished_within: (s(2), s(5)),
        },
        Case {
            name: "429-not-retried",
            setup: |k, c| {
                c.retry_on_http_429 = false;
                script(k, vec![Response::status(429)]);
            },
            answers: Some(&[429]),
            dropped: Some("rejected"),
            retries: 0,
            attempts: &[("429", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "429-retry-after-not-retried",
            setup: |k, c| {
                c.retry_on_http_429 = false;
                script(k, vec![Response::status(429).with_retry_after("3")]);
            },
            answers: Some(&[429]),
            dropped: Some("rejected"),
            retries: 0,
            attempts: &[("429", 1)],
            finished_within: (100 * MS, 200 * MS),
        },
        Case {
            name: "500",
            setup: |k, _| script(k, vec![Response::status(500)]),
            answers: Some(&[500, 204]),
            dropped: None,
            retries: 1,
            attempts: &[("500", 1), ("204", 1)],
            finished_within: (150 * MS, 300 * MS),
        },
        Case {
            name: "503-until-retries-run-out",
            setup: |k, _| script(k, vec![Response::status(503); 3]),
            answers: Some(&[503, 503, 503]),
            dropped: Some("retries_exhausted"),
            retries: 2,
            attempts: &[("503", 3)],
            // batch_wait + [50, 100] ms + [100, 200] ms.
            finished_within: (250 * MS, 500 * MS),
        },
        Case {
            name: "connection-refused",
            setup: |_, c| {
                let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                c.url = format!("http://{}/loki/api/v1/push", closed.local_addr().unwrap());
            },
            answers: Some(&[]),
            dropped: Some("retries_exhausted"),
            retries: 2,
            attempts: &[("error", 3)],
            finished_within: (250 * MS, 500 * MS),
        },
        Case {
            name: "timeout",
            setup: |k, c| {
                k.set_delay(Duration::from_secs(30));
                c.remote_timeout = Duration::from_secs(1);
            },
            answers: None,
            dropped: Some("retries_exhausted"),
            retries: 2,
            attempts: &[("error", 3)],
            // Three attempts of remote_timeout each, plus the backoffs.
            finished_within: (s(3) + 250 * MS, s(3) + 500 * MS),
        },
    ]
}

#[test]
fn every_answer_gets_the_documented_action_and_metrics() {
    paused(async {
        let metrics = Metrics::new();
        let _recorder = metrics::set_default_local_recorder(&metrics.0);
        let logs = Logs::default();
        let _logger = tracing::subscriber::set_default(logs.subscriber());
        let s = stream(&[("app", "matrix")], None);
        for case in cases() {
            let sink = support::sink().await;
            let mut config = LokiConfig::with_url(sink.url());
            config.batch_wait = 100 * MS;
            config.min_backoff = 100 * MS;
            config.max_backoff = Duration::from_secs(10);
            config.max_retries = 3;
            (case.setup)(&sink, &mut config);
            let name = format!("matrix-{}", case.name);
            let receiver: ReceiverHandle =
                start_loki_on(&actix::Arbiter::current(), name.clone(), config).unwrap();
            let forwarder = Forwarder::new(vec![receiver.clone()]).start();
            let (ack, mut acked) = acks();
            let started = Instant::now();
            forwarder
                .send(Forward(chunk(&s, 1, 3, &ack)))
                .await
                .unwrap();
            // Delivered or dropped by policy, the chunk is finished exactly once.
            assert_eq!(
                collect_acks(&mut acked, 1, Duration::from_secs(60)).await,
                [1]
            );
            let took = Instant::now() - started;
            let (low, high) = case.finished_within;
            assert!(
                took >= low && took <= high,
                "{}: finished after {took:?}, expected {low:?}..{high:?}",
                case.name
            );
            if let Some(answers) = case.answers {
                let got: Vec<u16> = sink.requests().iter().map(|r| r.status).collect();
                assert_eq!(got, answers, "{}", case.name);
            }
            let delivered = case.dropped.is_none();
            assert_eq!(
                sink.entries().len(),
                if delivered { 3 } else { 0 },
                "{}",
                case.name
            );

            let r = [("receiver", name.as_str())];
            let m = |metric: &str, labels: &[(&str, &str)]| metrics.value(metric, labels);
            let (sent, dropped) = if delivered { (3.0, 0.0) } else { (0.0, 3.0) };
            assert_eq!(
                m("loki_write_sent_entries_total", &r),
                sent,
                "{}",
                case.name
            );
            assert_eq!(
                m("loki_write_dropped_entries_total", &r),
                dropped,
                "{}",
                case.name
            );
            if let Some(reason) = case.dropped {
                let labels = [("receiver", name.as_str()), ("reason", reason)];
                assert_eq!(
                    m("loki_write_dropped_entries_total", &labels),
                    3.0,
                    "{}",
                    case.name
                );
            }
            assert_eq!(
                m("loki_write_batch_retries_total", &r),
                case.retries as f64,
                "{}",
                case.name
            );
            let mut total = 0;
            for (code, n) in case.attempts {
                let labels = [("receiver", name.as_str()), ("status_code", *code)];
                assert_eq!(
                    m("loki_write_request_duration_seconds_count", &labels),
                    *n as f64,
                    "{} status_code={code}",
                    case.name
                );
                total += n;
            }
            assert_eq!(
                m("loki_write_request_duration_seconds_count", &r),
                total as f64,
                "{}: no other status_code",
                case.name
            );
            assert_eq!(m("loki_write_request_size_bytes_count", &r), total as f64);
            assert_eq!(
                m("loki_write_entry_propagation_latency_seconds_count", &r),
                if delivered { 1.0 } else { 0.0 },
                "{}",
                case.name
            );

            let status = receiver.status().await.unwrap();
            assert_eq!(
                (status.sent_entries, status.dropped_entries),
                (sent as u64, dropped as u64),
                "{}",
                case.name
            );
            assert_eq!(status.last_success.is_some(), delivered, "{}", case.name);
            assert_eq!(
                status.last_error.is_some(),
                case.name != "200" && case.name != "204"
            );
            forwarder
                .send(Shutdown {
                    deadline: std::time::Instant::now() + Duration::from_secs(1),
                })
                .await
                .unwrap();
        }
        // A dropped batch is logged once, quoting the first line of Loki's answer.
        let text = logs.text();
        for code in [400, 401, 413] {
            let line = text
                .lines()
                .find(|l| l.contains(&format!("receiver=matrix-{code} ")))
                .unwrap_or_else(|| panic!("no log line for {code}:\n{text}"));
            assert!(
                line.contains("dropped a batch Loki did not accept"),
                "{line}"
            );
            assert!(
                line.contains(&format!("HTTP {code}: scripted status {code}")),
                "{line}"
            );
        }
        let timeout = text
            .lines()
            .filter(|l| l.contains("receiver=matrix-timeout "))
            .collect::<Vec<_>>();
        assert!(
            timeout
                .iter()
                .any(|l| l.contains("no answer within remote_timeout")),
            "{timeout:?}"
        );
    });
}

#[test]
fn streams_that_break_lokis_label_limits_are_dropped_counted_and_named() {
    paused(async {
        let metrics = Metrics::new();
        let _recorder = metrics::set_default_local_recorder(&metrics.0);
        let logs = Logs::default();
        let _logger = tracing::subscriber::set_default(logs.subscriber());
        let sink = support::sink().await;
        let mut config = LokiConfig::with_url(sink.url());
        config.batch_wait = 100 * MS;
        let arbiter = actix::Arbiter::current();
        let (ack, mut acked) = acks();

        let sixteen: Vec<(String, String)> = (0..16)
            .map(|i| (format!("l{i:02}"), "v".to_owned()))
            .collect();
        let sixteen: Vec<(&str, &str)> = sixteen
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let long_value = "v".repeat(2049);
        // (receiver, the stream's labels, what the log line names)
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: [Case; 3] = [
            (
                "labels-too-many",
                sixteen,
                "16 label names exceed max_label_names = 15",
            ),
            (
                "labels-bad-name",
                vec![("app", "a"), ("bad-name", "x")],
                "\"bad-name\"",
            ),
            (
                "labels-long-value",
                vec![("app", "a"), ("big", long_value.as_str())],
                "value of label \"big\" is 2049 bytes, over max_label_value_length = 2048",
            ),
        ];
        let fine = stream(&[("app", "fine")], None);
        for (seq, (name, labels, named)) in cases.iter().enumerate() {
            let receiver = start_loki_on(&arbiter, name.to_string(), config.clone()).unwrap();
            let forwarder = Forwarder::new(vec![receiver]).start();
            let seq = seq as u64 * 2;
            // One batch: the stream Loki would refuse, and a valid one that must still go.
            forwarder
                .send(Forward(chunk(&stream(labels, None), seq, 4, &ack)))
                .await
                .unwrap();
            forwarder
                .send(Forward(chunk(&fine, seq + 1, 2, &ack)))
                .await
                .unwrap();
            assert_eq!(
                collect_acks(&mut acked, 2, Duration::from_secs(10)).await,
                [seq, seq + 1]
            );
            let r = [("receiver", *name), ("reason", "invalid_labels")];
            assert_eq!(
                metrics.value("loki_write_dropped_entries_total", &r),
                4.0,
                "{name}"
            );
            assert_eq!(
                metrics.value("loki_write_dropped_bytes_total", &r),
                (4 * CHUNK_BYTES / LINES) as f64
            );
            assert_eq!(
                metrics.value("loki_write_sent_entries_total", &[("receiver", *name)]),
                2.0
            );
            let text = logs.text();
            let line = text
                .lines()
                .find(|l| l.contains(&format!("receiver={name} ")))
                .unwrap_or_else(|| panic!("no log line for {name}:\n{text}"));
            assert!(line.contains("labels Loki would refuse"), "{line}");
            assert!(line.contains(named), "{line}");
        }
        // Only the valid streams reached Loki, in one request per batch.
        let got: BTreeMap<String, usize> =
            sink.entries()
                .into_iter()
                .fold(BTreeMap::new(), |mut m, e| {
                    *m.entry(e.labels_text).or_default() += 1;
                    m
                });
        assert_eq!(got, BTreeMap::from([("{app=\"fine\"}".to_owned(), 6)]));
    });
}
