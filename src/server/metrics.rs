//! Every metric the relay exports, declared once (SPEC §8.2).
//!
//! Call sites name an event (`metrics::lines_read(n, bytes)`), never a metric string, so the
//! names, labels and help texts below are the whole contract and README's metrics table mirrors
//! this file. Label values are bounded: reasons, kinds and receiver names, never target names.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Why lines were dropped at the tailer (`kube_log_relay_lines_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineDrop {
    /// Longer than `tail.max_line_size` with `on_long_line = "drop"`.
    TooLong,
}

impl LineDrop {
    fn as_str(self) -> &'static str {
        match self {
            LineDrop::TooLong => "too_long",
        }
    }
}

/// Why a receiver dropped entries (`loki_write_dropped_entries_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendDrop {
    /// Loki answered a status that is not retried (4xx other than 429).
    Rejected,
    /// `max_retries` attempts failed.
    RetriesExhausted,
    /// The queue was full with `on_full = "drop"`.
    QueueFull,
    /// The line exceeded the receiver's `max_line_size`.
    LineTooLong,
    /// The stream's labels break Loki's limits (too many names, value too long, bad name).
    InvalidLabels,
}

impl SendDrop {
    fn as_str(self) -> &'static str {
        match self {
            SendDrop::Rejected => "rejected",
            SendDrop::RetriesExhausted => "retries_exhausted",
            SendDrop::QueueFull => "queue_full",
            SendDrop::LineTooLong => "line_too_long",
            SendDrop::InvalidLabels => "invalid_labels",
        }
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const SIZE_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Suffix("_bytes".into()),
                        SIZE_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (several relays in one test process);
            // the handle still renders this recorder's view then, which stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            gauge!("kube_log_relay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!("kube_log_relay_build_info", "Build information; always 1.");
    describe_gauge!("kube_log_relay_targets", "Targets by state.");
    describe_counter!(
        "kube_log_relay_lines_read_total",
        "Log lines read from the API server."
    );
    describe_counter!(
        "kube_log_relay_bytes_read_total",
        Unit::Bytes,
        "Bytes of log lines read from the API server."
    );
    describe_counter!(
        "kube_log_relay_lines_dropped_total",
        "Lines dropped by the tailer, by reason."
    );
    describe_counter!(
        "kube_log_relay_lines_without_timestamp_total",
        "Lines without a parsable timestamp, forwarded with the read time."
    );
    describe_counter!(
        "kube_log_relay_lines_truncated_total",
        "Lines longer than tail.max_line_size, forwarded truncated."
    );
    describe_counter!("kube_log_relay_stream_opens_total", "Log streams opened.");
    describe_counter!(
        "kube_log_relay_stream_errors_total",
        "Log stream failures, by kind."
    );
    describe_counter!(
        "loki_write_sent_entries_total",
        "Entries sent to Loki and acknowledged."
    );
    describe_counter!(
        "loki_write_sent_bytes_total",
        Unit::Bytes,
        "Bytes of entries sent to Loki and acknowledged."
    );
    describe_counter!(
        "loki_write_dropped_entries_total",
        "Entries dropped, by reason."
    );
    describe_counter!(
        "loki_write_dropped_bytes_total",
        Unit::Bytes,
        "Bytes of entries dropped, by reason."
    );
    describe_counter!("loki_write_batch_retries_total", "Push attempts retried.");
    describe_histogram!(
        "loki_write_request_duration_seconds",
        Unit::Seconds,
        "Push request duration, by status code."
    );
    describe_histogram!(
        "loki_write_request_size_bytes",
        Unit::Bytes,
        "Compressed push request body size."
    );
    describe_histogram!(
        "loki_write_entry_propagation_latency_seconds",
        Unit::Seconds,
        "Time from reading a line to Loki acknowledging it."
    );
    describe_gauge!(
        "kube_log_relay_receiver_queue_bytes",
        Unit::Bytes,
        "Bytes waiting in a receiver's queue."
    );
}

/// Lines and bytes read by a tailer.
pub fn lines_read(lines: u64, bytes: u64) {
    counter!("kube_log_relay_lines_read_total").increment(lines);
    counter!("kube_log_relay_bytes_read_total").increment(bytes);
}

/// Lines dropped by a tailer.
pub fn lines_dropped(reason: LineDrop, lines: u64) {
    counter!("kube_log_relay_lines_dropped_total", "reason" => reason.as_str()).increment(lines);
}

/// A line whose timestamp could not be parsed.
pub fn line_without_timestamp() {
    counter!("kube_log_relay_lines_without_timestamp_total").increment(1);
}

/// A line longer than `tail.max_line_size` was truncated (`on_long_line = "truncate"`).
pub fn line_truncated() {
    counter!("kube_log_relay_lines_truncated_total").increment(1);
}

/// A log stream was opened.
pub fn stream_opened() {
    counter!("kube_log_relay_stream_opens_total").increment(1);
}

/// A log stream failed; `kind` is a short fixed word (`connect`, `status`, `read`, `timeout`).
pub fn stream_error(kind: &'static str) {
    counter!("kube_log_relay_stream_errors_total", "kind" => kind).increment(1);
}

/// Number of targets in each state, set by the registry after every change.
pub fn targets(state: &'static str, n: usize) {
    gauge!("kube_log_relay_targets", "state" => state).set(n as f64);
}

/// A receiver's queue size.
pub fn receiver_queue_bytes(receiver: &str, bytes: usize) {
    gauge!("kube_log_relay_receiver_queue_bytes", "receiver" => receiver.to_string())
        .set(bytes as f64);
}

/// Entries acknowledged by Loki.
pub fn sent(receiver: &str, entries: u64, bytes: u64) {
    counter!("loki_write_sent_entries_total", "receiver" => receiver.to_string())
        .increment(entries);
    counter!("loki_write_sent_bytes_total", "receiver" => receiver.to_string()).increment(bytes);
}

/// Entries a receiver dropped.
pub fn dropped(receiver: &str, reason: SendDrop, entries: u64, bytes: u64) {
    let r = receiver.to_string();
    counter!("loki_write_dropped_entries_total", "receiver" => r.clone(), "reason" => reason.as_str())
        .increment(entries);
    counter!("loki_write_dropped_bytes_total", "receiver" => r, "reason" => reason.as_str())
        .increment(bytes);
}

/// A push attempt will be retried.
pub fn batch_retry(receiver: &str) {
    counter!("loki_write_batch_retries_total", "receiver" => receiver.to_string()).increment(1);
}

/// One push request finished; `status` is the HTTP code or `"error"` for transport failures.
pub fn request(receiver: &str, status: &str, duration: Duration, body_bytes: usize) {
    histogram!(
        "loki_write_request_duration_seconds",
        "receiver" => receiver.to_string(),
        "status_code" => status.to_string()
    )
    .record(duration.as_secs_f64());
    histogram!("loki_write_request_size_bytes", "receiver" => receiver.to_string())
        .record(body_bytes as f64);
}

/// Time from read to acknowledgement of a chunk's entries.
pub fn propagation_latency(receiver: &str, latency: Duration) {
    histogram!("loki_write_entry_propagation_latency_seconds", "receiver" => receiver.to_string())
        .record(latency.as_secs_f64());
}
