//! The simulator's OAuth2 token endpoint (SPEC §4.1 `oauth2`, §8.5): the client-credentials
//! grant of RFC 6749 §4.4 as Go's `clientcredentials` package speaks it. The client
//! authenticates with HTTP basic auth or with `client_id`/`client_secret` form fields; the
//! answer is `{"access_token", "token_type": "Bearer", "expires_in"}`. Tokens it issued are
//! accepted by the API as bearer tokens until they expire ([`super::auth`]).
//!
//! Tests read what each request carried (scope, extra endpoint params) and script failures
//! (a status for the next N requests, or until cleared) to drive the relay's backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::json;
use std::sync::Arc;

/// Where the token endpoint is served.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// The OAuth2 client the endpoint knows, and the lifetime of the tokens it issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth2Options {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: String,
    /// `expires_in` of every token issued (whole seconds in the answer; the token stops being
    /// accepted after exactly this long).
    pub expires_in: Duration,
}

impl Default for OAuth2Options {
    fn default() -> Self {
        OAuth2Options {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            expires_in: Duration::from_secs(3600),
        }
    }
}

/// One request to the token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The client id, from basic auth or the form.
    pub client_id: Option<String>,
    /// Whether the client authenticated with basic auth (else with form fields).
    pub basic_auth: bool,
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `scope` (space-separated, as sent).
    pub scope: Option<String>,
    /// Every other form field (endpoint params), secrets excluded.
    pub params: BTreeMap<String, String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct IssuerState {
    options: OAuth2Options,
    tokens: HashMap<String, Instant>,
    requests: Vec<TokenRequest>,
    /// `(status, remaining)`: answer `status` to the next `remaining` requests (`None`: until
    /// cleared).
    failure: Option<(u16, Option<u64>)>,
}

/// The token endpoint's state: its client, the tokens it issued, what it was asked.
#[derive(Default)]
pub struct TokenIssuer {
    state: Mutex<IssuerState>,
    fetches: AtomicU64,
    issued: AtomicU64,
    serial: AtomicU64,
}

impl TokenIssuer {
    /// An issuer for `options`' client.
    pub fn new(options: OAuth2Options) -> TokenIssuer {
        let issuer = TokenIssuer::default();
        issuer.lock().options = options;
        issuer
    }

    /// Replaces the client and token lifetime (tokens already issued keep their expiry).
    pub fn set_options(&self, options: OAuth2Options) {
        self.lock().options = options;
    }

    /// Answers `status` (e.g. 500, 503) to every request until [`TokenIssuer::recover`].
    pub fn fail(&self, status: u16) {
        self.lock().failure = Some((status, None));
    }

    /// Answers `status` to the next `n` requests only.
    pub fn fail_next(&self, n: u64, status: u16) {
        self.lock().failure = Some((status, Some(n)));
    }

    /// Issues tokens again.
    pub fn recover(&self) {
        self.lock().failure = None;
    }

    /// Expires every token issued so far (the API refuses them from now on).
    pub fn expire_all(&self) {
        let now = Instant::now();
        for expiry in self.lock().tokens.values_mut() {
            *expiry = now;
        }
    }

    /// Requests to the token endpoint, answered or refused.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Tokens issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Every request, in arrival order.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.lock().requests.clone()
    }

    /// Whether `token` was issued here and is not expired at `now`.
    pub fn accepts(&self, token: &str, now: Instant) -> TokenCheck {
        match self.lock().tokens.get(token) {
            Some(expiry) if now < *expiry => TokenCheck::Valid,
            Some(_) => TokenCheck::Expired,
            None => TokenCheck::Unknown,
        }
    }

    /// The endpoint's route.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(TOKEN_PATH, post(token))
            .with_state(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, IssuerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides the answer to one form-encoded request: the token, or the OAuth2 error.
    fn answer(
        &self,
        basic: Option<(String, String)>,
        mut form: HashMap<String, String>,
    ) -> (StatusCode, serde_json::Value) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let form_secret = form.remove("client_secret");
        let form_id = form.remove("client_id");
        let basic_auth = basic.is_some();
        let (client_id, secret) = match basic {
            Some((id, secret)) => (Some(id), Some(secret)),
            None => (form_id, form_secret),
        };
        let mut request = TokenRequest {
            client_id: client_id.clone(),
            basic_auth,
            grant_type: form.remove("grant_type"),
            scope: form.remove("scope"),
            params: form.into_iter().collect(),
            status: 200,
        };
        let mut state = self.lock();
        let failure = state.failure;
        let (status, body) = if let Some((status, remaining)) = failure {
            state.failure = match remaining {
                Some(n) if n > 1 => Some((status, Some(n - 1))),
                Some(_) => None,
                None => Some((status, None)),
            };
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                status,
                json!({ "error": "server_error", "error_description": "scripted failure" }),
            )
        } else if client_id.as_deref() != Some(state.options.client_id.as_str())
            || secret.as_deref() != Some(state.options.client_secret.as_str())
        {
            (
                StatusCode::UNAUTHORIZED,
                json!({ "error": "invalid_client", "error_description": "unknown client or wrong secret" }),
            )
        } else if request.grant_type.as_deref() != Some("client_credentials") {
            (
                StatusCode::BAD_REQUEST,
                json!({ "error": "unsupported_grant_type" }),
            )
        } else {
            let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
            let token = format!("sim-oauth2-{serial}-{:016x}", rand::random::<u64>());
            let expires_in = state.options.expires_in;
            let expiry = Instant::now()
                .checked_add(expires_in)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(10 * 365 * 86400));
            state.tokens.insert(token.clone(), expiry);
            self.issued.fetch_add(1, Ordering::Relaxed);
            let mut body = json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": expires_in.as_secs(),
            });
            if let Some(scope) = &request.scope {
                body["scope"] = scope.clone().into();
            }
            (StatusCode::OK, body)
        };
        request.status = status.as_u16();
        state.requests.push(request);
        (status, body)
    }
}

/// What the issuer knows of a bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    Expired,
    Unknown,
}

/// `Authorization: Basic base64(id:secret)`; RFC 6749 §2.3.1 form-encodes both parts first.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// One form-encoded value (`+` is a space, `%41` is `A`), as Go's `url.QueryEscape` makes them.
fn form_decode(s: &str) -> String {
    parse_form(&format!("v={s}"))
        .remove("v")
        .unwrap_or_default()
}

/// Parses `application/x-www-form-urlencoded` text into a map (the last value of a repeated
/// key wins; an invalid escape is kept as it is).
fn parse_form(text: &str) -> HashMap<String, String> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn token(
    State(issuer): State<Arc<TokenIssuer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = std::str::from_utf8(&body).ok().map(parse_form);
    let Some(form) = form else {
        issuer.fetches.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "invalid_request", "error_description": "the body is not form-encoded" })),
        )
            .into_response();
    };
    let (status, body) = issuer.answer(basic_credentials(&headers), form);
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn issues_tokens_to_the_known_client_and_records_the_params() {
        let issuer = TokenIssuer::new(OAuth2Options {
            expires_in: Duration::from_secs(60),
            ..Default::default()
        });
        let (status, body) = issuer.answer(
            Some(("sim-client".into(), "sim-secret".into())),
            form(&[
                ("grant_type", "client_credentials"),
                ("scope", "a b"),
                ("audience", "k8s"),
            ]),
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 60);
        let token = body["access_token"].as_str().unwrap();
        assert_eq!(issuer.accepts(token, Instant::now()), TokenCheck::Valid);
        assert_eq!(
            issuer.accepts(token, Instant::now() + Duration::from_secs(61)),
            TokenCheck::Expired
        );
        assert_eq!(issuer.accepts("nope", Instant::now()), TokenCheck::Unknown);
        let r = &issuer.requests()[0];
        assert_eq!(r.scope.as_deref(), Some("a b"));
        assert_eq!(
            r.params,
            BTreeMap::from([("audience".into(), "k8s".into())])
        );
        assert!(r.basic_auth);

        // Form credentials work too; a wrong secret is invalid_client; a wrong grant 400.
        let (status, _) = issuer.answer(
            None,
            form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", "sim-secret"),
            ]),
        );
        assert_eq!(status, StatusCode::OK);
        assert!(!issuer.requests()[1].params.contains_key("client_secret"));
        let (status, body) = issuer.answer(
            Some(("sim-client".into(), "wrong".into())),
            form(&[("grant_type", "client_credentials")]),
        );
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("invalid_client"))
        );
        let (status, _) = issuer.answer(
            Some(("sim-client".into(), "sim-secret".into())),
            form(&[("grant_type", "password")]),
        );
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!((issuer.fetches(), issuer.issued()), (4, 2));
        issuer.expire_all();
        assert_eq!(issuer.accepts(token, Instant::now()), TokenCheck::Expired);
    }

    #[test]
    fn scripted_failures_last_n_requests_or_until_recovered() {
        let issuer = TokenIssuer::new(OAuth2Options::default());
        let ok = || {
            issuer
                .answer(
                    Some(("sim-client".into(), "sim-secret".into())),
                    form(&[("grant_type", "client_credentials")]),
                )
                .0
                .as_u16()
        };
        issuer.fail_next(2, 503);
        assert_eq!([ok(), ok(), ok()], [503, 503, 200]);
        issuer.fail(500);
        assert_eq!([ok(), ok()], [500, 500]);
        issuer.recover();
        assert_eq!(ok(), 200);
    }

    #[test]
    fn form_bodies_and_basic_credentials_are_decoded() {
        assert_eq!(
            parse_form("grant_type=client_credentials&scope=a+b%2Fc&x"),
            form(&[
                ("grant_type", "client_credentials"),
                ("scope", "a b/c"),
                ("x", "")
            ])
        );
        // An invalid escape is kept as it is (form_urlencoded decodes leniently).
        assert_eq!(parse_form("a=%zz"), form(&[("a", "%zz")]));
        let mut headers = HeaderMap::new();
        // "my%20id:s%3Acret" → ("my id", "s:cret")
        headers.insert(
            header::AUTHORIZATION,
            "Basic bXklMjBpZDpzJTNBY3JldA==".parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("my id".into(), "s:cret".into()))
        );
    }
}
