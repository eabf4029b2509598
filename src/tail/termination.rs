//! What to do after a stream ended cleanly: the pure decision of SPEC §5.4 and §5.5.
//!
//! A follow stream ends when the container stops, when the API server or a proxy cuts it, or
//! when the kubelet rotates the file. The tailer then looks at the container's state (as the
//! pod watch reports it: [`ContainerState`]) and asks [`decide`]:
//! reconnect (same instance still running), read the previous instance's remainder and follow the
//! new one (restart), wait (the container will start again), or finish (it will not: restart
//! policy `Never`, `OnFailure` after exit code 0, a terminal pod phase, or the pod is gone — so
//! Job pods finish).

use crate::target::{ContainerKind, ContainerState, Run};

/// Why a tailer finishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The pod no longer exists (or its UID changed).
    PodGone,
    /// The pod reached `Succeeded` or `Failed`.
    PodCompleted { phase: String },
    /// The container terminated and its restart policy will not start it again.
    Terminated { exit_code: i32 },
}

/// The decision after a stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Termination {
    /// The instance we follow is still running: reopen from the cursor.
    Reconnect {
        /// The running instance (learned here when the tailer did not know it yet).
        container_id: Option<String>,
    },
    /// A new instance replaced the one we followed: read `previous=true` from the cursor, then
    /// follow `new_id` from its beginning.
    Restarted {
        previous_id: Option<String>,
        new_id: String,
    },
    /// Not running now but it will (re)start: decide again after a backoff.
    Waiting,
    /// No more lines will come: read the remainder once more, then finish.
    Finished(FinishReason),
}

/// Decides what follows a stream's end for a container in `state` (`None`: the pod is gone),
/// given the container ID the tailer was following. `state` comes from the pod watch (or,
/// where no watch knows the pod, from a GET): [`ContainerState::from_pod`].
pub fn decide(state: Option<&ContainerState>, following_id: Option<&str>) -> Termination {
    let Some(state) = state else {
        return Termination::Finished(FinishReason::PodGone);
    };
    if let Some(phase) = state.pod_phase.as_deref()
        && (phase == "Succeeded" || phase == "Failed")
    {
        return Termination::Finished(FinishReason::PodCompleted {
            phase: phase.to_string(),
        });
    }
    let Some(status) = &state.status else {
        // Not reported yet (pod just scheduled): it will appear.
        return Termination::Waiting;
    };
    let current_id = status.container_id.as_deref();
    if let (Some(current), Some(following)) = (current_id, following_id)
        && current != following
        && status.run != Run::Waiting
    {
        return Termination::Restarted {
            previous_id: Some(following.to_string()),
            new_id: current.to_string(),
        };
    }
    match status.run {
        Run::Running => Termination::Reconnect {
            container_id: current_id.map(str::to_string),
        },
        Run::Terminated { exit_code } if !will_restart(state, exit_code) => {
            Termination::Finished(FinishReason::Terminated { exit_code })
        }
        // Waiting (image pull, crash-loop backoff), or terminated and about to restart.
        Run::Terminated { .. } | Run::Waiting => Termination::Waiting,
    }
}

fn will_restart(state: &ContainerState, exit_code: i32) -> bool {
    let pod_policy = state.restart_policy.as_deref().unwrap_or("Always");
    match state.kind {
        // Ephemeral (debug) containers never restart.
        ContainerKind::Ephemeral => false,
        // A sidecar (init container with restartPolicy Always) restarts like a regular
        // container under `Always`; others rerun only after a failure, unless `Never`.
        ContainerKind::Init { sidecar } => sidecar || (exit_code != 0 && pod_policy != "Never"),
        ContainerKind::Regular => match pod_policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, Pod, PodSpec, PodStatus,
    };

    enum S {
        Running,
        Terminated(i32),
        Waiting,
    }

    fn pod(policy: &str, phase: &str, id: Option<&str>, state: S, init: bool) -> Pod {
        let state = match state {
            S::Running => K8sState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            },
            S::Terminated(code) => K8sState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            },
            S::Waiting => K8sState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("CrashLoopBackOff".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let cs = ContainerStatus {
            name: "c".into(),
            container_id: id.map(str::to_string),
            state: Some(state),
            ..Default::default()
        };
        let container = Container {
            name: "c".into(),
            ..Default::default()
        };
        let (containers, statuses, init_containers, init_statuses) = if init {
            (vec![], None, Some(vec![container]), Some(vec![cs]))
        } else {
            (vec![container], Some(vec![cs]), None, None)
        };
        Pod {
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers,
                init_containers,
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: statuses,
                init_container_statuses: init_statuses,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn finished_exit(code: i32) -> Termination {
        Termination::Finished(FinishReason::Terminated { exit_code: code })
    }

    #[test]
    fn decisions() {
        let a = Some("containerd://a");
        let b = Some("containerd://b");
        let reconnect_a = Termination::Reconnect {
            container_id: a.map(str::to_string),
        };
        let restarted = Termination::Restarted {
            previous_id: a.map(str::to_string),
            new_id: "containerd://b".into(),
        };
        #[rustfmt::skip]
        let table: Vec<(&str, Pod, Option<&str>, Termination)> = vec![
            ("cut while running", pod("Always", "Running", a, S::Running, false), a, reconnect_a.clone()),
            ("id learned on reconnect", pod("Always", "Running", a, S::Running, false), None, reconnect_a),
            ("restarted and running", pod("Always", "Running", b, S::Running, false), a, restarted.clone()),
            ("restarted and already dead again", pod("Always", "Running", b, S::Terminated(1), false), a, restarted),
            ("crash loop backoff", pod("Always", "Running", a, S::Waiting, false), a, Termination::Waiting),
            ("Always restarts after exit 0", pod("Always", "Running", a, S::Terminated(0), false), a, Termination::Waiting),
            ("Never", pod("Never", "Running", a, S::Terminated(1), false), a, finished_exit(1)),
            ("OnFailure exit 0", pod("OnFailure", "Running", a, S::Terminated(0), false), a, finished_exit(0)),
            ("OnFailure exit 2", pod("OnFailure", "Running", a, S::Terminated(2), false), a, Termination::Waiting),
            ("Job pod succeeded", pod("Never", "Succeeded", a, S::Terminated(0), false), a,
                Termination::Finished(FinishReason::PodCompleted { phase: "Succeeded".into() })),
            ("pod failed", pod("Always", "Failed", a, S::Terminated(137), false), a,
                Termination::Finished(FinishReason::PodCompleted { phase: "Failed".into() })),
            ("init container done", pod("Always", "Pending", a, S::Terminated(0), true), a, finished_exit(0)),
            ("init container failed", pod("Always", "Pending", a, S::Terminated(1), true), a, Termination::Waiting),
            ("init container failed, Never", pod("Never", "Pending", a, S::Terminated(1), true), a, finished_exit(1)),
        ];
        for (name, pod, following, want) in table {
            assert_eq!(
                decide(Some(&ContainerState::from_pod(&pod, "c")), following),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn pod_gone_finishes() {
        assert_eq!(
            decide(None, Some("x")),
            Termination::Finished(FinishReason::PodGone)
        );
    }

    #[test]
    fn unknown_container_waits() {
        let p = pod("Always", "Pending", None, S::Running, false);
        let state = ContainerState::from_pod(&p, "other");
        assert_eq!(decide(Some(&state), None), Termination::Waiting);
    }

    #[test]
    fn sidecar_init_container_restarts() {
        let mut p = pod("Never", "Running", Some("x"), S::Terminated(0), true);
        p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].restart_policy =
            Some("Always".into());
        let state = ContainerState::from_pod(&p, "c");
        assert_eq!(decide(Some(&state), Some("x")), Termination::Waiting);
    }
}
