//! End-to-end benchmarks (SPEC §10): the release relay as a child process against the simulator
//! over loopback, measured from outside through `/proc` and the simulator's own counters.
//!
//! `cargo bench --bench e2e` runs every scenario and prints one line per measure with the floor
//! it is held to; `cargo bench --bench e2e -- throughput` runs one. The numbers go in README.
//! `E2E_RELAY_BIN=/path/to/kube-log-relay` measures another build of the relay (A/B comparisons
//! on the same machine, where run-to-run noise is larger than most single changes).

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_log_relay::sim::loki::LokiSink;
use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy, Sim};

const BIN: &str = env!("CARGO_BIN_EXE_kube-log-relay");

/// The relay binary to measure: this build's, unless `E2E_RELAY_BIN` names another.
fn relay_bin() -> String {
    std::env::var("E2E_RELAY_BIN").unwrap_or_else(|_| BIN.to_string())
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let run = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if run("throughput") {
        rt.block_on(throughput());
    }
    if run("idle") {
        rt.block_on(idle_tailers());
    }
    if run("outage") {
        rt.block_on(outage());
    }
}

/// One million 100-byte lines from 20 containers at 100,000 lines/s in total: relay CPU per
/// million lines and entry latency.
async fn throughput() {
    const CONTAINERS: u64 = 20;
    const PER_CONTAINER: u64 = 50_000;
    const RATE: f64 = 5_000.0;
    let sim = Sim::start("127.0.0.1:0").await.expect("sim");
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let mut relay = Relay::spawn(&config(&sim, &[("main", &sink, "")]));
    relay.wait_ready().await;
    let cpu_before = relay.cpu_seconds();
    let started = Instant::now();
    for p in 0..CONTAINERS / 2 {
        sim.add_pod(
            PodSpec::new("bench", format!("p-{p}"))
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("a")
                        .rate(RATE)
                        .line_size(100)
                        .total_lines(PER_CONTAINER, 0),
                )
                .container(
                    ContainerSpec::new("b")
                        .rate(RATE)
                        .line_size(100)
                        .total_lines(PER_CONTAINER, 0),
                ),
        );
    }
    let total = (CONTAINERS * PER_CONTAINER) as usize;
    let arrived = sink
        .wait_for(|e| e.len() >= total, Duration::from_secs(300))
        .await;
    let elapsed = started.elapsed();
    let cpu = relay.cpu_seconds() - cpu_before;
    let rss = relay.peak_rss_kib();
    relay.stop();
    assert!(
        arrived,
        "only {} of {total} lines arrived",
        sink.entries().len()
    );

    let entries = sink.entries();
    let mut latencies: Vec<f64> = entries
        .iter()
        .map(|e| (e.received_at.as_nanosecond() - e.timestamp.as_nanosecond()) as f64 / 1e9)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let millions = total as f64 / 1e6;
    report("throughput: lines", total as f64, "lines", "");
    report("throughput: wall time", elapsed.as_secs_f64(), "s", "");
    report(
        "throughput: relay CPU per million lines",
        cpu / millions,
        "CPU-s",
        "≤ 1",
    );
    report("throughput: entry latency p50", p(0.50), "s", "");
    report(
        "throughput: entry latency p99",
        p(0.99),
        "s",
        "≤ batch_wait (1 s) + 0.25",
    );
    report("throughput: relay peak RSS", rss as f64 / 1024.0, "MiB", "");
}

/// 5,000 silent containers: resident memory per idle tailer and API connections.
async fn idle_tailers() {
    const PODS: usize = 1_000;
    const PER_POD: usize = 5;
    let sim = Sim::start("127.0.0.1:0").await.expect("sim");
    let sink = LokiSink::start("127.0.0.1:0").await.expect("sink");
    let mut relay = Relay::spawn(&config(&sim, &[("main", &sink, "")]));
    relay.wait_ready().await;
    let rss_before = relay.rss_kib();
    for p in 0..PODS {
        let mut pod = PodSpec::new("idle", format!("p-{p}"));
        for c in 0..PER_POD {
            pod = pod.container(ContainerSpec::new(format!("c{c}")));
        }
        sim.add_pod(pod);
    }
    let n = PODS * PER_POD;
    let deadline = Instant::now() + Duration::from_secs(300);
    while relay.metric("kube_log_relay_stream_opens_total").await < n as f64 {
        assert!(Instant::now() < deadline, "streams did not all open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = relay.rss_kib();
    let connections = sim.connections_open();
    relay.stop();
    report("idle: tailers", n as f64, "", "");
    report(
        "idle: RSS per idle tailer",
        (rss - rss_before) as f64 / n as f64,
        "KiB",
        "≤ 32",
    );
    report(
        "idle: API connections",
        connections as f64,
        "",
        &format!("≤ ⌈N/100⌉ + 2 = {}", n.div_ceil(100) + 2),
    );
}

/// One receiver down while 20 containers write 200,000 lines: the relay's memory stays within
/// `buffer_size` + 64 MiB, and the healthy receiver gets every line.
async fn outage() {
    let sim = Sim::start("127.0.0.1:0").await.expect("sim");
    let (good, bad) = (
        LokiSink::start("127.0.0.1:0").await.expect("sink"),
        LokiSink::start("127.0.0.1:0").await.expect("sink"),
    );
    bad.fail_for(503, Duration::from_secs(3600));
    let mut relay = Relay::spawn(&config(
        &sim,
        &[
            ("good", &good, ""),
            (
                "bad",
                &bad,
                "buffer_size = \"16MiB\"\non_full = \"drop\"\nmax_retries = 1000",
            ),
        ],
    ));
    relay.wait_ready().await;
    for p in 0..20 {
        sim.add_pod(
            PodSpec::new("outage", format!("p-{p}"))
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("c")
                        .rate(2_000.0)
                        .line_size(200)
                        .total_lines(10_000, 0),
                ),
        );
    }
    let arrived = good
        .wait_for(|e| e.len() >= 200_000, Duration::from_secs(300))
        .await;
    let rss = relay.peak_rss_kib();
    relay.stop();
    assert!(
        arrived,
        "the healthy receiver got {} lines",
        good.entries().len()
    );
    report(
        "outage: relay peak RSS",
        rss as f64 / 1024.0,
        "MiB",
        "≤ buffer_size (16) + 64 per receiver",
    );
}

fn report(what: &str, value: f64, unit: &str, floor: &str) {
    println!("{what:<45} {value:>12.3} {unit:<6} {floor}");
}

fn config(sim: &Sim, receivers: &[(&str, &LokiSink, &str)]) -> String {
    let mut text = format!(
        // The client-side limit (qps 50 by default) would pace 5,000 stream opens over minutes:
        // lift it, the benchmark measures the relay, not the limiter.
        "[kubernetes]\napi_server = \"{}\"\nqps = 100000\nburst = 100000\n\n[server]\nlisten = \"127.0.0.1:0\"\nlog_level = \"warn\"\n",
        sim.url()
    );
    for (name, sink, extra) in receivers {
        text += &format!("\n[loki.{name}]\nurl = \"{}\"\n{extra}\n", sink.url());
    }
    text
}

/// The relay under test, as a child process.
struct Relay {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Relay {
    fn spawn(config: &str) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fixed free port: ask the OS for one, then hand it to the relay.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = config.replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\""));
        let path = dir.path().join("config.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let child = Command::new(relay_bin())
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("relay starts");
        Relay {
            child,
            _dir: dir,
            port,
        }
    }

    async fn get(&self, path: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        text.starts_with("HTTP/1.1 200").then_some(text)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/-/ready").await.is_none() {
            assert!(Instant::now() < deadline, "relay not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sum of a metric's samples in `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let Some(text) = self.get("/metrics").await else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn proc(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap_or_default()
    }

    /// User + system CPU seconds of the relay so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = self.proc("stat");
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0 // USER_HZ is 100 on Linux
    }

    fn status_kib(&self, key: &str) -> u64 {
        self.proc("status")
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
