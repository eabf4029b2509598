//! The client-side rate limit on every Kubernetes API request: `qps` and `burst` (SPEC §4.1).
//!
//! A token bucket ([`TokenBucket`], pure and tested with explicit instants) holds up to `burst`
//! tokens and refills at `qps` per second; each request takes one, waiting for it when the bucket
//! is empty. A log stream or a watch is one request however long it stays open, so the limit
//! paces how fast streams are (re)opened — after an API server outage, or when a reload changes
//! the client and every stream reopens — which is what protects the API server. The time spent
//! waiting is recorded in `kube_log_relay_api_rate_limit_wait_seconds`.
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

use crate::telemetry;

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

/// A service whose requests wait for a token.
#[derive(Clone, Debug)]
pub struct Limited<S> {
    inner: S,
    limit: RateLimit,
}

impl<S, Req> tower::Service<Req> for Limited<S>
where
    S: tower::Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let wait = self.limit.wait();
        // The inner future is lazy (hyper sends nothing until it is polled): hold it back until
        // the token is due.
        let response = self.inner.call(req);
        Box::pin(async move {
            if !wait.is_zero() {
                telemetry::api_rate_limit_wait(wait);
                tokio::time::sleep(wait).await;
            }
            response.await
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

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_their_token() {
        use tower::{Service, ServiceExt};
        // Stamps the time the request is actually polled (sent), not when it was called.
        let inner =
            tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(Instant::now()) });
        let mut svc = tower::Layer::layer(&RateLimit::new(5.0, 2), inner);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            at.push(svc.ready().await.unwrap().call(()).await.unwrap() - start);
        }
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 200, 400, 600]);
    }
}
