//! The Kubernetes API client (SPEC §4.1): turns `[kubernetes]` into a `kube::Client`.
//!
//! [`config::client_config`] maps the static parts — API server, kubeconfig or in-cluster
//! fallback, TLS, inline credentials, `http_headers` — onto a `kube::Config`. Credentials read
//! from files are applied per request by [`FileCredential`], a tower layer that re-reads the file
//! when it changes, because SPEC §4.1 asks that rotated tokens keep working and kube's own
//! `token_file` support does not fit: it re-reads only every ~50 s (it caches for 60 s and
//! refreshes 10 s before that, `kube-client` `TokenFile`), and it sends the file verbatim, so a
//! token file ending in a newline (`echo $TOKEN > file`) breaks every request, where client-go
//! and the reference trim it.
//!
//! With `oauth2`, [`crate::net::oauth2::TokenSource`] is the per-request credential layer
//! instead: it sets the cached token, fetching it once for all concurrent requests, and fails a
//! request at once (counted as an API error, retried by its caller's backoff) while the token
//! endpoint is failing.
//!
//! Every request goes through [`Instrument`], which counts requests by verb and status and the
//! connections in use (SPEC §8.2).
//!
//! Every request also waits for a token of the client-side limit ([`RateLimit`]: `qps`, `burst`).
//!

pub mod config;
pub mod instrument;
pub mod logs;
pub mod pool;
pub mod ratelimit;
pub mod redirect;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ::kube::client::ClientBuilder;
use base64::Engine as _;
use http::HeaderValue;

pub use config::client_config;
pub use instrument::Instrument;
pub use pool::Pool;
pub use ratelimit::RateLimit;
pub use redirect::FollowRedirects;

use ::kube::client::ConfigExt as _;

use crate::config::{Auth, KubernetesConfig, ProxyConfig, ProxyMode, TlsVersion};
use crate::net::oauth2::TokenSource;
use crate::net::proxy::Route;

/// Why the Kubernetes client could not be built; each message names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error(
        "kubernetes.api_server: {url:?} is not usable: {reason} (example: \"https://10.0.0.1:6443\")"
    )]
    ApiServer { url: String, reason: String },
    #[error(
        "kubernetes.kubeconfig_file: cannot use {path:?}: {source} (point it at a readable kubeconfig whose current-context names a cluster)"
    )]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<::kube::config::KubeconfigError>,
    },
    #[error(
        "no Kubernetes API server configured: tried the in-cluster service account ({in_cluster}) and ~/.kube/config or $KUBECONFIG ({kubeconfig}); set kubernetes.api_server or kubernetes.kubeconfig_file"
    )]
    NoApiServer {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("kubernetes.http_headers: header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error(
        "kubernetes.tls_config.{field}: {reason} (give PEM text, as written by openssl or kubectl)"
    )]
    Pem { field: &'static str, reason: String },
    #[error(
        "kubernetes.tls_config: a client certificate needs both cert and key; {missing} (the _pem or _file form) is missing"
    )]
    CertWithoutKey { missing: &'static str },
    #[error("kubernetes.tls_config.server_name: {name:?} is not a valid server name: {reason}")]
    ServerName { name: String, reason: String },
    #[error(
        "kubernetes.{field}: the path {path:?} is not valid UTF-8; move the file to a UTF-8 path"
    )]
    NonUtf8Path { field: &'static str, path: PathBuf },
    #[error("kubernetes.{field}: cannot read {path:?}: {source}")]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubernetes.{field}: {path:?} {reason}")]
    Credential {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot build the Kubernetes client (check kubernetes.tls_config and the credentials)")]
    Client(#[source] ::kube::Error),
    #[error("kubernetes.proxy_url")]
    Proxy(#[source] crate::net::proxy::ProxyError),
    #[error(transparent)]
    OAuth2(#[from] crate::net::oauth2::OAuth2Error),
}

/// Builds the client every API call of the relay goes through: our [`Pool`] at the bottom,
/// kube's base URI, kubeconfig credential and header layers above it, then ours.
pub async fn build_client(cfg: &KubernetesConfig) -> Result<::kube::Client, KubeClientError> {
    Ok(build_api(cfg).await?.client)
}

/// A Kubernetes client and the pool of connections under it (the status page shows them).
#[derive(Clone)]
pub struct Api {
    pub client: ::kube::Client,
    pub pool: Pool,
}

/// [`build_client`], also returning its pool.
pub async fn build_api(cfg: &KubernetesConfig) -> Result<Api, KubeClientError> {
    let config = client_config(cfg)?;
    let pool = pool_for(cfg, &config)?;
    let default_ns = config.default_namespace.clone();
    let stack = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(KubeClientError::Client)?)
        .layer(
            config
                .extra_headers_layer()
                .map_err(KubeClientError::Client)?,
        )
        .layer(FollowRedirects::new(cfg.follow_redirects))
        .service(pool.clone());
    let builder = ClientBuilder::new(stack, default_ns);
    let instrument = Instrument;
    // Outermost: a request waits for its token before anything else happens to it.
    let limit = RateLimit::new(cfg.qps, cfg.burst);
    if let Auth::OAuth2(oauth2) = &cfg.auth {
        let token = TokenSource::new("kubernetes.oauth2", "kubernetes", oauth2)?;
        let client = builder
            .with_layer(&token)
            .with_layer(&instrument)
            .with_layer(&limit)
            .build();
        return Ok(Api { client, pool });
    }
    let client = match FileCredential::from_auth(&cfg.auth)? {
        Some(credential) => builder
            .with_layer(&credential)
            .with_layer(&instrument)
            .with_layer(&limit)
            .build(),
        None => builder.with_layer(&instrument).with_layer(&limit).build(),
    };
    Ok(Api { client, pool })
}

/// The pool for `config`'s API server: TLS from kube's configuration (kubeconfig, in-cluster CA
/// that re-reads itself, client identity), the proxy from `[kubernetes]` or else the
/// kubeconfig's `proxy-url`.
fn pool_for(cfg: &KubernetesConfig, config: &::kube::Config) -> Result<Pool, KubeClientError> {
    let tls = if config.cluster_url.scheme_str() == Some("https") {
        config
            .rustls_client_config()
            .map_err(KubeClientError::Client)?
    } else {
        // Nothing is verified over plain HTTP (`kubectl proxy`): kube's configuration would
        // load and parse the system's CA bundle for nothing (milliseconds at every start and
        // reload).
        crate::net::tls::without_roots()
    };
    let server_name = match &config.tls_server_name {
        Some(name) => Some(
            rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                KubeClientError::ServerName {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?,
        ),
        None => None,
    };
    let proxy = match (&cfg.proxy.mode, &config.proxy_url) {
        (ProxyMode::Direct, Some(url)) => ProxyConfig {
            mode: ProxyMode::Url(url.to_string()),
            ..ProxyConfig::default()
        },
        _ => cfg.proxy.clone(),
    };
    let route = Route::new(&config.cluster_url, &proxy).map_err(KubeClientError::Proxy)?;
    let connector = pool::Connector::new(
        route,
        tls,
        server_name,
        cfg.enable_http2,
        cfg.tls.min_version == Some(TlsVersion::Tls13),
    );
    Ok(Pool::new(
        config.cluster_url.clone(),
        connector,
        cfg.max_streams_per_connection as usize,
    ))
}

/// An `Authorization` header built from a credential file (`bearer_token_file`,
/// `authorization.credentials_file`, `basic_auth.password_file`), re-read whenever the file's
/// modification time or size changes, and at least once a minute. Each request costs one
/// `stat`, which is nothing next to an API request; a projected service-account token is
/// swapped in by a symlink change, which `stat` follows.
#[derive(Clone)]
pub struct FileCredential {
    inner: Arc<FileCredentialInner>,
}

struct FileCredentialInner {
    field: &'static str,
    path: PathBuf,
    scheme: Scheme,
    current: Mutex<Current>,
}

enum Scheme {
    /// `Authorization: <type> <file contents>`.
    Typed(String),
    /// `Authorization: Basic base64(<username>:<file contents>)`.
    Basic(String),
}

struct Current {
    value: HeaderValue,
    stamp: Option<(SystemTime, u64)>,
    read_at: Instant,
}

/// Re-read at least this often even when `stat` shows no change: a same-size rewrite within a
/// coarse mtime tick would otherwise go unnoticed (client-go also re-reads every minute).
const REREAD_EVERY: Duration = Duration::from_secs(60);

impl FileCredential {
    /// The file credential `auth` asks for, read once now so a missing or empty file is an
    /// error at start-up; `None` when the credential is not in a file.
    pub fn from_auth(auth: &Auth) -> Result<Option<FileCredential>, KubeClientError> {
        let Some((field, path)) = config::credential_file(auth) else {
            return Ok(None);
        };
        let scheme = match auth {
            Auth::Basic { username, .. } => Scheme::Basic(username.clone()),
            Auth::Authorization { kind, .. } => Scheme::Typed(kind.clone()),
            _ => Scheme::Typed("Bearer".to_owned()),
        };
        let stamp = stamp(path);
        let contents =
            std::fs::read_to_string(path).map_err(|source| KubeClientError::ReadFile {
                field,
                path: path.clone(),
                source,
            })?;
        let value =
            header_from(&scheme, &contents).map_err(|reason| KubeClientError::Credential {
                field,
                path: path.clone(),
                reason,
            })?;
        Ok(Some(FileCredential {
            inner: Arc::new(FileCredentialInner {
                field,
                path: path.clone(),
                scheme,
                current: Mutex::new(Current {
                    value,
                    stamp,
                    read_at: Instant::now(),
                }),
            }),
        }))
    }

    /// The header to send now, re-reading the file if it changed since the last read. A file
    /// that cannot be read or holds no credential (mid-rotation) keeps the previous value.
    pub fn header(&self) -> HeaderValue {
        let inner = &*self.inner;
        let mut current = inner
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = stamp(&inner.path);
        if now.is_some() && (now != current.stamp || current.read_at.elapsed() >= REREAD_EVERY) {
            let read = std::fs::read_to_string(&inner.path)
                .map_err(|e| e.to_string())
                .and_then(|contents| header_from(&inner.scheme, &contents));
            match read {
                Ok(value) => {
                    current.value = value;
                    current.stamp = now;
                    current.read_at = Instant::now();
                }
                Err(reason) => tracing::warn!(
                    file = %inner.path.display(),
                    setting = inner.field,
                    %reason,
                    "cannot re-read the Kubernetes credential file; using the previous credential and retrying on the next request"
                ),
            }
        }
        current.value.clone()
    }
}

/// Modification time and size: what tells us the file changed.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn header_from(scheme: &Scheme, contents: &str) -> Result<HeaderValue, String> {
    // Trimmed like client-go and the reference: `echo $TOKEN > file` leaves a newline.
    let secret = contents.trim();
    if secret.is_empty() {
        return Err("is empty".to_owned());
    }
    let text = match scheme {
        Scheme::Typed(kind) => format!("{kind} {secret}"),
        Scheme::Basic(username) => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))
        ),
    };
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| "holds a character not allowed in an HTTP header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

impl<S> tower::Layer<S> for FileCredential {
    type Service = WithFileCredential<S>;

    fn layer(&self, inner: S) -> WithFileCredential<S> {
        WithFileCredential {
            inner,
            credential: self.clone(),
        }
    }
}

/// A service that sets `Authorization` from a [`FileCredential`] on every request.
#[derive(Clone)]
pub struct WithFileCredential<S> {
    inner: S,
    credential: FileCredential,
}

impl<S, B> tower::Service<http::Request<B>> for WithFileCredential<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, self.credential.header());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credential, PemSource, Secret};
    use ::kube::api::Api;
    use axum::http::HeaderMap;
    use k8s_openapi::api::core::v1::Pod;

    /// A tiny API server: answers `GET .../pods/x` and records the headers of every request.
    async fn fake_api_server() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/api/v1/namespaces/default/pods/x",
            axum::routing::get(move |headers: HeaderMap| {
                let record = record.clone();
                async move {
                    record.lock().expect("lock").push(headers);
                    axum::Json(serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": "x", "namespace": "default", "uid": "u-1"},
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    async fn get_pod(client: ::kube::Client) {
        let pod = Api::<Pod>::namespaced(client, "default")
            .get("x")
            .await
            .expect("GET pod over plain HTTP");
        assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
    }

    fn authorization(seen: &Mutex<Vec<HeaderMap>>) -> Vec<String> {
        seen.lock()
            .expect("lock")
            .iter()
            .map(|h| {
                h.get("authorization")
                    .map(|v| v.to_str().expect("ascii").to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn bearer_token_and_headers_reach_the_api_server() {
        let (url, seen) = fake_api_server().await;
        let mut cfg = config::tests::with_server(&url);
        cfg.auth = Auth::BearerToken(Secret("s3cret".into()));
        cfg.http_headers
            .insert("X-Relay".into(), vec![Secret("yes".into())]);
        get_pod(build_client(&cfg).await.expect("client")).await;
        assert_eq!(authorization(&seen), ["Bearer s3cret"]);
        assert_eq!(seen.lock().expect("lock")[0]["x-relay"], "yes");
    }

    #[tokio::test]
    async fn basic_auth_reaches_the_api_server() {
        let (url, seen) = fake_api_server().await;
        let mut cfg = config::tests::with_server(&url);
        cfg.auth = Auth::Basic {
            username: "alice".into(),
            password: Credential::Inline(Secret("pw".into())),
        };
        get_pod(build_client(&cfg).await.expect("client")).await;
        // base64("alice:pw")
        assert_eq!(authorization(&seen), ["Basic YWxpY2U6cHc="]);
    }

    #[tokio::test]
    async fn a_rotated_token_file_is_used_from_the_next_request() {
        let (url, seen) = fake_api_server().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "first-token\n").expect("write");
        let mut cfg = config::tests::with_server(&url);
        cfg.auth = Auth::BearerTokenFile(token.clone());
        let client = build_client(&cfg).await.expect("client");
        get_pod(client.clone()).await;
        std::fs::write(&token, "second-token-longer").expect("rotate");
        get_pod(client.clone()).await;
        // Mid-rotation the file can be empty: the previous token stays in use.
        std::fs::write(&token, "").expect("truncate");
        get_pod(client).await;
        assert_eq!(
            authorization(&seen),
            [
                "Bearer first-token",
                "Bearer second-token-longer",
                "Bearer second-token-longer"
            ]
        );
    }

    #[tokio::test]
    async fn credential_files_for_other_schemes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cred");
        std::fs::write(&file, "  abc \n").expect("write");
        let custom = Auth::Authorization {
            kind: "Custom".into(),
            credentials: Credential::File(file.clone()),
        };
        let basic = Auth::Basic {
            username: "alice".into(),
            password: Credential::File(file.clone()),
        };
        let header = |auth: &Auth| {
            FileCredential::from_auth(auth)
                .expect("readable")
                .expect("a file credential")
                .header()
        };
        assert_eq!(header(&custom), "Custom abc");
        assert_eq!(header(&basic), "Basic YWxpY2U6YWJj");
        assert!(header(&custom).is_sensitive());

        std::fs::write(&file, "\n").expect("write");
        let err = FileCredential::from_auth(&custom)
            .err()
            .expect("empty file");
        assert!(
            err.to_string()
                .starts_with("kubernetes.authorization.credentials_file:"),
            "{err}"
        );
        let missing = Auth::BearerTokenFile(dir.path().join("missing"));
        let err = FileCredential::from_auth(&missing)
            .err()
            .expect("missing file");
        assert!(
            err.to_string()
                .contains("kubernetes.bearer_token_file: cannot read"),
            "{err}"
        );
        assert!(
            FileCredential::from_auth(&Auth::None)
                .expect("no file")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_tls_client_with_ca_and_client_certificate_builds() {
        let mut cfg = config::tests::with_server("https://127.0.0.1:6443");
        cfg.tls.ca = Some(PemSource::Inline(Secret(config::tests::TEST_CERT.into())));
        cfg.tls.cert = Some(PemSource::Inline(Secret(config::tests::TEST_CERT.into())));
        cfg.tls.key = Some(PemSource::Inline(Secret(config::tests::TEST_KEY.into())));
        build_client(&cfg)
            .await
            .expect("kube accepts our CA and client identity");
    }
}
