//! A backend as one value: what the registry, the feature hints, the
//! conformance test and the bench need to know about it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::client::Client;
use crate::error::Result;
use crate::url::RedactedUrl;

/// The future a connect function returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Client>> + Send>>;

/// Connects to a broker given its parsed URL.
pub type ConnectFn = fn(RedactedUrl) -> ConnectFuture;

/// Connects to a broker given the URL exactly as written, for backends whose
/// URLs are not valid WHATWG URLs (Kafka's `kafka://h1:9092,h2:9092` host
/// list has several ports). The backend parses and redacts it itself.
pub type ConnectStrFn = fn(String) -> ConnectFuture;

/// How a backend connects: from the parsed URL (the usual case) or from the
/// URL text as written (see [`ConnectStrFn`]).
#[derive(Clone, Copy)]
pub enum Connector {
    /// Gets the URL parsed and redacted.
    Parsed(ConnectFn),
    /// Gets the URL text as written.
    Raw(ConnectStrFn),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Connector::Parsed(_) => "Connector::Parsed",
            Connector::Raw(_) => "Connector::Raw",
        })
    }
}

/// Everything the rest of `mq` needs to know about one backend, in one
/// value (sqlx's `AnyDriver`): the facade's registry and its "enable feature
/// X" hints, the conformance test, the container set-up and the bench
/// baselines all iterate a list of these. A backend crate exports one as
/// `DRIVER`; adding a backend is that crate plus one line in the facade's
/// list (`mq::BACKENDS`).
#[derive(Debug, Clone, Copy)]
pub struct Driver {
    /// The backend's name in errors, logs and metrics (`"rabbitmq"`).
    pub name: &'static str,
    /// The cargo feature of `mq` that adds it (`"rabbit"`).
    pub feature: &'static str,
    /// The URL schemes it serves (`["amqp", "amqps"]`).
    pub schemes: &'static [&'static str],
    /// How it connects.
    pub connect: Connector,
    /// The key of its test environment: the conformance suite reads
    /// `MQ_TEST_<KEY>_URL` (and `_RESTART`, `_RESTART_URL`).
    pub test_key: &'static str,
    /// How to start it for tests without Docker: the service name of
    /// `scripts/brokers.sh start <name>`.
    pub test_broker: &'static str,
    /// How to run it for tests in Docker (testcontainers), if it can be.
    pub test_image: Option<TestImage>,
}

/// A backend's broker as a container for tests: what the test harness
/// (`tests/containers`) needs to run any image of it and connect.
#[derive(Debug, Clone, Copy)]
pub struct TestImage {
    /// Repository of the official image (`"rabbitmq"`).
    pub official: &'static str,
    /// The port the broker listens on inside the container (in the images
    /// `scripts/containers.sh` builds, and official images run generically;
    /// a testcontainers module knows its own).
    pub port: u16,
    /// A line the broker logs once it serves (same images).
    pub ready: &'static str,
    /// Whether it keeps its data across `docker restart` (the restart
    /// scenario needs that).
    pub restartable: bool,
    /// The environment variable through which the image learns the address
    /// clients reach it at (Kafka's advertised listener), if it needs one.
    pub advertise_env: Option<&'static str>,
    /// The URL of a test broker at `host:port`.
    pub url: fn(&str) -> String,
}

impl Driver {
    /// The environment variable holding a test broker's URL (`MQ_TEST_RABBIT_URL`).
    pub fn test_url_var(&self) -> String {
        format!("MQ_TEST_{}_URL", self.test_key)
    }
}
