//! Networking shared by the Kubernetes client and the receivers: how a connection reaches its
//! server ([`proxy`]), the headers configured for it ([`headers`]), TLS of our own clients
//! ([`tls`]) and OAuth2 tokens ([`oauth2`]).

pub mod headers;
pub mod oauth2;
pub mod proxy;
pub mod tls;
