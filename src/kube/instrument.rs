//! Counts what the relay asks of the Kubernetes API (SPEC §8.2): a tower layer on the kube
//! client that feeds `kube_log_relay_api_requests_total{verb,code}` and
//! `kube_log_relay_api_connections`.
//!
//! The verb comes from the request alone ([`verb_of`], pure and table-tested): log streams,
//! watches, lists and single-object reads are what the relay's API load is made of. Connections
//! are counted from the response: hyper's connector tags every response with the local address
//! of the connection it came on ([`HttpInfo`]), so the distinct local addresses of the responses
//! still being read (a log stream or watch until its body is dropped) are the connections in use
//! — one per request over HTTP/1.1, shared by many streams over HTTP/2. Idle pooled
//! connections are not counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpInfo;

use crate::telemetry;

/// The verb of a request, as `kube_log_relay_api_requests_total{verb}` names it: `log`, `watch`,
/// `list`, `get`, `create`, `update`, `patch`, `delete`, or `other` — a fixed set, whatever
/// the path.
pub fn verb_of(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    match *method {
        Method::POST => return "create",
        Method::PUT => return "update",
        Method::PATCH => return "patch",
        Method::DELETE => return "delete",
        Method::GET => {}
        _ => return "other",
    }
    let watching = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    if watching {
        return "watch";
    }
    // `/api/v1/...` or `/apis/<group>/<version>/...`; then an optional `namespaces/<ns>`.
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return "other",
    };
    let rest = match rest {
        ["namespaces", _ns, resource, more @ ..] => {
            // `namespaces/<ns>/<resource>...`: drop the namespace scope.
            let mut r = vec![*resource];
            r.extend_from_slice(more);
            r
        }
        other => other.to_vec(),
    };
    match rest.as_slice() {
        [_resource] => "list",
        [_resource, _name] => "get",
        [_resource, _name, "log"] => "log",
        [_resource, _name, _subresource] => "get",
        _ => "other",
    }
}

/// The layer: count requests and the connections they use. Clones share the connection count.
#[derive(Clone, Default)]
pub struct Instrument {
    connections: Arc<Connections>,
}

/// Responses being read, by connection.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<ConnectionKey, usize>>,
    /// Names responses that carry no [`HttpInfo`], each counted as its own connection.
    anonymous: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ConnectionKey {
    Local(SocketAddr),
    Anonymous(u64),
}

impl Connections {
    /// Counts a response read on the connection with local address `local`.
    fn acquire(self: &Arc<Self>, local: Option<SocketAddr>) -> ConnectionGuard {
        let key = match local {
            Some(addr) => ConnectionKey::Local(addr),
            None => ConnectionKey::Anonymous(self.anonymous.fetch_add(1, Ordering::Relaxed)),
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(key).or_default() += 1;
        telemetry::api_connections(open.len());
        ConnectionGuard {
            connections: self.clone(),
            key,
        }
    }

    fn release(&self, key: ConnectionKey) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
        telemetry::api_connections(open.len());
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Holds a connection in the count until the response body is dropped.
struct ConnectionGuard {
    connections: Arc<Connections>,
    key: ConnectionKey,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.release(self.key);
    }
}

impl<S> tower::Layer<S> for Instrument {
    type Service = Instrumented<S>;

    fn layer(&self, inner: S) -> Instrumented<S> {
        Instrumented {
            inner,
            connections: self.connections.clone(),
        }
    }
}

/// The service [`Instrument`] wraps around the kube client's stack.
#[derive(Clone)]
pub struct Instrumented<S> {
    inner: S,
    connections: Arc<Connections>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<Request<B>> for Instrumented<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Body + Unpin,
{
    type Response = Response<Tracked<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Tracked<RB>>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = verb_of(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let connections = self.connections.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    telemetry::api_request(verb, response.status().as_str());
                    let guard = connections.acquire(
                        response
                            .extensions()
                            .get::<HttpInfo>()
                            .map(HttpInfo::local_addr),
                    );
                    Ok(response.map(|body| Tracked {
                        inner: body,
                        _guard: guard,
                    }))
                }
                Err(e) => {
                    telemetry::api_request(verb, "error");
                    Err(e)
                }
            }
        })
    }
}

/// A response body that keeps its connection counted while it is being read.
pub struct Tracked<B> {
    inner: B,
    _guard: ConnectionGuard,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_from_method_and_path() {
        let get = Method::GET;
        let cases: &[(&Method, &str, Option<&str>, &str)] = &[
            (&get, "/api/v1/pods", None, "list"),
            (
                &get,
                "/api/v1/pods",
                Some("watch=true&resourceVersion=5"),
                "watch",
            ),
            (
                &get,
                "/api/v1/pods",
                Some("resourceVersion=5&watch=1"),
                "watch",
            ),
            (&get, "/api/v1/pods", Some("watch=false"), "list"),
            (&get, "/api/v1/namespaces/shop/pods", None, "list"),
            (&get, "/api/v1/namespaces/shop/pods/web-1", None, "get"),
            (
                &get,
                "/api/v1/namespaces/shop/pods/web-1/log",
                Some("follow=true&container=app"),
                "log",
            ),
            (
                &get,
                "/api/v1/namespaces/shop/pods/web-1/status",
                None,
                "get",
            ),
            (&get, "/api/v1/namespaces", None, "list"),
            (&get, "/api/v1/namespaces/shop", None, "get"),
            (&get, "/api/v1/nodes/node-1", None, "get"),
            (
                &get,
                "/apis/coordination.k8s.io/v1/namespaces/kube/leases",
                None,
                "list",
            ),
            (
                &get,
                "/apis/coordination.k8s.io/v1/namespaces/kube/leases/relay-0",
                None,
                "get",
            ),
            (&get, "/version", None, "other"),
            (
                &Method::POST,
                "/apis/coordination.k8s.io/v1/namespaces/k/leases",
                None,
                "create",
            ),
            (
                &Method::PUT,
                "/api/v1/namespaces/k/configmaps/p",
                None,
                "update",
            ),
            (
                &Method::PATCH,
                "/api/v1/namespaces/k/configmaps/p",
                None,
                "patch",
            ),
            (
                &Method::DELETE,
                "/apis/coordination.k8s.io/v1/namespaces/k/leases/r",
                None,
                "delete",
            ),
            (&Method::HEAD, "/api/v1/pods", None, "other"),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(
                verb_of(method, path, *query),
                *want,
                "{method} {path}?{query:?}"
            );
        }
    }

    #[test]
    fn connections_count_distinct_local_addresses_until_bodies_drop() {
        let connections = Arc::new(Connections::default());
        let a: SocketAddr = "127.0.0.1:40001".parse().expect("address");
        let b: SocketAddr = "127.0.0.1:40002".parse().expect("address");
        // Two streams multiplexed on one HTTP/2 connection, one on another.
        let s1 = connections.acquire(Some(a));
        let s2 = connections.acquire(Some(a));
        let s3 = connections.acquire(Some(b));
        assert_eq!(connections.in_use(), 2);
        drop(s1);
        assert_eq!(connections.in_use(), 2);
        drop(s2);
        assert_eq!(connections.in_use(), 1);
        // Without connection info each response is its own connection.
        let x = connections.acquire(None);
        let y = connections.acquire(None);
        assert_eq!(connections.in_use(), 3);
        drop((s3, x, y));
        assert_eq!(connections.in_use(), 0);
    }
}
