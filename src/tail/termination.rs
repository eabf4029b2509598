//! What to do after a stream ended cleanly: the pure decision of SPEC §5.4 and §5.5.
//!
//! A follow stream ends when the container stops, when the API server or a proxy cuts it, or
//! when the kubelet rotates the file. The tailer then fetches the pod and asks [`decide`]:
//! reconnect (same instance still running), read the previous instance's remainder and follow the
//! new one (restart), wait (the container will start again), or finish (it will not: restart
//! policy `Never`, `OnFailure` after exit code 0, a terminal pod phase, or the pod is gone — so
//! Job pods finish).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

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

/// Decides what follows a stream's end for `container` of `pod` (`None`: the pod is gone),
/// given the container ID the tailer was following.
pub fn decide(pod: Option<&Pod>, container: &str, following_id: Option<&str>) -> Termination {
    let Some(pod) = pod else {
        return Termination::Finished(FinishReason::PodGone);
    };
    let status = pod.status.as_ref();
    if let Some(phase) = status.and_then(|s| s.phase.as_deref())
        && (phase == "Succeeded" || phase == "Failed")
    {
        return Termination::Finished(FinishReason::PodCompleted {
            phase: phase.to_string(),
        });
    }
    let Some((cs, kind)) = container_status(pod, container) else {
        // Not reported yet (pod just scheduled): it will appear.
        return Termination::Waiting;
    };
    let state = cs.state.as_ref();
    let current_id = cs.container_id.as_deref().filter(|id| !id.is_empty());

    if let (Some(current), Some(following)) = (current_id, following_id)
        && current != following
    {
        let running = state.is_some_and(|s| s.running.is_some());
        let terminated = state.is_some_and(|s| s.terminated.is_some());
        if running || terminated {
            return Termination::Restarted {
                previous_id: Some(following.to_string()),
                new_id: current.to_string(),
            };
        }
    }
    if let Some(state) = state {
        if state.running.is_some() {
            return Termination::Reconnect {
                container_id: current_id.map(str::to_string),
            };
        }
        if let Some(t) = &state.terminated {
            return if will_restart(pod, kind, container, t.exit_code) {
                Termination::Waiting
            } else {
                Termination::Finished(FinishReason::Terminated {
                    exit_code: t.exit_code,
                })
            };
        }
    }
    // Waiting (image pull, crash-loop backoff) or no state yet.
    Termination::Waiting
}

/// Which list a container belongs to: restart rules differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Regular,
    Init,
    Ephemeral,
}

/// The container ID the kubelet serves logs of right now, when the pod says.
pub fn current_instance<'a>(pod: &'a Pod, container: &str) -> Option<&'a str> {
    container_status(pod, container)?.0.container_id.as_deref()
}

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<(&'a ContainerStatus, Kind)> {
    let status = pod.status.as_ref()?;
    let lists = [
        (status.container_statuses.as_ref(), Kind::Regular),
        (status.init_container_statuses.as_ref(), Kind::Init),
        (
            status.ephemeral_container_statuses.as_ref(),
            Kind::Ephemeral,
        ),
    ];
    lists
        .into_iter()
        .find_map(|(list, kind)| list?.iter().find(|cs| cs.name == name).map(|cs| (cs, kind)))
}

fn will_restart(pod: &Pod, kind: Kind, container: &str, exit_code: i32) -> bool {
    let spec = pod.spec.as_ref();
    let pod_policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    match kind {
        // Ephemeral (debug) containers never restart.
        Kind::Ephemeral => false,
        Kind::Init => {
            // A sidecar (init container with restartPolicy Always) restarts like a regular
            // container under `Always`; others rerun only after a failure, unless `Never`.
            let sidecar = spec
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|l| l.iter().find(|c| c.name == container))
                .and_then(|c| c.restart_policy.as_deref())
                == Some("Always");
            sidecar || (exit_code != 0 && pod_policy != "Never")
        }
        Kind::Regular => match pod_policy {
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
        Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, PodSpec, PodStatus,
    };

    enum S {
        Running,
        Terminated(i32),
        Waiting,
    }

    fn pod(policy: &str, phase: &str, id: Option<&str>, state: S, init: bool) -> Pod {
        let state = match state {
            S::Running => ContainerState {
                running: Some(ContainerStateRunning::default()),
                ..Default::default()
            },
            S::Terminated(code) => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            },
            S::Waiting => ContainerState {
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
            assert_eq!(decide(Some(&pod), "c", following), want, "{name}");
        }
    }

    #[test]
    fn pod_gone_finishes() {
        assert_eq!(
            decide(None, "c", Some("x")),
            Termination::Finished(FinishReason::PodGone)
        );
    }

    #[test]
    fn unknown_container_waits() {
        let p = pod("Always", "Pending", None, S::Running, false);
        assert_eq!(decide(Some(&p), "other", None), Termination::Waiting);
    }

    #[test]
    fn sidecar_init_container_restarts() {
        let mut p = pod("Never", "Running", Some("x"), S::Terminated(0), true);
        p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].restart_policy =
            Some("Always".into());
        assert_eq!(decide(Some(&p), "c", Some("x")), Termination::Waiting);
    }
}
