//! The simulator's authentication (SPEC §4.1, §8.5), when configured: like the API server's
//! union of authenticators, a request passes when any one accepts it — a client certificate
//! signed by the simulator's CA (checked at the TLS handshake), a known bearer token or one the
//! OAuth2 endpoint issued and that has not expired, basic credentials, or an
//! `Authorization: <Scheme> <credentials>` pair. Anything else is `401 Unauthorized` with the
//! API server's Status. Without [`AuthOptions`] every request passes, as today.
//!
//! The decision is [`decide`], a pure function; [`AuthState`] holds the options (replaceable at
//! run time, to rotate credentials) and counts rejections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use base64::Engine as _;

use super::oauth::{OAuth2Options, TokenCheck, TokenIssuer};

/// Which credentials the API accepts. An empty list accepts nothing of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthOptions {
    /// Client certificates signed by the simulator's CA (TLS only).
    pub client_certs: bool,
    /// `Authorization: Bearer <token>`.
    pub bearer_tokens: Vec<String>,
    /// `Authorization: Basic base64(user:password)`: `(user, password)` pairs.
    pub basic: Vec<(String, String)>,
    /// `Authorization: <scheme> <credentials>`: `(scheme, credentials)` pairs; the scheme is
    /// compared without regard to case, as HTTP does.
    pub custom: Vec<(String, String)>,
    /// Serve the OAuth2 token endpoint for this client and accept the tokens it issues.
    pub oauth2: Option<OAuth2Options>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No credentials at all.
    Missing,
    /// A bearer token that is unknown or expired.
    Token,
    /// Other credentials that match nothing.
    Credentials,
}

/// The `Authorization` header, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    Basic(String, String),
    Other {
        scheme: &'a str,
        credentials: &'a str,
    },
    Malformed,
}

/// Parses an `Authorization` header value.
pub fn parse_authorization(value: &[u8]) -> Credential<'_> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Credential::Malformed;
    };
    let (scheme, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Bearer(rest);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) => Credential::Basic(user.into(), password.into()),
            None => Credential::Malformed,
        };
    }
    Credential::Other {
        scheme,
        credentials: rest,
    }
}

/// Whether a request with this client certificate state and `Authorization` header passes.
pub fn decide(
    options: &AuthOptions,
    client_cert: bool,
    authorization: Option<&[u8]>,
    oauth_token: impl Fn(&str) -> TokenCheck,
) -> Result<(), Rejection> {
    if client_cert && options.client_certs {
        return Ok(());
    }
    let Some(value) = authorization else {
        return Err(Rejection::Missing);
    };
    match parse_authorization(value) {
        Credential::Bearer(token) => {
            let known = options.bearer_tokens.iter().any(|t| t == token)
                || (options.oauth2.is_some() && oauth_token(token) == TokenCheck::Valid);
            known.then_some(()).ok_or(Rejection::Token)
        }
        Credential::Basic(user, password) => options
            .basic
            .iter()
            .any(|(u, p)| *u == user && *p == password)
            .then_some(())
            .ok_or(Rejection::Credentials),
        Credential::Other {
            scheme,
            credentials,
        } => options
            .custom
            .iter()
            .any(|(s, c)| s.eq_ignore_ascii_case(scheme) && c == credentials)
            .then_some(())
            .ok_or(Rejection::Credentials),
        Credential::Malformed => Err(Rejection::Credentials),
    }
}

/// The live authentication configuration and its counters.
#[derive(Default)]
pub struct AuthState {
    options: RwLock<Option<AuthOptions>>,
    /// The OAuth2 endpoint's state (serves even when `oauth2` is not configured: it then knows
    /// no client).
    pub issuer: Arc<TokenIssuer>,
    rejections: AtomicU64,
    rejected_tokens: AtomicU64,
}

impl AuthState {
    /// The state for `options` (`None`: every request passes).
    pub fn new(options: Option<AuthOptions>) -> AuthState {
        let issuer = TokenIssuer::new(
            options
                .as_ref()
                .and_then(|o| o.oauth2.clone())
                .unwrap_or_else(|| OAuth2Options {
                    client_id: String::new(),
                    client_secret: String::new(),
                    ..Default::default()
                }),
        );
        AuthState {
            options: RwLock::new(options),
            issuer: Arc::new(issuer),
            ..Default::default()
        }
    }

    /// The options in force.
    pub fn options(&self) -> Option<AuthOptions> {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the options (rotated credentials); the OAuth2 client follows.
    pub fn set_options(&self, options: Option<AuthOptions>) {
        if let Some(oauth2) = options.as_ref().and_then(|o| o.oauth2.clone()) {
            self.issuer.set_options(oauth2);
        }
        *self.options.write().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// Checks one request, counting a refusal.
    pub fn check(&self, client_cert: bool, authorization: Option<&[u8]>) -> Result<(), Rejection> {
        let guard = self.options.read().unwrap_or_else(|e| e.into_inner());
        let Some(options) = guard.as_ref() else {
            return Ok(());
        };
        let now = Instant::now();
        let result = decide(options, client_cert, authorization, |t| {
            self.issuer.accepts(t, now)
        });
        if let Err(rejection) = result {
            self.rejections.fetch_add(1, Ordering::Relaxed);
            if rejection == Rejection::Token {
                self.rejected_tokens.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Requests refused with 401.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }

    /// Of those, requests with an unknown or expired bearer token.
    pub fn rejected_tokens(&self) -> u64 {
        self.rejected_tokens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> AuthOptions {
        AuthOptions {
            client_certs: true,
            bearer_tokens: vec!["t1".into()],
            basic: vec![("alice".into(), "pw".into())],
            custom: vec![("Splunk".into(), "abc".into())],
            oauth2: Some(OAuth2Options::default()),
        }
    }

    #[test]
    fn any_one_accepted_credential_passes() {
        let o = options();
        let oauth = |t: &str| match t {
            "issued" => TokenCheck::Valid,
            "old" => TokenCheck::Expired,
            _ => TokenCheck::Unknown,
        };
        // "alice:pw", "alice:no"
        let table: [(bool, Option<&str>, Result<(), Rejection>); 12] = [
            (true, None, Ok(())),
            (true, Some("Bearer wrong"), Ok(())),
            (false, None, Err(Rejection::Missing)),
            (false, Some("Bearer t1"), Ok(())),
            (false, Some("bearer t1"), Ok(())),
            (false, Some("Bearer t2"), Err(Rejection::Token)),
            (false, Some("Bearer issued"), Ok(())),
            (false, Some("Bearer old"), Err(Rejection::Token)),
            (false, Some("Basic YWxpY2U6cHc="), Ok(())),
            (
                false,
                Some("Basic YWxpY2U6bm8="),
                Err(Rejection::Credentials),
            ),
            (false, Some("splunk abc"), Ok(())),
            (false, Some("Splunk abd"), Err(Rejection::Credentials)),
        ];
        for (cert, header, want) in table {
            assert_eq!(
                decide(&o, cert, header.map(str::as_bytes), oauth),
                want,
                "{cert} {header:?}"
            );
        }
        let no_certs = AuthOptions {
            client_certs: false,
            ..o
        };
        assert_eq!(
            decide(&no_certs, true, None, oauth),
            Err(Rejection::Missing)
        );
        assert_eq!(
            decide(&no_certs, false, Some(b"Basic !!!"), oauth),
            Err(Rejection::Credentials)
        );
    }

    #[test]
    fn rejections_are_counted_and_no_options_pass_everything() {
        let open = AuthState::new(None);
        assert_eq!(open.check(false, None), Ok(()));
        let state = AuthState::new(Some(options()));
        assert!(state.check(false, Some(b"Bearer nope")).is_err());
        assert!(state.check(false, None).is_err());
        assert_eq!((state.rejections(), state.rejected_tokens()), (2, 1));
        state.set_options(Some(AuthOptions {
            bearer_tokens: vec!["nope".into()],
            ..Default::default()
        }));
        assert_eq!(state.check(false, Some(b"Bearer nope")), Ok(()));
    }
}
