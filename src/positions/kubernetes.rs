//! The `kubernetes` positions backend (SPEC §4.4, §7): positions in ConfigMaps, so a Deployment
//! needs no PersistentVolume and replicas can hand targets to each other.
//!
//! Each replica writes its own set of ConfigMaps, `kube-log-relay-positions-<identity>-<n>`, in
//! the relay's namespace, labelled [`NAME_LABEL`], `app.kubernetes.io/component=positions` and
//! [`IDENTITY_LABEL`]. One JSON document per ConfigMap (data key `positions.json`); a new part
//! starts before one would pass [`PART_LIMIT`] (the API server refuses objects over 1 MiB). Part 0
//! also lists the targets the replica *holds* (runs a tailer for), which is how a replica
//! publishes that it released a target (SPEC §7 hand-over, see `cluster`).
//!
//! Every write carries the resourceVersion last seen, so a write never silently replaces one
//! made by someone else: on `409 Conflict` the parts are re-read, the newer of each position
//! (by `updated`) is kept, and the write is retried. Loading reads every replica's ConfigMaps and
//! keeps, per target, the newest position (by `updated`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};

use super::Stored;
use super::record::Record;
use crate::replica::{IDENTITY_LABEL, Identity, NAME_LABEL};
use crate::target::TargetId;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Where a part is cut: well under the API server's 1 MiB object limit.
pub const PART_LIMIT: usize = 900 * 1024;

/// The data key holding the document.
pub const DATA_KEY: &str = "positions.json";

const COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "positions");

/// Attempts of one write before it is given up until the next sync.
const ATTEMPTS: usize = 5;

/// Errors of the kubernetes backend; each names the ConfigMap or the request.
#[derive(Debug, thiserror::Error)]
pub enum KubeStoreError {
    #[error("{what} ConfigMaps in namespace {namespace}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the positions ConfigMap {namespace}/{name} is corrupt: {reason} (delete it to start over: its targets would then start per tail.start_from)"
    )]
    Corrupt {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "the positions ConfigMaps of {identity} kept changing under {ATTEMPTS} attempts to write them; retrying at the next sync"
    )]
    Contended { identity: String },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    identity: String,
    #[serde(default)]
    held: Vec<Key>,
    positions: Vec<Record>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
struct Key {
    namespace: String,
    pod: String,
    container: String,
    uid: String,
}

impl From<&TargetId> for Key {
    fn from(id: &TargetId) -> Key {
        Key {
            namespace: id.namespace.clone(),
            pod: id.pod.clone(),
            container: id.container.clone(),
            uid: id.uid.clone(),
        }
    }
}

impl From<Key> for TargetId {
    fn from(k: Key) -> TargetId {
        TargetId {
            namespace: k.namespace,
            pod: k.pod,
            container: k.container,
            uid: k.uid,
        }
    }
}

/// Keeps in `into` the newer (by `updated`) of its entry and `stored`; true when `stored` won.
pub fn keep_newest(into: &mut BTreeMap<TargetId, Stored>, id: TargetId, stored: Stored) -> bool {
    match into.get(&id) {
        Some(old) if old.updated >= stored.updated => false,
        _ => {
            into.insert(id, stored);
            true
        }
    }
}

/// What every replica's ConfigMaps say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The newest position of each target across every replica.
    pub positions: BTreeMap<TargetId, Stored>,
    /// The targets each replica (by identity) says it holds.
    pub held: BTreeMap<String, BTreeSet<TargetId>>,
}

/// Splits the documents of one replica into parts of at most [`PART_LIMIT`] bytes each.
fn split(
    identity: &str,
    entries: &BTreeMap<TargetId, Stored>,
    held: &BTreeSet<TargetId>,
) -> Vec<String> {
    let header = |held: Vec<Key>| Document {
        version: VERSION,
        identity: identity.to_string(),
        held,
        positions: Vec::new(),
    };
    let mut parts = Vec::new();
    let mut doc = header(held.iter().map(Key::from).collect());
    // The document's size so far, plus a byte per comma.
    let mut size = serde_json::to_vec(&doc).map_or(0, |v| v.len());
    for (id, s) in entries {
        let r = Record::of(id, s);
        let len = serde_json::to_vec(&r).map_or(0, |v| v.len()) + 1;
        if size + len > PART_LIMIT && !doc.positions.is_empty() {
            parts.push(serde_json::to_string(&doc).unwrap_or_default());
            doc = header(Vec::new());
            size = serde_json::to_vec(&doc).map_or(0, |v| v.len());
        }
        size += len;
        doc.positions.push(r);
    }
    parts.push(serde_json::to_string(&doc).unwrap_or_default());
    parts
}

/// The positions ConfigMaps of one replica, and every replica's for loading.
pub struct KubeStore {
    api: Api<ConfigMap>,
    identity: Identity,
    /// The targets this replica holds, written into part 0 with every write.
    held: Mutex<BTreeSet<TargetId>>,
    /// The resourceVersion last seen of each of our parts, by name. Writes are serialised.
    parts: tokio::sync::Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

enum WriteError {
    Conflict,
    Api(KubeStoreError),
}

impl KubeStore {
    /// The store of replica `identity` through `client`.
    pub fn new(client: kube::Client, identity: Identity) -> KubeStore {
        KubeStore {
            api: Api::namespaced(client, &identity.namespace),
            identity,
            held: Mutex::new(BTreeSet::new()),
            parts: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// This replica's identity and namespace.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The name of part `n` of this replica's ConfigMaps.
    pub fn part_name(&self, n: usize) -> String {
        format!("kube-log-relay-positions-{}-{n}", self.identity.name)
    }

    fn api_error(&self, what: &'static str, source: kube::Error) -> KubeStoreError {
        KubeStoreError::Api {
            what,
            namespace: self.identity.namespace.clone(),
            source,
        }
    }

    /// Replaces the set of targets this replica says it holds (written with the next write).
    pub fn set_held(&self, held: BTreeSet<TargetId>) {
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = held;
    }

    /// The targets this replica says it holds.
    pub fn held(&self) -> BTreeSet<TargetId> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn parse(&self, cm: &ConfigMap) -> Result<Document, KubeStoreError> {
        let corrupt = |reason: String| KubeStoreError::Corrupt {
            namespace: self.identity.namespace.clone(),
            name: cm.metadata.name.clone().unwrap_or_default(),
            reason,
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .ok_or_else(|| corrupt(format!("no {DATA_KEY} key")))?;
        let doc: Document = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        if doc.version != VERSION {
            return Err(corrupt(format!(
                "version {} is not supported by this build (it reads version {VERSION})",
                doc.version
            )));
        }
        Ok(doc)
    }

    /// Every replica's positions ConfigMaps (one list request); remembers the resourceVersions
    /// of this replica's own parts so that the next write does not conflict with them.
    pub async fn load(&self) -> Result<Snapshot, KubeStoreError> {
        let selector = format!(
            "{}={},{}={}",
            NAME_LABEL.0, NAME_LABEL.1, COMPONENT.0, COMPONENT.1
        );
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.api_error("listing the positions", e))?;
        let mut snapshot = Snapshot::default();
        let mut own = BTreeMap::new();
        for cm in &list.items {
            let doc = self.parse(cm)?;
            if doc.identity == self.identity.name
                && let (Some(name), Some(rv)) = (&cm.metadata.name, &cm.metadata.resource_version)
            {
                own.insert(name.clone(), rv.clone());
            }
            let held = snapshot.held.entry(doc.identity).or_default();
            held.extend(doc.held.into_iter().map(TargetId::from));
            for r in doc.positions {
                let (id, stored) = Record::into_entry(r);
                keep_newest(&mut snapshot.positions, id, stored);
            }
        }
        // Only learn versions when no write is running: a write in progress knows better.
        if let Ok(mut parts) = self.parts.try_lock() {
            for (name, rv) in own {
                parts.insert(name, rv);
            }
        }
        Ok(snapshot)
    }

    /// Writes `entries` and the held targets. On a conflict, re-reads this replica's parts,
    /// keeps the newer of each position and retries; returns the positions it learned that
    /// way (newer than `entries`), for the caller's table.
    pub async fn save(
        &self,
        entries: &BTreeMap<TargetId, Stored>,
    ) -> Result<BTreeMap<TargetId, Stored>, KubeStoreError> {
        let mut parts = self.parts.lock().await;
        let mut merged = entries.clone();
        let mut learned = BTreeMap::new();
        for _ in 0..ATTEMPTS {
            let held = self.held();
            let docs = split(&self.identity.name, &merged, &held);
            match self.write_parts(&mut parts, docs).await {
                Ok(()) => return Ok(learned),
                Err(WriteError::Api(e)) => return Err(e),
                Err(WriteError::Conflict) => {
                    let remote = self.read_own(&mut parts).await?;
                    for (id, stored) in remote {
                        if !held.contains(&id) && keep_newest(&mut merged, id.clone(), stored) {
                            learned.insert(id.clone(), merged[&id].clone());
                        }
                    }
                }
            }
        }
        Err(KubeStoreError::Contended {
            identity: self.identity.name.clone(),
        })
    }

    /// This replica's positions as stored now; refreshes the known resourceVersions.
    async fn read_own(
        &self,
        parts: &mut BTreeMap<String, String>,
    ) -> Result<BTreeMap<TargetId, Stored>, KubeStoreError> {
        let selector = format!(
            "{}={},{}={},{IDENTITY_LABEL}={}",
            NAME_LABEL.0, NAME_LABEL.1, COMPONENT.0, COMPONENT.1, self.identity.name
        );
        let list = self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.api_error("re-reading our positions", e))?;
        parts.clear();
        let mut out = BTreeMap::new();
        for cm in &list.items {
            if let (Some(name), Some(rv)) = (&cm.metadata.name, &cm.metadata.resource_version) {
                parts.insert(name.clone(), rv.clone());
            }
            for r in self.parse(cm)?.positions {
                let (id, stored) = Record::into_entry(r);
                keep_newest(&mut out, id, stored);
            }
        }
        Ok(out)
    }

    async fn write_parts(
        &self,
        parts: &mut BTreeMap<String, String>,
        docs: Vec<String>,
    ) -> Result<(), WriteError> {
        let pp = PostParams::default();
        let count = docs.len();
        for (n, doc) in docs.into_iter().enumerate() {
            let name = self.part_name(n);
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(
                        [
                            (NAME_LABEL.0.to_string(), NAME_LABEL.1.to_string()),
                            (COMPONENT.0.to_string(), COMPONENT.1.to_string()),
                            (IDENTITY_LABEL.to_string(), self.identity.name.clone()),
                        ]
                        .into(),
                    ),
                    resource_version: parts.get(&name).cloned(),
                    ..Default::default()
                },
                data: Some([(DATA_KEY.to_string(), doc)].into()),
                ..Default::default()
            };
            let written = match parts.contains_key(&name) {
                true => self.api.replace(&name, &pp, &cm).await,
                false => self.api.create(&pp, &cm).await,
            };
            match written {
                Ok(cm) => {
                    if let Some(rv) = cm.metadata.resource_version {
                        parts.insert(name, rv);
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => return Err(WriteError::Conflict),
                // Deleted under us: the next attempt re-reads and creates it.
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(WriteError::Conflict),
                Err(e) => return Err(WriteError::Api(self.api_error("writing the positions", e))),
            }
        }
        // Parts beyond the new count held positions that now fit in fewer parts.
        let prefix = format!("kube-log-relay-positions-{}-", self.identity.name);
        let stale: Vec<String> = parts
            .keys()
            .filter(|name| {
                name.strip_prefix(&prefix)
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n >= count)
            })
            .cloned()
            .collect();
        for name in stale {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(WriteError::Api(
                        self.api_error("deleting a stale part of the positions", e),
                    ));
                }
            }
            parts.remove(&name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::{Cursor, Position};
    use jiff::Timestamp;

    fn id(n: usize) -> TargetId {
        TargetId {
            namespace: "ns".into(),
            pod: format!("pod-{n:06}-{}", "x".repeat(100)),
            container: "c".into(),
            uid: format!("uid-{n}"),
        }
    }

    fn stored(since: i64, updated: i64) -> Stored {
        Stored {
            position: Position {
                container_id: Some("containerd://abc".into()),
                cursor: Cursor { since, skip: 1 },
            },
            updated: Timestamp::from_second(updated).unwrap(),
        }
    }

    #[test]
    fn parts_stay_under_the_limit_and_keep_every_position() {
        let entries: BTreeMap<TargetId, Stored> =
            (0..8_000).map(|n| (id(n), stored(n as i64, 1))).collect();
        let held: BTreeSet<TargetId> = (0..10).map(id).collect();
        let parts = split("relay-0", &entries, &held);
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let mut back = BTreeMap::new();
        for (n, p) in parts.iter().enumerate() {
            assert!(p.len() <= PART_LIMIT, "part {n}: {} bytes", p.len());
            let doc: Document = serde_json::from_str(p).unwrap();
            assert_eq!(doc.held.len(), if n == 0 { 10 } else { 0 });
            back.extend(doc.positions.into_iter().map(Record::into_entry));
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn the_newest_position_wins() {
        let mut m = BTreeMap::new();
        assert!(keep_newest(&mut m, id(1), stored(10, 5)));
        assert!(!keep_newest(&mut m, id(1), stored(9, 4)));
        assert!(
            !keep_newest(&mut m, id(1), stored(9, 5)),
            "a tie keeps what is there"
        );
        assert!(keep_newest(&mut m, id(1), stored(11, 6)));
        assert_eq!(m[&id(1)], stored(11, 6));
    }
}
