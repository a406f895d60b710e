//! URL scheme registry: which backend a URL connects to.
//!
//! Registration is explicit (sqlx `AnyDriver` style): the facade crate `mq`
//! builds a registry from the backends its cargo features compile in. A
//! scheme that is not registered is an error listing the schemes that are,
//! and, where the scheme is known but its feature is off, the feature to turn on.

use std::fmt;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::url::{redact_str, RedactedUrl};

pub use crate::driver::{ConnectFn, ConnectFuture, ConnectStrFn, Connector, Driver};

/// Maps URL schemes to backend constructors.
#[derive(Clone, Default)]
pub struct Registry {
    backends: Vec<(&'static str, Connector)>,
    hints: Vec<(&'static str, String)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the in-memory backend (`memory://`).
    pub fn with_memory() -> Self {
        let mut r = Self::new();
        r.register_driver(&crate::memory::DRIVER);
        r
    }

    /// Connects URLs with `scheme` using `connect`; replaces an earlier registration.
    pub fn register(&mut self, scheme: &'static str, connect: ConnectFn) -> &mut Self {
        self.backends.retain(|(s, _)| *s != scheme);
        self.backends.push((scheme, Connector::Parsed(connect)));
        self
    }

    /// Connects URLs with `scheme` using `connect`, which gets the URL text
    /// unparsed (see [`ConnectStrFn`]); replaces an earlier registration.
    pub fn register_raw(&mut self, scheme: &'static str, connect: ConnectStrFn) -> &mut Self {
        self.backends.retain(|(s, _)| *s != scheme);
        self.backends.push((scheme, Connector::Raw(connect)));
        self
    }

    /// Registers every scheme of `driver`.
    pub fn register_driver(&mut self, driver: &Driver) -> &mut Self {
        for scheme in driver.schemes {
            self.backends.retain(|(s, _)| s != scheme);
            self.backends.push((scheme, driver.connect));
        }
        self
    }

    /// Says how to get `scheme` when it is not registered (e.g. "enable the
    /// `kafka` feature of mq").
    pub fn hint(&mut self, scheme: &'static str, how: impl Into<String>) -> &mut Self {
        self.hints.push((scheme, how.into()));
        self
    }

    /// The registered schemes.
    pub fn schemes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.backends.iter().map(|(s, _)| *s)
    }

    /// Connects to the broker `url` names.
    pub async fn connect(&self, url: &str) -> Result<Client> {
        let raw = url.split_once("://").and_then(|(scheme, _)| {
            self.backends.iter().find_map(|(s, c)| match c {
                Connector::Raw(f) if s.eq_ignore_ascii_case(scheme) => Some(*f),
                _ => None,
            })
        });
        if let Some(connect) = raw {
            return connect(url.to_owned()).await;
        }
        let parsed = RedactedUrl::parse(url)?;
        let scheme = parsed.expose().scheme().to_owned();
        let connect = self.backends.iter().find_map(|(s, c)| match c {
            Connector::Parsed(f) if *s == scheme => Some(*f),
            _ => None,
        });
        match connect {
            Some(connect) => connect(parsed).await,
            None => Err(self.unknown_scheme(&scheme, url)),
        }
    }

    fn unknown_scheme(&self, scheme: &str, url: &str) -> Error {
        let mut schemes: Vec<&str> = self.schemes().collect();
        schemes.sort_unstable();
        let mut msg = format!(
            "no backend for URL scheme `{scheme}` in {}; this build supports: {}",
            redact_str(url),
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some((_, how)) = self.hints.iter().find(|(s, _)| *s == scheme) {
            msg.push_str("; ");
            msg.push_str(how);
        }
        Error::config(msg)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_lists_supported_and_hint() {
        let mut r = Registry::with_memory();
        r.hint("kafka", "enable the `kafka` feature of mq");
        let err = r
            .connect("kafka://user:pw@localhost:9092")
            .await
            .expect_err("not registered");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
        let text = err.to_string();
        assert!(text.contains("supports: memory://"), "{text}");
        assert!(text.contains("enable the `kafka` feature"), "{text}");
        assert!(!text.contains(":pw@"), "{text}");
    }

    #[tokio::test]
    async fn raw_backends_get_the_url_unparsed() {
        let mut r = Registry::with_memory();
        r.register_raw("multi", |url| {
            Box::pin(async move { Err(Error::config(format!("got {}", url.len()))) })
        });
        // Not a valid WHATWG URL (two ports), yet it reaches the backend.
        let err = r
            .connect("multi://h1:1,h2:2?x=1")
            .await
            .expect_err("the stub fails");
        assert_eq!(err.message(), "got 21");
        assert!(r.schemes().any(|s| s == "multi"));
    }

    #[tokio::test]
    async fn not_a_url_is_a_config_error() {
        let err = Registry::with_memory()
            .connect("localhost:5672")
            .await
            .expect_err("no scheme");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }
}
