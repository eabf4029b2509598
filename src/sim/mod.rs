//! The simulator (SPEC §8.5): a Kubernetes API look-alike with scripted containers, and a Loki
//! sink, served over real sockets on one listener. Every integration test, benchmark and the demo
//! run against it, so it behaves like the API server and kubelet where the relay depends on them:
//! resourceVersions, watch bookmarks and `410 Expired`, `pods/log` with `sinceTime` truncated to
//! seconds and Go's RFC3339Nano timestamps, restarts that keep the previous log, Status JSON errors.
//!
//! - [`cluster`]: pods, container lifecycles, resourceVersions, the watch event history.
//! - [`container`]: scripted containers and their append-only log files.
//! - [`logs`]: the `pods/log` request semantics (filters, follow).
//! - [`selector`]: label and field selectors.
//! - [`api`]: the HTTP routes.
//! - [`coordination`]: Leases and ConfigMaps (clustering, the `kubernetes` positions backend).
//! - [`loki`]: the Loki sink.
//! - [`scenario`]: the TOML scenario of `kube-log-relay sim --scenario FILE`.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod connections;
pub mod container;
pub mod coordination;
pub mod logs;
pub mod loki;
pub mod oauth;
pub mod proxy;
pub mod scenario;
pub mod selector;
pub mod stats;
pub mod tls;

mod history;
mod pod;
mod pod_spec;
mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use auth::AuthOptions;
pub use cluster::{ClusterOptions, Owner, PodSpec, RestartPolicy};
pub use connections::ConnectionStats;
pub use container::{ContainerSpec, LogScript};
pub use oauth::{OAuth2Options, TokenIssuer, TokenRequest};
pub use scenario::{demo_pods, run};
pub use stats::SimStats;
pub use tls::{Pki, TlsFiles};

use cluster::Cluster;

/// HTTP/2 streams per connection the simulator advertises by default, like Go's (and the API
/// server's) default, so the relay's connection pool meets the same limit as in production
/// (SPEC §4.1).
pub const MAX_CONCURRENT_STREAMS: u32 = 250;

/// How the simulator serves: the cluster tunables, TLS, the HTTP/2 stream limit and
/// authentication. `SimOptions::default()` is plain HTTP without authentication, as
/// [`Sim::start`].
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Watch history, log rotation, bookmark interval.
    pub cluster: ClusterOptions,
    /// Serve HTTPS (HTTP/2 or HTTP/1.1 by ALPN) with a CA and certificates generated at start,
    /// and write the CA, a client certificate and a kubeconfig (see [`TlsFiles`]).
    pub tls: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS on every HTTP/2 connection (TLS and h2c alike).
    pub max_concurrent_streams: u32,
    /// Require credentials on the Kubernetes API; `None`: every request passes.
    pub auth: Option<AuthOptions>,
    /// Where `tls` writes its files; a fresh directory under the system's temporary directory
    /// when `None`.
    pub state_dir: Option<PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            cluster: ClusterOptions::default(),
            tls: false,
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            auth: None,
            state_dir: None,
        }
    }
}

impl From<ClusterOptions> for SimOptions {
    fn from(cluster: ClusterOptions) -> Self {
        SimOptions {
            cluster,
            ..Default::default()
        }
    }
}

struct TlsState {
    pki: Pki,
    files: TlsFiles,
}

struct Inner {
    cluster: Arc<Cluster>,
    objects: Arc<coordination::Objects>,
    sink: loki::LokiSink,
    addr: SocketAddr,
    tls: Option<TlsState>,
    control: stats::Control,
}

/// A running simulator: cheap to clone; the server runs until the runtime stops.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl Sim {
    /// Binds `addr` (`"127.0.0.1:0"` for an ephemeral port) and serves the Kubernetes API and
    /// the Loki sink over plain HTTP from a spawned task.
    pub async fn start(addr: &str) -> std::io::Result<Sim> {
        Sim::start_with(addr, SimOptions::default()).await
    }

    /// Like [`Sim::start`], with options: [`ClusterOptions`] alone, or [`SimOptions`] for TLS,
    /// the HTTP/2 stream limit and authentication.
    pub async fn start_with(addr: &str, options: impl Into<SimOptions>) -> std::io::Result<Sim> {
        let options: SimOptions = options.into();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let tls = match options.tls {
            true => Some(tls_state(&options, local)?),
            false => None,
        };
        let cluster = Cluster::new(tokio::runtime::Handle::current(), options.cluster.clone());
        let sink = loki::LokiSink::new();
        let auth = Arc::new(auth::AuthState::new(options.auth.clone()));
        let control = stats::Control {
            tls: options.tls,
            max_concurrent_streams: options.max_concurrent_streams,
            connections: Arc::default(),
            auth: auth.clone(),
        };
        let objects = Arc::new(coordination::Objects::default());
        let router = api::router(cluster.clone())
            .merge(coordination::router(objects.clone()))
            .merge(sink.router())
            .merge(auth.issuer.router())
            .merge(control.clone().router());
        let acceptor = match &tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                t.pki.server_config().map_err(std::io::Error::other)?,
            ))),
            None => None,
        };
        serve::spawn(
            listener,
            serve::Server {
                router,
                tls: acceptor,
                max_concurrent_streams: options.max_concurrent_streams,
                connections: control.connections.clone(),
                auth,
            },
        );
        Ok(Sim {
            inner: Arc::new(Inner {
                cluster,
                objects,
                sink,
                addr: local,
                tls,
                control,
            }),
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// The address the simulator listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The Loki sink served on the same listener.
    pub fn sink(&self) -> loki::LokiSink {
        self.inner.sink.clone()
    }

    /// The sink's push URL: `http://127.0.0.1:PORT/loki/api/v1/push` (`https` with TLS).
    pub fn loki_url(&self) -> String {
        format!("{}/loki/api/v1/push", self.url())
    }

    /// The cluster state behind the API.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.inner.cluster
    }

    /// The Leases and ConfigMaps, with the requests served for them.
    pub fn coordination(&self) -> &Arc<coordination::Objects> {
        &self.inner.objects
    }

    /// The Leases of namespace `ns`, by name.
    pub fn leases(&self, ns: &str) -> Vec<k8s_openapi::api::coordination::v1::Lease> {
        self.typed(coordination::Kind::Lease, ns)
    }

    /// The ConfigMaps of namespace `ns`, by name.
    pub fn config_maps(&self, ns: &str) -> Vec<k8s_openapi::api::core::v1::ConfigMap> {
        self.typed(coordination::Kind::ConfigMap, ns)
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, kind: coordination::Kind, ns: &str) -> Vec<T> {
        let every = selector::LabelSelector::parse("").unwrap_or_default();
        let (_, items) = self.inner.objects.list(kind, Some(ns), &every);
        items
            .iter()
            .filter_map(|o| serde_json::from_value((**o).clone()).ok())
            .collect()
    }

    /// Creates a pod and starts its containers (running and ready unless they have a start
    /// delay or init containers).
    pub fn add_pod(&self, pod: PodSpec) {
        self.inner.cluster.add_pod(pod);
    }

    /// Deletes a pod: containers stop writing, open follows end after the log is flushed, and
    /// the pod is gone from list and GET.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.inner.cluster.delete_pod(namespace, name);
    }

    /// Replaces a pod's labels (a MODIFIED event).
    pub fn set_pod_labels(&self, namespace: &str, name: &str, labels: BTreeMap<String, String>) {
        self.inner.cluster.set_pod_labels(namespace, name, labels);
    }

    /// Kills the container and starts a new instance: new container ID, restartCount + 1, the
    /// old instance's log kept for `previous=true`.
    pub fn restart_container(&self, namespace: &str, pod: &str, container: &str) {
        self.inner
            .cluster
            .restart_container(namespace, pod, container);
    }

    /// The container exits with `code`; the pod's restartPolicy decides whether it restarts.
    pub fn exit_container(&self, namespace: &str, pod: &str, container: &str, code: i32) {
        self.inner
            .cluster
            .exit_container(namespace, pod, container, code);
    }

    /// Fault switch: `false` cuts every open log stream and answers new log requests with a
    /// 503 Status (an API server outage); `true` restores.
    pub fn set_logs_available(&self, available: bool) {
        self.inner
            .cluster
            .cuts
            .available
            .store(available, Ordering::Release);
        if !available {
            self.inner.cluster.cuts.cut_all();
        }
    }

    /// Ends every open log stream now.
    pub fn cut_streams(&self) {
        self.inner.cluster.cuts.cut_all();
    }

    /// Cuts each log stream after it has sent `lines` lines (None = never).
    pub fn set_cut_every(&self, lines: Option<u64>) {
        self.inner
            .cluster
            .cuts
            .every
            .store(lines.unwrap_or(0), Ordering::Relaxed);
    }

    /// Sets the interval of BOOKMARK events for watches opened from now on.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.inner
            .cluster
            .set_options(|o| o.bookmark_interval = interval);
    }

    /// Number of `pods/log` requests answered 200 for this container.
    pub fn log_opens(&self, namespace: &str, pod: &str, container: &str) -> u64 {
        self.inner
            .cluster
            .stats(namespace, pod, container)
            .map_or(0, |s| s.opens.load(Ordering::Relaxed))
    }

    /// Every line text (without timestamp) written by every instance, in write order.
    pub fn written_lines(&self, namespace: &str, pod: &str, container: &str) -> Vec<String> {
        self.inner
            .cluster
            .stats(namespace, pod, container)
            .map(|s| s.written_lines())
            .unwrap_or_default()
    }

    /// Number of lines written by every instance.
    pub fn written_count(&self, namespace: &str, pod: &str, container: &str) -> u64 {
        self.inner
            .cluster
            .stats(namespace, pod, container)
            .map_or(0, |s| s.written_total())
    }

    /// Resolves once at least `n` lines were written (for tests; waits for the container to
    /// exist if it does not yet). Panics after 60 s (of tokio's clock, so at once under paused
    /// time when nothing else can happen), naming the container, the count it waited for and
    /// the count it saw — a wrong count fails the test instead of hanging it.
    pub async fn wait_written(&self, namespace: &str, pod: &str, container: &str, n: usize) {
        const DEADLINE: Duration = Duration::from_secs(60);
        let reached = async {
            let stats = loop {
                match self.inner.cluster.stats(namespace, pod, container) {
                    Some(stats) => break stats,
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            };
            let mut written = stats.subscribe_written();
            // The sender lives as long as `stats`, so `wait_for` only ends when the count is
            // reached.
            let _ = written.wait_for(|count| *count >= n as u64).await;
        };
        if tokio::time::timeout(DEADLINE, reached).await.is_err() {
            let seen = match self.inner.cluster.stats(namespace, pod, container) {
                Some(stats) => format!("it wrote {}", stats.written_total()),
                None => "the container does not exist".to_string(),
            };
            panic!(
                "timed out after {DEADLINE:?} waiting for {namespace}/{pod}/{container} to write {n} lines: {seen}"
            );
        }
    }

    /// Connections accepted so far (over TLS: handshakes completed).
    pub fn connections_opened(&self) -> u64 {
        self.inner.control.connections.opened()
    }

    /// Connections open now.
    pub fn connections_open(&self) -> u64 {
        self.inner.control.connections.open_count()
    }

    /// Every counter, as `GET /sim/stats` serves it.
    pub fn stats(&self) -> SimStats {
        self.inner.control.stats()
    }

    /// Every open connection with its open, total and most-at-once streams.
    pub fn connection_stats(&self) -> Vec<ConnectionStats> {
        self.inner.control.connections.list()
    }

    /// Closes connection `id` now (no GOAWAY: the socket just closes); false when it is not
    /// open.
    pub fn kill_connection(&self, id: u64) -> bool {
        self.inner.control.connections.kill(id)
    }

    /// Closes the connection with the most open streams; returns it as it was before.
    pub fn kill_busiest_connection(&self) -> Option<ConnectionStats> {
        self.inner.control.connections.kill_busiest()
    }

    /// The files written at start with TLS: CA, client certificate and key, kubeconfig.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.inner.tls.as_ref().map(|t| &t.files)
    }

    /// The generated CA and certificates, with TLS.
    pub fn pki(&self) -> Option<&Pki> {
        self.inner.tls.as_ref().map(|t| &t.pki)
    }

    /// Replaces the accepted credentials (`None`: every request passes), e.g. to rotate a
    /// token. Client certificates are verified at the handshake either way.
    pub fn set_auth(&self, auth: Option<AuthOptions>) {
        self.inner.control.auth.set_options(auth);
    }

    /// The OAuth2 token endpoint's state: requests seen, scripted failures, expiry.
    pub fn oauth2(&self) -> &TokenIssuer {
        &self.inner.control.auth.issuer
    }

    /// The OAuth2 token endpoint's URL: `…/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("{}{}", self.url(), oauth::TOKEN_PATH)
    }

    /// API requests refused with 401.
    pub fn auth_rejections(&self) -> u64 {
        self.inner.control.auth.rejections()
    }

    /// API requests refused for an unknown or expired bearer token.
    pub fn rejected_tokens(&self) -> u64 {
        self.inner.control.auth.rejected_tokens()
    }
}

/// Generates the certificates and writes the files for a TLS simulator on `addr`.
fn tls_state(options: &SimOptions, addr: SocketAddr) -> std::io::Result<TlsState> {
    let pki = Pki::generate().map_err(std::io::Error::other)?;
    let dir = options.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "kube-log-relay-sim-{}-{}",
            std::process::id(),
            addr.port()
        ))
    });
    let auth = options.auth.as_ref();
    let user = tls::KubeconfigUser {
        client_cert: auth.is_none_or(|a| a.client_certs),
        token: auth
            .filter(|a| !a.client_certs)
            .and_then(|a| a.bearer_tokens.first().cloned()),
    };
    let files = tls::write_files(&dir, &pki, &format!("https://{addr}"), &user)?;
    Ok(TlsState { pki, files })
}

#[cfg(test)]
mod tests {
    //! The simulator through real sockets, with `kube`'s client as the relay uses it.

    use super::*;
    use ::kube::api::{Api, ListParams, LogParams, WatchEvent, WatchParams};
    use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn start() -> (Sim, ::kube::Client) {
        start_with(ClusterOptions::default()).await
    }

    async fn start_with(options: ClusterOptions) -> (Sim, ::kube::Client) {
        let sim = Sim::start_with("127.0.0.1:0", options).await.expect("bind");
        let config = ::kube::Config::new(sim.url().parse().expect("url"));
        let client = ::kube::Client::try_from(config).expect("client");
        (sim, client)
    }

    /// Waits until `f` holds, failing the test after the deadline.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        let until = tokio::time::Instant::now() + DEADLINE;
        while !f() {
            assert!(
                tokio::time::Instant::now() < until,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// GET `path` and return the body, or the API error.
    async fn get(client: &::kube::Client, path: &str) -> Result<String, ::kube::Error> {
        let request = http::Request::get(path).body(Vec::new()).expect("request");
        tokio::time::timeout(DEADLINE, client.request_text(request))
            .await
            .expect("response in time")
    }

    fn api_error(result: Result<String, ::kube::Error>) -> (u16, String) {
        match result {
            Err(::kube::Error::Api(status)) => (status.code, status.message),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    fn pod(ns: &str, name: &str) -> PodSpec {
        PodSpec::new(ns, name)
            .label("app", "web")
            .container(ContainerSpec::new("app").rate(200.0))
    }

    #[tokio::test]
    async fn list_get_and_watch_events() {
        let (sim, client) = start().await;
        sim.set_bookmark_interval(Duration::from_millis(100));
        sim.add_pod(pod("default", "web-1"));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let list = pods.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let p = &list.items[0];
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        let cs = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert!(
            cs.ready
                && cs
                    .container_id
                    .as_ref()
                    .unwrap()
                    .starts_with("containerd://")
        );
        let rv = list.metadata.resource_version.clone().unwrap();

        // Selectors.
        let all: Api<Pod> = Api::all(client.clone());
        assert_eq!(
            all.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            all.list(&ListParams::default().labels("app notin (web)"))
                .await
                .unwrap()
                .items
                .len(),
            0
        );
        assert_eq!(
            all.list(&ListParams::default().fields("metadata.name=web-1"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            all.list(&ListParams::default().fields("spec.nodeName!=node-1"))
                .await
                .unwrap()
                .items
                .len(),
            0
        );

        let mut events = pods
            .watch(&WatchParams::default().timeout(30), &rv)
            .await
            .unwrap()
            .boxed();
        sim.set_pod_labels(
            "default",
            "web-1",
            [("app".to_string(), "api".to_string())].into(),
        );
        sim.delete_pod("default", "web-1");
        sim.add_pod(pod("default", "web-2"));
        let mut seen = Vec::new();
        let mut last_rv = 0u64;
        while seen.len() < 4 {
            let event = tokio::time::timeout(DEADLINE, events.try_next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let (kind, name, rv) = match event {
                WatchEvent::Added(p) => (
                    "ADDED",
                    p.metadata.name.unwrap(),
                    p.metadata.resource_version,
                ),
                WatchEvent::Modified(p) => (
                    "MODIFIED",
                    p.metadata.name.unwrap(),
                    p.metadata.resource_version,
                ),
                WatchEvent::Deleted(p) => (
                    "DELETED",
                    p.metadata.name.unwrap(),
                    p.metadata.resource_version,
                ),
                WatchEvent::Bookmark(b) => {
                    ("BOOKMARK", String::new(), Some(b.metadata.resource_version))
                }
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            };
            let rv: u64 = rv.unwrap().parse().unwrap();
            assert!(rv >= last_rv, "resourceVersions never go back");
            last_rv = rv;
            seen.push(format!("{kind} {name}"));
        }
        assert_eq!(
            seen,
            [
                "MODIFIED web-1",
                "DELETED web-1",
                "ADDED web-2",
                "BOOKMARK "
            ]
        );

        // A deleted pod is a 404 Status.
        let (code, message) =
            api_error(get(&client, "/api/v1/namespaces/default/pods/web-1").await);
        assert_eq!((code, message.as_str()), (404, "pods \"web-1\" not found"));
    }

    #[tokio::test]
    async fn selector_watch_sees_pods_leaving_and_joining() {
        let (sim, client) = start().await;
        sim.add_pod(pod("default", "web-1"));
        let pods: Api<Pod> = Api::all(client);
        let rv = pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap();
        let mut events = pods
            .watch(&WatchParams::default().labels("app=web"), &rv)
            .await
            .unwrap()
            .boxed();
        sim.set_pod_labels(
            "default",
            "web-1",
            [("app".to_string(), "other".to_string())].into(),
        );
        sim.set_pod_labels(
            "default",
            "web-1",
            [("app".to_string(), "web".to_string())].into(),
        );
        let first = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(first, WatchEvent::Deleted(_)), "{first:?}");
        let second = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(second, WatchEvent::Added(_)), "{second:?}");
    }

    #[tokio::test]
    async fn watch_from_an_expired_resource_version_gets_410() {
        let (sim, client) = start_with(ClusterOptions {
            history: 5,
            ..Default::default()
        })
        .await;
        sim.add_pod(pod("default", "web-1"));
        for i in 0..10 {
            sim.set_pod_labels(
                "default",
                "web-1",
                [("n".to_string(), i.to_string())].into(),
            );
        }
        let pods: Api<Pod> = Api::all(client);
        let mut events = pods
            .watch(&WatchParams::default(), "2")
            .await
            .unwrap()
            .boxed();
        let event = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Error(status) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                assert!(
                    status.message.starts_with("too old resource version: 2"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected 410, got {other:?}"),
        }
        // Resuming from a retained resourceVersion works.
        let rv = sim.cluster().resource_version();
        let mut events = pods
            .watch(&WatchParams::default(), &(rv - 2).to_string())
            .await
            .unwrap()
            .boxed();
        let event = tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(event, WatchEvent::Modified(_)), "{event:?}");
    }

    #[tokio::test]
    async fn kube_runtime_watcher_sees_an_added_pod() {
        use ::kube::runtime::watcher;
        let (sim, client) = start().await;
        sim.add_pod(pod("default", "first"));
        let pods: Api<Pod> = Api::all(client);
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        let mut added_later = false;
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(event) = stream.try_next().await.unwrap() {
                match event {
                    watcher::Event::InitDone if !added_later => {
                        added_later = true;
                        sim.add_pod(pod("other", "second"));
                    }
                    watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some("second") => {
                        return true;
                    }
                    _ => {}
                }
            }
            false
        })
        .await
        .expect("watcher event in time");
        assert!(found);
    }

    /// Parses `TIMESTAMP TEXT` lines.
    fn stamped(body: &str) -> Vec<(jiff::Timestamp, String)> {
        body.lines()
            .map(|l| {
                let (ts, text) = l.split_once(' ').expect("timestamp prefix");
                (ts.parse().expect("RFC3339"), text.to_string())
            })
            .collect()
    }

    #[tokio::test]
    async fn logs_timestamps_trim_zeros_and_since_time_truncates_to_seconds() {
        let (sim, client) = start().await;
        sim.add_pod(pod("ns", "p"));
        sim.wait_written("ns", "p", "app", 300).await;
        let base = "/api/v1/namespaces/ns/pods/p/log?container=app&timestamps=true";
        let body = get(&client, base).await.unwrap();
        let shape =
            regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z ns/p/app i=0 n=\d+ ")
                .unwrap();
        for line in body.lines() {
            assert!(shape.is_match(line), "bad line: {line}");
        }
        let lines = stamped(&body);
        assert!(lines.len() >= 300);
        // A line in the middle of a second, and a sinceTime later in that same second.
        let (ts, text) = lines
            .iter()
            .skip(1)
            .find(|(ts, _)| (100_000_000..800_000_000).contains(&ts.subsec_nanosecond()))
            .expect("a line at a fractional second")
            .clone();
        let second = jiff::Timestamp::from_second(ts.as_second()).unwrap();
        let since = format!("{}.95Z", second.strftime("%Y-%m-%dT%H:%M:%S"));
        let body = get(&client, &format!("{base}&sinceTime={since}"))
            .await
            .unwrap();
        let filtered = stamped(&body);
        assert!(
            filtered.iter().any(|(_, t)| *t == text),
            "the line at {ts} is returned for sinceTime {since}"
        );
        assert!(filtered.iter().all(|(t, _)| *t >= second));
        let expected = lines.iter().filter(|(t, _)| *t >= second).count();
        assert!(
            filtered.len() >= expected,
            "every line from second {second} on"
        );
    }

    #[tokio::test]
    async fn logs_previous_after_restart_and_errors() {
        let (sim, client) = start().await;
        sim.add_pod(pod("ns", "p").container(ContainerSpec::new("side").rate(0.0)));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
        let lp = |previous: bool| LogParams {
            container: Some("app".into()),
            previous,
            ..Default::default()
        };

        let (code, message) = api_error(get(&client, "/api/v1/namespaces/ns/pods/p/log").await);
        assert_eq!(code, 400);
        assert_eq!(
            message,
            "a container name must be specified for pod p, choose one of: [app side]"
        );
        let (code, message) =
            api_error(get(&client, "/api/v1/namespaces/ns/pods/p/log?container=nope").await);
        assert_eq!(
            (code, message.as_str()),
            (400, "container nope is not valid for pod p")
        );
        let (code, message) = api_error(get(&client, "/api/v1/namespaces/ns/pods/gone/log").await);
        assert_eq!((code, message.as_str()), (404, "pods \"gone\" not found"));
        let Err(::kube::Error::Api(status)) = pods.logs("p", &lp(true)).await else {
            panic!("previous must fail")
        };
        assert_eq!(
            status.message,
            "previous terminated container \"app\" in pod \"p\" not found"
        );

        sim.wait_written("ns", "p", "app", 5).await;
        let id_before = pods
            .get("p")
            .await
            .unwrap()
            .status
            .unwrap()
            .container_statuses
            .unwrap()[0]
            .container_id
            .clone();
        sim.restart_container("ns", "p", "app");
        let written_first = sim.written_count("ns", "p", "app");
        sim.wait_written("ns", "p", "app", written_first as usize + 3)
            .await;

        let previous = pods.logs("p", &lp(true)).await.unwrap();
        let want: Vec<String> = sim
            .written_lines("ns", "p", "app")
            .into_iter()
            .take(written_first as usize)
            .collect();
        assert_eq!(previous.lines().collect::<Vec<_>>(), want);
        let current = pods.logs("p", &lp(false)).await.unwrap();
        assert!(
            current
                .lines()
                .next()
                .unwrap()
                .starts_with("ns/p/app i=1 n=0 ")
        );
        let status = pods
            .get("p")
            .await
            .unwrap()
            .status
            .unwrap()
            .container_statuses
            .unwrap()[0]
            .clone();
        assert_eq!(status.restart_count, 1);
        assert_ne!(status.container_id, id_before);
        assert!(status.last_state.unwrap().terminated.is_some());
        assert_eq!(sim.log_opens("ns", "p", "app"), 2);
    }

    #[tokio::test]
    async fn waiting_container_is_refused_with_the_kubelets_message() {
        let (sim, client) = start().await;
        sim.add_pod(
            PodSpec::new("ns", "slow")
                .container(ContainerSpec::new("app").start_delay(Duration::from_millis(300))),
        );
        let (code, message) = api_error(get(&client, "/api/v1/namespaces/ns/pods/slow/log").await);
        assert_eq!(code, 400);
        assert_eq!(
            message,
            "container \"app\" in pod \"slow\" is waiting to start: ContainerCreating"
        );
        let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
        assert_eq!(
            pods.get("slow")
                .await
                .unwrap()
                .status
                .unwrap()
                .phase
                .as_deref(),
            Some("Pending")
        );
        sim.wait_written("ns", "slow", "app", 1).await;
        assert_eq!(
            pods.get("slow")
                .await
                .unwrap()
                .status
                .unwrap()
                .phase
                .as_deref(),
            Some("Running")
        );
        assert!(
            get(&client, "/api/v1/namespaces/ns/pods/slow/log")
                .await
                .is_ok()
        );
    }

    /// Follows a log until the server ends the response; returns the lines.
    async fn follow(
        client: &::kube::Client,
        ns: &str,
        pod: &str,
        params: &LogParams,
    ) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let stream = pods
            .log_stream(
                pod,
                &LogParams {
                    follow: true,
                    ..params.clone()
                },
            )
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, stream.lines().try_collect::<Vec<String>>())
            .await
            .expect("the follow ended in time")
            .unwrap()
    }

    #[tokio::test]
    async fn follow_ends_when_the_job_container_exits() {
        let (sim, client) = start().await;
        sim.add_pod(
            PodSpec::new("batch", "job")
                .restart_policy(RestartPolicy::Never)
                .owner("Job", "backup")
                .container(ContainerSpec::new("main").rate(500.0).total_lines(40, 0)),
        );
        let lines = follow(&client, "batch", "job", &LogParams::default()).await;
        assert_eq!(lines, sim.written_lines("batch", "job", "main"));
        assert_eq!(lines.len(), 40);
        let pods: Api<Pod> = Api::namespaced(client, "batch");
        eventually("phase Succeeded", || {
            sim.cluster()
                .get("batch", "job")
                .and_then(|p| p.status.clone()?.phase)
                .as_deref()
                == Some("Succeeded")
        })
        .await;
        let p = pods.get("job").await.unwrap();
        assert_eq!(p.metadata.owner_references.unwrap()[0].kind, "Job");
    }

    #[tokio::test]
    async fn exit_code_and_restart_policy_decide_restarts() {
        let (sim, _client) = start().await;
        let restarts = |name: &str| {
            sim.cluster()
                .get("ns", name)
                .and_then(|p| p.status.clone()?.container_statuses)
                .map(|s| s[0].restart_count)
        };
        for (name, policy) in [
            ("always", RestartPolicy::Always),
            ("onfailure", RestartPolicy::OnFailure),
            ("never", RestartPolicy::Never),
        ] {
            sim.add_pod(
                PodSpec::new("ns", name)
                    .restart_policy(policy)
                    .container(ContainerSpec::new("app")),
            );
        }
        for name in ["always", "onfailure", "never"] {
            sim.exit_container("ns", name, "app", 0);
        }
        assert_eq!(
            [restarts("always"), restarts("onfailure"), restarts("never")],
            [Some(1), Some(0), Some(0)]
        );
        let phase = |name: &str| {
            sim.cluster()
                .get("ns", name)
                .and_then(|p| p.status.clone()?.phase)
        };
        assert_eq!(phase("onfailure").as_deref(), Some("Succeeded"));
        sim.add_pod(
            PodSpec::new("ns", "failing")
                .restart_policy(RestartPolicy::OnFailure)
                .container(ContainerSpec::new("app")),
        );
        sim.exit_container("ns", "failing", "app", 3);
        assert_eq!(restarts("failing"), Some(1));
        sim.add_pod(
            PodSpec::new("ns", "failed")
                .restart_policy(RestartPolicy::Never)
                .container(ContainerSpec::new("app")),
        );
        sim.exit_container("ns", "failed", "app", 3);
        assert_eq!(phase("failed").as_deref(), Some("Failed"));
    }

    #[tokio::test]
    async fn cut_every_cuts_each_stream_and_cut_streams_ends_follows() {
        let (sim, client) = start().await;
        sim.add_pod(pod("ns", "p"));
        sim.set_cut_every(Some(10));
        let lines = follow(&client, "ns", "p", &LogParams::default()).await;
        assert_eq!(lines.len(), 10);
        sim.set_cut_every(None);

        let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
        let mut stream = pods
            .log_stream(
                "p",
                &LogParams {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .lines();
        tokio::time::timeout(DEADLINE, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .expect("a first line");
        sim.cut_streams();
        let rest = tokio::time::timeout(DEADLINE, stream.try_collect::<Vec<_>>())
            .await
            .expect("cut in time");
        assert!(rest.is_ok());
    }

    #[tokio::test]
    async fn outage_cuts_streams_and_answers_503() {
        let (sim, _) = start().await;
        // kube retries 503 by default; see the answer itself.
        let mut config = ::kube::Config::new(sim.url().parse().unwrap());
        config.default_retry = false;
        let client = ::kube::Client::try_from(config).unwrap();
        sim.add_pod(pod("ns", "p"));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
        let stream = pods
            .log_stream(
                "p",
                &LogParams {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        sim.set_logs_available(false);
        tokio::time::timeout(DEADLINE, stream.lines().try_collect::<Vec<_>>())
            .await
            .expect("cut in time")
            .unwrap();
        let (code, _) = api_error(get(&client, "/api/v1/namespaces/ns/pods/p/log").await);
        assert_eq!(code, 503);
        sim.set_logs_available(true);
        assert!(
            get(&client, "/api/v1/namespaces/ns/pods/p/log")
                .await
                .is_ok()
        );
        // Only the answered opens count.
        assert_eq!(sim.log_opens("ns", "p", "app"), 2);
    }

    #[tokio::test]
    async fn delete_ends_follows_after_flushing() {
        let (sim, client) = start().await;
        sim.add_pod(pod("ns", "p"));
        let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
        let stream = pods
            .log_stream(
                "p",
                &LogParams {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        sim.wait_written("ns", "p", "app", 50).await;
        sim.delete_pod("ns", "p");
        let lines = tokio::time::timeout(DEADLINE, stream.lines().try_collect::<Vec<_>>())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lines, sim.written_lines("ns", "p", "app"));
        assert!(pods.get_opt("p").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn tail_lines_and_limit_bytes() {
        let (sim, client) = start().await;
        sim.add_pod(
            PodSpec::new("ns", "p")
                .restart_policy(RestartPolicy::Never)
                .container(
                    ContainerSpec::new("app")
                        .rate(1000.0)
                        .line_size(40)
                        .total_lines(30, 0),
                ),
        );
        sim.wait_written("ns", "p", "app", 30).await;
        let body = get(&client, "/api/v1/namespaces/ns/pods/p/log?tailLines=5")
            .await
            .unwrap();
        let written = sim.written_lines("ns", "p", "app");
        assert_eq!(body.lines().collect::<Vec<_>>(), written[25..].to_vec());
        let body = get(&client, "/api/v1/namespaces/ns/pods/p/log?limitBytes=50")
            .await
            .unwrap();
        assert_eq!(body.len(), 50);
        assert!(body.starts_with(&format!("{}\n", written[0])));
        let body = get(&client, "/api/v1/namespaces/ns/pods/p/log?tailLines=0")
            .await
            .unwrap();
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn same_timestamp_runs_and_reordered_stderr_reach_the_log() {
        let (sim, client) = start().await;
        sim.add_pod(
            PodSpec::new("ns", "p").container(
                ContainerSpec::new("app")
                    .rate(400.0)
                    .same_timestamp_run(4)
                    .stderr_every(5, Duration::from_millis(3)),
            ),
        );
        sim.wait_written("ns", "p", "app", 40).await;
        let body = get(&client, "/api/v1/namespaces/ns/pods/p/log?timestamps=true")
            .await
            .unwrap();
        let lines = stamped(&body);
        assert!(
            lines.windows(2).any(|w| w[0].0 == w[1].0),
            "some lines share a timestamp"
        );
        assert!(
            lines.windows(2).any(|w| w[1].0 < w[0].0),
            "some stderr lines go back in time"
        );
    }

    #[tokio::test]
    async fn discovery_and_table_for_kubectl() {
        let (sim, client) = start().await;
        sim.add_pod(pod("ns", "p"));
        let v: serde_json::Value =
            serde_json::from_str(&get(&client, "/api/v1").await.unwrap()).unwrap();
        assert_eq!(v["kind"], "APIResourceList");
        let resources: Vec<_> = v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].clone())
            .collect();
        assert!(resources.contains(&"pods/log".into()), "{resources:?}");
        // kubectl checks the namespace; attach_metadata reads namespaces and nodes.
        use k8s_openapi::api::core::v1::{Namespace, Node};
        let ns: Namespace = Api::all(client.clone()).get("ns").await.unwrap();
        assert_eq!(
            ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
            "ns"
        );
        let node: Node = Api::all(client.clone()).get("node-1").await.unwrap();
        assert_eq!(
            node.metadata.labels.unwrap()["kubernetes.io/hostname"],
            "node-1"
        );
        let nodes: Api<Node> = Api::all(client.clone());
        assert_eq!(
            nodes
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let (code, _) = api_error(get(&client, "/api/v1/namespaces/absent").await);
        assert_eq!(code, 404);
        let version = client.apiserver_version().await.unwrap();
        assert_eq!(version.major, "1");
        let request = http::Request::get("/api/v1/pods")
            .header(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            )
            .body(Vec::new())
            .unwrap();
        let table: serde_json::Value =
            serde_json::from_str(&client.request_text(request).await.unwrap()).unwrap();
        assert_eq!(table["kind"], "Table");
        let names: Vec<_> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(table["rows"][0]["cells"][0], "p");
        assert_eq!(table["rows"][0]["cells"][1], "1/1");
        assert_eq!(table["rows"][0]["cells"][2], "Running");
    }
}
