//! Transactional outbox and inbox for `mq` on `sqlx` (SQLite, PostgreSQL).
//!
//! - [`Outbox::send`] writes a message in the application's own database
//!   transaction: it is published if and only if that transaction commits.
//! - [`Relay`] (`outbox.relay(client)`) publishes committed rows through any
//!   `mq` backend and marks them sent only after the broker confirmed.
//! - [`Inbox`] (`outbox.inbox("name")`) writes a consumer's done mark in
//!   the handler's own transaction: effects happen exactly once.
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod database;
pub mod error;
pub mod inbox;
pub mod metrics;
pub mod outbox;
mod postgres;
pub mod relay;
pub mod schema;
mod sqlite;

pub use config::{OutboxConfig, TableName};
pub use database::OutboxDatabase;
pub use error::{Error, Result};
pub use inbox::{Inbox, Outcome};
pub use outbox::{Outbox, Pending};
pub use relay::{Relay, RelayReport};
/// The `sqlx` this crate is built on (use its pools and transactions).
pub use sqlx;
