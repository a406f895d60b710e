//! `mq dlq`: list, show, replay, export, import and purge dead letters,
//! on top of `mq::dlq` (see its docs for what list and remove mean on each
//! broker, and for why a replay never loses a message).

use std::io::{IsTerminal, Read};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mq::dlq::{parse_lines, DeadLetters, Filter, ReplayOptions};
use mq::{headers, Received};
use serde_json::json;

use crate::output::message_json;
use crate::CliResult;

/// Arguments of `mq dlq`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DlqCommand {
    /// One line per selected dead letter: id, age, attempt, reason. Nothing is removed.
    ///
    /// Example: mq dlq list URL emails --filter 550 --since 1h
    List(Select),
    /// Every field of the selected dead letters (payload, headers), one JSON object each.
    ///
    /// Example: mq dlq show URL emails --id 0190c0de-...
    Show(Select),
    /// Send the selected dead letters back to their original source (or --to),
    /// each confirmed by the broker before its dead letter is removed.
    ///
    /// Example: mq dlq replay URL emails --filter /^550/ --rate 5
    #[command(alias = "redrive")]
    Replay(ReplayArgs),
    /// Write the selected dead letters as JSON Lines (payload text as-is, base64
    /// when not UTF-8, marked); nothing is removed.
    ///
    /// Example: mq dlq export URL emails --output emails.jsonl
    Export(ExportArgs),
    /// Send JSON Lines (from `export`, edited or not) back into the dead-letter
    /// destination (or --to), ids, keys, headers and payload bytes unchanged.
    ///
    /// Example: mq dlq import URL emails --input emails.jsonl
    Import(ImportArgs),
    /// Remove the selected dead letters (without a filter, --all is required).
    ///
    /// Example: mq dlq purge URL emails --filter timeout --dry-run
    Purge(PurgeArgs),
}

/// Which broker, which dead letters.
#[derive(Debug, clap::Args)]
struct Select {
    /// Broker URL.
    url: String,
    /// The source whose dead letters to read (its dead-letter destination is derived).
    source: String,
    /// Reason contains this text, or matches /regex/.
    #[arg(long)]
    filter: Option<String>,
    /// Dead-lettered within this long (500ms, 30s, 5m, 1h).
    #[arg(long)]
    since: Option<String>,
    /// Header equals a value: --header tenant=acme (repeatable; all must hold).
    #[arg(long = "header", value_name = "K=V")]
    headers: Vec<String>,
    /// Message id (repeatable; any of them).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Dead-lettered from this source (mq-original-source).
    #[arg(long)]
    original_source: Option<String>,
    /// Kafka: offsets FROM..TO (inclusive), optionally in one partition: P:FROM..TO.
    #[arg(long)]
    offsets: Option<String>,
    /// Act on at most this many selected dead letters.
    #[arg(long)]
    limit: Option<usize>,
    /// Read from this dead-letter destination instead of SOURCE's default.
    #[arg(long)]
    dlq: Option<String>,
    /// Queues: the scan ends when nothing arrives for this many seconds.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Read at most this many dead letters (on a queue all are held until the command ends).
    #[arg(long, default_value_t = mq::dlq::DEFAULT_HOLD)]
    hold: usize,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    select: Select,
    /// At most this many messages per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Send to this destination instead of each message's original source.
    #[arg(long)]
    to: Option<String>,
    /// Only show what would be replayed, and where.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    select: Select,
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// Broker URL.
    url: String,
    /// The source whose dead-letter destination receives the records.
    source: String,
    /// Read from this file instead of stdin.
    #[arg(long, short)]
    input: Option<std::path::PathBuf>,
    /// Send to this destination instead of the dead-letter destination.
    #[arg(long)]
    to: Option<String>,
    /// Only parse and count.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
struct PurgeArgs {
    #[command(flatten)]
    select: Select,
    /// Purge every dead letter when no filter is given.
    #[arg(long)]
    all: bool,
    /// Only count what would be removed.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(args: Args, json: bool) -> CliResult {
    match args.command {
        DlqCommand::List(s) => list(s, json, false).await,
        DlqCommand::Show(s) => list(s, json, true).await,
        DlqCommand::Replay(a) => replay(a, json).await,
        DlqCommand::Export(a) => export(a, json).await,
        DlqCommand::Import(a) => import(a, json).await,
        DlqCommand::Purge(a) => purge(a, json).await,
    }
}

impl Select {
    fn filter(&self) -> CliResult<Filter> {
        let mut f = Filter::new();
        if let Some(spec) = &self.filter {
            f = f.reason_spec(spec)?;
        }
        if let Some(since) = &self.since {
            let age = mq::backend::parse_duration(since).ok_or_else(|| {
                format!("--since takes a duration like 30s, 5m or 1h, not {since:?}")
            })?;
            f = f.younger_than(age);
        }
        for kv in &self.headers {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--header takes K=V, not {kv:?}"))?;
            f = f.header(k, v);
        }
        for id in &self.ids {
            f = f.id(id.clone());
        }
        if let Some(src) = &self.original_source {
            f = f.original_source(src.clone());
        }
        if let Some(spec) = &self.offsets {
            let (partition, range) = parse_offsets(spec)?;
            f = f.offsets(partition, range);
        }
        Ok(f)
    }

    fn is_everything(&self) -> bool {
        self.filter.is_none()
            && self.since.is_none()
            && self.headers.is_empty()
            && self.ids.is_empty()
            && self.original_source.is_none()
            && self.offsets.is_none()
            && self.limit.is_none()
    }

    async fn open(&self) -> CliResult<DeadLetters> {
        let idle = Duration::try_from_secs_f64(self.idle).map_err(|_| {
            format!(
                "--idle must be a positive number of seconds, not {}",
                self.idle
            )
        })?;
        let client = mq::connect(&self.url).await?;
        let mut dl = client
            .dead_letters(&self.source)
            .idle(idle)
            .hold(self.hold)
            .limit(self.limit);
        if let Some(d) = &self.dlq {
            dl = dl.destination_name(d.clone());
        }
        Ok(dl)
    }
}

/// `FROM..TO` or `P:FROM..TO`, inclusive.
fn parse_offsets(spec: &str) -> CliResult<(Option<i32>, std::ops::RangeInclusive<i64>)> {
    let bad = || format!("--offsets takes FROM..TO or PARTITION:FROM..TO, not {spec:?}");
    let (partition, range) = match spec.split_once(':') {
        Some((p, r)) => (Some(p.trim().parse::<i32>().map_err(|_| bad())?), r),
        None => (None, spec),
    };
    let (from, to) = range.split_once("..").ok_or_else(bad)?;
    let from = from.trim().parse::<i64>().map_err(|_| bad())?;
    let to = to.trim().parse::<i64>().map_err(|_| bad())?;
    if from > to {
        return Err(bad().into());
    }
    Ok((partition, from..=to))
}

/// A progress bar on stderr when stderr is a terminal; hidden otherwise.
fn bar(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn tick(bar: &ProgressBar) -> impl FnMut(usize, usize) + Send + '_ {
    move |done, total| {
        bar.set_length(u64::try_from(total).unwrap_or(u64::MAX));
        bar.set_position(u64::try_from(done).unwrap_or(u64::MAX));
    }
}

fn age(letter: &Received) -> String {
    match mq::dlq::dead_lettered_at(letter).and_then(|t| t.elapsed().ok()) {
        Some(d) if d.as_secs() >= 3600 => format!("{}h", d.as_secs() / 3600),
        Some(d) if d.as_secs() >= 60 => format!("{}m", d.as_secs() / 60),
        Some(d) => format!("{}s", d.as_secs()),
        None => "?".to_owned(),
    }
}

async fn list(select: Select, json: bool, full: bool) -> CliResult {
    let filter = select.filter()?;
    let dl = select.open().await?;
    let listing = dl.list(&filter).await?;
    for l in &listing.letters {
        if json || full {
            let mut obj = message_json(l);
            if let Some(p) = l.metadata::<mq::backend::LogPosition>() {
                obj["position"] = json!(p.to_string());
            }
            if full && !json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&obj).unwrap_or_else(|_| obj.to_string())
                );
            } else {
                println!("{obj}");
            }
        } else {
            let h = l.headers();
            println!(
                "{}  {:>4} ago  attempt {}  from {}  reason: {}",
                l.id(),
                age(l),
                h.get(headers::ATTEMPT).unwrap_or("?"),
                h.get(headers::ORIGINAL_SOURCE).unwrap_or("?"),
                h.get(headers::DEAD_LETTER_REASON)
                    .unwrap_or("(none)")
                    .replace('\n', " "),
            );
        }
    }
    let summary = format!(
        "{} of {} dead letters in {} selected (nothing removed)",
        listing.letters.len(),
        listing.scanned,
        dl.destination()
    );
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

async fn replay(args: ReplayArgs, json: bool) -> CliResult {
    let filter = args.select.filter()?;
    let dl = args.select.open().await?;
    let mut options = ReplayOptions::new().dry_run(args.dry_run);
    if let Some(r) = args.rate {
        options = options.rate(r);
    }
    if let Some(to) = args.to {
        options = options.to(to);
    }
    let bar = bar("replay");
    let report = dl.replay(&filter, &options, &mut tick(&bar)).await?;
    bar.finish_and_clear();
    for (id, to) in &report.would_replay {
        println!("{id} -> {to}");
    }
    for (id, e) in &report.failed {
        eprintln!("{id}: not replayed: {e}");
    }
    for (id, e) in &report.not_removed {
        eprintln!("{id}: replayed but still a dead letter (a duplicate): {e}");
    }
    if json {
        println!(
            "{}",
            json!({
                "scanned": report.scanned, "selected": report.selected,
                "replayed": report.replayed, "failed": report.failed.len(),
                "not_removed": report.not_removed.len(),
                "elapsed_s": report.elapsed.as_secs_f64(), "dry_run": report.dry_run,
            })
        );
    } else {
        println!("{report}");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} dead letters could not be replayed", report.failed.len()).into())
    }
}

async fn export(args: ExportArgs, json: bool) -> CliResult {
    let filter = args.select.filter()?;
    let dl = args.select.open().await?;
    let written = match &args.output {
        Some(path) => {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            dl.export(&filter, &mut file).await?
        }
        None => dl.export(&filter, &mut std::io::stdout()).await?,
    };
    let summary = format!(
        "exported {written} dead letters of {} (nothing removed)",
        dl.destination()
    );
    if json || args.output.is_none() {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(())
}

async fn import(args: ImportArgs, json: bool) -> CliResult {
    let mut text = String::new();
    match &args.input {
        Some(path) => {
            text = std::fs::read_to_string(path)?;
        }
        None => {
            std::io::stdin().read_to_string(&mut text)?;
        }
    }
    let records = parse_lines(&text)?;
    let client = mq::connect(&args.url).await?;
    let dl = client.dead_letters(&args.source);
    let bar = bar("import");
    let report = dl
        .import(&records, args.to.as_deref(), args.dry_run, &mut tick(&bar))
        .await?;
    bar.finish_and_clear();
    for (id, e) in &report.failed {
        eprintln!("{id}: not imported: {e}");
    }
    if json {
        println!(
            "{}",
            json!({"records": report.records, "sent": report.sent,
                   "failed": report.failed.len(), "destination": report.destination,
                   "dry_run": report.dry_run})
        );
    } else {
        println!("{report}");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} records could not be imported", report.failed.len()).into())
    }
}

async fn purge(args: PurgeArgs, json: bool) -> CliResult {
    if args.select.is_everything() && !args.all {
        return Err(
            "purge without --filter/--since/--header/--id/--original-source/--offsets/--limit \
             removes every dead letter: add --all to mean it"
                .into(),
        );
    }
    let filter = args.select.filter()?;
    let dl = args.select.open().await?;
    let bar = bar("purge");
    let report = dl.purge(&filter, args.dry_run, &mut tick(&bar)).await?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            json!({"scanned": report.scanned, "selected": report.selected,
                   "removed": report.removed, "failed": report.failed.len(),
                   "dry_run": report.dry_run})
        );
    } else {
        println!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offsets("3..9").expect("range"), (None, 3..=9));
        assert_eq!(parse_offsets("2:0..0").expect("p"), (Some(2), 0..=0));
        for bad in ["", "3", "9..3", "x:1..2", "1..y", "1...2"] {
            assert!(parse_offsets(bad).is_err(), "{bad}");
        }
    }
}
