//! Testing your application with mq (TESTING.md): an integration test to copy.
//!
//! The application below takes orders from a queue, ships the valid ones and
//! dead-letters the invalid ones. Its test runs the same checks twice:
//! - against `memory://`, always (no broker, no Docker);
//! - against RabbitMQ in Docker, started by testcontainers, when a Docker
//!   engine answers; otherwise it prints why it skipped and passes.
//!
//! In your own crate, with the application in `src/` instead of here:
//!
//! ```toml
//! [dependencies]
//! mq = { version = "0.1", features = ["rabbit"] }
//! serde = { version = "1", features = ["derive"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//!
//! [dev-dependencies]
//! testcontainers-modules = { version = "0.15", features = ["rabbitmq"] }
//! uuid = { version = "1", features = ["v4"] }
//! ```
//!
//! testcontainers 0.27 (under testcontainers-modules 0.15) needs Docker
//! Engine 29 or newer (API 1.52); see TESTING.md for older engines.
//! `MQ_TEST_RABBIT_IMAGE=name:tag` runs another RabbitMQ image (a registry
//! mirror, a pinned version, or the one `scripts/containers.sh` builds).

use std::collections::BTreeSet;
use std::time::Duration;

use mq::{
    CancellationToken, Client, Consumer, DynConsumer, HandlerError, Message, Producer, Received,
    Worker,
};
use serde::{Deserialize, Serialize};
use testcontainers_modules::rabbitmq::RabbitMq;
use testcontainers_modules::testcontainers::core::WaitFor;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerRequest, ImageExt};

// ------------------------------------------------------------ the application

#[derive(Serialize, Deserialize)]
struct Order {
    id: u32,
    quantity: u32,
}

/// Puts an order on the queue.
async fn place_order(client: &Client, queue: &str, order: &Order) -> mq::Result<()> {
    client
        .producer()
        .await?
        .send(queue, Message::json(order)?)
        .await
}

/// The worker that ships orders; an order of nothing is dead-lettered.
fn order_worker(
    consumer: DynConsumer,
    shipped: tokio::sync::mpsc::UnboundedSender<u32>,
) -> Worker<DynConsumer> {
    Worker::json(consumer, move |order: Order, _msg: Received| {
        let shipped = shipped.clone();
        async move {
            if order.quantity == 0 {
                return Err(HandlerError::permanent("quantity must be at least 1"));
            }
            let _ = shipped.send(order.id);
            Ok(())
        }
    })
}

// ------------------------------------------------------------------- the test

/// The application's behaviour on the broker at `url`.
async fn check_orders(url: &str) {
    let client = mq::connect(url).await.expect("connect");
    // A queue of its own per run: a broker kept between runs has nothing old.
    let queue = format!("orders-{}", uuid::Uuid::new_v4().simple());
    let (tx, mut shipped) = tokio::sync::mpsc::unbounded_channel();
    let worker = order_worker(client.consumer(&queue).await.expect("consumer"), tx);
    let (stats, stop) = (worker.stats(), CancellationToken::new());
    let running = tokio::spawn(worker.run(stop.clone()));

    for (id, quantity) in [(1, 2), (2, 0), (3, 5)] {
        place_order(&client, &queue, &Order { id, quantity })
            .await
            .expect("place order");
    }

    let settled = stats.wait_until(|r| r.acked + r.dead_lettered == 3);
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("all three orders settled within 30 s");
    stop.cancel();
    let report = running.await.expect("worker task").expect("worker");
    assert_eq!((report.acked, report.dead_lettered), (2, 1), "{report:?}");

    let mut ids = BTreeSet::new();
    while let Ok(id) = shipped.try_recv() {
        ids.insert(id);
    }
    assert_eq!(ids, BTreeSet::from([1, 3]), "shipped orders");

    // The invalid order waits in the dead-letter queue, with the reason.
    let dead_letters = client.dead_letter_destination(&queue);
    let mut dlq = client.consumer(&dead_letters).await.expect("dlq consumer");
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.receive())
        .await
        .expect("a dead letter within 10 s")
        .expect("receive");
    let order: Order = dead.json().expect("an order");
    assert_eq!(order.id, 2);
    assert_eq!(
        dead.dead_letter_reason(),
        Some("quantity must be at least 1")
    );
    dead.ack().await.expect("ack");
    client.close().await.expect("close");
}

#[tokio::test]
async fn orders_on_memory() {
    let name = uuid::Uuid::new_v4().simple();
    check_orders(&format!("memory://orders-{name}")).await;
}

#[tokio::test]
async fn orders_on_rabbitmq_in_docker() {
    // (This repository also builds its tests without RabbitMQ support; in
    // your crate the feature is simply on and this check can go.)
    let ready = if cfg!(feature = "rabbit") {
        docker_answers()
    } else {
        Err("built without the `rabbit` feature".to_owned())
    };
    if let Err(why) = ready {
        // Printed past the test harness's capture, so a skip is never silent.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "orders_on_rabbitmq_in_docker: skipped: {why}"
        );
        return;
    }
    let image: ContainerRequest<RabbitMq> = match std::env::var("MQ_TEST_RABBIT_IMAGE") {
        Ok(image) => {
            let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
            // The module waits for the log line of its default image, which
            // names its 4 management plugins; any RabbitMQ logs this part.
            let ready = WaitFor::message_on_stdout("Server startup complete");
            RabbitMq::default()
                .with_name(name)
                .with_tag(tag)
                .with_ready_conditions(vec![ready])
        }
        Err(_) => RabbitMq::default().into(),
    };
    let rabbit = image.start().await.expect("start the RabbitMQ container");
    let port = rabbit.get_host_port_ipv4(5672).await.expect("AMQP port");
    check_orders(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).await;
    // The container is removed when `rabbit` drops.
}

/// Whether a Docker engine answers `docker info` (testcontainers would fail
/// on every call without one).
fn docker_answers() -> Result<(), String> {
    match std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err("no Docker engine answers `docker info`".to_owned()),
        Err(e) => Err(format!("the docker command is not available ({e})")),
    }
}
