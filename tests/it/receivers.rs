//! Receivers against misbehaving Lokis: isolation, retries, drops (SPEC §4.5, §6).

use std::time::Duration;

use kube_log_relay::sim::loki::Response;
use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, Metrics, all_finished, assert_exactly_once, eventually, lines_of};

mod direct;

/// `namespace`, `pod` and `container` from discovery, then `extra` rules.
fn relabel(extra: &str) -> String {
    let copy = |from: &str, to: &str| {
        format!(
            "\n[[relabel]]\nsource_labels = [\"__meta_kubernetes_{from}\"]\ntarget_label = \"{to}\"\n"
        )
    };
    copy("namespace", "namespace")
        + &copy("pod_name", "pod")
        + &copy("pod_container_name", "container")
        + extra
}

fn job(sim: &kube_log_relay::sim::Sim, name: &str, rate: f64, lines: u64) {
    sim.add_pod(
        PodSpec::new("ns", name)
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(rate).total_lines(lines, 0)),
    );
}

#[actix_rt::test]
async fn a_receiver_failing_with_500_catches_up_while_the_other_keeps_receiving() {
    let sim = support::sim().await;
    let (good, bad) = (support::sink().await, support::sink().await);
    bad.fail_for(500, Duration::from_secs(3));
    job(&sim, "steady", 100.0, 500);
    let config = support::base_config(&sim)
        + &support::loki_table("good", &good, "")
        + &support::loki_table("bad", &bad, "");
    let relay = support::relay(&config).await;

    all_finished(&relay, 1).await;
    eventually("the failing receiver catches up", || {
        bad.entries().len() >= 500
    })
    .await;
    relay.shutdown().await;

    // While the failing receiver still answered 500, the healthy one kept receiving: judged on
    // the sinks' own clocks, so a slow machine cannot make it pass or fail by timing.
    let last_500 = bad
        .requests()
        .iter()
        .filter(|r| r.status == 500)
        .map(|r| r.time)
        .max()
        .expect("the failing receiver was tried");
    let first_accepted = bad
        .requests()
        .iter()
        .find(|r| r.status == 204)
        .map(|r| r.time);
    assert!(
        first_accepted.is_some_and(|t| t > last_500),
        "accepted only after the outage"
    );
    let during = good
        .requests()
        .iter()
        .filter(|r| r.status == 204 && r.time < last_500)
        .map(|r| r.entries)
        .sum::<usize>();
    assert!(
        during > 0,
        "the healthy receiver got nothing while the other one failed"
    );
    let written = sim.written_lines("ns", "steady", "c");
    assert_eq!(lines_of(&good.entries(), "ns", "steady", "c"), written);
    assert_exactly_once(
        "after recovery",
        &written,
        &lines_of(&bad.entries(), "ns", "steady", "c"),
    );
    assert!(
        bad.requests().iter().filter(|r| r.status == 500).count() >= 2,
        "retried"
    );
}

#[actix_rt::test]
async fn a_batch_answered_400_is_dropped_and_not_retried() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sink.script(vec![Response::status(400)]);
    job(&sim, "j", 100.0, 200);
    let relay =
        support::relay(&(support::base_config(&sim) + &support::loki_table("a", &sink, ""))).await;
    all_finished(&relay, 1).await;
    relay.shutdown().await;

    let requests = sink.requests();
    assert_eq!(requests[0].status, 400);
    assert_eq!(requests.iter().filter(|r| r.status == 400).count(), 1);
    let dropped = requests[0].entries;
    assert!(dropped > 0);
    let received = lines_of(&sink.entries(), "ns", "j", "c");
    let written = sim.written_lines("ns", "j", "c");
    // The rejected batch held the first lines; the rest arrived once, none of the rejected ones.
    assert_eq!(received, written[dropped..].to_vec());
}

#[actix_rt::test]
async fn a_429_with_retry_after_is_retried_after_the_wait() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    sink.script(vec![Response::status(429).with_retry_after("2")]);
    job(&sim, "j", 100.0, 100);
    // max_backoff caps every wait, Retry-After included: leave room for the 2 s asked.
    let table = format!(
        "[loki.a]\nurl = \"{}\"\nbatch_wait = \"100ms\"\nmin_backoff = \"100ms\"\nmax_backoff = \"10s\"\n",
        sink.url()
    );
    let relay = support::relay(&(support::base_config(&sim) + &table)).await;
    all_finished(&relay, 1).await;
    eventually("every line arrives", || sink.entries().len() >= 100).await;
    relay.shutdown().await;

    let requests = sink.requests();
    assert_eq!(requests[0].status, 429);
    let gap = requests[1].time.duration_since(requests[0].time);
    assert!(
        gap >= Duration::from_secs(2),
        "retried after {gap:?}, before Retry-After"
    );
    assert_exactly_once(
        "429",
        &sim.written_lines("ns", "j", "c"),
        &lines_of(&sink.entries(), "ns", "j", "c"),
    );
}

#[actix_rt::test]
async fn targets_of_different_tenants_go_in_separate_requests_with_their_org_id() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    for (pod, team) in [("a", Some("team-a")), ("b", Some("team-b")), ("c", None)] {
        let mut spec = PodSpec::new("ns", pod)
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(200.0).total_lines(100, 0));
        if let Some(team) = team {
            spec = spec.label("team", team);
        }
        sim.add_pod(spec);
    }
    let rules = relabel(
        "\n[[relabel]]\nsource_labels = [\"__meta_kubernetes_pod_label_team\"]\ntarget_label = \"__tenant_id__\"\n",
    );
    let config = support::base_config(&sim)
        + &rules
        + &support::loki_table("tenants", &sink, "tenant_id = \"fallback\"");
    let relay = support::relay(&config).await;
    all_finished(&relay, 3).await;
    eventually("every line arrives", || sink.entries().len() >= 300).await;
    relay.shutdown().await;

    let entries = sink.entries();
    for (pod, tenant) in [("a", "team-a"), ("b", "team-b"), ("c", "fallback")] {
        assert_exactly_once(
            pod,
            &sim.written_lines("ns", pod, "c"),
            &lines_of(&entries, "ns", pod, "c"),
        );
        // Every line of the pod came in a request with the pod's X-Scope-OrgID; `__tenant_id__`
        // itself is not a label Loki sees.
        for e in entries.iter().filter(|e| e.labels["pod"] == pod) {
            assert_eq!(e.tenant.as_deref(), Some(tenant), "{pod}");
            assert!(!e.labels.contains_key("__tenant_id__"));
        }
    }
    let requests = sink.requests();
    let tenants: std::collections::BTreeSet<_> =
        requests.iter().filter_map(|r| r.tenant.clone()).collect();
    assert_eq!(
        tenants,
        ["fallback", "team-a", "team-b"].map(String::from).into()
    );
    assert!(
        requests
            .iter()
            .all(|r| r.status == 204 && r.tenant.is_some())
    );
}

#[actix_rt::test]
async fn targets_whose_labels_loki_would_refuse_are_not_sent_and_are_counted() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    // 13 pod labels + namespace, pod, container = 16 names, one over max_label_names.
    let mut wide = PodSpec::new("ns", "wide").restart_policy(RestartPolicy::Never);
    for i in 1..=13 {
        wide = wide.label(format!("l{i:02}"), "v");
    }
    sim.add_pod(wide.container(ContainerSpec::new("c").rate(200.0).total_lines(60, 0)));
    for (pod, label) in [("narrow", "tier"), ("digit", "9lives")] {
        sim.add_pod(
            PodSpec::new("ns", pod)
                .restart_policy(RestartPolicy::Never)
                .label(label, "x")
                .container(ContainerSpec::new("c").rate(200.0).total_lines(40, 0)),
        );
    }
    // Pod labels become labels; `9lives` is a valid Kubernetes label but not a valid Loki name.
    let rules = relabel(
        r#"
[[relabel]]
action = "labelmap"
regex = "__meta_kubernetes_pod_label_(l[0-9]+|tier)"

[[relabel]]
action = "labelmap"
regex = "__meta_kubernetes_pod_label_(9lives)"
"#,
    );
    let config = support::base_config(&sim) + &rules + &support::loki_table("limits", &sink, "");
    let relay = support::relay(&config).await;
    support::eventually_async(
        "both valid targets finish, the third is rejected",
        || async {
            let targets = support::targets(&relay).await;
            let states: Vec<&str> = targets.iter().map(|t| t.state.as_str()).collect();
            states.len() == 3
                && states.iter().filter(|s| **s == "finished").count() == 2
                && states.contains(&"rejected")
        },
    )
    .await;
    let written = sim.written_lines("ns", "narrow", "c");
    eventually("the valid target's lines arrive", || {
        lines_of(&sink.entries(), "ns", "narrow", "c").len() >= written.len()
    })
    .await;

    // The invalid name is refused at discovery, visibly, naming the label: nothing is read.
    let targets = support::targets(&relay).await;
    let digit = targets
        .iter()
        .find(|t| {
            t.discovered_labels
                .get("__meta_kubernetes_pod_name")
                .map(String::as_str)
                == Some("digit")
        })
        .expect("the digit target is listed");
    assert_eq!(digit.state, "rejected");
    assert!(
        digit
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("\"9lives\"")),
        "{:?}",
        digit.reason
    );

    // 16 names reach the receiver, which drops and counts them instead of sending a request
    // Loki would refuse whole.
    let dropped = [("receiver", "limits"), ("reason", "invalid_labels")];
    let wide_lines = sim.written_lines("ns", "wide", "c").len() as f64;
    support::eventually_async("every line of the wide target is counted", || async {
        let m = Metrics::scrape(relay.http_addr()).await;
        m.series("loki_write_dropped_entries_total", &dropped) >= wide_lines
    })
    .await;
    // Scoped to this test's receiver, which no other relay of the process has.
    let m = Metrics::scrape(relay.http_addr()).await;
    assert_eq!(
        m.series("loki_write_dropped_entries_total", &dropped),
        wide_lines,
        "{m:?}"
    );
    assert_eq!(
        m.series("loki_write_sent_entries_total", &[("receiver", "limits")]),
        written.len() as f64
    );
    relay.shutdown().await;
    let entries = sink.entries();
    assert!(lines_of(&entries, "ns", "wide", "c").is_empty());
    assert!(lines_of(&entries, "ns", "digit", "c").is_empty());
    assert_exactly_once("narrow", &written, &lines_of(&entries, "ns", "narrow", "c"));
    assert!(sink.requests().iter().all(|r| r.status == 204));
}
