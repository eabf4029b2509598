//! The simulator's listener (SPEC §8.5): accepts connections, speaks TLS when configured (HTTP/2
//! or HTTP/1.1 by ALPN) or plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge), advertises
//! `max_concurrent_streams` on every HTTP/2 connection, checks authentication, and counts
//! connections and open requests per connection ([`super::connections`]).
//!
//! Authentication covers the Kubernetes API only: the Loki sink (`/loki/…`, `/ready`), the
//! OAuth2 token endpoint and the simulator's own `/sim/…` paths are open. Requests to `/sim/…`
//! are not counted as streams, so reading the stats does not change them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::api::ApiError;
use super::auth::AuthState;
use super::connections::{Connection, Connections};
use super::oauth::TOKEN_PATH;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection is served with.
pub(super) struct Server {
    pub router: Router,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_concurrent_streams: u32,
    pub connections: Arc<Connections>,
    pub auth: Arc<AuthState>,
}

/// Serves `listener` from a spawned task for as long as the runtime lives.
pub(super) fn spawn(listener: TcpListener, server: Server) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(server.max_concurrent_streams);
    let builder = Arc::new(builder);
    let server = Arc::new(server);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, server.clone(), builder.clone()));
        }
    });
}

async fn connection(
    tcp: TcpStream,
    server: Arc<Server>,
    builder: Arc<auto::Builder<TokioExecutor>>,
) {
    let Some(acceptor) = &server.tls else {
        let conn = server.connections.open(false, false, None);
        drive(&builder, TokioIo::new(tcp), &server, &conn).await;
        server.connections.close(conn.id());
        return;
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        // A client that does not trust our CA, or presents a certificate we do not trust.
        _ => {
            server.connections.handshake_failed();
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let protocol = match session.alpn_protocol() {
        Some(b"h2") => "h2",
        _ => "http/1.1",
    };
    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
    let conn = server.connections.open(true, client_cert, Some(protocol));
    drive(&builder, TokioIo::new(tls), &server, &conn).await;
    server.connections.close(conn.id());
}

/// Serves one connection until it ends or is killed.
async fn drive<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    server: &Arc<Server>,
    conn: &Arc<Connection>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (server, conn_for_service) = (server.clone(), conn.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (server, conn) = (server.clone(), conn_for_service.clone());
        async move { Ok::<_, Infallible>(handle(&server, &conn, req).await) }
    });
    let killed: &CancellationToken = conn.killed();
    tokio::select! {
        // A client that goes away mid-response is normal here.
        _ = builder.serve_connection(io, service) => {}
        // Dropping the connection closes the socket: no GOAWAY, like a peer that died.
        _ = killed.cancelled() => {}
    }
}

/// Whether a path belongs to the Kubernetes API (authenticated), not the sink, the token
/// endpoint or the simulator's control paths.
fn is_api_path(path: &str) -> bool {
    !(path.starts_with("/sim/")
        || path.starts_with("/loki/")
        || path == "/ready"
        || path == TOKEN_PATH)
}

async fn handle(server: &Server, conn: &Arc<Connection>, req: Request<Incoming>) -> Response<Body> {
    conn.set_protocol_if_unknown(if req.version() == http::Version::HTTP_2 {
        "h2"
    } else {
        "http/1.1"
    });
    let path = req.uri().path();
    let guard = (!path.starts_with("/sim/")).then(|| server.connections.stream_started(conn));
    if is_api_path(path) {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if server
            .auth
            .check(conn.client_cert(), authorization)
            .is_err()
        {
            return axum::response::IntoResponse::into_response(ApiError::unauthorized());
        }
    }
    let mut router = server.router.clone();
    let response = match tower::Service::call(&mut router, req).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    };
    match guard {
        // The stream stays open in the counts until its body ends or is dropped.
        Some(guard) => response.map(|body| {
            Body::new(body.map_frame(move |frame| {
                let _open = &guard;
                frame
            }))
        }),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kubernetes_api_is_authenticated() {
        for (path, api) in [
            ("/api/v1/pods", true),
            ("/version", true),
            ("/apis", true),
            ("/loki/api/v1/push", false),
            ("/ready", false),
            ("/oauth2/token", false),
            ("/sim/stats", false),
        ] {
            assert_eq!(is_api_path(path), api, "{path}");
        }
    }
}
