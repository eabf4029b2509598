//! Networking shared by the Kubernetes client and the receivers: how a connection reaches its
//! server ([`proxy`]) and the headers configured for it ([`headers`]).

pub mod headers;
pub mod proxy;
