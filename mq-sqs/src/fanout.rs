//! Publish/subscribe through SNS (`fanout=sns`): destinations as SNS topics,
//! consumer groups as SQS queues subscribed to them.
//!
//! - The topic of destination `d` is named like `d`'s queue (`.fifo` and a
//!   FIFO topic for FIFO destinations), created on first use.
//! - Group `g` of `d` reads the queue `d__g` (`d__g.fifo`), subscribed to the
//!   topic with `RawMessageDelivery=true` (SQS gets the body and message
//!   attributes as published, so the SQS codec decodes them unchanged) and a
//!   queue policy statement that lets that topic send to it.
//! - Group-less consumers read the queue named `d` as without fan-out. A
//!   producer subscribes it before its first publish to `d`, so
//!   point-to-point holds: every message sent reaches that queue, and each
//!   goes to one of its consumers; nothing sent before the first consumer
//!   is lost.
//! - A replay of a dead letter (`mq-replayed`, `mq-original-source` equal to
//!   the destination) goes straight to the queue it was dead-lettered from
//!   (its group's, or the default one), not to the topic: one group's
//!   replay never reaches the other groups.
//!
//! Topics and subscriptions are made once per connection and cached; a
//! publish that finds the topic gone forgets it (and the subscriptions to
//! it), makes it again and retries once.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sqs::types::QueueAttributeName;
use mq_core::{headers, Error, ErrorKind, Message, Result};

use crate::codec::{self, Wire};
use crate::config::Fanout;
use crate::core::{Budget, Core, QueueInfo, TopicInfo};
use crate::error::{self, BACKEND};
use crate::topology::{self, MAX_QUEUE_NAME};

/// The largest message SNS publishes (body and attributes): 256 KiB.
pub const SNS_MAX_MESSAGE_SIZE: usize = 256 * 1024;

/// Between a destination and a group in the name of the group's queue.
pub const GROUP_SEPARATOR: &str = "__";

const FIFO_SUFFIX: &str = ".fifo";

/// Whether this connection publishes through SNS.
pub(crate) fn enabled(core: &Core) -> bool {
    core.config.fanout == Fanout::Sns
}

fn sns(core: &Core) -> Result<&aws_sdk_sns::Client> {
    core.clients.sns.as_ref().ok_or_else(|| {
        Error::config("SNS fan-out is off on this connection (add fanout=sns to the URL)")
            .with_backend(BACKEND)
    })
}

/// Hex digits of the hash that keeps a shortened group queue name unique.
const NAME_HASH: usize = 16;

/// The name of the queue `group` of `destination` reads: `destination`
/// itself without a group, else `<destination>__<group>` (before `.fifo`).
/// A name longer than SQS's 80 characters (with the `.fifo` that
/// `fifo=true` adds) is cut and ends in `-` and 16 hex digits of a hash of
/// the whole, so it stays unique. Group names SQS would refuse and names
/// that could mean two things (`__` in either part) are `Config` errors.
pub(crate) fn group_queue(destination: &str, group: Option<&str>, fifo: bool) -> Result<String> {
    let Some(group) = group else {
        return Ok(destination.to_owned());
    };
    let refuse = |why: String| {
        Err(Error::config(why)
            .with_backend(BACKEND)
            .with_destination(destination))
    };
    let valid = !group.is_empty()
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return refuse(format!(
            "`{group}` is not a valid group name with fanout=sns: its queue is named after it, \
             so 1 or more of A-Z, a-z, 0-9, - and _"
        ));
    }
    if group.contains(GROUP_SEPARATOR) || destination.contains(GROUP_SEPARATOR) {
        return refuse(format!(
            "with fanout=sns a group's queue is <destination>{GROUP_SEPARATOR}<group>, so neither \
             may contain `{GROUP_SEPARATOR}` (destination `{destination}`, group `{group}`)"
        ));
    }
    let (base, suffix) = match destination.strip_suffix(FIFO_SUFFIX) {
        Some(base) => (base, FIFO_SUFFIX),
        None => (destination, ""),
    };
    let whole = format!("{base}{GROUP_SEPARATOR}{group}");
    let room = MAX_QUEUE_NAME
        - if fifo || !suffix.is_empty() {
            FIFO_SUFFIX.len()
        } else {
            0
        };
    if whole.len() <= room {
        return Ok(format!("{whole}{suffix}"));
    }
    // ASCII only (checked above and by the destination's own rules), so
    // any cut is at a character boundary; a bad destination fails later.
    let keep = room - 1 - NAME_HASH;
    let Some(head) = whole.get(..keep) else {
        return refuse(format!("`{destination}` is not a valid SQS name"));
    };
    let hash = codec::stable_hash(&format!("{whole}{suffix}"));
    Ok(format!("{head}-{}{suffix}", &hash[..NAME_HASH]))
}

/// The topic of `destination`: cached, else created (`CreateTopic` is
/// idempotent) or, with `create_queues=false`, found by the ARN of the
/// destination's queue (same partition, region and account).
pub(crate) async fn topic(core: &Core, destination: &str) -> Result<Arc<TopicInfo>> {
    core.topic_slot(destination)
        .get_or_try_init(|| load_topic(core, destination))
        .await
        .cloned()
}

async fn load_topic(core: &Core, destination: &str) -> Result<Arc<TopicInfo>> {
    let name = topology::sqs_name(core, destination)?;
    let fifo = name.ends_with(FIFO_SUFFIX);
    let client = sns(core)?;
    let arn = if core.config.create_queues {
        let mut create = client.create_topic().name(&name);
        if fifo {
            create = create.attributes("FifoTopic", "true");
        }
        tracing::debug!(topic = %name, "creating SNS topic");
        let out = {
            let _request = core.permit(Budget::Other).await;
            create
                .send()
                .await
                .map_err(|e| error::sns(e, "create topic", destination))?
        };
        out.topic_arn().map(str::to_owned)
    } else {
        let queue = topology::resolve(core, destination).await?;
        let arn = topic_arn(&queue_attributes(core, &queue).await?.0, &name);
        let _request = core.permit(Budget::Other).await;
        client
            .get_topic_attributes()
            .topic_arn(&arn)
            .send()
            .await
            .map_err(|e| {
                let e = error::sns(e, "resolve topic", destination);
                if e.kind() == ErrorKind::NotFound {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("SNS topic `{name}` does not exist and create_queues is off"),
                    )
                    .with_backend(BACKEND)
                    .with_operation("resolve topic")
                    .with_destination(destination)
                } else {
                    e
                }
            })?;
        Some(arn)
    };
    let arn = arn.ok_or_else(|| {
        Error::new(
            ErrorKind::Broker,
            format!("SNS returned no ARN for topic `{name}`"),
        )
        .with_backend(BACKEND)
        .with_destination(destination)
    })?;
    Ok(Arc::new(TopicInfo {
        logical: destination.to_owned(),
        arn,
        fifo,
    }))
}

/// The ARN of topic `name` beside the queue of ARN `queue_arn`
/// (`arn:PARTITION:sqs:REGION:ACCOUNT:QUEUE`).
fn topic_arn(queue_arn: &str, name: &str) -> String {
    let parts: Vec<&str> = queue_arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, _, region, account, _] => {
            format!("arn:{partition}:sns:{region}:{account}:{name}")
        }
        _ => format!("arn:aws:sns:::{name}"),
    }
}

/// The queue's ARN and its access policy, if it has one.
async fn queue_attributes(core: &Core, queue: &QueueInfo) -> Result<(String, Option<String>)> {
    let _request = core.permit(Budget::Other).await;
    let out = core
        .clients
        .ops
        .get_queue_attributes()
        .queue_url(&queue.url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .map_err(|e| error::sdk(e, "read queue attributes", &queue.logical))?;
    let attrs = out.attributes();
    let get = |n: QueueAttributeName| attrs.and_then(|a| a.get(&n)).cloned();
    let arn = get(QueueAttributeName::QueueArn).ok_or_else(|| {
        Error::new(
            ErrorKind::Broker,
            format!("SQS returned no ARN for queue `{}`", queue.logical),
        )
        .with_backend(BACKEND)
        .with_destination(queue.logical.clone())
    })?;
    Ok((
        arn,
        get(QueueAttributeName::Policy).filter(|p| !p.is_empty()),
    ))
}

/// The queue of `group` of `destination` (the default queue without a
/// group), subscribed to the destination's topic: created if missing, its
/// policy allowing the topic to send, subscribed with raw delivery. Once
/// per connection and queue; again after the queue or topic was found gone.
/// With `create_queues=false` nothing is created or changed: the topic,
/// the queue and the subscription must exist.
pub(crate) async fn subscribe(
    core: &Core,
    destination: &str,
    group: Option<&str>,
) -> Result<Arc<QueueInfo>> {
    let queue = group_queue(destination, group, core.config.fifo)?;
    core.subscription_slot(&queue, destination)
        .get_or_try_init(|| async {
            if core.config.create_queues {
                make_subscription(core, destination, &queue).await
            } else {
                // Checks they exist.
                topic(core, destination).await?;
                topology::resolve(core, &queue).await.map(drop)
            }
        })
        .await?;
    topology::resolve(core, &queue).await
}

async fn make_subscription(core: &Core, destination: &str, queue: &str) -> Result<()> {
    let topic = topic(core, destination).await?;
    let info = topology::resolve(core, queue).await?;
    if info.fifo != topic.fifo {
        return Err(Error::config(format!(
            "queue `{queue}` and the topic of `{destination}` must both be FIFO or both not"
        ))
        .with_backend(BACKEND)
        .with_destination(destination));
    }
    let (queue_arn, policy) = match queue_attributes(core, &info).await {
        Ok(attributes) => attributes,
        Err(e) => {
            // A queue found gone (an emulator restarted) is made again next time.
            core.gone(&info, &e);
            return Err(e);
        }
    };
    if let Some(policy) = allow_topic(policy.as_deref(), &queue_arn, &topic.arn) {
        let _request = core.permit(Budget::Other).await;
        core.clients
            .ops
            .set_queue_attributes()
            .queue_url(&info.url)
            .attributes(QueueAttributeName::Policy, policy)
            .send()
            .await
            .map_err(|e| error::sdk(e, "set queue policy", queue))?;
    }
    tracing::debug!(%queue, topic = %topic.arn, "subscribing SQS queue to SNS topic");
    let _request = core.permit(Budget::Other).await;
    let subscribed = sns(core)?
        .subscribe()
        .topic_arn(&topic.arn)
        .protocol("sqs")
        .endpoint(&queue_arn)
        .attributes("RawMessageDelivery", "true")
        .return_subscription_arn(true)
        .send()
        .await;
    match subscribed.map_err(|e| error::sns(e, "subscribe", destination)) {
        Ok(_) => Ok(()),
        Err(e) => {
            // A topic found gone is made again next time.
            if e.kind() == ErrorKind::NotFound {
                core.forget_topic(&topic);
            }
            Err(e)
        }
    }
}

/// The queue policy `existing` plus a statement letting `topic_arn` send to
/// `queue_arn`, or `None` when it has that statement already. A policy that
/// is not JSON is replaced (SQS would not have accepted it).
pub(crate) fn allow_topic(
    existing: Option<&str>,
    queue_arn: &str,
    topic_arn: &str,
) -> Option<String> {
    let statement = serde_json::json!({
        "Sid": format!("MqFanout{}", codec::stable_hash(topic_arn)),
        "Effect": "Allow",
        "Principal": { "Service": "sns.amazonaws.com" },
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } },
    });
    let mut policy = existing
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({ "Version": "2012-10-17" }));
    let statements = match policy.get_mut("Statement") {
        Some(serde_json::Value::Array(list)) => list,
        Some(single) => {
            let one = single.take();
            *single = serde_json::Value::Array(vec![one]);
            single.as_array_mut()?
        }
        None => {
            policy["Statement"] = serde_json::Value::Array(Vec::new());
            policy["Statement"].as_array_mut()?
        }
    };
    let present = statements.iter().any(|s| {
        s.get("Effect").and_then(|e| e.as_str()) == Some("Allow")
            && s.pointer("/Condition/ArnEquals/aws:SourceArn")
                .and_then(|a| a.as_str())
                == Some(topic_arn)
    });
    if present {
        return None;
    }
    statements.push(statement);
    Some(policy.to_string())
}

/// Where a replayed dead letter sent to `destination` goes instead of the
/// topic: the queue it was dead-lettered from (its group's or the default
/// one). `None` for any other message.
pub(crate) fn replay_queue(
    destination: &str,
    message: &Message,
    fifo: bool,
) -> Option<Result<String>> {
    let h = message.headers();
    h.get(headers::REPLAYED)?;
    if h.get(headers::ORIGINAL_SOURCE)? != destination {
        return None;
    }
    Some(group_queue(
        destination,
        h.get(headers::ORIGINAL_GROUP),
        fifo,
    ))
}

/// The topic of `destination`, its default queue subscribed (so
/// point-to-point loses nothing sent before the first consumer).
pub(crate) async fn publish_target(core: &Core, destination: &str) -> Result<Arc<TopicInfo>> {
    subscribe(core, destination, None).await?;
    topic(core, destination).await
}

/// The largest message (SQS wire size: body and attributes) a publish to
/// `destination` takes: SNS's 256 KiB, or less as configured.
pub(crate) fn max_size(core: &Core) -> usize {
    SNS_MAX_MESSAGE_SIZE.min(core.config.max_message_size)
}

fn attributes(wire: &Wire) -> Result<HashMap<String, MessageAttributeValue>> {
    wire.attributes
        .iter()
        .map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map(|v| (name.clone(), v))
                .map_err(|e| {
                    Error::config("invalid message attribute")
                        .with_backend(BACKEND)
                        .with_source(e)
                })
        })
        .collect()
}

/// Publishes `wires` to the topic of `destination` in one call and returns
/// each one's outcome. A topic found gone is forgotten, made again (with
/// its default subscription) and the call retried once.
pub(crate) async fn publish(core: &Core, destination: &str, wires: &[Wire]) -> Vec<Result<()>> {
    let mut retried = false;
    loop {
        let topic = match publish_target(core, destination).await {
            Ok(topic) => topic,
            Err(e) => return error::replicate_each(&e, wires.len()),
        };
        match call(core, &topic, wires).await {
            Ok(results) => return results,
            Err(e) if !retried && e.kind() == ErrorKind::NotFound => {
                core.forget_topic(&topic);
                if !core.config.create_queues {
                    return error::replicate_each(&e, wires.len());
                }
                retried = true;
            }
            Err(e) => return error::replicate_each(&e, wires.len()),
        }
    }
}

/// One `Publish` (a single message) or `PublishBatch` call.
async fn call(core: &Core, topic: &TopicInfo, wires: &[Wire]) -> Result<Vec<Result<()>>> {
    let client = sns(core)?;
    let destination = topic.logical.as_str();
    let _request = core.permit(Budget::Send).await;
    if let [wire] = wires {
        let mut req = client
            .publish()
            .topic_arn(&topic.arn)
            .message(&wire.body)
            .set_message_attributes(Some(attributes(wire)?));
        if let Some((group, dedup)) = &wire.fifo {
            req = req.message_group_id(group).message_deduplication_id(dedup);
        }
        req.send()
            .await
            .map_err(|e| error::sns(e, "publish", destination))?;
        return Ok(vec![Ok(())]);
    }
    let mut entries = Vec::with_capacity(wires.len());
    for (i, wire) in wires.iter().enumerate() {
        let mut entry = PublishBatchRequestEntry::builder()
            .id(i.to_string())
            .message(&wire.body)
            .set_message_attributes(Some(attributes(wire)?));
        if let Some((group, dedup)) = &wire.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entries.push(entry.build().map_err(error::invalid_entry)?);
    }
    let sent = client
        .publish_batch()
        .topic_arn(&topic.arn)
        .set_publish_batch_request_entries(Some(entries))
        .send()
        .await;
    error::published(sent, wires.len(), destination)
}

/// Deletes the topic of `destination` (a private reply queue's, which a
/// responder's publish made); a failure is logged, nothing more.
pub(crate) async fn delete_topic(core: &Core, destination: &str) {
    let Ok(client) = sns(core) else { return };
    // Made (idempotently) if no reply was ever published, to learn its ARN.
    let topic = match topic(core, destination).await {
        Ok(topic) => topic,
        Err(e) => {
            tracing::debug!(%destination, error = %e, "could not find a reply topic to delete");
            return;
        }
    };
    core.forget_topic(&topic);
    let _request = core.permit(Budget::Other).await;
    if let Err(e) = client.delete_topic().topic_arn(&topic.arn).send().await {
        tracing::debug!(%destination, error = %error::sns(e, "delete topic", destination), "could not delete a reply topic");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn group_queue_names() {
        assert_eq!(
            group_queue("orders", None, false).expect("default"),
            "orders"
        );
        assert_eq!(
            group_queue("orders", Some("billing"), false).expect("group"),
            "orders__billing"
        );
        assert_eq!(
            group_queue("orders.fifo", Some("billing"), false).expect("fifo"),
            "orders__billing.fifo"
        );
        assert_eq!(
            group_queue("a-b_c", Some("g-1_x"), false).expect("dashes"),
            "a-b_c__g-1_x"
        );
        for (dest, group) in [
            ("orders", ""),
            ("orders", "bill ing"),
            ("orders", "billing.eu"),
            ("orders", "a__b"),
            ("or__ders", "billing"),
        ] {
            let err = group_queue(dest, Some(group), false).expect_err(group);
            assert_eq!(err.kind(), ErrorKind::Config, "{dest} {group}: {err}");
        }
        // Exactly 80 with the suffix: as is.
        let dest = format!("{}.fifo", "d".repeat(72));
        let name = group_queue(&dest, Some("g"), true).expect("80");
        assert_eq!(name, format!("{}__g.fifo", "d".repeat(72)));
        let plain = "d".repeat(72);
        assert_eq!(
            group_queue(&plain, Some("abcdef"), false).expect("80"),
            format!("{plain}__abcdef")
        );
        // Longer: cut, with a hash of the whole name, unique and valid.
        let long = [
            group_queue(&plain, Some("abcdef"), true).expect("85 with .fifo"),
            group_queue(&plain, Some("abcdefg"), false).expect("81"),
            group_queue(&plain, Some("abcdeh"), true).expect("other group"),
            group_queue(&"e".repeat(79), Some("g"), false).expect("other destination"),
            group_queue(&format!("{}.fifo", "d".repeat(75)), Some("g"), false).expect("fifo"),
        ];
        for name in &long {
            assert!(name.len() <= 80, "{name}");
            crate::topology::validate_name(name).expect(name);
        }
        // fifo=true appends `.fifo` later (topology::sqs_name): room kept for it.
        crate::topology::validate_name(&format!("{}.fifo", long[0])).expect("with .fifo");
        assert!(long[4].ends_with(".fifo"), "{}", long[4]);
        assert!(!long[1].ends_with(".fifo"));
        let distinct: HashSet<&String> = long.iter().collect();
        assert_eq!(distinct.len(), long.len(), "{long:?}");
        assert_eq!(
            group_queue(&plain, Some("abcdefg"), false).expect("again"),
            long[1],
            "the same in every process"
        );
    }

    #[test]
    fn topic_arn_from_queue_arn() {
        assert_eq!(
            topic_arn("arn:aws:sqs:eu-west-1:123456789012:orders", "orders"),
            "arn:aws:sns:eu-west-1:123456789012:orders"
        );
        assert_eq!(
            topic_arn("arn:aws-cn:sqs:cn-north-1:1:q.fifo", "q.fifo"),
            "arn:aws-cn:sns:cn-north-1:1:q.fifo"
        );
    }

    #[test]
    fn policy_gains_one_statement_per_topic() {
        let q = "arn:aws:sqs:us-east-1:1:orders__billing";
        let t = "arn:aws:sns:us-east-1:1:orders";
        let fresh = allow_topic(None, q, t).expect("new policy");
        let v: serde_json::Value = serde_json::from_str(&fresh).expect("json");
        assert_eq!(v["Statement"][0]["Resource"], q);
        assert_eq!(v["Statement"][0]["Action"], "sqs:SendMessage");
        assert_eq!(
            v["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            t
        );
        assert_eq!(allow_topic(Some(&fresh), q, t), None, "already allowed");
        // Someone else's statement (a single object) is kept.
        let theirs = r#"{"Version":"2012-10-17","Statement":{"Sid":"Theirs","Effect":"Allow","Principal":"*","Action":"sqs:ReceiveMessage","Resource":"x"}}"#;
        let merged = allow_topic(Some(theirs), q, t).expect("merged");
        let v: serde_json::Value = serde_json::from_str(&merged).expect("json");
        let list = v["Statement"].as_array().expect("array");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["Sid"], "Theirs");
        let other = "arn:aws:sns:us-east-1:1:other";
        let both = allow_topic(Some(&merged), q, other).expect("second topic");
        let v: serde_json::Value = serde_json::from_str(&both).expect("json");
        assert_eq!(v["Statement"].as_array().expect("array").len(), 3);
    }

    #[test]
    fn only_replays_to_their_source_skip_the_topic() {
        let plain = Message::new("x");
        assert!(replay_queue("orders", &plain, false).is_none());
        let dead =
            mq_core::Received::new("orders", Message::new("x"), 1).with_group(Some("billing"));
        let copy = mq_core::backend::republish::dead_letter_copy(&dead, "boom");
        assert!(
            replay_queue("orders", &copy, false).is_none(),
            "a dead letter is no replay"
        );
        let dlq = mq_core::Received::new("orders-dlq", copy, 1);
        let replay = mq_core::backend::republish::replay_copy(&dlq);
        assert_eq!(
            replay_queue("orders", &replay, false).map(|r| r.expect("name")),
            Some("orders__billing".to_owned())
        );
        assert!(
            replay_queue("elsewhere", &replay, false).is_none(),
            "a replay to another destination is published"
        );
        let p2p = mq_core::Received::new("orders", Message::new("x"), 1);
        let dlq = mq_core::Received::new(
            "orders-dlq",
            mq_core::backend::republish::dead_letter_copy(&p2p, "boom"),
            1,
        );
        assert_eq!(
            replay_queue(
                "orders",
                &mq_core::backend::republish::replay_copy(&dlq),
                false
            )
            .map(|r| r.expect("name")),
            Some("orders".to_owned())
        );
    }
}
