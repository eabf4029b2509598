//! Tailer faults: a panicking tailer, a pod that vanishes while its stream is down
//! (SPEC §2, §5.6; issue 15 items 1 and 11).

use std::time::{Duration, Instant};

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, all_finished, assert_exactly_once, eventually, lines_of};

/// Issue 15 item 1: a tailer that panics is restarted (not marked finished), with backoff,
/// the panic shown on the status page, and no line lost or repeated.
#[actix_rt::test]
async fn a_tailer_that_panics_is_restarted_with_backoff() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    // Its first three tailers panic as they start; the fourth reads.
    kube_log_relay::tail::fault::panic_at_start("panicky", 3);
    sim.add_pod(
        PodSpec::new("ns", "panicky")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(60, 0)),
    );
    let start = Instant::now();
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    eventually("every line arrives despite the panics", || {
        lines_of(&sink.entries(), "ns", "panicky", "c").len() >= 60
    })
    .await;
    // Three restarts after min_backoff = 50 ms doubling, each jittered to at least half:
    // 25 + 50 + 100 ms at the very least. Spinning would take microseconds.
    assert!(
        start.elapsed() >= Duration::from_millis(175),
        "restarts back off: {:?}",
        start.elapsed()
    );
    all_finished(&relay, 1).await;
    let target = support::targets(&relay).await.remove(0);
    let error = target.status.and_then(|s| s.last_error).unwrap_or_default();
    assert!(
        error.contains("tailer panicked: injected panic for ns/panicky/c"),
        "the panic is on the status page: {error:?}"
    );
    relay.shutdown().await;
    assert_exactly_once(
        "after three panics",
        &sim.written_lines("ns", "panicky", "c"),
        &lines_of(&sink.entries(), "ns", "panicky", "c"),
    );
}

/// Issue 15 item 11: a target that vanishes while its stream is down (in backoff, the API
/// failing) still gets its remainder read from the cursor once the API answers again within
/// `terminated_grace`. The target vanishes by relabelling (its pod keeps existing), because the
/// simulator forgets a deleted pod's log at once where the API server serves it during the
/// pod's grace period; the tailer cannot tell the two apart: both are a drain (SPEC §5.6).
#[actix_rt::test]
async fn a_target_vanishing_while_its_stream_is_down_is_read_to_its_end() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        PodSpec::new("ns", "late")
            .label("gone", "no")
            .container(ContainerSpec::new("c").rate(50.0)),
    );
    let rules = r#"
[[relabel]]
source_labels = ["__meta_kubernetes_pod_label_gone"]
regex = "yes"
action = "drop"

[[relabel]]
source_labels = ["__meta_kubernetes_namespace"]
target_label = "namespace"

[[relabel]]
source_labels = ["__meta_kubernetes_pod_name"]
target_label = "pod"

[[relabel]]
source_labels = ["__meta_kubernetes_pod_container_name"]
target_label = "container"
"#;
    let config = support::base_config(&sim)
        .replace(r#"terminated_grace = "1s""#, r#"terminated_grace = "10s""#)
        + &support::loki_table("a", &sink, "")
        + rules;
    let relay = support::relay(&config).await;
    eventually("the tailer reads", || {
        lines_of(&sink.entries(), "ns", "late", "c").len() >= 10
    })
    .await;

    // The stream is cut and every reopen fails: the tailer backs off.
    sim.set_logs_available(false);
    let before = sim.written_count("ns", "late", "c") as usize;
    sim.wait_written("ns", "late", "c", before + 25).await;
    let state = || async {
        support::targets(&relay)
            .await
            .first()
            .map(|t| t.state.clone())
            .unwrap_or_default()
    };
    support::eventually_async("the tailer is in backoff", || async {
        state().await == "backoff"
    })
    .await;

    // The target vanishes while the API still fails; then the API is back.
    sim.set_pod_labels(
        "ns",
        "late",
        [("gone".to_string(), "yes".to_string())].into(),
    );
    support::eventually_async("the tailer drains", || async {
        state().await == "draining"
    })
    .await;
    let written_before_drain = sim.written_count("ns", "late", "c") as usize;
    sim.set_logs_available(true);
    support::eventually_async("the registry forgets the drained target", || async {
        support::targets(&relay).await.is_empty()
    })
    .await;
    relay.shutdown().await;

    let written = sim.written_lines("ns", "late", "c");
    let received = lines_of(&sink.entries(), "ns", "late", "c");
    assert!(
        received.len() >= written_before_drain,
        "the lines written before the drain arrived: {} of {written_before_drain}",
        received.len()
    );
    assert_exactly_once(
        "drained after an outage",
        &written[..received.len()],
        &received,
    );
    assert_eq!(received, written[..received.len()], "in order");
}
