//! Copies of a received message that `mq` publishes again: a retry, a dead
//! letter, a replay from a dead-letter destination.
//!
//! Every backend builds its copies here, so these rules hold in one place:
//! - the copy keeps the `mq` message id, payload, key, content type and the
//!   application's headers (application-level deduplication still sees the
//!   same message);
//! - the copy gets a fresh broker deduplication id
//!   ([`Message::dedup_id`]): a FIFO queue that remembers the original's id
//!   never swallows the copy (which would lose the message once the original
//!   is removed);
//! - times are computed with checked arithmetic ([`crate::time`]);
//! - a dead-letter copy that would exceed the destination's size limit is cut
//!   to fit ([`fit_to_size`]): the reason headers shrink first, and
//!   `mq-truncated` says how much was removed. A copy that cannot fit even
//!   without them is an error, and the caller returns the original to the
//!   broker instead of dropping it.

use std::time::{Duration, SystemTime};

use crate::delivery::{unix_millis, Received};
use crate::error::{Error, Result};
use crate::message::{headers, new_message_id, Message};

/// The copy that redelivers `received` as the next attempt: `mq-attempt` is
/// one more than this delivery's, and with a non-zero `delay` it carries
/// `mq-not-before` (honoured only on `mq`'s own retry destinations).
pub fn retry_copy(received: &Received, delay: Option<Duration>) -> Message {
    let mut m = fresh_copy(received);
    let h = m.headers_mut();
    h.insert(
        headers::ATTEMPT,
        received.attempt().saturating_add(1).to_string(),
    );
    h.remove(headers::NOT_BEFORE);
    if let Some(d) = delay.filter(|d| !d.is_zero()) {
        h.insert(
            headers::NOT_BEFORE,
            unix_millis(crate::time::system_time_after(d)).to_string(),
        );
    }
    m
}

/// The copy that goes to the dead-letter destination: the reason, the
/// original source and group, the attempt and the time. A reason from an
/// earlier dead-lettering (a replayed message that failed again) moves to
/// `mq-previous-reasons`, so the history stays readable.
pub fn dead_letter_copy(received: &Received, reason: &str) -> Message {
    let mut m = fresh_copy(received);
    let h = m.headers_mut();
    h.remove(headers::NOT_BEFORE);
    h.remove(headers::TRUNCATED);
    if let Some(earlier) = h.remove(headers::DEAD_LETTER_REASON) {
        let history = match h.remove(headers::PREVIOUS_REASONS) {
            Some(older) => format!("{older}\n{earlier}"),
            None => earlier,
        };
        h.insert(headers::PREVIOUS_REASONS, history);
    }
    h.insert(headers::DEAD_LETTER_REASON, reason);
    h.insert(headers::ORIGINAL_SOURCE, received.source().to_owned());
    match received.group() {
        Some(g) => h.insert(headers::ORIGINAL_GROUP, g.to_owned()),
        None => h.remove(headers::ORIGINAL_GROUP),
    };
    h.insert(headers::ATTEMPT, received.attempt().to_string());
    h.insert(
        headers::DEAD_LETTERED_AT,
        unix_millis(SystemTime::now()).to_string(),
    );
    m
}

/// The copy that replays a dead letter to its source (or elsewhere): the
/// dead-letter headers stay (a replayed message that fails again is
/// recognisable), `mq-replayed` counts the replays, and the attempt count
/// starts again at 1.
pub fn replay_copy(received: &Received) -> Message {
    let mut m = fresh_copy(received);
    let h = m.headers_mut();
    let replayed = h
        .get(headers::REPLAYED)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    h.insert(headers::REPLAYED, replayed.to_string());
    h.remove(headers::ATTEMPT);
    h.remove(headers::NOT_BEFORE);
    h.remove(headers::DLQ_SCAN);
    m
}

/// The copy that moves a dead letter to the back of its queue during a
/// listing (SQS FIFO, see
/// [`RotatingReader`](crate::dead_letter_reader::RotatingReader)): unchanged
/// but for the fresh broker deduplication id and the scan's mark.
pub fn relist_copy(received: &Received, scan: &str) -> Message {
    let mut m = fresh_copy(received);
    m.headers_mut().insert(headers::DLQ_SCAN, scan);
    m
}

/// Where `received` was dead-lettered from, if it is a dead letter `mq` wrote.
pub fn original_source(received: &Received) -> Option<&str> {
    received.headers().get(headers::ORIGINAL_SOURCE)
}

/// `message` cut to at most `max` bytes of [`Message::encoded_len`]: the
/// dead-letter reason, then the earlier reasons shrink (at character
/// boundaries), and `mq-truncated` records how many bytes were removed.
/// Payload, id and the application's headers are never touched: if they
/// alone exceed `max`, the result is a [`TooLarge`](crate::ErrorKind::TooLarge)
/// error and the caller must return the original to its broker.
///
/// Backends whose wire format adds overhead (framing, base64) pass their
/// limit minus that overhead.
pub fn fit_to_size(mut message: Message, max: usize) -> Result<Message> {
    let len = message.encoded_len();
    if len <= max {
        return Ok(message);
    }
    // Room for the `mq-truncated` header itself (name + up to 20 digits).
    let marker = headers::TRUNCATED.len() + 20;
    let mut excess = len.saturating_sub(max).saturating_add(
        marker
            - message
                .headers()
                .get(headers::TRUNCATED)
                .map_or(0, str::len),
    );
    let mut removed = 0usize;
    for name in [headers::PREVIOUS_REASONS, headers::DEAD_LETTER_REASON] {
        if excess == 0 {
            break;
        }
        let Some(value) = message.headers_mut().remove(name) else {
            continue;
        };
        let keep = floor_char_boundary(&value, value.len().saturating_sub(excess));
        let cut = value.len() - keep;
        excess -= cut.min(excess);
        removed += cut;
        message.headers_mut().insert(name, value[..keep].to_owned());
    }
    if removed > 0 {
        message
            .headers_mut()
            .insert(headers::TRUNCATED, removed.to_string());
    }
    if message.encoded_len() > max {
        return Err(Error::too_large(
            message.encoded_len(),
            max,
            "the destination's size limit (with the dead-letter reason removed)",
        ));
    }
    Ok(message)
}

/// A copy with a fresh broker deduplication id (see the module docs).
fn fresh_copy(received: &Received) -> Message {
    received.to_message().with_dedup_id(new_message_id())
}

/// The largest index `<= at` that is a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn received(attempt: u32) -> Received {
        Received::new(
            "jobs",
            Message::new("payload")
                .with_id("id-1")
                .with_header("tenant", "acme"),
            attempt,
        )
        .with_group(Some("billing"))
    }

    #[test]
    fn copies_keep_the_id_but_never_the_broker_dedup_id() {
        let r = received(2);
        let copies = [
            retry_copy(&r, None),
            dead_letter_copy(&r, "boom"),
            replay_copy(&r),
        ];
        let mut dedup_ids: Vec<&str> = copies.iter().map(Message::dedup_id).collect();
        for c in &copies {
            assert_eq!(c.id(), "id-1");
            assert_eq!(c.headers().get("tenant"), Some("acme"));
            assert_ne!(
                c.dedup_id(),
                r.id(),
                "a copy must not reuse the FIFO dedup id"
            );
        }
        dedup_ids.sort_unstable();
        dedup_ids.dedup();
        assert_eq!(dedup_ids.len(), 3, "every copy has its own dedup id");
        // A second dead-lettering of the same delivery differs again.
        assert_ne!(
            dead_letter_copy(&r, "x").dedup_id(),
            dead_letter_copy(&r, "x").dedup_id()
        );
    }

    #[test]
    fn retry_copy_counts_attempts_and_clamps_delay() {
        let r = received(u32::MAX);
        let m = retry_copy(&r, Some(Duration::MAX));
        assert_eq!(
            m.headers().get(headers::ATTEMPT),
            Some(&*u32::MAX.to_string())
        );
        let nb: u64 = m
            .headers()
            .get(headers::NOT_BEFORE)
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        assert!(nb > unix_millis(SystemTime::now()));
        let m = retry_copy(&received(1), None);
        assert_eq!(m.headers().get(headers::ATTEMPT), Some("2"));
        assert_eq!(m.headers().get(headers::NOT_BEFORE), None);
    }

    #[test]
    fn dead_letter_again_keeps_the_earlier_reasons() {
        let first = dead_letter_copy(&received(3), "550 mailbox full");
        let replayed = replay_copy(&Received::new("jobs-dlq", first, 1));
        assert_eq!(replayed.headers().get(headers::REPLAYED), Some("1"));
        let again = dead_letter_copy(&Received::new("jobs", replayed, 1), "timeout");
        let h = again.headers();
        assert_eq!(h.get(headers::DEAD_LETTER_REASON), Some("timeout"));
        assert_eq!(h.get(headers::PREVIOUS_REASONS), Some("550 mailbox full"));
        assert_eq!(h.get(headers::REPLAYED), Some("1"));
    }

    #[test]
    fn fit_cuts_the_reason_and_says_so() {
        let m = dead_letter_copy(&received(1), &"é".repeat(300));
        let max = m.encoded_len() - 200;
        let fitted = fit_to_size(m, max).expect("fits once cut");
        assert!(fitted.encoded_len() <= max);
        assert!(fitted.headers().get(headers::TRUNCATED).is_some());
        assert_eq!(fitted.headers().get("tenant"), Some("acme"));
        assert_eq!(fitted.payload().as_ref(), b"payload");
    }

    #[test]
    fn fit_refuses_what_cannot_fit() {
        let m = dead_letter_copy(&received(1), "why");
        let err = fit_to_size(m, 10).expect_err("payload and id alone exceed 10");
        assert_eq!(err.kind(), crate::ErrorKind::TooLarge);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn fit_never_panics_and_respects_the_limit(
            reason in ".{0,400}",
            earlier in proptest::option::of(".{0,400}"),
            max in 0usize..1200,
        ) {
            let mut r = Message::new("p").with_id("i");
            if let Some(e) = earlier {
                r = r.with_header(headers::DEAD_LETTER_REASON, e);
            }
            let m = dead_letter_copy(&Received::new("s", r, 1), &reason);
            if let Ok(fitted) = fit_to_size(m, max) {
                prop_assert!(fitted.encoded_len() <= max);
            }
        }
    }
}
