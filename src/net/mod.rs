//! Networking shared by the Kubernetes client and the receivers: how a connection reaches its
//! server ([`proxy`]), the headers configured for it ([`headers`]), TLS of our own clients
//! ([`tls`]), OAuth2 tokens ([`oauth2`]) and read pacing for followed logs ([`pace`]).

pub mod headers;
pub mod oauth2;
pub mod pace;
pub mod proxy;
pub mod tls;
