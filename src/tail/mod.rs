//! The tailer: one actor per container following `pods/log` (SPEC §5).
//!
//! The actor ([`tailer`]) is a thin shell around the read loop (`stream`), which drives plain,
//! tested pieces: [`line`](mod@line) (splitting and timestamps, §5.2), [`crate::cursor`]
//! (exactly-once resume, §5.3, and the acknowledged position, §4.4), [`request`] (request
//! parameters, §5.1), [`termination`] (what follows a stream's end, §5.4–5.5) and [`backoff`]
//! (reconnect delays).
pub mod backoff;
pub mod line;
pub mod request;
pub mod status;
mod stream;
pub mod tailer;
pub mod termination;

pub use tailer::{Drain, Stop, Tailer, TailerArgs, TailerFinished, UpdateClient, UpdateTarget};
