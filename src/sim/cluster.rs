//! The simulated cluster's state: pods, their containers, resourceVersions and the watch event
//! history (SPEC §8.5).
//!
//! One global resourceVersion counter increases on every change, as in etcd. Every change also
//! appends an event to a bounded history, so a watch can resume from any resourceVersion still
//! retained and gets `410 Expired` for an older one, exactly as from the API server. Container
//! lifecycles follow the kubelet: init containers run one after the other before the regular
//! ones, an exiting container is restarted or not according to `restartPolicy`, a restart gets a
//! new container ID and keeps only the last terminated instance's log for `previous=true`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sContainerState, ContainerStateRunning,
    ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP,
    PodSpec as K8sPodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::container::{ContainerSpec, ContainerStats, Instance, run_writer};
use super::logs::{LogOptions, StreamCuts};

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

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ADDED`.
    Added,
    /// `MODIFIED`.
    Modified,
    /// `DELETED`.
    Deleted,
}

/// One change, as retained for watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub kind: EventKind,
    /// The pod after the change (before deletion for `Deleted`).
    pub pod: Arc<Pod>,
    /// The pod before a modification, so a selector-filtered watch can tell a pod that stopped
    /// (or started) matching.
    pub before: Option<Arc<Pod>>,
}

/// A watch asked for a resourceVersion older than the retained history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    /// The requested resourceVersion.
    pub requested: u64,
    /// The oldest resourceVersion a watch can still resume from.
    pub oldest: u64,
}

/// Why a `pods/log` request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogOpenError {
    /// 404: no such pod.
    #[error("pods \"{0}\" not found")]
    PodNotFound(String),
    /// 400 with the kubelet's message.
    #[error("{0}")]
    BadRequest(String),
}

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    started: Timestamp,
    finished: Timestamp,
    container_id: String,
}

#[derive(Debug, Clone)]
enum Status {
    Waiting(&'static str),
    Running,
    Terminated(Terminated),
}

struct ContainerState {
    spec: ContainerSpec,
    stats: Arc<ContainerStats>,
    status: Status,
    current: Option<Arc<Instance>>,
    previous: Option<Arc<Instance>>,
    last_terminated: Option<Terminated>,
    restart_count: u32,
}

struct PodState {
    spec: PodSpec,
    uid: String,
    owner_uid: String,
    created: Timestamp,
    ip: String,
    deleted: Option<Timestamp>,
    init: Vec<ContainerState>,
    containers: Vec<ContainerState>,
    rendered: Arc<Pod>,
}

type PodKey = (String, String);

/// Which container of a pod: init or regular, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    init: bool,
    index: usize,
}

impl PodState {
    fn container_mut(&mut self, slot: Slot) -> &mut ContainerState {
        if slot.init {
            &mut self.init[slot.index]
        } else {
            &mut self.containers[slot.index]
        }
    }

    fn find(&self, name: &str) -> Option<&ContainerState> {
        self.containers
            .iter()
            .chain(self.init.iter())
            .find(|c| c.spec.name == name)
    }

    fn slot_of(&self, name: &str) -> Option<Slot> {
        if let Some(index) = self.containers.iter().position(|c| c.spec.name == name) {
            return Some(Slot { init: false, index });
        }
        self.init
            .iter()
            .position(|c| c.spec.name == name)
            .map(|index| Slot { init: true, index })
    }
}

struct State {
    rv: u64,
    pods: BTreeMap<PodKey, PodState>,
    history: VecDeque<Arc<Event>>,
    /// The resourceVersion of the newest event dropped from the history (0 = none dropped).
    dropped_upto: u64,
    next_ip: u32,
}

/// Tunables of the simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Watch events retained for resuming (older resourceVersions get 410 Expired).
    pub history: usize,
    /// Text bytes a container instance's log keeps before rotating its oldest lines away.
    pub max_log_bytes: usize,
    /// Interval of BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            history: 1000,
            max_log_bytes: 256 << 20,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// The simulated cluster. Methods that start containers take `self: &Arc<Self>` because the
/// writer tasks call back when their container exits.
pub struct Cluster {
    state: Mutex<State>,
    rv_changed: watch::Sender<u64>,
    stats: Mutex<HashMap<(String, String, String), Arc<ContainerStats>>>,
    runtime: Handle,
    options: Mutex<ClusterOptions>,
    /// The switches that end open log streams.
    pub cuts: StreamCuts,
}

fn random_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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

/// Which instance a `pods/log` request reads, or the kubelet's refusal.
fn pick_instance(
    c: &ContainerState,
    pod: &str,
    previous: bool,
) -> Result<Arc<Instance>, LogOpenError> {
    let name = &c.spec.name;
    if previous {
        return c.previous.clone().ok_or_else(|| {
            LogOpenError::BadRequest(format!(
                "previous terminated container \"{name}\" in pod \"{pod}\" not found"
            ))
        });
    }
    match (&c.status, &c.current) {
        (Status::Running | Status::Terminated(_), Some(current)) => Ok(current.clone()),
        (Status::Waiting(reason), _) => Err(LogOpenError::BadRequest(format!(
            "container \"{name}\" in pod \"{pod}\" is waiting to start: {reason}"
        ))),
        (_, None) => Err(LogOpenError::BadRequest(format!(
            "container \"{name}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
        ))),
    }
}

fn go_list(names: &[&str]) -> String {
    format!("[{}]", names.join(" "))
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

fn render(p: &PodState, rv: u64) -> Pod {
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

impl Cluster {
    /// An empty cluster whose containers run on `runtime`.
    pub fn new(runtime: Handle, options: ClusterOptions) -> Arc<Self> {
        Arc::new(Cluster {
            state: Mutex::new(State {
                rv: 1,
                pods: BTreeMap::new(),
                history: VecDeque::new(),
                dropped_upto: 0,
                next_ip: 0,
            }),
            rv_changed: watch::Sender::new(1),
            stats: Mutex::new(HashMap::new()),
            runtime,
            options: Mutex::new(options),
            cuts: StreamCuts::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current tunables.
    pub fn options(&self) -> ClusterOptions {
        self.options
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the tunables (affects new watches, new instances and the next history trim).
    pub fn set_options(&self, f: impl FnOnce(&mut ClusterOptions)) {
        f(&mut self.options.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Records a change of the pod at `key`: new resourceVersion, re-rendered object, event.
    fn commit(&self, state: &mut State, key: &PodKey, kind: EventKind) {
        state.rv += 1;
        let rv = state.rv;
        let Some(pod) = state.pods.get_mut(key) else {
            return;
        };
        let before = (kind == EventKind::Modified).then(|| pod.rendered.clone());
        pod.rendered = Arc::new(render(pod, rv));
        let event = Arc::new(Event {
            rv,
            kind,
            pod: pod.rendered.clone(),
            before,
        });
        state.history.push_back(event);
        let cap = self.options().history.max(1);
        while state.history.len() > cap {
            if let Some(old) = state.history.pop_front() {
                state.dropped_upto = old.rv;
            }
        }
        self.rv_changed.send_replace(rv);
    }

    fn stats_for(&self, ns: &str, pod: &str, c: &ContainerSpec) -> Arc<ContainerStats> {
        let key = (ns.to_string(), pod.to_string(), c.name.clone());
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| {
                Arc::new(ContainerStats::new(
                    format!("{ns}/{pod}/{}", c.name),
                    c.script.line_size,
                ))
            })
            .clone()
    }

    /// The counters of a container, if it ever existed.
    pub fn stats(&self, ns: &str, pod: &str, container: &str) -> Option<Arc<ContainerStats>> {
        let key = (ns.to_string(), pod.to_string(), container.to_string());
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    /// Creates a pod and starts its containers (a pod of the same name is deleted first).
    pub fn add_pod(self: &Arc<Self>, spec: PodSpec) {
        let key = (spec.namespace.clone(), spec.name.clone());
        let mut state = self.lock();
        if state.pods.contains_key(&key) {
            self.delete_locked(&mut state, &key);
        }
        let now = Timestamp::now();
        let make = |c: &ContainerSpec, reason: &'static str| ContainerState {
            stats: self.stats_for(&spec.namespace, &spec.name, c),
            spec: c.clone(),
            status: Status::Waiting(reason),
            current: None,
            previous: None,
            last_terminated: None,
            restart_count: 0,
        };
        let regular_reason = if spec.init_containers.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        state.next_ip += 1;
        let ip = format!("10.244.{}.{}", state.next_ip / 250, state.next_ip % 250 + 1);
        let pod = PodState {
            uid: random_uid(),
            owner_uid: random_uid(),
            created: now,
            ip,
            deleted: None,
            init: spec
                .init_containers
                .iter()
                .map(|c| make(c, "PodInitializing"))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| make(c, regular_reason))
                .collect(),
            rendered: Arc::new(Pod::default()),
            spec,
        };
        let has_init = !pod.init.is_empty();
        let count = pod.containers.len();
        state.pods.insert(key.clone(), pod);
        if has_init {
            self.schedule_start(
                &mut state,
                &key,
                Slot {
                    init: true,
                    index: 0,
                },
            );
        } else {
            for index in 0..count {
                self.schedule_start(&mut state, &key, Slot { init: false, index });
            }
        }
        self.commit(&mut state, &key, EventKind::Added);
    }

    /// Starts the container now when it has no start delay, else later.
    fn schedule_start(self: &Arc<Self>, state: &mut State, key: &PodKey, slot: Slot) {
        let Some(pod) = state.pods.get_mut(key) else {
            return;
        };
        let delay = pod.spec.start_delay + pod.container_mut(slot).spec.start_delay;
        if delay.is_zero() {
            self.start_locked(pod, key, slot);
            return;
        }
        let uid = pod.uid.clone();
        let this = self.clone();
        let key = key.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            let mut state = this.lock();
            let Some(pod) = state.pods.get_mut(&key).filter(|p| p.uid == uid) else {
                return;
            };
            this.start_locked(pod, &key, slot);
            this.commit(&mut state, &key, EventKind::Modified);
        });
    }

    /// Starts a new instance of the container in `slot` (the caller commits).
    fn start_locked(self: &Arc<Self>, pod: &mut PodState, key: &PodKey, slot: Slot) {
        let max_log_bytes = self.options().max_log_bytes;
        let uid = pod.uid.clone();
        let c = pod.container_mut(slot);
        let instance = Arc::new(Instance::new(
            c.restart_count,
            c.stats.clone(),
            max_log_bytes,
        ));
        c.status = Status::Running;
        c.current = Some(instance.clone());
        let (script, exit_code, number) = (
            c.spec.script.clone(),
            c.spec.script.exit_code,
            instance.number,
        );
        let this = self.clone();
        let key = key.clone();
        self.runtime.spawn(run_writer(instance, script, move || {
            this.exited(&key, &uid, slot, Some(number), exit_code);
        }));
    }

    /// The container in `slot` exited with `code`: the restart policy decides what follows.
    /// `number` guards against a stale writer (None = whatever instance is current).
    fn exited(
        self: &Arc<Self>,
        key: &PodKey,
        uid: &str,
        slot: Slot,
        number: Option<u32>,
        code: i32,
    ) {
        let mut state = self.lock();
        let Some(pod) = state.pods.get_mut(key).filter(|p| p.uid == uid) else {
            return;
        };
        let policy = pod.spec.restart_policy;
        let c = pod.container_mut(slot);
        let Some(current) = c.current.clone() else {
            return;
        };
        if !matches!(c.status, Status::Running) || number.is_some_and(|n| n != current.number) {
            return;
        }
        self.stop_instance(c, &current, code);
        if policy.restarts(code) {
            self.restart_locked(pod, key, slot);
        } else if slot.init && code == 0 {
            let next = slot.index + 1;
            let (has_next, count) = (next < pod.init.len(), pod.containers.len());
            if has_next {
                self.schedule_start(
                    &mut state,
                    key,
                    Slot {
                        init: true,
                        index: next,
                    },
                );
            } else {
                if let Some(pod) = state.pods.get_mut(key) {
                    for c in &mut pod.containers {
                        c.status = Status::Waiting("ContainerCreating");
                    }
                }
                for index in 0..count {
                    self.schedule_start(&mut state, key, Slot { init: false, index });
                }
            }
        }
        self.commit(&mut state, key, EventKind::Modified);
    }

    fn stop_instance(&self, c: &mut ContainerState, current: &Instance, code: i32) {
        current.terminate();
        c.status = Status::Terminated(Terminated {
            exit_code: code,
            started: current.started_at,
            finished: Timestamp::now(),
            container_id: current.container_id.clone(),
        });
    }

    /// Replaces the terminated current instance by a new one (the caller commits).
    fn restart_locked(self: &Arc<Self>, pod: &mut PodState, key: &PodKey, slot: Slot) {
        let c = pod.container_mut(slot);
        if let Status::Terminated(t) = &c.status {
            c.last_terminated = Some(t.clone());
        }
        // Like the kubelet, only the last terminated instance's log is kept.
        c.previous = c.current.take();
        c.restart_count += 1;
        self.start_locked(pod, key, slot);
    }

    /// Kills the running container and starts a new instance, whatever the restart policy.
    pub fn restart_container(self: &Arc<Self>, ns: &str, pod: &str, container: &str) {
        let key = (ns.to_string(), pod.to_string());
        let mut state = self.lock();
        let Some(p) = state.pods.get_mut(&key) else {
            return;
        };
        let Some(slot) = p.slot_of(container) else {
            return;
        };
        let c = p.container_mut(slot);
        if let (Status::Running, Some(current)) = (&c.status, c.current.clone()) {
            // Killed (SIGKILL): exit code 137.
            self.stop_instance(c, &current, 137);
        }
        self.restart_locked(p, &key, slot);
        self.commit(&mut state, &key, EventKind::Modified);
    }

    /// Makes the running container exit with `code`; the restart policy decides what follows.
    pub fn exit_container(self: &Arc<Self>, ns: &str, pod: &str, container: &str, code: i32) {
        let key = (ns.to_string(), pod.to_string());
        let (uid, slot) = {
            let state = self.lock();
            let Some(p) = state.pods.get(&key) else {
                return;
            };
            let Some(slot) = p.slot_of(container) else {
                return;
            };
            (p.uid.clone(), slot)
        };
        self.exited(&key, &uid, slot, None, code);
    }

    fn delete_locked(&self, state: &mut State, key: &PodKey) {
        let Some(pod) = state.pods.get_mut(key) else {
            return;
        };
        pod.deleted = Some(Timestamp::now());
        for c in pod.init.iter_mut().chain(pod.containers.iter_mut()) {
            if let (Status::Running, Some(current)) = (&c.status, c.current.clone()) {
                // SIGTERM: open follows end once they have sent everything written.
                self.stop_instance(c, &current, 143);
            }
        }
        self.commit(state, key, EventKind::Deleted);
        state.pods.remove(key);
    }

    /// Deletes a pod: its containers stop, open follows end after the log is flushed.
    pub fn delete_pod(&self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        let mut state = self.lock();
        self.delete_locked(&mut state, &key);
    }

    /// Replaces a pod's labels.
    pub fn set_pod_labels(&self, ns: &str, name: &str, labels: BTreeMap<String, String>) {
        let key = (ns.to_string(), name.to_string());
        let mut state = self.lock();
        let Some(pod) = state.pods.get_mut(&key) else {
            return;
        };
        pod.spec.labels = labels;
        self.commit(&mut state, &key, EventKind::Modified);
    }

    /// The current resourceVersion and every pod (sorted by namespace and name).
    pub fn list(&self) -> (u64, Vec<Arc<Pod>>) {
        let state = self.lock();
        (
            state.rv,
            state.pods.values().map(|p| p.rendered.clone()).collect(),
        )
    }

    /// One pod.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        let state = self.lock();
        state
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .map(|p| p.rendered.clone())
    }

    /// The namespaces that exist: `default`, `kube-system` and every pod's namespace.
    pub fn namespaces(&self) -> std::collections::BTreeSet<String> {
        let state = self.lock();
        let mut names: std::collections::BTreeSet<String> = ["default", "kube-system"]
            .into_iter()
            .map(String::from)
            .collect();
        names.extend(state.pods.keys().map(|(ns, _)| ns.clone()));
        names
    }

    /// The nodes that exist: every pod's node.
    pub fn nodes(&self) -> std::collections::BTreeSet<String> {
        let state = self.lock();
        state
            .pods
            .values()
            .map(|p| p.spec.node_name.clone())
            .collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// A receiver that changes with the resourceVersion.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_changed.subscribe()
    }

    /// Appends the retained events newer than `rv` to `out`.
    pub fn events_after(&self, rv: u64, out: &mut Vec<Arc<Event>>) -> Result<(), Expired> {
        let state = self.lock();
        if rv < state.dropped_upto {
            return Err(Expired {
                requested: rv,
                oldest: state.dropped_upto + 1,
            });
        }
        let start = state.history.partition_point(|e| e.rv <= rv);
        out.extend(state.history.range(start..).cloned());
        Ok(())
    }

    /// Resolves a `pods/log` request to the instance it reads, and counts the open.
    pub fn open_log(
        &self,
        ns: &str,
        name: &str,
        opts: &LogOptions,
    ) -> Result<(Arc<Instance>, Arc<ContainerStats>), LogOpenError> {
        let state = self.lock();
        let pod = state
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| LogOpenError::PodNotFound(name.to_string()))?;
        let container = match &opts.container {
            Some(c) => pod.find(c).ok_or_else(|| {
                LogOpenError::BadRequest(format!("container {c} is not valid for pod {name}"))
            })?,
            None if pod.containers.len() == 1 => &pod.containers[0],
            None => {
                let names: Vec<&str> = pod
                    .containers
                    .iter()
                    .map(|c| c.spec.name.as_str())
                    .collect();
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: {}",
                    go_list(&names)
                );
                if !pod.init.is_empty() {
                    let inits: Vec<&str> = pod.init.iter().map(|c| c.spec.name.as_str()).collect();
                    msg.push_str(&format!(
                        " or one of the init containers: {}",
                        go_list(&inits)
                    ));
                }
                return Err(LogOpenError::BadRequest(msg));
            }
        };
        let instance = pick_instance(container, name, opts.previous)?;
        container
            .stats
            .opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((instance, container.stats.clone()))
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
