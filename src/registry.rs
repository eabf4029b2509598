//! The registry actor: owns the tailers and applies each new target set (SPEC §2).
//!
//! Discovery sends complete [`TargetSet`]s; [`diff_targets`] (pure, tested below) compares one
//! with the targets the registry knows, by [`TargetId`]: new targets get a tailer, vanished ones
//! are drained (SPEC §5.6), and a target whose labels, tenant or container changed is updated in
//! place — the tailer keeps its stream, nothing is re-read.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::config::TailConfig;
use crate::cursor::TargetAcks;
use crate::forward::Fanout;
use crate::positions::PositionsHandle;
use crate::tail::backoff::Backoff;
use crate::tail::status::{StateTally, TailerSnapshot, TailerStatus, TargetState};
use crate::tail::{Drain, Stop, Tailer, TailerArgs, TailerFinished, UpdateClient, UpdateTarget};
use crate::target::{LabelMap, RejectedTarget, SetTargets, Target, TargetId, TargetSet};
use crate::telemetry::{self, TargetsState};

/// What changes between the known targets and a new complete set.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// New identities: start a tailer.
    pub start: Vec<Target>,
    /// Identities no longer present: drain their tailer.
    pub stop: Vec<TargetId>,
    /// Same identity, different labels, tenant or container: update in place.
    pub update: Vec<Target>,
}

/// Compares the known targets with a new complete set (SPEC §2: identity decides).
pub fn diff_targets(known: &BTreeMap<TargetId, Target>, incoming: &TargetSet) -> Diff {
    let mut diff = Diff::default();
    for (id, target) in &incoming.targets {
        match known.get(id) {
            None => diff.start.push(target.clone()),
            Some(old) if old != target => diff.update.push(target.clone()),
            Some(_) => {}
        }
    }
    diff.stop = known
        .keys()
        .filter(|id| !incoming.targets.contains_key(*id))
        .cloned()
        .collect();
    diff
}

/// Everything a registry needs to start tailers.
pub struct RegistryArgs {
    pub client: kube::Client,
    pub forwarder: Fanout,
    pub config: Arc<TailConfig>,
    /// Stored positions: tailers resume from them and record acknowledged ones there.
    pub positions: PositionsHandle,
}

/// The registry actor.
pub struct Registry {
    args: RegistryArgs,
    tailers: BTreeMap<TargetId, Tailed>,
    rejected: Vec<RejectedTarget>,
    synced: bool,
    /// The tailers' statuses by state, as they count themselves.
    tally: Arc<StateTally>,
}

/// A known target and its tailer, if one runs.
struct Tailed {
    target: Target,
    status: Arc<TailerStatus>,
    /// The target's acknowledgement tracker, shared by all its tailers over time.
    acks: Arc<TargetAcks>,
    tailer: Option<Addr<Tailer>>,
    /// Vanished from discovery; removed once its tailer finished draining.
    vanished: bool,
    /// When the current tailer started, and the backoff of restarts after panics.
    restarts: Restarts,
}

/// The restart backoff of one target's tailer after panics (SPEC §2: a tailer that panics at
/// once must not spin). A tailer that ran a healthy minute starts over from `min_backoff`.
struct Restarts {
    started: std::time::Instant,
    backoff: Backoff,
}

impl Restarts {
    fn new(config: &TailConfig) -> Restarts {
        Restarts {
            started: std::time::Instant::now(),
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
        }
    }

    /// The delay before restarting a tailer that panicked after running `ran_for`.
    fn after_panic(&mut self, ran_for: Duration) -> Duration {
        self.backoff.stream_ended(ran_for);
        self.backoff.next_delay()
    }
}

impl Registry {
    /// A registry with no target yet.
    pub fn new(args: RegistryArgs) -> Registry {
        Registry {
            args,
            tailers: BTreeMap::new(),
            rejected: Vec::new(),
            synced: false,
            tally: Arc::default(),
        }
    }

    /// The `kube_log_relay_targets` gauge: tailers by state (every two seconds, when the target
    /// set changes and when a tailer finishes), and the rejected targets.
    fn publish_counts(&self) {
        for state in TargetState::ALL {
            telemetry::targets_in(state.into(), self.tally.count(state));
        }
        telemetry::targets_in(TargetsState::Rejected, self.rejected.len());
    }
}

/// A new target's acknowledgement tracker, starting at its stored position.
fn new_acks(args: &RegistryArgs, target: &Target) -> Arc<TargetAcks> {
    let stored = args.positions.get(&target.id);
    if let Some(p) = &stored {
        tracing::info!(target = %target.id, since = p.cursor.since, skip = p.cursor.skip, "resuming from the stored position");
    }
    let acks = TargetAcks::new(target.id.clone(), stored);
    args.positions.register(&acks);
    acks
}

/// Starts a tailer where the target's previous one left off (after its last chunk sent), or
/// at the stored position for a new target.
fn spawn_tailer(
    args: &RegistryArgs,
    target: Target,
    status: Arc<TailerStatus>,
    acks: &Arc<TargetAcks>,
    ctx: &Context<Registry>,
) -> Addr<Tailer> {
    Tailer::start(TailerArgs {
        start: acks.resume_position(),
        acks: acks.clone(),
        target,
        client: args.client.clone(),
        forwarder: args.forwarder.clone(),
        config: args.config.clone(),
        status,
        registry: ctx.address().recipient(),
    })
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        telemetry::declare_tailer_panics();
        ctx.run_interval(Duration::from_secs(2), |act, _| act.publish_counts());
    }
}

impl Handler<SetTargets> for Registry {
    type Result = ();

    fn handle(&mut self, SetTargets(set): SetTargets, ctx: &mut Context<Self>) {
        let known: BTreeMap<TargetId, Target> = self
            .tailers
            .iter()
            .filter(|(_, t)| !t.vanished)
            .map(|(id, t)| (id.clone(), t.target.clone()))
            .collect();
        let diff = diff_targets(&known, &set);
        self.args
            .positions
            .present(&set.targets.keys().collect(), jiff::Timestamp::now());
        for target in diff.start {
            tracing::info!(target = %target.id, "target discovered, starting tailer");
            let status = Arc::new(TailerStatus::new(self.tally.clone()));
            // A target that reappears while its old tailer still drains keeps that tailer.
            if let Some(t) = self.tailers.get_mut(&target.id) {
                t.vanished = false;
                t.target = target.clone();
                if let Some(addr) = &t.tailer {
                    addr.do_send(UpdateTarget(target));
                    continue;
                }
            }
            // A target known from before (its tailer finished) keeps its status and tracker.
            let (status, acks) = match self.tailers.get(&target.id) {
                Some(t) => (t.status.clone(), t.acks.clone()),
                None => {
                    let acks = new_acks(&self.args, &target);
                    (status, acks)
                }
            };
            let addr = spawn_tailer(&self.args, target.clone(), status.clone(), &acks, ctx);
            let restarts = match self.tailers.remove(&target.id) {
                Some(mut t) => {
                    t.restarts.started = std::time::Instant::now();
                    t.restarts
                }
                None => Restarts::new(&self.args.config),
            };
            self.tailers.insert(
                target.id.clone(),
                Tailed {
                    target,
                    status,
                    acks,
                    tailer: Some(addr),
                    vanished: false,
                    restarts,
                },
            );
        }
        for id in diff.stop {
            if let Some(t) = self.tailers.get_mut(&id) {
                match &t.tailer {
                    Some(addr) => {
                        tracing::info!(target = %id, "target vanished, draining");
                        t.vanished = true;
                        addr.do_send(Drain);
                    }
                    None => {
                        self.tailers.remove(&id);
                    }
                }
            }
        }
        for target in diff.update {
            let Some(t) = self.tailers.get_mut(&target.id) else {
                continue;
            };
            let restarted = t.tailer.is_none() && t.target.container_id != target.container_id;
            t.target = target.clone();
            match &t.tailer {
                Some(addr) => addr.do_send(UpdateTarget(target)),
                // A finished tailer whose container came back (new container ID) resumes.
                None if restarted => {
                    tracing::info!(target = %target.id, "finished container restarted, resuming");
                    let addr = spawn_tailer(&self.args, target, t.status.clone(), &t.acks, ctx);
                    t.tailer = Some(addr);
                    t.restarts.started = std::time::Instant::now();
                }
                None => {}
            }
        }
        self.rejected = set.rejected;
        self.synced = true;
        self.publish_counts();
    }
}

impl Handler<TailerFinished> for Registry {
    type Result = ();

    fn handle(&mut self, msg: TailerFinished, ctx: &mut Context<Self>) {
        let Some(t) = self.tailers.get_mut(&msg.id) else {
            return;
        };
        t.tailer = None;
        if t.vanished {
            self.tailers.remove(&msg.id);
        } else if let Some(panic) = msg.panicked {
            // The tailer died without deciding to finish: restart it (not the process), after
            // a backoff so that one that panics at once does not spin.
            let delay = t.restarts.after_panic(t.restarts.started.elapsed());
            tracing::warn!(target = %msg.id, "{panic}; restarting the tailer in {delay:.1?}");
            t.status
                .update(|s| s.last_error = Some(format!("{panic} (restarting in {delay:.1?})")));
            let id = msg.id;
            ctx.run_later(delay, move |act, ctx| {
                let Some(t) = act.tailers.get_mut(&id) else {
                    return;
                };
                // Vanished meanwhile, or already restarted by a new target set.
                if t.vanished || t.tailer.is_some() {
                    return;
                }
                let addr =
                    spawn_tailer(&act.args, t.target.clone(), t.status.clone(), &t.acks, ctx);
                t.tailer = Some(addr);
                t.restarts.started = std::time::Instant::now();
            });
        }
        self.publish_counts();
    }
}

/// One target as `/api/v1/targets` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub id: Option<TargetId>,
    pub labels: LabelMap,
    pub discovered_labels: LabelMap,
    pub tenant: Option<String>,
    /// `rejected` or the tailer's state.
    pub state: String,
    pub reason: Option<String>,
    pub status: Option<TailerSnapshot>,
    /// The replica that owns it (set by the server when clustered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Server → registry: the current targets, rejected ones included.
#[derive(Message)]
#[rtype(result = "Targets")]
pub struct GetTargets;

/// The answer to [`GetTargets`].
#[derive(Clone, Debug, Serialize, MessageResponse)]
pub struct Targets {
    /// A first complete target set was applied.
    pub synced: bool,
    pub targets: Vec<TargetView>,
}

impl Handler<GetTargets> for Registry {
    type Result = Targets;

    fn handle(&mut self, _: GetTargets, _: &mut Context<Self>) -> Targets {
        let mut targets: Vec<TargetView> = self
            .tailers
            .values()
            .map(|t| {
                let status = t.status.show(&t.acks);
                TargetView {
                    id: Some(t.target.id.clone()),
                    labels: t.target.stream.labels.pairs().iter().cloned().collect(),
                    discovered_labels: (*t.target.discovered).clone(),
                    tenant: t.target.stream.tenant.clone(),
                    state: status.state.as_str().to_string(),
                    reason: None,
                    status: Some(status),
                    owner: None,
                }
            })
            .collect();
        targets.extend(self.rejected.iter().map(|r| TargetView {
            id: None,
            labels: r.labels.clone(),
            discovered_labels: (*r.discovered).clone(),
            tenant: None,
            state: "rejected".into(),
            reason: Some(r.reason.clone()),
            status: None,
            owner: None,
        }));
        Targets {
            synced: self.synced,
            targets,
        }
    }
}

/// Reload: a new Kubernetes client. Running tailers reopen their streams with it from their
/// cursors; new tailers use it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetClient(pub kube::Client);

impl Handler<SetClient> for Registry {
    type Result = ();

    fn handle(&mut self, SetClient(client): SetClient, _: &mut Context<Self>) {
        for t in self.tailers.values() {
            if let Some(addr) = &t.tailer {
                addr.do_send(UpdateClient(client.clone()));
            }
        }
        self.args.client = client;
    }
}

/// Reload: new `[tail]` settings, for tailers started from now on (open streams are kept).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTailConfig(pub Arc<TailConfig>);

impl Handler<SetTailConfig> for Registry {
    type Result = ();

    fn handle(&mut self, SetTailConfig(config): SetTailConfig, _: &mut Context<Self>) {
        self.args.config = config;
    }
}

/// Stops every tailer now (shutdown); answers when the messages are sent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopAll;

impl Handler<StopAll> for Registry {
    type Result = ();

    fn handle(&mut self, _: StopAll, ctx: &mut Context<Self>) {
        for t in self.tailers.values_mut() {
            if let Some(addr) = t.tailer.take() {
                addr.do_send(Stop);
            }
        }
        ctx.stop();
    }
}

/// Clustering (SPEC §7): stop these targets' tailers and forget them, answering once every
/// chunk they sent is acknowledged (or at `deadline`), so that the positions table holds the
/// cursor the new owner resumes from. Discovery's next set for this registry leaves them out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub ids: Vec<TargetId>,
    pub deadline: std::time::Instant,
}

impl Handler<Release> for Registry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) -> Self::Result {
        let mut stopping = Vec::new();
        for id in &msg.ids {
            if let Some(t) = self.tailers.remove(id) {
                tracing::info!(target = %id, "handing the target over: stopping its tailer");
                if let Some(addr) = &t.tailer {
                    addr.do_send(Stop);
                }
                stopping.push((t.tailer, t.acks));
            }
        }
        self.publish_counts();
        let deadline = msg.deadline;
        Box::pin(async move {
            let done = || {
                stopping.iter().all(|(addr, acks)| {
                    addr.as_ref().is_none_or(|a| !a.connected())
                        && acks.oldest_unacknowledged().is_none()
                })
            };
            while !done() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if !done() {
                tracing::warn!(
                    "handing targets over before every line was acknowledged: the new owner re-reads the rest"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Labels, Stream};

    fn target(pod: &str, app: &str, cid: &str) -> Target {
        let id = TargetId {
            namespace: "ns".into(),
            pod: pod.into(),
            container: "c".into(),
            uid: format!("uid-{pod}"),
        };
        Target {
            id,
            stream: Arc::new(Stream {
                labels: Labels::from_pairs([("app".to_string(), app.to_string())]),
                tenant: None,
            }),
            discovered: Arc::new(LabelMap::new()),
            container_id: Some(cid.into()),
            state: None,
        }
    }

    fn set(targets: &[Target]) -> TargetSet {
        TargetSet {
            targets: targets.iter().map(|t| (t.id.clone(), t.clone())).collect(),
            rejected: vec![],
        }
    }

    fn known(targets: &[Target]) -> BTreeMap<TargetId, Target> {
        set(targets).targets
    }

    #[test]
    fn starts_new_stops_gone_and_updates_changed_in_place() {
        let a = target("a", "x", "1");
        let b = target("b", "x", "1");
        let c = target("c", "x", "1");
        let b2 = target("b", "y", "1");
        let a_restarted = target("a", "x", "2");
        let diff = diff_targets(
            &known(&[a.clone(), b.clone(), c.clone()]),
            &set(&[a_restarted.clone(), b2.clone(), target("d", "x", "1")]),
        );
        assert_eq!(diff.start, vec![target("d", "x", "1")]);
        assert_eq!(diff.stop, vec![c.id.clone()]);
        assert_eq!(diff.update, vec![a_restarted, b2]);
    }

    #[test]
    fn identical_sets_change_nothing() {
        let all = [target("a", "x", "1"), target("b", "x", "1")];
        assert_eq!(diff_targets(&known(&all), &set(&all)), Diff::default());
    }

    #[test]
    fn a_new_pod_uid_is_a_new_target() {
        let old = target("a", "x", "1");
        let mut new = old.clone();
        new.id.uid = "uid-other".into();
        let diff = diff_targets(
            &known(std::slice::from_ref(&old)),
            &set(std::slice::from_ref(&new)),
        );
        assert_eq!(diff.start, vec![new]);
        assert_eq!(diff.stop, vec![old.id]);
    }
}
