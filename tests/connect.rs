//! `mq::connect`: URL dispatch, strict options and redaction.

use mq::{ErrorKind, Message, Producer};

#[tokio::test]
async fn unknown_scheme_lists_supported_schemes_and_the_feature_to_enable() {
    let err = mq::connect("nats://user:hunter2@localhost")
        .await
        .expect_err("no nats backend");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(text.contains("no backend for URL scheme `nats`"), "{text}");
    assert!(text.contains("memory://"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");

    // A backend whose feature is off in this build names the feature.
    let disabled = [
        (
            "rabbit",
            "amqp://user:hunter2@127.0.0.1:5672/%2f",
            cfg!(feature = "rabbit"),
        ),
        (
            "kafka",
            "kafka://user:hunter2@127.0.0.1:9092",
            cfg!(feature = "kafka"),
        ),
        (
            "sqs",
            "sqs+http://key:hunter2@127.0.0.1:4566",
            cfg!(feature = "sqs"),
        ),
    ];
    for (feature, url, _) in disabled.iter().filter(|(_, _, on)| !on) {
        let err = mq::connect(url).await.expect_err("feature off");
        let text = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Config, "{text}");
        assert!(
            text.contains(&format!("enable the `{feature}` feature of mq")),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[tokio::test]
async fn malformed_urls_and_unknown_options_are_config_errors() {
    for (url, expect) in [
        ("", "invalid URL"),
        ("not a url", "invalid URL"),
        (
            "memory://x?capacity=many",
            "`capacity` has invalid value `many`",
        ),
        (
            "memory://x?prefetch=1",
            "unknown memory URL option `prefetch`",
        ),
        ("memory://x?capacity=0", "at least 1"),
    ] {
        let err = mq::connect(url).await.expect_err(url);
        assert_eq!(err.kind(), ErrorKind::Config, "{url}");
        assert!(err.to_string().contains(expect), "{url}: {err}");
    }
}

#[tokio::test]
async fn credentials_never_show_in_errors_or_debug() {
    let err = mq::connect("memory://admin:s3cr3t-pw@broker?token=t0ps3cret")
        .await
        .expect_err("memory takes no credentials");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("s3cr3t-pw") && !shown.contains("t0ps3cret"),
        "{shown}"
    );
    let err = mq::connect("amqp://admin:s3cr3t-pw@[::1:5672/?token=t0ps3cret")
        .await
        .expect_err("malformed");
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("s3cr3t-pw") && !shown.contains("t0ps3cret"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_same_memory_name_is_the_same_broker() {
    let name = format!("memory://shared-{}", uuid::Uuid::new_v4().simple());
    let a = mq::connect(&name).await.expect("connect a");
    let b = mq::connect(&name).await.expect("connect b");
    a.producer()
        .await
        .expect("producer")
        .send("q", Message::new("hi"))
        .await
        .expect("send");
    let mut c = b.consumer("q").await.expect("consumer");
    let d = mq::Consumer::receive(&mut c).await.expect("receive");
    assert_eq!(d.payload().as_ref(), b"hi");
    d.ack().await.expect("ack");
    assert!(format!("{a:?}").contains("MemoryBroker"), "{a:?}");
    let err = mq::connect(&format!("{name}?capacity=3"))
        .await
        .expect_err("reopen with other config");
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn the_backend_list_agrees_with_each_driver() {
    for known in mq::BACKENDS {
        if let Some(driver) = known.driver {
            assert_eq!(driver.feature, known.feature);
            for scheme in known.schemes {
                assert!(
                    driver.schemes.contains(scheme),
                    "{scheme} listed for {} but not served by its driver",
                    known.feature
                );
            }
            assert!(mq::registry().schemes().any(|s| s == known.schemes[0]));
        }
    }
    let drivers: Vec<&str> = mq::drivers().map(|d| d.name).collect();
    assert_eq!(drivers[0], "memory");
    assert_eq!(
        drivers.len(),
        1 + mq::BACKENDS.iter().filter(|b| b.driver.is_some()).count()
    );
}
