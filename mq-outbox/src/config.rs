//! Settings of the outbox, its relay and the inbox: table names, batch size,
//! lease, retention and the relay's timings.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// A table name checked to be a plain SQL identifier, optionally qualified
/// by a schema (`app.outbox`): ASCII letters, digits and `_`, not starting
/// with a digit, at most 63 bytes per part (PostgreSQL's limit). Names are
/// interpolated into SQL (a table name cannot be a bind parameter), so only
/// this shape is accepted, and each part is also double-quoted, which both
/// PostgreSQL and SQLite read as an identifier.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    parts: Vec<String>,
}

impl TableName {
    /// Checks `name` (`table` or `schema.table`).
    pub fn new(name: &str) -> Result<Self> {
        let parts: Vec<String> = name.split('.').map(str::to_owned).collect();
        if parts.is_empty() || parts.len() > 2 {
            return Err(Error::Config(format!(
                "table name {name:?}: expected `table` or `schema.table`"
            )));
        }
        for part in &parts {
            check_identifier(part)
                .map_err(|why| Error::Config(format!("table name {name:?}: {why}")))?;
        }
        Ok(TableName { parts })
    }

    /// The name as written, unquoted (`app.outbox`).
    pub fn as_unquoted(&self) -> String {
        self.parts.join(".")
    }

    /// The table's own name without its schema.
    pub fn table(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }

    /// The name quoted for SQL (`"app"."outbox"`).
    pub fn quoted(&self) -> String {
        self.parts
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A name derived from this table's (an index, a channel): the table's
    /// own name plus `suffix`, quoted, unqualified. The result is checked
    /// like any identifier.
    pub fn derived(&self, suffix: &str) -> Result<String> {
        let name = format!("{}{suffix}", self.table());
        check_identifier(&name).map_err(|why| Error::Config(format!("{name:?}: {why}")))?;
        Ok(format!("\"{name}\""))
    }
}

impl fmt::Debug for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_unquoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_unquoted())
    }
}

fn check_identifier(s: &str) -> std::result::Result<(), &'static str> {
    let first = s.chars().next().ok_or("empty identifier")?;
    if s.len() > 63 {
        return Err("identifier longer than 63 bytes");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err("identifier must start with an ASCII letter or '_'");
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("identifier may hold only ASCII letters, digits and '_'");
    }
    Ok(())
}

/// Settings of an [`Outbox`](crate::Outbox), its relays and its inboxes.
/// Every relay and writer of one outbox table must use the same table names.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// The outbox table (`mq_outbox`).
    pub table: TableName,
    /// The inbox table (`mq_inbox`).
    pub inbox_table: TableName,
    /// Rows one relay claims at a time (256).
    pub batch_size: usize,
    /// Sends one relay keeps waiting for the broker at once (256). Rows with
    /// the same key are sent one after another whatever this says.
    pub max_in_flight: usize,
    /// How long a claim holds rows (30 s). A relay that dies (`kill -9`)
    /// leaves its rows to the others after this; it must exceed the
    /// broker's longest send (its send timeout), or a slow relay and the
    /// next one both publish a row.
    pub lease: Duration,
    /// How long sent rows stay in the table (zero: deleted as soon as the
    /// broker confirmed; default 1 hour, to look at what was sent).
    pub retention: Duration,
    /// The longest pause between polls when the outbox is empty (1 s). The
    /// relay polls again at once after a full batch and wakes early on
    /// PostgreSQL `NOTIFY` or [`Outbox::wake`](crate::Outbox::wake).
    pub max_poll_interval: Duration,
    /// How often the relay refreshes the pending-rows gauges and purges
    /// rows past their retention (5 s).
    pub maintenance_interval: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            table: TableName {
                parts: vec!["mq_outbox".to_owned()],
            },
            inbox_table: TableName {
                parts: vec!["mq_inbox".to_owned()],
            },
            batch_size: 256,
            max_in_flight: 256,
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(3600),
            max_poll_interval: Duration::from_secs(1),
            maintenance_interval: Duration::from_secs(5),
        }
    }
}

impl OutboxConfig {
    /// The defaults (tables `mq_outbox` and `mq_inbox`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses outbox table `name` (`table` or `schema.table`, plain identifiers).
    pub fn table(mut self, name: &str) -> Result<Self> {
        self.table = TableName::new(name)?;
        Ok(self)
    }

    /// Uses inbox table `name` (`table` or `schema.table`, plain identifiers).
    pub fn inbox_table(mut self, name: &str) -> Result<Self> {
        self.inbox_table = TableName::new(name)?;
        Ok(self)
    }

    /// Claims up to `rows` (at least 1, at most 10,000) rows at a time.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.clamp(1, 10_000);
        self
    }

    /// Keeps up to `sends` (at least 1) sends in flight.
    pub fn max_in_flight(mut self, sends: usize) -> Self {
        self.max_in_flight = sends.max(1);
        self
    }

    /// Holds claimed rows for `lease` (at least 100 ms, clamped by `mq_core::time`).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = mq_core::time::clamp(lease).max(Duration::from_millis(100));
        self
    }

    /// Keeps sent rows for `retention` (zero deletes them on confirmation).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = mq_core::time::clamp(retention);
        self
    }

    /// Polls an idle outbox at least every `interval` (at least 1 ms).
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = mq_core::time::clamp(interval).max(Duration::from_millis(1));
        self
    }

    /// Refreshes gauges and purges old rows every `interval` (at least 10 ms).
    pub fn maintenance_interval(mut self, interval: Duration) -> Self {
        self.maintenance_interval = mq_core::time::clamp(interval).max(Duration::from_millis(10));
        self
    }

    /// The PostgreSQL `NOTIFY` channel of this outbox table: the table's
    /// name as written (a channel is any string, passed as a parameter).
    pub fn channel(&self) -> String {
        self.table.as_unquoted()
    }
}

/// Milliseconds of `d`, saturating (for `BIGINT` columns).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Now in milliseconds since the Unix epoch (the clock of every timestamp
/// column; 0 before 1970).
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers_quoted() {
        let t = TableName::new("app.outbox_2").expect("valid");
        assert_eq!(t.quoted(), "\"app\".\"outbox_2\"");
        assert_eq!(t.table(), "outbox_2");
        assert_eq!(
            t.derived("_pending").expect("valid"),
            "\"outbox_2_pending\""
        );
        for bad in [
            "",
            "a.b.c",
            "1abc",
            "a-b",
            "x\"; DROP TABLE y; --",
            "a b",
            "é",
            ".x",
            &"a".repeat(64),
        ] {
            assert!(TableName::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TableName::new(&"a".repeat(60))
            .expect("valid")
            .derived("_pending_idx")
            .is_err());
    }

    #[test]
    fn builder_clamps() {
        let c = OutboxConfig::new()
            .batch_size(0)
            .max_in_flight(0)
            .lease(Duration::ZERO)
            .retention(Duration::MAX);
        assert_eq!(c.batch_size, 1);
        assert_eq!(c.max_in_flight, 1);
        assert_eq!(c.lease, Duration::from_millis(100));
        assert_eq!(c.retention, mq_core::time::FAR_FUTURE);
        assert_eq!(c.channel(), "mq_outbox");
        assert!(millis(Duration::MAX) == i64::MAX);
    }
}
