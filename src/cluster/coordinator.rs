//! The coordinator: decides which targets this replica runs and hands them over (SPEC §7).
//!
//! It sits between discovery and the registry: discovery's complete target sets go to the
//! [`Gate`], the coordinator passes the registry the subset this replica *holds* (see
//! [`handover`](super::handover) for the protocol), and asks the registry to [`Release`] a
//! target before it leaves that subset. It runs whenever the target set or the membership
//! changes, and every `poll` while it waits for another replica to release a target.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use super::handover::{Action, View, decide};
use super::rendezvous;
use crate::positions::PositionsHandle;
use crate::positions::kubernetes::{KubeStore, Snapshot};
use crate::registry::{Registry, Release};
use crate::target::{LabelMap, SetTargets, Target, TargetId, TargetSet};
use crate::telemetry;

/// Receives discovery's target sets for the coordinator.
pub struct Gate(watch::Sender<Option<TargetSet>>);

impl Gate {
    /// A gate and the receiving end the coordinator reads.
    pub fn new() -> (Gate, watch::Receiver<Option<TargetSet>>) {
        let (tx, rx) = watch::channel(None);
        (Gate(tx), rx)
    }
}

impl Actor for Gate {
    type Context = Context<Self>;
}

impl Handler<SetTargets> for Gate {
    type Result = ();

    fn handle(&mut self, SetTargets(set): SetTargets, _: &mut Context<Self>) {
        self.0.send_replace(Some(set));
    }
}

/// What the status page and `/api/v1/targets` show of the cluster.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ClusterStatus {
    pub identity: String,
    pub namespace: String,
    pub members: BTreeSet<String>,
    pub have_lease: bool,
    /// The owner of every discovered target, by rendezvous over the members.
    pub owners: BTreeMap<TargetId, String>,
    /// Targets this replica holds.
    pub held: usize,
    /// Targets this replica owns but waits for another to release.
    pub waiting: usize,
}

/// A shared handle on the cluster status.
pub type StatusHandle = Arc<Mutex<ClusterStatus>>;

/// Everything the coordinator works with.
pub struct CoordinatorArgs {
    pub registry: Addr<Registry>,
    pub store: Arc<KubeStore>,
    pub table: PositionsHandle,
    pub view: watch::Receiver<View>,
    pub targets: watch::Receiver<Option<TargetSet>>,
    /// How often to look for releases while waiting for one.
    pub poll: Duration,
    /// How long a release waits for acknowledgements before it commits what it has.
    pub release_timeout: Duration,
    /// Claims start this long after this replica first got its Lease, so that every member's
    /// Lease is listed before it takes anything (fewer hand-overs when replicas start together).
    pub settle: Duration,
    pub status: StatusHandle,
}

/// The shard key of a target: over its discovered and its public labels.
fn key_of(target: &Target) -> String {
    let mut labels: LabelMap = (*target.discovered).clone();
    for (k, v) in target.stream.labels.pairs() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    rendezvous::shard_key(&labels)
}

/// Runs until `stop` turns true; then stops claiming and leaves the releases to the shutdown.
///
/// Stopping cancels whatever is in flight (a claim, a release's commit) at its next await, so
/// that once this returns nothing but the shutdown's final write publishes what this replica
/// holds: a commit finishing after that write would publish targets the replica no longer
/// tails, and their new owners would wait for them until the Lease expired. What a cancelled
/// step left behind is harmless: the registry finishes a release on its own, a claim
/// published but not yet started is withdrawn by the final write, and a write still in flight
/// carries an older `resourceVersion` than the final one, so the API server refuses whichever
/// of the two comes second and is stale.
pub async fn run(args: CoordinatorArgs, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        () = coordinate(args) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// The coordinator's loop: returns when discovery or the Lease keeper has gone.
async fn coordinate(mut args: CoordinatorArgs) {
    let mut held: BTreeSet<TargetId> = BTreeSet::new();
    let mut sent: Option<BTreeSet<TargetId>> = None;
    let mut waiting = false;
    let mut leased_at: Option<Instant> = None;
    let mut settled = false;
    let mut keys: BTreeMap<TargetId, String> = BTreeMap::new();
    loop {
        let poll = args.poll;
        tokio::select! {
            r = args.targets.changed() => if r.is_err() { break },
            r = args.view.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(poll), if waiting || !settled => {}
        }
        let Some(set) = args.targets.borrow_and_update().clone() else {
            continue;
        };
        let view = args.view.borrow_and_update().clone();
        if view.have_lease && leased_at.is_none() {
            leased_at = Some(Instant::now());
        }
        settled = leased_at.is_some_and(|at| at.elapsed() >= args.settle);
        keys.retain(|id, _| set.targets.contains_key(id));
        for (id, t) in &set.targets {
            keys.entry(id.clone()).or_insert_with(|| key_of(t));
        }
        let owner_of =
            |id: &TargetId| rendezvous::owner(view.members.iter().map(String::as_str), &keys[id]);

        // Vanished targets: the registry drains them when they leave the set it gets.
        held.retain(|id| set.targets.contains_key(id));
        let mut release = Vec::new();
        let mut wanted = Vec::new();
        for id in set.targets.keys() {
            match decide(&view, owner_of(id), held.contains(id), []) {
                Action::Release => release.push(id.clone()),
                Action::Claim if settled => wanted.push(id.clone()),
                _ => {}
            }
        }
        if !release.is_empty() {
            tracing::info!(
                targets = release.len(),
                "releasing targets to their new owners"
            );
            let deadline = Instant::now() + args.release_timeout;
            let _ = args
                .registry
                .send(Release {
                    ids: release.clone(),
                    deadline,
                })
                .await;
            for id in &release {
                held.remove(id);
                telemetry::cluster_handover();
            }
            commit(&args, &held).await;
        }
        let mut wait_count = 0;
        if !wanted.is_empty() {
            match claim(&args, &view, &mut held, wanted).await {
                Ok(n) => wait_count = n,
                Err(e) => {
                    wait_count = 1;
                    tracing::warn!(error = %e, "cannot read the positions ConfigMaps to take targets over; retrying");
                }
            }
        }
        waiting = wait_count > 0;
        if sent.as_ref() != Some(&held) && (view.have_lease || sent.is_some()) {
            let subset = TargetSet {
                targets: set
                    .targets
                    .iter()
                    .filter(|(id, _)| held.contains(*id))
                    .map(|(id, t)| (id.clone(), t.clone()))
                    .collect(),
                rejected: set.rejected.clone(),
            };
            args.registry.do_send(SetTargets(subset));
            sent = Some(held.clone());
        }
        telemetry::cluster_owned_targets(held.len());
        let mut status = args.status.lock().unwrap_or_else(|e| e.into_inner());
        status.members = view.members.clone();
        status.have_lease = view.have_lease;
        status.owners = set
            .targets
            .keys()
            .filter_map(|id| Some((id.clone(), owner_of(id)?.to_string())))
            .collect();
        status.held = held.len();
        status.waiting = wait_count;
    }
}

/// Publishes `held` with the positions in one write (the release, or a claim).
async fn commit(args: &CoordinatorArgs, held: &BTreeSet<TargetId>) -> bool {
    args.store.set_held(held.clone());
    match args.store.save(&args.table.snapshot()).await {
        Ok(learned) => {
            args.table.absorb(learned);
            telemetry::position_write();
            true
        }
        Err(e) => {
            telemetry::position_write_error();
            // The held targets are set in the store: the sync task's next write publishes
            // them, even when no cursor moves meanwhile.
            args.table.mark_dirty();
            tracing::warn!(error = %e, "cannot publish the held targets; retrying");
            false
        }
    }
}

/// Claims the targets of `wanted` that no live member holds: publish the claim, re-read, back
/// off from any another live member also holds, adopt the newest committed cursor of the rest.
/// Returns how many still wait for a release.
async fn claim(
    args: &CoordinatorArgs,
    view: &View,
    held: &mut BTreeSet<TargetId>,
    wanted: Vec<TargetId>,
) -> Result<usize, crate::positions::kubernetes::KubeStoreError> {
    let snapshot = args.store.load().await?;
    let holders = |s: &Snapshot, id: &TargetId| -> Vec<String> {
        s.held
            .iter()
            .filter(|(_, ids)| ids.contains(id))
            .map(|(who, _)| who.clone())
            .collect()
    };
    let mut waiting = 0;
    let mut claims = Vec::new();
    for id in wanted {
        let h = holders(&snapshot, &id);
        match decide(view, Some(&view.me), false, h.iter().map(String::as_str)) {
            Action::Claim => claims.push(id),
            _ => waiting += 1,
        }
    }
    if claims.is_empty() {
        return Ok(waiting);
    }
    held.extend(claims.iter().cloned());
    if !commit(args, held).await {
        for id in &claims {
            held.remove(id);
        }
        return Ok(waiting + claims.len());
    }
    let verified = args.store.load().await?;
    let mut adopted = BTreeMap::new();
    let mut backed_off = 0;
    for id in claims {
        let h = holders(&verified, &id);
        if let Action::Wait { holder } =
            decide(view, Some(&view.me), false, h.iter().map(String::as_str))
        {
            tracing::info!(target = %id, %holder, "another replica claimed this target at the same time; backing off");
            held.remove(&id);
            backed_off += 1;
            continue;
        }
        if let Some(stored) = verified.positions.get(&id) {
            adopted.insert(id.clone(), stored.clone());
        }
        tracing::info!(target = %id, "taking the target over from its newest committed position");
    }
    args.table.absorb(adopted);
    if backed_off > 0 {
        commit(args, held).await;
    }
    Ok(waiting + backed_off)
}
