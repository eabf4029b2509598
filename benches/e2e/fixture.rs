//! What every scenario sets up: the scale, the simulator, pods of scripted containers, and the
//! rows every scenario reports (lines lost and duplicated).

use std::time::Duration;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim, SimOptions};

use super::exact::{Exactness, Key};
use super::report::Report;

/// `E2E_SCALE` (default 1): multiplies counts and durations, so a scenario can be developed at
/// a twentieth of its size (`E2E_SCALE=0.05`). Floors that depend on a count follow it.
#[derive(Clone, Copy, Debug)]
pub struct Scale(pub f64);

impl Scale {
    pub fn from_env() -> Scale {
        Scale(
            std::env::var("E2E_SCALE")
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|s: &f64| *s > 0.0)
                .unwrap_or(1.0),
        )
    }

    /// `full` scaled, at least 1.
    pub fn count(&self, full: u64) -> u64 {
        ((full as f64 * self.0).round() as u64).max(1)
    }

    /// `full` seconds scaled, at least `min`.
    pub fn secs(&self, full: f64, min: f64) -> Duration {
        Duration::from_secs_f64((full * self.0).max(min))
    }
}

/// A simulator on an ephemeral port, over TLS and HTTP/2 (ALPN) when `tls`.
pub async fn sim(tls: bool) -> Sim {
    Sim::start_with(
        "127.0.0.1:0",
        SimOptions {
            tls,
            ..Default::default()
        },
    )
    .await
    .expect("the simulator starts")
}

/// Adds `pods` pods of namespace `ns`, each with containers `c0`…`c{per_pod−1}` made by
/// `container`; returns every container.
pub fn add_pods(
    sim: &Sim,
    ns: &str,
    pods: u64,
    per_pod: u64,
    restart: RestartPolicy,
    container: impl Fn(ContainerSpec) -> ContainerSpec,
) -> Vec<Key> {
    let mut keys = Vec::new();
    for p in 0..pods {
        let name = format!("p-{p}");
        let mut pod = PodSpec::new(ns, &name).restart_policy(restart);
        for c in 0..per_pod {
            let c = format!("c{c}");
            pod = pod.container(container(ContainerSpec::new(&c)));
            keys.push((ns.to_string(), name.clone(), c));
        }
        sim.add_pod(pod);
    }
    keys
}

/// Waits until `containers` wrote `lines` lines in all (at most `timeout`); false on timeout.
pub async fn wait_written_total(
    sim: &Sim,
    containers: &[Key],
    lines: u64,
    timeout: Duration,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while super::exact::written_total(sim, containers) < lines {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// Deletes every pod of `keys`: their containers stop writing and the relay's streams end
/// after the last line, so what was written is final and can be compared.
pub fn delete_pods(sim: &Sim, keys: &[Key]) {
    let mut last: Option<(&str, &str)> = None;
    for (ns, pod, _) in keys {
        if last != Some((ns, pod)) {
            sim.delete_pod(ns, pod);
            last = Some((ns, pod));
        }
    }
}

/// The rows every scenario has: lines written, lost, duplicated.
pub fn report_exactness(report: &mut Report, scenario: &str, what: &str, e: &Exactness) {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    report.info(
        scenario,
        &format!("{prefix}lines written"),
        e.written as f64,
        "lines",
    );
    report.at_most(
        scenario,
        &format!("{prefix}lines lost"),
        e.lost as f64,
        "lines",
        0.0,
    );
    report.at_most(
        scenario,
        &format!("{prefix}lines duplicated"),
        e.duplicated as f64,
        "lines",
        0.0,
    );
}

/// The rows of the machine's load during a measurement.
pub fn report_load(report: &mut Report, scenario: &str, others_cores: f64) {
    report.info(
        scenario,
        "other processes' CPU during the run (machine load)",
        others_cores,
        "cores",
    );
}
