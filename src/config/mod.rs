//! Configuration: TOML model, `${VAR}` expansion, units, validation (SPEC §3, §4).
//!
//! Two phases (STYLE.md): the text is parsed into a TOML tree, its strings are expanded
//! ([`expand`]), each section is deserialized on its own into the raw structs of [`raw`] (so
//! errors in different sections are all reported), and [`validate`] turns what deserialized
//! into the typed [`Config`] of [`model`], collecting every remaining error with its TOML path.
//! The result is all-or-nothing: a [`Config`] or every [`ConfigError`] found.

pub mod error;
pub mod expand;
pub mod model;
pub mod raw;
pub mod redact;
#[cfg(test)]
mod reference;
pub mod units;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Parses and validates a configuration file's text, expanding `${VAR}` with `env`.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| ConfigErrors(vec![syntax_error(text, &error)]))?;
    let expansion_errors = expand::expand_table(&mut table, env);
    let (raw, mut errors) = raw::RawConfig::from_table(table);
    let validated = validate::validate(&raw);
    // A value that could not be expanded is still there as written; its own complaint is the
    // useful one, not what validation says about the unexpanded text.
    let semantic = validated
        .as_ref()
        .err()
        .into_iter()
        .flatten()
        .filter(|error| {
            !expansion_errors
                .iter()
                .any(|unexpanded| unexpanded.path == error.path)
        });
    errors.extend(semantic.cloned());
    let mut all = expansion_errors;
    all.extend(errors);
    match validated {
        Ok(config) if all.is_empty() => Ok(config),
        _ => Err(ConfigErrors(all)),
    }
}

/// Reads, parses and validates the file at `path`, expanding `${VAR}` from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text =
        std::fs::read_to_string(path).map_err(|error| ConfigErrors::unreadable(path, &error))?;
    parse(&text, &|name| std::env::var(name).ok())
}

/// A TOML syntax error, located by line and column (1-based).
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let location = match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rfind('\n')
                .map_or(before.chars().count(), |newline| {
                    before[newline + 1..].chars().count()
                })
                + 1;
            format!("line {line}, column {column}")
        }
        None => "configuration".to_owned(),
    };
    ConfigError::new(
        location,
        format!("TOML syntax error: {}", error.message().trim()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use raw::SECTIONS;
    use std::time::Duration;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn ok(text: &str) -> Config {
        match parse(text, &no_env) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors:\n{errors}"),
        }
    }

    /// Every error of `text`, as `path: message` lines.
    fn errors_of(text: &str) -> Vec<String> {
        match parse(text, &no_env) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// `text` with a valid receiver added, so only the errors under test remain.
    fn with_receiver(text: &str) -> String {
        format!("{text}\n[stdout]\n")
    }

    fn assert_has(errors: &[String], want: &str) {
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "no error starting with {want:?} in:\n{}",
            errors.join("\n")
        );
    }

    #[test]
    fn an_empty_file_needs_a_receiver() {
        assert_eq!(
            errors_of(""),
            ["loki: at least one [loki.<name>] or [stdout] receiver is required"]
        );
    }

    #[test]
    fn every_default_of_spec_section_4_applies() {
        let config = ok("[stdout]\n");
        let k = &config.kubernetes;
        assert_eq!(k.api_server, None);
        assert_eq!(k.kubeconfig_file, None);
        assert_eq!(k.auth, Auth::None);
        assert_eq!(k.tls, TlsConfig::default());
        assert_eq!(k.proxy, ProxyConfig::default());
        assert!(k.http_headers.is_empty());
        assert!(k.enable_http2);
        assert!(k.follow_redirects);
        assert_eq!(
            (k.qps, k.burst, k.max_streams_per_connection),
            (50.0, 100, 100)
        );

        let d = &config.discovery;
        assert!(d.enabled);
        assert!(d.namespaces.is_empty());
        assert_eq!(
            (d.label_selector.as_deref(), d.field_selector.as_deref()),
            (None, None)
        );
        assert_eq!(
            d.attach_metadata,
            AttachMetadata {
                node: false,
                namespace: false
            }
        );
        assert!(config.relabel.is_empty());
        assert!(config.targets.is_empty());

        let t = &config.tail;
        assert_eq!(t.start_from, StartFrom::Beginning);
        assert_eq!(t.max_line_size, 256 * 1024);
        assert_eq!(t.on_long_line, OnLongLine::Truncate);
        assert_eq!(t.min_backoff, Duration::from_secs(1));
        assert_eq!(t.max_backoff, Duration::from_secs(60));
        assert_eq!(t.max_stream_lifetime, Duration::from_secs(3600));
        assert_eq!(t.terminated_grace, Duration::from_secs(10));
        assert_eq!(t.chunk_lines, 512);

        let p = &config.positions;
        assert_eq!(p.backend, PositionsBackend::Memory);
        assert_eq!(p.sync_period, Duration::from_secs(5));
        assert_eq!(p.gc_after, Duration::from_secs(3600));

        assert!(config.loki.is_empty());
        assert_eq!(
            config.stdout,
            Some(StdoutConfig {
                format: LogFormat::Logfmt
            })
        );
        assert_eq!(config.server.listen, "0.0.0.0:12345");
        assert_eq!(config.server.log_level, "info");
        assert_eq!(config.server.log_format, LogFormat::Logfmt);
        assert_eq!(config.shutdown.timeout, Duration::from_secs(30));

        let c = &config.clustering;
        assert!(!c.enabled);
        assert_eq!(
            (c.identity.as_deref(), c.namespace.as_deref()),
            (None, None)
        );
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_interval, Duration::from_secs(5));
    }

    #[test]
    fn every_receiver_default_of_spec_section_4_5_applies() {
        let config = ok("[loki.primary]\nurl = \"https://loki.example/loki/api/v1/push\"\n");
        let l = &config.loki["primary"];
        assert_eq!(l.url, "https://loki.example/loki/api/v1/push");
        assert_eq!(l.tenant_id, None);
        assert!(l.headers.is_empty() && l.external_labels.is_empty());
        assert_eq!(l.batch_size, 1024 * 1024);
        assert_eq!(l.batch_wait, Duration::from_secs(1));
        assert_eq!(l.buffer_size, 64 * 1024 * 1024);
        assert_eq!(l.on_full, OnFull::Block);
        assert_eq!(l.min_backoff, Duration::from_millis(500));
        assert_eq!(l.max_backoff, Duration::from_secs(300));
        assert_eq!(l.max_retries, 10);
        assert!(l.retry_on_http_429);
        assert_eq!(l.remote_timeout, Duration::from_secs(10));
        assert_eq!(l.auth, Auth::None);
        assert_eq!(l.tls, TlsConfig::default());
        assert_eq!(l.proxy, ProxyConfig::default());
        assert!(l.enable_http2);
        assert_eq!(l.max_label_names, 15);
        assert_eq!(l.max_label_value_length, 2048);
        assert_eq!(l.max_line_size, 256 * 1024);
        assert!(!l.max_line_size_truncate);
        assert_eq!(config.stdout, None);
    }

    #[test]
    fn every_key_is_read() {
        let config = ok(r#"
            [kubernetes]
            api_server = "https://10.0.0.1:6443"
            bearer_token_file = "/var/run/token"
            http_headers = { "X-A" = ["1", "2"], "X-B" = "3" }
            enable_http2 = false
            follow_redirects = false
            qps = 7.5
            burst = 9
            max_streams_per_connection = 250
            proxy_url = "http://proxy:3128"
            no_proxy = "10.0.0.0/8, .cluster.local,"
            proxy_connect_header = { "Proxy-Authorization" = "Basic x" }
            [kubernetes.tls_config]
            ca_file = "/ca.crt"
            cert_file = "/tls.crt"
            key_pem = "-----BEGIN PRIVATE KEY-----\n..."
            insecure_skip_verify = true
            min_version = "TLS12"
            server_name = "kubernetes"
            [discovery]
            namespaces = ["default", "kube-system", "default"]
            label_selector = "app=web"
            field_selector = "spec.nodeName=n1"
            attach_metadata = { node = true }
            [[targets]]
            labels = { __pod_namespace__ = "ns", job = "x" }
            [tail]
            start_from = "10m"
            max_line_size = "1MiB"
            on_long_line = "drop"
            min_backoff = "200ms"
            max_backoff = "30s"
            max_stream_lifetime = "30m"
            terminated_grace = "0s"
            chunk_lines = 64
            [positions]
            backend = "file"
            path = "/var/lib/relay/positions.json"
            sync_period = "1s"
            gc_after = "24h"
            [loki.a]
            url = "http://a:3100/loki/api/v1/push"
            tenant_id = "t1"
            headers = { "X-Source" = "relay" }
            external_labels = { cluster = "eu-1" }
            batch_size = 2048
            batch_wait = "250ms"
            buffer_size = "1.5MiB"
            on_full = "drop"
            min_backoff = "1s"
            max_backoff = "10s"
            max_retries = 0
            retry_on_http_429 = false
            remote_timeout = "3s"
            enable_http2 = false
            max_label_names = 20
            max_label_value_length = 100
            max_line_size = 0
            max_line_size_truncate = true
            proxy_from_environment = true
            [loki.a.basic_auth]
            username = "u"
            password_file = "/p"
            [stdout]
            format = "json"
            [server]
            listen = "127.0.0.1:9000"
            log_level = "info,kube=debug"
            log_format = "json"
            [shutdown]
            timeout = "1m"
            [clustering]
            enabled = false
            identity = "relay-0"
            namespace = "logging"
            lease_duration = "30s"
            renew_interval = "10s"
        "#);
        let k = &config.kubernetes;
        assert_eq!(k.api_server.as_deref(), Some("https://10.0.0.1:6443"));
        assert_eq!(k.auth, Auth::BearerTokenFile("/var/run/token".into()));
        assert_eq!(
            k.http_headers["X-A"],
            [Secret("1".into()), Secret("2".into())]
        );
        assert_eq!(k.http_headers["X-B"], [Secret("3".into())]);
        assert!(!k.enable_http2 && !k.follow_redirects);
        assert_eq!(
            (k.qps, k.burst, k.max_streams_per_connection),
            (7.5, 9, 250)
        );
        assert_eq!(k.proxy.mode, ProxyMode::Url("http://proxy:3128".into()));
        assert_eq!(k.proxy.no_proxy, ["10.0.0.0/8", ".cluster.local"]);
        assert_eq!(
            k.proxy.connect_headers["Proxy-Authorization"],
            [Secret("Basic x".into())]
        );
        assert_eq!(
            k.tls,
            TlsConfig {
                ca: Some(PemSource::File("/ca.crt".into())),
                cert: Some(PemSource::File("/tls.crt".into())),
                key: Some(PemSource::Inline(Secret(
                    "-----BEGIN PRIVATE KEY-----\n...".into()
                ))),
                insecure_skip_verify: true,
                server_name: Some("kubernetes".into()),
                min_version: Some(TlsVersion::Tls12),
            }
        );
        let d = &config.discovery;
        assert_eq!(d.namespaces, ["default", "kube-system"]);
        assert_eq!(d.label_selector.as_deref(), Some("app=web"));
        assert_eq!(d.field_selector.as_deref(), Some("spec.nodeName=n1"));
        assert_eq!(
            d.attach_metadata,
            AttachMetadata {
                node: true,
                namespace: false
            }
        );
        assert_eq!(config.targets[0].labels["job"], "x");
        assert_eq!(
            config.tail,
            TailConfig {
                start_from: StartFrom::Ago(Duration::from_secs(600)),
                max_line_size: 1 << 20,
                on_long_line: OnLongLine::Drop,
                min_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(30),
                max_stream_lifetime: Duration::from_secs(1800),
                terminated_grace: Duration::ZERO,
                chunk_lines: 64,
            }
        );
        assert_eq!(
            config.positions.backend,
            PositionsBackend::File("/var/lib/relay/positions.json".into())
        );
        assert_eq!(config.positions.sync_period, Duration::from_secs(1));
        assert_eq!(config.positions.gc_after, Duration::from_secs(86400));
        let l = &config.loki["a"];
        assert_eq!(l.tenant_id.as_deref(), Some("t1"));
        assert_eq!(l.headers["X-Source"], Secret("relay".into()));
        assert_eq!(
            l.external_labels,
            [("cluster".to_owned(), "eu-1".to_owned())]
        );
        assert_eq!((l.batch_size, l.buffer_size), (2048, 3 << 19));
        assert_eq!(l.batch_wait, Duration::from_millis(250));
        assert_eq!(l.on_full, OnFull::Drop);
        assert_eq!(
            (l.min_backoff, l.max_backoff),
            (Duration::from_secs(1), Duration::from_secs(10))
        );
        assert_eq!((l.max_retries, l.retry_on_http_429), (0, false));
        assert_eq!(l.remote_timeout, Duration::from_secs(3));
        assert!(!l.enable_http2);
        assert_eq!((l.max_label_names, l.max_label_value_length), (20, 100));
        assert_eq!((l.max_line_size, l.max_line_size_truncate), (0, true));
        assert_eq!(l.proxy.mode, ProxyMode::FromEnvironment);
        assert_eq!(
            l.auth,
            Auth::Basic {
                username: "u".into(),
                password: Credential::File("/p".into())
            }
        );
        assert_eq!(
            config.stdout,
            Some(StdoutConfig {
                format: LogFormat::Json
            })
        );
        assert_eq!(config.server.listen, "127.0.0.1:9000");
        assert_eq!(config.server.log_level, "info,kube=debug");
        assert_eq!(config.server.log_format, LogFormat::Json);
        assert_eq!(config.shutdown.timeout, Duration::from_secs(60));
        assert_eq!(
            config.clustering,
            ClusteringConfig {
                enabled: false,
                identity: Some("relay-0".into()),
                namespace: Some("logging".into()),
                lease_duration: Duration::from_secs(30),
                renew_interval: Duration::from_secs(10),
            }
        );
    }

    #[test]
    fn unknown_key_names_its_path() {
        let errors = errors_of(&with_receiver("[tail]\nchunk_line = 5\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_has(
            &errors,
            "tail.chunk_line: unknown field `chunk_line`, expected one of",
        );
    }

    #[test]
    fn wrong_type_names_its_path() {
        let errors = errors_of(&with_receiver("[kubernetes]\nburst = \"many\"\n"));
        assert_eq!(
            errors,
            [r#"kubernetes.burst: invalid type: string "many", expected u32"#]
        );
    }

    #[test]
    fn missing_url() {
        assert_eq!(
            errors_of("[loki.primary]\nbatch_wait = \"2s\"\n"),
            ["loki.primary.url: missing (required)"]
        );
    }

    #[test]
    fn urls_in_errors_do_not_leak_passwords() {
        let errors = errors_of("[loki.a]\nurl = \"ftp://u:hunter2@loki/push\"\n");
        assert_eq!(
            errors,
            [r#"loki.a.url: "ftp://<secret>@loki/push" is not an http:// or https:// URL"#]
        );
        let config = ok("[loki.a]\nurl = \"https://u:p@loki/push\"\n");
        assert_eq!(config.loki["a"].url, "https://u:p@loki/push");
    }

    #[test]
    fn url_must_be_http() {
        let errors = errors_of("[loki.a]\nurl = \"ftp://x/push\"\n[loki.b]\nurl = \"loki:3100\"\n");
        assert_eq!(
            errors,
            [
                r#"loki.a.url: "ftp://x/push" is not an http:// or https:// URL"#,
                r#"loki.b.url: "loki:3100" is not an http:// or https:// URL"#
            ]
        );
    }

    #[test]
    fn two_auth_methods() {
        let errors = errors_of(&with_receiver(
            "[kubernetes]\nbearer_token = \"t\"\n[kubernetes.basic_auth]\nusername = \"u\"\npassword = \"p\"\n",
        ));
        assert_eq!(
            errors,
            [
                "kubernetes: at most one of authorization, basic_auth, bearer_token, bearer_token_file, oauth2 may be set (found basic_auth, bearer_token)"
            ]
        );
    }

    #[test]
    fn auth_rules() {
        let errors = errors_of(&with_receiver(
            r#"
            [kubernetes.authorization]
            type = "Basic"
            [loki.a]
            url = "http://a"
            [loki.a.authorization]
            credentials = "c"
            credentials_file = "/c"
            [loki.b]
            url = "http://b"
            [loki.b.basic_auth]
            password = "p"
            [loki.c]
            url = "http://c"
            [loki.c.oauth2]
            client_id = "id"
            token_url = "https://idp/token"
            "#,
        ));
        assert_eq!(
            errors,
            [
                r#"kubernetes.authorization.type: "Basic" is not allowed here: use [basic_auth] instead"#,
                "kubernetes.authorization: one of credentials, credentials_file is required",
                "loki.a.authorization: credentials and credentials_file are mutually exclusive",
                "loki.b.basic_auth.username: missing (required)",
                "loki.c.oauth2: one of client_secret, client_secret_file is required",
            ]
        );
        let config = ok("[stdout]\n[kubernetes.authorization]\ncredentials_file = \"/t\"\n");
        assert_eq!(
            config.kubernetes.auth,
            Auth::Authorization {
                kind: "Bearer".into(),
                credentials: Credential::File("/t".into())
            }
        );
    }

    #[test]
    fn tls_rules() {
        let errors = errors_of(&with_receiver(
            r#"
            [kubernetes.tls_config]
            ca_pem = "-----BEGIN CERTIFICATE-----"
            ca_file = "/ca"
            cert_file = "/crt"
            min_version = "TLS10"
            [loki.a]
            url = "https://a"
            [loki.a.tls_config]
            key_file = "/key"
            cert_pem = "not pem"
            min_version = "tls1.3"
            "#,
        ));
        assert_eq!(
            errors,
            [
                "kubernetes.tls_config: ca_pem and ca_file are mutually exclusive",
                "kubernetes.tls_config: cert_pem/cert_file is set without key_pem/key_file: a client certificate needs its key",
                r#"kubernetes.tls_config.min_version: "TLS10" is not supported: rustls implements TLS 1.2 and 1.3 only (use "TLS12" or "TLS13")"#,
                r#"loki.a.tls_config.cert_pem: is not PEM text (it should contain a "-----BEGIN …" line)"#,
                r#"loki.a.tls_config.min_version: "tls1.3" is not one of "TLS12", "TLS13""#,
            ]
        );
        let errors = errors_of(&with_receiver(
            "[kubernetes.tls_config]\nkey_file = \"/k\"\n",
        ));
        assert_eq!(
            errors,
            [
                "kubernetes.tls_config: key_pem/key_file is set without cert_pem/cert_file: a client key needs its certificate"
            ]
        );
    }

    #[test]
    fn proxy_rules() {
        let errors = errors_of(&with_receiver(
            r#"
            [kubernetes]
            no_proxy = "localhost"
            proxy_connect_header = { "X-P" = "1" }
            [loki.a]
            url = "http://a"
            proxy_from_environment = true
            proxy_url = "http://p:3128"
            [loki.b]
            url = "http://b"
            proxy_url = "socks5://p:1080"
            "#,
        ));
        assert_eq!(
            errors,
            [
                "kubernetes.no_proxy: needs proxy_url (no_proxy lists the hosts that bypass that proxy)",
                "kubernetes.proxy_connect_header: needs proxy_url or proxy_from_environment (these headers are sent to the proxy)",
                "loki.a: proxy_from_environment excludes proxy_url and no_proxy (HTTP_PROXY, HTTPS_PROXY and NO_PROXY are used instead)",
                r#"loki.b.proxy_url: "socks5://p:1080" is not an http:// or https:// URL"#,
            ]
        );
    }

    #[test]
    fn check_refuses_what_the_start_cannot_do() {
        let errors = errors_of(&with_receiver(
            r#"
            [kubernetes]
            proxy_url = "https://user:pw@proxy:3128"
            [kubernetes.tls_config]
            min_version = "TLS13"
            [loki.a]
            url = "https://loki/push"
            proxy_url = "HTTPS://proxy:3128"
            "#,
        ));
        assert_eq!(
            errors,
            [
                r#"kubernetes.proxy_url: "https://<secret>@proxy:3128" is an https:// proxy: only http:// proxies are supported (an https server is still reached with end-to-end TLS through the proxy's CONNECT tunnel)"#,
                r#"loki.a.proxy_url: "HTTPS://proxy:3128" is an https:// proxy: only http:// proxies are supported (an https server is still reached with end-to-end TLS through the proxy's CONNECT tunnel)"#,
            ]
        );
        // TLS 1.3 only works for both clients.
        let config = ok(r#"
            [kubernetes.tls_config]
            min_version = "TLS13"
            [loki.a]
            url = "https://loki/push"
            proxy_url = "http://proxy:3128"
            [loki.a.tls_config]
            min_version = "TLS13"
            "#);
        assert_eq!(config.loki["a"].tls.min_version, Some(TlsVersion::Tls13));
        assert_eq!(config.kubernetes.tls.min_version, Some(TlsVersion::Tls13));
    }

    #[test]
    fn every_duration_and_size_has_an_upper_bound() {
        let errors = errors_of(&with_receiver(
            r#"
            [kubernetes]
            qps = 1e-300
            [tail]
            start_from = "31d"
            max_line_size = "65MiB"
            min_backoff = "25h"
            max_backoff = "1000000000y"
            max_stream_lifetime = "99999999999999999999999s"
            terminated_grace = "2h"
            [positions]
            backend = "file"
            path = "/p"
            sync_period = "61m"
            gc_after = "31d"
            [loki.a]
            url = "http://a"
            batch_size = 67108865
            batch_wait = "2h"
            buffer_size = "17GiB"
            min_backoff = "2d"
            max_backoff = "2d"
            remote_timeout = "2h"
            max_line_size = "99999999999TiB"
            [shutdown]
            timeout = "2h"
            [clustering]
            lease_duration = "2h"
            renew_interval = "2h"
            "#,
        ));
        assert_eq!(
            errors,
            [
                "kubernetes.qps: 1e-300 is out of range (requests per second, from 0.001 to 1000000)",
                r#"tail.start_from: "31d" is too large (at most "30d")"#,
                r#"tail.max_line_size: "65MiB" is too large (at most "64MiB")"#,
                r#"tail.min_backoff: "25h" is too large (at most "24h")"#,
                r#"tail.max_backoff: "1000000000y" is too large (at most "24h")"#,
                r#"tail.max_stream_lifetime: "99999999999999999999999s" is too large (at most "24h")"#,
                r#"tail.terminated_grace: "2h" is too large (at most "1h")"#,
                r#"positions.sync_period: "61m" is too large (at most "1h")"#,
                r#"positions.gc_after: "31d" is too large (at most "30d")"#,
                r#"loki.a.batch_size: 67108865 is too large (at most "64MiB")"#,
                r#"loki.a.buffer_size: "17GiB" is too large (at most "16GiB")"#,
                r#"loki.a.min_backoff: "2d" is too large (at most "24h")"#,
                r#"loki.a.max_backoff: "2d" is too large (at most "24h")"#,
                r#"loki.a.batch_wait: "2h" is too large (at most "1h")"#,
                r#"loki.a.remote_timeout: "2h" is too large (at most "1h")"#,
                r#"loki.a.max_line_size: "99999999999TiB" is too large (at most "64MiB")"#,
                r#"shutdown.timeout: "2h" is too large (at most "1h")"#,
                r#"clustering.lease_duration: "2h" is too large (at most "1h")"#,
                r#"clustering.renew_interval: "2h" is too large (at most "1h")"#,
            ]
        );
        // The bounds themselves are accepted.
        ok(&with_receiver(
            r#"
            [tail]
            start_from = "30d"
            max_line_size = "64MiB"
            max_backoff = "24h"
            max_stream_lifetime = "24h"
            terminated_grace = "1h"
            [loki.a]
            url = "http://a"
            batch_size = "64MiB"
            buffer_size = "16GiB"
            max_backoff = "24h"
            batch_wait = "1h"
            "#,
        ));
    }

    #[test]
    fn bad_regex() {
        let errors = errors_of(&with_receiver(
            "[[relabel]]\naction = \"keep\"\n[[relabel]]\naction = \"drop\"\n[[relabel]]\nsource_labels = [\"a\"]\nregex = \"(\"\naction = \"keep\"\n",
        ));
        assert_eq!(
            errors,
            [r#"relabel[2].regex: "(" is not a valid regular expression: unclosed group"#]
        );
    }

    #[test]
    fn relabel_rules_follow_prometheus() {
        let cases: &[(&str, &str)] = &[
            (
                "action = \"replace\"",
                "relabel[0].target_label: missing (required by action \"replace\")",
            ),
            (
                "action = \"hashmod\"\ntarget_label = \"shard\"",
                "relabel[0].modulus: must be > 0 for action \"hashmod\"",
            ),
            (
                "action = \"hashmod\"\ntarget_label = \"1x\"\nmodulus = 2",
                "relabel[0].target_label: \"1x\" is not a valid label name",
            ),
            (
                "action = \"labeldrop\"\nsource_labels = [\"a\"]",
                "relabel[0].source_labels: is not used by action \"labeldrop\" (remove it)",
            ),
            (
                "action = \"labelmap\"\nsource_labels = [\"a\"]",
                "relabel[0].source_labels: is not used by action \"labelmap\" (remove it)",
            ),
            (
                "action = \"labelmap\"\nreplacement = \"a-b\"",
                "relabel[0].replacement: \"a-b\" is not a valid label name or $1-style template",
            ),
            (
                "action = \"keepequal\"\ntarget_label = \"a\"\nregex = \"x\"",
                "relabel[0].regex: is not used by action \"keepequal\" (remove it)",
            ),
            (
                "action = \"Keep\"",
                "relabel[0].action: \"Keep\" is not one of replace, keep, drop,",
            ),
            (
                "source_labels = [\"a.b\"]\ntarget_label = \"c\"",
                "relabel[0].source_labels[0]: \"a.b\" is not a valid label name",
            ),
            (
                "target_label = \"a-b\"",
                "relabel[0].target_label: \"a-b\" is not a valid label name or $1-style template",
            ),
            (
                "action = \"lowercase\"\ntarget_label = \"x\"\nreplacement = \"y\"",
                "relabel[0].replacement: is not used by action \"lowercase\"",
            ),
        ];
        for (rule, want) in cases {
            let errors = errors_of(&with_receiver(&format!("[[relabel]]\n{rule}\n")));
            assert_eq!(errors.len(), 1, "{rule}: {errors:?}");
            assert_has(&errors, want);
        }
    }

    #[test]
    fn relabel_defaults_and_anchoring() {
        let config = ok(&with_receiver(
            "[[relabel]]\ntarget_label = \"ns_${1}\"\n[[relabel]]\naction = \"labeldrop\"\nregex = \"a|b\"\n",
        ));
        let rule = &config.relabel[0];
        assert_eq!(rule.action, RelabelAction::Replace);
        assert_eq!(rule.separator, ";");
        assert_eq!(rule.replacement, "$1");
        assert_eq!(rule.target_label, "ns_${1}");
        assert_eq!(rule.regex.as_str(), "^(?s:(.*))$");
        assert!(rule.source_labels.is_empty());
        let drop = &config.relabel[1];
        assert!(drop.regex.is_match("a") && drop.regex.is_match("b"));
        assert!(!drop.regex.is_match("ab") && !drop.regex.is_match("xa"));
    }

    #[test]
    fn bad_duration() {
        let errors = errors_of("[loki.primary]\nurl = \"http://l\"\nbatch_wait = \"5 parsecs\"\n");
        assert_eq!(
            errors,
            [
                r#"loki.primary.batch_wait: "5 parsecs" is not a duration (examples: "500ms", "5s", "1m")"#
            ]
        );
    }

    #[test]
    fn bad_size() {
        let errors = errors_of(&with_receiver("[tail]\nmax_line_size = \"big\"\n"));
        assert_eq!(
            errors,
            [
                r#"tail.max_line_size: "big" is not a size (examples: "256KiB", "1MiB", "64MB", 1024)"#
            ]
        );
    }

    #[test]
    fn numeric_rules() {
        let errors = errors_of(
            r#"
            [kubernetes]
            qps = 0
            burst = 0
            [tail]
            chunk_lines = 0
            min_backoff = "2m"
            max_backoff = "1m"
            start_from = "yesterday"
            [loki.primary]
            url = "http://l"
            batch_size = 0
            buffer_size = "1KiB"
            batch_wait = "0s"
            max_label_names = 1
            external_labels = { a = "1", b = "2" }
            "#,
        );
        assert_eq!(
            errors,
            [
                "kubernetes.qps: 0.0 is out of range (requests per second, from 0.001 to 1000000)",
                "kubernetes.burst: must be > 0",
                r#"tail.start_from: "yesterday" is not "beginning", "end" or a duration (examples: "beginning", "end", "10m")"#,
                "tail.min_backoff: must not exceed tail.max_backoff",
                "tail.chunk_lines: must be > 0",
                "loki.primary.external_labels: has more labels than max_label_names (1)",
                "loki.primary.batch_size: must be > 0",
                "loki.primary.buffer_size: must be at least batch_size (1MiB)",
                "loki.primary.batch_wait: must be > 0",
            ]
        );
    }

    #[test]
    fn label_names_are_checked() {
        let errors = errors_of(
            r#"
            [[targets]]
            labels = { "app.kubernetes.io/name" = "x", ok = "y" }
            [[targets]]
            [loki.a]
            url = "http://a"
            external_labels = { "1st" = "x", __private = "y", empty = "" }
            tenant_id = "t"
            headers = { "X-Scope-OrgID" = "u", "bad header" = "v" }
            "#,
        );
        assert_eq!(
            errors,
            [
                r#"targets[0].labels."app.kubernetes.io/name": "app.kubernetes.io/name" is not a valid label name (label names match [a-zA-Z_][a-zA-Z0-9_]*)"#,
                r#"targets[1].labels: missing (required: the target's labels, e.g. labels = { __pod_namespace__ = "…", __pod_name__ = "…", __pod_container_name__ = "…", __pod_uid__ = "…" })"#,
                r#"loki.a.headers.X-Scope-OrgID: conflicts with tenant_id (set the tenant in one place)"#,
                r#"loki.a.headers."bad header": "bad header" is not a valid HTTP header name"#,
                r#"loki.a.external_labels.1st: "1st" is not a valid label name (label names match [a-zA-Z_][a-zA-Z0-9_]*)"#,
                r#"loki.a.external_labels.__private: labels starting with "__" are dropped before sending: choose another name"#,
                r#"loki.a.external_labels.empty: must not be empty (Loki ignores empty labels)"#,
            ]
        );
    }

    #[test]
    fn positions_and_clustering_rules() {
        let errors = errors_of(&with_receiver(
            "[positions]\nbackend = \"file\"\n[clustering]\nenabled = true\nrenew_interval = \"20s\"\nnamespace = \"Logs\"\n",
        ));
        assert_eq!(
            errors,
            [
                r#"positions.path: missing (required with backend = "file")"#,
                r#"clustering.namespace: "Logs" is not a namespace name (lowercase letters, digits and '-', at most 63)"#,
                "clustering.renew_interval: must be shorter than lease_duration (a lease renewed after it expired drops the replica)",
                r#"clustering.enabled: clustering needs positions.backend = "kubernetes" (replicas must share positions to hand targets over)"#,
            ]
        );
        let errors = errors_of(&with_receiver(
            "[positions]\nbackend = \"kubernetes\"\npath = \"/p\"\n[discovery]\nenabled = false\n",
        ));
        assert_eq!(
            errors,
            [
                "discovery.enabled: discovery is disabled and there is no [[targets]] entry: nothing would be tailed",
                r#"positions.path: is only used with backend = "file" (the kubernetes backend keeps positions in ConfigMaps)"#,
            ]
        );
        let config = ok(&with_receiver(
            "[positions]\nbackend = \"kubernetes\"\n[clustering]\nenabled = true\n",
        ));
        assert_eq!(config.positions.backend, PositionsBackend::Kubernetes);
        assert!(config.clustering.enabled);
        let config = ok(&with_receiver(
            "[positions]\nbackend = \"file\"\npath = \"/var/lib/p.json\"\n",
        ));
        assert_eq!(
            config.positions.backend,
            PositionsBackend::File("/var/lib/p.json".into())
        );
    }

    #[test]
    fn server_rules() {
        let errors = errors_of(&with_receiver(
            "[server]\nlisten = \"12345\"\nlog_level = \"verbose\"\nlog_format = \"text\"\n[shutdown]\ntimeout = \"0s\"\n",
        ));
        assert_eq!(
            errors,
            [
                r#"server.listen: "12345" is not an address to listen on (examples: "0.0.0.0:12345", "127.0.0.1:9000", "[::]:12345")"#,
                r#"server.log_level: "verbose" is not a log level (one of "trace", "debug", "info", "warn", "error", "off", or directives such as "info,kube=debug")"#,
                r#"server.log_format: "text" is not one of "logfmt", "json""#,
                "shutdown.timeout: must be > 0",
            ]
        );
        for listen in ["[::]:80", "localhost:8080", "0.0.0.0:0"] {
            let config = ok(&with_receiver(&format!(
                "[server]\nlisten = \"{listen}\"\n"
            )));
            assert_eq!(config.server.listen, listen);
        }
    }

    #[test]
    fn unset_variable_is_an_error_naming_it_once() {
        let errors = errors_of("[loki.primary]\nurl = \"${LOKI_URL}\"\n");
        assert_eq!(
            errors,
            [
                r#"loki.primary.url: environment variable LOKI_URL is not set (set it, or give a default: "${LOKI_URL:-default}")"#
            ]
        );
    }

    #[test]
    fn default_from_variable() {
        let text = "[loki.primary]\nurl = \"http://${HOST:-localhost}:3100/push\"\nbatch_wait = \"${WAIT:-3s}\"\n";
        let config = parse(text, &no_env).unwrap();
        assert_eq!(config.loki["primary"].url, "http://localhost:3100/push");
        assert_eq!(config.loki["primary"].batch_wait, Duration::from_secs(3));
        let env = |name: &str| (name == "WAIT").then(|| "250ms".to_owned());
        let config = parse(text, &env).unwrap();
        assert_eq!(
            config.loki["primary"].batch_wait,
            Duration::from_millis(250)
        );
    }

    #[test]
    fn several_errors_from_different_sections_in_one_run() {
        let errors = errors_of(
            r#"
            bogus = 1
            [kubernetes]
            api_server = "${API}"
            bearer_token = "a"
            bearer_token_file = "/b"
            [tail]
            chunk_lines = "x"
            [[relabel]]
            action = "explode"
            [positions]
            backend = "s3"
            [loki.a]
            url = "http://a"
            batch_sise = "1MiB"
            [loki.b]
            buffer_size = "lots"
            "#,
        );
        let paths: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "kubernetes.api_server",
                "bogus",
                "tail.chunk_lines",
                "loki.a.batch_sise",
                "kubernetes",
                "relabel[0].action",
                "positions.backend",
                "loki.b.url",
                "loki.b.buffer_size",
            ],
            "{}",
            errors.join("\n")
        );
    }

    #[test]
    fn every_error_names_a_key_path() {
        let text = r#"
            [kubernetes]
            api_server = "nope"
            kubeconfig_file = ""
            qps = -1
            [kubernetes.tls_config]
            server_name = ""
            [discovery]
            namespaces = ["Bad_NS"]
            label_selector = " "
            [[relabel]]
            action = "hashmod"
            [tail]
            on_long_line = "wrap"
            terminated_grace = "soon"
            [loki."bad name"]
            url = "http://x"
            on_full = "spill"
            max_line_size = "1 parsec"
            [stdout]
            format = "yaml"
        "#;
        let errors = errors_of(text);
        assert!(errors.len() >= 12, "{}", errors.join("\n"));
        for error in &errors {
            let (path, message) = error.split_once(": ").unwrap();
            let top = path.split(['.', '[']).next().unwrap();
            assert!(SECTIONS.contains(&top), "{error}");
            assert!(!message.is_empty() && !message.contains('\n'), "{error}");
        }
    }

    #[test]
    fn secrets_are_never_repeated_in_errors() {
        let errors = errors_of(&with_receiver(
            "[kubernetes]\nbearer_token = \"s3cr3t${\"\nhttp_headers = { X-T = \"s3cr3t\\n\" }\n",
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("s3cr3t")), "{errors:?}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = errors_of("[tail]\nchunk_lines = 5\nmax_line_size = \n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("line 3, column 17: TOML syntax error: "),
            "{errors:?}"
        );
    }

    #[test]
    fn the_reference_config_toml_is_valid_and_runs_against_the_simulator() {
        let config = ok(include_str!("../../config.toml"));
        assert_eq!(
            config.kubernetes.api_server.as_deref(),
            Some("http://127.0.0.1:6443")
        );
        assert_eq!(config.kubernetes.auth, Auth::None);
        assert_eq!(config.loki.keys().collect::<Vec<_>>(), ["local"]);
        let local = &config.loki["local"];
        assert_eq!(local.url, "http://127.0.0.1:3100/loki/api/v1/push");
        let defaults = LokiConfig::with_url(local.url.clone());
        assert_eq!(
            *local, defaults,
            "config.toml must show the defaults of [loki.<name>]"
        );
        assert_eq!(
            config.tail,
            TailConfig::default(),
            "config.toml must show the defaults of [tail]"
        );
        assert!(config.discovery.enabled && config.discovery.namespaces.is_empty());
        assert!(
            config.relabel.is_empty(),
            "the default relabel rules must stay in effect"
        );
        assert_eq!(config.positions.backend, PositionsBackend::Memory);
        assert_eq!(config.server, ServerConfig::default());
        assert_eq!(config.shutdown, ShutdownConfig::default());
        assert_eq!(config.clustering, ClusteringConfig::default());
        assert_eq!(config.stdout, None);
    }

    #[test]
    fn the_reference_config_toml_mentions_every_key() {
        let reference = include_str!("../../config.toml");
        // Every key any table accepts, as serde lists them in the unknown-field error.
        let probes = [
            "[kubernetes]",
            "[kubernetes.authorization]",
            "[kubernetes.basic_auth]",
            "[kubernetes.oauth2]",
            "[kubernetes.tls_config]",
            "[discovery]",
            "[discovery.attach_metadata]",
            "[[relabel]]",
            "[[targets]]",
            "[tail]",
            "[positions]",
            "[loki.x]",
            "[stdout]",
            "[server]",
            "[shutdown]",
            "[clustering]",
        ];
        for table in probes {
            let errors = errors_of(&format!("{table}\nzz_probe = 1\n"));
            let probe = errors
                .iter()
                .find(|e| e.contains("zz_probe"))
                .expect("a probe error");
            let expected = probe.rsplit("expected ").next().unwrap_or_default();
            let expected = expected.trim_start_matches("one of ");
            let keys = expected.split(", ").flat_map(|k| k.split(" or "));
            for key in keys.map(|k| k.trim_matches('`')) {
                let word = regex::Regex::new(&format!(r"\b{}\b", regex::escape(key))).unwrap();
                assert!(
                    word.is_match(reference),
                    "config.toml does not document {table} {key}"
                );
            }
        }
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "[stdout]\nformat = \"json\"\n").unwrap();
        let config = load(&path).unwrap();
        assert_eq!(
            config.stdout,
            Some(StdoutConfig {
                format: LogFormat::Json
            })
        );

        let missing = dir.path().join("missing.toml");
        let errors = load(&missing).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors.0[0].path, missing.display().to_string());
        assert!(
            errors.0[0]
                .message
                .starts_with("cannot read the configuration file: ")
        );
    }
}
