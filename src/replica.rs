//! Who this replica is and where its Leases and positions live (SPEC §7): `[clustering]
//! identity` (default `POD_NAME`, else the hostname) and `namespace` (default the pod's own
//! namespace from the service-account mount, else `default`). A leaf: the positions store names
//! its ConfigMaps after it and the cluster its Lease.

use crate::config::ClusteringConfig;

/// Where Kubernetes mounts the pod's namespace.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The label every relay object (Leases, positions ConfigMaps) carries.
pub const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kube-log-relay");

/// The label naming the replica an object belongs to.
pub const IDENTITY_LABEL: &str = "kube-log-relay.io/identity";

/// The identity and namespace a replica runs with, resolved once at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// This replica's name: its Lease's holder and its positions ConfigMaps' suffix.
    pub name: String,
    /// The namespace of the Leases and positions ConfigMaps.
    pub namespace: String,
}

impl Identity {
    /// Resolves `config`'s defaults from the environment.
    pub fn resolve(config: &ClusteringConfig) -> Identity {
        Identity::resolve_with(
            config,
            std::env::var("POD_NAME").ok(),
            read_trimmed("/proc/sys/kernel/hostname").or_else(|| read_trimmed("/etc/hostname")),
            read_trimmed(SERVICE_ACCOUNT_NAMESPACE),
        )
    }

    /// [`Identity::resolve`] with the environment given (pure, for tests).
    pub fn resolve_with(
        config: &ClusteringConfig,
        pod_name: Option<String>,
        hostname: Option<String>,
        sa_namespace: Option<String>,
    ) -> Identity {
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Identity {
            name: non_empty(config.identity.clone())
                .or(non_empty(pod_name))
                .or(non_empty(hostname))
                .unwrap_or_else(|| "kube-log-relay".into()),
            namespace: non_empty(config.namespace.clone())
                .or(non_empty(sa_namespace))
                .unwrap_or_else(|| "default".into()),
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_values_win_then_pod_name_then_hostname() {
        let mut c = ClusteringConfig::default();
        let some = |s: &str| Some(s.to_string());
        let r = Identity::resolve_with(&c, some("relay-7f9"), some("host"), some("logs"));
        assert_eq!(
            (r.name.as_str(), r.namespace.as_str()),
            ("relay-7f9", "logs")
        );
        let r = Identity::resolve_with(&c, some(""), some("host"), None);
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("host", "default"));
        c.identity = some("me");
        c.namespace = some("relay");
        let r = Identity::resolve_with(&c, some("pod"), some("host"), some("logs"));
        assert_eq!((r.name.as_str(), r.namespace.as_str()), ("me", "relay"));
    }
}
