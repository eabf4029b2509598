//! Thousands of streams under a tight client-side rate limit (SPEC §2, §10; issue 15 item 13):
//! one API request per stream open, waiting for a token is never a timeout, so every target
//! delivers within N ÷ qps + 10 s, from a cold start and again after an API outage.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use kube_log_relay::sim::loki::LokiSink;
use kube_log_relay::sim::{ContainerSpec, PodSpec};

use crate::support;

const N: usize = 1_000;
const QPS: usize = 100;

/// Lines received per pod of namespace `scale`.
fn received_per_pod(sink: &LokiSink) -> BTreeMap<String, usize> {
    let mut per_pod = BTreeMap::new();
    for e in sink.entries() {
        if e.labels.get("namespace").map(String::as_str) == Some("scale")
            && let Some(pod) = e.labels.get("pod")
        {
            *per_pod.entry(pod.clone()).or_default() += 1;
        }
    }
    per_pod
}

/// Waits until `done` holds for every pod's count, failing after `deadline`; returns how long
/// it took.
async fn every_pod(
    what: &str,
    sink: &LokiSink,
    deadline: Duration,
    done: impl Fn(&str, usize) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let counts = received_per_pod(sink);
        let behind: Vec<String> = (0..N)
            .map(|i| format!("p{i}"))
            .filter(|p| !done(p, counts.get(p).copied().unwrap_or(0)))
            .collect();
        if behind.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: {} of {N} pods still not delivering after {deadline:?} (e.g. {:?})",
            behind.len(),
            &behind[..behind.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[actix_rt::test]
async fn thousands_of_streams_open_within_n_over_qps_from_cold_and_after_an_outage() {
    let _heavy = support::heavy().await;
    let sim = support::sim().await;
    let sink = support::sink().await;
    for i in 0..N {
        sim.add_pod(
            PodSpec::new("scale", format!("p{i}"))
                .container(ContainerSpec::new("c").rate(1.0).line_size(60)),
        );
    }
    let config = support::base_config(&sim).replace(
        "[kubernetes]\n",
        &format!("[kubernetes]\nqps = {QPS}\nburst = {QPS}\n"),
    ) + &support::loki_table("a", &sink, "");
    let deadline = Duration::from_secs((N / QPS) as u64 + 10);

    let relay = support::relay(&config).await;
    let cold = every_pod("cold start", &sink, deadline, |_, n| n > 0).await;
    eprintln!(
        "{N} streams at qps {QPS}: every target delivering after {cold:?} (bound {deadline:?})"
    );

    // An API outage cuts every stream and fails every reopen for a while.
    sim.set_logs_available(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_outage_end = received_per_pod(&sink);
    sim.set_logs_available(true);
    let after = every_pod("after the outage", &sink, deadline, |pod, n| {
        n > at_outage_end.get(pod).copied().unwrap_or(0)
    })
    .await;
    eprintln!(
        "after a 3 s outage: every target delivering again after {after:?} (bound {deadline:?})"
    );
    relay.shutdown().await;

    let entries = sink.entries();
    let mut seen = HashSet::new();
    let duplicated: Vec<&str> = entries
        .iter()
        .filter(|e| !seen.insert(e.line.as_str()))
        .map(|e| e.line.as_str())
        .take(3)
        .collect();
    assert!(duplicated.is_empty(), "no line twice: {duplicated:?}");
}
