//! What a read loop waits on besides its stream's bytes (SPEC §5.4, §5.6, §4.1 reloads): a
//! drain request, a new client, the machine's deadline — kept registered from one wait to the
//! next, and cheap to look at while nothing changed.
//!
//! A read loop is woken for every frame its stream receives and waits again at once; each wait
//! looks at all three. A `watch::Receiver::changed()` future locks its channel's waiter list
//! each time it is polled, and the client's channel is shared by every tailer: at 5,000 quiet
//! streams those polls were a twentieth of the relay's CPU. [`Changes`] polls the registered
//! future once, to register, and afterwards only reads the channel's version (an atomic load)
//! until it moved. Fresh futures and a fresh timer for every wait, before that, registered and
//! unregistered all three each time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;
use tokio::time::Instant;

/// The changes of a watch channel, seen through one receiver.
pub(super) struct Changes<T> {
    rx: watch::Receiver<T>,
    /// A wait for the next change on a clone of `rx`, and the waker it was last polled with: it
    /// stays registered with the channel until the channel changes, and is polled again only
    /// by another waker.
    registered: Option<(Wait, Waker)>,
}

/// A `changed()` future of a clone of the receiver.
type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<T: Send + Sync + 'static> Changes<T> {
    /// Changes after what `rx` has seen.
    pub(super) fn new(rx: &watch::Receiver<T>) -> Changes<T> {
        Changes {
            rx: rx.clone(),
            registered: None,
        }
    }

    /// The current value.
    pub(super) fn borrow(&self) -> watch::Ref<'_, T> {
        self.rx.borrow()
    }

    /// `Ready(Some(()))` once the value changed since the last change returned (which is then
    /// seen), `Ready(None)` while the sender is gone; otherwise `Pending`, registered to wake
    /// the task at the next change.
    pub(super) fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<()>> {
        loop {
            match self.rx.has_changed() {
                Ok(true) => {
                    self.rx.mark_unchanged();
                    self.registered = None;
                    return Poll::Ready(Some(()));
                }
                Ok(false) => {}
                Err(_closed) => {
                    self.registered = None;
                    return Poll::Ready(None);
                }
            }
            if let Some((_, waker)) = &self.registered
                && waker.will_wake(cx.waker())
            {
                // Still registered, for this task.
                return Poll::Pending;
            }
            let mut wait = match self.registered.take() {
                Some((wait, _other_waker)) => wait,
                None => {
                    let mut rx = self.rx.clone();
                    Box::pin(async move {
                        let _ = rx.changed().await;
                    })
                }
            };
            if wait.as_mut().poll(cx).is_pending() {
                self.registered = Some((wait, cx.waker().clone()));
                return Poll::Pending;
            }
            // Changed (or closed) between the look and the registration: look again.
        }
    }

    /// [`Changes::poll_change`] as a future.
    pub(super) fn change(&mut self) -> impl Future<Output = Option<()>> + '_ {
        std::future::poll_fn(|cx| self.poll_change(cx))
    }
}

/// A read loop's drain flag, client and deadline.
pub(super) struct Watches {
    /// The drain flag (set by the tailer actor; gone when the actor is).
    pub(super) drain: Changes<bool>,
    /// The API client (a reload replaces it).
    pub(super) client: Changes<kube::Client>,
    /// The machine's deadline, armed at `armed`.
    pub(super) timer: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Watches {
    pub(super) fn new(
        drain: &watch::Receiver<bool>,
        client: &watch::Receiver<kube::Client>,
    ) -> Watches {
        Watches {
            drain: Changes::new(drain),
            client: Changes::new(client),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Arms the timer for `deadline` if it moved.
    pub(super) fn arm(&mut self, deadline: Option<Instant>) {
        if deadline != self.armed
            && let Some(at) = deadline
        {
            self.timer.as_mut().reset(at);
        }
        self.armed = deadline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn each_change_is_seen_once_and_a_closed_channel_says_so() {
        let (tx, rx) = watch::channel(0u32);
        let mut changes = Changes::new(&rx);
        assert_eq!(changes.change().now_or_never(), None, "nothing changed yet");
        tx.send(1).unwrap();
        assert_eq!(changes.change().now_or_never(), Some(Some(())));
        assert_eq!(*changes.borrow(), 1);
        assert_eq!(changes.change().now_or_never(), None, "seen");
        // Two changes before a look are one change, with the newest value.
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        assert_eq!(changes.change().now_or_never(), Some(Some(())));
        assert_eq!(*changes.borrow(), 3);
        drop(tx);
        assert_eq!(changes.change().now_or_never(), Some(None));
    }

    #[tokio::test]
    async fn a_waiting_task_is_woken_by_a_change_whoever_polled_before() {
        let (tx, rx) = watch::channel(false);
        let mut changes = Changes::new(&rx);
        let waiter = tokio::spawn(async move {
            // Polled with another waker first (registered for nobody), then many times by
            // this task while nothing changes (a busy stream's other wake-ups).
            assert!(changes.change().now_or_never().is_none());
            for _ in 0..100 {
                assert!(futures::poll!(changes.change()).is_pending());
                tokio::task::yield_now().await;
            }
            changes.change().await;
            *changes.borrow()
        });
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        tx.send(true).unwrap();
        assert!(waiter.await.unwrap());
    }
}
