//! Connection health, for a service's health endpoint.

use std::time::SystemTime;

/// The state of a client's connection to its broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether the connection is up now.
    pub connected: bool,
    /// The last connection or broker error, if any (no credentials in it).
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// How many times the backend reconnected since it was created.
    pub reconnects: u64,
    /// The broker refuses to take messages for now (RabbitMQ
    /// `connection.blocked`: a memory or disk alarm); sends time out until
    /// it lifts.
    pub blocked: bool,
}

impl Health {
    /// Connected, no error seen.
    pub fn healthy() -> Self {
        Health {
            connected: true,
            last_error: None,
            last_error_at: None,
            reconnects: 0,
            blocked: false,
        }
    }

    /// Not connected, because of `error`.
    pub fn disconnected(error: impl Into<String>) -> Self {
        Health {
            connected: false,
            last_error: Some(error.into()),
            last_error_at: Some(SystemTime::now()),
            reconnects: 0,
            blocked: false,
        }
    }
}
