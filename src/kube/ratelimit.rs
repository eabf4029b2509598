//! The client-side rate limit on every Kubernetes API request: `qps` and `burst` (SPEC §4.1).
//!
//! A token bucket ([`TokenBucket`], pure and tested with explicit instants) holds up to `burst`
//! tokens and refills at `qps` per second; each request takes one, waiting for it when the bucket
//! is empty. A log stream or a watch is one request however long it stays open, so the limit
//! paces how fast streams are (re)opened — after an API server outage, or when a reload changes
//! the client and every stream reopens — which is what protects the API server. The time spent
//! waiting is recorded in `kube_log_relay_api_rate_limit_wait_seconds`.
//!
//! Waiting for a token is never a timeout (SPEC §2): a stream open's deadline ([`OPEN_TIMEOUT`])
//! starts here, once the token is due and the request goes out. A timeout wrapped around the
//! whole call would also count the time queued behind thousands of other opens (5,000 streams at
//! `qps = 50` queue for 100 s), so once the queue is longer than the timeout every open would time
//! out in the queue and join it again, for ever. Waiting requests are served in the order they
//! asked: a token is reserved when the request is called (kube's client calls in the order
//! requests arrive), so the wait is first come, first served.
//!
//! Written by hand: the tower `RateLimit` layer refuses to be cloned across kube's service stack
//! and counts fixed windows rather than a bucket, and client-go's semantics (qps + burst) are a
//! dozen lines.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use super::instrument::verb_of;
use crate::telemetry;

/// How long a log stream's response headers may take once its request went out (the rate
/// limit's wait not included) before the open counts as failed.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A log stream's response headers did not arrive within [`OPEN_TIMEOUT`] of its request
/// going out.
#[derive(Debug, thiserror::Error)]
#[error("no response within {0:?}")]
pub struct OpenTimedOut(pub Duration);

/// Tokens refilled at `qps` per second up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `qps` that is not a positive number means no limit.
    pub fn new(qps: f64, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            qps,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; returns how long the caller must wait before its request may
    /// go (zero when a token was there). The token is reserved either way, so concurrent callers
    /// queue up in order.
    pub fn take(&mut self, now: Instant) -> Duration {
        if !(self.qps.is_finite() && self.qps > 0.0) {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.qps).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// The tower layer; clones share one bucket.
#[derive(Clone, Debug)]
pub struct RateLimit {
    bucket: Arc<Mutex<TokenBucket>>,
}

impl RateLimit {
    /// A limit of `qps` requests per second with bursts of `burst`.
    pub fn new(qps: f64, burst: u32) -> RateLimit {
        RateLimit {
            bucket: Arc::new(Mutex::new(TokenBucket::new(qps, burst, Instant::now()))),
        }
    }

    fn wait(&self) -> Duration {
        self.bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now())
    }
}

impl<S> tower::Layer<S> for RateLimit {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limit: self.clone(),
        }
    }
}

/// A service whose requests wait for a token; log streams then get [`OPEN_TIMEOUT`] for their
/// response headers.
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limit: RateLimit,
}

impl<S, B> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<tower::BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tower::BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let wait = self.limit.wait();
        let opens_stream = verb_of(req.method(), req.uri().path(), req.uri().query()) == "log";
        // The inner future is lazy (hyper sends nothing until it is polled): hold it back until
        // the token is due.
        let response = self.inner.call(req);
        Box::pin(async move {
            if !wait.is_zero() {
                telemetry::api_rate_limit_wait(wait);
                tokio::time::sleep(wait).await;
            }
            // The request goes out now: only from here may it time out.
            if opens_stream {
                match tokio::time::timeout(OPEN_TIMEOUT, response).await {
                    Ok(r) => r.map_err(Into::into),
                    Err(_) => Err(Box::new(OpenTimedOut(OPEN_TIMEOUT)) as tower::BoxError),
                }
            } else {
                response.await.map_err(Into::into)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_qps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        // Empty: the 4th waits one token (100 ms), the 5th two.
        assert_eq!(b.take(t0), Duration::from_millis(100));
        assert_eq!(b.take(t0), Duration::from_millis(200));
        // After a second, the debt is paid and 10 - 2 = 8 tokens are back (capped at 3).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(t1), Duration::ZERO);
        assert_eq!(b.take(t1), Duration::ZERO);
        assert_eq!(b.take(t1), Duration::ZERO);
        assert!(b.take(t1) > Duration::ZERO, "never more than burst at once");
    }

    #[test]
    fn no_positive_qps_means_no_limit() {
        let t0 = Instant::now();
        for qps in [0.0, -1.0, f64::NAN] {
            let mut b = TokenBucket::new(qps, 1, t0);
            assert!((0..100).all(|_| b.take(t0).is_zero()));
        }
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path).body(()).expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_their_token() {
        use tower::{Service, ServiceExt};
        // Stamps the time the request is actually polled (sent), not when it was called.
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(Instant::now())
        });
        let mut svc = tower::Layer::layer(&RateLimit::new(5.0, 2), inner);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            let sent = svc.ready().await.unwrap().call(get("/api/v1/pods"));
            at.push(sent.await.unwrap() - start);
        }
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 200, 400, 600]);
    }

    /// Thousands of opens queued for their tokens: none times out in the queue, and they go
    /// out first come, first served.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_token_is_not_a_timeout_and_the_queue_is_fifo() {
        use tower::{Service, ServiceExt};
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        // Answers after 1 s, like a slow API server: well within the open timeout.
        let inner = tower::service_fn(move |req: http::Request<()>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(req.uri().path().to_string());
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::convert::Infallible>(())
            }
        });
        // 100 per second: the last of 5,000 opens waits ~50 s, beyond OPEN_TIMEOUT.
        let mut svc = tower::Layer::layer(&RateLimit::new(100.0, 10), inner);
        let start = Instant::now();
        let mut calls = Vec::new();
        for i in 0..5_000 {
            let path = format!("/api/v1/namespaces/ns/pods/p{i}/log");
            calls.push(tokio::spawn(svc.ready().await.unwrap().call(get(&path))));
        }
        for call in calls {
            call.await.unwrap().expect("no open timed out in the queue");
        }
        let took = start.elapsed();
        assert!(
            took > OPEN_TIMEOUT,
            "the queue was longer than the timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(52), "paced at qps: {took:?}");
        let order: Vec<String> = (0..5_000)
            .map(|i| format!("/api/v1/namespaces/ns/pods/p{i}/log"))
            .collect();
        assert_eq!(*sent.lock().unwrap(), order, "first come, first served");
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_stream_times_out_only_after_its_request_went_out() {
        use tower::{Service, ServiceExt};
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            if req.uri().path().ends_with("/hang/log") {
                std::future::pending::<()>().await;
            }
            Ok::<_, std::convert::Infallible>(Instant::now())
        });
        // One token, then one per 20 s: the hanging open waits 20 s for its token.
        let mut svc = tower::Layer::layer(&RateLimit::new(0.05, 1), inner);
        let start = Instant::now();
        svc.ready()
            .await
            .unwrap()
            .call(get("/api/v1/pods"))
            .await
            .unwrap();
        let hang = svc
            .ready()
            .await
            .unwrap()
            .call(get("/api/v1/namespaces/ns/pods/hang/log"));
        let err = hang.await.expect_err("the hanging open times out");
        assert!(err.downcast_ref::<OpenTimedOut>().is_some(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(20) + OPEN_TIMEOUT);
        // Other requests never time out here (watches and lists have their own limits).
        let other = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(())
        });
        let mut svc = tower::Layer::layer(&RateLimit::new(0.0, 1), other);
        svc.ready()
            .await
            .unwrap()
            .call(get("/api/v1/pods"))
            .await
            .unwrap();
    }
}
