//! Scenarios of many quiet streams, a real cluster's usual shape: 5,000 containers at 1 line/s
//! (CPU as a share of one core), 5,000 idle streams over TLS and HTTP/2 (memory per tailer and
//! API connections), and 5,000 containers from a cold start at the default `qps`.

use std::time::{Duration, Instant};

use kube_log_relay::sim::RestartPolicy;
use kube_log_relay::sim::loki::LokiSink;

use super::exact;
use super::fixture::{self, Scale};
use super::procs::MachineLoad;
use super::relay::{Config, Relay};
use super::report::{Floor, Report};

/// 1,000 pods of 5 containers.
const PODS: u64 = 1_000;
const PER_POD: u64 = 5;

/// Waits until the relay opened `n` log streams (at most `timeout`); false on timeout.
async fn wait_streams_open(relay: &Relay, n: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while relay.metric("kube_log_relay_stream_opens_total").await < n as f64 {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    true
}

/// `fanout`: 5,000 containers writing 1 line/s each; the relay's CPU over a minute once every
/// stream delivers. Over plain HTTP (HTTP/1.1: a connection per stream), or over TLS and
/// HTTP/2 as an API server serves it (`fanout_tls`: a hundred streams per connection).
pub async fn fanout(report: &mut Report, scale: Scale, tls: bool) {
    let name = if tls { "fanout_tls" } else { "fanout" };
    let pods = scale.count(PODS);
    let n = pods * PER_POD;
    let window = scale.secs(60.0, 10.0);
    let sim = fixture::sim(tls).await;
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let mut config = Config::new(sim.url(), sink.url());
    config.ca_file = sim.tls_files().map(|f| f.ca.clone());
    let relay = Relay::spawn(&config);
    relay.wait_ready().await;
    let keys = fixture::add_pods(&sim, "fanout", pods, PER_POD, RestartPolicy::Always, |c| {
        c.rate(1.0).line_size(100)
    });
    let delivering = exact::wait_every_container(&sink, n as usize, Duration::from_secs(300)).await;
    // A few batch_waits for the start-up backlog to drain before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("== {name}: every container delivers; measuring for {window:?}");
    let load = MachineLoad::start();
    let (cpu_before, started) = (relay.cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let cpu = relay.cpu_seconds() - cpu_before;
    let share = cpu / started.elapsed().as_secs_f64() * 100.0;
    let others = load.others_cores(relay.cpu_seconds());
    let rss = relay.rss_kib();
    fixture::delete_pods(&sim, &keys);
    let exact = exact::settle(&sim, &sink, &keys, Duration::from_secs(120)).await;
    drop(relay);

    report.info(name, "containers", n as f64, "");
    if delivering < n as usize {
        report.info(
            name,
            "containers delivering before measuring",
            delivering as f64,
            "",
        );
    }
    report.info(name, "measured over", window.as_secs_f64(), "s");
    report.add(
        name,
        "relay CPU at 1 line/s per container",
        share,
        "% of a core",
        Floor::AtMost(5.0),
        "≤ 5",
    );
    report.info(
        name,
        "relay CPU per million lines",
        cpu / (n as f64 * window.as_secs_f64() / 1e6),
        "CPU-s",
    );
    report.info(name, "relay RSS", rss as f64 / 1024.0, "MiB");
    fixture::report_exactness(report, name, "", &exact);
    fixture::report_load(report, name, others);
}

/// `idle`: 5,000 silent containers followed over TLS and HTTP/2: resident memory per idle
/// tailer, (RSS with N − RSS with 0) / N, and the API connections the simulator counts.
pub async fn idle(report: &mut Report, scale: Scale) {
    let name = "idle";
    let pods = scale.count(PODS);
    let n = pods * PER_POD;
    let sim = fixture::sim(true).await;
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let mut config = Config::new(sim.url(), sink.url());
    config.ca_file = sim.tls_files().map(|f| f.ca.clone());
    let relay = Relay::spawn(&config);
    relay.wait_ready().await;
    // Settled, with the discovery watch open and nothing to tail.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_empty = relay.rss_kib();
    let keys = fixture::add_pods(&sim, "idle", pods, PER_POD, RestartPolicy::Always, |c| {
        c.rate(0.0)
    });
    let opened = wait_streams_open(&relay, n, Duration::from_secs(300)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = relay.rss_kib();
    let stats = sim.stats();
    let exact = exact::count(&sim, &sink, &keys).await;
    drop(relay);

    report.info(name, "idle tailers (over TLS, HTTP/2)", n as f64, "");
    if !opened {
        report.info(name, "streams not open after 300 s", 1.0, "");
    }
    report.info(
        name,
        "relay RSS with 0 tailers",
        rss_empty as f64 / 1024.0,
        "MiB",
    );
    report.info(name, "relay RSS with N tailers", rss as f64 / 1024.0, "MiB");
    report.at_most(
        name,
        "RSS per idle tailer",
        (rss as f64 - rss_empty as f64) / n as f64,
        "KiB",
        32.0,
    );
    let limit = n.div_ceil(100) + 2;
    report.add(
        name,
        "API connections",
        stats.connections_open as f64,
        "",
        Floor::AtMost(limit as f64),
        &format!("≤ ⌈N/100⌉ + 2 = {limit}"),
    );
    report.info(name, "API streams open", stats.streams_open as f64, "");
    report.info(
        name,
        "most streams on one connection",
        stats.max_streams_per_connection as f64,
        "",
    );
    fixture::report_exactness(report, name, "", &exact);
}

/// `startup`: 5,000 containers writing 1 line/s exist before the relay starts; seconds from its
/// start until every one of them has delivered a line, at the default `qps` (50).
pub async fn startup(report: &mut Report, scale: Scale) {
    let name = "startup";
    let pods = scale.count(PODS);
    let n = pods * PER_POD;
    let qps = 50.0;
    let floor = n as f64 / qps + 10.0;
    let sim = fixture::sim(false).await;
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let keys = fixture::add_pods(&sim, "startup", pods, PER_POD, RestartPolicy::Always, |c| {
        c.rate(1.0).line_size(100)
    });
    let mut config = Config::new(sim.url(), sink.url());
    config.qps = None;
    let load = MachineLoad::start();
    let started = Instant::now();
    let relay = Relay::spawn(&config);
    // Twice the floor: enough to tell a slow start from a stuck one.
    let timeout = Duration::from_secs_f64(floor * 2.0);
    let delivering = exact::wait_every_container(&sink, n as usize, timeout).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = relay.cpu_seconds();
    let others = load.others_cores(cpu);
    fixture::delete_pods(&sim, &keys);
    let exact = exact::settle(&sim, &sink, &keys, Duration::from_secs(120)).await;
    drop(relay);

    report.info(name, "containers (qps = 50, burst = 100)", n as f64, "");
    report.add(
        name,
        "seconds until every target delivered",
        seconds,
        "s",
        Floor::AtMost(floor),
        &format!("≤ N ÷ qps + 10 = {}", floor.round()),
    );
    report.at_most(
        name,
        "targets not delivering at the deadline",
        (n as usize - delivering.min(n as usize)) as f64,
        "",
        0.0,
    );
    report.info(name, "relay CPU during start-up", cpu, "CPU-s");
    fixture::report_exactness(report, name, "", &exact);
    fixture::report_load(report, name, others);
}
