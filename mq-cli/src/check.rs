//! `mq check`.

use std::time::{Duration, Instant};

use mq::{Consumer, Message, Producer};

use crate::CliResult;

/// Arguments of `mq check`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker URL.
    url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

pub(crate) async fn run(args: Args, json: bool) -> CliResult {
    let timeout = Duration::try_from_secs_f64(args.timeout).map_err(|_| {
        format!(
            "--timeout must be a positive number of seconds, not {}",
            args.timeout
        )
    })?;
    let shown = mq::url::redact_str(&args.url);
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, round_trip(&args.url)).await;
    let (connect, send, receive) = match outcome {
        Ok(result) => result.map_err(|e| format!("{shown}: {e}"))?,
        Err(_) => return Err(format!("{shown}: no answer within {}s", args.timeout).into()),
    };
    let total = started.elapsed();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "url": shown, "ok": true,
                "connect_ms": ms(connect), "send_ms": ms(send), "receive_ms": ms(receive), "total_ms": ms(total),
            })
        );
    } else {
        println!(
            "ok: {shown} connect {:.1} ms, send (confirmed) {:.1} ms, receive+ack {:.1} ms",
            ms(connect),
            ms(send),
            ms(receive)
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Connects, sends one message to a fresh scratch destination and receives it.
async fn round_trip(url: &str) -> mq::Result<(Duration, Duration, Duration)> {
    let t = Instant::now();
    let client = mq::connect(url).await?;
    let producer = client.producer().await?;
    let scratch = format!("mq-check-{}", uuid::Uuid::now_v7().simple());
    let mut consumer = client.consumer(&scratch).await?;
    let connect = t.elapsed();
    let t = Instant::now();
    let sent = Message::new("mq check");
    producer.send(&scratch, sent.clone()).await?;
    let send = t.elapsed();
    let t = Instant::now();
    loop {
        let d = consumer.receive().await?;
        let ours = d.id() == sent.id();
        d.ack().await?;
        if ours {
            break;
        }
    }
    let receive = t.elapsed();
    consumer.close().await?;
    client.close().await?;
    Ok((connect, send, receive))
}
