//! The `pods/log` request semantics of the API server and kubelet (SPEC §5.1, §5.3, §8.5).
//!
//! What the relay's exactly-once cursor depends on, reproduced faithfully:
//! - `sinceTime` is parsed as RFC 3339 and **truncated to whole seconds** (the API server's
//!   query conversion keeps seconds only), then the kubelet filters line by line
//!   (`timestamp >= since`), so reordered stdout/stderr lines are filtered individually;
//! - `tailLines` picks the last N lines of the file *before* the since filter, like the kubelet;
//! - `limitBytes` cuts the response after N bytes, mid-line if need be;
//! - `timestamps=true` prefixes Go's RFC3339Nano, which trims trailing zeros of the fraction
//!   (`…:00.1234Z`, and `…:00Z` when the fraction is zero);
//! - `follow=true` sends what exists, then new lines as they are written, and ends when the
//!   instance terminated and everything was sent, or when the simulator cuts the stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use jiff::Timestamp;
use tokio::sync::watch;

use super::container::{Instance, LogLine};

/// A `pods/log` query the API server would refuse (400 BadRequest or 422 Invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogParamError {
    /// A value that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// A value that parses but is not allowed.
    #[error("{0}")]
    Invalid(String),
}

/// The parsed `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// `container`.
    pub container: Option<String>,
    /// `follow`.
    pub follow: bool,
    /// `timestamps`.
    pub timestamps: bool,
    /// `previous`.
    pub previous: bool,
    /// From `sinceTime` (truncated to seconds) or `sinceSeconds` (relative to the request).
    pub since: Option<Timestamp>,
    /// `tailLines`.
    pub tail_lines: Option<u64>,
    /// `limitBytes`.
    pub limit_bytes: Option<u64>,
}

/// Go's `strconv.ParseBool`, which the API server uses for boolean query parameters.
fn parse_bool(name: &str, value: &str) -> Result<bool, LogParamError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
        _ => Err(LogParamError::BadRequest(format!(
            "strconv.ParseBool: parsing \"{value}\": invalid syntax for query parameter {name}"
        ))),
    }
}

fn parse_int(name: &str, value: &str) -> Result<i64, LogParamError> {
    value.parse::<i64>().map_err(|_| {
        LogParamError::BadRequest(format!(
            "strconv.ParseInt: parsing \"{value}\": invalid syntax for query parameter {name}"
        ))
    })
}

/// Truncates to whole seconds, as the API server does with `sinceTime`.
pub fn truncate_to_second(ts: Timestamp) -> Timestamp {
    let secs = ts.as_second() - i64::from(ts.subsec_nanosecond() < 0);
    Timestamp::from_second(secs).unwrap_or(ts)
}

impl LogOptions {
    /// Parses the query parameters of a `pods/log` request received at `now`.
    pub fn parse(query: &HashMap<String, String>, now: Timestamp) -> Result<Self, LogParamError> {
        let get = |k: &str| query.get(k).map(String::as_str);
        let flag = |k: &str| get(k).map_or(Ok(false), |v| parse_bool(k, v));
        let mut opts = LogOptions {
            container: get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            follow: flag("follow")?,
            timestamps: flag("timestamps")?,
            previous: flag("previous")?,
            ..Default::default()
        };
        if let (Some(_), Some(_)) = (get("sinceTime"), get("sinceSeconds")) {
            return Err(LogParamError::Invalid(
                "PodLogOptions \"\" is invalid: sinceSeconds: Forbidden: at most one of sinceTime or sinceSeconds may be specified".into(),
            ));
        }
        if let Some(v) = get("sinceTime") {
            let ts: Timestamp = v.parse().map_err(|_| {
                LogParamError::BadRequest(format!(
                    "parsing time \"{v}\" as \"2006-01-02T15:04:05Z07:00\": cannot parse"
                ))
            })?;
            opts.since = Some(truncate_to_second(ts));
        }
        if let Some(v) = get("sinceSeconds") {
            let secs = parse_int("sinceSeconds", v)?;
            if secs < 1 {
                return Err(LogParamError::Invalid(
                    "PodLogOptions \"\" is invalid: sinceSeconds: Invalid value: must be greater than 0".into(),
                ));
            }
            opts.since = Some(
                now.checked_sub(jiff::SignedDuration::from_secs(secs))
                    .unwrap_or(Timestamp::MIN),
            );
        }
        if let Some(v) = get("tailLines") {
            let n = parse_int("tailLines", v)?;
            if n < 0 {
                return Err(LogParamError::Invalid(
                    "PodLogOptions \"\" is invalid: tailLines: Invalid value: must be greater than or equal to 0".into(),
                ));
            }
            opts.tail_lines = Some(n as u64);
        }
        if let Some(v) = get("limitBytes") {
            let n = parse_int("limitBytes", v)?;
            if n < 1 {
                return Err(LogParamError::Invalid(
                    "PodLogOptions \"\" is invalid: limitBytes: Invalid value: must be greater than 0".into(),
                ));
            }
            opts.limit_bytes = Some(n as u64);
        }
        Ok(opts)
    }
}

/// Formats timestamps in Go's RFC3339Nano (UTC, fraction without trailing zeros, none when
/// zero), caching the `YYYY-MM-DDTHH:MM:SS` part, which consecutive lines almost always share.
#[derive(Debug, Default)]
pub struct TimestampFormatter {
    cached: Option<(i64, [u8; 19])>,
}

impl TimestampFormatter {
    /// Appends `ts` to `buf`.
    pub fn format(&mut self, buf: &mut BytesMut, ts: Timestamp) {
        let secs = ts.as_second();
        let nanos = ts.subsec_nanosecond();
        let (secs, nanos) = if nanos < 0 {
            (secs - 1, nanos + 1_000_000_000)
        } else {
            (secs, nanos)
        };
        let prefix = match self.cached {
            Some((cached, prefix)) if cached == secs => prefix,
            _ => {
                let whole = Timestamp::from_second(secs).unwrap_or(ts);
                let text = whole.strftime("%Y-%m-%dT%H:%M:%S").to_string();
                let mut prefix = [b'0'; 19];
                let n = text.len().min(19);
                prefix[..n].copy_from_slice(&text.as_bytes()[..n]);
                self.cached = Some((secs, prefix));
                prefix
            }
        };
        buf.put_slice(&prefix);
        if nanos > 0 {
            let mut digits = [b'0'; 9];
            let mut rest = nanos;
            for digit in digits.iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let len = 9 - digits.iter().rev().take_while(|d| **d == b'0').count();
            buf.put_u8(b'.');
            buf.put_slice(&digits[..len]);
        }
        buf.put_u8(b'Z');
    }
}

/// Appends one line as the kubelet sends it: `[timestamp ]text\n`.
pub fn render_line(
    buf: &mut BytesMut,
    line: &LogLine,
    timestamps: Option<&mut TimestampFormatter>,
) {
    if let Some(formatter) = timestamps {
        formatter.format(buf, line.timestamp);
        buf.put_u8(b' ');
    }
    buf.put_slice(&line.text);
    buf.put_u8(b'\n');
}

/// The index of the first line to send: the last `tail_lines` lines of the file, or all of it.
pub fn first_index((base, end): (u64, u64), tail_lines: Option<u64>) -> u64 {
    match tail_lines {
        Some(n) => end.saturating_sub(n).max(base),
        None => base,
    }
}

/// The simulator's switches that end open log streams.
#[derive(Clone)]
pub struct StreamCuts {
    /// Bumped to end every open stream now.
    pub generation: Arc<watch::Sender<u64>>,
    /// End each stream after this many lines (0 = never).
    pub every: Arc<AtomicU64>,
    /// False while the simulator plays an API server outage.
    pub available: Arc<AtomicBool>,
}

impl Default for StreamCuts {
    fn default() -> Self {
        StreamCuts {
            generation: Arc::new(watch::Sender::new(0)),
            every: Arc::new(AtomicU64::new(0)),
            available: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl StreamCuts {
    /// Ends every open stream now.
    pub fn cut_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Lines copied out of the file per read: bounds the lock time and the chunk size.
const READ_BATCH: usize = 512;

struct LogStream {
    instance: Arc<Instance>,
    opts: LogOptions,
    next: u64,
    /// Without follow: the end of the file when the request arrived.
    end: Option<u64>,
    file_changes: watch::Receiver<u64>,
    cuts_rx: watch::Receiver<u64>,
    cut_every: Arc<AtomicU64>,
    lines_sent: u64,
    bytes_sent: u64,
    done: bool,
    lines: Vec<LogLine>,
    formatter: TimestampFormatter,
}

impl LogStream {
    /// The next chunk of the response, or None when the response ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        loop {
            if self.done || self.cuts_rx.has_changed().unwrap_or(true) {
                return None;
            }
            // Mark the file seen *before* reading, so a write after the read wakes us.
            self.file_changes.borrow_and_update();
            self.lines.clear();
            let max = match self.end {
                Some(end) => (end.saturating_sub(self.next) as usize).min(READ_BATCH),
                None => READ_BATCH,
            };
            let outcome = self
                .instance
                .file
                .read_from(self.next, max, &mut self.lines);
            let read_any = !self.lines.is_empty();
            let first = outcome.next - self.lines.len() as u64;
            let cut_every = self.cut_every.load(Ordering::Relaxed);
            self.next = outcome.next;
            for (i, line) in self.lines.iter().enumerate() {
                if self.opts.since.is_some_and(|since| line.timestamp < since) {
                    continue;
                }
                let before = buf.len();
                render_line(
                    &mut buf,
                    line,
                    self.opts.timestamps.then_some(&mut self.formatter),
                );
                self.lines_sent += 1;
                if let Some(limit) = self.opts.limit_bytes {
                    let rendered = (buf.len() - before) as u64;
                    if self.bytes_sent + rendered >= limit {
                        buf.truncate(before + (limit - self.bytes_sent) as usize);
                        self.done = true;
                        break;
                    }
                    self.bytes_sent += rendered;
                }
                if cut_every > 0 && self.lines_sent >= cut_every {
                    self.next = first + i as u64 + 1;
                    self.done = true;
                    break;
                }
            }
            if !buf.is_empty() {
                return Some(buf.freeze());
            }
            if self.done || outcome.finished || self.end.is_some_and(|end| self.next >= end) {
                return None;
            }
            if read_any {
                continue;
            }
            tokio::select! {
                changed = self.file_changes.changed() => {
                    if changed.is_err() { return None; }
                }
                _ = self.cuts_rx.changed() => return None,
            }
        }
    }
}

/// The body of a `pods/log` response for `instance`, streamed as lines are written.
pub fn log_body(instance: Arc<Instance>, opts: LogOptions, cuts: &StreamCuts) -> axum::body::Body {
    let bounds = instance.file.bounds();
    let stream = LogStream {
        next: first_index(bounds, opts.tail_lines),
        end: (!opts.follow).then_some(bounds.1),
        file_changes: instance.file.subscribe(),
        cuts_rx: cuts.generation.subscribe(),
        cut_every: cuts.every.clone(),
        instance,
        opts,
        lines_sent: 0,
        bytes_sent: 0,
        done: false,
        lines: Vec::with_capacity(READ_BATCH),
        formatter: TimestampFormatter::default(),
    };
    let chunks = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), stream))
    });
    axum::body::Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fmt(t: Timestamp) -> String {
        let mut buf = BytesMut::new();
        TimestampFormatter::default().format(&mut buf, t);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn timestamps_trim_trailing_zeros_like_go() {
        for (input, want) in [
            (
                "2026-11-25T10:00:00.123400000Z",
                "2026-11-25T10:00:00.1234Z",
            ),
            ("2026-11-25T10:00:00Z", "2026-11-25T10:00:00Z"),
            (
                "2026-11-25T10:00:00.000000001Z",
                "2026-11-25T10:00:00.000000001Z",
            ),
            ("2026-11-25T10:00:00.5Z", "2026-11-25T10:00:00.5Z"),
            (
                "2026-11-25T23:59:59.999999999Z",
                "2026-11-25T23:59:59.999999999Z",
            ),
            ("1969-12-31T23:59:59.25Z", "1969-12-31T23:59:59.25Z"),
        ] {
            assert_eq!(fmt(ts(input)), want, "{input}");
        }
    }

    #[test]
    fn a_reused_formatter_matches_a_fresh_one() {
        let mut reused = TimestampFormatter::default();
        for input in [
            "2026-11-25T10:00:00.5Z",
            "2026-11-25T10:00:00.25Z",
            "2026-11-25T10:00:01Z",
            "2026-11-25T09:59:59.1Z",
            "2026-11-25T10:00:01.000000010Z",
        ] {
            let mut buf = BytesMut::new();
            reused.format(&mut buf, ts(input));
            assert_eq!(
                String::from_utf8(buf.to_vec()).unwrap(),
                fmt(ts(input)),
                "{input}"
            );
        }
    }

    #[test]
    fn since_time_is_truncated_to_whole_seconds() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let now = ts("2026-11-25T10:00:00Z");
        let o = LogOptions::parse(&q(&[("sinceTime", "2026-11-25T09:00:05.900Z")]), now).unwrap();
        assert_eq!(o.since, Some(ts("2026-11-25T09:00:05Z")));
        let o = LogOptions::parse(&q(&[("sinceSeconds", "10"), ("follow", "true")]), now).unwrap();
        assert_eq!(o.since, Some(ts("2026-11-25T09:59:50Z")));
        assert!(o.follow);
        let o = LogOptions::parse(
            &q(&[("tailLines", "0"), ("limitBytes", "7"), ("previous", "1")]),
            now,
        )
        .unwrap();
        assert_eq!(
            (o.tail_lines, o.limit_bytes, o.previous),
            (Some(0), Some(7), true)
        );
    }

    #[test]
    fn bad_log_parameters_are_refused() {
        let now = ts("2026-11-25T10:00:00Z");
        for (k, v, invalid) in [
            ("follow", "yes", false),
            ("sinceTime", "yesterday", false),
            ("tailLines", "-1", true),
            ("limitBytes", "0", true),
            ("sinceSeconds", "0", true),
        ] {
            let q = HashMap::from([(k.to_string(), v.to_string())]);
            let err = LogOptions::parse(&q, now).unwrap_err();
            assert_eq!(
                matches!(err, LogParamError::Invalid(_)),
                invalid,
                "{k}={v}: {err}"
            );
        }
        let both = HashMap::from([
            ("sinceTime".to_string(), "2026-11-25T09:00:00Z".to_string()),
            ("sinceSeconds".to_string(), "5".to_string()),
        ]);
        assert!(LogOptions::parse(&both, now).is_err());
    }

    #[test]
    fn tail_starts_at_the_last_lines_still_in_the_file() {
        assert_eq!(first_index((0, 10), None), 0);
        assert_eq!(first_index((0, 10), Some(3)), 7);
        assert_eq!(first_index((5, 10), Some(30)), 5);
        assert_eq!(first_index((5, 10), Some(0)), 10);
    }
}
