//! Which exchanges and queues a destination, a group, a retry or a delay
//! uses, and their declaration.
//!
//! With `topology=exchange` (the default), destination `D` is a fanout
//! exchange `D`. Its default group is the queue `D`, declared and bound on
//! the first send *and* the first consume, so point-to-point never loses a
//! message sent before the first consumer. Group `G` is the queue `D.G`,
//! declared and bound when it is first consumed: a group created later
//! misses what was sent before.
//!
//! A delayed nack republishes to `<queue>.retry.<ms>`, a queue with
//! `x-message-ttl = ms` whose expired messages dead-letter through the
//! default exchange straight back to `<queue>` (and to no other group). A
//! delayed send goes to `D.delay.<ms>`, which dead-letters into the exchange
//! `D` (every group). Delays are rounded up to 1/16 of their power of two
//! (at most 6.25% later), so a jittered backoff reuses a bounded set of
//! queues; these queues expire (`x-expires`) ten minutes after their last
//! use. Names starting with `amq.` (server-named and direct reply-to queues)
//! are addressed through the default exchange and never declared.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::ExchangeKind;
use mq_core::{Error, Result};

use crate::config::{QueueType, RabbitConfig, Topology};
use crate::connection::{Conn, Declared};
use crate::error::{from_lapin, too_long, BACKEND};

/// Queues whose names start with this belong to the broker (server-named
/// queues, direct reply-to): addressed as they are, never declared.
pub(crate) const BROKER_PREFIX: &str = "amq.";

/// Addresses of direct reply-to consumers, as the broker rewrites them.
const DIRECT_REPLY_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// How long an unused retry or delay queue lives past its message TTL.
const EXPIRES_MARGIN: Duration = Duration::from_secs(600);

/// Declare retry/delay queues again this often while in use, so they never
/// expire with messages in them (see [`EXPIRES_MARGIN`]).
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(300);

/// The longest delay: `x-message-ttl` is a 32-bit number of milliseconds.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

/// A validated AMQP name (at most 255 bytes).
pub(crate) fn short(what: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| too_long(what, value))
}

/// The queue a consumer of (`source`, `group`) reads.
pub(crate) fn consumer_queue(
    config: &RabbitConfig,
    source: &str,
    group: Option<&str>,
) -> Result<String> {
    match (config.topology, group) {
        (_, None) => Ok(source.to_owned()),
        (Topology::Exchange, Some(_)) if source.starts_with(BROKER_PREFIX) => Err(Error::unsupported(
            format!("`{source}` is a broker-named queue; it has no consumer groups"),
        )
        .with_backend(BACKEND)),
        (Topology::Exchange, Some(g)) => Ok(format!("{source}.{g}")),
        (Topology::Queue, Some(_)) => Err(Error::unsupported(
            "consumer groups need topology=exchange; with topology=queue a destination is one queue",
        )
        .with_backend(BACKEND)),
    }
}

/// `delay` in milliseconds, rounded up to 1/16 of its power of two.
pub(crate) fn delay_bucket(delay: Duration) -> Result<u64> {
    if delay > MAX_DELAY {
        return Err(Error::unsupported(format!(
            "a delay of {delay:?} is longer than RabbitMQ's longest message TTL ({MAX_DELAY:?})"
        ))
        .with_backend(BACKEND));
    }
    let micros = delay.as_micros();
    let ms = u64::try_from(micros.div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    if ms <= 16 {
        return Ok(ms);
    }
    let step = 1u64 << (63 - ms.leading_zeros() - 4);
    Ok(ms
        .div_ceil(step)
        .saturating_mul(step)
        .min(u64::from(u32::MAX)))
}

/// Where a message goes on the wire.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    /// Publish with `mandatory`, so a message no queue takes is an error.
    pub(crate) mandatory: bool,
    /// What must exist first.
    pub(crate) needs: Needs,
}

/// Declarations a route depends on.
#[derive(Debug, Clone)]
pub(crate) enum Needs {
    Nothing,
    /// The destination's exchange, default queue and binding.
    Destination(String),
    /// A plain durable queue of ours (dead-letter queue with `topology=queue`).
    Queue(String),
    /// A TTL queue dead-lettering to `target`, after `needs`.
    Ttl {
        queue: String,
        ttl_ms: u64,
        target: DeadLetterTo,
        before: Box<Needs>,
    },
}

/// Where an expired message of a TTL queue goes.
#[derive(Debug, Clone)]
pub(crate) enum DeadLetterTo {
    /// Every group of a destination (its fanout exchange).
    Exchange(String),
    /// One queue, through the default exchange.
    Queue(String),
}

/// The route of a send to `destination`, delayed by `delay`.
pub(crate) fn send_route(
    config: &RabbitConfig,
    destination: &str,
    delay: Option<Duration>,
) -> Result<Route> {
    let to_queue = destination.starts_with(BROKER_PREFIX) || config.topology == Topology::Queue;
    let base = if to_queue {
        Route {
            exchange: ShortString::default(),
            routing_key: short("destination", destination)?,
            // RabbitMQ (3.10 at least) returns a message published with
            // `mandatory` to a direct reply-to address as unroutable even
            // though it delivered it, so replies go without it (a reply to a
            // requester that is gone is dropped by the broker).
            mandatory: !destination.starts_with(DIRECT_REPLY_PREFIX),
            needs: Needs::Nothing,
        }
    } else {
        let name = short("destination", destination)?;
        Route {
            exchange: name,
            routing_key: ShortString::default(),
            mandatory: true,
            needs: Needs::Destination(destination.to_owned()),
        }
    };
    match delay.filter(|d| !d.is_zero()) {
        None => Ok(base),
        Some(d) => {
            let ms = delay_bucket(d)?;
            let queue = format!("{destination}.delay.{ms}");
            let target = if to_queue {
                DeadLetterTo::Queue(destination.to_owned())
            } else {
                DeadLetterTo::Exchange(destination.to_owned())
            };
            Ok(Route {
                exchange: ShortString::default(),
                routing_key: short("delay queue", &queue)?,
                mandatory: true,
                needs: Needs::Ttl {
                    queue,
                    ttl_ms: ms,
                    target,
                    before: Box::new(base.needs),
                },
            })
        }
    }
}

/// The route that sends a message back to `queue` only, after `delay`.
pub(crate) fn retry_route(queue: &str, delay: Option<Duration>) -> Result<Route> {
    match delay.filter(|d| !d.is_zero()) {
        None => Ok(Route {
            exchange: ShortString::default(),
            routing_key: short("queue", queue)?,
            mandatory: true,
            needs: Needs::Nothing,
        }),
        Some(d) => {
            let ms = delay_bucket(d)?;
            let retry = format!("{queue}.retry.{ms}");
            Ok(Route {
                exchange: ShortString::default(),
                routing_key: short("retry queue", &retry)?,
                mandatory: true,
                needs: Needs::Ttl {
                    queue: retry,
                    ttl_ms: ms,
                    target: DeadLetterTo::Queue(queue.to_owned()),
                    before: Box::new(Needs::Nothing),
                },
            })
        }
    }
}

/// The route of a dead letter to `dlq` (a destination).
pub(crate) fn dead_letter_route(config: &RabbitConfig, dlq: &str) -> Result<Route> {
    match config.topology {
        Topology::Exchange => send_route(config, dlq, None),
        Topology::Queue => Ok(Route {
            exchange: ShortString::default(),
            routing_key: short("dead-letter queue", dlq)?,
            mandatory: true,
            needs: Needs::Queue(dlq.to_owned()),
        }),
    }
}

/// The suffix of dead-letter destinations (`<source>-dlq`).
pub(crate) const DLQ_SUFFIX: &str = "-dlq";

/// Where the broker dead-letters what a quorum queue of destination `dest`
/// holds past its delivery limit: the destination `<dest>-dlq` (where `mq`'s
/// own dead letters of `dest` go). `None` for classic queues and for
/// dead-letter destinations themselves, which have no further `-dlq`.
pub(crate) fn broker_dead_letter_target(config: &RabbitConfig, dest: &str) -> Option<String> {
    (config.queue_type == QueueType::Quorum
        && config.topology == Topology::Exchange
        && !dest.starts_with(BROKER_PREFIX)
        && !dest.ends_with(DLQ_SUFFIX))
    .then(|| format!("{dest}{DLQ_SUFFIX}"))
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Arguments of the destination and group queues this client declares.
///
/// Quorum queues that have a `dead_letter_to` destination dead-letter into
/// its fanout exchange, `at-least-once` (the broker keeps the message
/// until the dead-letter queue confirms it, which needs
/// `x-overflow=reject-publish`), so a message past the delivery limit
/// (`x-delivery-limit`, or RabbitMQ 4's default of 20) moves there instead
/// of being dropped. The arguments depend only on the configuration and the
/// destination, so every declaration of a queue (send, consume, another
/// process) asks for the same ones.
pub(crate) fn queue_arguments(config: &RabbitConfig, dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), text("quorum"));
        if let Some(dlq) = dead_letter_to {
            args.insert("x-dead-letter-exchange".into(), text(dlq));
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
            if let Some(limit) = config.delivery_limit {
                // validate() keeps it within an i32.
                let limit = i32::try_from(limit).unwrap_or(i32::MAX);
                args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
            }
        }
    }
    if config.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

fn queue_options(config: &RabbitConfig) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: config.durable,
        ..QueueDeclareOptions::default()
    }
}

/// Makes sure everything `needs` names exists on `conn`.
pub(crate) async fn ensure(conn: &Conn, config: &RabbitConfig, needs: &Needs) -> Result<()> {
    match needs {
        Needs::Nothing => Ok(()),
        Needs::Destination(dest) => ensure_destination(conn, config, dest).await,
        Needs::Queue(queue) => {
            conn.declare_once(Declared::Queue, queue, || async {
                let ch = conn.channel("declare").await?;
                // A dead-letter queue: nothing further to dead-letter into.
                let ch =
                    declare_queue(conn, config, ch, queue, queue_arguments(config, None)).await?;
                close_quietly(&ch).await;
                Ok(())
            })
            .await
        }
        Needs::Ttl {
            queue,
            ttl_ms,
            target,
            before,
        } => {
            Box::pin(ensure(conn, config, before)).await?;
            let key = format!("t:{queue}");
            if !conn.needs_refresh(&key, REFRESH_EVERY) {
                return Ok(());
            }
            declare_ttl_queue(conn, config, queue, *ttl_ms, target).await?;
            conn.refreshed(&key);
            Ok(())
        }
    }
}

/// The destination's exchange, its default queue and their binding.
pub(crate) async fn ensure_destination(
    conn: &Conn,
    config: &RabbitConfig,
    dest: &str,
) -> Result<()> {
    if config.topology == Topology::Queue || dest.starts_with(BROKER_PREFIX) {
        return Ok(());
    }
    let dead_letter_to = broker_dead_letter_target(config, dest);
    conn.declare_once(Declared::Destination, dest, || async {
        let name = short("destination", dest)?;
        if let Some(dlq) = &dead_letter_to {
            // The broker drops what it dead-letters into a missing exchange.
            Box::pin(ensure_destination(conn, config, dlq)).await?;
        }
        let ch = conn.channel("declare").await?;
        ch.exchange_declare(
            name.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: config.durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(e, dest))?;
        let args = queue_arguments(config, dead_letter_to.as_deref());
        let ch = declare_queue(conn, config, ch, dest, args).await?;
        ch.queue_bind(
            name.clone(),
            name,
            ShortString::default(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(e, dest))?;
        close_quietly(&ch).await;
        Ok(())
    })
    .await
}

/// The queue a consumer of (`source`, `group`) reads, ready to consume:
/// declared and bound with `topology=exchange`, checked to exist with
/// `topology=queue`.
pub(crate) async fn ensure_consumer_queue(
    conn: &Conn,
    config: &RabbitConfig,
    source: &str,
    group: Option<&str>,
    queue: &str,
) -> Result<()> {
    if source.starts_with(BROKER_PREFIX) {
        return Ok(());
    }
    match (config.topology, group) {
        (Topology::Queue, _) => {
            conn.declare_once(Declared::Existing, queue, || async {
                let ch = conn.channel("declare").await?;
                let name = short("queue", queue)?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(name, passive, FieldTable::default())
                    .await
                    .map_err(|e| declare_error(e, queue))?;
                close_quietly(&ch).await;
                Ok(())
            })
            .await
        }
        (Topology::Exchange, None) => ensure_destination(conn, config, source).await,
        (Topology::Exchange, Some(_)) => {
            // Also declares the source's dead-letter destination, if any.
            ensure_destination(conn, config, source).await?;
            let dead_letter_to = broker_dead_letter_target(config, source);
            conn.declare_once(Declared::Group, queue, || async {
                let ch = conn.channel("declare").await?;
                let name = short("queue", queue)?;
                let args = queue_arguments(config, dead_letter_to.as_deref());
                let ch = declare_queue(conn, config, ch, queue, args).await?;
                ch.queue_bind(
                    name,
                    short("destination", source)?,
                    ShortString::default(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| declare_error(e, queue))?;
                close_quietly(&ch).await;
                Ok(())
            })
            .await
        }
    }
}

/// What a passive `queue.declare` reports about `queue`: ready messages and
/// consumers. It runs on a channel of its own, because the broker closes
/// the channel when the queue does not exist (`NotFound`).
pub(crate) async fn inspect_queue(conn: &Conn, queue: &str) -> Result<(u64, u64)> {
    let name = short("queue", queue)?;
    let ch = conn.channel("stats").await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = ch
        .queue_declare(name, passive, FieldTable::default())
        .await
        .map_err(|e| from_lapin(e, "stats").with_destination(queue.to_owned()))?;
    close_quietly(&ch).await;
    Ok((
        u64::from(declared.message_count()),
        u64::from(declared.consumer_count()),
    ))
}

/// The retry queues of `queue` and the delay queues of `source` that this
/// connection declared (AMQP cannot list queues, and the delays in use are
/// only known to whoever sent them).
pub(crate) fn known_ttl_queues(conn: &Conn, source: &str, queue: &str) -> Vec<String> {
    let mut found = Vec::new();
    for prefix in [format!("{queue}.retry."), format!("{source}.delay.")] {
        for key in conn.refreshed_with_prefix(&format!("t:{prefix}")) {
            let name = &key[2..];
            let bucket = &name[prefix.len()..];
            if !bucket.is_empty() && bucket.bytes().all(|b| b.is_ascii_digit()) {
                found.push(name.to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Forgets every declaration `needs` stands for (the broker returned a
/// publish as unroutable or said an exchange does not exist: something was
/// deleted behind this client's back), so the next publish declares again.
pub(crate) fn forget(conn: &Conn, needs: &Needs) {
    match needs {
        Needs::Nothing => {}
        Needs::Destination(dest) => conn.forget(Declared::Destination, dest),
        Needs::Queue(queue) => conn.forget(Declared::Queue, queue),
        Needs::Ttl { queue, before, .. } => {
            conn.forget_refresh(&format!("t:{queue}"));
            forget(conn, before);
        }
    }
}

impl Needs {
    /// Whether the route depends on declarations of this client (which can
    /// be made again when the broker lost them).
    pub(crate) fn declares_something(&self) -> bool {
        !matches!(self, Needs::Nothing)
    }
}

/// Forgets what was declared for a consumer's queue (the broker cancelled
/// the consumer, e.g. because the queue was deleted).
pub(crate) fn forget_consumer_queue(conn: &Conn, source: &str, queue: &str) {
    conn.forget(Declared::Existing, queue);
    conn.forget(Declared::Group, queue);
    conn.forget(Declared::Destination, source);
}

async fn declare_ttl_queue(
    conn: &Conn,
    config: &RabbitConfig,
    queue: &str,
    ttl_ms: u64,
    target: &DeadLetterTo,
) -> Result<()> {
    let mut args = FieldTable::default();
    let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
    let expires = ttl.saturating_add(i64::try_from(EXPIRES_MARGIN.as_millis()).unwrap_or(0));
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(expires));
    match target {
        DeadLetterTo::Exchange(exchange) => {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from(exchange.as_str())),
            );
        }
        DeadLetterTo::Queue(queue) => {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(queue.as_str())),
            );
        }
    }
    let ch = conn.channel("declare").await?;
    ch.queue_declare(short("queue", queue)?, queue_options_for_ttl(config), args)
        .await
        .map_err(|e| declare_error(e, queue))?;
    close_quietly(&ch).await;
    Ok(())
}

/// Retry and delay queues are classic (TTL and dead-lettering work the same
/// on every RabbitMQ version) and as durable as the rest.
fn queue_options_for_ttl(config: &RabbitConfig) -> QueueDeclareOptions {
    queue_options(config)
}

/// Declares `queue` with `args` on `ch` and returns the channel to go on
/// with. A quorum queue that exists without the dead-letter arguments this
/// client adds (declared by an older `mq`, or by another application) is
/// used as it is, with a warning, instead of failing every send: RabbitMQ
/// refuses a declaration whose arguments differ, and cannot change them.
async fn declare_queue(
    conn: &Conn,
    config: &RabbitConfig,
    ch: lapin::Channel,
    queue: &str,
    args: FieldTable,
) -> Result<lapin::Channel> {
    let name = short("queue", queue)?;
    match ch
        .queue_declare(name.clone(), queue_options(config), args)
        .await
    {
        Ok(_) => Ok(ch),
        Err(e) if config.queue_type == QueueType::Quorum && lacks_dead_letter_arguments(&e) => {
            tracing::warn!(%queue, error = %e,
                "this quorum queue exists without mq's dead-letter arguments: a message past its \
                 delivery limit is dropped by the broker; delete and redeclare it, or set a \
                 dead-letter policy for it");
            // The refused declaration closed `ch`.
            let ch = conn.channel("declare").await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            ch.queue_declare(name, passive, FieldTable::default())
                .await
                .map_err(|e| declare_error(e, queue))?;
            Ok(ch)
        }
        Err(e) => Err(declare_error(e, queue)),
    }
}

/// Whether a refused declaration says only that the existing queue lacks
/// one of the dead-letter arguments (`... but current is none`).
fn lacks_dead_letter_arguments(e: &lapin::Error) -> bool {
    let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
        return false;
    };
    let text = amqp.get_message().as_str();
    matches!(
        amqp.kind(),
        lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
    ) && text.contains("but current is none")
        && [
            "'x-dead-letter-exchange'",
            "'x-dead-letter-strategy'",
            "'x-overflow'",
        ]
        .iter()
        .any(|arg| text.contains(&format!("inequivalent arg {arg}")))
}

fn declare_error(e: lapin::Error, name: &str) -> Error {
    let err = from_lapin(e, "declare").with_destination(name.to_owned());
    if err.kind() == mq_core::ErrorKind::Config {
        // The queue or exchange exists with other settings (made by another
        // application, or with another queue_type/durable setting).
        return Error::config(format!(
            "`{name}` already exists with different settings ({}); match its settings, \
             or use topology=queue to consume an existing queue as it is",
            err.message()
        ))
        .with_backend(BACKEND)
        .with_operation("declare")
        .with_destination(name.to_owned())
        .with_source(err);
    }
    err
}

async fn close_quietly(ch: &lapin::Channel) {
    if let Err(e) = ch.close(200, "declared".into()).await {
        tracing::debug!(error = %e, "closing a declaration channel failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_by_at_most_a_sixteenth() {
        assert_eq!(delay_bucket(Duration::from_millis(1)).expect("1"), 1);
        assert_eq!(delay_bucket(Duration::from_micros(1500)).expect("1.5"), 2);
        assert_eq!(delay_bucket(Duration::from_millis(16)).expect("16"), 16);
        assert_eq!(delay_bucket(Duration::from_millis(200)).expect("200"), 200);
        assert_eq!(delay_bucket(Duration::from_millis(3000)).expect("3s"), 3072);
        for ms in [17u64, 33, 99, 1001, 4097, 65_537, 1_000_003, 86_400_000] {
            let b = delay_bucket(Duration::from_millis(ms)).expect("bucket");
            assert!(b >= ms && (b - ms) * 16 <= ms, "{ms} -> {b}");
        }
        assert!(delay_bucket(Duration::from_secs(60 * 86_400)).is_err());
        let distinct: std::collections::HashSet<u64> = (1000..2000)
            .map(|ms| delay_bucket(Duration::from_millis(ms)).expect("b"))
            .collect();
        assert!(distinct.len() <= 17, "{}", distinct.len());
    }

    #[test]
    fn routes() {
        let config = RabbitConfig::default();
        let r = send_route(&config, "orders", None).expect("route");
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str()),
            ("orders", "")
        );
        let r = send_route(&config, "orders", Some(Duration::from_secs(2))).expect("delay");
        assert_eq!(
            (r.exchange.as_str(), r.routing_key.as_str()),
            ("", "orders.delay.2048")
        );
        let r = send_route(&config, "amq.rabbitmq.reply-to.abc", None).expect("reply");
        assert_eq!(r.exchange.as_str(), "");
        assert!(!r.mandatory);
        assert!(
            send_route(&config, "amq.gen-abc", None)
                .expect("gen")
                .mandatory
        );
        let r = retry_route("orders.billing", Some(Duration::from_millis(200))).expect("retry");
        assert_eq!(r.routing_key.as_str(), "orders.billing.retry.200");
        let queue_mode = RabbitConfig {
            topology: Topology::Queue,
            ..RabbitConfig::default()
        };
        let r = send_route(&queue_mode, "jobs", None).expect("queue");
        assert_eq!((r.exchange.as_str(), r.routing_key.as_str()), ("", "jobs"));
        assert!(consumer_queue(&queue_mode, "jobs", Some("g")).is_err());
        assert_eq!(
            consumer_queue(&config, "jobs", Some("g")).expect("group"),
            "jobs.g"
        );
        assert!(send_route(&config, &"x".repeat(256), None).is_err());
    }

    fn arg<'a>(args: &'a FieldTable, name: &str) -> Option<&'a AMQPValue> {
        args.inner()
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn quorum_queues_dead_letter_past_the_delivery_limit() {
        let quorum = RabbitConfig {
            queue_type: QueueType::Quorum,
            delivery_limit: Some(5),
            ..RabbitConfig::default()
        };
        let target = broker_dead_letter_target(&quorum, "orders");
        assert_eq!(target.as_deref(), Some("orders-dlq"));
        let args = queue_arguments(&quorum, target.as_deref());
        assert_eq!(arg(&args, "x-queue-type"), Some(&text("quorum")));
        assert_eq!(
            arg(&args, "x-dead-letter-exchange"),
            Some(&text("orders-dlq"))
        );
        assert_eq!(
            arg(&args, "x-dead-letter-strategy"),
            Some(&text("at-least-once"))
        );
        assert_eq!(arg(&args, "x-overflow"), Some(&text("reject-publish")));
        assert_eq!(arg(&args, "x-delivery-limit"), Some(&AMQPValue::LongInt(5)));
        // Dead-letter queues have no further target (and no limit of ours).
        assert_eq!(broker_dead_letter_target(&quorum, "orders-dlq"), None);
        let args = queue_arguments(&quorum, None);
        assert_eq!(arg(&args, "x-dead-letter-exchange"), None);
        assert_eq!(arg(&args, "x-delivery-limit"), None);
        // Classic queues and topology=queue: nothing added.
        let classic = RabbitConfig::default();
        assert_eq!(broker_dead_letter_target(&classic, "orders"), None);
        assert!(queue_arguments(&classic, Some("orders-dlq"))
            .inner()
            .is_empty());
        let queue_mode = RabbitConfig {
            topology: Topology::Queue,
            ..quorum
        };
        assert_eq!(broker_dead_letter_target(&queue_mode, "orders"), None);
    }
}
