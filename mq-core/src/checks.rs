//! The checks every send passes before a backend sees it (DESIGN.md §3):
//! a destination name, a size within the backend's limit, a delay the
//! backend can honour. They hold once, here, for every backend: the
//! producer wrapper every [`Client`](crate::Client) hands out runs them
//! (in the same step as its instrumentation, so a send pays for one
//! wrapper), and backends that publish on their own (settlement copies)
//! call [`check_send`].
//!
//! Backends still check what only they can know (a queue's own size limit,
//! their wire encoding's overhead, FIFO rules).

use crate::capabilities::Capabilities;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::producer::{BatchReport, DynProducer};

/// Checks `message` for `destination` against `caps` of `backend`.
pub fn check_send(
    caps: &Capabilities,
    backend: &'static str,
    destination: &str,
    message: &Message,
) -> Result<()> {
    let context = |e: Error| {
        e.with_backend(backend)
            .with_operation("send")
            .with_destination(destination)
    };
    if destination.is_empty() {
        return Err(Error::config("destination name is empty")
            .with_backend(backend)
            .with_operation("send"));
    }
    if let Some(limit) = caps.max_message_size {
        let size = message.encoded_len();
        if size > limit {
            let name = format!("{backend} max_message_size");
            return Err(context(Error::too_large(size, limit, &name)));
        }
    }
    if let Some(delay) = message.delay().filter(|d| !d.is_zero()) {
        if !caps.delayed_delivery {
            return Err(context(Error::unsupported(format!(
                "{backend} has no delayed delivery: send without a delay (nack_after still works)"
            ))));
        }
        if let Some(max) = caps.max_delay.filter(|max| delay > *max) {
            return Err(context(Error::unsupported(format!(
                "{backend} delays a message by at most {max:?}; asked for {delay:?}"
            ))));
        }
    }
    Ok(())
}

/// Sends `messages` through `inner` after [`check_send`] on each: refused
/// messages keep their place in the report, the rest go out in one batch.
pub(crate) async fn send_batch_checked(
    inner: &DynProducer,
    caps: &Capabilities,
    backend: &'static str,
    destination: &str,
    messages: Vec<Message>,
) -> BatchReport {
    let mut refused = Vec::new();
    let mut passed = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        match check_send(caps, backend, destination, &message) {
            Ok(()) => passed.push(message),
            Err(e) => refused.push((index, message.id().to_owned(), e)),
        }
    }
    if refused.is_empty() {
        return inner.send_batch(destination, passed).await;
    }
    let sent = if passed.is_empty() {
        Vec::new()
    } else {
        inner.send_batch(destination, passed).await.into_results()
    };
    let total = sent.len() + refused.len();
    let mut sent = sent.into_iter();
    let mut refused = refused.into_iter().peekable();
    let mut results = Vec::with_capacity(total);
    for index in 0..total {
        match refused.next_if(|(i, _, _)| *i == index) {
            Some((_, id, e)) => results.push((id, Err(e))),
            None => results.extend(sent.next()),
        }
    }
    BatchReport::new(results)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;

    fn caps() -> Capabilities {
        Capabilities {
            delayed_delivery: true,
            max_delay: Some(Duration::from_secs(60)),
            max_message_size: Some(100),
            ..Capabilities::default()
        }
    }

    #[test]
    fn each_rule_has_its_typed_error() {
        let ok = Message::new("x");
        assert!(check_send(&caps(), "t", "q", &ok).is_ok());
        let kind = |c: &Capabilities, d: &str, m: &Message| {
            check_send(c, "t", d, m).expect_err("refused").kind()
        };
        assert_eq!(kind(&caps(), "", &ok), ErrorKind::Config);
        assert_eq!(
            kind(&caps(), "q", &Message::new(vec![0u8; 200])),
            ErrorKind::TooLarge
        );
        let late = Message::new("x").with_delay(Duration::from_secs(61));
        assert_eq!(kind(&caps(), "q", &late), ErrorKind::Unsupported);
        let no_delay = Capabilities::default();
        let soon = Message::new("x").with_delay(Duration::from_secs(1));
        assert_eq!(kind(&no_delay, "q", &soon), ErrorKind::Unsupported);
        let zero = Message::new("x").with_delay(Duration::ZERO);
        assert!(check_send(&no_delay, "t", "q", &zero).is_ok());
    }

    #[tokio::test]
    async fn a_batch_reports_refused_messages_in_place() {
        let broker = crate::memory::MemoryBroker::new(crate::memory::MemoryConfig::default());
        let inner: DynProducer = std::sync::Arc::new(broker.producer());
        let batch = vec![
            Message::new("a").with_id("a"),
            Message::new(vec![0u8; 200]).with_id("big"),
            Message::new("c").with_id("c"),
        ];
        let report = send_batch_checked(&inner, &caps(), "memory", "q", batch).await;
        let outcome: Vec<(&str, bool)> = report
            .results()
            .iter()
            .map(|(id, r)| (id.as_str(), r.is_ok()))
            .collect();
        assert_eq!(outcome, [("a", true), ("big", false), ("c", true)]);
        assert_eq!(broker.held("q", None), 2);
    }
}
