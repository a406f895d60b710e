//! Brokers in Docker containers (testcontainers), for machines with a Docker
//! engine and no `MQ_TEST_<BACKEND>_URL`. Machines without Docker start the
//! brokers natively with `scripts/brokers.sh` instead.

use std::process::{Command, Stdio};

use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, Image};

/// Whether a Docker engine answers (the client alone is not enough).
pub fn docker_available() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running container and the URL the backend connects to.
pub struct Broker {
    pub url: String,
    /// Kept alive for the suite; the container stops when this drops.
    _container: Box<dyn std::any::Any + Send>,
}

async fn start<I: Image + 'static>(
    image: I,
    port: u16,
) -> Result<(ContainerAsync<I>, String), String> {
    let container = image
        .start()
        .await
        .map_err(|e| format!("cannot start container: {e}"))?;
    let host_port = container
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| format!("container port {port}: {e}"))?;
    Ok((container, format!("127.0.0.1:{host_port}")))
}

/// Starts the broker for `backend` ("rabbitmq", "kafka", "sqs") in Docker.
pub async fn start_broker(backend: &str) -> Result<Broker, String> {
    match backend {
        "rabbitmq" => {
            let (c, addr) =
                start(testcontainers_modules::rabbitmq::RabbitMq::default(), 5672).await?;
            Ok(Broker {
                url: format!("amqp://guest:guest@{addr}/%2f"),
                _container: Box::new(c),
            })
        }
        "kafka" => {
            let (c, addr) = start(
                testcontainers_modules::kafka::apache::Kafka::default(),
                9092,
            )
            .await?;
            Ok(Broker {
                url: format!("kafka://{addr}?{}", KAFKA_TEST_OPTIONS),
                _container: Box::new(c),
            })
        }
        "sqs" => {
            let (c, addr) = start(
                testcontainers_modules::elasticmq::ElasticMq::default(),
                9324,
            )
            .await?;
            Ok(Broker {
                url: format!("sqs+http://test:test@{addr}?region=us-east-1"),
                _container: Box::new(c),
            })
        }
        other => Err(format!("no container image for backend {other}")),
    }
}

/// Options the Kafka conformance run needs on any broker: topics created on
/// demand, short group timeouts.
pub const KAFKA_TEST_OPTIONS: &str = "auto_create_topics=true";
