//! `pods/log` as the body's own frames (SPEC §5.1).
//!
//! kube's `Api::log_stream` hands the body over as an `AsyncBufRead`, which can only be read by
//! copying out of it: one copy, into a fresh allocation, of every byte the relay reads (with
//! the page faults of those allocations, a tenth of the relay's CPU at saturation). The body is
//! already decoded into `Bytes` frames; the tailer cuts its lines out of them and writes each
//! into its chunk before it drops the frame, so the connection's buffer is free for the next
//! read at once. The request, and what an error answer becomes, are kube's own.

use futures::TryStreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::LogParams;
use kube::core::{Request, Status};

/// The frames of a `pods/log` body.
pub type LogFrames = futures::stream::MapErr<
    http_body_util::BodyDataStream<kube::client::Body>,
    fn(kube::Error) -> std::io::Error,
>;

/// Opens `pods/log` of `pod` with `params`: the body's frames, or kube's error for a failed
/// request or an error answer (`Error::Api` with the API server's `Status`).
pub async fn log_frames(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    params: &LogParams,
) -> Result<LogFrames, kube::Error> {
    let mut request = Request::new(Pod::url_path(&(), Some(namespace)))
        .logs(pod, params)
        .map_err(kube::Error::BuildRequest)?;
    request
        .extensions_mut()
        .insert(crate::kube::pool::LogStream);
    let response = client.send(request.map(kube::client::Body::from)).await?;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let body = response.into_body().collect().await?.to_bytes();
        return Err(kube::Error::Api(
            error_status(status.as_u16(), &body).boxed(),
        ));
    }
    Ok(response
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other as fn(kube::Error) -> std::io::Error))
}

/// What an error answer says: its `Status`, or (a proxy's plain text, an HTML page) a failure
/// `Status` carrying the text and the HTTP code, as kube makes it.
fn error_status(code: u16, body: &[u8]) -> Status {
    serde_json::from_slice::<Status>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        Status::failure(text.trim(), "Failed to parse error data").with_code(code)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_keeps_the_api_servers_status_or_its_text_and_code() {
        let json = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"container \"c\" in pod \"p\" is waiting to start: ContainerCreating","reason":"BadRequest","code":400}"#;
        let s = error_status(400, json);
        assert_eq!(s.code, 400);
        assert!(s.message.contains("waiting to start"), "{s:?}");

        let s = error_status(502, b"<html>Bad Gateway</html>\n");
        assert_eq!(s.code, 502);
        assert_eq!(s.message, "<html>Bad Gateway</html>");
    }
}
