//! Queues: names, URL resolution (cached), creation and the attributes that
//! matter to `mq` (maximum size, redrive policy, FIFO).
//!
//! A destination is one queue of the same name. With `fifo=true`, `.fifo` is
//! appended to names that lack it. A queue URL is resolved once per
//! connection and cached; an operation that finds the queue gone (an
//! emulator restarted, someone deleted it) drops the cache entry, so the
//! next use resolves, and with `create_queues`, creates it again.

use std::sync::Arc;

use aws_sdk_sqs::types::QueueAttributeName;
use mq_core::observe::QueueStats;
use mq_core::{Error, ErrorKind, Result};

use crate::config::{DEFAULT_MAX_MESSAGE_SIZE, MIN_MAX_MESSAGE_SIZE};
use crate::core::{Budget, Core, QueueInfo};
use crate::error::{self, BACKEND};

/// The longest queue name SQS accepts, `.fifo` included.
pub const MAX_QUEUE_NAME: usize = 80;

const FIFO_SUFFIX: &str = ".fifo";

/// The SQS name of destination `logical`, validated.
pub(crate) fn sqs_name(core: &Core, logical: &str) -> Result<String> {
    let name = if core.config.fifo && !logical.ends_with(FIFO_SUFFIX) {
        format!("{logical}{FIFO_SUFFIX}")
    } else {
        logical.to_owned()
    };
    validate_name(&name)?;
    Ok(name)
}

/// The queue of destination `logical`: cached, else looked up, else
/// created (with `create_queues`). Concurrent first uses share one lookup.
pub(crate) async fn resolve(core: &Core, logical: &str) -> Result<Arc<QueueInfo>> {
    core.slot(logical)
        .get_or_try_init(|| load(core, logical))
        .await
        .cloned()
}

async fn load(core: &Core, logical: &str) -> Result<Arc<QueueInfo>> {
    let name = sqs_name(core, logical)?;
    let fifo = name.ends_with(FIFO_SUFFIX);
    let client = &core.clients.ops;
    let _request = core.permit(Budget::Other).await;
    let url = match client.get_queue_url().queue_name(&name).send().await {
        Ok(out) => out.queue_url().map(str::to_owned),
        Err(e) => {
            let err = error::sdk(e, "resolve queue", logical);
            if err.kind() != ErrorKind::NotFound {
                return Err(err);
            }
            if !core.config.create_queues {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("SQS queue `{name}` does not exist and create_queues is off"),
                )
                .with_backend(BACKEND)
                .with_operation("resolve queue")
                .with_destination(logical));
            }
            let mut create = client.create_queue().queue_name(&name);
            if fifo {
                create = create.attributes(QueueAttributeName::FifoQueue, "true");
            }
            tracing::debug!(queue = %name, "creating SQS queue");
            let out = create
                .send()
                .await
                .map_err(|e| error::sdk(e, "create queue", logical))?;
            out.queue_url().map(str::to_owned)
        }
    };
    let url = url.ok_or_else(|| {
        Error::new(
            ErrorKind::Broker,
            format!("SQS returned no URL for queue `{name}`"),
        )
        .with_backend(BACKEND)
        .with_destination(logical)
    })?;

    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .map_err(|e| error::sdk(e, "read queue attributes", logical))?;
    let attrs = attrs.attributes();
    let get = |n: QueueAttributeName| attrs.and_then(|a| a.get(&n)).map(String::as_str);
    let queue_max = get(QueueAttributeName::MaximumMessageSize)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE)
        .max(MIN_MAX_MESSAGE_SIZE);
    let redrive_target = get(QueueAttributeName::RedrivePolicy).and_then(redrive_target);
    if let Some(target) = &redrive_target {
        tracing::debug!(queue = %name, %target, "queue has a redrive policy; dead letters go to its target");
    }
    Ok(Arc::new(QueueInfo {
        logical: logical.to_owned(),
        url,
        fifo,
        max_size: queue_max.min(core.config.max_message_size),
        redrive_target,
    }))
}

/// The URL of the existing queue of `logical`: cached, else looked up.
/// Never creates the queue (statistics must not make one); a missing
/// queue is `NotFound`.
async fn existing_url(core: &Core, logical: &str) -> Result<String> {
    if let Some(info) = core.cached(logical) {
        return Ok(info.url.clone());
    }
    let name = sqs_name(core, logical)?;
    let _request = core.permit(Budget::Other).await;
    let out = core
        .clients
        .ops
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .map_err(|e| error::sdk(e, "stats", logical))?;
    out.queue_url().map(str::to_owned).ok_or_else(|| {
        Error::new(
            ErrorKind::Broker,
            format!("SQS returned no URL for queue `{name}`"),
        )
        .with_backend(BACKEND)
        .with_destination(logical)
    })
}

/// The queue's approximate counts: visible (`depth`), received and not
/// deleted (`in_flight`) and not yet visible (`delayed`). A queue that
/// does not exist is `NotFound`; one deleted since it was cached is
/// looked up once more (it may have been created again).
pub(crate) async fn stats(core: &Core, logical: &str) -> Result<QueueStats> {
    let mut url = existing_url(core, logical).await?;
    let mut looked_up_again = false;
    let out = loop {
        let request = core
            .clients
            .ops
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
        let result = {
            let _request = core.permit(Budget::Other).await;
            request.send().await
        };
        match result.map_err(|e| error::sdk(e, "stats", logical)) {
            Ok(out) => break out,
            Err(e) if e.kind() == ErrorKind::NotFound && !looked_up_again => {
                if let Some(info) = core.cached(logical) {
                    core.invalidate(&info);
                }
                looked_up_again = true;
                url = existing_url(core, logical).await?;
            }
            Err(e) => return Err(e),
        }
    };
    let attrs = out.attributes();
    let count = |n: QueueAttributeName| {
        attrs
            .and_then(|a| a.get(&n))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut stats = QueueStats::default();
    stats.depth = count(QueueAttributeName::ApproximateNumberOfMessages);
    stats.in_flight = count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
    stats.delayed = count(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
    Ok(stats)
}

/// Where dead letters of `logical` go: the target of the queue's redrive
/// policy if the queue is resolved and has one, else `<name>-dlq`
/// (`<name>-dlq.fifo` for a FIFO queue).
pub(crate) fn dead_letter_destination(core: &Core, logical: &str) -> String {
    if let Some(target) = core.cached(logical).and_then(|i| i.redrive_target.clone()) {
        return target;
    }
    default_dead_letter(logical)
}

/// Where the dead letters of a consumer of `info`'s queue go: the
/// consumer's `dead_letter` option as given, unless it is unset or the
/// plain default `<name>-dlq` (which is what `Client` fills in before the
/// queue was resolved) and the queue has a redrive policy: then its target.
pub(crate) fn consumer_dead_letter(info: &QueueInfo, option: Option<&str>) -> String {
    let default = default_dead_letter(&info.logical);
    match (option, &info.redrive_target) {
        (Some(given), _) if given != default => given.to_owned(),
        (_, Some(target)) => target.clone(),
        (_, None) => default,
    }
}

/// Deletes the queue of `logical` if this connection resolved it (a private
/// reply queue whose consumer went away) and forgets it; a failure is
/// logged, nothing more.
pub(crate) async fn delete_resolved(core: &Core, logical: &str) {
    let Some(info) = core.cached(logical) else {
        return;
    };
    core.invalidate(&info);
    let _request = core.permit(Budget::Other).await;
    if let Err(e) = core
        .clients
        .ops
        .delete_queue()
        .queue_url(&info.url)
        .send()
        .await
    {
        tracing::debug!(queue = %logical, error = %error::sdk(e, "delete queue", logical), "could not delete a reply queue");
    }
}

/// `<name>-dlq`, or `<name>-dlq.fifo` for a FIFO queue `<name>.fifo` (with
/// `fifo=true` the suffix is added to the name anyway).
fn default_dead_letter(logical: &str) -> String {
    match logical.strip_suffix(FIFO_SUFFIX) {
        Some(base) => format!("{base}-dlq{FIFO_SUFFIX}"),
        None => format!("{logical}-dlq"),
    }
}

/// The queue name in a redrive policy's `deadLetterTargetArn`
/// (`arn:aws:sqs:REGION:ACCOUNT:NAME`).
fn redrive_target(policy: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(policy).ok()?;
    let arn = v.get("deadLetterTargetArn")?.as_str()?;
    let name = arn.rsplit(':').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// SQS queue name rules: 1 to 80 of `A-Za-z0-9-_`, plus `.fifo` for FIFO.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let base = name.strip_suffix(FIFO_SUFFIX).unwrap_or(name);
    let valid = !base.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{name}` is not a valid SQS queue name: 1 to {MAX_QUEUE_NAME} characters of \
             A-Z, a-z, 0-9, - and _, with the suffix .fifo for a FIFO queue"
        ))
        .with_backend(BACKEND)
        .with_destination(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        for ok in [
            "jobs",
            "a-b_C9",
            "orders.fifo",
            &"x".repeat(80),
            &format!("{}.fifo", "y".repeat(75)),
        ] {
            validate_name(ok).expect(ok);
        }
        for bad in [
            "",
            ".fifo",
            "a.b",
            "has space",
            "é",
            &"x".repeat(81),
            "q.fifo.fifo",
            "q/1",
        ] {
            let err = validate_name(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }

    #[test]
    fn redrive_policy_names_its_target() {
        assert_eq!(
            redrive_target(
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:jobs-dead","maxReceiveCount":"5"}"#
            ),
            Some("jobs-dead".into())
        );
        assert_eq!(redrive_target("not json"), None);
        assert_eq!(redrive_target(r#"{"maxReceiveCount":5}"#), None);
    }

    fn info(logical: &str, redrive_target: Option<&str>) -> QueueInfo {
        QueueInfo {
            logical: logical.into(),
            url: String::new(),
            fifo: logical.ends_with(FIFO_SUFFIX),
            max_size: 1024 * 1024,
            redrive_target: redrive_target.map(str::to_owned),
        }
    }

    /// Item 3 (issue 14): the consumer's dead-letter option is used as
    /// given; the default (unset, or the plain `<name>-dlq` that `Client`
    /// fills in before the queue is resolved) yields to a redrive policy.
    #[test]
    fn consumer_dead_letter_destination() {
        let plain = info("jobs", None);
        assert_eq!(consumer_dead_letter(&plain, None), "jobs-dlq");
        assert_eq!(consumer_dead_letter(&plain, Some("jobs-dlq")), "jobs-dlq");
        assert_eq!(consumer_dead_letter(&plain, Some("parking")), "parking");
        let fifo = info("jobs.fifo", None);
        assert_eq!(consumer_dead_letter(&fifo, None), "jobs-dlq.fifo");
        let redriven = info("jobs", Some("jobs-dead"));
        assert_eq!(consumer_dead_letter(&redriven, None), "jobs-dead");
        assert_eq!(
            consumer_dead_letter(&redriven, Some("jobs-dlq")),
            "jobs-dead"
        );
        assert_eq!(
            consumer_dead_letter(&redriven, Some("x!y")),
            "x!y",
            "an explicit destination is taken as given"
        );
    }
}
