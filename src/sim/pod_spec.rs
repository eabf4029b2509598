//! The description of a pod to simulate (SPEC §8.5): namespace, name, labels, owner, node,
//! `restartPolicy` and its scripted containers, built with [`PodSpec::new`] and its setters, or
//! read from a scenario file. The cluster turns it into a running pod.

use std::collections::BTreeMap;
use std::time::Duration;

use super::container::ContainerSpec;

/// When the kubelet restarts an exited container (the pod's `restartPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum RestartPolicy {
    /// Always restart (Deployments).
    #[default]
    Always,
    /// Restart only after a non-zero exit code.
    OnFailure,
    /// Never restart (Job pods).
    Never,
}

impl RestartPolicy {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// The controller owning a pod (`ownerReferences` with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// `ReplicaSet`, `Job`, `StatefulSet`, `DaemonSet`, …
    pub kind: String,
    /// The owner's name, e.g. `web-5d8f`.
    pub name: String,
}

/// A pod to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// What happens when a container exits.
    pub restart_policy: RestartPolicy,
    /// The controlling owner, if any.
    pub owner: Option<Owner>,
    /// The node it runs on.
    pub node_name: String,
    /// Added to every container's `start_delay` (image pull, volume mounts…).
    pub start_delay: Duration,
    /// Init containers, run one after the other before `containers`.
    pub init_containers: Vec<ContainerSpec>,
    /// Regular containers.
    pub containers: Vec<ContainerSpec>,
    /// The pod's UID; random (as the API server makes it) when `None`.
    pub uid: Option<String>,
}

impl Default for PodSpec {
    fn default() -> Self {
        PodSpec {
            namespace: "default".into(),
            name: "pod".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            restart_policy: RestartPolicy::Always,
            owner: None,
            node_name: "node-1".into(),
            start_delay: Duration::ZERO,
            init_containers: Vec::new(),
            containers: Vec::new(),
            uid: None,
        }
    }
}

impl PodSpec {
    /// A pod without containers (add some with [`PodSpec::container`]).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        }
    }
    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    /// Adds an annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
    /// Sets the UID (tests that need the same shard keys in every run; the API server's are
    /// random).
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }
    /// Sets the restart policy.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = policy;
        self
    }
    /// Sets the controlling owner.
    pub fn owner(mut self, kind: impl Into<String>, name: impl Into<String>) -> Self {
        self.owner = Some(Owner {
            kind: kind.into(),
            name: name.into(),
        });
        self
    }
    /// Sets the node.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node_name = node.into();
        self
    }
    /// Delays every container's start.
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }
    /// Adds an init container.
    pub fn init_container(mut self, container: ContainerSpec) -> Self {
        self.init_containers.push(container);
        self
    }
    /// Adds a container.
    pub fn container(mut self, container: ContainerSpec) -> Self {
        self.containers.push(container);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_decides_like_the_kubelet() {
        use RestartPolicy::*;
        for (policy, code, want) in [
            (Always, 0, true),
            (Always, 1, true),
            (OnFailure, 0, false),
            (OnFailure, 2, true),
            (Never, 0, false),
            (Never, 1, false),
        ] {
            assert_eq!(policy.restarts(code), want, "{policy:?} exit {code}");
        }
    }
}
