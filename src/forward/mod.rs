//! The forwarder actor: fans chunks out to every receiver queue (SPEC §2, §4.4).
//!
//! Each chunk is shared (`Arc`) by every receiver after [`Chunk::expect_finishers`] set how
//! many must finish it; the last receiver to finish acknowledges it to its tailer, which is
//! how a position moves only once *every* receiver is done (SPEC §4.4). Pushes to the queues
//! run concurrently: a `block` queue delays only the tailer whose send is waiting, and a
//! `drop` queue never waits at all.
//!
//! After [`Shutdown`], chunks are no longer fanned out and never acknowledged: with no receiver
//! left, acknowledging would move positions past lines nobody delivered.

use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;
use std::sync::Arc;

use crate::chunk::Chunk;
use crate::receiver::ReceiverHandle;

/// Tailer → forwarder: one chunk; the send resolves once every receiver queue accepted it
/// (or dropped it by `on_full = "drop"`), which is how a full queue pushes back to a stream.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct Forward(pub Chunk);

/// Replaces the set of receivers (reload). Receivers left out are not stopped here: whoever
/// removed them shuts them down, so chunks already queued there are still sent.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct SetReceivers(pub Vec<ReceiverHandle>);

/// Stops fanning out and shuts every receiver down, flushing until `deadline`; resolves when
/// all of them are done.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub deadline: Instant,
}

/// The forwarder actor.
pub struct Forwarder {
    receivers: Vec<ReceiverHandle>,
    shut_down: bool,
}

impl Forwarder {
    /// A forwarder to `receivers`.
    pub fn new(receivers: Vec<ReceiverHandle>) -> Forwarder {
        Forwarder {
            receivers,
            shut_down: false,
        }
    }
}

impl Actor for Forwarder {
    type Context = Context<Self>;
}

impl Handler<Forward> for Forwarder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Forward(chunk): Forward, _: &mut Context<Self>) -> Self::Result {
        if self.shut_down {
            // Dropped unfinished: never acknowledged, read again after the restart.
            return Box::pin(async {});
        }
        let chunk = Arc::new(chunk);
        chunk.expect_finishers(self.receivers.len());
        let pushes: Vec<_> = self
            .receivers
            .iter()
            .map(|receiver| receiver.push(chunk.clone()))
            .collect();
        Box::pin(async move {
            join_all(pushes).await;
        })
    }
}

impl Handler<SetReceivers> for Forwarder {
    type Result = ();

    fn handle(&mut self, SetReceivers(receivers): SetReceivers, _: &mut Context<Self>) {
        if !self.shut_down {
            self.receivers = receivers;
        }
    }
}

impl Handler<Shutdown> for Forwarder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Shutdown { deadline }: Shutdown, _: &mut Context<Self>) -> Self::Result {
        self.shut_down = true;
        let receivers = std::mem::take(&mut self.receivers);
        Box::pin(async move {
            join_all(receivers.into_iter().map(|r| r.shutdown(deadline))).await;
        })
    }
}

#[cfg(test)]
mod tests;
