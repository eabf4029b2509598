//! The HTTP client of a Loki receiver: one push attempt (SPEC §4.5, §6).
//!
//! A hyper-util pooled client over rustls (ring): `http` and `https` URLs, HTTP/2 negotiated by
//! ALPN when `enable_http2`, the receiver's TLS settings (CA, client certificate,
//! `insecure_skip_verify`, `server_name`, `min_version`). Each attempt is `POST url` with
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{Auth, Credential, LokiConfig, PemSource, Secret, TlsConfig, TlsVersion};

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
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        let connector = if config.enable_http2 {
            builder.enable_all_versions().build()
        } else {
            builder.enable_http1().build()
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
                format!("Basic {}", base64(pair.as_bytes()))
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

/// Standard base64 with padding (RFC 4648 §4), for basic auth.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for group in input.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
    use super::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        let table = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in table {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
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
