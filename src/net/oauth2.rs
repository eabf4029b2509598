//! OAuth2 tokens for the relay's clients (SPEC §4.1 `oauth2`, §4.5): the client-credentials
//! grant (RFC 6749 §4.4) as Go's `golang.org/x/oauth2/clientcredentials` speaks it — client id
//! and secret by HTTP basic auth (each form-encoded first), `grant_type=client_credentials`,
//! `scope` space-joined, `endpoint_params` added to the form — against `token_url`, through the
//! table's own `tls_config` and proxy options ([`super::tls`], [`super::proxy`]).
//!
//! One [`TokenSource`] per client (`[kubernetes]`, each `[loki.<name>]`), shared by all of that
//! client's requests:
//! - the token is cached until shortly before it expires ([`refresh_after`]: 10 % of
//!   `expires_in` early, from 1 s to 10 s), so a request never leaves with a token about to
//!   expire;
//! - one fetch at a time: requests that find no usable token wait for the fetch in progress
//!   (single flight) instead of each asking the endpoint;
//! - a failed fetch is logged with the setting to check, counted
//!   (`kube_log_relay_oauth2_token_errors_total{client}`) and followed by a backoff
//!   ([`backoff`]) during which requests fail at once with the last error — the requests' own
//!   retry policies (tailer backoff, push retries) take it from there, and a hundred waiting
//!   streams do not hammer the endpoint. A token that is due for refresh but not yet expired
//!   keeps being used while its refresh fails.
//!
//! The decisions are the pure [`TokenCache`], table-tested below; [`TokenSource`] does the I/O.
//! [`WithToken`] is the tower layer the Kubernetes client stacks; the receivers ask
//! [`TokenSource::header`] once per push.
//!
//! `client_secret_file` is read at every fetch — rare, once per token lifetime — so a rotated
//! secret is used from the next fetch on; it is also read when the client is built, so a
//! missing file stops the start with its setting named.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, PROXY_AUTHORIZATION};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use crate::config::redact::redact_url;
use crate::config::{Credential, OAuth2Config};
use crate::telemetry;

use super::proxy::{ProxyError, Route};
use super::tls::TlsError;

/// The first wait after a failed fetch; it doubles with each further failure…
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// … up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How much earlier than its expiry a token is refreshed: 10 % of its life, within these bounds
/// (and at most half of it).
const MIN_REFRESH_MARGIN: Duration = Duration::from_secs(1);
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(10);
/// How long one token request (connect, send, read the answer) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a token answer read.
const MAX_ANSWER: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When a token that lives `expires_in` is refreshed: 10 % early, but at least 1 s (a request
/// can take that long to reach the server on a busy node) and at most 10 s (Go's
/// `expiryDelta`), and never more than half its life early.
pub fn refresh_after(expires_in: Duration) -> Duration {
    let margin = (expires_in / 10)
        .clamp(MIN_REFRESH_MARGIN, MAX_REFRESH_MARGIN)
        .min(expires_in / 2);
    expires_in - margin
}

/// The wait after the `failures`-th failed fetch in a row (1, 2, …): [`MIN_BACKOFF`] doubling
/// up to [`MAX_BACKOFF`], scaled by 0.8–1.2 with `jitter` in [0, 1) so that clients that
/// failed together do not retry together.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = MIN_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
        .min(MAX_BACKOFF)
}

/// What a request should do about its token now.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Send with this `Authorization` value.
    Use(HeaderValue),
    /// Fetch a token (no other fetch is in progress: the caller holds the cache).
    Fetch,
    /// Fail at once: the last fetch failed and the next is not due yet.
    Wait { error: String, retry_in: Duration },
}

/// The cached token and the failures since the last success: the pure decisions of a
/// [`TokenSource`].
#[derive(Debug, Default)]
pub struct TokenCache {
    token: Option<CachedToken>,
    failures: u32,
    last_error: String,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct CachedToken {
    header: HeaderValue,
    /// `None`: the endpoint gave no `expires_in`; used until refused, as Go does.
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl TokenCache {
    /// What a request at `now` does.
    pub fn next(&self, now: Instant) -> Next {
        if let Some(token) = &self.token
            && token.refresh_at.is_none_or(|at| now < at)
        {
            return Next::Use(token.header.clone());
        }
        match self.retry_at {
            Some(retry_at) if now < retry_at => match &self.token {
                // Due for refresh, the refresh failed, but still valid: keep using it.
                Some(token) if token.expires_at.is_none_or(|at| now < at) => {
                    Next::Use(token.header.clone())
                }
                _ => Next::Wait {
                    error: self.last_error.clone(),
                    retry_in: retry_at - now,
                },
            },
            _ => Next::Fetch,
        }
    }

    /// A fetch at `now` returned `header`, valid for `expires_in` (`None`: no expiry given).
    pub fn fetched(&mut self, now: Instant, header: HeaderValue, expires_in: Option<Duration>) {
        self.token = Some(CachedToken {
            header,
            refresh_at: expires_in.map(|e| now + refresh_after(e)),
            expires_at: expires_in.map(|e| now + e),
        });
        self.failures = 0;
        self.last_error.clear();
        self.retry_at = None;
    }

    /// A fetch at `now` failed with `error`; returns the wait before the next one.
    pub fn failed(&mut self, now: Instant, error: String, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.failures, jitter);
        self.retry_at = Some(now + wait);
        self.last_error = error;
        wait
    }
}

/// What an `oauth2` table does not allow building a client from; each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    #[error("{setting}.token_url: {url:?} is not an http:// or https:// URL")]
    TokenUrl { setting: String, url: String },
    #[error("{setting}.proxy_url: {source}")]
    Proxy {
        setting: String,
        #[source]
        source: ProxyError,
    },
    #[error("{setting}.tls_config: {source}")]
    Tls {
        setting: String,
        #[source]
        source: TlsError,
    },
    #[error("{setting}.client_secret_file: {reason}")]
    SecretFile { setting: String, reason: String },
}

/// Why a request has no token: names the setting to check and when the next fetch is.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(Arc<str>);

/// A failed fetch: the key to blame (`token_url` or `client_secret_file`) and why.
struct FetchError {
    key: &'static str,
    reason: String,
}

/// The tokens of one client; clones share the cache.
#[derive(Clone)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// `kubernetes.oauth2`, `loki.<name>.oauth2`: the prefix of every message.
    setting: String,
    /// The `client` label of the error counter.
    client: String,
    client_id: String,
    secret: Credential,
    uri: http::Uri,
    form: Bytes,
    http: Client<HttpsConnector<Route>, Full<Bytes>>,
    proxy_auth: Option<HeaderValue>,
    /// Held across a fetch: the single flight.
    cache: tokio::sync::Mutex<TokenCache>,
}

impl TokenSource {
    /// The token source of `config`, at `setting` (`kubernetes.oauth2`) and counted as `client`
    /// (`kubernetes`, `loki.<name>`). Reads `client_secret_file` once to fail early.
    pub fn new(
        setting: &str,
        client: &str,
        config: &OAuth2Config,
    ) -> Result<TokenSource, OAuth2Error> {
        let setting = setting.to_owned();
        let uri: http::Uri = config
            .token_url
            .parse()
            .ok()
            .filter(|u: &http::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| OAuth2Error::TokenUrl {
                setting: setting.clone(),
                url: redact_url(&config.token_url),
            })?;
        let route = Route::new(&uri, &config.proxy).map_err(|source| OAuth2Error::Proxy {
            setting: setting.clone(),
            source,
        })?;
        let proxy_auth = route.forward_auth().cloned().map(|mut value| {
            value.set_sensitive(true);
            value
        });
        let connector =
            super::tls::https_connector(&config.tls, route, true).map_err(|source| {
                OAuth2Error::Tls {
                    setting: setting.clone(),
                    source,
                }
            })?;
        if let Credential::File(_) = &config.client_secret {
            read_secret(&config.client_secret).map_err(|reason| OAuth2Error::SecretFile {
                setting: setting.clone(),
                reason,
            })?;
        }
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        telemetry::register_oauth2_client(client);
        Ok(TokenSource {
            inner: Arc::new(Inner {
                setting,
                client: client.to_owned(),
                client_id: config.client_id.clone(),
                secret: config.client_secret.clone(),
                uri,
                form: Bytes::from(token_form(&config.scopes, &config.endpoint_params)),
                http,
                proxy_auth,
                cache: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The `Authorization` value for a request now: the cached token, or one fetched now (by
    /// this request, or by the one already fetching), or the last error during a backoff.
    pub async fn header(&self) -> Result<HeaderValue, TokenError> {
        let inner = &*self.inner;
        let mut cache = inner.cache.lock().await;
        match cache.next(Instant::now()) {
            Next::Use(header) => return Ok(header),
            Next::Wait { error, retry_in } => {
                return Err(TokenError(
                    format!("{error}; next attempt in {:.1?}", retry_in).into(),
                ));
            }
            Next::Fetch => {}
        }
        match self.fetch().await {
            Ok((header, expires_in)) => {
                cache.fetched(Instant::now(), header.clone(), expires_in);
                tracing::debug!(client = %inner.client, ?expires_in, "OAuth2 token fetched");
                Ok(header)
            }
            Err(FetchError { key, reason }) => {
                telemetry::oauth2_token_error(&inner.client);
                let error = format!("{}.{key}: {reason}", inner.setting);
                let retry_in = cache.failed(Instant::now(), error.clone(), rand::random());
                tracing::warn!(
                    client = %inner.client,
                    %error,
                    "cannot get an OAuth2 token; next attempt in {retry_in:.1?}"
                );
                match cache.next(Instant::now()) {
                    Next::Use(header) => Ok(header),
                    _ => Err(TokenError(
                        format!("{error}; next attempt in {retry_in:.1?}").into(),
                    )),
                }
            }
        }
    }

    /// One token request: `(Authorization value, expires_in)`.
    async fn fetch(&self) -> Result<(HeaderValue, Option<Duration>), FetchError> {
        let inner = &*self.inner;
        let secret = read_secret(&inner.secret).map_err(|reason| FetchError {
            key: "client_secret_file",
            reason,
        })?;
        let url = redact_url(&inner.uri.to_string());
        let failed = |reason: String| FetchError {
            key: "token_url",
            reason: format!("POST {url}: {reason}"),
        };
        let pair = format!(
            "{}:{}",
            query_escape(&inner.client_id),
            query_escape(&secret)
        );
        let mut basic = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
        .map_err(|_| failed("the client credentials do not fit in a header".into()))?;
        basic.set_sensitive(true);
        let mut request = http::Request::post(inner.uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("kube-log-relay/", env!("CARGO_PKG_VERSION")),
            )
            .header(AUTHORIZATION, basic)
            .body(Full::new(inner.form.clone()))
            .map_err(|e| failed(e.to_string()))?;
        if let Some(value) = &inner.proxy_auth {
            request
                .headers_mut()
                .insert(PROXY_AUTHORIZATION, value.clone());
        }
        let exchange = async {
            let response = inner
                .http
                .request(request)
                .await
                .map_err(|e| crate::logging::causes(&e))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("HTTP {status}, reading the answer: {e}"))?
                .to_bytes();
            parse_answer(status, content_type.as_deref(), &body)
        };
        let answer = match tokio::time::timeout(FETCH_TIMEOUT, exchange).await {
            Ok(answer) => answer.map_err(failed)?,
            Err(_) => return Err(failed(format!("no answer within {FETCH_TIMEOUT:?}"))),
        };
        let mut header =
            HeaderValue::from_str(&format!("{} {}", answer.token_type, answer.access_token))
                .map_err(|_| failed("the access_token is not a valid header value".into()))?;
        header.set_sensitive(true);
        Ok((header, answer.expires_in))
    }
}

/// The client secret, inline or read from its file now (trimmed, like every credential file).
fn read_secret(secret: &Credential) -> Result<String, String> {
    match secret {
        Credential::Inline(secret) => Ok(secret.expose().to_owned()),
        Credential::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            Ok(secret.to_owned())
        }
    }
}

/// The form of every token request: `grant_type`, `scope` and the endpoint params, sorted by
/// name as Go's `url.Values.Encode` writes them. An endpoint param may override `grant_type`
/// (as in Go); validation refuses the others that would collide.
fn token_form(scopes: &[String], params: &BTreeMap<String, String>) -> String {
    let mut form = BTreeMap::from([("grant_type", "client_credentials".to_owned())]);
    if !scopes.is_empty() {
        form.insert("scope", scopes.join(" "));
    }
    for (name, value) in params {
        form.insert(name, value.clone());
    }
    form.iter()
        .map(|(name, value)| format!("{}={}", query_escape(name), query_escape(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Go's `url.QueryEscape`: unreserved characters stay, a space becomes `+`, the rest `%XX`.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The useful part of a token endpoint's answer.
#[derive(Debug, PartialEq)]
struct Answer {
    token_type: String,
    access_token: String,
    expires_in: Option<Duration>,
}

/// Reads a token answer: JSON (RFC 6749 §5.1), or a form body as some servers send (Go reads
/// both). A non-2xx status is an error quoting the endpoint's `error` and `error_description`
/// (§5.2), with a hint for the statuses that mean a wrong client.
fn parse_answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<Answer, String> {
    let is_form = content_type.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.starts_with("application/x-www-form-urlencoded") || t.starts_with("text/plain")
    });
    let fields: BTreeMap<String, serde_json::Value> = if is_form {
        parse_form(body)
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect()
    } else {
        serde_json::from_slice(body).unwrap_or_default()
    };
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if !(200..300).contains(&status) {
        let mut reason = format!("HTTP {status}");
        match (text("error"), text("error_description")) {
            (Some(error), Some(description)) => {
                reason.push_str(&format!(": {error}: {description}"))
            }
            (Some(error), None) => reason.push_str(&format!(": {error}")),
            _ => {
                let first = String::from_utf8_lossy(body);
                let first = first.lines().next().unwrap_or("").trim();
                if !first.is_empty() {
                    reason.push_str(&format!(
                        ": {}",
                        first.chars().take(200).collect::<String>()
                    ));
                }
            }
        }
        if matches!(status, 400 | 401) && text("error") != Some("invalid_scope") {
            reason.push_str(" (check client_id and client_secret)");
        }
        return Err(reason);
    }
    let Some(access_token) = text("access_token") else {
        return Err(format!(
            "HTTP {status} without an access_token (is token_url the token endpoint?)"
        ));
    };
    let expires_in = match fields.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|secs| secs.is_finite() && *secs > 0.0)
    .map(|secs| Duration::from_secs_f64(secs.min(1e9)));
    Ok(Answer {
        token_type: token_type(text("token_type")),
        access_token: access_token.to_owned(),
        expires_in,
    })
}

/// The scheme of the `Authorization` header, as Go's `Token.Type()` writes it.
fn token_type(given: Option<&str>) -> String {
    match given {
        None => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("mac") => "MAC".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("basic") => "Basic".to_owned(),
        Some(t) => t.to_owned(),
    }
}

/// `a=b&c=d+e` → pairs (form_urlencoded keeps an invalid escape as it is).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl<S> tower::Layer<S> for TokenSource {
    type Service = WithToken<S>;

    fn layer(&self, inner: S) -> WithToken<S> {
        WithToken {
            inner,
            source: self.clone(),
        }
    }
}

/// A service that sets `Authorization` from a [`TokenSource`] on every request; a request
/// without a token fails with the [`TokenError`] and never reaches the server.
#[derive(Clone)]
pub struct WithToken<S> {
    inner: S,
    source: TokenSource,
}

impl<S, B> tower::Service<http::Request<B>> for WithToken<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        Box::pin(async move {
            let header = source.header().await?;
            request.headers_mut().insert(AUTHORIZATION, header);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::sim::OAuth2Options;
    use crate::sim::oauth::TokenIssuer;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn refresh_margins_and_backoffs() {
        let refresh = [
            (S(3600), S(3590)),
            (S(100), S(90)),
            (S(60), S(54)),
            (S(5), S(4)),
            (S(2), S(1)),
            (S(1), Duration::from_millis(500)),
        ];
        for (expires_in, want) in refresh {
            assert_eq!(refresh_after(expires_in), want, "{expires_in:?}");
        }
        let waits = [
            (1, 0.5, Duration::from_millis(500)),
            (2, 0.5, S(1)),
            (3, 0.5, S(2)),
            (7, 0.5, S(30)),
            (u32::MAX, 0.5, S(30)),
            (1, 0.0, Duration::from_millis(400)),
            (1, 1.0, Duration::from_millis(600)),
            (8, 1.0, S(30)),
        ];
        for (failures, jitter, want) in waits {
            assert_eq!(backoff(failures, jitter), want, "{failures} {jitter}");
        }
    }

    #[test]
    fn the_cache_uses_refreshes_backs_off_and_keeps_a_still_valid_token() {
        let t0 = Instant::now();
        let one = HeaderValue::from_static("Bearer one");
        let two = HeaderValue::from_static("Bearer two");
        let mut cache = TokenCache::default();
        assert_eq!(cache.next(t0), Next::Fetch);
        // A first fetch fails: requests fail fast until the backoff ends.
        assert_eq!(
            cache.failed(t0, "e1".into(), 0.5),
            Duration::from_millis(500)
        );
        assert_eq!(
            cache.next(t0 + Duration::from_millis(100)),
            Next::Wait {
                error: "e1".into(),
                retry_in: Duration::from_millis(400)
            }
        );
        assert_eq!(cache.next(t0 + Duration::from_millis(500)), Next::Fetch);
        // The second failure waits twice as long.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(cache.failed(t1, "e2".into(), 0.5), S(1));
        assert!(
            matches!(cache.next(t1 + Duration::from_millis(999)), Next::Wait { error, .. } if error == "e2")
        );
        // Success: used until 90 % of its life, then fetched again.
        let t2 = t1 + S(1);
        cache.fetched(t2, one.clone(), Some(S(100)));
        assert_eq!(cache.next(t2 + S(89)), Next::Use(one.clone()));
        assert_eq!(cache.next(t2 + S(90)), Next::Fetch);
        // The refresh fails: the old token is still valid for 10 s and keeps being used, with
        // the backoff counted from the first failure again.
        assert_eq!(
            cache.failed(t2 + S(90), "e3".into(), 0.5),
            Duration::from_millis(500)
        );
        assert_eq!(cache.next(t2 + S(90)), Next::Use(one.clone()));
        assert_eq!(cache.next(t2 + Duration::from_millis(90_500)), Next::Fetch);
        // Past its expiry it is not.
        cache.failed(t2 + S(99), "e4".into(), 1.0);
        assert!(matches!(cache.next(t2 + S(100)), Next::Wait { error, .. } if error == "e4"));
        // A token without expires_in is used until replaced.
        cache.fetched(t2 + S(101), two.clone(), None);
        assert_eq!(cache.next(t2 + S(1_000_000)), Next::Use(two));
    }

    #[test]
    fn forms_and_answers() {
        let params = BTreeMap::from([("audience".to_owned(), "k8s api".to_owned())]);
        assert_eq!(
            token_form(&["a".into(), "b/c".into()], &params),
            "audience=k8s+api&grant_type=client_credentials&scope=a+b%2Fc"
        );
        assert_eq!(
            token_form(&[], &BTreeMap::new()),
            "grant_type=client_credentials"
        );
        assert_eq!(query_escape("id:é~"), "id%3A%C3%A9~");

        let ok = parse_answer(
            200,
            Some("application/json"),
            br#"{"access_token":"t","token_type":"bearer","expires_in":60}"#,
        );
        assert_eq!(
            ok,
            Ok(Answer {
                token_type: "Bearer".into(),
                access_token: "t".into(),
                expires_in: Some(S(60))
            })
        );
        let form = parse_answer(
            200,
            Some("application/x-www-form-urlencoded"),
            b"access_token=a%2Fb&expires_in=30&token_type=mac",
        )
        .unwrap();
        assert_eq!(
            (form.access_token.as_str(), form.token_type.as_str()),
            ("a/b", "MAC")
        );
        assert_eq!(form.expires_in, Some(S(30)));
        let no_expiry = parse_answer(200, None, br#"{"access_token":"t","expires_in":"0"}"#);
        assert_eq!(no_expiry.unwrap().expires_in, None);

        let errors = [
            (
                500,
                r#"{"error":"server_error","error_description":"down"}"#,
                "HTTP 500: server_error: down",
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                "HTTP 401: invalid_client (check client_id and client_secret)",
            ),
            (
                502,
                "<html>bad gateway\nmore",
                "HTTP 502: <html>bad gateway",
            ),
            (
                200,
                "{}",
                "HTTP 200 without an access_token (is token_url the token endpoint?)",
            ),
        ];
        for (status, body, want) in errors {
            assert_eq!(
                parse_answer(status, Some("application/json"), body.as_bytes()),
                Err(want.to_owned()),
                "{status} {body}"
            );
        }
    }

    /// The simulator's token endpoint on an ephemeral port.
    async fn issuer(expires_in: Duration) -> (Arc<TokenIssuer>, String) {
        let issuer = Arc::new(TokenIssuer::new(OAuth2Options {
            client_id: "relay id".into(),
            client_secret: "s:cret".into(),
            expires_in,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}{}",
            listener.local_addr().unwrap(),
            crate::sim::oauth::TOKEN_PATH
        );
        let router = issuer.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (issuer, url)
    }

    fn config(url: &str, secret: Credential) -> OAuth2Config {
        OAuth2Config {
            client_id: "relay id".into(),
            client_secret: secret,
            token_url: url.into(),
            scopes: vec!["logs".into(), "read".into()],
            endpoint_params: BTreeMap::from([("audience".into(), "loki".into())]),
            tls: Default::default(),
            proxy: Default::default(),
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch_sent_as_go_sends_it() {
        let (issuer, url) = issuer(S(3600)).await;
        let secret = Credential::Inline(Secret("s:cret".into()));
        let source = TokenSource::new("loki.a.oauth2", "loki.a", &config(&url, secret)).unwrap();
        let headers = futures::future::join_all((0..50).map(|_| source.header())).await;
        let first = headers[0].as_ref().unwrap().clone();
        assert!(first.to_str().unwrap().starts_with("Bearer sim-oauth2-"));
        assert!(first.is_sensitive());
        assert!(headers.iter().all(|h| h.as_ref().ok() == Some(&first)));
        assert_eq!(issuer.fetches(), 1);
        let request = &issuer.requests()[0];
        assert!(request.basic_auth, "client credentials by basic auth");
        assert_eq!(request.client_id.as_deref(), Some("relay id"));
        assert_eq!(request.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(request.scope.as_deref(), Some("logs read"));
        assert_eq!(
            request.params,
            BTreeMap::from([("audience".into(), "loki".into())])
        );
    }

    #[tokio::test]
    async fn a_failing_endpoint_is_backed_off_and_a_rotated_secret_file_is_read() {
        let (issuer, url) = issuer(S(3600)).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "wrong\n").unwrap();
        let source = TokenSource::new(
            "kubernetes.oauth2",
            "kubernetes",
            &config(&url, Credential::File(file.clone())),
        )
        .unwrap();
        let err = source.header().await.unwrap_err().to_string();
        assert!(
            err.starts_with("kubernetes.oauth2.token_url: POST http://")
                && err.contains("HTTP 401: invalid_client")
                && err.contains("next attempt in"),
            "{err}"
        );
        // During the backoff: the same error, no new request to the endpoint.
        let again = source.header().await.unwrap_err().to_string();
        assert!(again.contains("HTTP 401: invalid_client"), "{again}");
        assert_eq!(issuer.fetches(), 1);
        // The secret is rotated; after the backoff the next request gets a token.
        std::fs::write(&file, "s:cret").unwrap();
        let start = std::time::Instant::now();
        let header = loop {
            match source.header().await {
                Ok(header) => break header,
                Err(_) if start.elapsed() < S(5) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("no token after the backoff: {e}"),
            }
        };
        assert!(header.to_str().unwrap().starts_with("Bearer sim-oauth2-"));
        assert_eq!(issuer.fetches(), 2);

        let missing = config(&url, Credential::File(dir.path().join("missing")));
        let err = TokenSource::new("loki.b.oauth2", "loki.b", &missing)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("loki.b.oauth2.client_secret_file: cannot read"),
            "{err}"
        );
    }
}
