//! Phase two of the configuration (SPEC §4; STYLE.md "configuration in two phases"): the raw
//! sections become the typed [`Config`] the program runs on.
//!
//! Every check records its error with the TOML path and goes on with the default, so one run
//! reports every problem. Defaults live next to their checks, and match SPEC §4 (the
//! `model` types carry the same defaults in their `Default` impls). Messages never repeat a
//! secret value.
//!
//! One file per concern, each citing its part of SPEC §4: this file holds the entry
//! [`validate`], the rules that span sections, the error collector and the checks every section
//! uses (durations, sizes, words, paths, URLs, label and namespace names); `client.rs` the auth,
//! TLS, proxy and header options shared by `[kubernetes]` and `[loki.<name>]`; `kubernetes.rs`,
//! `targets.rs` (`[discovery]`, `[[relabel]]`, `[[targets]]`), `tail.rs`, `positions.rs`,
//! `receivers.rs` (`[loki.<name>]`, `[stdout]`), `server.rs` (`[server]`, `[shutdown]`) and
//! `clustering.rs` one section each.

mod client;
mod clustering;
mod kubernetes;
mod positions;
mod receivers;
mod server;
mod tail;
mod targets;

use std::path::PathBuf;
use std::time::Duration;

use self::clustering::clustering;
use self::kubernetes::kubernetes;
use self::positions::positions;
use self::receivers::{receiver, stdout};
use self::server::{server, shutdown};
use self::tail::tail;
use self::targets::{discovery, relabel_rule, static_target};
use super::error::{ConfigError, join_index};
use super::model::*;
use super::raw::*;
use super::redact::redact_url;
use super::units::{duration_overflows, format_size, parse_duration, parse_size};

/// Turns the raw sections into a [`Config`], or returns every error found.
pub fn validate(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker::default();
    let kubernetes = kubernetes(&mut c, raw.kubernetes.get());
    let discovery = discovery(&mut c, raw.discovery.get());
    let relabel = raw
        .relabel
        .iter()
        .filter_map(|(index, rule)| relabel_rule(&mut c, &join_index("relabel", *index), rule))
        .collect();
    let targets = raw
        .targets
        .iter()
        .map(|(index, target)| static_target(&mut c, &join_index("targets", *index), target))
        .collect::<Vec<_>>();
    if !discovery.enabled && !raw.targets_written {
        c.error(
            "discovery.enabled",
            "discovery is disabled and there is no [[targets]] entry: nothing would be tailed",
        );
    }
    let tail = tail(&mut c, raw.tail.get());
    let positions = positions(&mut c, raw.positions.get());
    let loki = raw
        .loki
        .iter()
        .map(|(name, loki)| (name.clone(), receiver(&mut c, name, loki)))
        .collect();
    if !raw.receivers_written {
        c.error(
            "loki",
            "at least one [loki.<name>] or [stdout] receiver is required",
        );
    }
    let stdout = raw.stdout.get().map(|raw| stdout(&mut c, raw));
    let server = server(&mut c, raw.server.get());
    let shutdown = shutdown(&mut c, raw.shutdown.get());
    let clustering = clustering(&mut c, raw.clustering.get());
    // Clustering moves targets between replicas: the new owner must find the old owner's
    // positions, so they have to live in the cluster (SPEC §7).
    if clustering.enabled
        && positions.backend != PositionsBackend::Kubernetes
        && !raw.positions.is_invalid()
    {
        c.error(
            "clustering.enabled",
            r#"clustering needs positions.backend = "kubernetes" (replicas must share positions to hand targets over)"#,
        );
    }
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Config {
        kubernetes,
        discovery,
        relabel,
        targets,
        tail,
        positions,
        loki,
        stdout,
        server,
        shutdown,
        clustering,
    })
}

/// The longest value a duration key accepts, and how messages and the README write it. Far
/// beyond any sensible setting, and small enough that every deadline (`Instant + duration`),
/// doubling and timestamp subtraction computed from it stays in range.
#[derive(Clone, Copy, Debug)]
pub(super) struct MaxDuration {
    pub(super) value: Duration,
    text: &'static str,
}

impl MaxDuration {
    pub(super) fn too_large(self, written: &str) -> String {
        format!("{written:?} is too large (at most {:?})", self.text)
    }
}

/// Timeouts, waits and periods.
pub(super) const HOUR: MaxDuration = MaxDuration {
    value: Duration::from_secs(3600),
    text: "1h",
};
/// Backoffs and the stream lifetime.
pub(super) const DAY: MaxDuration = MaxDuration {
    value: Duration::from_secs(24 * 3600),
    text: "24h",
};
/// How far back `start_from` reaches and how long positions are kept.
pub(super) const MONTH: MaxDuration = MaxDuration {
    value: Duration::from_secs(30 * 24 * 3600),
    text: "30d",
};
/// The largest line and batch (Loki refuses far smaller ones by default).
pub(super) const MAX_LINE_OR_BATCH: u64 = 64 << 20;
/// The largest receiver queue.
pub(super) const MAX_BUFFER: u64 = 16 << 30;

const LOG_FORMATS: &[(&str, LogFormat)] =
    &[("logfmt", LogFormat::Logfmt), ("json", LogFormat::Json)];

/// Collects errors; every check returns a usable value (the default on error) so validation
/// goes on.
#[derive(Default)]
struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// A duration of at most `max`.
    fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
        max: MaxDuration,
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match parse_duration(text) {
            Ok(duration) if duration <= max.value => duration,
            Ok(_) => {
                self.error(path, max.too_large(text));
                default
            }
            Err(_) if duration_overflows(text) => {
                self.error(path, max.too_large(text));
                default
            }
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    /// A duration that must not be zero, of at most `max`.
    fn positive_duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
        max: MaxDuration,
    ) -> Duration {
        let duration = self.duration(path, value, default, max);
        if duration.is_zero() {
            self.error(path, "must be > 0");
            return default;
        }
        duration
    }

    /// A size of at most `max` bytes.
    fn size(&mut self, path: &str, value: Option<&SizeValue>, default: usize, max: u64) -> usize {
        let (written, bytes) = match value {
            None => return default,
            Some(SizeValue::Bytes(bytes)) => (bytes.to_string(), Ok(*bytes)),
            Some(SizeValue::Text(text)) => (format!("{text:?}"), parse_size(text)),
        };
        let too_large = || format!("{written} is too large (at most {:?})", format_size(max));
        match bytes {
            Ok(bytes) if bytes <= max => usize::try_from(bytes).unwrap_or_else(|_| {
                self.error(path, too_large());
                default
            }),
            Ok(_) => {
                self.error(path, too_large());
                default
            }
            Err(message) if message.ends_with("is too large") => {
                self.error(path, too_large());
                default
            }
            Err(message) => {
                self.error(path, message);
                default
            }
        }
    }

    /// One of a few words (`"block" | "drop"`).
    fn word<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        words: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some((_, word)) = words.iter().find(|(name, _)| *name == value) {
            return *word;
        }
        let names: Vec<String> = words.iter().map(|(name, _)| format!("{name:?}")).collect();
        self.error(
            path,
            format!("{value:?} is not one of {}", names.join(", ")),
        );
        default
    }

    /// A string that, when given, must not be empty.
    fn non_empty(&mut self, path: &str, value: Option<&String>) -> Option<String> {
        match value {
            Some(text) if text.trim().is_empty() => {
                self.error(path, "must not be empty (remove the key to leave it unset)");
                None
            }
            other => other.cloned(),
        }
    }

    fn path(&mut self, path: &str, value: Option<&String>) -> Option<PathBuf> {
        self.non_empty(path, value).map(PathBuf::from)
    }

    /// An `http://` or `https://` URL with a host.
    fn url(&mut self, path: &str, value: Option<&String>) -> Option<String> {
        let text = self.non_empty(path, value)?;
        match check_url(&text) {
            Ok(()) => Some(text),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    fn positive<T: Copy + Default + PartialOrd>(
        &mut self,
        path: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        match value {
            Some(value) if value <= T::default() => {
                self.error(path, "must be > 0");
                default
            }
            Some(value) => value,
            None => default,
        }
    }
}

fn check_url(text: &str) -> Result<(), String> {
    let not_url = || format!("{:?} is not an http:// or https:// URL", redact_url(text));
    let uri: http::Uri = text.parse().map_err(|_| not_url())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(not_url()),
    }
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const LABEL_NAME_RULE: &str = "label names match [a-zA-Z_][a-zA-Z0-9_]*";

/// A DNS-1123 label, as Kubernetes names namespaces.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
