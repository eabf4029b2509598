//! The simulator's Kubernetes API routes (SPEC §8.5): discovery, pods list/watch/get and
//! `pods/log`, answering the JSON the real API server answers, Status objects for errors included,
//! so `kube` and `kubectl` work against it unchanged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{BufMut, Bytes, BytesMut};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIResource, APIResourceList, APIVersions, ServerAddressByClientCIDR,
};
use serde_json::{Value, json};

use super::cluster::{Cluster, EventKind, LogOpenError, pod_field};
use super::logs::{LogOptions, LogParamError, log_body};
use super::selector::{FieldSelector, LabelSelector};

/// An error answered as the API server's `Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `BadRequest`, `Invalid`, `Expired`, `ServiceUnavailable`…
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details` (name and kind), when about one object.
    pub details: Option<(String, &'static str)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// `400 BadRequest` with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// `404 NotFound` with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(404, "NotFound", message)
    }

    /// `401 Unauthorized`, as the API server answers a request no authenticator accepted.
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    fn pod_not_found(name: &str) -> Self {
        ApiError {
            details: Some((name.to_string(), "pods")),
            ..ApiError::new(404, "NotFound", format!("pods \"{name}\" not found"))
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, kind)) = &self.details {
            status["details"] = json!({ "name": name, "kind": kind });
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, json_headers(), self.status().to_string()).into_response()
    }
}

impl From<LogParamError> for ApiError {
    fn from(e: LogParamError) -> Self {
        match e {
            LogParamError::BadRequest(m) => ApiError::new(400, "BadRequest", m),
            LogParamError::Invalid(m) => ApiError::new(422, "Invalid", m),
        }
    }
}

fn json_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "application/json")]
}

fn json_response(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (json_headers(), body).into_response(),
        Err(e) => ApiError::new(500, "InternalError", e.to_string()).into_response(),
    }
}

type Params = Query<HashMap<String, String>>;

/// The Kubernetes API routes over `cluster`.
pub fn router(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_v1))
        .route("/apis", get(apis))
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/namespaces", get(list_namespaces))
        .route("/api/v1/namespaces/{ns}", get(get_namespace))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node))
        .route("/api/v1/namespaces/{ns}/pods", get(list_namespace_pods))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(get_pod))
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .fallback(|| async {
            ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(cluster)
}

async fn version() -> Response {
    json_response(&k8s_openapi::apimachinery::pkg::version::Info {
        major: "1".into(),
        minor: "35".into(),
        git_version: "v1.35.0-kube-log-relay-sim".into(),
        git_commit: "0000000000000000000000000000000000000000".into(),
        git_tree_state: "clean".into(),
        build_date: "2026-01-01T00:00:00Z".into(),
        go_version: "go1.25.0".into(),
        compiler: "gc".into(),
        platform: "linux/amd64".into(),
        ..Default::default()
    })
}

async fn api_versions() -> Response {
    json_response(&APIVersions {
        versions: vec!["v1".into()],
        server_address_by_client_cidrs: vec![ServerAddressByClientCIDR {
            client_cidr: "0.0.0.0/0".into(),
            server_address: "127.0.0.1".into(),
        }],
    })
}

async fn api_v1() -> Response {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    json_response(&APIResourceList {
        group_version: "v1".into(),
        resources: vec![
            APIResource {
                name: "pods".into(),
                singular_name: "pod".into(),
                namespaced: true,
                kind: "Pod".into(),
                verbs: strings(&["get", "list", "watch"]),
                short_names: Some(strings(&["po"])),
                categories: Some(strings(&["all"])),
                ..Default::default()
            },
            APIResource {
                name: "namespaces".into(),
                singular_name: "namespace".into(),
                namespaced: false,
                kind: "Namespace".into(),
                verbs: strings(&["get", "list"]),
                short_names: Some(strings(&["ns"])),
                ..Default::default()
            },
            APIResource {
                name: "nodes".into(),
                singular_name: "node".into(),
                namespaced: false,
                kind: "Node".into(),
                verbs: strings(&["get", "list"]),
                short_names: Some(strings(&["no"])),
                ..Default::default()
            },
            APIResource {
                name: "configmaps".into(),
                singular_name: "configmap".into(),
                namespaced: true,
                kind: "ConfigMap".into(),
                verbs: strings(&["create", "delete", "get", "list", "update", "watch"]),
                short_names: Some(strings(&["cm"])),
                ..Default::default()
            },
            APIResource {
                name: "pods/log".into(),
                singular_name: String::new(),
                namespaced: true,
                kind: "Pod".into(),
                verbs: strings(&["get"]),
                ..Default::default()
            },
        ],
    })
}

async fn apis() -> Response {
    json_response(&json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [super::coordination::api_group()],
    }))
}

async fn list_all_pods(
    State(c): State<Arc<Cluster>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    pods(c, None, &headers, &q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_namespace_pods(
    State(c): State<Arc<Cluster>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    pods(c, Some(ns), &headers, &q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Selects pods by namespace, labelSelector and fieldSelector.
#[derive(Clone)]
struct PodFilter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl PodFilter {
    fn parse(namespace: Option<String>, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let bad = |e: super::selector::SelectorError| ApiError::new(400, "BadRequest", e.0);
        Ok(PodFilter {
            namespace,
            labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
                .map_err(bad)?,
            fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
                .map_err(bad)?,
        })
    }

    fn matches(&self, pod: &Pod) -> bool {
        let empty = Default::default();
        self.namespace
            .as_ref()
            .is_none_or(|ns| pod.metadata.namespace.as_ref() == Some(ns))
            && self
                .labels
                .matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
            && self.fields.matches(|f| pod_field(pod, f))
    }
}

fn is_true(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(
        q.get(key).map(String::as_str),
        Some("true" | "1" | "True" | "TRUE" | "t")
    )
}

async fn pods(
    cluster: Arc<Cluster>,
    namespace: Option<String>,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let filter = PodFilter::parse(namespace, q)?;
    if is_true(q, "watch") {
        return watch(cluster, filter, q);
    }
    let (rv, all) = cluster.list();
    let items: Vec<Arc<Pod>> = all.into_iter().filter(|p| filter.matches(p)).collect();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("as=Table") {
        return Ok(json_response(&pod_table(rv, &items, Timestamp::now())));
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct PodList<'a> {
        kind: &'static str,
        api_version: &'static str,
        metadata: Value,
        items: &'a [Arc<Pod>],
    }
    Ok(json_response(&PodList {
        kind: "PodList",
        api_version: "v1",
        metadata: json!({ "resourceVersion": rv.to_string() }),
        items: &items,
    }))
}

/// kubectl's short age: `45s`, `12m`, `3h`, `5d`.
fn short_age(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The `meta.k8s.io/v1 Table` kubectl asks for: NAME READY STATUS RESTARTS AGE.
fn pod_table(rv: u64, pods: &[Arc<Pod>], now: Timestamp) -> Value {
    let column = |name: &str, format: &str, description: &str| json!({ "name": name, "type": "string", "format": format, "description": description, "priority": 0 });
    let rows: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            let ready = statuses.iter().filter(|s| s.ready).count();
            let restarts: i32 = statuses.iter().map(|s| s.restart_count).sum();
            let waiting = statuses
                .iter()
                .find_map(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone());
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let status = if pod.metadata.deletion_timestamp.is_some() {
                "Terminating".to_string()
            } else {
                match (phase.as_str(), waiting) {
                    ("Succeeded", _) => "Completed".to_string(),
                    ("Failed", _) => "Error".to_string(),
                    (_, Some(reason)) => reason,
                    _ => phase,
                }
            };
            let age = pod.metadata.creation_timestamp.as_ref().map_or_else(
                || "<unknown>".to_string(),
                |t| short_age(now.as_second() - t.0.as_second()),
            );
            json!({
                "cells": [
                    pod.metadata.name,
                    format!("{ready}/{}", statuses.len()),
                    status,
                    restarts.to_string(),
                    age,
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": pod.metadata,
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": [
            column("Name", "name", "Name must be unique within a namespace."),
            column("Ready", "", "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "", "The aggregate status of the containers in this pod."),
            column("Restarts", "", "The number of times the containers in this pod have been restarted."),
            column("Age", "", "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        "rows": rows,
    })
}

fn watch_line(out: &mut BytesMut, kind: &str, object: &impl serde::Serialize) {
    #[derive(serde::Serialize)]
    struct Line<'a, T> {
        #[serde(rename = "type")]
        kind: &'a str,
        object: &'a T,
    }
    // Serializing plain data into memory cannot fail.
    let _ = serde_json::to_writer((&mut *out).writer(), &Line { kind, object });
    out.put_u8(b'\n');
}

struct WatchState {
    cluster: Arc<Cluster>,
    filter: PodFilter,
    cursor: u64,
    rv_changes: tokio::sync::watch::Receiver<u64>,
    bookmarks: Option<Duration>,
    next_bookmark: tokio::time::Instant,
    deadline: tokio::time::Instant,
    /// Initial ADDED events (watch without resourceVersion) or a terminal ERROR event.
    first: Option<Bytes>,
    ended: bool,
}

impl WatchState {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut out = BytesMut::new();
        let mut events = Vec::new();
        loop {
            if self.ended {
                return None;
            }
            self.rv_changes.borrow_and_update();
            events.clear();
            match self.cluster.events_after(self.cursor, &mut events) {
                Ok(()) => {}
                Err(expired) => {
                    self.ended = true;
                    let error = ApiError::new(410, "Expired", expired.to_string());
                    watch_line(&mut out, "ERROR", &error.status());
                    return Some(out.freeze());
                }
            }
            for event in &events {
                self.cursor = event.rv;
                let now = self.filter.matches(&event.pod);
                let before = event.before.as_ref().map(|b| self.filter.matches(b));
                let kind = match (event.kind, now, before) {
                    (EventKind::Added, true, _) => "ADDED",
                    (EventKind::Deleted, true, _) => "DELETED",
                    (EventKind::Modified, true, Some(true)) => "MODIFIED",
                    // Selector-filtered watches see a pod that starts or stops matching as added
                    // or deleted, like the API server's watch cache.
                    (EventKind::Modified, true, _) => "ADDED",
                    (EventKind::Modified, false, Some(true)) => "DELETED",
                    _ => continue,
                };
                watch_line(&mut out, kind, &*event.pod);
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            let bookmark_at = self.next_bookmark;
            let bookmarks = self.bookmarks;
            tokio::select! {
                changed = self.rv_changes.changed() => {
                    if changed.is_err() { return None; }
                }
                _ = tokio::time::sleep_until(bookmark_at), if bookmarks.is_some() => {
                    self.next_bookmark = later(tokio::time::Instant::now(), bookmarks.unwrap_or_default());
                    let bookmark = json!({
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "metadata": { "resourceVersion": self.cursor.to_string() },
                    });
                    watch_line(&mut out, "BOOKMARK", &bookmark);
                    return Some(out.freeze());
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

/// The longest a watch stays open, whatever `timeoutSeconds` asks: far beyond any real watch,
/// and small enough that the deadline stays representable (`u64::MAX` seconds would overflow).
pub const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The watch parameters of a pods list request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchParams {
    /// Events after this resourceVersion; `None` (absent, `""` or `"0"`): the current state as
    /// ADDED events first.
    pub resource_version: Option<u64>,
    /// `timeoutSeconds`, at most [`MAX_WATCH_TIMEOUT`]; 30 minutes when absent.
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
}

impl WatchParams {
    /// Parses the query of a watch request; a value that does not parse is a 400 Status.
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let resource_version = match q.get("resourceVersion").map(String::as_str) {
            None | Some("" | "0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::new(
                    400,
                    "BadRequest",
                    format!("invalid resource version: {rv:?}"),
                )
            })?),
        };
        let timeout = match q.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| {
                ApiError::new(400, "BadRequest", format!("invalid timeoutSeconds: {s:?}"))
            })?)
            .min(MAX_WATCH_TIMEOUT),
            // The API server picks a random timeout between 30 and 60 minutes.
            None => Duration::from_secs(1800),
        };
        Ok(WatchParams {
            resource_version,
            timeout,
            bookmarks: is_true(q, "allowWatchBookmarks"),
        })
    }
}

/// `now + d`, at most [`MAX_WATCH_TIMEOUT`] ahead: an interval from a scenario file or a query
/// must not overflow the clock.
fn later(now: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    now + d.min(MAX_WATCH_TIMEOUT)
}

fn watch(
    cluster: Arc<Cluster>,
    filter: PodFilter,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let params = WatchParams::parse(q)?;
    let mut first = None;
    let cursor = match params.resource_version {
        Some(rv) => rv,
        None => {
            let (rv, pods) = cluster.list();
            let mut out = BytesMut::new();
            for pod in pods.iter().filter(|p| filter.matches(p)) {
                watch_line(&mut out, "ADDED", &**pod);
            }
            first = (!out.is_empty()).then(|| out.freeze());
            rv
        }
    };
    let interval = cluster.options().bookmark_interval;
    let bookmarks = params.bookmarks.then_some(interval);
    let now = tokio::time::Instant::now();
    let state = WatchState {
        rv_changes: cluster.subscribe(),
        cluster,
        filter,
        cursor,
        bookmarks,
        next_bookmark: later(now, interval),
        deadline: later(now, params.timeout),
        first,
        ended: false,
    };
    let chunks = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Ok((json_headers(), Body::from_stream(chunks)).into_response())
}

/// Namespaces and nodes exist so that kubectl's checks and `attach_metadata` work: a namespace
/// for every pod's namespace (plus `default`, `kube-system`), a node for every pod's node.
/// They never change, so they are served for get and list only.
fn namespace(name: &str) -> Value {
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-0000-0000-{:012x}", name.len()),
            "resourceVersion": "1",
            "labels": { "kubernetes.io/metadata.name": name },
        },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}

fn node(name: &str) -> Value {
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "resourceVersion": "1",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "sim-a",
            },
        },
        "status": { "conditions": [{ "type": "Ready", "status": "True" }] },
    })
}

fn list_of(kind: &str, rv: u64, items: Vec<Value>) -> Response {
    json_response(&json!({
        "kind": kind,
        "apiVersion": "v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "items": items,
    }))
}

async fn list_namespaces(State(cluster): State<Arc<Cluster>>) -> Response {
    let items = cluster.namespaces().iter().map(|n| namespace(n)).collect();
    list_of("NamespaceList", cluster.resource_version(), items)
}

async fn get_namespace(State(cluster): State<Arc<Cluster>>, Path(ns): Path<String>) -> Response {
    if cluster.namespaces().contains(&ns) {
        json_response(&namespace(&ns))
    } else {
        ApiError {
            details: Some((ns.clone(), "namespaces")),
            ..ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
        }
        .into_response()
    }
}

async fn list_nodes(State(cluster): State<Arc<Cluster>>) -> Response {
    let items = cluster.nodes().iter().map(|n| node(n)).collect();
    list_of("NodeList", cluster.resource_version(), items)
}

async fn get_node(State(cluster): State<Arc<Cluster>>, Path(name): Path<String>) -> Response {
    if cluster.nodes().contains(&name) {
        json_response(&node(&name))
    } else {
        ApiError {
            details: Some((name.clone(), "nodes")),
            ..ApiError::new(404, "NotFound", format!("nodes \"{name}\" not found"))
        }
        .into_response()
    }
}

async fn get_pod(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match cluster.get(&ns, &name) {
        Some(pod) => json_response(&*pod),
        None => ApiError::pod_not_found(&name).into_response(),
    }
}

async fn pod_log(
    State(cluster): State<Arc<Cluster>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Params,
) -> Response {
    let open = || -> Result<Response, ApiError> {
        if !cluster.cuts.available.load(Ordering::Acquire) {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ));
        }
        let opts = LogOptions::parse(&q, Timestamp::now())?;
        let (instance, _stats) = cluster.open_log(&ns, &name, &opts).map_err(|e| match e {
            LogOpenError::PodNotFound(name) => ApiError::pod_not_found(&name),
            LogOpenError::BadRequest(m) => ApiError::new(400, "BadRequest", m),
        })?;
        let body = log_body(instance, opts, &cluster.cuts);
        Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
    };
    open().unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    #[test]
    fn ages_read_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (5 * 86400, "5d"),
            (-3, "0s"),
        ] {
            assert_eq!(short_age(s), want);
        }
    }

    #[test]
    fn watch_timeouts_are_clamped_and_bad_values_refused() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = WatchParams::parse(&q(&[("timeoutSeconds", "18446744073709551615")])).unwrap();
        assert_eq!(p.timeout, MAX_WATCH_TIMEOUT);
        let p = WatchParams::parse(&q(&[
            ("timeoutSeconds", "30"),
            ("resourceVersion", "0"),
            ("allowWatchBookmarks", "true"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            WatchParams {
                resource_version: None,
                timeout: Duration::from_secs(30),
                bookmarks: true
            }
        );
        for bad in [("timeoutSeconds", "-1"), ("resourceVersion", "abc")] {
            let err = WatchParams::parse(&q(&[bad])).unwrap_err();
            assert_eq!(err.code, 400, "{bad:?}");
        }
    }

    /// A watch asking for `u64::MAX` seconds is served (it used to panic its connection: the
    /// deadline overflowed the clock).
    #[tokio::test]
    async fn a_watch_with_a_huge_timeout_is_served() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sim = crate::sim::Sim::start("127.0.0.1:0").await.unwrap();
        sim.add_pod(
            crate::sim::PodSpec::new("ns", "p").container(crate::sim::ContainerSpec::new("c")),
        );
        let mut s = tokio::net::TcpStream::connect(sim.local_addr())
            .await
            .unwrap();
        s.write_all(
            b"GET /api/v1/pods?watch=true&timeoutSeconds=18446744073709551615 HTTP/1.1\r\nHost: sim\r\n\r\n",
        )
        .await
        .unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&seen).contains("\"ADDED\"") {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                .await
                .expect("the first event in time")
                .unwrap();
            assert!(
                n > 0,
                "the connection closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&chunk[..n]);
        }
        assert!(seen.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    proptest::proptest! {
        /// Any query is parsed or refused with a Status, never a panic, whatever the values:
        /// the watch, log and selector parameters all come from the network.
        #[test]
        fn any_query_is_parsed_or_refused(
            pairs in proptest::collection::hash_map(
                proptest::sample::select(vec![
                    "watch", "resourceVersion", "timeoutSeconds", "allowWatchBookmarks",
                    "labelSelector", "fieldSelector", "container", "follow", "timestamps",
                    "previous", "sinceTime", "sinceSeconds", "tailLines", "limitBytes",
                ]).prop_map(str::to_string),
                "\\PC{0,24}|-?[0-9]{1,25}|(18446744073709551615|9223372036854775807|-9223372036854775808)",
                0..8,
            )
        ) {
            if let Ok(p) = WatchParams::parse(&pairs) {
                proptest::prop_assert!(p.timeout <= MAX_WATCH_TIMEOUT);
                let _ = later(tokio::time::Instant::now(), p.timeout);
            }
            let _ = PodFilter::parse(None, &pairs);
            if let Ok(o) = LogOptions::parse(&pairs, Timestamp::now()) {
                let _ = super::super::logs::first_index((0, 10), o.tail_lines);
            }
        }
    }

    #[test]
    fn status_objects_look_like_the_api_servers() {
        let s = ApiError::pod_not_found("x").status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["message"], "pods \"x\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["name"], "x");
        assert_eq!(s["details"]["kind"], "pods");
    }
}
