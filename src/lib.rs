//! kube-log-relay: tails Kubernetes container logs through the API server and pushes them to
//! Grafana Loki, exactly once.
//!
//! # A tour (SPEC §2)
//!
//! Data flows one way through actix actors, each a thin shell over plain, tested logic:
//!
//! - [`discovery`] watches pods (kube-runtime), builds the `__meta_kubernetes_*` labels, applies
//!   the `[[relabel]]` rules ([`discovery::relabel`]) and sends *complete* [`target::TargetSet`]s.
//! - [`registry`] diffs each set against the running tailers by [`target::TargetId`]: it starts,
//!   drains, or relabels in place.
//! - [`tail`] runs one tailer per container: it follows `pods/log`, splits lines
//!   ([`tail::line`]), keeps the exactly-once [`cursor`], reconnects and decides termination.
//!   It sends [`chunk::Chunk`]s and awaits each send, so a full queue pushes back to the stream.
//! - [`forward`] fans each chunk out to every receiver's bounded queue and routes
//!   acknowledgements back to the tailers when every receiver is done with a chunk.
//! - [`receiver`] batches per tenant, encodes Loki's protobuf+snappy push and applies the retry
//!   policy; one failing receiver never delays another unless `on_full = "block"` says so.
//!
//! - [`positions`] keeps each target's *acknowledged* cursor (SPEC §4.4): chunks carry an
//!   acknowledgement back to their target's tracker ([`cursor::TargetAcks`]), which moves the
//!   acknowledged position only past lines every receiver finished with; the positions table
//!   collects it from the trackers, and the file and ConfigMap backends make restarts exact.
//! - [`cluster`] (when `[clustering]` is on) sits between discovery and the registry: replicas
//!   keep Leases, own targets by rendezvous hashing and hand them over through the positions
//!   ConfigMaps, so no target is tailed twice or left behind.
//!
//! Leaves that everyone may use and that use nothing of ours above them: [`config`] (TOML,
//! validated in one pass), [`telemetry`] (every metric, declared once), [`cursor`] (the
//! exactly-once data shared by `tail` and `positions`), [`replica`] (who this replica is), [`target`]
//! and [`chunk`] (the data that flows). Around the flow: [`kube`] (the API client), [`net`] (proxies, TLS and OAuth2 tokens
//! shared by the API client and the receivers) and [`sim`] (the Kubernetes and Loki
//! look-alike that tests, benchmarks and the demo run against). On top, the wiring: [`app`]
//! builds the actor system and shuts it down in order on the napping main thread of [`runtime`], [`reload`] says what a new configuration
//! changes, and [`server`] renders metrics and status pages (it never counts).
#![forbid(unsafe_code)]

pub mod app;
pub mod chunk;
pub mod cluster;
pub mod config;
pub mod cursor;
pub mod demo;
pub mod discovery;
pub mod forward;
pub mod kube;
pub mod logging;
pub mod logproto;
pub mod net;
pub mod positions;
pub mod receiver;
pub mod registry;
pub mod reload;
pub mod replica;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod tail;
pub mod target;
pub mod telemetry;
