//! A followed log over HTTP/1.1, read straight from its connection (SPEC §5.1, §10).
//!
//! Over HTTP/1.1 each followed log holds a connection of its own for its whole life, and its
//! body is a trickle of small chunks: at 5,000 quiet containers, one chunk per line. hyper's
//! HTTP/1.1 client costs such a body a connection task and a channel hand-over per chunk, and
//! its chunked decoder reads each chunk's size line one byte at a time, splitting a `Bytes` off
//! its read buffer for every byte: under callgrind about 40 % of the instructions the relay
//! spent per line in the bench's `fanout`. Here the request is written and the response read
//! by the task that reads the body, the head parsed with `httparse` (what hyper uses), and the
//! chunk framing found with `memchr` in whatever one read brought.
//!
//! Only a `GET` without a body goes this way (kube's `pods/log`); the connection is the log's
//! alone and closes with it — a followed log's connection would not be reused anyway. Every
//! other request, and everything over HTTP/2, stays with hyper.
//!
//! Written here because hyper's client, and those built on it, hand a body over from a
//! connection future through a channel and decode chunk-size lines a byte at a time;
//! `httparse` parses heads only, and no maintained crate reads a chunked body from a socket.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use kube::client::Body;
use tokio::io::AsyncWriteExt;

use super::Stream;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A chunk-size line (with its extensions) or a trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// Room asked for before a read: at first, and for a stream whose reads come back short.
const READ_ROOM: usize = 8 * 1024;
/// The most room asked for: a stream whose reads fill their room doubles it up to this, so a
/// busy stream is read in few large reads (as hyper's adaptive reads do).
const MAX_READ_ROOM: usize = 256 * 1024;
/// Headers a response may have.
const MAX_HEADERS: usize = 100;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a followed log's request failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot send the request: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] std::io::Error),
    #[error("the connection closed {0}")]
    Closed(&'static str),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// Whether `request` is one this module serves: a `GET` without a body.
pub fn serves(request: &Request<Body>) -> bool {
    use hyper::body::Body as _;
    request.method() == http::Method::GET && request.body().is_end_stream()
}

/// Sends `request` (a `GET`, see [`serves`]) on `io` and reads the response's head; the body is
/// read from `io` as the caller polls it. `absolute_form`: the request goes to a forward proxy.
pub async fn send(
    io: Stream,
    request: Request<Body>,
    absolute_form: bool,
) -> Result<Response<StreamBody>, StreamError> {
    let mut io = TokioIo::new(io);
    let head = request_head(&request, absolute_form);
    io.write_all(&head).await.map_err(StreamError::Write)?;
    io.flush().await.map_err(StreamError::Write)?;
    let mut buf = BytesMut::with_capacity(READ_ROOM);
    loop {
        let (response, framing) = loop {
            if let Some(parsed) = parse_head(&mut buf)? {
                break parsed;
            }
            if buf.len() >= MAX_HEAD {
                return Err(StreamError::Malformed(format!(
                    "response head larger than {MAX_HEAD} bytes"
                )));
            }
            if !read_more(&mut io, &mut buf).await? {
                return Err(StreamError::Closed("before the response's head"));
            }
        };
        // An interim answer (`100 Continue`, `103 Early Hints`) precedes the real one.
        if response.status().is_informational() {
            continue;
        }
        let framing = match response.status() {
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED => Framing::Done,
            _ => framing,
        };
        let (parts, ()) = response.into_parts();
        let body = StreamBody {
            io,
            buf,
            room: READ_ROOM,
            decoder: Decoder(framing),
        };
        return Ok(Response::from_parts(parts, body));
    }
}

/// `GET /path HTTP/1.1`, the request's headers, and `Host` if it has none.
fn request_head(request: &Request<Body>, absolute_form: bool) -> Vec<u8> {
    let uri = request.uri();
    let target = if absolute_form {
        uri.to_string()
    } else {
        uri.path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string())
    };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !request.headers().contains_key(http::header::HOST)
        && let Some(authority) = uri.authority()
    {
        head.extend_from_slice(b"host: ");
        head.extend_from_slice(authority.as_str().as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    for (name, value) in request.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The response head at the start of `buf`, if it is all there (it is then taken off `buf`).
fn parse_head(buf: &mut BytesMut) -> Result<Option<(Response<()>, Framing)>, StreamError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(StreamError::Malformed(e.to_string())),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| StreamError::Malformed("no status code".into()))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| StreamError::Malformed(format!("header {:?}: {e}", h.name)))?;
        let value = http::HeaderValue::from_bytes(h.value)
            .map_err(|e| StreamError::Malformed(format!("header {:?}: {e}", h.name)))?;
        map.append(name, value);
    }
    let framing = framing(&map)?;
    buf.advance(len);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some((response, framing)))
}

/// How the body ends, from the response's headers (RFC 9112 §6.3).
fn framing(headers: &HeaderMap) -> Result<Framing, StreamError> {
    let codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|c| !c.is_empty());
    if let Some(last) = codings {
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked(Chunk::Size))
        } else {
            // Any other final coding: the body runs to the connection's close.
            Ok(Framing::UntilClose)
        };
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => Ok(Framing::UntilClose),
        Some(v) => {
            let n = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| StreamError::Malformed(format!("content-length {v:?}")))?;
            if lengths.any(|other| other != v) {
                return Err(StreamError::Malformed("conflicting content-lengths".into()));
            }
            Ok(if n == 0 {
                Framing::Done
            } else {
                Framing::Length(n)
            })
        }
    }
}

/// Reads into `buf`'s spare room; `false` at the end of the connection.
async fn read_more(io: &mut TokioIo<Stream>, buf: &mut BytesMut) -> Result<bool, StreamError> {
    let mut room = READ_ROOM;
    std::future::poll_fn(|cx| poll_read_more(io, buf, &mut room, cx)).await
}

/// Reads into `buf`, with at least `room` bytes of room, which grows while reads fill it and
/// shrinks back when they come back short.
fn poll_read_more(
    io: &mut TokioIo<Stream>,
    buf: &mut BytesMut,
    room: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<bool, StreamError>> {
    buf.reserve(*room);
    let offered = buf.capacity() - buf.len();
    let n =
        ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)).map_err(StreamError::Read)?;
    *room = next_room(*room, n, offered);
    Poll::Ready(Ok(n > 0))
}

/// The room for the next read, after one that read `n` of `offered` bytes.
fn next_room(room: usize, n: usize, offered: usize) -> usize {
    if n >= offered {
        (room * 2).min(MAX_READ_ROOM)
    } else if n < room / 2 {
        (room / 2).max(READ_ROOM)
    } else {
        room
    }
}

/// Where the body is in its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunk),
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Neither: the body ends when the connection does.
    UntilClose,
    Done,
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A response body read from its own connection (see the module's header).
pub struct StreamBody {
    io: TokioIo<Stream>,
    /// Read and not yet decoded.
    buf: BytesMut,
    /// The room the next read asks for ([`next_room`]).
    room: usize,
    decoder: Decoder,
}

/// Finds a body's data in the bytes read so far, by its framing.
#[derive(Debug)]
struct Decoder(Framing);

/// What one step of decoding found in the buffer.
enum Step {
    /// A data frame.
    Data(Bytes),
    /// The state moved on; look again.
    Again,
    /// The buffer holds too little: read more.
    Read,
    /// The body is over.
    End,
}

impl Decoder {
    /// Decodes what `buf` holds, one step, taking what it used off it.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, StreamError> {
        match self.0 {
            Framing::Done => Ok(Step::End),
            Framing::UntilClose => {
                if buf.is_empty() {
                    Ok(Step::Read)
                } else {
                    Ok(Step::Data(buf.split().freeze()))
                }
            }
            Framing::Length(left) => Ok(match take_data(buf, left) {
                None => Step::Read,
                Some((data, 0)) => {
                    self.0 = Framing::Done;
                    Step::Data(data)
                }
                Some((data, left)) => {
                    self.0 = Framing::Length(left);
                    Step::Data(data)
                }
            }),
            Framing::Chunked(chunk) => self.chunked(chunk, buf),
        }
    }

    fn chunked(&mut self, chunk: Chunk, buf: &mut BytesMut) -> Result<Step, StreamError> {
        match chunk {
            Chunk::Size => {
                let Some(size) = line(buf, chunk_size)? else {
                    return Ok(Step::Read);
                };
                let size = size?;
                self.0 = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Again)
            }
            Chunk::Data(left) => Ok(match take_data(buf, left) {
                None => Step::Read,
                Some((data, left)) => {
                    self.0 = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    Step::Data(data)
                }
            }),
            Chunk::DataEnd => {
                let Some(empty) = line(buf, <[u8]>::is_empty)? else {
                    return Ok(Step::Read);
                };
                if !empty {
                    return Err(StreamError::Malformed(
                        "chunk data longer than its size".into(),
                    ));
                }
                self.0 = Framing::Chunked(Chunk::Size);
                Ok(Step::Again)
            }
            Chunk::Trailers => {
                let Some(empty) = line(buf, <[u8]>::is_empty)? else {
                    return Ok(Step::Read);
                };
                // Trailers are not used: skipped up to the empty line that ends the body.
                if empty {
                    self.0 = Framing::Done;
                    return Ok(Step::End);
                }
                Ok(Step::Again)
            }
        }
    }
}

/// Up to `left` bytes of data off the buffer, and how many are left after them; `None` while
/// the buffer is empty.
fn take_data(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    Some((buf.split_to(n).freeze(), left - n as u64))
}

/// `f` of the next line (without its CRLF or LF), taken off the buffer, if it is all there.
fn line<R>(buf: &mut BytesMut, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, StreamError> {
    match memchr::memchr(b'\n', &buf[..]) {
        Some(nl) => {
            let line = &buf[..nl];
            let seen = f(line.strip_suffix(b"\r").unwrap_or(line));
            buf.advance(nl + 1);
            Ok(Some(seen))
        }
        None if buf.len() > MAX_LINE => Err(StreamError::Malformed(format!(
            "a chunk-size or trailer line longer than {MAX_LINE} bytes"
        ))),
        None => Ok(None),
    }
}

/// The size of a chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, StreamError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return Err(StreamError::Malformed(format!(
            "chunk size {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let mut size = 0u64;
    for &b in digits {
        let d = (b as char).to_digit(16).ok_or_else(|| {
            StreamError::Malformed(format!("chunk size {:?}", String::from_utf8_lossy(line)))
        })?;
        size = size * 16 + u64::from(d);
    }
    Ok(size)
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.step(&mut this.buf) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Again) => {}
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::Read) => match ready!(poll_read_more(
                    &mut this.io,
                    &mut this.buf,
                    &mut this.room,
                    cx
                )) {
                    Ok(true) => {}
                    Ok(false) if this.decoder.0 == Framing::UntilClose => {
                        this.decoder.0 = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(false) => {
                        this.decoder.0 = Framing::Done;
                        return Poll::Ready(Some(Err(StreamError::Closed(
                            "before the body's end",
                        )
                        .into())));
                    }
                    Err(e) => {
                        this.decoder.0 = Framing::Done;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Err(e) => {
                    this.decoder.0 = Framing::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.0 == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.0 {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` one after another, as reads would bring them: the data decoded, and
    /// whether the body ended.
    fn decode(framing: Framing, pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), StreamError> {
        let mut decoder = Decoder(framing);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.step(&mut buf)? {
                    Step::Data(d) => data.extend_from_slice(&d),
                    Step::Again => {}
                    Step::Read => break,
                    Step::End => return Ok((data, true)),
                }
            }
        }
        Ok((data, false))
    }

    const CHUNKED: &[u8] =
        b"5\r\nhello\r\n6;name=value\r\n world\r\nA\r\n, 10 bytes\r\n0\r\nExpires: never\r\n\r\n";

    #[test]
    fn a_chunked_body_decodes_the_same_however_the_reads_cut_it() {
        let whole = decode(Framing::Chunked(Chunk::Size), &[CHUNKED]).unwrap();
        assert_eq!(whole, (b"hello world, 10 bytes".to_vec(), true));
        let bytes: Vec<&[u8]> = CHUNKED.chunks(1).collect();
        assert_eq!(
            decode(Framing::Chunked(Chunk::Size), &bytes).unwrap(),
            whole,
            "a byte per read"
        );
        for cut in 1..CHUNKED.len() {
            let (a, b) = CHUNKED.split_at(cut);
            assert_eq!(
                decode(Framing::Chunked(Chunk::Size), &[a, b]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_chunked_body_without_its_last_chunk_has_not_ended() {
        let (data, ended) =
            decode(Framing::Chunked(Chunk::Size), &[b"5\r\nhello\r\n3\r\nab"]).unwrap();
        assert_eq!(data, b"helloab");
        assert!(!ended);
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let (data, ended) = decode(Framing::Chunked(Chunk::Size), &[b"5\nhello\n0\n\n"]).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"hello"[..], true));
    }

    #[test]
    fn malformed_chunk_framing_is_an_error_not_data() {
        let chunked = Framing::Chunked(Chunk::Size);
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"\r\nhello\r\n",
            b"5\r\nhelloXX\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(
                matches!(decode(chunked, &[bad]), Err(StreamError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'1'; MAX_LINE + 1];
        assert!(matches!(
            decode(chunked, &[&endless]),
            Err(StreamError::Malformed(_))
        ));
    }

    #[test]
    fn reads_that_fill_their_room_double_it_up_to_a_bound_and_short_ones_halve_it() {
        assert_eq!(next_room(READ_ROOM, READ_ROOM, READ_ROOM), 2 * READ_ROOM);
        assert_eq!(
            next_room(MAX_READ_ROOM, MAX_READ_ROOM, MAX_READ_ROOM),
            MAX_READ_ROOM
        );
        assert_eq!(next_room(4 * READ_ROOM, 100, 4 * READ_ROOM), 2 * READ_ROOM);
        assert_eq!(
            next_room(READ_ROOM, 100, READ_ROOM),
            READ_ROOM,
            "never below"
        );
        assert_eq!(
            next_room(4 * READ_ROOM, 3 * READ_ROOM, 4 * READ_ROOM),
            4 * READ_ROOM
        );
    }

    #[test]
    fn a_content_length_body_ends_after_its_length() {
        let (data, ended) = decode(Framing::Length(5), &[b"he", b"llo"]).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"hello"[..], true));
        let (data, ended) = decode(Framing::UntilClose, &[b"he", b"llo"]).unwrap();
        assert_eq!(
            (data.as_slice(), ended),
            (&b"hello"[..], false),
            "until the close"
        );
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_gives_the_framing() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"[..]);
        assert!(parse_head(&mut buf).unwrap().is_none(), "partial");
        buf.extend_from_slice(b"Content-Type: text/plain\r\n\r\n5\r\nhello");
        let (response, framing) = parse_head(&mut buf).unwrap().expect("complete");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(framing, Framing::Chunked(Chunk::Size));
        assert_eq!(&buf[..], b"5\r\nhello", "the body's bytes stay");

        let framing_of =
            |head: &[u8]| parse_head(&mut BytesMut::from(head)).map(|p| p.expect("complete").1);
        assert_eq!(
            framing_of(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\n").unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap(),
            Framing::Done
        );
        assert_eq!(
            framing_of(b"HTTP/1.0 200 OK\r\n\r\n").unwrap(),
            Framing::UntilClose
        );
        assert!(matches!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(StreamError::Malformed(_))
        ));
        assert!(matches!(
            framing_of(b"SMTP ready\r\n\r\n"),
            Err(StreamError::Malformed(_))
        ));
    }

    #[test]
    fn the_request_head_is_origin_form_with_a_host_unless_it_goes_to_a_proxy() {
        let request =
            Request::get("http://10.0.0.1:6443/api/v1/namespaces/ns/pods/p/log?follow=true")
                .header("authorization", "Bearer t")
                .body(Body::empty())
                .unwrap();
        assert!(serves(&request));
        let head = String::from_utf8(request_head(&request, false)).unwrap();
        assert_eq!(
            head,
            "GET /api/v1/namespaces/ns/pods/p/log?follow=true HTTP/1.1\r\nhost: 10.0.0.1:6443\r\nauthorization: Bearer t\r\n\r\n"
        );
        let head = String::from_utf8(request_head(&request, true)).unwrap();
        assert!(
            head.starts_with(
                "GET http://10.0.0.1:6443/api/v1/namespaces/ns/pods/p/log?follow=true HTTP/1.1\r\n"
            ),
            "{head}"
        );
        let post = Request::post("http://h/x")
            .body(Body::from(b"{}".to_vec()))
            .unwrap();
        assert!(!serves(&post), "hyper keeps every other request");
    }
}
