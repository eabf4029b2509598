//! The forwarder actor: fans chunks out to every receiver queue (SPEC §2, §4.4).

use crate::chunk::Chunk;

/// Tailer → forwarder: one chunk; the send resolves once every receiver queue accepted it
/// (or dropped it by `on_full = "drop"`), which is how a full queue pushes back to a stream.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct Forward(pub Chunk);
