//! The forwarder: fans chunks out to every receiver queue (SPEC §2, §4.4).
//!
//! Tailers hand chunks over through a [`Fanout`], which pushes into the receivers' queues
//! directly: a message to an actor for every chunk (an envelope, a reply channel, a parked
//! sender when its mailbox was full, a wake-up of the tailer for the reply) cost more than the
//! push itself when thousands of quiet streams each send a line (the bench's `fanout`). The
//! [`Forwarder`] actor owns *which* receivers there are: reloads ([`SetReceivers`]) and the
//! shutdown ([`Shutdown`]) change what every `Fanout` sees at its next chunk. It still takes
//! chunks as [`Forward`] messages, from anything that prefers messages.
//!
//! Each chunk is shared (`Arc`) by every receiver after [`Chunk::expect_finishers`] set how
//! many must finish it; the last receiver to finish acknowledges it to its tailer, which is
//! how a position moves only once *every* receiver is done (SPEC §4.4). Pushes to the queues
//! run concurrently: a `block` queue delays only the tailer whose send is waiting, and a
//! `drop` queue never waits at all.
//!
//! After [`Shutdown`], chunks are no longer fanned out and never acknowledged: with no receiver
//! left, acknowledging would move positions past lines nobody delivered.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::future::join_all;
use tokio::sync::watch;

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

/// Where chunks go now.
#[derive(Debug)]
struct Targets {
    receivers: Vec<ReceiverHandle>,
    /// After [`Shutdown`]: chunks are dropped unfinished.
    shut_down: bool,
}

/// Queues a chunk in every receiver of `targets`; resolves once each queue took it (or dropped
/// it by `on_full = "drop"`). After the shutdown the chunk is dropped unfinished: never
/// acknowledged, read again after the restart.
fn deliver(targets: &Targets, chunk: Chunk) -> impl Future<Output = ()> + 'static {
    let pushes: Vec<_> = if targets.shut_down {
        Vec::new()
    } else {
        let chunk = Arc::new(chunk);
        chunk.expect_finishers(targets.receivers.len());
        targets
            .receivers
            .iter()
            .map(|receiver| receiver.push(chunk.clone()))
            .collect()
    };
    async move {
        match <[_; 1]>::try_from(pushes) {
            // One receiver, the usual case: no joining.
            Ok([push]) => push.await,
            Err(pushes) => {
                join_all(pushes).await;
            }
        }
    }
}

/// A tailer's way to the receivers (cheap to clone): pushes each chunk into the queues of the
/// forwarder's current receivers itself, or sends it to an actor as a [`Forward`] message.
#[derive(Clone)]
pub struct Fanout(Way);

#[derive(Clone)]
enum Way {
    Direct(watch::Receiver<Arc<Targets>>),
    Actor(Recipient<Forward>),
}

impl Fanout {
    /// Sends a chunk and waits until every receiver queue took it (back-pressure). False when
    /// the forwarder is gone.
    pub async fn send(&self, chunk: Chunk) -> bool {
        match &self.0 {
            Way::Direct(targets) => {
                if targets.has_changed().is_err() {
                    return false;
                }
                let targets = targets.borrow().clone();
                deliver(&targets, chunk).await;
                true
            }
            Way::Actor(recipient) => recipient.send(Forward(chunk)).await.is_ok(),
        }
    }
}

impl From<Recipient<Forward>> for Fanout {
    fn from(recipient: Recipient<Forward>) -> Fanout {
        Fanout(Way::Actor(recipient))
    }
}

/// The forwarder actor.
pub struct Forwarder {
    targets: watch::Sender<Arc<Targets>>,
}

impl Forwarder {
    /// A forwarder to `receivers`.
    pub fn new(receivers: Vec<ReceiverHandle>) -> Forwarder {
        let (targets, _) = watch::channel(Arc::new(Targets {
            receivers,
            shut_down: false,
        }));
        Forwarder { targets }
    }

    /// A handle for tailers; it sends nothing once the forwarder stopped.
    pub fn fanout(&self) -> Fanout {
        Fanout(Way::Direct(self.targets.subscribe()))
    }
}

impl Actor for Forwarder {
    type Context = Context<Self>;
}

impl Handler<Forward> for Forwarder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Forward(chunk): Forward, _: &mut Context<Self>) -> Self::Result {
        Box::pin(deliver(&self.targets.borrow(), chunk))
    }
}

impl Handler<SetReceivers> for Forwarder {
    type Result = ();

    fn handle(&mut self, SetReceivers(receivers): SetReceivers, _: &mut Context<Self>) {
        self.targets.send_if_modified(|targets| {
            if targets.shut_down {
                return false;
            }
            *targets = Arc::new(Targets {
                receivers,
                shut_down: false,
            });
            true
        });
    }
}

impl Handler<Shutdown> for Forwarder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, Shutdown { deadline }: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let receivers = self
            .targets
            .send_replace(Arc::new(Targets {
                receivers: Vec::new(),
                shut_down: true,
            }))
            .receivers
            .clone();
        Box::pin(async move {
            join_all(receivers.into_iter().map(|r| r.shutdown(deadline))).await;
        })
    }
}

#[cfg(test)]
mod tests;
