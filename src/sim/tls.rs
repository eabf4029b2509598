//! The simulator's TLS (SPEC §8.5, `sim --tls`): a CA generated at start, a server certificate
//! it signs for `127.0.0.1`, `::1` and `localhost`, a client certificate for tests and kubectl,
//! the rustls configuration that serves HTTP/2 and HTTP/1.1 by ALPN, and the files written for
//! the user: the CA, the client pair and a kubeconfig.
//!
//! Client certificates are asked for but optional at the handshake, like the API server's: one
//! signed by the CA authenticates the connection; none leaves it to the `Authorization` header
//! ([`super::auth`]); one signed by anyone else fails the handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// The client certificate's subject: `CN=kube-log-relay-sim-client, O=system:masters`.
pub const CLIENT_COMMON_NAME: &str = "kube-log-relay-sim-client";

/// Why the certificates or the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A CA and the server and client certificates it signed, all generated in memory.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The server certificate, PEM (for `SERVER_NAMES`).
    pub server_cert_pem: String,
    /// The client certificate, PEM, signed by the CA.
    pub client_cert_pem: String,
    /// The client certificate's private key, PKCS#8 PEM.
    pub client_key_pem: String,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl Pki {
    /// Generates a fresh CA (ECDSA P-256) and the server and client certificates it signs.
    pub fn generate() -> Result<Pki, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kube-log-relay sim CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-log-relay-sim");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, CLIENT_COMMON_NAME);
        client
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_cert = client.signed_by(&client_key, &issuer)?;

        Ok(Pki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            ca_der: ca_cert.der().clone(),
            server_der: server_cert.der().clone(),
            server_key_der: server_key.serialize_der(),
        })
    }

    /// The server side: the server certificate, HTTP/2 and HTTP/1.1 offered by ALPN (h2
    /// first), client certificates signed by the CA verified when presented.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server_der.clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The CA as a rustls root store, for clients in tests.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // The CA was generated above: a well-formed certificate.
        let _ = roots.add(self.ca_der.clone());
        roots
    }
}

/// The credentials written into the kubeconfig's user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeconfigUser {
    /// Embed the client certificate and key.
    pub client_cert: bool,
    /// A bearer token.
    pub token: Option<String>,
}

/// The files `sim --tls` writes, all in one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The directory holding them.
    pub dir: PathBuf,
    /// `ca.crt`: the CA certificate (PEM).
    pub ca: PathBuf,
    /// `client.crt`: a client certificate signed by the CA (PEM).
    pub client_cert: PathBuf,
    /// `client.key`: its private key (PKCS#8 PEM).
    pub client_key: PathBuf,
    /// `kubeconfig`: cluster `kube-log-relay-sim` at the simulator's `https://` URL with the CA,
    /// user `sim`, context `sim` (the current one).
    pub kubeconfig: PathBuf,
}

/// Writes the CA, the client pair and a kubeconfig for `server` (an `https://` URL) into `dir`
/// (created if need be).
pub fn write_files(
    dir: &Path,
    pki: &Pki,
    server: &str,
    user: &KubeconfigUser,
) -> std::io::Result<TlsFiles> {
    std::fs::create_dir_all(dir)?;
    let files = TlsFiles {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        kubeconfig: dir.join("kubeconfig"),
    };
    std::fs::write(&files.ca, &pki.ca_pem)?;
    std::fs::write(&files.client_cert, &pki.client_cert_pem)?;
    write_private(&files.client_key, &pki.client_key_pem)?;
    write_private(&files.kubeconfig, &kubeconfig(pki, server, user))?;
    Ok(files)
}

/// Private keys and credentials: readable by the owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// A self-contained kubeconfig (certificates embedded as `*-data`), so it can be copied.
pub fn kubeconfig(pki: &Pki, server: &str, user: &KubeconfigUser) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut user_fields = String::new();
    if user.client_cert {
        user_fields.push_str(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&pki.client_cert_pem),
            b64(&pki.client_key_pem)
        ));
    }
    if let Some(token) = &user.token {
        // JSON strings are valid YAML scalars: no quoting surprises whatever the token holds.
        user_fields.push_str(&format!(
            "    token: {}\n",
            serde_json::Value::from(token.as_str())
        ));
    }
    if user_fields.is_empty() {
        user_fields.push_str("    {}\n");
    }
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-log-relay-sim
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: sim
  user:
{user_fields}contexts:
- name: sim
  context:
    cluster: kube-log-relay-sim
    user: sim
    namespace: default
current-context: sim
",
        ca = b64(&pki.ca_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_chain_to_the_ca() {
        let pki = Pki::generate().unwrap();
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            pki.client_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        // The server configuration accepts the generated pair and the CA as client root.
        let config = pki.server_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // A server certificate verifies for each name against the CA.
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(pki.root_store()),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for name in SERVER_NAMES {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &*verifier,
                &pki.server_der,
                &[],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                &*verifier,
                &pki.server_der,
                &[],
                &other,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_err()
        );
    }

    #[test]
    fn kubeconfig_embeds_the_ca_and_the_chosen_credentials() {
        let pki = Pki::generate().unwrap();
        let text = kubeconfig(
            &pki,
            "https://127.0.0.1:6443",
            &KubeconfigUser {
                client_cert: true,
                token: Some("t0k\"en".into()),
            },
        );
        assert!(text.contains("server: https://127.0.0.1:6443\n"));
        assert!(text.contains("client-certificate-data: "));
        assert!(text.contains("token: \"t0k\\\"en\"\n"));
        let none = kubeconfig(&pki, "https://x", &KubeconfigUser::default());
        assert!(none.contains("  user:\n    {}\n"));
        assert!(!none.contains("client-key-data"));
    }
}
