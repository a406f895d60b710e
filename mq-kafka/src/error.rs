//! The one place librdkafka errors become [`mq_core::Error`]s.
//!
//! Callers decide only by kind and retryability, so the mapping below is
//! the whole contract: connection trouble and timeouts are retryable, a
//! missing topic is `NotFound`, an oversized record `TooLarge`, failed
//! authentication `Permission`, bad settings `Config`.
//!
//! No error shows a secret: which librdkafka options carry one
//! ([`is_secret_option`], also what `Debug` of the config hides) and
//! cleaning librdkafka's own messages of secret values ([`scrub`]) live
//! here too, below the config.

use mq_core::backend::is_secret_key;
use mq_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// The backend's name in errors, logs and metrics.
pub const BACKEND: &str = "kafka";

/// Whether the librdkafka option `name` (or URL option) carries a secret:
/// what [`is_secret_key`] says, and librdkafka's names for key material and
/// credentials: `ssl.key.pem` (an inline private key), `sasl.password`,
/// `ssl.keystore.password`, every `sasl.oauthbearer.*` option, anything
/// naming a password, secret, token, passphrase, private key or keystore.
pub(crate) fn is_secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    is_secret_key(&n)
        || n.starts_with("sasl.oauthbearer.")
        || n.ends_with(".pem")
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "passphrase",
            "private",
            "keystore",
            "credential",
            "jaas",
        ]
        .iter()
        .any(|w| n.contains(w))
}

/// `text` with every value of `secrets` replaced by `***` (librdkafka's own
/// messages may quote an option's value).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        out = out.replace(secret, "***");
        // A PEM block may be quoted in part: hide every line of it.
        for line in secret.lines().map(str::trim).filter(|l| l.len() >= 8) {
            out = out.replace(line, "***");
        }
    }
    out
}

/// The kind of a librdkafka error code.
pub(crate) fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::MessageTimedOut
        | Code::RequestTimedOut
        | Code::OperationTimedOut
        | Code::TimedOutQueue => ErrorKind::Timeout,
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::NetworkException
        | Code::BrokerNotAvailable
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::NotCoordinator
        | Code::CoordinatorNotAvailable
        | Code::CoordinatorLoadInProgress
        | Code::SSL => ErrorKind::Connection,
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => {
            ErrorKind::NotFound
        }
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge | Code::InvalidMessageSize => {
            ErrorKind::TooLarge
        }
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::IllegalSASLState
        | Code::UnsupportedSASLMechanism => ErrorKind::Permission,
        Code::InvalidArgument | Code::InvalidConfig | Code::InvalidTopic => ErrorKind::Config,
        _ => ErrorKind::Broker,
    }
}

/// Converts an error creating a librdkafka client from a config whose
/// secret values are `secrets` (`KafkaConfig::secrets`): as [`convert`],
/// with any of them that librdkafka's message quotes replaced by `***`.
pub(crate) fn convert_create(
    err: KafkaError,
    secrets: &[&str],
    destination: Option<&str>,
) -> Error {
    let e = convert(err, "connect", destination);
    let message = scrub(e.message(), secrets);
    if message == e.message() {
        return e;
    }
    let mut clean = Error::new(e.kind(), message)
        .with_backend(BACKEND)
        .with_operation("connect");
    if let Some(d) = destination {
        clean = clean.with_destination(d.to_owned());
    }
    clean
}

/// Converts `err` from `operation` on `destination` (if any).
pub(crate) fn convert(
    err: KafkaError,
    operation: &'static str,
    destination: Option<&str>,
) -> Error {
    let (kind, message, keep_source) = match &err {
        // Its Display, and librdkafka's message, show the offending value,
        // which may be a password or a private key.
        KafkaError::ClientConfig(_, msg, key, value) => (
            ErrorKind::Config,
            if is_secret_option(key) {
                format!("librdkafka rejected option `{key}` (its value is not shown)")
            } else {
                format!("librdkafka rejected option `{key}` = `{value}`: {msg}")
            },
            false,
        ),
        KafkaError::ClientCreation(msg) => (
            ErrorKind::Config,
            format!("cannot create the librdkafka client: {msg}"),
            false,
        ),
        KafkaError::AdminOp(code) => (kind_of(*code), format!("{operation} failed"), true),
        KafkaError::Canceled => (
            ErrorKind::Closed,
            format!("{operation} was cancelled because the client closed"),
            true,
        ),
        other => match other.rdkafka_error_code() {
            Some(code) => (kind_of(code), format!("{operation} failed"), true),
            None => (ErrorKind::Broker, format!("{operation} failed"), true),
        },
    };
    let mut e = Error::new(kind, message)
        .with_backend(BACKEND)
        .with_operation(operation);
    if let Some(d) = destination {
        e = e.with_destination(d.to_owned());
    }
    if keep_source {
        e = e.with_source(err);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_retryability() {
        let e = convert(
            KafkaError::MessageProduction(Code::MessageTimedOut),
            "send",
            Some("t"),
        );
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.is_retryable());
        assert_eq!(e.destination(), Some("t"));
        let e = convert(
            KafkaError::MessageProduction(Code::UnknownTopicOrPartition),
            "send",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = convert(
            KafkaError::MessageProduction(Code::MessageSizeTooLarge),
            "send",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::TooLarge);
        assert!(!e.is_retryable());
        let e = convert(KafkaError::AdminOp(Code::AllBrokersDown), "create", None);
        assert_eq!(e.kind(), ErrorKind::Connection);
    }

    #[test]
    fn config_errors_hide_secret_values() {
        let e = convert(
            KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "bad".into(),
                "sasl.password".into(),
                "hunter2".into(),
            ),
            "connect",
            None,
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }
}
