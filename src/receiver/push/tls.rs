//! The TLS layer of a receiver's client (SPEC §4.5, §6): rustls (ring) configured from
//! `tls_config` (CA, client certificate, `insecure_skip_verify`, `server_name`, `min_version`),
//! wrapped around the [`Route`] connector; `http` URLs pass through it unencrypted.
//!
//! HTTP/2 (`enable_http2`, default true) is offered the way Go's client (and so the reference)
//! offers it: by ALPN during the TLS handshake, so an `https` Loki that speaks HTTP/2 gets it and
//! one that does not gets HTTP/1.1. Over plain `http` every request is HTTP/1.1: Loki does not
//! expect h2c with prior knowledge, and an HTTP/1.1 proxy in front of it would not understand it.
//! `enable_http2 = false` offers only `http/1.1`.

use std::sync::Arc;

use hyper_rustls::{ConfigBuilderExt, FixedServerNameResolver, HttpsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{LokiConfig, PemSource, TlsConfig, TlsVersion};

use super::ClientError;
use super::proxy::Route;

/// The connector of a receiver: `config.tls` over `route`, offering HTTP/2 by ALPN when enabled.
pub(super) fn connector(
    config: &LokiConfig,
    route: Route,
) -> Result<HttpsConnector<Route>, ClientError> {
    let tls = tls_config(&config.tls)?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls.server_name {
        Some(name) => {
            let server_name = ServerName::try_from(name.clone())
                .map_err(|_| ClientError::ServerName(name.clone()))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(server_name))
        }
        None => builder,
    };
    // Over TLS, ALPN offers h2 and http/1.1; plain http stays HTTP/1.1 (see the module doc).
    let connector = if config.enable_http2 {
        builder.enable_all_versions().wrap_connector(route)
    } else {
        builder.enable_http1().wrap_connector(route)
    };
    Ok(connector)
}

fn pem_bytes(source: &PemSource, what: &'static str) -> Result<Vec<u8>, ClientError> {
    match source {
        PemSource::Inline(s) => Ok(s.expose().as_bytes().to_vec()),
        PemSource::File(path) => std::fs::read(path).map_err(|source| ClientError::TlsFile {
            what,
            path: path.clone(),
            source,
        }),
    }
}

fn certificates(
    source: &PemSource,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = pem_bytes(source, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientError::Pem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The rustls configuration of a receiver's `tls_config`.
fn tls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ClientError> {
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
                ClientError::Pem {
                    what: "key",
                    reason: e.to_string(),
                }
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ClientError::CertWithoutKey),
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

#[cfg(test)]
mod tests {
    use crate::config::{LokiConfig, PemSource, Secret};
    use crate::receiver::push::PushClient;
    use crate::receiver::push::test_support::{CA_PEM, TestLoki, empty_push};

    #[tokio::test]
    async fn tls_verifies_the_server_against_the_configured_ca() {
        let loki = TestLoki::start(Some(&[b"h2", b"http/1.1"])).await;
        let ca = Some(PemSource::Inline(Secret(CA_PEM.into())));
        let push = |config: LokiConfig| async move {
            PushClient::new(&config)
                .unwrap()
                .push(empty_push(), None)
                .await
        };

        let mut config = LokiConfig::with_url(loki.url("https", "127.0.0.1"));
        config.tls.ca = ca.clone();
        assert_eq!(push(config.clone()).await.unwrap().status, 204);
        // server_name replaces the URL's host in SNI and verification.
        config.tls.server_name = Some("loki.test".into());
        assert_eq!(push(config.clone()).await.unwrap().status, 204);
        config.tls.server_name = Some("elsewhere.test".into());
        let err = push(config).await.unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");

        // Without the CA the public roots do not know it …
        let config = LokiConfig::with_url(loki.url("https", "localhost"));
        let err = push(config.clone()).await.unwrap_err().to_string();
        assert!(err.contains("UnknownIssuer"), "{err}");
        // … unless verification is off.
        let mut insecure = config;
        insecure.tls.insecure_skip_verify = true;
        assert_eq!(push(insecure).await.unwrap().status, 204);
        // Failed handshakes never reached the handler.
        assert_eq!(loki.sink.requests().len(), 3);
    }

    #[tokio::test]
    async fn http2_is_negotiated_by_alpn_over_tls_only() {
        let h2 = TestLoki::start(Some(&[b"h2", b"http/1.1"])).await;
        let h1 = TestLoki::start(Some(&[b"http/1.1"])).await;
        let plain = TestLoki::start(None).await;
        let ca = Some(PemSource::Inline(Secret(CA_PEM.into())));
        let versions = |loki: &TestLoki, scheme: &'static str, enable_http2: bool| {
            let mut config = LokiConfig::with_url(loki.url(scheme, "localhost"));
            config.tls.ca = ca.clone();
            config.enable_http2 = enable_http2;
            async move {
                let client = PushClient::new(&config).unwrap();
                assert_eq!(client.push(empty_push(), None).await.unwrap().status, 204);
            }
        };
        versions(&h2, "https", true).await;
        versions(&h2, "https", false).await;
        versions(&h1, "https", true).await;
        versions(&plain, "http", true).await;
        use http::Version;
        assert_eq!(h2.versions(), [Version::HTTP_2, Version::HTTP_11]);
        assert_eq!(h1.versions(), [Version::HTTP_11]);
        // No h2c over plain http: Loki behind an HTTP/1.1 proxy would not understand it.
        assert_eq!(plain.versions(), [Version::HTTP_11]);
    }
}
