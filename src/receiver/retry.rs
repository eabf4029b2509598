//! The retry policy of a push, one pure function (SPEC §6).
//!
//! [`decide`] maps the outcome of one push attempt to what the receiver does next: acknowledge
//! (2xx), retry after a delay (429 when `retry_on_http_429`, 5xx, transport errors), or drop the
//! batch (any other status at once; retryable failures once `max_retries` attempts were made).
//!
//! Choices where SPEC is silent:
//! - `max_retries` counts *attempts*, the first included (as the reference's backoff does):
//!   `max_retries = 10` means at most 10 requests per batch; 0 is treated as 1.
//! - The backoff of attempt `n` (1-based) is `min_backoff · 2^(n-1)` capped at `max_backoff`,
//!   then jittered into `[backoff/2, backoff]` so that replicas which failed together do not
//!   retry together.
//! - `Retry-After` is a floor: the delay is the larger of the jittered backoff and the server's
//!   request, capped at `max_backoff` — the operator's `max_backoff` is the longest a batch
//!   waits, whatever a proxy in front of Loki asks.

use std::time::Duration;

use crate::config::LokiConfig;
use crate::telemetry::SendDrop;

/// What came back from one push attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Loki (or a proxy) answered with this HTTP status and, maybe, a `Retry-After` delay.
    Status(u16, Option<Duration>),
    /// No answer: connection refused or reset, TLS failure, timeout.
    Transport,
}

/// What to do with a batch after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Delivered: finish every chunk.
    Ack,
    /// Send the same batch again after this delay.
    RetryAfter(Duration),
    /// Give up: finish every chunk and count its entries as dropped for this reason
    /// ([`SendDrop::Rejected`] or [`SendDrop::RetriesExhausted`]).
    Drop(SendDrop),
}

/// The knobs of the policy, from `[loki.<name>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Total attempts per batch (the first one included).
    pub max_retries: u32,
    pub retry_on_http_429: bool,
}

impl RetryPolicy {
    /// The policy configured for a receiver.
    pub fn from_config(config: &LokiConfig) -> RetryPolicy {
        RetryPolicy {
            min_backoff: config.min_backoff,
            max_backoff: config.max_backoff,
            max_retries: config.max_retries,
            retry_on_http_429: config.retry_on_http_429,
        }
    }
}

/// Decides what follows attempt number `attempt` (1-based) that ended with `outcome`;
/// `jitter` is a random number in `[0, 1)`.
pub fn decide(outcome: &Outcome, attempt: u32, policy: &RetryPolicy, jitter: f64) -> RetryDecision {
    let retry_after = match *outcome {
        Outcome::Status(code, _) if (200..300).contains(&code) => return RetryDecision::Ack,
        Outcome::Status(429, retry_after) if policy.retry_on_http_429 => retry_after,
        Outcome::Status(code, retry_after) if (500..600).contains(&code) => retry_after,
        Outcome::Status(_, _) => return RetryDecision::Drop(SendDrop::Rejected),
        Outcome::Transport => None,
    };
    if attempt >= policy.max_retries.max(1) {
        return RetryDecision::Drop(SendDrop::RetriesExhausted);
    }
    let delay = next_backoff(attempt, policy, jitter).max(retry_after.unwrap_or_default());
    RetryDecision::RetryAfter(delay.min(policy.max_backoff))
}

/// The jittered exponential backoff after attempt `attempt` (1-based).
pub fn next_backoff(attempt: u32, policy: &RetryPolicy, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base = policy
        .min_backoff
        .saturating_mul(1u32 << doublings.min(31))
        .min(policy.max_backoff);
    let jitter = jitter.clamp(0.0, 1.0);
    base.mul_f64(0.5 + 0.5 * jitter)
}

/// Parses a `Retry-After` header: delay-seconds (`"2"`) or an HTTP date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, relative to `now`; a date in the past means no wait).
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let wait = at.duration_since(now);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy(retry_429: bool) -> RetryPolicy {
        RetryPolicy {
            min_backoff: 500 * MS,
            max_backoff: 10_000 * MS,
            max_retries: 5,
            retry_on_http_429: retry_429,
        }
    }

    #[test]
    fn decisions_by_outcome() {
        use RetryDecision::*;
        let secs = Duration::from_secs;
        // (outcome, attempt, retry_on_http_429, jitter, expected)
        let table = [
            (Outcome::Status(200, None), 1, true, 0.0, Ack),
            (Outcome::Status(204, None), 3, true, 0.0, Ack),
            (
                Outcome::Status(400, None),
                1,
                true,
                0.0,
                Drop(SendDrop::Rejected),
            ),
            (
                Outcome::Status(401, None),
                1,
                true,
                0.0,
                Drop(SendDrop::Rejected),
            ),
            (
                Outcome::Status(413, None),
                1,
                true,
                0.0,
                Drop(SendDrop::Rejected),
            ),
            (
                Outcome::Status(404, Some(secs(1))),
                1,
                true,
                0.0,
                Drop(SendDrop::Rejected),
            ),
            (
                Outcome::Status(302, None),
                1,
                true,
                0.0,
                Drop(SendDrop::Rejected),
            ),
            // 429 retried only when configured; jitter 1.0 = the full backoff.
            (
                Outcome::Status(429, None),
                1,
                true,
                1.0,
                RetryAfter(500 * MS),
            ),
            (
                Outcome::Status(429, None),
                1,
                false,
                1.0,
                Drop(SendDrop::Rejected),
            ),
            (
                Outcome::Status(429, Some(secs(2))),
                1,
                false,
                1.0,
                Drop(SendDrop::Rejected),
            ),
            // Retry-After is a floor over the backoff …
            (
                Outcome::Status(429, Some(secs(2))),
                1,
                true,
                1.0,
                RetryAfter(secs(2)),
            ),
            // … the backoff wins when longer …
            (
                Outcome::Status(429, Some(secs(1))),
                4,
                true,
                1.0,
                RetryAfter(secs(4)),
            ),
            // … and max_backoff caps both.
            (
                Outcome::Status(503, Some(secs(60))),
                1,
                true,
                1.0,
                RetryAfter(secs(10)),
            ),
            (
                Outcome::Status(500, None),
                1,
                true,
                1.0,
                RetryAfter(500 * MS),
            ),
            (
                Outcome::Status(500, None),
                2,
                true,
                1.0,
                RetryAfter(1000 * MS),
            ),
            (
                Outcome::Status(503, None),
                3,
                true,
                1.0,
                RetryAfter(2000 * MS),
            ),
            // jitter 0 halves the delay.
            (
                Outcome::Status(503, None),
                3,
                true,
                0.0,
                RetryAfter(1000 * MS),
            ),
            (Outcome::Transport, 1, true, 1.0, RetryAfter(500 * MS)),
            (Outcome::Transport, 4, true, 0.5, RetryAfter(3000 * MS)),
            // max_retries = 5 attempts in total.
            (
                Outcome::Transport,
                5,
                true,
                0.0,
                Drop(SendDrop::RetriesExhausted),
            ),
            (
                Outcome::Status(500, None),
                5,
                true,
                0.0,
                Drop(SendDrop::RetriesExhausted),
            ),
            (
                Outcome::Status(429, Some(secs(1))),
                6,
                true,
                0.0,
                Drop(SendDrop::RetriesExhausted),
            ),
            // a 2xx on the last attempt is still delivered.
            (Outcome::Status(200, None), 5, true, 0.0, Ack),
        ];
        for (outcome, attempt, retry_429, jitter, expected) in table {
            assert_eq!(
                decide(&outcome, attempt, &policy(retry_429), jitter),
                expected,
                "{outcome:?} attempt {attempt} retry_on_http_429={retry_429}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_max_and_never_overflows() {
        let p = policy(true);
        let delays: Vec<u128> = (1..=8)
            .map(|a| next_backoff(a, &p, 1.0).as_millis())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
        assert_eq!(next_backoff(u32::MAX, &p, 1.0), p.max_backoff);
    }

    #[test]
    fn zero_max_retries_means_one_attempt() {
        let p = RetryPolicy {
            max_retries: 0,
            ..policy(true)
        };
        assert_eq!(
            decide(&Outcome::Transport, 1, &p, 0.3),
            RetryDecision::Drop(SendDrop::RetriesExhausted)
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:28:00Z".parse().unwrap();
        let table = [
            ("2", Some(Duration::from_secs(2))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Wed, 21 Oct 2015 07:28:05 GMT",
                Some(Duration::from_secs(5)),
            ),
            ("Wed, 21 Oct 2015 07:27:00 GMT", Some(Duration::ZERO)),
            ("-3", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in table {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }
}
