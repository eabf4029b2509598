//! The read cursor: exactly once across reconnects (SPEC §5.3).
//!
//! The kubelet answers `sinceTime=S` with every line of the container's log whose timestamp is
//! `≥ S`, in log order, and `S` has whole-second precision. Many lines share a second (even an
//! exact timestamp), and stdout and stderr lines can appear slightly out of timestamp order. So
//! "the last timestamp we saw" cannot say where to resume: lines sharing it would be lost or
//! repeated.
//!
//! The cursor is `(since, skip)`: reconnect with `sinceTime = since` and discard the first `skip`
//! lines of the new stream. Invariant: **`skip` = the number of already-read lines whose
//! timestamp is `≥ since`.** Because the lines read so far are a prefix of the log, the kubelet's
//! answer to `since` starts with exactly those `skip` lines (the prefix filtered by the same
//! predicate), so skipping them resumes at the first unread line — exactly, for any `since`.
//!
//! To keep `skip` small, [`ReadCursor`] counts lines per second over a short reorder window and
//! moves `since` up to the oldest second of that window. The limit: a line that appears in the
//! log *after* a cut with a timestamp older than `since` (reordered by more than
//! [`REORDER_WINDOW_SECONDS`] behind the newest line read) is filtered out by the kubelet on
//! reconnect and lost. A line reordered that far but read *before* the cut is fine.
//!
//! On reconnect the cursor does not trust its own counts: the `skip` lines it discards are read
//! again, and their timestamps rebuild the per-second counts. So a cursor restored from storage
//! (only `since` and `skip` persisted) is as good as one kept in memory.

use std::collections::VecDeque;

/// How many seconds of per-second line counts the cursor keeps: `since` trails the newest
/// second read by `REORDER_WINDOW_SECONDS - 1`. stdout and stderr go through two pipes into one
/// file, each line stamped by the container runtime when it reads it, so a line is out of order
/// by milliseconds, rarely more; two seconds tolerate a reorder of at least one full second.
/// The cost grows with the window: after a reconnect the kubelet re-sends (and we discard) every
/// line of the window, so a stream cut more often than a window's worth of lines cannot make
/// progress. Two seconds keeps that re-read small for busy containers.
pub const REORDER_WINDOW_SECONDS: i64 = 2;

/// A resumable position in one container instance's log (what positions persist, SPEC §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Unix second to request as `sinceTime`.
    pub since: i64,
    /// Lines to discard at the start of a stream opened with `sinceTime = since`.
    pub skip: u64,
}

impl Cursor {
    /// The beginning of a log: nothing read yet.
    pub const BEGINNING: Cursor = Cursor { since: 0, skip: 0 };

    /// A cursor starting at `since` with nothing read.
    pub fn at(since: i64) -> Cursor {
        Cursor { since, skip: 0 }
    }
}

/// A target's position: the cursor within one container instance's log (SPEC §4.4). The
/// positions store adds the target identity and the time of the update.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// The container instance the cursor belongs to (`None` before it was known).
    pub container_id: Option<std::sync::Arc<str>>,
    pub cursor: Cursor,
}

/// What to do with the next line of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Already read before the reconnect: discard.
    Skip,
    /// New: deliver it.
    Deliver,
}

/// The cursor of the stream being read, fed every line in stream order.
#[derive(Clone, Debug)]
pub struct ReadCursor {
    since: i64,
    /// Lines read per second, for seconds `≥ since`, ascending; at most the window's seconds.
    counts: VecDeque<(i64, u64)>,
    /// Sum of `counts`.
    counted: u64,
    /// Lines still to discard in the current stream (already read, not yet seen again).
    unseen: u64,
    /// Newest second read so far.
    newest: i64,
}

impl ReadCursor {
    /// A cursor resuming at `start` (use [`Cursor::BEGINNING`] for a new log).
    pub fn new(start: Cursor) -> ReadCursor {
        ReadCursor {
            since: start.since,
            counts: VecDeque::new(),
            counted: 0,
            unseen: start.skip,
            newest: start.since,
        }
    }

    /// The position now: where a new stream must start to read nothing twice.
    pub fn position(&self) -> Cursor {
        Cursor {
            since: self.since,
            skip: self.counted + self.unseen,
        }
    }

    /// Starts a new stream: returns the cursor to request; the stream's first `skip` lines will
    /// be answered [`Admit::Skip`] and rebuild the per-second counts.
    pub fn reconnect(&mut self) -> Cursor {
        let position = self.position();
        self.counts.clear();
        self.counted = 0;
        self.unseen = position.skip;
        position
    }

    /// Whether a stream still has lines to discard.
    pub fn skipping(&self) -> bool {
        self.unseen > 0
    }

    /// Takes the next line of the stream (its timestamp's unix second) and says whether to
    /// deliver it. Lines dropped for policy (too long) must pass here too: the kubelet will send
    /// them again, so they count as read.
    pub fn admit(&mut self, second: i64) -> Admit {
        if self.unseen > 0 {
            self.unseen -= 1;
            // A re-read line has `second ≥ since` (the kubelet filtered it so); clamp in case a
            // clock or a log rotation says otherwise, to keep the counts' sum equal to `skip`.
            self.count(second.max(self.since));
            return Admit::Skip;
        }
        if second >= self.since {
            self.count(second);
        }
        // An older line (reordered beyond the window) is delivered but not counted: it is below
        // `since`, so a reconnect will not return it again.
        self.advance();
        Admit::Deliver
    }

    fn count(&mut self, second: i64) {
        self.counted += 1;
        self.newest = self.newest.max(second);
        // Seconds mostly arrive in order: search from the back.
        let mut i = self.counts.len();
        while i > 0 && self.counts[i - 1].0 > second {
            i -= 1;
        }
        if i > 0 && self.counts[i - 1].0 == second {
            self.counts[i - 1].1 += 1;
        } else {
            self.counts.insert(i, (second, 1));
        }
    }

    /// Moves `since` to the oldest second of the window. Never while lines of the stream are
    /// still to be re-seen: their seconds are unknown, so their counts cannot be dropped yet.
    fn advance(&mut self) {
        let floor = self.newest - (REORDER_WINDOW_SECONDS - 1);
        if self.unseen > 0 || floor <= self.since {
            return;
        }
        while let Some(&(second, n)) = self.counts.front() {
            if second >= floor {
                break;
            }
            self.counted -= n;
            self.counts.pop_front();
        }
        self.since = floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The kubelet: every line of `log` whose second is `≥ since`, in log order.
    fn kubelet(log: &[(i64, usize)], since: i64) -> impl Iterator<Item = (i64, usize)> + '_ {
        log.iter().copied().filter(move |&(s, _)| s >= since)
    }

    /// Reads `log` with a cut after each count in `cuts` (lines of the stream, skipped ones
    /// included), reconnecting each time; returns the delivered line ids.
    fn read_with_cuts(log: &[(i64, usize)], cuts: &[usize], start: Cursor) -> Vec<usize> {
        let mut cursor = ReadCursor::new(start);
        let mut delivered = Vec::new();
        let mut cuts = cuts.iter().copied().chain(std::iter::once(usize::MAX));
        loop {
            let request = cursor.reconnect();
            let cut = cuts.next().unwrap_or(usize::MAX);
            let mut cut_short = false;
            for (n, (second, id)) in kubelet(log, request.since).enumerate() {
                if n == cut {
                    cut_short = true;
                    break;
                }
                if cursor.admit(second) == Admit::Deliver {
                    delivered.push(id);
                }
            }
            if !cut_short {
                return delivered;
            }
        }
    }

    #[test]
    fn table_of_positions() {
        // With a window of two seconds, `since` trails the newest second by one.
        assert_eq!(REORDER_WINDOW_SECONDS, 2);
        let mut c = ReadCursor::new(Cursor::BEGINNING);
        let table: &[(i64, Cursor)] = &[
            (100, Cursor { since: 99, skip: 1 }),
            (100, Cursor { since: 99, skip: 2 }),
            (
                101,
                Cursor {
                    since: 100,
                    skip: 3,
                },
            ),
            // Older than `since`: delivered, not counted.
            (
                99,
                Cursor {
                    since: 100,
                    skip: 3,
                },
            ),
            (
                102,
                Cursor {
                    since: 101,
                    skip: 2,
                },
            ),
            // Late but inside the window: counted.
            (
                101,
                Cursor {
                    since: 101,
                    skip: 3,
                },
            ),
            (
                110,
                Cursor {
                    since: 109,
                    skip: 1,
                },
            ),
        ];
        for (second, want) in table {
            assert_eq!(c.admit(*second), Admit::Deliver);
            assert_eq!(c.position(), *want, "after {second}");
        }
    }

    #[test]
    fn reconnect_skips_exactly_the_lines_already_read() {
        let mut c = ReadCursor::new(Cursor::BEGINNING);
        for s in [10, 10, 11] {
            c.admit(s);
        }
        let request = c.reconnect();
        assert_eq!(request, Cursor { since: 10, skip: 3 });
        assert!(c.skipping());
        assert_eq!(c.admit(10), Admit::Skip);
        assert_eq!(c.admit(10), Admit::Skip);
        // While re-seeing, the position stays the same.
        assert_eq!(c.position(), request);
        assert_eq!(c.admit(11), Admit::Skip);
        assert_eq!(c.admit(11), Admit::Deliver);
        assert_eq!(c.position(), Cursor { since: 10, skip: 4 });
    }

    #[test]
    fn restored_cursor_rebuilds_its_counts_from_the_skipped_lines() {
        // Persisted (since 50, skip 3); the lines at 50, 52, 58 were read before.
        let log = [(50, 0), (52, 1), (58, 2), (58, 3), (59, 4)];
        let got = read_with_cuts(&log, &[], Cursor { since: 50, skip: 3 });
        assert_eq!(got, vec![3, 4]);
    }

    #[test]
    fn many_lines_in_one_second_survive_many_cuts() {
        let log: Vec<(i64, usize)> = (0..100).map(|i| (1_000, i)).collect();
        let got = read_with_cuts(&log, &[1, 7, 0, 50, 99, 3], Cursor::BEGINNING);
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn reordering_beyond_the_window_loses_lines_after_a_cut() {
        // The documented limit: a line 10 s older than the newest one read, appearing after
        // the cut, is below `since` and the kubelet does not return it again.
        let log = [(100, 0), (110, 1), (100, 2), (111, 3)];
        assert_eq!(read_with_cuts(&log, &[2], Cursor::BEGINNING), vec![0, 1, 3]);
        // The same reordering read without a cut in the wrong place is complete.
        assert_eq!(
            read_with_cuts(&log, &[3], Cursor::BEGINNING),
            vec![0, 1, 2, 3]
        );
        // And within the window it is exact wherever the cut falls.
        let log = [(100, 0), (101, 1), (100, 2), (101, 3)];
        for cut in 0..4 {
            assert_eq!(
                read_with_cuts(&log, &[cut], Cursor::BEGINNING),
                vec![0, 1, 2, 3]
            );
        }
    }

    /// A log: seconds mostly ascending, many lines per second, some lines (stderr) stamped up
    /// to `REORDER_WINDOW_SECONDS - 1` seconds behind the newest line before them.
    fn log_strategy() -> impl Strategy<Value = Vec<(i64, usize)>> {
        proptest::collection::vec((0i64..3, 0u32..10, 0i64..REORDER_WINDOW_SECONDS), 0..120)
            .prop_map(|steps| {
                let mut now = 1_700_000_000i64;
                steps
                    .into_iter()
                    .enumerate()
                    .map(|(id, (advance, kind, lag))| {
                        now += advance;
                        // One line in ten is a late stderr line.
                        let second = if kind == 0 { now - lag } else { now };
                        (second, id)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn every_line_exactly_once_in_order_across_any_cuts(
            log in log_strategy(),
            cuts in proptest::collection::vec(0usize..40, 0..12),
        ) {
            let got = read_with_cuts(&log, &cuts, Cursor::BEGINNING);
            let want: Vec<usize> = log.iter().map(|&(_, id)| id).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn skip_counts_read_lines_at_or_after_since(log in log_strategy(), k in 0usize..120) {
            let mut c = ReadCursor::new(Cursor::BEGINNING);
            let k = k.min(log.len());
            for &(s, _) in &log[..k] {
                c.admit(s);
            }
            let p = c.position();
            let n = log[..k].iter().filter(|&&(s, _)| s >= p.since).count() as u64;
            prop_assert_eq!(p.skip, n);
            // Bounded memory: at most the window's seconds are counted.
            prop_assert!(c.counts.len() as i64 <= REORDER_WINDOW_SECONDS);
        }
    }
}
