//! Connection and topology settings: the `amqp://` / `amqps://` URL and its
//! typed equivalent, [`RabbitConfig`].
//!
//! Every option of the URL is a field here, so a program can build the same
//! configuration in code. The option table lives in the crate docs (README).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};
use mq_core::backend::{parse_duration, RedactedUrl, Secret, UrlOptions};
use mq_core::{Error, Result};

use crate::error::BACKEND;

/// The largest message `send` accepts by default (payload plus headers, see
/// [`Message::encoded_len`](mq_core::Message::encoded_len)). RabbitMQ's own
/// default `max_message_size` is 128 MiB; messages that large hurt a broker,
/// so the client refuses them earlier unless told otherwise.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How long one wait on the broker may take by default (see
/// [`RabbitConfig::operation_timeout`]).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How destinations map to exchanges and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Topology {
    /// Destination `D` is a durable fanout exchange `D`; the default group is
    /// the queue `D`, group `G` the queue `D.G`, both bound to the exchange.
    /// Everything is declared on first use.
    #[default]
    Exchange,
    /// Destinations are existing queues, used as they are: nothing is
    /// declared (except this client's own retry and dead-letter queues),
    /// sends go through the default exchange, groups are not supported.
    Queue,
}

impl FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "exchange" => Ok(Topology::Exchange),
            "queue" => Ok(Topology::Queue),
            _ => Err("expected `exchange` or `queue`".into()),
        }
    }
}

/// The kind of queue declared for destinations and groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QueueType {
    /// Classic queues; attempts are counted with the `mq-attempt` header
    /// plus the `redelivered` flag.
    #[default]
    Classic,
    /// Quorum queues (replicated); the broker counts attempts in `x-delivery-count`.
    Quorum,
}

impl FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            _ => Err("expected `classic` or `quorum`".into()),
        }
    }
}

/// SASL mechanism used to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMechanism {
    /// User name and password (`PLAIN`).
    #[default]
    Plain,
    /// User name and password (`AMQPLAIN`, RabbitMQ's legacy mechanism).
    AmqPlain,
    /// The TLS client certificate (`EXTERNAL`, needs `rabbitmq_auth_mechanism_ssl`).
    External,
}

impl FromStr for AuthMechanism {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(AuthMechanism::Plain),
            "amqplain" => Ok(AuthMechanism::AmqPlain),
            "external" => Ok(AuthMechanism::External),
            _ => Err("expected `plain`, `amqplain` or `external`".into()),
        }
    }
}

/// Settings of a RabbitMQ client; [`RabbitConfig::from_url`] reads them from
/// an `amqp://` or `amqps://` URL. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RabbitConfig {
    /// Connect with TLS (`amqps://`).
    pub tls: bool,
    /// Broker host.
    pub host: String,
    /// Broker port (5672, or 5671 with TLS).
    pub port: u16,
    /// User name (`guest` when the URL has none).
    pub username: String,
    /// Password (`guest` when the URL has none).
    pub password: Secret,
    /// Virtual host (`/` when the URL has no path).
    pub vhost: String,
    /// Prefetch of consumers that do not choose one with `.prefetch(n)`.
    pub prefetch: u16,
    /// Heartbeat interval; zero accepts the broker's.
    pub heartbeat: Duration,
    /// How long the TCP connection and AMQP handshake may take.
    pub connection_timeout: Duration,
    /// Largest AMQP frame; zero accepts the broker's.
    pub frame_max: u32,
    /// Most channels per connection; zero accepts the broker's.
    pub channel_max: u16,
    /// How to log in.
    pub auth_mechanism: AuthMechanism,
    /// Type of the queues this client declares.
    pub queue_type: QueueType,
    /// Exchanges and queues survive a broker restart.
    pub durable: bool,
    /// Messages are written to disk (delivery mode 2).
    pub persistent: bool,
    /// How destinations map to exchanges and queues.
    pub topology: Topology,
    /// Declare queues with `x-single-active-consumer`: one consumer of a
    /// group receives at a time, so messages keep their order.
    pub single_active_consumer: bool,
    /// Largest message (payload plus headers) `send` accepts.
    pub max_message_size: usize,
    /// Longest pause between reconnection attempts.
    pub reconnect_max_delay: Duration,
    /// How long connecting, sending and creating a consumer keep trying
    /// while the broker is unreachable (a restart, a short network cut)
    /// before they fail with a retryable `Connection` error; zero fails at
    /// the first refused attempt.
    pub reconnect_wait: Duration,
    /// How long any single wait on the broker may take once connected: a
    /// publisher confirm, a declaration, a binding, an awaited ack or nack,
    /// a channel open or close. A broker that blocks publishers
    /// (`connection.blocked`, memory or disk alarm) or never confirms makes
    /// the operation fail with a retryable `Timeout` instead of hanging.
    pub operation_timeout: Duration,
    /// `x-delivery-limit` of the quorum queues this client declares (`None`:
    /// the broker's default, unlimited before RabbitMQ 4.0 and 20 from 4.0).
    /// Past the limit the broker dead-letters the message into the
    /// destination's `-dlq`; only with `queue_type=quorum`.
    pub delivery_limit: Option<u32>,
    /// Connection name shown by `rabbitmqctl list_connections` and the management UI.
    pub connection_name: String,
    /// PEM file of extra CA certificates trusted for `amqps://`.
    pub tls_ca: Option<PathBuf>,
    /// PEM file of the client certificate chain for `amqps://`.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client's private key (PKCS#8, PKCS#1 or SEC1) for `amqps://`.
    pub tls_key: Option<PathBuf>,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        RabbitConfig {
            tls: false,
            host: "localhost".into(),
            port: 5672,
            username: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
            prefetch: u16::try_from(mq_core::consumer::DEFAULT_PREFETCH).unwrap_or(u16::MAX),
            heartbeat: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(10),
            frame_max: 131_072,
            channel_max: 0,
            auth_mechanism: AuthMechanism::Plain,
            queue_type: QueueType::Classic,
            durable: true,
            persistent: true,
            topology: Topology::Exchange,
            single_active_consumer: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            reconnect_max_delay: Duration::from_secs(5),
            reconnect_wait: Duration::from_secs(30),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            delivery_limit: None,
            connection_name: "mq".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

fn config_error(message: impl fmt::Display) -> Error {
    Error::config(message.to_string()).with_backend(BACKEND)
}

fn percent_decode(raw: &str, what: &str) -> Result<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| config_error(format!("the {what} in the RabbitMQ URL is not valid UTF-8")))
}

impl RabbitConfig {
    /// Reads an `amqp://user:pass@host:port/vhost?option=value` URL,
    /// strictly: an unknown option or an invalid value is an error naming it.
    pub fn from_url(url: &RedactedUrl) -> Result<Self> {
        let u = url.expose();
        let mut config = RabbitConfig::default();
        config.tls = match u.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => {
                return Err(config_error(format!(
                    "not a RabbitMQ URL (scheme `{other}`, expected amqp or amqps): {url}"
                )))
            }
        };
        config.host = match u.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => {
                return Err(config_error(format!(
                "the RabbitMQ URL has no host: {url} (expected amqp://user:pass@host:5672/vhost)"
            )))
            }
        };
        config.port = u.port().unwrap_or(if config.tls { 5671 } else { 5672 });
        if !u.username().is_empty() {
            config.username = percent_decode(u.username(), "user name")?;
        }
        if let Some(p) = u.password() {
            config.password = Secret::new(percent_decode(p, "password")?);
        }
        config.vhost = match u.path() {
            "" | "/" => "/".to_owned(),
            path => {
                let raw = path.trim_start_matches('/');
                if raw.contains('/') {
                    return Err(config_error(format!(
                        "the virtual host in {url} has a `/`; percent-encode it (`/` is `%2f`)"
                    )));
                }
                percent_decode(raw, "virtual host")?
            }
        };
        if u.fragment().is_some() {
            return Err(config_error(format!(
                "the RabbitMQ URL has a #fragment: {url}"
            )));
        }

        let mut o = UrlOptions::new(BACKEND, u)?;
        if let Some(p) = o.take::<u16>("prefetch")? {
            if p == 0 {
                return Err(config_error(
                    "rabbitmq URL option `prefetch` must be at least 1",
                ));
            }
            config.prefetch = p;
        }
        if let Some(raw) = o.take_str("heartbeat") {
            config.heartbeat = parse_heartbeat(&raw)?;
        }
        if let Some(t) = o.take_duration("connection_timeout")? {
            if t.is_zero() {
                return Err(config_error(
                    "rabbitmq URL option `connection_timeout` must be more than zero",
                ));
            }
            config.connection_timeout = t;
        }
        if let Some(f) = o.take::<u32>("frame_max")? {
            if f != 0 && f < 4096 {
                return Err(config_error(
                    "rabbitmq URL option `frame_max` must be 0 (the broker's) or at least 4096",
                ));
            }
            config.frame_max = f;
        }
        if let Some(c) = o.take::<u16>("channel_max")? {
            config.channel_max = c;
        }
        if let Some(a) = o.take::<AuthMechanism>("auth_mechanism")? {
            config.auth_mechanism = a;
        }
        if let Some(q) = o.take::<QueueType>("queue_type")? {
            config.queue_type = q;
        }
        if let Some(d) = o.take_bool("durable")? {
            config.durable = d;
        }
        if let Some(p) = o.take_bool("persistent")? {
            config.persistent = p;
        }
        if let Some(t) = o.take::<Topology>("topology")? {
            config.topology = t;
        }
        if let Some(s) = o.take_bool("single_active_consumer")? {
            config.single_active_consumer = s;
        }
        if let Some(m) = o.take::<usize>("max_message_size")? {
            if m == 0 {
                return Err(config_error(
                    "rabbitmq URL option `max_message_size` must be at least 1",
                ));
            }
            config.max_message_size = m;
        }
        if let Some(d) = o.take_duration("reconnect_max_delay")? {
            config.reconnect_max_delay = d;
        }
        if let Some(d) = o.take_duration("reconnect_wait")? {
            config.reconnect_wait = d;
        }
        if let Some(t) = o.take_duration("operation_timeout")? {
            if t.is_zero() {
                return Err(config_error(
                    "rabbitmq URL option `operation_timeout` must be more than zero",
                ));
            }
            config.operation_timeout = t;
        }
        if let Some(n) = o.take::<u32>("delivery_limit")? {
            config.delivery_limit = Some(n);
        }
        if let Some(n) = o.take_str("connection_name") {
            config.connection_name = n;
        }
        config.tls_ca = o.take_str("tls_ca").map(PathBuf::from);
        config.tls_cert = o.take_str("tls_cert").map(PathBuf::from);
        config.tls_key = o.take_str("tls_key").map(PathBuf::from);
        o.finish()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks combinations of settings that cannot work together.
    pub fn validate(&self) -> Result<()> {
        if self.host.is_empty() {
            return Err(config_error("the RabbitMQ host is empty"));
        }
        if !self.tls && (self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some())
        {
            return Err(config_error(
                "the rabbitmq options tls_ca, tls_cert and tls_key need an amqps:// URL",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(config_error(
                "the rabbitmq options tls_cert and tls_key go together (client certificate and its key)",
            ));
        }
        if self.queue_type == QueueType::Quorum && !self.durable {
            return Err(config_error(
                "quorum queues are always durable: queue_type=quorum cannot go with durable=false",
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(config_error(
                "the rabbitmq operation_timeout must be more than zero",
            ));
        }
        if self.delivery_limit.is_some() && self.queue_type != QueueType::Quorum {
            return Err(config_error(
                "the rabbitmq option delivery_limit needs queue_type=quorum (classic queues have no delivery limit)",
            ));
        }
        if self
            .delivery_limit
            .is_some_and(|n| i64::from(n) > i64::from(i32::MAX))
        {
            return Err(config_error(
                "the rabbitmq option delivery_limit is at most 2147483647",
            ));
        }
        if self.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(config_error(
                "rabbitmq `heartbeat` is at most 65535 seconds",
            ));
        }
        Ok(())
    }

    /// The URI lapin connects to (credentials included; never log it).
    pub(crate) fn amqp_uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.username.clone(),
                    password: self.password.expose().to_owned(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: (self.frame_max != 0).then_some(self.frame_max),
                channel_max: (self.channel_max != 0).then_some(self.channel_max),
                heartbeat: u16::try_from(self.heartbeat.as_secs()).ok(),
                connection_timeout: u64::try_from(self.connection_timeout.as_millis()).ok(),
                auth_mechanism: Some(match self.auth_mechanism {
                    AuthMechanism::Plain => SASLMechanism::Plain,
                    AuthMechanism::AmqPlain => SASLMechanism::AMQPlain,
                    AuthMechanism::External => SASLMechanism::External,
                }),
            },
        }
    }

    /// The TLS material for `amqps://`, read from the configured files.
    pub(crate) fn tls_config(&self) -> Result<lapin::tcp::OwnedTLSConfig> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                config_error(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let cert_chain = match &self.tls_ca {
            Some(path) => Some(String::from_utf8(read(path, "CA file (tls_ca)")?).map_err(
                |_| config_error(format!("the CA file {} is not PEM text", path.display())),
            )?),
            None => None,
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read(cert, "client certificate (tls_cert)")?,
                key: read(key, "client key (tls_key)")?,
            }),
            _ => None,
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// `heartbeat=60` is seconds, as in RabbitMQ's URI spec; `heartbeat=30s`,
/// `500ms` or `1m` take a unit.
fn parse_heartbeat(raw: &str) -> Result<Duration> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| config_error(format!("rabbitmq URL option `heartbeat` is invalid: {e}")));
    }
    parse_duration(raw).ok_or_else(|| {
        config_error(format!(
            "rabbitmq URL option `heartbeat` must be seconds or a duration like 30s, not `{raw}`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RabbitConfig> {
        RabbitConfig::from_url(&RedactedUrl::parse(url)?)
    }

    #[test]
    fn defaults_and_credentials() {
        let c = parse("amqp://bob:s%40cret@rabbit.example:5673/%2f").expect("parse");
        assert_eq!(c.host, "rabbit.example");
        assert_eq!(c.port, 5673);
        assert_eq!(c.username, "bob");
        assert_eq!(c.password.expose(), "s@cret");
        assert_eq!(c.vhost, "/");
        assert_eq!(c.prefetch, 100);
        assert_eq!(c.topology, Topology::Exchange);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert!(c.durable && c.persistent && !c.tls);
        assert_eq!(c.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(c.operation_timeout, DEFAULT_OPERATION_TIMEOUT);
        assert_eq!(c.delivery_limit, None);
        let c = parse("amqps://host").expect("parse");
        assert_eq!(
            (c.port, c.vhost.as_str(), c.username.as_str()),
            (5671, "/", "guest")
        );
        assert_eq!(parse("amqp://h/").expect("slash").vhost, "/");
        assert_eq!(parse("amqp://h/prod%2Feu").expect("vhost").vhost, "prod/eu");
        assert_eq!(parse("amqp://h/prod").expect("vhost").vhost, "prod");
    }

    #[test]
    fn every_option() {
        let c = parse(
            "amqps://h/vh?prefetch=7&heartbeat=15&connection_timeout=2s&frame_max=8192&channel_max=64\
             &auth_mechanism=EXTERNAL&queue_type=quorum&durable=true&persistent=false&topology=queue\
             &single_active_consumer=yes&max_message_size=1024&reconnect_max_delay=750ms&reconnect_wait=0\
             &operation_timeout=2500ms&delivery_limit=7&connection_name=billing&tls_ca=/etc/ca.pem&tls_cert=/etc/c.pem&tls_key=/etc/k.pem",
        )
        .expect("parse");
        assert_eq!(c.prefetch, 7);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.connection_timeout, Duration::from_secs(2));
        assert_eq!((c.frame_max, c.channel_max), (8192, 64));
        assert_eq!(c.auth_mechanism, AuthMechanism::External);
        assert_eq!(c.queue_type, QueueType::Quorum);
        assert!(!c.persistent && c.single_active_consumer);
        assert_eq!(c.topology, Topology::Queue);
        assert_eq!(c.max_message_size, 1024);
        assert_eq!(c.reconnect_max_delay, Duration::from_millis(750));
        assert_eq!(c.reconnect_wait, Duration::ZERO);
        assert_eq!(c.operation_timeout, Duration::from_millis(2500));
        assert_eq!(c.delivery_limit, Some(7));
        assert_eq!(c.connection_name, "billing");
        assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/k.pem")));
        let uri = c.amqp_uri();
        assert_eq!(uri.query.heartbeat, Some(15));
        assert_eq!(uri.query.connection_timeout, Some(2000));
        assert_eq!(uri.query.auth_mechanism, Some(SASLMechanism::External));
        assert_eq!(
            parse("amqp://h?heartbeat=500ms").expect("ms").heartbeat,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn unknown_and_invalid_options_are_named() {
        let err = parse("amqp://h?prefech=3").expect_err("unknown");
        assert!(err.message().contains("`prefech`"), "{err}");
        assert!(err.message().contains("prefetch"), "{err}");
        for (url, needle) in [
            ("amqp://h?prefetch=0", "prefetch"),
            ("amqp://h?prefetch=70000", "prefetch"),
            ("amqp://h?queue_type=stream", "queue_type"),
            ("amqp://h?topology=mesh", "topology"),
            ("amqp://h?durable=maybe", "durable"),
            ("amqp://h?heartbeat=soon", "heartbeat"),
            ("amqp://h?frame_max=100", "frame_max"),
            ("amqp://h?tls_ca=/ca.pem", "amqps"),
            ("amqps://h?tls_cert=/c.pem", "tls_key"),
            ("amqp://h?queue_type=quorum&durable=false", "quorum"),
            ("amqp://h/a/b", "%2f"),
            ("amqp://h?max_message_size=0", "max_message_size"),
            ("amqp://h?operation_timeout=0", "operation_timeout"),
            ("amqp://h?operation_timeout=soon", "operation_timeout"),
            ("amqp://h?delivery_limit=5", "queue_type=quorum"),
            (
                "amqp://h?queue_type=quorum&delivery_limit=-1",
                "delivery_limit",
            ),
            (
                "amqp://h?queue_type=quorum&delivery_limit=x",
                "delivery_limit",
            ),
            (
                "amqp://h?queue_type=quorum&delivery_limit=4294967295",
                "delivery_limit",
            ),
        ] {
            let err = parse(url).expect_err(url);
            assert_eq!(err.kind(), mq_core::ErrorKind::Config, "{url}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        assert!(parse("amqp://").is_err());
        assert!(parse("kafka://h").is_err());
    }

    #[test]
    fn debug_and_errors_hide_the_password() {
        let c = parse("amqp://u:hunter2@h/").expect("parse");
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = parse("amqp://u:hunter2@h/?nope=1").expect_err("unknown");
        assert!(!format!("{err} {err:?}").contains("hunter2"));
    }
}
