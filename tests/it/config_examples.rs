//! Every example configuration in the repository is accepted by `check` and starts with `run`
//! (issue 15 item 3: what `check` accepts must start).
//!
//! The examples: `config.toml`, every ```` ```toml ```` block of `README.md` (a block that
//! shows one table without a receiver is checked with `[stdout]` added: it is a fragment of a
//! configuration, and the fragment is what must be right), every `config.toml` under `deploy/`
//! (the files the kustomize overlays turn into ConfigMaps) and every `config.toml` held by a
//! ConfigMap written out in a YAML file there. Each is checked as written (with `LOKI_URL` set,
//! as the Deployment sets it), then started by the real binary with only its addresses moved
//! to the test's simulator, sink, a temporary positions file and an ephemeral HTTP port; it
//! must become ready and exit 0 on SIGTERM.

use std::process::Command;

use crate::support::{self, RelayProcess, eventually, http_get};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `(name, text)` of every example configuration in the repository.
fn examples() -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap();
    let mut examples = vec![("config.toml".to_owned(), read("config.toml"))];
    for (index, block) in fenced_blocks(&read("README.md"), "toml")
        .into_iter()
        .enumerate()
    {
        let has_receiver = block.contains("[loki.") || block.contains("[stdout]");
        let text = if has_receiver {
            block
        } else {
            format!("{block}\n[stdout]\n")
        };
        examples.push((format!("README.md toml block {}", index + 1), text));
    }
    for path in files_under(&std::path::Path::new(ROOT).join("deploy")) {
        let name = path
            .strip_prefix(ROOT)
            .unwrap_or(&path)
            .display()
            .to_string();
        if path.file_name().is_some_and(|n| n == "config.toml") {
            examples.push((name, std::fs::read_to_string(&path).unwrap()));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let yaml = std::fs::read_to_string(&path).unwrap();
            for (index, text) in configmap_files(&yaml).into_iter().enumerate() {
                examples.push((format!("{name} ConfigMap config.toml {}", index + 1), text));
            }
        }
    }
    examples
}

/// Every file under `dir`, recursively, in a stable order.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The bodies of the ```` ```lang ```` blocks of a Markdown text.
fn fenced_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start();
        match &mut current {
            None if fence == format!("```{lang}") => current = Some(String::new()),
            Some(block) if fence.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The `config.toml: |` literal blocks of a Kubernetes manifest, dedented.
fn configmap_files(yaml: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let key_indent = line.len() - line.trim_start().len();
        if line.trim() != "config.toml: |" {
            continue;
        }
        let mut body = Vec::new();
        while let Some(next) = lines.peek() {
            let indent = next.len() - next.trim_start().len();
            if !next.trim().is_empty() && indent <= key_indent {
                break;
            }
            body.push(*next);
            lines.next();
        }
        let indent = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        let text: Vec<&str> = body.iter().map(|l| l.get(indent..).unwrap_or("")).collect();
        files.push(text.join("\n") + "\n");
    }
    files
}

/// The example with its addresses moved to the test's: the API server, every Loki, the
/// positions file and the HTTP port. Everything else stays as written.
fn against(example: &str, api: &str, loki: &str, dir: &std::path::Path) -> String {
    let mut table: toml::Table = example.parse().expect("the example is TOML");
    let kubernetes = table
        .entry("kubernetes")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[kubernetes] is a table");
    kubernetes.remove("kubeconfig_file");
    kubernetes.insert("api_server".into(), api.into());
    if let Some(receivers) = table.get_mut("loki").and_then(toml::Value::as_table_mut) {
        for (_, receiver) in receivers.iter_mut() {
            let receiver = receiver.as_table_mut().expect("[loki.<name>] is a table");
            receiver.insert("url".into(), loki.into());
        }
    }
    if let Some(positions) = table
        .get_mut("positions")
        .and_then(toml::Value::as_table_mut)
        && positions.contains_key("path")
    {
        let path = dir.join("positions.json");
        positions.insert("path".into(), path.display().to_string().into());
    }
    let server = table
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[server] is a table");
    server.insert("listen".into(), "127.0.0.1:0".into());
    toml::to_string(&table).expect("TOML serializes")
}

/// The environment the Deployment in deploy/kubernetes gives the container.
const DEPLOYMENT_ENV: &[(&str, &str)] = &[
    ("LOKI_URL", "http://loki.example.com/loki/api/v1/push"),
    ("POD_NAME", "kube-log-relay-0"),
    ("POD_NAMESPACE", "kube-log-relay"),
];

/// `kube-log-relay check --config FILE`: the exit code and stderr.
fn check(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-log-relay"))
        .args(["check", "--config"])
        .arg(path)
        // What the Deployment in deploy/kubernetes sets; examples that use it require it.
        .envs(DEPLOYMENT_ENV.iter().copied())
        .output()
        .expect("run check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address the relay's log says it listens on.
fn listen_address(log: &str) -> Option<std::net::SocketAddr> {
    let line = log.lines().find(|l| l.contains("relay started"))?;
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("listen="))?;
    value.trim_matches('"').parse().ok()
}

#[test]
fn the_examples_are_found() {
    let names: Vec<String> = examples().into_iter().map(|(name, _)| name).collect();
    assert!(names.iter().any(|n| n == "config.toml"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("README.md")),
        "{names:?}"
    );
    for overlay in ["single", "clustered"] {
        let file = format!("deploy/kubernetes/{overlay}/config.toml");
        assert!(names.contains(&file), "{file} not in {names:?}");
    }
}

#[tokio::test]
async fn every_example_configuration_passes_check_and_starts() {
    let sim = support::sim().await;
    let sink = support::sink().await;
    for (index, (name, text)) in examples().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("example.toml");
        std::fs::write(&written, &text).unwrap();
        let (code, stderr) = check(&written);
        assert_eq!(
            code,
            Some(0),
            "`check` refuses {name}:\n{stderr}\n--- the example ---\n{text}"
        );

        let runnable = against(&text, &sim.url(), &sink.url(), dir.path());
        let mut relay = RelayProcess::start_with_env(dir.path(), &runnable, index, DEPLOYMENT_ENV);
        eventually(&format!("{name}: the relay started"), || {
            relay.alive() && listen_address(&relay.log()).is_some()
        })
        .await;
        let http = listen_address(&relay.log()).expect("listen address");
        let start = std::time::Instant::now();
        while http_get(http, "/-/ready").await.0 != 200 {
            relay.alive();
            assert!(
                start.elapsed() < support::DEADLINE,
                "{name}: /-/ready did not answer 200 within {:?}; the relay's log:\n{}",
                support::DEADLINE,
                relay.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        relay.terminate().await;
    }
}
