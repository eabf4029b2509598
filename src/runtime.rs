//! The relay's main thread: actix's system on a tokio current-thread runtime that naps for a
//! moment before it sleeps (SPEC §10, CPU per line at low rates).
//!
//! Every log stream that writes wakes the thread from `epoll_wait`: thousands of containers
//! writing a line now and then meant thousands of wake-ups a second, each a context switch that
//! cost more than the lines it brought (the bench's `fanout` and `steady` profiles: a third of
//! the relay's CPU in the scheduler). Before the runtime parks — only when it has nothing left
//! to run — it sleeps [`NAP`] first; whatever arrived meanwhile is then handled in one
//! wake-up. The thread wakes at most about `1 / NAP` times a second whatever the number of
//! streams, a busy relay (which never runs out of work) never naps, and a line waits at most
//! [`NAP`] longer, against a `batch_wait` of a second. This is interrupt moderation, as network
//! cards do it; tokio has no setting for it, so the park hook does it.
//!
//! Measured in the bench's `steady` (20,000 lines/s over 10 streams), CPU-s per million lines:
//! no nap 2.6, 5 ms 1.95, 10 ms 1.33–1.67, 25 ms 1.05; entry latency p99 in `latency` stayed at
//! 0.22 s from 10 to 25 ms.

use std::time::Duration;

/// How long the main thread waits for more work before it parks.
pub const NAP: Duration = Duration::from_millis(25);

/// A system runner for `run` and `demo`: actix's usual current-thread runtime, napping before
/// it parks.
pub fn system() -> std::io::Result<actix_rt::SystemRunner> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(|| std::thread::sleep(NAP))
        .build()?;
    Ok(actix_rt::System::with_tokio_rt(move || runtime))
}
