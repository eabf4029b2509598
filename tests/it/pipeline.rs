//! The whole path, discovery to Loki: exactly once, in order, with the right labels, across cuts.

use std::collections::BTreeSet;
use std::time::Duration;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, all_finished, assert_exactly_once, lines_of};

#[actix_rt::test]
async fn three_pods_of_two_containers_reach_two_receivers_exactly_once_in_order() {
    let sim = support::sim().await;
    let (a, b) = (support::sink().await, support::sink().await);
    for p in 0..3 {
        sim.add_pod(
            PodSpec::new("shop", format!("web-{p}"))
                .label("app", "web")
                .restart_policy(RestartPolicy::Never)
                .owner("Job", "web")
                .container(ContainerSpec::new("app").rate(200.0).total_lines(600, 0))
                .container(
                    ContainerSpec::new("sidecar")
                        .rate(200.0)
                        .total_lines(600, 0),
                ),
        );
    }
    let config = support::base_config(&sim)
        + &support::loki_table("a", &a, "")
        + &support::loki_table("b", &b, "");
    let relay = support::relay(&config).await;
    all_finished(&relay, 6).await;

    let (status, body) = support::http_get(relay.http_addr(), "/api/v1/targets").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"web-2\""),
        "targets page lists the pods: {body}"
    );
    relay.shutdown().await;

    for (name, sink) in [("a", &a), ("b", &b)] {
        let entries = sink.entries();
        assert_eq!(entries.len(), 3600, "receiver {name}");
        for p in 0..3 {
            let pod = format!("web-{p}");
            for c in ["app", "sidecar"] {
                let written = sim.written_lines("shop", &pod, c);
                assert_eq!(written.len(), 600);
                // In order per stream, each line once.
                assert_eq!(
                    lines_of(&entries, "shop", &pod, c),
                    written,
                    "{name}: shop/{pod}/{c}"
                );
            }
        }
        let names: BTreeSet<&str> = entries[0].labels.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            BTreeSet::from(["app", "container", "job", "namespace", "pod"])
        );
        for e in &entries {
            assert!(
                e.labels.keys().all(|k| !k.starts_with("__")),
                "{:?}",
                e.labels
            );
            assert_eq!(e.labels["app"], "web");
            assert_eq!(e.labels["job"], format!("shop/{}", e.labels["container"]));
        }
    }
}

#[actix_rt::test]
async fn cut_streams_shared_timestamps_and_reordering_lose_and_repeat_nothing() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    // A cut every 50 lines re-reads up to the cursor's reorder window on each reconnect, so the
    // rate stays below 50 lines per window to let every stream make progress.
    sim.set_cut_every(Some(50));
    for p in 0..2 {
        sim.add_pod(
            PodSpec::new("cuts", format!("p-{p}"))
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("c")
                        .rate(20.0)
                        .total_lines(300, 0)
                        .same_timestamp_run(6)
                        .stderr_every(5, Duration::from_millis(400)),
                ),
        );
    }
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    all_finished(&relay, 2).await;
    relay.shutdown().await;

    let entries = sink.entries();
    for p in 0..2 {
        let pod = format!("p-{p}");
        let written = sim.written_lines("cuts", &pod, "c");
        assert_eq!(written.len(), 300);
        assert_exactly_once(&pod, &written, &lines_of(&entries, "cuts", &pod, "c"));
        assert!(
            sim.log_opens("cuts", &pod, "c") >= 6,
            "the stream was cut and reopened"
        );
    }
}
