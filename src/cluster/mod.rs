//! Clustering on Kubernetes Leases (SPEC §7): which replica tails which target.
//!
//! - [`rendezvous`]: the owner of a target among the members, pure and property-tested.

pub mod rendezvous;
