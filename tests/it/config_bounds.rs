//! Whatever `check` accepts runs without overflowing (issue 15 item 4): validation bounds every
//! duration and size, and what passes is safe in every computation the relay makes from it —
//! deadlines (`Instant + duration`), backoff doublings, the retry policy, the rate limiter's
//! waits and `start_from`'s timestamp subtraction.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use kube_log_relay::config::{self, Config, StartFrom};
use kube_log_relay::kube::ratelimit::TokenBucket;
use kube_log_relay::receiver::retry::{RetryPolicy, next_backoff};
use kube_log_relay::tail::backoff::Backoff;
use kube_log_relay::tail::request::start_cursor;

use crate::support::{self, http_get};

/// A number across the whole range, small ones as likely as huge ones.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..10, 0u64..100_000, any::<u64>()]
}

/// A duration as a user may write it, from `"0s"` to far beyond anything representable.
fn duration() -> impl Strategy<Value = String> {
    let units = prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y"]);
    (number(), units).prop_map(|(n, unit)| format!("{n}{unit}"))
}

/// A size as a user may write it.
fn size() -> impl Strategy<Value = String> {
    let units = prop::sample::select(vec!["", "B", "KB", "KiB", "MiB", "GiB", "TiB"]);
    (number(), units).prop_map(|(n, unit)| format!("\"{n}{unit}\""))
}

/// The duration (`true`) and size (`false`) keys, by table.
const TABLES: &[(&str, &[(&str, bool)])] = &[
    (
        "tail",
        &[
            ("start_from", true),
            ("max_line_size", false),
            ("min_backoff", true),
            ("max_backoff", true),
            ("max_stream_lifetime", true),
            ("terminated_grace", true),
        ],
    ),
    ("positions", &[("sync_period", true), ("gc_after", true)]),
    (
        "loki.a",
        &[
            ("batch_size", false),
            ("buffer_size", false),
            ("max_line_size", false),
            ("batch_wait", true),
            ("min_backoff", true),
            ("max_backoff", true),
            ("remote_timeout", true),
        ],
    ),
    ("shutdown", &[("timeout", true)]),
    (
        "clustering",
        &[("lease_duration", true), ("renew_interval", true)],
    ),
];

/// A configuration where each duration and size key is, independently, absent (its default)
/// or generated across the whole range: few keys are set at once, so most configurations pass
/// validation and carry their extreme values into [`exercise`].
fn configuration() -> impl Strategy<Value = String> {
    let keys: usize = TABLES.iter().map(|(_, keys)| keys.len()).sum();
    // Both forms for every key; the key's kind picks one.
    let value = (duration().prop_map(|d| format!("{d:?}")), size());
    (
        prop::collection::vec(prop::option::weighted(0.25, value), keys),
        prop::option::weighted(
            0.3,
            prop_oneof![Just(1e-300), Just(0.001), Just(1e300), 0.0f64..2e6],
        ),
        prop::option::weighted(0.3, any::<u32>()),
    )
        .prop_map(|(values, qps, burst)| {
            let mut text = String::from("[kubernetes]\napi_server = \"http://127.0.0.1:6443\"\n");
            if let Some(qps) = qps {
                text += &format!("qps = {qps:?}\n");
            }
            if let Some(burst) = burst {
                text += &format!("burst = {burst}\n");
            }
            let mut values = values.into_iter();
            for (table, keys) in TABLES {
                text += &format!("[{table}]\n");
                match *table {
                    "positions" => text += "backend = \"file\"\npath = \"/tmp/p.json\"\n",
                    "loki.a" => text += "url = \"http://127.0.0.1:3100/loki/api/v1/push\"\n",
                    _ => {}
                }
                for (key, is_duration) in *keys {
                    if let Some((duration, size)) = values.next().flatten() {
                        let value = if *is_duration { duration } else { size };
                        text += &format!("{key} = {value}\n");
                    }
                }
            }
            text
        })
}

/// Every computation the relay makes from the configuration's durations and sizes, done with
/// the relay's own code; a panic fails the property.
fn exercise(config: &Config) {
    let now = Instant::now();
    let loki = &config.loki["a"];
    let deadlines = [
        config.tail.min_backoff,
        config.tail.max_backoff,
        config.tail.max_stream_lifetime,
        config.tail.terminated_grace,
        config.positions.sync_period,
        config.positions.gc_after,
        loki.batch_wait,
        loki.min_backoff,
        loki.max_backoff,
        loki.remote_timeout,
        config.shutdown.timeout,
        config.clustering.lease_duration,
        config.clustering.renew_interval,
    ];
    for duration in deadlines {
        // `Instant + duration` panics where `checked_add` says None.
        assert!(now.checked_add(duration).is_some(), "{duration:?}");
        assert!(tokio::time::Instant::now().checked_add(duration).is_some());
    }
    let mut backoff = Backoff::new(config.tail.min_backoff, config.tail.max_backoff);
    for _ in 0..200 {
        let delay = backoff.next_delay_with(0.999);
        assert!(delay <= config.tail.max_backoff);
        assert!(now.checked_add(delay).is_some());
    }
    let policy = RetryPolicy::from_config(loki);
    for attempt in [0, 1, 2, 10, 31, 32, 64, u32::MAX] {
        let delay = next_backoff(attempt, &policy, 0.999);
        assert!(now.checked_add(delay).is_some());
    }
    let tokio_now = tokio::time::Instant::now();
    let mut bucket = TokenBucket::new(config.kubernetes.qps, config.kubernetes.burst, tokio_now);
    for _ in 0..1000 {
        let wait = bucket.take(tokio_now);
        assert!(now.checked_add(wait).is_some(), "{wait:?}");
    }
    if let StartFrom::Ago(_) = config.tail.start_from {
        start_cursor(config.tail.start_from, jiff::Timestamp::now());
    }
    start_cursor(config.tail.start_from, jiff::Timestamp::UNIX_EPOCH);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn what_validation_accepts_computes_without_overflow(text in configuration()) {
        // Validation itself must never panic, whatever the values.
        if let Ok(config) = config::parse(&text, &|_| None) {
            exercise(&config);
        }
    }
}

#[test]
fn the_largest_accepted_values_pass_the_same_computations() {
    let text = r#"
[kubernetes]
qps = 0.001
burst = 4294967295
[tail]
start_from = "30d"
max_line_size = "64MiB"
min_backoff = "24h"
max_backoff = "24h"
max_stream_lifetime = "24h"
terminated_grace = "1h"
[positions]
backend = "file"
path = "/tmp/positions.json"
sync_period = "1h"
gc_after = "30d"
[loki.a]
url = "http://127.0.0.1:3100/loki/api/v1/push"
batch_size = "64MiB"
buffer_size = "16GiB"
max_line_size = "64MiB"
batch_wait = "1h"
min_backoff = "24h"
max_backoff = "24h"
remote_timeout = "1h"
max_retries = 4294967295
[shutdown]
timeout = "1h"
[clustering]
lease_duration = "1h"
renew_interval = "59m"
"#;
    let config = config::parse(text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    exercise(&config);
}

/// The relay itself, in-process against the simulator, on the largest values `check` accepts:
/// it starts, becomes ready, and shuts down (its receivers are healthy, so the hour-long
/// shutdown timeout is not waited for).
#[actix_rt::test]
async fn the_relay_runs_on_the_largest_accepted_values() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[kubernetes]
api_server = "{api}"
burst = 4294967295
[tail]
start_from = "30d"
max_line_size = "64MiB"
min_backoff = "24h"
max_backoff = "24h"
max_stream_lifetime = "24h"
terminated_grace = "1h"
[positions]
backend = "file"
path = "{positions}"
sync_period = "1h"
gc_after = "30d"
[loki.a]
url = "{loki}"
batch_size = "64MiB"
buffer_size = "16GiB"
max_line_size = "64MiB"
batch_wait = "1h"
min_backoff = "24h"
max_backoff = "24h"
remote_timeout = "1h"
max_retries = 4294967295
[server]
listen = "127.0.0.1:0"
[shutdown]
timeout = "1h"
"#,
        api = sim.url(),
        loki = sink.url(),
        positions = dir.path().join("positions.json").display(),
    );
    let relay = support::relay(&text).await;
    let started = Instant::now();
    while http_get(relay.http_addr(), "/-/ready").await.0 != 200 {
        assert!(
            started.elapsed() < support::DEADLINE,
            "the relay was not ready within {:?}",
            support::DEADLINE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.shutdown().await;
}
