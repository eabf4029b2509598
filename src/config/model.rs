//! The validated configuration the relay runs on (SPEC §4).
//!
//! Produced only by [`crate::config::load`]/[`crate::config::parse`] after validation, so the
//! rest of the program never sees an unchecked value: durations are `Duration`, sizes are byte
//! counts, regexes are compiled, exclusive options are enums.
//!
//! Every type serializes (for `GET /api/v1/config`, SPEC §8.3) in the shape of the TOML file:
//! the same keys, human durations, exclusive options back under their own keys, and every
//! secret redacted ([`super::redact`]). A test keeps that shape and `config.toml` in step.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::redact;

/// The whole configuration.
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct KubernetesConfig {
    /// `api_server`; `None` = kubeconfig, then in-cluster, then `~/.kube/config`.
    #[serde(serialize_with = "redact::optional_url")]
    pub api_server: Option<String>,
    pub kubeconfig_file: Option<PathBuf>,
    #[serde(flatten)]
    pub auth: Auth,
    #[serde(rename = "tls_config")]
    pub tls: TlsConfig,
    #[serde(flatten)]
    pub proxy: ProxyConfig,
    pub http_headers: BTreeMap<String, Vec<Secret>>,
    pub enable_http2: bool,
    pub follow_redirects: bool,
    /// Client-side request rate limit.
    pub qps: f64,
    pub burst: u32,
    pub max_streams_per_connection: u32,
}

/// A secret value: never printed by `Debug`, serialized as [`redact::REDACTED`].
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
    /// `oauth2`: a token from the client-credentials grant, cached until shortly before it
    /// expires (`crate::net::oauth2`).
    OAuth2(Box<OAuth2Config>),
}

/// `oauth2` of a client: the client-credentials grant against `token_url`, with its own TLS and
/// proxy settings for the token endpoint (SPEC §4.1).
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth2Config {
    pub client_id: String,
    /// `client_secret` or `client_secret_file` (re-read when it changes).
    pub client_secret: Credential,
    pub token_url: String,
    /// Sent space-joined as `scope`; empty = no `scope` parameter.
    pub scopes: Vec<String>,
    /// Extra form parameters of the token request (`audience`, `resource`, …).
    pub endpoint_params: BTreeMap<String, String>,
    /// `tls_config` towards the token endpoint.
    pub tls: TlsConfig,
    /// Proxy options towards the token endpoint.
    pub proxy: ProxyConfig,
}

/// As in the TOML file: `client_secret` or `client_secret_file`, the proxy keys flattened.
impl Serialize for OAuth2Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Table<'a> {
            client_id: &'a str,
            #[serde(flatten)]
            client_secret: CredentialKeys<'a>,
            #[serde(serialize_with = "redact::url")]
            token_url: &'a str,
            scopes: &'a [String],
            endpoint_params: &'a BTreeMap<String, String>,
            tls_config: &'a TlsConfig,
            #[serde(flatten)]
            proxy: &'a ProxyConfig,
        }
        Table {
            client_id: &self.client_id,
            client_secret: CredentialKeys {
                credential: &self.client_secret,
                keys: ("client_secret", "client_secret_file"),
            },
            token_url: &self.token_url,
            scopes: &self.scopes,
            endpoint_params: &self.endpoint_params,
            tls_config: &self.tls,
            proxy: &self.proxy,
        }
        .serialize(serializer)
    }
}

/// `<inline key> | <file key>` of a [`Credential`], as one entry of a map.
struct CredentialKeys<'a> {
    credential: &'a Credential,
    keys: (&'static str, &'static str),
}

impl Serialize for CredentialKeys<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self.credential {
            Credential::Inline(secret) => map.serialize_entry(self.keys.0, secret)?,
            Credential::File(path) => map.serialize_entry(self.keys.1, path)?,
        }
        map.end()
    }
}

/// A credential given inline or in a file.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    Inline(Secret),
    File(PathBuf),
}

/// The keys of the TOML file: `bearer_token`, `bearer_token_file`, `authorization`,
/// `basic_auth`, `oauth2` (none without authentication); flattened into the client's table.
impl Serialize for Auth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Auth::None => {}
            Auth::BearerToken(token) => map.serialize_entry("bearer_token", token)?,
            Auth::BearerTokenFile(path) => map.serialize_entry("bearer_token_file", path)?,
            Auth::Authorization { kind, credentials } => map.serialize_entry(
                "authorization",
                &CredentialTable {
                    first: ("type", kind),
                    credential: credentials,
                    keys: ("credentials", "credentials_file"),
                },
            )?,
            Auth::Basic { username, password } => map.serialize_entry(
                "basic_auth",
                &CredentialTable {
                    first: ("username", username),
                    credential: password,
                    keys: ("password", "password_file"),
                },
            )?,
            Auth::OAuth2(oauth2) => map.serialize_entry("oauth2", oauth2)?,
        }
        map.end()
    }
}

/// `{ <first>, <inline key> | <file key> }`: the table of `authorization` and `basic_auth`.
struct CredentialTable<'a> {
    first: (&'static str, &'a String),
    credential: &'a Credential,
    keys: (&'static str, &'static str),
}

impl Serialize for CredentialTable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry(self.first.0, self.first.1)?;
        match self.credential {
            Credential::Inline(secret) => map.serialize_entry(self.keys.0, secret)?,
            Credential::File(path) => map.serialize_entry(self.keys.1, path)?,
        }
        map.end()
    }
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

/// As in the TOML file: `ca_pem` or `ca_file` (and the same for `cert` and `key`).
impl Serialize for TlsConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let TlsConfig {
            ca,
            cert,
            key,
            insecure_skip_verify,
            server_name,
            min_version,
        } = self;
        let mut map = serializer.serialize_map(None)?;
        for (name, source) in [("ca", ca), ("cert", cert), ("key", key)] {
            match source {
                None => {}
                Some(PemSource::Inline(pem)) => map.serialize_entry(&format!("{name}_pem"), pem)?,
                Some(PemSource::File(path)) => {
                    map.serialize_entry(&format!("{name}_file"), path)?
                }
            }
        }
        map.serialize_entry("insecure_skip_verify", insecure_skip_verify)?;
        map.serialize_entry("server_name", server_name)?;
        map.serialize_entry("min_version", min_version)?;
        map.end()
    }
}

/// PEM text given inline (`*_pem`) or by path (`*_file`).
#[derive(Clone, Debug, PartialEq)]
pub enum PemSource {
    Inline(Secret),
    File(PathBuf),
}

/// `min_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
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

/// As in the TOML file: `proxy_url`, `no_proxy`, `proxy_from_environment`,
/// `proxy_connect_header`; flattened into the client's table.
impl Serialize for ProxyConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ProxyConfig {
            mode,
            no_proxy,
            connect_headers,
        } = self;
        let mut map = serializer.serialize_map(Some(4))?;
        let url = match mode {
            ProxyMode::Url(url) => Some(redact::redact_url(url)),
            ProxyMode::Direct | ProxyMode::FromEnvironment => None,
        };
        map.serialize_entry("proxy_url", &url)?;
        map.serialize_entry("no_proxy", no_proxy)?;
        map.serialize_entry(
            "proxy_from_environment",
            &matches!(mode, ProxyMode::FromEnvironment),
        )?;
        map.serialize_entry("proxy_connect_header", connect_headers)?;
        map.end()
    }
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
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttachMetadata {
    pub node: bool,
    pub namespace: bool,
}

/// One `[[relabel]]` rule, Prometheus semantics (SPEC §4.3).
#[derive(Clone, Debug, Serialize)]
pub struct RelabelRule {
    pub source_labels: Vec<String>,
    pub separator: String,
    /// Fully anchored: `^(?s:<regex>)$`; serialized as written.
    #[serde(serialize_with = "regex_as_written")]
    pub regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: RelabelAction,
}

/// The regex as the file wrote it: validation wrapped it as `^(?s:…)$` to anchor it.
fn regex_as_written<S: Serializer>(regex: &Regex, serializer: S) -> Result<S::Ok, S::Error> {
    let anchored = regex.as_str();
    let written = anchored
        .strip_prefix("^(?s:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(anchored);
    serializer.serialize_str(written)
}

/// Relabel actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StaticTarget {
    pub labels: BTreeMap<String, String>,
}

/// `[tail]` (SPEC §4.6, §5).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TailConfig {
    pub start_from: StartFrom,
    pub max_line_size: usize,
    pub on_long_line: OnLongLine,
    #[serde(serialize_with = "redact::duration")]
    pub min_backoff: Duration,
    #[serde(serialize_with = "redact::duration")]
    pub max_backoff: Duration,
    #[serde(serialize_with = "redact::duration")]
    pub max_stream_lifetime: Duration,
    #[serde(serialize_with = "redact::duration")]
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

/// `"beginning"`, `"end"` or a duration, as written.
impl Serialize for StartFrom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StartFrom::Beginning => serializer.serialize_str("beginning"),
            StartFrom::End => serializer.serialize_str("end"),
            StartFrom::Ago(ago) => redact::duration(ago, serializer),
        }
    }
}

/// What to do with a line longer than `max_line_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLongLine {
    Truncate,
    Drop,
}

/// `[positions]` (SPEC §4.4).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PositionsConfig {
    #[serde(flatten)]
    pub backend: PositionsBackend,
    #[serde(serialize_with = "redact::duration")]
    pub sync_period: Duration,
    #[serde(serialize_with = "redact::duration")]
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

/// `backend = "memory" | "file" | "kubernetes"`, with `path` for the file; flattened into
/// `[positions]`.
impl Serialize for PositionsBackend {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            PositionsBackend::Memory => map.serialize_entry("backend", "memory")?,
            PositionsBackend::File(path) => {
                map.serialize_entry("backend", "file")?;
                map.serialize_entry("path", path)?;
            }
            PositionsBackend::Kubernetes => map.serialize_entry("backend", "kubernetes")?,
        }
        map.end()
    }
}

/// `[loki.<name>]` (SPEC §4.5).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LokiConfig {
    #[serde(serialize_with = "redact::url")]
    pub url: String,
    pub tenant_id: Option<String>,
    pub headers: BTreeMap<String, Secret>,
    #[serde(serialize_with = "pairs_as_table")]
    pub external_labels: Vec<(String, String)>,
    pub batch_size: usize,
    #[serde(serialize_with = "redact::duration")]
    pub batch_wait: Duration,
    pub buffer_size: usize,
    pub on_full: OnFull,
    #[serde(serialize_with = "redact::duration")]
    pub min_backoff: Duration,
    #[serde(serialize_with = "redact::duration")]
    pub max_backoff: Duration,
    pub max_retries: u32,
    pub retry_on_http_429: bool,
    #[serde(serialize_with = "redact::duration")]
    pub remote_timeout: Duration,
    #[serde(flatten)]
    pub auth: Auth,
    #[serde(rename = "tls_config")]
    pub tls: TlsConfig,
    #[serde(flatten)]
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

/// `external_labels` as the table the file wrote.
fn pairs_as_table<S: Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// `on_full`: what a receiver does when its queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    Block,
    Drop,
}

/// `[stdout]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StdoutConfig {
    pub format: LogFormat,
}

/// `logfmt` or `json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShutdownConfig {
    #[serde(serialize_with = "redact::duration")]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusteringConfig {
    pub enabled: bool,
    /// `identity`; `None` = resolved at start-up: `POD_NAME`, else the hostname.
    pub identity: Option<String>,
    /// `namespace` of the Leases; `None` = the pod's namespace from the service-account mount,
    /// else `default`.
    pub namespace: Option<String>,
    #[serde(serialize_with = "redact::duration")]
    pub lease_duration: Duration,
    #[serde(serialize_with = "redact::duration")]
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
