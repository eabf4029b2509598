//! Clustering on Kubernetes Leases (SPEC §7): which replica tails which target. Who this
//! replica is comes from [`crate::replica`], a leaf shared with the positions store.
//!
//! - [`lease`]: this replica's Lease and the member list (the unexpired Leases).
//! - [`rendezvous`]: the owner of a target among the members, pure and property-tested.
//! - [`handover`]: what a replica does with one target — run, claim, wait, release — pure.
//! - [`coordinator`]: between discovery and the registry, passes on the targets this replica
//!   holds and drives the hand-overs through the positions ConfigMaps
//!   ([`crate::positions::kubernetes`]).

pub mod coordinator;
pub mod handover;
pub mod lease;
pub mod rendezvous;
