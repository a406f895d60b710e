//! `mq dlq replay` killed with SIGKILL midway loses nothing (issue 19).
//!
//! For each broker whose `MQ_TEST_<KEY>_URL` is set (SQS also with
//! `fifo=true`): 30 messages are
//! dead-lettered through the library, the `mq` binary replays them at 10
//! per second in a child process, the test consumes the source and kills
//! the child (SIGKILL, `Child::kill`) once 10 have arrived, then accounts
//! for every id: arrived at the source, or still a dead letter. Prints
//! `dlq kill <backend>: dead-lettered 30, arrived A, still dead S,
//! duplicates D, lost L`; L must be 0. memory:// is skipped: its dead
//! letters would live in the killed process.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mq::dlq::Filter;
use mq::{Consumer, Message, Producer};

const TOTAL: usize = 30;
const KILL_AFTER: usize = 10;

fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

type Res<T> = Result<T, String>;

async fn dead_letter(client: &mq::Client, source: &str) -> Res<HashSet<String>> {
    let producer = client.producer().await.map_err(|e| e.to_string())?;
    let mut ids = HashSet::new();
    for i in 0..TOTAL {
        let m = Message::new(format!("kill {i}"));
        ids.insert(m.id().to_owned());
        producer.send(source, m).await.map_err(|e| e.to_string())?;
    }
    let mut consumer = client
        .consumer(source)
        .prefetch(TOTAL)
        .await
        .map_err(|e| e.to_string())?;
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < TOTAL && Instant::now() < deadline {
        let Ok(d) = tokio::time::timeout(Duration::from_secs(5), consumer.receive()).await else {
            continue;
        };
        let d = d.map_err(|e| e.to_string())?;
        d.dead_letter("boom").await.map_err(|e| e.to_string())?;
        done += 1;
    }
    let _ = consumer.close().await;
    if done != TOTAL {
        return Err(format!("only {done} of {TOTAL} dead-lettered"));
    }
    Ok(ids)
}

async fn dead_ids(client: &mq::Client, source: &str) -> Res<HashSet<String>> {
    let listing = client
        .dead_letters(source)
        .list(&Filter::new())
        .await
        .map_err(|e| e.to_string())?;
    Ok(listing.letters.iter().map(|l| l.id().to_owned()).collect())
}

async fn run(backend: &str, url: &str) -> Res<()> {
    let client = mq::connect(url).await.map_err(|e| e.to_string())?;
    let source = format!(
        "mqt-dlq-kill-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let ids = dead_letter(&client, &source).await?;
    // The dead letters must be listable before the child starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead_ids(&client, &source).await?.len() < TOTAL && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut consumer = client
        .consumer(&source)
        .prefetch(TOTAL)
        .await
        .map_err(|e| e.to_string())?;
    // The URL goes through the environment of the child only as an argument
    // the test controls; it is never printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mq"))
        .args(["dlq", "replay", url, &source, "--rate", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start mq: {e}"))?;
    let mut arrived = HashSet::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if !killed && arrived.len() >= KILL_AFTER {
            child.kill().map_err(|e| format!("kill: {e}"))?;
            let _ = child.wait();
            killed = true;
        }
        let wait = if killed { 3 } else { 5 };
        match tokio::time::timeout(Duration::from_secs(wait), consumer.receive()).await {
            Ok(d) => {
                let d = d.map_err(|e| e.to_string())?;
                arrived.insert(d.id().to_owned());
                d.ack().await.map_err(|e| e.to_string())?;
            }
            Err(_) if killed => break,
            Err(_) => {}
        }
    }
    if !killed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "only {} arrived before the deadline; child not killed midway",
            arrived.len()
        ));
    }
    let _ = consumer.close().await;
    // Released dead letters may take a moment (SQS visibility) to show again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut still = dead_ids(&client, &source).await?;
    while ids
        .iter()
        .any(|i| !arrived.contains(i) && !still.contains(i))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        still = dead_ids(&client, &source).await?;
    }
    let lost = ids
        .iter()
        .filter(|i| !arrived.contains(*i) && !still.contains(*i))
        .count();
    let dup = ids
        .iter()
        .filter(|i| arrived.contains(*i) && still.contains(*i))
        .count();
    announce(&format!(
        "dlq kill {backend}: dead-lettered {TOTAL}, arrived {}, still dead {}, duplicates {dup}, lost {lost}",
        ids.intersection(&arrived).count(),
        ids.intersection(&still).count()
    ));
    let _ = client
        .dead_letters(&source)
        .purge(&Filter::new(), false, &mut |_, _| {})
        .await;
    if lost > 0 {
        return Err(format!("{lost} of {TOTAL} lost"));
    }
    if arrived.len() >= TOTAL {
        return Err("every message arrived: the child was not killed midway".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_killed_with_sigkill_loses_nothing() {
    let mut failures = Vec::new();
    for known in mq::BACKENDS {
        let Some(driver) = known.driver else {
            announce(&format!(
                "dlq kill {}: skipped (feature off)",
                known.feature
            ));
            continue;
        };
        let Ok(url) = std::env::var(driver.test_url_var()) else {
            announce(&format!(
                "dlq kill {}: skipped ({} is not set)",
                driver.name,
                driver.test_url_var()
            ));
            continue;
        };
        let mut targets = vec![(driver.name.to_owned(), url.clone())];
        if driver.name == "sqs" {
            let sep = if url.contains('?') { '&' } else { '?' };
            targets.push(("sqs fifo".to_owned(), format!("{url}{sep}fifo=true")));
        }
        for (name, url) in targets {
            if let Err(e) = run(&name, &url).await {
                announce(&format!("dlq kill {name}: FAILED: {e}"));
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
