//! The tailer: one actor per container following `pods/log` (SPEC §5).
//!
//! The actor ([`tailer`]) owns the read loop (`stream`, with its performers `decide` and
//! `send`), a thin async shell that performs what the pure state machine [`machine`] decides (reconnect, rotate, restart, drain, finish: §5.4–§5.6,
//! table-tested) and drives plain, tested pieces: [`line`](mod@line) (splitting and timestamps,
//! §5.2), [`pending`] (lines through the cursor into the chunk being filled), [`crate::cursor`]
//! (exactly-once resume, §5.3, and the acknowledged position, §4.4), [`request`] (request
//! parameters, §5.1), [`termination`] (what the container's state means, §5.4–5.5), [`backoff`]
//! (reconnect delays) and [`error`] (why a stream failed).
pub mod backoff;
mod decide;
pub mod error;
#[doc(hidden)]
pub mod fault;
pub mod line;
pub mod machine;
pub mod pending;
pub mod request;
mod send;
pub mod status;
mod stream;
pub mod tailer;
pub mod termination;
mod watches;

pub use tailer::{Drain, Stop, Tailer, TailerArgs, TailerFinished, UpdateClient, UpdateTarget};
