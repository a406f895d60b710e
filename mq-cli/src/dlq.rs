//! `mq dlq`.

use std::time::Duration;

use mq::{headers, Consumer, Producer};

use crate::output::message_json;
use crate::CliResult;

/// Arguments of `mq dlq`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker URL.
    url: String,
    /// The source whose dead letters to show (its dead-letter destination is derived).
    source: String,
    /// Move the dead letters back to the source (reason headers removed).
    #[arg(long)]
    redrive: bool,
    /// Stop when no dead letter arrives for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Handle at most this many messages.
    #[arg(long)]
    max: Option<u64>,
}

pub(crate) async fn run(args: Args, json: bool) -> CliResult {
    let idle = Duration::try_from_secs_f64(args.idle).map_err(|_| {
        format!(
            "--idle must be a positive number of seconds, not {}",
            args.idle
        )
    })?;
    let client = mq::connect(&args.url).await?;
    let dlq = client.dead_letter_destination(&args.source);
    let producer = client.producer().await?;
    let mut consumer = client.consumer(&dlq).prefetch(100).await?;
    let mut held = Vec::new();
    let mut count = 0u64;
    while args.max.is_none_or(|m| count < m) {
        let batch = consumer.receive_batch(100, idle).await?;
        if batch.is_empty() {
            break;
        }
        for d in batch {
            count += 1;
            if json {
                println!("{}", message_json(&d));
            } else {
                println!(
                    "{}  attempt {}  reason: {}",
                    d.id(),
                    d.headers().get(headers::ATTEMPT).unwrap_or("?"),
                    d.headers()
                        .get(headers::DEAD_LETTER_REASON)
                        .unwrap_or("(none)")
                );
            }
            if args.redrive {
                // A replay copy: same id, fresh broker dedup id (a FIFO
                // queue would otherwise swallow it), the reasons kept.
                producer
                    .send(&args.source, mq::republish::replay_copy(&d))
                    .await?;
                d.ack().await?;
            } else {
                held.push(d);
            }
        }
    }
    // Listed but not redriven: they stay in the dead-letter queue.
    consumer.close().await?;
    drop(held);
    if !json {
        let verb = if args.redrive {
            "moved back to"
        } else {
            "dead letters of"
        };
        println!("{count} message(s) {verb} {}", args.source);
    }
    Ok(())
}
