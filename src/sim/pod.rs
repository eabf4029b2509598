//! A simulated pod (SPEC §8.5): the state of it and its containers as the kubelet tracks them,
//! and its rendering as the k8s-openapi `Pod` object the API serves — metadata, spec, phase,
//! conditions and container statuses computed from the container states.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP,
    PodSpec as K8sPodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use super::container::{ContainerSpec, ContainerStats, Instance};
use super::pod_spec::{PodSpec, RestartPolicy};

/// How a container instance ended.
#[derive(Debug, Clone)]
pub(super) struct Terminated {
    pub(super) exit_code: i32,
    pub(super) started: Timestamp,
    pub(super) finished: Timestamp,
    pub(super) container_id: String,
}

/// A container's state: `waiting` (with the reason), `running` or `terminated`.
#[derive(Debug, Clone)]
pub(super) enum Status {
    Waiting(&'static str),
    Running,
    Terminated(Terminated),
}

/// One container of a pod: its script, counters, state and log instances.
pub(super) struct ContainerState {
    pub(super) spec: ContainerSpec,
    pub(super) stats: Arc<ContainerStats>,
    pub(super) status: Status,
    pub(super) current: Option<Arc<Instance>>,
    pub(super) previous: Option<Arc<Instance>>,
    pub(super) last_terminated: Option<Terminated>,
    pub(super) restart_count: u32,
}

/// One pod: its spec, identity, containers, and the object last rendered for the API.
pub(super) struct PodState {
    pub(super) spec: PodSpec,
    pub(super) uid: String,
    pub(super) owner_uid: String,
    pub(super) created: Timestamp,
    pub(super) ip: String,
    pub(super) deleted: Option<Timestamp>,
    pub(super) init: Vec<ContainerState>,
    pub(super) containers: Vec<ContainerState>,
    pub(super) rendered: Arc<Pod>,
}

/// Which container of a pod: init or regular, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) init: bool,
    pub(super) index: usize,
}

impl PodState {
    /// The container in `slot`.
    pub(super) fn container_mut(&mut self, slot: Slot) -> &mut ContainerState {
        if slot.init {
            &mut self.init[slot.index]
        } else {
            &mut self.containers[slot.index]
        }
    }

    /// The container named `name`, regular or init.
    pub(super) fn find(&self, name: &str) -> Option<&ContainerState> {
        self.containers
            .iter()
            .chain(self.init.iter())
            .find(|c| c.spec.name == name)
    }

    /// Where the container named `name` sits.
    pub(super) fn slot_of(&self, name: &str) -> Option<Slot> {
        if let Some(index) = self.containers.iter().position(|c| c.spec.name == name) {
            return Some(Slot { init: false, index });
        }
        self.init
            .iter()
            .position(|c| c.spec.name == name)
            .map(|index| Slot { init: true, index })
    }
}

/// The pod phase the kubelet reports for these container states.
fn pod_phase(policy: RestartPolicy, init: &[Status], containers: &[Status]) -> &'static str {
    let done_ok = |s: &Status| matches!(s, Status::Terminated(t) if t.exit_code == 0);
    if let Some(pending_init) = init.iter().find(|s| !done_ok(s)) {
        let failed = matches!(pending_init, Status::Terminated(_)) && !policy.restarts(1);
        return if failed { "Failed" } else { "Pending" };
    }
    if !containers.is_empty()
        && containers
            .iter()
            .all(|s| matches!(s, Status::Terminated(_)))
    {
        return if containers.iter().all(done_ok) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if containers
        .iter()
        .any(|s| matches!(s, Status::Running | Status::Terminated(_)))
    {
        "Running"
    } else {
        "Pending"
    }
}

fn time(ts: Timestamp) -> Time {
    Time(ts)
}

fn container_status(c: &ContainerState) -> ContainerStatus {
    let terminated = |t: &Terminated| K8sContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some(t.container_id.clone()),
            exit_code: t.exit_code,
            finished_at: Some(time(t.finished)),
            reason: Some(
                if t.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                }
                .to_string(),
            ),
            started_at: Some(time(t.started)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let state = match &c.status {
        Status::Waiting(reason) => K8sContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message: None,
            }),
            ..Default::default()
        },
        Status::Running => K8sContainerState {
            running: Some(ContainerStateRunning {
                started_at: c.current.as_ref().map(|i| time(i.started_at)),
            }),
            ..Default::default()
        },
        Status::Terminated(t) => terminated(t),
    };
    let running = matches!(c.status, Status::Running);
    ContainerStatus {
        name: c.spec.name.clone(),
        image: c.spec.image.clone(),
        image_id: format!(
            "{}@sha256:{:0>64}",
            c.spec.image.split(':').next().unwrap_or_default(),
            "5e"
        ),
        container_id: c.current.as_ref().map(|i| i.container_id.clone()),
        ready: running,
        started: Some(running),
        restart_count: c.restart_count as i32,
        state: Some(state),
        last_state: Some(
            c.last_terminated
                .as_ref()
                .map(terminated)
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

fn owner_api_version(kind: &str) -> &'static str {
    match kind {
        "Job" | "CronJob" => "batch/v1",
        "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Deployment" => "apps/v1",
        _ => "v1",
    }
}

/// The API object of `p` at resourceVersion `rv`.
pub(super) fn render(p: &PodState, rv: u64) -> Pod {
    let inits: Vec<Status> = p.init.iter().map(|c| c.status.clone()).collect();
    let regular: Vec<Status> = p.containers.iter().map(|c| c.status.clone()).collect();
    let phase = pod_phase(p.spec.restart_policy, &inits, &regular);
    let ready = phase == "Running"
        && p.containers
            .iter()
            .all(|c| matches!(c.status, Status::Running));
    let initialized = inits
        .iter()
        .all(|s| matches!(s, Status::Terminated(t) if t.exit_code == 0));
    let cond = |type_: &str, ok: bool| PodCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        last_transition_time: Some(time(p.created)),
        ..Default::default()
    };
    let spec_container = |c: &ContainerState| Container {
        name: c.spec.name.clone(),
        image: Some(c.spec.image.clone()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(p.spec.name.clone()),
            namespace: Some(p.spec.namespace.clone()),
            uid: Some(p.uid.clone()),
            resource_version: Some(rv.to_string()),
            creation_timestamp: Some(time(p.created)),
            deletion_timestamp: p.deleted.map(time),
            labels: Some(p.spec.labels.clone()),
            annotations: Some(p.spec.annotations.clone()),
            owner_references: p.spec.owner.as_ref().map(|o| {
                vec![OwnerReference {
                    api_version: owner_api_version(&o.kind).to_string(),
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    uid: p.owner_uid.clone(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..Default::default()
        },
        spec: Some(K8sPodSpec {
            node_name: Some(p.spec.node_name.clone()),
            restart_policy: Some(p.spec.restart_policy.as_str().to_string()),
            scheduler_name: Some("default-scheduler".to_string()),
            service_account_name: Some("default".to_string()),
            init_containers: (!p.init.is_empty())
                .then(|| p.init.iter().map(spec_container).collect()),
            containers: p.containers.iter().map(spec_container).collect(),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.to_string()),
            pod_ip: Some(p.ip.clone()),
            pod_ips: Some(vec![PodIP { ip: p.ip.clone() }]),
            host_ip: Some("172.18.0.2".to_string()),
            start_time: Some(time(p.created)),
            qos_class: Some("BestEffort".to_string()),
            conditions: Some(vec![
                cond("PodScheduled", true),
                cond("Initialized", initialized),
                cond("ContainersReady", ready),
                cond("Ready", ready),
            ]),
            init_container_statuses: (!p.init.is_empty())
                .then(|| p.init.iter().map(container_status).collect()),
            container_statuses: Some(p.containers.iter().map(container_status).collect()),
            ..Default::default()
        }),
    }
}

/// The value of a field-selector field of `pod`.
pub fn pod_field(pod: &Pod, field: &str) -> String {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let s = |v: Option<&String>| v.cloned().unwrap_or_default();
    match field {
        "metadata.name" => s(pod.metadata.name.as_ref()),
        "metadata.namespace" => s(pod.metadata.namespace.as_ref()),
        "spec.nodeName" => s(spec.and_then(|x| x.node_name.as_ref())),
        "spec.restartPolicy" => s(spec.and_then(|x| x.restart_policy.as_ref())),
        "spec.schedulerName" => s(spec.and_then(|x| x.scheduler_name.as_ref())),
        "spec.serviceAccountName" => s(spec.and_then(|x| x.service_account_name.as_ref())),
        "status.phase" => s(status.and_then(|x| x.phase.as_ref())),
        "status.podIP" => s(status.and_then(|x| x.pod_ip.as_ref())),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term(code: i32) -> Status {
        Status::Terminated(Terminated {
            exit_code: code,
            started: Timestamp::UNIX_EPOCH,
            finished: Timestamp::UNIX_EPOCH,
            container_id: String::new(),
        })
    }

    #[test]
    fn pod_phase_follows_container_states() {
        use RestartPolicy::*;
        let w = Status::Waiting("ContainerCreating");
        let r = Status::Running;
        #[rustfmt::skip]
        let table: Vec<(RestartPolicy, Vec<Status>, Vec<Status>, &str)> = vec![
            (Always, vec![], vec![w.clone()], "Pending"),
            (Always, vec![], vec![r.clone(), w.clone()], "Running"),
            (Never, vec![], vec![term(0), term(0)], "Succeeded"),
            (Never, vec![], vec![term(0), term(1)], "Failed"),
            (Never, vec![], vec![term(0), r.clone()], "Running"),
            (Always, vec![r.clone()], vec![w.clone()], "Pending"),
            (Never, vec![term(1)], vec![w.clone()], "Failed"),
            (Always, vec![term(0)], vec![r.clone()], "Running"),
        ];
        for (policy, init, containers, want) in table {
            assert_eq!(
                pod_phase(policy, &init, &containers),
                want,
                "{policy:?} {init:?} {containers:?}"
            );
        }
    }
}
