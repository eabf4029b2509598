//! A batch as Loki's push body: protobuf, snappy block compressed (SPEC §6).
//!
//! Entries are grouped by stream: a stream's final labels (its own plus `external_labels`, which
//! never override) are rendered and checked against [`Limits`] once per stream per batch, not per
//! line; streams from different chunks with the same final labels share one `StreamAdapter`.
//! Entries keep chunk order. `hash` is FNV-1a of the label text ([`Labels::stream_hash`],
//! computed once per label set): stable across processes and versions, unlike `std`'s hasher.
//!
//! A chunk's entries arrive already in Loki's wire form, their lines UTF-8 ([`Entries`]), so a
//! stream's `entries` are its chunks' bytes one after another: [`build`] only *plans* the
//! request (borrowing each chunk's entries, copying none), and [`Plan::encode_into`] writes the
//! `logproto.PushRequest` around them by hand with `prost::encoding`'s primitives, exactly the
//! bytes prost's derived encoder writes for [`Plan::to_request`] (a test holds them equal).
//! Nothing is done per line unless a line exceeds this receiver's `max_line_size` (the chunk
//! knows its longest line): only such a chunk's entries are read and written again, each line
//! truncated at a character boundary (so up to 3 bytes shorter than the limit) or dropped.
//! The protobuf and snappy buffers are reused per thread: fresh megabyte buffers would be
//! zeroed and page-faulted in on every batch.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use smallvec::SmallVec;

use super::batch::Batch;
use super::limits::{LabelProblem, Limits, LineAction, check_labels, check_line};
use crate::chunk::Entries;
use crate::logproto::{PushRequest, StreamAdapter};
use crate::target::{Labels, Stream};

/// Scratch buffers larger than this are freed after use rather than kept for the next batch
/// (a batch of the default 1 MiB `batch_size` stays well below).
const KEEP_SCRATCH: usize = 8 << 20;

/// Entries and line bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub entries: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.add_many(1, bytes);
    }

    fn add_many(&mut self, entries: usize, bytes: usize) {
        self.entries += entries as u64;
        self.bytes += bytes as u64;
    }
}

/// What a batch's request carries and what the limits removed from it.
#[derive(Debug, Default, PartialEq)]
pub struct Built {
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

/// The push request of a batch, borrowing the batch's entries.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    streams: Vec<PlannedStream<'a>>,
}

#[derive(Debug)]
struct PlannedStream<'a> {
    /// Borrowed from the target's stream unless `external_labels` added to it.
    labels: Cow<'a, str>,
    hash: u64,
    /// Wire-form entries, one run per chunk: borrowed unless the limits changed some line.
    /// Inline for one chunk: thousands of quiet streams make as many planned streams of one
    /// chunk each per batch, and a vector each was an allocation per line.
    entries: SmallVec<[Cow<'a, Entries>; 1]>,
    /// The encoded length of the `StreamAdapter`, kept up to date as entries are added (the
    /// encoder needs every length before the bytes it measures).
    len: usize,
}

impl<'a> PlannedStream<'a> {
    fn new(labels: Cow<'a, str>, hash: u64) -> PlannedStream<'a> {
        let labels_len = if labels.is_empty() {
            0
        } else {
            delimited_len(1, labels.len())
        };
        let hash_len = if hash == 0 {
            0
        } else {
            key_len(3) + encoded_len_varint(hash)
        };
        PlannedStream {
            labels,
            hash,
            entries: SmallVec::new(),
            len: labels_len + hash_len,
        }
    }

    fn push(&mut self, entries: Cow<'a, Entries>) {
        if !entries.is_empty() {
            self.len += entries.wire_len();
            self.entries.push(entries);
        }
    }
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

/// Plans the push request of a batch, applying `limits`.
pub fn build<'a>(
    batch: &'a Batch,
    external_labels: &[(String, String)],
    limits: &Limits,
) -> (Plan<'a>, Built) {
    let mut built = Built::default();
    // Sized for a stream per chunk (thousands of quiet streams): no growing per batch.
    let chunks = batch.chunks.len();
    let mut plan = Plan {
        streams: Vec::with_capacity(chunks),
    };
    // Per stream (by identity of its shared `Arc<Stream>`): the index of its planned stream, or
    // None when its labels are refused.
    let mut by_stream: HashMap<*const Stream, Option<usize>, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(chunks, Default::default());
    // Planned streams by their label text, looked up with the stream hash each label set
    // carries: no hashing of the text per batch.
    let mut by_text: hashbrown::HashTable<usize> = hashbrown::HashTable::with_capacity(chunks);
    for item in &batch.chunks {
        let chunk = &item.chunk;
        let slot = *by_stream
            .entry(std::sync::Arc::as_ptr(&chunk.stream))
            .or_insert_with(|| {
                // A stream's labels are used as they are (no copy per batch) unless
                // `external_labels` add to them.
                let labels: Cow<'a, Labels> = if external_labels.is_empty() {
                    Cow::Borrowed(&chunk.stream.labels)
                } else {
                    Cow::Owned(chunk.stream.labels.with_defaults(external_labels))
                };
                if let Err(problem) = check_labels(&labels, limits) {
                    built
                        .label_problem
                        .get_or_insert_with(|| (labels.as_text().to_owned(), problem));
                    return None;
                }
                let hash = labels.stream_hash();
                let streams = &mut plan.streams;
                let found = by_text.find(hash, |&i| streams[i].labels == labels.as_text());
                Some(match found {
                    Some(&i) => i,
                    None => {
                        let text: Cow<'a, str> = match labels {
                            Cow::Borrowed(labels) => Cow::Borrowed(labels.as_text()),
                            Cow::Owned(labels) => Cow::Owned(labels.as_text().to_owned()),
                        };
                        streams.push(PlannedStream::new(text, hash));
                        let i = streams.len() - 1;
                        by_text.insert_unique(hash, i, |&i| streams[i].hash);
                        i
                    }
                })
            });
        let Some(index) = slot else {
            built
                .invalid_labels
                .add_many(chunk.entries.len(), chunk.entries.line_bytes());
            continue;
        };
        let entries = within_line_limit(&chunk.entries, limits, &mut built);
        built.sent.add_many(entries.len(), entries.line_bytes());
        plan.streams[index].push(entries);
    }
    // A stream whose every line was dropped must not be sent empty.
    plan.streams.retain(|s| !s.entries.is_empty());
    (plan, built)
}

/// A chunk's entries as this receiver's `max_line_size` allows them: borrowed as they are
/// when no line exceeds it (the rule), else written again with each longer line truncated or
/// dropped.
fn within_line_limit<'a>(
    entries: &'a Entries,
    limits: &Limits,
    built: &mut Built,
) -> Cow<'a, Entries> {
    if check_line(entries.longest(), limits) == LineAction::Keep {
        return Cow::Borrowed(entries);
    }
    let mut kept = Entries::with_capacity(entries.wire_len());
    for entry in entries {
        match check_line(entry.line.len(), limits) {
            LineAction::Keep => kept.push_str(entry.timestamp, entry.line),
            LineAction::Truncate(max) => {
                let end = entry.line.floor_char_boundary(max);
                kept.push_str(entry.timestamp, &entry.line[..end]);
                built.truncated += 1;
            }
            LineAction::Drop => built.line_too_long.add(entry.line.len()),
        }
    }
    Cow::Owned(kept)
}

/// Builds and compresses the push body of a batch.
pub fn encode(
    batch: &Batch,
    external_labels: &[(String, String)],
    limits: &Limits,
) -> Result<Encoded, EncodeError> {
    let (plan, built) = build(batch, external_labels, limits);
    let body = SCRATCH.with_borrow_mut(|scratch| scratch.compress(&plan))?;
    Ok(Encoded { body, built })
}

/// Per-thread buffers for [`encode`]: the protobuf, the compressed body, snappy's hash table.
struct Scratch {
    proto: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        proto: Vec::new(),
        compressed: Vec::new(),
        snappy: snap::raw::Encoder::new(),
    });
}

impl Scratch {
    /// The snappy-compressed protobuf of `plan`, in a buffer of its own exact size.
    fn compress(&mut self, plan: &Plan) -> Result<bytes::Bytes, EncodeError> {
        self.proto.clear();
        plan.encode_into(&mut self.proto);
        let len = self.proto.len();
        let max = snap::raw::max_compress_len(len);
        if self.compressed.len() < max {
            self.compressed.resize(max, 0);
        }
        let result = self
            .snappy
            .compress(&self.proto, &mut self.compressed)
            .map(|n| bytes::Bytes::copy_from_slice(&self.compressed[..n]))
            .map_err(|source| EncodeError { len, source });
        for buf in [&mut self.proto, &mut self.compressed] {
            if buf.capacity() > KEEP_SCRATCH {
                *buf = Vec::new();
            }
        }
        result
    }
}

impl Plan<'_> {
    /// Appends the `logproto.PushRequest` wire format to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.reserve(self.encoded_len());
        for stream in &self.streams {
            // PushRequest.streams = 1
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(stream.len as u64, buf);
            // StreamAdapter.labels = 1 (proto3: an empty string is not written)
            if !stream.labels.is_empty() {
                encode_key(1, WireType::LengthDelimited, buf);
                encode_varint(stream.labels.len() as u64, buf);
                buf.extend_from_slice(stream.labels.as_bytes());
            }
            // StreamAdapter.entries = 2, already in wire form
            for entries in &stream.entries {
                buf.extend_from_slice(entries.wire());
            }
            // StreamAdapter.hash = 3
            if stream.hash != 0 {
                encode_key(3, WireType::Varint, buf);
                encode_varint(stream.hash, buf);
            }
        }
    }

    /// Length of the wire format.
    pub fn encoded_len(&self) -> usize {
        self.streams.iter().map(|s| delimited_len(1, s.len)).sum()
    }

    /// The request as prost's message types (tests, tools; the relay never builds it).
    pub fn to_request(&self) -> PushRequest {
        PushRequest {
            streams: self
                .streams
                .iter()
                .map(|s| {
                    let wire: Vec<u8> = s.entries.iter().flat_map(|e| e.wire()).copied().collect();
                    let entries = StreamAdapter::decode(wire.as_slice())
                        .expect("entries in wire form")
                        .entries;
                    StreamAdapter {
                        labels: s.labels.to_string(),
                        entries,
                        hash: s.hash,
                    }
                })
                .collect(),
        }
    }
}

/// Length of a length-delimited field of `len` bytes with tag `tag`.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::chunk::{Chunk, Entries};
    use crate::receiver::batch::Batcher;
    use crate::receiver::queue::QueuedChunk;
    use crate::receiver::test_support::chunk_full;
    use crate::target::Labels;
    use crate::target::fnv1a;

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
        assert_eq!(req, build(&batch, &ext, &NO_LIMITS).0.to_request());
        let got: Vec<(&str, Vec<&str>)> = req
            .streams
            .iter()
            .map(|s| (s.labels.as_ref(), lines(s)))
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
            web.entries.iter().next().unwrap().timestamp
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
        let stream = Arc::new(Stream {
            labels: Labels::from_pairs([("a".to_string(), "b".to_string())]),
            tenant: None,
        });
        let entries: Entries = [(jiff::Timestamp::UNIX_EPOCH, &b"ok \xff\xfe end"[..])]
            .into_iter()
            .collect();
        let chunk = Arc::new(Chunk::new(stream, entries, 0, Instant::now(), None));
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
        let (plan, built) = build(&batch, &[], &drop_long);
        let request = plan.to_request();
        assert_eq!(request.streams.len(), 1);
        assert_eq!(lines(&request.streams[0]), vec!["short"]);
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
        let (plan, built) = build(&batch, &[], &truncate);
        assert_eq!(lines(&plan.to_request().streams[0]), vec!["short", "far t"]);
        assert_eq!((built.truncated, built.sent.bytes), (1, 10));

        // Truncation respects character boundaries: "é" is 2 bytes.
        let accents = chunk_full(None, &[("app", "a")], &["ééé"], 3, None);
        let batch = batch_of(vec![accents]);
        let (plan, _) = build(&batch, &[], &truncate);
        assert_eq!(lines(&plan.to_request().streams[0]), vec!["éé"]);
    }

    #[test]
    fn a_stream_without_lines_left_is_not_sent() {
        let long = chunk_full(None, &[("app", "a")], &["toolong"], 1, None);
        let limits = Limits {
            max_line_size: 3,
            ..NO_LIMITS
        };
        let batch = batch_of(vec![long]);
        let (plan, built) = build(&batch, &[], &limits);
        assert!(plan.to_request().streams.is_empty());
        assert_eq!(plan.encoded_len(), 0);
        assert_eq!(built.sent, Count::default());
    }

    #[test]
    fn hand_encoding_is_byte_for_byte_prost() {
        let when = |s: i64, n: i32| jiff::Timestamp::new(s, n).unwrap();
        let entries = |lines: &[(jiff::Timestamp, &[u8])]| -> Entries {
            lines.iter().map(|(t, l)| (*t, l)).collect()
        };
        let stream = |pairs: &[(&str, &str)]| {
            Arc::new(Stream {
                labels: Labels::from_pairs(
                    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
                ),
                tenant: None,
            })
        };
        let long = "x".repeat(300);
        let chunks = vec![
            // Epoch (an empty Timestamp message), an empty line, invalid UTF-8, a line whose
            // length needs a two-byte varint, negative seconds.
            Arc::new(Chunk::new(
                stream(&[("app", "a")]),
                entries(&[
                    (jiff::Timestamp::UNIX_EPOCH, b"first".as_slice()),
                    (when(1_704_164_645, 0), b""),
                    (when(1_704_164_645, 123_456_789), b"bad \xff bytes"),
                    (when(1_704_164_646, 1), long.as_bytes()),
                    (when(-5, 500), b"before the epoch"),
                ]),
                1,
                Instant::now(),
                None,
            )),
            // No labels of its own: refused alone, sent with external labels.
            Arc::new(Chunk::new(
                stream(&[]),
                entries(&[(when(1, 2), b"unlabelled".as_slice())]),
                2,
                Instant::now(),
                None,
            )),
        ];
        let batch = batch_of(chunks);
        for ext in [vec![], vec![("cluster".to_string(), "c1".to_string())]] {
            let (plan, built) = build(&batch, &ext, &NO_LIMITS);
            let mut ours = Vec::new();
            plan.encode_into(&mut ours);
            let request = plan.to_request();
            assert_eq!(ours, request.encode_to_vec());
            assert_eq!(ours.len(), plan.encoded_len());
            assert_eq!(
                (built.sent.entries, built.invalid_labels.entries),
                if ext.is_empty() { (5, 1) } else { (6, 0) }
            );
            let body = encode(&batch, &ext, &NO_LIMITS).unwrap().body;
            assert_eq!(decode(&body), request);
        }
    }

    #[test]
    fn large_batches_release_the_scratch_buffers() {
        let line = "y".repeat(1000);
        let refs: Vec<&str> =
            std::iter::repeat_n(line.as_str(), KEEP_SCRATCH / 1000 + 10).collect();
        let big = batch_of(vec![chunk_full(None, &[("app", "a")], &refs, 1, None)]);
        let body = encode(&big, &[], &NO_LIMITS).unwrap().body;
        assert_eq!(decode(&body).streams[0].entries.len(), refs.len());
        SCRATCH.with_borrow(|s| {
            assert_eq!((s.proto.capacity(), s.compressed.capacity()), (0, 0));
        });
        let small = batch_of(vec![chunk_full(None, &[("app", "a")], &["z"], 2, None)]);
        encode(&small, &[], &NO_LIMITS).unwrap();
        SCRATCH.with_borrow(|s| assert!(s.proto.capacity() > 0 && s.compressed.capacity() > 0));
    }
}
