//! How the configuration is shown (SPEC §4, §8.3): every secret replaced by [`REDACTED`],
//! durations human (`"5s"`). The model's `Serialize` implementations use these helpers, so
//! `GET /api/v1/config` serves the model itself, in the shape of the TOML file, and an error
//! message that repeats a URL uses the same [`redact_url`].
//!
//! Secrets are: [`Secret`] values (tokens, passwords, credentials, inline PEM, header values)
//! and the user information of every URL. Paths to credential files are shown: they name where
//! a secret is, not the secret.

use std::time::Duration;

use serde::Serializer;

use super::model::Secret;

/// What every secret value is replaced with.
pub const REDACTED: &str = "<secret>";

/// `scheme://user:password@host/…` → `scheme://<secret>@host/…`; other text unchanged. Only the
/// authority is searched for `@`, so an `@` in a path or query stays.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}://{REDACTED}@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A duration as the configuration writes it: `"5s"`, `"1h 30m"`, `"500ms"`.
pub fn human(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl serde::Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// `serialize_with` for a [`Duration`].
pub(crate) fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&human(*value))
}

/// `serialize_with` for a URL that may carry a password.
pub(crate) fn url<S: Serializer>(value: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redact_url(value))
}

/// `serialize_with` for an optional URL that may carry a password.
pub(crate) fn optional_url<S: Serializer>(
    value: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(text) => url(text, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_userinfo_is_redacted() {
        let cases = [
            (
                "https://user:pw@loki.example:3100/loki/api/v1/push",
                "https://<secret>@loki.example:3100/loki/api/v1/push",
            ),
            ("http://token@proxy:3128", "http://<secret>@proxy:3128"),
            (
                "https://p%40ss:x@host/a@b?c=d@e",
                "https://<secret>@host/a@b?c=d@e",
            ),
            (
                "https://loki.example/push?x=a@b",
                "https://loki.example/push?x=a@b",
            ),
            ("ftp://u:p@host#x@y", "ftp://<secret>@host#x@y"),
            ("http://127.0.0.1:3100", "http://127.0.0.1:3100"),
            ("not a url", "not a url"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(human(Duration::from_millis(500)), "500ms");
        assert_eq!(human(Duration::from_secs(300)), "5m");
        assert_eq!(human(Duration::from_secs(5400)), "1h 30m");
    }

    use crate::config::model::*;
    use serde_json::json;
    use std::path::PathBuf;

    const SECRETS: [&str; 9] = [
        "tok-kube-1",
        "pw-basic-2",
        "hdr-kube-3",
        "pem-key-4",
        "pem-ca-5",
        "hdr-loki-6",
        "cred-loki-7",
        "userinfo-8",
        "proxyhdr-9",
    ];

    fn config_with_every_secret() -> Config {
        let text = r#"
[kubernetes]
api_server = "https://127.0.0.1:6443"

[loki.a]
url = "http://127.0.0.1:3100/loki/api/v1/push"
"#;
        let mut c = crate::config::parse(text, &|_| None).expect("valid");
        c.kubernetes.auth = Auth::BearerToken(Secret(SECRETS[0].into()));
        c.kubernetes
            .http_headers
            .insert("X-Key".into(), vec![Secret(SECRETS[2].into())]);
        c.kubernetes.tls.key = Some(PemSource::Inline(Secret(SECRETS[3].into())));
        c.kubernetes.tls.ca = Some(PemSource::Inline(Secret(SECRETS[4].into())));
        c.kubernetes.tls.cert = Some(PemSource::File(PathBuf::from("/etc/relay/cert.pem")));
        c.kubernetes.proxy.mode = ProxyMode::Url(format!("http://{}@proxy:3128", SECRETS[7]));
        c.kubernetes.proxy.connect_headers.insert(
            "Proxy-Authorization".into(),
            vec![Secret(SECRETS[8].into())],
        );
        let a = c.loki.get_mut("a").expect("loki.a");
        a.auth = Auth::Basic {
            username: "alice".into(),
            password: Credential::Inline(Secret(SECRETS[1].into())),
        };
        a.headers
            .insert("X-Api-Key".into(), Secret(SECRETS[5].into()));
        let mut b = a.clone();
        b.auth = Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Credential::Inline(Secret(SECRETS[6].into())),
        };
        b.url = format!("https://{}:x@loki/push", SECRETS[7]);
        c.loki.insert("b".into(), b);
        c
    }

    #[test]
    fn no_secret_survives_and_the_rest_is_shown() {
        let v = serde_json::to_value(config_with_every_secret()).expect("serializes");
        let text = v.to_string();
        for s in SECRETS {
            assert!(!text.contains(s), "{s} leaked: {text}");
        }
        let k = &v["kubernetes"];
        assert_eq!(k["bearer_token"], REDACTED);
        assert_eq!(k["http_headers"]["X-Key"], json!([REDACTED]));
        assert_eq!(k["tls_config"]["key_pem"], REDACTED);
        assert_eq!(k["tls_config"]["ca_pem"], REDACTED);
        assert_eq!(k["tls_config"]["cert_file"], "/etc/relay/cert.pem");
        assert_eq!(k["tls_config"]["min_version"], json!(null));
        assert_eq!(k["proxy_url"], "http://<secret>@proxy:3128");
        assert_eq!(
            k["proxy_connect_header"]["Proxy-Authorization"],
            json!([REDACTED])
        );
        assert_eq!(k["api_server"], "https://127.0.0.1:6443");
        assert_eq!(k["qps"], 50.0);
        let a = &v["loki"]["a"];
        assert_eq!(
            a["basic_auth"],
            json!({ "username": "alice", "password": REDACTED })
        );
        assert_eq!(a["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(a["url"], "http://127.0.0.1:3100/loki/api/v1/push");
        assert_eq!(a["batch_wait"], "1s");
        assert_eq!(a["max_backoff"], "5m");
        assert_eq!(a["on_full"], "block");
        assert_eq!(a["buffer_size"], 64 * 1024 * 1024);
        let b = &v["loki"]["b"];
        assert_eq!(
            b["authorization"],
            json!({ "type": "Bearer", "credentials": REDACTED })
        );
        assert_eq!(b["url"], "https://<secret>@loki/push");
        assert_eq!(v["tail"]["start_from"], "beginning");
        assert_eq!(v["positions"]["backend"], "memory");
        assert_eq!(v["relabel"], json!([]));
        assert_eq!(v["server"]["log_format"], "logfmt");
        assert_eq!(v["shutdown"]["timeout"], "30s");
    }

    #[test]
    fn relabel_rules_and_enumerations_are_shown_as_written() {
        let text = r#"
[[relabel]]
source_labels = ["__meta_kubernetes_pod_label_app"]
regex = "web-(.+)"
target_label = "app"
action = "hashmod"
modulus = 8

[tail]
start_from = "10m"

[positions]
backend = "file"
path = "/var/lib/p.json"

[loki.a]
url = "http://l/push"
external_labels = { cluster = "eu-1" }
[loki.a.tls_config]
min_version = "TLS13"

[stdout]
format = "json"
"#;
        let c = crate::config::parse(text, &|_| None).expect("valid");
        let v = serde_json::to_value(&c).expect("serializes");
        assert_eq!(v["relabel"][0]["regex"], "web-(.+)");
        assert_eq!(v["relabel"][0]["action"], "hashmod");
        assert_eq!(v["tail"]["start_from"], "10m");
        assert_eq!(
            v["positions"],
            json!({ "backend": "file", "path": "/var/lib/p.json", "sync_period": "5s", "gc_after": "1h" })
        );
        assert_eq!(
            v["loki"]["a"]["external_labels"],
            json!({ "cluster": "eu-1" })
        );
        assert_eq!(v["loki"]["a"]["tls_config"]["min_version"], "TLS13");
        assert_eq!(v["stdout"]["format"], "json");
    }
}
