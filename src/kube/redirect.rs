//! `follow_redirects` for the Kubernetes client (SPEC §4.1): a tower layer above the pool.
//!
//! With `follow_redirects = true` (the default, as in the reference) a `GET` that is not a
//! stream (not `watch=true`, not `follow=true`) follows up to [`MAX_REDIRECTS`] redirects within
//! the API server (another host is refused by name: the pool's connections and the
//! credentials are for the API server alone).
//! Streams are not redirected: a watch or a followed log that moves is reopened by its owner.
//! Otherwise a 3xx answer is an error that names the `Location`, so the user sees where the API
//! server wanted them to go and which setting decides it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode, Uri, header};
use kube::client::Body;

/// The most redirects one request follows.
pub const MAX_REDIRECTS: usize = 10;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a redirect was not followed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "the API server answered {status} redirecting to {location:?}; kubernetes.follow_redirects is false"
    )]
    NotFollowing { status: u16, location: String },
    #[error(
        "the API server answered {status} redirecting to {location:?}; a {what} is never redirected"
    )]
    NotRedirectable {
        status: u16,
        location: String,
        what: &'static str,
    },
    #[error("more than {MAX_REDIRECTS} redirects, the last to {location:?}")]
    TooMany { location: String },
    #[error("the API server redirected to {location:?}, which is not a valid URL")]
    BadLocation { location: String },
    #[error(
        "the API server redirected to another server ({location:?}); only redirects within the API server are followed"
    )]
    OtherServer { location: String },
}

/// The layer; `follow` is `follow_redirects`.
#[derive(Clone, Copy, Debug)]
pub struct FollowRedirects {
    follow: bool,
}

impl FollowRedirects {
    pub fn new(follow: bool) -> FollowRedirects {
        FollowRedirects { follow }
    }
}

impl<S> tower::Layer<S> for FollowRedirects {
    type Service = Redirects<S>;

    fn layer(&self, inner: S) -> Redirects<S> {
        Redirects {
            inner,
            follow: self.follow,
        }
    }
}

/// The service of [`FollowRedirects`].
#[derive(Clone)]
pub struct Redirects<S> {
    inner: S,
    follow: bool,
}

/// What kind of request this is, for the redirect decision.
fn redirectable(method: &Method, uri: &Uri) -> Result<(), &'static str> {
    let streaming = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "watch=true" | "watch=1" | "follow=true" | "follow=1"))
    });
    match *method {
        _ if streaming => Err("stream"),
        Method::GET | Method::HEAD => Ok(()),
        _ => Err("request that changes something"),
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// `location` resolved against `base` (absolute, or an absolute path on the same server).
fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    let uri: Uri = location.parse().ok()?;
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Some(uri);
    }
    if !location.starts_with('/') {
        return None;
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = uri.path_and_query().cloned();
    Uri::from_parts(parts).ok()
}

impl<S, B> tower::Service<Request<Body>> for Redirects<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone is for the redirects; the service polled ready is the one called first.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let follow = self.follow;
        Box::pin(async move {
            let method = request.method().clone();
            let mut uri = request.uri().clone();
            let mut headers = request.headers().clone();
            let kind = redirectable(&method, &uri);
            let mut response = inner.call(request).await?;
            let mut hops = 0;
            while is_redirect(response.status()) {
                let status = response.status().as_u16();
                let Some(location) = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_owned)
                else {
                    // No usable Location: the answer is the answer.
                    return Ok(response);
                };
                if !follow {
                    return Err(RedirectError::NotFollowing { status, location }.into());
                }
                if let Err(what) = kind {
                    return Err(RedirectError::NotRedirectable {
                        status,
                        location,
                        what,
                    }
                    .into());
                }
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(RedirectError::TooMany { location }.into());
                }
                let Some(next) = resolve(&uri, &location) else {
                    return Err(RedirectError::BadLocation { location }.into());
                };
                if next.authority() != uri.authority() || next.scheme() != uri.scheme() {
                    // The pool holds connections to the API server only, and its credentials
                    // are for it alone.
                    return Err(RedirectError::OtherServer { location }.into());
                }
                headers.remove(header::HOST);
                uri = next;
                let mut request = Request::new(Body::from(Vec::new()));
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                tower::ServiceExt::ready(&mut inner).await?;
                response = inner.call(request).await?;
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_writes_are_not_redirected() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let table = [
            (Method::GET, "https://a/api/v1/pods", Ok(())),
            (
                Method::GET,
                "https://a/api/v1/pods?watch=true&x=1",
                Err("stream"),
            ),
            (
                Method::GET,
                "https://a/api/v1/namespaces/d/pods/p/log?follow=true",
                Err("stream"),
            ),
            (
                Method::GET,
                "https://a/api/v1/namespaces/d/pods/p/log?follow=false",
                Ok(()),
            ),
            (
                Method::PUT,
                "https://a/apis/coordination.k8s.io/v1/leases/x",
                Err("request that changes something"),
            ),
        ];
        for (method, u, want) in table {
            assert_eq!(redirectable(&method, &uri(u)), want, "{method} {u}");
        }
    }

    #[test]
    fn locations_resolve_against_the_request() {
        let base: Uri = "https://api:6443/api/v1/pods?limit=5".parse().unwrap();
        assert_eq!(
            resolve(&base, "/api/v2/pods").unwrap().to_string(),
            "https://api:6443/api/v2/pods"
        );
        assert_eq!(
            resolve(&base, "http://other:80/x?y=1").unwrap().to_string(),
            "http://other:80/x?y=1"
        );
        assert!(resolve(&base, "relative/path").is_none());
    }
}
