//! The simulated cluster (SPEC §8.5): the pods, their container lifecycles, and the operations
//! the API and the tests drive them with. Every change goes through one commit that takes a new
//! resourceVersion, re-renders the pod (`pod.rs`) and records a watch event in the history
//! (`history.rs`, which also answers `410 Expired`).
//!
//! Container lifecycles follow the kubelet: init containers run one after the other before the
//! regular ones, an exiting container is restarted or not according to `restartPolicy`, a restart
//! gets a new container ID and keeps only the last terminated instance's log for `previous=true`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::container::{ContainerSpec, ContainerStats, Instance, run_writer};
use super::history::History;
use super::logs::{LogOptions, StreamCuts};
use super::pod::{ContainerState, PodState, Slot, Status, Terminated, render};

pub use super::history::{Event, EventKind, Expired};
pub use super::pod::pod_field;
pub use super::pod_spec::{Owner, PodSpec, RestartPolicy};

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

type PodKey = (String, String);

struct State {
    pods: BTreeMap<PodKey, PodState>,
    history: History,
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

impl Cluster {
    /// An empty cluster whose containers run on `runtime`.
    pub fn new(runtime: Handle, options: ClusterOptions) -> Arc<Self> {
        let history = History::default();
        Arc::new(Cluster {
            rv_changed: watch::Sender::new(history.resource_version()),
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                history,
                next_ip: 0,
            }),
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
        let rv = state.history.next_resource_version();
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
        state.history.record(event, self.options().history);
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
            uid: spec.uid.clone().unwrap_or_else(random_uid),
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
            state.history.resource_version(),
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
        self.lock().history.resource_version()
    }

    /// A receiver that changes with the resourceVersion.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.rv_changed.subscribe()
    }

    /// Appends the retained events newer than `rv` to `out`.
    pub fn events_after(&self, rv: u64, out: &mut Vec<Arc<Event>>) -> Result<(), Expired> {
        self.lock().history.events_after(rv, out)
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
