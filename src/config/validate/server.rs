//! How the process presents itself (SPEC §4.6): `[server]` — the HTTP listen address (SPEC §8.3)
//! and the relay's own logs (SPEC §8.4) — and `[shutdown]`.

use std::net::SocketAddr;

use super::{Checker, HOUR, LOG_FORMATS};
use crate::config::model::*;
use crate::config::raw::*;

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// The `[server]` table (SPEC §4.6, §8.3, §8.4).
pub(super) fn server(c: &mut Checker, raw: Option<&RawServer>) -> ServerConfig {
    let d = ServerConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let listen = match &raw.listen {
        None => d.listen,
        Some(listen) if is_listen_address(listen) => listen.clone(),
        Some(listen) => {
            c.error(
                "server.listen",
                format!(r#"{listen:?} is not an address to listen on (examples: "0.0.0.0:12345", "127.0.0.1:9000", "[::]:12345")"#),
            );
            d.listen
        }
    };
    let log_level = match &raw.log_level {
        None => d.log_level,
        Some(level) if is_log_level(level) => level.clone(),
        Some(level) => {
            c.error(
                "server.log_level",
                format!(
                    r#"{level:?} is not a log level (one of {}, or directives such as "info,kube=debug")"#,
                    LOG_LEVELS.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
                ),
            );
            d.log_level
        }
    };
    ServerConfig {
        listen,
        log_level,
        log_format: c.word(
            "server.log_format",
            raw.log_format.as_deref(),
            LOG_FORMATS,
            d.log_format,
        ),
    }
}

/// `ip:port`, `[ipv6]:port` or `hostname:port`.
fn is_listen_address(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

/// A bare level, or a list of `tracing` directives (`info,kube=debug`). A bare word that is not
/// a level would be read by `EnvFilter` as a target name and silently log nothing useful.
fn is_log_level(text: &str) -> bool {
    let text = text.trim();
    if LOG_LEVELS
        .iter()
        .any(|level| level.eq_ignore_ascii_case(text))
    {
        return true;
    }
    (text.contains('=') || text.contains(','))
        && text.split(',').all(|directive| {
            let level = directive
                .rsplit_once('=')
                .map_or(directive, |(_, level)| level);
            LOG_LEVELS
                .iter()
                .any(|l| l.eq_ignore_ascii_case(level.trim()))
        })
        && tracing_subscriber::EnvFilter::try_new(text).is_ok()
}

/// The `[shutdown]` table (SPEC §4.6).
pub(super) fn shutdown(c: &mut Checker, raw: Option<&RawShutdown>) -> ShutdownConfig {
    ShutdownConfig {
        timeout: c.positive_duration(
            "shutdown.timeout",
            raw.and_then(|s| s.timeout.as_deref()),
            ShutdownConfig::default().timeout,
            HOUR,
        ),
    }
}
