//! The simulator's own counters and control paths (SPEC §8.5, §10), for tests and the benchmark:
//! `GET /sim/stats` (JSON [`SimStats`]) and `POST /sim/kill-connection[?id=N]` (closes connection
//! N, by default the one with the most open streams; answers the connection as it was).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::api::ApiError;
use super::auth::AuthState;
use super::connections::{ConnectionStats, Connections};

/// Everything the simulator counts about its clients.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimStats {
    /// Whether the simulator serves HTTPS.
    pub tls: bool,
    /// The SETTINGS_MAX_CONCURRENT_STREAMS advertised on HTTP/2 connections.
    pub max_concurrent_streams: u32,
    /// Connections accepted since start (over TLS: handshakes completed).
    pub connections_opened: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// TLS handshakes that failed.
    pub handshake_failures: u64,
    /// Requests (streams) open now, over all connections.
    pub streams_open: u64,
    /// Requests since start.
    pub streams_total: u64,
    /// The most requests ever open at once on one connection.
    pub max_streams_per_connection: u64,
    /// Requests to the OAuth2 token endpoint.
    pub token_fetches: u64,
    /// Tokens it issued.
    pub tokens_issued: u64,
    /// API requests refused with 401.
    pub auth_rejections: u64,
    /// Of those, with an unknown or expired bearer token.
    pub rejected_tokens: u64,
    /// Every open connection, by id.
    pub connections: Vec<ConnectionStats>,
}

/// What the control paths read and act on.
#[derive(Clone)]
pub(super) struct Control {
    pub tls: bool,
    pub max_concurrent_streams: u32,
    pub connections: Arc<Connections>,
    pub auth: Arc<AuthState>,
}

impl Control {
    /// The counters now.
    pub fn stats(&self) -> SimStats {
        let connections = self.connections.list();
        SimStats {
            tls: self.tls,
            max_concurrent_streams: self.max_concurrent_streams,
            connections_opened: self.connections.opened(),
            connections_open: connections.len() as u64,
            handshake_failures: self.connections.handshake_failures(),
            streams_open: connections.iter().map(|c| c.open_streams).sum(),
            streams_total: self.connections.streams_total(),
            max_streams_per_connection: self.connections.max_streams_on_one(),
            token_fetches: self.auth.issuer.fetches(),
            tokens_issued: self.auth.issuer.issued(),
            auth_rejections: self.auth.rejections(),
            rejected_tokens: self.auth.rejected_tokens(),
            connections,
        }
    }

    /// `/sim/stats` and `/sim/kill-connection`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/sim/stats", get(stats))
            .route("/sim/kill-connection", post(kill))
            .with_state(self)
    }
}

async fn stats(State(control): State<Control>) -> Response {
    axum::Json(control.stats()).into_response()
}

async fn kill(
    State(control): State<Control>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let killed = match q.get("id") {
        Some(id) => {
            let Ok(id) = id.parse::<u64>() else {
                return ApiError::bad_request(format!("invalid connection id {id:?}"))
                    .into_response();
            };
            let before = control.connections.list().into_iter().find(|c| c.id == id);
            before.filter(|_| control.connections.kill(id))
        }
        None => control.connections.kill_busiest(),
    };
    match killed {
        Some(connection) => axum::Json(connection).into_response(),
        None => ApiError::not_found("no such open connection").into_response(),
    }
}
