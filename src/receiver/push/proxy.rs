//! The receivers' proxy routes ([`crate::net::proxy`]) tested end to end through a push client.

pub(crate) use crate::net::proxy::{ProxyError, Route};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::{LokiConfig, PemSource, ProxyConfig, ProxyMode, Secret};
    use crate::receiver::push::ClientError;
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
        let client = PushClient::new("test", &config).unwrap();
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
        let client = PushClient::new("test", &via_proxy(url.clone(), proxy)).unwrap();
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
        let client = PushClient::new("test", &config).unwrap();
        assert_eq!(client.push(empty_push(), None).await.unwrap().status, 204);
        assert!(heads.lock().unwrap().is_empty());
        assert_eq!(loki.sink.requests().len(), 1);
    }

    #[test]
    fn https_proxies_are_refused_with_the_reason() {
        let mut config = LokiConfig::with_url("https://loki:3100/loki/api/v1/push");
        config.proxy.mode = ProxyMode::Url("https://proxy:3128".into());
        let err = PushClient::new("test", &config).err().unwrap();
        assert!(
            matches!(err, ClientError::Proxy(ProxyError::ProxyScheme { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("only http:// proxies"), "{err}");
    }
}
