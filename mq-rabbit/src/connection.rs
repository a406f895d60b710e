//! One AMQP connection per client, re-established with backoff when it drops.
//!
//! Recovery is done here rather than with lapin's own auto-recovery so that
//! the semantics are ours and simple: every connection has a generation;
//! when it dies (broker restart, network cut, missed heartbeats) the first
//! user (or the watcher below) to notice starts one background reconnection loop (exponential
//! backoff with jitter, capped by `reconnect_max_delay`). Producers wait
//! up to `reconnect_wait` for it, then fail with a retryable
//! `Connection` error while the broker stays away; consumers wait for the new connection, declare their topology again and
//! resume. Declarations are cached per connection, so a new connection
//! declares again (non-durable queues and exchanges may be gone).
//!
//! Each connection also has a small watcher task (lapin's connection events,
//! and its state every 500 ms, because a broker shutdown sends no error
//! event): it records why the connection died for [`Connector::health`] and
//! starts the reconnection at once, so an idle client recovers (and reports
//! `connected`) without waiting for its next send.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use mq_core::observe::Health;
use mq_core::{Error, ErrorKind, Result};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch, OnceCell};

use crate::config::RabbitConfig;
use crate::error::{closed, from_lapin, within, BACKEND};

/// One live (or dead) AMQP connection and what hangs off it.
pub(crate) struct Conn {
    /// Increases with every reconnection.
    pub(crate) generation: u64,
    connection: Connection,
    /// The confirm-mode channel producers publish on.
    publish: RwLock<Option<Arc<Channel>>>,
    /// Serialises opening the publish channel.
    publish_open: tokio::sync::Mutex<()>,
    /// Destinations and queues declared on this connection, once each, by kind.
    declared: [Mutex<HashMap<String, Arc<OnceCell<()>>>>; Declared::KINDS],
    /// Retry and delay queues (they expire when unused), by when last declared.
    refreshed: Mutex<HashMap<String, Instant>>,
    /// Dropping it (with the connection) ends the event watcher's task.
    watcher: Mutex<Option<oneshot::Sender<()>>>,
}

impl Conn {
    async fn open(config: &RabbitConfig, generation: u64) -> Result<Conn> {
        let props = ConnectionProperties::default()
            .with_connection_name(config.connection_name.clone().into());
        let tls = config.tls_config()?;
        let runtime = lapin::runtime::default_runtime().map_err(|e| from_lapin(e, "connect"))?;
        let connect = Connection::connect_uri_with_config(config.amqp_uri(), props, tls, runtime);
        let connection = match tokio::time::timeout(config.connection_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(from_lapin(e, "connect")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no connection to RabbitMQ at {}:{} within {:?}",
                        config.host, config.port, config.connection_timeout
                    ),
                )
                .with_backend(BACKEND)
                .with_operation("connect"))
            }
        };
        Ok(Conn {
            generation,
            connection,
            publish: RwLock::new(None),
            publish_open: tokio::sync::Mutex::new(()),
            declared: Default::default(),
            refreshed: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        })
    }

    /// Whether the connection still works, as far as lapin knows.
    pub(crate) fn is_open(&self) -> bool {
        self.connection.status().connected()
    }

    /// Whether the broker blocked this connection (`connection.blocked`,
    /// a resource alarm): nothing it sends is read until it unblocks.
    pub(crate) fn is_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// A new channel (for a consumer, or for declarations that may fail and
    /// take their channel down with them).
    pub(crate) async fn channel(&self, operation: &'static str) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| from_lapin(e, operation))
    }

    /// The shared confirm-mode channel for publishing, reopened if it closed.
    pub(crate) async fn publish_channel(&self) -> Result<Arc<Channel>> {
        if let Some(ch) = self.publish.read().as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let _opening = self.publish_open.lock().await;
        if let Some(ch) = self.publish.read().as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.channel("send").await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| from_lapin(e, "send"))?;
        let ch = Arc::new(ch);
        *self.publish.write() = Some(ch.clone());
        Ok(ch)
    }

    /// Runs `declare` once per (`kind`, `name`) on this connection;
    /// concurrent callers wait for the first, a failure lets the next caller
    /// try again. The check is a map lookup, without allocation, because
    /// every send makes it.
    pub(crate) async fn declare_once<F, Fut>(
        &self,
        kind: Declared,
        name: &str,
        declare: F,
    ) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let cell = {
            let mut declared = self.declared[kind as usize].lock();
            match declared.get(name) {
                Some(cell) if cell.initialized() => return Ok(()),
                Some(cell) => cell.clone(),
                None => declared.entry(name.to_owned()).or_default().clone(),
            }
        };
        cell.get_or_try_init(declare).await.map(|_| ())
    }

    /// Forgets a declaration (the broker deleted the queue), so the next
    /// user declares it again.
    pub(crate) fn forget(&self, kind: Declared, name: &str) {
        self.declared[kind as usize].lock().remove(name);
    }

    /// Forgets that a queue which expires when unused was declared (the
    /// broker no longer has it), so the next user declares it again.
    pub(crate) fn forget_refresh(&self, key: &str) {
        self.refreshed.lock().remove(key);
    }

    /// Whether a queue that expires when unused must be declared again.
    pub(crate) fn needs_refresh(&self, key: &str, every: Duration) -> bool {
        self.refreshed
            .lock()
            .get(key)
            .is_none_or(|at| at.elapsed() >= every)
    }

    /// Records that a queue that expires when unused was just declared.
    pub(crate) fn refreshed(&self, key: &str) {
        self.refreshed.lock().insert(key.to_owned(), Instant::now());
    }

    /// The keys recorded by [`Conn::refreshed`] that start with `prefix`
    /// (the retry and delay queues this connection declared; RabbitMQ has
    /// no way to list queues over AMQP).
    pub(crate) fn refreshed_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.refreshed
            .lock()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Closes the connection, waiting at most `limit` for the broker's
    /// answer (a blocked broker reads nothing).
    async fn close(&self, limit: Duration) {
        if self.is_open() {
            let closing = async {
                self.connection
                    .close(200, "closed by the client".into())
                    .await
                    .map_err(|e| from_lapin(e, "close"))
            };
            if let Err(e) = within(limit, "close", closing).await {
                tracing::debug!(error = %e, "closing the RabbitMQ connection failed");
            }
        }
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("generation", &self.generation)
            .field("open", &self.is_open())
            .finish()
    }
}

/// What a declaration made (the namespaces of [`Conn::declare_once`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Declared {
    /// A destination's exchange, default queue and binding.
    Destination = 0,
    /// A group's queue and binding.
    Group = 1,
    /// An existing queue, checked passively.
    Existing = 2,
    /// A plain queue of ours.
    Queue = 3,
}

impl Declared {
    const KINDS: usize = 4;
}

/// Where the connection stands.
#[derive(Clone)]
enum State {
    Connected(Arc<Conn>),
    /// A reconnection attempt is running.
    Reconnecting,
    /// The last attempt failed; the next one starts after a backoff delay.
    Down {
        kind: ErrorKind,
        message: String,
    },
    /// The client was closed.
    Closed,
}

struct Inner {
    config: Arc<RabbitConfig>,
    state: watch::Sender<State>,
    /// Successful reconnections since the client was created.
    reconnects: AtomicU64,
    /// The last connection-level error and when it happened.
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Inner {
    fn record_error(&self, message: String) {
        *self.last_error.lock() = Some((message, SystemTime::now()));
    }
}

/// The client's connection, shared by its producers and consumers.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<Inner>,
}

impl Connector {
    /// Connects. An unreachable broker is tried again with backoff for up
    /// to `reconnect_wait` (a service may start while its broker restarts);
    /// a refused login, a missing vhost or bad TLS material fail at once.
    pub(crate) async fn connect(config: Arc<RabbitConfig>) -> Result<Self> {
        let give_up = mq_core::backend::time::tokio_instant_after(config.reconnect_wait);
        let mut attempt = 0u32;
        let conn = loop {
            attempt += 1;
            match Conn::open(&config, 1).await {
                Ok(conn) => break conn,
                Err(e) if e.is_retryable() => {
                    let delay = backoff(&config, attempt);
                    if mq_core::backend::time::tokio_instant_after(delay) > give_up {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, attempt, ?delay, "connecting to RabbitMQ failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        };
        let conn = Arc::new(conn);
        let (state, _) = watch::channel(State::Connected(conn.clone()));
        let inner = Arc::new(Inner {
            config,
            state,
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        watch_events(&inner, &conn);
        Ok(Connector { inner })
    }

    /// Connected or not, blocked or not, the last connection error, and how
    /// many times the connection was re-established. `connected` is false
    /// while a reconnection runs and after `close`; `blocked` is true from
    /// the broker's `connection.blocked` to its `connection.unblocked`.
    pub(crate) fn health(&self) -> Health {
        let (connected, blocked) = match &*self.inner.state.borrow() {
            State::Connected(c) => (c.is_open(), c.is_open() && c.is_blocked()),
            _ => (false, false),
        };
        let mut health = Health::healthy();
        health.connected = connected;
        health.blocked = blocked;
        health.reconnects = self.inner.reconnects.load(Ordering::Relaxed);
        if let Some((message, at)) = self.inner.last_error.lock().clone() {
            health.last_error = Some(message);
            health.last_error_at = Some(at);
        }
        health
    }

    /// The live connection. While the broker is away this waits up to
    /// `reconnect_wait` for the reconnection (a broker restart or a short
    /// network cut goes unnoticed), then fails with a retryable
    /// `Connection` error, so a send never hangs on a dead broker.
    pub(crate) async fn get(&self) -> Result<Arc<Conn>> {
        let deadline =
            mq_core::backend::time::tokio_instant_after(self.inner.config.reconnect_wait);
        self.acquire(Some(deadline)).await
    }

    /// The live connection, waiting as long as it takes (consumers resume
    /// after an outage). Fails only once the client is closed.
    pub(crate) async fn wait_connected(&self) -> Result<Arc<Conn>> {
        self.acquire(None).await
    }

    async fn acquire(&self, deadline: Option<tokio::time::Instant>) -> Result<Arc<Conn>> {
        // Fast path, taken by every send: the connection is up.
        if let State::Connected(conn) = &*self.inner.state.borrow() {
            if conn.is_open() {
                return Ok(conn.clone());
            }
        }
        let mut rx = self.inner.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            let down = match state {
                State::Connected(conn) if conn.is_open() => return Ok(conn),
                State::Connected(conn) => {
                    start_reconnect(&self.inner, conn.generation, "RabbitMQ connection lost");
                    None
                }
                State::Reconnecting => None,
                State::Down { kind, message } => Some((kind, message)),
                State::Closed => return Err(closed("the RabbitMQ client")),
            };
            let changed = match deadline {
                None => rx.changed().await.is_ok(),
                Some(deadline) => match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(changed) => changed.is_ok(),
                    Err(_) => {
                        let (kind, message) = down.unwrap_or((
                            ErrorKind::Timeout,
                            "still reconnecting to RabbitMQ".to_owned(),
                        ));
                        return Err(Error::new(kind, message)
                            .with_retryable(true)
                            .with_backend(BACKEND)
                            .with_operation("connect"));
                    }
                },
            };
            if !changed {
                return Err(closed("the RabbitMQ client"));
            }
        }
    }

    /// Closes the connection for good.
    pub(crate) async fn close(&self) {
        let previous = self.inner.state.send_replace(State::Closed);
        if let State::Connected(conn) = previous {
            conn.close(self.inner.config.operation_timeout).await;
        }
    }
}

/// Starts the reconnection loop, unless the dead connection was replaced
/// already or a loop runs; `reason` becomes the last error if it does.
fn start_reconnect(inner: &Arc<Inner>, dead: u64, reason: &str) {
    let mut start = false;
    inner.state.send_if_modified(|s| match s {
        State::Connected(c) if c.generation == dead && !c.is_open() => {
            *s = State::Reconnecting;
            start = true;
            true
        }
        _ => false,
    });
    if !start {
        return;
    }
    inner.record_error(reason.to_owned());
    tracing::warn!(
        generation = dead,
        reason,
        "RabbitMQ connection lost; reconnecting"
    );
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(reconnect_loop(Arc::downgrade(inner), dead + 1));
        }
        Err(_) => {
            let message = "cannot reconnect to RabbitMQ outside a tokio runtime";
            inner.record_error(message.to_owned());
            inner.state.send_replace(State::Down {
                kind: ErrorKind::Connection,
                message: message.into(),
            });
        }
    }
}

/// How often the event watcher looks at the connection's state: a broker
/// that closes the connection (`CONNECTION_FORCED` on shutdown) sends lapin
/// no error event, only a state change.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// Watches `conn` until it dies (or is dropped): its death is recorded and
/// starts the reconnection at once, with lapin's error when it reports one;
/// a broker resource alarm (`connection.blocked`: publishing stalls) is
/// recorded too. Channel errors (a passive declare of a missing queue, ...)
/// come through the same event stream and are ignored: the connection is
/// still open after them.
fn watch_events(inner: &Arc<Inner>, conn: &Arc<Conn>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (stop, mut stopped) = oneshot::channel::<()>();
    *conn.watcher.lock() = Some(stop);
    let mut events = conn.connection.events_listener();
    let status = conn.connection.status().clone();
    let generation = conn.generation;
    let weak = Arc::downgrade(inner);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listening = true;
        loop {
            let event = tokio::select! {
                event = events.next(), if listening => {
                    listening = event.is_some();
                    event
                }
                _ = tick.tick() => None,
                _ = &mut stopped => return,
            };
            let Some(inner) = weak.upgrade() else { return };
            if matches!(*inner.state.borrow(), State::Closed) {
                return;
            }
            let reason = match event {
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(%reason, "RabbitMQ blocked this connection; sends time out until it unblocks");
                    inner.record_error(format!("RabbitMQ blocked publishing: {reason}"));
                    continue;
                }
                Some(lapin::Event::ConnectionUnblocked) => {
                    tracing::info!("RabbitMQ unblocked this connection");
                    continue;
                }
                Some(lapin::Event::Error(e)) if !status.connected() => {
                    format!("RabbitMQ connection lost: {}", from_lapin(e, "connection"))
                }
                _ if !status.connected() => "RabbitMQ closed the connection".to_owned(),
                _ => continue,
            };
            start_reconnect(&inner, generation, &reason);
            return;
        }
    });
}

/// Pauses between connection attempts: core's reconnect schedule (100 ms
/// doubling, jittered) capped by `reconnect_max_delay`.
fn backoff(config: &RabbitConfig, failures: u32) -> Duration {
    mq_core::backend::time::backoff_capped(failures, config.reconnect_max_delay)
}

async fn reconnect_loop(inner: Weak<Inner>, generation: u64) {
    let mut attempt = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if matches!(*strong.state.borrow(), State::Closed) {
            return;
        }
        strong.state.send_if_modified(|s| {
            let down = matches!(s, State::Down { .. });
            if down {
                *s = State::Reconnecting;
            }
            down
        });
        attempt += 1;
        match Conn::open(&strong.config, generation).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                let mut installed = false;
                strong.state.send_if_modified(|s| {
                    if matches!(s, State::Closed) {
                        return false;
                    }
                    *s = State::Connected(conn.clone());
                    installed = true;
                    true
                });
                if installed {
                    strong.reconnects.fetch_add(1, Ordering::Relaxed);
                    watch_events(&strong, &conn);
                    tracing::info!(generation, attempt, "reconnected to RabbitMQ");
                } else {
                    conn.close(strong.config.operation_timeout).await;
                }
                return;
            }
            Err(e) => {
                let delay = backoff(&strong.config, attempt);
                tracing::warn!(error = %e, attempt, ?delay, "reconnecting to RabbitMQ failed");
                let kind = match e.kind() {
                    ErrorKind::Timeout => ErrorKind::Timeout,
                    _ => ErrorKind::Connection,
                };
                strong.record_error(format!("reconnecting to RabbitMQ failed: {e}"));
                strong.state.send_if_modified(|s| {
                    if matches!(s, State::Closed) {
                        return false;
                    }
                    *s = State::Down {
                        kind,
                        message: format!("RabbitMQ is unreachable, reconnecting: {e}"),
                    };
                    true
                });
                drop(strong);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.state.borrow() {
            State::Connected(c) if c.is_open() => {
                format!("connected (generation {})", c.generation)
            }
            State::Connected(c) => format!("connection lost (generation {})", c.generation),
            State::Reconnecting => "reconnecting".to_owned(),
            State::Down { .. } => "down".to_owned(),
            State::Closed => "closed".to_owned(),
        };
        f.debug_struct("Connector").field("state", &state).finish()
    }
}
