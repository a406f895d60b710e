//! `mq send`.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use mq::{Message, ProducerExt};

use crate::output::progress;
use crate::CliResult;

/// Arguments of `mq send`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker URL (e.g. memory://, amqp://user:pass@host:5672/vhost, kafka://host:9092).
    url: String,
    /// Destination queue or topic.
    destination: String,
    /// Payload text of each message.
    #[arg(long, conflicts_with = "file")]
    data: Option<String>,
    /// Payload: the whole content of this file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// How many messages to send (default 1; with stdin, one per line and this is ignored).
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Generate payloads of this many bytes (when no --data/--file/stdin).
    #[arg(long)]
    size: Option<usize>,
    /// A header `KEY=VALUE` (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Ordering/partition key of every message.
    #[arg(long)]
    key: Option<String>,
    /// Make sure consumer group G exists before sending, so it receives
    /// these messages on brokers where late groups miss earlier ones.
    #[arg(long)]
    group: Option<String>,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("header must be KEY=VALUE, got `{s}`"))
}

/// Where payloads come from.
enum Source {
    Fixed(Vec<u8>),
    Lines(Vec<String>),
}

fn payloads(args: &Args) -> CliResult<Source> {
    if let Some(d) = &args.data {
        return Ok(Source::Fixed(d.clone().into_bytes()));
    }
    if let Some(f) = &args.file {
        let bytes = std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        return Ok(Source::Fixed(bytes));
    }
    if let Some(size) = args.size {
        return Ok(Source::Fixed(
            (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        ));
    }
    if !std::io::stdin().is_terminal() {
        let lines = std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(Source::Lines(lines));
    }
    Err("nothing to send: give --data, --file, --size or lines on stdin".into())
}

pub(crate) async fn run(args: Args, json: bool) -> CliResult {
    let source = payloads(&args)?;
    let client = mq::connect(&args.url).await?;
    if let Some(group) = &args.group {
        let mut consumer = client.consumer(&args.destination).group(group).await?;
        mq::Consumer::close(&mut consumer).await?;
    }
    let producer = client.producer().await?;
    let bodies: Box<dyn Iterator<Item = Vec<u8>>> = match source {
        Source::Fixed(b) => Box::new(std::iter::repeat_n(b, args.count as usize)),
        Source::Lines(lines) => Box::new(lines.into_iter().map(String::into_bytes)),
    };
    let (lower, _) = bodies.size_hint();
    let bar = progress(lower as u64, "sending");
    let mut pipeline = producer.pipeline(args.in_flight);
    for body in bodies {
        let mut m = Message::new(body);
        for (k, v) in &args.headers {
            m = m.with_header(k.clone(), v.clone());
        }
        if let Some(k) = &args.key {
            m = m.with_key(k.clone());
        }
        pipeline.send(&args.destination, m).await;
        bar.inc(1);
    }
    let report = pipeline.finish().await;
    bar.finish_and_clear();
    let failed = report.failures.len();
    if json {
        println!(
            "{}",
            serde_json::json!({"sent": report.sent, "failed": failed})
        );
    } else {
        println!("{} message(s) confirmed by the broker", report.sent);
    }
    if let Some((id, e)) = report.failures.into_iter().next() {
        return Err(format!("{failed} message(s) failed; first ({id}): {e}").into());
    }
    Ok(())
}
