//! Brokers in Docker containers (testcontainers), for machines with a Docker
//! engine and no `MQ_TEST_<BACKEND>_URL`. Machines without Docker start the
//! brokers natively with `scripts/brokers.sh` instead.
//!
//! The image of each broker comes from `MQ_TEST_<BACKEND>_IMAGE`
//! (`RABBIT`, `KAFKA`, `SQS`, `REDIS`):
//! - unset: the official image through its testcontainers module
//!   (`rabbitmq`, `apache/kafka-native`, `softwaremill/elasticmq`; Redis: `redis`);
//! - the official Kafka or ElasticMQ repository with another tag
//!   (`apache/kafka-native:3.9.0`): that tag, same module;
//! - anything else (an image built by `scripts/containers.sh` such as
//!   `mq-test/rabbitmq:local`, or any RabbitMQ or Redis image): a
//!   `GenericImage` on the broker's port, ready at the log line that
//!   script's Dockerfiles document, published on a fixed host port so that
//!   `docker restart` keeps the address (the restart scenario's command).
//!
//! Published ports bind the engine's default address (`scripts/containers.sh`
//! starts its engine with `--ip 127.0.0.1`). Which image each backend ran is
//! printed on stderr, past the test harness's capture.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use testcontainers_modules::testcontainers::core::{ContainerPort, WaitFor};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{
    ContainerAsync, ContainerRequest, GenericImage, Image, ImageExt,
};

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
    /// Shell command that restarts the container and returns once the broker
    /// is ready again (`None` when the address would change or the broker
    /// keeps nothing worth a restart scenario; the scenario then skips).
    pub restart: Option<String>,
    /// Kept alive for the suite; the container stops when this drops.
    _container: Box<dyn std::any::Any + Send>,
}

/// How a backend's container is run.
struct Spec {
    /// `MQ_TEST_<env>_IMAGE`.
    env: &'static str,
    /// Repository of the official image the module starts.
    official: &'static str,
    /// Port the broker listens on in a `scripts/containers.sh` image.
    port: u16,
    /// Line the broker logs once it serves (stdout or stderr).
    ready: &'static str,
    /// Whether an official image with another tag still runs through its
    /// module (Kafka: the module sets the advertised listener; ElasticMQ:
    /// another port). RabbitMQ and Redis images of any origin listen on the
    /// same port and log the same line, so they run as generic images: the
    /// RabbitMQ module waits for a line that names its 4 management plugins,
    /// which other tags do not log.
    module_for_other_tags: bool,
    /// Whether the restart scenario can use a restarted container (Kafka's
    /// tansu keeps topics in memory only: natively the restart scenario runs
    /// on a second, durable tansu, which has no container here).
    restartable: bool,
}

fn spec(backend: &str) -> Result<Spec, String> {
    Ok(match backend {
        "rabbitmq" => Spec {
            env: "RABBIT",
            official: "rabbitmq",
            port: 5672,
            ready: "Server startup complete",
            module_for_other_tags: false,
            restartable: true,
        },
        "kafka" => Spec {
            env: "KAFKA",
            official: "apache/kafka-native",
            port: 9092,
            ready: "ready in",
            module_for_other_tags: true,
            restartable: false,
        },
        "sqs" => Spec {
            env: "SQS",
            official: "softwaremill/elasticmq",
            port: 4566,
            ready: "Running on",
            module_for_other_tags: true,
            restartable: true,
        },
        "redis" => Spec {
            env: "REDIS",
            official: "redis",
            port: 6379,
            ready: "Ready to accept connections",
            module_for_other_tags: false,
            restartable: true,
        },
        other => return Err(format!("no container image for backend {other}")),
    })
}

/// Prints past the test harness's output capture.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `name:tag` split at the tag's colon (not a registry port's).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Starts the broker for `backend` ("rabbitmq", "kafka", "sqs", "redis") in
/// Docker, with the image `MQ_TEST_<BACKEND>_IMAGE` names (see the module
/// docs), and prints which image it used.
pub async fn start_broker(backend: &str) -> Result<Broker, String> {
    let spec = spec(backend)?;
    let var = format!("MQ_TEST_{}_IMAGE", spec.env);
    let chosen = std::env::var(&var).ok().filter(|v| !v.trim().is_empty());
    let (broker, image, source) = match chosen {
        Some(image) if split_image(&image).0 != spec.official || !spec.module_for_other_tags => {
            let broker = start_built(backend, &spec, &image).await?;
            (broker, image, var)
        }
        Some(image) => {
            let tag = split_image(&image).1.to_owned();
            let (broker, image) = start_official(backend, Some(tag)).await?;
            (broker, image, var)
        }
        None => {
            let (broker, image) = start_official(backend, None).await?;
            (broker, image, format!("{var} unset: the official image"))
        }
    };
    let restart = match &broker.restart {
        Some(_) => "restart scenario: docker restart".to_owned(),
        None if spec.restartable => {
            "restart scenario skipped: the official image's host port changes on restart".to_owned()
        }
        None => {
            "restart scenario skipped: the in-memory broker loses its topics on restart".to_owned()
        }
    };
    announce(&format!(
        "containers {backend}: image {image} ({source}), {restart}"
    ));
    Ok(broker)
}

/// A free TCP port on 127.0.0.1 to publish a container port on (fixed, so a
/// restarted container keeps it; Docker picks a new one for ephemeral
/// mappings).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// The shell command that restarts container `id` and waits until it logs
/// `ready` again (at most 120 s).
fn restart_command(id: &str, ready: &str) -> String {
    format!(
        "t=$(date +%s); docker restart -t 10 {id} >/dev/null || exit 1; i=0; \
         until docker logs --since \"$t\" {id} 2>&1 | grep -qF '{ready}'; do \
         i=$((i+1)); if [ $i -ge 240 ]; then \
         echo 'container {id} did not log \"{ready}\" within 120 s of its restart' >&2; exit 1; fi; \
         sleep 0.5; done"
    )
}

/// An image built by `scripts/containers.sh`.
async fn start_built(backend: &str, spec: &Spec, image: &str) -> Result<Broker, String> {
    let (name, tag) = split_image(image);
    let host_port = free_port()?;
    let port = ContainerPort::Tcp(spec.port);
    let mut request = GenericImage::new(name, tag)
        .with_exposed_port(port)
        .with_wait_for(WaitFor::message_on_either_std(spec.ready))
        .with_mapped_port(host_port, port)
        .with_startup_timeout(Duration::from_secs(180))
        // docker-init as PID 1 passes SIGTERM on, so `docker restart` stops
        // the broker at once instead of after its timeout.
        .with_host_config_modifier(|host| host.init = Some(true));
    if backend == "kafka" {
        // Clients connect to the address the broker advertises.
        request = request.with_env_var(
            "ADVERTISED_LISTENER_URL",
            format!("tcp://127.0.0.1:{host_port}"),
        );
    }
    let container = request
        .start()
        .await
        .map_err(|e| format!("cannot start container {image}: {e}"))?;
    let restart = spec
        .restartable
        .then(|| restart_command(container.id(), spec.ready));
    Ok(Broker {
        url: url_for(
            backend,
            &format!("127.0.0.1:{host_port}"),
            TANSU_TEST_OPTIONS,
        ),
        restart,
        _container: Box::new(container),
    })
}

async fn start<I: Image + 'static>(
    request: ContainerRequest<I>,
    port: u16,
) -> Result<(ContainerAsync<I>, String), String> {
    let container = request
        .start()
        .await
        .map_err(|e| format!("cannot start container: {e}"))?;
    let host_port = container
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| format!("container port {port}: {e}"))?;
    Ok((container, format!("127.0.0.1:{host_port}")))
}

/// An official image through its testcontainers module; `tag` overrides the
/// module's tag. Returns the broker and the image's full name.
async fn start_official(backend: &str, tag: Option<String>) -> Result<(Broker, String), String> {
    macro_rules! run {
        ($image:expr, $port:expr) => {{
            let image = $image;
            let tag = tag.unwrap_or_else(|| image.tag().to_owned());
            let name = format!("{}:{tag}", image.name());
            let (container, addr) = start(image.with_tag(tag), $port).await?;
            let broker = Broker {
                url: url_for(backend, &addr, KAFKA_TEST_OPTIONS),
                restart: None,
                _container: Box::new(container),
            };
            Ok((broker, name))
        }};
    }
    match backend {
        "rabbitmq" => run!(testcontainers_modules::rabbitmq::RabbitMq::default(), 5672),
        "kafka" => run!(
            testcontainers_modules::kafka::apache::Kafka::default(),
            9092
        ),
        "sqs" => run!(
            testcontainers_modules::elasticmq::ElasticMq::default(),
            9324
        ),
        "redis" => run!(
            GenericImage::new("redis", "7")
                .with_exposed_port(ContainerPort::Tcp(6379))
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections")),
            6379
        ),
        other => Err(format!("no container image for backend {other}")),
    }
}

/// The URL the backend connects to at `addr` (`kafka_options`: the query of
/// a Kafka URL).
fn url_for(backend: &str, addr: &str, kafka_options: &str) -> String {
    match backend {
        "rabbitmq" => format!("amqp://guest:guest@{addr}/%2f"),
        "kafka" => format!("kafka://{addr}?{kafka_options}"),
        "sqs" => format!("sqs+http://test:test@{addr}?region=us-east-1"),
        _ => format!("redis://{addr}"),
    }
}

/// Options the Kafka conformance run needs on any broker: topics created on
/// demand, short group timeouts.
pub const KAFKA_TEST_OPTIONS: &str = "auto_create_topics=true";

/// The Kafka options for tansu (`mq-test/kafka:local`), as
/// `scripts/brokers.sh` gives them for its in-memory tansu: tansu creates no
/// topics by itself and its group joins are slow with librdkafka's defaults.
pub const TANSU_TEST_OPTIONS: &str = "auto_create_topics=true&partitions=4&session_timeout=6s\
    &heartbeat=500ms&send_timeout=30s&rdkafka.batch.num.messages=1&persistent=false";
