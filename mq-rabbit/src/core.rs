//! The state the producers, consumers, settlers and reply consumers of one
//! client share: the settings, the connection (see `connection.rs`) and the
//! reply channels of this client's requesters (direct reply-to, see `rpc.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::Channel;
use mq_core::backend::RedactedUrl;
use mq_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::codec::REPLY_TOKEN_PREFIX;
use crate::config::RabbitConfig;
use crate::connection::Connector;
use crate::error::{closed, BACKEND};

/// What producers, consumers and settlers of one client share.
pub(crate) struct Shared {
    pub(crate) config: Arc<RabbitConfig>,
    /// The URL the client was made from, for `Debug` (always redacted).
    url: Option<RedactedUrl>,
    pub(crate) connector: Connector,
    pub(crate) replies: ReplyRoutes,
}

impl Shared {
    pub(crate) fn new(
        config: Arc<RabbitConfig>,
        url: Option<RedactedUrl>,
        connector: Connector,
    ) -> Self {
        Shared {
            config,
            url,
            connector,
            replies: ReplyRoutes::default(),
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitClient")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("connection", &self.connector)
            .finish()
    }
}

/// The reply channel currently serving one token.
#[derive(Debug)]
pub(crate) struct ReplyRoute {
    /// Set by the reply consumer while it is subscribed.
    pub(crate) channel: watch::Sender<Option<Arc<Channel>>>,
}

impl ReplyRoute {
    /// The channel to publish requests on, waiting up to `wait` while the
    /// reply consumer subscribes again after an outage.
    async fn channel(&self, wait: Duration) -> Result<Arc<Channel>> {
        let mut rx = self.channel.subscribe();
        let ready = async {
            rx.wait_for(|c| c.as_ref().is_some_and(|ch| ch.status().connected()))
                .await
                .map(|c| c.clone())
        };
        let outcome = tokio::time::timeout(wait, ready).await;
        match outcome {
            Ok(Ok(Some(ch))) => Ok(ch),
            Ok(_) => Err(closed("the reply channel")),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                "the reply channel is reconnecting; try again",
            )
            .with_backend(BACKEND)
            .with_operation("request")),
        }
    }
}

/// Tokens of this client's reply consumers.
#[derive(Debug, Default)]
pub(crate) struct ReplyRoutes(Mutex<HashMap<String, Weak<ReplyRoute>>>);

impl ReplyRoutes {
    /// A new token and the route it names.
    pub(crate) fn register(&self) -> (String, Arc<ReplyRoute>) {
        let token = format!("{REPLY_TOKEN_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let (channel, _) = watch::channel(None);
        let route = Arc::new(ReplyRoute { channel });
        let mut routes = self.0.lock();
        routes.retain(|_, r| r.strong_count() > 0);
        routes.insert(token.clone(), Arc::downgrade(&route));
        (token, route)
    }

    pub(crate) fn remove(&self, token: &str) {
        self.0.lock().remove(token);
    }

    /// The channel a request carrying `token` must be published on.
    pub(crate) async fn channel(&self, token: &str, wait: Duration) -> Result<Arc<Channel>> {
        let route = self.0.lock().get(token).and_then(Weak::upgrade);
        match route {
            Some(route) => route.channel(wait).await,
            None => Err(Error::new(
                ErrorKind::Closed,
                "the requester's reply channel is closed or belongs to another client",
            )
            .with_backend(BACKEND)
            .with_operation("request")),
        }
    }
}
