//! The delivery decision: what becomes of each event, as one pure function of what happened to
//! it and how many attempts it has had. Every branch is a unit test below; no server needed.
//!
//! | what happened                                   | attempts left | settlement                        |
//! |-------------------------------------------------|---------------|-----------------------------------|
//! | not a valid event                               | any           | dead letter `invalid_event`       |
//! | delivered again and again without an outcome    | crash allowance used up | dead letter `retries_exhausted` |
//! | handler: permanent error                        | any           | dead letter `permanent`           |
//! | handler: transient error (or trap, deadline)    | yes           | retry                             |
//! | handler: transient error                        | no            | dead letter `retries_exhausted`   |
//! | handled, rows not committed                     | yes           | retry                             |
//! | handled, rows not committed                     | no            | dead letter `insert_failed`       |
//! | handled, rows committed                         | any           | ack                               |
//!
//! "Attempts left" is the host's count (`max_attempts`) for Redis Streams, whose pending list
//! counts deliveries. A source with a retry policy of its own (BullMQ: the job's `attempts` and
//! `backoff`) is never dead-lettered for its count: a transient failure is a retry, and the
//! source decides when to give up.

use crate::dead_letter::DeadLetterKind;
use crate::source::Settlement;

/// Deliveries beyond `max_attempts` that ended with no outcome at all (the host died while
/// handling them each time) before such an entry is dead-lettered anyway.
pub const CRASH_ALLOWANCE: u64 = 2;

/// Whose count says when an event has had enough attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempts {
    /// This is delivery `delivery` of at most `max`.
    Counted { delivery: u64, max: u64 },
    /// The source's own policy decides (BullMQ).
    BySource,
}

impl Attempts {
    fn last(self) -> bool {
        matches!(self, Attempts::Counted { delivery, max } if delivery >= max)
    }
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Read, but not a valid event (why).
    Invalid(&'a str),
    /// Read again: may it go to the plugin?
    Delivered,
    /// The handler failed it.
    Failed { permanent: bool, message: &'a str },
    /// Handled, but its rows did not reach ClickHouse (why).
    NotCommitted(&'a str),
    /// Handled, and every row it made is committed.
    Committed,
}

/// What becomes of the event. `None` only for [`Outcome::Delivered`] when the event goes on to
/// the plugin.
pub fn decide(outcome: Outcome<'_>, attempts: Attempts) -> Option<Settlement> {
    let dead = |kind, error: String| Some(Settlement::DeadLetter { kind, error });
    match outcome {
        Outcome::Invalid(why) => dead(DeadLetterKind::InvalidEvent, why.to_string()),
        Outcome::Delivered => match attempts {
            Attempts::Counted { delivery, max } if delivery > max + CRASH_ALLOWANCE => dead(
                DeadLetterKind::RetriesExhausted,
                format!("delivered {delivery} times without an outcome (the host stopped while handling it each time)"),
            ),
            _ => None,
        },
        Outcome::Failed { permanent: true, message } => dead(DeadLetterKind::Permanent, message.to_string()),
        Outcome::Failed { permanent: false, message } => match attempts {
            Attempts::Counted { delivery, .. } if attempts.last() => {
                dead(DeadLetterKind::RetriesExhausted, format!("failed {delivery} attempts; last error: {message}"))
            }
            _ => Some(Settlement::Retry(message.to_string())),
        },
        Outcome::NotCommitted(why) if attempts.last() => dead(DeadLetterKind::InsertFailed, why.to_string()),
        Outcome::NotCommitted(why) => Some(Settlement::Retry(format!("rows not committed: {why}"))),
        Outcome::Committed => Some(Settlement::Ack),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Attempts = Attempts::Counted { delivery: 1, max: 3 };
    const LAST: Attempts = Attempts::Counted { delivery: 3, max: 3 };
    const BULLMQ: Attempts = Attempts::BySource;

    fn dead(kind: DeadLetterKind, error: &str) -> Option<Settlement> {
        Some(Settlement::DeadLetter { kind, error: error.to_string() })
    }

    #[test]
    fn an_invalid_event_is_dead_lettered_at_once_from_any_source() {
        for a in [FIRST, LAST, BULLMQ] {
            assert_eq!(decide(Outcome::Invalid("no payload"), a), dead(DeadLetterKind::InvalidEvent, "no payload"));
        }
    }

    #[test]
    fn an_event_delivered_again_goes_to_the_plugin_until_the_crash_allowance_is_used_up() {
        assert_eq!(decide(Outcome::Delivered, FIRST), None);
        assert_eq!(decide(Outcome::Delivered, LAST), None);
        let at_allowance = Attempts::Counted { delivery: 3 + CRASH_ALLOWANCE, max: 3 };
        assert_eq!(decide(Outcome::Delivered, at_allowance), None);
        let past = Attempts::Counted { delivery: 4 + CRASH_ALLOWANCE, max: 3 };
        assert_eq!(
            decide(Outcome::Delivered, past),
            dead(
                DeadLetterKind::RetriesExhausted,
                "delivered 6 times without an outcome (the host stopped while handling it each time)"
            )
        );
        // BullMQ counts stalls itself (max_stalled_count).
        assert_eq!(decide(Outcome::Delivered, BULLMQ), None);
    }

    #[test]
    fn a_permanent_handler_error_is_dead_lettered_at_once() {
        for a in [FIRST, LAST, BULLMQ] {
            let o = Outcome::Failed { permanent: true, message: "unknown currency" };
            assert_eq!(decide(o, a), dead(DeadLetterKind::Permanent, "unknown currency"));
        }
    }

    #[test]
    fn a_transient_handler_error_is_retried_until_the_last_attempt() {
        let o = Outcome::Failed { permanent: false, message: "trapped" };
        assert_eq!(decide(o, FIRST), Some(Settlement::Retry("trapped".into())));
        assert_eq!(decide(o, LAST), dead(DeadLetterKind::RetriesExhausted, "failed 3 attempts; last error: trapped"));
        // Past the last attempt too (max_attempts lowered while events were pending).
        let past = Attempts::Counted { delivery: 4, max: 3 };
        assert!(matches!(decide(o, past), Some(Settlement::DeadLetter { kind: DeadLetterKind::RetriesExhausted, .. })));
        // BullMQ's attempts decide: always a retry from here.
        assert_eq!(decide(o, BULLMQ), Some(Settlement::Retry("trapped".into())));
    }

    #[test]
    fn rows_not_committed_are_retried_until_the_last_attempt() {
        let o = Outcome::NotCommitted("connection refused");
        assert_eq!(decide(o, FIRST), Some(Settlement::Retry("rows not committed: connection refused".into())));
        assert_eq!(decide(o, LAST), dead(DeadLetterKind::InsertFailed, "connection refused"));
        assert_eq!(decide(o, BULLMQ), Some(Settlement::Retry("rows not committed: connection refused".into())));
    }

    #[test]
    fn committed_rows_are_acknowledged_whatever_the_attempt() {
        for a in [FIRST, LAST, Attempts::Counted { delivery: 9, max: 3 }, BULLMQ] {
            assert_eq!(decide(Outcome::Committed, a), Some(Settlement::Ack));
        }
    }
}
