//! The relay under test: the release binary as a child process with a generated configuration,
//! measured through `/proc` and its own `/metrics`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::procs;

const BIN: &str = env!("CARGO_BIN_EXE_kube-log-relay");

/// The relay binary to measure: this build's, unless `E2E_RELAY_BIN` names another.
fn relay_bin() -> String {
    std::env::var("E2E_RELAY_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// What the generated configuration says.
pub struct Config {
    pub api_server: String,
    /// `[kubernetes.tls_config] ca_file`, for a simulator serving TLS.
    pub ca_file: Option<PathBuf>,
    /// `None`: the default `qps` (50) and `burst`; `Some(q)`: both lifted to `q`, where the
    /// scenario measures the relay rather than the client-side limiter.
    pub qps: Option<u32>,
    /// `[loki.NAME]` tables: name, push URL, extra TOML lines.
    pub receivers: Vec<(String, String, String)>,
}

impl Config {
    /// One receiver `main` at `url`, qps lifted.
    pub fn new(api_server: String, loki_url: String) -> Config {
        Config {
            api_server,
            ca_file: None,
            qps: Some(100_000),
            receivers: vec![("main".into(), loki_url, String::new())],
        }
    }

    fn render(&self, port: u16) -> String {
        let mut text = format!("[kubernetes]\napi_server = \"{}\"\n", self.api_server);
        if let Some(q) = self.qps {
            text += &format!("qps = {q}\nburst = {q}\n");
        }
        if let Some(ca) = &self.ca_file {
            text += &format!(
                "\n[kubernetes.tls_config]\nca_file = \"{}\"\n",
                ca.display()
            );
        }
        text += &format!("\n[server]\nlisten = \"127.0.0.1:{port}\"\nlog_level = \"warn\"\n");
        for (name, url, extra) in &self.receivers {
            text += &format!("\n[loki.{name}]\nurl = \"{url}\"\n{extra}\n");
        }
        text
    }
}

/// The relay, running as a child process.
pub struct Relay {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Relay {
    pub fn spawn(config: &Config) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        // A fixed free port: ask the OS for one, then hand it to the relay.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let path = dir.path().join("config.toml");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config.render(port).as_bytes()))
            .expect("config written");
        let child = Command::new(relay_bin())
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(dir.path())
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/-/ready").await.is_none() {
            assert!(Instant::now() < deadline, "relay not ready after 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sum of a metric's samples in `/metrics` (0 when unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        let Some(text) = self.get("/metrics").await else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        procs::cpu_seconds(self.pid())
    }

    pub fn rss_kib(&self) -> u64 {
        procs::status_kib(self.pid(), "VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> u64 {
        procs::status_kib(self.pid(), "VmHWM:")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
