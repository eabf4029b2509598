//! Why a log stream could not be opened or read: as the user reads it (status page, logs), as
//! `kube_log_relay_stream_errors_total{kind}` counts it, and as the decisions see it
//! ([`Failure`]).

use crate::telemetry::StreamErrorKind;
use std::time::Duration;

use super::machine::Failure;
use crate::kube::ratelimit::OpenTimedOut;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the container is not running yet: {0}")]
    Waiting(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the API server answered {code}: {message}")]
    Status { code: u16, message: String },
    #[error("cannot open the log stream: {0}")]
    Open(#[source] kube::Error),
    #[error("opening the log stream timed out after {0:?}")]
    Timeout(Duration),
    #[error("reading the log stream failed: {0}")]
    Read(#[source] std::io::Error),
}

impl StreamError {
    /// Classifies an error of `Api::log_stream`.
    pub fn from_kube(e: kube::Error) -> StreamError {
        match e {
            kube::Error::Api(s) if s.code == 400 && is_waiting_message(&s.message) => {
                StreamError::Waiting(s.message)
            }
            kube::Error::Api(s) if s.code == 404 => StreamError::NotFound(s.message),
            kube::Error::Api(s) => StreamError::Status {
                code: s.code,
                message: s.message,
            },
            // The open timeout runs inside the client, once the rate limit let the request go.
            kube::Error::Service(e) => match e.downcast_ref::<OpenTimedOut>() {
                Some(OpenTimedOut(after)) => StreamError::Timeout(*after),
                None => StreamError::Open(kube::Error::Service(e)),
            },
            e => StreamError::Open(e),
        }
    }

    /// The `kind` label of `kube_log_relay_stream_errors_total`.
    pub fn kind(&self) -> StreamErrorKind {
        match self {
            StreamError::Waiting(_) => StreamErrorKind::Waiting,
            StreamError::NotFound(_) => StreamErrorKind::NotFound,
            StreamError::Status { .. } => StreamErrorKind::Status,
            StreamError::Open(_) => StreamErrorKind::Connect,
            StreamError::Timeout(_) => StreamErrorKind::Timeout,
            StreamError::Read(_) => StreamErrorKind::Read,
        }
    }

    /// What the decisions make of it.
    pub fn failure(&self) -> Failure {
        match self {
            StreamError::Waiting(_) => Failure::Waiting,
            StreamError::NotFound(_) => Failure::NotFound,
            StreamError::Status { code: 400, .. } => Failure::Rejected,
            _ => Failure::Transient,
        }
    }
}

/// The API server's 400 answers for a container that has not started (yet):
/// `container "c" in pod "p" is waiting to start: ContainerCreating`, `… PodInitializing`.
fn is_waiting_message(message: &str) -> bool {
    message.contains("is waiting to start")
        || message.contains("ContainerCreating")
        || message.contains("PodInitializing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_messages_are_recognised() {
        for m in [
            r#"container "c" in pod "p" is waiting to start: ContainerCreating"#,
            r#"container "c" in pod "p" is waiting to start: PodInitializing"#,
        ] {
            assert!(is_waiting_message(m), "{m}");
        }
        assert!(!is_waiting_message(
            r#"previous terminated container "c" in pod "p" not found"#
        ));
    }

    #[test]
    fn api_errors_are_classified() {
        let status = |code: u16, msg: &str| {
            kube::Error::Api(
                kube::core::Status::failure(msg, "BadRequest")
                    .with_code(code)
                    .boxed(),
            )
        };
        let e = StreamError::from_kube(status(
            400,
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating",
        ));
        assert_eq!(
            (e.kind().as_str(), e.failure()),
            ("waiting", Failure::Waiting)
        );
        let e = StreamError::from_kube(status(404, "pods \"p\" not found"));
        assert_eq!(
            (e.kind().as_str(), e.failure()),
            ("not_found", Failure::NotFound)
        );
        let e = StreamError::from_kube(status(400, "previous terminated container not found"));
        assert_eq!(
            (e.kind().as_str(), e.failure()),
            ("status", Failure::Rejected)
        );
        let e = StreamError::from_kube(status(500, "boom"));
        assert_eq!(
            (e.kind().as_str(), e.failure()),
            ("status", Failure::Transient)
        );
        let timeout = kube::Error::Service(Box::new(OpenTimedOut(Duration::from_secs(30))));
        let e = StreamError::from_kube(timeout);
        assert_eq!(
            (e.kind().as_str(), e.failure()),
            ("timeout", Failure::Transient)
        );
    }
}
