//! The relay's HTTP endpoints (SPEC §8.3): metrics, health, the debug API and the status page.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | every metric of [`metrics`] plus `process_*` ([`process`]), Prometheus text |
//! | `GET /-/healthy` | 200 while the registry, forwarder and discovery actors run |
//! | `GET /-/ready` | 200 once a configuration is loaded and the first discovery sync applied |
//! | `GET /api/v1/targets` | every target with its state and progress; `?namespace=`, `?state=` |
//! | `GET /api/v1/receivers` | every receiver's queue, last success and last error |
//! | `GET /api/v1/config` | the effective configuration, every secret redacted (the model's `Serialize`, [`crate::config::redact`]) |
//! | `GET /` | the status page ([`page`]): plain HTML, no JavaScript |
//!
//! What a reload replaces — the configuration and the receivers — lives in [`Live`], which the
//! handlers read on every request, so `POST /-/reload` (SPEC §8.1) only has to apply the new
//! configuration and call [`Live::replace`]; the route is added next to the others in
//! [`router`].

pub mod page;
pub mod process;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::Addr;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::cluster::coordinator::{ClusterStatus, StatusHandle};
use crate::kube::Pool;
use crate::target::TargetId;
use crate::telemetry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::discovery::Discovery;
use crate::forward::Forwarder;
use crate::receiver::{ReceiverHandle, ReceiverStatus};
use crate::registry::{GetTargets, Registry, TargetView, Targets};

/// How often histograms are folded into their buckets when nobody scrapes: without it, an
/// unscraped relay would keep every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What the handlers need.
#[derive(Clone)]
pub struct ServerState {
    pub registry: Addr<Registry>,
    pub forwarder: Addr<Forwarder>,
    pub discovery: Addr<Discovery>,
    pub metrics: PrometheusHandle,
    /// The configuration and receivers in force, replaced by a reload.
    pub live: Live,
    /// Where `POST /-/reload` goes; `None` refuses reloads.
    pub reload: Option<actix::Recipient<crate::reload::Reload>>,
    /// What this replica knows of its cluster; `None` without clustering.
    pub cluster: Option<StatusHandle>,
}

/// The cluster as `/api/v1/targets` and the status page show it (SPEC §7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterView {
    pub identity: String,
    pub namespace: String,
    /// Whether this replica's own Lease exists (it tails nothing without one).
    pub have_lease: bool,
    pub members: Vec<String>,
    /// Targets this replica holds (tails), and owns but waits for another to release.
    pub held: usize,
    pub waiting: usize,
    /// Every discovered target's owner, counted by member.
    pub targets_by_owner: std::collections::BTreeMap<String, usize>,
}

impl ClusterView {
    fn of(status: &ClusterStatus) -> ClusterView {
        let mut targets_by_owner = std::collections::BTreeMap::new();
        for owner in status.owners.values() {
            *targets_by_owner.entry(owner.clone()).or_default() += 1;
        }
        ClusterView {
            identity: status.identity.clone(),
            namespace: status.namespace.clone(),
            have_lease: status.have_lease,
            members: status.members.iter().cloned().collect(),
            held: status.held,
            waiting: status.waiting,
            targets_by_owner,
        }
    }
}

/// The cluster status now, and every target's owner.
fn cluster_now(
    state: &ServerState,
) -> Option<(ClusterView, std::collections::BTreeMap<TargetId, String>)> {
    let status = state
        .cluster
        .as_ref()?
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Some((ClusterView::of(&status), status.owners))
}

/// `/api/v1/targets`: the registry's targets, each with its owner when clustered.
#[derive(Serialize)]
struct TargetsView {
    synced: bool,
    targets: Vec<TargetView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
}

/// The configuration in force and the receivers built from it, shared with whoever reloads.
#[derive(Clone)]
pub struct Live(Arc<RwLock<Arc<Running>>>);

/// One generation of [`Live`].
pub struct Running {
    pub config: Arc<Config>,
    pub receivers: Vec<ReceiverHandle>,
    /// The Kubernetes client's connection pool.
    pub pool: Option<Pool>,
}

impl Running {
    /// A generation; registers its receivers' metrics at zero so they show before traffic.
    fn new(
        config: Arc<Config>,
        receivers: Vec<ReceiverHandle>,
        pool: Option<Pool>,
    ) -> Arc<Running> {
        for r in &receivers {
            telemetry::register_receiver(r.name());
        }
        Arc::new(Running {
            config,
            receivers,
            pool,
        })
    }
}

impl Live {
    /// The first generation: the configuration the relay started with and its receivers.
    pub fn new(config: Arc<Config>, receivers: Vec<ReceiverHandle>, pool: Option<Pool>) -> Live {
        Live(Arc::new(RwLock::new(Running::new(config, receivers, pool))))
    }

    /// Puts a new configuration, its receivers and its client's pool in force (reload).
    pub fn replace(&self, config: Arc<Config>, receivers: Vec<ReceiverHandle>, pool: Option<Pool>) {
        let next = Running::new(config, receivers, pool);
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// The generation in force now.
    pub fn current(&self) -> Arc<Running> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Binds `listen`, reporting an error that names the address.
pub async fn bind(listen: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            listen: listen.to_string(),
            source,
        })
}

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {listen} ([server] listen): {source}")]
    Bind {
        listen: String,
        #[source]
        source: std::io::Error,
    },
}

/// The router of every endpoint.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/reload", axum::routing::post(reload))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/receivers", get(receivers))
        .route("/api/v1/config", get(config))
        .with_state(state)
}

/// Serves the endpoints until the runtime stops; also keeps the histograms folded.
pub fn spawn(listener: TcpListener, state: ServerState) -> SocketAddr {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let handle = state.metrics.clone();
    let app = router(state);
    tokio::spawn(async move {
        let serve = axum::serve(listener, app);
        let upkeep = async {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        };
        tokio::select! {
            result = serve => if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server stopped");
            },
            () = upkeep => {}
        }
    });
    addr
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn registry_stopped() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "the registry actor stopped\n".into(),
    )
}

async fn metrics_text(State(state): State<ServerState>) -> Response {
    let mut body = state.metrics.render();
    if let Some(stats) = process::read() {
        process::render(&stats, &mut body);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Which of the long-lived actors stopped; empty when the process is healthy.
fn stopped_actors(state: &ServerState) -> Vec<&'static str> {
    let mut stopped = Vec::new();
    if !state.registry.connected() {
        stopped.push("registry");
    }
    if !state.forwarder.connected() {
        stopped.push("forwarder");
    }
    if !state.discovery.connected() {
        stopped.push("discovery");
    }
    stopped
}

async fn healthy(State(state): State<ServerState>) -> Response {
    let stopped = stopped_actors(&state);
    if stopped.is_empty() {
        text(StatusCode::OK, "OK\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stopped: {}\n", stopped.join(", ")),
        )
    }
}

/// `POST /-/reload`: 200 with what changed, 400 with every error of an invalid file (the
/// running configuration is kept), 500 when the new configuration could not be applied.
async fn reload(State(state): State<ServerState>) -> Response {
    let Some(reload) = state.reload.clone() else {
        return text(StatusCode::BAD_REQUEST, "reload is not available\n".into());
    };
    match reload.send(crate::reload::Reload).await {
        Ok(Ok(report)) => text(
            StatusCode::OK,
            format!("reloaded:\n{}\n", report.0.join("\n")),
        ),
        Ok(Err(e @ crate::reload::ReloadError::Apply(_))) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
        Ok(Err(e)) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay is shutting down\n".into(),
        ),
    }
}

async fn ready(State(state): State<ServerState>) -> Response {
    // A configuration is in force whenever the server runs: Live is built from it.
    match state.registry.send(GetTargets).await {
        Ok(t) if t.synced => text(StatusCode::OK, "ready\n".into()),
        Ok(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first discovery sync\n".into(),
        ),
        Err(_) => registry_stopped(),
    }
}

/// Filters of `/api/v1/targets` and the status page.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TargetFilter {
    /// Only targets of this namespace.
    pub namespace: Option<String>,
    /// Only targets in this state (`running`, `backoff`, …, `rejected`).
    pub state: Option<String>,
}

impl TargetFilter {
    /// An empty parameter (`?namespace=` as an HTML form sends it) means no filter.
    fn normalized(self) -> TargetFilter {
        let keep = |v: Option<String>| v.filter(|s| !s.is_empty());
        TargetFilter {
            namespace: keep(self.namespace),
            state: keep(self.state),
        }
    }

    /// Whether `target` passes the filter.
    pub fn matches(&self, target: &TargetView) -> bool {
        self.state.as_deref().is_none_or(|s| target.state == s)
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| namespace_of(target) == Some(ns))
    }
}

/// A target's namespace: its identity's, or for a rejected target whatever discovery knew.
pub fn namespace_of(target: &TargetView) -> Option<&str> {
    target
        .id
        .as_ref()
        .map(|id| id.namespace.as_str())
        .or_else(|| {
            target
                .discovered_labels
                .get("__meta_kubernetes_namespace")
                .or_else(|| target.discovered_labels.get("__pod_namespace__"))
                .map(String::as_str)
        })
}

async fn targets(State(state): State<ServerState>, Query(filter): Query<TargetFilter>) -> Response {
    let filter = filter.normalized();
    let Ok(mut t) = state.registry.send(GetTargets).await else {
        return registry_stopped();
    };
    t.targets.retain(|v| filter.matches(v));
    let cluster = cluster_now(&state).map(|(view, owners)| {
        for target in &mut t.targets {
            target.owner = target.id.as_ref().and_then(|id| owners.get(id).cloned());
        }
        view
    });
    axum::Json(TargetsView {
        synced: t.synced,
        targets: t.targets,
        cluster,
    })
    .into_response()
}

/// One receiver as `/api/v1/receivers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceiverView {
    pub name: String,
    /// False once the receiver's actor stopped (it then has no status).
    pub running: bool,
    pub status: Option<ReceiverStatus>,
}

async fn receiver_views(live: &Live) -> Vec<ReceiverView> {
    let running = live.current();
    join_all(running.receivers.iter().map(|r| async move {
        let status = r.status().await;
        ReceiverView {
            name: r.name().to_string(),
            running: status.is_some(),
            status,
        }
    }))
    .await
}

async fn receivers(State(state): State<ServerState>) -> Response {
    axum::Json(receiver_views(&state.live).await).into_response()
}

async fn config(State(state): State<ServerState>) -> Response {
    axum::Json(&state.live.current().config).into_response()
}

async fn status_page(
    State(state): State<ServerState>,
    Query(filter): Query<TargetFilter>,
) -> Response {
    let Ok(Targets { synced, targets }) = state.registry.send(GetTargets).await else {
        return registry_stopped();
    };
    let receivers = receiver_views(&state.live).await;
    let running = state.live.current();
    Html(page::render(&page::PageData {
        version: env!("CARGO_PKG_VERSION"),
        synced,
        stopped: stopped_actors(&state),
        targets: &targets,
        filter: &filter.normalized(),
        receivers: &receivers,
        clustering: &running.config.clustering,
        cluster: cluster_now(&state).map(|(view, _)| view).as_ref(),
        connections: &running.pool.as_ref().map(Pool::stats).unwrap_or_default(),
        now: jiff::Timestamp::now(),
    }))
    .into_response()
}
