//! `[kubernetes]` → `kube::Config` (SPEC §4.1): where the API server is, how to trust it, and the
//! credentials that never change while the relay runs.
//!
//! The source of the base configuration follows the reference: `api_server`, else
//! `kubeconfig_file`, else the in-cluster service account, else `~/.kube/config` (or
//! `$KUBECONFIG`). Everything set in `[kubernetes]` then overrides what that source said, so a
//! kubeconfig can supply the cluster while the TOML file supplies the credential.
//!
//! Credentials read from a *file* (`bearer_token_file`, `authorization.credentials_file`,
//! `basic_auth.password_file`) are not put into the `kube::Config`: [`super::FileCredential`]
//! re-reads them while the relay runs and sets the header on every request.

use std::path::{Path, PathBuf};

use ::kube::config::{Kubeconfig, KubeconfigError};
use base64::Engine as _;
use http::HeaderValue;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::KubeClientError;
use crate::config::{Auth, Credential, KubernetesConfig, PemSource, TlsConfig};

/// Builds the `kube::Config` for `cfg`, reading the kubeconfig, CA and client certificate files it
/// names. File credentials are left to [`super::FileCredential`] (see the module docs).
pub fn client_config(cfg: &KubernetesConfig) -> Result<::kube::Config, KubeClientError> {
    let mut config = base_config(cfg)?;
    // kube's built-in retry repeats 429/503/504 answers silently for up to 15 attempts. The
    // relay retries on its own terms instead: a tailer must decide after every failure (a
    // retried log request can land on a restarted container's new instance), and every wait
    // must be visible in metrics and logs.
    config.default_retry = false;
    apply_auth(&mut config, &cfg.auth)?;
    apply_tls(&mut config, &cfg.tls)?;
    let headers = crate::net::headers::secret_headers(cfg.http_headers.iter()).map_err(|e| {
        KubeClientError::Header {
            name: e.name,
            reason: e.reason,
        }
    })?;
    config.headers.extend(
        headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    Ok(config)
}

/// The cluster URL, CA and credentials of the first source that is configured or present.
fn base_config(cfg: &KubernetesConfig) -> Result<::kube::Config, KubeClientError> {
    if let Some(url) = &cfg.api_server {
        return Ok(::kube::Config::new(parse_api_server(url)?));
    }
    if let Some(path) = &cfg.kubeconfig_file {
        return Kubeconfig::read_from(path)
            .and_then(::kube::Config::try_from)
            .map_err(|source| KubeClientError::Kubeconfig {
                path: path.clone(),
                source: Box::new(source),
            });
    }
    let in_cluster = match ::kube::Config::incluster() {
        Ok(config) => return Ok(config),
        Err(e) => e,
    };
    Kubeconfig::read()
        .and_then(::kube::Config::try_from)
        .map_err(|kubeconfig: KubeconfigError| KubeClientError::NoApiServer {
            in_cluster: in_cluster.to_string(),
            kubeconfig: kubeconfig.to_string(),
        })
}

/// `api_server` must be an absolute `http://` or `https://` URL (plain HTTP reaches the simulator
/// and `kubectl proxy`; kube's connector accepts both schemes).
fn parse_api_server(url: &str) -> Result<http::Uri, KubeClientError> {
    let invalid = |reason: String| KubeClientError::ApiServer {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        Some("http" | "https") => Err(invalid("it has no host".to_owned())),
        _ => Err(invalid("the scheme must be http:// or https://".to_owned())),
    }
}

/// Replaces the base's credential with the configured one (file credentials excepted: they are
/// applied per request, and still clear the base's credential).
fn apply_auth(config: &mut ::kube::Config, auth: &Auth) -> Result<(), KubeClientError> {
    if matches!(auth, Auth::None) {
        return Ok(());
    }
    // Without this, kube's precedence (auth provider > basic > token > token file > exec) could
    // let the kubeconfig's own credential win over the one in the TOML file.
    let info = &mut config.auth_info;
    info.username = None;
    info.password = None;
    info.token = None;
    info.token_file = None;
    info.exec = None;
    info.auth_provider = None;
    match auth {
        // File credentials and OAuth2 tokens are set per request (`super::FileCredential`,
        // `crate::net::oauth2`).
        Auth::None | Auth::BearerTokenFile(_) | Auth::OAuth2(_) => {}
        Auth::BearerToken(token) => info.token = Some(token.expose().to_owned().into()),
        Auth::Authorization {
            kind,
            credentials: Credential::Inline(secret),
        } => {
            if kind.eq_ignore_ascii_case("bearer") {
                info.token = Some(secret.expose().to_owned().into());
            } else {
                let value = format!("{kind} {}", secret.expose());
                config.headers.push((
                    http::header::AUTHORIZATION,
                    header_value("authorization", &value)?,
                ));
            }
        }
        Auth::Authorization {
            credentials: Credential::File(_),
            ..
        } => {}
        Auth::Basic {
            username,
            password: Credential::Inline(password),
        } => {
            info.username = Some(username.clone());
            info.password = Some(password.expose().to_owned().into());
        }
        Auth::Basic {
            password: Credential::File(_),
            ..
        } => {}
    }
    Ok(())
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, KubeClientError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| KubeClientError::Header {
        name: name.to_owned(),
        reason: "the value holds a character not allowed in a header (a newline?)".to_owned(),
    })?;
    // Header values may be secrets: keep them out of debug output and HPACK tables.
    value.set_sensitive(true);
    Ok(value)
}

fn apply_tls(config: &mut ::kube::Config, tls: &TlsConfig) -> Result<(), KubeClientError> {
    if let Some(ca) = &tls.ca {
        let pem = read_pem(ca, "ca")?;
        config.root_cert = Some(parse_certs(&pem, "ca")?);
        // kube re-reads `root_cert_file` every 60 s (its `ReloadingVerifier`), so a rotated CA
        // file is picked up without a restart; inline PEM cannot change.
        config.root_cert_file = match ca {
            PemSource::File(path) => Some(path.clone()),
            PemSource::Inline(_) => None,
        };
    }
    if tls.insecure_skip_verify {
        config.accept_invalid_certs = true;
    }
    match (&tls.cert, &tls.key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            // Check both now so a bad file is reported with its TOML path, not as a TLS error
            // on the first request.
            parse_certs(&read_pem(cert, "cert")?, "cert")?;
            let key_pem = read_pem(key, "key")?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| KubeClientError::Pem {
                field: "key",
                reason: format!("no usable private key: {e}"),
            })?;
            let info = &mut config.auth_info;
            match cert {
                PemSource::Inline(pem) => {
                    // kube expects `client-certificate-data` as in a kubeconfig: base64 of PEM.
                    info.client_certificate_data = Some(base64_of(pem.expose()));
                    info.client_certificate = None;
                }
                PemSource::File(path) => {
                    info.client_certificate = Some(path_text(path, "cert_file")?);
                    info.client_certificate_data = None;
                }
            }
            match key {
                PemSource::Inline(pem) => {
                    info.client_key_data = Some(base64_of(pem.expose()).into());
                    info.client_key = None;
                }
                PemSource::File(path) => {
                    info.client_key = Some(path_text(path, "key_file")?);
                    info.client_key_data = None;
                }
            }
        }
        (Some(_), None) => return Err(KubeClientError::CertWithoutKey { missing: "key" }),
        (None, Some(_)) => return Err(KubeClientError::CertWithoutKey { missing: "cert" }),
    }
    if let Some(name) = &tls.server_name {
        ServerName::try_from(name.as_str()).map_err(|e| KubeClientError::ServerName {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        config.tls_server_name = Some(name.clone());
    }
    // `min_version = "TLS13"` is enforced by the pool after each handshake (`pool::Connector`):
    // kube builds the rustls configuration with both versions and rustls cannot narrow a built
    // one; a server that speaks TLS 1.3 always negotiates it with rustls, whose downgrade
    // protection makes a forced TLS 1.2 fail the handshake.
    Ok(())
}

fn base64_of(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn path_text(path: &Path, field: &'static str) -> Result<String, KubeClientError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| KubeClientError::NonUtf8Path {
            field,
            path: path.to_path_buf(),
        })
}

/// The PEM text of `tls_config.<field>_pem` or the contents of `tls_config.<field>_file`.
fn read_pem(source: &PemSource, field: &'static str) -> Result<Vec<u8>, KubeClientError> {
    match source {
        PemSource::Inline(pem) => Ok(pem.expose().as_bytes().to_vec()),
        PemSource::File(path) => std::fs::read(path).map_err(|source| KubeClientError::ReadFile {
            field: file_field(field),
            path: path.clone(),
            source,
        }),
    }
}

fn file_field(field: &str) -> &'static str {
    match field {
        "ca" => "tls_config.ca_file",
        "cert" => "tls_config.cert_file",
        _ => "tls_config.key_file",
    }
}

/// DER certificates of every `CERTIFICATE` block; at least one is required.
fn parse_certs(pem: &[u8], field: &'static str) -> Result<Vec<Vec<u8>>, KubeClientError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KubeClientError::Pem {
            field,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(KubeClientError::Pem {
            field,
            reason: "no \"-----BEGIN CERTIFICATE-----\" block found".to_owned(),
        });
    }
    Ok(certs)
}

/// The file a file credential is read from, with the TOML path it came from.
pub(super) fn credential_file(auth: &Auth) -> Option<(&'static str, &PathBuf)> {
    match auth {
        Auth::BearerTokenFile(path) => Some(("bearer_token_file", path)),
        Auth::Authorization {
            credentials: Credential::File(path),
            ..
        } => Some(("authorization.credentials_file", path)),
        Auth::Basic {
            password: Credential::File(path),
            ..
        } => Some(("basic_auth.password_file", path)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Secret, TlsVersion};

    /// A self-signed P-256 certificate and its key, made for these tests only
    /// (`openssl req -x509 -newkey ec -subj /CN=relay-test`).
    pub(crate) const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIUYlUmPke1ylh5GYEWAW/IGhFsyY0wCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKcmVsYXktdGVzdDAgFw0yNjExMjUwOTQxMjVaGA8yMTI2MTEw
MTA5NDEyNVowFTETMBEGA1UEAwwKcmVsYXktdGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABBmPSvknaWshhnHIe6nuP4DaZPrQwbzMc8O+UANt57qhHOxqBqC6
vIc1vtc6E1nYitb7oGdm+ADbTJDuoSK+ooGjUzBRMB0GA1UdDgQWBBTCd4T9P8eu
iIpYcY+rDfFyEP9ESTAfBgNVHSMEGDAWgBTCd4T9P8euiIpYcY+rDfFyEP9ESTAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIErBCiKKRHVBS1C/rn/2
Hd1eDHjadxyl2hjY9KCbzSfpAiEAzkdFuoTnp9nRzaVlXRtq0RcP2z5uEMtdOhoA
VOWw1ic=
-----END CERTIFICATE-----
";
    pub(crate) const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgPKPDxEu99yOWBaIk
DnG+BJMWRklNGhdQ0m/gabNiKtqhRANCAAQZj0r5J2lrIYZxyHup7j+A2mT60MG8
zHPDvlADbee6oRzsagaguryHNb7XOhNZ2IrW+6BnZvgA20yQ7qEivqKB
-----END PRIVATE KEY-----
";

    pub(crate) fn with_server(url: &str) -> KubernetesConfig {
        KubernetesConfig {
            api_server: Some(url.to_owned()),
            enable_http2: true,
            follow_redirects: true,
            ..KubernetesConfig::default()
        }
    }

    fn inline(text: &str) -> PemSource {
        PemSource::Inline(Secret(text.to_owned()))
    }

    #[test]
    fn api_server_http_url_is_used_as_is() {
        let config = client_config(&with_server("http://127.0.0.1:8080")).expect("config");
        assert_eq!(config.cluster_url, "http://127.0.0.1:8080/");
        assert_eq!(config.default_namespace, "default");
        assert!(config.auth_info.token.is_none());
        assert!(config.root_cert.is_none());
    }

    #[test]
    fn bad_api_server_urls_are_refused_with_the_setting_named() {
        for url in ["not a url", "ftp://host", "/api", "http://"] {
            let err = client_config(&with_server(url)).expect_err(url);
            assert!(
                matches!(err, KubeClientError::ApiServer { .. }),
                "{url}: {err}"
            );
            assert!(
                err.to_string().starts_with("kubernetes.api_server:"),
                "{err}"
            );
        }
    }

    #[test]
    fn bearer_token_goes_to_auth_info() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.auth = Auth::BearerToken(Secret("t0ken".into()));
        let config = client_config(&cfg).expect("config");
        assert!(config.auth_info.token.is_some());
        assert!(config.auth_info.token_file.is_none());
        assert!(config.headers.is_empty());
    }

    #[test]
    fn file_credentials_are_left_to_the_request_layer() {
        let cases = [
            Auth::BearerTokenFile("/tok".into()),
            Auth::Authorization {
                kind: "Bearer".into(),
                credentials: Credential::File("/tok".into()),
            },
            Auth::Basic {
                username: "u".into(),
                password: Credential::File("/tok".into()),
            },
        ];
        for auth in cases {
            let mut cfg = with_server("https://k8s:6443");
            cfg.auth = auth.clone();
            let config = client_config(&cfg).expect("config");
            let info = &config.auth_info;
            assert!(info.token.is_none() && info.token_file.is_none() && info.password.is_none());
            assert_eq!(
                credential_file(&auth).map(|(_, p)| p.as_path()),
                Some(Path::new("/tok"))
            );
        }
        assert_eq!(
            credential_file(&Auth::BearerToken(Secret("x".into()))),
            None
        );
    }

    #[test]
    fn authorization_and_basic_and_headers_map_to_kube() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.auth = Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Credential::Inline(Secret("abc".into())),
        };
        assert!(
            client_config(&cfg)
                .expect("config")
                .auth_info
                .token
                .is_some()
        );

        cfg.auth = Auth::Authorization {
            kind: "Custom".into(),
            credentials: Credential::Inline(Secret("abc".into())),
        };
        cfg.http_headers.insert(
            "X-Team".into(),
            vec![Secret("a".into()), Secret("b".into())],
        );
        let config = client_config(&cfg).expect("config");
        assert!(config.auth_info.token.is_none());
        let headers: Vec<(String, String)> = config
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            headers,
            [
                pair("authorization", "Custom abc"),
                pair("x-team", "a"),
                pair("x-team", "b")
            ]
        );
        assert!(config.headers.iter().all(|(_, v)| v.is_sensitive()));

        cfg.auth = Auth::Basic {
            username: "user".into(),
            password: Credential::Inline(Secret("pw".into())),
        };
        cfg.http_headers.clear();
        let config = client_config(&cfg).expect("config");
        assert_eq!(config.auth_info.username.as_deref(), Some("user"));
        assert!(config.auth_info.password.is_some());
        assert!(config.headers.is_empty());
    }

    #[test]
    fn bad_header_names_and_values_are_refused() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.http_headers
            .insert("bad name".into(), vec![Secret("v".into())]);
        let err = client_config(&cfg).expect_err("bad name");
        assert!(
            err.to_string()
                .contains("kubernetes.http_headers: header \"bad name\""),
            "{err}"
        );
        cfg.http_headers.clear();
        cfg.http_headers
            .insert("x-ok".into(), vec![Secret("a\nb".into())]);
        assert!(matches!(
            client_config(&cfg),
            Err(KubeClientError::Header { .. })
        ));
    }

    #[test]
    fn ca_pem_becomes_der_root_certs() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.tls.ca = Some(inline(&format!("{TEST_CERT}{TEST_CERT}")));
        let config = client_config(&cfg).expect("config");
        let roots = config.root_cert.expect("root certs");
        assert_eq!(roots.len(), 2);
        // DER of an X.509 certificate starts with a SEQUENCE tag.
        assert_eq!(roots[0][0], 0x30);
        assert!(config.root_cert_file.is_none());
    }

    #[test]
    fn ca_file_is_read_and_kept_for_reloading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, TEST_CERT).expect("write");
        let mut cfg = with_server("https://k8s:6443");
        cfg.tls.ca = Some(PemSource::File(path.clone()));
        let config = client_config(&cfg).expect("config");
        assert_eq!(config.root_cert.map(|c| c.len()), Some(1));
        assert_eq!(config.root_cert_file, Some(path));
    }

    #[test]
    fn bad_ca_pem_is_an_error_naming_the_setting() {
        let mut cfg = with_server("https://k8s:6443");
        for pem in [
            "not pem at all",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        ] {
            cfg.tls.ca = Some(inline(pem));
            let err = client_config(&cfg).expect_err(pem);
            assert!(
                matches!(err, KubeClientError::Pem { field: "ca", .. }),
                "{err}"
            );
            assert!(
                err.to_string().starts_with("kubernetes.tls_config.ca:"),
                "{err}"
            );
        }
        cfg.tls.ca = Some(PemSource::File("/nonexistent/ca.pem".into()));
        let err = client_config(&cfg).expect_err("missing file");
        assert!(err.to_string().contains("tls_config.ca_file"), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn insecure_and_server_name_map_to_kube() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.tls.insecure_skip_verify = true;
        cfg.tls.server_name = Some("kubernetes.default.svc".into());
        let config = client_config(&cfg).expect("config");
        assert!(config.accept_invalid_certs);
        assert_eq!(
            config.tls_server_name.as_deref(),
            Some("kubernetes.default.svc")
        );

        cfg.tls.server_name = Some("bad name!".into());
        assert!(matches!(
            client_config(&cfg),
            Err(KubeClientError::ServerName { .. })
        ));
    }

    #[test]
    fn client_certificate_is_base64_pem_as_kube_expects() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.tls.cert = Some(inline(TEST_CERT));
        cfg.tls.key = Some(inline(TEST_KEY));
        let config = client_config(&cfg).expect("config");
        let data = config.auth_info.client_certificate_data.expect("cert data");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("base64");
        assert_eq!(decoded, TEST_CERT.as_bytes());
        assert!(config.auth_info.client_key_data.is_some());

        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, TEST_CERT).expect("write");
        std::fs::write(&key, TEST_KEY).expect("write");
        cfg.tls.cert = Some(PemSource::File(cert.clone()));
        cfg.tls.key = Some(PemSource::File(key.clone()));
        let config = client_config(&cfg).expect("config");
        assert_eq!(
            config.auth_info.client_certificate.as_deref(),
            cert.to_str()
        );
        assert_eq!(config.auth_info.client_key.as_deref(), key.to_str());
        assert!(config.auth_info.client_certificate_data.is_none());
    }

    #[test]
    fn client_certificate_errors() {
        let mut cfg = with_server("https://k8s:6443");
        cfg.tls.cert = Some(inline(TEST_CERT));
        assert!(matches!(
            client_config(&cfg),
            Err(KubeClientError::CertWithoutKey { missing: "key" })
        ));
        cfg.tls.key = Some(inline(TEST_CERT));
        let err = client_config(&cfg).expect_err("a certificate is no key");
        assert!(
            matches!(err, KubeClientError::Pem { field: "key", .. }),
            "{err}"
        );
        cfg.tls.key = Some(inline(TEST_KEY));
        // TLS13 is enforced per connection by the pool (tested there); both build.
        cfg.tls.min_version = Some(TlsVersion::Tls13);
        assert!(client_config(&cfg).is_ok());
        cfg.tls.min_version = Some(TlsVersion::Tls12);
        assert!(client_config(&cfg).is_ok());
    }

    fn write_kubeconfig(dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let ca = base64_of(TEST_CERT);
        let text = format!(
            "apiVersion: v1
kind: Config
current-context: sim
clusters:
- name: sim-cluster
  cluster:
    server: http://127.0.0.1:7443
    certificate-authority-data: {ca}
users:
- name: sim-user
  user:
    token: from-kubeconfig
contexts:
- name: sim
  context:
    cluster: sim-cluster
    user: sim-user
    namespace: logs
"
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    #[test]
    fn kubeconfig_file_supplies_cluster_user_and_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = KubernetesConfig {
            kubeconfig_file: Some(write_kubeconfig(dir.path())),
            ..KubernetesConfig::default()
        };
        let config = client_config(&cfg).expect("config");
        assert_eq!(config.cluster_url, "http://127.0.0.1:7443/");
        assert_eq!(config.default_namespace, "logs");
        assert!(config.auth_info.token.is_some());
        assert_eq!(config.root_cert.map(|c| c.len()), Some(1));
    }

    #[test]
    fn toml_credentials_override_the_kubeconfig_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = KubernetesConfig {
            kubeconfig_file: Some(write_kubeconfig(dir.path())),
            auth: Auth::Basic {
                username: "u".into(),
                password: Credential::Inline(Secret("p".into())),
            },
            ..KubernetesConfig::default()
        };
        let config = client_config(&cfg).expect("config");
        assert!(
            config.auth_info.token.is_none(),
            "the kubeconfig token would win over basic auth"
        );
        assert_eq!(config.auth_info.username.as_deref(), Some("u"));
    }

    #[test]
    fn missing_or_broken_kubeconfig_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-kubeconfig");
        let cfg = KubernetesConfig {
            kubeconfig_file: Some(missing.clone()),
            ..KubernetesConfig::default()
        };
        let err = client_config(&cfg).expect_err("missing file");
        let message = err.to_string();
        assert!(
            message.starts_with("kubernetes.kubeconfig_file:"),
            "{message}"
        );
        assert!(message.contains(&*missing.to_string_lossy()), "{message}");

        let broken = dir.path().join("broken");
        std::fs::write(&broken, "apiVersion: v1\nkind: Config\nclusters: []\n").expect("write");
        let cfg = KubernetesConfig {
            kubeconfig_file: Some(broken.clone()),
            ..KubernetesConfig::default()
        };
        let message = client_config(&cfg).expect_err("no context").to_string();
        assert!(message.contains(&*broken.to_string_lossy()), "{message}");
        assert!(message.contains("current context"), "{message}");
    }
}
