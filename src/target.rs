//! Targets: one container to tail, named by its identity and carrying its label sets.
//!
//! SPEC §2 and §4.3. Discovery produces complete [`TargetSet`]s; the registry diffs them by
//! [`TargetId`]; the tailer stamps every chunk with the target's shared public [`Labels`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A label map in name order, as discovery and relabelling see it (may hold `__` labels).
pub type LabelMap = BTreeMap<String, String>;

/// Target identity (SPEC §2): what the registry diffs on and positions are keyed by.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TargetId {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub uid: String,
}

impl fmt::Display for TargetId {
    /// `namespace/pod/container`, the form used in every log line and error message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
    }
}

/// The public labels of a stream: sorted, without `__` labels, rendered once in Loki's
/// Prometheus text form (`{a="b", c="d"}`) so encoding a batch never re-renders them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Labels {
    pairs: Vec<(String, String)>,
    text: String,
    /// Every name is a valid Loki label name of at most `MAX_LABEL_NAME_LENGTH` bytes.
    names_valid: bool,
    /// The length of the longest value.
    longest_value: usize,
    /// FNV-1a of `text`: Loki's stream hash, computed once per label set.
    stream_hash: u64,
}

impl Labels {
    /// Builds public labels from a label map, dropping every name that starts with `__`.
    pub fn public_from(map: &LabelMap) -> Labels {
        Labels::from_pairs(
            map.iter()
                .filter(|(k, _)| !k.starts_with("__"))
                .map(|(k, v)| (k.clone(), v.clone())),
        )
    }

    /// Builds labels from pairs; later duplicates win, the result is sorted by name.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Labels {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        let pairs: Vec<(String, String)> = map.into_iter().collect();
        let text = render(&pairs);
        let names_valid = pairs.iter().all(|(name, _)| {
            crate::receiver::limits::valid_label_name(name)
                && name.len() <= crate::receiver::limits::MAX_LABEL_NAME_LENGTH
        });
        let longest_value = pairs.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let stream_hash = fnv1a(text.as_bytes());
        Labels {
            pairs,
            text,
            names_valid,
            longest_value,
            stream_hash,
        }
    }

    /// The pairs in name order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The value of one label.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// Loki's stream selector form: `{a="b", c="d"}`.
    pub fn as_text(&self) -> &str {
        &self.text
    }

    /// FNV-1a of [`Labels::as_text`] ([`fnv1a`]): Loki's stream hash.
    pub fn stream_hash(&self) -> u64 {
        self.stream_hash
    }

    /// Every name is a valid Loki label name, short enough (checked once, when built: a
    /// receiver checks each stream's labels in every batch).
    pub fn names_valid(&self) -> bool {
        self.names_valid
    }

    /// The length of the longest value.
    pub fn longest_value(&self) -> usize {
        self.longest_value
    }

    /// Number of label names.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there is no label.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// A copy with `extra` labels added where the name is not already present
    /// (`external_labels` never override a target's own labels, as in the reference).
    pub fn with_defaults(&self, extra: &[(String, String)]) -> Labels {
        if extra.is_empty() {
            return self.clone();
        }
        let mut map: BTreeMap<String, String> = extra.iter().cloned().collect();
        map.extend(self.pairs.iter().cloned());
        Labels::from_pairs(map)
    }
}

/// FNV-1a, 64 bits: stable across processes and versions, unlike `std`'s hasher.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn render(pairs: &[(String, String)]) -> String {
    let mut out = String::with_capacity(2 + pairs.len() * 24);
    out.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The stream a tailer writes to: public labels plus the tenant chosen by `__tenant_id__`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    pub labels: Labels,
    /// `__tenant_id__` of the target; `None` means the receiver's own `tenant_id`.
    pub tenant: Option<String>,
}

/// One container to tail.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub id: TargetId,
    /// Public labels and tenant, shared by every chunk of this target.
    pub stream: Arc<Stream>,
    /// Every label discovery found, before relabelling (for `/api/v1/targets`).
    pub discovered: Arc<LabelMap>,
    /// `__meta_kubernetes_pod_container_id` when known (changes when the container restarts).
    pub container_id: Option<String>,
    /// What the pod watch last said about the container; `None` where no watch knows it
    /// (static `[[targets]]`): the tailer then asks the API server.
    pub state: Option<Arc<ContainerState>>,
}

/// A container as its pod reports it: what the tailer decides reconnects, restarts and
/// termination on (SPEC §5.4–§5.5), kept small because every target carries one.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerState {
    /// The pod's `status.phase` (`Succeeded` and `Failed` are terminal).
    pub pod_phase: Option<String>,
    /// The pod's `spec.restartPolicy` (`Always` when unset).
    pub restart_policy: Option<String>,
    /// Which list the container is in: restart rules differ.
    pub kind: ContainerKind,
    /// The container's status; `None` while the pod does not report it yet.
    pub status: Option<ContainerRun>,
}

/// Which list of the pod a container is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContainerKind {
    #[default]
    Regular,
    /// An init container; `sidecar` when its own restartPolicy is `Always`.
    Init { sidecar: bool },
    /// A debug container (`kubectl debug`): never restarted.
    Ephemeral,
}

/// A container's reported instance and state.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerRun {
    /// The instance the kubelet serves logs of (`containerd://…`), when it has one.
    pub container_id: Option<String>,
    pub run: Run,
}

/// The state of a container instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Run {
    Running,
    Terminated {
        exit_code: i32,
    },
    /// Waiting (image pull, crash-loop backoff), or no state reported.
    #[default]
    Waiting,
}

impl ContainerState {
    /// What `pod` says about `container`.
    pub fn from_pod(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> ContainerState {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let sidecar = spec
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|l| l.iter().find(|c| c.name == container))
            .and_then(|c| c.restart_policy.as_deref())
            == Some("Always");
        let lists = [
            (
                status.and_then(|s| s.container_statuses.as_ref()),
                ContainerKind::Regular,
            ),
            (
                status.and_then(|s| s.init_container_statuses.as_ref()),
                ContainerKind::Init { sidecar },
            ),
            (
                status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
                ContainerKind::Ephemeral,
            ),
        ];
        let found = lists.into_iter().find_map(|(list, kind)| {
            list?
                .iter()
                .find(|cs| cs.name == container)
                .map(|cs| (cs, kind))
        });
        let kind = match found {
            Some((_, kind)) => kind,
            // Not reported yet: the spec says which list it belongs to.
            None if spec.is_some_and(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
            }) =>
            {
                ContainerKind::Init { sidecar }
            }
            None if spec.is_some_and(|s| {
                s.ephemeral_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
            }) =>
            {
                ContainerKind::Ephemeral
            }
            None => ContainerKind::Regular,
        };
        ContainerState {
            pod_phase: status.and_then(|s| s.phase.clone()),
            restart_policy: spec.and_then(|s| s.restart_policy.clone()),
            kind,
            status: found.map(|(cs, _)| {
                let state = cs.state.as_ref();
                let run = if state.is_some_and(|s| s.running.is_some()) {
                    Run::Running
                } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                    Run::Terminated {
                        exit_code: t.exit_code,
                    }
                } else {
                    Run::Waiting
                };
                ContainerRun {
                    container_id: cs.container_id.clone().filter(|id| !id.is_empty()),
                    run,
                }
            }),
        }
    }

    /// The container ID the kubelet serves logs of right now, when the pod says.
    pub fn current_instance(&self) -> Option<&str> {
        self.status.as_ref()?.container_id.as_deref()
    }
}

/// A target that relabelling kept but that cannot be tailed, with the reason (SPEC §4.3).
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedTarget {
    pub discovered: Arc<LabelMap>,
    pub labels: LabelMap,
    pub reason: String,
}

/// A complete target set: discovery sends whole sets, never deltas (SPEC §2).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetSet {
    pub targets: BTreeMap<TargetId, Target>,
    pub rejected: Vec<RejectedTarget>,
}

/// Discovery → registry: the new complete target set.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct SetTargets(pub TargetSet);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_labels_drop_reserved_names_and_render_sorted() {
        let mut m = LabelMap::new();
        m.insert("pod".into(), "web-1".into());
        m.insert("__tenant_id__".into(), "t".into());
        m.insert("app".into(), "say \"hi\"\\".into());
        let l = Labels::public_from(&m);
        assert_eq!(l.as_text(), r#"{app="say \"hi\"\\", pod="web-1"}"#);
        assert_eq!(l.get("pod"), Some("web-1"));
        assert_eq!(l.get("__tenant_id__"), None);
    }

    #[test]
    fn external_labels_do_not_override() {
        let l = Labels::from_pairs([("a".to_string(), "1".to_string())]);
        let l2 = l.with_defaults(&[("a".into(), "x".into()), ("cluster".into(), "c".into())]);
        assert_eq!(l2.as_text(), r#"{a="1", cluster="c"}"#);
    }
}
