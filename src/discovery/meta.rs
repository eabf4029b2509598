//! The `__meta_kubernetes_*` labels of a pod's containers, as Prometheus' Kubernetes pod role
//! produces them (SPEC §4.2).
//!
//! Pure functions from API objects to [`LabelMap`]s: the discovery actor calls them on every pod
//! event and the relabelling rules (§4.3) see exactly what `discovery.kubernetes` would give them,
//! so rules written for the reference work unchanged. Differences from Prometheus, all on purpose:
//!
//! - Prometheus emits one target per container *port*; a log stream belongs to a container, so we
//!   emit one target per container and carry its **first** port's labels (when it has ports).
//! - Ephemeral containers (`kubectl debug`) get a target too: their logs are real logs.
//! - Prometheus skips pods without an IP; that would also skip evicted and finished pods whose
//!   last lines we still owe Loki. We skip only pods not yet scheduled (no `spec.nodeName`): they
//!   have no container and no log yet.

use k8s_openapi::api::core::v1::{Container, ContainerPort, ContainerStatus, Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::target::{ContainerState, LabelMap};

/// Prefix of every discovery label.
const META: &str = "__meta_kubernetes_";

/// `__meta_kubernetes_namespace`.
pub const NAMESPACE: &str = "__meta_kubernetes_namespace";
/// `__meta_kubernetes_pod_name`.
pub const POD_NAME: &str = "__meta_kubernetes_pod_name";
/// `__meta_kubernetes_pod_uid`.
pub const POD_UID: &str = "__meta_kubernetes_pod_uid";
/// `__meta_kubernetes_pod_container_name`.
pub const CONTAINER_NAME: &str = "__meta_kubernetes_pod_container_name";
/// `__meta_kubernetes_pod_container_id` (`containerd://…`; changes when the container restarts).
pub const CONTAINER_ID: &str = "__meta_kubernetes_pod_container_id";

/// One label map per container of `pod` (regular, then init, then ephemeral containers), with
/// the node's and the namespace's labels merged in when `attach_metadata` supplies them.
///
/// A pod that is not scheduled yet yields nothing (see the module documentation).
pub fn pod_targets(pod: &Pod, node: Option<&Node>, namespace: Option<&Namespace>) -> Vec<LabelMap> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    if spec.node_name.as_deref().unwrap_or_default().is_empty() {
        return Vec::new();
    }
    let mut common = pod_labels(pod);
    if let Some(node) = node {
        common.extend(node_labels(&node.metadata));
    }
    if let Some(ns) = namespace {
        common.extend(namespace_labels(&ns.metadata));
    }

    let status = pod.status.as_ref();
    let regular = status.and_then(|s| s.container_statuses.as_deref());
    let init = status.and_then(|s| s.init_container_statuses.as_deref());
    let ephemeral = status.and_then(|s| s.ephemeral_container_statuses.as_deref());

    let mut out = Vec::new();
    for c in &spec.containers {
        out.push(container_labels(&common, c, regular, false));
    }
    for c in spec.init_containers.iter().flatten() {
        out.push(container_labels(&common, c, init, true));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        // Ephemeral containers may not declare ports (the API server refuses them).
        let mut m = common.clone();
        add_container(&mut m, &c.name, c.image.as_deref(), ephemeral, false);
        out.push(m);
    }
    out
}

/// What `pod` says about each of its containers, in the order of [`pod_targets`] (which it
/// matches one for one): the tailers decide on this instead of fetching the pod (SPEC §5.4).
pub fn container_states(pod: &Pod) -> Vec<ContainerState> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    if spec.node_name.as_deref().unwrap_or_default().is_empty() {
        return Vec::new();
    }
    let regular = spec.containers.iter().map(|c| &c.name);
    let init = spec.init_containers.iter().flatten().map(|c| &c.name);
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| &c.name);
    regular
        .chain(init)
        .chain(ephemeral)
        .map(|name| ContainerState::from_pod(pod, name))
        .collect()
}

/// The labels shared by every container of a pod (no node or namespace metadata).
pub fn pod_labels(pod: &Pod) -> LabelMap {
    let mut m = LabelMap::new();
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let own = |v: Option<&String>| v.cloned().unwrap_or_default();
    m.insert(NAMESPACE.into(), own(meta.namespace.as_ref()));
    m.insert(POD_UID.into(), own(meta.uid.as_ref()));
    m.insert(
        format!("{META}pod_ip"),
        own(status.and_then(|s| s.pod_ip.as_ref())),
    );
    m.insert(
        format!("{META}pod_host_ip"),
        own(status.and_then(|s| s.host_ip.as_ref())),
    );
    m.insert(
        format!("{META}pod_phase"),
        own(status.and_then(|s| s.phase.as_ref())),
    );
    m.insert(
        format!("{META}pod_node_name"),
        own(spec.and_then(|s| s.node_name.as_ref())),
    );
    m.insert(format!("{META}pod_ready"), pod_ready(pod));
    add_object_meta(&mut m, meta, "pod");

    // Same rule as apimachinery's GetControllerOf: the owner reference marked `controller`.
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    if let Some(c) = controller {
        if !c.kind.is_empty() {
            m.insert(format!("{META}pod_controller_kind"), c.kind.clone());
        }
        if !c.name.is_empty() {
            m.insert(format!("{META}pod_controller_name"), c.name.clone());
        }
    }
    m
}

/// `attach_metadata.node`, from the node's metadata: `__meta_kubernetes_node_name`,
/// `_node_label_*`, `_node_labelpresent_*`, `_node_annotation_*`, `_node_annotationpresent_*`.
pub fn node_labels(node: &ObjectMeta) -> LabelMap {
    let mut m = LabelMap::new();
    add_object_meta(&mut m, node, "node");
    m
}

/// `attach_metadata.namespace`, from the namespace's metadata: `__meta_kubernetes_namespace_label_*`, `_labelpresent_*`,
/// `_annotation_*`, `_annotationpresent_*` (the name is already `__meta_kubernetes_namespace`).
pub fn namespace_labels(ns: &ObjectMeta) -> LabelMap {
    let mut m = LabelMap::new();
    add_labels_and_annotations(&mut m, ns, "namespace");
    m
}

/// Prometheus' `strutil.SanitizeLabelName`: every character outside `[a-zA-Z0-9_]` becomes `_`.
pub fn sanitize_label_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<role>_name` plus labels and annotations, as Prometheus' `addObjectMetaLabels`.
fn add_object_meta(m: &mut LabelMap, meta: &ObjectMeta, role: &str) {
    m.insert(
        format!("{META}{role}_name"),
        meta.name.clone().unwrap_or_default(),
    );
    add_labels_and_annotations(m, meta, role);
}

fn add_labels_and_annotations(m: &mut LabelMap, meta: &ObjectMeta, role: &str) {
    for (kind, map) in [("label", &meta.labels), ("annotation", &meta.annotations)] {
        for (k, v) in map.iter().flatten() {
            let name = sanitize_label_name(k);
            m.insert(format!("{META}{role}_{kind}_{name}"), v.clone());
            m.insert(format!("{META}{role}_{kind}present_{name}"), "true".into());
        }
    }
}

/// The `Ready` condition's status in lower case, `unknown` when the pod has none.
fn pod_ready(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map_or_else(|| "unknown".to_string(), |c| c.status.to_lowercase())
}

fn container_labels(
    common: &LabelMap,
    c: &Container,
    statuses: Option<&[ContainerStatus]>,
    init: bool,
) -> LabelMap {
    let mut m = common.clone();
    add_container(&mut m, &c.name, c.image.as_deref(), statuses, init);
    // One target per container, not per port (module docs): the first port stands for them.
    if let Some(port) = c.ports.as_deref().and_then(|p| p.first()) {
        add_port(&mut m, port);
    }
    m
}

fn add_container(
    m: &mut LabelMap,
    name: &str,
    image: Option<&str>,
    statuses: Option<&[ContainerStatus]>,
    init: bool,
) {
    let id = statuses
        .and_then(|ss| ss.iter().find(|s| s.name == name))
        .and_then(|s| s.container_id.clone())
        .unwrap_or_default();
    m.insert(CONTAINER_NAME.into(), name.to_string());
    m.insert(CONTAINER_ID.into(), id);
    m.insert(
        format!("{META}pod_container_image"),
        image.unwrap_or_default().to_string(),
    );
    m.insert(format!("{META}pod_container_init"), init.to_string());
}

fn add_port(m: &mut LabelMap, port: &ContainerPort) {
    m.insert(
        format!("{META}pod_container_port_name"),
        port.name.clone().unwrap_or_default(),
    );
    m.insert(
        format!("{META}pod_container_port_number"),
        port.container_port.to_string(),
    );
    m.insert(
        format!("{META}pod_container_port_protocol"),
        port.protocol.clone().unwrap_or_default(),
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pod with 1 init, 2 regular (the first with two ports) and 1 ephemeral container,
    /// labels with dots and slashes, and a ReplicaSet controller.
    pub(crate) fn sample_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-7d4b9-x2k4z",
                "namespace": "shop",
                "uid": "0b1c2d3e-0000-4000-8000-000000000001",
                "labels": {
                    "app.kubernetes.io/name": "web",
                    "pod-template-hash": "7d4b9"
                },
                "annotations": {"prometheus.io/scrape": "true"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-me", "uid": "u0"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9",
                     "uid": "u1", "controller": true}
                ]
            },
            "spec": {
                "nodeName": "node-a",
                "initContainers": [{"name": "migrate", "image": "migrate:1"}],
                "containers": [
                    {"name": "nginx", "image": "nginx:1.27", "ports": [
                        {"name": "http", "containerPort": 80, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9113, "protocol": "TCP"}
                    ]},
                    {"name": "sidecar", "image": "busybox:1"}
                ],
                "ephemeralContainers": [{"name": "debugger", "image": "busybox:debug"}]
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "hostIP": "192.168.1.10",
                "conditions": [
                    {"type": "Initialized", "status": "True"},
                    {"type": "Ready", "status": "False"}
                ],
                "initContainerStatuses": [{"name": "migrate", "image": "migrate:1", "imageID": "",
                    "ready": false, "restartCount": 0, "containerID": "containerd://init1"}],
                "containerStatuses": [
                    {"name": "sidecar", "image": "busybox:1", "imageID": "", "ready": true,
                     "restartCount": 0, "containerID": "containerd://side1"},
                    {"name": "nginx", "image": "nginx:1.27", "imageID": "", "ready": false,
                     "restartCount": 2, "containerID": "containerd://nginx3"}
                ],
                "ephemeralContainerStatuses": [{"name": "debugger", "image": "busybox:debug",
                    "imageID": "", "ready": false, "restartCount": 0,
                    "containerID": "containerd://dbg1"}]
            }
        }))
        .expect("valid pod JSON")
    }

    fn map(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn common() -> Vec<(&'static str, &'static str)> {
        vec![
            ("__meta_kubernetes_namespace", "shop"),
            ("__meta_kubernetes_pod_name", "web-7d4b9-x2k4z"),
            (
                "__meta_kubernetes_pod_uid",
                "0b1c2d3e-0000-4000-8000-000000000001",
            ),
            ("__meta_kubernetes_pod_ip", "10.0.0.7"),
            ("__meta_kubernetes_pod_host_ip", "192.168.1.10"),
            ("__meta_kubernetes_pod_node_name", "node-a"),
            ("__meta_kubernetes_pod_phase", "Running"),
            ("__meta_kubernetes_pod_ready", "false"),
            ("__meta_kubernetes_pod_label_app_kubernetes_io_name", "web"),
            (
                "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name",
                "true",
            ),
            ("__meta_kubernetes_pod_label_pod_template_hash", "7d4b9"),
            (
                "__meta_kubernetes_pod_labelpresent_pod_template_hash",
                "true",
            ),
            (
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
                "true",
            ),
            (
                "__meta_kubernetes_pod_annotationpresent_prometheus_io_scrape",
                "true",
            ),
            ("__meta_kubernetes_pod_controller_kind", "ReplicaSet"),
            ("__meta_kubernetes_pod_controller_name", "web-7d4b9"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> LabelMap {
        let mut pairs = common();
        pairs.extend_from_slice(extra);
        map(&pairs)
    }

    #[test]
    fn one_label_map_per_container_with_exact_labels() {
        let got = pod_targets(&sample_pod(), None, None);
        let want = vec![
            with(&[
                ("__meta_kubernetes_pod_container_name", "nginx"),
                ("__meta_kubernetes_pod_container_id", "containerd://nginx3"),
                ("__meta_kubernetes_pod_container_image", "nginx:1.27"),
                ("__meta_kubernetes_pod_container_init", "false"),
                ("__meta_kubernetes_pod_container_port_name", "http"),
                ("__meta_kubernetes_pod_container_port_number", "80"),
                ("__meta_kubernetes_pod_container_port_protocol", "TCP"),
            ]),
            with(&[
                ("__meta_kubernetes_pod_container_name", "sidecar"),
                ("__meta_kubernetes_pod_container_id", "containerd://side1"),
                ("__meta_kubernetes_pod_container_image", "busybox:1"),
                ("__meta_kubernetes_pod_container_init", "false"),
            ]),
            with(&[
                ("__meta_kubernetes_pod_container_name", "migrate"),
                ("__meta_kubernetes_pod_container_id", "containerd://init1"),
                ("__meta_kubernetes_pod_container_image", "migrate:1"),
                ("__meta_kubernetes_pod_container_init", "true"),
            ]),
            with(&[
                ("__meta_kubernetes_pod_container_name", "debugger"),
                ("__meta_kubernetes_pod_container_id", "containerd://dbg1"),
                ("__meta_kubernetes_pod_container_image", "busybox:debug"),
                ("__meta_kubernetes_pod_container_init", "false"),
            ]),
        ];
        assert_eq!(got.len(), 4);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
        }
    }

    #[test]
    fn unscheduled_pod_has_no_target_and_missing_status_gives_empty_values() {
        let mut pod = sample_pod();
        pod.spec.as_mut().unwrap().node_name = None;
        assert!(pod_targets(&pod, None, None).is_empty());

        let mut pod = sample_pod();
        pod.status = None;
        let got = pod_targets(&pod, None, None);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0]["__meta_kubernetes_pod_container_id"], "");
        assert_eq!(got[0]["__meta_kubernetes_pod_ready"], "unknown");
        assert_eq!(got[0]["__meta_kubernetes_pod_ip"], "");
    }

    #[test]
    fn no_controller_means_no_controller_labels() {
        let mut pod = sample_pod();
        pod.metadata.owner_references = None;
        let got = pod_targets(&pod, None, None);
        assert!(!got[0].contains_key("__meta_kubernetes_pod_controller_kind"));
        assert!(!got[0].contains_key("__meta_kubernetes_pod_controller_name"));
    }

    #[test]
    fn node_and_namespace_metadata_are_attached() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-a",
                "labels": {"topology.kubernetes.io/zone": "eu-1a"},
                "annotations": {"node.alpha/ttl": "0"}}
        }))
        .unwrap();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"team": "payments"},
                "annotations": {"owner/email": "x@y"}}
        }))
        .unwrap();
        let got = pod_targets(&sample_pod(), Some(&node), Some(&ns));
        let t = &got[1];
        let want = [
            ("__meta_kubernetes_node_name", "node-a"),
            (
                "__meta_kubernetes_node_label_topology_kubernetes_io_zone",
                "eu-1a",
            ),
            (
                "__meta_kubernetes_node_labelpresent_topology_kubernetes_io_zone",
                "true",
            ),
            ("__meta_kubernetes_node_annotation_node_alpha_ttl", "0"),
            (
                "__meta_kubernetes_node_annotationpresent_node_alpha_ttl",
                "true",
            ),
            ("__meta_kubernetes_namespace_label_team", "payments"),
            ("__meta_kubernetes_namespace_labelpresent_team", "true"),
            ("__meta_kubernetes_namespace_annotation_owner_email", "x@y"),
            (
                "__meta_kubernetes_namespace_annotationpresent_owner_email",
                "true",
            ),
        ];
        for (k, v) in want {
            assert_eq!(t.get(k).map(String::as_str), Some(v), "{k}");
        }
        // The namespace name stays the pod's, not overwritten by namespace metadata.
        assert_eq!(t[NAMESPACE], "shop");
        assert_eq!(t.len(), common().len() + 4 + want.len());
    }

    #[test]
    fn sanitize_replaces_every_invalid_character() {
        for (input, want) in [
            ("app.kubernetes.io/name", "app_kubernetes_io_name"),
            ("k8s-app", "k8s_app"),
            ("plain_1", "plain_1"),
            ("héllo", "h_llo"),
            ("", ""),
        ] {
            assert_eq!(sanitize_label_name(input), want, "{input}");
        }
    }
}
