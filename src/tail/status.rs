//! What a tailer shows about itself in `/api/v1/targets` and the status page (SPEC §8.3).
//!
//! Written by the tailer when its state changes, read by the HTTP server through the registry
//! together with what the target's acknowledgement tracker keeps per chunk.

use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;

use crate::cursor::{AckView, Position, TargetAcks};
use crate::telemetry::TargetsState;

/// A target's life cycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Waiting for the container to start (API answered "waiting to start").
    #[default]
    Waiting,
    /// A stream is open and being read.
    Running,
    /// The last stream failed; reopening after a backoff.
    Backoff,
    /// The pod is gone or the target vanished: reading what is left.
    Draining,
    /// The container terminated for good, or the target was stopped.
    Finished,
}

impl TargetState {
    /// The label value used in `kube_log_relay_targets{state}`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Running => "running",
            TargetState::Backoff => "backoff",
            TargetState::Draining => "draining",
            TargetState::Finished => "finished",
        }
    }
}

impl From<TargetState> for TargetsState {
    fn from(state: TargetState) -> TargetsState {
        match state {
            TargetState::Waiting => TargetsState::Waiting,
            TargetState::Running => TargetsState::Running,
            TargetState::Backoff => TargetsState::Backoff,
            TargetState::Draining => TargetsState::Draining,
            TargetState::Finished => TargetsState::Finished,
        }
    }
}

/// A snapshot of one tailer, as [`TailerStatus::show`] builds it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TailerSnapshot {
    pub state: TargetState,
    /// When the last chunk's first line was read (from the tracker).
    pub last_read: Option<Timestamp>,
    /// The timestamp of the last entry sent (from the tracker).
    pub last_entry_timestamp: Option<Timestamp>,
    pub last_error: Option<String>,
    /// The cursor after the last chunk sent, `since` as RFC 3339 and `skip` (from the tracker).
    pub cursor_since: Option<Timestamp>,
    pub cursor_skip: u64,
    pub container_id: Option<String>,
    /// The position every receiver acknowledged (what positions persist, SPEC §4.4; from the
    /// tracker).
    pub acknowledged: Option<Position>,
    /// Chunks sent and not yet acknowledged (from the tracker).
    pub chunks_in_flight: usize,
    /// Lines and bytes sent (from the tracker).
    pub lines: u64,
    pub bytes: u64,
    pub reconnects: u64,
}

/// What a tailer writes about itself (state changes, errors, a new container instance, stream
/// opens); the rest of its [`TailerSnapshot`] comes from its target's acknowledgement tracker.
#[derive(Clone, Debug, Default)]
pub struct OwnStatus {
    pub state: TargetState,
    pub last_error: Option<String>,
    pub container_id: Option<String>,
    pub reconnects: u64,
}

/// Shared, updatable status of a tailer.
#[derive(Debug, Default)]
pub struct TailerStatus(Mutex<OwnStatus>);

impl TailerStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, OwnStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status as shown: this tailer's own fields, and what its target's acknowledgement
    /// tracker keeps (the position, chunks in flight, totals sent: the tracker's lock is taken
    /// for every chunk anyway, so they are kept there rather than under a second lock).
    pub fn show(&self, acks: &TargetAcks) -> TailerSnapshot {
        let OwnStatus {
            state,
            last_error,
            container_id,
            reconnects,
        } = self.lock().clone();
        let AckView {
            latest,
            acknowledged,
            in_flight,
            sent,
        } = acks.view();
        let cursor = latest.map(|p| p.cursor);
        TailerSnapshot {
            state,
            last_read: sent.last_read.and_then(|at| {
                let ago = jiff::SignedDuration::try_from(at.elapsed()).ok()?;
                Timestamp::now().checked_sub(ago).ok()
            }),
            last_entry_timestamp: sent.last_entry,
            last_error,
            cursor_since: cursor.and_then(|c| Timestamp::from_second(c.since).ok()),
            cursor_skip: cursor.map_or(0, |c| c.skip),
            container_id,
            acknowledged,
            chunks_in_flight: in_flight,
            lines: sent.lines,
            bytes: sent.bytes,
            reconnects,
        }
    }

    /// The state alone (the registry counts states of thousands of tailers every two seconds).
    pub fn state(&self) -> TargetState {
        self.lock().state
    }

    /// The container instance the tailer follows, as last shown.
    pub fn container_id(&self) -> Option<String> {
        self.lock().container_id.clone()
    }

    /// Changes the tailer's own fields in place.
    pub fn update(&self, f: impl FnOnce(&mut OwnStatus)) {
        f(&mut self.lock())
    }
}
