//! Scenarios of a few busy streams: CPU per million lines (at saturation and at 20,000 lines/s,
//! beside `kubectl logs -f --timestamps` on the same streams), and entry latency at
//! 100,000 lines/s.

use std::time::{Duration, Instant};

use kube_log_relay::sim::RestartPolicy;
use kube_log_relay::sim::loki::LokiSink;

use super::fixture::{self, Scale};
use super::procs::MachineLoad;
use super::relay::{Config, Relay};
use super::report::{Floor, Report};
use super::{exact, peer};

/// A flow of lines through a few streams.
struct Flow {
    name: &'static str,
    streams: u64,
    /// Lines per second per stream; `None`: saturating — every log is written in full before
    /// the relay starts, and it reads as fast as it can.
    rate: Option<f64>,
    lines_per_stream: u64,
    tls: bool,
    /// Run `kubectl` on the same streams.
    peer: bool,
    /// Floor of relay CPU-s per million lines.
    cpu_floor: Option<f64>,
    /// Judge entry latency p99 against batch_wait (1 s) + 0.25 s.
    latency_floor: bool,
}

/// `throughput`: 10 streams, 1,000,000 lines of 100 bytes written before the relay starts.
pub async fn throughput(report: &mut Report, scale: Scale, tls: bool) {
    run(
        report,
        Flow {
            name: if tls { "throughput_tls" } else { "throughput" },
            streams: 10,
            rate: None,
            lines_per_stream: scale.count(100_000),
            tls,
            peer: true,
            cpu_floor: Some(0.5),
            latency_floor: false,
        },
    )
    .await;
}

/// `steady`: 20,000 lines/s over 10 streams for 30 s.
pub async fn steady(report: &mut Report, scale: Scale) {
    let seconds = scale.secs(30.0, 5.0).as_secs_f64();
    run(
        report,
        Flow {
            name: "steady",
            streams: 10,
            rate: Some(2_000.0),
            lines_per_stream: (2_000.0 * seconds) as u64,
            tls: false,
            peer: true,
            cpu_floor: Some(1.0),
            latency_floor: false,
        },
    )
    .await;
}

/// `latency`: 100,000 lines/s over 20 streams for 10 s.
pub async fn latency(report: &mut Report, scale: Scale) {
    let seconds = scale.secs(10.0, 3.0).as_secs_f64();
    run(
        report,
        Flow {
            name: "latency",
            streams: 20,
            rate: Some(5_000.0),
            lines_per_stream: (5_000.0 * seconds) as u64,
            tls: false,
            peer: false,
            cpu_floor: None,
            latency_floor: true,
        },
    )
    .await;
}

async fn run(report: &mut Report, flow: Flow) {
    let name = flow.name;
    let sim = fixture::sim(flow.tls).await;
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let mut config = Config::new(sim.url(), sink.url());
    config.ca_file = sim.tls_files().map(|f| f.ca.clone());
    let pods = flow.streams / 2;
    let lines = flow.lines_per_stream;
    let add = |rate: f64| {
        fixture::add_pods(&sim, "bench", pods, 2, RestartPolicy::Never, |c| {
            c.rate(rate).line_size(100).total_lines(lines, 0)
        })
    };
    let total = pods * 2 * lines;

    let (relay, keys, cpu_before, load) = match flow.rate {
        None => {
            // Written far faster than anything reads; done before the relay exists.
            let keys = add(1_000_000.0);
            for (ns, pod, c) in &keys {
                sim.wait_written(ns, pod, c, lines as usize).await;
            }
            let load = MachineLoad::start();
            (Relay::spawn(&config), keys, 0.0, load)
        }
        Some(rate) => {
            let relay = Relay::spawn(&config);
            relay.wait_ready().await;
            let load = MachineLoad::start();
            let cpu = relay.cpu_seconds();
            (relay, add(rate), cpu, load)
        }
    };
    let started = Instant::now();
    let kubeconfig = sim.tls_files().map(|f| f.kubeconfig.as_path());
    let followers =
        (flow.peer && peer::available()).then(|| peer::follow(&sim.url(), kubeconfig, &keys));
    let arrived = exact::wait_count(&sink, total as usize, Duration::from_secs(60)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = relay.cpu_seconds() - cpu_before;
    let peak = relay.peak_rss_kib();
    let peer_cost = match followers {
        Some(f) => Some(f.wait(Duration::from_secs(300)).await),
        None => None,
    };
    let others = load.others_cores(relay.cpu_seconds());
    let exact = exact::settle(&sim, &sink, &keys, Duration::from_secs(30)).await;
    drop(relay);

    let millions = total as f64 / 1e6;
    report.info(name, "lines (100-byte text)", total as f64, "lines");
    if !arrived {
        // Costs per line of a run that did not deliver are not comparable: the run fails.
        report.add(
            name,
            "delivered every line (stalled: nothing arrived for 60 s)",
            0.0,
            "",
            Floor::AtLeast(1.0),
            "yes",
        );
    }
    report.info(
        name,
        "lines per second delivered",
        total as f64 / elapsed,
        "lines/s",
    );
    let relay_per_million = cpu / millions;
    match flow.cpu_floor.filter(|_| arrived) {
        Some(floor) => report.at_most(
            name,
            "relay CPU per million lines",
            relay_per_million,
            "CPU-s",
            floor,
        ),
        None => report.info(
            name,
            "relay CPU per million lines",
            relay_per_million,
            "CPU-s",
        ),
    }
    if let Some(p) = peer_cost {
        let peer_per_million = p.cpu / millions;
        report.info(
            name,
            "kubectl CPU per million lines",
            peer_per_million,
            "CPU-s",
        );
        if p.failed > 0 {
            report.info(name, "kubectl followers that failed", p.failed as f64, "");
        }
        let ratio = relay_per_million / peer_per_million;
        match arrived {
            true => report.at_most(name, "relay ÷ kubectl CPU per line", ratio, "ratio", 0.25),
            false => report.info(name, "relay ÷ kubectl CPU per line", ratio, "ratio"),
        }
    } else if flow.peer {
        report.info(name, "kubectl not installed: no peer ratio", 0.0, "");
    }
    // A saturating run reads logs written before it started: no latency to speak of.
    let p99 = exact.latency(0.99);
    if flow.rate.is_some() {
        report.info(name, "entry latency p50", exact.latency(0.50), "s");
    }
    if flow.latency_floor {
        report.add(
            name,
            "entry latency p99",
            p99,
            "s",
            Floor::AtMost(1.25),
            "≤ batch_wait (1 s) + 0.25",
        );
    } else if flow.rate.is_some() {
        report.info(name, "entry latency p99", p99, "s");
    }
    report.info(name, "relay peak RSS", peak as f64 / 1024.0, "MiB");
    fixture::report_exactness(report, name, "", &exact);
    fixture::report_load(report, name, others);
}
