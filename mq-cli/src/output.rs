//! Shared output: JSON rendering of messages and progress bars.

use std::io::IsTerminal;
use std::time::Duration;

use base64::Engine;
use indicatif::{ProgressBar, ProgressStyle};
use mq::Received;
use serde_json::{json, Map, Value};

/// A message as one JSON object: `payload` as text when it is UTF-8,
/// `payload_base64` otherwise.
pub(crate) fn message_json(m: &Received) -> Value {
    let headers: Map<String, Value> = m
        .headers()
        .iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    let mut obj = json!({
        "id": m.id(),
        "source": m.source(),
        "key": m.key(),
        "attempt": m.attempt(),
        "headers": headers,
    });
    match std::str::from_utf8(m.payload()) {
        Ok(text) => obj["payload"] = Value::String(text.to_owned()),
        Err(_) => {
            obj["payload_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(m.payload()))
        }
    }
    obj
}

/// A progress bar on stderr when stdout is a terminal; hidden when piped.
pub(crate) fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
