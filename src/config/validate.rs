//! Phase two of the configuration (SPEC §4; STYLE.md "configuration in two phases"): the raw
//! sections become the typed [`Config`] the program runs on.
//!
//! Every check records its error with the TOML path and goes on with the default, so one run
//! reports every problem. Defaults live here, next to their checks, and match SPEC §4 (the
//! `model` types carry the same defaults in their `Default` impls). Messages never repeat a
//! secret value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::error::{ConfigError, join_index, join_key};
use super::model::*;
use super::raw::*;
use super::units::{format_size, parse_duration, parse_size};

/// Turns the raw sections into a [`Config`], or returns every error found.
pub fn validate(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker::default();
    let kubernetes = kubernetes(&mut c, raw.kubernetes.get());
    let discovery = discovery(&mut c, raw.discovery.get());
    let relabel = raw
        .relabel
        .iter()
        .filter_map(|(index, rule)| relabel_rule(&mut c, &join_index("relabel", *index), rule))
        .collect();
    let targets = raw
        .targets
        .iter()
        .map(|(index, target)| static_target(&mut c, &join_index("targets", *index), target))
        .collect::<Vec<_>>();
    if !discovery.enabled && !raw.targets_written {
        c.error(
            "discovery.enabled",
            "discovery is disabled and there is no [[targets]] entry: nothing would be tailed",
        );
    }
    let tail = tail(&mut c, raw.tail.get());
    let positions = positions(&mut c, raw.positions.get());
    let loki = raw
        .loki
        .iter()
        .map(|(name, loki)| (name.clone(), receiver(&mut c, name, loki)))
        .collect();
    if !raw.receivers_written {
        c.error(
            "loki",
            "at least one [loki.<name>] or [stdout] receiver is required",
        );
    }
    let stdout = raw.stdout.get().map(|stdout| StdoutConfig {
        format: c.word(
            "stdout.format",
            stdout.format.as_deref(),
            LOG_FORMATS,
            LogFormat::Logfmt,
        ),
    });
    let server = server(&mut c, raw.server.get());
    let shutdown = ShutdownConfig {
        timeout: c.positive_duration(
            "shutdown.timeout",
            raw.shutdown.get().and_then(|s| s.timeout.as_deref()),
            ShutdownConfig::default().timeout,
        ),
    };
    let clustering = clustering(&mut c, raw.clustering.get());
    // Clustering moves targets between replicas: the new owner must find the old owner's
    // positions, so they have to live in the cluster (SPEC §7).
    if clustering.enabled
        && positions.backend != PositionsBackend::Kubernetes
        && !raw.positions.is_invalid()
    {
        c.error(
            "clustering.enabled",
            r#"clustering needs positions.backend = "kubernetes" (replicas must share positions to hand targets over)"#,
        );
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Config {
        kubernetes,
        discovery,
        relabel,
        targets,
        tail,
        positions,
        loki,
        stdout,
        server,
        shutdown,
        clustering,
    })
}

const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("logfmt", LogFormat::Logfmt), ("json", LogFormat::Json)];

/// Collects errors; every check returns a usable value (the default on error) so validation
/// goes on.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(duration)) => duration,
            Some(Err(message)) => {
                self.error(path, message);
                default
            }
        }
    }

    /// A duration that must not be zero.
    fn positive_duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let duration = self.duration(path, value, default);
        if duration.is_zero() {
            self.error(path, "must be > 0");
            return default;
        }
        duration
    }

    fn size(&mut self, path: &str, value: Option<&SizeValue>, default: usize) -> usize {
        let bytes = match value {
            None => return default,
            Some(SizeValue::Bytes(bytes)) => Ok(*bytes),
            Some(SizeValue::Text(text)) => parse_size(text),
        };
        match bytes.and_then(|b| usize::try_from(b).map_err(|_| "is too large".to_owned())) {
            Ok(bytes) => bytes,
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    /// One of a few words (`"block" | "drop"`).
    fn word<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        words: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some((_, word)) = words.iter().find(|(name, _)| *name == value) {
            return *word;
        }
        let names: Vec<String> = words.iter().map(|(name, _)| format!("{name:?}")).collect();
        self.error(
            path,
            format!("{value:?} is not one of {}", names.join(", ")),
        );
        default
    }

    /// A string that, when given, must not be empty.
    fn non_empty(&mut self, path: &str, value: Option<&String>) -> Option<String> {
        match value {
            Some(text) if text.trim().is_empty() => {
                self.error(path, "must not be empty (remove the key to leave it unset)");
                None
            }
            other => other.cloned(),
        }
    }

    fn path(&mut self, path: &str, value: Option<&String>) -> Option<PathBuf> {
        self.non_empty(path, value).map(PathBuf::from)
    }

    /// An `http://` or `https://` URL with a host.
    fn url(&mut self, path: &str, value: Option<&String>) -> Option<String> {
        let text = self.non_empty(path, value)?;
        match check_url(&text) {
            Ok(()) => Some(text),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    fn positive<T: Copy + Default + PartialOrd>(
        &mut self,
        path: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        match value {
            Some(value) if value <= T::default() => {
                self.error(path, "must be > 0");
                default
            }
            Some(value) => value,
            None => default,
        }
    }
}

fn check_url(text: &str) -> Result<(), String> {
    let not_url = || {
        format!(
            "{:?} is not an http:// or https:// URL",
            redact_userinfo(text)
        )
    };
    let uri: http::Uri = text.parse().map_err(|_| not_url())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(not_url()),
    }
}

/// `scheme://user:password@host/…` → `scheme://<redacted>@host/…`: a URL in an error message
/// must not leak the password some users embed in it.
fn redact_userinfo(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}<redacted>{}",
            &url[..authority_start],
            &url[authority_start + at..]
        ),
        None => url.to_owned(),
    }
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const LABEL_NAME_RULE: &str = "label names match [a-zA-Z_][a-zA-Z0-9_]*";

/// A DNS-1123 label, as Kubernetes names namespaces.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

// ---------------------------------------------------------------------------------------------
// Clients: [kubernetes] and [loki.<name>] share auth, TLS, proxy and header options (SPEC §4.1).

/// The authentication keys of one client table.
struct AuthKeys<'a> {
    bearer_token: Option<&'a String>,
    bearer_token_file: Option<&'a String>,
    authorization: Option<&'a RawAuthorization>,
    basic_auth: Option<&'a RawBasicAuth>,
    oauth2: Option<&'a RawOAuth2>,
}

/// The proxy keys of one client table.
struct ProxyKeys<'a> {
    proxy_url: Option<&'a String>,
    no_proxy: Option<&'a String>,
    proxy_from_environment: Option<bool>,
    proxy_connect_header: Option<&'a BTreeMap<String, StringList>>,
}

fn auth(c: &mut Checker, path: &str, keys: &AuthKeys<'_>) -> Auth {
    let found: Vec<&str> = [
        ("authorization", keys.authorization.is_some()),
        ("basic_auth", keys.basic_auth.is_some()),
        ("bearer_token", keys.bearer_token.is_some()),
        ("bearer_token_file", keys.bearer_token_file.is_some()),
        ("oauth2", keys.oauth2.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if found.len() > 1 {
        c.error(
            path,
            format!(
                "at most one of authorization, basic_auth, bearer_token, bearer_token_file, oauth2 may be set (found {})",
                found.join(", ")
            ),
        );
    }
    let mut auth = Auth::None;
    if let Some(token) = c.non_empty(&join_key(path, "bearer_token"), keys.bearer_token) {
        auth = Auth::BearerToken(Secret(token));
    }
    if let Some(file) = c.path(&join_key(path, "bearer_token_file"), keys.bearer_token_file) {
        auth = Auth::BearerTokenFile(file);
    }
    if let Some(raw) = keys.authorization {
        let at = join_key(path, "authorization");
        let kind = c
            .non_empty(&join_key(&at, "type"), raw.kind.as_ref())
            .unwrap_or_else(|| "Bearer".to_owned());
        if kind.eq_ignore_ascii_case("basic") {
            c.error(
                join_key(&at, "type"),
                r#""Basic" is not allowed here: use [basic_auth] instead"#,
            );
        }
        let credentials = credential(
            c,
            &at,
            ("credentials", raw.credentials.as_ref()),
            ("credentials_file", raw.credentials_file.as_ref()),
            true,
        );
        if let Some(credentials) = credentials {
            auth = Auth::Authorization { kind, credentials };
        }
    }
    if let Some(raw) = keys.basic_auth {
        let at = join_key(path, "basic_auth");
        let username = raw.username.clone().unwrap_or_default();
        if username.is_empty() {
            c.error(join_key(&at, "username"), "missing (required)");
        }
        let password = credential(
            c,
            &at,
            ("password", raw.password.as_ref()),
            ("password_file", raw.password_file.as_ref()),
            false,
        )
        .unwrap_or_else(|| Credential::Inline(Secret::default()));
        auth = Auth::Basic { username, password };
    }
    if keys.oauth2.is_some() {
        c.error(
            join_key(path, "oauth2"),
            "oauth2 is not supported yet: use bearer_token_file (for example a token refreshed by a sidecar), authorization or basic_auth",
        );
    }
    if found.len() > 1 {
        return Auth::None;
    }
    auth
}

/// `credentials` / `credentials_file` and the like: exclusive, one required when `required`.
fn credential(
    c: &mut Checker,
    path: &str,
    (inline_key, inline): (&str, Option<&String>),
    (file_key, file): (&str, Option<&String>),
    required: bool,
) -> Option<Credential> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            c.error(
                path,
                format!("{inline_key} and {file_key} are mutually exclusive"),
            );
            None
        }
        (Some(inline), None) => c
            .non_empty(&join_key(path, inline_key), Some(inline))
            .map(|value| Credential::Inline(Secret(value))),
        (None, Some(file)) => c
            .path(&join_key(path, file_key), Some(file))
            .map(Credential::File),
        (None, None) => {
            if required {
                c.error(path, format!("one of {inline_key}, {file_key} is required"));
            }
            None
        }
    }
}

fn tls(c: &mut Checker, path: &str, raw: Option<&RawTls>) -> TlsConfig {
    let Some(raw) = raw else {
        return TlsConfig::default();
    };
    let mut pem = |name: &str, inline: Option<&String>, file: Option<&String>| {
        let inline_key = format!("{name}_pem");
        let file_key = format!("{name}_file");
        match (inline, file) {
            (Some(_), Some(_)) => {
                c.error(
                    path,
                    format!("{inline_key} and {file_key} are mutually exclusive"),
                );
                None
            }
            (Some(inline), None) => {
                let at = join_key(path, &inline_key);
                let text = c.non_empty(&at, Some(inline))?;
                if !text.contains("-----BEGIN ") {
                    c.error(
                        at,
                        "is not PEM text (it should contain a \"-----BEGIN …\" line)",
                    );
                    return None;
                }
                Some(PemSource::Inline(Secret(text)))
            }
            (None, Some(file)) => c
                .path(&join_key(path, &file_key), Some(file))
                .map(PemSource::File),
            (None, None) => None,
        }
    };
    let ca = pem("ca", raw.ca_pem.as_ref(), raw.ca_file.as_ref());
    let cert = pem("cert", raw.cert_pem.as_ref(), raw.cert_file.as_ref());
    let key = pem("key", raw.key_pem.as_ref(), raw.key_file.as_ref());
    let cert_written = raw.cert_pem.is_some() || raw.cert_file.is_some();
    let key_written = raw.key_pem.is_some() || raw.key_file.is_some();
    if cert_written && !key_written {
        c.error(
            path,
            "cert_pem/cert_file is set without key_pem/key_file: a client certificate needs its key",
        );
    }
    if key_written && !cert_written {
        c.error(
            path,
            "key_pem/key_file is set without cert_pem/cert_file: a client key needs its certificate",
        );
    }
    let min_version = match raw.min_version.as_deref() {
        None => None,
        Some("TLS12") => Some(TlsVersion::Tls12),
        Some("TLS13") => Some(TlsVersion::Tls13),
        Some(old @ ("TLS10" | "TLS11")) => {
            c.error(
                join_key(path, "min_version"),
                format!(r#"{old:?} is not supported: rustls implements TLS 1.2 and 1.3 only (use "TLS12" or "TLS13")"#),
            );
            None
        }
        Some(other) => {
            c.error(
                join_key(path, "min_version"),
                format!(r#"{other:?} is not one of "TLS12", "TLS13""#),
            );
            None
        }
    };
    TlsConfig {
        ca,
        cert,
        key,
        insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        server_name: c.non_empty(&join_key(path, "server_name"), raw.server_name.as_ref()),
        min_version,
    }
}

fn proxy(c: &mut Checker, path: &str, keys: &ProxyKeys<'_>) -> ProxyConfig {
    let from_environment = keys.proxy_from_environment.unwrap_or(false);
    let url = c.url(&join_key(path, "proxy_url"), keys.proxy_url);
    if from_environment && (keys.proxy_url.is_some() || keys.no_proxy.is_some()) {
        c.error(
            path,
            "proxy_from_environment excludes proxy_url and no_proxy (HTTP_PROXY, HTTPS_PROXY and NO_PROXY are used instead)",
        );
    }
    if keys.no_proxy.is_some() && keys.proxy_url.is_none() && !from_environment {
        c.error(
            join_key(path, "no_proxy"),
            "needs proxy_url (no_proxy lists the hosts that bypass that proxy)",
        );
    }
    if keys.proxy_connect_header.is_some() && keys.proxy_url.is_none() && !from_environment {
        c.error(
            join_key(path, "proxy_connect_header"),
            "needs proxy_url or proxy_from_environment (these headers are sent to the proxy)",
        );
    }
    let no_proxy = keys
        .no_proxy
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|host| !host.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let connect_headers = header_lists(
        c,
        &join_key(path, "proxy_connect_header"),
        keys.proxy_connect_header,
    );
    let mode = match (from_environment, url) {
        (true, _) => ProxyMode::FromEnvironment,
        (false, Some(url)) => ProxyMode::Url(url),
        (false, None) => ProxyMode::Direct,
    };
    let no_proxy = if matches!(mode, ProxyMode::Url(_)) {
        no_proxy
    } else {
        Vec::new()
    };
    ProxyConfig {
        mode,
        no_proxy,
        connect_headers,
    }
}

/// Checks one header; values are never printed (they are often credentials).
fn header(c: &mut Checker, path: &str, name: &str, values: &[String]) -> bool {
    let at = join_key(path, name);
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.error(at, format!("{name:?} is not a valid HTTP header name"));
        return false;
    }
    let mut ok = true;
    for (index, value) in values.iter().enumerate() {
        if http::HeaderValue::from_str(value).is_err() {
            let at = if values.len() > 1 {
                join_index(&at, index)
            } else {
                at.clone()
            };
            c.error(
                at,
                "is not a valid HTTP header value (no control characters or newlines)",
            );
            ok = false;
        }
    }
    ok
}

fn header_lists(
    c: &mut Checker,
    path: &str,
    raw: Option<&BTreeMap<String, StringList>>,
) -> BTreeMap<String, Vec<Secret>> {
    let mut headers = BTreeMap::new();
    for (name, StringList(values)) in raw.into_iter().flatten() {
        if header(c, path, name, values) {
            headers.insert(name.clone(), values.iter().cloned().map(Secret).collect());
        }
    }
    headers
}

// ---------------------------------------------------------------------------------------------
// Sections.

fn kubernetes(c: &mut Checker, raw: Option<&RawKubernetes>) -> KubernetesConfig {
    let default = RawKubernetes::default();
    let raw = raw.unwrap_or(&default);
    let path = "kubernetes";
    if raw.api_server.is_some() && raw.kubeconfig_file.is_some() {
        c.error(
            path,
            "api_server and kubeconfig_file are mutually exclusive (the kubeconfig names its server)",
        );
    }
    let auth = auth(
        c,
        path,
        &AuthKeys {
            bearer_token: raw.bearer_token.as_ref(),
            bearer_token_file: raw.bearer_token_file.as_ref(),
            authorization: raw.authorization.as_ref(),
            basic_auth: raw.basic_auth.as_ref(),
            oauth2: raw.oauth2.as_ref(),
        },
    );
    let qps = match raw.qps {
        Some(qps) if !(qps.is_finite() && qps > 0.0) => {
            c.error(
                "kubernetes.qps",
                "must be a number > 0 (requests per second)",
            );
            50.0
        }
        Some(qps) => qps,
        None => 50.0,
    };
    KubernetesConfig {
        api_server: c.url("kubernetes.api_server", raw.api_server.as_ref()),
        kubeconfig_file: c.path("kubernetes.kubeconfig_file", raw.kubeconfig_file.as_ref()),
        auth,
        tls: tls(c, "kubernetes.tls_config", raw.tls_config.as_ref()),
        proxy: proxy(
            c,
            path,
            &ProxyKeys {
                proxy_url: raw.proxy_url.as_ref(),
                no_proxy: raw.no_proxy.as_ref(),
                proxy_from_environment: raw.proxy_from_environment,
                proxy_connect_header: raw.proxy_connect_header.as_ref(),
            },
        ),
        http_headers: header_lists(c, "kubernetes.http_headers", raw.http_headers.as_ref()),
        enable_http2: raw.enable_http2.unwrap_or(true),
        follow_redirects: raw.follow_redirects.unwrap_or(true),
        qps,
        burst: c.positive("kubernetes.burst", raw.burst, 100),
        max_streams_per_connection: c.positive(
            "kubernetes.max_streams_per_connection",
            raw.max_streams_per_connection,
            100,
        ),
    }
}

fn discovery(c: &mut Checker, raw: Option<&RawDiscovery>) -> DiscoveryConfig {
    let default = RawDiscovery::default();
    let raw = raw.unwrap_or(&default);
    let mut namespaces: Vec<String> = Vec::new();
    for (index, namespace) in raw.namespaces.iter().flatten().enumerate() {
        if !is_dns_label(namespace) {
            c.error(
                join_index("discovery.namespaces", index),
                format!("{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"),
            );
        } else if !namespaces.contains(namespace) {
            namespaces.push(namespace.clone());
        }
    }
    let attach = raw.attach_metadata.as_ref();
    DiscoveryConfig {
        namespaces,
        label_selector: c.non_empty("discovery.label_selector", raw.label_selector.as_ref()),
        field_selector: c.non_empty("discovery.field_selector", raw.field_selector.as_ref()),
        attach_metadata: AttachMetadata {
            node: attach.and_then(|a| a.node).unwrap_or(false),
            namespace: attach.and_then(|a| a.namespace).unwrap_or(false),
        },
        enabled: raw.enabled.unwrap_or(true),
    }
}

const RELABEL_ACTIONS: &[(&str, RelabelAction)] = &[
    ("replace", RelabelAction::Replace),
    ("keep", RelabelAction::Keep),
    ("drop", RelabelAction::Drop),
    ("keepequal", RelabelAction::KeepEqual),
    ("dropequal", RelabelAction::DropEqual),
    ("hashmod", RelabelAction::HashMod),
    ("labelmap", RelabelAction::LabelMap),
    ("labeldrop", RelabelAction::LabelDrop),
    ("labelkeep", RelabelAction::LabelKeep),
    ("lowercase", RelabelAction::Lowercase),
    ("uppercase", RelabelAction::Uppercase),
];

/// Prometheus' `relabelTarget`: a label name that may contain `$1` / `${name}` references.
static RELABEL_TARGET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").expect("a valid constant regex")
});

/// One `[[relabel]]` rule, with Prometheus' defaults and validation rules (SPEC §4.3).
fn relabel_rule(c: &mut Checker, path: &str, raw: &RawRelabel) -> Option<RelabelRule> {
    use RelabelAction::*;
    let errors_before = c.errors.len();
    let at = |key: &str| join_key(path, key);
    let action = match raw.action.as_deref() {
        None => Replace,
        Some(name) => match RELABEL_ACTIONS.iter().find(|(n, _)| *n == name) {
            Some((_, action)) => *action,
            None => {
                let names: Vec<&str> = RELABEL_ACTIONS.iter().map(|(n, _)| *n).collect();
                c.error(
                    at("action"),
                    format!("{name:?} is not one of {}", names.join(", ")),
                );
                return None;
            }
        },
    };
    let action_name = raw.action.as_deref().unwrap_or("replace");
    let source_labels = raw.source_labels.clone().unwrap_or_default();
    for (index, label) in source_labels.iter().enumerate() {
        if !is_label_name(label) {
            c.error(
                join_index(&at("source_labels"), index),
                format!("{label:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        }
    }
    let regex_text = raw.regex.as_deref().unwrap_or("(.*)");
    // Compiled unanchored first so the message points into what the user wrote.
    let regex =
        match Regex::new(regex_text).and_then(|_| Regex::new(&format!("^(?s:{regex_text})$"))) {
            Ok(regex) => Some(regex),
            Err(error) => {
                c.error(
                    at("regex"),
                    format!(
                        "{regex_text:?} is not a valid regular expression: {}",
                        regex_error(&error)
                    ),
                );
                None
            }
        };
    let target_label = raw.target_label.clone().unwrap_or_default();
    let replacement = raw.replacement.clone().unwrap_or_else(|| "$1".to_owned());
    let modulus = raw.modulus.unwrap_or(0);

    let needs_target = matches!(
        action,
        Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
    );
    if needs_target && target_label.is_empty() {
        c.error(
            at("target_label"),
            format!("missing (required by action {action_name:?})"),
        );
    } else if action == Replace
        && !target_label.is_empty()
        && !RELABEL_TARGET.is_match(&target_label)
    {
        c.error(
            at("target_label"),
            format!("{target_label:?} is not a valid label name or $1-style template ({LABEL_NAME_RULE})"),
        );
    } else if needs_target && action != Replace && !is_label_name(&target_label) {
        c.error(
            at("target_label"),
            format!("{target_label:?} is not a valid label name ({LABEL_NAME_RULE})"),
        );
    }
    if action == HashMod && modulus == 0 {
        c.error(at("modulus"), "must be > 0 for action \"hashmod\"");
    }
    if action == LabelMap && !RELABEL_TARGET.is_match(&replacement) {
        c.error(
            at("replacement"),
            format!(
                "{replacement:?} is not a valid label name or $1-style template ({LABEL_NAME_RULE})"
            ),
        );
    }
    // Keys an action ignores are errors, as in Prometheus: they show a misunderstanding.
    let mut unused: Vec<&str> = Vec::new();
    let mut unused_if = |key: &'static str, set: bool| {
        if set {
            unused.push(key);
        }
    };
    match action {
        LabelDrop | LabelKeep => {
            unused_if("source_labels", raw.source_labels.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        LabelMap => {
            unused_if("source_labels", raw.source_labels.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
        }
        KeepEqual | DropEqual => {
            unused_if("regex", raw.regex.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Lowercase | Uppercase => {
            unused_if("modulus", raw.modulus.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Keep | Drop => {
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Replace => unused_if("modulus", raw.modulus.is_some()),
        HashMod => unused_if("replacement", raw.replacement.is_some()),
    }
    for key in unused {
        c.error(
            at(key),
            format!("is not used by action {action_name:?} (remove it)"),
        );
    }
    if c.errors.len() > errors_before {
        return None;
    }
    Some(RelabelRule {
        source_labels,
        separator: raw.separator.clone().unwrap_or_else(|| ";".to_owned()),
        regex: regex?,
        modulus,
        target_label,
        replacement,
        action,
    })
}

/// The one-line cause of a regex error (its full text is a multi-line drawing).
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default())
        .trim()
        .to_owned()
}

fn static_target(c: &mut Checker, path: &str, raw: &RawTarget) -> StaticTarget {
    let labels = raw.labels.clone().unwrap_or_default();
    if labels.is_empty() {
        c.error(
            join_key(path, "labels"),
            "missing (required: the target's labels, e.g. labels = { __pod_namespace__ = \"…\", __pod_name__ = \"…\", __pod_container_name__ = \"…\", __pod_uid__ = \"…\" })",
        );
    }
    for name in labels.keys() {
        if !is_label_name(name) {
            c.error(
                join_key(&join_key(path, "labels"), name),
                format!("{name:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        }
    }
    StaticTarget { labels }
}

const START_FROM_EXAMPLES: &str = r#"(examples: "beginning", "end", "10m")"#;

fn tail(c: &mut Checker, raw: Option<&RawTail>) -> TailConfig {
    let default = RawTail::default();
    let raw = raw.unwrap_or(&default);
    let d = TailConfig::default();
    let start_from = match raw.start_from.as_deref() {
        None | Some("beginning") => StartFrom::Beginning,
        Some("end") => StartFrom::End,
        Some(text) => match parse_duration(text) {
            Ok(ago) if ago.is_zero() => {
                c.error(
                    "tail.start_from",
                    r#"must be > 0 (write "end" to start from now)"#,
                );
                d.start_from
            }
            Ok(ago) => StartFrom::Ago(ago),
            Err(_) => {
                let message = format!(
                    r#"{text:?} is not "beginning", "end" or a duration {START_FROM_EXAMPLES}"#
                );
                c.error("tail.start_from", message);
                d.start_from
            }
        },
    };
    let max_line_size = c.size(
        "tail.max_line_size",
        raw.max_line_size.as_ref(),
        d.max_line_size,
    );
    let max_line_size = c.positive("tail.max_line_size", Some(max_line_size), d.max_line_size);
    let min_backoff = c.positive_duration(
        "tail.min_backoff",
        raw.min_backoff.as_deref(),
        d.min_backoff,
    );
    let max_backoff = c.positive_duration(
        "tail.max_backoff",
        raw.max_backoff.as_deref(),
        d.max_backoff,
    );
    if min_backoff > max_backoff {
        c.error("tail.min_backoff", "must not exceed tail.max_backoff");
    }
    TailConfig {
        start_from,
        max_line_size,
        on_long_line: c.word(
            "tail.on_long_line",
            raw.on_long_line.as_deref(),
            &[
                ("truncate", OnLongLine::Truncate),
                ("drop", OnLongLine::Drop),
            ],
            d.on_long_line,
        ),
        min_backoff,
        max_backoff,
        max_stream_lifetime: c.positive_duration(
            "tail.max_stream_lifetime",
            raw.max_stream_lifetime.as_deref(),
            d.max_stream_lifetime,
        ),
        terminated_grace: c.duration(
            "tail.terminated_grace",
            raw.terminated_grace.as_deref(),
            d.terminated_grace,
        ),
        chunk_lines: c.positive("tail.chunk_lines", raw.chunk_lines, d.chunk_lines),
    }
}

fn positions(c: &mut Checker, raw: Option<&RawPositions>) -> PositionsConfig {
    let d = PositionsConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let backend = match raw.backend.as_deref() {
        None => {
            c.error(
                "positions.backend",
                r#"missing (required: "file" or "kubernetes")"#,
            );
            PositionsBackend::Memory
        }
        Some("file") => match c.path("positions.path", raw.path.as_ref()) {
            Some(path) => PositionsBackend::File(path),
            None => {
                if raw.path.is_none() {
                    c.error(
                        "positions.path",
                        r#"missing (required with backend = "file")"#,
                    );
                }
                PositionsBackend::Memory
            }
        },
        Some("kubernetes") => {
            // Refused here rather than at start, so that `check` tells the truth.
            c.error(
                "positions.backend",
                r#""kubernetes" is not supported by this version yet (it comes with clustering); use backend = "file" with a persistent volume"#,
            );
            if raw.path.is_some() {
                c.error(
                    "positions.path",
                    r#"is only used with backend = "file" (the kubernetes backend keeps positions in ConfigMaps)"#,
                );
            }
            PositionsBackend::Kubernetes
        }
        Some(other) => {
            c.error(
                "positions.backend",
                format!(r#"{other:?} is not one of "file", "kubernetes""#),
            );
            PositionsBackend::Memory
        }
    };
    PositionsConfig {
        backend,
        sync_period: c.positive_duration(
            "positions.sync_period",
            raw.sync_period.as_deref(),
            d.sync_period,
        ),
        gc_after: c.positive_duration("positions.gc_after", raw.gc_after.as_deref(), d.gc_after),
    }
}

/// One `[loki.<name>]` receiver (SPEC §4.5).
fn receiver(c: &mut Checker, name: &str, raw: &RawLoki) -> LokiConfig {
    let path = join_key("loki", name);
    let at = |key: &str| join_key(&path, key);
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
    {
        c.error(
            &path,
            format!("{name:?} is not a valid receiver name (letters, digits, '_' and '-')"),
        );
    }
    let url = match &raw.url {
        None => {
            c.error(at("url"), "missing (required)");
            String::new()
        }
        Some(url) => c.url(&at("url"), Some(url)).unwrap_or_default(),
    };
    let d = LokiConfig::with_url(url);
    let tenant_id = c.non_empty(&at("tenant_id"), raw.tenant_id.as_ref());
    if let Some(tenant) = &tenant_id
        && http::HeaderValue::from_str(tenant).is_err()
    {
        c.error(
            at("tenant_id"),
            "is not a valid HTTP header value (no control characters or newlines)",
        );
    }
    let mut headers = BTreeMap::new();
    for (header_name, value) in raw.headers.iter().flatten() {
        if header(c, &at("headers"), header_name, std::slice::from_ref(value)) {
            headers.insert(header_name.clone(), Secret(value.clone()));
        }
        if tenant_id.is_some() && header_name.eq_ignore_ascii_case("x-scope-orgid") {
            c.error(
                join_key(&at("headers"), header_name),
                "conflicts with tenant_id (set the tenant in one place)",
            );
        }
    }
    let max_label_names = c.positive(
        &at("max_label_names"),
        raw.max_label_names,
        d.max_label_names,
    );
    let max_label_value_length = c.positive(
        &at("max_label_value_length"),
        raw.max_label_value_length,
        d.max_label_value_length,
    );
    let mut external_labels = Vec::new();
    let labels = raw.external_labels.as_ref();
    for (label, value) in labels.into_iter().flatten() {
        let label_path = join_key(&at("external_labels"), label);
        if !is_label_name(label) {
            c.error(
                label_path,
                format!("{label:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        } else if label.starts_with("__") {
            c.error(
                label_path,
                "labels starting with \"__\" are dropped before sending: choose another name",
            );
        } else if value.is_empty() {
            c.error(label_path, "must not be empty (Loki ignores empty labels)");
        } else if value.len() > max_label_value_length {
            c.error(
                label_path,
                format!("is longer than max_label_value_length ({max_label_value_length})"),
            );
        } else {
            external_labels.push((label.clone(), value.clone()));
        }
    }
    if labels.is_some_and(|l| l.len() > max_label_names) {
        c.error(
            at("external_labels"),
            format!("has more labels than max_label_names ({max_label_names})"),
        );
    }
    let batch_size = c.size(&at("batch_size"), raw.batch_size.as_ref(), d.batch_size);
    let batch_size = c.positive(&at("batch_size"), Some(batch_size), d.batch_size);
    let buffer_size = c.size(&at("buffer_size"), raw.buffer_size.as_ref(), d.buffer_size);
    if buffer_size < batch_size {
        c.error(
            at("buffer_size"),
            format!(
                "must be at least batch_size ({})",
                format_size(batch_size as u64)
            ),
        );
    }
    let min_backoff = c.positive_duration(
        &at("min_backoff"),
        raw.min_backoff.as_deref(),
        d.min_backoff,
    );
    let max_backoff = c.positive_duration(
        &at("max_backoff"),
        raw.max_backoff.as_deref(),
        d.max_backoff,
    );
    if min_backoff > max_backoff {
        c.error(at("min_backoff"), "must not exceed max_backoff");
    }
    LokiConfig {
        tenant_id,
        headers,
        external_labels,
        batch_size,
        batch_wait: c.positive_duration(&at("batch_wait"), raw.batch_wait.as_deref(), d.batch_wait),
        buffer_size,
        on_full: c.word(
            &at("on_full"),
            raw.on_full.as_deref(),
            &[("block", OnFull::Block), ("drop", OnFull::Drop)],
            d.on_full,
        ),
        min_backoff,
        max_backoff,
        max_retries: raw.max_retries.unwrap_or(d.max_retries),
        retry_on_http_429: raw.retry_on_http_429.unwrap_or(d.retry_on_http_429),
        remote_timeout: c.positive_duration(
            &at("remote_timeout"),
            raw.remote_timeout.as_deref(),
            d.remote_timeout,
        ),
        auth: auth(
            c,
            &path,
            &AuthKeys {
                bearer_token: raw.bearer_token.as_ref(),
                bearer_token_file: raw.bearer_token_file.as_ref(),
                authorization: raw.authorization.as_ref(),
                basic_auth: raw.basic_auth.as_ref(),
                oauth2: raw.oauth2.as_ref(),
            },
        ),
        tls: tls(c, &at("tls_config"), raw.tls_config.as_ref()),
        proxy: proxy(
            c,
            &path,
            &ProxyKeys {
                proxy_url: raw.proxy_url.as_ref(),
                no_proxy: raw.no_proxy.as_ref(),
                proxy_from_environment: raw.proxy_from_environment,
                proxy_connect_header: raw.proxy_connect_header.as_ref(),
            },
        ),
        enable_http2: raw.enable_http2.unwrap_or(d.enable_http2),
        max_label_names,
        max_label_value_length,
        max_line_size: c.size(
            &at("max_line_size"),
            raw.max_line_size.as_ref(),
            d.max_line_size,
        ),
        max_line_size_truncate: raw
            .max_line_size_truncate
            .unwrap_or(d.max_line_size_truncate),
        url: d.url,
    }
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

fn server(c: &mut Checker, raw: Option<&RawServer>) -> ServerConfig {
    let d = ServerConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let listen = match &raw.listen {
        None => d.listen,
        Some(listen) if is_listen_address(listen) => listen.clone(),
        Some(listen) => {
            c.error(
                "server.listen",
                format!(r#"{listen:?} is not an address to listen on (examples: "0.0.0.0:12345", "127.0.0.1:9000", "[::]:12345")"#),
            );
            d.listen
        }
    };
    let log_level = match &raw.log_level {
        None => d.log_level,
        Some(level) if is_log_level(level) => level.clone(),
        Some(level) => {
            c.error(
                "server.log_level",
                format!(
                    r#"{level:?} is not a log level (one of {}, or directives such as "info,kube=debug")"#,
                    LOG_LEVELS.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
                ),
            );
            d.log_level
        }
    };
    ServerConfig {
        listen,
        log_level,
        log_format: c.word(
            "server.log_format",
            raw.log_format.as_deref(),
            LOG_FORMATS,
            d.log_format,
        ),
    }
}

/// `ip:port`, `[ipv6]:port` or `hostname:port`.
fn is_listen_address(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

/// A bare level, or a list of `tracing` directives (`info,kube=debug`). A bare word that is not
/// a level would be read by `EnvFilter` as a target name and silently log nothing useful.
fn is_log_level(text: &str) -> bool {
    let text = text.trim();
    if LOG_LEVELS
        .iter()
        .any(|level| level.eq_ignore_ascii_case(text))
    {
        return true;
    }
    (text.contains('=') || text.contains(','))
        && text.split(',').all(|directive| {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            LOG_LEVELS
                .iter()
                .any(|l| l.eq_ignore_ascii_case(level.trim()))
        })
        && tracing_subscriber::EnvFilter::try_new(text).is_ok()
}

fn clustering(c: &mut Checker, raw: Option<&RawClustering>) -> ClusteringConfig {
    let d = ClusteringConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let namespace = c.non_empty("clustering.namespace", raw.namespace.as_ref());
    if let Some(ns) = &namespace
        && !is_dns_label(ns)
    {
        c.error(
            "clustering.namespace",
            format!(
                "{ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            ),
        );
    }
    let lease_duration = c.positive_duration(
        "clustering.lease_duration",
        raw.lease_duration.as_deref(),
        d.lease_duration,
    );
    let renew_interval = c.positive_duration(
        "clustering.renew_interval",
        raw.renew_interval.as_deref(),
        d.renew_interval,
    );
    if renew_interval >= lease_duration {
        c.error(
            "clustering.renew_interval",
            "must be shorter than lease_duration (a lease renewed after it expired drops the replica)",
        );
    }
    ClusteringConfig {
        enabled: raw.enabled.unwrap_or(false),
        identity: c.non_empty("clustering.identity", raw.identity.as_ref()),
        namespace,
        lease_duration,
        renew_interval,
    }
}
