//! From relabelled labels to tail-able [`Target`]s, or [`RejectedTarget`]s with a reason
//! (SPEC §4.3).
//!
//! A target must resolve the four identity labels the reference requires. Each may come from
//! its `__pod_*__` form or its `__meta_kubernetes_*` form; the explicit `__pod_*__` form wins, so a
//! rule can redirect a target. The relabelled set still carries every `__` label here: they are
//! dropped only when the public [`Labels`] are built, except `__tenant_id__`, which picks the
//! tenant.

use std::collections::btree_map::Entry;
use std::sync::Arc;

use super::meta;
use super::relabel::is_valid_label_name;
use crate::target::{
    ContainerState, LabelMap, Labels, RejectedTarget, Stream, Target, TargetId, TargetSet,
};

/// The label that selects a target's Loki tenant.
pub const TENANT_LABEL: &str = "__tenant_id__";

/// The identity labels: (explicit form, discovery form).
const IDENTITY: [(&str, &str); 4] = [
    ("__pod_namespace__", meta::NAMESPACE),
    ("__pod_name__", meta::POD_NAME),
    ("__pod_container_name__", meta::CONTAINER_NAME),
    ("__pod_uid__", meta::POD_UID),
];

/// Builds one target from its discovered labels, its labels after relabelling and its
/// container's state when a watch knows it.
pub fn build_target(
    discovered: Arc<LabelMap>,
    relabelled: LabelMap,
    state: Option<Arc<ContainerState>>,
) -> Result<Target, RejectedTarget> {
    let reject = |labels: LabelMap, reason: String| RejectedTarget {
        discovered: discovered.clone(),
        labels,
        reason,
    };
    let non_empty = |map: &LabelMap, name: &str| -> Option<String> {
        map.get(name).filter(|v| !v.is_empty()).cloned()
    };

    let mut parts: Vec<String> = Vec::with_capacity(4);
    let mut missing: Vec<String> = Vec::new();
    for (explicit, meta_name) in IDENTITY {
        match non_empty(&relabelled, explicit).or_else(|| non_empty(&relabelled, meta_name)) {
            Some(v) => parts.push(v),
            None => missing.push(format!("{meta_name} (or {explicit})")),
        }
    }
    if !missing.is_empty() {
        let reason = format!("missing {}", missing.join(", "));
        return Err(reject(relabelled, reason));
    }
    let [namespace, pod, container, uid]: [String; 4] =
        parts.try_into().expect("one value per identity label");

    let bad: Vec<&str> = relabelled
        .keys()
        .filter(|k| !k.starts_with("__") && !is_valid_label_name(k))
        .map(String::as_str)
        .collect();
    if !bad.is_empty() {
        let reason = format!(
            "invalid label name {}: names must match [a-zA-Z_][a-zA-Z0-9_]* (fix the [[relabel]] rules)",
            bad.iter()
                .map(|b| format!("{b:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Err(reject(relabelled, reason));
    }

    // An empty value means "no label" (Prometheus); `relabel` already removed them, but static
    // targets reach here the same way and cost nothing to check.
    let public = Labels::public_from(&relabelled);
    let public = if public.pairs().iter().any(|(_, v)| v.is_empty()) {
        Labels::from_pairs(
            public
                .pairs()
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .cloned(),
        )
    } else {
        public
    };
    if public.is_empty() {
        return Err(reject(
            relabelled,
            "no public label left after relabelling: Loki needs at least one (map one with \
             [[relabel]], e.g. namespace or pod)"
                .into(),
        ));
    }
    let tenant = non_empty(&relabelled, TENANT_LABEL);
    let container_id = non_empty(&relabelled, meta::CONTAINER_ID)
        .or_else(|| non_empty(&discovered, meta::CONTAINER_ID));

    Ok(Target {
        id: TargetId {
            namespace,
            pod,
            container,
            uid,
        },
        stream: Arc::new(Stream {
            labels: public,
            tenant,
        }),
        discovered,
        container_id,
        state,
    })
}

/// Builds a complete set from `(discovered, relabelled, state)` triples of targets relabelling
/// kept. A second target with the identity of an earlier one is rejected, naming the first.
pub fn build_set(
    candidates: impl Iterator<Item = (Arc<LabelMap>, LabelMap, Option<Arc<ContainerState>>)>,
) -> TargetSet {
    let mut set = TargetSet::default();
    for (discovered, relabelled, state) in candidates {
        match build_target(discovered, relabelled, state) {
            Err(rejected) => set.rejected.push(rejected),
            Ok(target) => match set.targets.entry(target.id.clone()) {
                Entry::Vacant(slot) => {
                    slot.insert(target);
                }
                Entry::Occupied(first) => {
                    let id = first.key();
                    set.rejected.push(RejectedTarget {
                        labels: target.stream.labels.pairs().iter().cloned().collect(),
                        discovered: target.discovered,
                        reason: format!(
                            "duplicate of target {id} (uid {}): only the first is tailed",
                            id.uid
                        ),
                    });
                }
            },
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::meta::{pod_targets, tests::sample_pod};
    use crate::discovery::relabel::{default_rules, relabel};

    fn labels(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ident() -> Vec<(&'static str, &'static str)> {
        vec![
            ("__pod_namespace__", "ns"),
            ("__pod_name__", "p"),
            ("__pod_container_name__", "c"),
            ("__pod_uid__", "u"),
            ("job", "ns/c"),
        ]
    }

    fn build(pairs: &[(&str, &str)]) -> Result<Target, RejectedTarget> {
        let m = labels(pairs);
        build_target(Arc::new(m.clone()), m, None)
    }

    #[test]
    fn static_target_with_explicit_identity() {
        let mut pairs = ident();
        pairs.push(("__tenant_id__", "team-a"));
        let t = build(&pairs).unwrap();
        assert_eq!(
            t.id,
            TargetId {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into(),
                uid: "u".into()
            }
        );
        assert_eq!(t.stream.labels.as_text(), r#"{job="ns/c"}"#);
        assert_eq!(t.stream.tenant.as_deref(), Some("team-a"));
        assert_eq!(t.container_id, None);
    }

    #[test]
    fn explicit_identity_wins_over_meta() {
        let mut pairs = ident();
        pairs.push(("__meta_kubernetes_namespace", "meta"));
        assert_eq!(build(&pairs).unwrap().id.namespace, "ns");
    }

    #[test]
    fn missing_identity_names_every_missing_label() {
        let err = build(&[
            ("__pod_namespace__", "ns"),
            ("__pod_name__", ""),
            ("job", "x"),
        ])
        .unwrap_err();
        assert_eq!(
            err.reason,
            "missing __meta_kubernetes_pod_name (or __pod_name__), \
             __meta_kubernetes_pod_container_name (or __pod_container_name__), \
             __meta_kubernetes_pod_uid (or __pod_uid__)"
        );
        let mut pairs = ident();
        pairs.retain(|(k, _)| *k != "__pod_uid__");
        assert_eq!(
            build(&pairs).unwrap_err().reason,
            "missing __meta_kubernetes_pod_uid (or __pod_uid__)"
        );
    }

    #[test]
    fn invalid_label_name_is_rejected_with_its_name() {
        let mut pairs = ident();
        pairs.push(("bad-name", "x"));
        let err = build(&pairs).unwrap_err();
        assert!(err.reason.contains("\"bad-name\""), "{}", err.reason);
    }

    #[test]
    fn no_public_label_is_rejected() {
        let mut pairs = ident();
        pairs.retain(|(k, _)| *k != "job");
        pairs.push(("empty", ""));
        let err = build(&pairs).unwrap_err();
        assert!(err.reason.starts_with("no public label"), "{}", err.reason);
    }

    #[test]
    fn pod_through_default_rules() {
        let rules = default_rules();
        let pod = sample_pod();
        let candidates = pod_targets(&pod, None, None)
            .into_iter()
            .zip(crate::discovery::meta::container_states(&pod))
            .filter_map(|(m, state)| {
                let d = Arc::new(m.clone());
                relabel(&rules, m).map(|r| (d, r, Some(Arc::new(state))))
            });
        let set = build_set(candidates);
        assert!(set.rejected.is_empty(), "{:?}", set.rejected);
        let names: Vec<&str> = set.targets.keys().map(|id| id.container.as_str()).collect();
        assert_eq!(names, ["debugger", "migrate", "nginx", "sidecar"]);
        let nginx = set
            .targets
            .values()
            .find(|t| t.id.container == "nginx")
            .unwrap();
        assert_eq!(
            nginx.stream.labels.as_text(),
            r#"{app="web", container="nginx", job="shop/nginx", namespace="shop", pod="web-7d4b9-x2k4z"}"#
        );
        assert_eq!(nginx.container_id.as_deref(), Some("containerd://nginx3"));
        let state = nginx
            .state
            .as_deref()
            .expect("the watched state rides along");
        assert_eq!(state.current_instance(), Some("containerd://nginx3"));
        assert_eq!(nginx.id.uid, "0b1c2d3e-0000-4000-8000-000000000001");
        assert_eq!(nginx.stream.tenant, None);
        assert_eq!(
            nginx.discovered["__meta_kubernetes_pod_container_port_number"],
            "80"
        );
    }

    #[test]
    fn duplicates_keep_the_first_and_reject_the_second() {
        let a = labels(&ident());
        let mut b = a.clone();
        b.insert("extra".into(), "2".into());
        let bad = labels(&[("job", "x")]);
        let set = build_set(
            [a.clone(), b, bad]
                .into_iter()
                .map(|m| (Arc::new(m.clone()), m, None)),
        );
        assert_eq!(set.targets.len(), 1);
        let kept = set.targets.values().next().unwrap();
        assert_eq!(kept.stream.labels.get("extra"), None);
        assert_eq!(set.rejected.len(), 2);
        assert_eq!(
            set.rejected[0].reason,
            "duplicate of target ns/p/c (uid u): only the first is tailed"
        );
        assert!(set.rejected[1].reason.starts_with("missing"));
    }
}
