//! The one reader of Prometheus text in the tests (the `prometheus-parse` crate): what a relay's
//! `/metrics` serves, or what a thread-local recorder renders, as samples to look up.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use prometheus_parse::{Scrape, Value};

/// One parsed exposition.
pub struct Metrics {
    scrape: Scrape,
    text: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Metrics {
    /// Parses Prometheus text; fails the test when it does not parse.
    pub fn parse(text: &str) -> Metrics {
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("Prometheus text does not parse: {e}\n{text}"));
        Metrics {
            scrape,
            text: text.to_string(),
        }
    }

    /// GETs `/metrics` from a relay's HTTP address and parses it.
    pub async fn scrape(addr: SocketAddr) -> Metrics {
        let (status, text) = super::http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        Metrics::parse(&text)
    }

    /// Scrapes until `cond` holds (at most the tests' deadline); the scrape it held on.
    pub async fn scrape_until(
        addr: SocketAddr,
        what: &str,
        mut cond: impl FnMut(&Metrics) -> bool,
    ) -> Metrics {
        let start = std::time::Instant::now();
        loop {
            let m = Metrics::scrape(addr).await;
            if cond(&m) {
                return m;
            }
            assert!(
                start.elapsed() < super::DEADLINE,
                "timed out after {:?} waiting for: {what}\n{m:?}",
                super::DEADLINE
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The text as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Metric names that have a `# HELP` line.
    pub fn described(&self) -> impl Iterator<Item = &String> {
        self.scrape.docs.keys()
    }

    /// True when `name` has a `# HELP` line.
    pub fn is_described(&self, name: &str) -> bool {
        self.scrape.docs.contains_key(name)
    }

    /// The samples of `name`, each with its labels.
    pub fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, &Value)> {
        self.scrape
            .samples
            .iter()
            .filter(|x| x.metric == name)
            .map(|x| {
                let labels = x
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                (labels, &x.value)
            })
            .collect()
    }

    /// The value of the one series of `name` with exactly `labels`, if it is exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples(name)
            .into_iter()
            .filter(|(l, _)| *l == want)
            .map(|(_, v)| value(v))
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{want:?} is exported {} times",
            found.len()
        );
        found.first().copied()
    }

    /// Like [`Metrics::get`], failing the test when the series is not exported.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "{name}{labels:?} is not exported; {name} has {:?}",
                self.samples(name)
            )
        })
    }

    /// The sum over every series of `name` whose labels include `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .into_iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| value(v))
            .sum()
    }
}

/// The value of a counter, gauge or untyped sample.
fn value(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a single value: {other:?}"),
    }
}
