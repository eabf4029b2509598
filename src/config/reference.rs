//! `config.toml`, the annotated reference of every key (SPEC §4), kept in step with the model:
//! a key documented there that the model does not have, or a key of the model (as it
//! serializes for `/api/v1/config`) that is not documented there, fails the test below.
//!
//! The rule for reading `config.toml`: every line, commented out or not, that is a table header
//! (`[kubernetes.tls_config]`, `# [[relabel]]`, `# [loki.<name>] — …`) sets the current table,
//! and every line that starts with `key =` (after an optional `#`) documents `table.key`; an
//! inline table value (`attach_metadata = { node = false, … }`) documents its keys too. Prose
//! never starts with `word =`, so examples are told from explanations by their form alone.
//!
//! Paths are compared after normalizing: a receiver's name becomes `*` (`loki.*.url`), and the
//! tables whose keys the user chooses (header names, label names) are leaves.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use super::model::*;

/// Tables whose keys are chosen by the user: documented by their own key only.
const USER_KEYED: &[&str] = &[
    "kubernetes.http_headers",
    "kubernetes.proxy_connect_header",
    "kubernetes.oauth2.proxy_connect_header",
    "kubernetes.oauth2.endpoint_params",
    "loki.*.headers",
    "loki.*.external_labels",
    "loki.*.proxy_connect_header",
    "loki.*.oauth2.proxy_connect_header",
    "loki.*.oauth2.endpoint_params",
    "targets.labels",
];

/// `loki.local.url` → `loki.*.url`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('.').collect();
    if parts.first() == Some(&"loki") && parts.len() > 1 {
        parts[1] = "*";
    }
    parts.join(".")
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        normalize(&format!("{prefix}.{key}"))
    }
}

/// Every key path `config.toml` documents, by the rule of this module's documentation.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let header = regex::Regex::new(r"^\[\[?\s*([A-Za-z0-9_.<>-]+)\s*\]\]?(\s|$)").unwrap();
    let key = regex::Regex::new(r"^([A-Za-z0-9_]+)\s*=").unwrap();
    let mut table = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let content = line.trim_start();
        let content = content.strip_prefix('#').unwrap_or(content).trim_start();
        if let Some(found) = header.captures(content) {
            table = normalize(&found[1]);
        } else if let Some(found) = key.captures(content) {
            let path = join(&table, &found[1]);
            // `key = { … }` on one line: its keys are documented too.
            if let Ok(parsed) = content.parse::<toml::Table>() {
                let value = serde_json::to_value(&parsed[&found[1]]).expect("TOML is JSON");
                if value.is_object() {
                    walk(&value, &path, &mut keys);
                    continue;
                }
            }
            keys.insert(path);
        }
    }
    keys
}

/// The leaf paths of a serialized configuration.
fn walk(value: &Value, path: &str, keys: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !USER_KEYED.contains(&path) => {
            for (key, value) in map {
                walk(value, &join(path, key), keys);
            }
        }
        Value::Array(items) if items.iter().any(Value::is_object) => {
            for item in items {
                walk(item, path, keys);
            }
        }
        _ => {
            keys.insert(path.to_owned());
        }
    }
}

/// Every authentication the model can hold; the `match` stops compiling when a variant is
/// added, so that this test learns about it.
fn every_auth() -> Vec<Auth> {
    let secret = || Secret("s".into());
    let file = || PathBuf::from("/f");
    let oauth2 = |client_secret: Credential, tls: TlsConfig| {
        Auth::OAuth2(Box::new(OAuth2Config {
            client_id: "c".into(),
            client_secret,
            token_url: "https://idp/token".into(),
            scopes: vec!["s".into()],
            endpoint_params: [("audience".to_owned(), "a".to_owned())].into(),
            tls,
            proxy: ProxyConfig::default(),
        }))
    };
    let [inline_tls, file_tls] = every_tls().try_into().expect("two TLS shapes");
    let all = vec![
        Auth::None,
        oauth2(Credential::Inline(secret()), inline_tls),
        oauth2(Credential::File(file()), file_tls),
        Auth::BearerToken(secret()),
        Auth::BearerTokenFile(file()),
        Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Credential::Inline(secret()),
        },
        Auth::Authorization {
            kind: "Bearer".into(),
            credentials: Credential::File(file()),
        },
        Auth::Basic {
            username: "u".into(),
            password: Credential::Inline(secret()),
        },
        Auth::Basic {
            username: "u".into(),
            password: Credential::File(file()),
        },
    ];
    for auth in &all {
        match auth {
            Auth::None
            | Auth::BearerToken(_)
            | Auth::BearerTokenFile(_)
            | Auth::Authorization { .. }
            | Auth::Basic { .. }
            | Auth::OAuth2(_) => {}
        }
    }
    all
}

/// Every TLS shape: PEM inline and PEM in files.
fn every_tls() -> Vec<TlsConfig> {
    let inline = || Some(PemSource::Inline(Secret("s".into())));
    let file = || Some(PemSource::File(PathBuf::from("/f")));
    vec![
        TlsConfig {
            ca: inline(),
            cert: inline(),
            key: inline(),
            ..TlsConfig::default()
        },
        TlsConfig {
            ca: file(),
            cert: file(),
            key: file(),
            ..TlsConfig::default()
        },
    ]
}

/// Configurations that, together, hold every key of the model: every list non-empty, every
/// optional table present, every exclusive option in each of its forms.
fn every_shape() -> Vec<Config> {
    let text = r#"
        [[relabel]]
        source_labels = ["a"]
        target_label = "b"
        [[targets]]
        labels = { a = "b" }
        [positions]
        backend = "file"
        path = "/p"
        [loki.x]
        url = "http://loki/push"
        [stdout]
    "#;
    let base = super::parse(text, &|_| None).expect("valid");
    let mut shapes = Vec::new();
    for auth in every_auth() {
        for tls in every_tls() {
            let mut config = base.clone();
            config.kubernetes.auth = auth.clone();
            config.kubernetes.tls = tls.clone();
            let loki = config.loki.get_mut("x").expect("loki.x");
            loki.auth = auth.clone();
            loki.tls = tls;
            shapes.push(config);
        }
    }
    shapes
}

fn model_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for config in every_shape() {
        let value = serde_json::to_value(&config).expect("the model serializes");
        walk(&value, "", &mut keys);
    }
    keys
}

#[test]
fn config_toml_and_the_model_have_the_same_keys() {
    let documented = documented_keys(include_str!("../../config.toml"));
    let model = model_keys();
    let undocumented: Vec<_> = model.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&model).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "keys of the model that config.toml does not document (add `# key = <default>` with a line of explanation): {undocumented:#?}\n\
         keys config.toml documents that the model does not have: {unknown:#?}"
    );
}

#[test]
fn the_rule_reads_commented_examples_headers_and_inline_tables() {
    let text = r#"
# [kubernetes] — the client. Prose: api_server is a URL.
[kubernetes]
qps = 50
# bearer_token = "x"
# attach = { node = false, namespace = true }
# http_headers = { "X-A" = ["b"] }
# [loki.<name>] — receivers
[loki.local]
url = "x"
# [loki.local.basic_auth]
# username = "u"
"#;
    let keys: Vec<String> = documented_keys(text).into_iter().collect();
    assert_eq!(
        keys,
        [
            "kubernetes.attach.namespace",
            "kubernetes.attach.node",
            "kubernetes.bearer_token",
            "kubernetes.http_headers",
            "kubernetes.qps",
            "loki.*.basic_auth.username",
            "loki.*.url",
        ]
    );
}
