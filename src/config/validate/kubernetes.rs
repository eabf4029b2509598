//! The `[kubernetes]` table (SPEC §4.1): where the API server is, how to reach it (the shared
//! client options of [`super::client`]) and our client-side limits (`qps`, `burst`,
//! `max_streams_per_connection`).

use super::Checker;
use super::client::{AuthKeys, ProxyKeys, auth, header_lists, proxy, tls};
use crate::config::model::*;
use crate::config::raw::*;

/// The slowest `qps`: one request every 1000 s.
const MIN_QPS: f64 = 0.001;
/// The fastest `qps`.
const MAX_QPS: f64 = 1_000_000.0;

/// The `[kubernetes]` table, with SPEC §4.1's defaults.
pub(super) fn kubernetes(c: &mut Checker, raw: Option<&RawKubernetes>) -> KubernetesConfig {
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
    // The limiter waits 1/qps per token: a vanishing qps would wait longer than a `Duration`
    // holds, and more than a million requests a second is no limit at all.
    let qps = match raw.qps {
        Some(qps) if !(qps.is_finite() && (MIN_QPS..=MAX_QPS).contains(&qps)) => {
            c.error(
                "kubernetes.qps",
                format!(
                    "{qps:?} is out of range (requests per second, from {MIN_QPS} to {MAX_QPS})"
                ),
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
        tls: kubernetes_tls(c, raw.tls_config.as_ref()),
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

/// `tls_config` of the Kubernetes client: the shared rules (`min_version = "TLS13"` is enforced
/// per connection by the pool, `crate::kube::pool`).
fn kubernetes_tls(c: &mut Checker, raw: Option<&RawTls>) -> TlsConfig {
    tls(c, "kubernetes.tls_config", raw)
}
