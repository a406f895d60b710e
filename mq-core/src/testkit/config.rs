//! Limits, URLs and secrets.

use std::time::Duration;

use url::Url;

use super::support::*;
use super::{Ctx, Outcome, Verdict};
use crate::error::ErrorKind;
use crate::message::Message;
use crate::producer::Producer;
use crate::{check, check_eq};

/// Scenario 12: A message exactly at the backend's limit is delivered intact; one
/// byte more fails with `TooLarge` before anything is sent.
pub async fn size_limit_is_exact(ctx: Ctx) -> Outcome {
    let Some(limit) = ctx.caps().max_message_size else {
        return Err(Verdict::Skip(
            "backend reports no message size limit".into(),
        ));
    };
    let dest = ctx.unique("big");
    let producer = ctx.client().producer().await?;
    let overhead = Message::new(Vec::new()).with_id("at-limit").encoded_len();
    let body: Vec<u8> = (0..limit - overhead)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let at_limit = Message::new(body.clone()).with_id("at-limit");
    check_eq!(
        at_limit.encoded_len(),
        limit,
        "test message is exactly at the limit"
    );
    producer.send(&dest, at_limit).await?;

    let mut over_body = body;
    over_body.push(b'!');
    let over = Message::new(over_body).with_id("over-lim");
    match producer.send(&dest, over).await {
        Err(e) if e.kind() == ErrorKind::TooLarge => {
            check!(
                e.to_string().contains(&limit.to_string()),
                "the error names the limit: {e}"
            );
        }
        other => {
            return Err(Verdict::Fail(format!(
                "one byte over the limit: expected TooLarge, got {other:?}"
            )))
        }
    }
    let mut consumer = ctx.client().consumer(&dest).await?;
    let d = receive_one(&mut consumer, "message at the limit").await?;
    check_eq!(d.id(), "at-limit", "the message at the limit arrives");
    check_eq!(d.payload().len(), limit - overhead, "payload intact");
    d.ack().await?;
    expect_nothing(
        &mut consumer,
        Duration::from_secs(1),
        "the oversized message",
    )
    .await
}

/// Scenario 13: Invalid URLs and unknown options are clear errors.
pub async fn bad_urls_are_clear_errors(ctx: Ctx) -> Outcome {
    let base = Url::parse(&ctx.target().url)
        .map_err(|e| Verdict::Fail(format!("target URL does not parse: {e}")))?;
    let registry = &ctx.target().registry;

    let mut unknown = base.clone();
    unknown
        .query_pairs_mut()
        .append_pair("definitely_not_an_option", "1");
    let err = registry
        .connect(unknown.as_str())
        .await
        .err()
        .ok_or_else(|| Verdict::Fail("an unknown option was accepted".into()))?;
    check_eq!(err.kind(), ErrorKind::Config, "unknown option: {err}");
    check!(
        err.to_string().contains("definitely_not_an_option"),
        "the error names the unknown option: {err}"
    );

    let scheme = base.scheme();
    // In-process brokers: `memory://` and `kafka+mock://` name the default
    // broker (valid), and have no address that could be unreachable.
    let in_process = matches!(scheme, "memory" | "kafka+mock");
    for bad in [
        format!("{scheme}://"),
        format!("{scheme}://host:notaport"),
        format!("{scheme}:// spaces in host"),
    ] {
        if in_process && bad == format!("{scheme}://") {
            continue; // the default in-process broker: valid
        }
        match registry.connect(&bad).await {
            Err(e) => check_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}"),
            Ok(_) => return Err(Verdict::Fail(format!("{bad:?} was accepted"))),
        }
    }

    if base.has_host() && !in_process {
        // Nothing listens on port 1: a connection error, not a hang.
        let mut dead = base.clone();
        let _ = dead.set_host(Some("127.0.0.1"));
        let _ = dead.set_port(Some(1));
        let attempt = async {
            let client = registry.connect(dead.as_str()).await?;
            let producer = client.producer().await?;
            producer.send(&ctx.unique("dead"), Message::new("x")).await
        };
        match tokio::time::timeout(Duration::from_secs(60), attempt).await {
            Err(_) => return Err(Verdict::Fail("an unreachable broker hung for 60s".into())),
            Ok(Ok(())) => return Err(Verdict::Fail("sent to a broker that is not there".into())),
            Ok(Err(e)) => check!(
                matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                "unreachable broker: expected a connection or timeout error, got {e}"
            ),
        }
    }
    Ok(())
}

/// Scenario 21: No password, secret key or token shows in `Debug`/`Display` of
/// clients, producers, consumers, URLs or errors.
pub async fn no_secrets_in_debug_or_errors(ctx: Ctx) -> Outcome {
    const PASSWORD: &str = "pw-S3cr3t-9f2c";
    const TOKEN: &str = "tok-S3cr3t-77ab";
    let leaks = |what: &str, text: &str| -> Outcome {
        check!(
            !text.contains(PASSWORD) && !text.contains(TOKEN),
            "{what} shows a secret: {text}"
        );
        Ok(())
    };
    let base = Url::parse(&ctx.target().url)
        .map_err(|e| Verdict::Fail(format!("target URL does not parse: {e}")))?;
    let registry = &ctx.target().registry;

    // Wrong credentials and a secret-looking unknown option: errors only.
    let mut wrong = base.clone();
    if wrong.has_host() && wrong.scheme() != "memory" {
        let _ = wrong.set_username("mq-test-user");
        let _ = wrong.set_password(Some(PASSWORD));
    }
    wrong.query_pairs_mut().append_pair("token", TOKEN);
    if let Err(e) = registry.connect(wrong.as_str()).await {
        leaks("connect error", &format!("{e} {e:?}"))?;
    }

    // The real connection: everything a user might print.
    let client = ctx.client();
    leaks("client", &format!("{client:?}"))?;
    let producer = client.producer().await?;
    leaks("producer", &format!("{producer:?}"))?;
    let consumer = client.consumer(ctx.unique("secrets")).await?;
    leaks("consumer", &format!("{consumer:?}"))?;
    let target = format!("{:?}", ctx.target());
    let password = base.password().unwrap_or("");
    if !password.is_empty() {
        check!(
            !target.contains(&format!(":{password}@")),
            "target debug shows the password: {target}"
        );
        check!(
            !format!("{client:?}").contains(&format!(":{password}@")),
            "client debug shows the URL password"
        );
    }
    Ok(())
}
