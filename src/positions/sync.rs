//! The sync task: writes the positions table every `sync_period` and once more at shutdown,
//! collects vanished targets' positions after `gc_after`, and publishes the lag metric.
//!
//! The task runs on the actors' thread; each file write runs on a blocking thread, one at a
//! time; the kubernetes backend's writes are API requests, awaited in turn.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;

use super::kubernetes::{KubeStore, KubeStoreError};
use super::{PositionsTable, Stored, file};
use crate::config::{PositionsBackend, PositionsConfig};
use crate::target::TargetId;
use crate::telemetry;

/// Where the table is written.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Nothing persisted (no `[positions]` table).
    Memory,
    File(PathBuf),
    /// ConfigMaps in the relay's namespace (SPEC §7).
    Kubernetes(Arc<KubeStore>),
}

/// Why positions cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PositionsError {
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    Kubernetes(#[from] KubeStoreError),
    #[error(
        "positions.backend = \"kubernetes\" needs the Kubernetes client: use Backend::Kubernetes"
    )]
    KubernetesBackend,
}

impl Backend {
    /// The backend of a configuration.
    pub fn from_config(config: &PositionsConfig) -> Result<Backend, PositionsError> {
        match &config.backend {
            PositionsBackend::Memory => Ok(Backend::Memory),
            PositionsBackend::File(path) => Ok(Backend::File(path.clone())),
            PositionsBackend::Kubernetes => Err(PositionsError::KubernetesBackend),
        }
    }

    /// Loads the stored positions into a new table.
    pub async fn load(&self) -> Result<PositionsTable, PositionsError> {
        Ok(match self {
            Backend::Memory => PositionsTable::default(),
            Backend::File(path) => PositionsTable::new(file::load(path)?),
            Backend::Kubernetes(store) => PositionsTable::new(store.load().await?.positions),
        })
    }

    /// Writes the table now if it changed (what the sync task does every `sync_period`).
    pub async fn sync(&self, table: &PositionsTable) {
        write(table, &self.sink()).await;
    }

    /// Where writes go.
    fn sink(&self) -> Sink {
        match self {
            Backend::Memory => Sink::None,
            Backend::File(path) => Sink::Blocking(Arc::new(FileStore(path.clone()))),
            Backend::Kubernetes(store) => Sink::Kubernetes(store.clone()),
        }
    }
}

/// How the sync task writes.
enum Sink {
    /// Nothing persisted.
    None,
    /// A [`Store`] called on a blocking thread.
    Blocking(Arc<dyn Store>),
    /// ConfigMaps, written with API requests (what other replicas wrote meanwhile comes back
    /// and is absorbed into the table).
    Kubernetes(Arc<KubeStore>),
}

/// Persists a whole table. Called on a blocking thread, one call at a time.
pub trait Store: Send + Sync + 'static {
    /// Replaces what is stored with `entries`.
    fn save(&self, entries: &BTreeMap<TargetId, Stored>) -> Result<(), PositionsError>;
}

/// The `file` backend as a [`Store`].
struct FileStore(PathBuf);

impl Store for FileStore {
    fn save(&self, entries: &BTreeMap<TargetId, Stored>) -> Result<(), PositionsError> {
        Ok(file::save(&self.0, entries)?)
    }
}

/// Runs until `stop` turns true: every `sync_period`, GC, lag metric and a write; then a final
/// write. Returns when the final write is done.
pub async fn run(
    table: Arc<PositionsTable>,
    backend: Backend,
    config: PositionsConfig,
    stop: watch::Receiver<bool>,
) {
    run_with(table, backend.sink(), config, stop).await
}

/// [`run`] writing through `sink`.
async fn run_with(
    table: Arc<PositionsTable>,
    sink: Sink,
    config: PositionsConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.sync_period.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let removed = table.gc(Timestamp::now(), config.gc_after);
        if removed > 0 {
            tracing::info!(
                removed,
                "forgot the positions of targets gone for longer than gc_after"
            );
        }
        telemetry::positions_lag(table.lag(Instant::now()));
        write(&table, &sink).await;
    }
    write(&table, &sink).await;
}

/// Writes the table if it changed; counts writes and errors.
///
/// This task shares its thread with the registry and every tailer, and serialising and
/// fsyncing thousands of positions takes long enough to stall every stream: the write runs on
/// a blocking thread. The loop awaits it before the next tick, so two writes never overlap (a
/// tick missed meanwhile is delayed, not queued); changes made during a write mark the table
/// dirty again for the next one.
async fn write(table: &PositionsTable, sink: &Sink) {
    if let Sink::None = sink {
        // Nothing to write: no copy of the table either.
        return;
    }
    let Some(entries) = table.take_dirty() else {
        return;
    };
    let error = match sink {
        Sink::None => return,
        Sink::Blocking(store) => {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.save(&entries)).await {
                Ok(Ok(())) => {
                    telemetry::position_write();
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the write was cancelled or panicked: {e}"),
            }
        }
        Sink::Kubernetes(store) => match store.save(&entries).await {
            Ok(learned) => {
                telemetry::position_write();
                table.absorb(learned);
                return;
            }
            Err(e) => e.to_string(),
        },
    };
    table.mark_dirty();
    telemetry::position_write_error();
    tracing::error!(error, "positions not saved; retrying at the next sync");
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;

    use super::*;
    use crate::cursor::{Cursor, Position};

    /// A store whose writes block until the test releases them (or, so that a test that fails
    /// does not hang, until they give up after 2 s and say so).
    struct Gate {
        release: Mutex<mpsc::Receiver<()>>,
        started: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
        gave_up: AtomicBool,
        last: Mutex<Option<BTreeMap<TargetId, Stored>>>,
    }

    impl Store for Gate {
        fn save(&self, entries: &BTreeMap<TargetId, Stored>) -> Result<(), PositionsError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let released = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(2));
            if released.is_err() {
                self.gave_up.store(true, Ordering::SeqCst);
            }
            *self.last.lock().unwrap() = Some(entries.clone());
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn id() -> TargetId {
        crate::chunk::test_support::target_id("p")
    }

    fn pos(skip: u64) -> Position {
        Position {
            container_id: None,
            cursor: Cursor { since: 1, skip },
        }
    }

    /// Polls `cond` on this runtime every 2 ms, failing after `limit` of wall-clock time.
    async fn wait(what: &str, limit: Duration, cond: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// On a single-threaded runtime like the actors': while a write is blocked, another task on
    /// that thread (a tailer) keeps running, and no second write starts however many sync
    /// periods pass; the changes made meanwhile are written next.
    #[test]
    fn a_blocked_write_stalls_neither_the_thread_nor_starts_a_second_write() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (release, gate_rx) = mpsc::channel();
            let gate = Arc::new(Gate {
                release: Mutex::new(gate_rx),
                started: AtomicUsize::new(0),
                running: AtomicUsize::new(0),
                max_running: AtomicUsize::new(0),
                gave_up: AtomicBool::new(false),
                last: Mutex::new(None),
            });
            let table = Arc::new(PositionsTable::default());
            table.update(&id(), pos(1));
            let config = PositionsConfig {
                sync_period: Duration::from_millis(10),
                ..PositionsConfig::default()
            };
            let (stop, stop_rx) = watch::channel(false);
            let store: Arc<dyn Store> = gate.clone();
            let sync = tokio::spawn(run_with(table.clone(), Sink::Blocking(store), config, stop_rx));
            // Stands for a tailer sharing the thread: counts every 5 ms.
            let ticks = Arc::new(AtomicUsize::new(0));
            let ticker = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ticks.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });

            let started = || gate.started.load(Ordering::SeqCst);
            wait("the first write starts", Duration::from_secs(5), || {
                started() == 1
            })
            .await;
            assert!(
                !gate.gave_up.load(Ordering::SeqCst),
                "the write blocked the runtime's thread until it gave up"
            );
            table.update(&id(), pos(2));
            let before = ticks.load(Ordering::SeqCst);
            wait(
                "the thread keeps running other tasks for 20 ticks (10 sync periods) while the write is blocked",
                Duration::from_secs(1),
                || ticks.load(Ordering::SeqCst) >= before + 20,
            )
            .await;
            assert_eq!(started(), 1, "a second write started while one was running");

            release.send(()).unwrap();
            wait("the second write starts", Duration::from_secs(5), || {
                started() == 2
            })
            .await;
            release.send(()).unwrap();
            stop.send(true).unwrap();
            sync.await.unwrap();
            ticker.abort();

            assert_eq!(started(), 2, "nothing changed after the second write");
            assert_eq!(gate.max_running.load(Ordering::SeqCst), 1);
            assert!(!gate.gave_up.load(Ordering::SeqCst));
            let last = gate.last.lock().unwrap().clone().unwrap();
            assert_eq!(last[&id()].position, pos(2), "the change made meanwhile");
        });
    }
}
