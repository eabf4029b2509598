//! Process logs (SPEC §8.4): `tracing` events as logfmt (default) or JSON lines on stderr.
//!
//! tracing-subscriber has no logfmt output, so a small [`FormatEvent`] writes
//! `ts=… level=… msg="…" key=value …` with logfmt quoting; JSON uses the subscriber's own.
//!
//! Repeated errors go through [`RateLimited`] ([`ERRORS`] is the shared one): a thousand
//! streams failing at once write one line per kind of failure and period, carrying the count of
//! the lines held back, instead of a thousand lines.

use std::fmt::{self, Write as _};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Changes the level filter of the installed subscriber (reload of `[server] log_level`).
type SetLevel = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the global subscriber; `level` is a `tracing` filter (`info`, `debug,kube=warn`).
/// `RUST_LOG`, when set, wins. Calling it twice is harmless (the first one stays).
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The reload handle's type depends on the formatter: keep it behind a closure.
    match format {
        LogFormat::Logfmt => {
            let builder = builder.event_format(Logfmt).with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_LEVEL.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_LEVEL.set(Box::new(move |f| {
                    handle.reload(f).map_err(|e| e.to_string())
                }));
            }
        }
    }
}

/// Applies a new `[server] log_level` to the running subscriber (reload). `RUST_LOG`, when set,
/// still wins, as at start.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match SET_LEVEL.get() {
        Some(set) => set(filter),
        None => Ok(()),
    }
}

/// The limiter every repeated error of the relay shares: one line per kind every 10 seconds.
pub static ERRORS: RateLimited = RateLimited::new(Duration::from_secs(10));

/// Lets one log line per key through per period and counts the ones it holds back.
///
/// Keys name a kind of failure (`stream_failed`, or a pair such as `("pods", "watch")`), never
/// a target: the point is to bound the log whatever the number of targets. The one limiter of
/// the crate: [`ERRORS`] for the shared case, an instance of its own where a component wants its
/// own period or its own clock ([`RateLimited::check_at`]).
pub struct RateLimited<K: 'static = &'static str> {
    period: Duration,
    keys: Mutex<Vec<KeyState<K>>>,
}

struct KeyState<K> {
    key: K,
    last: Instant,
    suppressed: u64,
}

impl<K: PartialEq> RateLimited<K> {
    /// A limiter letting one line per key through every `period`.
    pub const fn new(period: Duration) -> RateLimited<K> {
        RateLimited {
            period,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// `Some(lines held back since the last one let through)` when a line of kind `key` may be
    /// logged now; `None` (and counted) when it must be held back.
    pub fn check(&self, key: K) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimited::check`] at `now` (tests, and components on tokio's paused clock pass
    /// `tokio::time::Instant::now().into_std()`).
    pub fn check_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // A handful of keys: a linear scan beats hashing.
        match keys.iter_mut().find(|k| k.key == key) {
            None => {
                keys.push(KeyState {
                    key,
                    last: now,
                    suppressed: 0,
                });
                Some(0)
            }
            Some(k) if now.saturating_duration_since(k.last) < self.period => {
                k.suppressed += 1;
                None
            }
            Some(k) => {
                k.last = now;
                Some(std::mem::take(&mut k.suppressed))
            }
        }
    }
}

/// The logfmt event formatter.
pub struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        write!(
            writer,
            "ts={} level={} component={}",
            jiff::Timestamp::now(),
            meta.level().as_str().to_ascii_lowercase(),
            meta.target()
        )?;
        if let Some(msg) = fields.message {
            write!(writer, " msg={}", quote(&msg))?;
        }
        writer.write_str(&fields.rest)?;
        writeln!(writer)
    }
}

#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            let _ = write!(self.rest, " {}={}", field.name(), quote(value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// A logfmt value, quoted when needed ([`push_logfmt_value`]).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    push_logfmt_value(&mut out, value);
    out
}

/// Appends `value` as a logfmt value: bare when it is printable ASCII without `"`, `=` or `\`,
/// quoted ([`push_logfmt_quoted`]) otherwise — empty, spaces, quotes, non-ASCII, control
/// characters. The one logfmt writer of the crate: process logs and the `[stdout]` receiver.
pub fn push_logfmt_value(out: &mut String, value: &str) {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(value);
    } else {
        push_logfmt_quoted(out, value);
    }
}

/// Appends `value` in double quotes, escaping `"` and `\`, `\n`, `\r` and `\t` as such and
/// any other control character as `\u{…}`, so that one value never spans two lines.
pub fn push_logfmt_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An error and its causes, outermost first, each said once: `a: b: c`. Many errors (ours and
/// our dependencies') already end their message with their source's, which printing the whole
/// chain would say a second time (`kubernetes client: X: X`), and others say little at the top
/// (hyper-util's `client error (Connect)`): a cause whose text is already said is skipped, the
/// others are appended.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_lets_one_line_per_key_and_period_through() {
        let limiter = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("stream_failed", t0), Some(0));
        for i in 1..=999 {
            assert_eq!(
                limiter.check_at("stream_failed", t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another kind is limited on its own.
        assert_eq!(limiter.check_at("pod_fetch_failed", t0), Some(0));
        assert_eq!(limiter.check_at("pod_fetch_failed", t0), None);
        // The next period's first line carries the count of the lines held back.
        assert_eq!(
            limiter.check_at("stream_failed", t0 + Duration::from_secs(10)),
            Some(999)
        );
        assert_eq!(
            limiter.check_at("stream_failed", t0 + Duration::from_secs(11)),
            None
        );
        assert_eq!(
            limiter.check_at("stream_failed", t0 + Duration::from_secs(25)),
            Some(1)
        );
    }

    #[test]
    fn logfmt_values_are_quoted_and_escaped_when_needed() {
        for (value, logfmt) in [
            ("plain", "plain"),
            ("default/web-1/nginx", "default/web-1/nginx"),
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("", r#""""#),
            ("two words", r#""two words""#),
            ("a=b", r#""a=b""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"C:\dir", r#""C:\\dir""#),
            ("line\nnext", r#""line\nnext""#),
            ("cr\rlf", r#""cr\rlf""#),
            ("tab\there", r#""tab\there""#),
            ("bell\u{7}", r#""bell\u{0007}""#),
            ("café", r#""café""#),
        ] {
            assert_eq!(quote(value), logfmt, "{value:?}");
        }
    }
}
