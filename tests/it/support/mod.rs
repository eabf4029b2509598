//! The one harness of the integration tests: a simulator on an ephemeral port, relays started
//! against it from real TOML, sinks that count every line, and waiting with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use kube_log_relay::app::Relay;
use kube_log_relay::config;
use kube_log_relay::sim::Sim;
use kube_log_relay::sim::loki::{LokiSink, ReceivedEntry};

pub mod metrics;

pub use metrics::Metrics;

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Starts a simulator on an ephemeral loopback port.
pub async fn sim() -> Sim {
    Sim::start("127.0.0.1:0").await.expect("simulator starts")
}

/// Starts an extra Loki sink on an ephemeral loopback port.
pub async fn sink() -> LokiSink {
    LokiSink::start("127.0.0.1:0").await.expect("sink starts")
}

/// The `[kubernetes]`, `[tail]` and `[server]` part every test relay shares: the simulator, fast
/// backoffs and grace so tests run in seconds, endpoints on an ephemeral port.
pub fn base_config(sim: &Sim) -> String {
    format!(
        r#"
[kubernetes]
api_server = "{}"

[tail]
min_backoff = "50ms"
max_backoff = "500ms"
terminated_grace = "1s"

[server]
listen = "127.0.0.1:0"
"#,
        sim.url()
    )
}

/// A `[loki.<name>]` table pushing to `sink` with a short batch wait and retry backoff.
pub fn loki_table(name: &str, sink: &LokiSink, extra: &str) -> String {
    format!(
        r#"
[loki.{name}]
url = "{}"
batch_wait = "100ms"
min_backoff = "100ms"
max_backoff = "1s"
{extra}
"#,
        sink.url()
    )
}

/// Writes `text` to `path` and starts a relay from it, so that it can be reloaded.
pub async fn relay_from_file(path: &std::path::Path, text: &str) -> Relay {
    kube_log_relay::logging::init(
        "info,kube_client=warn,kube_runtime=warn",
        Default::default(),
    );
    std::fs::write(path, text).expect("config file written");
    let config = config::load(path)
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n{text}"));
    Relay::start_with(config, Some(path.to_path_buf()))
        .await
        .expect("relay starts")
}

/// Parses `text` with the real configuration loader and starts a relay.
pub async fn relay(text: &str) -> Relay {
    // Shown by the test runner when a test fails.
    kube_log_relay::logging::init(
        "info,kube_client=warn,kube_runtime=warn",
        Default::default(),
    );
    let config = config::parse(text, &|_| None)
        .unwrap_or_else(|e| panic!("test configuration is invalid:\n{e}\n{text}"));
    Relay::start(config).await.expect("relay starts")
}

/// Waits until `cond` holds, checking every 20 ms, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an asynchronous condition.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines a sink received for one container, in arrival order.
pub fn lines_of(
    entries: &[ReceivedEntry],
    namespace: &str,
    pod: &str,
    container: &str,
) -> Vec<String> {
    entries
        .iter()
        .filter(|e| {
            e.labels.get("namespace").map(String::as_str) == Some(namespace)
                && e.labels.get("pod").map(String::as_str) == Some(pod)
                && e.labels.get("container").map(String::as_str) == Some(container)
        })
        .map(|e| e.line.clone())
        .collect()
}

/// Counts each line: a multiset, to compare "each line exactly once" whatever the order.
pub fn multiset(lines: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.as_str()).or_default() += 1;
    }
    m
}

/// Asserts that `received` holds every line of `written` exactly once (any order), naming the
/// first missing and the first duplicated line when it does not.
pub fn assert_exactly_once(what: &str, written: &[String], received: &[String]) {
    let w = multiset(written);
    let r = multiset(received);
    let missing: Vec<_> = w.keys().filter(|k| !r.contains_key(*k)).take(3).collect();
    let duplicated: Vec<_> = r.iter().filter(|(_, n)| **n > 1).take(3).collect();
    let unexpected: Vec<_> = r.keys().filter(|k| !w.contains_key(*k)).take(3).collect();
    assert!(
        missing.is_empty()
            && duplicated.is_empty()
            && unexpected.is_empty()
            && written.len() == received.len(),
        "{what}: written {} lines, received {}; missing e.g. {missing:?}; duplicated e.g. {duplicated:?}; unexpected e.g. {unexpected:?}",
        written.len(),
        received.len()
    );
}

/// The registry's view of every target, as `/api/v1/targets` serves it.
pub async fn targets(relay: &Relay) -> Vec<kube_log_relay::registry::TargetView> {
    relay
        .registry()
        .send(kube_log_relay::registry::GetTargets)
        .await
        .expect("registry answers")
        .targets
}

/// Waits until `n` targets exist and every one of them finished (containers that exited).
pub async fn all_finished(relay: &Relay, n: usize) {
    let start = Instant::now();
    loop {
        let t = targets(relay).await;
        if t.len() == n && t.iter().all(|v| v.state == "finished") {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {n} finished targets; have: {:?}",
            t.iter()
                .map(|v| (v.id.as_ref().map(|i| i.to_string()), v.state.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when this runs in CI (`CI=true`, as `.ci/run` is run), where a missing tool is a failure.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// The first of `names` found on `PATH`. Where none is: the test should skip, so this prints
/// `SKIPPED` with `install` (how to get it) and returns `None` — but under CI ([`in_ci`]) it
/// fails the test instead, since `.ci/run` installs every tool the tests use.
pub fn require_tool(names: &[&str], install: &str) -> Option<std::path::PathBuf> {
    require_tool_in(std::env::var_os("PATH"), names, install, in_ci())
}

fn require_tool_in(
    path: Option<std::ffi::OsString>,
    names: &[&str],
    install: &str,
    ci: bool,
) -> Option<std::path::PathBuf> {
    let found = path.and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let what = names.join(" or ");
        assert!(
            !ci,
            "{what} is not installed, and under CI=true a test that needs it must run: {install}"
        );
        println!("SKIPPED: {what} is not installed ({install})");
    }
    found
}

/// A plain HTTP/1.1 GET over a real socket; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A plain HTTP/1.1 POST without a body; returns the status code and the body.
pub async fn http_post(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "POST", path).await
}

/// Fails the test when no complete answer came within [`DEADLINE`].
async fn http_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: cannot connect: {e}"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        buf
    };
    let buf = tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| {
            panic!("{method} http://{addr}{path}: no complete answer within {DEADLINE:?}")
        });
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A relay running as a child process (`kube-log-relay run --config FILE`), for the tests that
/// stop, restart and kill it. Its logs go to `relay-N.log` beside the configuration and are
/// printed when a check fails; a process still running when this is dropped is killed.
pub struct RelayProcess {
    child: std::process::Child,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl RelayProcess {
    /// Writes `text` to `dir/relay.toml` (once) and starts the relay binary on it; `n` numbers
    /// the log file.
    pub fn start(dir: &std::path::Path, text: &str, n: usize) -> RelayProcess {
        RelayProcess::start_with_env(dir, text, n, &[])
    }

    /// [`RelayProcess::start`] with extra environment variables (proxies, `POD_NAME`, …).
    pub fn start_with_env(
        dir: &std::path::Path,
        text: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let config = dir.join("relay.toml");
        std::fs::write(&config, text).expect("write the relay configuration");
        let log = dir.join(format!("relay-{n}.log"));
        let out = std::fs::File::create(&log).expect("create the relay log");
        let err = out.try_clone().expect("clone the relay log handle");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-log-relay"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,kube_client=warn,kube_runtime=warn")
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start the relay binary");
        RelayProcess { child, config, log }
    }

    /// The configuration file the relay reads (again, on `POST /-/reload` or SIGHUP).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config.clone()
    }

    /// The address of the relay's HTTP endpoints (`listen = "127.0.0.1:0"` picks it at start),
    /// read from its "relay started" log line; waits for it with a deadline.
    pub async fn http_addr(&mut self) -> std::net::SocketAddr {
        let mut addr = None;
        eventually("the relay process logs its HTTP address", || {
            self.alive();
            addr = self
                .log()
                .lines()
                .filter(|l| l.contains("\"relay started\""))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("listen="))
                        .and_then(|a| a.trim_matches('"').parse().ok())
                });
            addr.is_some()
        })
        .await;
        addr.expect("checked by the wait")
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test, showing the log, when the relay already exited (a bad configuration,
    /// a failed start); returns true otherwise, to use inside [`eventually`].
    pub fn alive(&mut self) -> bool {
        if let Some(status) = self.child.try_wait().expect("poll the relay process") {
            panic!("the relay exited with {status}; its log:\n{}", self.log());
        }
        true
    }

    /// Sends `signal` (`"TERM"`, `"KILL"`, …) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} {} failed",
            self.child.id()
        );
    }

    /// Waits (polling, at most [`DEADLINE`]) until the process exits; returns its status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the relay process") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the relay did not exit within {DEADLINE:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0) within [`DEADLINE`].
    pub async fn terminate(mut self) {
        self.signal("TERM");
        let status = self.wait().await;
        assert!(
            status.success(),
            "after SIGTERM the relay exited with {status}; its log:\n{}",
            self.log()
        );
    }

    /// SIGKILL: no shutdown, no final write of positions (a crash).
    pub async fn kill(mut self) {
        self.signal("KILL");
        self.wait().await;
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Held by the tests that load the machine most (thousands of streams, hundreds of
/// connections), so that two of them never run at once and a bound derived from the
/// configuration (N ÷ qps + 10 s) measures the relay rather than its neighbours.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

#[cfg(test)]
mod tests {
    use super::require_tool_in;
    use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

    /// A count the container never reaches fails the wait (under paused time: at once) and says
    /// what it waited for and what it saw, instead of hanging the test.
    #[test]
    #[should_panic(expected = "waiting for ns/short/c to write 20 lines: it wrote 10")]
    fn waiting_for_lines_never_written_fails_with_what_was_seen() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("tokio runtime")
            .block_on(async {
                let sim = super::sim().await;
                sim.add_pod(
                    PodSpec::new("ns", "short")
                        .restart_policy(RestartPolicy::Never)
                        .container(ContainerSpec::new("c").rate(100.0).total_lines(10, 0)),
                );
                sim.wait_written("ns", "short", "c", 10).await;
                sim.wait_written("ns", "short", "c", 20).await;
            });
    }

    fn path_with(dir: &std::path::Path) -> Option<std::ffi::OsString> {
        Some(dir.as_os_str().to_os_string())
    }

    #[test]
    fn a_tool_on_the_path_is_found_by_any_of_its_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("chromium-browser"), b"").unwrap();
        let found = require_tool_in(
            path_with(dir.path()),
            &["chromium", "chromium-browser"],
            "apt-get install chromium",
            true,
        );
        assert_eq!(found, Some(dir.path().join("chromium-browser")));
    }

    #[test]
    fn a_missing_tool_skips_outside_ci() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            require_tool_in(path_with(dir.path()), &["no-such-tool"], "nowhere", false),
            None
        );
    }

    #[test]
    #[should_panic(expected = "no-such-tool is not installed, and under CI=true")]
    fn a_missing_tool_fails_the_test_under_ci() {
        let dir = tempfile::tempdir().unwrap();
        require_tool_in(path_with(dir.path()), &["no-such-tool"], "nowhere", true);
    }
}
