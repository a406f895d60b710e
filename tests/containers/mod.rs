//! Brokers in Docker containers (testcontainers), for machines with a Docker
//! engine and no `MQ_TEST_<BACKEND>_URL`. Machines without Docker start the
//! brokers natively with `scripts/brokers.sh` instead.
//!
//! What a backend's container is (official image, port, readiness line,
//! whether a restart keeps its data, its URL) comes from its driver
//! (`Driver::test_image`, in the backend crate): this file knows no backend
//! except for choosing a testcontainers module for an official image.
//! The image of each broker comes from `MQ_TEST_<KEY>_IMAGE`
//! (`RABBIT`, `KAFKA`, `SQS`):
//! - unset: the official image, through its testcontainers module where
//!   there is one (`rabbitmq`, `apache/kafka-native`,
//!   `softwaremill/elasticmq`), else as a generic image;
//! - the official Kafka or ElasticMQ repository with another tag
//!   (`apache/kafka-native:3.9.0`): that tag, same module;
//! - anything else (an image built by `scripts/containers.sh` such as
//!   `mq-test/rabbitmq:local`, or any RabbitMQ image): a
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

use mq::backend::TestImage;
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

/// Whether an official image with another tag still runs through its
/// testcontainers module (Kafka: the module sets the advertised listener;
/// ElasticMQ: another port). RabbitMQ images of any origin listen on the
/// same port and log the same line, so they run as generic images: the
/// RabbitMQ module waits for a line that names its 4 management plugins,
/// which other tags do not log.
fn module_for_other_tags(backend: &str) -> bool {
    matches!(backend, "kafka" | "sqs")
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

/// Starts `driver`'s broker in Docker, with the image
/// `MQ_TEST_<KEY>_IMAGE` names (see the module docs), and prints which
/// image it used.
pub async fn start_broker(driver: &mq::backend::Driver) -> Result<Broker, String> {
    let backend = driver.name;
    let spec = driver
        .test_image
        .ok_or_else(|| format!("backend {backend} has no test image (Driver::test_image)"))?;
    let var = format!("MQ_TEST_{}_IMAGE", driver.test_key);
    let chosen = std::env::var(&var).ok().filter(|v| !v.trim().is_empty());
    let (broker, image, source) = match chosen {
        Some(image)
            if split_image(&image).0 != spec.official || !module_for_other_tags(backend) =>
        {
            let broker = start_built(&spec, &image).await?;
            (broker, image, var)
        }
        Some(image) => {
            let tag = split_image(&image).1.to_owned();
            let (broker, image) = start_official(backend, &spec, Some(tag)).await?;
            (broker, image, var)
        }
        None => {
            let (broker, image) = start_official(backend, &spec, None).await?;
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

/// An image built by `scripts/containers.sh` (or any image run generically).
async fn start_built(spec: &TestImage, image: &str) -> Result<Broker, String> {
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
    if let Some(env) = spec.advertise_env {
        // Clients connect to the address the broker advertises.
        request = request.with_env_var(env, format!("tcp://127.0.0.1:{host_port}"));
    }
    let container = request
        .start()
        .await
        .map_err(|e| format!("cannot start container {image}: {e}"))?;
    let restart = spec
        .restartable
        .then(|| restart_command(container.id(), spec.ready));
    Ok(Broker {
        url: (spec.url)(&format!("127.0.0.1:{host_port}")),
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

/// An official image through its testcontainers module where there is one
/// (else as a generic image); `tag` overrides the module's tag. Returns the
/// broker and the image's full name.
async fn start_official(
    backend: &str,
    spec: &TestImage,
    tag: Option<String>,
) -> Result<(Broker, String), String> {
    macro_rules! run {
        ($image:expr, $port:expr) => {{
            let image = $image;
            let tag = tag.unwrap_or_else(|| image.tag().to_owned());
            let name = format!("{}:{tag}", image.name());
            let (container, addr) = start(image.with_tag(tag), $port).await?;
            let broker = Broker {
                url: (spec.url)(&addr),
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
        _ => run!(
            GenericImage::new(spec.official, "latest")
                .with_exposed_port(ContainerPort::Tcp(spec.port))
                .with_wait_for(WaitFor::message_on_either_std(spec.ready)),
            spec.port
        ),
    }
}
