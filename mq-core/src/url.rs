//! URL parsing helpers shared by every backend: strict query options and
//! redaction of credentials.
//!
//! Every backend parses its options through [`UrlOptions`], so an unknown or
//! misspelled option is an error naming it and the options the backend knows,
//! and [`RedactedUrl`] is the only way a URL reaches a log or an error.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};

/// Query keys whose values are secrets, matched case-insensitively against
/// the end of the key with `.` and `-` read as `_` (so
/// `rdkafka.sasl.password` matches `password`).
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "secret_key",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "aws_session_token",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key_password",
    "ssl_key_password",
    "sasl_oauthbearer_config",
];

/// Words that make any key carrying them a secret wherever they appear
/// (`ssl.key.pem` is an inline private key, `client.secret.x` a secret).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "pem",
    "credential",
    "credentials",
    "private",
];

const REDACTED: &str = "***";

/// Whether a query key names a secret: a password, secret, token or key
/// material (`rdkafka.ssl.key.pem`, `rdkafka.sasl.password`, `secret_key`).
pub fn is_secret_key(key: &str) -> bool {
    let whole = key.to_ascii_lowercase().replace(['.', '-'], "_");
    SECRET_KEYS.iter().any(|s| whole.ends_with(s))
        || whole.split('_').any(|word| SECRET_WORDS.contains(&word))
}

/// A string that never shows in `Debug` or `Display` (passwords, keys, tokens).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A URL that prints with its password and secret query values replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(Url);

impl RedactedUrl {
    /// Wraps `url`.
    pub fn new(url: Url) -> Self {
        RedactedUrl(url)
    }

    /// Parses `s`; the error message is redacted too.
    pub fn parse(s: &str) -> Result<Self> {
        Url::parse(s).map(RedactedUrl).map_err(|e| {
            Error::config(format!("invalid URL {}: {e}", redact_str(s))).with_source(e)
        })
    }

    /// The full URL, credentials included, for handing to a client library.
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// The URL with credentials replaced by `***`.
    pub fn redacted(&self) -> Url {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Cannot fail: the URL has a password, hence a host.
            let _ = url.set_password(Some(REDACTED));
        }
        if url.fragment().is_some() {
            url.set_fragment(Some(REDACTED));
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    // `user:pass?x@host` parses with the password in the
                    // query: an `@` there is a credential until proven otherwise.
                    if k.contains('@') || v.contains('@') {
                        return (REDACTED.to_owned(), REDACTED.to_owned());
                    }
                    let v = if is_secret_key(&k) {
                        REDACTED.to_owned()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.redacted(), f)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedactedUrl({})", self.redacted())
    }
}

/// Redacts a string that should be a URL but may not parse. A parsable URL
/// is redacted properly. Otherwise nothing that may be a credential
/// survives: everything between `://` and the last `@` (wherever a `?` or
/// `/` sits: a password may contain either, unencoded), a `user:password`
/// authority without `@`, and the whole query.
pub fn redact_str(s: &str) -> String {
    if let Ok(url) = Url::parse(s) {
        return RedactedUrl(url).to_string();
    }
    let Some(start) = s.find("://").map(|i| i + 3) else {
        // Not URL-shaped at all: it may be anything, so show none of it.
        return REDACTED.to_owned();
    };
    let (scheme, rest) = s.split_at(start);
    let rest = match rest.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &rest[at + 1..]),
        None => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..end].find(':') {
                // `host:port` with a numeric port is safe to show.
                Some(colon) if !rest[colon + 1..end].bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{}:{REDACTED}{}", &rest[..colon], &rest[end..])
                }
                _ => rest.to_owned(),
            }
        }
    };
    let rest = match rest.find('?') {
        Some(q) => format!("{}?{REDACTED}", &rest[..q]),
        None => rest,
    };
    format!("{scheme}{rest}")
}

/// Strict reader of a URL's query options.
///
/// Each `get`/`take` records the key as known; [`UrlOptions::finish`] fails
/// on any key that was not read, listing the ones that are. A key given twice
/// is an error.
#[derive(Debug)]
pub struct UrlOptions {
    backend: &'static str,
    values: BTreeMap<String, String>,
    known: Vec<String>,
    prefixes: Vec<String>,
}

impl UrlOptions {
    /// The query options of `url`, for `backend` (named in errors).
    pub fn new(backend: &'static str, url: &Url) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (k, v) in url.query_pairs() {
            if values.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::config(format!(
                    "{backend} URL option `{k}` is given more than once"
                )));
            }
        }
        Ok(UrlOptions {
            backend,
            values,
            known: Vec::new(),
            prefixes: Vec::new(),
        })
    }

    /// The raw value of `key`, if given.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.known.push(key.to_owned());
        self.values.remove(key)
    }

    /// The value of `key` parsed as `T`, if given.
    pub fn take<T>(&mut self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.take_str(key) {
            None => Ok(None),
            Some(raw) => raw.parse::<T>().map(Some).map_err(|e| {
                let shown = if is_secret_key(key) { REDACTED } else { &raw };
                Error::config(format!(
                    "{} URL option `{key}` has invalid value `{shown}`: {e}",
                    self.backend
                ))
            }),
        }
    }

    /// A boolean option: `true`/`false`/`1`/`0`/`yes`/`no`.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take_str(key) {
            None => Ok(None),
            Some(raw) => match raw.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(Error::config(format!(
                    "{} URL option `{key}` must be true or false, not `{raw}`",
                    self.backend
                ))),
            },
        }
    }

    /// A duration option in milliseconds (`timeout_ms=500`) or with a unit
    /// (`timeout=500ms`, `30s`, `5m`).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.take_str(key) {
            None => Ok(None),
            Some(raw) => parse_duration(&raw).map(Some).ok_or_else(|| {
                Error::config(format!(
                    "{} URL option `{key}` must be a duration like 500ms, 30s or 5m, not `{raw}`",
                    self.backend
                ))
            }),
        }
    }

    /// All options whose key starts with `prefix` (the prefix removed), for
    /// pass-through of native client settings such as `rdkafka.*`.
    pub fn take_prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        self.prefixes.push(format!("{prefix}*"));
        let keys: Vec<String> = self
            .values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = self.values.remove(&k)?;
                Some((k[prefix.len()..].to_owned(), v))
            })
            .collect()
    }

    /// Fails if any option was not read.
    pub fn finish(self) -> Result<()> {
        if let Some(unknown) = self.values.keys().next() {
            let mut known: Vec<String> = self.known.clone();
            known.extend(self.prefixes.iter().cloned());
            known.sort();
            known.dedup();
            return Err(Error::config(format!(
                "unknown {} URL option `{unknown}`; known options: {}",
                self.backend,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(())
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of milliseconds;
/// at most [`FAR_FUTURE`](crate::time::FAR_FUTURE).
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (num, unit) = raw.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "" | "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    // Longer than a process can wait is "forever": clamp, so adding it to
    // `Instant::now()` later cannot overflow.
    Duration::try_from_secs_f64(secs)
        .ok()
        .map(crate::time::clamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_secret_query_values() {
        let url = RedactedUrl::parse(
            "amqp://user:hunter2@host:5672/vh?prefetch=10&sasl.password=pw2&secret_key=abc&rdkafka.ssl.key.password=k",
        )
        .expect("parse");
        let shown = format!("{url} {url:?}");
        for secret in ["hunter2", "pw2", "abc", "=k"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("user:***@host"));
        assert!(shown.contains("prefetch=10"));
        assert_eq!(url.expose().password(), Some("hunter2"));
    }

    #[test]
    fn unparsable_urls_are_redacted_too() {
        let shown = redact_str("amqp://user:hunter2@[bad/vh?token=t0k");
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0k"),
            "{shown}"
        );
        let err = RedactedUrl::parse("amqp://user:hunter2@[bad").expect_err("bad");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn secrets_in_errors_never_echo_the_password() {
        for raw in [
            "amqp://user:hunter2?x@127.0.0.1/",
            "sqs://AKID:hunter2?@x",
            "kafka://u:hunter2/x@127.0.0.1:9092",
            "amqp://u:hunter2#frag@h/",
            "amqp://user:hunter2?x",
            "amqp://u:hunter2",
            "not a url hunter2",
            "amqp://u:p@h/?rdkafka.ssl.key.pem=hunter2",
            "kafka://u:123?hunter2@127.0.0.1:9092",
            "amqp://u:123#hunter2@h",
        ] {
            let shown = redact_str(raw);
            assert!(!shown.contains("hunter2"), "{raw} -> {shown}");
            if let Err(e) = RedactedUrl::parse(raw) {
                assert!(!format!("{e} {e:?}").contains("hunter2"), "{raw} -> {e:?}");
            }
        }
        assert_eq!(redact_str("kafka://h:9092"), "kafka://h:9092");
    }

    #[test]
    fn key_material_and_tokens_are_secret_keys() {
        for key in [
            "rdkafka.ssl.key.pem",
            "rdkafka.sasl.password",
            "rdkafka.ssl.keystore.password",
            "rdkafka.sasl.oauthbearer.client.secret",
            "rdkafka.sasl.oauthbearer.config",
            "secret_key",
            "session_token",
            "api_key",
            "SASL-PASSWORD",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "prefetch",
            "rdkafka.linger.ms",
            "region",
            "queue_type",
            "tokens_per_s",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        #[test]
        fn url_redaction_never_leaks_a_password(
            scheme in "(amqp|amqps|kafka|sqs|sqs\\+http|memory)",
            user in "[a-zA-Z0-9]{0,8}",
            password in "[a-zA-Z0-9/?#@:%. ]{1,12}",
            host in "[a-z0-9.\\[\\]:-]{0,16}",
            tail in "[a-zA-Z0-9/?&=#%.:-]{0,24}",
        ) {
            let secret = format!("S3cr3t{password}");
            let raw = format!("{scheme}://{user}:{secret}@{host}{tail}");
            let shown = redact_str(&raw);
            proptest::prop_assert!(!shown.contains("S3cr3t"), "{} -> {}", raw, shown);
            if let Err(e) = RedactedUrl::parse(&raw) {
                proptest::prop_assert!(!e.to_string().contains("S3cr3t"));
            }
        }

        #[test]
        fn duration_and_option_parsers_never_panic(raw in "\\PC{0,24}", key in "[a-z._]{1,12}") {
            let _ = parse_duration(&raw);
            if let Ok(url) = Url::parse(&format!("memory://x?{key}={}", raw.replace(['&', '#'], ""))) {
                let mut o = UrlOptions::new("memory", &url).expect("one key");
                let _ = o.take_duration(&key);
                let _ = o.finish();
            }
        }
    }

    #[test]
    fn secret_type_hides_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn unknown_option_names_it_and_the_known_ones() {
        let url = Url::parse("memory://x?capacity=5&prefech=3").expect("url");
        let mut o = UrlOptions::new("memory", &url).expect("opts");
        assert_eq!(o.take::<usize>("capacity").expect("cap"), Some(5));
        let _ = o.take::<usize>("prefetch").expect("prefetch");
        let err = o.finish().expect_err("unknown");
        assert_eq!(
            err.message(),
            "unknown memory URL option `prefech`; known options: capacity, prefetch"
        );
    }

    #[test]
    fn invalid_values_and_duplicates_are_errors() {
        let url = Url::parse("memory://x?capacity=lots").expect("url");
        let mut o = UrlOptions::new("memory", &url).expect("opts");
        let err = o.take::<usize>("capacity").expect_err("invalid");
        assert!(err
            .message()
            .contains("`capacity` has invalid value `lots`"));
        let url = Url::parse("memory://x?a=1&a=2").expect("url");
        assert!(UrlOptions::new("memory", &url).is_err());
        let url = Url::parse("kafka://h?password=hunter2x").expect("url");
        let mut o = UrlOptions::new("kafka", &url).expect("opts");
        let err = o.take::<u8>("password").expect_err("invalid");
        assert!(!err.to_string().contains("hunter2x"));
    }

    #[test]
    fn prefixed_pass_through_and_durations() {
        let url =
            Url::parse("kafka://h?rdkafka.linger.ms=5&rdkafka.acks=all&wait=2s").expect("url");
        let mut o = UrlOptions::new("kafka", &url).expect("opts");
        let passed = o.take_prefixed("rdkafka.");
        assert_eq!(passed.get("linger.ms").map(String::as_str), Some("5"));
        assert_eq!(passed.len(), 2);
        assert_eq!(
            o.take_duration("wait").expect("d"),
            Some(Duration::from_secs(2))
        );
        o.finish().expect("all read");
        assert_eq!(parse_duration("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(
            parse_duration("18000000000000000000s"),
            Some(crate::time::FAR_FUTURE),
            "clamped, not an Instant overflow waiting to happen"
        );
    }
}
