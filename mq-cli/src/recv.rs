//! `mq recv`.

use std::time::Duration;

use mq::Consumer;
use tokio::time::Instant;

use crate::output::message_json;
use crate::CliResult;

/// Arguments of `mq recv`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker URL.
    url: String,
    /// Queue or topic to receive from.
    source: String,
    /// Consumer group (default: the source's default group).
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Fail if --count messages have not arrived within this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Do not acknowledge: the messages go back to the broker when mq exits.
    #[arg(long)]
    no_ack: bool,
}

pub(crate) async fn run(args: Args) -> CliResult {
    let client = mq::connect(&args.url).await?;
    let mut builder = client.consumer(&args.source);
    if let Some(g) = &args.group {
        builder = builder.group(g);
    }
    let prefetch = usize::try_from(args.count)
        .unwrap_or(usize::MAX)
        .clamp(1, 1000);
    let mut consumer = builder.prefetch(prefetch).await?;
    let timeout = Duration::try_from_secs_f64(args.timeout).map_err(|_| {
        format!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        )
    })?;
    let deadline = mq::time::tokio_instant_after(timeout);
    let mut held = Vec::new();
    let mut got = 0u64;
    while got < args.count {
        let left = deadline.saturating_duration_since(Instant::now());
        let want = usize::try_from(args.count - got)
            .unwrap_or(usize::MAX)
            .min(100);
        let batch = consumer.receive_batch(want, left).await?;
        if batch.is_empty() {
            consumer.close().await?;
            return Err(format!(
                "timed out after {}s: received {got} of {} message(s) from {}",
                args.timeout, args.count, args.source
            )
            .into());
        }
        for d in batch {
            println!("{}", message_json(&d));
            got += 1;
            if args.no_ack {
                held.push(d);
            } else {
                d.ack().await?;
            }
        }
    }
    // Unacked deliveries go back to the broker with the consumer.
    consumer.close().await?;
    drop(held);
    Ok(())
}
