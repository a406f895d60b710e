//! The one place where lapin's errors become `mq` errors.
//!
//! Callers decide from the kind and the retryable flag only, so this mapping
//! is the contract: connection trouble is a retryable `Connection` error (the
//! client reconnects), a missing queue is `NotFound`, a refused login or
//! vhost is `Permission`, a declaration that clashes with an existing queue
//! or exchange is `Config`, and the broker's message size limit is `TooLarge`.

use std::future::Future;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use mq_core::{Error, ErrorKind, Result};

/// The backend name in errors, logs and metrics.
pub(crate) const BACKEND: &str = "rabbitmq";

/// Converts a lapin error raised while doing `operation`.
pub(crate) fn from_lapin(error: lapin::Error, operation: &'static str) -> Error {
    let (kind, retryable, message) = classify(&error);
    Error::new(kind, message)
        .with_retryable(retryable)
        .with_backend(BACKEND)
        .with_operation(operation)
        .with_source(error)
}

fn classify(error: &lapin::Error) -> (ErrorKind, bool, String) {
    use lapin::ErrorKind as L;
    match error.kind() {
        L::IOError(io) if io.kind() == std::io::ErrorKind::TimedOut => (
            ErrorKind::Timeout,
            true,
            "the broker did not answer in time".into(),
        ),
        L::IOError(_) => (
            ErrorKind::Connection,
            true,
            "the connection to RabbitMQ failed".into(),
        ),
        L::InvalidChannelState(..) | L::InvalidConnectionState(_) | L::InvalidChannel(_) => (
            ErrorKind::Connection,
            true,
            "the RabbitMQ channel or connection is closed".into(),
        ),
        L::MissingHeartbeatError => (
            ErrorKind::Connection,
            true,
            "RabbitMQ missed its heartbeats; the connection is considered dead".into(),
        ),
        L::ChannelsLimitReached => (
            ErrorKind::Broker,
            true,
            "the connection has no free channel (channel_max reached)".into(),
        ),
        L::RuntimeShutdownError(_) => (
            ErrorKind::Closed,
            false,
            "the async runtime is shutting down".into(),
        ),
        L::AuthProviderError(_) => (
            ErrorKind::Permission,
            false,
            "authentication with RabbitMQ failed".into(),
        ),
        L::ProtocolError(amqp) => {
            let text = amqp.get_message().to_string();
            let (kind, retryable) = match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => (ErrorKind::NotFound, false),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => (ErrorKind::Permission, false),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    if text.contains("max size") || text.contains("larger than") =>
                {
                    (ErrorKind::TooLarge, false)
                }
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                    if text.contains("inequivalent arg") =>
                {
                    (ErrorKind::Config, false)
                }
                AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE) => (ErrorKind::TooLarge, false),
                AMQPErrorKind::Soft(AMQPSoftError::NOROUTE) => (ErrorKind::NotFound, false),
                AMQPErrorKind::Soft(_) => (ErrorKind::Broker, false),
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                    (ErrorKind::Connection, true)
                }
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => (ErrorKind::Permission, false),
                AMQPErrorKind::Hard(AMQPHardError::INVALIDPATH) => (ErrorKind::Config, false),
                AMQPErrorKind::Hard(
                    AMQPHardError::INTERNALERROR | AMQPHardError::RESOURCEERROR,
                ) => (ErrorKind::Broker, true),
                AMQPErrorKind::Hard(_) => (ErrorKind::Broker, false),
            };
            (kind, retryable, format!("RabbitMQ refused: {text}"))
        }
        _ => (
            ErrorKind::Broker,
            false,
            "the RabbitMQ client failed".into(),
        ),
    }
}

/// Waits for `operation` at most `limit` (clamped to
/// [`mq_core::backend::time::FAR_FUTURE`]): a broker that blocks publishers
/// (`connection.blocked`) or never answers must not hang the caller. Past
/// the limit the result is a retryable `Timeout` error naming `what`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &'static str,
    operation: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(mq_core::backend::time::clamp(limit), operation).await {
        Ok(outcome) => outcome,
        Err(_) => Err(timed_out(what, limit)),
    }
}

/// The broker did not answer `what` within `limit`.
pub(crate) fn timed_out(what: &'static str, limit: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!(
            "RabbitMQ did not answer within {limit:?} (operation_timeout); it may be blocking \
             publishers (memory or disk alarm, see health) or be overloaded"
        ),
    )
    .with_retryable(true)
    .with_backend(BACKEND)
    .with_operation(what)
}

/// The exchange a `404 NOT_FOUND - no exchange 'X' in vhost 'V'` channel
/// error names, if `error` is one.
pub(crate) fn missing_exchange(error: &lapin::Error) -> Option<&str> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    if !matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) {
        return None;
    }
    let rest = amqp.get_message().as_str().split_once("no exchange '")?.1;
    // Exchange names cannot hold `'` followed by " in vhost", so the last
    // such marker ends the name.
    rest.rsplit_once("' in vhost").map(|(name, _)| name)
}

/// The client was closed.
pub(crate) fn closed(what: &str) -> Error {
    Error::closed(format!("{what} is closed")).with_backend(BACKEND)
}

/// A channel went away before a delivery was settled: the broker requeues it.
pub(crate) fn channel_gone(operation: &'static str) -> Error {
    Error::new(
        ErrorKind::Connection,
        "the channel this delivery came on is gone; the broker will redeliver the message",
    )
    .with_backend(BACKEND)
    .with_operation(operation)
}

/// An AMQP short string (names, ids) longer than 255 bytes.
pub(crate) fn too_long(what: &str, value: &str) -> Error {
    let shown: String = value.chars().take(40).collect();
    Error::config(format!(
        "{what} `{shown}...` is {} bytes; AMQP allows at most 255",
        value.len()
    ))
    .with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn amqp(id: u16, text: &str) -> lapin::Error {
        let err = AMQPError::from_id(id, text.into()).expect("known id");
        lapin::ErrorKind::ProtocolError(err).into()
    }

    #[test]
    fn broker_errors_map_to_kinds() {
        let cases = [
            (
                amqp(404, "NOT_FOUND - no queue 'x'"),
                ErrorKind::NotFound,
                false,
            ),
            (
                amqp(403, "ACCESS_REFUSED - Login was refused"),
                ErrorKind::Permission,
                false,
            ),
            (
                amqp(406, "PRECONDITION_FAILED - inequivalent arg 'durable'"),
                ErrorKind::Config,
                false,
            ),
            (
                amqp(
                    406,
                    "PRECONDITION_FAILED - message size 20 is larger than configured max size 10",
                ),
                ErrorKind::TooLarge,
                false,
            ),
            (
                amqp(320, "CONNECTION_FORCED - shutdown"),
                ErrorKind::Connection,
                true,
            ),
            (
                amqp(530, "NOT_ALLOWED - vhost not found"),
                ErrorKind::Permission,
                false,
            ),
        ];
        for (err, kind, retryable) in cases {
            let e = from_lapin(err, "test");
            assert_eq!((e.kind(), e.is_retryable()), (kind, retryable), "{e}");
            assert_eq!(e.backend(), Some(BACKEND));
        }
        assert_eq!(
            missing_exchange(&amqp(404, "NOT_FOUND - no exchange 'a' b' in vhost '/'")),
            Some("a' b")
        );
        assert_eq!(
            missing_exchange(&amqp(404, "NOT_FOUND - no queue 'q' in vhost '/'")),
            None
        );
        assert_eq!(
            missing_exchange(&amqp(
                406,
                "PRECONDITION_FAILED - no exchange 'a' in vhost '/'"
            )),
            None
        );
        let io: lapin::Error =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        let e = from_lapin(io, "connect");
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::Connection, true));
    }
}
