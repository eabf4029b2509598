//! The HTTP client of a Loki receiver: one push attempt (SPEC §4.5, §6).
//!
//! A hyper-util pooled client over rustls (ring): `http` and `https` URLs, the receiver's TLS
//! settings (CA, client certificate, `insecure_skip_verify`, `server_name`, `min_version`).
//!
//! HTTP/2 (`enable_http2`, default true) is offered the way Go's client (and so the reference)
//! offers it: by ALPN during the TLS handshake, so an `https` Loki that speaks HTTP/2 gets it and
//! one that does not gets HTTP/1.1. Over plain `http` every request is HTTP/1.1: Loki does not
//! expect h2c with prior knowledge, and an HTTP/1.1 proxy in front of it would not understand it.
//! `enable_http2 = false` offers only `http/1.1`.
//!
//! Proxies (`proxy_url` with `no_proxy`, or `proxy_from_environment`): the receiver's URL is
//! fixed, so whether it goes through the proxy is decided once, when the client is built. An
//! `https` Loki is reached through an HTTP `CONNECT` tunnel (TLS stays end to end; the
//! `proxy_connect_header` headers and the proxy URL's user and password go with the `CONNECT`),
//! an `http` Loki through the proxy as a forward proxy (absolute-form requests carrying
//! `Proxy-Authorization` when the proxy URL has a user), as Go's `http.Transport` does. The proxy
//! itself is spoken to in plain HTTP; an `https://` proxy URL is refused with a message.
//!
//! Each attempt is `POST url` with
//! `Content-Type: application/x-protobuf`, `User-Agent: kube-log-relay/<version>`,
//! `X-Scope-OrgID` when the batch has a tenant, the configured `headers` and the single
//! authentication method; the whole attempt (connect, send, read the answer) is bounded by
//! `remote_timeout`.
//!
//! Credential files (`bearer_token_file`, `credentials_file`, `password_file`) are re-read when
//! their modification time or size changes, so rotated tokens keep working; the check is one
//! `stat` per request, small enough to do inline.
//!
//! What comes back is only what the retry policy and the logs need: the status, `Retry-After`,
//! and the first line of the body.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION,
    USER_AGENT,
};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{
    Auth, Credential, LokiConfig, PemSource, ProxyConfig, ProxyMode, Secret, TlsConfig, TlsVersion,
};

use super::retry::parse_retry_after;

/// The most of an answer's body read, for the first line quoted in logs.
const MAX_BODY_READ: usize = 4096;
/// The longest first line kept.
const MAX_FIRST_LINE: usize = 256;

/// What the receiver's configuration does not allow building a client from.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("url {url:?} is not a valid http(s) URL: {reason}")]
    Url { url: String, reason: String },
    #[error("header {name:?}: {reason}")]
    Header { name: String, reason: String },
    #[error("tls_config: cannot read {what} from {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls_config: {what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("tls_config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls_config.server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("tls_config: cert and key must be given together")]
    CertWithoutKey,
    #[error(
        "proxy {url:?}: only http:// proxies are supported (https Lokis are still reached with \
         TLS end to end, through a CONNECT tunnel)"
    )]
    ProxyScheme { url: String },
    #[error("proxy {url:?} is not a valid URL (expected http://[user:password@]host:port)")]
    ProxyUrl { url: String },
    #[error("proxy_connect_header {name:?}: {reason}")]
    ProxyHeader { name: String, reason: String },
}

/// Why one push attempt got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("no answer within remote_timeout ({0:?})")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("cannot read credentials from {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loki's answer to one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushResponse {
    pub status: u16,
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// The first line of the body (at most 256 characters), for logs.
    pub first_line: String,
}

/// The HTTP client of one receiver.
pub struct PushClient {
    client: Client<HttpsConnector<Route>, Full<Bytes>>,
    uri: http::Uri,
    headers: HeaderMap,
    auth: AuthHeader,
    timeout: Duration,
}

impl PushClient {
    /// Builds the client of a receiver; fails on a bad URL, header or TLS material.
    pub fn new(config: &LokiConfig) -> Result<PushClient, ClientError> {
        let uri: http::Uri =
            config
                .url
                .parse()
                .map_err(|e: http::uri::InvalidUri| ClientError::Url {
                    url: config.url.clone(),
                    reason: e.to_string(),
                })?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some() => {}
            _ => {
                return Err(ClientError::Url {
                    url: config.url.clone(),
                    reason: "expected http://host[:port]/path or https://…".into(),
                });
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("kube-log-relay/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in &config.headers {
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| ClientError::Header {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            let mut header_value =
                HeaderValue::from_str(value.expose()).map_err(|e| ClientError::Header {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        let auth = AuthHeader::new(&config.auth)?;
        let route = Route::new(&uri, &config.proxy)?;
        if let Some(value) = route.forward_auth() {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.insert(PROXY_AUTHORIZATION, value);
        }

        let tls = tls_config(&config.tls)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &config.tls.server_name {
            Some(name) => {
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|_| ClientError::ServerName(name.clone()))?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(server_name))
            }
            None => builder,
        };
        // Over TLS, ALPN offers h2 and http/1.1; plain http stays HTTP/1.1 (see the module doc).
        let connector = if config.enable_http2 {
            builder.enable_all_versions().wrap_connector(route)
        } else {
            builder.enable_http1().wrap_connector(route)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(PushClient {
            client,
            uri,
            headers,
            auth,
            timeout: config.remote_timeout,
        })
    }

    /// Sends one push body; the whole attempt is bounded by `remote_timeout`.
    pub async fn push(&self, body: Bytes, tenant: Option<&str>) -> Result<PushResponse, PushError> {
        let mut request = http::Request::post(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| PushError::Transport(e.to_string()))?;
        *request.headers_mut() = self.headers.clone();
        if let Some(tenant) = tenant {
            let value = HeaderValue::from_str(tenant).map_err(|_| {
                PushError::Transport(format!("tenant {tenant:?} is not a valid header value"))
            })?;
            request.headers_mut().insert("x-scope-orgid", value);
        }
        if let Some(value) = self.auth.value()? {
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(PushError::Timeout(self.timeout)),
        }
    }

    async fn exchange(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<PushResponse, PushError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| PushError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let mut body = response.into_body();
        let mut head = Vec::new();
        // Read a bounded prefix; an error while reading the answer does not change the status.
        while head.len() < MAX_BODY_READ {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        head.extend_from_slice(data);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        let first_line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(MAX_FIRST_LINE)
            .collect();
        Ok(PushResponse {
            status,
            retry_after,
            first_line,
        })
    }
}

/// How a receiver reaches its Loki's host: the connector under TLS.
#[derive(Clone)]
pub(crate) enum Route {
    /// Straight to Loki.
    Direct(HttpConnector),
    /// To the proxy, for an `http` Loki: requests go in absolute form (`POST http://loki/…`).
    Forward {
        proxy: http::Uri,
        connector: HttpConnector,
        auth: Option<HeaderValue>,
    },
    /// Through a `CONNECT` tunnel of the proxy, for an `https` Loki.
    Tunnel(Tunnel<HttpConnector>),
}

impl Route {
    /// The route to `uri` under `proxy`.
    fn new(uri: &http::Uri, proxy: &ProxyConfig) -> Result<Route, ClientError> {
        let mut connector = HttpConnector::new();
        // The TLS layer above hands https URIs down; this connector only makes the TCP part.
        connector.enforce_http(false);
        connector.set_nodelay(true);
        let matcher = match &proxy.mode {
            ProxyMode::Direct => return Ok(Route::Direct(connector)),
            ProxyMode::Url(url) => Matcher::builder()
                .all(url.as_str())
                .no(no_proxy_for(uri, &proxy.no_proxy))
                .build(),
            ProxyMode::FromEnvironment => Matcher::from_env(),
        };
        let Some(intercept) = matcher.intercept(uri) else {
            return Ok(Route::Direct(connector));
        };
        let proxy_uri = intercept.uri().clone();
        if proxy_uri.scheme_str() != Some("http") {
            return Err(ClientError::ProxyScheme {
                url: proxy_uri.to_string(),
            });
        }
        if proxy_uri.host().is_none() {
            return Err(ClientError::ProxyUrl {
                url: proxy_uri.to_string(),
            });
        }
        let auth = intercept.basic_auth().cloned();
        if uri.scheme_str() == Some("https") {
            let mut tunnel = Tunnel::new(proxy_uri, connector);
            if let Some(auth) = auth {
                tunnel = tunnel.with_auth(auth);
            }
            let headers = connect_headers(proxy)?;
            if !headers.is_empty() {
                tunnel = tunnel.with_headers(headers);
            }
            Ok(Route::Tunnel(tunnel))
        } else {
            Ok(Route::Forward {
                proxy: proxy_uri,
                connector,
                auth,
            })
        }
    }

    /// The `Proxy-Authorization` every request carries through a forward proxy.
    fn forward_auth(&self) -> Option<&HeaderValue> {
        match self {
            Route::Forward { auth, .. } => auth.as_ref(),
            _ => None,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Route {
    type Response = RouteStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteStream, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Route::Direct(c) | Route::Forward { connector: c, .. } => {
                c.poll_ready(cx).map_err(Into::into)
            }
            Route::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        match self {
            Route::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { Ok(RouteStream::new(connecting.await?, false)) })
            }
            Route::Forward {
                proxy, connector, ..
            } => {
                let connecting = connector.call(proxy.clone());
                Box::pin(async move { Ok(RouteStream::new(connecting.await?, true)) })
            }
            Route::Tunnel(t) => {
                let connecting = t.call(dst);
                Box::pin(async move { Ok(RouteStream::new(connecting.await?, false)) })
            }
        }
    }
}

/// A TCP connection made by a [`Route`]; `proxied` tells hyper to send absolute-form requests.
pub(crate) struct RouteStream {
    io: TokioIo<tokio::net::TcpStream>,
    proxied: bool,
}

impl RouteStream {
    fn new(io: TokioIo<tokio::net::TcpStream>, proxied: bool) -> RouteStream {
        RouteStream { io, proxied }
    }
}

impl Connection for RouteStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for RouteStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for RouteStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The `no_proxy` list as hyper-util's matcher reads it (curl's rules: IPs, CIDRs, domains and
/// their subdomains, `*`). An entry with a port (`loki:3100`) applies only when the receiver's
/// URL has that port, so it is kept (without the port) or left out here: the URL is fixed.
fn no_proxy_for(uri: &http::Uri, entries: &[String]) -> String {
    let port = Some(uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    }));
    entries
        .iter()
        .map(|e| e.trim())
        .filter_map(|entry| match entry.rsplit_once(':') {
            // `host:port`, not an IPv6 address (which has more colons, or brackets).
            Some((host, p)) if !host.contains(':') && p.parse::<u16>().is_ok() => {
                (p.parse::<u16>().ok() == port).then_some(host.trim_matches(['[', ']']))
            }
            Some((host, p)) if host.ends_with(']') && p.parse::<u16>().is_ok() => {
                (p.parse::<u16>().ok() == port).then_some(host.trim_matches(['[', ']']))
            }
            _ => Some(entry),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `proxy_connect_header` as the headers of the `CONNECT` request.
fn connect_headers(proxy: &ProxyConfig) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    for (name, values) in &proxy.connect_headers {
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| ClientError::ProxyHeader {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        for value in values {
            let mut value =
                HeaderValue::from_str(value.expose()).map_err(|e| ClientError::ProxyHeader {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            value.set_sensitive(true);
            headers.append(header_name.clone(), value);
        }
    }
    Ok(headers)
}

/// hyper-util's errors say little at the top ("client error (Connect)"); the causes say why.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The `Authorization` header of every request.
enum AuthHeader {
    None,
    /// `<prefix><credential>`: `Bearer …` or `<type> …`.
    Prefixed {
        prefix: String,
        credential: Source,
    },
    Basic {
        username: String,
        password: Source,
    },
}

/// A secret given inline or read from a file (re-read when it changes).
enum Source {
    Inline(Secret),
    File(WatchedFile),
}

impl Source {
    fn from_credential(c: &Credential) -> Source {
        match c {
            Credential::Inline(s) => Source::Inline(s.clone()),
            Credential::File(p) => Source::File(WatchedFile::new(p.clone())),
        }
    }

    fn read(&self) -> Result<String, PushError> {
        match self {
            Source::Inline(s) => Ok(s.expose().to_owned()),
            Source::File(f) => f.read().map_err(|source| PushError::Credentials {
                path: f.path.clone(),
                source,
            }),
        }
    }
}

impl AuthHeader {
    fn new(auth: &Auth) -> Result<AuthHeader, ClientError> {
        Ok(match auth {
            Auth::None => AuthHeader::None,
            Auth::BearerToken(token) => AuthHeader::Prefixed {
                prefix: "Bearer ".into(),
                credential: Source::Inline(token.clone()),
            },
            Auth::BearerTokenFile(path) => AuthHeader::Prefixed {
                prefix: "Bearer ".into(),
                credential: Source::File(WatchedFile::new(path.clone())),
            },
            Auth::Authorization { kind, credentials } => AuthHeader::Prefixed {
                prefix: format!("{kind} "),
                credential: Source::from_credential(credentials),
            },
            Auth::Basic { username, password } => AuthHeader::Basic {
                username: username.clone(),
                password: Source::from_credential(password),
            },
        })
    }

    fn value(&self) -> Result<Option<HeaderValue>, PushError> {
        let text = match self {
            AuthHeader::None => return Ok(None),
            AuthHeader::Prefixed { prefix, credential } => {
                format!("{prefix}{}", credential.read()?)
            }
            AuthHeader::Basic { username, password } => {
                let pair = format!("{username}:{}", password.read()?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        };
        let mut value = HeaderValue::from_str(&text).map_err(|_| {
            PushError::Transport(
                "the credentials contain characters not allowed in a header".into(),
            )
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// A credential file and its last content, re-read when its modification time or size changes.
struct WatchedFile {
    path: PathBuf,
    cache: Mutex<Option<(SystemTime, u64, String)>>,
}

impl WatchedFile {
    fn new(path: PathBuf) -> WatchedFile {
        WatchedFile {
            path,
            cache: Mutex::new(None),
        }
    }

    fn read(&self) -> std::io::Result<String> {
        let meta = std::fs::metadata(&self.path)?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, len, text)) = cache.as_ref()
            && *m == modified
            && *len == meta.len()
        {
            return Ok(text.clone());
        }
        let text = std::fs::read_to_string(&self.path)?.trim().to_owned();
        *cache = Some((modified, meta.len(), text.clone()));
        Ok(text)
    }
}

fn pem_bytes(source: &PemSource, what: &'static str) -> Result<Vec<u8>, ClientError> {
    match source {
        PemSource::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
        PemSource::File(path) => std::fs::read(path).map_err(|source| ClientError::TlsFile {
            what,
            path: path.clone(),
            source,
        }),
    }
}

fn certificates(
    source: &PemSource,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = pem_bytes(source, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientError::Pem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The rustls configuration of a receiver's `tls_config`.
fn tls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        Some(TlsVersion::Tls12) | None => rustls::DEFAULT_VERSIONS,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else if let Some(ca) = &tls.ca {
        // A configured CA replaces the public roots, as in the reference.
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "ca")? {
            roots.add(cert)?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_webpki_roots()
    };
    Ok(match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = certificates(cert, "cert")?;
            let key = PrivateKeyDer::from_pem_slice(&pem_bytes(key, "key")?).map_err(|e| {
                ClientError::Pem {
                    what: "key",
                    reason: e.to_string(),
                }
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ClientError::CertWithoutKey),
    })
}

/// `insecure_skip_verify`: accepts any server certificate, still checking handshake
/// signatures so the connection is at least to the holder of the presented key.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::sim::loki::{LokiSink, PUSH_PATH};

    /// A test CA (`CN=kube-log-relay test CA`, P-256, valid until 2126) …
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBqTCCAU+gAwIBAgIUdaYsnXu7jwvS4HyPCSoRxlwg+LIwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkgdGVzdCBDQTAgFw0yNjExMjUxMDI5
MjVaGA8yMTI2MTEwMTEwMjkyNVowITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkg
dGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFOpUFNSt1Xz4SYce3xS
wZAtsbPjyObYYuvZRoU8pQGQOKi+4KZNv7j1wJw0zY/bmJ5z0mumPG2kNEarzjju
3tqjYzBhMB0GA1UdDgQWBBRIkPtmJRD1kcgcSybTZZ6+7MoBVjAfBgNVHSMEGDAW
gBRIkPtmJRD1kcgcSybTZZ6+7MoBVjAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB
/wQEAwIBBjAKBggqhkjOPQQDAgNIADBFAiEAqjOhqQtffFK18xSBwMKwmTiCcvNK
2rhPrOf0j81NLMkCICNNnkkQBvp/bjgk2NXyfPB8Ii+SMNt05ckuRobN7otq
-----END CERTIFICATE-----
";
    /// … and a server certificate it signed for `loki.test`, `localhost` and `127.0.0.1`.
    const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB1zCCAX2gAwIBAgIUR386pt/ezIBCWw5fuLML+UYdtWAwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkgdGVzdCBDQTAgFw0yNjExMjUxMDI5
MjVaGA8yMTI2MTEwMTEwMjkyNVowFDESMBAGA1UEAwwJbG9raS50ZXN0MFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAE6/AwSflkk3UyKWEqcQ8ZI19YolcFQujTWhB8
8mYAyvutOqHVMA9dqU14A/O/Rv85oj5IkNnTejtQ0aNB7fFJ1aOBnTCBmjAlBgNV
HREEHjAcgglsb2tpLnRlc3SCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8EAjAA
MA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQU
EkXf4gjQzgK03G3w2MVCQgQrEgUwHwYDVR0jBBgwFoAUSJD7ZiUQ9ZHIHEsm02We
vuzKAVYwCgYIKoZIzj0EAwIDSAAwRQIhAJAnxTIaf6pEqNBdr+ogwULf+yhfpYGV
E/2EQn2amJtmAiBlHDni5T0zKH6wlxRtPwBHbGi7h964skm6S95W75u+Gw==
-----END CERTIFICATE-----
";
    const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmGfwkHtY+7aTd+B1
rmwq1rZauRwRfU5dKjWXjmcO2b6hRANCAATr8DBJ+WSTdTIpYSpxDxkjX1iiVwVC
6NNaEHzyZgDK+606odUwD12pTXgD879G/zmiPkiQ2dN6O1DRo0Ht8UnV
-----END PRIVATE KEY-----
";

    /// An empty `PushRequest`, snappy-compressed: the sink answers it 204.
    fn empty_push() -> Bytes {
        Bytes::from(snap::raw::Encoder::new().compress_vec(&[]).unwrap())
    }

    /// A Loki sink served over TLS (`alpn` offered) or plain HTTP, recording each request's
    /// HTTP version.
    struct TestLoki {
        addr: SocketAddr,
        sink: LokiSink,
        versions: Arc<Mutex<Vec<http::Version>>>,
    }

    impl TestLoki {
        async fn start(alpn: Option<&[&[u8]]>) -> TestLoki {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let sink = LokiSink::new();
            let versions = Arc::new(Mutex::new(Vec::new()));
            let acceptor = alpn.map(|alpn| {
                let certs = vec![CertificateDer::from_pem_slice(SERVER_PEM.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
                let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
                config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                tokio_rustls::TlsAcceptor::from(Arc::new(config))
            });
            let (router, seen) = (sink.router(), versions.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (router, seen, acceptor) = (router.clone(), seen.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                seen.lock().unwrap().push(req.version());
                                let mut router = router.clone();
                                async move { tower::Service::call(&mut router, req).await }
                            },
                        );
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        // A refused handshake ends the connection; the client's error is the test.
                        let _ = match acceptor {
                            Some(acceptor) => match acceptor.accept(tcp).await {
                                Ok(tls) => {
                                    builder.serve_connection(TokioIo::new(tls), service).await
                                }
                                Err(_) => Ok(()),
                            },
                            None => builder.serve_connection(TokioIo::new(tcp), service).await,
                        };
                    });
                }
            });
            TestLoki {
                addr,
                sink,
                versions,
            }
        }

        fn url(&self, scheme: &str, host: &str) -> String {
            format!("{scheme}://{host}:{}{PUSH_PATH}", self.addr.port())
        }

        fn versions(&self) -> Vec<http::Version> {
            self.versions.lock().unwrap().clone()
        }
    }

    /// A tiny HTTP proxy: `CONNECT host:port` tunnels, anything else is forwarded to the host of
    /// its absolute-form URL. Records the head of the first request on every connection.
    async fn start_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let end = loop {
                        let mut chunk = [0u8; 4096];
                        let n = client.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    let mut words = head.split_whitespace();
                    let (method, target) = (words.next().unwrap(), words.next().unwrap());
                    let mut upstream = if method == "CONNECT" {
                        let upstream = TcpStream::connect(target).await.unwrap();
                        client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .unwrap();
                        // Anything sent after the CONNECT head belongs to the tunnel.
                        buf.drain(..end);
                        upstream
                    } else {
                        let uri: http::Uri = target.parse().unwrap();
                        TcpStream::connect(uri.authority().unwrap().as_str())
                            .await
                            .unwrap()
                    };
                    upstream.write_all(&buf).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (addr, heads)
    }

    fn via_proxy(url: String, proxy: SocketAddr) -> LokiConfig {
        let mut config = LokiConfig::with_url(url);
        config.proxy = ProxyConfig {
            mode: ProxyMode::Url(format!("http://relay:s3cret@{proxy}")),
            no_proxy: Vec::new(),
            connect_headers: BTreeMap::from([(
                "X-Proxy-Token".to_owned(),
                vec![Secret("abc".into())],
            )]),
        };
        config
    }

    fn has_header(head: &str, name: &str, value: &str) -> bool {
        head.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value)
        })
    }

    #[tokio::test]
    async fn https_goes_through_a_connect_tunnel_with_the_proxy_credentials() {
        let loki = TestLoki::start(Some(&[b"http/1.1"])).await;
        let (proxy, heads) = start_proxy().await;
        let mut config = via_proxy(loki.url("https", "localhost"), proxy);
        config.tls.ca = Some(PemSource::Inline(Secret(CA_PEM.into())));
        let client = PushClient::new(&config).unwrap();
        for _ in 0..2 {
            let answer = client.push(empty_push(), Some("t")).await.unwrap();
            assert_eq!(answer.status, 204);
        }
        let heads = heads.lock().unwrap().clone();
        // One pooled tunnel carried both requests.
        assert_eq!(heads.len(), 1, "{heads:?}");
        let port = loki.addr.port();
        assert!(
            heads[0].starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n")),
            "{}",
            heads[0]
        );
        // "relay:s3cret"
        assert!(has_header(
            &heads[0],
            "proxy-authorization",
            "Basic cmVsYXk6czNjcmV0"
        ));
        assert!(has_header(&heads[0], "x-proxy-token", "abc"));
        assert_eq!(loki.sink.requests().len(), 2);
        assert_eq!(loki.sink.requests()[0].tenant.as_deref(), Some("t"));
    }

    #[tokio::test]
    async fn http_goes_through_a_forward_proxy_in_absolute_form() {
        let loki = TestLoki::start(None).await;
        let (proxy, heads) = start_proxy().await;
        let url = loki.url("http", "127.0.0.1");
        let client = PushClient::new(&via_proxy(url.clone(), proxy)).unwrap();
        assert_eq!(client.push(empty_push(), None).await.unwrap().status, 204);
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "{heads:?}");
        assert!(
            heads[0].starts_with(&format!("POST {url} HTTP/1.1\r\n")),
            "{}",
            heads[0]
        );
        assert!(has_header(
            &heads[0],
            "proxy-authorization",
            "Basic cmVsYXk6czNjcmV0"
        ));
        // proxy_connect_header is for CONNECT only, as in Go's ProxyConnectHeader.
        assert!(!heads[0].to_ascii_lowercase().contains("x-proxy-token"));
        assert_eq!(loki.sink.requests().len(), 1);
    }

    #[tokio::test]
    async fn no_proxy_hosts_bypass_the_proxy() {
        let loki = TestLoki::start(None).await;
        let (proxy, heads) = start_proxy().await;
        let mut config = via_proxy(loki.url("http", "127.0.0.1"), proxy);
        config.proxy.no_proxy = vec!["example.com".into(), "127.0.0.0/8".into()];
        let client = PushClient::new(&config).unwrap();
        assert_eq!(client.push(empty_push(), None).await.unwrap().status, 204);
        assert!(heads.lock().unwrap().is_empty());
        assert_eq!(loki.sink.requests().len(), 1);
    }

    #[test]
    fn no_proxy_entries_with_a_port_apply_to_that_port_only() {
        let uri: http::Uri = "http://loki:3100/loki/api/v1/push".parse().unwrap();
        let https: http::Uri = "https://loki/loki/api/v1/push".parse().unwrap();
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let table = [
            (&uri, list(&["loki:3100", "other:80"]), "loki"),
            (&uri, list(&["loki:3101"]), ""),
            (&uri, list(&[" .svc ", "10.0.0.0/8"]), ".svc,10.0.0.0/8"),
            (&uri, list(&["[::1]:3100", "::1"]), "::1,::1"),
            (&https, list(&["loki:443", "loki:80"]), "loki"),
        ];
        for (uri, entries, expected) in table {
            assert_eq!(no_proxy_for(uri, &entries), expected, "{uri} {entries:?}");
        }
    }

    #[test]
    fn https_proxies_are_refused_with_the_reason() {
        let mut config = LokiConfig::with_url("https://loki:3100/loki/api/v1/push");
        config.proxy.mode = ProxyMode::Url("https://proxy:3128".into());
        let err = PushClient::new(&config).err().unwrap();
        assert!(matches!(err, ClientError::ProxyScheme { .. }), "{err}");
        assert!(err.to_string().contains("only http:// proxies"), "{err}");
    }

    #[tokio::test]
    async fn tls_verifies_the_server_against_the_configured_ca() {
        let loki = TestLoki::start(Some(&[b"h2", b"http/1.1"])).await;
        let ca = Some(PemSource::Inline(Secret(CA_PEM.into())));
        let push = |config: LokiConfig| async move {
            PushClient::new(&config)
                .unwrap()
                .push(empty_push(), None)
                .await
        };

        let mut config = LokiConfig::with_url(loki.url("https", "127.0.0.1"));
        config.tls.ca = ca.clone();
        assert_eq!(push(config.clone()).await.unwrap().status, 204);
        // server_name replaces the URL's host in SNI and verification.
        config.tls.server_name = Some("loki.test".into());
        assert_eq!(push(config.clone()).await.unwrap().status, 204);
        config.tls.server_name = Some("elsewhere.test".into());
        let err = push(config).await.unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");

        // Without the CA the public roots do not know it …
        let config = LokiConfig::with_url(loki.url("https", "localhost"));
        let err = push(config.clone()).await.unwrap_err().to_string();
        assert!(err.contains("UnknownIssuer"), "{err}");
        // … unless verification is off.
        let mut insecure = config;
        insecure.tls.insecure_skip_verify = true;
        assert_eq!(push(insecure).await.unwrap().status, 204);
        // Failed handshakes never reached the handler.
        assert_eq!(loki.sink.requests().len(), 3);
    }

    #[tokio::test]
    async fn http2_is_negotiated_by_alpn_over_tls_only() {
        let h2 = TestLoki::start(Some(&[b"h2", b"http/1.1"])).await;
        let h1 = TestLoki::start(Some(&[b"http/1.1"])).await;
        let plain = TestLoki::start(None).await;
        let ca = Some(PemSource::Inline(Secret(CA_PEM.into())));
        let versions = |loki: &TestLoki, scheme: &'static str, enable_http2: bool| {
            let mut config = LokiConfig::with_url(loki.url(scheme, "localhost"));
            config.tls.ca = ca.clone();
            config.enable_http2 = enable_http2;
            async move {
                let client = PushClient::new(&config).unwrap();
                assert_eq!(client.push(empty_push(), None).await.unwrap().status, 204);
            }
        };
        versions(&h2, "https", true).await;
        versions(&h2, "https", false).await;
        versions(&h1, "https", true).await;
        versions(&plain, "http", true).await;
        use http::Version;
        assert_eq!(h2.versions(), [Version::HTTP_2, Version::HTTP_11]);
        assert_eq!(h1.versions(), [Version::HTTP_11]);
        // No h2c over plain http: Loki behind an HTTP/1.1 proxy would not understand it.
        assert_eq!(plain.versions(), [Version::HTTP_11]);
    }

    #[test]
    fn bad_urls_and_tls_are_refused_with_the_reason() {
        let bad = ["localhost:3100/push", "ftp://x/y", "http://"];
        for url in bad {
            assert!(
                matches!(
                    PushClient::new(&LokiConfig::with_url(url)),
                    Err(ClientError::Url { .. })
                ),
                "{url}"
            );
        }
        let mut config = LokiConfig::with_url("https://loki:3100/loki/api/v1/push");
        config.tls.ca = Some(PemSource::Inline(Secret("not pem".into())));
        let err = PushClient::new(&config).err().unwrap();
        assert!(err.to_string().contains("ca is not valid PEM"), "{err}");
        config.tls.ca = None;
        config.tls.server_name = Some("bad name!".into());
        assert!(matches!(
            PushClient::new(&config),
            Err(ClientError::ServerName(_))
        ));
    }

    #[test]
    fn authorization_headers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one\n").unwrap();
        let value = |auth: &Auth| {
            AuthHeader::new(auth)
                .unwrap()
                .value()
                .unwrap()
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(value(&Auth::None), None);
        assert_eq!(
            value(&Auth::BearerToken(Secret("t".into()))).as_deref(),
            Some("Bearer t")
        );
        assert_eq!(
            value(&Auth::Basic {
                username: "user".into(),
                password: Credential::Inline(Secret("pass".into())),
            })
            .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(
            value(&Auth::Authorization {
                kind: "Token".into(),
                credentials: Credential::File(file.clone()),
            })
            .as_deref(),
            Some("Token one")
        );
        // A rotated token file is re-read.
        let header = AuthHeader::new(&Auth::BearerTokenFile(file.clone())).unwrap();
        assert_eq!(header.value().unwrap().unwrap(), "Bearer one");
        std::fs::write(&file, "rotated-two\n").unwrap();
        assert_eq!(header.value().unwrap().unwrap(), "Bearer rotated-two");
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(header.value(), Err(PushError::Credentials { .. })));
    }
}
