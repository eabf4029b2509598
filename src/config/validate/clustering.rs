//! The `[clustering]` table (SPEC §4.6, §7): whether replicas share the targets, who this
//! replica is, and the lease timing that hands targets over.

use super::{Checker, HOUR, is_dns_label};
use crate::config::model::*;
use crate::config::raw::*;

/// The `[clustering]` table; its need for shared positions is checked in [`super::validate`].
pub(super) fn clustering(c: &mut Checker, raw: Option<&RawClustering>) -> ClusteringConfig {
    let d = ClusteringConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let namespace = c.non_empty("clustering.namespace", raw.namespace.as_ref());
    if let Some(ns) = &namespace
        && !is_dns_label(ns)
    {
        c.error(
            "clustering.namespace",
            format!(
                "{ns:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
            ),
        );
    }
    let lease_duration = c.positive_duration(
        "clustering.lease_duration",
        raw.lease_duration.as_deref(),
        d.lease_duration,
        HOUR,
    );
    let renew_interval = c.positive_duration(
        "clustering.renew_interval",
        raw.renew_interval.as_deref(),
        d.renew_interval,
        HOUR,
    );
    if renew_interval >= lease_duration {
        c.error(
            "clustering.renew_interval",
            "must be shorter than lease_duration (a lease renewed after it expired drops the replica)",
        );
    }
    ClusteringConfig {
        enabled: raw.enabled.unwrap_or(false),
        identity: c.non_empty("clustering.identity", raw.identity.as_ref()),
        namespace,
        lease_duration,
        renew_interval,
    }
}
