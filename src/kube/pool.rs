//! The connection pool under the Kubernetes client (SPEC §4.1, §10).
//!
//! Written here because no crate does it: hyper-util's pool (what kube's client uses) speaks
//! HTTP/1.1 to the API server in practice — one TCP (and TLS) connection per followed log
//! stream, thousands of them for a cluster — and when it does speak HTTP/2 it puts every request
//! on one connection, where the server's `SETTINGS_MAX_CONCURRENT_STREAMS` (250 on the API
//! server) silently queues the rest: a followed log stream never ends, so a queued one never
//! opens.
//!
//! This pool counts what each connection carries. A request is *open* from the moment it is
//! sent until its response body ends or is dropped — for a followed log or a watch, its whole
//! life. Over TLS the pool offers `h2` by ALPN (`enable_http2`); an HTTP/2 connection carries at
//! most `min(max_streams_per_connection, the server's SETTINGS_MAX_CONCURRENT_STREAMS)` open
//! requests. A request goes to the oldest connection with room; when none has room a new
//! connection opens — a request is never queued behind a full one. A new HTTP/2 connection's
//! limit is unknown until the server's SETTINGS arrive (they precede any response), so its
//! first request goes alone and requests that find no room wait for it rather than each opening
//! a connection of its own. HTTP/1.1 connections (a plain `http://` API server, as client-go
//! does, or `enable_http2 = false`) carry one request at a time and are reused when idle.
//! Connections idle for [`IDLE_TIMEOUT`] close. A connection that dies (GOAWAY, reset, TLS
//! error) fails only its own requests; their streams reopen from their cursors.
//!
//! A followed log over HTTP/1.1 (a request marked [`LogStream`]) gets a connection of its own,
//! read without hyper by the task that reads the body (`pool::stream`); everything else goes
//! through hyper's connections here.
//!
//! Connections' reads are paced ([`crate::net::pace`]): a connection whose followed logs trickle
//! in reads them in batches rather than at every write.
//!
//! `kube_log_relay_api_connections` is the number of open connections; [`Pool::stats`] lists
//! them with their streams for the status page.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::Body;
use tokio::sync::Notify;

use crate::net::proxy::{PacedRoute, Route, RouteStream};
use crate::telemetry;

mod stream;

/// Marks a request as a followed log (`pods/log`): over HTTP/1.1 it gets a connection of its
/// own, read by the task that reads its body (`pool::stream`).
#[derive(Clone, Copy, Debug)]
pub struct LogStream;

/// A connection without open requests for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How long making one connection (TCP, proxy tunnel, TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow control: each stream may have this much unread data in flight, and the connection
/// window is this times the streams it may carry. A tailer that stops reading (its receiver
/// pushes back) then holds at most its own window and can never use up the connection's: the
/// other streams on it, and the pod watch, keep flowing. (With hyper's defaults, 2 MiB per
/// stream and 5 MiB per connection, three stalled streams starve every stream on the
/// connection.) Per stream this is what a TCP receive buffer holds for an HTTP/1.1 stream.
const STREAM_WINDOW: u32 = 256 * 1024;

/// HTTP/2 keep-alive pings: a connection whose peer vanished without a word (a NAT or load
/// balancer dropping it) fails within interval + timeout instead of hanging its streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Stream = MaybeHttpsStream<RouteStream>;

/// Why a request got no response from the pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to the API server {uri}: {reason}")]
    Connect { uri: String, reason: String },
    #[error(
        "the API server {uri} negotiated {version} but kubernetes.tls_config.min_version is TLS13"
    )]
    TlsVersion { uri: String, version: String },
    #[error("request to the API server failed: {0}")]
    Request(#[source] hyper::Error),
    #[error("request to the API server failed: {0}")]
    Stream(#[source] stream::StreamError),
}

/// What the status page shows of one connection.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionStats {
    pub id: u64,
    /// `"h2"` or `"http/1.1"`.
    pub protocol: &'static str,
    /// Requests open on it now.
    pub streams: usize,
    /// The most it may carry (ours and the server's limit, the smaller).
    pub limit: usize,
}

/// How the pool reaches the API server: TCP (direct or through a proxy) and TLS.
#[derive(Clone)]
pub struct Connector {
    https: hyper_rustls::HttpsConnector<PacedRoute>,
    http2: bool,
    require_tls13: bool,
}

impl Connector {
    /// `tls` is the client's rustls configuration without ALPN; `server_name` overrides the name
    /// checked in the server's certificate (`tls_config.server_name`).
    pub fn new(
        route: Route,
        tls: rustls::ClientConfig,
        server_name: Option<rustls::pki_types::ServerName<'static>>,
        enable_http2: bool,
        require_tls13: bool,
    ) -> Connector {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match server_name {
            Some(name) => {
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder,
        };
        let https = if enable_http2 {
            builder
                .enable_all_versions()
                .wrap_connector(PacedRoute(route))
        } else {
            builder.enable_http1().wrap_connector(PacedRoute(route))
        };
        Connector {
            https,
            http2: enable_http2,
            require_tls13,
        }
    }

    async fn connect(&self, uri: &Uri) -> Result<Stream, PoolError> {
        use tower::Service as _;
        let failed = |reason: String| PoolError::Connect {
            uri: uri.to_string(),
            reason,
        };
        let mut https = self.https.clone();
        let connecting = https.call(uri.clone());
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(failed(with_tls_hint(crate::logging::causes(&*e)))),
            Err(_) => return Err(failed(format!("timed out after {CONNECT_TIMEOUT:?}"))),
        };
        if self.require_tls13
            && let MaybeHttpsStream::Https(tls) = &stream
        {
            let version = tls.inner().get_ref().1.protocol_version();
            if version != Some(rustls::ProtocolVersion::TLSv1_3) {
                return Err(PoolError::TlsVersion {
                    uri: uri.to_string(),
                    version: version.map_or("no TLS version".into(), |v| format!("{v:?}")),
                });
            }
        }
        Ok(stream)
    }
}

/// A TLS failure names the settings that decide it.
fn with_tls_hint(reason: String) -> String {
    let tls = [
        "certificate",
        "Certificate",
        "UnknownIssuer",
        "NotValidForName",
        "tls",
        "TLS",
    ];
    if tls.iter().any(|w| reason.contains(w)) {
        format!(
            "{reason} (check kubernetes.tls_config: ca_file / ca_pem for the API server's CA, \
             server_name for the name in its certificate)"
        )
    } else {
        reason
    }
}

/// The pool: a tower service of `Request<kube::client::Body>`. Clones share the connections.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Scheme and authority of the API server (requests carry the full URI).
    server: Uri,
    connector: Connector,
    max_streams: usize,
    /// Every connection will be HTTP/1.1 (a plain `http` server, or `enable_http2 = false`):
    /// no probe, and connections open side by side.
    http1_only: bool,
    state: Mutex<State>,
    /// Woken when a connection becomes usable, fails, or frees room.
    changed: Notify,
    /// Set by a connection's task when it ends: the next `choose` drops it. Otherwise `choose`
    /// looks for dead and idle connections at most once a second — with thousands of HTTP/1.1
    /// connections, a look on every request was most of the relay's CPU.
    deaths: Arc<AtomicBool>,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    /// When [`Shared::reap`] last ran.
    reaped_at: Option<Instant>,
    conns: Vec<Entry>,
    /// Bumped when a connection attempt fails; waiters that saw an older value fail too, rather
    /// than each trying again in turn behind one another.
    failures: u64,
    last_failure: Option<Arc<str>>,
}

struct Entry {
    conn: Arc<Conn>,
    phase: Phase,
    /// Requests open on it (the probe included).
    streams: usize,
    idle_since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// TCP/TLS/handshake in progress; its first request waits for it.
    Connecting,
    /// Handshake done; the first request is out and the server's limit not yet known.
    Probing,
    /// The limit is known.
    Ready,
}

/// What [`Shared::choose`] decided.
enum Choice {
    Lease(Lease),
    Open(u64),
    Wait { failures_seen: u64 },
}

/// One connection: how to send on it and whether it still lives.
struct Conn {
    id: u64,
    /// Negotiated HTTP/2 (else HTTP/1.1, one request at a time).
    h2: bool,
    sender: Mutex<Sender>,
    /// Reads the server's `SETTINGS_MAX_CONCURRENT_STREAMS` from the connection now (HTTP/2).
    server_limit: Option<ServerLimit>,
    alive: Arc<AtomicBool>,
    /// Whether requests go in absolute form (an `http` server through a forward proxy).
    absolute_form: bool,
}

/// Reads a connection's current server stream limit.
type ServerLimit = Arc<dyn Fn() -> usize + Send + Sync>;

enum Sender {
    None,
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Conn {
    /// A live HTTP/1.1 connection nothing is sent on through the pool: one being made (its
    /// sender comes with the handshake) or a followed log's own (`pool::stream`).
    fn without_sender(id: u64, absolute_form: bool) -> Conn {
        Conn {
            id,
            h2: false,
            sender: Mutex::new(Sender::None),
            server_limit: None,
            alive: Arc::new(AtomicBool::new(true)),
            absolute_form,
        }
    }

    fn protocol(&self) -> &'static str {
        if self.h2 { "h2" } else { "http/1.1" }
    }

    fn limit(&self, ours: usize) -> usize {
        match &self.server_limit {
            Some(server) => ours.min(server()).max(1),
            None => 1,
        }
    }
}

impl Pool {
    /// A pool for the API server at `server` (scheme and authority are used). Spawns the task
    /// that closes idle connections: call it inside a tokio runtime.
    pub fn new(server: Uri, connector: Connector, max_streams: usize) -> Pool {
        let http1_only = server.scheme() != Some(&http::uri::Scheme::HTTPS) || !connector.http2;
        let shared = Arc::new(Shared {
            server,
            connector,
            max_streams: max_streams.max(1),
            http1_only,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            deaths: Arc::new(AtomicBool::new(false)),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let mut state = shared.lock();
                shared.reap(&mut state, Instant::now());
            }
        });
        Pool { shared }
    }

    /// The open connections, oldest first.
    pub fn stats(&self) -> Vec<ConnectionStats> {
        let state = self.shared.lock();
        state
            .conns
            .iter()
            .filter(|e| e.phase != Phase::Connecting)
            .map(|e| ConnectionStats {
                id: e.conn.id,
                protocol: e.conn.protocol(),
                streams: e.streams,
                limit: e.conn.limit(self.shared.max_streams),
            })
            .collect()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops dead connections and idle ones past [`IDLE_TIMEOUT`]; updates the gauge.
    fn reap(&self, state: &mut State, now: Instant) {
        state.reaped_at = Some(now);
        let before = state.conns.len();
        state.conns.retain(|e| {
            if e.phase == Phase::Connecting {
                return true;
            }
            let alive = e.conn.alive.load(Ordering::Relaxed);
            let idle = e.streams == 0 && now.duration_since(e.idle_since) >= IDLE_TIMEOUT;
            if idle {
                tracing::debug!(connection = e.conn.id, "closing an idle API connection");
            }
            alive && !idle
        });
        if state.conns.len() != before {
            telemetry::api_connections(open_count(state));
        }
    }

    /// A connection with room for one more request: an existing one, else a new one.
    async fn acquire(self: &Arc<Self>) -> Result<Lease, PoolError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            match self.choose(changed.as_mut()) {
                Choice::Lease(lease) => return Ok(lease),
                Choice::Open(id) => return self.open(id).await,
                Choice::Wait { failures_seen } => {
                    changed.await;
                    if let Some(reason) = self.failed_since(failures_seen) {
                        return Err(PoolError::Connect {
                            uri: self.server.to_string(),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        }
    }

    /// Under the lock: lease a connection with room, reserve a new one, or wait (with
    /// `changed` enabled before the lock is released, so no wake-up is missed).
    fn choose(self: &Arc<Self>, changed: Pin<&mut tokio::sync::futures::Notified<'_>>) -> Choice {
        let mut state = self.lock();
        let now = Instant::now();
        let due = state
            .reaped_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if self.deaths.swap(false, Ordering::Relaxed) || due {
            self.reap(&mut state, now);
        }
        let max = self.max_streams;
        if let Some(e) = state.conns.iter_mut().find(|e| {
            e.phase == Phase::Ready
                && e.streams < e.conn.limit(max)
                && e.conn.alive.load(Ordering::Relaxed)
        }) {
            e.streams += 1;
            return Choice::Lease(Lease::new(self.clone(), e.conn.clone(), false));
        }
        if !self.http1_only && state.conns.iter().any(|e| e.phase != Phase::Ready) {
            // A connection is being set up: its room is unknown; wait for it.
            changed.enable();
            return Choice::Wait {
                failures_seen: state.failures,
            };
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::without_sender(id, false));
        state.conns.push(Entry {
            conn,
            phase: Phase::Connecting,
            streams: 1,
            idle_since: Instant::now(),
        });
        Choice::Open(id)
    }

    /// The reason of a connection attempt that failed after `seen`, if any.
    fn failed_since(&self, seen: u64) -> Option<Arc<str>> {
        let state = self.lock();
        (state.failures != seen)
            .then(|| state.last_failure.clone())
            .flatten()
    }

    /// Makes connection `id` (reserved in the state as `Connecting`) and leases it to its first
    /// request, the probe.
    async fn open(self: &Arc<Self>, id: u64) -> Result<Lease, PoolError> {
        match self.handshake(id).await {
            Ok(conn) => {
                let mut state = self.lock();
                if let Some(e) = state.conns.iter_mut().find(|e| e.conn.id == id) {
                    e.conn = conn.clone();
                    // An HTTP/1.1 connection's limit is known: one.
                    e.phase = if conn.h2 {
                        Phase::Probing
                    } else {
                        Phase::Ready
                    };
                }
                telemetry::api_connections(open_count(&state));
                drop(state);
                tracing::debug!(
                    connection = id,
                    protocol = conn.protocol(),
                    "API connection opened"
                );
                let probe = conn.h2;
                if !probe {
                    self.changed.notify_waiters();
                }
                Ok(Lease::new(self.clone(), conn, probe))
            }
            Err(e) => {
                let mut state = self.lock();
                state.conns.retain(|e| e.conn.id != id);
                state.failures += 1;
                state.last_failure = Some(Arc::from(e.to_string()));
                drop(state);
                self.changed.notify_waiters();
                Err(e)
            }
        }
    }

    async fn handshake(&self, id: u64) -> Result<Arc<Conn>, PoolError> {
        let stream = self.connector.connect(&self.server).await?;
        let connected = stream.connected();
        let absolute_form = connected.is_proxied();
        let h2 = connected.is_negotiated_h2();
        let alive = Arc::new(AtomicBool::new(true));
        let mut server_limit = None;
        let io = stream;
        let failed = |e: hyper::Error| PoolError::Connect {
            uri: self.server.to_string(),
            reason: crate::logging::causes(&e),
        };
        let sender = if h2 {
            let streams = u32::try_from(self.max_streams).unwrap_or(u32::MAX);
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .adaptive_window(false)
                .initial_stream_window_size(STREAM_WINDOW)
                // h2 caps a window at 2³¹ − 1.
                .initial_connection_window_size(
                    STREAM_WINDOW
                        .saturating_mul(streams.saturating_add(1))
                        .min(i32::MAX as u32),
                )
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                // Until the server's SETTINGS say otherwise, assume one stream: the probe.
                .initial_max_send_streams(1)
                .handshake(io)
                .await
                .map_err(failed)?;
            // hyper drives the h2 frames in a task of its own and this connection future only
            // when a request is dispatched, so the limit is read from it on demand, not cached.
            let conn = Arc::new(Mutex::new(conn));
            let read = conn.clone();
            server_limit = Some(Arc::new(move || {
                read.lock()
                    .map(|c| c.current_max_send_streams())
                    .unwrap_or(1)
            }) as ServerLimit);
            tokio::spawn(Driven {
                conn,
                alive: alive.clone(),
                deaths: self.deaths.clone(),
                id,
            });
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(failed)?;
            let alive_flag = alive.clone();
            let deaths = self.deaths.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(connection = id, error = %e, "API connection ended");
                }
                alive_flag.store(false, Ordering::Relaxed);
                deaths.store(true, Ordering::Relaxed);
            });
            Sender::H1(sender)
        };
        Ok(Arc::new(Conn {
            id,
            h2,
            sender: Mutex::new(sender),
            server_limit,
            alive,
            absolute_form,
        }))
    }

    /// A request on `conn` is over: free its room, and end the probe if it was one.
    fn release(&self, conn: &Conn, probe: bool) {
        let mut state = self.lock();
        if let Some(e) = state.conns.iter_mut().find(|e| e.conn.id == conn.id) {
            e.streams = e.streams.saturating_sub(1);
            if e.streams == 0 {
                e.idle_since = Instant::now();
            }
            if probe && e.phase == Phase::Probing {
                e.phase = Phase::Ready;
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Counts a connection made for one followed log (`pool::stream`) until the guard drops.
    fn dedicate(self: &Arc<Self>, absolute_form: bool) -> Dedicated {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::without_sender(id, absolute_form));
        let mut state = self.lock();
        state.conns.push(Entry {
            conn,
            phase: Phase::Ready,
            // Its one request: never leased to another.
            streams: 1,
            idle_since: Instant::now(),
        });
        telemetry::api_connections(open_count(&state));
        drop(state);
        tracing::debug!(connection = id, "API connection opened for a followed log");
        Dedicated {
            shared: self.clone(),
            id,
        }
    }

    /// Sends a followed log's `GET` on a connection of its own.
    async fn send_stream(
        self: &Arc<Self>,
        request: Request<Body>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let io = self.connector.connect(&self.server).await?;
        let absolute_form = io.connected().is_proxied();
        let dedicated = self.dedicate(absolute_form);
        let response = stream::send(io, request, absolute_form)
            .await
            .map_err(PoolError::Stream)?;
        let (parts, body) = response.into_parts();
        Ok(Response::from_parts(
            parts,
            PooledBody {
                inner: Inner::Own {
                    body: Box::new(body),
                    _connection: dedicated,
                },
                lease: None,
            },
        ))
    }

    /// The probe's answer arrived: the server's SETTINGS came before it.
    fn probed(&self, conn: &Conn) {
        let mut state = self.lock();
        if let Some(e) = state.conns.iter_mut().find(|e| e.conn.id == conn.id)
            && e.phase == Phase::Probing
        {
            e.phase = Phase::Ready;
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

fn open_count(state: &State) -> usize {
    state
        .conns
        .iter()
        .filter(|e| e.phase != Phase::Connecting)
        .count()
}

/// Drives an HTTP/2 connection, shared with the pool's limit reader, and says when it ends.
struct Driven<C> {
    conn: Arc<Mutex<C>>,
    alive: Arc<AtomicBool>,
    /// The pool's "a connection ended" flag.
    deaths: Arc<AtomicBool>,
    id: u64,
}

impl<T> Future for Driven<http2::Connection<T, Body, TokioExecutor>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &*self;
        let polled = {
            let mut conn = this.conn.lock().unwrap_or_else(|e| e.into_inner());
            Pin::new(&mut *conn).poll(cx)
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(connection = this.id, error = %e, "API connection ended");
                }
                this.alive.store(false, Ordering::Relaxed);
                this.deaths.store(true, Ordering::Relaxed);
                Poll::Ready(())
            }
        }
    }
}

/// The right to one request on a connection; gives the room back when dropped.
struct Lease {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    probe: bool,
    /// An HTTP/1.1 sender taken out of the connection while its request is open.
    h1: Option<http1::SendRequest<Body>>,
    released: bool,
}

impl Lease {
    fn new(shared: Arc<Shared>, conn: Arc<Conn>, probe: bool) -> Lease {
        Lease {
            shared,
            conn,
            probe,
            h1: None,
            released: false,
        }
    }

    async fn send(&mut self, mut request: Request<Body>) -> Result<Response<Incoming>, PoolError> {
        if !self.conn.h2 {
            set_host(&mut request);
            if !self.conn.absolute_form {
                origin_form(request.uri_mut());
            }
        }
        let sent = {
            let mut sender = self.conn.sender.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *sender {
                Sender::H2(s) => Ok(s.clone()),
                Sender::H1(_) => match std::mem::replace(&mut *sender, Sender::None) {
                    Sender::H1(s) => Err(s),
                    _ => unreachable!("matched H1 above"),
                },
                Sender::None => {
                    // Another request holds this HTTP/1.1 connection (cannot happen: its
                    // limit is one request); treat it as dead.
                    self.conn.alive.store(false, Ordering::Relaxed);
                    return Err(PoolError::Connect {
                        uri: self.shared.server.to_string(),
                        reason: "connection busy".into(),
                    });
                }
            }
        };
        let response = match sent {
            Ok(mut h2) => h2.send_request(request).await,
            Err(mut h1) => {
                let ready = h1.ready().await;
                let response = match ready {
                    Ok(()) => h1.send_request(request).await,
                    Err(e) => Err(e),
                };
                self.h1 = Some(h1);
                response
            }
        };
        if self.probe {
            self.shared.probed(&self.conn);
        }
        response.map_err(PoolError::Request)
    }

    /// The response body ended cleanly: an HTTP/1.1 connection can carry the next request.
    fn finish(&mut self, clean: bool) {
        if self.released {
            return;
        }
        self.released = true;
        if let Some(h1) = self.h1.take() {
            if clean && !h1.is_closed() {
                *self.conn.sender.lock().unwrap_or_else(|e| e.into_inner()) = Sender::H1(h1);
            } else {
                // Dropped mid-body: HTTP/1.1 cannot take another request on it.
                self.conn.alive.store(false, Ordering::Relaxed);
            }
        }
        self.shared.release(&self.conn, self.probe);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// HTTP/1.1 needs `Host` (hyper's connection-level client does not add it; HTTP/2 sends the
/// URI's authority as `:authority` instead).
fn set_host(request: &mut Request<Body>) {
    if let Some(authority) = request.uri().authority()
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert(value);
    }
}

/// `https://host/api/v1/...` → `/api/v1/...`: what a server (not a proxy) expects in an
/// HTTP/1.1 request line. HTTP/2 keeps the full URI: its scheme and authority become the
/// `:scheme` and `:authority` pseudo-headers.
fn origin_form(uri: &mut Uri) {
    let path = match uri.path_and_query() {
        Some(p) if !p.as_str().is_empty() => p.clone(),
        _ => http::uri::PathAndQuery::from_static("/"),
    };
    *uri = Uri::from(path);
}

/// A connection of a followed log's own, counted among the pool's until dropped.
struct Dedicated {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.conns.retain(|e| e.conn.id != self.id);
        telemetry::api_connections(open_count(&state));
    }
}

/// A response body that holds its request's room on the connection until it ends or drops.
pub struct PooledBody {
    inner: Inner,
    lease: Option<Lease>,
}

enum Inner {
    /// Read by hyper's connection.
    Hyper(Incoming),
    /// A followed log's body, read from its own connection (counted while the body lives).
    Own {
        /// Boxed: it holds the connection (a TLS one is large).
        body: Box<stream::StreamBody>,
        _connection: Dedicated,
    },
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Inner::Own { body, .. } => return Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => {
                if let Some(mut lease) = self.lease.take() {
                    lease.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut lease) = self.lease.take() {
                    lease.finish(false);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(body) => body.is_end_stream(),
            Inner::Own { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(body) => body.size_hint(),
            Inner::Own { body, .. } => body.size_hint(),
        }
    }
}

impl tower::Service<Request<Body>> for Pool {
    type Response = Response<PooledBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            if shared.http1_only
                && request.extensions().get::<LogStream>().is_some()
                && stream::serves(&request)
            {
                return Ok(shared.send_stream(request).await?);
            }
            let mut lease = shared.acquire().await?;
            let response = lease.send(request).await?;
            let (parts, body) = response.into_parts();
            let mut body = PooledBody {
                inner: Inner::Hyper(body),
                lease: Some(lease),
            };
            // A body that is already over (a GET's JSON fits in one frame) frees its room
            // when read; one without content frees it now.
            if body.is_end_stream()
                && let Some(mut lease) = body.lease.take()
            {
                lease.finish(true);
            }
            Ok(Response::from_parts(parts, body))
        })
    }
}
