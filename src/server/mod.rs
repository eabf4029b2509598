//! The relay's HTTP endpoints (SPEC §8.3): metrics, health and the debug API.

pub mod metrics;

use std::net::SocketAddr;

use actix::Addr;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::registry::{GetTargets, Registry};

/// What the handlers need.
#[derive(Clone)]
pub struct ServerState {
    pub registry: Addr<Registry>,
    pub metrics: PrometheusHandle,
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
        .route("/metrics", get(metrics_text))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/api/v1/targets", get(targets))
        .with_state(state)
}

/// Serves the endpoints until the task is dropped.
pub fn spawn(listener: TcpListener, state: ServerState) -> SocketAddr {
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    addr
}

async fn metrics_text(State(state): State<ServerState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthy(State(state): State<ServerState>) -> Response {
    if state.registry.connected() {
        (StatusCode::OK, "OK\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "registry stopped\n").into_response()
    }
}

async fn ready(State(state): State<ServerState>) -> Response {
    match state.registry.send(GetTargets).await {
        Ok(t) if t.synced => (StatusCode::OK, "ready\n").into_response(),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first discovery sync\n",
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry stopped\n").into_response(),
    }
}

/// Filters of `/api/v1/targets`.
#[derive(Debug, Default, Deserialize)]
struct TargetFilter {
    namespace: Option<String>,
    state: Option<String>,
}

async fn targets(State(state): State<ServerState>, Query(filter): Query<TargetFilter>) -> Response {
    let Ok(mut t) = state.registry.send(GetTargets).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "registry stopped\n").into_response();
    };
    t.targets.retain(|v| {
        filter.state.as_deref().is_none_or(|s| v.state == s)
            && filter.namespace.as_deref().is_none_or(|ns| {
                v.id.as_ref().map(|id| id.namespace.as_str()) == Some(ns)
                    || v.discovered_labels
                        .get("__meta_kubernetes_namespace")
                        .map(String::as_str)
                        == Some(ns)
            })
    });
    axum::Json(t).into_response()
}
