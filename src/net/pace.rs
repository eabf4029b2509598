//! Read pacing for connections that carry many small, frequent writes: followed logs.
//!
//! A log stream at a few thousand lines per second arrives as a write every few milliseconds,
//! and each one woke the whole path (the connection's task, the TLS layer, the tailer, the
//! forwarder) for a few lines: the bench's `steady` scenario spent most of its CPU in wake-ups,
//! not in lines. [`Paced`] lets such a connection's bytes gather in the kernel's socket buffer
//! for a moment before reading them: after a read that drained the socket, if the one before it
//! was less than [`PAUSE`] ago and the connection is not busy, the next read waits until
//! [`PAUSE`] has passed. The same bytes then arrive in one read, one frame batch, one chunk.
//!
//! What it never does: delay the first bytes after a quiet spell (a container writing a line a
//! second is read at once), slow a busy connection (one that read [`BUSY`] bytes since its last
//! pause is not paused: more than ~2.5 MB/s, far below what the socket buffer and the HTTP/2
//! windows hold for a pause), or delay writes. A line waits at most [`PAUSE`] longer, against
//! a `batch_wait` of a second.
//!
//! Written here because it is a read policy, not a transport: no crate offers one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// Tokio's clock, so tests drive the pause under paused time.
use tokio::time::{Instant, Sleep};

/// How long a trickling connection's bytes gather before they are read.
pub const PAUSE: Duration = Duration::from_millis(50);

/// Bytes read since the last pause above which a connection is busy and never paused.
pub const BUSY: usize = 128 * 1024;

/// A stream whose reads may be paced (see the module's header); writes pass through.
pub struct Paced<T> {
    io: T,
    /// Pacing is on.
    enabled: bool,
    /// When the last read that returned bytes happened.
    last_read: Option<Instant>,
    /// Bytes read since the last pause ended.
    since_pause: usize,
    /// The pause in progress, if any (the timer is kept to avoid an allocation per pause).
    pause: Option<Pin<Box<Sleep>>>,
    paused: bool,
}

impl<T> Paced<T> {
    /// `io` read as it is, until [`Paced::enable`].
    pub fn new(io: T) -> Paced<T> {
        Paced {
            io,
            enabled: false,
            last_read: None,
            since_pause: 0,
            pause: None,
            paused: false,
        }
    }

    /// Paces the reads from now on.
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    /// After a read of `n` bytes that left `room` unfilled: start a pause if the connection is
    /// trickling.
    fn after_read(&mut self, n: usize, room: usize) {
        if !self.enabled || n == 0 {
            return;
        }
        let now = Instant::now();
        let trickling = self.last_read.is_some_and(|t| now - t < PAUSE);
        self.last_read = Some(now);
        self.since_pause = self.since_pause.saturating_add(n);
        // `room > 0`: the socket had less than asked for, so it is drained for now.
        if room > 0 && trickling && self.since_pause < BUSY {
            let until = now + PAUSE;
            match &mut self.pause {
                Some(sleep) => sleep.as_mut().reset(until),
                None => self.pause = Some(Box::pin(tokio::time::sleep_until(until))),
            }
            self.paused = true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.paused {
            if let Some(sleep) = &mut this.pause {
                ready!(sleep.as_mut().poll(cx));
            }
            this.paused = false;
            this.since_pause = 0;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        this.after_read(n, buf.remaining());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Paced<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads once from `reader` into a buffer of `size`; `None` while it is not ready.
    fn try_read<R: AsyncRead + Unpin>(reader: &mut R, size: usize) -> Option<usize> {
        let mut buf = vec![0; size];
        let read = reader.read(&mut buf);
        let waker = futures::task::noop_waker();
        match std::pin::pin!(read).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => Some(r.unwrap()),
            Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_read_in_one_go_after_the_pause() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let mut reader = Paced::new(reader);
        reader.enable();
        // The first bytes after silence are read at once, and so is the next write; but a read
        // 10 ms after the one before is a trickle: the read after it waits.
        writer.write_all(b"one\n").await.unwrap();
        assert_eq!(try_read(&mut reader, 1024), Some(4));
        tokio::time::advance(Duration::from_millis(10)).await;
        writer.write_all(b"two\n").await.unwrap();
        assert_eq!(try_read(&mut reader, 1024), Some(4), "read at once");
        tokio::time::advance(Duration::from_millis(10)).await;
        writer.write_all(b"three\n").await.unwrap();
        writer.write_all(b"four\n").await.unwrap();
        assert_eq!(try_read(&mut reader, 1024), None, "paused");
        tokio::time::advance(PAUSE / 2).await;
        assert_eq!(try_read(&mut reader, 1024), None, "still paused");
        tokio::time::advance(PAUSE).await;
        assert_eq!(
            try_read(&mut reader, 1024),
            Some(11),
            "both writes in one read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_is_never_paused() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let mut reader = Paced::new(reader);
        reader.enable();
        for _ in 0..5 {
            writer.write_all(b"a line a second\n").await.unwrap();
            assert_eq!(try_read(&mut reader, 1024), Some(16));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_or_filling_read_is_never_paused() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let mut reader = Paced::new(reader);
        reader.enable();
        // Reads that fill their buffer: the socket has more, read on.
        writer.write_all(&[b'x'; 4096]).await.unwrap();
        for _ in 0..4 {
            assert_eq!(try_read(&mut reader, 1024), Some(1024));
        }
        // BUSY bytes since the last pause: frequent small reads are not paced.
        writer.write_all(&vec![b'y'; BUSY]).await.unwrap();
        assert_eq!(try_read(&mut reader, BUSY + 1), Some(BUSY));
        writer.write_all(b"z").await.unwrap();
        assert_eq!(try_read(&mut reader, 16), Some(1), "busy");
        writer.write_all(b"z").await.unwrap();
        assert_eq!(try_read(&mut reader, 16), Some(1), "still busy");
    }

    #[tokio::test(start_paused = true)]
    async fn off_until_enabled_and_writes_pass_through() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut b = Paced::new(b);
        for _ in 0..3 {
            a.write_all(b"x").await.unwrap();
            assert_eq!(try_read(&mut b, 16), Some(1));
        }
        b.write_all(b"back").await.unwrap();
        let mut got = [0; 4];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }
}
