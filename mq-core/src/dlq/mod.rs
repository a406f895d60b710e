//! Operating dead letters on every backend: list, filter, replay with a
//! rate limit, export to JSON Lines and import back, purge.
//!
//! ```no_run
//! # async fn f(client: mq_core::Client) -> mq_core::Result<()> {
//! use std::time::Duration;
//! use mq_core::dlq::{Filter, ReplayOptions};
//!
//! let emails = client.dead_letters("emails");
//! let recent_550 = Filter::new()
//!     .younger_than(Duration::from_secs(3600))
//!     .reason_spec("/\\b550\\b/")?;
//! let listing = emails.list(&recent_550).await?; // nothing removed
//! println!("{} of {} match", listing.letters.len(), listing.scanned);
//! let report = emails
//!     .replay(&recent_550, &ReplayOptions::new().rate(5.0), &mut |_done, _total| {})
//!     .await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! Every operation is a *scan* of the dead-letter destination
//! ([`Client::dead_letter_destination`], `<source>-dlq`) through the
//! backend's [`DeadLetterReader`]: what the scan selects is acted on, what
//! it does not select is released unchanged when the operation ends (or is
//! cancelled). How a backend lists without removing is its
//! [`DeadLetterListing`]: queues hold
//! and release, logs are read by position.
//!
//! **Replay never loses a message**: for each selected dead letter it sends
//! [`replay_copy`] to the destination, waits for the broker's
//! confirmation, and only then removes the dead letter. A crash or a
//! cancelled future between the two leaves the message in both places (the
//! same id: a duplicate an idempotent consumer recognises), never in none.
//! The copy keeps its id, payload, key and every header, including the
//! reason it was dead-lettered for; `mq-replayed` counts its replays; if it
//! fails again, its new dead-letter copy moves the old reason to
//! `mq-previous-reasons`.

mod export;
mod filter;
mod rate;

use std::fmt;
use std::time::{Duration, Instant};

pub use export::{parse_lines, Record, BASE64};
pub use filter::{dead_lettered_at, Filter, ReasonMatch};
pub use rate::Pacer;

use crate::capabilities::DeadLetterListing;
use crate::client::Client;
use crate::dead_letter_reader::DeadLetterReader;
use crate::delivery::{Delivery, Received};
use crate::error::{Error, Result};
use crate::message::{headers, new_message_id};
use crate::producer::Producer;
use crate::republish::replay_copy;

/// The default of [`DeadLetters::hold`]: dead letters one scan reads at most.
pub const DEFAULT_HOLD: usize = 10_000;
/// The default of [`DeadLetters::idle`].
pub const DEFAULT_IDLE: Duration = Duration::from_secs(2);
/// Dead letters asked for per read.
const BATCH: usize = 100;

impl Client {
    /// The dead letters of `source` (in [`Client::dead_letter_destination`]).
    pub fn dead_letters(&self, source: impl Into<String>) -> DeadLetters {
        let source = source.into();
        DeadLetters {
            destination: self.dead_letter_destination(&source),
            client: self.clone(),
            source,
            hold: DEFAULT_HOLD,
            idle: DEFAULT_IDLE,
            limit: None,
        }
    }
}

/// The dead letters of one source; made by [`Client::dead_letters`].
#[derive(Debug, Clone)]
pub struct DeadLetters {
    client: Client,
    source: String,
    destination: String,
    hold: usize,
    idle: Duration,
    limit: Option<usize>,
}

impl DeadLetters {
    /// Reads the dead letters from `destination` instead of the source's
    /// default dead-letter destination.
    pub fn destination_name(mut self, destination: impl Into<String>) -> Self {
        self.destination = destination.into();
        self
    }

    /// Reads at most `hold` dead letters per operation (at least 1). On a
    /// queue they are all held unsettled until the operation ends.
    pub fn hold(mut self, hold: usize) -> Self {
        self.hold = hold.max(1);
        self
    }

    /// On a queue, the scan ends when nothing arrives for `idle`.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Acts on at most `limit` selected dead letters (the scan stops there).
    pub fn limit(mut self, limit: Option<usize>) -> Self {
        self.limit = limit;
        self
    }

    /// The source whose dead letters these are.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where they are read from.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// How the backend lists without removing.
    pub fn listing(&self) -> DeadLetterListing {
        self.client.capabilities().dead_letter_listing
    }

    /// The dead letters `filter` selects; nothing is removed.
    pub async fn list(&self, filter: &Filter) -> Result<Listing> {
        let mut scan = self.scan(filter).await?;
        let mut letters = Vec::new();
        loop {
            let batch = scan.next().await?;
            if batch.is_empty() {
                break;
            }
            letters.extend(batch.iter().map(|d| d.received().clone()));
            scan.release(batch).await?;
        }
        let scanned = scan.scanned;
        scan.finish().await?;
        Ok(Listing { letters, scanned })
    }

    /// Replays what `filter` selects (see the module docs for the order of
    /// send, confirm and remove); `progress(done, selected so far)` is
    /// called after each one.
    pub async fn replay(
        &self,
        filter: &Filter,
        options: &ReplayOptions,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<ReplayReport> {
        let mut pacer = options.rate.map(Pacer::new).transpose()?;
        let producer = self.client.producer().await?;
        let mut scan = self.scan(filter).await?;
        let mut report = ReplayReport {
            dry_run: options.dry_run,
            ..ReplayReport::default()
        };
        let mut started = None;
        let mut done = 0usize;
        loop {
            let batch = scan.next().await?;
            if batch.is_empty() {
                break;
            }
            let mut keep = Vec::new();
            for letter in batch {
                let to = self.replay_destination(&letter, options);
                done = done.saturating_add(1);
                if options.dry_run {
                    report.would_replay.push((letter.id().to_owned(), to));
                    keep.push(letter);
                    progress(done, scan.selected);
                    continue;
                }
                if let Some(p) = pacer.as_mut() {
                    p.ready().await;
                }
                started.get_or_insert_with(Instant::now);
                match producer.send(&to, replay_copy(&letter)).await {
                    Ok(()) => {
                        report.replayed += 1;
                        let id = letter.id().to_owned();
                        // Confirmed at the destination: now remove the dead letter.
                        if let Err(e) = letter.ack().await {
                            report.not_removed.push((id, e.to_string()));
                        }
                    }
                    Err(e) => {
                        report.failed.push((letter.id().to_owned(), e.to_string()));
                        keep.push(letter);
                    }
                }
                progress(done, scan.selected);
            }
            report.elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
            scan.release(keep).await?;
        }
        report.scanned = scan.scanned;
        report.selected = scan.selected;
        scan.finish().await?;
        Ok(report)
    }

    /// Removes what `filter` selects (with `dry_run`, only counts it).
    pub async fn purge(
        &self,
        filter: &Filter,
        dry_run: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<PurgeReport> {
        let mut scan = self.scan(filter).await?;
        let mut report = PurgeReport {
            dry_run,
            ..PurgeReport::default()
        };
        let mut done = 0usize;
        loop {
            let batch = scan.next().await?;
            if batch.is_empty() {
                break;
            }
            let mut keep = Vec::new();
            for letter in batch {
                done = done.saturating_add(1);
                if dry_run {
                    keep.push(letter);
                } else {
                    let id = letter.id().to_owned();
                    match letter.ack().await {
                        Ok(()) => report.removed += 1,
                        Err(e) => report.failed.push((id, e.to_string())),
                    }
                }
                progress(done, scan.selected);
            }
            scan.release(keep).await?;
        }
        report.scanned = scan.scanned;
        report.selected = scan.selected;
        scan.finish().await?;
        Ok(report)
    }

    /// Writes what `filter` selects to `out` as JSON Lines ([`Record`]);
    /// nothing is removed. Returns how many were written.
    pub async fn export(
        &self,
        filter: &Filter,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<usize> {
        let mut scan = self.scan(filter).await?;
        let mut written = 0usize;
        loop {
            let batch = scan.next().await?;
            if batch.is_empty() {
                break;
            }
            written = written.saturating_add(write_records(&batch, out)?);
            scan.release(batch).await?;
        }
        scan.finish().await?;
        Ok(written)
    }

    /// Sends `records` (from [`parse_lines`]) to `to`, by default back to
    /// this dead-letter destination. Each keeps its id, key, headers and
    /// payload bytes, with a fresh broker deduplication id (a FIFO queue
    /// that saw the id recently would otherwise drop it).
    pub async fn import(
        &self,
        records: &[Record],
        to: Option<&str>,
        dry_run: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<ImportReport> {
        let to = to.unwrap_or(&self.destination).to_owned();
        let messages = records
            .iter()
            .map(Record::to_message)
            .collect::<Result<Vec<_>>>()?;
        let mut report = ImportReport {
            destination: to.clone(),
            records: messages.len(),
            dry_run,
            ..ImportReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        let producer = self.client.producer().await?;
        let total = messages.len();
        for (done, message) in messages.into_iter().enumerate() {
            let id = message.id().to_owned();
            match producer
                .send(&to, message.with_dedup_id(new_message_id()))
                .await
            {
                Ok(()) => report.sent += 1,
                Err(e) => report.failed.push((id, e.to_string())),
            }
            progress(done.saturating_add(1), total);
        }
        Ok(report)
    }

    fn replay_destination(&self, letter: &Received, options: &ReplayOptions) -> String {
        options
            .to
            .clone()
            .or_else(|| {
                letter
                    .headers()
                    .get(headers::ORIGINAL_SOURCE)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| self.source.clone())
    }

    async fn scan<'a>(&'a self, filter: &'a Filter) -> Result<Scan<'a>> {
        let reader = self
            .client
            .backend()
            .dead_letter_reader(&self.destination, self.hold)
            .await?;
        Ok(Scan {
            dl: self,
            filter,
            reader,
            scanned: 0,
            selected: 0,
            done: false,
        })
    }
}

/// One pass over the dead letters: hands out the selected ones batch by
/// batch and releases the rest through the reader (so none is read twice).
/// Dropping it (an error, a cancelled future) drops the reader and with it
/// every held dead letter: each goes back to the broker.
struct Scan<'a> {
    dl: &'a DeadLetters,
    filter: &'a Filter,
    reader: Box<dyn DeadLetterReader>,
    scanned: usize,
    selected: usize,
    done: bool,
}

impl Scan<'_> {
    /// The next selected dead letters; empty at the end (idle, end of log,
    /// `hold` read or `limit` selected).
    async fn next(&mut self) -> Result<Vec<Delivery>> {
        let limit = self.dl.limit.unwrap_or(usize::MAX);
        while !self.done {
            if self.scanned >= self.dl.hold || self.selected >= limit {
                self.done = true;
                break;
            }
            let want = BATCH.min(self.dl.hold - self.scanned);
            let batch = self
                .reader
                .next_batch(want, self.dl.idle)
                .await
                .map_err(|e| e.with_destination(self.dl.destination.clone()))?;
            if batch.is_empty() {
                self.done = true;
                break;
            }
            let (mut selected, mut others) = (Vec::new(), Vec::new());
            for d in batch {
                self.scanned += 1;
                if self.selected < limit && self.filter.matches(d.received()) {
                    self.selected += 1;
                    selected.push(d);
                } else {
                    others.push(d);
                }
            }
            self.reader.release(others).await?;
            if !selected.is_empty() {
                return Ok(selected);
            }
        }
        Ok(Vec::new())
    }

    /// Leaves `letters` in place (see [`DeadLetterReader::release`]).
    async fn release(&mut self, letters: Vec<Delivery>) -> Result<()> {
        self.reader.release(letters).await
    }

    /// Releases everything held and closes the reader.
    async fn finish(mut self) -> Result<()> {
        self.reader.close().await
    }
}

fn write_records(letters: &[Delivery], out: &mut (dyn std::io::Write + Send)) -> Result<usize> {
    for d in letters {
        let line = Record::of(d.received()).to_line()?;
        writeln!(out, "{line}").map_err(|e| {
            Error::new(crate::ErrorKind::Broker, "cannot write the export").with_source(e)
        })?;
    }
    out.flush().map_err(|e| {
        Error::new(crate::ErrorKind::Broker, "cannot write the export").with_source(e)
    })?;
    Ok(letters.len())
}

/// The dead letters a [`DeadLetters::list`] selected.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The selected dead letters, in the order read.
    pub letters: Vec<Received>,
    /// How many dead letters the scan read.
    pub scanned: usize,
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Send here instead of each dead letter's original source.
    pub to: Option<String>,
    /// At most this many per second.
    pub rate: Option<f64>,
    /// Only report what would be replayed, where to.
    pub dry_run: bool,
}

impl ReplayOptions {
    /// Replay to the original sources, as fast as confirmations come.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends to `destination` instead of the original source.
    pub fn to(mut self, destination: impl Into<String>) -> Self {
        self.to = Some(destination.into());
        self
    }

    /// At most `per_second` messages per second.
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = Some(per_second);
        self
    }

    /// Only report what would be replayed.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Dead letters read.
    pub scanned: usize,
    /// Of those, selected by the filter.
    pub selected: usize,
    /// Sent and confirmed at the destination.
    pub replayed: usize,
    /// (id, error) of sends that failed: they are still dead letters.
    pub failed: Vec<(String, String)>,
    /// (id, error) of replayed messages whose dead letter could not be
    /// removed: they are now in both places (a duplicate, same id).
    pub not_removed: Vec<(String, String)>,
    /// With dry run: (id, destination) of what would be replayed.
    pub would_replay: Vec<(String, String)>,
    /// Time from the first send to the last removal.
    pub elapsed: Duration,
    /// Nothing was sent.
    pub dry_run: bool,
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "dry run: {} of {} dead letters would be replayed",
                self.would_replay.len(),
                self.scanned
            );
        }
        write!(
            f,
            "replayed {} of {} selected ({} scanned) in {:.1} s; {} failed, {} replayed but not removed",
            self.replayed,
            self.selected,
            self.scanned,
            self.elapsed.as_secs_f64(),
            self.failed.len(),
            self.not_removed.len()
        )
    }
}

/// What a purge did.
#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    /// Dead letters read.
    pub scanned: usize,
    /// Of those, selected by the filter.
    pub selected: usize,
    /// Removed.
    pub removed: usize,
    /// (id, error) of removals that failed.
    pub failed: Vec<(String, String)>,
    /// Nothing was removed.
    pub dry_run: bool,
}

impl fmt::Display for PurgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "dry run: {} of {} dead letters would be purged",
                self.selected, self.scanned
            );
        }
        write!(
            f,
            "purged {} of {} selected ({} scanned); {} failed",
            self.removed,
            self.selected,
            self.scanned,
            self.failed.len()
        )
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Where the records were sent.
    pub destination: String,
    /// Records read.
    pub records: usize,
    /// Sent and confirmed.
    pub sent: usize,
    /// (id, error) of sends that failed.
    pub failed: Vec<(String, String)>,
    /// Nothing was sent.
    pub dry_run: bool,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            return write!(
                f,
                "dry run: {} records would be sent to {}",
                self.records, self.destination
            );
        }
        write!(
            f,
            "imported {} of {} records into {}; {} failed",
            self.sent,
            self.records,
            self.destination,
            self.failed.len()
        )
    }
}

#[cfg(test)]
mod tests;
