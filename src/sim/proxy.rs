//! A small HTTP proxy for tests (SPEC §4.1 `proxy_url`, `proxy_connect_header`; §4.5): `CONNECT
//! host:port` opens a tunnel to the target; any other request, in absolute form
//! (`GET http://host:port/path HTTP/1.1`), is forwarded to the host of its URL. It records the
//! head of the first request on every connection — the method, the target and the headers — so
//! a test can assert where the client went and what it told the proxy (`Proxy-Authorization`,
//! the `proxy_connect_header`s). Later requests on a forwarded keep-alive connection pass
//! through unrecorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head the proxy reads before giving up on a connection.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One connection's first request, as the proxy saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT`, `GET`, `POST`…
    pub method: String,
    /// `host:port` for CONNECT, the absolute URL otherwise.
    pub target: String,
    /// The header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The whole head, request line included.
    pub head: String,
}

impl ProxyRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running proxy on an ephemeral loopback port; it serves until the runtime stops.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<ProxyRequest>>>,
}

impl Proxy {
    /// Binds `127.0.0.1:0` and serves from a spawned task.
    pub async fn start() -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Proxy {
            addr: listener.local_addr()?,
            requests: Arc::default(),
        };
        let requests = proxy.requests.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, requests.clone()));
            }
        });
        Ok(proxy)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `proxy_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first request of every connection so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.lock().clone()
    }

    /// The targets of the CONNECT requests so far (`host:port`).
    pub fn connect_targets(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|r| r.method == "CONNECT")
            .map(|r| r.target.clone())
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ProxyRequest>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses a request head (`\r\n`-separated, without the blank line).
pub fn parse_head(head: &str) -> Option<ProxyRequest> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split_whitespace();
    let (method, target) = (words.next()?.to_string(), words.next()?.to_string());
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some(ProxyRequest {
        method,
        target,
        headers,
        head: head.to_string(),
    })
}

async fn serve(mut client: TcpStream, requests: Arc<Mutex<Vec<ProxyRequest>>>) {
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end - 4]).into_owned();
    let Some(request) = parse_head(&head) else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        return;
    };
    requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request.clone());
    let upstream_addr = if request.method == "CONNECT" {
        request.target.clone()
    } else {
        match request.target.parse::<http::Uri>() {
            Ok(uri) => match uri.authority() {
                Some(a) if a.port().is_some() => a.to_string(),
                Some(a) => format!("{}:80", a.host()),
                None => String::new(),
            },
            Err(_) => String::new(),
        }
    };
    let Ok(mut upstream) = TcpStream::connect(&upstream_addr).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if request.method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        // Anything sent after the CONNECT head belongs to the tunnel.
        buf.drain(..end);
    }
    if upstream.write_all(&buf).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_tunnels_and_records_the_headers() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let proxy = Proxy::start().await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(
            format!("CONNECT {echo_addr} HTTP/1.1\r\nHost: {echo_addr}\r\nX-Proxy-Token: abc\r\n\r\nhello")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; "HTTP/1.1 200 Connection established\r\n\r\nhello".len()];
        s.read_exact(&mut answer).await.unwrap();
        assert!(answer.ends_with(b"\r\n\r\nhello"));
        let r = &proxy.requests()[0];
        assert_eq!(r.method, "CONNECT");
        assert_eq!(r.header("x-proxy-token"), Some("abc"));
        assert_eq!(proxy.connect_targets(), [echo_addr.to_string()]);
    }

    #[tokio::test]
    async fn an_unreachable_target_is_a_502() {
        let proxy = Proxy::start().await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        // Port 1 on loopback: nothing listens there.
        s.write_all(b"GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        assert_eq!(proxy.requests()[0].target, "http://127.0.0.1:1/x");
    }
}
