//! `kafka://` URLs and their typed equivalent, [`KafkaConfig`].
//!
//! A Kafka URL names several brokers (`kafka://h1:9092,h2:9092`), which is
//! not a valid WHATWG URL (one authority, one port), so this module splits
//! the host list off itself and hands the rest to [`UrlOptions`] for the
//! strict option parsing every backend shares.
//!
//! No error shows the URL or any part of its authority: a password with an
//! unencoded `/`, `?` or `#` ends the authority early and would otherwise be
//! echoed as a host or port. Errors name what is wrong and where (broker 2
//! of the host list), never the text. Options that carry secrets (see
//! [`is_secret_option`]) never show in `Debug` or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mq_core::backend::{Secret, UrlOptions};
use mq_core::{Error, Result};
use rdkafka::ClientConfig;
use url::Url;

use crate::error::{is_secret_option, BACKEND};

/// The port used when a broker in the URL names none.
pub const DEFAULT_PORT: u16 = 9092;

/// Bytes a record needs beyond what [`Message::encoded_len`](mq_core::Message::encoded_len)
/// counts: the record batch header (61 bytes), the record's varints and
/// attributes, and the names of the headers that carry the message id and
/// content type. The size limit reported in the capabilities is
/// `message_max_bytes` minus this, so a message exactly at the reported limit
/// still fits in one record batch.
pub const RECORD_OVERHEAD: usize = 512;

/// How often librdkafka reports its brokers' states (`statistics.interval.ms`,
/// unless `rdkafka.statistics.interval.ms` overrides it): how late an idle
/// client notices the brokers came back (see `health.rs`).
pub(crate) const STATS_INTERVAL: &str = "5000";

/// Settings of a Kafka connection. [`KafkaConfig::from_url`] reads them
/// from a `kafka://` URL; every field has the URL option of the same name
/// (see the crate docs for the table).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Bootstrap brokers as `host:port`.
    pub brokers: Vec<String>,
    /// Consumer group of consumers that name none; `None` means `mq-<topic>`.
    pub group: Option<String>,
    /// `client.id` of every librdkafka client.
    pub client_id: String,
    /// Producer acknowledgements: `all` (default), `1` or `0`.
    pub acks: String,
    /// Idempotent producer (no duplicates or reordering on retries).
    pub idempotence: bool,
    /// How long the producer waits to fill a batch (`linger.ms`).
    pub linger: Duration,
    /// Largest producer batch in bytes (`batch.size`), librdkafka's default if `None`.
    pub batch_size: Option<usize>,
    /// Compression codec (`none`, `gzip`, `snappy`, `lz4`).
    pub compression: Option<String>,
    /// Largest record batch the producer sends (`message.max.bytes`).
    pub message_max_bytes: usize,
    /// Create missing topics (source, retry, dead-letter, reply) with
    /// `partitions` and `replication`.
    pub auto_create_topics: bool,
    /// Partitions of topics this client creates.
    pub partitions: i32,
    /// Replication factor of topics this client creates.
    pub replication: i16,
    /// Consumer group session timeout (`session.timeout.ms`).
    pub session_timeout: Duration,
    /// Consumer group heartbeat interval (`heartbeat.interval.ms`).
    pub heartbeat: Duration,
    /// How often settled offsets are committed.
    pub commit_interval: Duration,
    /// How long a send may take before it fails (`message.timeout.ms`);
    /// also bounds topic creation and metadata look-ups.
    pub send_timeout: Duration,
    /// Ordered mode: a nack pauses the partition and redelivers in place
    /// instead of going through the retry topic.
    pub ordered: bool,
    /// Whether the broker keeps messages across restarts (reported as the
    /// `persistent` capability).
    pub persistent: bool,
    /// Security settings.
    pub security: Security,
    /// librdkafka options passed through as given (`rdkafka.<option>=value`),
    /// applied last, so they override everything above.
    pub rdkafka: PassThrough,
}

/// TLS and SASL settings.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Security {
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: Option<String>,
    /// `sasl.mechanism`: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name (the URL's user).
    pub username: Option<String>,
    /// SASL password (the URL's password).
    pub password: Option<Secret>,
    /// CA certificate file (`ssl.ca.location`).
    pub ssl_ca: Option<String>,
    /// Client certificate file (`ssl.certificate.location`).
    pub ssl_cert: Option<String>,
    /// Client key file (`ssl.key.location`).
    pub ssl_key: Option<String>,
    /// Password of the client key (`ssl.key.password`).
    pub ssl_key_password: Option<Secret>,
}

/// librdkafka options given as `rdkafka.<option>=value`. `Debug` hides the
/// values of options that name secrets (`sasl.password`, `ssl.key.password`, ...).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PassThrough(BTreeMap<String, Secret>);

impl PassThrough {
    /// Sets `option` to `value`.
    pub fn set(&mut self, option: impl Into<String>, value: impl Into<String>) {
        self.0.insert(option.into(), Secret::new(value.into()));
    }

    /// The value of `option`.
    pub fn get(&self, option: &str) -> Option<&str> {
        self.0.get(option).map(Secret::expose)
    }

    /// Options and values.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.expose()))
    }
}

impl fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in &self.0 {
            if is_secret_option(k) {
                map.entry(k, &"***");
            } else {
                map.entry(k, &v.expose());
            }
        }
        map.finish()
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("ssl_ca", &self.ssl_ca)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .field("ssl_key_password", &self.ssl_key_password)
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("client_id", &self.client_id)
            .field("acks", &self.acks)
            .field("idempotence", &self.idempotence)
            .field("linger", &self.linger)
            .field("batch_size", &self.batch_size)
            .field("compression", &self.compression)
            .field("message_max_bytes", &self.message_max_bytes)
            .field("auto_create_topics", &self.auto_create_topics)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("session_timeout", &self.session_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("commit_interval", &self.commit_interval)
            .field("send_timeout", &self.send_timeout)
            .field("ordered", &self.ordered)
            .field("persistent", &self.persistent)
            .field("security", &self.security)
            .field("rdkafka", &self.rdkafka)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: vec![format!("localhost:{DEFAULT_PORT}")],
            group: None,
            client_id: "mq".to_owned(),
            acks: "all".to_owned(),
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_size: None,
            compression: None,
            message_max_bytes: 1024 * 1024,
            auto_create_topics: false,
            partitions: 1,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            commit_interval: Duration::from_millis(200),
            send_timeout: Duration::from_secs(30),
            ordered: false,
            persistent: true,
            security: Security::default(),
            rdkafka: PassThrough::default(),
        }
    }
}

/// An error about a `kafka://` URL. It never contains the URL: `what`
/// says what is wrong without quoting the authority.
fn config_err(what: impl fmt::Display) -> Error {
    Error::config(format!("invalid kafka URL: {what}")).with_backend(BACKEND)
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl KafkaConfig {
    /// A config for the brokers `hosts` (`host:port`), everything else default.
    pub fn new(brokers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            ..KafkaConfig::default()
        }
    }

    /// Reads a `kafka://[user:password@]host[:port][,host[:port]...][?option=value...]` URL, strictly.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| config_err("the scheme must be kafka://"))?;
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(config_err("no broker host given"));
        }
        // An `@` after the authority: most likely a user name or password
        // with an unencoded `/`, `?` or `#`, which ended the authority early.
        let hint = if userinfo.is_none() && tail.contains('@') {
            " (if the URL has a user name and password, percent-encode `/`, `?`, `#` and `@` in them)"
        } else {
            ""
        };
        let mut brokers = Vec::new();
        for (i, host) in hosts.split(',').enumerate() {
            let broker = parse_host(host).map_err(|what| {
                config_err(format_args!(
                    "broker {} of the host list {what}{hint}",
                    i + 1
                ))
            })?;
            brokers.push(broker);
        }
        // After a misplaced `@`, option names and values may be parts of
        // a password: their errors would quote them.
        Self::from_rest(brokers, userinfo, tail).map_err(|e| {
            if hint.is_empty() {
                e
            } else {
                config_err(format_args!(
                    "the text after the host list does not parse{hint}"
                ))
            }
        })
    }

    /// The rest of a URL once the host list is read: user info, path, query.
    fn from_rest(brokers: Vec<String>, userinfo: Option<&str>, tail: &str) -> Result<Self> {
        // The rest is an ordinary URL once the host list is reduced to one
        // placeholder host; it carries the user info, path and query.
        let single = match userinfo {
            Some(u) => format!("kafka://{u}@placeholder{tail}"),
            None => format!("kafka://placeholder{tail}"),
        };
        let parsed = Url::parse(&single).map_err(config_err)?;
        if !matches!(parsed.path(), "" | "/") {
            return Err(config_err("kafka URLs take no path"));
        }
        if parsed.fragment().is_some() {
            return Err(config_err("kafka URLs take no fragment"));
        }
        let mut config = KafkaConfig {
            brokers,
            ..KafkaConfig::default()
        };
        if !parsed.username().is_empty() {
            config.security.username = Some(decode(parsed.username())?);
        }
        if let Some(p) = parsed.password() {
            config.security.password = Some(Secret::new(decode(p)?));
        }
        config.read_options(&parsed)?;
        config.validate()?;
        Ok(config)
    }

    fn read_options(&mut self, parsed: &Url) -> Result<()> {
        let mut o = UrlOptions::new(BACKEND, parsed)?;
        if let Some(g) = o.take_str("group") {
            self.group = Some(g);
        }
        if let Some(c) = o.take_str("client_id") {
            self.client_id = c;
        }
        if let Some(a) = o.take_str("acks") {
            self.acks = a;
        }
        if let Some(i) = o.take_bool("idempotence")? {
            self.idempotence = i;
        }
        if let Some(l) = o.take_duration("linger")? {
            self.linger = l;
        }
        self.batch_size = o.take::<usize>("batch_size")?;
        self.compression = o.take_str("compression");
        if let Some(m) = o.take::<usize>("message_max_bytes")? {
            self.message_max_bytes = m;
        }
        if let Some(a) = o.take_bool("auto_create_topics")? {
            self.auto_create_topics = a;
        }
        if let Some(p) = o.take::<i32>("partitions")? {
            self.partitions = p;
        }
        if let Some(r) = o.take::<i16>("replication")? {
            self.replication = r;
        }
        if let Some(d) = o.take_duration("session_timeout")? {
            self.session_timeout = d;
        }
        if let Some(d) = o.take_duration("heartbeat")? {
            self.heartbeat = d;
        }
        if let Some(d) = o.take_duration("commit_interval")? {
            self.commit_interval = d;
        }
        if let Some(d) = o.take_duration("send_timeout")? {
            self.send_timeout = d;
        }
        if let Some(b) = o.take_bool("ordered")? {
            self.ordered = b;
        }
        if let Some(b) = o.take_bool("persistent")? {
            self.persistent = b;
        }
        self.security.protocol = o.take_str("security_protocol");
        self.security.sasl_mechanism = o.take_str("sasl_mechanism");
        self.security.ssl_ca = o.take_str("ssl_ca");
        self.security.ssl_cert = o.take_str("ssl_cert");
        self.security.ssl_key = o.take_str("ssl_key");
        self.security.ssl_key_password = o.take_str("ssl_key_password").map(Secret::new);
        for (k, v) in o.take_prefixed("rdkafka.") {
            self.rdkafka.set(k, v);
        }
        o.finish()
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.acks.as_str(), "all" | "-1" | "0" | "1") {
            return Err(config_err(format!(
                "acks must be all, 1 or 0, not `{}`",
                self.acks
            )));
        }
        if self.idempotence && !matches!(self.acks.as_str(), "all" | "-1") {
            return Err(config_err(
                "the idempotent producer needs acks=all (or set idempotence=false)",
            ));
        }
        if self.partitions < 1 {
            return Err(config_err("partitions must be at least 1"));
        }
        if self.replication < 1 {
            return Err(config_err("replication must be at least 1"));
        }
        if self.message_max_bytes <= RECORD_OVERHEAD {
            return Err(config_err(format!(
                "message_max_bytes must be more than {RECORD_OVERHEAD}"
            )));
        }
        if let Some(p) = &self.security.protocol {
            if !matches!(
                p.to_ascii_lowercase().as_str(),
                "plaintext" | "ssl" | "sasl_plaintext" | "sasl_ssl"
            ) {
                return Err(config_err(
                    format!("security_protocol must be plaintext, ssl, sasl_plaintext or sasl_ssl, not `{p}`"),
                ));
            }
        }
        Ok(())
    }

    /// The values of every secret setting, so that a message from
    /// librdkafka that quotes one can be cleaned
    /// ([`convert_create`](crate::error::convert_create)).
    pub(crate) fn secrets(&self) -> Vec<&str> {
        let s = &self.security;
        let mut out: Vec<&str> = [&s.password, &s.ssl_key_password]
            .into_iter()
            .flatten()
            .map(Secret::expose)
            .collect();
        out.extend(
            self.rdkafka
                .iter()
                .filter(|(k, _)| is_secret_option(k))
                .map(|(_, v)| v),
        );
        out.retain(|v| !v.is_empty());
        out
    }

    /// The largest message [`Message::encoded_len`](mq_core::Message::encoded_len)
    /// this client sends; larger ones fail with `TooLarge` before sending.
    pub fn max_message_size(&self) -> usize {
        self.message_max_bytes - RECORD_OVERHEAD
    }

    /// The librdkafka settings every client (producer, consumer, admin) shares.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        c.set("client.id", &self.client_id);
        let s = &self.security;
        let protocol = s.protocol.clone().or_else(|| {
            // A user name in the URL means SASL; plain text unless TLS is asked for.
            s.username.as_ref().map(|_| "sasl_plaintext".to_owned())
        });
        if let Some(p) = protocol {
            c.set("security.protocol", p.to_ascii_lowercase());
        }
        if let Some(u) = &s.username {
            c.set("sasl.username", u);
            c.set(
                "sasl.mechanism",
                s.sasl_mechanism.clone().unwrap_or_else(|| "PLAIN".into()),
            );
        } else if let Some(m) = &s.sasl_mechanism {
            c.set("sasl.mechanism", m);
        }
        if let Some(p) = &s.password {
            c.set("sasl.password", p.expose());
        }
        if let Some(v) = &s.ssl_ca {
            c.set("ssl.ca.location", v);
        }
        if let Some(v) = &s.ssl_cert {
            c.set("ssl.certificate.location", v);
        }
        if let Some(v) = &s.ssl_key {
            c.set("ssl.key.location", v);
        }
        if let Some(v) = &s.ssl_key_password {
            c.set("ssl.key.password", v.expose());
        }
        c.set("message.max.bytes", self.message_max_bytes.to_string());
        c.set("log_level", "3");
        // Brokers' connection states, for health (see `health`).
        c.set("statistics.interval.ms", STATS_INTERVAL);
        c
    }

    /// Applies the pass-through options (last, so they win).
    pub(crate) fn pass_through(&self, c: &mut ClientConfig) {
        for (k, v) in self.rdkafka.iter() {
            c.set(k, v);
        }
    }

    /// Producer settings: acks, idempotence, batching, timeouts. Public so
    /// that a raw-client comparison (`mq bench --baseline`) uses exactly the
    /// settings this crate uses.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("acks", &self.acks);
        c.set("enable.idempotence", self.idempotence.to_string());
        c.set("linger.ms", millis(self.linger));
        c.set("message.timeout.ms", millis(self.send_timeout).as_str());
        if let Some(b) = self.batch_size {
            c.set("batch.size", b.to_string());
        }
        if let Some(z) = &self.compression {
            c.set("compression.type", z);
        }
        self.pass_through(&mut c);
        c
    }

    /// How long a consumer's read-ahead may stay full (its poll thread
    /// not polling) before its partitions are paused: half the session
    /// timeout, within 1 to 30 s. Not polling only delays a rebalance of
    /// the group (heartbeats come from librdkafka's own thread), as a Java
    /// consumer busy between two polls does; a pause costs a refetch of
    /// everything librdkafka had queued, which halved the consume rate of a
    /// 200,000-record backlog on the mock cluster when it paused after 1 s.
    pub(crate) fn pause_after(&self) -> Duration {
        (self.session_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// Consumer settings for `group`: manual commits only, earliest offset
    /// for new groups, and the session timing.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group);
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        c.set("auto.offset.reset", "earliest");
        c.set("session.timeout.ms", millis(self.session_timeout));
        c.set("heartbeat.interval.ms", millis(self.heartbeat));
        c.set("enable.partition.eof", "false");
        // Notice topics created after subscribing (or re-created after a
        // broker without persistence restarted) within seconds, not minutes.
        c.set("topic.metadata.refresh.interval.ms", "10000");
        // A consumer whose application falls behind stops taking records
        // and lets librdkafka's fetch queue fill (pausing would drop it).
        // librdkafka then postpones the partition's next fetch by this much
        // (default 1 s) and does not look again before: once the
        // application caught up, the partitions sat idle for up to a second
        // (one bench pair in 5-7 ran at 40-48% of its rate).
        c.set("fetch.queue.backoff.ms", "50");
        self.pass_through(&mut c);
        c
    }

    /// Admin client settings.
    pub fn admin_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        self.pass_through(&mut c);
        c
    }
}

fn decode(s: &str) -> Result<String> {
    percent_decode(s)
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(|| config_err("user name or password is not valid percent-encoded UTF-8"))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `host[:port]` of the host list as `host:port`; the error says what is
/// wrong without quoting the text (which may be part of a password).
fn parse_host(host: &str) -> std::result::Result<String, &'static str> {
    if host.is_empty() {
        return Err("is empty");
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let close = v6.find(']').ok_or("has an unclosed IPv6 address")?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("has text after its IPv6 address"),
        };
        (&host[..close + 2], port)
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let valid = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !valid {
        return Err("has a host name with characters a host name cannot have");
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("has a port that is not a number from 1 to 65535")?,
    };
    Ok(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mq_core::ErrorKind;

    #[test]
    fn defaults_and_host_list() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:9092").expect("parse");
        assert_eq!(c.brokers, ["127.0.0.1:9092"]);
        assert_eq!(c, KafkaConfig::new(["127.0.0.1:9092"]));
        let c = KafkaConfig::from_url("kafka://a:1,b,[::1]:3?group=g").expect("parse");
        assert_eq!(c.brokers, ["a:1", "b:9092", "[::1]:3"]);
        assert_eq!(c.group.as_deref(), Some("g"));
    }

    #[test]
    fn every_option() {
        let c = KafkaConfig::from_url(
            "kafka://u:p%40ss@h:1?group=g&client_id=c&acks=all&idempotence=false&linger=20ms\
             &batch_size=1000&compression=lz4&message_max_bytes=2000000&auto_create_topics=true\
             &partitions=4&replication=2&session_timeout=6s&heartbeat=500ms&commit_interval=1s\
             &send_timeout=5s&ordered=true&persistent=false&security_protocol=sasl_ssl\
             &sasl_mechanism=SCRAM-SHA-512&ssl_ca=/ca&ssl_cert=/c&ssl_key=/k&ssl_key_password=kp\
             &rdkafka.fetch.wait.max.ms=50",
        )
        .expect("parse");
        assert_eq!(c.group.as_deref(), Some("g"));
        assert_eq!(c.client_id, "c");
        assert!(!c.idempotence);
        assert_eq!(c.linger, Duration::from_millis(20));
        assert_eq!(c.batch_size, Some(1000));
        assert_eq!(c.compression.as_deref(), Some("lz4"));
        assert_eq!(c.message_max_bytes, 2_000_000);
        assert_eq!(c.max_message_size(), 2_000_000 - RECORD_OVERHEAD);
        assert!(c.auto_create_topics);
        assert_eq!((c.partitions, c.replication), (4, 2));
        assert_eq!(c.session_timeout, Duration::from_secs(6));
        assert_eq!(c.heartbeat, Duration::from_millis(500));
        assert_eq!(c.commit_interval, Duration::from_secs(1));
        assert_eq!(c.send_timeout, Duration::from_secs(5));
        assert!(c.ordered && !c.persistent);
        assert_eq!(c.security.username.as_deref(), Some("u"));
        assert_eq!(
            c.security.password.as_ref().map(Secret::expose),
            Some("p@ss")
        );
        assert_eq!(c.security.sasl_mechanism.as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(c.rdkafka.get("fetch.wait.max.ms"), Some("50"));
        let p = c.producer_config();
        assert_eq!(p.get("sasl.password"), Some("p@ss"));
        assert_eq!(p.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(p.get("ssl.key.password"), Some("kp"));
        assert_eq!(p.get("compression.type"), Some("lz4"));
        let k = c.consumer_config("grp");
        assert_eq!(k.get("group.id"), Some("grp"));
        assert_eq!(k.get("enable.auto.commit"), Some("false"));
        assert_eq!(k.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(k.get("fetch.queue.backoff.ms"), Some("50"));
        let over = KafkaConfig::from_url("kafka://h?rdkafka.fetch.queue.backoff.ms=500")
            .expect("parse")
            .consumer_config("grp");
        assert_eq!(
            over.get("fetch.queue.backoff.ms"),
            Some("500"),
            "pass-through wins"
        );
    }

    #[test]
    fn user_means_sasl_plain() {
        let c = KafkaConfig::from_url("kafka://alice:pw@h").expect("parse");
        let p = c.producer_config();
        assert_eq!(p.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(p.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(p.get("sasl.username"), Some("alice"));
    }

    #[test]
    fn bad_urls_are_config_errors_without_secrets() {
        for bad in [
            "kafka://",
            "kafka://host:notaport",
            "kafka:// spaces in host",
            "kafka://h:0",
            "kafka://a,,b",
            "kafka://h/path",
            "kafka://h?partitions=0",
            "kafka://h?acks=1",
            "kafka://h?acks=2&idempotence=false",
            "kafka://h?security_protocol=tls",
            "kafka://h?partitions=1&partitions=2",
            "amqp://h",
        ] {
            let e = KafkaConfig::from_url(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
        let e = KafkaConfig::from_url("kafka://u:hunter2@h?tokn=s3cr3t&rdkafka.x=1")
            .expect_err("unknown");
        let text = format!("{e} {e:?}");
        assert!(text.contains("tokn"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = KafkaConfig::from_url("kafka://u:hunter2@h:bad?token=s3cr3t").expect_err("port");
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let c = KafkaConfig::from_url(
            "kafka://u:hunter2@h?ssl_key_password=k3y&rdkafka.sasl.password=p4ss&rdkafka.linger.ms=3",
        )
        .expect("parse");
        let text = format!("{c:?}");
        for secret in ["hunter2", "k3y", "p4ss"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("linger.ms"), "{text}");
    }

    /// Defect 9 of issue 14: a password with an unencoded `/` (or `?`, `#`)
    /// ends the authority early; the error echoed it as a port
    /// (``bad port `PASSWORD` ``). No error shows any part of the URL.
    #[test]
    fn url_errors_never_echo_the_authority() {
        for url in [
            "kafka://u:PASSWORD/x@127.0.0.1:9092",
            "kafka://u:PASSWORD?x@127.0.0.1:9092",
            "kafka://u:PASSWORD#x@127.0.0.1:9092",
            "kafka://u:PASSWORD@h:bad",
            "kafka://u:PASSWORD@[::1",
            "kafka://u:PASSWORD@[::1]x",
            "kafka://u:PASSWORD@h,,b",
            "kafka://u:PASSWORD@h:0",
            "kafka://u:PASSWORD@h/path",
            "kafka://u:PASSWORD@h#frag",
            "kafka://u:PASS%ZZWORD@h",
            "kafka://u:PASSWORD@h?partitions=0",
            "kafka://u:PASSWORD@h?ordered=maybe",
            "kafka://h:PASSWORD",
            "kafka://PASSWORD@",
            "kafka://u:PASSWORD@h?rdkafka.sasl.password=PASSWORD&bogus=1",
        ] {
            let e = KafkaConfig::from_url(url).expect_err(url);
            let text = format!("{e} {e:?}");
            assert_eq!(e.kind(), ErrorKind::Config, "{url}: {text}");
            assert!(!text.contains("PASSWORD"), "{url}: {text}");
            assert!(!text.contains("PASS"), "{url}: {text}");
        }
        let e = KafkaConfig::from_url("kafka://u:PASSWORD/x@127.0.0.1:9092").expect_err("slash");
        assert!(e.to_string().contains("percent-encode"), "{e}");
        // Percent-encoded, the same password works.
        let c = KafkaConfig::from_url("kafka://u:PASS%2FWORD@127.0.0.1:9092").expect("encoded");
        assert_eq!(
            c.security.password.as_ref().map(Secret::expose),
            Some("PASS/WORD")
        );
    }

    /// Defect 9 of issue 14: librdkafka options that carry key material or
    /// credentials were shown in `Debug`: `ssl.key.pem` (an inline private
    /// key), `ssl.keystore.password`, `sasl.oauthbearer.*`.
    #[test]
    fn debug_and_errors_hide_key_material() {
        let c = KafkaConfig::from_url(
            "kafka://h?rdkafka.ssl.key.pem=PEMSECRET&rdkafka.sasl.password=SASLSECRET\
             &rdkafka.ssl.keystore.password=KEYSTORESECRET\
             &rdkafka.sasl.oauthbearer.client.secret=OAUTHSECRET\
             &rdkafka.sasl.oauthbearer.config=principal%3Dx%20CONFIGSECRET\
             &rdkafka.ssl.key.password=KEYPASSSECRET&rdkafka.linger.ms=3",
        )
        .expect("parse");
        let text = format!("{c:?}");
        for secret in [
            "PEMSECRET",
            "SASLSECRET",
            "KEYSTORESECRET",
            "OAUTHSECRET",
            "CONFIGSECRET",
            "KEYPASSSECRET",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("linger.ms"), "{text}");
        // librdkafka quotes a rejected value in its message.
        let e = crate::error::convert(
            rdkafka::error::KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
                "Invalid value \"PEMSECRET\" for configuration property \"ssl.key.pem\"".into(),
                "ssl.key.pem".into(),
                "PEMSECRET".into(),
            ),
            "connect",
            None,
        );
        assert!(!format!("{e} {e:?}").contains("PEMSECRET"), "{e:?}");
        assert!(
            crate::error::scrub("x PEMSECRET y OAUTHSECRET", &c.secrets())
                .matches("***")
                .count()
                == 2
        );
    }

    /// A client created with a bad inline key: whatever librdkafka says,
    /// the key does not show.
    #[test]
    fn client_creation_errors_hide_key_material() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAnotarealkeyatall\n-----END PRIVATE KEY-----";
        let mut pem_config = KafkaConfig::new(["127.0.0.1:1"]);
        pem_config.security.protocol = Some("ssl".into());
        pem_config.rdkafka.set("ssl.key.pem", pem);
        pem_config
            .rdkafka
            .set("ssl.certificate.pem", "not a certificate");
        let mut oauth_config = KafkaConfig::new(["127.0.0.1:1"]);
        oauth_config
            .rdkafka
            .set("sasl.oauthbearer.client.secret", "OAUTHSECRET");
        for c in [pem_config, oauth_config] {
            match crate::KafkaBackend::new(c) {
                Ok(_) => eprintln!("librdkafka accepted it (checked on connect)"),
                Err(e) => {
                    let text = format!("{e} {e:?}");
                    eprintln!("{text}");
                    assert!(
                        !text.contains("notarealkey") && !text.contains("OAUTHSECRET"),
                        "{text}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// Whatever the URL, parsing never panics, and a password that is
        /// not percent-encoded (with `/`, `?`, `#`, `:` or `%` in it) never
        /// shows in the error or in `Debug` of the config.
        #[test]
        fn url_parsing_never_panics_or_echoes_the_password(
            before in "[a-zA-Z0-9/?#:%=&]{0,8}",
            after in "[a-zA-Z0-9/?#:%=&]{0,8}",
            user in "[a-z]{0,4}",
            hosts in "[a-z0-9.:,\\[\\]-]{0,20}",
            query in "[a-z_=&.0-9@]{0,30}",
        ) {
            let password = format!("{before}SECRETPW{after}");
            let url = format!("kafka://{user}:{password}@{hosts}?{query}");
            match KafkaConfig::from_url(&url) {
                Ok(c) => {
                    let text = format!("{c:?}");
                    proptest::prop_assert!(!text.contains("SECRETPW"), "{url}: {text}");
                }
                Err(e) => {
                    let text = format!("{e} {e:?}");
                    proptest::prop_assert!(!text.contains("SECRETPW"), "{url}: {text}");
                    proptest::prop_assert!(!text.contains("ECRETP"), "{url}: {text}");
                }
            }
        }

        /// Any string at all: no panic.
        #[test]
        fn any_text_parses_or_fails_cleanly(url in "kafka://\\PC{0,60}") {
            let _ = KafkaConfig::from_url(&url);
        }
    }
}
