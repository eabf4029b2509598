//! What gets tailed and with which labels: `[discovery]` (SPEC §4.2), the `[[relabel]]` rules
//! with Prometheus' defaults and validation rules, and the static `[[targets]]` (SPEC §4.3).
//!
//! A relabel rule with any error is left out of the result (the others are still checked), as a
//! half-valid rule cannot run.

use std::sync::LazyLock;

use regex::Regex;

use super::{Checker, LABEL_NAME_RULE, is_dns_label, is_label_name};
use crate::config::error::{join_index, join_key};
use crate::config::model::*;
use crate::config::raw::*;

/// The `[discovery]` table (SPEC §4.2); namespaces are deduplicated in order.
pub(super) fn discovery(c: &mut Checker, raw: Option<&RawDiscovery>) -> DiscoveryConfig {
    let default = RawDiscovery::default();
    let raw = raw.unwrap_or(&default);
    let mut namespaces: Vec<String> = Vec::new();
    for (index, namespace) in raw.namespaces.iter().flatten().enumerate() {
        if !is_dns_label(namespace) {
            c.error(
                join_index("discovery.namespaces", index),
                format!("{namespace:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"),
            );
        } else if !namespaces.contains(namespace) {
            namespaces.push(namespace.clone());
        }
    }
    let attach = raw.attach_metadata.as_ref();
    DiscoveryConfig {
        namespaces,
        label_selector: c.non_empty("discovery.label_selector", raw.label_selector.as_ref()),
        field_selector: c.non_empty("discovery.field_selector", raw.field_selector.as_ref()),
        attach_metadata: AttachMetadata {
            node: attach.and_then(|a| a.node).unwrap_or(false),
            namespace: attach.and_then(|a| a.namespace).unwrap_or(false),
        },
        enabled: raw.enabled.unwrap_or(true),
    }
}

const RELABEL_ACTIONS: &[(&str, RelabelAction)] = &[
    ("replace", RelabelAction::Replace),
    ("keep", RelabelAction::Keep),
    ("drop", RelabelAction::Drop),
    ("keepequal", RelabelAction::KeepEqual),
    ("dropequal", RelabelAction::DropEqual),
    ("hashmod", RelabelAction::HashMod),
    ("labelmap", RelabelAction::LabelMap),
    ("labeldrop", RelabelAction::LabelDrop),
    ("labelkeep", RelabelAction::LabelKeep),
    ("lowercase", RelabelAction::Lowercase),
    ("uppercase", RelabelAction::Uppercase),
];

/// Prometheus' `relabelTarget`: a label name that may contain `$1` / `${name}` references.
static RELABEL_TARGET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$").expect("a valid constant regex")
});

/// One `[[relabel]]` rule, with Prometheus' defaults and validation rules (SPEC §4.3).
pub(super) fn relabel_rule(c: &mut Checker, path: &str, raw: &RawRelabel) -> Option<RelabelRule> {
    use RelabelAction::*;
    let errors_before = c.errors.len();
    let at = |key: &str| join_key(path, key);
    let action = match raw.action.as_deref() {
        None => Replace,
        Some(name) => match RELABEL_ACTIONS.iter().find(|(n, _)| *n == name) {
            Some((_, action)) => *action,
            None => {
                let names: Vec<&str> = RELABEL_ACTIONS.iter().map(|(n, _)| *n).collect();
                c.error(
                    at("action"),
                    format!("{name:?} is not one of {}", names.join(", ")),
                );
                return None;
            }
        },
    };
    let action_name = raw.action.as_deref().unwrap_or("replace");
    let source_labels = raw.source_labels.clone().unwrap_or_default();
    for (index, label) in source_labels.iter().enumerate() {
        if !is_label_name(label) {
            c.error(
                join_index(&at("source_labels"), index),
                format!("{label:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        }
    }
    let regex_text = raw.regex.as_deref().unwrap_or("(.*)");
    // Compiled unanchored first so the message points into what the user wrote.
    let regex =
        match Regex::new(regex_text).and_then(|_| Regex::new(&format!("^(?s:{regex_text})$"))) {
            Ok(regex) => Some(regex),
            Err(error) => {
                c.error(
                    at("regex"),
                    format!(
                        "{regex_text:?} is not a valid regular expression: {}",
                        regex_error(&error)
                    ),
                );
                None
            }
        };
    let target_label = raw.target_label.clone().unwrap_or_default();
    let replacement = raw.replacement.clone().unwrap_or_else(|| "$1".to_owned());
    let modulus = raw.modulus.unwrap_or(0);

    let needs_target = matches!(
        action,
        Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
    );
    if needs_target && target_label.is_empty() {
        c.error(
            at("target_label"),
            format!("missing (required by action {action_name:?})"),
        );
    } else if action == Replace
        && !target_label.is_empty()
        && !RELABEL_TARGET.is_match(&target_label)
    {
        c.error(
            at("target_label"),
            format!("{target_label:?} is not a valid label name or $1-style template ({LABEL_NAME_RULE})"),
        );
    } else if needs_target && action != Replace && !is_label_name(&target_label) {
        c.error(
            at("target_label"),
            format!("{target_label:?} is not a valid label name ({LABEL_NAME_RULE})"),
        );
    }
    if action == HashMod && modulus == 0 {
        c.error(at("modulus"), "must be > 0 for action \"hashmod\"");
    }
    if action == LabelMap && !RELABEL_TARGET.is_match(&replacement) {
        c.error(
            at("replacement"),
            format!(
                "{replacement:?} is not a valid label name or $1-style template ({LABEL_NAME_RULE})"
            ),
        );
    }
    // Keys an action ignores are errors, as in Prometheus: they show a misunderstanding.
    let mut unused: Vec<&str> = Vec::new();
    let mut unused_if = |key: &'static str, set: bool| {
        if set {
            unused.push(key);
        }
    };
    match action {
        LabelDrop | LabelKeep => {
            unused_if("source_labels", raw.source_labels.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        LabelMap => {
            unused_if("source_labels", raw.source_labels.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
        }
        KeepEqual | DropEqual => {
            unused_if("regex", raw.regex.is_some());
            unused_if("modulus", raw.modulus.is_some());
            unused_if("separator", raw.separator.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Lowercase | Uppercase => {
            unused_if("modulus", raw.modulus.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Keep | Drop => {
            unused_if("modulus", raw.modulus.is_some());
            unused_if("target_label", raw.target_label.is_some());
            unused_if("replacement", raw.replacement.is_some());
        }
        Replace => unused_if("modulus", raw.modulus.is_some()),
        HashMod => unused_if("replacement", raw.replacement.is_some()),
    }
    for key in unused {
        c.error(
            at(key),
            format!("is not used by action {action_name:?} (remove it)"),
        );
    }
    if c.errors.len() > errors_before {
        return None;
    }
    Some(RelabelRule {
        source_labels,
        separator: raw.separator.clone().unwrap_or_else(|| ";".to_owned()),
        regex: regex?,
        modulus,
        target_label,
        replacement,
        action,
    })
}

/// The one-line cause of a regex error (its full text is a multi-line drawing).
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| text.lines().last().unwrap_or_default())
        .trim()
        .to_owned()
}

/// One `[[targets]]` entry (SPEC §4.3): its labels, which must be present and valid names.
pub(super) fn static_target(c: &mut Checker, path: &str, raw: &RawTarget) -> StaticTarget {
    let labels = raw.labels.clone().unwrap_or_default();
    if labels.is_empty() {
        c.error(
            join_key(path, "labels"),
            "missing (required: the target's labels, e.g. labels = { __pod_namespace__ = \"…\", __pod_name__ = \"…\", __pod_container_name__ = \"…\", __pod_uid__ = \"…\" })",
        );
    }
    for name in labels.keys() {
        if !is_label_name(name) {
            c.error(
                join_key(&join_key(path, "labels"), name),
                format!("{name:?} is not a valid label name ({LABEL_NAME_RULE})"),
            );
        }
    }
    StaticTarget { labels }
}
