//! Nothing accepted and ignored (issue 16): every key of `config.toml`'s `[kubernetes]` tables
//! names the test that shows it has its documented effect. A key added to `config.toml` without
//! a test fails here, and so does a test listed here that no longer exists.

use std::collections::BTreeSet;

/// `[kubernetes]` key (dotted below the table) → a test that exercises it end to end or at the
/// client, by function name.
const COVERED_BY: &[(&str, &str)] = &[
    (
        "api_server",
        "three_hundred_streams_share_four_connections_and_every_line_arrives_once",
    ),
    (
        "kubeconfig_file",
        "the_relay_tails_through_the_written_kubeconfig",
    ),
    (
        "bearer_token",
        "bearer_token_and_headers_reach_the_api_server",
    ),
    (
        "bearer_token_file",
        "a_rejected_token_is_named_and_retried_then_recovers",
    ),
    (
        "qps",
        "thousands_of_streams_open_within_n_over_qps_from_cold_and_after_an_outage",
    ),
    (
        "burst",
        "thousands_of_streams_open_within_n_over_qps_from_cold_and_after_an_outage",
    ),
    (
        "max_streams_per_connection",
        "our_limit_and_the_servers_limit_the_smaller_wins",
    ),
    ("enable_http2", "every_tls_setting_reaches_the_api_server"),
    ("follow_redirects", "redirects_are_followed_or_named"),
    ("proxy_url", "through_a_connect_proxy_and_around_it"),
    ("no_proxy", "through_a_connect_proxy_and_around_it"),
    (
        "proxy_connect_header",
        "through_a_connect_proxy_and_around_it",
    ),
    (
        "proxy_from_environment",
        "proxy_from_environment_uses_https_proxy",
    ),
    (
        "http_headers",
        "bearer_token_and_headers_reach_the_api_server",
    ),
    ("authorization.type", "credential_files_for_other_schemes"),
    (
        "authorization.credentials",
        "authorization_and_basic_and_headers_map_to_kube",
    ),
    (
        "authorization.credentials_file",
        "credential_files_for_other_schemes",
    ),
    ("basic_auth.username", "basic_auth_reaches_the_api_server"),
    ("basic_auth.password", "basic_auth_reaches_the_api_server"),
    (
        "basic_auth.password_file",
        "credential_files_for_other_schemes",
    ),
    (
        "tls_config.ca_pem",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.ca_file",
        "a_wrong_ca_or_server_name_is_named_and_retried_without_a_crash",
    ),
    (
        "tls_config.cert_pem",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.cert_file",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.key_pem",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.key_file",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.insecure_skip_verify",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.min_version",
        "every_tls_setting_reaches_the_api_server",
    ),
    (
        "tls_config.server_name",
        "a_wrong_ca_or_server_name_is_named_and_retried_without_a_crash",
    ),
    (
        "oauth2.client_id",
        "one_token_serves_every_request_and_the_receiver_pushes_with_its_own",
    ),
    (
        "oauth2.client_secret",
        "one_token_serves_every_request_and_the_receiver_pushes_with_its_own",
    ),
    (
        "oauth2.token_url",
        "one_token_serves_every_request_and_the_receiver_pushes_with_its_own",
    ),
    ("oauth2.client_secret_file", OAUTH2_OWN),
    ("oauth2.scopes", OAUTH2_OWN),
    ("oauth2.endpoint_params", OAUTH2_OWN),
    ("oauth2.proxy_url", OAUTH2_OWN),
    ("oauth2.no_proxy", OAUTH2_OWN),
    ("oauth2.proxy_connect_header", OAUTH2_OWN),
    ("oauth2.proxy_from_environment", OAUTH2_OWN),
    ("oauth2.tls_config.ca_pem", OAUTH2_OWN),
    ("oauth2.tls_config.ca_file", OAUTH2_OWN),
    ("oauth2.tls_config.cert_pem", OAUTH2_OWN),
    ("oauth2.tls_config.cert_file", OAUTH2_OWN),
    ("oauth2.tls_config.key_pem", OAUTH2_OWN),
    ("oauth2.tls_config.key_file", OAUTH2_OWN),
    ("oauth2.tls_config.insecure_skip_verify", OAUTH2_OWN),
    ("oauth2.tls_config.min_version", OAUTH2_OWN),
    ("oauth2.tls_config.server_name", OAUTH2_OWN),
];

/// The test of the token endpoint's own options.
const OAUTH2_OWN: &str = "the_token_endpoint_has_its_own_secret_file_params_tls_and_proxy";

/// The keys `config.toml` documents under `[kubernetes]` and its sub-tables, set or commented
/// out (`# key = value`), dotted below `kubernetes`.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut table: Option<String> = None;
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        // A table header alone on its line (`[kubernetes.tls_config]`, `[[relabel]]`), not a
        // comment that mentions one.
        let header = line
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(|h| h.trim_matches(['[', ']']))
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            });
        if let Some(name) = header {
            table = (name == "kubernetes" || name.starts_with("kubernetes.")).then(|| {
                name.trim_start_matches("kubernetes")
                    .trim_start_matches('.')
                    .to_string()
            });
            continue;
        }
        let Some(prefix) = &table else { continue };
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        keys.insert(if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        });
    }
    keys
}

/// Every `fn name(` in the crate's sources and tests.
fn test_functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src"), root.join("tests")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read a source file");
                for rest in text.split("fn ").skip(1) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn every_kubernetes_key_of_config_toml_is_exercised_by_a_test() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .expect("read config.toml");
    let documented = documented_keys(&text);
    assert!(documented.contains("api_server") && documented.contains("tls_config.ca_file"));
    let functions = test_functions();
    let mut missing = Vec::new();
    for key in &documented {
        match COVERED_BY.iter().find(|(k, _)| k == key) {
            None => missing.push(format!("{key}: no test listed")),
            Some((_, test)) if !functions.contains(*test) => {
                missing.push(format!("{key}: the listed test {test} does not exist"))
            }
            Some(_) => {}
        }
    }
    for (key, _) in COVERED_BY {
        if !documented.contains(*key) {
            missing.push(format!("{key}: listed here but not in config.toml"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}
