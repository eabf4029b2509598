//! `[[relabel]]` rules with Prometheus' exact semantics (SPEC §4.3).
//!
//! [`relabel`] applies rules in order to one target's labels, as Prometheus'
//! `model/relabel.Process` does: `None` means a `keep`/`drop`-style rule dropped the target.
//! Two details of Prometheus that matter for migrated rules:
//!
//! - A label with an empty value does not exist: setting a label to `""` deletes it, and reading a
//!   missing label yields `""`. We remove empty-valued labels on entry for the same effect.
//! - Regexes are fully anchored (`^(?s:…)$`, compiled by the configuration) and `$1`, `${1}`,
//!   `$name` expand as Go's `Regexp.Expand` does (the `regex` crate uses the same rules).
//!
//! [`default_rules`] are the rules used when the configuration gives none; they are ordinary rules
//! so `/api/v1/config` can show what runs.

use std::sync::LazyLock;

use md5::{Digest, Md5};
use regex::Regex;

use super::meta;
use crate::config::model::{RelabelAction, RelabelRule};
use crate::target::LabelMap;

/// Compiles `pattern` anchored at both ends, as Prometheus does for every relabel regex.
pub fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?s:{pattern})$"))
}

/// The regexes every default rule uses, compiled once: each compile builds automata (about a
/// third of a millisecond), and the default rules and every rule's defaults used to compile
/// them twenty times at each start and reload. A clone shares the compiled regex.
static ANY: LazyLock<Regex> = LazyLock::new(|| anchored("(.*)").expect("static regex"));
static NON_EMPTY: LazyLock<Regex> = LazyLock::new(|| anchored("(.+)").expect("static regex"));

/// A rule with Prometheus' defaults: separator `;`, regex `(.*)`, replacement `$1`, action
/// `replace`, no source or target label.
pub fn rule_with_defaults() -> RelabelRule {
    RelabelRule {
        source_labels: Vec::new(),
        separator: ";".into(),
        regex: ANY.clone(),
        modulus: 0,
        target_label: String::new(),
        replacement: "$1".into(),
        action: RelabelAction::Replace,
    }
}

/// True for a valid (legacy Prometheus) label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Applies `rules` in order; `None` when a rule dropped the target.
pub fn relabel(rules: &[RelabelRule], mut labels: LabelMap) -> Option<LabelMap> {
    labels.retain(|_, v| !v.is_empty());
    for rule in rules {
        if !apply(rule, &mut labels) {
            return None;
        }
    }
    Some(labels)
}

/// Sets a label the way Prometheus' `labels.Builder.Set` does: an empty value deletes it.
fn set(labels: &mut LabelMap, name: String, value: String) {
    if value.is_empty() {
        labels.remove(&name);
    } else {
        labels.insert(name, value);
    }
}

/// Applies one rule; false when the target is dropped.
fn apply(rule: &RelabelRule, labels: &mut LabelMap) -> bool {
    let value = || -> String {
        let mut out = String::new();
        for (i, name) in rule.source_labels.iter().enumerate() {
            if i > 0 {
                out.push_str(&rule.separator);
            }
            out.push_str(labels.get(name).map_or("", String::as_str));
        }
        out
    };
    let target_value = |labels: &LabelMap| -> String {
        labels.get(&rule.target_label).cloned().unwrap_or_default()
    };
    match rule.action {
        RelabelAction::Keep => rule.regex.is_match(&value()),
        RelabelAction::Drop => !rule.regex.is_match(&value()),
        RelabelAction::KeepEqual => target_value(labels) == value(),
        RelabelAction::DropEqual => target_value(labels) != value(),
        RelabelAction::Replace => {
            let val = value();
            // No match: no replacement takes place.
            let Some(caps) = rule.regex.captures(&val) else {
                return true;
            };
            let mut target = String::new();
            caps.expand(&rule.target_label, &mut target);
            if !is_valid_label_name(&target) {
                return true;
            }
            let mut res = String::new();
            caps.expand(&rule.replacement, &mut res);
            set(labels, target, res);
            true
        }
        RelabelAction::Lowercase => {
            let v = value().to_lowercase();
            set(labels, rule.target_label.clone(), v);
            true
        }
        RelabelAction::Uppercase => {
            let v = value().to_uppercase();
            set(labels, rule.target_label.clone(), v);
            true
        }
        RelabelAction::HashMod => {
            let digest = Md5::digest(value().as_bytes());
            // Prometheus uses the last 8 bytes of the digest, big-endian.
            let mut last = [0u8; 8];
            last.copy_from_slice(&digest[8..16]);
            // The configuration refuses modulus 0; never divide by zero regardless.
            if let Some(m) = u64::from_be_bytes(last).checked_rem(rule.modulus) {
                set(labels, rule.target_label.clone(), m.to_string());
            }
            true
        }
        RelabelAction::LabelMap => {
            // Iterate over a snapshot: labels added here are not matched again.
            let matched: Vec<(String, String)> = labels
                .iter()
                .filter_map(|(name, v)| {
                    let caps = rule.regex.captures(name)?;
                    let mut res = String::new();
                    caps.expand(&rule.replacement, &mut res);
                    Some((res, v.clone()))
                })
                .collect();
            for (name, v) in matched {
                if !name.is_empty() {
                    set(labels, name, v);
                }
            }
            true
        }
        RelabelAction::LabelDrop => {
            labels.retain(|name, _| !rule.regex.is_match(name));
            true
        }
        RelabelAction::LabelKeep => {
            labels.retain(|name, _| rule.regex.is_match(name));
            true
        }
    }
}

/// A `replace` rule copying a non-empty `from` into `to` (an absent `from` changes nothing).
fn copy(from: &str, to: &str) -> RelabelRule {
    RelabelRule {
        source_labels: vec![from.into()],
        regex: NON_EMPTY.clone(),
        target_label: to.into(),
        ..rule_with_defaults()
    }
}

/// The rules used when the configuration has no `[[relabel]]` (SPEC §4.3): `namespace`, `pod`,
/// `container` from the discovery labels (`__pod_*__` win over `__meta_kubernetes_*`, so static
/// targets get them too), `job = "{namespace}/{container}"` as the reference's users expect, and
/// `app` from the usual pod labels: `app.kubernetes.io/name`, else `app`, else `k8s-app`, else
/// `name` (later rules override earlier ones, so the list runs from the weakest).
pub fn default_rules() -> Vec<RelabelRule> {
    let label = |k: &str| {
        format!(
            "__meta_kubernetes_pod_label_{}",
            meta::sanitize_label_name(k)
        )
    };
    vec![
        copy(meta::NAMESPACE, "namespace"),
        copy("__pod_namespace__", "namespace"),
        copy(meta::POD_NAME, "pod"),
        copy("__pod_name__", "pod"),
        copy(meta::CONTAINER_NAME, "container"),
        copy("__pod_container_name__", "container"),
        RelabelRule {
            source_labels: vec!["namespace".into(), "container".into()],
            separator: "/".into(),
            regex: anchored("(.+/.+)").expect("static regex"),
            target_label: "job".into(),
            ..rule_with_defaults()
        },
        copy(&label("name"), "app"),
        copy(&label("k8s-app"), "app"),
        copy(&label("app"), "app"),
        copy(&label("app.kubernetes.io/name"), "app"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A rule from the fields a test cares about; the others keep Prometheus' defaults.
    fn r(
        action: RelabelAction,
        sources: &[&str],
        regex: &str,
        target: &str,
        repl: &str,
    ) -> RelabelRule {
        RelabelRule {
            source_labels: sources.iter().map(|s| s.to_string()).collect(),
            regex: anchored(regex).unwrap(),
            target_label: target.into(),
            replacement: repl.into(),
            action,
            ..rule_with_defaults()
        }
    }

    struct Case {
        name: &'static str,
        rules: Vec<RelabelRule>,
        input: &'static [(&'static str, &'static str)],
        want: Option<&'static [(&'static str, &'static str)]>,
    }

    use RelabelAction::{
        DropEqual, HashMod, Keep, KeepEqual, LabelDrop, LabelKeep, Lowercase, Replace, Uppercase,
    };

    fn cases() -> Vec<Case> {
        let abc: &'static [(&str, &str)] = &[("a", "foo"), ("b", "bar"), ("c", "baz")];
        vec![
            Case {
                name: "replace with capture group",
                rules: vec![r(Replace, &["a"], "f(.*)", "d", "ch${1}-ch${1}")],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "choo-choo")]),
            },
            Case {
                name: "replace joins sources with the separator",
                rules: vec![r(Replace, &["a", "b"], "f(.*);(.*)r", "a", "b${1}${2}m")],
                input: abc,
                want: Some(&[("a", "boobam"), ("b", "bar"), ("c", "baz")]),
            },
            Case {
                name: "replace with a custom separator",
                rules: vec![RelabelRule {
                    separator: "/".into(),
                    ..r(Replace, &["a", "b"], "(.*)", "d", "$1")
                }],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "foo/bar")]),
            },
            Case {
                name: "replace without a match keeps the label set",
                rules: vec![r(Replace, &["a"], "x(.*)", "d", "$1")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "regex is anchored: foo does not match foobar",
                rules: vec![r(Replace, &["a"], "foo", "d", "matched")],
                input: &[("a", "foobar")],
                want: Some(&[("a", "foobar")]),
            },
            Case {
                name: "replace to an empty value deletes the target label",
                rules: vec![r(Replace, &["a"], "foo", "b", "")],
                input: abc,
                want: Some(&[("a", "foo"), ("c", "baz")]),
            },
            Case {
                name: "replace with an invalid expanded target changes nothing",
                rules: vec![r(Replace, &["a"], "(.*)", "${1}-bad", "x")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "replace with an empty expanded target changes nothing",
                rules: vec![r(Replace, &["a"], "(x?)foo", "$1", "x")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "replace expands the target label and named groups",
                rules: vec![r(Replace, &["a"], "(?P<n>f)(.*)", "l_${n}", "$2")],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("l_f", "oo")]),
            },
            Case {
                name: "replace from a missing source matches the empty string",
                rules: vec![r(Replace, &["missing"], "", "d", "empty")],
                input: &[("a", "foo")],
                want: Some(&[("a", "foo"), ("d", "empty")]),
            },
            Case {
                name: "$1x names group 1x (Go's rule), which is empty",
                rules: vec![r(Replace, &["a"], "(.*)", "d", "$1x")],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz")]),
            },
            Case {
                name: "keep with a match keeps",
                rules: vec![r(Keep, &["a"], "f.*", "", "")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "keep without a match drops",
                rules: vec![r(Keep, &["a"], "f", "", "")],
                input: abc,
                want: None,
            },
            Case {
                name: "keep on a missing label matches the empty string",
                rules: vec![r(Keep, &["missing"], "", "", "")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "drop with a match drops",
                rules: vec![r(RelabelAction::Drop, &["c"], "baz", "", "")],
                input: abc,
                want: None,
            },
            Case {
                name: "drop without a match keeps",
                rules: vec![r(RelabelAction::Drop, &["c"], "ba", "", "")],
                input: abc,
                want: Some(abc),
            },
            Case {
                name: "drop stops the rule list",
                rules: vec![
                    r(RelabelAction::Drop, &["a"], "foo", "", ""),
                    r(Replace, &["a"], "(.*)", "z", "$1"),
                ],
                input: abc,
                want: None,
            },
            Case {
                name: "keepequal keeps when the target label equals the source",
                rules: vec![r(KeepEqual, &["a"], "(.*)", "d", "")],
                input: &[("a", "x"), ("d", "x")],
                want: Some(&[("a", "x"), ("d", "x")]),
            },
            Case {
                name: "keepequal drops when they differ",
                rules: vec![r(KeepEqual, &["a"], "(.*)", "d", "")],
                input: &[("a", "x"), ("d", "y")],
                want: None,
            },
            Case {
                name: "dropequal drops when equal",
                rules: vec![r(DropEqual, &["a"], "(.*)", "d", "")],
                input: &[("a", "x"), ("d", "x")],
                want: None,
            },
            Case {
                name: "dropequal keeps when they differ (missing target is empty)",
                rules: vec![r(DropEqual, &["a"], "(.*)", "d", "")],
                input: &[("a", "x")],
                want: Some(&[("a", "x")]),
            },
            Case {
                name: "hashmod: md5, last 8 bytes big-endian, modulo",
                rules: vec![RelabelRule {
                    modulus: 1000,
                    ..r(HashMod, &["c"], "(.*)", "d", "$1")
                }],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("d", "976")]),
            },
            Case {
                name: "hashmod of joined sources",
                rules: vec![RelabelRule {
                    modulus: 1000,
                    ..r(HashMod, &["x", "y"], "(.*)", "h", "$1")
                }],
                input: &[("x", "a"), ("y", "b")],
                want: Some(&[("h", "74"), ("x", "a"), ("y", "b")]),
            },
            Case {
                name: "labelmap copies matching names",
                rules: vec![r(
                    RelabelAction::LabelMap,
                    &[],
                    "__meta_kubernetes_pod_label_(.+)",
                    "",
                    "$1",
                )],
                input: &[
                    ("__meta_kubernetes_pod_label_app", "web"),
                    ("__meta_kubernetes_pod_label_tier", "front"),
                    ("__meta_kubernetes_pod_name", "p"),
                ],
                want: Some(&[
                    ("__meta_kubernetes_pod_label_app", "web"),
                    ("__meta_kubernetes_pod_label_tier", "front"),
                    ("__meta_kubernetes_pod_name", "p"),
                    ("app", "web"),
                    ("tier", "front"),
                ]),
            },
            Case {
                name: "labelmap with a prefixed replacement",
                rules: vec![r(RelabelAction::LabelMap, &[], "(b.*)", "", "x_$1")],
                input: abc,
                want: Some(&[("a", "foo"), ("b", "bar"), ("c", "baz"), ("x_b", "bar")]),
            },
            Case {
                name: "labeldrop removes matching names",
                rules: vec![r(LabelDrop, &[], "a|b", "", "")],
                input: abc,
                want: Some(&[("c", "baz")]),
            },
            Case {
                name: "labeldrop is anchored",
                rules: vec![r(LabelDrop, &[], "a", "", "")],
                input: &[("a", "1"), ("aa", "2")],
                want: Some(&[("aa", "2")]),
            },
            Case {
                name: "labelkeep keeps only matching names",
                rules: vec![r(LabelKeep, &[], "a|c", "", "")],
                input: abc,
                want: Some(&[("a", "foo"), ("c", "baz")]),
            },
            Case {
                name: "lowercase",
                rules: vec![r(Lowercase, &["a", "b"], "(.*)", "d", "")],
                input: &[("a", "FoO"), ("b", "BaR")],
                want: Some(&[("a", "FoO"), ("b", "BaR"), ("d", "foo;bar")]),
            },
            Case {
                name: "uppercase",
                rules: vec![r(Uppercase, &["a"], "(.*)", "a", "")],
                input: &[("a", "FoO")],
                want: Some(&[("a", "FOO")]),
            },
            Case {
                name: "lowercase of an empty value deletes the target",
                rules: vec![r(Lowercase, &["missing"], "(.*)", "a", "")],
                input: &[("a", "x"), ("b", "y")],
                want: Some(&[("b", "y")]),
            },
            Case {
                name: "empty-valued input labels do not exist",
                rules: vec![r(RelabelAction::LabelMap, &[], "(.*)", "", "copy_$1")],
                input: &[("a", ""), ("b", "1")],
                want: Some(&[("b", "1"), ("copy_b", "1")]),
            },
            Case {
                name: "rules apply in order",
                rules: vec![
                    r(Replace, &["a"], "(.*)", "d", "$1-1"),
                    r(Replace, &["d"], "(.*)", "e", "$1-2"),
                ],
                input: &[("a", "x")],
                want: Some(&[("a", "x"), ("d", "x-1"), ("e", "x-1-2")]),
            },
        ]
    }

    #[test]
    fn every_action_follows_prometheus() {
        for c in cases() {
            let got = relabel(&c.rules, labels(c.input));
            assert_eq!(got, c.want.map(labels), "{}", c.name);
        }
    }

    #[test]
    fn label_name_validity() {
        for (name, ok) in [
            ("a", true),
            ("_a1", true),
            ("__tenant_id__", true),
            ("1a", false),
            ("a-b", false),
            ("a.b", false),
            ("", false),
            ("é", false),
        ] {
            assert_eq!(is_valid_label_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn default_rules_map_pod_labels() {
        let input = labels(&[
            ("__meta_kubernetes_namespace", "shop"),
            ("__meta_kubernetes_pod_name", "web-1"),
            ("__meta_kubernetes_pod_container_name", "nginx"),
            ("__meta_kubernetes_pod_label_app", "legacy"),
            ("__meta_kubernetes_pod_label_app_kubernetes_io_name", "web"),
            ("__meta_kubernetes_pod_label_k8s_app", "k"),
        ]);
        let got = relabel(&default_rules(), input).unwrap();
        assert_eq!(got["namespace"], "shop");
        assert_eq!(got["pod"], "web-1");
        assert_eq!(got["container"], "nginx");
        assert_eq!(got["job"], "shop/nginx");
        assert_eq!(got["app"], "web");
    }

    #[test]
    fn default_rules_fall_back_and_prefer_explicit_pod_labels() {
        let input = labels(&[
            ("__meta_kubernetes_namespace", "meta-ns"),
            ("__pod_namespace__", "ns"),
            ("__pod_name__", "p"),
            ("__pod_container_name__", "c"),
            ("__meta_kubernetes_pod_label_k8s_app", "dns"),
        ]);
        let got = relabel(&default_rules(), input).unwrap();
        assert_eq!(got["namespace"], "ns");
        assert_eq!(got["pod"], "p");
        assert_eq!(got["container"], "c");
        assert_eq!(got["job"], "ns/c");
        assert_eq!(got["app"], "dns");

        // Nothing to map from: no job, no app, nothing invented.
        let got = relabel(&default_rules(), labels(&[("x", "1")])).unwrap();
        assert_eq!(got, labels(&[("x", "1")]));
    }
}
