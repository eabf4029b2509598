//! The command line as a user runs it: `check`, `--version`, and kubectl against `sim`.

use std::process::Command;

use kube_log_relay::sim::{ContainerSpec, PodSpec, RestartPolicy};

const BIN: &str = env!("CARGO_BIN_EXE_kube-log-relay");

#[test]
fn check_reports_every_error_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[kubernetes]
bearer_token = "t"
bearer_token_file = "/var/run/token"

[tail]
max_backoff = "5 parsecs"

[loki.primary]
batch_sise = "1MiB"

[loki.secondary]
url = "http://127.0.0.1:3100/loki/api/v1/push"
batch_size = "none"

[[relabel]]
source_labels = ["__meta_kubernetes_pod_name"]
regex = "("
target_label = "pod"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "kubernetes",
        "tail.max_backoff",
        "loki.primary.batch_sise",
        "loki.secondary.batch_size",
        "relabel[0].regex",
    ] {
        assert!(stderr.contains(key), "`{key}` is named in:\n{stderr}");
    }
}

#[test]
fn check_accepts_the_reference_configuration() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_start_failure_names_each_cause_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let ca = dir.path().join("missing-ca.crt");
    std::fs::write(
        &path,
        format!(
            r#"
[kubernetes]
api_server = "https://127.0.0.1:6443"
[kubernetes.tls_config]
ca_file = "{}"

[server]
listen = "127.0.0.1:0"

[stdout]
"#,
            ca.display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kube-log-relay: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    let os_error = std::fs::read(&ca).unwrap_err().to_string();
    assert!(
        line.starts_with(
            "kube-log-relay: kubernetes client: kubernetes.tls_config.ca_file: cannot read"
        ),
        "outermost first: {line}"
    );
    for part in [
        "kubernetes client",
        "kubernetes.tls_config.ca_file",
        &os_error,
    ] {
        assert_eq!(
            line.matches(part).count(),
            1,
            "`{part}` said once in: {line}"
        );
    }
}

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn kubectl_lists_pods_and_reads_logs_from_the_simulator() {
    let Some(_) = crate::support::require_tool(&["kubectl"], "apt-get install kubernetes-client")
    else {
        return;
    };
    let sim = kube_log_relay::sim::Sim::start("127.0.0.1:0")
        .await
        .unwrap();
    sim.add_pod(
        PodSpec::new("batch", "backup")
            .restart_policy(RestartPolicy::Never)
            .container(ContainerSpec::new("c").rate(100.0).total_lines(20, 0)),
    );
    sim.wait_written("batch", "backup", "c", 20).await;
    let url = sim.url();
    let kubectl = |args: Vec<&str>| {
        let url = url.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        tokio::task::spawn_blocking(move || {
            Command::new("kubectl")
                .arg("--server")
                .arg(url)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = kubectl(vec!["get", "pods", "-A"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("NAME") && stdout.contains("backup"),
        "{stdout}"
    );

    // -f ends by itself: the container exited after its 20 lines.
    let out = kubectl(vec!["logs", "-f", "-n", "batch", "backup", "-c", "c"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, sim.written_lines("batch", "backup", "c"));
}
