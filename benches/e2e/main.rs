//! End-to-end benchmarks that judge themselves (SPEC §10): the release relay as a child process
//! against the simulator over loopback, measured from outside through `/proc` and the
//! simulator's own counters, beside `kubectl logs -f --timestamps` where it is installed.
//!
//! `cargo bench --bench e2e` runs every scenario, prints one table with each figure's floor
//! and PASS or MISS, writes it as JSON to `target/e2e.json`, and exits non-zero on a MISS.
//! `cargo bench --bench e2e -- NAME` runs the scenarios whose name contains NAME (`throughput`
//! runs it over plain HTTP and over TLS; `=fanout` runs that one alone; `peer` runs those with
//! kubectl beside the relay). Lines lost and duplicated are counted by identity in every
//! scenario.
//!
//! - `E2E_SCALE=0.05` scales counts and durations down, for developing a scenario.
//! - `E2E_RELAY_BIN=/path/to/kube-log-relay` measures another build of the relay (A/B on the
//!   same machine, where run-to-run noise is larger than most single changes).
//!
//! CPU is the relay's own utime + stime from `/proc/<pid>/stat`, never wall time: the machine is
//! shared. Each scenario also reports the CPU that other processes used meanwhile, so figures
//! taken on a loaded machine say so.

mod exact;
mod fixture;
mod fleet;
mod flow;
mod outage;
mod peer;
mod procs;
mod relay;
mod report;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use fixture::Scale;
use report::{Floor, Report};

type Scenario = for<'a> fn(&'a mut Report, Scale) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Every scenario, in the order a full run takes them; `true` when kubectl runs beside it.
const SCENARIOS: &[(&str, bool, Scenario)] = &[
    ("throughput", true, |r, s| {
        Box::pin(flow::throughput(r, s, false))
    }),
    ("throughput_tls", false, |r, s| {
        Box::pin(flow::throughput(r, s, true))
    }),
    ("steady", true, |r, s| Box::pin(flow::steady(r, s))),
    ("latency", false, |r, s| Box::pin(flow::latency(r, s))),
    ("fanout", false, |r, s| Box::pin(fleet::fanout(r, s, false))),
    ("fanout_tls", false, |r, s| {
        Box::pin(fleet::fanout(r, s, true))
    }),
    ("idle", false, |r, s| Box::pin(fleet::idle(r, s))),
    ("startup", false, |r, s| Box::pin(fleet::startup(r, s))),
    ("outage", false, |r, s| Box::pin(outage::outage(r, s))),
];

fn main() {
    // `cargo bench` passes `--bench`; anything else not starting with `-` is a filter.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scale = Scale::from_env();
    let selected = |name: &str, peer: bool| match filter.as_deref() {
        None => true,
        Some("peer") => peer,
        Some(f) => match f.strip_prefix('=') {
            Some(exact) => name == exact,
            None => name.contains(f),
        },
    };
    let load_before = procs::load_average();
    let started = std::time::Instant::now();
    let mut report = Report::default();
    for (name, peer, scenario) in SCENARIOS {
        if !selected(name, *peer) {
            continue;
        }
        eprintln!("== {name} (scale {})", scale.0);
        // A runtime per scenario: dropping it stops the simulator's writers and servers, so
        // one scenario's containers never cost CPU in the next.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(scenario(&mut report, scale));
        }));
        runtime.shutdown_background();
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("== {name} failed: {why}");
            report.add(
                name,
                "scenario completed",
                0.0,
                "",
                Floor::AtLeast(1.0),
                "runs to the end",
            );
        }
    }
    if report.rows.is_empty() {
        eprintln!(
            "no scenario matches {filter:?}; scenarios: {}, or peer",
            SCENARIOS
                .iter()
                .map(|(n, ..)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(2);
    }

    let machine = format!(
        "{} cores, load average {:.2} at start; scale {}; {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before,
        scale.0,
        started.elapsed().as_secs_f64()
    );
    println!("\n{}\nmachine: {machine}", report.table());
    write_json(&report, &machine, scale);
    let misses = report.misses();
    if misses > 0 {
        println!("{misses} figure(s) MISS their floor");
        std::process::exit(1);
    }
    println!("every figure meets its floor");
}

/// `target/e2e.json`: the rows and the machine they were taken on.
fn write_json(report: &Report, machine: &str, scale: Scale) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            // target/release/deps/e2e-…: three levels up.
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| "target".into());
    let path = target.join("e2e.json");
    let json = serde_json::json!({
        "machine": machine,
        "scale": scale.0,
        "relay": std::env::var("E2E_RELAY_BIN").ok(),
        "rows": report.rows,
        "misses": report.misses(),
    });
    match std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("written: {}", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
}
