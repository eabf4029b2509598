//! How a client's connections reach a server: straight, or through an HTTP proxy (SPEC §4.1,
//! §4.5). One implementation for the Kubernetes client and the receivers.
//!
//! Proxies (`proxy_url` with `no_proxy`, or `proxy_from_environment`): a client's server is
//! fixed, so whether it goes through the proxy is decided once, when the client is built, with
//! hyper-util's matcher (Go's `httpproxy` rules: hosts, domain suffixes, IPs, CIDRs, `*`). An
//! `https` server is reached through an HTTP `CONNECT` tunnel (TLS stays end to end; the
//! `proxy_connect_header` headers and the proxy URL's user and password go with the `CONNECT`),
//! an `http` server through the proxy as a forward proxy (absolute-form requests carrying
//! `Proxy-Authorization` when the proxy URL has a user), as Go's `http.Transport` does. The proxy
//! itself is spoken to in plain HTTP; an `https://` proxy URL is refused with a message.
//!
//! [`Route`] is the TCP connector under the TLS layer; the [`RouteStream`] it makes tells hyper
//! whether requests go in absolute form.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderValue};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

use super::pace::Paced;
use crate::config::{ProxyConfig, ProxyMode};

/// What a proxy setting does not allow building a route from.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "proxy {url:?}: only http:// proxies are supported (https servers are still reached with \
         TLS end to end, through a CONNECT tunnel)"
    )]
    ProxyScheme { url: String },
    #[error("proxy {url:?} is not a valid URL (expected http://[user:password@]host:port)")]
    ProxyUrl { url: String },
    #[error("proxy_connect_header {name:?}: {reason}")]
    ProxyHeader { name: String, reason: String },
}

/// How a client reaches its server's host: the connector under TLS.
#[derive(Clone)]
pub enum Route {
    /// Straight to the server.
    Direct(HttpConnector),
    /// To the proxy, for an `http` server: requests go in absolute form (`GET http://host/…`).
    Forward {
        proxy: http::Uri,
        connector: HttpConnector,
        auth: Option<HeaderValue>,
    },
    /// Through a `CONNECT` tunnel of the proxy, for an `https` server.
    Tunnel(Tunnel<HttpConnector>),
}

impl Route {
    /// The route to `uri` under `proxy`.
    pub fn new(uri: &http::Uri, proxy: &ProxyConfig) -> Result<Route, ProxyError> {
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
            return Err(ProxyError::ProxyScheme {
                url: proxy_uri.to_string(),
            });
        }
        if proxy_uri.host().is_none() {
            return Err(ProxyError::ProxyUrl {
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
    pub fn forward_auth(&self) -> Option<&HeaderValue> {
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

/// A [`Route`] whose connections are read with pacing ([`Paced`]): the API server's, where
/// followed logs trickle in.
#[derive(Clone)]
pub struct PacedRoute(pub Route);

impl tower::Service<http::Uri> for PacedRoute {
    type Response = RouteStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteStream, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting = self.0.call(dst);
        Box::pin(async move { Ok(connecting.await?.paced()) })
    }
}

/// A TCP connection made by a [`Route`]; `proxied` tells hyper to send absolute-form requests.
pub struct RouteStream {
    io: TokioIo<Paced<tokio::net::TcpStream>>,
    proxied: bool,
}

impl RouteStream {
    fn new(io: TokioIo<tokio::net::TcpStream>, proxied: bool) -> RouteStream {
        RouteStream {
            io: TokioIo::new(Paced::new(io.into_inner())),
            proxied,
        }
    }

    /// Paces the reads of this connection ([`Paced`]): for the API server's followed logs.
    pub fn paced(mut self) -> RouteStream {
        self.io.inner_mut().enable();
        self
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
/// their subdomains, `*`). An entry with a port (`loki:3100`) applies only when the client's
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
fn connect_headers(proxy: &ProxyConfig) -> Result<HeaderMap, ProxyError> {
    super::headers::secret_headers(proxy.connect_headers.iter()).map_err(|e| {
        ProxyError::ProxyHeader {
            name: e.name,
            reason: e.reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
