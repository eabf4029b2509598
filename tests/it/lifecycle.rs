//! Container and pod life cycle: restarts, deletion, Jobs, label edits (SPEC §5.4–5.6, §2).

use std::collections::BTreeMap;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, all_finished, assert_exactly_once, eventually, lines_of};

#[actix_rt::test]
async fn a_restart_while_disconnected_delivers_both_instances_once() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        PodSpec::new("ns", "svc")
            .restart_policy(RestartPolicy::OnFailure)
            .container(ContainerSpec::new("c").rate(50.0)),
    );
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    eventually("first lines arrive", || {
        lines_of(&sink.entries(), "ns", "svc", "c").len() >= 20
    })
    .await;

    // The relay loses the API server; meanwhile the container writes more and restarts.
    sim.set_logs_available(false);
    let before = sim.written_count("ns", "svc", "c") as usize;
    sim.wait_written("ns", "svc", "c", before + 25).await;
    sim.restart_container("ns", "svc", "c");
    sim.wait_written("ns", "svc", "c", before + 50).await;
    sim.set_logs_available(true);

    // Let the new instance write a little after the reconnect, then end it for good.
    eventually("new instance's lines arrive", || {
        lines_of(&sink.entries(), "ns", "svc", "c")
            .iter()
            .any(|l| l.contains(" i=1 "))
    })
    .await;
    sim.exit_container("ns", "svc", "c", 0);
    all_finished(&relay, 1).await;
    relay.shutdown().await;

    let written = sim.written_lines("ns", "svc", "c");
    let received = lines_of(&sink.entries(), "ns", "svc", "c");
    assert!(
        written.iter().any(|l| l.contains(" i=0 ")) && written.iter().any(|l| l.contains(" i=1 "))
    );
    assert_exactly_once("restart while disconnected", &written, &received);
    // Each instance in its own order, the old one before the new one.
    assert_eq!(received, written);
}

#[actix_rt::test]
async fn a_deleted_pod_s_last_lines_arrive() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(PodSpec::new("ns", "gone").container(ContainerSpec::new("c").rate(100.0)));
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    eventually("the tailer reads", || {
        !lines_of(&sink.entries(), "ns", "gone", "c").is_empty()
    })
    .await;
    sim.wait_written("ns", "gone", "c", 150).await;
    sim.delete_pod("ns", "gone");
    let written = sim.written_lines("ns", "gone", "c");
    eventually("every line of the deleted pod arrives", || {
        lines_of(&sink.entries(), "ns", "gone", "c").len() >= written.len()
    })
    .await;
    support::eventually_async("the registry forgets the deleted pod", || async {
        support::targets(&relay).await.is_empty()
    })
    .await;
    relay.shutdown().await;
    assert_exactly_once(
        "deleted pod",
        &written,
        &lines_of(&sink.entries(), "ns", "gone", "c"),
    );
}

#[actix_rt::test]
async fn a_job_finishes_and_a_failed_container_is_followed_into_its_next_instance() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        PodSpec::new("batch", "job-1")
            .owner("Job", "job")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(80, 0)),
    );
    // Fails after 40 lines; OnFailure restarts it (new container ID); each instance fails again.
    sim.add_pod(
        PodSpec::new("batch", "flaky")
            .restart_policy(RestartPolicy::OnFailure)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(40, 1)),
    );
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;

    eventually("the flaky container's third instance is read", || {
        lines_of(&sink.entries(), "batch", "flaky", "c")
            .iter()
            .any(|l| l.contains(" i=2 "))
    })
    .await;
    support::eventually_async("the Job's tailer finishes", || async {
        support::targets(&relay)
            .await
            .iter()
            .any(|t| t.id.as_ref().is_some_and(|id| id.pod == "job-1") && t.state == "finished")
    })
    .await;
    let job_written = sim.written_lines("batch", "job-1", "c");
    assert_eq!(job_written.len(), 80);
    assert_eq!(
        lines_of(&sink.entries(), "batch", "job-1", "c"),
        job_written
    );

    // Stop the flaky container for good and check all of its instances arrived once.
    sim.exit_container("batch", "flaky", "c", 0);
    all_finished(&relay, 2).await;
    relay.shutdown().await;
    let written = sim.written_lines("batch", "flaky", "c");
    assert_exactly_once(
        "flaky",
        &written,
        &lines_of(&sink.entries(), "batch", "flaky", "c"),
    );
}

#[actix_rt::test]
async fn a_label_edit_updates_the_stream_in_place_without_reopening() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        PodSpec::new("ns", "web")
            .label("app", "v1")
            .restart_policy(RestartPolicy::OnFailure)
            .container(ContainerSpec::new("c").rate(50.0)),
    );
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    eventually("lines with app=v1", || {
        sink.entries()
            .iter()
            .any(|e| e.labels.get("app").map(String::as_str) == Some("v1"))
    })
    .await;
    let opens = sim.log_opens("ns", "web", "c");

    sim.set_pod_labels(
        "ns",
        "web",
        BTreeMap::from([("app".to_string(), "v2".to_string())]),
    );
    eventually("lines with app=v2", || {
        sink.entries()
            .iter()
            .any(|e| e.labels.get("app").map(String::as_str) == Some("v2"))
    })
    .await;
    assert_eq!(
        sim.log_opens("ns", "web", "c"),
        opens,
        "the stream was not reopened"
    );

    sim.exit_container("ns", "web", "c", 0);
    all_finished(&relay, 1).await;
    relay.shutdown().await;
    let entries = sink.entries();
    // Once v2 appears, no later line carries v1.
    let first_v2 = entries
        .iter()
        .position(|e| e.labels["app"] == "v2")
        .expect("v2 seen");
    assert!(entries[first_v2..].iter().all(|e| e.labels["app"] == "v2"));
    assert_exactly_once(
        "relabelled",
        &sim.written_lines("ns", "web", "c"),
        &lines_of(&entries, "ns", "web", "c"),
    );
}
