//! Every metric the relay exports, declared once (SPEC §8.2): a leaf that imports nothing of ours;
//! `server` only renders what it records.
//!
//! Call sites name an event (`telemetry::lines_read(n, bytes)`), never a metric string, so the
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
    /// Every reason, each exported at 0 from the start.
    pub const ALL: [LineDrop; 1] = [LineDrop::TooLong];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LineDrop::TooLong => "too_long",
        }
    }
}

/// How a log stream failed (`kube_log_relay_stream_errors_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// The container has not started yet (the API answered "waiting to start").
    Waiting,
    /// The pod or the container is gone (404).
    NotFound,
    /// Any other error status from the API server.
    Status,
    /// The request could not be sent or got no answer.
    Connect,
    /// Opening or reading the stream timed out.
    Timeout,
    /// The stream broke while being read.
    Read,
    /// Fetching the pod before opening the stream failed.
    Pod,
}

impl StreamErrorKind {
    /// Every kind, each exported at 0 from the start.
    pub const ALL: [StreamErrorKind; 7] = [
        StreamErrorKind::Waiting,
        StreamErrorKind::NotFound,
        StreamErrorKind::Status,
        StreamErrorKind::Connect,
        StreamErrorKind::Timeout,
        StreamErrorKind::Read,
        StreamErrorKind::Pod,
    ];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamErrorKind::Waiting => "waiting",
            StreamErrorKind::NotFound => "not_found",
            StreamErrorKind::Status => "status",
            StreamErrorKind::Connect => "connect",
            StreamErrorKind::Timeout => "timeout",
            StreamErrorKind::Read => "read",
            StreamErrorKind::Pod => "pod",
        }
    }

    /// The kind whose label is `s`, if any.
    pub fn from_label(s: &str) -> Option<StreamErrorKind> {
        StreamErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The states targets are counted by (`kube_log_relay_targets{state}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetsState {
    Waiting,
    Running,
    Backoff,
    Draining,
    Finished,
    /// Refused by relabelling or validation; never tailed.
    Rejected,
}

impl TargetsState {
    /// Every state, each exported at 0 from the start.
    pub const ALL: [TargetsState; 6] = [
        TargetsState::Waiting,
        TargetsState::Running,
        TargetsState::Backoff,
        TargetsState::Draining,
        TargetsState::Finished,
        TargetsState::Rejected,
    ];

    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetsState::Waiting => "waiting",
            TargetsState::Running => "running",
            TargetsState::Backoff => "backoff",
            TargetsState::Draining => "draining",
            TargetsState::Finished => "finished",
            TargetsState::Rejected => "rejected",
        }
    }
}

/// What a Kubernetes API request did (`kube_log_relay_api_requests_total{verb}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVerb {
    Get,
    List,
    Watch,
    /// `pods/log`.
    Log,
    Create,
    Update,
    Patch,
    Delete,
    /// Anything else (discovery of API groups, …).
    Other,
}

impl ApiVerb {
    /// Every verb, each exported at 0 (with `code="200"`) from the start.
    pub const ALL: [ApiVerb; 9] = [
        ApiVerb::Get,
        ApiVerb::List,
        ApiVerb::Watch,
        ApiVerb::Log,
        ApiVerb::Create,
        ApiVerb::Update,
        ApiVerb::Patch,
        ApiVerb::Delete,
        ApiVerb::Other,
    ];

    /// The `verb` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVerb::Get => "get",
            ApiVerb::List => "list",
            ApiVerb::Watch => "watch",
            ApiVerb::Log => "log",
            ApiVerb::Create => "create",
            ApiVerb::Update => "update",
            ApiVerb::Patch => "patch",
            ApiVerb::Delete => "delete",
            ApiVerb::Other => "other",
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
    /// The receiver was removed by a reload before it could send them.
    ReceiverRemoved,
}

impl SendDrop {
    /// Every reason, each exported at 0 for every receiver from its start.
    pub const ALL: [SendDrop; 6] = [
        SendDrop::Rejected,
        SendDrop::RetriesExhausted,
        SendDrop::QueueFull,
        SendDrop::LineTooLong,
        SendDrop::InvalidLabels,
        SendDrop::ReceiverRemoved,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SendDrop::Rejected => "rejected",
            SendDrop::RetriesExhausted => "retries_exhausted",
            SendDrop::QueueFull => "queue_full",
            SendDrop::LineTooLong => "line_too_long",
            SendDrop::InvalidLabels => "invalid_labels",
            SendDrop::ReceiverRemoved => "receiver_removed",
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
            describe_operations();
            gauge!("kube_log_relay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_initial();
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
        "kube_log_relay_positions_lag_seconds",
        Unit::Seconds,
        "Age of the oldest line read and not yet acknowledged by every receiver."
    );
    describe_counter!(
        "kube_log_relay_position_writes_total",
        "Writes of the positions store."
    );
    describe_counter!(
        "kube_log_relay_position_write_errors_total",
        "Failed writes of the positions store."
    );
    describe_gauge!(
        "kube_log_relay_receiver_queue_bytes",
        Unit::Bytes,
        "Bytes waiting in a receiver's queue."
    );
    describe_gauge!(
        "kube_log_relay_receiver_queue_capacity_bytes",
        Unit::Bytes,
        "A receiver's queue capacity (buffer_size): queue_bytes / capacity is how full it is."
    );
}

/// Lines and bytes read by a tailer (once per chunk: the counters are looked up once, after
/// the recorder is installed, not in the recorder's registry at every call).
pub fn lines_read(lines: u64, bytes: u64) {
    static LINES: OnceLock<metrics::Counter> = OnceLock::new();
    static BYTES: OnceLock<metrics::Counter> = OnceLock::new();
    if HANDLE.get().is_none() {
        // No recorder of ours yet: nothing to keep (a handle taken now would stay a no-op).
        counter!("kube_log_relay_lines_read_total").increment(lines);
        counter!("kube_log_relay_bytes_read_total").increment(bytes);
        return;
    }
    LINES
        .get_or_init(|| counter!("kube_log_relay_lines_read_total"))
        .increment(lines);
    BYTES
        .get_or_init(|| counter!("kube_log_relay_bytes_read_total"))
        .increment(bytes);
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

/// A log stream failed.
pub fn stream_failed(kind: StreamErrorKind) {
    counter!("kube_log_relay_stream_errors_total", "kind" => kind.as_str()).increment(1);
}

/// A log stream failed; `kind` is the label of one of [`StreamErrorKind::ALL`] (an unknown word
/// is a bug, counted anyway so that it shows). Prefer [`stream_failed`].
pub fn stream_error(kind: &'static str) {
    debug_assert!(
        StreamErrorKind::from_label(kind).is_some(),
        "unknown stream error kind {kind:?}: add it to StreamErrorKind"
    );
    counter!("kube_log_relay_stream_errors_total", "kind" => kind).increment(1);
}

/// Number of targets in each state, set by the registry after every change.
pub fn targets_in(state: TargetsState, n: usize) {
    gauge!("kube_log_relay_targets", "state" => state.as_str()).set(n as f64);
}

/// A receiver's queue size.
/// A receiver's queue holds at most `bytes` (its `buffer_size`).
pub fn receiver_queue_capacity(receiver: &str, bytes: usize) {
    gauge!("kube_log_relay_receiver_queue_capacity_bytes", "receiver" => receiver.to_string())
        .set(bytes as f64);
}

/// Bytes now waiting in a receiver's queue.
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
    propagation_latencies(receiver, [latency]);
}

/// The propagation latencies of a batch's chunks (one registry lookup for all of them).
pub fn propagation_latencies(receiver: &str, latencies: impl IntoIterator<Item = Duration>) {
    let histogram = histogram!(
        "loki_write_entry_propagation_latency_seconds",
        "receiver" => receiver.to_string()
    );
    for latency in latencies {
        histogram.record(latency.as_secs_f64());
    }
}

/// The positions store was written.
pub fn position_write() {
    counter!("kube_log_relay_position_writes_total").increment(1);
}

/// Writing the positions store failed.
pub fn position_write_error() {
    counter!("kube_log_relay_position_write_errors_total").increment(1);
}

/// Age of the oldest unacknowledged line.
pub fn positions_lag(lag: Duration) {
    gauge!("kube_log_relay_positions_lag_seconds").set(lag.as_secs_f64());
}

/// The metrics of SPEC §8.2 about operating the relay: the Kubernetes client, reloads and
/// clustering.
fn describe_operations() {
    describe_counter!(
        "kube_log_relay_api_requests_total",
        "Kubernetes API requests, by verb (get, list, watch, log, create, update, patch, delete) and HTTP status code (or \"error\" when no answer came)."
    );
    describe_histogram!(
        "kube_log_relay_api_rate_limit_wait_seconds",
        Unit::Seconds,
        "Time a Kubernetes API request waited for the client-side qps/burst limiter."
    );
    describe_gauge!(
        "kube_log_relay_api_connections",
        "Connections to the Kubernetes API server carrying at least one request or stream."
    );
    describe_gauge!(
        "kube_log_relay_config_last_reload_successful",
        "1 when the last configuration load or reload succeeded, 0 when it was refused."
    );
    describe_gauge!(
        "kube_log_relay_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last successful configuration load or reload."
    );
    describe_gauge!(
        "kube_log_relay_cluster_members",
        "Replicas in the cluster (unexpired Leases); 0 while clustering is disabled."
    );
    describe_gauge!(
        "kube_log_relay_cluster_owned_targets",
        "Targets this replica owns; 0 while clustering is disabled."
    );
    describe_counter!(
        "kube_log_relay_cluster_handovers_total",
        "Targets handed over to or taken over from another replica."
    );
    describe_counter!(
        "kube_log_relay_cluster_lease_errors_total",
        "Failed Lease creations, renewals and deletions."
    );
}

/// Every series whose labels are known up front, at its initial value, so dashboards and alerts
/// see them before the first event. Counters are touched with `increment(0)`, never reset.
fn register_initial() {
    for name in [
        "kube_log_relay_lines_read_total",
        "kube_log_relay_bytes_read_total",
        "kube_log_relay_lines_without_timestamp_total",
        "kube_log_relay_lines_truncated_total",
        "kube_log_relay_stream_opens_total",
        "kube_log_relay_cluster_handovers_total",
        "kube_log_relay_cluster_lease_errors_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in LineDrop::ALL {
        counter!("kube_log_relay_lines_dropped_total", "reason" => reason.as_str()).increment(0);
    }
    for kind in StreamErrorKind::ALL {
        counter!("kube_log_relay_stream_errors_total", "kind" => kind.as_str()).increment(0);
    }
    for state in TargetsState::ALL {
        gauge!("kube_log_relay_targets", "state" => state.as_str()).set(0.0);
    }
    // The status code is not known in advance; each verb is exported with the code a working
    // API server answers, so that `rate(...{verb="log"})` exists before the first request.
    for verb in ApiVerb::ALL {
        counter!("kube_log_relay_api_requests_total", "verb" => verb.as_str(), "code" => "200")
            .increment(0);
    }
    counter!("kube_log_relay_position_writes_total").increment(0);
    counter!("kube_log_relay_position_write_errors_total").increment(0);
    gauge!("kube_log_relay_positions_lag_seconds").set(0.0);
    // No limiter exists yet, so nothing ever waits: the histogram stays empty.
    let _registered = histogram!("kube_log_relay_api_rate_limit_wait_seconds");
    gauge!("kube_log_relay_api_connections").increment(0.0);
    gauge!("kube_log_relay_cluster_members").set(0.0);
    gauge!("kube_log_relay_cluster_owned_targets").set(0.0);
    // Installed when the relay starts with a validated configuration: the initial load.
    config_loaded(true);
}

/// Registers a receiver's series at zero (counters are not reset when they already exist).
pub fn register_receiver(receiver: &str) {
    let r = receiver.to_string();
    counter!("loki_write_sent_entries_total", "receiver" => r.clone()).increment(0);
    counter!("loki_write_sent_bytes_total", "receiver" => r.clone()).increment(0);
    counter!("loki_write_batch_retries_total", "receiver" => r.clone()).increment(0);
    gauge!("kube_log_relay_receiver_queue_bytes", "receiver" => r.clone()).increment(0.0);
    // Registered without an observation: exported with empty buckets.
    let _registered = histogram!("loki_write_request_size_bytes", "receiver" => r.clone());
    let _registered =
        histogram!("loki_write_entry_propagation_latency_seconds", "receiver" => r.clone());
    for reason in SendDrop::ALL {
        counter!("loki_write_dropped_entries_total", "receiver" => r.clone(), "reason" => reason.as_str())
            .increment(0);
        counter!("loki_write_dropped_bytes_total", "receiver" => r.clone(), "reason" => reason.as_str())
            .increment(0);
    }
}

/// One Kubernetes API request finished; `verb` is one of a fixed set, `code` the HTTP status or
/// `"error"`.
pub fn api_request(verb: &'static str, code: &str) {
    debug_assert!(
        ApiVerb::ALL.iter().any(|v| v.as_str() == verb),
        "unknown API verb {verb:?}: add it to ApiVerb"
    );
    counter!("kube_log_relay_api_requests_total", "verb" => verb, "code" => code.to_string())
        .increment(1);
}

/// Connections to the API server in use now.
pub fn api_connections(n: usize) {
    gauge!("kube_log_relay_api_connections").set(n as f64);
}

/// A request waited for the client-side rate limiter.
pub fn api_rate_limit_wait(wait: Duration) {
    histogram!("kube_log_relay_api_rate_limit_wait_seconds").record(wait.as_secs_f64());
}

/// A configuration was loaded (at start) or reloaded: `ok = false` when it was refused and the
/// previous one kept running.
pub fn config_loaded(ok: bool) {
    gauge!("kube_log_relay_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
    if ok {
        gauge!("kube_log_relay_config_last_reload_success_timestamp_seconds")
            .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
    }
}

/// Members of the cluster (unexpired Leases).
pub fn cluster_members(n: usize) {
    gauge!("kube_log_relay_cluster_members").set(n as f64);
}

/// Targets this replica owns.
pub fn cluster_owned_targets(n: usize) {
    gauge!("kube_log_relay_cluster_owned_targets").set(n as f64);
}

/// A target changed owner (handed over or taken over).
pub fn cluster_handover() {
    counter!("kube_log_relay_cluster_handovers_total").increment(1);
}

/// A Lease operation failed.
pub fn cluster_lease_error() {
    counter!("kube_log_relay_cluster_lease_errors_total").increment(1);
}

/// Declares `kube_log_relay_tailer_panics_total` and exports it at 0 (the registry calls this
/// as it starts; kept beside its counter so that this metric stays in one place).
pub fn declare_tailer_panics() {
    describe_counter!(
        "kube_log_relay_tailer_panics_total",
        "Tailers that panicked; each is restarted after a backoff."
    );
    counter!("kube_log_relay_tailer_panics_total").increment(0);
}

/// A tailer panicked; the registry restarts it after a backoff (SPEC §2).
pub fn tailer_panicked() {
    counter!("kube_log_relay_tailer_panics_total").increment(1);
}

/// An OAuth2 client was built (`client` = `kubernetes` or `loki.<name>`): its error series is
/// exported from 0.
pub fn register_oauth2_client(client: &str) {
    describe_counter!(
        "kube_log_relay_oauth2_token_errors_total",
        "Failed OAuth2 token requests, by client (kubernetes or loki.<name>)."
    );
    counter!("kube_log_relay_oauth2_token_errors_total", "client" => client.to_string())
        .increment(0);
}

/// An OAuth2 token request failed (refused, unreachable, unreadable answer or secret file).
pub fn oauth2_token_error(client: &str) {
    counter!("kube_log_relay_oauth2_token_errors_total", "client" => client.to_string())
        .increment(1);
}
