//! Wiring: builds the actor system from a validated configuration, reloads it, and tears it
//! down in order.
//!
//! Start order follows the data flow backwards (receivers → forwarder → registry → discovery) so
//! nothing is sent to an actor that does not exist yet; shutdown follows it forwards: discovery
//! stops, tailers stop reading, receivers flush within `[shutdown] timeout` (SPEC §2, §3).
//!
//! Reload (SPEC §8.1) goes through the [`Controller`] actor, which serialises reloads from SIGHUP
//! and `POST /-/reload`: it reads and validates the file, compares it with the configuration in
//! force ([`crate::reload::plan`]) and applies only the difference — see that module's table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use crate::cluster::coordinator::{self, ClusterStatus, CoordinatorArgs, Gate, StatusHandle};
use crate::cluster::handover::View;
use crate::cluster::lease;
use crate::config::{Config, PositionsBackend};
use crate::discovery::{self, Discovery, DiscoveryArgs, Reconfigure, Restart};
use crate::forward::{Forwarder, SetReceivers, Shutdown};
use crate::kube::KubeClientError;
use crate::positions::PositionsTable;
use crate::positions::kubernetes::KubeStore;
use crate::positions::sync::{self, Backend, PositionsError};
use crate::receiver::{self, ReceiverError, ReceiverHandle};
use crate::registry::{Registry, RegistryArgs, SetClient, SetTailConfig, StopAll};
use crate::reload::{self, ReceiverChange, Reload, ReloadError, ReloadReport, STDOUT};
use crate::replica::Identity;
use crate::server::{self, ServerError, ServerState};
use crate::target::SetTargets;
use crate::telemetry;

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
    controller: Addr<Controller>,
    live: server::Live,
    discovery: Addr<Discovery>,
    registry: Addr<Registry>,
    forwarder: Addr<Forwarder>,
    http: SocketAddr,
    positions: Arc<PositionsTable>,
    /// Stops the positions sync task, which then writes once more.
    stop_sync: watch::Sender<bool>,
    sync_task: tokio::task::JoinHandle<()>,
    cluster: Option<Cluster>,
    cluster_status: StatusHandle,
}

/// The clustering tasks of a replica (SPEC §7).
struct Cluster {
    gate: Addr<Gate>,
    store: Arc<KubeStore>,
    stop_coordinator: watch::Sender<bool>,
    coordinator: tokio::task::JoinHandle<()>,
    stop_lease: watch::Sender<bool>,
    lease: tokio::task::JoinHandle<()>,
}

/// Starts the Lease keeper and the coordinator; discovery's sets go to the returned gate.
fn start_cluster(
    config: &Config,
    client: &kube::Client,
    identity: Identity,
    store: Arc<KubeStore>,
    registry: Addr<Registry>,
    table: Arc<PositionsTable>,
    status: StatusHandle,
) -> Cluster {
    let c = &config.clustering;
    let (view_tx, view_rx) = watch::channel(View {
        me: identity.name.clone(),
        ..View::default()
    });
    let (stop_lease, stop_lease_rx) = watch::channel(false);
    let lease = tokio::spawn(lease::run(
        client.clone(),
        identity,
        c.clone(),
        view_tx,
        stop_lease_rx,
    ));
    let (gate, targets) = Gate::new();
    let (stop_coordinator, stop_rx) = watch::channel(false);
    let coordinator = tokio::spawn(coordinator::run(
        CoordinatorArgs {
            registry,
            store: store.clone(),
            table,
            view: view_rx,
            targets,
            poll: (c.renew_interval / 5).clamp(Duration::from_millis(200), Duration::from_secs(1)),
            release_timeout: config.shutdown.timeout.min(Duration::from_secs(10)),
            settle: c.renew_interval,
            status,
        },
        stop_rx,
    ));
    Cluster {
        gate: gate.start(),
        store,
        stop_coordinator,
        coordinator,
        stop_lease,
        lease,
    }
}

impl Relay {
    /// Starts every actor and the HTTP server; must run inside an actix `System`. Without a
    /// configuration file, reloads are refused.
    pub async fn start(config: Config) -> Result<Relay, StartError> {
        Relay::start_with(config, None).await
    }

    /// Like [`Relay::start`], remembering the file the configuration came from for reloads.
    pub async fn start_with(config: Config, path: Option<PathBuf>) -> Result<Relay, StartError> {
        let config = Arc::new(config);
        let metrics = telemetry::install();
        let listener = server::bind(&config.server.listen).await?;
        let api = crate::kube::build_api(&config.kubernetes).await?;
        let client = api.client.clone();
        // Positions first: a corrupt file must stop the start, before anything is read.
        let identity = Identity::resolve(&config.clustering);
        let backend = match &config.positions.backend {
            PositionsBackend::Kubernetes => {
                Backend::Kubernetes(Arc::new(KubeStore::new(client.clone(), identity.clone())))
            }
            _ => Backend::from_config(&config.positions)?,
        };
        let positions = Arc::new(backend.load().await?);
        if !positions.is_empty() {
            tracing::info!(targets = positions.len(), "loaded stored positions");
        }
        let (stop_sync, stop_rx) = watch::channel(false);
        let sync_task = tokio::spawn(sync::run(
            positions.clone(),
            backend.clone(),
            config.positions.clone(),
            stop_rx,
        ));

        let receivers = start_receivers(&config)?;
        let forwarder = Forwarder::new(receivers.clone());
        let fanout = forwarder.fanout();
        let forwarder = forwarder.start();
        let registry = Registry::new(RegistryArgs {
            client: client.clone(),
            forwarder: fanout,
            config: Arc::new(config.tail.clone()),
            positions: positions.clone(),
        })
        .start();
        let cluster_status = Arc::new(std::sync::Mutex::new(ClusterStatus {
            identity: identity.name.clone(),
            namespace: identity.namespace.clone(),
            ..ClusterStatus::default()
        }));
        let (sets, cluster) = match (&backend, config.clustering.enabled) {
            (Backend::Kubernetes(store), true) => {
                let cluster = start_cluster(
                    &config,
                    &client,
                    identity,
                    store.clone(),
                    registry.clone(),
                    positions.clone(),
                    cluster_status.clone(),
                );
                (cluster.gate.clone().recipient(), Some(cluster))
            }
            (_, true) => return Err(PositionsError::KubernetesBackend.into()),
            _ => (registry.clone().recipient(), None),
        };
        let discovery = discovery::start(discovery_args(&config, &client, sets.clone()));
        let live = server::Live::new(config.clone(), receivers.clone(), Some(api.pool.clone()));
        let controller = Controller {
            path,
            config: config.clone(),
            api,
            receivers: receivers
                .into_iter()
                .map(|r| (r.name().to_string(), r))
                .collect(),
            discovery: discovery.clone(),
            registry: registry.clone(),
            sets,
            forwarder: forwarder.clone(),
            live: live.clone(),
        }
        .start();
        telemetry::config_loaded(true);
        let http = server::spawn(
            listener,
            ServerState {
                registry: registry.clone(),
                forwarder: forwarder.clone(),
                discovery: discovery.clone(),
                metrics,
                live: live.clone(),
                reload: Some(controller.clone().recipient()),
                cluster: config.clustering.enabled.then(|| cluster_status.clone()),
            },
        );
        tracing::info!(listen = %http, receivers = config.loki.len() + usize::from(config.stdout.is_some()), "relay started");
        Ok(Relay {
            controller,
            live,
            discovery,
            registry,
            forwarder,
            http,
            positions,
            stop_sync,
            sync_task,
            cluster,
            cluster_status,
        })
    }

    /// What this replica knows of the cluster (identity, members, owners).
    pub fn cluster_status(&self) -> ClusterStatus {
        self.cluster_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

    /// Reloads the configuration file the relay started from (what SIGHUP does).
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        self.controller
            .send(Reload)
            .await
            .unwrap_or_else(|_| Err(ReloadError::Apply("the relay is shutting down".into())))
    }

    /// Stops reading, flushes every receiver within `[shutdown] timeout`, and returns.
    pub async fn shutdown(self) {
        // The timeout in force: a reload may have changed it.
        let timeout = self.live.current().config.shutdown.timeout;
        let deadline = deadline_after(timeout);
        tracing::info!(
            ?timeout,
            "shutting down: stopping tailers, flushing receivers"
        );
        self.discovery.do_send(discovery::StopDiscovery);
        let mut cluster = self.cluster;
        if let Some(c) = &mut cluster {
            // No more claims or releases: what this replica holds is released by the final
            // write below, and nothing the coordinator had in flight may publish after it.
            let _ = c.stop_coordinator.send(true);
            let _ = (&mut c.coordinator).await;
        }
        let _ = self.registry.send(StopAll).await;
        let _ = self.forwarder.send(Shutdown { deadline }).await;
        if let Some(c) = &cluster {
            // Every acknowledgement is in: the final write commits the cursors and releases
            // every target at once (SPEC §7). It must happen even when no cursor moved since
            // the last sync, or the ConfigMap would go on saying this replica holds its
            // targets and their new owners would wait for them until the Lease expired.
            c.store.set_held(Default::default());
            self.positions.mark_dirty();
        }
        // Receivers are flushed: every acknowledgement that will come has come. Commit.
        let _ = self.stop_sync.send(true);
        if let Err(e) = self.sync_task.await {
            tracing::error!(error = %e, "the positions sync task failed");
        }
        if let Some(c) = cluster {
            // Last: the others take over as soon as the Lease is gone.
            let _ = c.stop_lease.send(true);
            let _ = c.lease.await;
        }
        tracing::info!("shutdown complete");
    }
}

/// `timeout` from now, saturating: an `Instant` that cannot be represented becomes a year from
/// now, which no shutdown waits for (validation bounds the timeout far below that anyway).
fn deadline_after(timeout: std::time::Duration) -> Instant {
    const FAR: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

fn discovery_args(
    config: &Config,
    client: &kube::Client,
    sets: Recipient<SetTargets>,
) -> DiscoveryArgs {
    DiscoveryArgs {
        client: Some(client.clone()),
        config: config.discovery.clone(),
        rules: Arc::new(config.relabel.clone()),
        statics: config.targets.clone(),
        registry: sets,
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

/// Runs the relay until SIGTERM or SIGINT, reloading `path` on SIGHUP, then shuts down
/// gracefully; a second signal exits at once.
pub async fn run_until_signal(config: Config, path: PathBuf) -> Result<(), StartError> {
    use tokio::signal::unix::{SignalKind, signal};
    let relay = Relay::start_with(config, Some(path)).await?;
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                // The outcome is logged by the controller.
                let _ = relay.reload().await;
            }
        }
    }
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

/// Owns what a reload replaces: the configuration in force, the client and the receivers.
pub struct Controller {
    path: Option<PathBuf>,
    config: Arc<Config>,
    api: crate::kube::Api,
    /// By name; `[stdout]` is named `stdout`.
    receivers: BTreeMap<String, ReceiverHandle>,
    discovery: Addr<Discovery>,
    registry: Addr<Registry>,
    /// Where discovery's target sets go: the registry, or the cluster's gate.
    sets: Recipient<SetTargets>,
    forwarder: Addr<Forwarder>,
    live: server::Live,
}

impl Actor for Controller {
    type Context = Context<Self>;
}

/// What a successful reload puts in force.
struct Applied {
    config: Arc<Config>,
    api: crate::kube::Api,
    receivers: BTreeMap<String, ReceiverHandle>,
    report: ReloadReport,
}

impl Handler<Reload> for Controller {
    type Result = AtomicResponse<Self, Result<ReloadReport, ReloadError>>;

    fn handle(&mut self, _: Reload, _: &mut Context<Self>) -> Self::Result {
        let path = self.path.clone();
        let old = self.config.clone();
        let api = self.api.clone();
        let receivers = self.receivers.clone();
        let (discovery, registry, forwarder) = (
            self.discovery.clone(),
            self.registry.clone(),
            self.forwarder.clone(),
        );
        let sets = self.sets.clone();
        let work = async move {
            let path = path.ok_or(ReloadError::NoFile)?;
            let new = crate::config::load(&path).map_err(ReloadError::Invalid)?;
            apply(
                old,
                new,
                api,
                receivers,
                (discovery, sets),
                registry,
                forwarder,
            )
            .await
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |result, act, _| match result {
                Ok(applied) => {
                    act.config = applied.config.clone();
                    act.receivers = applied.receivers;
                    act.live.replace(
                        applied.config,
                        act.receivers.values().cloned().collect(),
                        Some(applied.api.pool.clone()),
                    );
                    act.api = applied.api;
                    telemetry::config_loaded(true);
                    tracing::info!(changes = ?applied.report.0, "configuration reloaded");
                    Ok(applied.report)
                }
                Err(e) => {
                    telemetry::config_loaded(false);
                    tracing::error!("reload refused, the running configuration is kept: {e}");
                    Err(e)
                }
            },
        )))
    }
}

/// Applies the difference between `old` and `new` (see [`crate::reload`]). Everything that can
/// fail (the client, new receivers) is built before anything running is touched.
async fn apply(
    old: Arc<Config>,
    new: Config,
    api: crate::kube::Api,
    mut receivers: BTreeMap<String, ReceiverHandle>,
    // Discovery, and where its sets go (the registry, or the cluster's gate).
    (discovery, sets): (Addr<Discovery>, Recipient<SetTargets>),
    registry: Addr<Registry>,
    forwarder: Addr<Forwarder>,
) -> Result<Applied, ReloadError> {
    let plan = reload::plan(&old, &new);
    let new = Arc::new(new);
    let mut report = Vec::new();
    if plan.is_empty() {
        return Ok(Applied {
            config: new,
            api,
            receivers,
            report: ReloadReport(vec!["no change".into()]),
        });
    }
    let api = if plan.kubernetes {
        crate::kube::build_api(&new.kubernetes)
            .await
            .map_err(|e| ReloadError::Apply(format!("kubernetes client: {e}")))?
    } else {
        api
    };
    let client = api.client.clone();
    // Build new and changed receivers first: a failure leaves everything as it was.
    let mut started: BTreeMap<String, ReceiverHandle> = BTreeMap::new();
    for change in &plan.receivers {
        let (ReceiverChange::Added(name) | ReceiverChange::Changed(name)) = change else {
            continue;
        };
        let built = if name == STDOUT && !new.loki.contains_key(name) {
            new.stdout
                .clone()
                .map(receiver::start_stdout)
                .ok_or_else(|| "not in the new configuration".to_string())
        } else {
            match new.loki.get(name) {
                Some(cfg) => {
                    receiver::start_loki(name.clone(), cfg.clone()).map_err(|e| e.to_string())
                }
                None => Err("not in the new configuration".to_string()),
            }
        };
        match built {
            Ok(handle) => {
                started.insert(name.clone(), handle);
            }
            Err(e) => {
                let deadline = Instant::now();
                for (_, h) in started {
                    h.shutdown(deadline).await;
                }
                return Err(ReloadError::Apply(format!("receiver {name}: {e}")));
            }
        }
    }
    // From here on nothing fails. Receivers: swap the set the forwarder fans out to, then let
    // the replaced ones drain what they hold within the shutdown timeout.
    let mut retired = Vec::new();
    for change in &plan.receivers {
        match change {
            ReceiverChange::Added(name) => report.push(format!("receiver {name} added")),
            ReceiverChange::Removed(name) => {
                report.push(format!("receiver {name} removed (draining)"));
                retired.extend(receivers.remove(name));
            }
            ReceiverChange::Changed(name) => {
                report.push(format!(
                    "receiver {name} rebuilt (the old one drains its queue)"
                ));
                retired.extend(receivers.remove(name));
            }
        }
    }
    receivers.extend(started);
    if !plan.receivers.is_empty() {
        let _ = forwarder
            .send(SetReceivers(receivers.values().cloned().collect()))
            .await;
        let deadline = deadline_after(new.shutdown.timeout);
        for old in retired {
            actix::spawn(old.retire(deadline));
        }
    }
    if plan.kubernetes {
        report.push("kubernetes client replaced: streams reopen from their cursors".into());
        let _ = registry.send(SetClient(client.clone())).await;
    }
    if plan.tail {
        report.push("[tail] applies to tailers started from now on".into());
        let _ = registry
            .send(SetTailConfig(Arc::new(new.tail.clone())))
            .await;
    }
    if plan.kubernetes || plan.discovery {
        report.push("discovery watches restarted".into());
        discovery.do_send(Restart(discovery_args(&new, &client, sets)));
    } else if plan.targets {
        report.push("relabel rules / static targets re-applied".into());
        discovery.do_send(Reconfigure {
            rules: Arc::new(new.relabel.clone()),
            statics: new.targets.clone(),
        });
    }
    if plan.shutdown {
        report.push("[shutdown] applies to the next shutdown".into());
    }
    if let Some(level) = &plan.log_level {
        // Validated with the file; the subscriber may still refuse, which changes nothing else.
        match crate::logging::set_level(level) {
            Ok(()) => report.push(format!("log level set to {level:?}")),
            Err(e) => report.push(format!("log level not changed: {e}")),
        }
    }
    for section in &plan.needs_restart {
        report.push(format!("[{section}] changed: applies after a restart"));
        tracing::warn!(
            section,
            "this section changed but only applies after a restart"
        );
    }
    Ok(Applied {
        config: new,
        api,
        receivers,
        report: ReloadReport(report),
    })
}
