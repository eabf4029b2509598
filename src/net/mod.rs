//! Networking shared by the Kubernetes client and the receivers: how a connection reaches its
//! server ([`proxy`]).

pub mod proxy;
