//! Scripted containers and their log files (SPEC §8.5).
//!
//! A container *instance* (one run of a container, a new one after every restart) owns a
//! [`LogFile`]: an append-only list of `(timestamp, stream, text)` lines, like the kubelet's
//! CRI log file. Followers read it by index, so they never miss a line and never hold the lock
//! for long. One writer task per running instance appends the lines its [`LogScript`] makes
//! due, a batch per wake-up (never one timer per line), and sleeps until the next line is due, so
//! thousands of slow containers cost almost nothing.
//!
//! Line text is unique and checkable: `"{namespace}/{pod}/{container} i={instance} n={seq} "`
//! padded to the script's `line_size`, so tests can tell exactly which lines were lost or
//! duplicated, and [`line_text`] can regenerate every line ever written.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use jiff::Timestamp;
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a scripted container writes its log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogScript {
    /// Steady rate in lines per second (0 = silent).
    pub lines_per_sec: f64,
    /// Bytes per line text (at least the unique prefix).
    pub line_size: usize,
    /// After writing that many lines, the container exits with `exit_code`.
    pub total_lines: Option<u64>,
    /// Exit code used when `total_lines` is reached.
    pub exit_code: i32,
    /// Runs of this many consecutive lines share one exact timestamp (0/1 = off).
    pub same_timestamp_run: u32,
    /// Every Nth line goes to stderr with a timestamp up to `reorder_skew` earlier than the
    /// previous line (0 = off).
    pub stderr_every: u32,
    /// The largest backwards step of a stderr line's timestamp.
    pub reorder_skew: Duration,
    /// Write N lines at once every interval, in addition to the rate.
    pub burst: Option<(u32, Duration)>,
}

impl Default for LogScript {
    fn default() -> Self {
        LogScript {
            lines_per_sec: 10.0,
            line_size: 100,
            total_lines: None,
            exit_code: 0,
            same_timestamp_run: 0,
            stderr_every: 0,
            reorder_skew: Duration::ZERO,
            burst: None,
        }
    }
}

/// One container of a simulated pod.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image shown in the pod's spec and status.
    pub image: String,
    /// What the container writes.
    pub script: LogScript,
    /// How long the container stays `waiting` (`ContainerCreating`) before it runs.
    pub start_delay: Duration,
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            name: "app".to_string(),
            image: "registry.local/app:1.0".to_string(),
            script: LogScript::default(),
            start_delay: Duration::ZERO,
        }
    }
}

impl ContainerSpec {
    /// A container with the default script (10 lines/s of 100 bytes).
    pub fn new(name: impl Into<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            ..Default::default()
        }
    }
    /// Sets the image.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = image.into();
        self
    }
    /// Replaces the whole script.
    pub fn script(mut self, script: LogScript) -> Self {
        self.script = script;
        self
    }
    /// Steady rate in lines per second.
    pub fn rate(mut self, lines_per_sec: f64) -> Self {
        self.script.lines_per_sec = lines_per_sec;
        self
    }
    /// Bytes per line text.
    pub fn line_size(mut self, bytes: usize) -> Self {
        self.script.line_size = bytes;
        self
    }
    /// Exit with `exit_code` after `lines` lines.
    pub fn total_lines(mut self, lines: u64, exit_code: i32) -> Self {
        self.script.total_lines = Some(lines);
        self.script.exit_code = exit_code;
        self
    }
    /// Runs of `run` consecutive lines share one timestamp.
    pub fn same_timestamp_run(mut self, run: u32) -> Self {
        self.script.same_timestamp_run = run;
        self
    }
    /// Every `every`th line goes to stderr, up to `skew` earlier than the line before it.
    pub fn stderr_every(mut self, every: u32, skew: Duration) -> Self {
        self.script.stderr_every = every;
        self.script.reorder_skew = skew;
        self
    }
    /// Also write `lines` lines at once every `every`.
    pub fn burst(mut self, lines: u32, every: Duration) -> Self {
        self.script.burst = Some((lines, every));
        self
    }
    /// Stay waiting (`ContainerCreating`) for `delay` before running.
    pub fn start_delay(mut self, delay: Duration) -> Self {
        self.start_delay = delay;
        self
    }
}

/// Which standard stream a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a log file.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When the runtime received it.
    pub timestamp: Timestamp,
    /// Where it was written.
    pub stream: StdStream,
    /// The text, without the newline.
    pub text: Bytes,
}

/// Lines read from a [`LogFile`] by index.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Index of the next line to read.
    pub next: u64,
    /// The file is closed (its instance terminated) and nothing is left after `next`.
    pub finished: bool,
}

struct FileInner {
    lines: VecDeque<LogLine>,
    /// Index of `lines[0]`: lines before it were rotated away.
    base: u64,
    bytes: usize,
    closed: bool,
}

/// The append-only log of one container instance (the kubelet's log file).
pub struct LogFile {
    inner: Mutex<FileInner>,
    /// Bumped on every append and on close, so followers wake without polling.
    changed: watch::Sender<u64>,
    max_bytes: usize,
}

impl LogFile {
    /// An empty file that rotates its oldest lines away beyond `max_bytes` of text.
    pub fn new(max_bytes: usize) -> Self {
        LogFile {
            inner: Mutex::new(FileInner {
                lines: VecDeque::new(),
                base: 0,
                bytes: 0,
                closed: false,
            }),
            changed: watch::Sender::new(0),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, FileInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends lines; returns false (and appends nothing) when the file is closed.
    pub fn append(&self, lines: impl IntoIterator<Item = LogLine>) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        for line in lines {
            inner.bytes += line.text.len();
            inner.lines.push_back(line);
        }
        // Rotation: like the kubelet, what is rotated away can no longer be read (SPEC §9).
        while inner.bytes > self.max_bytes {
            match inner.lines.pop_front() {
                Some(old) => {
                    inner.bytes -= old.text.len();
                    inner.base += 1;
                }
                None => break,
            }
        }
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        true
    }

    /// Closes the file: its instance terminated; followers end once they have read everything.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the file is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Index of the first line still in the file and index after the last one.
    pub fn bounds(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.base, inner.base + inner.lines.len() as u64)
    }

    /// Copies up to `max` lines from index `from` (or the oldest line still there) into `out`.
    pub fn read_from(&self, from: u64, max: usize, out: &mut Vec<LogLine>) -> ReadOutcome {
        let inner = self.lock();
        let start = from.max(inner.base);
        let end = inner.base + inner.lines.len() as u64;
        let take = (end.saturating_sub(start) as usize).min(max);
        let offset = (start - inner.base) as usize;
        out.extend(inner.lines.range(offset..offset + take).cloned());
        let next = start + take as u64;
        ReadOutcome {
            next,
            finished: inner.closed && next == end,
        }
    }

    /// A receiver that changes whenever the file grows or closes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Counters of one container across all its instances (they outlive a deleted pod).
pub struct ContainerStats {
    /// `namespace/pod/container`, the start of every line text.
    pub path: String,
    /// Line size of the script, to regenerate line texts.
    pub line_size: usize,
    /// Number of `pods/log` requests answered 200.
    pub opens: AtomicU64,
    instances: Mutex<Vec<(u32, Arc<AtomicU64>)>>,
    written: watch::Sender<u64>,
}

impl ContainerStats {
    /// Counters for the container at `path` (`namespace/pod/container`).
    pub fn new(path: String, line_size: usize) -> Self {
        ContainerStats {
            path,
            line_size,
            opens: AtomicU64::new(0),
            instances: Mutex::new(Vec::new()),
            written: watch::Sender::new(0),
        }
    }

    fn register(&self, number: u32) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((number, counter.clone()));
        counter
    }

    /// Every line text written by every instance, in write order.
    pub fn written_lines(&self) -> Vec<String> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = Vec::new();
        for (number, count) in instances.iter() {
            for seq in 0..count.load(Ordering::Acquire) {
                let mut buf = BytesMut::new();
                line_text(&mut buf, &self.path, *number, seq, self.line_size);
                lines.push(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        lines
    }

    /// Total lines written by every instance.
    pub fn written_total(&self) -> u64 {
        *self.written.borrow()
    }

    /// A receiver that changes whenever lines are written.
    pub fn subscribe_written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }
}

/// One run of a container: its ID, its log file, and the switch that stops its writer.
pub struct Instance {
    /// The restart count when it started (0 for the first run).
    pub number: u32,
    /// `containerd://<64 hex>`.
    pub container_id: String,
    /// When it started running.
    pub started_at: Timestamp,
    /// Its log.
    pub file: LogFile,
    written: Arc<AtomicU64>,
    stats: Arc<ContainerStats>,
    stop: CancellationToken,
}

impl Instance {
    /// A new running instance with an empty log and a fresh container ID.
    pub fn new(number: u32, stats: Arc<ContainerStats>, max_log_bytes: usize) -> Self {
        let mut rng = rand::rng();
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect();
        let written = stats.register(number);
        Instance {
            number,
            container_id: format!("containerd://{id}"),
            started_at: Timestamp::now(),
            file: LogFile::new(max_log_bytes),
            written,
            stats,
            stop: CancellationToken::new(),
        }
    }

    /// Stops the writer and closes the log: the instance terminated.
    pub fn terminate(&self) {
        self.stop.cancel();
        self.file.close();
    }

    /// Lines written so far by this instance.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }
}

/// Appends the text of line `seq` of instance `instance` to `buf`:
/// `"{path} i={instance} n={seq} "` padded with a filler to `size` bytes.
pub fn line_text(buf: &mut BytesMut, path: &str, instance: u32, seq: u64, size: usize) {
    use std::fmt::Write;
    let start = buf.len();
    // Writing into BytesMut cannot fail.
    let _ = write!(buf, "{path} i={instance} n={seq} ");
    const FILLER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut written = buf.len() - start;
    while written < size {
        let n = (size - written).min(FILLER.len());
        buf.put_slice(&FILLER[..n]);
        written += n;
    }
}

/// How many steady-rate lines are due `elapsed` after the start at `rate` lines per second.
pub fn steady_due(elapsed: Duration, rate: f64) -> u64 {
    if rate <= 0.0 {
        0
    } else {
        (elapsed.as_secs_f64() * rate).floor() as u64
    }
}

/// Makes the timestamps and streams of a script's lines, in write order.
#[derive(Debug)]
pub struct Stamper {
    run: u32,
    stderr_every: u32,
    skew: Duration,
    /// Timestamp of the last stdout line (the monotonic clock of the file).
    last: Option<Timestamp>,
    seq: u64,
}

impl Stamper {
    /// A stamper for `script`.
    pub fn new(script: &LogScript) -> Self {
        Stamper {
            run: script.same_timestamp_run,
            stderr_every: script.stderr_every,
            skew: script.reorder_skew,
            last: None,
            seq: 0,
        }
    }

    /// The timestamp and stream of the next line, written at wall-clock time `now`;
    /// `skew_fraction` in [0, 1] picks how far back a stderr line goes.
    pub fn next(&mut self, now: Timestamp, skew_fraction: f64) -> (Timestamp, StdStream) {
        let seq = self.seq;
        self.seq += 1;
        if self.stderr_every > 0 && (seq + 1).is_multiple_of(u64::from(self.stderr_every)) {
            let prev = self.last.unwrap_or(now);
            let back = self.skew.mul_f64(skew_fraction.clamp(0.0, 1.0));
            let ts = prev.checked_sub(back).unwrap_or(prev);
            return (ts, StdStream::Stderr);
        }
        let ts = match self.last {
            Some(last) if self.run > 1 && !seq.is_multiple_of(u64::from(self.run)) => last,
            // Strictly increasing otherwise, so only the scripted runs share a timestamp.
            Some(last) if now <= last => last
                .checked_add(jiff::SignedDuration::from_nanos(1))
                .unwrap_or(last),
            _ => now,
        };
        self.last = Some(ts);
        (ts, StdStream::Stdout)
    }
}

/// Runs `instance`'s script until it is terminated or has written `total_lines`, then calls
/// `on_done` (only in the latter case: the container exits on its own).
pub async fn run_writer(
    instance: Arc<Instance>,
    script: LogScript,
    on_done: impl FnOnce() + Send + 'static,
) {
    const TICK: Duration = Duration::from_millis(10);
    let start = tokio::time::Instant::now();
    let mut stamper = Stamper::new(&script);
    let mut steady_written = 0u64;
    let mut next_burst = script.burst.map(|(_, every)| start + every.max(TICK));
    let total = script.total_lines.unwrap_or(u64::MAX);
    let mut buf = BytesMut::new();
    let mut lines = Vec::new();
    loop {
        let now = tokio::time::Instant::now();
        let mut due = steady_due(now - start, script.lines_per_sec) - steady_written;
        steady_written += due;
        if let (Some((n, every)), Some(at)) = (script.burst, next_burst.as_mut()) {
            while *at <= now {
                due += u64::from(n);
                *at += every.max(TICK);
            }
        }
        let written = instance.written();
        let due = due.min(total - written);
        if due > 0 {
            let wall = Timestamp::now();
            let mut rng = rand::rng();
            buf.clear();
            let mut ranges = Vec::with_capacity(due as usize);
            for i in 0..due {
                let from = buf.len();
                line_text(
                    &mut buf,
                    &instance.stats.path,
                    instance.number,
                    written + i,
                    script.line_size,
                );
                ranges.push(from..buf.len());
            }
            // One allocation for the whole batch; each line is a slice of it.
            let batch = buf.split().freeze();
            lines.clear();
            for range in ranges {
                let (timestamp, stream) = stamper.next(wall, rng.random::<f64>());
                lines.push(LogLine {
                    timestamp,
                    stream,
                    text: batch.slice(range),
                });
            }
            if !instance.file.append(lines.drain(..)) {
                return;
            }
            instance.written.fetch_add(due, Ordering::AcqRel);
            instance.stats.written.send_modify(|v| *v += due);
        }
        if instance.written() >= total {
            on_done();
            return;
        }
        // Sleep until the next line is due (at least one tick, so lines come in batches).
        let mut wake = None::<tokio::time::Instant>;
        if script.lines_per_sec > 0.0 {
            let next = Duration::from_secs_f64((steady_written + 1) as f64 / script.lines_per_sec);
            wake = Some(start + next);
        }
        if let Some(at) = next_burst {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        let Some(wake) = wake else {
            // Silent: nothing will ever be due; wait to be stopped.
            instance.stop.cancelled().await;
            return;
        };
        let wake = wake.max(now + TICK);
        tokio::select! {
            _ = instance.stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(path: &str, i: u32, n: u64, size: usize) -> String {
        let mut buf = BytesMut::new();
        line_text(&mut buf, path, i, n, size);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn line_text_is_unique_prefix_padded_to_size() {
        let t = text("ns/p/c", 2, 17, 40);
        assert_eq!(t.len(), 40);
        assert!(t.starts_with("ns/p/c i=2 n=17 abc"), "{t}");
        // Never shorter than the unique prefix.
        assert_eq!(text("ns/p/c", 0, 5, 3), "ns/p/c i=0 n=5 ");
        // Longer than the filler pattern.
        assert_eq!(text("a/b/c", 0, 0, 200).len(), 200);
    }

    #[test]
    fn steady_due_counts_whole_lines() {
        for (ms, rate, want) in [
            (0, 10.0, 0),
            (99, 10.0, 0),
            (100, 10.0, 1),
            (1000, 200.0, 200),
            (5000, 0.0, 0),
        ] {
            assert_eq!(
                steady_due(Duration::from_millis(ms), rate),
                want,
                "{ms}ms at {rate}/s"
            );
        }
    }

    #[test]
    fn stamper_makes_runs_of_shared_timestamps() {
        let script = LogScript {
            same_timestamp_run: 3,
            ..Default::default()
        };
        let mut s = Stamper::new(&script);
        let now = Timestamp::from_second(1_000).unwrap();
        let ts: Vec<_> = (0..7).map(|_| s.next(now, 0.0).0).collect();
        assert_eq!(ts[0], ts[1]);
        assert_eq!(ts[1], ts[2]);
        assert!(ts[3] > ts[2]);
        assert_eq!(ts[3], ts[5]);
        assert!(ts[6] > ts[5]);
    }

    #[test]
    fn stamper_without_runs_is_strictly_increasing() {
        let mut s = Stamper::new(&LogScript::default());
        let now = Timestamp::from_second(1_000).unwrap();
        let ts: Vec<_> = (0..5).map(|_| s.next(now, 0.0).0).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    }

    #[test]
    fn stamper_sends_every_nth_line_to_stderr_earlier() {
        let script = LogScript {
            stderr_every: 3,
            reorder_skew: Duration::from_millis(500),
            ..Default::default()
        };
        let mut s = Stamper::new(&script);
        let now = Timestamp::from_second(1_000).unwrap();
        let out: Vec<_> = (0..6).map(|_| s.next(now, 1.0)).collect();
        assert_eq!(out[2].1, StdStream::Stderr);
        assert_eq!(out[5].1, StdStream::Stderr);
        assert_eq!(out[0].1, StdStream::Stdout);
        assert_eq!(
            out[1].0.duration_since(out[2].0),
            jiff::SignedDuration::from_millis(500)
        );
        assert!(out[3].0 > out[1].0);
    }

    #[test]
    fn log_file_reads_by_index_rotates_and_finishes_when_closed() {
        let file = LogFile::new(25);
        let line = |t: &'static str| LogLine {
            timestamp: Timestamp::UNIX_EPOCH,
            stream: StdStream::Stdout,
            text: Bytes::from_static(t.as_bytes()),
        };
        assert!(file.append([line("0123456789"), line("abcdefghij")]));
        let mut out = Vec::new();
        let r = file.read_from(0, 1, &mut out);
        assert_eq!((r.next, r.finished, out.len()), (1, false, 1));
        assert!(file.append([line("klmnopqrst")]));
        // 30 bytes > 25: the oldest line was rotated away.
        assert_eq!(file.bounds(), (1, 3));
        out.clear();
        let r = file.read_from(0, 10, &mut out);
        assert_eq!((r.next, r.finished, out.len()), (3, false, 2));
        file.close();
        assert!(!file.append([line("late")]));
        out.clear();
        let r = file.read_from(3, 10, &mut out);
        assert!(r.finished && out.is_empty());
    }
}
