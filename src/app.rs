//! Wiring: builds the actor system from a validated configuration and tears it down in order.
//!
//! Start order follows the data flow backwards (receivers → forwarder → registry → discovery) so
//! nothing is sent to an actor that does not exist yet; shutdown follows it forwards: discovery
//! stops, tailers stop reading, receivers flush within `[shutdown] timeout` (SPEC §2, §3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::watch;

use crate::config::Config;
use crate::discovery::{self, Discovery, DiscoveryArgs};
use crate::forward::{Forwarder, Shutdown};
use crate::kube::KubeClientError;
use crate::positions::PositionsTable;
use crate::positions::sync::{self, Backend, PositionsError};
use crate::receiver::{self, ReceiverError, ReceiverHandle};
use crate::registry::{Registry, RegistryArgs, StopAll};
use crate::server::{self, ServerError, ServerState, metrics};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] KubeClientError),
    #[error("receiver: {0}")]
    Receiver(#[from] ReceiverError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("positions: {0}")]
    Positions(#[from] PositionsError),
}

/// A running relay.
pub struct Relay {
    discovery: Addr<Discovery>,
    registry: Addr<Registry>,
    forwarder: Addr<Forwarder>,
    http: SocketAddr,
    config: Arc<Config>,
    positions: Arc<PositionsTable>,
    /// Stops the positions sync task, which then writes once more.
    stop_sync: watch::Sender<bool>,
    sync_task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts every actor and the HTTP server; must run inside an actix `System`.
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        let config = Arc::new(config);
        let metrics = metrics::install();
        let listener = server::bind(&config.server.listen).await?;
        let client = crate::kube::build_client(&config.kubernetes).await?;
        // Positions first: a corrupt file must stop the start, before anything is read.
        let backend = Backend::from_config(&config.positions)?;
        let positions = Arc::new(backend.load()?);
        if !positions.is_empty() {
            tracing::info!(targets = positions.len(), "loaded stored positions");
        }
        let (stop_sync, stop_rx) = watch::channel(false);
        let sync_task = tokio::spawn(sync::run(
            positions.clone(),
            backend,
            config.positions.clone(),
            stop_rx,
        ));

        let receivers = start_receivers(&config)?;
        let forwarder = Forwarder::new(receivers.clone()).start();
        let registry = Registry::new(RegistryArgs {
            client: client.clone(),
            forwarder: forwarder.clone().recipient(),
            config: Arc::new(config.tail.clone()),
            positions: positions.clone(),
        })
        .start();
        let discovery = discovery::start(DiscoveryArgs {
            client: Some(client),
            config: config.discovery.clone(),
            rules: Arc::new(config.relabel.clone()),
            statics: config.targets.clone(),
            registry: registry.clone().recipient(),
        });
        let http = server::spawn(
            listener,
            ServerState {
                registry: registry.clone(),
                forwarder: forwarder.clone(),
                discovery: discovery.clone(),
                metrics,
                live: server::Live::new(config.clone(), receivers),
            },
        );
        tracing::info!(listen = %http, receivers = config.loki.len() + usize::from(config.stdout.is_some()), "relay started");
        Ok(Relay {
            discovery,
            registry,
            forwarder,
            http,
            config,
            positions,
            stop_sync,
            sync_task,
        })
    }

    /// The address the HTTP endpoints listen on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The positions table (acknowledged positions of every target).
    pub fn positions(&self) -> &Arc<PositionsTable> {
        &self.positions
    }

    /// The registry, for status queries.
    pub fn registry(&self) -> &Addr<Registry> {
        &self.registry
    }

    /// Stops reading, flushes every receiver within `[shutdown] timeout`, and returns.
    pub async fn shutdown(self) {
        let deadline = Instant::now() + self.config.shutdown.timeout;
        tracing::info!(timeout = ?self.config.shutdown.timeout, "shutting down: stopping tailers, flushing receivers");
        self.discovery.do_send(discovery::StopDiscovery);
        let _ = self.registry.send(StopAll).await;
        let _ = self.forwarder.send(Shutdown { deadline }).await;
        // Receivers are flushed: every acknowledgement that will come has come. Commit.
        let _ = self.stop_sync.send(true);
        if let Err(e) = self.sync_task.await {
            tracing::error!(error = %e, "the positions sync task failed");
        }
        tracing::info!("shutdown complete");
    }
}

fn start_receivers(config: &Config) -> Result<Vec<ReceiverHandle>, ReceiverError> {
    let mut receivers = Vec::new();
    for (name, loki) in &config.loki {
        receivers.push(receiver::start_loki(name.clone(), loki.clone())?);
    }
    if let Some(stdout) = &config.stdout {
        receivers.push(receiver::start_stdout(stdout.clone()));
    }
    Ok(receivers)
}

/// Runs the relay until SIGTERM or SIGINT, then shuts down gracefully; a second signal exits at
/// once.
pub async fn run_until_signal(config: Config) -> Result<(), StartError> {
    let relay = Relay::start(config).await?;
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    relay.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
