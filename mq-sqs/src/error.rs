//! SDK errors and failed batch entries become [`mq_core::Error`]s here, and
//! only here, so every operation classifies the same failure the same way.

use std::fmt;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;
use mq_core::{Error, ErrorKind, Result};

/// The backend's name in errors, logs and metrics.
pub const BACKEND: &str = "sqs";

/// Error codes meaning "the queue does not exist" (JSON and query
/// protocols), or with `fanout=sns` "the topic does not exist" (SNS's
/// `NotFound`).
const QUEUE_MISSING: &[&str] = &[
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
    "NotFound",
];

/// Error codes meaning "who you are or what you may do is wrong".
const PERMISSION: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidSecurity",
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "ExpiredToken",
    "KMS.AccessDeniedException",
    // SNS.
    "AuthorizationError",
];

/// Error codes worth retrying: the service is busy or briefly unavailable.
const TRANSIENT: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "OverLimit",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "RequestTimeout",
    "KmsThrottled",
    // SNS.
    "Throttled",
    "KMSThrottling",
];

/// Codes meaning "the request itself is invalid" (a bug or bad input: not retried).
const INVALID: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "InvalidMessageContents",
    "MissingParameter",
    "UnsupportedOperation",
    "InvalidBatchEntryId",
    "BatchEntryIdsNotDistinct",
    // SNS.
    "InvalidParameter",
    "InvalidParameterException",
    "TooManyEntriesInBatchRequest",
];

/// What an SQS error code means for `mq`: the kind and whether a retry can help.
pub(crate) fn classify(code: &str, message: &str, sender_fault: Option<bool>) -> (ErrorKind, bool) {
    let is = |codes: &[&str]| codes.iter().any(|c| c.eq_ignore_ascii_case(code));
    if is(QUEUE_MISSING) {
        (ErrorKind::NotFound, false)
    } else if is(PERMISSION) {
        (ErrorKind::Permission, false)
    } else if is(TRANSIENT) {
        (ErrorKind::Broker, true)
    } else if code.contains("TooLong")
        || message.contains("shorter than")
        || message.contains("too long")
    {
        (ErrorKind::TooLarge, false)
    } else if is(INVALID) || sender_fault == Some(true) {
        (ErrorKind::Broker, false)
    } else {
        (ErrorKind::Broker, true)
    }
}

/// Converts an SDK error of `operation` on `destination` (a queue name).
pub(crate) fn sdk<E>(
    err: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    operation: &'static str,
    destination: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    convert(err, "SQS", operation, destination)
}

/// Converts an SNS SDK error of `operation` on `destination` (a topic's
/// destination name); the same classification as SQS's.
pub(crate) fn sns<E>(
    err: SdkError<E, aws_sdk_sns::config::http::HttpResponse>,
    operation: &'static str,
    destination: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    convert(err, "SNS", operation, destination)
}

fn convert<E>(
    err: SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    service: &str,
    operation: &'static str,
    destination: &str,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, retryable, message) = match &err {
        SdkError::ConstructionFailure(_) => (
            ErrorKind::Config,
            false,
            "the request could not be built".to_owned(),
        ),
        SdkError::TimeoutError(_) => (
            ErrorKind::Timeout,
            true,
            format!("{service} did not answer in time"),
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => (
            ErrorKind::Timeout,
            true,
            format!("{service} did not answer in time"),
        ),
        SdkError::DispatchFailure(d) if d.is_user() => (
            ErrorKind::Config,
            false,
            "the request could not be sent (check the endpoint and region)".to_owned(),
        ),
        SdkError::DispatchFailure(_) => (
            ErrorKind::Connection,
            true,
            format!("cannot reach {service}"),
        ),
        SdkError::ResponseError(_) => (
            ErrorKind::Broker,
            true,
            format!("{service} sent a response that could not be read"),
        ),
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("Unknown");
            let msg = s.err().message().unwrap_or("");
            let status = s.raw().status().as_u16();
            let (kind, retryable) = match classify(code, msg, None) {
                // An unknown code: a server error may pass, a client error will not.
                (ErrorKind::Broker, true) if (400..500).contains(&status) => {
                    (ErrorKind::Broker, false)
                }
                other => other,
            };
            (
                kind,
                retryable,
                format!("{service} refused the request: {code}: {msg}"),
            )
        }
        _ => (ErrorKind::Broker, true, format!("{service} request failed")),
    };
    Error::new(kind, message)
        .with_retryable(retryable)
        .with_backend(BACKEND)
        .with_operation(operation)
        .with_destination(destination)
        .with_source(Context(DisplayErrorContext(err).to_string()))
}

/// Converts one failed entry of a batch call (HTTP 200 with `Failed` entries).
pub(crate) fn entry(
    failed: &BatchResultErrorEntry,
    operation: &'static str,
    destination: &str,
) -> Error {
    let message = failed.message().unwrap_or("");
    let (kind, retryable) = classify(failed.code(), message, Some(failed.sender_fault()));
    Error::new(
        kind,
        format!("SQS refused the message: {}: {message}", failed.code()),
    )
    .with_retryable(retryable)
    .with_backend(BACKEND)
    .with_operation(operation)
    .with_destination(destination)
}

/// The answer of a batch call (`SendMessageBatch`, `DeleteMessageBatch`,
/// `ChangeMessageVisibilityBatch`): the ids of its successful and failed
/// entries.
pub(crate) trait BatchOutput {
    /// The ids of the entries that succeeded.
    fn ok_ids(&self) -> impl Iterator<Item = &str>;
    /// The entries that failed, with SQS's reason.
    fn failed_entries(&self) -> &[BatchResultErrorEntry];
}

macro_rules! batch_output {
    ($($output:ty),* $(,)?) => {$(
        impl BatchOutput for $output {
            fn ok_ids(&self) -> impl Iterator<Item = &str> {
                self.successful().iter().map(|s| s.id())
            }
            fn failed_entries(&self) -> &[BatchResultErrorEntry] {
                self.failed()
            }
        }
    )*};
}

batch_output!(
    aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput,
    aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput,
    aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput,
);

/// What a batch call of `n` entries `operation` on `destination` came to,
/// where entry `i` has the id `i`: `Err` when the call failed as a whole,
/// else each entry's outcome (an entry SQS lists neither as successful nor
/// as failed failed too). A call can answer HTTP 200 and still list failed
/// entries.
pub(crate) fn answer<O, E>(
    sent: std::result::Result<O, SdkError<E, aws_sdk_sqs::config::http::HttpResponse>>,
    n: usize,
    operation: &'static str,
    destination: &str,
) -> Result<Vec<Result<()>>>
where
    O: BatchOutput,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let out = sent.map_err(|e| sdk(e, operation, destination))?;
    let mut results: Vec<Option<Result<()>>> = (0..n).map(|_| None).collect();
    for id in out.ok_ids() {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *slot = Some(Ok(()));
        }
    }
    for f in out.failed_entries() {
        if let Some(slot) = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some(Err(entry(f, operation, destination)));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(
                    Error::new(ErrorKind::Broker, "SQS reported no outcome for the entry")
                        .with_backend(BACKEND)
                        .with_operation(operation)
                        .with_destination(destination),
                )
            })
        })
        .collect())
}

/// What a `PublishBatch` of `n` entries to the topic of `destination` came
/// to, entry `i` having the id `i` (as [`answer`] for SQS batch calls).
pub(crate) fn published(
    sent: std::result::Result<
        aws_sdk_sns::operation::publish_batch::PublishBatchOutput,
        SdkError<
            aws_sdk_sns::operation::publish_batch::PublishBatchError,
            aws_sdk_sns::config::http::HttpResponse,
        >,
    >,
    n: usize,
    destination: &str,
) -> Result<Vec<Result<()>>> {
    let out = sent.map_err(|e| sns(e, "publish", destination))?;
    let mut results: Vec<Option<Result<()>>> = (0..n).map(|_| None).collect();
    for ok in out.successful() {
        if let Some(slot) = ok
            .id()
            .and_then(|id| id.parse::<usize>().ok())
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some(Ok(()));
        }
    }
    for f in out.failed() {
        let message = f.message().unwrap_or("");
        let (kind, retryable) = classify(f.code(), message, Some(f.sender_fault()));
        let err = Error::new(
            kind,
            format!("SNS refused the message: {}: {message}", f.code()),
        )
        .with_retryable(retryable)
        .with_backend(BACKEND)
        .with_operation("publish")
        .with_destination(destination);
        if let Some(slot) = f
            .id()
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some(Err(err));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(
                    Error::new(ErrorKind::Broker, "SNS reported no outcome for the entry")
                        .with_backend(BACKEND)
                        .with_operation("publish")
                        .with_destination(destination),
                )
            })
        })
        .collect())
}

/// A batch entry (or message attribute) the SDK refused to build.
pub(crate) fn invalid_entry(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::config("invalid batch entry")
        .with_backend(BACKEND)
        .with_source(e)
}

/// [`replicate`]d for each of `n` entries of a request that failed as a whole.
pub(crate) fn replicate_each(err: &Error, n: usize) -> Vec<Result<()>> {
    (0..n).map(|_| Err(replicate(err))).collect()
}

/// A copy of `err` for each of several callers (a failed batch request fails
/// every message in it; `Error` is not `Clone` because its source is not).
pub(crate) fn replicate(err: &Error) -> Error {
    let mut copy =
        Error::new(err.kind(), err.message().to_owned()).with_retryable(err.is_retryable());
    if let Some(b) = err.backend() {
        copy = copy.with_backend(b);
    }
    if let Some(o) = err.operation() {
        copy = copy.with_operation(o);
    }
    if let Some(d) = err.destination() {
        copy = copy.with_destination(d.to_owned());
    }
    if let Some(source) = std::error::Error::source(err) {
        copy = copy.with_source(Context(DisplayErrorContext(source).to_string()));
    }
    copy
}

/// An error without the SDK's types, shown as the whole cause chain.
#[derive(Debug)]
struct Context(String);

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Context {}

/// The error for an operation on a consumer or producer after `close`.
pub(crate) fn closed(what: &str, operation: &'static str, destination: &str) -> Error {
    Error::closed(format!("{what} is closed"))
        .with_backend(BACKEND)
        .with_operation(operation)
        .with_destination(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            classify("QueueDoesNotExist", "", None),
            (ErrorKind::NotFound, false)
        );
        assert_eq!(
            classify("AWS.SimpleQueueService.NonExistentQueue", "", None).0,
            ErrorKind::NotFound
        );
        assert_eq!(classify("AccessDenied", "", None).0, ErrorKind::Permission);
        assert_eq!(
            classify("RequestThrottled", "", None),
            (ErrorKind::Broker, true)
        );
        assert_eq!(
            classify(
                "InvalidParameterValue",
                "Message must be shorter than 2048 bytes.",
                Some(true)
            )
            .0,
            ErrorKind::TooLarge
        );
        assert_eq!(
            classify(
                "InvalidParameterValue",
                "DelaySeconds must be >= 0",
                Some(true)
            ),
            (ErrorKind::Broker, false)
        );
        assert_eq!(
            classify("Whatever", "", Some(false)),
            (ErrorKind::Broker, true)
        );
    }

    #[test]
    fn failed_entries_keep_code_and_context() {
        let failed = BatchResultErrorEntry::builder()
            .id("3")
            .sender_fault(true)
            .code("ReceiptHandleIsInvalid")
            .message("The input receipt handle is invalid.")
            .build()
            .expect("entry");
        let e = entry(&failed, "ack", "jobs");
        assert_eq!(e.kind(), ErrorKind::Broker);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("ReceiptHandleIsInvalid"), "{e}");
        let copy = replicate(&e);
        assert_eq!(copy.to_string(), e.to_string());
    }
}
