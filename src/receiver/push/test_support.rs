//! Shared fixtures of the push client's tests (SPEC §4.5, §6): a test CA and the server
//! certificate it signed, an empty push body, and a Loki sink served over TLS or plain HTTP that
//! records each request's HTTP version.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::sim::loki::{LokiSink, PUSH_PATH};

/// A test CA (`CN=kube-log-relay test CA`, P-256, valid until 2126) …
pub(super) const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBqTCCAU+gAwIBAgIUdaYsnXu7jwvS4HyPCSoRxlwg+LIwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkgdGVzdCBDQTAgFw0yNjExMjUxMDI5
MjVaGA8yMTI2MTEwMTEwMjkyNVowITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkg
dGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABFOpUFNSt1Xz4SYce3xS
wZAtsbPjyObYYuvZRoU8pQGQOKi+4KZNv7j1wJw0zY/bmJ5z0mumPG2kNEarzjju
3tqjYzBhMB0GA1UdDgQWBBRIkPtmJRD1kcgcSybTZZ6+7MoBVjAfBgNVHSMEGDAW
gBRIkPtmJRD1kcgcSybTZZ6+7MoBVjAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB
/wQEAwIBBjAKBggqhkjOPQQDAgNIADBFAiEAqjOhqQtffFK18xSBwMKwmTiCcvNK
2rhPrOf0j81NLMkCICNNnkkQBvp/bjgk2NXyfPB8Ii+SMNt05ckuRobN7otq
-----END CERTIFICATE-----
";
/// … and a server certificate it signed for `loki.test`, `localhost` and `127.0.0.1`.
pub(super) const SERVER_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIB1zCCAX2gAwIBAgIUR386pt/ezIBCWw5fuLML+UYdtWAwCgYIKoZIzj0EAwIw
ITEfMB0GA1UEAwwWa3ViZS1sb2ctcmVsYXkgdGVzdCBDQTAgFw0yNjExMjUxMDI5
MjVaGA8yMTI2MTEwMTEwMjkyNVowFDESMBAGA1UEAwwJbG9raS50ZXN0MFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAE6/AwSflkk3UyKWEqcQ8ZI19YolcFQujTWhB8
8mYAyvutOqHVMA9dqU14A/O/Rv85oj5IkNnTejtQ0aNB7fFJ1aOBnTCBmjAlBgNV
HREEHjAcgglsb2tpLnRlc3SCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8EAjAA
MA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQU
EkXf4gjQzgK03G3w2MVCQgQrEgUwHwYDVR0jBBgwFoAUSJD7ZiUQ9ZHIHEsm02We
vuzKAVYwCgYIKoZIzj0EAwIDSAAwRQIhAJAnxTIaf6pEqNBdr+ogwULf+yhfpYGV
E/2EQn2amJtmAiBlHDni5T0zKH6wlxRtPwBHbGi7h964skm6S95W75u+Gw==
-----END CERTIFICATE-----
";
const SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgmGfwkHtY+7aTd+B1
rmwq1rZauRwRfU5dKjWXjmcO2b6hRANCAATr8DBJ+WSTdTIpYSpxDxkjX1iiVwVC
6NNaEHzyZgDK+606odUwD12pTXgD879G/zmiPkiQ2dN6O1DRo0Ht8UnV
-----END PRIVATE KEY-----
";

/// An empty `PushRequest`, snappy-compressed: the sink answers it 204.
pub(super) fn empty_push() -> Bytes {
    Bytes::from(snap::raw::Encoder::new().compress_vec(&[]).unwrap())
}

/// A Loki sink served over TLS (`alpn` offered) or plain HTTP, recording each request's
/// HTTP version.
pub(super) struct TestLoki {
    pub(super) addr: SocketAddr,
    pub(super) sink: LokiSink,
    versions: Arc<Mutex<Vec<http::Version>>>,
}

impl TestLoki {
    pub(super) async fn start(alpn: Option<&[&[u8]]>) -> TestLoki {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = LokiSink::new();
        let versions = Arc::new(Mutex::new(Vec::new()));
        let acceptor = alpn.map(|alpn| {
            let certs = vec![CertificateDer::from_pem_slice(SERVER_PEM.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (router, seen) = (sink.router(), versions.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (router, seen, acceptor) = (router.clone(), seen.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            seen.lock().unwrap().push(req.version());
                            let mut router = router.clone();
                            async move { tower::Service::call(&mut router, req).await }
                        },
                    );
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // A refused handshake ends the connection; the client's error is the test.
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => Ok(()),
                        },
                        None => builder.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
            }
        });
        TestLoki {
            addr,
            sink,
            versions,
        }
    }

    pub(super) fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}{PUSH_PATH}", self.addr.port())
    }

    pub(super) fn versions(&self) -> Vec<http::Version> {
        self.versions.lock().unwrap().clone()
    }
}
