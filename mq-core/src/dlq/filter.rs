//! Which dead letters an operation selects.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use crate::dead_letter_reader::LogPosition;
use crate::delivery::Received;
use crate::error::{Error, Result};
use crate::message::headers;

/// How the reason of a dead letter is matched.
#[derive(Debug, Clone)]
pub enum ReasonMatch {
    /// The reason contains this text.
    Contains(String),
    /// The reason matches this regular expression.
    Regex(regex::Regex),
}

impl ReasonMatch {
    /// `/pattern/` is a regular expression, anything else plain text.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec
            .strip_prefix('/')
            .and_then(|s| s.strip_suffix('/'))
            .filter(|_| spec.len() >= 2)
        {
            Some(pattern) => regex::Regex::new(pattern)
                .map(ReasonMatch::Regex)
                .map_err(|e| {
                    Error::config(format!("invalid reason pattern {spec:?}")).with_source(e)
                }),
            None => Ok(ReasonMatch::Contains(spec.to_owned())),
        }
    }

    fn matches(&self, reason: &str) -> bool {
        match self {
            ReasonMatch::Contains(text) => reason.contains(text.as_str()),
            ReasonMatch::Regex(re) => re.is_match(reason),
        }
    }
}

/// Selects dead letters; every condition set must hold (an empty filter
/// selects everything).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    reason: Option<ReasonMatch>,
    since: Option<SystemTime>,
    headers: Vec<(String, String)>,
    ids: HashSet<String>,
    original_source: Option<String>,
    offsets: Option<RangeInclusive<i64>>,
    partition: Option<i32>,
}

impl Filter {
    /// Selects every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reason (`mq-dead-letter-reason`) matches `reason`.
    pub fn reason(mut self, reason: ReasonMatch) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The reason matches `spec`: `/regex/` or plain text.
    pub fn reason_spec(self, spec: &str) -> Result<Self> {
        Ok(self.reason(ReasonMatch::parse(spec)?))
    }

    /// Dead-lettered at or after `time` (`mq-dead-lettered-at`, else the
    /// broker's timestamp; a dead letter with neither is not selected).
    pub fn since(mut self, time: SystemTime) -> Self {
        self.since = Some(time);
        self
    }

    /// Dead-lettered within the last `age` (clamped: an age beyond the
    /// epoch selects everything with a time).
    pub fn younger_than(self, age: Duration) -> Self {
        let time = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.since(time)
    }

    /// Header `name` equals `value` (may be given several times: all must hold).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The message id is `id` (several: any of them).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.ids.insert(id.into());
        self
    }

    /// Dead-lettered from `source` (`mq-original-source`).
    pub fn original_source(mut self, source: impl Into<String>) -> Self {
        self.original_source = Some(source.into());
        self
    }

    /// In a log, at an offset within `range` (in `partition` if given);
    /// dead letters without a [`LogPosition`] are not selected.
    pub fn offsets(mut self, partition: Option<i32>, range: RangeInclusive<i64>) -> Self {
        self.partition = partition;
        self.offsets = Some(range);
        self
    }

    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &Received) -> bool {
        let h = letter.headers();
        if let Some(r) = &self.reason {
            match h.get(headers::DEAD_LETTER_REASON) {
                Some(reason) if r.matches(reason) => {}
                _ => return false,
            }
        }
        if let Some(since) = self.since {
            match dead_lettered_at(letter) {
                Some(at) if at >= since => {}
                _ => return false,
            }
        }
        if !self.headers.iter().all(|(k, v)| h.get(k) == Some(v)) {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.contains(letter.id()) {
            return false;
        }
        if let Some(src) = &self.original_source {
            if h.get(headers::ORIGINAL_SOURCE) != Some(src.as_str()) {
                return false;
            }
        }
        if let Some(range) = &self.offsets {
            let Some(pos) = letter.metadata::<LogPosition>() else {
                return false;
            };
            if !range.contains(&pos.offset) || self.partition.is_some_and(|p| p != pos.partition) {
                return false;
            }
        }
        true
    }
}

/// When `letter` was dead-lettered: `mq-dead-lettered-at` (milliseconds
/// since the epoch, clamped), else the broker's timestamp.
pub fn dead_lettered_at(letter: &Received) -> Option<SystemTime> {
    letter
        .headers()
        .get(headers::DEAD_LETTERED_AT)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| {
            SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_millis(ms))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .or_else(|| letter.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn letter(reason: &str, at_ms: u64) -> Received {
        Received::new(
            "jobs-dlq",
            Message::new("x")
                .with_id("a")
                .with_header(headers::DEAD_LETTER_REASON, reason)
                .with_header(headers::DEAD_LETTERED_AT, at_ms.to_string())
                .with_header(headers::ORIGINAL_SOURCE, "jobs")
                .with_header("tenant", "acme"),
            1,
        )
    }

    #[test]
    fn text_regex_header_id_source_and_age() {
        let now = crate::delivery::unix_millis(SystemTime::now());
        let l = letter("550 mailbox full", now);
        assert!(Filter::new().matches(&l));
        assert!(Filter::new().reason_spec("550").expect("text").matches(&l));
        assert!(Filter::new()
            .reason_spec("/^5\\d\\d /")
            .expect("re")
            .matches(&l));
        assert!(!Filter::new().reason_spec("/^4/").expect("re").matches(&l));
        assert!(Filter::new().header("tenant", "acme").matches(&l));
        assert!(!Filter::new().header("tenant", "other").matches(&l));
        assert!(Filter::new().id("a").id("b").matches(&l));
        assert!(!Filter::new().id("b").matches(&l));
        assert!(Filter::new().original_source("jobs").matches(&l));
        assert!(!Filter::new().original_source("mail").matches(&l));
        assert!(Filter::new()
            .younger_than(Duration::from_secs(60))
            .matches(&l));
        let old = letter("x", now.saturating_sub(7_200_000));
        assert!(!Filter::new()
            .younger_than(Duration::from_secs(3600))
            .matches(&old));
        assert!(Filter::new().younger_than(Duration::MAX).matches(&old));
        assert!(!Filter::new().offsets(None, 0..=5).matches(&l));
        let positioned = l.with_metadata(LogPosition {
            partition: 1,
            offset: 3,
        });
        assert!(Filter::new().offsets(None, 0..=5).matches(&positioned));
        assert!(!Filter::new().offsets(Some(0), 0..=5).matches(&positioned));
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let e = ReasonMatch::parse("/(/").expect_err("bad");
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(matches!(
            ReasonMatch::parse("/"),
            Ok(ReasonMatch::Contains(_))
        ));
    }
}
