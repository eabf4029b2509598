//! The configuration file as written: serde structs mirroring the TOML tables (SPEC §4), phase
//! one of two (STYLE.md: "configuration in two phases").
//!
//! Every table denies unknown keys. Values that need checking — durations, sizes, enumerated
//! words, URLs — stay raw strings here and become typed in [`super::validate`], which can then
//! report all problems with their paths instead of the first one serde meets. Every key is
//! optional: defaults are applied in validation, where they are documented next to their checks.
//!
//! [`RawConfig::from_table`] deserializes each section on its own (each `[loki.<name>]`, each
//! `[[relabel]]` and `[[targets]]` entry separately), so a wrong type in `[tail]` does not hide
//! an unknown key in `[loki.primary]`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};

use super::error::{ConfigError, join_index, join_key};

/// A section that may be absent, present but not deserializable (its errors are already
/// reported), or present.
#[derive(Debug)]
pub enum Section<T> {
    Absent,
    Invalid,
    Present(T),
}

impl<T> Section<T> {
    /// The section, if it deserialized.
    pub fn get(&self) -> Option<&T> {
        match self {
            Section::Present(value) => Some(value),
            Section::Absent | Section::Invalid => None,
        }
    }

    /// Present in the file but not deserializable: cross-section checks stay quiet about it.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Section::Invalid)
    }
}

/// The whole file, section by section.
#[derive(Debug)]
pub struct RawConfig {
    pub kubernetes: Section<RawKubernetes>,
    pub discovery: Section<RawDiscovery>,
    /// `[[relabel]]` entries that deserialized, with their index in the file.
    pub relabel: Vec<(usize, RawRelabel)>,
    /// `[[targets]]` entries that deserialized, with their index in the file.
    pub targets: Vec<(usize, RawTarget)>,
    /// Whether the file has any `[[targets]]` entry, valid or not.
    pub targets_written: bool,
    pub tail: Section<RawTail>,
    pub positions: Section<RawPositions>,
    /// `[loki.<name>]` receivers that deserialized.
    pub loki: BTreeMap<String, RawLoki>,
    /// Whether the file declares any receiver at all (`loki` or `stdout`), valid or not.
    pub receivers_written: bool,
    pub stdout: Section<RawStdout>,
    pub server: Section<RawServer>,
    pub shutdown: Section<RawShutdown>,
    pub clustering: Section<RawClustering>,
}

/// The top-level tables, in the order of the reference `config.toml`.
pub const SECTIONS: &[&str] = &[
    "kubernetes",
    "discovery",
    "relabel",
    "targets",
    "tail",
    "positions",
    "loki",
    "stdout",
    "server",
    "shutdown",
    "clustering",
];

impl RawConfig {
    /// Deserializes every section of an (already expanded) TOML document, collecting one error
    /// per section, receiver or list entry that does not fit its schema.
    pub fn from_table(mut table: toml::Table) -> (RawConfig, Vec<ConfigError>) {
        let mut errors = Vec::new();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError::new(
                    join_key("", key),
                    format!(
                        "unknown key; the top-level tables are {}",
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        let receivers_written = table.contains_key("stdout")
            || table
                .get("loki")
                .is_some_and(|loki| loki.as_table().is_none_or(|t| !t.is_empty()));
        let targets_written = table
            .get("targets")
            .is_some_and(|targets| targets.as_array().is_none_or(|a| !a.is_empty()));
        let mut take = |name: &str| table.remove(name);
        let kubernetes = section(take("kubernetes"), "kubernetes", &mut errors);
        let discovery = section(take("discovery"), "discovery", &mut errors);
        let relabel = list(take("relabel"), "relabel", &mut errors);
        let targets = list(take("targets"), "targets", &mut errors);
        let tail = section(take("tail"), "tail", &mut errors);
        let positions = section(take("positions"), "positions", &mut errors);
        let loki = receivers(take("loki"), &mut errors);
        let stdout = section(take("stdout"), "stdout", &mut errors);
        let server = section(take("server"), "server", &mut errors);
        let shutdown = section(take("shutdown"), "shutdown", &mut errors);
        let clustering = section(take("clustering"), "clustering", &mut errors);
        let raw = RawConfig {
            kubernetes,
            discovery,
            relabel,
            targets,
            targets_written,
            tail,
            positions,
            loki,
            receivers_written,
            stdout,
            server,
            shutdown,
            clustering,
        };
        (raw, errors)
    }
}

/// Deserializes one value, reporting a failure at its full path.
fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(value) => Some(value),
        Err(error) => {
            let mut full = path.to_owned();
            for segment in error.path().iter() {
                full = match segment {
                    serde_path_to_error::Segment::Seq { index } => join_index(&full, *index),
                    serde_path_to_error::Segment::Map { key }
                    | serde_path_to_error::Segment::Enum { variant: key } => join_key(&full, key),
                    serde_path_to_error::Segment::Unknown => full,
                };
            }
            let message = error.into_inner().message().trim().to_owned();
            errors.push(ConfigError::new(full, message));
            None
        }
    }
}

fn section<T: DeserializeOwned>(
    value: Option<toml::Value>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Section<T> {
    match value {
        None => Section::Absent,
        Some(value) => match deserialize(value, path, errors) {
            Some(value) => Section::Present(value),
            None => Section::Invalid,
        },
    }
}

/// `[[relabel]]`, `[[targets]]`: an array of tables, each entry deserialized on its own.
fn list<T: DeserializeOwned>(
    value: Option<toml::Value>,
    path: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, T)> {
    match value {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| {
                deserialize(item, &join_index(path, index), errors).map(|entry| (index, entry))
            })
            .collect(),
        Some(other) => {
            errors.push(ConfigError::new(
                path,
                format!(
                    "expected an array of tables (write [[{path}]]), found {}",
                    other.type_str()
                ),
            ));
            Vec::new()
        }
    }
}

/// `[loki.<name>]`: each receiver deserialized on its own.
fn receivers(
    value: Option<toml::Value>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, RawLoki> {
    match value {
        None => BTreeMap::new(),
        Some(toml::Value::Table(table)) => table
            .into_iter()
            .filter_map(|(name, value)| {
                let path = join_key("loki", &name);
                deserialize(value, &path, errors).map(|loki| (name, loki))
            })
            .collect(),
        Some(other) => {
            errors.push(ConfigError::new(
                "loki",
                format!(
                    "expected tables of receivers (write [loki.<name>]), found {}",
                    other.type_str()
                ),
            ));
            BTreeMap::new()
        }
    }
}

/// A size: a human string (`"1MiB"`) or an integer number of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeValue {
    Text(String),
    Bytes(u64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SizeValue, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size such as "256KiB" or "1MiB", or a number of bytes"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Header values: one string or a list of strings (`map(list(secret))` in the reference).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StringList, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = StringList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StringList, E> {
                Ok(StringList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StringList, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(StringList(values))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// `[kubernetes]` (SPEC §4.1).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawKubernetes {
    pub api_server: Option<String>,
    pub kubeconfig_file: Option<String>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<String>,
    pub authorization: Option<RawAuthorization>,
    pub basic_auth: Option<RawBasicAuth>,
    pub oauth2: Option<RawOAuth2>,
    pub tls_config: Option<RawTls>,
    pub proxy_url: Option<String>,
    pub no_proxy: Option<String>,
    pub proxy_from_environment: Option<bool>,
    pub proxy_connect_header: Option<BTreeMap<String, StringList>>,
    pub http_headers: Option<BTreeMap<String, StringList>>,
    pub enable_http2: Option<bool>,
    pub follow_redirects: Option<bool>,
    pub qps: Option<f64>,
    pub burst: Option<u32>,
    pub max_streams_per_connection: Option<u32>,
}

/// `authorization` of a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAuthorization {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub credentials: Option<String>,
    pub credentials_file: Option<String>,
}

/// `basic_auth` of a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawBasicAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
}

/// `oauth2` of a client: the client-credentials grant, with the reference's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawOAuth2 {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub token_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub endpoint_params: Option<BTreeMap<String, String>>,
    pub tls_config: Option<RawTls>,
    pub proxy_url: Option<String>,
    pub no_proxy: Option<String>,
    pub proxy_from_environment: Option<bool>,
    pub proxy_connect_header: Option<BTreeMap<String, StringList>>,
}

/// `tls_config` of a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTls {
    pub ca_pem: Option<String>,
    pub ca_file: Option<String>,
    pub cert_pem: Option<String>,
    pub cert_file: Option<String>,
    pub key_pem: Option<String>,
    pub key_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub min_version: Option<String>,
    pub server_name: Option<String>,
}

/// `[discovery]` (SPEC §4.2).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawDiscovery {
    pub enabled: Option<bool>,
    pub namespaces: Option<Vec<String>>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub attach_metadata: Option<RawAttachMetadata>,
}

/// `attach_metadata = { node, namespace }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAttachMetadata {
    pub node: Option<bool>,
    pub namespace: Option<bool>,
}

/// One `[[relabel]]` rule (SPEC §4.3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRelabel {
    pub source_labels: Option<Vec<String>>,
    pub separator: Option<String>,
    pub regex: Option<String>,
    pub modulus: Option<u64>,
    pub target_label: Option<String>,
    pub replacement: Option<String>,
    pub action: Option<String>,
}

/// One `[[targets]]` entry: `labels = { __pod_namespace__ = "…", … }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTarget {
    pub labels: Option<BTreeMap<String, String>>,
}

/// `[tail]` (SPEC §4.6, §5).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTail {
    pub start_from: Option<String>,
    pub max_line_size: Option<SizeValue>,
    pub on_long_line: Option<String>,
    pub min_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub max_stream_lifetime: Option<String>,
    pub terminated_grace: Option<String>,
    pub chunk_lines: Option<usize>,
}

/// `[positions]` (SPEC §4.4).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawPositions {
    pub backend: Option<String>,
    pub path: Option<String>,
    pub sync_period: Option<String>,
    pub gc_after: Option<String>,
}

/// `[loki.<name>]` (SPEC §4.5).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawLoki {
    pub url: Option<String>,
    pub tenant_id: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub external_labels: Option<BTreeMap<String, String>>,
    pub batch_size: Option<SizeValue>,
    pub batch_wait: Option<String>,
    pub buffer_size: Option<SizeValue>,
    pub on_full: Option<String>,
    pub min_backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub max_retries: Option<u32>,
    pub retry_on_http_429: Option<bool>,
    pub remote_timeout: Option<String>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<String>,
    pub authorization: Option<RawAuthorization>,
    pub basic_auth: Option<RawBasicAuth>,
    pub oauth2: Option<RawOAuth2>,
    pub tls_config: Option<RawTls>,
    pub proxy_url: Option<String>,
    pub no_proxy: Option<String>,
    pub proxy_from_environment: Option<bool>,
    pub proxy_connect_header: Option<BTreeMap<String, StringList>>,
    pub enable_http2: Option<bool>,
    pub max_label_names: Option<usize>,
    pub max_label_value_length: Option<usize>,
    pub max_line_size: Option<SizeValue>,
    pub max_line_size_truncate: Option<bool>,
}

/// `[stdout]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawStdout {
    pub format: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServer {
    pub listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

/// `[shutdown]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawShutdown {
    pub timeout: Option<String>,
}

/// `[clustering]` (SPEC §7).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawClustering {
    pub enabled: Option<bool>,
    pub identity: Option<String>,
    pub namespace: Option<String>,
    pub lease_duration: Option<String>,
    pub renew_interval: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> (RawConfig, Vec<String>) {
        let (raw, errors) = RawConfig::from_table(text.parse().unwrap());
        (raw, errors.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn unknown_key_is_reported_with_its_path() {
        let (_, errors) = raw("[loki.primary]\nurl = \"http://x\"\nbatch_wiat = \"1s\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("loki.primary.batch_wiat: unknown field `batch_wiat`"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_nested_key_and_unknown_table() {
        let (_, errors) = raw("[kubernetes.tls_config]\nca = \"x\"\n[logging]\nlevel = 1\n");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("logging: unknown key; the top-level tables are kubernetes,")
        );
        assert!(errors[1].starts_with("kubernetes.tls_config.ca: unknown field `ca`"));
    }

    #[test]
    fn wrong_types_are_reported_per_section_and_entry() {
        let (raw, errors) = raw(
            "[tail]\nchunk_lines = \"many\"\n[[relabel]]\naction = \"keep\"\n[[relabel]]\nmodulus = -1\n\
             [loki.a]\nmax_retries = true\n[loki.b]\nurl = \"http://b\"\n[discovery]\nnamespaces = \"default\"\n",
        );
        assert_eq!(
            errors
                .iter()
                .map(|e| e.split(':').next().unwrap())
                .collect::<Vec<_>>(),
            [
                "discovery.namespaces",
                "relabel[1].modulus",
                "tail.chunk_lines",
                "loki.a.max_retries"
            ],
            "{errors:?}"
        );
        assert!(
            errors[3].contains("invalid type: boolean `true`"),
            "{errors:?}"
        );
        assert!(matches!(raw.tail, Section::Invalid));
        assert_eq!(raw.relabel.len(), 1);
        assert_eq!(raw.loki.keys().collect::<Vec<_>>(), ["b"]);
        assert!(raw.receivers_written);
    }

    #[test]
    fn sizes_and_header_lists_accept_both_forms() {
        let (raw, errors) = raw(
            "[loki.a]\nbatch_size = 1024\nbuffer_size = \"64MiB\"\nmax_line_size = -1\n\
             [kubernetes.http_headers]\nA = \"one\"\nB = [\"x\", \"y\"]\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("loki.a.max_line_size: invalid value: integer `-1`"));
        let headers = raw.kubernetes.get().unwrap().http_headers.as_ref().unwrap();
        assert_eq!(headers["A"], StringList(vec!["one".into()]));
        assert_eq!(headers["B"], StringList(vec!["x".into(), "y".into()]));
    }

    #[test]
    fn a_section_that_is_not_a_table() {
        let (_, errors) = raw("tail = 5\nrelabel = { action = \"keep\" }\nloki = \"x\"\n");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("tail: invalid type: integer `5`, expected a table"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("relabel: expected an array of tables"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("loki: expected tables of receivers"))
        );
    }
}
