//! The SQS URL and its typed equivalent, [`SqsConfig`].
//!
//! Every option is read through [`UrlOptions`], so a misspelled option is an
//! error naming it and the known ones; the secret access key and session
//! token live in [`Secret`]s, so no `Debug` or `Display` shows them.

use std::time::Duration;

use mq_core::backend::{RedactedUrl, Secret, UrlOptions};
use mq_core::{Error, Result};

use crate::error::BACKEND;

/// Longest long poll SQS allows (`WaitTimeSeconds`).
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Longest visibility timeout SQS allows (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Longest send delay SQS allows (`DelaySeconds`, 15 minutes).
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// The default `MaximumMessageSize` of a new queue (1 MiB, AWS and moto).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;
/// The smallest `MaximumMessageSize` SQS allows.
pub const MIN_MAX_MESSAGE_SIZE: usize = 1024;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// AWS's own endpoint for the region (`sqs://`).
    Aws,
    /// An explicit endpoint such as `http://127.0.0.1:4566` (`sqs+http://`,
    /// `sqs+https://`): local emulators, VPC endpoints, proxies.
    Url(String),
}

/// How a destination reaches its consumers (the `fanout` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fanout {
    /// A destination is the SQS queue of the same name; consumers compete
    /// for its messages and there are no groups (the default).
    #[default]
    None,
    /// A destination is an SNS topic of the same name; each consumer group
    /// is an SQS queue subscribed to it (raw message delivery), and
    /// group-less consumers share the queue of the destination's own name,
    /// which is subscribed too (`fanout=sns`).
    Sns,
}

/// Static credentials from the URL (`sqs+http://KEY:SECRET@host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id (an identifier, not a secret).
    pub access_key_id: String,
    /// The secret access key; never printed.
    pub secret_access_key: Secret,
    /// An optional session token; never printed.
    pub session_token: Option<Secret>,
}

/// Settings of an SQS connection; [`SqsConfig::from_url`] reads them from a
/// URL, strictly. See the crate docs for the table of options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqsConfig {
    /// Where requests go.
    pub endpoint: Endpoint,
    /// The AWS region; `None` takes it from the environment (`AWS_REGION`,
    /// profile), and emulator endpoints fall back to `us-east-1`.
    pub region: Option<String>,
    /// Static credentials; `None` uses the standard AWS credential chain.
    pub credentials: Option<StaticCredentials>,
    /// Long poll of each `ReceiveMessage` (whole seconds, at most 20; 20 on
    /// AWS, 1 on a plain-HTTP endpoint).
    pub wait: Duration,
    /// How long a received message stays invisible to other consumers; it is
    /// extended while the delivery is held (whole seconds, 1 s to 12 h).
    pub visibility_timeout: Duration,
    /// Create missing queues (and `-dlq` queues) on first use.
    pub create_queues: bool,
    /// Make every destination a FIFO queue (`.fifo` is appended when missing).
    pub fifo: bool,
    /// Upper bound of the queue's `MaximumMessageSize` this client assumes.
    pub max_message_size: usize,
    /// Time limit of one request attempt (a receive gets `wait` on top);
    /// 10 s on AWS, 30 s on a plain-HTTP endpoint.
    pub timeout: Duration,
    /// Time limit for opening a connection.
    pub connect_timeout: Duration,
    /// Attempts per request, with the SDK's standard retry backoff.
    pub max_attempts: u32,
    /// How long a send waits for others to fill its `SendMessageBatch`.
    pub linger: Duration,
    /// `SendMessageBatch` requests in flight per destination and producer.
    pub send_concurrency: usize,
    /// Requests other than receives in flight at once per connection (like
    /// the connection pool limit of other AWS SDKs): protects the endpoint
    /// from a burst of thousands of concurrent sends.
    pub max_connections: usize,
    /// The most `ReceiveMessage` requests in flight per consumer (one while
    /// a poll comes back empty, more while they come back full); 0 means
    /// `prefetch / 10` rounded up, at most 4. Default: 0, and 1 on a
    /// plain-HTTP endpoint (an emulator).
    pub receivers: usize,
    /// Whether the broker keeps messages across its restart (AWS: yes; an
    /// emulator usually not).
    pub persistent: bool,
    /// Publish/subscribe through SNS ([`Fanout::Sns`]) or plain queues.
    pub fanout: Fanout,
}

impl SqsConfig {
    /// The defaults for `endpoint`: AWS's endpoint is persistent, an explicit
    /// endpoint is taken for an in-memory emulator unless told otherwise.
    pub fn new(endpoint: Endpoint) -> Self {
        let persistent = endpoint == Endpoint::Aws;
        // A plain-HTTP endpoint is an emulator: one process, often one core.
        let emulator = matches!(&endpoint, Endpoint::Url(u) if u.starts_with("http://"));
        SqsConfig {
            endpoint,
            region: None,
            credentials: None,
            // An emulator wakes every waiting long poll for each message sent,
            // and a long poll cannot be cancelled on the server: short ones there.
            wait: if emulator {
                Duration::from_secs(1)
            } else {
                MAX_WAIT
            },
            visibility_timeout: Duration::from_secs(30),
            create_queues: true,
            fifo: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            // An emulator is one process that slows down with every queued
            // message; under load it answers late rather than not at all.
            timeout: Duration::from_secs(if emulator { 30 } else { 10 }),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 3,
            linger: Duration::ZERO,
            send_concurrency: 16,
            max_connections: if emulator { 8 } else { 50 },
            // Every long poll waiting on an emulator wakes and scans the
            // queue for each message sent: four consumers with four polls
            // each halved moto's end-to-end rate (`mq bench`, 4x4).
            receivers: usize::from(emulator),
            persistent,
            fanout: Fanout::None,
        }
    }

    /// Reads an `sqs://`, `sqs+http://` or `sqs+https://` URL, strictly.
    pub fn from_url(url: &RedactedUrl) -> Result<Self> {
        let u = url.expose();
        // Errors show the URL without its user info at all (a secret key
        // typed where the key id goes is a secret too) and with secret
        // query values masked.
        let url = &shown(url);
        let endpoint = match u.scheme() {
            "sqs" => {
                if u.host_str().is_some_and(|h| !h.is_empty())
                    || !u.username().is_empty()
                    || u.password().is_some()
                    || u.port().is_some()
                {
                    return Err(Error::config(format!(
                        "sqs:// uses AWS's endpoint and the standard credential chain, so it takes no host, \
                         port or credentials (use sqs+http://KEY:SECRET@HOST:PORT for an emulator): {url}"
                    )));
                }
                Endpoint::Aws
            }
            scheme @ ("sqs+http" | "sqs+https") => {
                let host = match u.host_str() {
                    Some(h) if !h.is_empty() => h,
                    _ => {
                        return Err(Error::config(format!(
                            "{scheme}:// needs the endpoint's host, e.g. {scheme}://KEY:SECRET@127.0.0.1:4566: {url}"
                        )))
                    }
                };
                let http = &scheme[4..];
                let endpoint = match u.port() {
                    Some(p) => format!("{http}://{host}:{p}"),
                    None => format!("{http}://{host}"),
                };
                Endpoint::Url(endpoint)
            }
            other => {
                return Err(Error::config(format!(
                    "not an SQS URL (scheme `{other}`; expected sqs, sqs+http or sqs+https): {url}"
                )))
            }
        };
        if !matches!(u.path(), "" | "/") {
            return Err(Error::config(format!(
                "SQS URLs take no path (queues are named when sending and consuming): {url}"
            )));
        }
        let mut config = SqsConfig::new(endpoint);
        if !u.username().is_empty() || u.password().is_some() {
            let key = percent_decode(u.username(), "access key id")?;
            let secret = percent_decode(u.password().unwrap_or(""), "secret access key")?;
            if key.is_empty() || secret.is_empty() {
                return Err(Error::config(format!(
                    "SQS URL credentials need both parts, ACCESS_KEY_ID:SECRET_ACCESS_KEY@: {url}"
                )));
            }
            config.credentials = Some(StaticCredentials {
                access_key_id: key,
                secret_access_key: Secret::new(secret),
                session_token: None,
            });
        }

        let mut opts = UrlOptions::new(BACKEND, u)?;
        if let Some(region) = opts.take_str("region") {
            if region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(Error::config(format!(
                    "sqs URL option `region` must look like eu-west-1, not `{region}`"
                )));
            }
            config.region = Some(region);
        }
        if let Some(token) = opts.take_str("session_token") {
            match config.credentials.as_mut() {
                Some(c) => c.session_token = Some(Secret::new(token)),
                None => {
                    return Err(Error::config(
                        "sqs URL option `session_token` needs credentials in the URL (KEY:SECRET@)",
                    ))
                }
            }
        }
        if let Some(wait) = opts.take_duration("wait")? {
            config.wait = whole_seconds("wait", wait, Duration::ZERO, MAX_WAIT)?;
        }
        if let Some(v) = opts.take_duration("visibility_timeout")? {
            config.visibility_timeout = whole_seconds(
                "visibility_timeout",
                v,
                Duration::from_secs(1),
                MAX_VISIBILITY,
            )?;
        }
        if let Some(b) = opts.take_bool("create_queues")? {
            config.create_queues = b;
        }
        if let Some(b) = opts.take_bool("fifo")? {
            config.fifo = b;
        }
        if let Some(m) = opts.take::<usize>("max_message_size")? {
            if !(MIN_MAX_MESSAGE_SIZE..=DEFAULT_MAX_MESSAGE_SIZE).contains(&m) {
                return Err(Error::config(format!(
                    "sqs URL option `max_message_size` must be between {MIN_MAX_MESSAGE_SIZE} and \
                     {DEFAULT_MAX_MESSAGE_SIZE} bytes, not {m}"
                )));
            }
            config.max_message_size = m;
        }
        if let Some(t) = opts.take_duration("timeout")? {
            config.timeout = positive("timeout", t)?;
        }
        if let Some(t) = opts.take_duration("connect_timeout")? {
            config.connect_timeout = positive("connect_timeout", t)?;
        }
        if let Some(n) = opts.take::<u32>("max_attempts")? {
            if n == 0 {
                return Err(Error::config(
                    "sqs URL option `max_attempts` must be at least 1",
                ));
            }
            config.max_attempts = n;
        }
        if let Some(l) = opts.take_duration("linger")? {
            if l > Duration::from_secs(1) {
                return Err(Error::config(format!(
                    "sqs URL option `linger` must be at most 1s, not {l:?}"
                )));
            }
            config.linger = l;
        }
        if let Some(n) = opts.take::<usize>("send_concurrency")? {
            if n == 0 {
                return Err(Error::config(
                    "sqs URL option `send_concurrency` must be at least 1",
                ));
            }
            config.send_concurrency = n;
        }
        if let Some(n) = opts.take::<usize>("max_connections")? {
            if n == 0 {
                return Err(Error::config(
                    "sqs URL option `max_connections` must be at least 1",
                ));
            }
            config.max_connections = n;
        }
        if let Some(n) = opts.take::<usize>("receivers")? {
            config.receivers = n;
        }
        if let Some(b) = opts.take_bool("persistent")? {
            config.persistent = b;
        }
        if let Some(f) = opts.take_str("fanout") {
            config.fanout = match f.as_str() {
                "sns" => Fanout::Sns,
                "none" => Fanout::None,
                other => {
                    return Err(Error::config(format!(
                    "sqs URL option `fanout` takes `sns` (an SNS topic per destination, a queue \
                         per consumer group) or `none`, not `{other}`"
                )))
                }
            };
        }
        opts.finish()?;
        Ok(config)
    }

    /// The most `ReceiveMessage` requests a consumer with `prefetch` keeps in flight.
    pub(crate) fn receivers_for(&self, prefetch: usize) -> usize {
        match self.receivers {
            0 => prefetch.div_ceil(10).clamp(1, 4),
            n => n,
        }
    }

    /// The visibility timeout as used: within SQS's 1 s to 12 h (a config
    /// built by hand may hold anything; time arithmetic must not overflow).
    pub(crate) fn visibility(&self) -> Duration {
        self.visibility_timeout
            .clamp(Duration::from_secs(1), MAX_VISIBILITY)
    }

    /// The time limit of one request attempt, clamped to
    /// [`mq_core::backend::time::FAR_FUTURE`] so sums of it cannot overflow.
    pub(crate) fn request_timeout(&self) -> Duration {
        mq_core::backend::time::clamp(self.timeout)
    }

    /// The long poll in whole seconds, as SQS takes it.
    pub(crate) fn wait_secs(&self) -> i32 {
        secs_i32(self.wait.min(MAX_WAIT))
    }

    /// The visibility timeout in whole seconds, as SQS takes it.
    pub(crate) fn visibility_secs(&self) -> i32 {
        secs_i32(self.visibility())
    }
}

/// `url` for an error message: no user name or password (whichever part
/// holds a secret), secret query values (`session_token`) masked.
fn shown(url: &RedactedUrl) -> String {
    let mut u = url.redacted();
    if !u.username().is_empty() || u.password().is_some() {
        // Only fails for URLs that cannot have user info, which then have none.
        let _ = u.set_password(None);
        let _ = u.set_username("");
    }
    u.to_string()
}

/// `d` in whole seconds, rounded up, saturating (SQS takes `i32` seconds).
pub(crate) fn secs_i32(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

fn whole_seconds(key: &str, d: Duration, min: Duration, max: Duration) -> Result<Duration> {
    if d.subsec_nanos() != 0 || d < min || d > max {
        return Err(Error::config(format!(
            "sqs URL option `{key}` must be whole seconds between {}s and {}s, not {d:?}",
            min.as_secs(),
            max.as_secs()
        )));
    }
    Ok(d)
}

fn positive(key: &str, d: Duration) -> Result<Duration> {
    if d.is_zero() {
        return Err(Error::config(format!(
            "sqs URL option `{key}` must be more than 0"
        )));
    }
    Ok(d)
}

fn percent_decode(raw: &str, what: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(Error::config(format!(
                        "the {what} in the SQS URL has an invalid percent escape"
                    )))
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| Error::config(format!("the {what} in the SQS URL is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mq_core::ErrorKind;

    fn parse(s: &str) -> Result<SqsConfig> {
        SqsConfig::from_url(&RedactedUrl::parse(s)?)
    }

    #[test]
    fn aws_endpoint_with_defaults() {
        for url in ["sqs://", "sqs:", "sqs:///"] {
            let c = parse(url).expect(url);
            assert_eq!(c.endpoint, Endpoint::Aws, "{url}");
            assert_eq!(c.region, None);
            assert_eq!(c.credentials, None);
            assert!(c.persistent && c.create_queues && !c.fifo);
            assert_eq!(c.wait, Duration::from_secs(20));
            assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        }
        let c = parse("sqs://?region=eu-west-1").expect("region");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn emulator_endpoint_with_static_credentials() {
        let c = parse("sqs+http://test:se%2Fcret@127.0.0.1:4566?region=us-east-1").expect("url");
        assert_eq!(c.endpoint, Endpoint::Url("http://127.0.0.1:4566".into()));
        assert_eq!(c.region.as_deref(), Some("us-east-1"));
        let creds = c.credentials.clone().expect("credentials");
        assert_eq!(creds.access_key_id, "test");
        assert_eq!(creds.secret_access_key.expose(), "se/cret");
        assert!(!c.persistent, "an emulator keeps nothing by default");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("se/cret") && !shown.contains("se%2Fcret"),
            "{shown}"
        );

        let c = parse("sqs+https://vpce.example:8443?persistent=true").expect("https");
        assert_eq!(
            c.endpoint,
            Endpoint::Url("https://vpce.example:8443".into())
        );
        assert!(c.persistent && c.credentials.is_none());
    }

    #[test]
    fn every_option_parses() {
        let c = parse(
            "sqs+http://k:s@localhost:9324?region=eu-central-1&wait=5s&visibility_timeout=2m\
             &create_queues=false&fifo=true&max_message_size=262144&timeout=3s&connect_timeout=1s\
             &max_attempts=5&linger=5ms&send_concurrency=4&max_connections=8&receivers=2&persistent=yes&session_token=tok\
             &fanout=sns",
        )
        .expect("all options");
        assert_eq!(c.wait, Duration::from_secs(5));
        assert_eq!(c.visibility_timeout, Duration::from_secs(120));
        assert!(!c.create_queues && c.fifo && c.persistent);
        assert_eq!(c.max_message_size, 262_144);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.linger, Duration::from_millis(5));
        assert_eq!(c.send_concurrency, 4);
        assert_eq!(c.max_connections, 8);
        assert_eq!(c.receivers, 2);
        assert_eq!(c.fanout, Fanout::Sns);
        assert_eq!(
            c.credentials
                .and_then(|c| c.session_token)
                .map(|t| t.expose().to_owned()),
            Some("tok".into())
        );
    }

    #[test]
    fn fanout_is_opt_in_on_every_scheme() {
        for url in [
            "sqs://?region=eu-west-1",
            "sqs+http://k:s@127.0.0.1:4566",
            "sqs+https://vpce.example",
        ] {
            assert_eq!(parse(url).expect(url).fanout, Fanout::None, "{url}");
            let on = format!(
                "{url}{}fanout=sns",
                if url.contains('?') { '&' } else { '?' }
            );
            assert_eq!(parse(&on).expect(&on).fanout, Fanout::Sns, "{on}");
            let off = format!(
                "{url}{}fanout=none",
                if url.contains('?') { '&' } else { '?' }
            );
            assert_eq!(parse(&off).expect(&off).fanout, Fanout::None, "{off}");
        }
        let err = parse("sqs+http://h:1?fanout=eventbridge").expect_err("unknown mode");
        assert!(err.to_string().contains("`sns`"), "{err}");
    }

    #[test]
    fn receivers_follow_prefetch() {
        let c = SqsConfig::new(Endpoint::Aws);
        assert_eq!(c.receivers_for(1), 1);
        assert_eq!(c.receivers_for(10), 1);
        assert_eq!(c.receivers_for(11), 2);
        assert_eq!(c.receivers_for(100), 4);
        let emulator = SqsConfig::new(Endpoint::Url("http://127.0.0.1:4566".into()));
        assert_eq!(emulator.wait, Duration::from_secs(1));
        assert_eq!(emulator.timeout, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(emulator.max_connections, 8);
        assert_eq!(c.max_connections, 50);
        assert_eq!(emulator.receivers_for(100), 1);
        let https = SqsConfig::new(Endpoint::Url("https://sqs.example:443".into()));
        assert_eq!(https.receivers_for(100), 4);
    }

    #[test]
    fn invalid_urls_are_config_errors() {
        for bad in [
            "sqs+http://",
            "sqs+http:///x",
            "sqs://host",
            "sqs://k:s@host",
            "sqs+http://h:1/queue",
            "sqs+http://k@h:1",
            "sqs+http://h:1?wait=21s",
            "sqs+http://h:1?wait=1500ms",
            "sqs+http://h:1?visibility_timeout=0s",
            "sqs+http://h:1?visibility_timeout=13h",
            "sqs+http://h:1?max_message_size=10",
            "sqs+http://h:1?max_message_size=2000000",
            "sqs+http://h:1?timeout=0",
            "sqs+http://h:1?max_attempts=0",
            "sqs+http://h:1?linger=2s",
            "sqs+http://h:1?send_concurrency=0",
            "sqs+http://h:1?max_connections=0",
            "sqs+http://h:1?fifo=maybe",
            "sqs+http://h:1?region=eu%20west",
            "sqs+http://h:1?session_token=t",
            "sqs+http://h:1?wait=1s&wait=2s",
            "sqs+http://h:1?fanout=",
            "sqs+http://h:1?fanout=SNS",
            "sqs+http://h:1?fanout=kafka",
            "sqs+http://h:1?fanout=sns&fanout=none",
            "amqp://h",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_option_is_named_without_secret_values() {
        let err = parse("sqs+http://k:hunter2@h:1?region=us-east-1&token=t0ps3cret&wiat=1s")
            .expect_err("unknown");
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("token") && text.contains("known options"),
            "{text}"
        );
        assert!(
            !text.contains("t0ps3cret") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(secs_i32(Duration::from_millis(200)), 1);
        assert_eq!(secs_i32(Duration::from_secs(3)), 3);
        assert_eq!(secs_i32(Duration::from_millis(3001)), 4);
        assert_eq!(secs_i32(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    /// Issue 14 (secrets in errors): no error about an SQS URL and no
    /// `Debug` of a config or backend shows the secret access key or the
    /// session token, whatever is wrong with the URL (nor a secret typed
    /// where the key id goes).
    #[tokio::test]
    async fn errors_and_debug_never_show_secret_key_or_session_token() {
        const SECRETS: [&str; 3] = ["hunter2", "t0ps3cret", "s3ss10n"];
        for bad in [
            "sqs://AKID:hunter2@host",
            "sqs://AKID:hunter2@/",
            "sqs+http://hunter2@h:1",
            "sqs+http://:hunter2@h:1",
            "sqs+http://AKID:hunter2@h:1/queue?session_token=t0ps3cret",
            "sqs+http://AKID:hunter2@h:1?session_token=t0ps3cret&wait=99s",
            "sqs+http://AKID:hunter2@h:1?session_token=t0ps3cret&bogus=1",
            "sqs+http://AKID:hunter2@h:1?session_token=t0ps3cret&session_token=s3ss10n",
            "sqs+http://AKID:hunter2@h:1?region=eu%20west&session_token=t0ps3cret",
            "sqs+http://AKID:hunter%zz@h:1?session_token=t0ps3cret",
            "sqs+http://AKID:hunter2%ff@h:1",
            "sqs+https://AKID:hunter2@h:1?max_message_size=1&aws_secret_access_key=t0ps3cret",
            "amqp://AKID:hunter2@h:1?session_token=t0ps3cret",
        ] {
            let err = parse(bad).expect_err(bad);
            let text = format!("{err} | {err:?}");
            for secret in SECRETS {
                assert!(!text.contains(secret), "{bad} -> {text}");
            }
        }
        let url = "sqs+http://AKID:hunter2@127.0.0.1:9?session_token=t0ps3cret&region=us-east-1";
        let config = parse(url).expect("valid");
        let backend = crate::SqsBackend::connect(config.clone())
            .await
            .expect("connect makes no request");
        let client = crate::connect(url).await.expect("client");
        let text = format!("{config:?} {backend:?} {client:?} {:?}", config.credentials);
        for secret in SECRETS {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("AKID"), "the key id is no secret: {text}");
    }
}
