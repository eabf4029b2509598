//! How a receiver's connections reach its Loki: straight, or through a proxy (SPEC §4.5, §6).
//!
//! Proxies (`proxy_url` with `no_proxy`, or `proxy_from_environment`): the receiver's URL is
//! fixed, so whether it goes through the proxy is decided once, when the client is built. An
//! `https` Loki is reached through an HTTP `CONNECT` tunnel (TLS stays end to end; the
//! `proxy_connect_header` headers and the proxy URL's user and password go with the `CONNECT`),
//! an `http` Loki through the proxy as a forward proxy (absolute-form requests carrying
//! `Proxy-Authorization` when the proxy URL has a user), as Go's `http.Transport` does. The proxy
//! itself is spoken to in plain HTTP; an `https://` proxy URL is refused with a message.
//!
//! [`Route`] is the TCP connector under the TLS layer ([`super::tls`]); the [`RouteStream`] it
//! makes tells hyper whether requests go in absolute form.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;

use crate::config::{ProxyConfig, ProxyMode};

use super::ClientError;

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
    pub(super) fn new(uri: &http::Uri, proxy: &ProxyConfig) -> Result<Route, ClientError> {
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
    pub(super) fn forward_auth(&self) -> Option<&HeaderValue> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::{LokiConfig, PemSource, Secret};
    use crate::receiver::push::PushClient;
    use crate::receiver::push::test_support::{CA_PEM, TestLoki, empty_push};

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
}
