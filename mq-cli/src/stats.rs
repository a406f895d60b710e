//! `mq stats`.

use crate::CliResult;

/// Arguments of `mq stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Broker URL.
    url: String,
    /// Queue or topic.
    source: String,
    /// Consumer group (Kafka lag is per group; default: the source's default group).
    #[arg(long)]
    group: Option<String>,
}

pub(crate) async fn run(args: Args, json: bool) -> CliResult {
    let client = mq::connect(&args.url).await?;
    let stats = client.stats(&args.source, args.group.as_deref()).await?;
    let health = client.health();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "source": args.source, "group": args.group,
                "depth": stats.depth, "in_flight": stats.in_flight, "delayed": stats.delayed,
                "consumers": stats.consumers,
                "lag": stats.lag.as_ref().map(|l| l.iter().map(|(p, lag)| serde_json::json!({"partition": p, "lag": lag})).collect::<Vec<_>>()),
                "connected": health.connected, "reconnects": health.reconnects,
            })
        );
        return Ok(());
    }
    let show = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    println!("{} ({})", args.source, client.backend_name());
    println!("  depth      {}", show(stats.depth));
    println!("  in flight  {}", show(stats.in_flight));
    println!("  delayed    {}", show(stats.delayed));
    println!("  consumers  {}", show(stats.consumers));
    if let Some(lag) = &stats.lag {
        let total: i64 = lag.iter().map(|(_, l)| *l).sum();
        println!("  lag        {total} (per partition: {lag:?})");
    }
    println!(
        "  connection {}{}",
        if health.connected { "up" } else { "down" },
        health
            .last_error
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    Ok(())
}
