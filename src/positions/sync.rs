//! The sync task: writes the positions table every `sync_period` and once more at shutdown,
//! collects vanished targets' positions after `gc_after`, and publishes the lag metric.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tokio::sync::watch;

use super::kubernetes::{KubeStore, KubeStoreError};
use super::{PositionsTable, file};
use crate::config::{PositionsBackend, PositionsConfig};
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

    /// Writes the table if it changed; counts writes and errors.
    pub async fn sync(&self, table: &PositionsTable) {
        if let Backend::Kubernetes(store) = self {
            let Some(entries) = table.take_dirty() else {
                return;
            };
            match store.save(&entries).await {
                Ok(learned) => {
                    telemetry::position_write();
                    table.absorb(learned);
                }
                Err(e) => {
                    table.mark_dirty();
                    telemetry::position_write_error();
                    tracing::error!(error = %e, "positions not saved; retrying at the next sync");
                }
            }
            return;
        }
        let Backend::File(path) = self else {
            // Nothing to write, but keep the table from reporting stale changes.
            let _ = table.take_dirty();
            return;
        };
        let Some(entries) = table.take_dirty() else {
            return;
        };
        match file::save(path, &entries) {
            Ok(()) => telemetry::position_write(),
            Err(e) => {
                table.mark_dirty();
                telemetry::position_write_error();
                tracing::error!(error = %e, "positions not saved; retrying at the next sync");
            }
        }
    }
}

/// Runs until `stop` turns true: every `sync_period`, GC, lag metric and a write; then a final
/// write. Returns when the final write is done.
pub async fn run(
    table: Arc<PositionsTable>,
    backend: Backend,
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
        backend.sync(&table).await;
    }
    backend.sync(&table).await;
}
