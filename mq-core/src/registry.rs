//! URL scheme registry: which backend a URL connects to.
//!
//! Registration is explicit (sqlx `AnyDriver` style): the facade crate `mq`
//! builds a registry from the backends its cargo features compile in. A
//! scheme that is not registered is an error listing the schemes that are,
//! and, where the scheme is known but its feature is off, the feature to turn on.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::url::{redact_str, RedactedUrl};

/// The future a connect function returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Client>> + Send>>;

/// Connects to a broker given its parsed URL.
pub type ConnectFn = fn(RedactedUrl) -> ConnectFuture;

/// Maps URL schemes to backend constructors.
#[derive(Clone, Default)]
pub struct Registry {
    backends: Vec<(&'static str, ConnectFn)>,
    hints: Vec<(&'static str, &'static str)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the in-memory backend (`memory://`).
    pub fn with_memory() -> Self {
        let mut r = Self::new();
        crate::memory::register(&mut r);
        r
    }

    /// Connects URLs with `scheme` using `connect`; replaces an earlier registration.
    pub fn register(&mut self, scheme: &'static str, connect: ConnectFn) -> &mut Self {
        self.backends.retain(|(s, _)| *s != scheme);
        self.backends.push((scheme, connect));
        self
    }

    /// Says how to get `scheme` when it is not registered (e.g. "enable the
    /// `kafka` feature of mq").
    pub fn hint(&mut self, scheme: &'static str, how: &'static str) -> &mut Self {
        self.hints.push((scheme, how));
        self
    }

    /// The registered schemes.
    pub fn schemes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.backends.iter().map(|(s, _)| *s)
    }

    /// Connects to the broker `url` names.
    pub async fn connect(&self, url: &str) -> Result<Client> {
        let parsed = RedactedUrl::parse(url)?;
        let scheme = parsed.expose().scheme().to_owned();
        let connect = self
            .backends
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, f)| *f);
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
    async fn not_a_url_is_a_config_error() {
        let err = Registry::with_memory()
            .connect("localhost:5672")
            .await
            .expect_err("no scheme");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }
}
