//! Scenario files for `kube-log-relay sim --scenario FILE` (SPEC §8.5), and the demo's pods (§8.6).
//!
//! A scenario is TOML: `[cluster]` tunables, `[sink]` behaviour, and `[[pods]]` with their
//! `[[pods.containers]]` scripts. Every table refuses unknown fields, durations are human
//! (`"500ms"`, `"20s"`). Example:
//!
//! ```toml
//! [cluster]
//! bookmark_interval = "5s"
//!
//! [sink]
//! delay = "20ms"
//!
//! [[pods]]
//! namespace = "shop"
//! name = "web"
//! replicas = 3                # web-0, web-1, web-2
//! labels = { app = "web" }
//! owner = { kind = "ReplicaSet", name = "web-5d8f" }
//!
//! [[pods.containers]]
//! name = "nginx"
//! lines_per_sec = 50
//! line_size = 120
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::cluster::{ClusterOptions, Owner, PodSpec, RestartPolicy};
use super::container::{ContainerSpec, LogScript};
use super::{Sim, SimOptions};

/// A scenario that cannot be used; the message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("invalid scenario {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with the TOML location.
        #[source]
        source: toml::de::Error,
    },
    /// A value parses but makes no sense.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

fn human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}; examples: \"500ms\", \"5s\", \"1m\")"
        ))
    })
}

fn opt_human_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    human_duration(d).map(Some)
}

/// The whole scenario file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Cluster tunables.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// The Loki sink's behaviour.
    #[serde(default)]
    pub sink: SinkSection,
    /// The pods.
    #[serde(default)]
    pub pods: Vec<PodSection>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Interval of BOOKMARK watch events.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub bookmark_interval: Option<Duration>,
    /// Watch events retained for resuming.
    pub watch_history: Option<usize>,
    /// Bytes of log text a container instance keeps before rotating.
    pub max_log_bytes: Option<usize>,
}

/// `[sink]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Delay before answering each push.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub delay: Option<Duration>,
    /// Answer every push with this status for `fail_for` after start.
    pub fail_status: Option<u16>,
    /// How long `fail_status` lasts.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub fail_for: Option<Duration>,
}

/// `[[pods]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSection {
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Name, or name prefix with `replicas`.
    pub name: String,
    /// Make this many pods `name-0` … `name-(N-1)`.
    pub replicas: Option<u32>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `Always` (default), `OnFailure` or `Never`.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// The controller, e.g. `{ kind = "Job", name = "backup" }`.
    pub owner: Option<Owner>,
    /// Node (default `node-1`).
    pub node_name: Option<String>,
    /// Delay before every container starts.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub start_delay: Option<Duration>,
    /// Init containers.
    #[serde(default)]
    pub init_containers: Vec<ContainerSection>,
    /// Containers.
    #[serde(default)]
    pub containers: Vec<ContainerSection>,
}

fn default_namespace() -> String {
    "default".into()
}

/// `[pods.burst]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstSection {
    /// Lines per burst.
    pub lines: u32,
    /// Interval between bursts.
    #[serde(deserialize_with = "human_duration")]
    pub every: Duration,
}

/// `[[pods.containers]]`: a container and its [`LogScript`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// Name.
    pub name: String,
    /// Image.
    pub image: Option<String>,
    /// Lines per second (default 10).
    pub lines_per_sec: Option<f64>,
    /// Bytes per line (default 100).
    pub line_size: Option<usize>,
    /// Exit after that many lines.
    pub total_lines: Option<u64>,
    /// Exit code after `total_lines`.
    #[serde(default)]
    pub exit_code: i32,
    /// Runs of lines sharing one timestamp.
    #[serde(default)]
    pub same_timestamp_run: u32,
    /// Every Nth line to stderr, earlier.
    #[serde(default)]
    pub stderr_every: u32,
    /// How much earlier.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub reorder_skew: Option<Duration>,
    /// Extra bursts.
    pub burst: Option<BurstSection>,
    /// Waiting time before the container runs.
    #[serde(default, deserialize_with = "opt_human_duration")]
    pub start_delay: Option<Duration>,
}

impl ContainerSection {
    fn to_spec(&self) -> ContainerSpec {
        let defaults = ContainerSpec::new(&self.name);
        ContainerSpec {
            image: self.image.clone().unwrap_or(defaults.image),
            script: LogScript {
                lines_per_sec: self.lines_per_sec.unwrap_or(defaults.script.lines_per_sec),
                line_size: self.line_size.unwrap_or(defaults.script.line_size),
                total_lines: self.total_lines,
                exit_code: self.exit_code,
                same_timestamp_run: self.same_timestamp_run,
                stderr_every: self.stderr_every,
                reorder_skew: self.reorder_skew.unwrap_or_default(),
                burst: self.burst.as_ref().map(|b| (b.lines, b.every)),
            },
            start_delay: self.start_delay.unwrap_or_default(),
            name: self.name.clone(),
        }
    }
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let mut problems = Vec::new();
        for (i, pod) in scenario.pods.iter().enumerate() {
            if pod.name.is_empty() {
                problems.push(format!("pods[{i}].name: must not be empty"));
            }
            if pod.containers.is_empty() {
                problems.push(format!(
                    "pods[{i}] ({}): needs at least one [[pods.containers]]",
                    pod.name
                ));
            }
            let mut names: Vec<&str> = pod
                .containers
                .iter()
                .chain(&pod.init_containers)
                .map(|c| c.name.as_str())
                .collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                problems.push(format!(
                    "pods[{i}] ({}): container name {:?} is used twice",
                    pod.name, w[0]
                ));
            }
            for c in pod.containers.iter().chain(&pod.init_containers) {
                if c.lines_per_sec.is_some_and(|r| !r.is_finite() || r < 0.0) {
                    problems.push(format!(
                        "pods[{i}].containers.{}.lines_per_sec: must be >= 0",
                        c.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid(format!(
                "{}: {}",
                path.display(),
                problems.join("; ")
            )))
        }
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// The pods to create, `replicas` expanded.
    pub fn pod_specs(&self) -> Vec<PodSpec> {
        let mut out = Vec::new();
        for p in &self.pods {
            let names: Vec<String> = match p.replicas {
                Some(n) => (0..n).map(|i| format!("{}-{i}", p.name)).collect(),
                None => vec![p.name.clone()],
            };
            for name in names {
                out.push(PodSpec {
                    namespace: p.namespace.clone(),
                    name,
                    labels: p.labels.clone(),
                    annotations: p.annotations.clone(),
                    restart_policy: p.restart_policy,
                    owner: p.owner.clone(),
                    node_name: p.node_name.clone().unwrap_or_else(|| "node-1".into()),
                    start_delay: p.start_delay.unwrap_or_default(),
                    init_containers: p
                        .init_containers
                        .iter()
                        .map(ContainerSection::to_spec)
                        .collect(),
                    containers: p.containers.iter().map(ContainerSection::to_spec).collect(),
                    uid: None,
                });
            }
        }
        out
    }

    /// The cluster tunables.
    pub fn cluster_options(&self) -> ClusterOptions {
        let mut o = ClusterOptions::default();
        if let Some(d) = self.cluster.bookmark_interval {
            o.bookmark_interval = d;
        }
        if let Some(n) = self.cluster.watch_history {
            o.history = n;
        }
        if let Some(n) = self.cluster.max_log_bytes {
            o.max_log_bytes = n;
        }
        o
    }
}

/// The demo's pods: a two-container web pod of a Deployment, a worker that crashes and restarts
/// every ~20 s, a Job pod that completes, and a pod that logs in bursts.
pub fn demo_pods() -> Vec<PodSpec> {
    vec![
        PodSpec::new("shop", "web-5d8f-x2k9q")
            .label("app.kubernetes.io/name", "web")
            .label("pod-template-hash", "5d8f")
            .owner("ReplicaSet", "web-5d8f")
            .container(
                ContainerSpec::new("nginx")
                    .image("nginx:1.27")
                    .rate(5.0)
                    .line_size(120),
            )
            .container(
                ContainerSpec::new("app")
                    .image("shop/web:2.4.1")
                    .rate(20.0)
                    .line_size(100),
            ),
        PodSpec::new("shop", "worker-7c4b-m8z2d")
            .label("app.kubernetes.io/name", "worker")
            .owner("ReplicaSet", "worker-7c4b")
            // 10 lines/s for 200 lines: crashes (exit 1) and restarts every ~20 s.
            .container(
                ContainerSpec::new("worker")
                    .image("shop/worker:1.9")
                    .rate(10.0)
                    .total_lines(200, 1),
            ),
        PodSpec::new("batch", "backup-28910-4fj2p")
            .label("job-name", "backup-28910")
            .restart_policy(RestartPolicy::Never)
            .owner("Job", "backup-28910")
            .container(
                ContainerSpec::new("backup")
                    .image("tools/backup:0.3")
                    .rate(4.0)
                    .total_lines(60, 0),
            ),
        PodSpec::new("monitoring", "exporter-0")
            .label("app", "exporter")
            .owner("StatefulSet", "exporter")
            .container(
                ContainerSpec::new("exporter")
                    .image("prom/exporter:1.0")
                    .rate(1.0)
                    .burst(100, Duration::from_secs(15)),
            ),
    ]
}

/// Starts the simulator on `listen` with the scenario's pods (the demo's pods without one),
/// prints its URLs (and with TLS the files it wrote) and serves until Ctrl-C. The scenario's
/// `[cluster]` tunables replace `options.cluster`.
pub async fn run(listen: &str, scenario: Option<&Path>, options: SimOptions) -> anyhow::Result<()> {
    let scenario = match scenario {
        Some(path) => Some(Scenario::load(path)?),
        None => None,
    };
    let options = SimOptions {
        cluster: scenario
            .as_ref()
            .map(Scenario::cluster_options)
            .unwrap_or(options.cluster.clone()),
        ..options
    };
    let sim = Sim::start_with(listen, options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the simulator on {listen}: {e}"))?;
    let pods = match &scenario {
        Some(s) => {
            if let Some(d) = s.sink.delay {
                sim.sink().set_delay(d);
            }
            if let (Some(status), Some(d)) = (s.sink.fail_status, s.sink.fail_for) {
                sim.sink().fail_for(status, d);
            }
            s.pod_specs()
        }
        None => demo_pods(),
    };
    let count = pods.len();
    for pod in pods {
        sim.add_pod(pod);
    }
    println!(
        "kube-log-relay sim: Kubernetes API at {} ({count} pods)",
        sim.url()
    );
    println!(
        "kube-log-relay sim: Loki push endpoint at {}",
        sim.loki_url()
    );
    println!("kube-log-relay sim: stats at {}/sim/stats", sim.url());
    match sim.tls_files() {
        Some(files) => {
            println!("kube-log-relay sim: CA certificate {}", files.ca.display());
            println!(
                "kube-log-relay sim: client certificate {} and key {}",
                files.client_cert.display(),
                files.client_key.display()
            );
            println!(
                "kube-log-relay sim: kubeconfig {}",
                files.kubeconfig.display()
            );
            println!(
                "try: kubectl --kubeconfig {} get pods -A",
                files.kubeconfig.display()
            );
        }
        None => println!("try: kubectl --server {} get pods -A", sim.url()),
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [cluster]
        bookmark_interval = "2s"
        watch_history = 50

        [sink]
        delay = "20ms"

        [[pods]]
        namespace = "shop"
        name = "web"
        replicas = 2
        labels = { app = "web" }
        owner = { kind = "ReplicaSet", name = "web-5d8f" }

        [[pods.containers]]
        name = "nginx"
        lines_per_sec = 50
        line_size = 120
        stderr_every = 10
        reorder_skew = "5ms"
        burst = { lines = 20, every = "10s" }

        [[pods]]
        name = "job"
        restart_policy = "Never"

        [[pods.containers]]
        name = "main"
        total_lines = 5
        exit_code = 0
    "#;

    #[test]
    fn example_scenario_expands_to_pod_specs() {
        let s = Scenario::parse(EXAMPLE, Path::new("x.toml")).unwrap();
        let pods = s.pod_specs();
        let names: Vec<_> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        assert_eq!(names, ["shop/web-0", "shop/web-1", "default/job"]);
        let nginx = &pods[0].containers[0];
        assert_eq!(nginx.script.lines_per_sec, 50.0);
        assert_eq!(nginx.script.burst, Some((20, Duration::from_secs(10))));
        assert_eq!(nginx.script.reorder_skew, Duration::from_millis(5));
        assert_eq!(
            pods[0].owner,
            Some(Owner {
                kind: "ReplicaSet".into(),
                name: "web-5d8f".into()
            })
        );
        assert_eq!(pods[2].restart_policy, RestartPolicy::Never);
        assert_eq!(pods[2].containers[0].script.total_lines, Some(5));
        let o = s.cluster_options();
        assert_eq!(
            (o.bookmark_interval, o.history),
            (Duration::from_secs(2), 50)
        );
        assert_eq!(s.sink.delay, Some(Duration::from_millis(20)));
    }

    #[test]
    fn bad_scenarios_name_the_problem() {
        let unknown = "[[pods]]\nname = \"a\"\ncolour = \"red\"\n";
        let err = Scenario::parse(unknown, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let duration = "[cluster]\nbookmark_interval = \"5 parsecs\"\n";
        let err = Scenario::parse(duration, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a duration"), "{err}");
        let twice = "[[pods]]\nname = \"a\"\n[[pods.containers]]\nname = \"c\"\n[[pods.containers]]\nname = \"c\"\n";
        let err = Scenario::parse(twice, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("used twice"), "{err}");
        let empty = "[[pods]]\nname = \"a\"\n";
        let err = Scenario::parse(empty, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one"), "{err}");
    }

    #[test]
    fn demo_pods_cover_the_demo_cases() {
        let pods = demo_pods();
        assert!(pods.iter().any(|p| p.containers.len() == 2));
        assert!(pods.iter().any(|p| {
            p.restart_policy == RestartPolicy::Always
                && p.containers
                    .iter()
                    .any(|c| c.script.total_lines.is_some() && c.script.exit_code != 0)
        }));
        assert!(pods.iter().any(|p| p.restart_policy == RestartPolicy::Never
            && p.owner.as_ref().is_some_and(|o| o.kind == "Job")));
        assert!(
            pods.iter()
                .any(|p| p.containers.iter().any(|c| c.script.burst.is_some()))
        );
    }
}
