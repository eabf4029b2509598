//! What a reload changes (SPEC §8.1): the pure comparison of the running configuration with a
//! newly validated one, so that [`crate::app`] applies only the difference.
//!
//! | changed section                    | what happens                                               |
//! |------------------------------------|------------------------------------------------------------|
//! | `[kubernetes]`                     | new client; watches restart; every tailer restarts from its acknowledged position |
//! | `[discovery]`                      | watches restart; the registry diffs the new set            |
//! | `[[relabel]]`, `[[targets]]`       | targets are rebuilt without restarting the watches; label-only changes update tailers in place |
//! | `[tail]`                           | applies to tailers started from then on; open streams are kept |
//! | `[loki.<name>]` added              | starts, receives lines read from then on                   |
//! | `[loki.<name>]` removed            | stops receiving, drains its queue within `[shutdown] timeout` |
//! | `[loki.<name>]` changed            | a new receiver takes new lines; the old one drains what it had queued |
//! | `[stdout]`                         | like a receiver                                            |
//! | `[shutdown]`                       | applies at the next shutdown                               |
//! | `[server] log_level`               | applies at once                                            |
//! | `[server]` listen/log_format, `[positions]`, `[clustering]` | need a restart: reported, the rest of the reload applies |

use actix::Message;

use crate::config::{Config, ConfigErrors, RelabelRule};

/// How one receiver differs between two configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverChange {
    Added(String),
    Removed(String),
    Changed(String),
}

/// The difference between the running and the new configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub kubernetes: bool,
    pub discovery: bool,
    /// `[[relabel]]` or `[[targets]]` changed.
    pub targets: bool,
    pub tail: bool,
    pub shutdown: bool,
    /// The new `[server] log_level`, when it changed.
    pub log_level: Option<String>,
    /// Receivers by name; `stdout` is named `stdout`.
    pub receivers: Vec<ReceiverChange>,
    /// Sections that changed but apply only after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl ReloadPlan {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }
}

/// Compares the running configuration with a new one.
pub fn plan(old: &Config, new: &Config) -> ReloadPlan {
    let mut plan = ReloadPlan {
        kubernetes: old.kubernetes != new.kubernetes,
        discovery: old.discovery != new.discovery,
        targets: !same_rules(&old.relabel, &new.relabel) || old.targets != new.targets,
        tail: old.tail != new.tail,
        shutdown: old.shutdown != new.shutdown,
        ..ReloadPlan::default()
    };
    for (name, cfg) in &new.loki {
        match old.loki.get(name) {
            None => plan.receivers.push(ReceiverChange::Added(name.clone())),
            Some(old_cfg) if old_cfg != cfg => {
                plan.receivers.push(ReceiverChange::Changed(name.clone()))
            }
            Some(_) => {}
        }
    }
    for name in old.loki.keys().filter(|n| !new.loki.contains_key(*n)) {
        plan.receivers.push(ReceiverChange::Removed(name.clone()));
    }
    match (&old.stdout, &new.stdout) {
        (None, Some(_)) => plan.receivers.push(ReceiverChange::Added(STDOUT.into())),
        (Some(_), None) => plan.receivers.push(ReceiverChange::Removed(STDOUT.into())),
        (Some(a), Some(b)) if a != b => plan.receivers.push(ReceiverChange::Changed(STDOUT.into())),
        _ => {}
    }
    if old.server.log_level != new.server.log_level {
        plan.log_level = Some(new.server.log_level.clone());
    }
    if old.server.listen != new.server.listen || old.server.log_format != new.server.log_format {
        plan.needs_restart.push("server");
    }
    if old.positions != new.positions {
        plan.needs_restart.push("positions");
    }
    if old.clustering != new.clustering {
        plan.needs_restart.push("clustering");
    }
    plan
}

/// The name the `[stdout]` receiver goes by.
pub const STDOUT: &str = "stdout";

/// Relabel rules are equal when every field is, regexes compared by their source.
fn same_rules(a: &[RelabelRule], b: &[RelabelRule]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.source_labels == y.source_labels
                && x.separator == y.separator
                && x.regex.as_str() == y.regex.as_str()
                && x.modulus == y.modulus
                && x.target_label == y.target_label
                && x.replacement == y.replacement
                && x.action == y.action
        })
}

/// Reload the configuration file (SIGHUP, `POST /-/reload`).
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, ReloadError>")]
pub struct Reload;

/// What a reload changed, one line per change, for the log and the HTTP answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport(pub Vec<String>);

/// Why a reload was refused; the configuration in force stays untouched.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the relay was started without a configuration file; nothing to reload")]
    NoFile,
    #[error("invalid configuration, nothing changed:\n{0}")]
    Invalid(ConfigErrors),
    #[error("cannot apply the new configuration, nothing changed: {0}")]
    Apply(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        crate::config::parse(text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
[kubernetes]
api_server = "http://127.0.0.1:6443"

[loki.a]
url = "http://127.0.0.1:3100/loki/api/v1/push"

[loki.b]
url = "http://127.0.0.1:3101/loki/api/v1/push"
"#;

    #[test]
    fn the_same_file_changes_nothing() {
        assert!(plan(&parse(BASE), &parse(BASE)).is_empty());
    }

    #[test]
    fn receivers_added_removed_and_changed() {
        let new = BASE.replace("[loki.a]", "[loki.c]").replace(
            "url = \"http://127.0.0.1:3101/loki/api/v1/push\"",
            "url = \"http://127.0.0.1:3101/loki/api/v1/push\"\nbatch_size = \"2MiB\"",
        ) + "\n[stdout]\n";
        let p = plan(&parse(BASE), &parse(&new));
        assert_eq!(
            p.receivers,
            vec![
                ReceiverChange::Changed("b".into()),
                ReceiverChange::Added("c".into()),
                ReceiverChange::Removed("a".into()),
                ReceiverChange::Added("stdout".into()),
            ]
        );
        assert!(!p.kubernetes && !p.discovery && !p.targets && !p.tail);
    }

    #[test]
    fn sections_are_told_apart() {
        let relabel = format!(
            "{BASE}\n[[relabel]]\nsource_labels = [\"__meta_kubernetes_pod_label_team\"]\ntarget_label = \"team\"\n"
        );
        let p = plan(&parse(BASE), &parse(&relabel));
        assert!(p.targets && !p.kubernetes && !p.discovery);

        let regex = relabel.replace(
            "target_label = \"team\"",
            "target_label = \"team\"\nregex = \"(a.*)\"",
        );
        assert!(
            plan(&parse(&relabel), &parse(&regex)).targets,
            "a regex change is a change"
        );

        let kube = BASE.replace("127.0.0.1:6443", "127.0.0.1:6444");
        assert!(plan(&parse(BASE), &parse(&kube)).kubernetes);

        let disc = format!("{BASE}\n[discovery]\nnamespaces = [\"shop\"]\n");
        assert!(plan(&parse(BASE), &parse(&disc)).discovery);

        let tail = format!("{BASE}\n[tail]\nmax_backoff = \"2m\"\n");
        assert!(plan(&parse(BASE), &parse(&tail)).tail);

        let server = format!("{BASE}\n[server]\nlisten = \"127.0.0.1:9999\"\n");
        assert_eq!(
            plan(&parse(BASE), &parse(&server)).needs_restart,
            vec!["server"]
        );

        let level = format!("{BASE}\n[server]\nlog_level = \"debug\"\n");
        let p = plan(&parse(BASE), &parse(&level));
        assert_eq!(p.log_level.as_deref(), Some("debug"));
        assert!(p.needs_restart.is_empty(), "the level applies at once");
    }
}
