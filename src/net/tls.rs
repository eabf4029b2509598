//! TLS of the relay's own HTTP clients — the receivers (SPEC §4.5) and the OAuth2 token endpoint
//! (SPEC §4.1 `oauth2.tls_config`): rustls (ring) configured from a `tls_config` table (CA,
//! client certificate, `insecure_skip_verify`, `server_name`, `min_version`), wrapped around a
//! [`Route`] connector; `http` URLs pass through it unencrypted.
//!
//! HTTP/2 is offered the way Go's client (and so the reference) offers it: by ALPN during the
//! TLS handshake, so a server that speaks HTTP/2 gets it and one that does not gets HTTP/1.1.
//! Over plain `http` every request is HTTP/1.1 (no h2c with prior knowledge: an HTTP/1.1 proxy
//! in front of the server would not understand it).
//!
//! The Kubernetes client builds its TLS from kube's configuration instead (kubeconfig and
//! in-cluster CA), in `crate::kube::pool`.

use std::path::PathBuf;
use std::sync::Arc;

use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{PemSource, TlsConfig, TlsVersion};

use super::proxy::Route;

/// What a `tls_config` does not allow building a client from; messages name the key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("cert and key must be given together")]
    CertWithoutKey,
}

/// The connector of a client: `tls` over `route`, offering HTTP/2 by ALPN when `enable_http2`.
pub fn https_connector(
    tls: &TlsConfig,
    route: Route,
    enable_http2: bool,
) -> Result<HttpsConnector<Route>, TlsError> {
    let config = client_config(tls)?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let builder = match &tls.server_name {
        Some(name) => {
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| TlsError::ServerName(name.clone()))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(server_name))
        }
        None => builder,
    };
    Ok(if enable_http2 {
        builder.enable_all_versions().wrap_connector(route)
    } else {
        builder.enable_http1().wrap_connector(route)
    })
}

fn pem_bytes(source: &PemSource, what: &'static str) -> Result<Vec<u8>, TlsError> {
    match source {
        PemSource::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
        PemSource::File(path) => std::fs::read(path).map_err(|source| TlsError::File {
            what,
            path: path.clone(),
            source,
        }),
    }
}

fn certificates(
    source: &PemSource,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = pem_bytes(source, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// A rustls configuration that trusts nothing, for a connector that must be given one but
/// only ever speaks plain HTTP (an `http://` API server).
pub fn without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// The rustls configuration of a client's `tls_config`: the configured CA (else the public
/// roots), the client identity, `insecure_skip_verify` and `min_version`; no ALPN.
pub fn client_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
        Some(TlsVersion::Tls12) | None => rustls::DEFAULT_VERSIONS,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else if let Some(ca) = &tls.ca {
        // A configured CA replaces the public roots, as in the reference.
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "ca")? {
            roots.add(cert)?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_webpki_roots()
    };
    Ok(match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = certificates(cert, "cert")?;
            let key = PrivateKeyDer::from_pem_slice(&pem_bytes(key, "key")?).map_err(|e| {
                TlsError::Pem {
                    what: "key",
                    reason: e.to_string(),
                }
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::CertWithoutKey),
    })
}

/// `insecure_skip_verify`: accepts any server certificate, still checking handshake
/// signatures so the connection is at least to the holder of the presented key.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
