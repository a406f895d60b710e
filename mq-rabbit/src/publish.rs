//! One confirmed publish along a [`Route`], what sends, retries and dead
//! letters all go through: declare what the route needs, `basic.publish`
//! (`mandatory`), wait for the broker's confirm; when the broker did not take
//! the message because a declaration of this client is gone, declare again
//! and publish once more (see `producer.rs` for the guarantees).

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use mq_core::{Error, ErrorKind, Result};

use crate::codec::{Wire, DIRECT_REPLY_TO};
use crate::connection::Conn;
use crate::core::Shared;
use crate::error::{from_lapin, missing_exchange, within, BACKEND};
use crate::topology::{ensure, forget, Route};

/// Publishes `wire` along `route` with a confirm, declaring what the
/// route needs first; declarations and confirm together take at most
/// `operation_timeout`. When the broker did not take the message because
/// a declaration of this client is gone (a queue or exchange deleted
/// behind its back), the declarations are forgotten, made again, and the
/// message is published once more.
pub(crate) async fn publish(
    shared: &Shared,
    route: &Route,
    wire: Wire,
    operation: &'static str,
) -> Result<()> {
    let conn = shared.connector.get().await?;
    // Requests of a requester go on its reply channel (direct reply-to);
    // waiting for it to resubscribe is not a wait on the broker.
    let reply_channel = match &wire.reply_token {
        Some(token) => Some(
            shared
                .replies
                .channel(token, shared.config.reconnect_wait)
                .await?,
        ),
        None => None,
    };
    let publishing = async {
        let first = publish_on(
            shared,
            &conn,
            route,
            &wire,
            reply_channel.as_deref(),
            operation,
        )
        .await;
        match first {
            Ok(()) => Ok(()),
            Err(PublishFailure::Stale(e)) if route.needs.declares_something() => {
                tracing::info!(exchange = %route.exchange, routing_key = %route.routing_key,
                    error = %e, "the broker lost what this client declared; declaring again and publishing once more");
                forget(&conn, &route.needs);
                publish_on(
                    shared,
                    &conn,
                    route,
                    &wire,
                    reply_channel.as_deref(),
                    operation,
                )
                .await
                .map_err(PublishFailure::into_error)
            }
            Err(failure) => Err(failure.into_error()),
        }
    };
    within(shared.config.operation_timeout, operation, publishing).await
}

async fn publish_on(
    shared: &Shared,
    conn: &Conn,
    route: &Route,
    wire: &Wire,
    reply_channel: Option<&Channel>,
    operation: &'static str,
) -> std::result::Result<(), PublishFailure> {
    ensure(conn, &shared.config, &route.needs)
        .await
        .map_err(PublishFailure::Failed)?;
    let properties = wire.properties.clone();
    match reply_channel {
        Some(channel) => {
            let properties = properties.with_reply_to(DIRECT_REPLY_TO.into());
            publish_confirmed(channel, route, &wire.payload, properties, operation).await
        }
        None => {
            let channel = conn
                .publish_channel()
                .await
                .map_err(PublishFailure::Failed)?;
            publish_confirmed(&channel, route, &wire.payload, properties, operation).await
        }
    }
}

/// Why a publish failed.
#[derive(Debug)]
enum PublishFailure {
    /// The broker did not take the message because what the route was
    /// declared with is gone: it returned it as unroutable (`mandatory`) or
    /// closed the channel with `404` because the exchange does not exist.
    /// Declaring again and publishing once more cannot duplicate it.
    Stale(Error),
    /// Anything else.
    Failed(Error),
}

impl PublishFailure {
    fn into_error(self) -> Error {
        match self {
            PublishFailure::Stale(e) | PublishFailure::Failed(e) => e,
        }
    }
}

/// A lapin error of a publish along `route`.
fn publish_error(e: lapin::Error, route: &Route, operation: &'static str) -> PublishFailure {
    match missing_exchange(&e) {
        // This publish named the missing exchange.
        Some(name) if name == route.exchange.as_str() => {
            PublishFailure::Stale(from_lapin(e, operation))
        }
        // Another send on the shared channel named a missing exchange and
        // the broker closed the channel: this message may or may not have
        // been stored before, like a send in flight when a connection drops.
        Some(_) => PublishFailure::Failed(
            Error::new(
                ErrorKind::Connection,
                "the publish channel was closed by the broker because of another send \
                 (to an exchange that does not exist); the message may or may not have been stored",
            )
            .with_retryable(true)
            .with_backend(BACKEND)
            .with_operation(operation)
            .with_source(e),
        ),
        None => PublishFailure::Failed(from_lapin(e, operation)),
    }
}

/// Publishes on `channel` along `route` and waits for the broker's confirm.
async fn publish_confirmed(
    channel: &Channel,
    route: &Route,
    payload: &[u8],
    properties: BasicProperties,
    operation: &'static str,
) -> std::result::Result<(), PublishFailure> {
    let confirm = channel
        .basic_publish(
            route.exchange.clone(),
            route.routing_key.clone(),
            BasicPublishOptions {
                mandatory: route.mandatory,
                immediate: false,
            },
            payload,
            properties,
        )
        .await
        .map_err(|e| publish_error(e, route, operation))?;
    match confirm
        .await
        .map_err(|e| publish_error(e, route, operation))?
    {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(PublishFailure::Stale(
                Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "no queue took the message (exchange `{}`, routing key `{}`): {} {}",
                        route.exchange, route.routing_key, returned.reply_code, returned.reply_text
                    ),
                )
                .with_backend(BACKEND)
                .with_operation(operation),
            ))
        }
        Confirmation::Nack(None) => Err(PublishFailure::Failed(
            Error::new(
                ErrorKind::Broker,
                "the broker could not take the message (basic.nack)",
            )
            .with_retryable(true)
            .with_backend(BACKEND)
            .with_operation(operation),
        )),
    }
}
