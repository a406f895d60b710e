//! Ordering, publish/subscribe and request/reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::support::*;
use super::{Ctx, Outcome, Verdict};
use crate::delivery::Received;
use crate::error::ErrorKind;
use crate::message::Message;
use crate::producer::Producer;
use crate::rpc::{reply, Requester};
use crate::worker::{CancellationToken, Worker};
use crate::{check, check_eq};

/// Scenario 8: Messages with the same key arrive in the order they were sent.
pub async fn order_per_key(ctx: Ctx) -> Outcome {
    if !ctx.caps().ordering_key {
        return Err(Verdict::Skip("backend does not order by key".into()));
    }
    const KEYS: usize = 3;
    const EACH: usize = 40;
    let dest = ctx.unique("ordered");
    let producer = ctx.client().producer().await?;
    let sends = (0..KEYS).map(|k| {
        let (producer, dest) = (producer.clone(), dest.clone());
        async move {
            // One key's sends are sequential: order is defined by confirmation.
            for i in 0..EACH {
                let m = Message::new(format!("{k}:{i}")).with_key(format!("key-{k}"));
                producer.send(&dest, m).await?;
            }
            Ok::<(), crate::Error>(())
        }
    });
    for r in futures_util::future::join_all(sends).await {
        r?;
    }
    let mut consumer = ctx.client().consumer(&dest).await?;
    let (got, duplicates) = collect_acked(&mut consumer, KEYS * EACH).await?;
    check_eq!(duplicates, 0, "no redeliveries without failures");
    let mut next = HashMap::new();
    for r in &got {
        let text = r.text()?;
        let (k, i) = text
            .split_once(':')
            .ok_or_else(|| Verdict::Fail(format!("unexpected payload {text:?}")))?;
        let i: usize = i
            .parse()
            .map_err(|_| Verdict::Fail(format!("bad payload {text:?}")))?;
        let expected = next.entry(k.to_owned()).or_insert(0usize);
        check_eq!(i, *expected, "key {k}: message order");
        *expected += 1;
    }
    Ok(())
}

/// Scenario 9: Two groups on one destination each receive every message; members of
/// one group share them.
pub async fn groups_each_get_every_message(ctx: Ctx) -> Outcome {
    if !ctx.caps().pub_sub {
        return Err(Verdict::Skip(
            "backend has no publish/subscribe groups".into(),
        ));
    }
    const N: usize = 30;
    let dest = ctx.unique("fanout");
    let mut billing = ctx.client().consumer(&dest).group("billing").await?;
    let audit = vec![
        ctx.client().consumer(&dest).group("audit").await?,
        ctx.client().consumer(&dest).group("audit").await?,
    ];
    let producer = ctx.client().producer().await?;
    send_all(&*producer, &dest, numbered("e", N)).await?;

    let (got, _) = collect_acked(&mut billing, N).await?;
    check_eq!(got.len(), N, "billing group receives every message");
    check!(
        got.iter().all(|r| r.group() == Some("billing")),
        "deliveries report their group"
    );

    let seen = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let mut tasks = Vec::new();
    for mut c in audit {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while seen.lock().len() < N {
                for d in c.receive_batch(10, Duration::from_millis(300)).await? {
                    seen.lock().insert(d.text()?.to_owned());
                    d.ack().await?;
                }
            }
            Ok::<(), crate::Error>(())
        }));
    }
    let done = eventually(ARRIVAL, || seen.lock().len() >= N).await;
    for t in tasks {
        if done {
            t.await
                .map_err(|e| Verdict::Fail(format!("audit task: {e}")))??;
        } else {
            t.abort();
        }
    }
    check!(done, "audit group received {} of {N}", seen.lock().len());
    Ok(())
}

/// Scenario 18: Request/reply: replies match their requests, concurrent requests get
/// their own replies, a missing reply times out, a late reply resolves nothing.
pub async fn request_reply(ctx: Ctx) -> Outcome {
    let service = ctx.unique("rpc");
    let responder_producer = ctx.client().producer().await?;
    let handler = move |m: Received| {
        let producer = responder_producer.clone();
        async move {
            let text = m.text()?.to_owned();
            if text.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            reply(&*producer, &m, Message::new(text.to_uppercase())).await?;
            Ok(())
        }
    };
    let consumer = ctx.client().consumer(&service).prefetch(32).await?;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(consumer, handler)
            .concurrency(16)
            .run(stop.clone()),
    );
    let requester = Arc::new(Requester::new(ctx.client()).await?);

    let one = requester
        .request(&service, Message::new("hello"), ARRIVAL)
        .await?;
    check_eq!(one.text()?, "HELLO", "reply payload");

    let concurrent = (0..20).map(|i| {
        let (requester, service) = (requester.clone(), service.clone());
        async move {
            let r = requester
                .request(&service, Message::new(format!("req-{i}")), ARRIVAL)
                .await?;
            Ok::<(usize, String), crate::Error>((i, r.text()?.to_owned()))
        }
    });
    for r in futures_util::future::join_all(concurrent).await {
        let (i, text) = r?;
        check_eq!(
            text,
            format!("REQ-{i}"),
            "concurrent request {i} got its own reply"
        );
    }

    let late = requester
        .request(&service, Message::new("slow-1"), Duration::from_millis(300))
        .await;
    check!(
        matches!(&late, Err(e) if e.kind() == ErrorKind::Timeout),
        "a reply slower than the timeout must time out, got {late:?}"
    );
    let next = requester
        .request(&service, Message::new("after"), ARRIVAL)
        .await?;
    check_eq!(
        next.text()?,
        "AFTER",
        "the late reply must not resolve a later request"
    );
    // Let the late reply arrive while nothing waits for it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = requester
        .request(&service, Message::new("again"), ARRIVAL)
        .await?;
    check_eq!(again.text()?, "AGAIN", "after the late reply arrived");

    let nobody = ctx.unique("nobody");
    let unanswered = requester
        .request(&nobody, Message::new("anyone?"), Duration::from_millis(500))
        .await;
    check!(
        matches!(&unanswered, Err(e) if e.kind() == ErrorKind::Timeout),
        "no responder must time out, got {unanswered:?}"
    );
    stop.cancel();
    worker
        .await
        .map_err(|e| Verdict::Fail(format!("responder: {e}")))??;
    Ok(())
}
