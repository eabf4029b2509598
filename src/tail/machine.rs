//! The tailer's decisions as a pure state machine (SPEC §5.4–§5.6).
//!
//! Like kube-runtime's watcher, the read loop is a thin async shell (`stream.rs`) around
//! [`step`]: the shell performs an [`Action`] (open a stream, look at the pod, sleep, finish),
//! turns what happened into an [`Event`] (the stream ended, failed, the pod says…, a deadline
//! passed) and asks [`step`] what to do next. Everything here is plain data and time is an
//! input, so every rule is a row of the table test below:
//!
//! - A follow stream that ends is followed by a look at the pod ([`Action::Decide`]); one that
//!   ended at once without a new line first waits a backoff, so a server that closes streams
//!   immediately is not hammered. Failures reconnect after jittered exponential backoff, reset
//!   once a stream stayed up a healthy minute (§5.4).
//! - A stream open for `max_stream_lifetime`, or when a reload swapped the client, is reopened
//!   from the cursor, as the same kind of read.
//! - The pod's state ([`Termination`]) decides: reconnect, read the previous instance's
//!   remainder and then follow the new one from its beginning (§5.5; a previous log already
//!   gone means following the new one at once), wait for the container to (re)start, or read
//!   the remainder once more and finish within `terminated_grace` (§5.4: Jobs finish).
//! - A drain (the target vanished, §5.6) keeps an open stream until it ends, reads the
//!   remainder from the cursor when no stream was open, and ends everything at the deadline. A
//!   remainder or previous-instance read is repeated while it still brings new lines (it may
//!   have been cut), and a remainder that fails for a transient reason is retried until the
//!   deadline: the API serves a deleted pod's log during its grace period.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::request::Read;
use super::status::TargetState;
use super::termination::{FinishReason, Termination};

/// A follow stream that ends cleanly sooner than this without a line is reopened after a
/// backoff, not at once, so a server that closes streams immediately is not hammered.
pub const QUICK_END: Duration = Duration::from_secs(1);

/// After a follow stream ended cleanly, how long the shell gives the pod watch to report what
/// happened (a restart, an exit) before deciding on what it last reported. The kubelet ends a
/// follow when the container exits, and the watch may lag behind it: deciding on a stale
/// "running" would reconnect to a new instance with the old instance's cursor.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The tailer's settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_stream_lifetime: Duration,
    pub terminated_grace: Duration,
}

/// What the tailer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Looking at the pod's state to decide what follows.
    Deciding,
    /// A stream of this kind is being opened or read: following, the previous instance's
    /// remainder, or the current instance's remainder.
    Reading(Read),
    /// Sleeping before the next decision: `Backoff` after a failure, `Waiting` while the
    /// container does not run.
    Sleeping(TargetState),
    /// Done: the container finished, the drain ended, or the forwarder is gone.
    Finished,
}

/// Why a stream could not be opened or read, as far as decisions go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 400 "waiting to start": the container has not started (yet).
    Waiting,
    /// 404: the pod (or the previous instance) does not exist.
    NotFound,
    /// Another 400: e.g. no previous terminated instance.
    Rejected,
    /// Anything else (5xx, connection, timeout, read error): try again later.
    Transient,
}

/// What happened, as the shell reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The loop starts; `first` is the read of the first stream (`start_from`).
    Started { first: Read },
    /// The stream asked for by [`Action::Open`] is open (its lifetime starts now).
    Opened,
    /// The server ended the stream after `open_for`; `delivered` new lines were read.
    Ended { delivered: u64, open_for: Duration },
    /// Opening or reading the stream failed.
    Failed(Failure),
    /// The follow stream just opened (or about to be) reads another instance than the cursor's.
    InstanceChanged,
    /// What the pod's state says ([`super::termination::decide`]).
    Pod(Termination),
    /// The pod's state could not be fetched (only where no watch knows it).
    PodUnavailable,
    /// A sleep ended.
    Slept,
    /// The target vanished: drain it (SPEC §5.6).
    DrainRequested,
    /// [`Tail::deadline`] passed.
    DeadlinePassed,
    /// A reload swapped the Kubernetes client.
    ClientChanged,
    /// The forwarder is gone (shutdown).
    ForwarderGone,
}

/// What the shell does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a stream of this kind from the cursor, reset to the beginning first when
    /// `from_beginning` (a new instance, SPEC §5.5).
    Open { read: Read, from_beginning: bool },
    /// Look at the pod's state and report [`Event::Pod`]; with `settle`, first give the pod
    /// watch that long to report a change (see [`SETTLE`]).
    Decide { settle: Option<Duration> },
    /// Sleep a jittered `base`, showing `state`, then report [`Event::Slept`].
    Sleep { base: Duration, state: TargetState },
    /// Carry on with what the shell was doing (keep reading).
    Continue,
    /// Stop: nothing more will be read.
    Finish,
}

/// The state of one tailer's decisions.
#[derive(Clone, Debug)]
pub struct Tail {
    pub phase: Phase,
    /// The instance the cursor belongs to, when known.
    pub container_id: Option<Arc<str>>,
    /// The new instance to follow once the previous one's remainder is read (SPEC §5.5).
    pub restarted_to: Option<Arc<str>>,
    /// When the target must be finished: set by a drain or by a container that finished for
    /// good (`terminated_grace` from then).
    pub drain_deadline: Option<Instant>,
    /// When the open stream is rotated (`max_stream_lifetime` after it opened).
    pub rotate_at: Option<Instant>,
    backoff: Backoff,
    settings: Settings,
}

impl Tail {
    /// A tailer about to start, following `container_id` (from its stored position or
    /// discovery) when known.
    pub fn new(settings: Settings, container_id: Option<Arc<str>>) -> Tail {
        Tail {
            phase: Phase::Deciding,
            container_id,
            restarted_to: None,
            drain_deadline: None,
            rotate_at: None,
            backoff: Backoff::new(settings.min_backoff, settings.max_backoff),
            settings,
        }
    }

    /// Draining: the target vanished or its container finished for good.
    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// The next instant at which [`Event::DeadlinePassed`] is due: the drain deadline, or the
    /// rotation of the open stream.
    pub fn deadline(&self) -> Option<Instant> {
        let rotate = match self.phase {
            Phase::Reading(_) => self.rotate_at,
            _ => None,
        };
        match (self.drain_deadline, rotate) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        }
    }

    fn start_draining(&mut self, now: Instant) {
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(now + self.settings.terminated_grace);
        }
    }

    fn open(&mut self, read: Read) -> Action {
        self.phase = Phase::Reading(read);
        self.rotate_at = None;
        Action::Open {
            read,
            from_beginning: false,
        }
    }

    /// After the previous instance's remainder: follow the new one from its beginning.
    fn follow_new_instance(&mut self) -> Action {
        if let Some(new_id) = self.restarted_to.take() {
            self.container_id = Some(new_id);
        }
        self.phase = Phase::Reading(Read::Follow);
        self.rotate_at = None;
        Action::Open {
            read: Read::Follow,
            from_beginning: true,
        }
    }

    fn sleep(&mut self, state: TargetState) -> Action {
        self.phase = Phase::Sleeping(state);
        Action::Sleep {
            base: self.backoff.next_base(),
            state,
        }
    }

    fn decide(&mut self, settle: Option<Duration>) -> Action {
        self.phase = Phase::Deciding;
        Action::Decide { settle }
    }

    fn finish(&mut self) -> Action {
        self.phase = Phase::Finished;
        Action::Finish
    }
}

/// One step: the state after `event` at `now`, and what the shell does next.
pub fn step(mut tail: Tail, event: Event, now: Instant) -> (Tail, Action) {
    let action = tail.apply(event, now);
    (tail, action)
}

impl Tail {
    /// [`step`] in place.
    pub fn apply(&mut self, event: Event, now: Instant) -> Action {
        if self.phase == Phase::Finished {
            return Action::Finish;
        }
        match event {
            Event::Started { first } => match self.container_id {
                // Without a known instance the first stream could attach to a newer one than
                // the cursor belongs to: look at the pod first.
                None => self.decide(None),
                Some(_) => self.open(first),
            },
            Event::Opened => {
                self.rotate_at = Some(now + self.settings.max_stream_lifetime);
                Action::Continue
            }
            Event::Ended {
                delivered,
                open_for,
            } => self.ended(delivered, open_for),
            Event::Failed(failure) => self.failed(failure),
            Event::InstanceChanged if matches!(self.phase, Phase::Reading(_)) => self.decide(None),
            Event::Pod(termination) if self.phase == Phase::Deciding => self.pod(termination, now),
            Event::PodUnavailable if self.phase == Phase::Deciding => {
                self.sleep(TargetState::Backoff)
            }
            Event::Slept if matches!(self.phase, Phase::Sleeping(_)) => {
                if self.draining() {
                    self.open(Read::Remainder)
                } else {
                    self.decide(None)
                }
            }
            // Reports that do not fit the phase (late or duplicated) change nothing.
            Event::InstanceChanged | Event::Pod(_) | Event::PodUnavailable | Event::Slept => {
                Action::Continue
            }
            Event::DrainRequested => {
                self.start_draining(now);
                match self.phase {
                    // What was left to read when the stream went down.
                    Phase::Sleeping(_) => self.open(Read::Remainder),
                    // An open stream is read until it ends; a decision turns into a remainder.
                    _ => Action::Continue,
                }
            }
            Event::DeadlinePassed => {
                if self.drain_deadline.is_some_and(|d| d <= now) {
                    return self.finish();
                }
                match self.phase {
                    Phase::Reading(read) if self.rotate_at.is_some_and(|r| r <= now) => {
                        self.open(reopened(read))
                    }
                    _ => Action::Continue,
                }
            }
            Event::ClientChanged => match self.phase {
                Phase::Reading(read) => self.open(reopened(read)),
                // The next open uses the new client anyway.
                _ => Action::Continue,
            },
            Event::ForwarderGone => self.finish(),
        }
    }

    fn ended(&mut self, delivered: u64, open_for: Duration) -> Action {
        let Phase::Reading(read) = self.phase else {
            return Action::Continue;
        };
        match read {
            // A non-following read may have been cut too: read again from the cursor until a
            // read brings nothing new (the drain deadline bounds a remainder's re-reads).
            Read::Previous | Read::Remainder if delivered > 0 => self.open(read),
            Read::Previous => self.follow_new_instance(),
            Read::Remainder => self.finish(),
            // A follow stream ending while draining: the container stopped, all was read.
            Read::Follow | Read::FollowFromEnd if self.draining() => self.finish(),
            Read::Follow | Read::FollowFromEnd => {
                self.backoff.stream_ended(open_for);
                if delivered == 0 && open_for < QUICK_END {
                    // Ended at once without a new line (possibly cut again and again before
                    // the `skip` lines were past): decide after a backoff.
                    self.sleep(TargetState::Backoff)
                } else {
                    self.decide(Some(SETTLE))
                }
            }
        }
    }

    fn failed(&mut self, failure: Failure) -> Action {
        let Phase::Reading(read) = self.phase else {
            return Action::Continue;
        };
        match (read, failure) {
            // No previous instance left at the kubelet: follow the new one.
            (Read::Previous, Failure::Rejected | Failure::NotFound) => self.follow_new_instance(),
            // The API may be back before the deadline: a deleted pod's log is served during
            // its grace period.
            (Read::Remainder, Failure::Transient) => self.sleep(TargetState::Draining),
            (Read::Remainder, _) => self.finish(),
            _ if self.draining() => self.open(Read::Remainder),
            (_, Failure::NotFound) => self.decide(None),
            (_, Failure::Waiting) => self.sleep(TargetState::Waiting),
            _ => self.sleep(TargetState::Backoff),
        }
    }

    fn pod(&mut self, termination: Termination, now: Instant) -> Action {
        if self.draining() {
            return self.open(Read::Remainder);
        }
        match termination {
            Termination::Reconnect { container_id } => {
                if self.container_id.is_none() {
                    self.container_id = container_id.map(Arc::from);
                }
                self.open(Read::Follow)
            }
            Termination::Restarted { new_id, .. } => {
                self.restarted_to = Some(Arc::from(new_id));
                self.open(Read::Previous)
            }
            Termination::Waiting => self.sleep(TargetState::Waiting),
            Termination::Finished(FinishReason::PodGone) => self.finish(),
            Termination::Finished(_) => {
                self.start_draining(now);
                self.open(Read::Remainder)
            }
        }
    }
}

/// The read that continues `read` from the cursor: the same, except that a stream that
/// started at the end continues as an ordinary follow (the cursor now says where).
fn reopened(read: Read) -> Read {
    match read {
        Read::FollowFromEnd => Read::Follow,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tail::termination::FinishReason;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn settings() -> Settings {
        Settings {
            min_backoff: S,
            max_backoff: 8 * S,
            max_stream_lifetime: 3600 * S,
            terminated_grace: 10 * S,
        }
    }

    fn open(read: Read) -> Action {
        Action::Open {
            read,
            from_beginning: false,
        }
    }

    const FOLLOW_NEW: Action = Action::Open {
        read: Read::Follow,
        from_beginning: true,
    };

    fn sleep(secs: u32, state: TargetState) -> Action {
        Action::Sleep {
            base: secs * S,
            state,
        }
    }

    fn ended(delivered: u64, open_for: Duration) -> Event {
        Event::Ended {
            delivered,
            open_for,
        }
    }

    fn reconnect() -> Event {
        Event::Pod(Termination::Reconnect {
            container_id: Some("a".into()),
        })
    }

    fn restarted() -> Event {
        Event::Pod(Termination::Restarted {
            previous_id: Some("a".into()),
            new_id: "b".into(),
        })
    }

    fn exited(code: i32) -> Event {
        Event::Pod(Termination::Finished(FinishReason::Terminated {
            exit_code: code,
        }))
    }

    /// Runs `events` (each at `t0 + offset`) from a tailer following `id`, and compares every
    /// action, naming the rule and the step that differs.
    fn run(rule: &str, id: Option<&str>, events: &[(Duration, Event, Action)]) -> Tail {
        let t0 = Instant::now();
        let mut tail = Tail::new(settings(), id.map(Arc::from));
        for (i, (at, event, want)) in events.iter().enumerate() {
            let (next, got) = step(tail, event.clone(), t0 + *at);
            tail = next;
            assert_eq!(&got, want, "{rule}: step {i} ({event:?})");
        }
        tail
    }

    /// A rule, the instance the tailer follows, and its steps: (time, event, expected action).
    type Row = (
        &'static str,
        Option<&'static str>,
        Vec<(Duration, Event, Action)>,
    );

    /// Every rule of SPEC §5.4–§5.6 as a sequence of (time, event, expected action).
    #[test]
    fn rules() {
        use Event::*;
        use Read::*;
        use TargetState::{Backoff, Draining, Waiting};
        let z = Duration::ZERO;
        let settle = Action::Decide {
            settle: Some(SETTLE),
        };
        let decide = Action::Decide { settle: None };
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("a known instance is opened at once", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow))]),
            ("start_from = end seeks to the end first", Some("a"),
                vec![(z, Started { first: FollowFromEnd }, open(FollowFromEnd))]),
            ("an unknown instance is looked up first, then learned", None,
                vec![(z, Started { first: Follow }, decide.clone()), (z, reconnect(), open(Follow))]),
            ("§5.4 a stream that ends after lines: look at the pod (after the watch settles)", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Opened, Action::Continue),
                     (10 * S, ended(5, 10 * S), settle.clone()), (10 * S, reconnect(), open(Follow))]),
            ("§5.4 ended at once without a line: back off before looking", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(0, 10 * MS), sleep(1, Backoff)),
                     (S, Slept, decide.clone()), (S, reconnect(), open(Follow)),
                     (S, ended(0, 10 * MS), sleep(2, Backoff))]),
            ("§5.4 ended slowly without a line: no backoff", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(0, 2 * S), settle.clone())]),
            ("§5.4 failures back off exponentially up to max_backoff", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)),
                     (z, Failed(Failure::Transient), sleep(1, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(2, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(4, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(8, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(8, Backoff))]),
            ("§5.4 a healthy minute resets the backoff", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)),
                     (z, Failed(Failure::Transient), sleep(1, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(2, Backoff)), (z, Slept, decide.clone()), (z, reconnect(), open(Follow)),
                     (z, ended(9, 60 * S), settle.clone()), (z, reconnect(), open(Follow)),
                     (z, Failed(Failure::Transient), sleep(1, Backoff))]),
            ("§5.4 not started yet: wait with backoff", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Failed(Failure::Waiting), sleep(1, Waiting)),
                     (z, Slept, decide.clone()), (z, Event::Pod(Termination::Waiting), sleep(2, Waiting))]),
            ("§5.4 404 while following: look at the pod", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Failed(Failure::NotFound), decide.clone()),
                     (z, Event::Pod(Termination::Finished(FinishReason::PodGone)), Action::Finish)]),
            ("§5.4 the pod cannot be fetched: back off", None,
                vec![(z, Started { first: Follow }, decide.clone()), (z, PodUnavailable, sleep(1, Backoff)),
                     (z, Slept, decide.clone())]),
            ("§5.4 max_stream_lifetime rotates from the cursor", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Opened, Action::Continue),
                     (1800 * S, DeadlinePassed, Action::Continue), (3600 * S, DeadlinePassed, open(Follow))]),
            ("§5.4 a stream from the end rotates into an ordinary follow", Some("a"),
                vec![(z, Started { first: FollowFromEnd }, open(FollowFromEnd)), (z, Opened, Action::Continue),
                     (3600 * S, DeadlinePassed, open(Follow))]),
            ("a reload's new client reopens the same read from the cursor", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ClientChanged, open(Follow)),
                     (z, restarted(), Action::Continue)]),
            ("a reload while reading the previous instance keeps reading it", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(3, 5 * S), settle.clone()),
                     (z, restarted(), open(Previous)), (z, ClientChanged, open(Previous))]),
            ("a new client while sleeping changes nothing", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Failed(Failure::Transient), sleep(1, Backoff)),
                     (z, ClientChanged, Action::Continue), (S, Slept, decide.clone())]),
            ("§5.4 Never / OnFailure exit 0: the remainder once more, then finish", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, exited(0), open(Remainder)), (S, ended(0, S), Action::Finish)]),
            ("§5.4 a Job pod that completed: the remainder, then finish", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, Event::Pod(Termination::Finished(FinishReason::PodCompleted { phase: "Succeeded".into() })), open(Remainder)),
                     (S, ended(0, S), Action::Finish)]),
            ("§5.4 the remainder is re-read while it keeps delivering", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, exited(1), open(Remainder)), (S, ended(7, S), open(Remainder)),
                     (2 * S, ended(2, S), open(Remainder)), (3 * S, ended(0, S), Action::Finish)]),
            ("§5.4 terminated_grace bounds the remainder's re-reads", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, exited(0), open(Remainder)), (z, Opened, Action::Continue), (10 * S, DeadlinePassed, Action::Finish)]),
            ("§5.4 the pod is gone: finish at once", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, Event::Pod(Termination::Finished(FinishReason::PodGone)), Action::Finish)]),
            ("§5.4 a remainder rejected: finish", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, exited(0), open(Remainder)), (z, Failed(Failure::NotFound), Action::Finish)]),
            ("§5.5 restart: the previous instance from the cursor, then the new one from its beginning", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, restarted(), open(Previous)), (z, ended(3, S), open(Previous)),
                     (z, ended(0, S), FOLLOW_NEW)]),
            ("§5.5 the previous log is gone: follow the new instance", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, restarted(), open(Previous)), (z, Failed(Failure::Rejected), FOLLOW_NEW)]),
            ("§5.5 a previous read failing transiently backs off and looks again", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ended(4, 5 * S), settle.clone()),
                     (z, restarted(), open(Previous)), (z, Failed(Failure::Transient), sleep(1, Backoff)),
                     (S, Slept, decide.clone()), (S, restarted(), open(Previous))]),
            ("§5.5 a stream opened on a newer instance: look at the pod first", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, InstanceChanged, decide.clone()),
                     (z, restarted(), open(Previous))]),
            ("§5.6 drain while following: read on until the stream ends", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Opened, Action::Continue),
                     (S, DrainRequested, Action::Continue), (2 * S, ended(50, 2 * S), Action::Finish)]),
            ("§5.6 drain while following: the deadline ends it", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Opened, Action::Continue),
                     (S, DrainRequested, Action::Continue), (5 * S, DeadlinePassed, Action::Continue),
                     (11 * S, DeadlinePassed, Action::Finish)]),
            ("§5.6 a stream failing while draining: the remainder", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, DrainRequested, Action::Continue),
                     (z, Failed(Failure::Transient), open(Remainder))]),
            ("§5.6 drain while in backoff: the remainder from the cursor", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Failed(Failure::Transient), sleep(1, Backoff)),
                     (z, DrainRequested, open(Remainder)), (z, ended(12, S), open(Remainder)),
                     (z, ended(0, S), Action::Finish)]),
            ("§5.6 a remainder failing transiently is retried until the deadline", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, Failed(Failure::Transient), sleep(1, Backoff)),
                     (z, DrainRequested, open(Remainder)), (z, Failed(Failure::Transient), sleep(2, Draining)),
                     (2 * S, Slept, open(Remainder)), (2 * S, Failed(Failure::Transient), sleep(4, Draining)),
                     (10 * S, DeadlinePassed, Action::Finish)]),
            ("§5.6 drain while deciding: the remainder", None,
                vec![(z, Started { first: Follow }, decide.clone()), (z, DrainRequested, Action::Continue),
                     (z, reconnect(), open(Remainder))]),
            ("§5.6 a second drain keeps the first deadline", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, DrainRequested, Action::Continue),
                     (5 * S, DrainRequested, Action::Continue), (10 * S, DeadlinePassed, Action::Finish)]),
            ("the forwarder gone: finish", Some("a"),
                vec![(z, Started { first: Follow }, open(Follow)), (z, ForwarderGone, Action::Finish),
                     (z, reconnect(), Action::Finish)]),
        ];
        for (rule, id, events) in table {
            run(rule, id, &events);
        }
    }

    #[test]
    fn a_restart_moves_the_cursor_to_the_new_instance() {
        let t = run(
            "restart",
            Some("a"),
            &[
                (
                    Duration::ZERO,
                    Event::Started {
                        first: Read::Follow,
                    },
                    open(Read::Follow),
                ),
                (
                    S,
                    ended(1, S),
                    Action::Decide {
                        settle: Some(SETTLE),
                    },
                ),
                (S, restarted(), open(Read::Previous)),
            ],
        );
        assert_eq!(
            t.container_id.as_deref(),
            Some("a"),
            "still reading a's remainder"
        );
        assert_eq!(t.restarted_to.as_deref(), Some("b"));
        let (t, action) = step(t, ended(0, S), Instant::now());
        assert_eq!(action, FOLLOW_NEW);
        assert_eq!(t.container_id.as_deref(), Some("b"));
        assert_eq!(t.restarted_to, None);
    }

    #[test]
    fn deadlines_are_the_nearer_of_rotation_and_drain() {
        let t0 = Instant::now();
        let tail = Tail::new(settings(), Some(Arc::from("a")));
        let (tail, _) = step(
            tail,
            Event::Started {
                first: Read::Follow,
            },
            t0,
        );
        assert_eq!(tail.deadline(), None, "not open yet");
        let (tail, _) = step(tail, Event::Opened, t0);
        assert_eq!(tail.deadline(), Some(t0 + 3600 * S));
        let (tail, _) = step(tail, Event::DrainRequested, t0 + S);
        assert_eq!(tail.deadline(), Some(t0 + 11 * S));
        assert!(tail.draining());
        // Sleeping: no rotation, only the drain deadline.
        let (tail, _) = step(tail, Event::Failed(Failure::Transient), t0 + S);
        let (tail, _) = step(tail, Event::Failed(Failure::Transient), t0 + S);
        assert_eq!(tail.phase, Phase::Sleeping(TargetState::Draining));
        assert_eq!(tail.deadline(), Some(t0 + 11 * S));
    }
}
