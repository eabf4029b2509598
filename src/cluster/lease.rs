//! This replica's Lease and the member list (SPEC §7).
//!
//! Every `renew_interval` the replica renews its own `coordination.k8s.io/v1` Lease (creating it
//! when missing, taking over one left by an earlier run of the same identity). It watches the
//! Leases labelled as relay members (kube-runtime's reflector): the members are the holders of
//! the unexpired ones, recomputed on every watch event and every `renew_interval` (a killed
//! replica's Lease expires without an event). A replica whose own renewal has not succeeded for
//! `lease_duration` considers itself out of the cluster (the others do too) and tails nothing.
//! On stop it deletes its Lease, so the others see the deletion and take over at once rather
//! than after the Lease expires.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::watcher::{self, watcher};
use tokio::sync::watch;

use super::handover::View;
use crate::config::ClusteringConfig;
use crate::replica::{Identity, NAME_LABEL};
use crate::telemetry;

/// The label that says a Lease is a relay member's.
pub const MEMBER_LABEL: (&str, &str) = ("app.kubernetes.io/component", "cluster-member");

/// The name of a replica's Lease.
pub fn lease_name(identity: &str) -> String {
    format!("kube-log-relay-{identity}")
}

/// The members among `leases` at `now`: holders whose last renewal is younger than the Lease's
/// duration.
pub fn members(leases: &[Lease], now: Timestamp) -> BTreeSet<String> {
    leases
        .iter()
        .filter_map(|l| {
            let spec = l.spec.as_ref()?;
            let holder = spec.holder_identity.clone()?;
            let renewed = spec.renew_time.as_ref()?.0;
            let duration = jiff::SignedDuration::from_secs(spec.lease_duration_seconds?.into());
            (now.duration_since(renewed) < duration).then_some(holder)
        })
        .collect()
}

struct Keeper {
    api: Api<Lease>,
    identity: Identity,
    config: ClusteringConfig,
    /// Our Lease as last written.
    lease: Option<Lease>,
    last_renewed: Option<Instant>,
}

impl Keeper {
    fn desired(&self, now: Timestamp) -> Lease {
        let mut lease = self.lease.clone().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(&self.identity.name)),
                labels: Some(
                    [
                        (NAME_LABEL.0.to_string(), NAME_LABEL.1.to_string()),
                        (MEMBER_LABEL.0.to_string(), MEMBER_LABEL.1.to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                acquire_time: Some(MicroTime(now)),
                ..Default::default()
            }),
        });
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(self.identity.name.clone());
        spec.lease_duration_seconds =
            Some(self.config.lease_duration.as_secs_f64().ceil().max(1.0) as i32);
        spec.renew_time = Some(MicroTime(now));
        lease
    }

    /// Creates or renews our Lease.
    async fn renew(&mut self) -> Result<(), kube::Error> {
        let pp = PostParams::default();
        let name = lease_name(&self.identity.name);
        let now = Timestamp::now();
        let written = match &self.lease {
            Some(_) => self.api.replace(&name, &pp, &self.desired(now)).await,
            None => self.api.create(&pp, &self.desired(now)).await,
        };
        let written = match written {
            Ok(l) => l,
            // Gone (deleted by someone), or changed under us, or left by an earlier run of
            // this identity: start from what is there now.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                self.lease = self.api.get_opt(&name).await?;
                match &self.lease {
                    Some(_) => self.api.replace(&name, &pp, &self.desired(now)).await?,
                    None => self.api.create(&pp, &self.desired(now)).await?,
                }
            }
            Err(e) => return Err(e),
        };
        self.lease = Some(written);
        self.last_renewed = Some(Instant::now());
        Ok(())
    }

    fn have_lease(&self) -> bool {
        self.last_renewed
            .is_some_and(|at| at.elapsed() < self.config.lease_duration)
    }

    /// The view from the watched Leases in `store`.
    fn view(&self, store: &Store<Lease>) -> View {
        let leases: Vec<Lease> = store.state().iter().map(|l| (**l).clone()).collect();
        let mut members = members(&leases, Timestamp::now());
        let have_lease = self.have_lease();
        if have_lease {
            members.insert(self.identity.name.clone());
        } else {
            members.remove(&self.identity.name);
        }
        View {
            me: self.identity.name.clone(),
            members,
            have_lease,
        }
    }

    /// Publishes `v` when it changed.
    fn publish(&self, view: &watch::Sender<View>, v: View) {
        telemetry::cluster_members(v.members.len());
        view.send_if_modified(|old| {
            let changed = *old != v;
            if changed {
                tracing::info!(members = ?v.members, have_lease = v.have_lease, "cluster membership changed");
                *old = v;
            }
            changed
        });
    }
}

/// Keeps this replica's Lease and publishes the [`View`] until `stop` turns true; then deletes
/// the Lease.
pub async fn run(
    client: kube::Client,
    identity: Identity,
    config: ClusteringConfig,
    view: watch::Sender<View>,
    mut stop: watch::Receiver<bool>,
) {
    let mut keeper = Keeper {
        api: Api::namespaced(client, &identity.namespace),
        identity,
        config,
        lease: None,
        last_renewed: None,
    };
    let selector = format!(
        "{}={},{}={}",
        NAME_LABEL.0, NAME_LABEL.1, MEMBER_LABEL.0, MEMBER_LABEL.1
    );
    let (store, writer) = reflector::store();
    let members_api: Api<Lease> = keeper.api.clone();
    let leases = reflector(
        writer,
        watcher(members_api, watcher::Config::default().labels(&selector)),
    )
    .default_backoff();
    let mut leases = std::pin::pin!(leases);
    let mut tick = tokio::time::interval(keeper.config.renew_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The store holds every member's Lease once the watch's first list is done.
    let mut listed = false;
    loop {
        let renew = tokio::select! {
            _ = tick.tick() => true,
            event = leases.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => {
                    listed = true;
                    false
                }
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    telemetry::cluster_lease_error();
                    if let Some(suppressed) = crate::logging::ERRORS.check("lease_watch") {
                        tracing::warn!(suppressed, error = %e, "watching the relay's Leases failed; retrying with backoff");
                    }
                    continue;
                }
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        if renew && let Err(e) = keeper.renew().await {
            telemetry::cluster_lease_error();
            tracing::warn!(lease = %lease_name(&keeper.identity.name), namespace = %keeper.identity.namespace, error = %e, "cannot renew the Lease; retrying at the next renewal");
        }
        // Until the first list arrived the members are unknown: publish nothing yet.
        if listed {
            keeper.publish(&view, keeper.view(&store));
        } else if !keeper.have_lease() {
            view.send_if_modified(|old| std::mem::replace(&mut old.have_lease, false));
        }
    }
    let name = lease_name(&keeper.identity.name);
    match keeper.api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(lease = %name, "Lease deleted: the other replicas take over"),
        Err(e) => {
            tracing::warn!(lease = %name, error = %e, "cannot delete the Lease; it expires after lease_duration")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn members_are_the_unexpired_leases() {
        let now = Timestamp::from_second(1_000).unwrap();
        let ago = |s| now - jiff::SignedDuration::from_secs(s);
        let leases = [
            lease("fresh", ago(1), 15),
            lease("edge", ago(15), 15),
            lease("expired", ago(20), 15),
            Lease::default(),
        ];
        assert_eq!(members(&leases, now), BTreeSet::from(["fresh".to_string()]));
    }
}
