//! What the container's state says, and waiting (SPEC §5.4–§5.5): the tailer shell's
//! [`Action::Decide`] and [`Action::Sleep`] performers.
//!
//! The state comes from the pod watch through the target updates the registry sends; only a
//! target no watch knows (a static `[[targets]]` entry) fetches its pod, once per decision and
//! once after a follow stream opened (to tell whether the stream reads the cursor's instance).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::time::Instant;

use super::backoff::jittered;
use super::machine::{Action, Event};
use super::status::TargetState;
use super::stream::Shell;
use super::termination;
use crate::target::ContainerState;
use crate::telemetry;

impl Shell {
    /// The container state the pod watch last reported (`None`: no watch knows the target).
    pub(super) fn watched(&mut self) -> Option<Arc<ContainerState>> {
        self.args.target.borrow_and_update().state.clone()
    }

    /// Looks at the pod's state and asks the machine.
    pub(super) async fn decide(&mut self, settle: Option<Duration>) -> Action {
        // A follow stream just ended: the watch may not have reported why yet.
        if let Some(settle) = settle
            && !self.args.target.has_changed().unwrap_or(true)
        {
            tokio::select! {
                _ = self.args.target.changed() => {}
                _ = self.args.drain.changed() => {}
                _ = tokio::time::sleep(settle) => {}
            }
        }
        if let Some(action) = self.poll_drain() {
            return action;
        }
        let following = self.machine.container_id.clone();
        let decision = match self.watched() {
            Some(state) => termination::decide(Some(&state), following.as_deref()),
            // No watch knows this target (a static one): ask the API server.
            None => match self.fetch_pod().await {
                Ok(pod) => {
                    let state = pod.map(|p| ContainerState::from_pod(&p, &self.args.id.container));
                    termination::decide(state.as_ref(), following.as_deref())
                }
                Err(e) => {
                    if let Some(suppressed) = crate::logging::ERRORS.check("pod_fetch_failed") {
                        tracing::warn!(target = %self.args.id, suppressed, "cannot fetch the pod: {e}; retrying after a backoff");
                    }
                    telemetry::stream_failed(telemetry::StreamErrorKind::Pod);
                    return self.step(Event::PodUnavailable);
                }
            },
        };
        tracing::info!(target = %self.args.id, ?decision, "the container's state decides");
        self.step(Event::Pod(decision))
    }

    /// The pod of a target no watch knows; `None` when it is gone (or is another pod of the
    /// same name: another UID is another target).
    async fn fetch_pod(&self) -> Result<Option<Pod>, kube::Error> {
        let client = self.args.client.borrow().clone();
        let api: Api<Pod> = Api::namespaced(client, &self.args.id.namespace);
        let pod = api.get_opt(&self.args.id.pod).await?;
        Ok(pod.filter(|p| p.metadata.uid.as_deref() == Some(&self.args.id.uid)))
    }

    /// Whether the watch (if it knows the target) still shows the instance the cursor is in.
    pub(super) fn watched_instance_is_ours(&mut self) -> bool {
        let expected = self.machine.container_id.clone();
        match (expected, self.watched()) {
            (Some(expected), Some(state)) => state
                .current_instance()
                .is_none_or(|current| current == &*expected),
            _ => true,
        }
    }

    /// The same check for a target no watch knows: one GET after the stream opened.
    pub(super) async fn fetched_is_ours(&mut self) -> bool {
        if self.args.target.borrow().state.is_some() {
            return true;
        }
        let Some(expected) = self.machine.container_id.clone() else {
            return true;
        };
        match self.fetch_pod().await {
            Ok(Some(pod)) => ContainerState::from_pod(&pod, &self.args.id.container)
                .current_instance()
                .is_none_or(|current| current == &*expected),
            // Gone or unreachable: the read and the decision after it handle that.
            Ok(None) | Err(_) => true,
        }
    }

    /// Sleeps a jittered `base` showing `state`, then asks the machine.
    pub(super) async fn sleep(&mut self, base: Duration, state: TargetState) -> Action {
        self.set_state(state);
        let delay = jittered(base);
        tracing::info!(target = %self.args.id, ?state, "checking the container again in {delay:.1?}");
        let until = Instant::now() + delay;
        loop {
            let deadline = self.machine.deadline().map_or(until, |d| d.min(until));
            let waiting = state == TargetState::Waiting;
            let event = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => if deadline < until {
                    Event::DeadlinePassed
                } else {
                    Event::Slept
                },
                changed = self.args.drain.changed(), if !self.machine.draining() => match changed {
                    Err(_) => return Action::Finish,
                    Ok(()) => match self.poll_drain() {
                        Some(action) => return action,
                        None => continue,
                    },
                },
                // A container we wait for may have started: look now rather than later.
                Ok(()) = self.args.target.changed(), if waiting => Event::Slept,
            };
            match self.step(event) {
                Action::Continue => continue,
                action => return action,
            }
        }
    }
}
