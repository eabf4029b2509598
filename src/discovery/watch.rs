//! What the watchers have told us, reduced to label maps, and the complete target set it makes
//! (SPEC §2, §4.2, §4.3).
//!
//! [`WatchState`] is fed kube-runtime watcher events by the discovery actor and answers
//! [`WatchState::target_set`]. It is plain data, so the list/watch protocol, metadata joins and
//! rule changes are tested here without a cluster. It keeps no `Pod` objects (they are large:
//! managed fields, specs): only each container's discovery labels and their relabelled form,
//! recomputed when the pod, its node's or namespace's metadata, or the rules change.
//!
//! A failing watch (RBAC, network) is kept from flooding the log by [`crate::logging::RateLimited`]
//! keyed by resource and [`error_kind`] (SPEC §8.4).

use std::collections::BTreeMap;
use std::sync::Arc;

use ::kube::runtime::watcher::{self, Event};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::build::build_set;
use super::meta;
use super::relabel::relabel;
use crate::config::model::{AttachMetadata, RelabelRule, StaticTarget};
use crate::target::{ContainerState, LabelMap, TargetSet};

/// A pod's key in the store: `(namespace, name)`.
pub type PodKey = (String, String);

/// One container's discovery labels and, when relabelling kept it, its relabelled labels.
type Candidate = (Arc<LabelMap>, Option<LabelMap>);

/// One resource's list-then-watch state, following kube-runtime's `Init` / `InitApply` /
/// `InitDone` protocol: during a (re-)list the previous objects stay in force, and `InitDone`
/// replaces them at once, so a re-list never makes targets flap.
#[derive(Debug)]
struct Reflected<V> {
    items: BTreeMap<PodKeyOrName, V>,
    relist: Option<BTreeMap<PodKeyOrName, V>>,
    synced: bool,
}

/// Pods are keyed by namespace and name; nodes and namespaces by name (namespace left empty).
type PodKeyOrName = (String, String);

impl<V> Default for Reflected<V> {
    fn default() -> Self {
        Reflected {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<V> Reflected<V> {
    /// Applies one event carrying `(key, value)`; true when the visible items may have changed.
    fn step(&mut self, event: Event<(PodKeyOrName, V)>) -> bool {
        match event {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Event::InitApply((k, v)) => {
                match &mut self.relist {
                    Some(buffer) => buffer.insert(k, v),
                    // kube-runtime always sends Init first; be tolerant anyway.
                    None => self.items.insert(k, v),
                };
                false
            }
            Event::InitDone => {
                if let Some(buffer) = self.relist.take() {
                    self.items = buffer;
                }
                self.synced = true;
                true
            }
            Event::Apply((k, v)) => {
                self.items.insert(k, v);
                true
            }
            Event::Delete((k, _)) => self.items.remove(&k).is_some(),
        }
    }

    /// Every stored value, including those of a re-list in progress.
    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.items
            .values_mut()
            .chain(self.relist.iter_mut().flat_map(|b| b.values_mut()))
    }
}

/// One pod, reduced to what targets need.
#[derive(Debug, PartialEq)]
struct PodEntry {
    node: String,
    namespace: String,
    /// Per container, the pod's own discovery labels (no node or namespace metadata).
    base: Vec<Arc<LabelMap>>,
    /// Per container, the labels with metadata attached and their relabelled form.
    candidates: Vec<Candidate>,
    /// Per container, its state as the pod reports it (handed to its tailer).
    states: Vec<Arc<ContainerState>>,
}

/// The discovery store: pods of each watch scope, node and namespace metadata, static targets.
pub struct WatchState {
    attach: AttachMetadata,
    rules: Arc<Vec<RelabelRule>>,
    /// One per pod watcher (all namespaces, or one per configured namespace).
    pods: Vec<Reflected<PodEntry>>,
    nodes: Reflected<Arc<LabelMap>>,
    namespaces: Reflected<Arc<LabelMap>>,
    statics: Vec<Candidate>,
}

impl WatchState {
    /// A store for `scopes` pod watchers (0 when discovery is off: static targets only).
    pub fn new(
        scopes: usize,
        attach: AttachMetadata,
        rules: Arc<Vec<RelabelRule>>,
        statics: &[StaticTarget],
    ) -> WatchState {
        let mut state = WatchState {
            attach,
            rules,
            pods: (0..scopes).map(|_| Reflected::default()).collect(),
            nodes: Reflected::default(),
            namespaces: Reflected::default(),
            statics: Vec::new(),
        };
        state.set_statics(statics);
        state
    }

    /// True once every watcher this store needs has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.pods.iter().all(|p| p.synced)
            && (!self.attach.node || self.nodes.synced)
            && (!self.attach.namespace || self.namespaces.synced)
    }

    /// A pod event from watcher `scope`; true when the target set may have changed.
    pub fn on_pod(&mut self, scope: usize, event: Event<Pod>) -> bool {
        let Some(reflected) = self.pods.get_mut(scope) else {
            return false;
        };
        let ctx = Joins {
            attach: self.attach,
            nodes: &self.nodes.items,
            namespaces: &self.namespaces.items,
            rules: &self.rules,
        };
        match event {
            Event::Init => reflected.step(Event::Init),
            Event::InitDone => reflected.step(Event::InitDone),
            Event::InitApply(pod) => reflected.step(Event::InitApply(ctx.entry(&pod))),
            Event::Apply(pod) => {
                let (key, entry) = ctx.entry(&pod);
                match reflected.items.get(&key) {
                    Some(old)
                        if old.candidates == entry.candidates && old.states == entry.states =>
                    {
                        // Status heartbeats, managed fields…: nothing a target shows changed.
                        reflected.items.insert(key, entry);
                        false
                    }
                    _ => {
                        reflected.items.insert(key, entry);
                        true
                    }
                }
            }
            Event::Delete(pod) => reflected.items.remove(&pod_key(&pod.metadata)).is_some(),
        }
    }

    /// A node metadata event (`attach_metadata.node`); true when the target set may have changed.
    pub fn on_node(&mut self, event: Event<ObjectMeta>) -> bool {
        let touched = step_metadata(&mut self.nodes, event, meta::node_labels);
        self.refresh(touched, |entry, name| entry.node == name)
    }

    /// A namespace metadata event (`attach_metadata.namespace`); true when the target set may
    /// have changed.
    pub fn on_namespace(&mut self, event: Event<ObjectMeta>) -> bool {
        let touched = step_metadata(&mut self.namespaces, event, meta::namespace_labels);
        self.refresh(touched, |entry, name| entry.namespace == name)
    }

    /// New rules and static targets (SIGHUP): every target is relabelled again.
    pub fn reconfigure(&mut self, rules: Arc<Vec<RelabelRule>>, statics: &[StaticTarget]) {
        self.rules = rules;
        self.set_statics(statics);
        self.refresh(Touched::All, |_, _| true);
    }

    /// The complete target set: every pod container, then the static targets. A static target
    /// with the identity of a discovered container is rejected as a duplicate.
    pub fn target_set(&self) -> TargetSet {
        let pods = self
            .pods
            .iter()
            .flat_map(|p| p.items.values())
            .flat_map(|e| {
                e.candidates
                    .iter()
                    .zip(e.states.iter().map(|s| Some(s.clone())))
            });
        // Static targets: no watch knows their container.
        let statics = self.statics.iter().map(|c| (c, None));
        build_set(
            pods.chain(statics)
                .filter_map(|((d, r), s)| r.as_ref().map(|r| (d.clone(), r.clone(), s))),
        )
    }

    /// Number of pods stored (all scopes).
    pub fn pod_count(&self) -> usize {
        self.pods.iter().map(|p| p.items.len()).sum()
    }

    fn set_statics(&mut self, statics: &[StaticTarget]) {
        self.statics = statics
            .iter()
            .map(|s| {
                let labels = s.labels.clone();
                (Arc::new(labels.clone()), relabel(&self.rules, labels))
            })
            .collect();
    }

    /// Recomputes the candidates of the pods `touched` selects; true when any changed.
    fn refresh(&mut self, touched: Touched, selects: impl Fn(&PodEntry, &str) -> bool) -> bool {
        let name = match &touched {
            Touched::Nothing => return false,
            Touched::One(name) => Some(name.as_str()),
            Touched::All => None,
        };
        let ctx = Joins {
            attach: self.attach,
            nodes: &self.nodes.items,
            namespaces: &self.namespaces.items,
            rules: &self.rules,
        };
        let mut changed = matches!(touched, Touched::All);
        for entry in self.pods.iter_mut().flat_map(|p| p.values_mut()) {
            if name.is_none_or(|n| selects(entry, n)) {
                let candidates = ctx.candidates(entry);
                if candidates != entry.candidates {
                    entry.candidates = candidates;
                    changed = true;
                }
            }
        }
        changed
    }
}

/// Which pods a metadata event concerns.
enum Touched {
    Nothing,
    One(String),
    All,
}

/// Applies a node or namespace event to its store and says which pods to refresh.
fn step_metadata(
    store: &mut Reflected<Arc<LabelMap>>,
    event: Event<ObjectMeta>,
    labels: fn(&ObjectMeta) -> LabelMap,
) -> Touched {
    let key = |m: &ObjectMeta| (String::new(), m.name.clone().unwrap_or_default());
    match event {
        Event::Init => {
            store.step(Event::Init);
            Touched::Nothing
        }
        Event::InitApply(m) => {
            store.step(Event::InitApply((key(&m), Arc::new(labels(&m)))));
            Touched::Nothing
        }
        Event::InitDone => {
            store.step(Event::InitDone);
            Touched::All
        }
        Event::Apply(m) => {
            let (k, v) = (key(&m), Arc::new(labels(&m)));
            // Node heartbeats bump resourceVersion every few seconds: only label changes count.
            if store.items.get(&k) == Some(&v) {
                return Touched::Nothing;
            }
            store.items.insert(k.clone(), v);
            Touched::One(k.1)
        }
        Event::Delete(m) => {
            let k = key(&m);
            match store.items.remove(&k) {
                Some(_) => Touched::One(k.1),
                None => Touched::Nothing,
            }
        }
    }
}

fn pod_key(m: &ObjectMeta) -> PodKey {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// What a pod's candidates depend on besides the pod itself.
struct Joins<'a> {
    attach: AttachMetadata,
    nodes: &'a BTreeMap<PodKeyOrName, Arc<LabelMap>>,
    namespaces: &'a BTreeMap<PodKeyOrName, Arc<LabelMap>>,
    rules: &'a [RelabelRule],
}

impl Joins<'_> {
    fn entry(&self, pod: &Pod) -> (PodKey, PodEntry) {
        let key = pod_key(&pod.metadata);
        let mut entry = PodEntry {
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            namespace: key.0.clone(),
            base: meta::pod_targets(pod, None, None)
                .into_iter()
                .map(Arc::new)
                .collect(),
            candidates: Vec::new(),
            states: meta::container_states(pod)
                .into_iter()
                .map(Arc::new)
                .collect(),
        };
        entry.candidates = self.candidates(&entry);
        (key, entry)
    }

    fn candidates(&self, entry: &PodEntry) -> Vec<Candidate> {
        let lookup = |on: bool, store: &BTreeMap<PodKeyOrName, Arc<LabelMap>>, name: &str| {
            on.then(|| store.get(&(String::new(), name.to_string())).cloned())
                .flatten()
        };
        let node = lookup(self.attach.node, self.nodes, &entry.node);
        let ns = lookup(self.attach.namespace, self.namespaces, &entry.namespace);
        entry
            .base
            .iter()
            .map(|base| {
                let discovered = if node.is_none() && ns.is_none() {
                    base.clone()
                } else {
                    let mut m = LabelMap::clone(base);
                    for extra in node.iter().chain(ns.iter()) {
                        m.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                    Arc::new(m)
                };
                let relabelled = relabel(self.rules, LabelMap::clone(&discovered));
                (discovered, relabelled)
            })
            .collect()
    }
}

/// The kind of a watcher error, a short fixed word for logs and throttling.
pub fn error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "list",
        watcher::Error::WatchStartFailed(_) => "watch_start",
        watcher::Error::WatchError(_) => "watch_status",
        watcher::Error::WatchFailed(_) => "watch",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::meta::tests::sample_pod;
    use crate::discovery::relabel::default_rules;

    fn pod(ns: &str, name: &str, node: &str, uid: &str) -> Pod {
        let mut p = sample_pod();
        p.metadata.namespace = Some(ns.into());
        p.metadata.name = Some(name.into());
        p.metadata.uid = Some(uid.into());
        p.spec.as_mut().unwrap().node_name = Some(node.into());
        p
    }

    fn state(scopes: usize, attach: AttachMetadata) -> WatchState {
        WatchState::new(scopes, attach, Arc::new(default_rules()), &[])
    }

    fn names(s: &WatchState) -> Vec<String> {
        s.target_set()
            .targets
            .keys()
            .map(|id| id.to_string())
            .collect()
    }

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn synced_only_after_every_initial_list() {
        let mut s = state(2, AttachMetadata::default());
        assert!(!s.is_synced());
        s.on_pod(0, Event::Init);
        assert!(!s.on_pod(0, Event::InitApply(pod("a", "p", "n1", "u1"))));
        assert!(s.on_pod(0, Event::InitDone));
        assert!(!s.is_synced());
        s.on_pod(1, Event::Init);
        s.on_pod(1, Event::InitDone);
        assert!(s.is_synced());
        assert_eq!(
            names(&s),
            ["a/p/debugger", "a/p/migrate", "a/p/nginx", "a/p/sidecar"]
        );
    }

    #[test]
    fn relist_replaces_the_store_only_when_done() {
        let mut s = state(1, AttachMetadata::default());
        s.on_pod(0, Event::Init);
        s.on_pod(0, Event::InitApply(pod("a", "p1", "n1", "u1")));
        s.on_pod(0, Event::InitApply(pod("a", "p2", "n1", "u2")));
        s.on_pod(0, Event::InitDone);
        assert_eq!(s.pod_count(), 2);
        // A re-list (after 410 Gone): p1 vanished meanwhile.
        s.on_pod(0, Event::Init);
        s.on_pod(0, Event::InitApply(pod("a", "p2", "n1", "u2")));
        assert_eq!(s.pod_count(), 2, "old objects stay until InitDone");
        assert!(s.on_pod(0, Event::InitDone));
        assert_eq!(s.pod_count(), 1);
        assert!(names(&s).iter().all(|n| n.starts_with("a/p2/")));
    }

    #[test]
    fn apply_and_delete_report_changes_and_heartbeats_do_not() {
        let mut s = state(1, AttachMetadata::default());
        s.on_pod(0, Event::Init);
        s.on_pod(0, Event::InitDone);
        assert!(s.on_pod(0, Event::Apply(pod("a", "p", "n1", "u1"))));
        let mut same = pod("a", "p", "n1", "u1");
        same.metadata.resource_version = Some("999".into());
        assert!(!s.on_pod(0, Event::Apply(same)), "nothing labelled changed");
        let mut restarted = pod("a", "p", "n1", "u1");
        restarted
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[1]
            .container_id = Some("containerd://nginx4".into());
        assert!(s.on_pod(0, Event::Apply(restarted)));
        let set = s.target_set();
        let nginx = set
            .targets
            .values()
            .find(|t| t.id.container == "nginx")
            .unwrap();
        assert_eq!(nginx.container_id.as_deref(), Some("containerd://nginx4"));
        assert!(s.on_pod(0, Event::Delete(pod("a", "p", "n1", "u1"))));
        assert!(!s.on_pod(0, Event::Delete(pod("a", "p", "n1", "u1"))));
        assert!(s.target_set().targets.is_empty());
    }

    #[test]
    fn node_and_namespace_metadata_join_and_update() {
        let attach = AttachMetadata {
            node: true,
            namespace: true,
        };
        let mut s = state(1, attach);
        s.on_pod(0, Event::Init);
        s.on_pod(0, Event::InitApply(pod("a", "p", "n1", "u1")));
        s.on_pod(0, Event::InitApply(pod("b", "q", "n2", "u2")));
        s.on_pod(0, Event::InitDone);
        assert!(!s.is_synced(), "metadata watchers not listed yet");
        s.on_node(Event::Init);
        s.on_node(Event::InitApply(meta("n1", &[("zone", "z1")])));
        s.on_node(Event::InitDone);
        s.on_namespace(Event::Init);
        s.on_namespace(Event::InitApply(meta("a", &[("team", "t")])));
        assert!(s.on_namespace(Event::InitDone));
        assert!(s.is_synced());

        let label = |s: &WatchState, pod: &str, name: &str| -> Option<String> {
            let set = s.target_set();
            let t = set.targets.values().find(|t| t.id.pod == pod).unwrap();
            t.discovered.get(name).cloned()
        };
        assert_eq!(
            label(&s, "p", "__meta_kubernetes_node_label_zone").as_deref(),
            Some("z1")
        );
        assert_eq!(
            label(&s, "p", "__meta_kubernetes_namespace_label_team").as_deref(),
            Some("t")
        );
        assert_eq!(label(&s, "q", "__meta_kubernetes_node_label_zone"), None);

        // Same labels again (a heartbeat): nothing to do.
        assert!(!s.on_node(Event::Apply(meta("n1", &[("zone", "z1")]))));
        // A label change reaches the pods on that node only.
        assert!(s.on_node(Event::Apply(meta("n1", &[("zone", "z9")]))));
        assert_eq!(
            label(&s, "p", "__meta_kubernetes_node_label_zone").as_deref(),
            Some("z9")
        );
        // A new node for q's pods.
        assert!(s.on_node(Event::Apply(meta("n2", &[("zone", "z2")]))));
        assert_eq!(
            label(&s, "q", "__meta_kubernetes_node_label_zone").as_deref(),
            Some("z2")
        );
        assert!(s.on_node(Event::Delete(meta("n2", &[]))));
        assert_eq!(label(&s, "q", "__meta_kubernetes_node_name"), None);
    }

    #[test]
    fn reconfigure_relabels_everything_and_replaces_statics() {
        let mut s = state(1, AttachMetadata::default());
        s.on_pod(0, Event::Init);
        s.on_pod(0, Event::InitApply(pod("a", "p", "n1", "u1")));
        s.on_pod(0, Event::InitDone);
        let statik = StaticTarget {
            labels: [
                ("__pod_namespace__", "x"),
                ("__pod_name__", "y"),
                ("__pod_container_name__", "z"),
                ("__pod_uid__", "u"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        // Keep only the sidecar; job from the default rules no longer applies.
        let keep_sidecar = RelabelRule {
            source_labels: vec!["__meta_kubernetes_pod_container_name".into()],
            regex: crate::discovery::relabel::anchored("sidecar|z").unwrap(),
            action: crate::config::model::RelabelAction::Keep,
            ..crate::discovery::relabel::rule_with_defaults()
        };
        let mut rules = vec![keep_sidecar];
        rules.extend(default_rules());
        s.reconfigure(Arc::new(rules), std::slice::from_ref(&statik));
        // The static target has no container-name meta label: `keep` sees "" and drops it.
        assert_eq!(names(&s), ["a/p/sidecar"]);
        s.reconfigure(Arc::new(default_rules()), &[statik]);
        assert_eq!(names(&s).len(), 5);
        assert!(names(&s).contains(&"x/y/z".to_string()));
    }
}
