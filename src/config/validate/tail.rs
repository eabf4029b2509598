//! The `[tail]` table (SPEC §4.6): where a target without a position starts (`start_from`,
//! SPEC §4.4), long lines, reconnect backoff, stream lifetime and chunk size (SPEC §5).

use super::{Checker, DAY, HOUR, MAX_LINE_OR_BATCH, MONTH};
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::units::{duration_overflows, parse_duration};

const START_FROM_EXAMPLES: &str = r#"(examples: "beginning", "end", "10m")"#;

/// The `[tail]` table (SPEC §4.6), with `start_from` as SPEC §4.4 defines it.
pub(super) fn tail(c: &mut Checker, raw: Option<&RawTail>) -> TailConfig {
    let default = RawTail::default();
    let raw = raw.unwrap_or(&default);
    let d = TailConfig::default();
    let start_from = match raw.start_from.as_deref() {
        None | Some("beginning") => StartFrom::Beginning,
        Some("end") => StartFrom::End,
        Some(text) => match parse_duration(text) {
            Ok(ago) if ago.is_zero() => {
                c.error(
                    "tail.start_from",
                    r#"must be > 0 (write "end" to start from now)"#,
                );
                d.start_from
            }
            Ok(ago) if ago > MONTH.value => {
                c.error("tail.start_from", MONTH.too_large(text));
                d.start_from
            }
            Ok(ago) => StartFrom::Ago(ago),
            Err(_) if duration_overflows(text) => {
                c.error("tail.start_from", MONTH.too_large(text));
                d.start_from
            }
            Err(_) => {
                let message = format!(
                    r#"{text:?} is not "beginning", "end" or a duration {START_FROM_EXAMPLES}"#
                );
                c.error("tail.start_from", message);
                d.start_from
            }
        },
    };
    let max_line_size = c.size(
        "tail.max_line_size",
        raw.max_line_size.as_ref(),
        d.max_line_size,
        MAX_LINE_OR_BATCH,
    );
    let max_line_size = c.positive("tail.max_line_size", Some(max_line_size), d.max_line_size);
    let min_backoff = c.positive_duration(
        "tail.min_backoff",
        raw.min_backoff.as_deref(),
        d.min_backoff,
        DAY,
    );
    let max_backoff = c.positive_duration(
        "tail.max_backoff",
        raw.max_backoff.as_deref(),
        d.max_backoff,
        DAY,
    );
    if min_backoff > max_backoff {
        c.error("tail.min_backoff", "must not exceed tail.max_backoff");
    }
    TailConfig {
        start_from,
        max_line_size,
        on_long_line: c.word(
            "tail.on_long_line",
            raw.on_long_line.as_deref(),
            &[
                ("truncate", OnLongLine::Truncate),
                ("drop", OnLongLine::Drop),
            ],
            d.on_long_line,
        ),
        min_backoff,
        max_backoff,
        max_stream_lifetime: c.positive_duration(
            "tail.max_stream_lifetime",
            raw.max_stream_lifetime.as_deref(),
            d.max_stream_lifetime,
            DAY,
        ),
        terminated_grace: c.duration(
            "tail.terminated_grace",
            raw.terminated_grace.as_deref(),
            d.terminated_grace,
            HOUR,
        ),
        chunk_lines: c.positive("tail.chunk_lines", raw.chunk_lines, d.chunk_lines),
    }
}
