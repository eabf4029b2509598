//! `GET /api/v1/config`: the effective configuration with every secret redacted (SPEC §4, §8.3).
//!
//! Built field by field with exhaustive destructuring (no `..`): a field added to the model does
//! not compile until it is listed here, so a new secret cannot leak by default. Secrets become
//! [`REDACTED`]: tokens, passwords, credentials, inline PEM (keys and certificates alike), header
//! values (they carry API keys), and the user information of every URL. Paths to credential
//! files are shown: they name where a secret is, not the secret. Names follow the TOML file;
//! durations are human (`"5s"`), sizes are byte counts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::model::{
    AttachMetadata, Auth, ClusteringConfig, Config, Credential, DiscoveryConfig, KubernetesConfig,
    LogFormat, LokiConfig, OnFull, OnLongLine, PemSource, PositionsBackend, PositionsConfig,
    ProxyConfig, ProxyMode, RelabelAction, RelabelRule, Secret, ServerConfig, ShutdownConfig,
    StartFrom, StaticTarget, StdoutConfig, TailConfig, TlsConfig, TlsVersion,
};

/// What every secret value is replaced with.
pub const REDACTED: &str = "<secret>";

/// The configuration as `/api/v1/config` serves it.
pub fn view(config: &Config) -> Value {
    let Config {
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
    } = config;
    let ShutdownConfig {
        timeout: shutdown_timeout,
    } = shutdown;
    json!({
        "kubernetes": kubernetes_view(kubernetes),
        "discovery": discovery_view(discovery),
        "relabel": relabel.iter().map(relabel_view).collect::<Vec<_>>(),
        "targets": targets.iter().map(|StaticTarget { labels }| json!({ "labels": labels })).collect::<Vec<_>>(),
        "tail": tail_view(tail),
        "positions": positions_view(positions),
        "loki": loki.iter().map(|(name, l)| (name.clone(), loki_view(l))).collect::<BTreeMap<_, _>>(),
        "stdout": stdout.as_ref().map(|StdoutConfig { format }| json!({ "format": log_format(*format) })),
        "server": server_view(server),
        "shutdown": { "timeout": human(*shutdown_timeout) },
        "clustering": clustering_view(clustering),
    })
}

/// `scheme://user:password@host/…` → `scheme://<secret>@host/…`; other URLs unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}://{REDACTED}@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn secret(_: &Secret) -> &'static str {
    REDACTED
}

fn headers_view(headers: &BTreeMap<String, Vec<Secret>>) -> Value {
    json!(
        headers
            .iter()
            .map(|(name, values)| (name.clone(), values.iter().map(secret).collect::<Vec<_>>()))
            .collect::<BTreeMap<_, _>>()
    )
}

fn kubernetes_view(k: &KubernetesConfig) -> Value {
    let KubernetesConfig {
        api_server,
        kubeconfig_file,
        auth,
        tls,
        proxy,
        http_headers,
        enable_http2,
        follow_redirects,
        qps,
        burst,
        max_streams_per_connection,
    } = k;
    let mut v = json!({
        "api_server": api_server.as_deref().map(redact_url),
        "kubeconfig_file": kubeconfig_file,
        "tls_config": tls_view(tls),
        "http_headers": headers_view(http_headers),
        "enable_http2": enable_http2,
        "follow_redirects": follow_redirects,
        "qps": qps,
        "burst": burst,
        "max_streams_per_connection": max_streams_per_connection,
    });
    merge(&mut v, auth_view(auth));
    merge(&mut v, proxy_view(proxy));
    v
}

/// Adds the keys of `extra` (an object) to `into` (an object).
fn merge(into: &mut Value, extra: Value) {
    if let (Value::Object(into), Value::Object(extra)) = (into, extra) {
        into.extend(extra);
    }
}

fn credential_view(c: &Credential, inline: &str, file: &str) -> Value {
    match c {
        Credential::Inline(_) => json!({ inline: REDACTED }),
        Credential::File(path) => json!({ file: path }),
    }
}

/// The authentication keys as they appear in TOML: `bearer_token`, `bearer_token_file`,
/// `authorization`, `basic_auth`.
fn auth_view(auth: &Auth) -> Value {
    match auth {
        Auth::None => json!({}),
        Auth::BearerToken(_) => json!({ "bearer_token": REDACTED }),
        Auth::BearerTokenFile(path) => json!({ "bearer_token_file": path }),
        Auth::Authorization { kind, credentials } => {
            let mut a = json!({ "type": kind });
            merge(
                &mut a,
                credential_view(credentials, "credentials", "credentials_file"),
            );
            json!({ "authorization": a })
        }
        Auth::Basic { username, password } => {
            let mut b = json!({ "username": username });
            merge(
                &mut b,
                credential_view(password, "password", "password_file"),
            );
            json!({ "basic_auth": b })
        }
    }
}

fn pem_view(pem: &Option<PemSource>, inline: &str, file: &str) -> Value {
    match pem {
        None => json!({}),
        Some(PemSource::Inline(_)) => json!({ inline: REDACTED }),
        Some(PemSource::File(path)) => json!({ file: path }),
    }
}

fn tls_view(t: &TlsConfig) -> Value {
    let TlsConfig {
        ca,
        cert,
        key,
        insecure_skip_verify,
        server_name,
        min_version,
    } = t;
    let mut v = json!({
        "insecure_skip_verify": insecure_skip_verify,
        "server_name": server_name,
        "min_version": min_version.map(|m| match m {
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        }),
    });
    merge(&mut v, pem_view(ca, "ca_pem", "ca_file"));
    merge(&mut v, pem_view(cert, "cert_pem", "cert_file"));
    merge(&mut v, pem_view(key, "key_pem", "key_file"));
    v
}

fn proxy_view(p: &ProxyConfig) -> Value {
    let ProxyConfig {
        mode,
        no_proxy,
        connect_headers,
    } = p;
    let (url, from_env) = match mode {
        ProxyMode::Direct => (None, false),
        ProxyMode::Url(url) => (Some(redact_url(url)), false),
        ProxyMode::FromEnvironment => (None, true),
    };
    json!({
        "proxy_url": url,
        "no_proxy": no_proxy,
        "proxy_from_environment": from_env,
        "proxy_connect_header": headers_view(connect_headers),
    })
}

fn discovery_view(d: &DiscoveryConfig) -> Value {
    let DiscoveryConfig {
        namespaces,
        label_selector,
        field_selector,
        attach_metadata,
        enabled,
    } = d;
    let AttachMetadata { node, namespace } = attach_metadata;
    json!({
        "enabled": enabled,
        "namespaces": namespaces,
        "label_selector": label_selector,
        "field_selector": field_selector,
        "attach_metadata": { "node": node, "namespace": namespace },
    })
}

fn relabel_view(r: &RelabelRule) -> Value {
    let RelabelRule {
        source_labels,
        separator,
        regex,
        modulus,
        target_label,
        replacement,
        action,
    } = r;
    // Shown as written: validation wrapped it as `^(?s:…)$` to anchor it.
    let anchored = regex.as_str();
    let written = anchored
        .strip_prefix("^(?s:")
        .and_then(|r| r.strip_suffix(")$"))
        .unwrap_or(anchored);
    let action = match action {
        RelabelAction::Replace => "replace",
        RelabelAction::Keep => "keep",
        RelabelAction::Drop => "drop",
        RelabelAction::KeepEqual => "keepequal",
        RelabelAction::DropEqual => "dropequal",
        RelabelAction::HashMod => "hashmod",
        RelabelAction::LabelMap => "labelmap",
        RelabelAction::LabelDrop => "labeldrop",
        RelabelAction::LabelKeep => "labelkeep",
        RelabelAction::Lowercase => "lowercase",
        RelabelAction::Uppercase => "uppercase",
    };
    json!({
        "source_labels": source_labels,
        "separator": separator,
        "regex": written,
        "modulus": modulus,
        "target_label": target_label,
        "replacement": replacement,
        "action": action,
    })
}

fn tail_view(t: &TailConfig) -> Value {
    let TailConfig {
        start_from,
        max_line_size,
        on_long_line,
        min_backoff,
        max_backoff,
        max_stream_lifetime,
        terminated_grace,
        chunk_lines,
    } = t;
    json!({
        "start_from": match start_from {
            StartFrom::Beginning => "beginning".to_string(),
            StartFrom::End => "end".to_string(),
            StartFrom::Ago(d) => human(*d),
        },
        "max_line_size": max_line_size,
        "on_long_line": match on_long_line {
            OnLongLine::Truncate => "truncate",
            OnLongLine::Drop => "drop",
        },
        "min_backoff": human(*min_backoff),
        "max_backoff": human(*max_backoff),
        "max_stream_lifetime": human(*max_stream_lifetime),
        "terminated_grace": human(*terminated_grace),
        "chunk_lines": chunk_lines,
    })
}

fn positions_view(p: &PositionsConfig) -> Value {
    let PositionsConfig {
        backend,
        sync_period,
        gc_after,
    } = p;
    let (backend, path) = match backend {
        PositionsBackend::Memory => ("memory", None),
        PositionsBackend::File(path) => ("file", Some(path)),
        PositionsBackend::Kubernetes => ("kubernetes", None),
    };
    json!({
        "backend": backend,
        "path": path,
        "sync_period": human(*sync_period),
        "gc_after": human(*gc_after),
    })
}

fn loki_view(l: &LokiConfig) -> Value {
    let LokiConfig {
        url,
        tenant_id,
        headers,
        external_labels,
        batch_size,
        batch_wait,
        buffer_size,
        on_full,
        min_backoff,
        max_backoff,
        max_retries,
        retry_on_http_429,
        remote_timeout,
        auth,
        tls,
        proxy,
        enable_http2,
        max_label_names,
        max_label_value_length,
        max_line_size,
        max_line_size_truncate,
    } = l;
    let mut v = json!({
        "url": redact_url(url),
        "tenant_id": tenant_id,
        "headers": headers.iter().map(|(k, s)| (k.clone(), secret(s))).collect::<BTreeMap<_, _>>(),
        "external_labels": external_labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        "batch_size": batch_size,
        "batch_wait": human(*batch_wait),
        "buffer_size": buffer_size,
        "on_full": match on_full { OnFull::Block => "block", OnFull::Drop => "drop" },
        "min_backoff": human(*min_backoff),
        "max_backoff": human(*max_backoff),
        "max_retries": max_retries,
        "retry_on_http_429": retry_on_http_429,
        "remote_timeout": human(*remote_timeout),
        "tls_config": tls_view(tls),
        "enable_http2": enable_http2,
        "max_label_names": max_label_names,
        "max_label_value_length": max_label_value_length,
        "max_line_size": max_line_size,
        "max_line_size_truncate": max_line_size_truncate,
    });
    merge(&mut v, auth_view(auth));
    merge(&mut v, proxy_view(proxy));
    v
}

fn log_format(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Logfmt => "logfmt",
        LogFormat::Json => "json",
    }
}

fn server_view(s: &ServerConfig) -> Value {
    let ServerConfig {
        listen,
        log_level,
        log_format: format,
    } = s;
    json!({ "listen": listen, "log_level": log_level, "log_format": log_format(*format) })
}

fn clustering_view(c: &ClusteringConfig) -> Value {
    let ClusteringConfig {
        enabled,
        identity,
        namespace,
        lease_duration,
        renew_interval,
    } = c;
    json!({
        "enabled": enabled,
        "identity": identity,
        "namespace": namespace,
        "lease_duration": human(*lease_duration),
        "renew_interval": human(*renew_interval),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn url_userinfo_is_redacted() {
        let cases = [
            (
                "https://user:pw@loki.example:3100/loki/api/v1/push",
                "https://<secret>@loki.example:3100/loki/api/v1/push",
            ),
            ("http://token@proxy:3128", "http://<secret>@proxy:3128"),
            (
                "https://p%40ss:x@host/a@b?c=d@e",
                "https://<secret>@host/a@b?c=d@e",
            ),
            (
                "https://loki.example/push?x=a@b",
                "https://loki.example/push?x=a@b",
            ),
            ("http://127.0.0.1:3100", "http://127.0.0.1:3100"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    const SECRETS: [&str; 9] = [
        "tok-kube-1",
        "pw-basic-2",
        "hdr-kube-3",
        "pem-key-4",
        "pem-ca-5",
        "hdr-loki-6",
        "cred-loki-7",
        "userinfo-8",
        "proxyhdr-9",
    ];

    fn config_with_every_secret() -> Config {
        let text = r#"
[kubernetes]
api_server = "https://127.0.0.1:6443"

[loki.a]
url = "http://127.0.0.1:3100/loki/api/v1/push"
"#;
        let mut c = crate::config::parse(text, &|_| None).expect("valid");
        c.kubernetes.auth = Auth::BearerToken(Secret(SECRETS[0].into()));
        c.kubernetes
            .http_headers
            .insert("X-Key".into(), vec![Secret(SECRETS[2].into())]);
        c.kubernetes.tls.key = Some(PemSource::Inline(Secret(SECRETS[3].into())));
        c.kubernetes.tls.ca = Some(PemSource::Inline(Secret(SECRETS[4].into())));
        c.kubernetes.tls.cert = Some(PemSource::File(PathBuf::from("/etc/relay/cert.pem")));
        c.kubernetes.proxy.mode = ProxyMode::Url(format!("http://{}@proxy:3128", SECRETS[7]));
        c.kubernetes.proxy.connect_headers.insert(
            "Proxy-Authorization".into(),
            vec![Secret(SECRETS[8].into())],
        );
        let a = c.loki.get_mut("a").expect("loki.a");
        a.auth = Auth::Basic {
            username: "alice".into(),
            password: Credential::Inline(Secret(SECRETS[1].into())),
        };
        a.headers
            .insert("X-Api-Key".into(), Secret(SECRETS[5].into()));
        let mut b = a.clone();
        b.auth = Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Credential::Inline(Secret(SECRETS[6].into())),
        };
        b.url = format!("https://{}:x@loki/push", SECRETS[7]);
        c.loki.insert("b".into(), b);
        c
    }

    #[test]
    fn no_secret_survives_and_the_rest_is_shown() {
        let v = view(&config_with_every_secret());
        let text = serde_json::to_string(&v).expect("serializes");
        for s in SECRETS {
            assert!(!text.contains(s), "{s} leaked: {text}");
        }
        let k = &v["kubernetes"];
        assert_eq!(k["bearer_token"], REDACTED);
        assert_eq!(k["http_headers"]["X-Key"], json!([REDACTED]));
        assert_eq!(k["tls_config"]["key_pem"], REDACTED);
        assert_eq!(k["tls_config"]["ca_pem"], REDACTED);
        assert_eq!(k["tls_config"]["cert_file"], "/etc/relay/cert.pem");
        assert_eq!(k["proxy_url"], "http://<secret>@proxy:3128");
        assert_eq!(
            k["proxy_connect_header"]["Proxy-Authorization"],
            json!([REDACTED])
        );
        assert_eq!(k["api_server"], "https://127.0.0.1:6443");
        assert_eq!(k["qps"], 50.0);
        let a = &v["loki"]["a"];
        assert_eq!(
            a["basic_auth"],
            json!({ "username": "alice", "password": REDACTED })
        );
        assert_eq!(a["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(a["url"], "http://127.0.0.1:3100/loki/api/v1/push");
        assert_eq!(a["batch_wait"], "1s");
        assert_eq!(a["max_backoff"], "5m");
        assert_eq!(a["buffer_size"], 64 * 1024 * 1024);
        let b = &v["loki"]["b"];
        assert_eq!(
            b["authorization"],
            json!({ "type": "Bearer", "credentials": REDACTED })
        );
        assert_eq!(b["url"], "https://<secret>@loki/push");
        assert_eq!(v["tail"]["start_from"], "beginning");
        assert_eq!(v["relabel"], json!([]));
        assert_eq!(v["server"]["log_format"], "logfmt");
    }

    #[test]
    fn relabel_regexes_are_shown_as_written() {
        let text = r#"
[kubernetes]
api_server = "https://127.0.0.1:6443"

[[relabel]]
source_labels = ["__meta_kubernetes_pod_label_app"]
regex = "web-(.+)"
target_label = "app"

[stdout]
"#;
        let c = crate::config::parse(text, &|_| None).expect("valid");
        let v = view(&c);
        assert_eq!(v["relabel"][0]["regex"], "web-(.+)");
        assert_eq!(v["relabel"][0]["action"], "replace");
        assert_eq!(v["stdout"]["format"], "logfmt");
    }
}
