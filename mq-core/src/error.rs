//! The one error type every backend returns.
//!
//! Callers decide what to do from two things only: the [`ErrorKind`] (what went
//! wrong) and [`Error::is_retryable`] (whether trying again can help). Backends
//! convert their native errors in one place and attach context (backend,
//! operation, destination) so a log line says where the failure happened.

use std::fmt;

/// Shorthand for `Result<T, mq_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A URL or configuration value is invalid or unknown.
    #[error("invalid configuration")]
    Config,
    /// The broker could not be reached or the connection was lost.
    #[error("connection failed")]
    Connection,
    /// The backend cannot do what was asked (see its capabilities).
    #[error("unsupported operation")]
    Unsupported,
    /// A message is larger than the destination accepts; nothing was sent.
    #[error("message too large")]
    TooLarge,
    /// A queue, topic or other named resource does not exist.
    #[error("not found")]
    NotFound,
    /// Authentication or authorization failed.
    #[error("permission denied")]
    Permission,
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// A payload could not be decoded into the requested type.
    #[error("decode failed")]
    Decode,
    /// The broker refused or failed the operation.
    #[error("broker error")]
    Broker,
    /// The client, producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// A delivery was already settled (ack/nack/dead-letter happen once).
    #[error("already settled")]
    AlreadySettled,
}

impl ErrorKind {
    /// Whether errors of this kind are worth retrying by default.
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Broker
        )
    }
}

/// The error returned by every `mq` operation.
///
/// `Display` prints the kind, the message, the context and the chain of
/// sources. No constructor puts credentials into an error: URLs are always
/// redacted before they reach a message.
///
/// One pointer wide (the details are boxed), so every `Result<T>` of the
/// SDK stays small: a send's `Result<()>` is passed up through several
/// futures per message, and a wide error was copied at each of them.
pub struct Error(Box<Details>);

/// What an [`Error`] says.
struct Details {
    kind: ErrorKind,
    retryable: bool,
    message: String,
    backend: Option<&'static str>,
    operation: Option<&'static str>,
    destination: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`; retryable according to [`ErrorKind::default_retryable`].
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Box::new(Details {
            kind,
            retryable: kind.default_retryable(),
            message: message.into(),
            backend: None,
            operation: None,
            destination: None,
            source: None,
        }))
    }

    /// A configuration error (bad URL, unknown option, invalid value).
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// An operation the backend does not support.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// A message of `size` bytes over `limit` bytes; `limit_name` says which limit.
    pub fn too_large(size: usize, limit: usize, limit_name: &str) -> Self {
        Self::new(
            ErrorKind::TooLarge,
            format!("message of {size} bytes exceeds the limit of {limit} bytes ({limit_name})"),
        )
    }

    /// A payload that could not be decoded.
    pub fn decode(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decode, message)
    }

    /// The object was closed.
    pub fn closed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Closed, message)
    }

    /// Overrides whether the error is worth retrying.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.0.retryable = retryable;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Box::new(source));
        self
    }

    /// Attaches the backend name (`"memory"`, `"rabbitmq"`, ...).
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.0.backend = Some(backend);
        self
    }

    /// Attaches the operation (`"send"`, `"receive"`, `"ack"`, ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.0.operation = Some(operation);
        self
    }

    /// Attaches the queue or topic concerned.
    pub fn with_destination(mut self, destination: impl Into<String>) -> Self {
        self.0.destination = Some(destination.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.0.retryable
    }

    /// The human-readable message, without context.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The backend that produced the error, if known.
    pub fn backend(&self) -> Option<&'static str> {
        self.0.backend
    }

    /// The operation that failed, if known.
    pub fn operation(&self) -> Option<&'static str> {
        self.0.operation
    }

    /// The queue or topic concerned, if known.
    pub fn destination(&self) -> Option<&str> {
        self.0.destination.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.kind, self.0.message)?;
        let mut context = Vec::new();
        if let Some(b) = self.0.backend {
            context.push(format!("backend={b}"));
        }
        if let Some(o) = self.0.operation {
            context.push(format!("operation={o}"));
        }
        if let Some(d) = &self.0.destination {
            context.push(format!("destination={d}"));
        }
        if !context.is_empty() {
            write!(f, " [{}]", context.join(", "))?;
        }
        if let Some(source) = &self.0.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.0.kind)
            .field("retryable", &self.0.retryable)
            .field("message", &self.0.message)
            .field("backend", &self.0.backend)
            .field("operation", &self.0.operation)
            .field("destination", &self.0.destination)
            .field("source", &self.0.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<(), Error>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn display_includes_context_and_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "cannot reach broker")
            .with_backend("memory")
            .with_operation("send")
            .with_destination("jobs")
            .with_source(io);
        assert_eq!(
            err.to_string(),
            "connection failed: cannot reach broker [backend=memory, operation=send, destination=jobs]: refused"
        );
        assert!(err.is_retryable());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn permanent_kinds_are_not_retryable() {
        assert!(!Error::config("x").is_retryable());
        assert!(!Error::decode("x").is_retryable());
        assert!(!Error::too_large(2, 1, "limit").is_retryable());
        assert!(Error::config("x").with_retryable(true).is_retryable());
    }
}
