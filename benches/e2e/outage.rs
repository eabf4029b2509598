//! `outage`: one of two receivers answers 503 for a minute while 20 containers write 1,000
//! lines/s of 200 bytes, once with `on_full = "drop"` and once with `"block"`. The relay's peak
//! memory must stay within Σ (`buffer_size` + 64 MiB) over its receivers; the healthy receiver
//! gets every line exactly once either way, and with `block` so does the one that was down.

use std::time::Duration;

use kube_log_relay::sim::RestartPolicy;
use kube_log_relay::sim::loki::LokiSink;

use super::exact;
use super::fixture::{self, Scale};
use super::procs::MachineLoad;
use super::relay::{Config, Relay};
use super::report::{Floor, Report};

/// `buffer_size` of both receivers, MiB.
const BUFFER_MIB: u64 = 16;

pub async fn outage(report: &mut Report, scale: Scale) {
    for on_full in ["drop", "block"] {
        run(report, scale, on_full).await;
    }
}

async fn run(report: &mut Report, scale: Scale, on_full: &str) {
    let name = format!("outage_{on_full}");
    let down = scale.secs(60.0, 5.0);
    // Writing goes on 20 s after the receiver is back.
    let lines = (1_000.0 * (down + scale.secs(20.0, 5.0)).as_secs_f64()) as u64;
    let sim = fixture::sim(false).await;
    let good = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let bad = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let receiver = format!(
        "buffer_size = \"{BUFFER_MIB}MiB\"\non_full = \"{on_full}\"\nmax_retries = 1000\nmax_backoff = \"2s\""
    );
    let mut config = Config::new(sim.url(), good.url());
    config.receivers = vec![
        ("good".into(), good.url(), receiver.clone()),
        ("bad".into(), bad.url(), receiver),
    ];
    let relay = Relay::spawn(&config);
    relay.wait_ready().await;
    let load = MachineLoad::start();
    bad.fail_for(503, down);
    let keys = fixture::add_pods(&sim, "outage", 10, 2, RestartPolicy::Never, |c| {
        c.rate(1_000.0).line_size(200).total_lines(lines, 0)
    });
    // Compared once every line is written: until then "not received yet" is not "lost".
    let total = lines * keys.len() as u64;
    let written =
        fixture::wait_written_total(&sim, &keys, total, down * 4 + Duration::from_secs(120)).await;
    assert!(written, "the containers did not write {total} lines");
    let deadline = Duration::from_secs(600);
    let good_exact = exact::settle(&sim, &good, &keys, deadline).await;
    let bad_exact = match on_full {
        // What was dropped stays dropped: wait only for what can still come.
        "drop" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            exact::count(&sim, &bad, &keys).await
        }
        _ => exact::settle(&sim, &bad, &keys, Duration::from_secs(300)).await,
    };
    let peak = relay.peak_rss_kib();
    let others = load.others_cores(relay.cpu_seconds());
    drop(relay);

    let floor = 2 * (BUFFER_MIB + 64);
    report.info(&name, "receiver down for", down.as_secs_f64(), "s");
    report.add(
        &name,
        "relay peak RSS",
        peak as f64 / 1024.0,
        "MiB",
        Floor::AtMost(floor as f64),
        &format!("≤ 2 × ({BUFFER_MIB} + 64) = {floor}"),
    );
    fixture::report_exactness(report, &name, "healthy receiver", &good_exact);
    if on_full == "drop" {
        report.info(
            &name,
            "receiver that was down: lines dropped (on_full = drop)",
            bad_exact.lost as f64,
            "lines",
        );
        report.at_most(
            &name,
            "receiver that was down: lines duplicated",
            bad_exact.duplicated as f64,
            "lines",
            0.0,
        );
    } else {
        fixture::report_exactness(report, &name, "receiver that was down", &bad_exact);
    }
    fixture::report_load(report, &name, others);
}
