//! `mq`: send, receive, inspect and benchmark any supported broker by URL.
//!
//! Built on the public `mq` SDK only. Run `mq --help` or `mq <command> --help`.

mod bench;
mod check;
mod dlq;
mod output;
mod recv;
mod send;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator. The SDK hands every delivery
/// from a backend's thread to the application's task, so its memory is
/// freed on another thread than it was allocated on; glibc's malloc takes
/// the allocating arena's lock for each such free, and the thread that
/// allocates next waits for it (perf sched on `mq bench kafka+mock://`:
/// most of the Kafka poll thread's blocking). The raw baselines of
/// `mq bench` run in the same process, with the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Talk to RabbitMQ, Kafka, SQS or the in-memory broker through one URL.
///
/// URLs: memory://[name], amqp://user:pass@host:5672/vhost,
/// kafka://host:9092, sqs://?region=eu-west-1 (schemes depend on the cargo
/// features this binary was built with; an unsupported one says which
/// feature adds it).
#[derive(Debug, Parser)]
#[command(name = "mq", version, propagate_version = true)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send messages and wait for the broker's confirmation.
    ///
    /// Example: mq send amqp://guest:guest@127.0.0.1:5672/%2f jobs --data 'resize 42' --header tenant=acme
    Send(send::Args),
    /// Receive messages, one JSON object per line on stdout.
    ///
    /// Example: mq recv kafka://127.0.0.1:9092 jobs --group workers --count 10 --timeout 30
    Recv(recv::Args),
    /// Connect, send and receive one message on a scratch destination, report latency.
    ///
    /// Example: mq check memory://
    Check(check::Args),
    /// Dead letters: list, show, replay (rate-limited, never losing one), export, import, purge.
    ///
    /// Example: mq dlq replay amqp://guest:guest@127.0.0.1:5672/%2f jobs --filter 550 --rate 10
    Dlq(dlq::Args),
    /// Queue depth, in-flight and delayed counts, consumer lag, connection health.
    ///
    /// Example: mq stats amqp://guest:guest@127.0.0.1:5672/%2f jobs
    Stats(stats::Args),
    /// Measure publish and consume throughput and end-to-end latency.
    ///
    /// Example: mq bench memory:// --count 1000000 --size 100 --baseline
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs only when asked for: `RUST_LOG=mq_kafka=debug mq bench ...`.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Send(args) => send::run(args, cli.json).await,
            Command::Recv(args) => recv::run(args).await,
            Command::Check(args) => check::run(args, cli.json).await,
            Command::Dlq(args) => dlq::run(args, cli.json).await,
            Command::Bench(args) => bench::run(args, cli.json).await,
            Command::Stats(args) => stats::run(args, cli.json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The error every command returns: printed as one line by `main`.
pub(crate) type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
