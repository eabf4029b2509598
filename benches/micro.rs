//! Micro-benchmarks of the per-line hot paths (SPEC §10), in bytes per second, so a regression
//! shows here before it reaches the end-to-end figures of `benches/e2e`:
//!
//! - `tail/split_parse_admit`: a `pods/log` body cut into lines ([`LineSplitter`]), each split
//!   into timestamp and text ([`LineParser`]), passed through the exactly-once cursor
//!   ([`ReadCursor::admit`]) and written in Loki's wire form into chunks of 512 ([`Entries`])
//!   — what a tailer does to every byte it reads.
//! - `receiver/batch`: chunks of 512 lines added to a receiver's [`Batcher`], closed at
//!   `batch_size` and taken for sending.
//! - `receiver/encode`: a 1 MiB batch encoded as Loki's protobuf push and snappy-compressed.
//!
//! `cargo bench --bench micro` (criterion; `-- NAME` filters).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;

use kube_log_relay::chunk::{Chunk, Entries};
use kube_log_relay::cursor::{Cursor, ReadCursor};
use kube_log_relay::receiver::batch::{Batch, Batcher};
use kube_log_relay::receiver::encode;
use kube_log_relay::receiver::limits::Limits;
use kube_log_relay::receiver::queue::QueuedChunk;
use kube_log_relay::tail::line::{LineParser, LineSplitter};
use kube_log_relay::target::{Labels, Stream};

/// Lines per chunk, the default `chunk_lines`.
const CHUNK_LINES: usize = 512;
/// Bytes of each line's text, as in the end-to-end scenarios.
const LINE_SIZE: usize = 100;
/// Bytes handed to the splitter per read: a typical HTTP/2 DATA frame is 16 KiB.
const READ_SIZE: usize = 16 * 1024;

/// The text of line `n`: unique, padded to [`LINE_SIZE`] like the simulator's.
fn text(n: usize) -> String {
    let mut s = format!("bench/p-0/c i=1 n={n} ");
    while s.len() < LINE_SIZE {
        s.push('x');
    }
    s
}

/// A `pods/log?timestamps=true` body of `lines` lines, 1,000 lines per second with Go's
/// trimmed RFC3339Nano fractions.
fn log_body(lines: usize) -> Bytes {
    let start = Timestamp::from_second(1_700_000_000).expect("valid");
    let mut body = String::new();
    for n in 0..lines {
        let ts = start + Duration::from_millis(n as u64);
        body.push_str(&format!("{ts} {}\n", text(n)));
    }
    Bytes::from(body)
}

fn tail(c: &mut Criterion) {
    let body = log_body(10_000);
    let reads: Vec<Bytes> = (0..body.len())
        .step_by(READ_SIZE)
        .map(|at| body.slice(at..(at + READ_SIZE).min(body.len())))
        .collect();
    let mut group = c.benchmark_group("tail");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("split_parse_admit", |b| {
        b.iter(|| {
            let mut splitter = LineSplitter::new(256 * 1024);
            let mut cursor = ReadCursor::new(Cursor::BEGINNING);
            let mut parser = LineParser::default();
            let mut entries = Entries::new();
            let mut delivered = 0usize;
            for read in &reads {
                let mut at = 0;
                while let Some(line) = splitter.next_line(read, &mut at) {
                    let parsed = parser.parse(line.bytes);
                    let timestamp = parsed.timestamp.unwrap_or(Timestamp::UNIX_EPOCH);
                    if cursor.admit(timestamp.as_second()) == kube_log_relay::cursor::Admit::Deliver
                    {
                        entries.push(timestamp, parsed.text);
                    }
                    if entries.len() == CHUNK_LINES {
                        let next = Entries::with_capacity(entries.wire_len());
                        delivered += black_box(std::mem::replace(&mut entries, next)).line_bytes();
                    }
                }
            }
            black_box(delivered + entries.line_bytes())
        })
    });
    group.finish();
}

/// `chunks` chunks of [`CHUNK_LINES`] lines from 10 streams (a chunk's stream is `i % 10`).
fn chunks(chunks: usize) -> Vec<Arc<Chunk>> {
    let streams: Vec<Arc<Stream>> = (0..10)
        .map(|i| {
            let labels = Labels::from_pairs([
                ("container".to_string(), "c".to_string()),
                ("job".to_string(), "bench/c".to_string()),
                ("namespace".to_string(), "bench".to_string()),
                ("pod".to_string(), format!("p-{i}")),
            ]);
            let stream = Stream {
                labels,
                tenant: None,
            };
            Arc::new(stream)
        })
        .collect();
    let start = Timestamp::from_second(1_700_000_000).expect("valid");
    (0..chunks)
        .map(|i| {
            let stream = &streams[i % streams.len()];
            let entries: Entries = (0..CHUNK_LINES)
                .map(|n| {
                    let timestamp = start + Duration::from_millis((i * CHUNK_LINES + n) as u64);
                    (timestamp, text(i * CHUNK_LINES + n))
                })
                .collect();
            Arc::new(Chunk::new(
                stream.clone(),
                entries,
                i as u64,
                Instant::now(),
                None,
            ))
        })
        .collect()
}

fn line_bytes(chunks: &[Arc<Chunk>]) -> u64 {
    chunks.iter().map(|c| c.bytes() as u64).sum()
}

fn batching(c: &mut Criterion) {
    let chunks = chunks(200);
    let mut group = c.benchmark_group("receiver");
    group.throughput(Throughput::Bytes(line_bytes(&chunks)));
    group.bench_function("batch", |b| {
        b.iter(|| {
            let mut batcher = Batcher::new(1 << 20, Duration::from_secs(1), None);
            let now = tokio::time::Instant::now();
            let mut sent = 0usize;
            for chunk in &chunks {
                batcher.add(QueuedChunk::detached(chunk.clone()), now);
                for batch in batcher.take_sendable() {
                    sent += batch.entries;
                    batcher.done(batch.tenant.as_deref());
                }
            }
            batcher.close_all();
            for batch in batcher.take_sendable() {
                sent += batch.entries;
            }
            black_box(sent)
        })
    });
    group.finish();
}

fn encoding(c: &mut Criterion) {
    // About 1 MiB of line bytes: the default batch_size.
    let chunks = chunks((1 << 20) / (CHUNK_LINES * LINE_SIZE) + 1);
    let batch = Batch::of(
        None,
        chunks.iter().cloned().map(QueuedChunk::detached),
        tokio::time::Instant::now(),
    );
    let limits = Limits {
        max_label_names: 15,
        max_label_value_length: 2048,
        max_line_size: 256 * 1024,
        max_line_size_truncate: false,
    };
    let mut group = c.benchmark_group("receiver");
    group.throughput(Throughput::Bytes(batch.bytes as u64));
    group.bench_function("encode_protobuf_snappy", |b| {
        b.iter(|| {
            let encoded = encode::encode(&batch, &[], &limits).expect("encodes");
            black_box(encoded.body.len())
        })
    });
    group.finish();
}

criterion_group!(benches, tail, batching, encoding);
criterion_main!(benches);
