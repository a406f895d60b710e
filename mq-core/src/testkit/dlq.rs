//! The dead-letter operations test (issue 19), the same steps on every
//! backend: [`dead_letter_operations`].
//!
//! 1. 50 messages are sent to a fresh source (every fifth payload is not
//!    UTF-8; some carry odd headers: spaces, non-ASCII, newlines, empty
//!    values), received and dead-lettered through the backend's own
//!    dead-letter path: 30 with reason `timeout after 3 attempts`, 20 with
//!    `550 mailbox full`.
//! 2. A list filtered by `550` (text) and by `/^550 /` (regex) shows exactly
//!    those 20; an unfiltered list shows 50; on a log, an offset range of
//!    one partition selects exactly the dead letters there.
//! 3. A replay of those 20 at 10 per second takes 1.5 to 4 s; they arrive
//!    at the source with their ids, `mq-replayed: 1` and their reason; the
//!    other 30 stay dead letters.
//! 4. Export (JSON Lines) of the 30, purge, import: the 30 dead letters read
//!    back are byte-identical to the export (payload, headers, id, key).
//! 5. A replay of the 30 at 20 per second is aborted after 10
//!    confirmations: every id is still a dead letter or arrived at the
//!    source (lost = 0).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::capabilities::DeadLetterListing;
use crate::client::Client;
use crate::consumer::Consumer;
use crate::dead_letter_reader::LogPosition;
use crate::dlq::{parse_lines, DeadLetters, Filter, Record, ReplayOptions};
use crate::message::{headers, Message};
use crate::producer::Producer;

use super::{receive_within, Target, ARRIVAL};

/// Messages dead-lettered in step 1.
pub const TOTAL: usize = 50;
/// Of those, dead-lettered with [`REASON_550`].
pub const MATCHING: usize = 20;
/// The reason the filter selects.
pub const REASON_550: &str = "550 mailbox full";
/// The other reason.
pub const REASON_TIMEOUT: &str = "timeout after 3 attempts";
/// Replay rate of step 3, messages per second.
pub const RATE: f64 = 10.0;
/// Confirmations after which step 5 aborts its replay.
pub const ABORT_AFTER: usize = 10;

/// The numbers [`dead_letter_operations`] measured.
#[derive(Debug, Clone, Default)]
pub struct DlqNumbers {
    /// Backend name.
    pub backend: String,
    /// Dead letters listed without a filter after step 1.
    pub listed_all: usize,
    /// Listed with the `550` filter.
    pub listed_matching: usize,
    /// Replayed in step 3, and how long that took.
    pub replayed: usize,
    /// Duration of the rate-limited replay (first send to last removal).
    pub replay_elapsed: Duration,
    /// Of the replayed, arrived at the source with id, `mq-replayed: 1` and reason.
    pub arrived: usize,
    /// Dead letters left after the replay.
    pub kept: usize,
    /// Exported, then read back identical after purge and import.
    pub exported: usize,
    /// Of those, byte-identical after the round trip.
    pub round_trip_identical: usize,
    /// Step 5: confirmations before the abort, ids still dead letters,
    /// ids arrived at the source, ids in both (duplicates), ids in neither (lost).
    pub abort_confirmed: usize,
    /// Step 5: still dead letters.
    pub abort_still_dead: usize,
    /// Step 5: arrived at the source.
    pub abort_arrived: usize,
    /// Step 5: in both places.
    pub abort_duplicates: usize,
    /// Step 5: in neither.
    pub abort_lost: usize,
}

impl fmt::Display for DlqNumbers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dlq {}: dead-lettered {TOTAL} (listed {}), filter 550 listed {}, replayed {} at {RATE}/s in {:.2} s, \
             arrived {}, kept {}, export/import {} of {} identical, abort after {}: still dead {} / arrived {} / \
             duplicates {} / lost {}",
            self.backend,
            self.listed_all,
            self.listed_matching,
            self.replayed,
            self.replay_elapsed.as_secs_f64(),
            self.arrived,
            self.kept,
            self.round_trip_identical,
            self.exported,
            self.abort_confirmed,
            self.abort_still_dead,
            self.abort_arrived,
            self.abort_duplicates,
            self.abort_lost,
        )
    }
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// Runs the steps of the module docs against `target`; `Err` says which
/// step failed and how. The numbers are returned for the report either way
/// they are complete only on success.
pub async fn dead_letter_operations(target: &Target) -> Result<DlqNumbers, String> {
    let client = target.connect().await.map_err(|e| e.to_string())?;
    let mut n = DlqNumbers {
        backend: target.backend.clone(),
        ..DlqNumbers::default()
    };
    let id = crate::message::new_message_id().replace('-', "");
    let source = format!("mqt-dlq-{}", &id[20..]);
    let dl = client
        .dead_letters(&source)
        .idle(Duration::from_secs(3))
        .hold(1000);
    let result = steps(&client, &source, &dl, &mut n).await;
    // Leave nothing behind, whatever happened.
    let _ = dl.purge(&Filter::new(), false, &mut |_, _| {}).await;
    result.map(|()| n)
}

async fn steps(
    client: &Client,
    source: &str,
    dl: &DeadLetters,
    n: &mut DlqNumbers,
) -> Result<(), String> {
    // 1. Dead-letter 50 through the backend's own path.
    let sent = dead_letter_fifty(client, source).await?;
    let matching: HashSet<String> = sent
        .iter()
        .filter(|(_, r)| r.as_str() == REASON_550)
        .map(|(id, _)| id.clone())
        .collect();
    let others: HashSet<String> = sent
        .iter()
        .filter(|(_, r)| r.as_str() != REASON_550)
        .map(|(id, _)| id.clone())
        .collect();

    // 2. Lists.
    let all = wait_for_count(dl, &Filter::new(), TOTAL).await?;
    n.listed_all = all.len();
    ensure!(
        all == sent.keys().cloned().collect::<HashSet<_>>(),
        "an unfiltered list shows {} dead letters, not the {TOTAL} sent",
        all.len()
    );
    let text = Filter::new()
        .reason_spec("550")
        .map_err(|e| e.to_string())?;
    let listed = list_ids(dl, &text).await?;
    n.listed_matching = listed.len();
    ensure!(
        listed == matching,
        "list --filter 550 shows {} (expected exactly the {MATCHING} matching)",
        listed.len()
    );
    let re = Filter::new()
        .reason_spec("/^550 /")
        .map_err(|e| e.to_string())?;
    ensure!(
        list_ids(dl, &re).await? == matching,
        "list --filter /^550 / differs from the {MATCHING} matching"
    );

    if dl.listing() == DeadLetterListing::Log {
        offsets_select_a_range(dl).await?;
    }

    // 3. Replay at 10/s.
    let report = dl
        .replay(&text, &ReplayOptions::new().rate(RATE), &mut |_, _| {})
        .await
        .map_err(|e| format!("replay: {e}"))?;
    n.replayed = report.replayed;
    n.replay_elapsed = report.elapsed;
    ensure!(
        report.replayed == MATCHING && report.failed.is_empty() && report.not_removed.is_empty(),
        "replay: {report}"
    );
    ensure!(
        (1.5..=4.0).contains(&report.elapsed.as_secs_f64()),
        "replay of {MATCHING} at {RATE}/s took {:.2} s (expected 1.5 to 4 s)",
        report.elapsed.as_secs_f64()
    );
    let arrived = drain_source(client, source, MATCHING).await?;
    for (id, m) in &arrived {
        ensure!(matching.contains(id), "replayed {id} was not selected");
        ensure!(
            m.get(headers::REPLAYED).map(String::as_str) == Some("1"),
            "replayed {id} has mq-replayed {:?}",
            m.get(headers::REPLAYED)
        );
        ensure!(
            m.get(headers::DEAD_LETTER_REASON).map(String::as_str) == Some(REASON_550),
            "replayed {id} lost its reason: {:?}",
            m.get(headers::DEAD_LETTER_REASON)
        );
    }
    n.arrived = arrived.len();
    ensure!(
        arrived.len() == MATCHING,
        "{} of {MATCHING} replayed messages arrived at the source",
        arrived.len()
    );
    let kept = wait_for_count(dl, &Filter::new(), TOTAL - MATCHING).await?;
    n.kept = kept.len();
    ensure!(
        kept == others,
        "after the replay {} dead letters remain (expected the other {})",
        kept.len(),
        TOTAL - MATCHING
    );

    // 4. Export, purge, import, compare.
    let mut buf = Vec::new();
    let exported = dl
        .export(&Filter::new(), &mut buf)
        .await
        .map_err(|e| format!("export: {e}"))?;
    n.exported = exported;
    let text_out = String::from_utf8(buf).map_err(|e| format!("export is not UTF-8: {e}"))?;
    let records = parse_lines(&text_out).map_err(|e| format!("export does not parse: {e}"))?;
    ensure!(
        records.len() == others.len(),
        "exported {} records, expected {}",
        records.len(),
        others.len()
    );
    let purged = dl
        .purge(&Filter::new(), false, &mut |_, _| {})
        .await
        .map_err(|e| format!("purge: {e}"))?;
    ensure!(
        purged.removed == others.len(),
        "purge removed {}: {purged}",
        purged.removed
    );
    ensure!(
        wait_for_count(dl, &Filter::new(), 0).await?.is_empty(),
        "dead letters remain after purge"
    );
    let imported = dl
        .import(&records, None, false, &mut |_, _| {})
        .await
        .map_err(|e| format!("import: {e}"))?;
    ensure!(imported.sent == records.len(), "import: {imported}");
    wait_for_count(dl, &Filter::new(), records.len()).await?;
    let mut back = Vec::new();
    dl.export(&Filter::new(), &mut back)
        .await
        .map_err(|e| format!("export after import: {e}"))?;
    let back = parse_lines(&String::from_utf8_lossy(&back))
        .map_err(|e| format!("second export does not parse: {e}"))?;
    let by_id = |rs: &[Record]| -> BTreeMap<String, Record> {
        rs.iter()
            .map(|r| {
                let mut r = r.clone();
                r.source = None;
                (r.id.clone(), r)
            })
            .collect()
    };
    let (before, after) = (by_id(&records), by_id(&back));
    n.round_trip_identical = before
        .iter()
        .filter(|(id, r)| after.get(*id) == Some(*r))
        .count();
    if let Some((id, r)) = before.iter().find(|(id, r)| after.get(*id) != Some(*r)) {
        return Err(format!(
            "export/import changed {id}:\n before {r:?}\n after  {:?}",
            after.get(id)
        ));
    }
    ensure!(
        records
            .iter()
            .any(|r| r.payload_encoding.as_deref() == Some(crate::dlq::BASE64)),
        "no non-UTF-8 payload was exported (the test must cover one)"
    );

    // 5. A replay aborted after 10 confirmations loses nothing.
    abort_midway(client, source, dl, &others, n).await
}

/// On a log: `Filter::offsets` selects exactly the dead letters of one
/// partition within an offset range.
async fn offsets_select_a_range(dl: &DeadLetters) -> Result<(), String> {
    let all = dl
        .list(&Filter::new())
        .await
        .map_err(|e| format!("list: {e}"))?;
    let positions: Vec<(String, LogPosition)> = all
        .letters
        .iter()
        .filter_map(|l| l.metadata::<LogPosition>().map(|p| (l.id().to_owned(), *p)))
        .collect();
    ensure!(
        positions.len() == all.letters.len(),
        "a log listing returned dead letters without a position"
    );
    let Some(first) = positions.iter().map(|(_, p)| *p).min() else {
        return Err("no dead letters to select by offset".into());
    };
    let range = first.offset..=first.offset.saturating_add(2);
    let expected: HashSet<String> = positions
        .iter()
        .filter(|(_, p)| p.partition == first.partition && range.contains(&p.offset))
        .map(|(id, _)| id.clone())
        .collect();
    let got = list_ids(
        dl,
        &Filter::new().offsets(Some(first.partition), range.clone()),
    )
    .await?;
    ensure!(
        !expected.is_empty() && got == expected,
        "offsets {}:{range:?} selected {} dead letters, expected {}",
        first.partition,
        got.len(),
        expected.len()
    );
    Ok(())
}

/// Sends 50 and dead-letters them; returns id -> reason.
async fn dead_letter_fifty(
    client: &Client,
    source: &str,
) -> Result<HashMap<String, String>, String> {
    let producer = client.producer().await.map_err(|e| e.to_string())?;
    let mut consumer = client
        .consumer(source)
        .prefetch(TOTAL)
        .await
        .map_err(|e| e.to_string())?;
    let mut reasons = HashMap::new();
    for i in 0..TOTAL {
        let payload: Vec<u8> = if i % 5 == 0 {
            vec![0xff, 0x00, 0xfe, u8::try_from(i).unwrap_or(0), b'\n']
        } else {
            format!("message {i} ✉").into_bytes()
        };
        let mut m = Message::new(payload).with_header("n", i.to_string());
        if i % 3 == 0 {
            m = m
                .with_header("odd header ✓", "line1\nline2\t\"quoted\"")
                .with_header("empty", "")
                .with_key(format!("key-{i}"));
        }
        let reason = if i < MATCHING {
            REASON_550
        } else {
            REASON_TIMEOUT
        };
        reasons.insert(m.id().to_owned(), reason.to_owned());
        producer
            .send(source, m)
            .await
            .map_err(|e| format!("send {i}: {e}"))?;
    }
    let mut done = 0;
    let deadline = Instant::now() + ARRIVAL;
    while done < TOTAL && Instant::now() < deadline {
        let Some(d) = receive_within(&mut consumer, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let Some(reason) = reasons.get(d.id()).cloned() else {
            d.ack().await.map_err(|e| e.to_string())?;
            continue;
        };
        d.dead_letter(reason)
            .await
            .map_err(|e| format!("dead_letter: {e}"))?;
        done += 1;
    }
    let _ = consumer.close().await;
    ensure!(
        done == TOTAL,
        "only {done} of {TOTAL} were received to dead-letter"
    );
    Ok(reasons)
}

async fn list_ids(dl: &DeadLetters, filter: &Filter) -> Result<HashSet<String>, String> {
    let listing = dl.list(filter).await.map_err(|e| format!("list: {e}"))?;
    let ids: HashSet<String> = listing.letters.iter().map(|l| l.id().to_owned()).collect();
    ensure!(
        ids.len() == listing.letters.len(),
        "a list showed a dead letter twice ({} letters, {} ids)",
        listing.letters.len(),
        ids.len()
    );
    Ok(ids)
}

/// Lists until `count` dead letters show (brokers that move dead letters
/// asynchronously, SQS visibility after an abort) or [`ARRIVAL`] passes;
/// returns the last listing.
async fn wait_for_count(
    dl: &DeadLetters,
    filter: &Filter,
    count: usize,
) -> Result<HashSet<String>, String> {
    let deadline = Instant::now() + ARRIVAL;
    loop {
        let ids = list_ids(dl, filter).await?;
        if ids.len() == count || Instant::now() >= deadline {
            return Ok(ids);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Receives from `source` until `expect` arrived (or a quiet period after
/// the deadline), acking each; returns id -> headers.
async fn drain_source(
    client: &Client,
    source: &str,
    expect: usize,
) -> Result<HashMap<String, BTreeMap<String, String>>, String> {
    let mut consumer = client
        .consumer(source)
        .prefetch(TOTAL)
        .await
        .map_err(|e| e.to_string())?;
    let mut got = HashMap::new();
    let deadline = Instant::now() + ARRIVAL;
    while Instant::now() < deadline {
        let wait = if got.len() >= expect {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        let Some(d) = receive_within(&mut consumer, wait)
            .await
            .map_err(|e| e.to_string())?
        else {
            if got.len() >= expect {
                break;
            }
            continue;
        };
        let h = d
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        got.insert(d.id().to_owned(), h);
        d.ack().await.map_err(|e| e.to_string())?;
    }
    let _ = consumer.close().await;
    Ok(got)
}

async fn abort_midway(
    client: &Client,
    source: &str,
    dl: &DeadLetters,
    ids: &HashSet<String>,
    n: &mut DlqNumbers,
) -> Result<(), String> {
    let confirmed = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let task = {
        let dl = dl.clone();
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            dl.replay(
                &Filter::new(),
                &ReplayOptions::new().rate(20.0),
                &mut move |done, _| {
                    confirmed.store(done, Ordering::SeqCst);
                    if done >= ABORT_AFTER {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                },
            )
            .await
        })
    };
    let _ = tokio::time::timeout(ARRIVAL, rx).await;
    task.abort();
    let _ = task.await;
    n.abort_confirmed = confirmed.load(Ordering::SeqCst);
    ensure!(
        n.abort_confirmed >= ABORT_AFTER && n.abort_confirmed < ids.len(),
        "the replay was not aborted midway ({} confirmed of {})",
        n.abort_confirmed,
        ids.len()
    );
    // Account for every id: arrived at the source, or still a dead letter
    // (released ones may take a moment to become visible again).
    let arrived: HashSet<String> = drain_source(client, source, n.abort_confirmed)
        .await?
        .into_keys()
        .collect();
    let deadline = Instant::now() + ARRIVAL;
    let mut still = list_ids(dl, &Filter::new()).await?;
    while ids
        .iter()
        .any(|id| !arrived.contains(id) && !still.contains(id))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        still = list_ids(dl, &Filter::new()).await?;
    }
    n.abort_arrived = ids.intersection(&arrived).count();
    n.abort_still_dead = ids.intersection(&still).count();
    n.abort_duplicates = ids
        .iter()
        .filter(|id| arrived.contains(*id) && still.contains(*id))
        .count();
    n.abort_lost = ids
        .iter()
        .filter(|id| !arrived.contains(*id) && !still.contains(*id))
        .count();
    ensure!(
        n.abort_lost == 0,
        "{} of {} ids were lost by the aborted replay",
        n.abort_lost,
        ids.len()
    );
    ensure!(
        n.abort_arrived >= n.abort_confirmed,
        "{} confirmed replays but only {} arrived",
        n.abort_confirmed,
        n.abort_arrived
    );
    Ok(())
}
