//! Networking shared by the Kubernetes client and the receivers: how a connection reaches its
//! server ([`proxy`]), TLS of our own clients ([`tls`]) and OAuth2 tokens ([`oauth2`]).

pub mod oauth2;
pub mod proxy;
pub mod tls;
