//! Receivers against misbehaving Lokis: isolation, retries, drops (SPEC §4.5, §6).

use std::time::Duration;

use kube_log_relay::sim::loki::Response;
use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

use crate::support::{self, all_finished, assert_exactly_once, eventually, lines_of};

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

    // While the failing receiver still answers 500, the healthy one keeps receiving.
    eventually("the healthy receiver gets lines", || {
        good.entries().len() >= 100
    })
    .await;
    assert!(
        bad.entries().is_empty(),
        "the failing receiver accepted nothing yet"
    );
    assert!(
        bad.requests().iter().any(|r| r.status == 500),
        "it was tried"
    );

    all_finished(&relay, 1).await;
    eventually("the failing receiver catches up", || {
        bad.entries().len() >= 500
    })
    .await;
    relay.shutdown().await;
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
