//! Health from the outcome of every SQS request.
//!
//! SQS is HTTP: there is no connection to watch, so health is what the last
//! requests said. An SDK interceptor on both clients sees every request's
//! final outcome (after the SDK's own retries), whoever made it (producer,
//! consumer poller, settler, stats), in one place:
//!
//! - an answer (success, or an error about the request itself such as a
//!   missing queue): `connected`;
//! - no answer (connection refused, DNS, timeout), a server error (5xx,
//!   `InternalError`, `ServiceUnavailable`) or refused credentials: not
//!   `connected`, and the reason becomes `last_error`;
//! - throttling: still `connected`, the reason becomes `last_error`.
//!
//! `reconnects` counts recoveries: requests answering again after SQS was
//! unreachable or failing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_sdk_sqs::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::{BoxError, ProvideErrorMetadata};
use mq_core::observe::Health;
use mq_core::ErrorKind;
use parking_lot::Mutex;

use crate::error::classify;

/// What the requests of one backend said lately.
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    state: Mutex<State>,
    reconnects: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The last request failed to get a usable answer.
    down: bool,
    last_error: Option<(String, SystemTime)>,
}

/// How a finished request went, for health.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// SQS answered (maybe with an error about the request itself).
    Answered,
    /// SQS answered but is slowing us down.
    Throttled(String),
    /// No usable answer.
    Down(String),
}

impl HealthState {
    /// Connected (the last request got an answer), the last trouble, recoveries.
    pub(crate) fn health(&self) -> Health {
        let state = self.state.lock();
        let mut health = Health::healthy();
        health.connected = !state.down;
        health.reconnects = self.reconnects.load(Ordering::Relaxed);
        if let Some((message, at)) = &state.last_error {
            health.last_error = Some(message.clone());
            health.last_error_at = Some(*at);
        }
        health
    }

    /// A settlement failed (a dead letter that could not be written, an ack
    /// whose delete failed): it becomes `last_error`. Whether SQS answers is
    /// not in question, so `connected` stays as it is.
    pub(crate) fn settle_failed(&self, message: String) {
        self.state.lock().last_error = Some((message, SystemTime::now()));
    }

    fn record(&self, outcome: Outcome) {
        let mut state = self.state.lock();
        match outcome {
            Outcome::Answered => {
                if state.down {
                    state.down = false;
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Throttled(message) => {
                if state.down {
                    state.down = false;
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                state.last_error = Some((message, SystemTime::now()));
            }
            Outcome::Down(message) => {
                state.down = true;
                state.last_error = Some((message, SystemTime::now()));
            }
        }
    }
}

/// The error code and message of an operation error, whichever operation
/// it came from (the interceptor sees it type-erased, as a type the SDK
/// does not re-export, hence a macro rather than a function).
macro_rules! error_code {
    ($err:expr) => {
        error_code!(@try $err;
            aws_sdk_sqs::operation::send_message::SendMessageError,
            aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError,
            aws_sdk_sqs::operation::receive_message::ReceiveMessageError,
            aws_sdk_sqs::operation::delete_message::DeleteMessageError,
            aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchError,
            aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError,
            aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchError,
            aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError,
            aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesError,
            aws_sdk_sqs::operation::set_queue_attributes::SetQueueAttributesError,
            aws_sdk_sqs::operation::create_queue::CreateQueueError,
            aws_sdk_sqs::operation::delete_queue::DeleteQueueError,
            // SNS, with `fanout=sns`.
            aws_sdk_sns::operation::publish::PublishError,
            aws_sdk_sns::operation::publish_batch::PublishBatchError,
            aws_sdk_sns::operation::create_topic::CreateTopicError,
            aws_sdk_sns::operation::get_topic_attributes::GetTopicAttributesError,
            aws_sdk_sns::operation::delete_topic::DeleteTopicError,
            aws_sdk_sns::operation::subscribe::SubscribeError,
        )
    };
    (@try $err:expr; $($error:path),* $(,)?) => {{
        let err = $err;
        let mut found = None;
        $(
            if found.is_none() {
                if let Some(e) = err.downcast_ref::<$error>() {
                    found = Some((
                        e.code().unwrap_or("Unknown").to_owned(),
                        e.message().unwrap_or("").to_owned(),
                    ));
                }
            }
        )*
        found
    }};
}

/// The interceptor feeding a [`HealthState`]; add it to every SQS client.
#[derive(Debug)]
pub(crate) struct HealthInterceptor(pub(crate) std::sync::Arc<HealthState>);

impl Intercept for HealthInterceptor {
    fn name(&self) -> &'static str {
        "mq-sqs health"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let status = context.response().map(|r| r.status().as_u16());
        let outcome = match context.output_or_error() {
            None => return Ok(()),
            Some(Ok(_)) => Outcome::Answered,
            Some(Err(e)) => {
                if let Some(err) = e.as_operation_error() {
                    match error_code!(err) {
                        Some((code, message)) => answered(&code, &message, status),
                        None => answered("Unknown", "", status),
                    }
                } else if let Some(connector) = e.as_connector_error() {
                    if connector.is_timeout() {
                        Outcome::Down("SQS did not answer in time".to_owned())
                    } else {
                        Outcome::Down(format!("cannot reach SQS: {}", chain(connector)))
                    }
                } else if e.is_timeout_error() {
                    Outcome::Down("SQS did not answer in time".to_owned())
                } else if e.is_response_error() {
                    Outcome::Down("SQS sent a response that could not be read".to_owned())
                } else {
                    // Building or signing the request failed: not the service's health.
                    return Ok(());
                }
            }
        };
        self.0.record(outcome);
        Ok(())
    }
}

/// What an error answer from SQS says about its health.
fn answered(code: &str, message: &str, status: Option<u16>) -> Outcome {
    let server = status.is_some_and(|s| s >= 500);
    match classify(code, message, None) {
        (ErrorKind::Permission, _) => {
            Outcome::Down(format!("SQS refused the credentials: {code}: {message}"))
        }
        _ if server => Outcome::Down(format!("SQS failed the request: {code}: {message}")),
        (ErrorKind::Broker, true) if is_throttling(code) => {
            Outcome::Throttled(format!("SQS throttled a request: {code}: {message}"))
        }
        (ErrorKind::Broker, true) => {
            Outcome::Down(format!("SQS failed the request: {code}: {message}"))
        }
        _ => Outcome::Answered,
    }
}

/// `error` and its sources, `: `-separated, without the `Debug` dump the
/// SDK's `DisplayErrorContext` appends.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

fn is_throttling(code: &str) -> bool {
    [
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "OverLimit",
        "KmsThrottled",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_health() {
        assert_eq!(
            answered("QueueDoesNotExist", "", Some(400)),
            Outcome::Answered
        );
        assert_eq!(
            answered("InvalidParameterValue", "bad", Some(400)),
            Outcome::Answered
        );
        assert!(matches!(
            answered("RequestThrottled", "", Some(400)),
            Outcome::Throttled(_)
        ));
        assert!(matches!(
            answered("InvalidClientTokenId", "", Some(403)),
            Outcome::Down(_)
        ));
        assert!(matches!(
            answered("Whatever", "", Some(503)),
            Outcome::Down(_)
        ));
    }

    #[test]
    fn recoveries_count_as_reconnects() {
        let state = HealthState::default();
        assert!(state.health().connected);
        state.record(Outcome::Down("cannot reach SQS".into()));
        let h = state.health();
        assert!(!h.connected);
        assert_eq!(h.last_error.as_deref(), Some("cannot reach SQS"));
        state.record(Outcome::Answered);
        state.record(Outcome::Answered);
        let h = state.health();
        assert!(h.connected);
        assert_eq!(h.reconnects, 1);
        assert!(h.last_error.is_some(), "the last error stays");
    }
}
