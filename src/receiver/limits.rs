//! Loki's limits, applied before sending (SPEC §4.5).
//!
//! Loki rejects a whole push request (400) when one stream breaks a limit, which would drop
//! every other stream in the batch with it. So what Loki would refuse is handled here, per
//! stream and per line, and counted (`invalid_labels`, `line_too_long`); the rest is sent.
//!
//! - labels: at least one pair, at most `max_label_names`, names matching
//!   `[a-zA-Z_][a-zA-Z0-9_]*` and at most 1024 bytes (Loki's `max_label_name_length` default,
//!   not configurable here), values at most `max_label_value_length` bytes;
//! - lines: at most `max_line_size` bytes (0 = no limit); a longer line is truncated to the
//!   limit when `max_line_size_truncate`, else dropped.

use crate::config::LokiConfig;
use crate::target::Labels;

/// Loki's default `max_label_name_length`.
pub const MAX_LABEL_NAME_LENGTH: usize = 1024;

/// The limits of one receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_label_names: usize,
    pub max_label_value_length: usize,
    /// 0 = no limit.
    pub max_line_size: usize,
    pub max_line_size_truncate: bool,
}

impl Limits {
    /// The limits configured for a receiver.
    pub fn from_config(config: &LokiConfig) -> Limits {
        Limits {
            max_label_names: config.max_label_names,
            max_label_value_length: config.max_label_value_length,
            max_line_size: config.max_line_size,
            max_line_size_truncate: config.max_line_size_truncate,
        }
    }
}

/// Why Loki would refuse a stream's labels.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LabelProblem {
    #[error("a stream needs at least one label; add labels with [[relabel]] rules")]
    Empty,
    #[error("{count} label names exceed max_label_names = {max}; drop some with labeldrop")]
    TooMany { count: usize, max: usize },
    #[error("label name {name:?} is not valid (must match [a-zA-Z_][a-zA-Z0-9_]*)")]
    BadName { name: String },
    #[error("label name {name:?} is longer than {MAX_LABEL_NAME_LENGTH} bytes")]
    NameTooLong { name: String },
    #[error("value of label {name:?} is {len} bytes, over max_label_value_length = {max}")]
    ValueTooLong {
        name: String,
        len: usize,
        max: usize,
    },
}

/// Checks a stream's final labels (external labels included) against Loki's limits.
pub fn check_labels(labels: &Labels, limits: &Limits) -> Result<(), LabelProblem> {
    if labels.is_empty() {
        return Err(LabelProblem::Empty);
    }
    // What the labels know of themselves answers the common case without a look at each.
    if labels.names_valid()
        && labels.len() <= limits.max_label_names
        && labels.longest_value() <= limits.max_label_value_length
    {
        return Ok(());
    }
    if labels.len() > limits.max_label_names {
        return Err(LabelProblem::TooMany {
            count: labels.len(),
            max: limits.max_label_names,
        });
    }
    for (name, value) in labels.pairs() {
        if !valid_label_name(name) {
            return Err(LabelProblem::BadName { name: name.clone() });
        }
        if name.len() > MAX_LABEL_NAME_LENGTH {
            return Err(LabelProblem::NameTooLong { name: name.clone() });
        }
        if value.len() > limits.max_label_value_length {
            return Err(LabelProblem::ValueTooLong {
                name: name.clone(),
                len: value.len(),
                max: limits.max_label_value_length,
            });
        }
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// What to do with a line of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineAction {
    Keep,
    /// Keep at most this many bytes.
    Truncate(usize),
    Drop,
}

/// Applies `max_line_size` to a line of `len` bytes.
pub fn check_line(len: usize, limits: &Limits) -> LineAction {
    if limits.max_line_size == 0 || len <= limits.max_line_size {
        LineAction::Keep
    } else if limits.max_line_size_truncate {
        LineAction::Truncate(limits.max_line_size)
    } else {
        LineAction::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_line: usize, truncate: bool) -> Limits {
        Limits {
            max_label_names: 3,
            max_label_value_length: 5,
            max_line_size: max_line,
            max_line_size_truncate: truncate,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn label_limits() {
        let long_name = "n".repeat(MAX_LABEL_NAME_LENGTH + 1);
        type Case<'a> = (Vec<(&'a str, &'a str)>, Result<(), LabelProblem>);
        let table: Vec<Case> = vec![
            (vec![("a", "1")], Ok(())),
            (vec![("_a9", "12345"), ("B", ""), ("c", "x")], Ok(())),
            (vec![], Err(LabelProblem::Empty)),
            (
                vec![("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")],
                Err(LabelProblem::TooMany { count: 4, max: 3 }),
            ),
            (
                vec![("9a", "1")],
                Err(LabelProblem::BadName { name: "9a".into() }),
            ),
            (
                vec![("a-b", "1")],
                Err(LabelProblem::BadName { name: "a-b".into() }),
            ),
            (
                vec![("é", "1")],
                Err(LabelProblem::BadName { name: "é".into() }),
            ),
            (
                vec![(long_name.as_str(), "1")],
                Err(LabelProblem::NameTooLong {
                    name: long_name.clone(),
                }),
            ),
            (
                vec![("a", "123456")],
                Err(LabelProblem::ValueTooLong {
                    name: "a".into(),
                    len: 6,
                    max: 5,
                }),
            ),
            // Value length is in bytes: "ééé" is 6 bytes.
            (
                vec![("a", "ééé")],
                Err(LabelProblem::ValueTooLong {
                    name: "a".into(),
                    len: 6,
                    max: 5,
                }),
            ),
        ];
        for (pairs, expected) in table {
            assert_eq!(
                check_labels(&labels(&pairs), &limits(0, false)),
                expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn line_limits() {
        let table = [
            (10, 0, false, LineAction::Keep),
            (1_000_000, 0, true, LineAction::Keep),
            (10, 10, false, LineAction::Keep),
            (11, 10, false, LineAction::Drop),
            (11, 10, true, LineAction::Truncate(10)),
            (0, 10, false, LineAction::Keep),
        ];
        for (len, max, truncate, expected) in table {
            assert_eq!(
                check_line(len, &limits(max, truncate)),
                expected,
                "{len} {max} {truncate}"
            );
        }
    }
}
