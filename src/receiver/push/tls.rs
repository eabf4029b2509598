//! The TLS layer of a receiver's client (SPEC §4.5, §6): `tls_config` and `enable_http2` over
//! the [`Route`] connector, built by [`crate::net::tls`] (shared with the OAuth2 token client).
//! Over TLS, ALPN offers h2 and http/1.1; plain http stays HTTP/1.1: Loki does not expect h2c,
//! and an HTTP/1.1 proxy in front of it would not understand it.

use hyper_rustls::HttpsConnector;

use crate::config::LokiConfig;

use super::ClientError;
use super::proxy::Route;

/// The connector of a receiver: `config.tls` over `route`, offering HTTP/2 by ALPN when enabled.
pub(super) fn connector(
    config: &LokiConfig,
    route: Route,
) -> Result<HttpsConnector<Route>, ClientError> {
    Ok(crate::net::tls::https_connector(
        &config.tls,
        route,
        config.enable_http2,
    )?)
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
            PushClient::new("test", &config)
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
                let client = PushClient::new("test", &config).unwrap();
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
