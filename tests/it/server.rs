//! The HTTP endpoints of a running relay (SPEC §8.2, §8.3): metrics, health, the debug API and
//! the status page, read over real sockets.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim};
use kube_log_relay::telemetry::{ApiVerb, LineDrop, SendDrop, StreamErrorKind, TargetsState};
use prometheus_parse::Value;
use serde_json::json;

use crate::support::{
    self, Metrics, RelayProcess, all_finished, eventually, eventually_async, http_get,
};

/// A Job-like pod whose one container writes `lines` lines and exits.
fn job(sim: &Sim, namespace: &str, pod: &str, lines: u64) {
    sim.add_pod(
        PodSpec::new(namespace, pod)
            .label("app", "web")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("app").rate(200.0).total_lines(lines, 0)),
    );
}

/// The metric names of README's metrics table (the first column of each row).
fn readme_metrics() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Metrics section");
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The states of every target, as the child relay at `addr` serves them.
async fn states(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http_get(addr, "/api/v1/targets").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["targets"]
        .as_array()
        .expect("a list of targets")
        .iter()
        .map(|t| t["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the relay at `addr` has exactly `n` targets, all in `state`.
async fn all_in_state(relay: &mut RelayProcess, addr: SocketAddr, n: usize, state: &str) {
    let start = std::time::Instant::now();
    loop {
        relay.alive();
        let s = states(addr).await;
        if s.len() == n && s.iter().all(|x| x == state) {
            return;
        }
        assert!(
            start.elapsed() < support::DEADLINE,
            "timed out after {:?} waiting for {n} targets {state}; have {s:?}; relay log:\n{}",
            support::DEADLINE,
            relay.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs `promtool check metrics` on `text`: whether it passed, and what it said.
fn promtool_check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("promtool reads the metrics");
    let out = child.wait_with_output().expect("promtool runs");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), report)
}

/// A relay process whose metrics nobody else records into (the recorder is process-wide).
fn relay_process(dir: &Path, sim: &Sim, receivers: &str) -> RelayProcess {
    RelayProcess::start(dir, &(support::base_config(sim) + receivers), 0)
}

#[actix_rt::test]
async fn a_fresh_relay_exports_every_series_with_known_labels_at_zero() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = relay_process(dir.path(), &sim, &support::loki_table("primary", &sink, ""));
    let m = Metrics::scrape(relay.http_addr().await).await;

    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            m.get(name, labels),
            Some(0.0),
            "{name}{labels:?} at 0 on a fresh relay; served:\n{}",
            m.text()
        );
    };
    for kind in StreamErrorKind::ALL {
        zero(
            "kube_log_relay_stream_errors_total",
            &[("kind", kind.as_str())],
        );
    }
    for reason in LineDrop::ALL {
        zero(
            "kube_log_relay_lines_dropped_total",
            &[("reason", reason.as_str())],
        );
    }
    for state in TargetsState::ALL {
        zero("kube_log_relay_targets", &[("state", state.as_str())]);
    }
    for verb in ApiVerb::ALL {
        // The pod list and watch may have been answered already.
        assert!(
            m.get(
                "kube_log_relay_api_requests_total",
                &[("verb", verb.as_str()), ("code", "200")]
            )
            .is_some(),
            "verb {} is exported from the start:\n{}",
            verb.as_str(),
            m.text()
        );
    }
    let primary = [("receiver", "primary")];
    for reason in SendDrop::ALL {
        let labels = [("receiver", "primary"), ("reason", reason.as_str())];
        zero("loki_write_dropped_entries_total", &labels);
        zero("loki_write_dropped_bytes_total", &labels);
    }
    for name in [
        "loki_write_sent_entries_total",
        "loki_write_sent_bytes_total",
        "loki_write_batch_retries_total",
        "kube_log_relay_receiver_queue_bytes",
    ] {
        zero(name, &primary);
    }
    for name in [
        "loki_write_request_size_bytes",
        "loki_write_entry_propagation_latency_seconds",
    ] {
        let histograms = m.samples(name);
        assert!(
            matches!(histograms.as_slice(), [(l, Value::Histogram(b))]
                if l.get("receiver").map(String::as_str) == Some("primary")
                    && b.iter().all(|b| b.count == 0.0)),
            "{name} of receiver primary, empty, on a fresh relay: {histograms:?}"
        );
    }
    for name in [
        "kube_log_relay_lines_read_total",
        "kube_log_relay_stream_opens_total",
        "kube_log_relay_position_writes_total",
        "kube_log_relay_position_write_errors_total",
        "kube_log_relay_cluster_handovers_total",
    ] {
        zero(name, &[]);
    }
    relay.terminate().await;
}

#[actix_rt::test]
async fn metrics_parse_and_hold_every_documented_metric() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    job(&sim, "shop", "web-0", 300);
    job(&sim, "shop", "web-1", 20);
    // An API outage first: the log requests fail (503) and are counted as stream errors.
    sim.set_logs_available(false);
    let mut relay = relay_process(
        dir.path(),
        &sim,
        &support::loki_table("metrics_probe", &sink, ""),
    );
    let addr = relay.http_addr().await;
    all_in_state(&mut relay, addr, 2, "backoff").await;
    sim.set_logs_available(true);
    all_in_state(&mut relay, addr, 2, "finished").await;
    eventually("every line reached the sink", || {
        sink.entries().len() == 320
    })
    .await;

    let m = Metrics::scrape(addr).await;
    let text = m.text();

    let documented = readme_metrics();
    for name in [
        "kube_log_relay_api_connections",
        "process_threads",
        "loki_write_sent_entries_total",
    ] {
        assert!(
            documented.iter().any(|d| d == name),
            "README table lacks {name}: {documented:?}"
        );
    }
    let mut missing = Vec::new();
    for name in &documented {
        let described = m.is_described(name);
        let sampled = !m.samples(name).is_empty();
        if !(described && sampled) {
            missing.push(format!("{name} (help: {described}, samples: {sampled})"));
        }
    }
    assert!(
        missing.is_empty(),
        "missing from /metrics: {missing:#?}\n{text}"
    );
    // …and nothing exported goes undocumented.
    let exported: BTreeSet<&String> = m.described().collect();
    let documented: BTreeSet<&String> = documented.iter().collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    assert!(undocumented.is_empty(), "not in README: {undocumented:?}");

    // Exact values: this process's recorder counts this relay alone.
    let probe = [("receiver", "metrics_probe")];
    assert_eq!(m.series("loki_write_sent_entries_total", &probe), 320.0);
    assert_eq!(
        m.series(
            "loki_write_dropped_entries_total",
            &[("receiver", "metrics_probe"), ("reason", "rejected")]
        ),
        0.0
    );
    // The gauge counts a tailer as finished once it has finished.
    let m = Metrics::scrape_until(addr, "both targets counted as finished", |m| {
        m.series("kube_log_relay_targets", &[("state", "finished")]) == 2.0
    })
    .await;
    assert_eq!(
        m.series("kube_log_relay_targets", &[("state", "backoff")]),
        0.0
    );
    assert_eq!(
        m.series("kube_log_relay_config_last_reload_successful", &[]),
        1.0
    );
    assert!(
        m.series(
            "kube_log_relay_config_last_reload_success_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    assert!(m.series("kube_log_relay_lines_read_total", &[]) >= 320.0);
    assert!(m.series("kube_log_relay_stream_errors_total", &[("kind", "status")]) >= 2.0);
    assert_eq!(
        m.series("kube_log_relay_stream_errors_total", &[("kind", "read")]),
        0.0
    );
    let api = |verb: &str, code: &str| {
        m.series(
            "kube_log_relay_api_requests_total",
            &[("verb", verb), ("code", code)],
        )
    };
    assert!(api("log", "503") >= 2.0);
    assert!(api("log", "200") >= 2.0);
    assert!(api("list", "200") >= 1.0);
    assert!(api("watch", "200") >= 1.0);
    assert_eq!(api("delete", "200"), 0.0);
    // The pod watch stays open: at least its connection is in use.
    assert!(m.series("kube_log_relay_api_connections", &[]) >= 1.0);
    assert_eq!(m.series("kube_log_relay_cluster_members", &[]), 0.0);
    assert!(m.series("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.series("process_open_fds", &[]) >= 3.0);

    // Prometheus's own linter agrees (names, units, help texts, histogram shapes).
    if let Some(promtool) = support::require_tool(&["promtool"], "apt-get install prometheus") {
        let (ok, report) = promtool_check_metrics(&promtool, text);
        assert!(ok, "promtool check metrics: {report}\n{text}");
    }

    // Real histograms: cumulative buckets ending with +Inf.
    let durations = m.samples("loki_write_request_duration_seconds");
    let (labels, Value::Histogram(buckets)) = durations
        .iter()
        .find(|(l, _)| l.get("status_code").map(String::as_str) == Some("204"))
        .expect("a histogram of successful pushes")
    else {
        panic!("loki_write_request_duration_seconds is not a histogram");
    };
    assert_eq!(labels["receiver"], "metrics_probe");
    assert_eq!(buckets.len(), 14, "13 buckets and +Inf: {buckets:?}");
    assert!(buckets.last().expect("+Inf").less_than.is_infinite());
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert!(buckets.last().expect("+Inf").count >= 1.0);
    relay.terminate().await;
}

/// Every secret of this configuration, none of which may appear in `/api/v1/config`.
const SECRETS: [&str; 4] = [
    "kube-bearer-7f3a",
    "loki-password-91c2",
    "loki-header-5d0e",
    "loki-userinfo-33ab",
];

#[actix_rt::test]
async fn the_config_endpoint_redacts_every_secret() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let sink_addr = sink.url().replace("http://", "");
    let config = format!(
        r#"
[kubernetes]
api_server = "{api}"
bearer_token = "{bearer}"

[server]
listen = "127.0.0.1:0"

[loki.x]
url = "{sink}"
headers = {{ "X-Api-Key" = "{header}" }}

[loki.x.basic_auth]
username = "relay"
password = "{password}"

[loki.y]
url = "http://user:{userinfo}@{sink_addr}"
"#,
        api = sim.url(),
        bearer = SECRETS[0],
        password = SECRETS[1],
        header = SECRETS[2],
        userinfo = SECRETS[3],
        sink = sink.url(),
    );
    let relay = support::relay(&config).await;
    let (status, body) = http_get(relay.http_addr(), "/api/v1/config").await;
    assert_eq!(status, 200);
    for secret in SECRETS {
        assert!(!body.contains(secret), "{secret} is served: {body}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["kubernetes"]["bearer_token"], "<secret>");
    assert_eq!(v["kubernetes"]["api_server"], sim.url());
    assert_eq!(
        v["loki"]["x"]["basic_auth"],
        json!({ "username": "relay", "password": "<secret>" })
    );
    assert_eq!(
        v["loki"]["x"]["headers"],
        json!({ "X-Api-Key": "<secret>" })
    );
    assert_eq!(v["loki"]["x"]["url"], sink.url());
    assert_eq!(
        v["loki"]["y"]["url"],
        format!("http://<secret>@{sink_addr}")
    );
    assert_eq!(v["server"]["listen"], "127.0.0.1:0");
    assert_eq!(v["tail"]["max_line_size"], 256 * 1024);
    relay.shutdown().await;
}

#[actix_rt::test]
async fn targets_and_receivers_json_for_a_known_pod() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    job(&sim, "shop", "web-0", 40);
    // A static target without a pod UID: rejected, with the reason.
    let config = support::base_config(&sim)
        + &support::loki_table("primary", &sink, "")
        + r#"
[[targets]]
labels = { __pod_namespace__ = "ops", __pod_name__ = "odd", __pod_container_name__ = "c" }
"#;
    let relay = support::relay(&config).await;
    eventually_async(
        "web-0 finished and the static target was rejected",
        || async {
            let t = support::targets(&relay).await;
            let mut states: Vec<&str> = t.iter().map(|v| v.state.as_str()).collect();
            states.sort();
            states == ["finished", "rejected"]
        },
    )
    .await;
    eventually("every line reached the sink", || sink.entries().len() == 40).await;
    // The sink holds the lines a moment before the relay has its answer to the push.
    eventually_async("every chunk of web-0 acknowledged", || async {
        let (_, body) = http_get(relay.http_addr(), "/api/v1/targets?namespace=shop").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["targets"][0]["status"]["chunks_in_flight"] == 0
    })
    .await;

    let written = sim.written_lines("shop", "web-0", "app");
    let uid = sim
        .cluster()
        .get("shop", "web-0")
        .and_then(|p| p.metadata.uid.clone())
        .expect("the pod has a UID");
    let (status, body) = http_get(relay.http_addr(), "/api/v1/targets?namespace=shop").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["synced"], true);
    let targets = v["targets"].as_array().expect("a list");
    assert_eq!(targets.len(), 1, "{body}");
    let t = &targets[0];
    assert_eq!(
        t["id"],
        json!({ "namespace": "shop", "pod": "web-0", "container": "app", "uid": uid })
    );
    assert_eq!(
        t["labels"],
        json!({ "app": "web", "container": "app", "job": "shop/app", "namespace": "shop", "pod": "web-0" })
    );
    assert_eq!(
        t["discovered_labels"]["__meta_kubernetes_pod_uid"],
        uid.as_str()
    );
    assert_eq!(t["state"], "finished");
    assert_eq!(t["reason"], serde_json::Value::Null);
    let st = &t["status"];
    assert_eq!(st["state"], "finished");
    assert_eq!(st["lines"], 40);
    assert_eq!(st["bytes"], written.iter().map(String::len).sum::<usize>());
    assert!(st["reconnects"].is_u64(), "{st}");
    assert_eq!(st["last_error"], serde_json::Value::Null);
    assert_eq!(st["chunks_in_flight"], 0);
    assert!(st["last_read"].is_string() && st["last_entry_timestamp"].is_string());
    assert!(st["cursor_since"].is_string());

    let (_, body) = http_get(relay.http_addr(), "/api/v1/targets?state=rejected").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let rejected = v["targets"].as_array().expect("a list");
    assert_eq!(rejected.len(), 1, "{body}");
    assert_eq!(rejected[0]["state"], "rejected");
    assert_eq!(rejected[0]["id"], serde_json::Value::Null);
    assert_eq!(rejected[0]["discovered_labels"]["__pod_name__"], "odd");
    let reason = rejected[0]["reason"].as_str().expect("a reason");
    assert!(reason.contains("__pod_uid__"), "{reason}");

    for query in [
        "?namespace=nowhere",
        "?state=running",
        "?namespace=shop&state=backoff",
    ] {
        let (_, body) = http_get(relay.http_addr(), &format!("/api/v1/targets{query}")).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["targets"], json!([]), "{query}");
    }
    let (_, body) = http_get(relay.http_addr(), "/api/v1/targets?namespace=&state=").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v["targets"].as_array().map(Vec::len),
        Some(2),
        "empty filters filter nothing"
    );

    eventually_async("the receiver has nothing queued", || async {
        let (_, body) = http_get(relay.http_addr(), "/api/v1/receivers").await;
        body.contains("\"queued_bytes\":0")
    })
    .await;
    let (status, body) = http_get(relay.http_addr(), "/api/v1/receivers").await;
    assert_eq!(status, 200);
    let mut v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let last_success = v[0]["status"]["last_success"].take();
    assert!(last_success.is_string(), "{body}");
    assert_eq!(
        v,
        json!([{
            "name": "primary",
            "running": true,
            "status": {
                "name": "primary",
                "queued_bytes": 0,
                "buffer_size": 64 * 1024 * 1024,
                "in_flight_batches": 0,
                "last_success": null,
                "last_error": null,
                "last_error_at": null,
                "sent_entries": 40,
                "dropped_entries": 0,
            },
        }])
    );
    relay.shutdown().await;
}

#[actix_rt::test]
async fn health_readiness_and_the_status_page_with_filters() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    job(&sim, "shop", "web-0", 10);
    job(&sim, "shop", "web-1", 10);
    job(&sim, "batch", "nightly", 10);
    let config = support::base_config(&sim) + &support::loki_table("primary", &sink, "");
    let relay = support::relay(&config).await;
    all_finished(&relay, 3).await;
    let addr = relay.http_addr();

    assert_eq!(
        http_get(addr, "/-/healthy").await,
        (200, "OK\n".to_string())
    );
    assert_eq!(
        http_get(addr, "/-/ready").await,
        (200, "ready\n".to_string())
    );

    let (status, html) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(!html.contains("<script"));
    assert_eq!(html.matches("<tr data-state=\"finished\">").count(), 3);
    for pod in ["web-0", "web-1", "nightly"] {
        assert!(
            html.contains(&format!("<td class=\"id\">{pod}</td>")),
            "{pod}"
        );
    }
    assert!(html.contains("id=\"count-finished\"><b>3</b>finished</a>"));
    assert!(html.contains("<h2>Targets (3 of 3)</h2>"));
    assert!(html.contains("<code>primary</code>"));

    let (_, html) = http_get(addr, "/?namespace=shop&state=").await;
    assert_eq!(html.matches("<tr data-state=").count(), 2);
    assert!(!html.contains("<td class=\"id\">nightly</td>"));
    assert!(html.contains("<option value=\"shop\" selected>shop</option>"));
    let (_, html) = http_get(addr, "/?state=running").await;
    assert_eq!(html.matches("<tr data-state=").count(), 0);
    assert!(html.contains("no target matches"));

    relay.shutdown().await;
    // The endpoints outlive the actors: health now says which stopped.
    eventually_async("health reports the stopped registry", || async {
        let (status, body) = http_get(addr, "/-/healthy").await;
        status == 503 && body.contains("registry")
    })
    .await;
}
