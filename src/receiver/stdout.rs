//! The `[stdout]` receiver: prints every entry, for debugging and the demo (SPEC §4.5, §8.6).
//!
//! It takes chunks from its own queue like any receiver, writes each chunk's entries to
//! standard output (logfmt `ts=… <labels> line="…"` or one JSON object per line) and finishes
//! the chunk. A write error (stdout closed) is logged once per 10 s and the chunk is still
//! finished: a debugging printer must not hold every other receiver's acknowledgements back.

use std::io::Write;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::queue::{QueueStats, QueuedChunk};
use super::{Flush, GetStatus, ReceiverStatus, Stop};
use crate::chunk::Chunk;
use crate::config::LogFormat;
use crate::logging::{push_logfmt_quoted, push_logfmt_value};
use crate::telemetry;

/// Name of the stdout receiver in metrics and status.
pub const NAME: &str = "stdout";

/// The stdout receiver actor.
pub struct StdoutReceiver {
    format: LogFormat,
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
    queue: QueueStats,
    sent_entries: u64,
    last_success: Option<jiff::Timestamp>,
    last_error: Option<(jiff::Timestamp, String)>,
    last_error_log: Option<Instant>,
}

impl StdoutReceiver {
    /// A printer writing to `out`, taking chunks from the queue `queue` feeds.
    pub(crate) fn new(format: LogFormat, out: Box<dyn Write + Send>, queue: QueueStats) -> Self {
        StdoutReceiver {
            format,
            out,
            buf: Vec::with_capacity(64 * 1024),
            queue,
            sent_entries: 0,
            last_success: None,
            last_error: None,
            last_error_log: None,
        }
    }
}

impl Actor for StdoutReceiver {
    type Context = Context<Self>;
}

impl StreamHandler<QueuedChunk> for StdoutReceiver {
    fn handle(&mut self, item: QueuedChunk, _ctx: &mut Context<Self>) {
        self.buf.clear();
        write_chunk(&mut self.buf, &item.chunk, self.format);
        let written = self
            .out
            .write_all(&self.buf)
            .and_then(|()| self.out.flush());
        if let Err(e) = written {
            let now = Instant::now();
            if self
                .last_error_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                tracing::warn!(error = %e, "cannot write entries to stdout; they are dropped");
                self.last_error_log = Some(now);
            }
            self.last_error = Some((jiff::Timestamp::now(), e.to_string()));
        } else {
            self.last_success = Some(jiff::Timestamp::now());
        }
        let chunk = &item.chunk;
        self.sent_entries += chunk.entries.len() as u64;
        telemetry::sent(NAME, chunk.entries.len() as u64, chunk.bytes() as u64);
        telemetry::propagation_latency(NAME, chunk.read_at.elapsed());
        item.finish();
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Flush> for StdoutReceiver {
    type Result = ();
    // Every chunk is printed as it arrives: nothing is held back to flush.
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {}
}

impl Handler<Stop> for StdoutReceiver {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<GetStatus> for StdoutReceiver {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(ReceiverStatus {
            name: NAME.to_owned(),
            queued_bytes: self.queue.queued_bytes(),
            buffer_size: self.queue.capacity(),
            in_flight_batches: 0,
            last_success: self.last_success,
            last_error_at: self.last_error.as_ref().map(|(at, _)| *at),
            last_error: self.last_error.as_ref().map(|(_, e)| e.clone()),
            sent_entries: self.sent_entries,
            dropped_entries: self.queue.dropped_entries(),
        })
    }
}

/// Appends one output line per entry of `chunk` to `out`.
pub fn write_chunk(out: &mut Vec<u8>, chunk: &Chunk, format: LogFormat) {
    match format {
        LogFormat::Logfmt => {
            // The labels part is the same for every line of the chunk.
            let mut labels = String::new();
            for (name, value) in chunk.stream.labels.pairs() {
                labels.push(' ');
                labels.push_str(name);
                labels.push('=');
                push_logfmt_value(&mut labels, value);
            }
            let mut line = String::new();
            for entry in &chunk.entries {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "ts={}{labels} line=", entry.timestamp);
                line.clear();
                push_logfmt_quoted(&mut line, entry.line);
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
        }
        LogFormat::Json => {
            let labels: serde_json::Map<String, serde_json::Value> = chunk
                .stream
                .labels
                .pairs()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let labels = serde_json::Value::Object(labels).to_string();
            for entry in &chunk.entries {
                let line = serde_json::Value::String(entry.line.into());
                let _ = writeln!(
                    out,
                    r#"{{"ts":"{}","labels":{labels},"line":{line}}}"#,
                    entry.timestamp
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receiver::test_support::chunk_full;

    #[test]
    fn logfmt_lines() {
        let chunk = chunk_full(
            None,
            &[("app", "web"), ("team", "a b"), ("x", "")],
            &["hello \"world\"", "tab\there"],
            1,
            None,
        );
        let mut out = Vec::new();
        write_chunk(&mut out, &chunk, LogFormat::Logfmt);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "ts=2023-11-14T22:13:20Z app=web team=\"a b\" x=\"\" line=\"hello \\\"world\\\"\"\n",
                "ts=2023-11-14T22:13:21Z app=web team=\"a b\" x=\"\" line=\"tab\\there\"\n",
            )
        );
    }

    #[test]
    fn json_lines() {
        let chunk = chunk_full(None, &[("app", "web")], &["say \"hi\""], 1, None);
        let mut out = Vec::new();
        write_chunk(&mut out, &chunk, LogFormat::Json);
        let text = String::from_utf8(out).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ts": "2023-11-14T22:13:20Z", "labels": {"app": "web"}, "line": "say \"hi\""})
        );
    }
}
