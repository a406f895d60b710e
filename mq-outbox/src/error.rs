//! The outbox's errors, in one place: database, broker, configuration and
//! rows that do not decode.

/// What went wrong in the outbox, the relay or the inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database call failed (connection, query, constraint, transaction).
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker refused or timed out (the relay retries these with backoff).
    #[error("outbox broker: {0}")]
    Broker(#[from] mq_core::Error),
    /// A configuration value is not allowed (a table name that is not a
    /// plain identifier, a zero batch size).
    #[error("outbox config: {0}")]
    Config(String),
    /// A message could not be stored (headers that do not encode).
    #[error("outbox encode: {0}")]
    Encode(String),
    /// A stored row could not be turned back into a message (a row edited by
    /// hand, a column of the wrong shape). The relay records it on the row
    /// and retries with backoff.
    #[error("outbox row {row}: {reason}")]
    Decode {
        /// The row's id.
        row: i64,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Whether trying again can help: database and broker failures are
    /// retried by their own classification, configuration never.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => !matches!(
                e,
                sqlx::Error::Configuration(_)
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::TypeNotFound { .. }
            ),
            Error::Broker(e) => e.is_retryable(),
            Error::Config(_) | Error::Encode(_) | Error::Decode { .. } => false,
        }
    }
}

/// What every fallible call of this crate returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;
