//! The validated configuration the relay runs on (SPEC §4).
//!
//! Produced only by [`crate::config::load`]/[`crate::config::parse`] after validation, so the
//! rest of the program never sees an unchecked value: durations are `Duration`, sizes are byte
//! counts, regexes are compiled, exclusive options are enums.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub kubernetes: KubernetesConfig,
    pub discovery: DiscoveryConfig,
    pub relabel: Vec<RelabelRule>,
    pub targets: Vec<StaticTarget>,
    pub tail: TailConfig,
    pub positions: PositionsConfig,
    /// `[loki.<name>]` receivers, by name.
    pub loki: BTreeMap<String, LokiConfig>,
    pub stdout: Option<StdoutConfig>,
    pub server: ServerConfig,
    pub shutdown: ShutdownConfig,
    pub clustering: ClusteringConfig,
}

/// `[kubernetes]`: how to reach the API server (SPEC §4.1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubernetesConfig {
    /// `api_server`; `None` = kubeconfig, then in-cluster, then `~/.kube/config`.
    pub api_server: Option<String>,
    pub kubeconfig_file: Option<PathBuf>,
    pub auth: Auth,
    pub tls: TlsConfig,
    pub proxy: ProxyConfig,
    pub http_headers: BTreeMap<String, Vec<Secret>>,
    pub enable_http2: bool,
    pub follow_redirects: bool,
    /// Client-side request rate limit.
    pub qps: f64,
    pub burst: u32,
    pub max_streams_per_connection: u32,
}

/// A secret value: never printed by `Debug`, redacted when served.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub String);

impl Secret {
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// The single authentication method of a client (SPEC §4.1: at most one).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Auth {
    #[default]
    None,
    BearerToken(Secret),
    /// Re-read when the file changes (rotated service-account tokens).
    BearerTokenFile(PathBuf),
    Authorization {
        kind: String,
        credentials: Credential,
    },
    Basic {
        username: String,
        password: Credential,
    },
}

/// A credential given inline or in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    Inline(Secret),
    File(PathBuf),
}

/// `tls_config` of a client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsConfig {
    pub ca: Option<PemSource>,
    pub cert: Option<PemSource>,
    pub key: Option<PemSource>,
    pub insecure_skip_verify: bool,
    pub server_name: Option<String>,
    pub min_version: Option<TlsVersion>,
}

/// PEM text given inline (`*_pem`) or by path (`*_file`).
#[derive(Clone, Debug, PartialEq)]
pub enum PemSource {
    Inline(Secret),
    File(PathBuf),
}

/// `min_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `proxy_url`, `no_proxy`, `proxy_from_environment`, `proxy_connect_header` of a client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyConfig {
    pub mode: ProxyMode,
    /// `no_proxy`, split at commas: IPs, CIDRs and domain names (optionally with a port) that
    /// bypass `proxy_url`. Only set with [`ProxyMode::Url`].
    pub no_proxy: Vec<String>,
    /// `proxy_connect_header`: headers sent to the proxy with `CONNECT`.
    pub connect_headers: BTreeMap<String, Vec<Secret>>,
}

/// Whether and how a client goes through a proxy.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ProxyMode {
    /// No proxy.
    #[default]
    Direct,
    /// `proxy_url`: every request goes through this `http(s)://` proxy, except `no_proxy` hosts.
    Url(String),
    /// `proxy_from_environment = true`: `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (or lowercase).
    FromEnvironment,
}

/// `[discovery]` (SPEC §4.2).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DiscoveryConfig {
    /// Empty = all namespaces.
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub attach_metadata: AttachMetadata,
    /// `enabled = false` runs on `[[targets]]` only.
    pub enabled: bool,
}

/// `attach_metadata = { node, namespace }`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachMetadata {
    pub node: bool,
    pub namespace: bool,
}

/// One `[[relabel]]` rule, Prometheus semantics (SPEC §4.3).
#[derive(Clone, Debug)]
pub struct RelabelRule {
    pub source_labels: Vec<String>,
    pub separator: String,
    /// Fully anchored: `^(?s:<regex>)$`.
    pub regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: RelabelAction,
}

/// Relabel actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelabelAction {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

/// A `[[targets]]` entry: explicit labels (must resolve the identity labels).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StaticTarget {
    pub labels: BTreeMap<String, String>,
}

/// `[tail]` (SPEC §4.6, §5).
#[derive(Clone, Debug, PartialEq)]
pub struct TailConfig {
    pub start_from: StartFrom,
    pub max_line_size: usize,
    pub on_long_line: OnLongLine,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_stream_lifetime: Duration,
    pub terminated_grace: Duration,
    pub chunk_lines: usize,
}

impl Default for TailConfig {
    fn default() -> TailConfig {
        TailConfig {
            start_from: StartFrom::Beginning,
            max_line_size: 256 * 1024,
            on_long_line: OnLongLine::Truncate,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_stream_lifetime: Duration::from_secs(3600),
            terminated_grace: Duration::from_secs(10),
            chunk_lines: 512,
        }
    }
}

/// Where a target without a position starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Beginning,
    End,
    /// This long before now.
    Ago(Duration),
}

/// What to do with a line longer than `max_line_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLongLine {
    Truncate,
    Drop,
}

/// `[positions]` (SPEC §4.4).
#[derive(Clone, Debug, PartialEq)]
pub struct PositionsConfig {
    pub backend: PositionsBackend,
    pub sync_period: Duration,
    pub gc_after: Duration,
}

impl Default for PositionsConfig {
    fn default() -> PositionsConfig {
        PositionsConfig {
            backend: PositionsBackend::Memory,
            sync_period: Duration::from_secs(5),
            gc_after: Duration::from_secs(3600),
        }
    }
}

/// Where positions are kept.
#[derive(Clone, Debug, PartialEq)]
pub enum PositionsBackend {
    /// No `[positions]` table: positions live in memory only.
    Memory,
    File(PathBuf),
    Kubernetes,
}

/// `[loki.<name>]` (SPEC §4.5).
#[derive(Clone, Debug, PartialEq)]
pub struct LokiConfig {
    pub url: String,
    pub tenant_id: Option<String>,
    pub headers: BTreeMap<String, Secret>,
    pub external_labels: Vec<(String, String)>,
    pub batch_size: usize,
    pub batch_wait: Duration,
    pub buffer_size: usize,
    pub on_full: OnFull,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retries: u32,
    pub retry_on_http_429: bool,
    pub remote_timeout: Duration,
    pub auth: Auth,
    pub tls: TlsConfig,
    pub proxy: ProxyConfig,
    pub enable_http2: bool,
    pub max_label_names: usize,
    pub max_label_value_length: usize,
    /// 0 = no limit.
    pub max_line_size: usize,
    pub max_line_size_truncate: bool,
}

impl LokiConfig {
    /// A receiver for `url` with every default of SPEC §4.5.
    pub fn with_url(url: impl Into<String>) -> LokiConfig {
        LokiConfig {
            url: url.into(),
            tenant_id: None,
            headers: BTreeMap::new(),
            external_labels: Vec::new(),
            batch_size: 1024 * 1024,
            batch_wait: Duration::from_secs(1),
            buffer_size: 64 * 1024 * 1024,
            on_full: OnFull::Block,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            max_retries: 10,
            retry_on_http_429: true,
            remote_timeout: Duration::from_secs(10),
            auth: Auth::None,
            tls: TlsConfig::default(),
            proxy: ProxyConfig::default(),
            enable_http2: true,
            max_label_names: 15,
            max_label_value_length: 2048,
            max_line_size: 256 * 1024,
            max_line_size_truncate: false,
        }
    }
}

/// `on_full`: what a receiver does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFull {
    Block,
    Drop,
}

/// `[stdout]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StdoutConfig {
    pub format: LogFormat,
}

/// `logfmt` or `json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub listen: String,
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: "0.0.0.0:12345".into(),
            log_level: "info".into(),
            log_format: LogFormat::Logfmt,
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShutdownConfig {
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> ShutdownConfig {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[clustering]` (SPEC §7): replicas share the targets through Kubernetes Leases.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusteringConfig {
    pub enabled: bool,
    /// `identity`; `None` = resolved at start-up: `POD_NAME`, else the hostname.
    pub identity: Option<String>,
    /// `namespace` of the Leases; `None` = the pod's namespace from the service-account mount,
    /// else `default`.
    pub namespace: Option<String>,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

impl Default for ClusteringConfig {
    fn default() -> ClusteringConfig {
        ClusteringConfig {
            enabled: false,
            identity: None,
            namespace: None,
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}
