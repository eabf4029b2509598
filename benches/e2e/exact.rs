//! Lines lost and duplicated, counted by identity (SPEC §10: 0 / 0 in every scenario): every
//! line the simulator wrote (`Sim::written_lines`, unique text `ns/pod/c i=I n=N …`) against
//! every entry the Loki sink accepted, as multisets.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kube_log_relay::sim::Sim;
use kube_log_relay::sim::loki::LokiSink;

/// A container: namespace, pod, name.
pub type Key = (String, String, String);

/// What a sink received against what was written.
#[derive(Debug, Default)]
pub struct Exactness {
    pub written: u64,
    pub received: u64,
    /// Written, never received.
    pub lost: u64,
    /// Received more often than written (or never written).
    pub duplicated: u64,
    /// `received_at − timestamp` of every entry, seconds, sorted.
    pub latencies: Vec<f64>,
}

impl Exactness {
    /// The `q` quantile of the latencies (0 when there are none).
    pub fn latency(&self, q: f64) -> f64 {
        let l = &self.latencies;
        if l.is_empty() {
            return 0.0;
        }
        l[((l.len() as f64 * q) as usize).min(l.len() - 1)]
    }
}

/// Lines written by `containers` so far.
pub fn written_total(sim: &Sim, containers: &[Key]) -> u64 {
    containers
        .iter()
        .map(|(ns, pod, c)| sim.written_count(ns, pod, c))
        .sum()
}

/// Waits until `sink` holds at least as many entries as `containers` wrote (at most
/// `timeout`), then a moment longer for late duplicates, and compares by identity.
pub async fn settle(
    sim: &Sim,
    sink: &LokiSink,
    containers: &[Key],
    timeout: Duration,
) -> Exactness {
    let want = written_total(sim, containers) as usize;
    if sink.wait_for(|e| e.len() >= want, timeout).await {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    count(sim, sink, containers).await
}

/// Compares now, without waiting.
pub async fn count(sim: &Sim, sink: &LokiSink, containers: &[Key]) -> Exactness {
    let result = RefCell::new(Exactness::default());
    // Counted under the sink's lock, on its own entries: a million entries are not copied.
    // What was written is read under that lock too, so every entry the sink holds was written
    // before it: a line still being written cannot pass for a duplicate.
    sink.wait_for(
        |entries| {
            let written: Vec<String> = containers
                .iter()
                .flat_map(|(ns, pod, c)| sim.written_lines(ns, pod, c))
                .collect();
            let mut balance: HashMap<&str, i64> = HashMap::with_capacity(written.len());
            for line in &written {
                *balance.entry(line.as_str()).or_default() += 1;
            }
            for e in entries {
                *balance.entry(e.line.as_str()).or_default() -= 1;
            }
            let mut r = result.borrow_mut();
            r.written = written.len() as u64;
            r.received = entries.len() as u64;
            r.lost = balance
                .values()
                .filter(|&&b| b > 0)
                .map(|&b| b as u64)
                .sum();
            r.duplicated = balance
                .values()
                .filter(|&&b| b < 0)
                .map(|&b| (-b) as u64)
                .sum();
            r.latencies = entries
                .iter()
                .map(|e| (e.received_at.as_nanosecond() - e.timestamp.as_nanosecond()) as f64 / 1e9)
                .collect();
            r.latencies.sort_by(f64::total_cmp);
            true
        },
        Duration::ZERO,
    )
    .await;
    result.into_inner()
}

/// Waits until every one of `n` containers has at least one line at the sink (at most
/// `timeout`); returns how many had.
pub async fn wait_every_container(sink: &LokiSink, n: usize, timeout: Duration) -> usize {
    // Only the entries that arrived since the last look are scanned.
    let seen = RefCell::new((0usize, HashSet::<String>::new()));
    sink.wait_for(
        |entries| {
            let mut s = seen.borrow_mut();
            let from = s.0.min(entries.len());
            for e in &entries[from..] {
                if let Some(path) = e.line.split(' ').next()
                    && !s.1.contains(path)
                {
                    s.1.insert(path.to_owned());
                }
            }
            s.0 = entries.len();
            s.1.len() >= n
        },
        timeout,
    )
    .await;
    seen.into_inner().1.len()
}

/// Waits until `sink` holds `want` entries; gives up when nothing arrived for `stall` (a relay
/// that stopped making progress fails its scenario in a minute, not after an hour). Returns
/// whether `want` was reached.
pub async fn wait_count(sink: &LokiSink, want: usize, stall: Duration) -> bool {
    let mut last = usize::MAX;
    loop {
        let now = std::cell::Cell::new(0);
        let reached = sink
            .wait_for(
                |e| {
                    now.set(e.len());
                    e.len() >= want || e.len() != last
                },
                stall,
            )
            .await;
        if now.get() >= want {
            return true;
        }
        if !reached {
            return false;
        }
        last = now.get();
    }
}
