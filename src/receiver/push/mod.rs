//! The HTTP client of a Loki receiver: one push attempt (SPEC §4.5, §6).
//!
//! A hyper-util pooled client over rustls (ring) for `http` and `https` URLs, built from three
//! parts: `tls.rs` (the receiver's TLS settings and HTTP/2 by ALPN), `proxy.rs` (straight to Loki,
//! or through a `CONNECT` tunnel or forward proxy) and `auth.rs` (the `Authorization` header,
//! credential files re-read when they change, OAuth2 tokens fetched and cached).
//!
//! Each attempt is `POST url` with
//! `Content-Type: application/x-protobuf`, `User-Agent: kube-log-relay/<version>`,
//! `X-Scope-OrgID` when the batch has a tenant, the configured `headers` and the single
//! authentication method; the whole attempt (connect, send, read the answer) is bounded by
//! `remote_timeout`.
//!
//! What comes back is only what the retry policy and the logs need: the status, `Retry-After`,
//! and the first line of the body.

mod auth;
mod proxy;
#[cfg(test)]
mod test_support;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, PROXY_AUTHORIZATION, USER_AGENT,
};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::LokiConfig;

use self::auth::AuthHeader;
use self::proxy::Route;
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
    #[error("tls_config: {0}")]
    Tls(#[from] crate::net::tls::TlsError),
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    #[error(transparent)]
    OAuth2(#[from] crate::net::oauth2::OAuth2Error),
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
    /// No OAuth2 token (the message names the setting and when the next fetch is).
    #[error("{0}")]
    Token(String),
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
    /// Builds the client of receiver `name`; fails on a bad URL, header or TLS material.
    pub fn new(name: &str, config: &LokiConfig) -> Result<PushClient, ClientError> {
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
        let configured = crate::net::headers::secret_headers(
            config.headers.iter().map(|(name, value)| (name, [value])),
        )
        .map_err(|e| ClientError::Header {
            name: e.name,
            reason: e.reason,
        })?;
        for (name, value) in &configured {
            headers.insert(name.clone(), value.clone());
        }
        let auth = AuthHeader::new(name, &config.auth)?;
        let route = Route::new(&uri, &config.proxy)?;
        if let Some(value) = route.forward_auth() {
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.insert(PROXY_AUTHORIZATION, value);
        }
        let connector = tls::connector(config, route)?;
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
        if let Some(value) = self.auth.value().await? {
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
            .map_err(|e| PushError::Transport(crate::logging::causes(&e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PemSource, Secret};

    #[test]
    fn bad_urls_and_tls_are_refused_with_the_reason() {
        let bad = ["localhost:3100/push", "ftp://x/y", "http://"];
        for url in bad {
            assert!(
                matches!(
                    PushClient::new("test", &LokiConfig::with_url(url)),
                    Err(ClientError::Url { .. })
                ),
                "{url}"
            );
        }
        let mut config = LokiConfig::with_url("https://loki:3100/loki/api/v1/push");
        config.tls.ca = Some(PemSource::Inline(Secret("not pem".into())));
        let err = PushClient::new("test", &config).err().unwrap();
        assert!(err.to_string().contains("ca is not valid PEM"), "{err}");
        config.tls.ca = None;
        config.tls.server_name = Some("bad name!".into());
        assert!(matches!(
            PushClient::new("test", &config),
            Err(ClientError::Tls(crate::net::tls::TlsError::ServerName(_)))
        ));
    }
}
