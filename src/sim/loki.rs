//! The simulator's Loki sink (SPEC §6, §8.5): a Loki look-alike that accepts pushes over real HTTP
//! and records what arrived, so tests, benchmarks and the demo can count lines at the far end.
//!
//! It decodes like Loki's distributor: `Content-Type: application/json` is Loki's JSON push
//! format, anything else (normally `application/x-protobuf`) is a snappy *block*-compressed
//! `logproto.PushRequest`. A body that does not decode is answered `400` with the reason, as Loki
//! does. Its answers can be scripted (a queue of responses, a failure window, a delay) to drive
//! the relay's retry policy; a request answered with a non-2xx status is recorded in
//! [`LokiSink::requests`] but its entries are not accepted.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prost::Message as _;
use tokio::sync::Notify;

use crate::logproto;
use crate::target::Labels;

/// Loki's push path.
pub const PUSH_PATH: &str = "/loki/api/v1/push";

/// Largest body accepted: well above any sane `batch_size`, small enough to bound a test's memory.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Largest decompressed push accepted. Loki refuses a message whose decompressed size exceeds its
/// `max_recv_msg_size`; checking snappy's length header before decompressing keeps a 5-byte body
/// claiming 4 GiB from allocating 4 GiB.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

/// A Loki-compatible push endpoint that records every accepted entry. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct LokiSink {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<SinkState>,
    /// Woken after every request, for [`LokiSink::wait_for`].
    changed: Notify,
    /// Set once by [`LokiSink::start`].
    addr: OnceLock<SocketAddr>,
}

#[derive(Default)]
struct SinkState {
    entries: Vec<ReceivedEntry>,
    requests: Vec<RequestRecord>,
    script: VecDeque<Response>,
    failing: Option<(u16, Instant)>,
    delay: Duration,
}

/// A scripted answer to one push request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Value of the `Retry-After` header, if any (seconds or an HTTP date).
    pub retry_after: Option<String>,
    pub body: String,
}

impl Response {
    /// An answer with `status` and a short body naming it.
    pub fn status(status: u16) -> Response {
        Response {
            status,
            retry_after: None,
            body: format!("scripted status {status}"),
        }
    }

    /// The same answer with a `Retry-After` header.
    pub fn with_retry_after(mut self, value: impl Into<String>) -> Response {
        self.retry_after = Some(value.into());
        self
    }
}

/// One entry the sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedEntry {
    /// `X-Scope-OrgID` of the request.
    pub tenant: Option<String>,
    /// The stream's labels, parsed.
    pub labels: BTreeMap<String, String>,
    /// The labels as sent (protobuf), or rendered in Loki's text form (JSON pushes).
    pub labels_text: String,
    pub timestamp: jiff::Timestamp,
    pub line: String,
    /// When the sink accepted the push (wall clock), for latency measurements.
    pub received_at: jiff::Timestamp,
}

/// One push request the sink answered, accepted or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// When the request arrived (before any configured delay).
    pub time: Instant,
    /// The status the sink answered.
    pub status: u16,
    /// `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// Entries the body held (0 when it did not decode); accepted only when `status` is 2xx.
    pub entries: usize,
    /// `Content-Type` as sent.
    pub content_type: Option<String>,
    /// Size of the (compressed) body in bytes.
    pub body_bytes: usize,
    /// Why the body was refused, for `400` answers.
    pub error: Option<String>,
}

impl LokiSink {
    /// A sink that is not listening yet: serve [`LokiSink::router`] yourself or use
    /// [`LokiSink::start`].
    pub fn new() -> LokiSink {
        LokiSink::default()
    }

    /// `POST /loki/api/v1/push` and `GET /ready`, sharing this sink's records.
    pub fn router(&self) -> Router {
        Router::new()
            .route(PUSH_PATH, post(push))
            .route("/ready", get(|| async { "ready\n" }))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Binds `addr` (e.g. `"127.0.0.1:0"`) and serves the sink from a spawned task for as long
    /// as the runtime lives.
    pub async fn start(addr: &str) -> std::io::Result<LokiSink> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let sink = LokiSink::new();
        let local = listener.local_addr()?;
        // A fresh sink: the cell is empty, so this cannot fail.
        let _ = sink.inner.addr.set(local);
        let router = sink.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(error = %e, "loki sink stopped serving");
            }
        });
        Ok(sink)
    }

    /// The address a started sink listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.addr.get().copied()
    }

    /// The full push URL of a started sink: `http://127.0.0.1:PORT/loki/api/v1/push`.
    ///
    /// # Panics
    /// When the sink was not made by [`LokiSink::start`] (a bug in the calling test).
    pub fn url(&self) -> String {
        match self.local_addr() {
            Some(addr) => format!("http://{addr}{PUSH_PATH}"),
            None => {
                panic!("LokiSink::url called on a sink that was not started with LokiSink::start")
            }
        }
    }

    /// Every accepted entry, in arrival order.
    pub fn entries(&self) -> Vec<ReceivedEntry> {
        self.lock().entries.clone()
    }

    /// Every push request, in the order they were answered.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// Queues scripted answers, consumed one per request; once empty, requests are decoded and
    /// answered `204` (or `400`) again.
    pub fn script(&self, responses: Vec<Response>) {
        self.lock().script.extend(responses);
    }

    /// Answers `status` to every request for the next `d` (before the script is consulted).
    pub fn fail_for(&self, status: u16, d: Duration) {
        self.lock().failing = Some((status, Instant::now() + d));
    }

    /// Delays every answer by `d`. A client that gives up during the delay leaves no record,
    /// like Loki cancelling a push whose client went away.
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Waits until `pred` holds for the accepted entries, or `timeout` passes; returns whether
    /// it held. Re-checks after every request, without polling.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&[ReceivedEntry]) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a request landing in between still wakes us.
            changed.as_mut().enable();
            if pred(&self.lock().entries) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return pred(&self.lock().entries);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // A panicking test thread must not hide what the sink recorded from the others.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The push handler: delay, choose the answer, decode, record.
async fn push(
    State(sink): State<LokiSink>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let time = Instant::now();
    let delay = sink.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let tenant = header_text(&headers, "x-scope-orgid");
    let content_type = header_text(&headers, header::CONTENT_TYPE.as_str());
    let decoded = decode_push(content_type.as_deref(), &body, tenant.as_deref());

    let mut state = sink.lock();
    let scripted = match state.failing {
        // Judged at arrival, the instant the record carries, so records and answers agree.
        Some((status, until)) if time < until => Some(Response::status(status)),
        Some(_) => {
            state.failing = None;
            state.script.pop_front()
        }
        None => state.script.pop_front(),
    };
    let mut record = RequestRecord {
        time,
        status: 204,
        tenant,
        entries: decoded.as_ref().map_or(0, Vec::len),
        content_type,
        body_bytes: body.len(),
        error: None,
    };
    let answer = match (scripted, decoded) {
        (Some(r), _) if !(200..300).contains(&r.status) => r,
        (_, Err(e)) => {
            let message = e.to_string();
            record.error = Some(message.clone());
            Response {
                status: 400,
                retry_after: None,
                body: message,
            }
        }
        (scripted, Ok(entries)) => {
            state.entries.extend(entries);
            scripted.unwrap_or(Response {
                status: 204,
                retry_after: None,
                body: String::new(),
            })
        }
    };
    record.status = answer.status;
    state.requests.push(record);
    drop(state);
    sink.inner.changed.notify_waiters();
    into_http(answer)
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn into_http(r: Response) -> axum::response::Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, r.body).into_response();
    if let Some(value) = r.retry_after
        && let Ok(value) = header::HeaderValue::from_str(&value)
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Why a push body was refused (answered `400`, like Loki).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("snappy: {0}")]
    Snappy(String),
    #[error("received message larger than max ({size} vs {max})")]
    TooLarge { size: usize, max: usize },
    #[error("error decoding protobuf push request: {0}")]
    Protobuf(String),
    #[error("error decoding JSON push request: {0}")]
    Json(String),
    #[error("error parsing labels {text:?}: {reason}")]
    Labels { text: String, reason: String },
    #[error("stream {labels}: {reason}")]
    Entry { labels: String, reason: String },
}

/// Decodes a push body by its content type, as Loki's distributor does.
pub fn decode_push(
    content_type: Option<&str>,
    body: &[u8],
    tenant: Option<&str>,
) -> Result<Vec<ReceivedEntry>, PushError> {
    let media_type = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/json") => decode_json(body, tenant),
        _ => decode_protobuf(body, tenant),
    }
}

fn decode_protobuf(body: &[u8], tenant: Option<&str>) -> Result<Vec<ReceivedEntry>, PushError> {
    // The header is a claim, not a fact: refuse it before the decoder allocates that much.
    let size = snap::raw::decompress_len(body).map_err(|e| PushError::Snappy(e.to_string()))?;
    if size > MAX_DECOMPRESSED_BYTES {
        return Err(PushError::TooLarge {
            size,
            max: MAX_DECOMPRESSED_BYTES,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| PushError::Snappy(e.to_string()))?;
    let request = logproto::PushRequest::decode(raw.as_slice())
        .map_err(|e| PushError::Protobuf(e.to_string()))?;
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for stream in request.streams {
        let labels = parse_labels(&stream.labels).map_err(|reason| PushError::Labels {
            text: stream.labels.clone(),
            reason,
        })?;
        for entry in stream.entries {
            let timestamp = entry
                .timestamp
                .ok_or_else(|| entry_error(&stream.labels, "entry without timestamp"))
                .and_then(|t| {
                    jiff::Timestamp::try_from(t)
                        .map_err(|e| entry_error(&stream.labels, &format!("bad timestamp: {e}")))
                })?;
            out.push(ReceivedEntry {
                tenant: tenant.map(str::to_owned),
                labels: labels.clone(),
                labels_text: stream.labels.clone(),
                timestamp,
                line: entry.line,
                received_at: now,
            });
        }
    }
    Ok(out)
}

fn entry_error(labels: &str, reason: &str) -> PushError {
    PushError::Entry {
        labels: labels.to_owned(),
        reason: reason.to_owned(),
    }
}

#[derive(serde::Deserialize)]
struct JsonPush {
    streams: Vec<JsonStream>,
}

#[derive(serde::Deserialize)]
struct JsonStream {
    stream: BTreeMap<String, String>,
    /// `["<unix ns as a string>", "line"]`, optionally with a third structured-metadata object.
    values: Vec<Vec<serde_json::Value>>,
}

fn decode_json(body: &[u8], tenant: Option<&str>) -> Result<Vec<ReceivedEntry>, PushError> {
    let push: JsonPush =
        serde_json::from_slice(body).map_err(|e| PushError::Json(e.to_string()))?;
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for stream in push.streams {
        let labels_text = Labels::from_pairs(stream.stream.clone())
            .as_text()
            .to_owned();
        if let Err(reason) = check_label_set(stream.stream.keys().map(String::as_str)) {
            return Err(PushError::Labels {
                text: labels_text,
                reason,
            });
        }
        for value in stream.values {
            let (timestamp, line) = match value.as_slice() {
                [
                    serde_json::Value::String(ts),
                    serde_json::Value::String(line),
                ]
                | [
                    serde_json::Value::String(ts),
                    serde_json::Value::String(line),
                    _,
                ] => {
                    let timestamp = ts
                        .parse::<i128>()
                        .ok()
                        .and_then(|ns| jiff::Timestamp::from_nanosecond(ns).ok())
                        .ok_or_else(|| {
                            entry_error(
                                &labels_text,
                                &format!("bad timestamp {ts:?}: want unix nanoseconds as a string"),
                            )
                        })?;
                    (timestamp, line.clone())
                }
                _ => {
                    return Err(entry_error(
                        &labels_text,
                        "each value must be [\"<unix ns>\", \"<line>\"] (optionally with a metadata object)",
                    ));
                }
            };
            out.push(ReceivedEntry {
                tenant: tenant.map(str::to_owned),
                labels: stream.stream.clone(),
                labels_text: labels_text.clone(),
                timestamp,
                line,
                received_at: now,
            });
        }
    }
    Ok(out)
}

/// Parses Loki's stream selector text `{a="b", c="d"}` (Go string escapes, backquoted raw
/// strings) into a label map; refuses empty sets, bad names and duplicates as Loki does.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut p = LabelParser {
        chars: text.chars().peekable(),
    };
    p.skip_ws();
    p.expect('{')?;
    let mut labels = BTreeMap::new();
    p.skip_ws();
    if p.eat('}') {
        return finish(p, labels);
    }
    loop {
        p.skip_ws();
        let name = p.name()?;
        p.skip_ws();
        p.expect('=')?;
        p.skip_ws();
        let value = p.string()?;
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("duplicate label name {name:?}"));
        }
        p.skip_ws();
        if p.eat(',') {
            p.skip_ws();
            // Loki's parser tolerates a trailing comma.
            if p.eat('}') {
                break;
            }
            continue;
        }
        p.expect('}')?;
        break;
    }
    finish(p, labels)
}

fn finish(
    mut p: LabelParser<'_>,
    labels: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    p.skip_ws();
    if let Some(c) = p.chars.next() {
        return Err(format!("unexpected {c:?} after the closing brace"));
    }
    check_label_set(labels.keys().map(String::as_str))?;
    Ok(labels)
}

fn check_label_set<'a>(mut names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut any = false;
    for name in names.by_ref() {
        any = true;
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid label name {name:?}: must match [a-zA-Z_][a-zA-Z0-9_]*"
            ));
        }
    }
    if any {
        Ok(())
    } else {
        Err("at least one label pair is required per stream".to_owned())
    }
}

struct LabelParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl LabelParser<'_> {
    fn skip_ws(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    fn eat(&mut self, want: char) -> bool {
        self.chars.next_if_eq(&want).is_some()
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        match self.chars.next() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected {want:?}, found {c:?}")),
            None => Err(format!("expected {want:?}, found the end")),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let mut name = String::new();
        while let Some(c) = self
            .chars
            .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            name.push(c);
        }
        if name.is_empty() {
            return Err(match self.chars.peek() {
                Some(c) => format!("expected a label name, found {c:?}"),
                None => "expected a label name, found the end".to_owned(),
            });
        }
        Ok(name)
    }

    fn string(&mut self) -> Result<String, String> {
        match self.chars.next() {
            Some('"') => self.quoted(),
            Some('`') => {
                let mut out = String::new();
                for c in self.chars.by_ref() {
                    if c == '`' {
                        return Ok(out);
                    }
                    out.push(c);
                }
                Err("unterminated raw string".to_owned())
            }
            Some(c) => Err(format!("expected a quoted label value, found {c:?}")),
            None => Err("expected a quoted label value, found the end".to_owned()),
        }
    }

    /// A Go interpreted string literal after its opening quote.
    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None | Some('\n') => return Err("unterminated quoted string".to_owned()),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let c = self
                        .chars
                        .next()
                        .ok_or_else(|| "unterminated escape".to_owned())?;
                    match c {
                        'a' => out.push('\x07'),
                        'b' => out.push('\x08'),
                        'f' => out.push('\x0c'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'v' => out.push('\x0b'),
                        '\\' | '"' | '\'' => out.push(c),
                        'x' => out.push(self.code_point(2, 16)?),
                        'u' => out.push(self.code_point(4, 16)?),
                        'U' => out.push(self.code_point(8, 16)?),
                        '0'..='7' => {
                            let rest = self.digits(2, 8)?;
                            let v = c.to_digit(8).unwrap_or(0) * 64 + rest;
                            out.push(
                                char::from_u32(v)
                                    .ok_or_else(|| format!("invalid octal escape {v}"))?,
                            );
                        }
                        c => return Err(format!("unknown escape sequence \\{c}")),
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn digits(&mut self, n: usize, radix: u32) -> Result<u32, String> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self
                .chars
                .next()
                .and_then(|c| c.to_digit(radix))
                .ok_or_else(|| format!("escape needs {n} base-{radix} digits"))?;
            v = v * radix + d;
        }
        Ok(v)
    }

    fn code_point(&mut self, n: usize, radix: u32) -> Result<char, String> {
        let v = self.digits(n, radix)?;
        char::from_u32(v).ok_or_else(|| format!("escape {v:#x} is not a valid character"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    const WAIT: Duration = Duration::from_secs(10);

    fn ts(s: i64, ns: i32) -> jiff::Timestamp {
        jiff::Timestamp::new(s, ns).expect("valid timestamp")
    }

    fn protobuf_body(streams: &[(&str, &[(jiff::Timestamp, &str)])]) -> Vec<u8> {
        let request = logproto::PushRequest {
            streams: streams
                .iter()
                .map(|(labels, entries)| logproto::StreamAdapter {
                    labels: (*labels).to_owned(),
                    entries: entries
                        .iter()
                        .map(|(t, line)| logproto::EntryAdapter {
                            timestamp: Some((*t).into()),
                            line: (*line).to_owned(),
                            structured_metadata: Vec::new(),
                        })
                        .collect(),
                    hash: 0,
                })
                .collect(),
        };
        snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .expect("snappy encodes")
    }

    struct Answer {
        status: u16,
        retry_after: Option<String>,
        body: String,
    }

    /// Sends one request through a real socket, the way the relay's client would.
    async fn send(url: &str, method: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .expect("request builds");
        let response = client.request(request).await.expect("sink answers");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn push_protobuf(sink: &LokiSink, tenant: Option<&str>, body: Vec<u8>) -> Answer {
        let mut headers = vec![("content-type", "application/x-protobuf")];
        if let Some(t) = tenant {
            headers.push(("x-scope-orgid", t));
        }
        send(&sink.url(), "POST", &headers, body).await
    }

    #[tokio::test]
    async fn protobuf_snappy_round_trip_through_a_socket() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let body = protobuf_body(&[
            (
                r#"{container="nginx", namespace="default"}"#,
                &[
                    (ts(1_700_000_000, 5), "first"),
                    (ts(1_700_000_000, 5), "second"),
                ],
            ),
            (r#"{app="x\"y"}"#, &[(ts(1_700_000_001, 0), "third")]),
        ]);
        let size = body.len();
        let answer = push_protobuf(&sink, None, body).await;
        assert_eq!(answer.status, 204);

        let entries = sink.entries();
        let lines: Vec<&str> = entries.iter().map(|e| e.line.as_str()).collect();
        assert_eq!(lines, ["first", "second", "third"]);
        assert_eq!(entries[0].timestamp, ts(1_700_000_000, 5));
        assert_eq!(
            entries[0].labels_text,
            r#"{container="nginx", namespace="default"}"#
        );
        assert_eq!(
            entries[0].labels,
            BTreeMap::from([
                ("container".to_owned(), "nginx".to_owned()),
                ("namespace".to_owned(), "default".to_owned()),
            ])
        );
        assert_eq!(entries[2].labels["app"], "x\"y");
        assert_eq!(entries[0].tenant, None);

        let requests = sink.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].status, 204);
        assert_eq!(requests[0].entries, 3);
        assert_eq!(requests[0].body_bytes, size);
        assert_eq!(
            requests[0].content_type.as_deref(),
            Some("application/x-protobuf")
        );
    }

    #[tokio::test]
    async fn a_body_without_content_type_is_protobuf() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "line")])]);
        let answer = send(&sink.url(), "POST", &[], body).await;
        assert_eq!(answer.status, 204);
        assert_eq!(sink.entries().len(), 1);
        assert_eq!(sink.requests()[0].content_type, None);
    }

    #[tokio::test]
    async fn json_push_is_decoded_and_labels_rendered() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let body = r#"{"streams":[{"stream":{"pod":"web-1","job":"default/web"},
            "values":[["1700000000000000001","hello"],["1700000000000000002","world",{"trace_id":"t"}]]}]}"#;
        let answer = send(
            &sink.url(),
            "POST",
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("x-scope-orgid", "team-a"),
            ],
            body.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(answer.status, 204, "{}", answer.body);
        let entries = sink.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, "hello");
        assert_eq!(entries[1].line, "world");
        assert_eq!(entries[1].timestamp, ts(1_700_000_000, 2));
        assert_eq!(
            entries[0].labels_text,
            r#"{job="default/web", pod="web-1"}"#
        );
        assert_eq!(entries[0].tenant.as_deref(), Some("team-a"));
    }

    #[tokio::test]
    async fn bad_snappy_is_answered_400_with_a_reason() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let answer = push_protobuf(&sink, None, b"\xff\xff\xff\xff\xffnot snappy".to_vec()).await;
        assert_eq!(answer.status, 400);
        assert!(answer.body.starts_with("snappy:"), "{}", answer.body);
        assert!(sink.entries().is_empty());
        let requests = sink.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].status, 400);
        assert_eq!(requests[0].error.as_deref(), Some(answer.body.as_str()));
    }

    #[test]
    fn a_snappy_header_claiming_4_gib_is_refused_before_decompressing() {
        // A 5-byte varint header claiming 2^32 - 1 bytes and no data: the decoder would
        // allocate 4 GiB before it found out that nothing follows.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(
            decode_push(Some("application/x-protobuf"), &body, None),
            Err(PushError::TooLarge {
                size: u32::MAX as usize,
                max: MAX_DECOMPRESSED_BYTES
            })
        );
    }

    #[tokio::test]
    async fn an_oversized_decompressed_length_is_answered_400() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let answer = push_protobuf(&sink, None, vec![0xff, 0xff, 0xff, 0xff, 0x0f]).await;
        assert_eq!(answer.status, 400);
        assert_eq!(
            answer.body,
            format!("received message larger than max (4294967295 vs {MAX_DECOMPRESSED_BYTES})")
        );
        assert!(sink.entries().is_empty());
    }

    #[tokio::test]
    async fn bad_json_and_bad_labels_are_answered_400() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let json = [("content-type", "application/json")];
        let answer = send(&sink.url(), "POST", &json, b"{\"streams\":".to_vec()).await;
        assert_eq!(answer.status, 400);
        assert!(answer.body.contains("JSON"), "{}", answer.body);
        let answer = send(
            &sink.url(),
            "POST",
            &json,
            br#"{"streams":[{"stream":{"a":"b"},"values":[[1,"x"]]}]}"#.to_vec(),
        )
        .await;
        assert_eq!(answer.status, 400);
        let body = protobuf_body(&[(r#"{a="b""#, &[(ts(1, 0), "line")])]);
        let answer = push_protobuf(&sink, None, body).await;
        assert_eq!(answer.status, 400);
        assert!(
            answer.body.contains("error parsing labels"),
            "{}",
            answer.body
        );
        assert!(sink.entries().is_empty());
        assert_eq!(sink.requests().len(), 3);
    }

    #[tokio::test]
    async fn scripted_500_records_the_request_but_not_its_entries() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        sink.script(vec![Response::status(500).with_retry_after("3")]);
        let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "line")])]);

        let first = push_protobuf(&sink, None, body.clone()).await;
        assert_eq!(first.status, 500);
        assert_eq!(first.retry_after.as_deref(), Some("3"));
        assert!(sink.entries().is_empty());

        let second = push_protobuf(&sink, None, body).await;
        assert_eq!(second.status, 204);
        assert_eq!(sink.entries().len(), 1);
        let statuses: Vec<u16> = sink.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [500, 204]);
        assert_eq!(sink.requests()[0].entries, 1);
    }

    #[tokio::test]
    async fn scripted_2xx_accepts_the_entries() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        sink.script(vec![Response::status(200)]);
        let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "line")])]);
        assert_eq!(push_protobuf(&sink, None, body).await.status, 200);
        assert_eq!(sink.entries().len(), 1);
    }

    #[tokio::test]
    async fn fail_for_answers_the_status_until_the_window_ends() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        // Long enough that the first push lands inside it even on a loaded machine.
        let window = Duration::from_secs(2);
        // The window opens between these two instants: bounds on both sides hold exactly.
        let started = Instant::now();
        sink.fail_for(503, window);
        let opened = Instant::now();
        let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "line")])]);
        // Retry until accepted, as a client would: the first answer falls inside the window.
        let mut statuses = Vec::new();
        while statuses.last() != Some(&204) {
            assert!(started.elapsed() < WAIT, "the failure window never ended");
            statuses.push(push_protobuf(&sink, None, body.clone()).await.status);
        }
        assert_eq!(statuses[0], 503);
        assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 503));
        assert_eq!(sink.entries().len(), 1);
        let requests = sink.requests();
        let accepted = requests.last().expect("a request");
        assert!(accepted.time.duration_since(started) >= window);
        assert!(
            requests
                .iter()
                .filter(|r| r.status == 503)
                .all(|r| r.time < opened + window),
            "no failure answered after the window"
        );
    }

    #[tokio::test]
    async fn tenant_header_is_recorded_per_entry_and_request() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "x"), (ts(2, 0), "y")])]);
        push_protobuf(&sink, Some("tenant-1"), body.clone()).await;
        push_protobuf(&sink, Some("tenant-2"), body).await;
        let tenants: Vec<Option<String>> = sink.entries().into_iter().map(|e| e.tenant).collect();
        let t = |s: &str| Some(s.to_owned());
        assert_eq!(
            tenants,
            [t("tenant-1"), t("tenant-1"), t("tenant-2"), t("tenant-2")]
        );
        assert_eq!(sink.requests()[1].tenant, t("tenant-2"));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_arrival_and_times_out_otherwise() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        sink.set_delay(Duration::from_millis(50));
        let url = sink.url();
        let pusher = tokio::spawn(async move {
            let body = protobuf_body(&[(r#"{a="b"}"#, &[(ts(1, 0), "x")])]);
            send(&url, "POST", &[], body).await.status
        });
        assert!(sink.wait_for(|e| e.len() == 1, WAIT).await);
        assert_eq!(pusher.await.expect("pusher"), 204);
        assert!(
            !sink
                .wait_for(|e| e.len() == 2, Duration::from_millis(50))
                .await
        );
    }

    #[tokio::test]
    async fn ready_answers_200() {
        let sink = LokiSink::start("127.0.0.1:0").await.expect("sink starts");
        let url = format!("http://{}/ready", sink.local_addr().expect("started"));
        assert_eq!(send(&url, "GET", &[], Vec::new()).await.status, 200);
    }

    #[test]
    fn label_text_parsing() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ok: &[(&str, BTreeMap<String, String>)] = &[
            (r#"{a="b"}"#, map(&[("a", "b")])),
            (r#"{a="b", c="d"}"#, map(&[("a", "b"), ("c", "d")])),
            (r#" { c = "d" ,a="b", } "#, map(&[("a", "b"), ("c", "d")])),
            (r#"{a="x\"y\\z\n"}"#, map(&[("a", "x\"y\\z\n")])),
            (r#"{a="\x41\u00e9\101"}"#, map(&[("a", "AéA")])),
            ("{a=`raw\\n`}", map(&[("a", "raw\\n")])),
            (r#"{_x1="", b="ünï"}"#, map(&[("_x1", ""), ("b", "ünï")])),
        ];
        for (text, want) in ok {
            assert_eq!(parse_labels(text).as_ref(), Ok(want), "{text}");
        }
        let bad = [
            ("", "expected '{'"),
            ("{}", "at least one label pair"),
            (r#"{a="b""#, "found the end"),
            (r#"{a="b"} x"#, "after the closing brace"),
            (r#"{a="b", a="c"}"#, "duplicate label name"),
            (r#"{1a="b"}"#, "invalid label name"),
            (r#"{a=b}"#, "expected a quoted label value"),
            (r#"{a="\q"}"#, "unknown escape"),
            (r#"{a-b="c"}"#, "expected '='"),
        ];
        for (text, want) in bad {
            let err = parse_labels(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    proptest::proptest! {
        /// Any body, under any content type, is decoded or refused: never a panic.
        #[test]
        fn any_body_is_decoded_or_refused(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            content_type in proptest::option::of(proptest::sample::select(vec![
                "application/x-protobuf", "application/json", "application/json; charset=utf-8", "text/plain",
            ])),
        ) {
            let _ = decode_push(content_type, &body, Some("t"));
        }

        /// Whatever length a snappy header claims, more than the limit is refused without
        /// decompressing, and the decoder never allocates more than the limit.
        #[test]
        fn claimed_lengths_beyond_the_limit_are_refused(
            claimed in proptest::num::u64::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut body = Vec::new();
            let mut n = claimed & u64::from(u32::MAX);
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 { body.push(byte); break; }
                body.push(byte | 0x80);
            }
            body.extend_from_slice(&tail);
            let result = decode_push(None, &body, None);
            if claimed & u64::from(u32::MAX) > MAX_DECOMPRESSED_BYTES as u64 {
                let too_large = matches!(result, Err(PushError::TooLarge { .. }));
                proptest::prop_assert!(too_large, "{:?}", result);
            }
        }

        /// Whatever the relay renders with `Labels`, the sink parses back to the same map.
        #[test]
        fn rendered_labels_parse_back(
            pairs in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,8}", "\\PC{0,12}|[\"\\\\\n\t`]{0,4}", 1..6)
        ) {
            let text = Labels::from_pairs(pairs.clone()).as_text().to_owned();
            proptest::prop_assert_eq!(parse_labels(&text), Ok(pairs));
        }
    }
}
