//! RabbitMQ baseline: the bench workload written directly against lapin,
//! with the settings `mq-rabbit` uses for the same URL.
//!
//! | setting | mq-rabbit | this baseline |
//! |---|---|---|
//! | connection | one per client, from `RabbitConfig::from_url` (heartbeat, frame_max, channel_max, connection_timeout, auth mechanism) | one, built from the same `RabbitConfig` fields |
//! | topology | destination `D` = durable fanout exchange `D` + durable queue `D` bound to it (`queue_type`, `single_active_consumer` as configured) | the same declarations on a fresh `mq-bench-raw-*` name |
//! | publish | one shared confirm-mode channel; `basic.publish` with `mandatory`; `delivery_mode` 2 when `persistent` | the same; each producer task keeps `--in-flight` confirms outstanding |
//! | message | properties `message_id` (UUIDv7), `timestamp`, `delivery_mode`, an empty `headers` table | `delivery_mode` only (plus the latency header in the end-to-end phase); with `--raw-ids` also `message_id` (a UUIDv7) |
//! | consume | one channel per consumer, `basic.qos(prefetch, global=false)`, `basic.consume` with manual acks, opened before the phase | the same |
//! | ack | `basic.ack` per delivery (`multiple=false`) | the same: up to [`RECEIVE_BATCH`] ready deliveries, then one ack each |
//! | close | `basic.cancel`, channel close | the same |
//!
//! Only `topology=exchange` (the default) is supported: with
//! `topology=queue` the SDK sends to existing queues, which fresh bench
//! names are not. `amqps://` works with the system's root certificates;
//! the `tls_ca`/`tls_cert`/`tls_key` options are not read here.

use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use mq::url::RedactedUrl;
use mq_rabbit::{AuthMechanism, QueueType, RabbitConfig, Topology};

use super::super::{
    fresh_name, join_consumers, new_histogram, payload, peak_rss, record_latency, shares, Args,
    PhaseClock, Results, Tally, RECEIVE_BATCH, RECEIVE_WAIT, SENT_AT,
};
use crate::CliResult;

fn config(url: &str) -> CliResult<RabbitConfig> {
    let config = RabbitConfig::from_url(&RedactedUrl::parse(url)?)?;
    if config.topology != Topology::Exchange {
        return Err("the RabbitMQ baseline needs topology=exchange (the default)".into());
    }
    if config.tls_ca.is_some() || config.tls_cert.is_some() {
        return Err("the RabbitMQ baseline does not read tls_ca/tls_cert/tls_key".into());
    }
    Ok(config)
}

/// The URI `mq-rabbit` builds from `config` (its `amqp_uri` is private).
fn uri(config: &RabbitConfig) -> AMQPUri {
    AMQPUri {
        scheme: if config.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: config.username.clone(),
                password: config.password.expose().to_owned(),
            },
            host: config.host.clone(),
            port: config.port,
        },
        vhost: config.vhost.clone(),
        query: AMQPQueryString {
            frame_max: (config.frame_max != 0).then_some(config.frame_max),
            channel_max: (config.channel_max != 0).then_some(config.channel_max),
            heartbeat: u16::try_from(config.heartbeat.as_secs()).ok(),
            connection_timeout: u64::try_from(config.connection_timeout.as_millis()).ok(),
            auth_mechanism: Some(match config.auth_mechanism {
                AuthMechanism::AmqPlain => SASLMechanism::AMQPlain,
                AuthMechanism::External => SASLMechanism::External,
                _ => SASLMechanism::Plain,
            }),
        },
    }
}

async fn connect(config: &RabbitConfig) -> CliResult<Connection> {
    let props = ConnectionProperties::default().with_connection_name("mq-bench-raw".into());
    let runtime = lapin::runtime::default_runtime()?;
    let connect =
        Connection::connect_uri_with_config(uri(config), props, OwnedTLSConfig::default(), runtime);
    Ok(tokio::time::timeout(config.connection_timeout, connect)
        .await
        .map_err(|_| "connecting to RabbitMQ timed out")??)
}

/// Queue arguments as `mq-rabbit` declares them.
fn queue_arguments(config: &RabbitConfig) -> FieldTable {
    let mut args = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    if config.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

/// The durable fanout exchange `dest`, the queue `dest` and their binding,
/// declared on a channel of their own (as `mq-rabbit` does).
async fn declare(conn: &Connection, config: &RabbitConfig, dest: &str) -> CliResult {
    let ch = conn.create_channel().await?;
    let name = ShortString::from(dest);
    ch.exchange_declare(
        name.clone(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: config.durable,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        name.clone(),
        QueueDeclareOptions {
            durable: config.durable,
            ..QueueDeclareOptions::default()
        },
        queue_arguments(config),
    )
    .await?;
    ch.queue_bind(
        name.clone(),
        name,
        ShortString::default(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.close(200, "declared".into()).await?;
    Ok(())
}

struct RawConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
}

async fn open_consumers(conn: &Connection, dest: &str, args: &Args) -> CliResult<Vec<RawConsumer>> {
    let prefetch = u16::try_from(args.prefetch).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(args.consumers);
    for _ in 0..args.consumers {
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let consumer = channel
            .basic_consume(
                dest.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        out.push(RawConsumer { channel, consumer });
    }
    Ok(out)
}

fn confirmed(c: lapin::Result<Confirmation>) -> CliResult {
    match c? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
            Err("a message was returned unroutable".into())
        }
        Confirmation::Nack(None) => Err("the broker nacked a message".into()),
    }
}

async fn publish(
    channel: &Channel,
    config: &RabbitConfig,
    dest: &str,
    args: &Args,
    body: &bytes::Bytes,
    stamp_from: Option<Instant>,
) -> CliResult {
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares(args.count, args.producers) {
        let (channel, body) = (channel.clone(), body.clone());
        let exchange = ShortString::from(dest);
        let (in_flight, persistent, raw_ids) = (args.in_flight, config.persistent, args.raw_ids);
        tasks.spawn(async move {
            let mut window = FuturesUnordered::new();
            for _ in 0..share {
                // Stamped before waiting for room in the window, as the SDK
                // workload stamps a message before handing it to its pipeline.
                let stamp = stamp_from.map(|base| base.elapsed().as_nanos().to_string());
                while window.len() >= in_flight {
                    if let Some(c) = window.next().await {
                        confirmed(c)?;
                    }
                }
                let mut properties = BasicProperties::default();
                if persistent {
                    properties = properties.with_delivery_mode(2);
                }
                if raw_ids {
                    properties = properties
                        .with_message_id(ShortString::from(mq::message::new_message_id()));
                }
                if let Some(stamp) = stamp {
                    let mut headers = FieldTable::default();
                    headers.insert(
                        SENT_AT.into(),
                        AMQPValue::LongString(LongString::from(stamp)),
                    );
                    properties = properties.with_headers(headers);
                }
                let confirm = channel
                    .basic_publish(
                        exchange.clone(),
                        ShortString::default(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        properties,
                    )
                    .await?;
                window.push(confirm);
            }
            while let Some(c) = window.next().await {
                confirmed(c)?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| format!("producer task: {e}"))??;
    }
    Ok(())
}

fn sent_at(d: &lapin::message::Delivery) -> Option<&[u8]> {
    match d.properties.headers().as_ref()?.inner().get(SENT_AT)? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

async fn consume(
    consumers: Vec<RawConsumer>,
    count: u64,
    stamp_base: Option<Instant>,
) -> CliResult<Histogram<u64>> {
    let tally = Tally::new(count);
    let mut tasks = tokio::task::JoinSet::new();
    for RawConsumer {
        channel,
        mut consumer,
    } in consumers
    {
        let tally = tally.clone();
        tasks.spawn(async move {
            let mut local = new_histogram()?;
            let mut batch = Vec::with_capacity(RECEIVE_BATCH);
            while !tally.is_done() {
                // The same loop as the SDK workload: wait up to RECEIVE_WAIT
                // for a first delivery, take what else is ready (up to
                // RECEIVE_BATCH), then ack each one.
                let first = tokio::select! {
                    biased;
                    first = tokio::time::timeout(RECEIVE_WAIT, consumer.next()) => first,
                    () = tally.wait_done() => break,
                };
                match first {
                    Err(_) => continue,
                    Ok(Some(d)) => batch.push(d?),
                    Ok(None) => return Err("the broker cancelled the consumer".into()),
                }
                while batch.len() < RECEIVE_BATCH {
                    match consumer.next().now_or_never() {
                        Some(Some(d)) => batch.push(d?),
                        _ => break,
                    }
                }
                let now = stamp_base.map(|base| base.elapsed().as_nanos());
                let n = batch.len() as u64;
                for d in batch.drain(..) {
                    if let (Some(now), Some(sent)) = (now, sent_at(&d)) {
                        record_latency(&mut local, now, sent);
                    }
                    d.acker.ack(BasicAckOptions::default()).await?;
                }
                tally.add(n);
            }
            channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await?;
            channel.close(200, "consumer closed".into()).await?;
            Ok(local)
        });
    }
    join_consumers(tasks, &tally, count).await
}

pub(crate) async fn run(args: &Args) -> CliResult<Results> {
    let config = config(&args.url)?;
    let base = Instant::now();
    let body = payload(args.size);
    let conn = connect(&config).await?;
    let publish_channel = conn.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let dest = fresh_name("raw-");
    declare(&conn, &config, &dest).await?;
    let consumers = open_consumers(&conn, &dest, args).await?;
    let started = PhaseClock::start();
    publish(&publish_channel, &config, &dest, args, &body, None).await?;
    let publish_phase = started.phase(args.count, args.size);
    let started = PhaseClock::start();
    consume(consumers, args.count, None).await?;
    let consume_phase = started.phase(args.count, args.size);

    let e2e_dest = fresh_name("raw-e2e-");
    declare(&conn, &config, &e2e_dest).await?;
    let consumers = open_consumers(&conn, &e2e_dest, args).await?;
    let started = PhaseClock::start();
    let receiving = consume(consumers, args.count, Some(base));
    let sending = publish(
        &publish_channel,
        &config,
        &e2e_dest,
        args,
        &body,
        Some(base),
    );
    let (r, s) = tokio::join!(receiving, sending);
    let latency_us = r?;
    s?;
    let end_to_end = started.phase(args.count, args.size);
    let peak_rss_bytes = peak_rss();
    delete(&conn, &[dest, e2e_dest]).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(Results {
        label: format!(
            "raw (lapin: 1 connection, 1 confirm channel, prefetch {}, basic.ack each)",
            args.prefetch
        ),
        publish: publish_phase,
        consume: consume_phase,
        end_to_end,
        latency_us,
        peak_rss_bytes,
        consume_peak_rss_bytes: None,
    })
}

async fn delete(conn: &Connection, destinations: &[String]) -> CliResult {
    let ch = conn.create_channel().await?;
    for dest in destinations {
        ch.queue_delete(dest.as_str().into(), QueueDeleteOptions::default())
            .await?;
        ch.exchange_delete(dest.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    ch.close(200, "deleted".into()).await?;
    Ok(())
}

/// Deletes the exchanges and queues of `destinations`.
pub(crate) async fn cleanup(url: &str, destinations: &[String]) -> CliResult {
    let config = config(url)?;
    let conn = connect(&config).await?;
    let result = delete(&conn, destinations).await;
    let _ = conn.close(200, "done".into()).await;
    result
}

/// This module as an entry of the bench's baseline list.
pub(crate) const BASELINE: super::Baseline = super::Baseline {
    backend: mq_rabbit::DRIVER.name,
    run: |args| Box::pin(run(args)),
    ready: None,
    most_messages: None,
    cleanup: |url, destinations| Box::pin(cleanup(url, destinations)),
};
