//! What `deploy/` ships (issue 19): the kustomize overlays render into valid Kubernetes objects,
//! their RBAC grants exactly the API calls the relay's code makes, their `config.toml` passes
//! `check` with the environment the Deployment gives it, and the dashboard and the alert rules
//! name only metrics the relay exports.
//!
//! The manifests are rendered by `kubectl kustomize` (kustomize ≥ 3.7, for components); the
//! rules are checked by `promtool`. Under `CI=true` both must be installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, Pod, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::core::Request;
use kube::core::params::{
    DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams, WatchParams,
};
use kube::core::subresource::LogParams;
use kube_log_relay::kube::instrument::verb_of;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::support::{self, Metrics, RelayProcess, eventually};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const OVERLAYS: [&str; 2] = ["single", "clustered"];
const ATTACH_METADATA: &str = "deploy/kubernetes/components/attach-metadata";

// ---------------------------------------------------------------------------------------------
// Rendering

/// `kubectl`, when installed (required under CI), and able to render components.
fn kubectl() -> Option<PathBuf> {
    let kubectl = support::require_tool(
        &["kubectl"],
        "apt-get install kubectl (Google's package; Debian's kubernetes-client 1.20 bundles a kustomize too old for components)",
    )?;
    let out = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .expect("kubectl version runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let kustomize = Regex::new(r"Kustomize Version: v(\d+)\.(\d+)")
        .unwrap()
        .captures(&text)
        .map(|c| (c[1].parse::<u32>().unwrap(), c[2].parse::<u32>().unwrap()));
    assert!(
        kustomize.is_some_and(|v| v >= (3, 7)),
        "deploy/kubernetes uses kustomize components, which need kustomize 3.7 or later; `kubectl version --client` says:\n{text}"
    );
    Some(kubectl)
}

/// `kubectl kustomize DIR`, every document as JSON.
fn render(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl kustomize runs");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
    serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| Value::deserialize(doc).expect("kustomize prints YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// An overlay as shipped.
fn overlay(kubectl: &Path, name: &str) -> Vec<Value> {
    render(
        kubectl,
        &Path::new(ROOT).join("deploy/kubernetes").join(name),
    )
}

/// An overlay with the attach-metadata component added, the way README tells users to add it.
fn overlay_with_attach_metadata(kubectl: &Path, name: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    // kustomize refuses absolute paths: reach the repository from the temporary directory.
    let up = "../".repeat(dir.path().components().count() - 1);
    let repo = ROOT.trim_start_matches('/');
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources: [{up}{repo}/deploy/kubernetes/{name}]\n\
             components: [{up}{repo}/{ATTACH_METADATA}]\n"
        ),
    )
    .unwrap();
    render(kubectl, dir.path())
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// The one object of `kind` (and `name`, when given); fails the test otherwise.
fn one<'a>(docs: &'a [Value], wanted: &str, name: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == wanted)
        .filter(|d| name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {wanted} {name:?}, found {found:#?}"
    );
    found[0]
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}\n{doc:#}", kind(doc)))
}

/// Parses `doc` as `T` and back: a field `T` does not know (a typo, a wrong indentation) is
/// lost on the way and shows as a difference.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
    let parsed: T = typed(doc);
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(
        &back,
        doc,
        "{} {} has fields its type does not know (left: as parsed, right: as written)",
        kind(doc),
        doc["metadata"]["name"]
    );
}

// ---------------------------------------------------------------------------------------------
// Every manifest is a valid object of its kind

#[test]
fn every_manifest_of_both_overlays_parses_as_its_kubernetes_type() {
    let Some(kubectl) = kubectl() else { return };
    for name in OVERLAYS {
        for docs in [
            overlay(&kubectl, name),
            overlay_with_attach_metadata(&kubectl, name),
        ] {
            let mut kinds: Vec<&str> = docs.iter().map(kind).collect();
            kinds.sort();
            assert_eq!(
                kinds,
                [
                    "ClusterRole",
                    "ClusterRoleBinding",
                    "ConfigMap",
                    "ConfigMap",
                    "Deployment",
                    "Namespace",
                    "PodDisruptionBudget",
                    "Role",
                    "RoleBinding",
                    "Service",
                    "ServiceAccount"
                ],
                "{name}"
            );
            for doc in &docs {
                match kind(doc) {
                    "Namespace" => round_trips::<Namespace>(doc),
                    "ServiceAccount" => round_trips::<ServiceAccount>(doc),
                    "ClusterRole" => round_trips::<ClusterRole>(doc),
                    "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc),
                    "Role" => round_trips::<Role>(doc),
                    "RoleBinding" => round_trips::<RoleBinding>(doc),
                    "ConfigMap" => round_trips::<ConfigMap>(doc),
                    "Deployment" => round_trips::<Deployment>(doc),
                    "Service" => round_trips::<Service>(doc),
                    "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(doc),
                    other => panic!("{name}: unexpected kind {other}"),
                }
                if kind(doc) != "Namespace" && !kind(doc).starts_with("Cluster") {
                    assert_eq!(
                        doc["metadata"]["namespace"],
                        "kube-log-relay",
                        "{name}: {} {} outside the relay's namespace",
                        kind(doc),
                        doc["metadata"]["name"]
                    );
                }
            }
        }
    }
}

/// The relay's container in an overlay's Deployment.
fn relay_container(docs: &[Value]) -> (Deployment, Container) {
    let deployment: Deployment = typed(one(docs, "Deployment", None));
    let spec = deployment.spec.clone().template.spec.unwrap();
    assert_eq!(spec.containers.len(), 1);
    (deployment, spec.containers[0].clone())
}

#[test]
fn the_deployment_runs_locked_down_probed_and_sized() {
    let Some(kubectl) = kubectl() else { return };
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/deploy/docker/Dockerfile")).unwrap();
    let image_user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    for (name, replicas) in [("single", 1), ("clustered", 3)] {
        let docs = overlay(&kubectl, name);
        let (deployment, c) = relay_container(&docs);
        let spec = deployment.spec.clone();
        assert_eq!(spec.replicas, Some(replicas), "{name}");
        let pod = spec.template.spec.unwrap();

        let pod_security = pod.security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{name}");
        let uid = pod_security.run_as_user.unwrap();
        assert_eq!(
            image_user.split(':').next(),
            Some(uid.to_string().as_str()),
            "{name}: the Dockerfile's USER and runAsUser differ"
        );
        assert_eq!(
            pod_security.seccomp_profile.unwrap().type_,
            "RuntimeDefault",
            "{name}"
        );
        let security = c.security_context.clone().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(
            security.capabilities.unwrap().drop,
            Some(vec!["ALL".to_string()]),
            "{name}"
        );
        assert!(
            !pod.volumes
                .unwrap_or_default()
                .iter()
                .any(|v| v.persistent_volume_claim.is_some() || v.host_path.is_some()),
            "{name}: positions live in ConfigMaps, the relay needs no volume of its own"
        );

        let path = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
            probe.and_then(|p| p.http_get).and_then(|h| h.path)
        };
        assert_eq!(
            path(c.liveness_probe.clone()).as_deref(),
            Some("/-/healthy")
        );
        assert_eq!(path(c.readiness_probe.clone()).as_deref(), Some("/-/ready"));

        let resources = c.resources.clone().unwrap();
        let get =
            |m: &Option<
                BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >,
             k: &str| m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone());
        assert_eq!(get(&resources.requests, "cpu").as_deref(), Some("100m"));
        assert_eq!(get(&resources.requests, "memory").as_deref(), Some("128Mi"));
        assert_eq!(get(&resources.limits, "cpu").as_deref(), Some("1"));
        assert_eq!(get(&resources.limits, "memory").as_deref(), Some("512Mi"));

        let field_ref = |var: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == var)
                .and_then(|e| e.value_from.clone())
                .and_then(|v| v.field_ref)
                .map(|f| f.field_path)
        };
        assert_eq!(field_ref("POD_NAME").as_deref(), Some("metadata.name"));
        assert_eq!(
            field_ref("POD_NAMESPACE").as_deref(),
            Some("metadata.namespace")
        );

        assert_eq!(
            c.image.as_deref(),
            Some(concat!("kube-log-relay:", env!("CARGO_PKG_VERSION"))),
            "{name}: the image tag follows Cargo.toml's version"
        );
        // SIGTERM flushes within [shutdown] timeout (30s by default) before the kubelet kills.
        assert!(pod.termination_grace_period_seconds.unwrap() > 30, "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC: exactly the calls the code makes

/// One permission: (apiGroup, resource or resource/subresource, verb).
type Permission = (String, String, String);

/// What the rules of a ClusterRole or Role grant, one permission per (group, resource, verb).
fn granted(rules: &[PolicyRule]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        ![group, resource, verb].contains(&&"*".to_string()),
                        "wildcard in {rule:?}"
                    );
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// Where the relay's own code is: `src/` without the simulator (not part of the relay) and
/// without `#[cfg(test)]` modules.
fn relay_sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(ROOT).join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| !p.starts_with(Path::new(ROOT).join("src/sim")))
        .map(|p| {
            let name = p.strip_prefix(ROOT).unwrap().display().to_string();
            (
                name,
                without_test_modules(&std::fs::read_to_string(&p).unwrap()),
            )
        })
        .collect()
}

/// `text` with every `#[cfg(test)] mod name { ... }` blanked out (lengths kept, so offsets and
/// line numbers stay right).
fn without_test_modules(text: &str) -> String {
    let mut out = text.to_string();
    let start = Regex::new(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{").unwrap();
    let mut from = 0;
    while let Some(m) = start.find_at(&out.clone(), from) {
        // Count braces, ignoring the ones in char literals ('{'); string literals in tests hold
        // balanced format braces.
        let bytes = out.as_bytes();
        let mut depth = 0usize;
        let mut end = out.len();
        let mut i = m.end() - 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        // Same byte length, so that offsets after it stay valid.
        let blank: String = out[m.start()..end]
            .chars()
            .map(|c| match c {
                '\n' => "\n".to_string(),
                c => " ".repeat(c.len_utf8()),
            })
            .collect();
        out.replace_range(m.start()..end, &blank);
        from = end;
    }
    out
}

/// One call the code makes on a `kube::Api`: the object type, the `Api` method, where.
#[derive(Debug)]
struct ApiCall {
    ty: String,
    method: String,
    at: String,
}

/// How a name is bound to an `Api<T>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Binding {
    /// A struct field, reached as `x.name`.
    Field,
    /// A `let`, a parameter or a loop variable.
    Local,
    /// A `Vec<Api<T>>` or `Option<Api<T>>`: only looped over or unwrapped, not called.
    Collection,
}

/// One binding: where, the name, the object type, how.
type Bound = (usize, String, String, Binding);

/// Finds the code's `kube::Api` calls: names bound to an `Api<T>` (a field, a `let`, a
/// parameter, a loop over a `Vec<Api<T>>`), then `name.method(` on them, `watcher(name, …)`,
/// and calls chained on `Api::<T>::…(…)`. `x.name.method(` takes the field binding of `name`,
/// `name.method(` the local one nearest above.
fn api_calls(sources: Vec<(String, String)>) -> Vec<ApiCall> {
    let ty = r"(?:PartialObjectMeta\s*<\s*)?(\w+)";
    let typed_name = Regex::new(&format!(
        r"(\w+)\s*:\s*&?\s*(?:mut\s+)?(Vec\s*<\s*|Option\s*<\s*)?Api\s*<\s*{ty}"
    ))
    .unwrap();
    let let_turbofish = Regex::new(&format!(
        r"let\s+(?:mut\s+)?(\w+)\s*=\s*Api\s*::\s*<\s*{ty}"
    ))
    .unwrap();
    let for_loop =
        Regex::new(r"for\s+(?:\(\s*(?:\w+\s*,\s*)*(\w+)\s*\)|(\w+))\s+in\s+&?(?:self\.)?(\w+)")
            .unwrap();
    let item = Regex::new(r"\b(struct|enum|fn)\s").unwrap();
    let method_call = Regex::new(r"(\.\s*)?\b(\w+)\s*\.\s*(\w+)\s*(?:::\s*<[^>]*>\s*)?\(").unwrap();
    let watcher_call = Regex::new(r"\b(?:watcher|metadata_watcher)\s*\(\s*(\w+)").unwrap();
    let chained = Regex::new(&format!(
        r"Api\s*::\s*<\s*{ty}\s*>+\s*::\s*\w+\s*\([^)]*\)\s*\.\s*(\w+)\s*\("
    ))
    .unwrap();
    // A request built with kube's own builder and sent with `Client::send` (the log streams):
    // `Request::new(Pod::url_path(…)).logs(…)`.
    let raw_request = Regex::new(
        r"(?s)Request\s*::\s*new\s*\(\s*(\w+)\s*::\s*url_path\s*\(.*?\)\s*\)\s*\.\s*(\w+)\s*\(",
    )
    .unwrap();

    let mut calls = Vec::new();
    for (file, text) in sources {
        let line = |offset: usize| text[..offset].lines().count().max(1);
        // Calls that name their type where they are made: no binding to resolve.
        for c in [&chained, &raw_request]
            .into_iter()
            .flat_map(|re| re.captures_iter(&text))
        {
            let at = c.get(0).unwrap().start();
            calls.push(ApiCall {
                ty: c[1].into(),
                method: c[2].into(),
                at: format!("{file}:{}", line(at)),
            });
        }
        // A `name: Api<T>` is a field when the nearest item keyword above it is struct/enum.
        let in_struct = |offset: usize| {
            item.captures_iter(&text[..offset])
                .last()
                .is_some_and(|c| &c[1] != "fn")
        };
        let mut bindings: Vec<Bound> = Vec::new();
        for c in typed_name.captures_iter(&text) {
            let at = c.get(0).unwrap().start();
            let how = if c.get(2).is_some() {
                Binding::Collection
            } else if in_struct(at) {
                Binding::Field
            } else {
                Binding::Local
            };
            bindings.push((at, c[1].into(), c[3].into(), how));
        }
        for c in let_turbofish.captures_iter(&text) {
            let at = c.get(0).unwrap().start();
            bindings.push((at, c[1].into(), c[2].into(), Binding::Local));
        }
        for c in for_loop.captures_iter(&text) {
            let var = c.get(1).or(c.get(2)).unwrap().as_str();
            let at = c.get(0).unwrap().start();
            if let Some(ty) = resolve(&bindings, &c[3], at, &[Binding::Collection]) {
                bindings.push((at, var.into(), ty, Binding::Local));
            }
        }
        if bindings.is_empty() {
            continue;
        }
        for c in method_call.captures_iter(&text) {
            let at = c.get(2).unwrap().start();
            let how = if c.get(1).is_some() {
                Binding::Field
            } else {
                Binding::Local
            };
            if let Some(ty) = resolve(&bindings, &c[2], at, &[how]) {
                calls.push(ApiCall {
                    ty,
                    method: c[3].into(),
                    at: format!("{file}:{}", line(at)),
                });
            }
        }
        for c in watcher_call.captures_iter(&text) {
            let at = c.get(0).unwrap().start();
            let ty = resolve(&bindings, &c[1], at, &[Binding::Local]).unwrap_or_else(|| {
                panic!(
                    "{file}:{}: watcher({}) on a name not bound to an Api<T>",
                    line(at),
                    &c[1]
                )
            });
            calls.push(ApiCall {
                ty,
                method: "watcher".into(),
                at: format!("{file}:{}", line(at)),
            });
        }
    }
    calls
}

/// The type of the binding of `name` (of one of the kinds `how`) nearest above `at`, else the
/// first one below (a struct declared after its impl).
fn resolve(bindings: &[Bound], name: &str, at: usize, how: &[Binding]) -> Option<String> {
    let of_name = || {
        bindings
            .iter()
            .filter(|(_, n, _, h)| n == name && how.contains(h))
    };
    of_name()
        .filter(|(o, ..)| *o < at)
        .max_by_key(|(o, ..)| *o)
        .or_else(|| of_name().min_by_key(|(o, ..)| *o))
        .map(|(_, _, t, _)| t.clone())
}

/// The HTTP requests `kube::Api::<ty>::method` sends, built by kube's own request builder.
/// `None` for methods that send nothing.
fn requests_of(call: &ApiCall) -> Option<Vec<http::Request<Vec<u8>>>> {
    fn path<K: kube::Resource<DynamicType = ()>>(namespaced: bool) -> String {
        K::url_path(&(), namespaced.then_some("ns"))
    }
    let url = match call.ty.as_str() {
        "Pod" => path::<Pod>(true),
        "Node" => path::<Node>(false),
        "Namespace" => path::<Namespace>(false),
        "Lease" => path::<Lease>(true),
        "ConfigMap" => path::<ConfigMap>(true),
        other => panic!(
            "{}: Api<{other}> is new: add {other} to requests_of in tests/it/deploy.rs (and the RBAC it needs to deploy/kubernetes)",
            call.at
        ),
    };
    let r = Request::new(url);
    let (get, list) = (GetParams::default(), ListParams::default());
    let (post, delete) = (PostParams::default(), DeleteParams::default());
    let requests = match call.method.as_str() {
        "clone" | "resource_url" | "into_client" => return None,
        "get" | "get_opt" => vec![r.get("x", &get)],
        "get_metadata" | "get_metadata_opt" => vec![r.get_metadata("x", &get)],
        "list" => vec![r.list(&list)],
        "list_metadata" => vec![r.list_metadata(&list)],
        "watch" => vec![r.watch(&WatchParams::default(), "0")],
        "watch_metadata" => vec![r.watch_metadata(&WatchParams::default(), "0")],
        // kube_runtime's watcher: a list, then a watch from its resourceVersion
        "watcher" => vec![r.list(&list), r.watch(&WatchParams::default(), "0")],
        "create" => vec![r.create(&post, vec![])],
        "replace" => vec![r.replace("x", &post, vec![])],
        "patch" => vec![r.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({})),
        )],
        "delete" => vec![r.delete("x", &delete)],
        "delete_collection" => vec![r.delete_collection(&delete, &list)],
        // Entry: get, then create or replace
        "entry" => vec![
            r.get("x", &get),
            r.create(&post, vec![]),
            r.replace("x", &post, vec![]),
        ],
        "log_stream" | "logs" => vec![r.logs("x", &LogParams::default())],
        other => panic!(
            "{}: Api<{}>::{other} is not known to tests/it/deploy.rs: add the request it sends to requests_of",
            call.at, call.ty
        ),
    };
    Some(
        requests
            .into_iter()
            .map(|r| r.expect("kube builds the request"))
            .collect(),
    )
}

/// The RBAC permission a request needs: its resource from the path, its verb from the relay's
/// own classification ([`verb_of`], which names `pods/log` reads `log`).
fn permission(request: &http::Request<Vec<u8>>) -> Permission {
    let uri = request.uri();
    let verb = verb_of(request.method(), uri.path(), uri.query());
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not a resource path: {uri}"),
    };
    let rest = match rest {
        ["namespaces", _ns, resource, more @ ..] => [&[*resource][..], more].concat(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected resource path {uri}"),
    };
    let verb = match verb {
        "log" => "get",
        "delete" if !named => "deletecollection",
        "other" => panic!("{} {uri}: verb_of cannot classify it", request.method()),
        v => v,
    };
    (group.to_string(), resource, verb.to_string())
}

#[test]
fn the_rbac_grants_every_api_call_the_code_makes_and_no_more() {
    let Some(kubectl) = kubectl() else { return };
    let mut needed: BTreeMap<Permission, Vec<String>> = BTreeMap::new();
    let calls = api_calls(relay_sources());
    for call in &calls {
        for request in requests_of(call).into_iter().flatten() {
            needed
                .entry(permission(&request))
                .or_default()
                .push(format!("{} Api<{}>::{}", call.at, call.ty, call.method));
        }
    }
    // The scan must see what is known to exist; it would otherwise prove nothing.
    let pods_log = (String::new(), "pods/log".to_string(), "get".to_string());
    assert!(
        needed.contains_key(&pods_log),
        "no log stream found in src/: {calls:#?}"
    );

    // attach_metadata's watches are granted by the component only.
    let metadata = |p: &Permission| p.0.is_empty() && (p.1 == "nodes" || p.1 == "namespaces");
    let code_base: BTreeSet<Permission> = needed.keys().filter(|p| !metadata(p)).cloned().collect();
    let code_all: BTreeSet<Permission> = needed.keys().cloned().collect();
    let show = |set: &BTreeSet<Permission>| -> Vec<String> {
        set.iter()
            .map(|p| {
                let uses = needed.get(p).map(|v| v.join(", ")).unwrap_or_default();
                format!("{:?} {} {} ({uses})", p.0, p.1, p.2)
            })
            .collect()
    };
    for name in OVERLAYS {
        for (docs, expected, with) in [
            (overlay(&kubectl, name), &code_base, ""),
            (
                overlay_with_attach_metadata(&kubectl, name),
                &code_all,
                " + attach-metadata",
            ),
        ] {
            let cluster: ClusterRole = typed(one(&docs, "ClusterRole", None));
            let role: Role = typed(one(&docs, "Role", None));
            let cluster = granted(cluster.rules.as_deref().unwrap_or_default());
            let role = granted(role.rules.as_deref().unwrap_or_default());
            let all: BTreeSet<Permission> = cluster.union(&role).cloned().collect();
            let missing: BTreeSet<Permission> = expected.difference(&all).cloned().collect();
            let extra: BTreeSet<Permission> = all.difference(expected).cloned().collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{name}{with}: the RBAC differs from the calls in src/\nmissing (the code makes them): {:#?}\ngranted but never called: {extra:#?}",
                show(&missing)
            );
            // Writes stay in the relay's own namespace.
            for (group, resource, verb) in &cluster {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "{name}{with}: the ClusterRole grants {verb} on {group:?} {resource}"
                );
            }
        }
    }
}

#[test]
fn the_source_scan_sees_each_kind_of_binding_and_call() {
    let text = r#"
        struct Keeper { api: Api<Lease> }
        fn f(api: &Api<Pod>) { api.get_opt("x"); }
        fn g() {
            let apis: Vec<Api<Pod>> = vec![];
            for (i, api) in apis.into_iter().enumerate() { watcher(api, cfg); }
            let api = Api::<PartialObjectMeta<Node>>::all(c);
            watcher(api, cfg);
            keeper
                .api
                .delete(&name, &dp);
            Api::<ConfigMap>::namespaced(c, "ns").list(&lp);
            let r = Request::new(Pod::url_path(&(), Some(ns)))
                .logs(pod, &lp);
        }
        #[cfg(test)]
        mod tests { fn t(api: Api<Secret>) { api.create(&pp, &s); let c = '{'; } }
    "#;
    let stripped = without_test_modules(text);
    assert!(!stripped.contains("Secret"), "{stripped}");
    assert_eq!(stripped.len(), text.len());
    let found: Vec<(String, String)> = api_calls(vec![("x.rs".into(), stripped)])
        .into_iter()
        .map(|c| (c.ty, c.method))
        .collect();
    let pair = |t: &str, m: &str| (t.to_string(), m.to_string());
    assert_eq!(
        found,
        [
            pair("ConfigMap", "list"),
            pair("Pod", "logs"),
            pair("Pod", "get_opt"),
            pair("Lease", "delete"),
            pair("Pod", "watcher"),
            pair("Node", "watcher"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The configuration each overlay ships

#[test]
fn each_overlays_config_passes_check_with_the_deployments_environment() {
    let Some(kubectl) = kubectl() else { return };
    for name in OVERLAYS {
        let docs = overlay(&kubectl, name);
        let (deployment, c) = relay_container(&docs);
        let configmap_data = |cm: &str| -> BTreeMap<String, String> {
            typed::<ConfigMap>(one(&docs, "ConfigMap", Some(cm)))
                .data
                .unwrap_or_default()
        };

        // The file the relay reads: --config PATH, in a mount of the config ConfigMap.
        let args = c.args.clone().unwrap_or_default();
        let path = args
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no --config in {args:?}"));
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{name}: nothing is mounted at {path}"));
        let volume = deployment
            .spec
            .clone()
            .template
            .spec
            .unwrap()
            .volumes
            .unwrap();
        let volume = volume.iter().find(|v| v.name == mount.name).unwrap();
        let cm = volume
            .config_map
            .as_ref()
            .expect("a ConfigMap volume")
            .name
            .clone();
        let key = &path[mount.mount_path.len() + 1..];
        let config = configmap_data(&cm)
            .remove(key)
            .unwrap_or_else(|| panic!("{name}: ConfigMap {cm} has no {key}"));

        // The environment the kubelet gives the container: values, the downward API and
        // envFrom ConfigMaps. Nothing else: check runs with exactly that.
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for from in c.env_from.iter().flatten() {
            let cm = from.config_map_ref.as_ref().expect("envFrom a ConfigMap");
            env.extend(configmap_data(&cm.name));
        }
        for var in c.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => "kube-log-relay-5d8f9c7b6-x2k9q".into(),
                        Some("metadata.namespace") => "kube-log-relay".into(),
                        other => panic!("{name}: {} from {other:?}", var.name),
                    }
                }
                (None, None) => String::new(),
            };
            env.insert(var.name.clone(), value);
        }
        assert!(env.contains_key("LOKI_URL"), "{name}: {env:?}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, &config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kube-log-relay"))
            .args(["check", "--config"])
            .arg(&file)
            .env_clear()
            .envs(&env)
            .output()
            .expect("run check");
        assert!(
            out.status.success(),
            "{name}: `check` refuses the overlay's config.toml:\n{}\n--- config.toml ---\n{config}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboard and alerts

/// Every PromQL expression of the dashboard.
fn dashboard_expressions() -> Vec<String> {
    let text =
        std::fs::read_to_string(format!("{ROOT}/deploy/grafana/kube-log-relay.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], &mut exprs);
    // The template variables' queries name metrics too: `label_values(SELECTOR, label)`.
    let label_values = Regex::new(r"^label_values\((.*),\s*\w+\)$").unwrap();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let selector = label_values
                .captures(q)
                .unwrap_or_else(|| panic!("unexpected variable query {q}"));
            exprs.push(selector[1].to_string());
        }
    }
    exprs
}

/// The alert rules file, parsed.
fn alert_rules() -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/alerts.yaml")).unwrap();
    let rules: Value = serde_yaml_ng::from_str(&text).expect("alerts.yaml is YAML");
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// The metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// ranges and `by (…)` lists that are not a function, an aggregation or a keyword.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut text = Regex::new(r#""(?:[^"\\]|\\.)*""#)
        .unwrap()
        .replace_all(expr, " ")
        .into_owned();
    for re in [
        r"\{[^}]*\}",
        r"\[[^\]]*\]",
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
    ] {
        text = Regex::new(re).unwrap().replace_all(&text, " ").into_owned();
    }
    const FUNCTIONS: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "irate",
        "increase",
        "deriv",
        "delta",
        "histogram_quantile",
        "clamp_min",
        "clamp_max",
        "absent",
        "label_values",
        "topk",
        "bottomk",
        "max_over_time",
        "min_over_time",
        "avg_over_time",
        "quantile",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    let ident = Regex::new(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?").unwrap();
    let mut names = BTreeSet::new();
    for m in ident.find_iter(&text) {
        let word = m.as_str().trim_end_matches('(').trim_end();
        let called = m.as_str().ends_with('(');
        if called {
            assert!(
                FUNCTIONS.contains(&word),
                "unknown function {word} in {expr}"
            );
        } else if !KEYWORDS.contains(&word) && !word.starts_with(|c: char| c.is_ascii_digit()) {
            names.insert(word.to_string());
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_the_relay_exports() {
    // A relay that pushed once, so that even the series created by the first push exist.
    let sim = support::sim().await;
    let sink = support::sink().await;
    sim.add_pod(
        kube_log_relay::sim::PodSpec::new("ns", "web").container(
            kube_log_relay::sim::ContainerSpec::new("c")
                .rate(100.0)
                .total_lines(5, 0),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(
        dir.path(),
        &(support::base_config(&sim) + &support::loki_table("default", &sink, "")),
        0,
    );
    let addr = relay.http_addr().await;
    eventually("the relay pushed", || !sink.entries().is_empty()).await;
    let metrics = Metrics::scrape(addr).await;
    let exported: BTreeSet<&String> = metrics.described().collect();
    relay.terminate().await;

    let known = |name: &str| {
        // `up` is written by Prometheus for every scrape target.
        name == "up"
            || exported.contains(&name.to_string())
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| exported.contains(&base.to_string()))
            })
    };
    let mut sources: Vec<(String, String)> = dashboard_expressions()
        .into_iter()
        .map(|e| ("deploy/grafana/kube-log-relay.json".to_string(), e))
        .collect();
    for rule in alert_rules() {
        sources.push((
            format!("deploy/prometheus/alerts.yaml {}", rule["alert"]),
            rule["expr"].as_str().unwrap().to_string(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (source, expr) in &sources {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{source}: no metric in {expr}");
        for name in names {
            assert!(
                known(&name),
                "{source}: {name} is not exported by the relay (exported: {exported:?})\n{expr}"
            );
            seen.insert(name);
        }
    }
    // The dashboard covers what issue 19 lists.
    for wanted in [
        "kube_log_relay_lines_read_total",
        "loki_write_sent_entries_total",
        "loki_write_dropped_entries_total",
        "loki_write_request_duration_seconds_bucket",
        "kube_log_relay_receiver_queue_bytes",
        "kube_log_relay_stream_opens_total",
        "kube_log_relay_stream_errors_total",
        "kube_log_relay_targets",
        "kube_log_relay_positions_lag_seconds",
        "kube_log_relay_api_requests_total",
        "kube_log_relay_api_connections",
        "kube_log_relay_cluster_members",
        "kube_log_relay_cluster_handovers_total",
    ] {
        assert!(
            seen.contains(wanted),
            "the dashboard and alerts never show {wanted}"
        );
    }
}

#[test]
fn the_dashboard_queries_the_chosen_prometheus() {
    let text =
        std::fs::read_to_string(format!("{ROOT}/deploy/grafana/kube-log-relay.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{vars:#?}"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
        }
    }
}

#[test]
fn every_alert_has_a_summary_and_a_runbook_in_readme() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    // GitHub's anchors: the heading lowercased, spaces to '-', punctuation dropped.
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| {
            l.strip_prefix('#')
                .map(|h| h.trim_start_matches('#').trim())
        })
        .map(|h| {
            h.to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for wanted in [
        "KubeLogRelayDown",
        "KubeLogRelayReceiverDropping",
        "KubeLogRelayQueueNearlyFull",
        "KubeLogRelayPositionsLagGrowing",
        "KubeLogRelayTargetsInBackoff",
        "KubeLogRelayReloadFailed",
        "KubeLogRelayReplicaMissing",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        assert!(
            rule["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name} has no summary"
        );
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_default();
        let anchor = url
            .strip_prefix("README.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url:?} is not a README.md anchor"));
        assert!(
            anchors.contains(anchor),
            "{name}: README.md has no heading for #{anchor}"
        );
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = support::require_tool(&["promtool"], "apt-get install prometheus") else {
        return;
    };
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(format!("{ROOT}/deploy/prometheus/alerts.yaml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
