//! A batch as Loki's push body: protobuf, snappy block compressed (SPEC §6).
//!
//! Entries are grouped by stream: a stream's final labels (its own plus `external_labels`, which
//! never override) are rendered and checked against [`Limits`] once per stream per batch, not per
//! line; streams from different chunks with the same final labels share one `StreamAdapter`.
//! Entries keep chunk order. `hash` is FNV-1a of the label text: stable across processes and
//! versions, unlike `std`'s hasher.
//!
//! Protobuf `string` fields must hold UTF-8, and Loki refuses the whole request otherwise, so a
//! line with invalid bytes is converted lossily (each bad sequence becomes U+FFFD) and not
//! counted: the line is delivered, only those bytes are replaced. Limits apply to the converted
//! line; truncation cuts at a character boundary, so a truncated line may be up to 3 bytes
//! shorter than `max_line_size`.
//!
//! Each line is copied into an owned `String` because the shared `logproto` types (also used by
//! the simulator's sink to decode) hold `String`s; the copy costs about what protobuf encoding
//! itself does.

use std::collections::HashMap;

use prost::Message;

use super::batch::Batch;
use super::limits::{LabelProblem, Limits, LineAction, check_labels, check_line};
use crate::logproto::{EntryAdapter, PushRequest, StreamAdapter};
use crate::target::Stream;

/// Entries and line bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub entries: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.entries += 1;
        self.bytes += bytes as u64;
    }
}

/// A batch ready to push, with what the limits removed from it.
#[derive(Debug, Default, PartialEq)]
pub struct Built {
    pub request: PushRequest,
    /// What the request carries (line bytes after conversion and truncation).
    pub sent: Count,
    /// Entries of streams whose labels Loki would refuse.
    pub invalid_labels: Count,
    /// Lines over `max_line_size` (without `max_line_size_truncate`).
    pub line_too_long: Count,
    /// Lines cut to `max_line_size`.
    pub truncated: u64,
    /// The first label problem met, with the labels, for the log.
    pub label_problem: Option<(String, LabelProblem)>,
}

/// The compressed body of a push, and what it carries.
#[derive(Debug)]
pub struct Encoded {
    pub body: bytes::Bytes,
    pub built: Built,
}

/// The body could not be compressed (a batch beyond snappy's 4 GiB block limit).
#[derive(Debug, thiserror::Error)]
#[error("cannot compress a push body of {len} bytes: {source}; lower batch_size")]
pub struct EncodeError {
    len: usize,
    #[source]
    source: snap::Error,
}

/// Builds the push request of a batch, applying `limits`.
pub fn build(batch: &Batch, external_labels: &[(String, String)], limits: &Limits) -> Built {
    let mut built = Built::default();
    // Per stream (by identity of its shared `Arc<Stream>`): the index of its StreamAdapter, or
    // None when its labels are refused.
    let mut by_stream: HashMap<*const Stream, Option<usize>> = HashMap::new();
    let mut by_text: HashMap<String, usize> = HashMap::new();
    for item in &batch.chunks {
        let chunk = &item.chunk;
        let slot = *by_stream
            .entry(std::sync::Arc::as_ptr(&chunk.stream))
            .or_insert_with(|| {
                let labels = chunk.stream.labels.with_defaults(external_labels);
                if let Err(problem) = check_labels(&labels, limits) {
                    built
                        .label_problem
                        .get_or_insert_with(|| (labels.as_text().to_owned(), problem));
                    return None;
                }
                let text = labels.as_text();
                Some(*by_text.entry(text.to_owned()).or_insert_with(|| {
                    built.request.streams.push(StreamAdapter {
                        labels: text.to_owned(),
                        entries: Vec::new(),
                        hash: fnv1a(text.as_bytes()),
                    });
                    built.request.streams.len() - 1
                }))
            });
        let Some(index) = slot else {
            for entry in &chunk.entries {
                built.invalid_labels.add(entry.line.len());
            }
            continue;
        };
        let entries = &mut built.request.streams[index].entries;
        entries.reserve(chunk.entries.len());
        for entry in &chunk.entries {
            let mut line = match std::str::from_utf8(&entry.line) {
                Ok(s) => s.to_owned(),
                Err(_) => String::from_utf8_lossy(&entry.line).into_owned(),
            };
            match check_line(line.len(), limits) {
                LineAction::Keep => {}
                LineAction::Truncate(max) => {
                    line.truncate(line.floor_char_boundary(max));
                    built.truncated += 1;
                }
                LineAction::Drop => {
                    built.line_too_long.add(line.len());
                    continue;
                }
            }
            built.sent.add(line.len());
            entries.push(EntryAdapter {
                timestamp: Some(entry.timestamp.into()),
                line,
                structured_metadata: Vec::new(),
            });
        }
    }
    // A stream whose every line was dropped must not be sent empty.
    built.request.streams.retain(|s| !s.entries.is_empty());
    built
}

/// Builds and compresses the push body of a batch.
pub fn encode(
    batch: &Batch,
    external_labels: &[(String, String)],
    limits: &Limits,
) -> Result<Encoded, EncodeError> {
    let built = build(batch, external_labels, limits);
    let proto = built.request.encode_to_vec();
    let body = snap::raw::Encoder::new()
        .compress_vec(&proto)
        .map_err(|source| EncodeError {
            len: proto.len(),
            source,
        })?;
    Ok(Encoded {
        body: body.into(),
        built,
    })
}

/// 64-bit FNV-1a.
fn fnv1a(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::chunk::{Chunk, Entry};
    use crate::receiver::batch::Batcher;
    use crate::receiver::queue::QueuedChunk;
    use crate::receiver::test_support::chunk_full;
    use crate::target::{Labels, TargetId};

    const NO_LIMITS: Limits = Limits {
        max_label_names: 15,
        max_label_value_length: 2048,
        max_line_size: 0,
        max_line_size_truncate: false,
    };

    fn batch_of(chunks: Vec<Arc<Chunk>>) -> Batch {
        let mut b = Batcher::new(usize::MAX, Duration::ZERO, None);
        let now = tokio::time::Instant::now();
        for c in chunks {
            b.add(QueuedChunk::detached(c), now);
        }
        b.close_all();
        b.take_sendable().pop().unwrap()
    }

    fn decode(body: &[u8]) -> PushRequest {
        let raw = snap::raw::Decoder::new().decompress_vec(body).unwrap();
        PushRequest::decode(raw.as_slice()).unwrap()
    }

    fn lines(s: &StreamAdapter) -> Vec<&str> {
        s.entries.iter().map(|e| e.line.as_str()).collect()
    }

    #[test]
    fn groups_by_stream_in_chunk_order_and_round_trips() {
        let web = chunk_full(None, &[("app", "web")], &["w1", "w2"], 1, None);
        let db = chunk_full(None, &[("app", "db")], &["d1"], 2, None);
        let web2 = chunk_full(None, &[("app", "web")], &["w3"], 3, None);
        let batch = batch_of(vec![web.clone(), db, web2]);
        let ext = [("cluster".to_string(), "c1".to_string())];
        let encoded = encode(&batch, &ext, &NO_LIMITS).unwrap();
        let req = decode(&encoded.body);
        assert_eq!(req, encoded.built.request);
        let got: Vec<(&str, Vec<&str>)> = req
            .streams
            .iter()
            .map(|s| (s.labels.as_str(), lines(s)))
            .collect();
        assert_eq!(
            got,
            vec![
                (r#"{app="web", cluster="c1"}"#, vec!["w1", "w2", "w3"]),
                (r#"{app="db", cluster="c1"}"#, vec!["d1"]),
            ]
        );
        let first = &req.streams[0].entries[0];
        assert_eq!(
            jiff::Timestamp::try_from(first.timestamp.unwrap()).unwrap(),
            web.entries[0].timestamp
        );
        assert_eq!(req.streams[0].hash, fnv1a(br#"{app="web", cluster="c1"}"#));
        assert_ne!(req.streams[0].hash, req.streams[1].hash);
        assert_eq!(
            encoded.built.sent,
            Count {
                entries: 4,
                bytes: 8
            }
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_dropped() {
        let id = Arc::new(TargetId {
            namespace: "n".into(),
            pod: "p".into(),
            container: "c".into(),
            uid: "u".into(),
        });
        let stream = Arc::new(Stream {
            labels: Labels::from_pairs([("a".to_string(), "b".to_string())]),
            tenant: None,
        });
        let entry = Entry {
            timestamp: jiff::Timestamp::UNIX_EPOCH,
            line: Bytes::from_static(b"ok \xff\xfe end"),
        };
        let chunk = Arc::new(Chunk::new(id, stream, vec![entry], 0, Instant::now(), None));
        let req = decode(
            &encode(&batch_of(vec![chunk]), &[], &NO_LIMITS)
                .unwrap()
                .body,
        );
        assert_eq!(req.streams[0].entries[0].line, "ok \u{fffd}\u{fffd} end");
    }

    #[test]
    fn limits_drop_streams_and_lines_and_truncate() {
        let good = chunk_full(None, &[("app", "a")], &["short", "far too long"], 1, None);
        let bad = chunk_full(None, &[("bad-name", "x")], &["x", "yy"], 2, None);
        let batch = batch_of(vec![good, bad]);
        let drop_long = Limits {
            max_line_size: 5,
            ..NO_LIMITS
        };
        let built = build(&batch, &[], &drop_long);
        assert_eq!(built.request.streams.len(), 1);
        assert_eq!(lines(&built.request.streams[0]), vec!["short"]);
        assert_eq!(
            built.invalid_labels,
            Count {
                entries: 2,
                bytes: 3
            }
        );
        assert_eq!(
            built.line_too_long,
            Count {
                entries: 1,
                bytes: 12
            }
        );
        assert_eq!(
            built.label_problem.as_ref().map(|(l, _)| l.as_str()),
            Some(r#"{bad-name="x"}"#)
        );

        let truncate = Limits {
            max_line_size: 5,
            max_line_size_truncate: true,
            ..NO_LIMITS
        };
        let built = build(&batch, &[], &truncate);
        assert_eq!(lines(&built.request.streams[0]), vec!["short", "far t"]);
        assert_eq!((built.truncated, built.sent.bytes), (1, 10));

        // Truncation respects character boundaries: "é" is 2 bytes.
        let accents = chunk_full(None, &[("app", "a")], &["ééé"], 3, None);
        let built = build(&batch_of(vec![accents]), &[], &truncate);
        assert_eq!(lines(&built.request.streams[0]), vec!["éé"]);
    }

    #[test]
    fn a_stream_without_lines_left_is_not_sent() {
        let long = chunk_full(None, &[("app", "a")], &["toolong"], 1, None);
        let limits = Limits {
            max_line_size: 3,
            ..NO_LIMITS
        };
        let built = build(&batch_of(vec![long]), &[], &limits);
        assert!(built.request.streams.is_empty());
        assert_eq!(built.sent, Count::default());
    }
}
