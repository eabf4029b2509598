//! The `pods/log` request parameters of each stream (SPEC §5.1).
//!
//! Always `timestamps=true` (the cursor needs them) and `sinceTime` = the cursor's second. The
//! API server truncates `sinceTime` to whole seconds, and kube rounds it *half up* to a second
//! before sending, so the cursor passes whole seconds only: a rounded-up `sinceTime` would lose
//! the lines of the second it skipped.
//!
//! Where a target without a position starts (`[tail] start_from`, SPEC §4.4) is also decided
//! here, as a starting [`Cursor`]:
//! - `beginning`: [`Cursor::BEGINNING`], no `sinceTime` at all (the whole current log).
//! - `"<duration>"`: `sinceTime` = now − duration, rounded down to the second.
//! - `end`: the next whole second after now, and the first request also sends `tailLines=0`,
//!   which makes the kubelet seek to the end of the file (returning nothing old) instead of
//!   scanning the whole file for `sinceTime`, then follow. The cursor still says `sinceTime`, so
//!   every later reconnect is exact; lines stamped in the fraction of a second before the start
//!   are deliberately left out (with a node clock ahead of ours by that much they could reappear
//!   at the first reconnect — a documented limit of "end").

use jiff::Timestamp;
use kube::api::LogParams;

use crate::config::model::StartFrom;
use crate::cursor::Cursor;

/// Which log a stream reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// The running instance, following it.
    Follow,
    /// The running instance, following it, seeking to the end first (`start_from = "end"`,
    /// first stream only).
    FollowFromEnd,
    /// The previous (terminated) instance's remainder, read to its end (SPEC §5.5).
    Previous,
    /// The current instance's remainder without following (it terminated for good, SPEC §5.4).
    Remainder,
}

/// The cursor a target without a stored position starts from.
pub fn start_cursor(start: StartFrom, now: Timestamp) -> Cursor {
    match start {
        StartFrom::Beginning => Cursor::BEGINNING,
        StartFrom::End => Cursor::at(now.as_second().saturating_add(1)),
        StartFrom::Ago(d) => {
            let ago = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            let since = now.as_second().saturating_sub(ago);
            // A subsecond remainder rounds *down* (earlier): never skip a line.
            let since = if d.subsec_nanos() > 0 {
                since - 1
            } else {
                since
            };
            Cursor::at(since.max(0))
        }
    }
}

/// The cursor and the read of a tailer's first stream: a stored position wins whatever
/// `start_from` says (a restart resumes exactly); without one, `start_from` decides.
pub fn first_read(stored: Option<Cursor>, start: StartFrom, now: Timestamp) -> (Cursor, Read) {
    match (stored, start) {
        (Some(cursor), _) => (cursor, Read::Follow),
        (None, StartFrom::End) => (start_cursor(start, now), Read::FollowFromEnd),
        (None, _) => (start_cursor(start, now), Read::Follow),
    }
}

/// The parameters of one `pods/log` request.
pub fn log_params(container: &str, cursor: Cursor, read: Read) -> LogParams {
    LogParams {
        container: Some(container.to_string()),
        follow: matches!(read, Read::Follow | Read::FollowFromEnd),
        limit_bytes: None,
        pretty: false,
        previous: read == Read::Previous,
        since_seconds: None,
        // Second 0 is "the beginning": omit it and let the kubelet return the whole log.
        since_time: (cursor.since > 0)
            .then(|| Timestamp::from_second(cursor.since).ok())
            .flatten(),
        tail_lines: (read == Read::FollowFromEnd).then_some(0),
        timestamps: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ts(s: i64, nanos: i32) -> Timestamp {
        Timestamp::new(s, nanos).unwrap()
    }

    #[test]
    fn start_cursors() {
        let now = ts(1_000, 500_000_000);
        let table = [
            (StartFrom::Beginning, Cursor::BEGINNING),
            (StartFrom::End, Cursor::at(1_001)),
            (StartFrom::Ago(Duration::from_secs(60)), Cursor::at(940)),
            (
                StartFrom::Ago(Duration::from_millis(1_500)),
                Cursor::at(998),
            ),
            (StartFrom::Ago(Duration::from_secs(5_000)), Cursor::at(0)),
        ];
        for (start, want) in table {
            assert_eq!(start_cursor(start, now), want, "{start:?}");
        }
    }

    #[test]
    fn a_stored_position_wins_over_start_from() {
        let now = ts(1_000, 0);
        let stored = Cursor {
            since: 900,
            skip: 4,
        };
        let ago = StartFrom::Ago(Duration::from_secs(10));
        for start in [StartFrom::Beginning, StartFrom::End, ago] {
            assert_eq!(
                first_read(Some(stored), start, now),
                (stored, Read::Follow),
                "{start:?}"
            );
        }
        assert_eq!(
            first_read(None, StartFrom::Beginning, now),
            (Cursor::BEGINNING, Read::Follow)
        );
        assert_eq!(
            first_read(None, StartFrom::End, now),
            (Cursor::at(1_001), Read::FollowFromEnd)
        );
        assert_eq!(first_read(None, ago, now), (Cursor::at(990), Read::Follow));
    }

    #[test]
    fn follow_from_cursor() {
        let p = log_params(
            "nginx",
            Cursor {
                since: 1_700_000_000,
                skip: 3,
            },
            Read::Follow,
        );
        assert_eq!(p.container.as_deref(), Some("nginx"));
        assert!(p.follow && p.timestamps && !p.previous);
        assert_eq!(p.since_time, Some(ts(1_700_000_000, 0)));
        assert_eq!(
            (p.tail_lines, p.limit_bytes, p.since_seconds),
            (None, None, None)
        );
    }

    #[test]
    fn beginning_sends_no_since_time() {
        let p = log_params("c", Cursor::BEGINNING, Read::Follow);
        assert_eq!(p.since_time, None);
    }

    #[test]
    fn end_seeks_with_tail_lines_zero_and_keeps_since() {
        let p = log_params("c", Cursor::at(1_001), Read::FollowFromEnd);
        assert!(p.follow);
        assert_eq!(p.tail_lines, Some(0));
        assert_eq!(p.since_time, Some(ts(1_001, 0)));
    }

    #[test]
    fn previous_and_remainder_do_not_follow() {
        let c = Cursor {
            since: 5_000,
            skip: 1,
        };
        let p = log_params("c", c, Read::Previous);
        assert!(p.previous && !p.follow && p.timestamps);
        assert_eq!(p.since_time, Some(ts(5_000, 0)));
        let p = log_params("c", c, Read::Remainder);
        assert!(!p.previous && !p.follow);
    }
}
