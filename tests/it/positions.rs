//! Positions across relay restarts and crashes (SPEC §4.4, §9): the relay runs as a child
//! process with the `file` backend, the simulator and the Loki sinks live in this process and
//! outlive every relay, so the sinks see everything every relay instance sent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use kube_log_relay::sim::loki::{LokiSink, ReceivedEntry};
use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim};

use crate::support::{
    self, Metrics, RelayProcess, assert_exactly_once, eventually, lines_of, multiset,
};

/// How often the test relays write positions.
const SYNC_PERIOD: Duration = Duration::from_millis(200);

/// Where a test relay keeps its positions.
#[derive(Clone, Copy, Debug)]
enum Store {
    /// `backend = "file"` in the test's directory.
    File,
    /// `backend = "kubernetes"`: ConfigMaps in the simulator's namespace [`NAMESPACE`].
    Kubernetes,
}

/// The namespace of the kubernetes backend's ConfigMaps.
const NAMESPACE: &str = "relay";

/// A relay configuration: the simulator, `receivers`, file positions in `dir`, and `extra`.
fn config(sim: &Sim, dir: &Path, receivers: &str, extra: &str) -> String {
    config_with(Store::File, sim, dir, receivers, extra)
}

/// Like [`config`], with the positions in `store`.
fn config_with(store: Store, sim: &Sim, dir: &Path, receivers: &str, extra: &str) -> String {
    if let Store::Kubernetes = store {
        return format!(
            r#"{base}{receivers}
[positions]
backend = "kubernetes"
sync_period = "{sync}ms"

[clustering]
identity = "relay-0"
namespace = "{NAMESPACE}"
{extra}
"#,
            base = support::base_config(sim),
            sync = SYNC_PERIOD.as_millis(),
        );
    }
    format!(
        r#"{base}{receivers}
[positions]
backend = "file"
path = "{path}"
sync_period = "{sync}ms"
{extra}
"#,
        base = support::base_config(sim),
        path = dir.join("positions.json").display(),
        sync = SYNC_PERIOD.as_millis(),
    )
}

/// A Job-like container writing `total` lines at `rate` per second in runs of 5 lines sharing
/// one timestamp, then exiting 0 (restartPolicy Never: its target finishes).
fn steady(pod: &str, rate: f64, total: u64) -> PodSpec {
    PodSpec::new("ns", pod)
        .restart_policy(RestartPolicy::Never)
        .container(
            ContainerSpec::new("c")
                .rate(rate)
                .total_lines(total, 0)
                .same_timestamp_run(5),
        )
}

/// The line number `n=<seq>` the simulator writes into every line.
fn seq_of(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no n=<seq> in {line:?}"))
}

/// Lines received more than once, with their counts.
fn duplicates(received: &[String]) -> BTreeMap<String, usize> {
    multiset(received)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(l, n)| (l.to_string(), n))
        .collect()
}

/// The cursor `(since, skip)` stored for pod `pod`, read from the positions file.
fn stored_cursor(dir: &Path, pod: &str) -> Option<(i64, u64)> {
    let text = std::fs::read_to_string(dir.join("positions.json")).ok()?;
    cursor_in(&text, pod)
}

/// The cursor stored for `pod` in `store`.
fn stored_cursor_in(store: Store, sim: &Sim, dir: &Path, pod: &str) -> Option<(i64, u64)> {
    match store {
        Store::File => stored_cursor(dir, pod),
        Store::Kubernetes => sim
            .config_maps(NAMESPACE)
            .iter()
            .find_map(|cm| cursor_in(cm.data.as_ref()?.get("positions.json")?, pod)),
    }
}

/// The cursor of `pod` in a positions document (the file's and the ConfigMaps' share it).
fn cursor_in(text: &str, pod: &str) -> Option<(i64, u64)> {
    let doc: serde_json::Value = serde_json::from_str(text).expect("positions are JSON");
    doc["positions"].as_array()?.iter().find_map(|p| {
        (p["pod"] == pod).then(|| (p["since"].as_i64().unwrap(), p["skip"].as_u64().unwrap()))
    })
}

fn count(sink: &LokiSink, pod: &str) -> usize {
    lines_of(&sink.entries(), "ns", pod, "c").len()
}

/// Waits until `sink` holds at least every line `sim` wrote for `pod` once.
async fn wait_all_delivered(sim: &Sim, sink: &LokiSink, pod: &str, total: u64) {
    sim.wait_written("ns", pod, "c", total as usize).await;
    let written: BTreeSet<String> = sim.written_lines("ns", pod, "c").into_iter().collect();
    eventually(&format!("every line of {pod} arrives"), || {
        let got: BTreeSet<String> = lines_of(&sink.entries(), "ns", pod, "c")
            .into_iter()
            .collect();
        written.is_subset(&got)
    })
    .await;
}

#[actix_rt::test]
async fn five_graceful_restarts_deliver_every_line_exactly_once() {
    five_graceful_restarts(Store::File).await;
}

/// The same with positions in ConfigMaps, as a single replica without a volume runs.
#[actix_rt::test]
async fn five_graceful_restarts_with_positions_in_config_maps() {
    five_graceful_restarts(Store::Kubernetes).await;
}

async fn five_graceful_restarts(store: Store) {
    const TOTAL: u64 = 2_000;
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let pods = ["steady-a", "steady-b"];
    sim.add_pod(steady(pods[0], 100.0, TOTAL));
    // The second also writes stderr lines stamped 300 ms earlier than their neighbours.
    sim.add_pod(
        PodSpec::new("ns", pods[1])
            .restart_policy(RestartPolicy::Never)
            .container(
                ContainerSpec::new("c")
                    .rate(100.0)
                    .total_lines(TOTAL, 0)
                    .same_timestamp_run(5)
                    .stderr_every(7, Duration::from_millis(300)),
            ),
    );
    let text = config_with(
        store,
        &sim,
        dir.path(),
        &support::loki_table("a", &sink, ""),
        "",
    );

    for round in 0..5 {
        let mut relay = RelayProcess::start(dir.path(), &text, round);
        // Each run delivers new lines of every container before it is stopped.
        let before: Vec<usize> = pods.iter().map(|p| count(&sink, p)).collect();
        eventually(&format!("run {round} delivers new lines"), || {
            relay.alive()
                && pods
                    .iter()
                    .zip(&before)
                    .all(|(p, b)| count(&sink, p) >= b + 50)
        })
        .await;
        relay.terminate().await;
    }
    let mid_stream = pods.iter().all(|p| sim.written_count("ns", p, "c") < TOTAL);
    assert!(
        mid_stream,
        "the containers were still writing through the five restarts"
    );

    let relay = RelayProcess::start(dir.path(), &text, 5);
    for pod in pods {
        wait_all_delivered(&sim, &sink, pod, TOTAL).await;
    }
    relay.terminate().await;

    for pod in pods {
        let written = sim.written_lines("ns", pod, "c");
        assert_eq!(written.len() as u64, TOTAL);
        let received = lines_of(&sink.entries(), "ns", pod, "c");
        eprintln!(
            "graceful restarts, {pod}: written {}, received {}, duplicates {}, missing {}",
            written.len(),
            received.len(),
            duplicates(&received).len(),
            written.len() - multiset(&received).len().min(written.len())
        );
        assert_exactly_once(pod, &written, &received);
        assert!(
            stored_cursor_in(store, &sim, dir.path(), pod).is_some(),
            "{pod} has a stored position"
        );
    }
}

#[actix_rt::test]
async fn after_a_crash_only_unsaved_acknowledged_lines_come_again() {
    crash_repeats_only_unsaved_lines(Store::File).await;
}

/// The same with positions in ConfigMaps.
#[actix_rt::test]
async fn after_a_crash_with_positions_in_config_maps_only_unsaved_lines_come_again() {
    crash_repeats_only_unsaved_lines(Store::Kubernetes).await;
}

async fn crash_repeats_only_unsaved_lines(store: Store) {
    const TOTAL: u64 = 1_500;
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let pod = "crashy";
    sim.add_pod(steady(pod, 100.0, TOTAL));
    let text = config_with(
        store,
        &sim,
        dir.path(),
        &support::loki_table("a", &sink, ""),
        "",
    );

    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    eventually("the first run delivers 300 lines", || {
        relay.alive() && count(&sink, pod) >= 300
    })
    .await;
    let killed_at = Timestamp::now();
    relay.kill().await;
    // Nothing arrives from a dead relay: this is what it delivered, and what it had committed.
    let before: Vec<ReceivedEntry> = sink
        .entries()
        .into_iter()
        .filter(|e| e.labels.get("pod").map(String::as_str) == Some(pod))
        .collect();
    let committed = stored_cursor_in(store, &sim, dir.path(), pod);

    let relay = RelayProcess::start(dir.path(), &text, 1);
    wait_all_delivered(&sim, &sink, pod, TOTAL).await;
    relay.terminate().await;

    let written = sim.written_lines("ns", pod, "c");
    let received = lines_of(&sink.entries(), "ns", pod, "c");
    let got = multiset(&received);
    let missing: Vec<_> = written
        .iter()
        .filter(|l| !got.contains_key(l.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "lost after a crash: {} lines, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let dups = duplicates(&received);
    assert!(
        dups.values().all(|n| *n == 2),
        "a line came more than twice: {dups:?}"
    );

    // The committed cursor says which line comes next: the lines stamped before `since`, then
    // `skip` more (timestamps never decrease in this log). Exactly the lines delivered before
    // the crash from that line on must have come again — no others.
    let timestamps: BTreeMap<u64, Timestamp> = before
        .iter()
        .map(|e| (seq_of(&e.line), e.timestamp))
        .collect();
    let next = committed.map_or(0, |(since, skip)| {
        let older = written
            .iter()
            .map(|l| seq_of(l))
            .filter(|n| timestamps.get(n).is_some_and(|t| t.as_second() < since))
            .count() as u64;
        older + skip
    });
    let expected: BTreeSet<u64> = before
        .iter()
        .map(|e| seq_of(&e.line))
        .filter(|n| *n >= next)
        .collect();
    let got_dups: BTreeSet<u64> = dups.keys().map(|l| seq_of(l)).collect();
    assert_eq!(
        got_dups, expected,
        "duplicates are the delivered lines after the committed cursor {committed:?}"
    );

    // And those are only lines acknowledged within the last sync period (plus the write's own
    // latency, generous on a loaded 2-core CI machine) before the crash: older ones were
    // committed. The exact check above is the invariant; this one bounds it in time.
    let bound = jiff::SignedDuration::try_from(SYNC_PERIOD + Duration::from_secs(3)).unwrap();
    let oldest_dup = before
        .iter()
        .filter(|e| got_dups.contains(&seq_of(&e.line)))
        .map(|e| e.received_at)
        .min();
    if let Some(oldest) = oldest_dup {
        assert!(
            killed_at.duration_since(oldest) <= bound,
            "a line delivered {} before the crash came again (bound {bound})",
            killed_at.duration_since(oldest)
        );
    }
    eprintln!(
        "crash: written {}, delivered before the kill {}, committed cursor {committed:?} (next line n={next}), duplicates {}, missing {}",
        written.len(),
        before.len(),
        got_dups.len(),
        missing.len()
    );
}

#[actix_rt::test]
async fn lines_queued_for_a_receiver_down_across_a_restart_arrive_after_it() {
    const TOTAL: u64 = 1_200;
    let sim = support::sim().await;
    let up = support::sink().await;
    let down = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let pod = "held";
    sim.add_pod(steady(pod, 100.0, TOTAL));
    let retry_forever = "max_retries = 100000";
    let receivers = support::loki_table("up", &up, retry_forever)
        + &support::loki_table("down", &down, retry_forever);
    let text = config(&sim, dir.path(), &receivers, "[shutdown]\ntimeout = \"1s\"");

    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    eventually("both receivers deliver", || {
        relay.alive() && count(&down, pod) >= 100
    })
    .await;
    // Loki "down" fails from now on; "up" goes on, "down" queues.
    down.fail_for(503, Duration::from_secs(3600));
    let held_at = count(&down, pod);
    eventually("the healthy receiver gets ahead", || {
        count(&up, pod) >= held_at + 200
    })
    .await;
    // The flush cannot finish for "down" within the timeout: the relay still exits 0, and its
    // positions stay behind what "down" has not acknowledged.
    relay.terminate().await;
    let up_before = lines_of(&up.entries(), "ns", pod, "c");
    let down_before = lines_of(&down.entries(), "ns", pod, "c");

    down.fail_for(503, Duration::ZERO);
    let relay = RelayProcess::start(dir.path(), &text, 1);
    wait_all_delivered(&sim, &down, pod, TOTAL).await;
    wait_all_delivered(&sim, &up, pod, TOTAL).await;
    relay.terminate().await;

    let written = sim.written_lines("ns", pod, "c");
    let down_all = lines_of(&down.entries(), "ns", pod, "c");
    assert_exactly_once("the receiver that was down", &written, &down_all);
    // "up" got again exactly the lines "down" had not acknowledged before the stop.
    let up_all = lines_of(&up.entries(), "ns", pod, "c");
    let got = multiset(&up_all);
    assert!(
        written.iter().all(|l| got.contains_key(l.as_str())),
        "the healthy receiver lost lines"
    );
    let down_had: BTreeSet<&String> = down_before.iter().collect();
    let expected: BTreeSet<String> = up_before
        .iter()
        .filter(|l| !down_had.contains(l))
        .cloned()
        .collect();
    let up_dups: BTreeSet<String> = duplicates(&up_all).into_keys().collect();
    assert_eq!(
        up_dups, expected,
        "the healthy receiver's repeats are the lines held back for the other"
    );
    eprintln!(
        "receiver down: written {}, queued for it at the stop {}, it received {} (duplicates {}), the healthy one repeated {}",
        written.len(),
        up_before.len() - down_before.len(),
        down_all.len(),
        duplicates(&down_all).len(),
        up_dups.len()
    );
}

#[actix_rt::test]
async fn a_corrupt_positions_file_stops_the_start_naming_it() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("positions.json");
    std::fs::write(&path, b"{\"version\": 1, \"positi").unwrap();
    let text = config(&sim, dir.path(), &support::loki_table("a", &sink, ""), "");
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    let status = relay.wait().await;
    let log = relay.log();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(&path.display().to_string()) && log.contains("corrupt"),
        "the error names the file: {log}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"version\": 1, \"positi",
        "the file is left as it was"
    );
}

#[actix_rt::test]
async fn position_writes_and_lag_are_measured() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let pod = "measured";
    sim.add_pod(steady(pod, 100.0, 100_000));
    let text = config(
        &sim,
        dir.path(),
        &support::loki_table("a", &sink, "max_retries = 100000"),
        "[shutdown]\ntimeout = \"500ms\"",
    );
    // A process of its own: the lag gauge and the write counters are process-wide.
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    let addr = relay.http_addr().await;
    support::eventually_async("positions are written while Loki acknowledges", || async {
        let m = Metrics::scrape(addr).await;
        m.series("kube_log_relay_position_writes_total", &[]) >= 2.0
            && m.series("kube_log_relay_position_write_errors_total", &[]) == 0.0
            && m.series("kube_log_relay_positions_lag_seconds", &[]) < 1.0
    })
    .await;
    assert!(
        stored_cursor(dir.path(), pod).is_some(),
        "the file holds the pod's position"
    );

    // Loki fails: nothing is acknowledged any more, so the oldest unacknowledged line ages.
    sink.fail_for(503, Duration::from_secs(3600));
    support::eventually_async("the lag grows while nothing is acknowledged", || async {
        let m = Metrics::scrape(addr).await;
        m.series("kube_log_relay_positions_lag_seconds", &[]) >= 1.5
    })
    .await;
    assert!(relay.alive());
    relay.kill().await;
}

#[actix_rt::test]
async fn a_container_restarted_while_the_relay_was_down_is_resumed_exactly() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let pod = "restarted";
    sim.add_pod(
        PodSpec::new("ns", pod)
            .restart_policy(RestartPolicy::OnFailure)
            .container(ContainerSpec::new("c").rate(50.0).same_timestamp_run(5)),
    );
    let text = config(&sim, dir.path(), &support::loki_table("a", &sink, ""), "");
    let mut relay = RelayProcess::start(dir.path(), &text, 0);
    eventually("the first run delivers", || {
        relay.alive() && count(&sink, pod) >= 50
    })
    .await;
    relay.terminate().await;

    // While no relay runs, the old instance writes more, then the container restarts and the
    // new instance writes too.
    let n = sim.written_count("ns", pod, "c") as usize;
    sim.wait_written("ns", pod, "c", n + 25).await;
    sim.restart_container("ns", pod, "c");
    sim.wait_written("ns", pod, "c", n + 50).await;

    let relay = RelayProcess::start(dir.path(), &text, 1);
    eventually("the new instance's lines arrive", || {
        lines_of(&sink.entries(), "ns", pod, "c")
            .iter()
            .any(|l| l.contains(" i=1 "))
    })
    .await;
    sim.exit_container("ns", pod, "c", 0);
    let total = sim.written_count("ns", pod, "c");
    wait_all_delivered(&sim, &sink, pod, total).await;
    relay.terminate().await;

    let written = sim.written_lines("ns", pod, "c");
    let received = lines_of(&sink.entries(), "ns", pod, "c");
    assert!(
        written.iter().any(|l| l.contains(" i=0 ")) && written.iter().any(|l| l.contains(" i=1 "))
    );
    eprintln!(
        "restart while down: written {} (two instances), received {}, duplicates {}",
        written.len(),
        received.len(),
        duplicates(&received).len()
    );
    assert_exactly_once(
        "container restarted while the relay was down",
        &written,
        &received,
    );
    assert_eq!(
        received, written,
        "the old instance's remainder first, then the new one"
    );
}

#[actix_rt::test]
async fn start_from_end_skips_what_was_written_before_and_delivers_everything_after() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        PodSpec::new("ns", "old")
            .restart_policy(kube_log_relay::sim::RestartPolicy::OnFailure)
            .container(kube_log_relay::sim::ContainerSpec::new("c").rate(50.0)),
    );
    sim.wait_written("ns", "old", "c", 100).await;
    let text = support::base_config(&sim).replacen("[tail]\n", "[tail]\nstart_from = \"end\"\n", 1)
        + &support::loki_table("a", &sink, "");
    let relay = support::relay(&text).await;
    support::eventually("lines written after the start arrive", || {
        count(&sink, "old") >= 50
    })
    .await;
    sim.exit_container("ns", "old", "c", 0);
    support::all_finished(&relay, 1).await;
    relay.shutdown().await;

    let written = sim.written_lines("ns", "old", "c");
    let received = support::lines_of(&sink.entries(), "ns", "old", "c");
    // Nothing from the first 100 lines (written before the relay started); from the first line
    // received on, every line once and in order, up to the container's end.
    assert!(
        received.iter().all(|l| seq_of(l) >= 100),
        "an old line arrived: {:?}",
        received.first()
    );
    let first = seq_of(&received[0]) as usize;
    assert_eq!(received, written[first..].to_vec());
}
