//! Counts what the relay asks of the Kubernetes API (SPEC §8.2): a tower layer on the kube
//! client that feeds `kube_log_relay_api_requests_total{verb,code}` (connections are counted
//! by the pool that owns them, [`super::pool`]).
//!
//! The verb comes from the request alone ([`verb_of`], pure and table-tested): log streams,
//! watches, lists and single-object reads are what the relay's API load is made of.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response};

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

/// What to tell the user when the API server refuses the relay's credentials or permissions:
/// the settings to look at, since the answer itself only says "Unauthorized".
pub fn credential_hint(status: u16) -> Option<&'static str> {
    match status {
        401 => Some(
            "the API server answered 401 Unauthorized: it rejected the credentials; check kubernetes.bearer_token / kubernetes.bearer_token_file / kubernetes.authorization / kubernetes.basic_auth / kubernetes.oauth2 (or the kubeconfig's user, or the service account token); requests are retried with backoff",
        ),
        403 => Some(
            "the API server answered 403 Forbidden: the relay's identity lacks a permission; see the RBAC in deploy/ (pods get/list/watch, pods/log get); requests are retried with backoff",
        ),
        _ => None,
    }
}

/// The layer: counts requests by verb and answer.
#[derive(Clone, Copy, Default)]
pub struct Instrument;

impl<S> tower::Layer<S> for Instrument {
    type Service = Instrumented<S>;

    fn layer(&self, inner: S) -> Instrumented<S> {
        Instrumented { inner }
    }
}

/// The service [`Instrument`] wraps around the kube client's stack.
#[derive(Clone)]
pub struct Instrumented<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, RB> tower::Service<Request<B>> for Instrumented<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = verb_of(
            request.method(),
            request.uri().path(),
            request.uri().query(),
        );
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            match &result {
                Ok(response) => {
                    telemetry::api_request(verb, response.status().as_str());
                    if let Some(hint) = credential_hint(response.status().as_u16())
                        && let Some(suppressed) = crate::logging::ERRORS.check("api_credentials")
                    {
                        tracing::warn!(
                            suppressed,
                            status = response.status().as_u16(),
                            verb,
                            "{hint}"
                        );
                    }
                }
                Err(e) => {
                    telemetry::api_request(verb, "error");
                    if let Some(suppressed) = crate::logging::ERRORS.check("api_transport") {
                        tracing::warn!(suppressed, verb, "Kubernetes API request failed: {e}");
                    }
                }
            }
            result
        })
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
}
