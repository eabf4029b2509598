//! Clustering on Kubernetes Leases (SPEC §7): which replica tails which target.
//!
//! - [`identity`]: who this replica is and which namespace its Leases and positions live in.
//! - [`rendezvous`]: the owner of a target among the members, pure and property-tested.

pub mod identity;
pub mod rendezvous;
