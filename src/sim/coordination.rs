//! The simulator's Leases and ConfigMaps (SPEC §7, §8.5): what clustering and the `kubernetes`
//! positions backend read and write.
//!
//! Both are namespaced objects kept as JSON, served at the API server's paths
//! (`/apis/coordination.k8s.io/v1/namespaces/{ns}/leases`, `/api/v1/namespaces/{ns}/configmaps`)
//! with its semantics where the relay depends on them: create answers `409 AlreadyExists` for a
//! name in use; update (PUT) with a `metadata.resourceVersion` that is not the current one answers
//! `409 Conflict` with the API server's Status; list takes a `labelSelector`; watch resumes from a
//! resourceVersion (`410 Expired` when too old) like the pod watch. One resourceVersion counter
//! covers both kinds, as etcd's does. Every request is counted per kind and verb, so tests can
//! say what clustering costs the API server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{BufMut, Bytes, BytesMut};
use jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::api::{ApiError, WatchParams};
use super::selector::LabelSelector;

/// Watch events kept for resuming watches.
const HISTORY: usize = 10_000;

/// The kinds served here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `coordination.k8s.io/v1` Lease.
    Lease,
    /// `v1` ConfigMap.
    ConfigMap,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::ConfigMap => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::ConfigMap => "ConfigMap",
        }
    }

    /// The resource as the API server names it in messages (`leases.coordination.k8s.io`).
    fn resource(self) -> &'static str {
        match self {
            Kind::Lease => "leases.coordination.k8s.io",
            Kind::ConfigMap => "configmaps",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Lease => "leases",
            Kind::ConfigMap => "configmaps",
        }
    }
}

struct Event {
    rv: u64,
    kind: Kind,
    namespace: String,
    ty: &'static str,
    object: Arc<Value>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Arc<Value>>,
    events: VecDeque<Arc<Event>>,
    dropped_upto: u64,
    next_uid: u64,
    requests: BTreeMap<(Kind, &'static str), u64>,
}

/// The Leases and ConfigMaps of the simulated cluster.
pub struct Objects {
    state: Mutex<Store>,
    changed: watch::Sender<u64>,
}

impl Default for Objects {
    fn default() -> Self {
        Objects {
            state: Mutex::new(Store {
                rv: 1,
                ..Store::default()
            }),
            changed: watch::Sender::new(1),
        }
    }
}

fn conflict(kind: Kind, name: &str, reason: &'static str, message: String) -> ApiError {
    ApiError {
        code: 409,
        reason,
        message,
        details: Some((name.to_string(), kind.plural())),
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("{} \"{name}\" not found", kind.resource()),
        details: Some((name.to_string(), kind.plural())),
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError {
        code: 400,
        reason: "BadRequest",
        message: message.into(),
        details: None,
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl Objects {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, kind: Kind, verb: &'static str) {
        *self.lock().requests.entry((kind, verb)).or_default() += 1;
    }

    /// Requests served so far, by kind (`Lease`, `ConfigMap`) and verb (`create`, `get`,
    /// `list`, `watch`, `update`, `delete`).
    pub fn requests(&self) -> BTreeMap<(Kind, &'static str), u64> {
        self.lock().requests.clone()
    }

    /// Stores `object` at a new resourceVersion and records the event.
    fn commit(
        &self,
        state: &mut Store,
        kind: Kind,
        ns: &str,
        name: &str,
        ty: &'static str,
        mut object: Value,
    ) -> Arc<Value> {
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = Arc::new(object);
        let key = (kind, ns.to_string(), name.to_string());
        if ty == "DELETED" {
            state.objects.remove(&key);
        } else {
            state.objects.insert(key, object.clone());
        }
        state.events.push_back(Arc::new(Event {
            rv,
            kind,
            namespace: ns.to_string(),
            ty,
            object: object.clone(),
        }));
        while state.events.len() > HISTORY {
            if let Some(e) = state.events.pop_front() {
                state.dropped_upto = e.rv;
            }
        }
        self.changed.send_replace(rv);
        object
    }

    /// `POST`: a new object; `409 AlreadyExists` when the name is taken.
    pub fn create(&self, kind: Kind, ns: &str, mut object: Value) -> Result<Value, ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad_request("metadata.name: Required value: name is required"))?
            .to_string();
        let mut state = self.lock();
        if state
            .objects
            .contains_key(&(kind, ns.to_string(), name.clone()))
        {
            return Err(conflict(
                kind,
                &name,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.resource()),
            ));
        }
        state.next_uid += 1;
        object["kind"] = json!(kind.kind());
        object["apiVersion"] = json!(kind.api_version());
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(ns);
        meta["uid"] = json!(format!("c0000000-0000-4000-8000-{:012x}", state.next_uid));
        meta["creationTimestamp"] = json!(Timestamp::now().round(jiff::Unit::Second).ok());
        Ok((*self.commit(&mut state, kind, ns, &name, "ADDED", object)).clone())
    }

    /// `GET` of one object.
    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .map(|o| (**o).clone())
            .ok_or_else(|| not_found(kind, name))
    }

    /// The objects of `kind` in `ns` (every namespace when `None`) matching `selector`, and the
    /// current resourceVersion.
    pub fn list(
        &self,
        kind: Kind,
        ns: Option<&str>,
        selector: &LabelSelector,
    ) -> (u64, Vec<Arc<Value>>) {
        let state = self.lock();
        let items = state
            .objects
            .iter()
            .filter(|((k, n, _), o)| {
                *k == kind && ns.is_none_or(|ns| ns == n) && selector.matches(&labels_of(o))
            })
            .map(|(_, o)| o.clone())
            .collect();
        (state.rv, items)
    }

    /// `PUT`: replaces an object; `409 Conflict` when `metadata.resourceVersion` is set and is
    /// not the current one (an update without it is unconditional, as on the API server).
    pub fn update(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if object["metadata"]["name"].as_str() != Some(name) {
            return Err(bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object["metadata"]["name"].as_str().unwrap_or("")
            )));
        }
        let mut state = self.lock();
        let key = (kind, ns.to_string(), name.to_string());
        let current = state
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(kind, name))?;
        let wanted = object["metadata"]["resourceVersion"].as_str();
        if wanted.is_some_and(|rv| !rv.is_empty())
            && wanted != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(conflict(
                kind,
                name,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    kind.resource()
                ),
            ));
        }
        object["kind"] = json!(kind.kind());
        object["apiVersion"] = json!(kind.api_version());
        let meta = &mut object["metadata"];
        meta["namespace"] = json!(ns);
        meta["uid"] = current["metadata"]["uid"].clone();
        meta["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
        Ok((*self.commit(&mut state, kind, ns, name, "MODIFIED", object)).clone())
    }

    /// `DELETE`: removes an object and answers it.
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut state = self.lock();
        let current = state
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(kind, name))?;
        Ok((*self.commit(&mut state, kind, ns, name, "DELETED", (*current).clone())).clone())
    }

    /// Events of `kind` in `ns` after `rv`, or the oldest resourceVersion still retained.
    fn events_after(&self, kind: Kind, ns: Option<&str>, rv: u64) -> Result<Vec<Arc<Event>>, u64> {
        let state = self.lock();
        if rv < state.dropped_upto {
            return Err(state.dropped_upto);
        }
        Ok(state
            .events
            .iter()
            .filter(|e| e.rv > rv && e.kind == kind && ns.is_none_or(|ns| ns == e.namespace))
            .cloned()
            .collect())
    }
}

/// The routes for Leases and ConfigMaps, and the `coordination.k8s.io` discovery documents.
pub fn router(objects: Arc<Objects>) -> Router {
    Router::new()
        .route("/apis/coordination.k8s.io", get(group))
        .route("/apis/coordination.k8s.io/v1", get(resources))
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            get(|s, p, q| collection_get(Kind::Lease, s, p, q))
                .post(|s, p, b| collection_post(Kind::Lease, s, p, b)),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(|s, p| item_get(Kind::Lease, s, p))
                .put(|s, p, b| item_put(Kind::Lease, s, p, b))
                .delete(|s, p| item_delete(Kind::Lease, s, p)),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps",
            get(|s, p, q| collection_get(Kind::ConfigMap, s, p, q))
                .post(|s, p, b| collection_post(Kind::ConfigMap, s, p, b)),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps/{name}",
            get(|s, p| item_get(Kind::ConfigMap, s, p))
                .put(|s, p, b| item_put(Kind::ConfigMap, s, p, b))
                .delete(|s, p| item_delete(Kind::ConfigMap, s, p)),
        )
        .with_state(objects)
}

/// The `coordination.k8s.io` entry of `GET /apis`.
pub fn api_group() -> Value {
    json!({
        "name": "coordination.k8s.io",
        "versions": [{ "groupVersion": "coordination.k8s.io/v1", "version": "v1" }],
        "preferredVersion": { "groupVersion": "coordination.k8s.io/v1", "version": "v1" },
    })
}

async fn group() -> Response {
    let mut g = api_group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    json_response(&g)
}

async fn resources() -> Response {
    json_response(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "coordination.k8s.io/v1",
        "resources": [{
            "name": "leases",
            "singularName": "lease",
            "namespaced": true,
            "kind": "Lease",
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }],
    }))
}

fn json_response(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

type Shared = State<Arc<Objects>>;
type Params = Query<HashMap<String, String>>;

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the request body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad_request("the request body is not an object"));
    }
    Ok(v)
}

async fn collection_get(
    kind: Kind,
    State(objects): Shared,
    Path(ns): Path<String>,
    Query(q): Params,
) -> Response {
    let run = || -> Result<Response, ApiError> {
        let selector = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| bad_request(e.0))?;
        let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        if watching {
            objects.count(kind, "watch");
            return watch(objects.clone(), kind, ns.clone(), selector, &q);
        }
        objects.count(kind, "list");
        let (rv, items) = objects.list(kind, Some(&ns), &selector);
        let items: Vec<&Value> = items.iter().map(|o| &**o).collect();
        Ok(json_response(&json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": { "resourceVersion": rv.to_string() },
            "items": items,
        })))
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

async fn collection_post(
    kind: Kind,
    State(objects): Shared,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    objects.count(kind, "create");
    let created = parse_body(&body).and_then(|v| objects.create(kind, &ns, v));
    match created {
        Ok(v) => (
            axum::http::StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn item_get(
    kind: Kind,
    State(objects): Shared,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    objects.count(kind, "get");
    match objects.get(kind, &ns, &name) {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response(),
    }
}

async fn item_put(
    kind: Kind,
    State(objects): Shared,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    objects.count(kind, "update");
    match parse_body(&body).and_then(|v| objects.update(kind, &ns, &name, v)) {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response(),
    }
}

async fn item_delete(
    kind: Kind,
    State(objects): Shared,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    objects.count(kind, "delete");
    match objects.delete(kind, &ns, &name) {
        Ok(v) => json_response(&v),
        Err(e) => e.into_response(),
    }
}

fn watch_line(out: &mut BytesMut, ty: &str, object: &Value) {
    let _ = serde_json::to_writer(
        (&mut *out).writer(),
        &json!({ "type": ty, "object": object }),
    );
    out.put_u8(b'\n');
}

struct WatchState {
    objects: Arc<Objects>,
    kind: Kind,
    namespace: String,
    selector: LabelSelector,
    cursor: u64,
    changes: watch::Receiver<u64>,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    deadline: tokio::time::Instant,
    first: Option<Bytes>,
    ended: bool,
}

/// Bookmarks on watches that allow them, as often as the pod watch's default.
const BOOKMARK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

impl WatchState {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let mut out = BytesMut::new();
        loop {
            if self.ended {
                return None;
            }
            self.changes.borrow_and_update();
            let events =
                match self
                    .objects
                    .events_after(self.kind, Some(&self.namespace), self.cursor)
                {
                    Ok(events) => events,
                    Err(oldest) => {
                        self.ended = true;
                        let e = ApiError {
                            code: 410,
                            reason: "Expired",
                            message: format!(
                                "too old resource version: {} ({oldest})",
                                self.cursor
                            ),
                            details: None,
                        };
                        watch_line(&mut out, "ERROR", &e.status());
                        return Some(out.freeze());
                    }
                };
            for e in events {
                self.cursor = e.rv;
                if self.selector.matches(&labels_of(&e.object)) {
                    watch_line(&mut out, e.ty, &e.object);
                }
            }
            if !out.is_empty() {
                return Some(out.freeze());
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() { return None; }
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    self.next_bookmark = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                    let bookmark = json!({
                        "kind": self.kind.kind(),
                        "apiVersion": self.kind.api_version(),
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

fn watch(
    objects: Arc<Objects>,
    kind: Kind,
    namespace: String,
    selector: LabelSelector,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let params = WatchParams::parse(q)?;
    let mut first = None;
    let cursor = match params.resource_version {
        Some(rv) => rv,
        None => {
            let (rv, items) = objects.list(kind, Some(&namespace), &selector);
            let mut out = BytesMut::new();
            for o in &items {
                watch_line(&mut out, "ADDED", o);
            }
            first = (!out.is_empty()).then(|| out.freeze());
            rv
        }
    };
    let now = tokio::time::Instant::now();
    let state = WatchState {
        changes: objects.changed.subscribe(),
        objects,
        kind,
        namespace,
        selector,
        cursor,
        bookmarks: params.bookmarks,
        next_bookmark: now + BOOKMARK_INTERVAL,
        deadline: now + params.timeout,
        first,
        ended: false,
    };
    let chunks = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    //! Through real sockets with `kube`'s typed client, as the relay uses it.

    use super::*;
    use ::kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::time::Duration;

    async fn start() -> (crate::sim::Sim, ::kube::Client) {
        let sim = crate::sim::Sim::start("127.0.0.1:0").await.expect("bind");
        let config = ::kube::Config::new(sim.url().parse().expect("url"));
        (sim, ::kube::Client::try_from(config).expect("client"))
    }

    fn lease(name: &str, group: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("group".to_string(), group.to_string())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.into()),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn leases_are_created_listed_by_label_updated_with_preconditions_and_deleted() {
        let (sim, client) = start().await;
        let api: Api<Lease> = Api::namespaced(client, "relay");
        let pp = PostParams::default();
        let a = api.create(&pp, &lease("a", "x")).await.unwrap();
        api.create(&pp, &lease("b", "y")).await.unwrap();
        let dup = api.create(&pp, &lease("a", "x")).await.unwrap_err();
        assert!(
            matches!(&dup, ::kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
            "{dup:?}"
        );
        let listed = api
            .list(&ListParams::default().labels("group=x"))
            .await
            .unwrap();
        let names: Vec<_> = listed
            .items
            .iter()
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        assert_eq!(names, ["a"]);

        // Update with the current resourceVersion succeeds; with the stale one it conflicts.
        let mut renewed = a.clone();
        renewed.spec.as_mut().unwrap().lease_duration_seconds = Some(3);
        let renewed = api.replace("a", &pp, &renewed).await.unwrap();
        assert_ne!(
            renewed.metadata.resource_version,
            a.metadata.resource_version
        );
        let stale = api.replace("a", &pp, &a).await.unwrap_err();
        match &stale {
            ::kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
                assert!(s.message.contains("the object has been modified"), "{s:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            api.get("a")
                .await
                .unwrap()
                .spec
                .unwrap()
                .lease_duration_seconds,
            Some(3)
        );
        api.delete("a", &DeleteParams::default()).await.unwrap();
        let gone = api.get("a").await.unwrap_err();
        assert!(matches!(gone, ::kube::Error::Api(s) if s.code == 404));
        assert_eq!(sim.leases("relay").len(), 1);
        let requests = sim.coordination().requests();
        assert_eq!(requests[&(Kind::Lease, "create")], 3);
        assert_eq!(requests[&(Kind::Lease, "update")], 2);
    }

    #[tokio::test]
    async fn config_maps_are_watched_from_a_resource_version() {
        let (sim, client) = start().await;
        let api: Api<ConfigMap> = Api::namespaced(client, "relay");
        let cm = |name: &str, v: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("app".to_string(), "relay".to_string())].into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), v.to_string())].into()),
            ..Default::default()
        };
        let pp = PostParams::default();
        let first = api.create(&pp, &cm("p-0", "1")).await.unwrap();
        let rv = first.metadata.resource_version.clone().unwrap();
        let mut events = api
            .watch(&WatchParams::default().labels("app=relay"), &rv)
            .await
            .unwrap()
            .boxed();
        let mut next = first.clone();
        next.data = Some([("k".to_string(), "2".to_string())].into());
        api.replace("p-0", &pp, &next).await.unwrap();
        api.create(&pp, &cm("p-1", "3")).await.unwrap();
        api.delete("p-0", &DeleteParams::default()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let e = tokio::time::timeout(Duration::from_secs(10), events.try_next())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("the watch stays open");
            seen.push(match e {
                WatchEvent::Added(c) => format!("added {}", c.metadata.name.unwrap()),
                WatchEvent::Modified(c) => format!("modified {}", c.metadata.name.unwrap()),
                WatchEvent::Deleted(c) => format!("deleted {}", c.metadata.name.unwrap()),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(seen, ["modified p-0", "added p-1", "deleted p-0"]);
        assert_eq!(sim.config_maps("relay").len(), 1);
    }
}
