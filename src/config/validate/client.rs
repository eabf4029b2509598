//! The client options `[kubernetes]` (SPEC §4.1) and every `[loki.<name>]` (SPEC §4.5) share:
//! authentication, TLS, proxy and HTTP headers, with the reference's names and exclusion rules.
//! Messages never repeat a secret value: header values, tokens and PEM text stay out of them.

use std::collections::BTreeMap;

use super::Checker;
use crate::config::error::{join_index, join_key};
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::redact::redact_url;

/// The authentication keys of one client table.
pub(super) struct AuthKeys<'a> {
    pub(super) bearer_token: Option<&'a String>,
    pub(super) bearer_token_file: Option<&'a String>,
    pub(super) authorization: Option<&'a RawAuthorization>,
    pub(super) basic_auth: Option<&'a RawBasicAuth>,
    pub(super) oauth2: Option<&'a RawOAuth2>,
}

/// The proxy keys of one client table.
pub(super) struct ProxyKeys<'a> {
    pub(super) proxy_url: Option<&'a String>,
    pub(super) no_proxy: Option<&'a String>,
    pub(super) proxy_from_environment: Option<bool>,
    pub(super) proxy_connect_header: Option<&'a BTreeMap<String, StringList>>,
}

pub(super) fn auth(c: &mut Checker, path: &str, keys: &AuthKeys<'_>) -> Auth {
    let found: Vec<&str> = [
        ("authorization", keys.authorization.is_some()),
        ("basic_auth", keys.basic_auth.is_some()),
        ("bearer_token", keys.bearer_token.is_some()),
        ("bearer_token_file", keys.bearer_token_file.is_some()),
        ("oauth2", keys.oauth2.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if found.len() > 1 {
        c.error(
            path,
            format!(
                "at most one of authorization, basic_auth, bearer_token, bearer_token_file, oauth2 may be set (found {})",
                found.join(", ")
            ),
        );
    }
    let mut auth = Auth::None;
    if let Some(token) = c.non_empty(&join_key(path, "bearer_token"), keys.bearer_token) {
        auth = Auth::BearerToken(Secret(token));
    }
    if let Some(file) = c.path(&join_key(path, "bearer_token_file"), keys.bearer_token_file) {
        auth = Auth::BearerTokenFile(file);
    }
    if let Some(raw) = keys.authorization {
        let at = join_key(path, "authorization");
        let kind = c
            .non_empty(&join_key(&at, "type"), raw.kind.as_ref())
            .unwrap_or_else(|| "Bearer".to_owned());
        if kind.eq_ignore_ascii_case("basic") {
            c.error(
                join_key(&at, "type"),
                r#""Basic" is not allowed here: use [basic_auth] instead"#,
            );
        }
        let credentials = credential(
            c,
            &at,
            ("credentials", raw.credentials.as_ref()),
            ("credentials_file", raw.credentials_file.as_ref()),
            true,
        );
        if let Some(credentials) = credentials {
            auth = Auth::Authorization { kind, credentials };
        }
    }
    if let Some(raw) = keys.basic_auth {
        let at = join_key(path, "basic_auth");
        let username = raw.username.clone().unwrap_or_default();
        if username.is_empty() {
            c.error(join_key(&at, "username"), "missing (required)");
        }
        let password = credential(
            c,
            &at,
            ("password", raw.password.as_ref()),
            ("password_file", raw.password_file.as_ref()),
            false,
        )
        .unwrap_or_else(|| Credential::Inline(Secret::default()));
        auth = Auth::Basic { username, password };
    }
    if let Some(raw) = keys.oauth2
        && let Some(oauth2) = oauth2(c, &join_key(path, "oauth2"), raw)
    {
        auth = Auth::OAuth2(Box::new(oauth2));
    }
    if found.len() > 1 {
        return Auth::None;
    }
    auth
}

/// Form parameters the token request sets itself; `grant_type` may be overridden, as Go's
/// `clientcredentials` allows for servers that want another grant name.
const RESERVED_PARAMS: &[(&str, &str)] = &[
    ("client_id", "set oauth2.client_id instead"),
    (
        "client_secret",
        "set oauth2.client_secret or client_secret_file instead",
    ),
];

/// `oauth2`: the client-credentials grant; `None` when a required key is missing or invalid.
fn oauth2(c: &mut Checker, path: &str, raw: &RawOAuth2) -> Option<OAuth2Config> {
    let at = |key: &str| join_key(path, key);
    let errors = c.errors.len();
    let client_id = match &raw.client_id {
        None => {
            c.error(at("client_id"), "missing (required)");
            None
        }
        Some(id) => c.non_empty(&at("client_id"), Some(id)),
    };
    let client_secret = credential(
        c,
        path,
        ("client_secret", raw.client_secret.as_ref()),
        ("client_secret_file", raw.client_secret_file.as_ref()),
        true,
    );
    let token_url = match &raw.token_url {
        None => {
            c.error(
                at("token_url"),
                "missing (required; the client-credentials endpoint, e.g. \"https://idp.example.com/oauth2/token\")",
            );
            None
        }
        Some(url) => c.url(&at("token_url"), Some(url)),
    };
    let mut scopes = Vec::new();
    for (index, scope) in raw.scopes.iter().flatten().enumerate() {
        let scope_path = join_index(&at("scopes"), index);
        if scope.trim().is_empty() {
            c.error(scope_path, "must not be empty");
        } else if scope
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.error(
                scope_path,
                format!("{scope:?} contains whitespace: scopes are sent space-separated, so list each scope as its own string"),
            );
        } else {
            scopes.push(scope.clone());
        }
    }
    let mut endpoint_params = BTreeMap::new();
    for (name, value) in raw.endpoint_params.iter().flatten() {
        let param_path = join_key(&at("endpoint_params"), name);
        if name.trim().is_empty() {
            c.error(param_path, "parameter names must not be empty");
        } else if let Some((_, instead)) = RESERVED_PARAMS.iter().find(|(n, _)| n == name) {
            c.error(
                param_path,
                format!("{name:?} is sent by the token request itself: {instead}"),
            );
        } else if name == "scope" && raw.scopes.as_ref().is_some_and(|s| !s.is_empty()) {
            c.error(
                param_path,
                "\"scope\" conflicts with oauth2.scopes (set the scopes in one place)",
            );
        } else {
            endpoint_params.insert(name.clone(), value.clone());
        }
    }
    let tls = tls(c, &at("tls_config"), raw.tls_config.as_ref());
    let proxy = proxy(
        c,
        path,
        &ProxyKeys {
            proxy_url: raw.proxy_url.as_ref(),
            no_proxy: raw.no_proxy.as_ref(),
            proxy_from_environment: raw.proxy_from_environment,
            proxy_connect_header: raw.proxy_connect_header.as_ref(),
        },
    );
    if c.errors.len() > errors {
        return None;
    }
    Some(OAuth2Config {
        client_id: client_id?,
        client_secret: client_secret?,
        token_url: token_url?,
        scopes,
        endpoint_params,
        tls,
        proxy,
    })
}

/// `credentials` / `credentials_file` and the like: exclusive, one required when `required`.
fn credential(
    c: &mut Checker,
    path: &str,
    (inline_key, inline): (&str, Option<&String>),
    (file_key, file): (&str, Option<&String>),
    required: bool,
) -> Option<Credential> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            c.error(
                path,
                format!("{inline_key} and {file_key} are mutually exclusive"),
            );
            None
        }
        (Some(inline), None) => c
            .non_empty(&join_key(path, inline_key), Some(inline))
            .map(|value| Credential::Inline(Secret(value))),
        (None, Some(file)) => c
            .path(&join_key(path, file_key), Some(file))
            .map(Credential::File),
        (None, None) => {
            if required {
                c.error(path, format!("one of {inline_key}, {file_key} is required"));
            }
            None
        }
    }
}

pub(super) fn tls(c: &mut Checker, path: &str, raw: Option<&RawTls>) -> TlsConfig {
    let Some(raw) = raw else {
        return TlsConfig::default();
    };
    let mut pem = |name: &str, inline: Option<&String>, file: Option<&String>| {
        let inline_key = format!("{name}_pem");
        let file_key = format!("{name}_file");
        match (inline, file) {
            (Some(_), Some(_)) => {
                c.error(
                    path,
                    format!("{inline_key} and {file_key} are mutually exclusive"),
                );
                None
            }
            (Some(inline), None) => {
                let at = join_key(path, &inline_key);
                let text = c.non_empty(&at, Some(inline))?;
                if !text.contains("-----BEGIN ") {
                    c.error(
                        at,
                        "is not PEM text (it should contain a \"-----BEGIN …\" line)",
                    );
                    return None;
                }
                Some(PemSource::Inline(Secret(text)))
            }
            (None, Some(file)) => c
                .path(&join_key(path, &file_key), Some(file))
                .map(PemSource::File),
            (None, None) => None,
        }
    };
    let ca = pem("ca", raw.ca_pem.as_ref(), raw.ca_file.as_ref());
    let cert = pem("cert", raw.cert_pem.as_ref(), raw.cert_file.as_ref());
    let key = pem("key", raw.key_pem.as_ref(), raw.key_file.as_ref());
    let cert_written = raw.cert_pem.is_some() || raw.cert_file.is_some();
    let key_written = raw.key_pem.is_some() || raw.key_file.is_some();
    if cert_written && !key_written {
        c.error(
            path,
            "cert_pem/cert_file is set without key_pem/key_file: a client certificate needs its key",
        );
    }
    if key_written && !cert_written {
        c.error(
            path,
            "key_pem/key_file is set without cert_pem/cert_file: a client key needs its certificate",
        );
    }
    let min_version = match raw.min_version.as_deref() {
        None => None,
        Some("TLS12") => Some(TlsVersion::Tls12),
        Some("TLS13") => Some(TlsVersion::Tls13),
        Some(old @ ("TLS10" | "TLS11")) => {
            c.error(
                join_key(path, "min_version"),
                format!(r#"{old:?} is not supported: rustls implements TLS 1.2 and 1.3 only (use "TLS12" or "TLS13")"#),
            );
            None
        }
        Some(other) => {
            c.error(
                join_key(path, "min_version"),
                format!(r#"{other:?} is not one of "TLS12", "TLS13""#),
            );
            None
        }
    };
    TlsConfig {
        ca,
        cert,
        key,
        insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        server_name: c.non_empty(&join_key(path, "server_name"), raw.server_name.as_ref()),
        min_version,
    }
}

pub(super) fn proxy(c: &mut Checker, path: &str, keys: &ProxyKeys<'_>) -> ProxyConfig {
    let from_environment = keys.proxy_from_environment.unwrap_or(false);
    let mut url = c.url(&join_key(path, "proxy_url"), keys.proxy_url);
    if let Some(https) = url.take_if(|url| url.to_ascii_lowercase().starts_with("https://")) {
        // The clients speak plain HTTP to the proxy (a TLS connection to the proxy carrying a
        // second TLS session inside its tunnel is not built): refused here, so that `check`
        // and the start agree.
        c.error(
            join_key(path, "proxy_url"),
            format!(
                "{:?} is an https:// proxy: only http:// proxies are supported (an https server is still reached with end-to-end TLS through the proxy's CONNECT tunnel)",
                redact_url(&https)
            ),
        );
    }
    if from_environment && (keys.proxy_url.is_some() || keys.no_proxy.is_some()) {
        c.error(
            path,
            "proxy_from_environment excludes proxy_url and no_proxy (HTTP_PROXY, HTTPS_PROXY and NO_PROXY are used instead)",
        );
    }
    if keys.no_proxy.is_some() && keys.proxy_url.is_none() && !from_environment {
        c.error(
            join_key(path, "no_proxy"),
            "needs proxy_url (no_proxy lists the hosts that bypass that proxy)",
        );
    }
    if keys.proxy_connect_header.is_some() && keys.proxy_url.is_none() && !from_environment {
        c.error(
            join_key(path, "proxy_connect_header"),
            "needs proxy_url or proxy_from_environment (these headers are sent to the proxy)",
        );
    }
    let no_proxy = keys
        .no_proxy
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|host| !host.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let connect_headers = header_lists(
        c,
        &join_key(path, "proxy_connect_header"),
        keys.proxy_connect_header,
    );
    let mode = match (from_environment, url) {
        (true, _) => ProxyMode::FromEnvironment,
        (false, Some(url)) => ProxyMode::Url(url),
        (false, None) => ProxyMode::Direct,
    };
    let no_proxy = if matches!(mode, ProxyMode::Url(_)) {
        no_proxy
    } else {
        Vec::new()
    };
    ProxyConfig {
        mode,
        no_proxy,
        connect_headers,
    }
}

/// Checks one header; values are never printed (they are often credentials).
pub(super) fn header(c: &mut Checker, path: &str, name: &str, values: &[String]) -> bool {
    let at = join_key(path, name);
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.error(at, format!("{name:?} is not a valid HTTP header name"));
        return false;
    }
    let mut ok = true;
    for (index, value) in values.iter().enumerate() {
        if http::HeaderValue::from_str(value).is_err() {
            let at = if values.len() > 1 {
                join_index(&at, index)
            } else {
                at.clone()
            };
            c.error(
                at,
                "is not a valid HTTP header value (no control characters or newlines)",
            );
            ok = false;
        }
    }
    ok
}

pub(super) fn header_lists(
    c: &mut Checker,
    path: &str,
    raw: Option<&BTreeMap<String, StringList>>,
) -> BTreeMap<String, Vec<Secret>> {
    let mut headers = BTreeMap::new();
    for (name, StringList(values)) in raw.into_iter().flatten() {
        if header(c, path, name, values) {
            headers.insert(name.clone(), values.iter().cloned().map(Secret).collect());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use crate::config::{Auth, Credential, ProxyMode, parse};

    fn errors_of(text: &str) -> Vec<String> {
        match parse(&format!("{text}\n[stdout]\n"), &|_| None) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_full_oauth2_table_is_accepted() {
        let config = parse(
            r#"
            [kubernetes.oauth2]
            client_id = "relay"
            client_secret_file = "/secret"
            token_url = "https://idp.example.com/token"
            scopes = ["logs.read", "pods"]
            endpoint_params = { audience = "k8s", grant_type = "urn:custom" }
            proxy_url = "http://proxy:3128"
            no_proxy = "idp.internal"
            proxy_connect_header = { "X-Proxy" = "a" }
            [kubernetes.oauth2.tls_config]
            ca_file = "/ca"
            server_name = "idp"
            [stdout]
            "#,
            &|_| None,
        )
        .expect("valid");
        let Auth::OAuth2(oauth2) = &config.kubernetes.auth else {
            panic!("oauth2 expected: {:?}", config.kubernetes.auth);
        };
        assert_eq!(oauth2.client_id, "relay");
        assert_eq!(oauth2.client_secret, Credential::File("/secret".into()));
        assert_eq!(oauth2.scopes, ["logs.read", "pods"]);
        assert_eq!(oauth2.endpoint_params["grant_type"], "urn:custom");
        assert_eq!(
            oauth2.proxy.mode,
            ProxyMode::Url("http://proxy:3128".into())
        );
        assert_eq!(oauth2.proxy.no_proxy, ["idp.internal"]);
        assert_eq!(oauth2.tls.server_name.as_deref(), Some("idp"));
        // The client's own proxy and TLS are untouched.
        assert_eq!(config.kubernetes.proxy.mode, ProxyMode::Direct);
        // Served redacted: the inline secret never, the file path yes.
        let shown = serde_json::to_value(&config.kubernetes).unwrap();
        assert_eq!(shown["oauth2"]["client_secret_file"], "/secret");
        assert_eq!(shown["oauth2"]["tls_config"]["ca_file"], "/ca");
        assert_eq!(shown["oauth2"]["proxy_url"], "http://proxy:3128");
    }

    #[test]
    fn bad_oauth2_tables_are_refused_with_their_paths() {
        let errors = errors_of(
            r#"
            [kubernetes]
            bearer_token = "t"
            [kubernetes.oauth2]
            client_secret = "s"
            client_secret_file = "/s"
            token_url = "ftp://idp/token"
            scopes = ["a b", ""]
            endpoint_params = { client_secret = "x", scope = "y" }
            no_proxy = "idp"
            [kubernetes.oauth2.tls_config]
            min_version = "TLS11"
            [loki.a]
            url = "http://loki"
            [loki.a.oauth2]
            client_id = ""
            proxy_url = "https://proxy:3128"
            "#,
        );
        assert_eq!(
            errors,
            [
                "kubernetes: at most one of authorization, basic_auth, bearer_token, bearer_token_file, oauth2 may be set (found bearer_token, oauth2)",
                "kubernetes.oauth2.client_id: missing (required)",
                "kubernetes.oauth2: client_secret and client_secret_file are mutually exclusive",
                r#"kubernetes.oauth2.token_url: "ftp://idp/token" is not an http:// or https:// URL"#,
                r#"kubernetes.oauth2.scopes[0]: "a b" contains whitespace: scopes are sent space-separated, so list each scope as its own string"#,
                "kubernetes.oauth2.scopes[1]: must not be empty",
                r#"kubernetes.oauth2.endpoint_params.client_secret: "client_secret" is sent by the token request itself: set oauth2.client_secret or client_secret_file instead"#,
                r#"kubernetes.oauth2.endpoint_params.scope: "scope" conflicts with oauth2.scopes (set the scopes in one place)"#,
                r#"kubernetes.oauth2.tls_config.min_version: "TLS11" is not supported: rustls implements TLS 1.2 and 1.3 only (use "TLS12" or "TLS13")"#,
                "kubernetes.oauth2.no_proxy: needs proxy_url (no_proxy lists the hosts that bypass that proxy)",
                "loki.a.oauth2.client_id: must not be empty (remove the key to leave it unset)",
                "loki.a.oauth2: one of client_secret, client_secret_file is required",
                r#"loki.a.oauth2.token_url: missing (required; the client-credentials endpoint, e.g. "https://idp.example.com/oauth2/token")"#,
                r#"loki.a.oauth2.proxy_url: "https://proxy:3128" is an https:// proxy: only http:// proxies are supported (an https server is still reached with end-to-end TLS through the proxy's CONNECT tunnel)"#,
            ]
        );
    }
}
