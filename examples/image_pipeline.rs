//! Image pipeline: three workers chained by queues, doing real image work
//! with bounded concurrency and backpressure.
//!
//! ```sh
//! cargo run --example image_pipeline                    # memory://, no broker needed
//! cargo run --example image_pipeline --features rabbit -- amqp://guest:guest@127.0.0.1:5672/%2f
//! cargo run --example image_pipeline --features kafka -- 'kafka://127.0.0.1:9092?auto_create_topics=true'
//! cargo run --example image_pipeline --features sqs -- 'sqs+http://test:test@127.0.0.1:4566?region=us-east-1'
//! ```
//!
//! The first argument is the broker URL (default `memory://image-pipeline`).
//! Every run uses fresh queue names.
//!
//! ```text
//! producer --PNG--> upload --PNG--> resize --PNG--> thumbnail --> results
//!                   (validate)      (fit 200x200)   (fit 64x64)
//! ```
//!
//! What it shows:
//!
//! - **Binary payloads**: 20 gradient images of 256 to 512 pixels a side are
//!   drawn in code, encoded as PNG (each well under the broker's message
//!   size limit, which the example checks against the backend's
//!   capabilities before sending) and travel through the queues as bytes,
//!   with their name and size in headers. One more upload is not a PNG at
//!   all: the upload stage rejects it with a permanent error, so it goes to
//!   the dead-letter queue instead of being retried.
//! - **One worker per stage**, each on its own queue, each forwarding its
//!   output to the next stage's queue with a producer.
//! - **Concurrency limits**: each worker runs up to 4 handlers
//!   (`Worker::concurrency`), and the two CPU-heavy stages share one
//!   `ConcurrencyLimitLayer` of 2, so at most 2 images are being decoded,
//!   resized and encoded at once in the whole process, whatever each worker
//!   allows. The image work itself runs on `tokio::task::spawn_blocking`, so
//!   it never stalls the async runtime.
//! - **Backpressure**: each consumer's prefetch equals its worker's
//!   concurrency, so a slow stage holds at most that many messages and
//!   the rest wait in the broker, not in this process's memory.
//!
//! At the end it checks that all 20 images came out of the last stage
//! exactly once, with the expected dimensions and colours, that the bad
//! upload was dead-lettered, and that the limits held; it prints a summary
//! and exits with status 1 otherwise.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Cursor;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use mq::middleware::{ConcurrencyLimitLayer, RetryLayer, RetryPolicy, TimeoutLayer};
use mq::{
    headers, BoxHandler, CancellationToken, Consumer, DynProducer, HandlerError, HandlerResult,
    Layer, Message, Producer, ProducerExt, Received, Worker, WorkerReport,
};

/// Images to generate.
const IMAGES: u32 = 20;
/// The resize stage fits images into this square.
const WEB_SIZE: u32 = 200;
/// The thumbnail stage fits images into this square.
const THUMB_SIZE: u32 = 64;
/// Handlers per worker, and each consumer's prefetch.
const PER_STAGE: usize = 4;
/// Images decoded/resized/encoded at once across both CPU-heavy stages.
const CPU_LIMIT: usize = 2;
/// Our own bound on an image message, far below every broker's limit.
const MAX_IMAGE_BYTES: usize = 200 * 1024;
/// How long to wait for every image to come out of the pipeline.
const DEADLINE: Duration = Duration::from_secs(120);

const PNG: &str = "image/png";

/// The queues of one run.
#[derive(Clone)]
struct Queues {
    upload: String,
    resize: String,
    thumbnail: String,
}

/// What came out of the last stage, per image name.
#[derive(Debug, Clone)]
struct Output {
    original: (u32, u32),
    web: (u32, u32),
    thumb: (u32, u32),
    /// The web-size image's centre pixel.
    web_centre: [u8; 3],
    thumb_bytes: usize,
}

/// Shared state: results, and gauges that record how many handlers ran at once.
#[derive(Default)]
struct Stages {
    results: Mutex<BTreeMap<String, Vec<Output>>>,
    rejected: AtomicUsize,
    resize_held: Gauge,
    thumbnail_held: Gauge,
    cpu_busy: Gauge,
}

/// A count of things in progress and the highest it reached.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self)
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The outermost layer of the resize and thumbnail workers: counts the
/// messages a worker holds (running, or waiting for the shared CPU limit).
struct Track {
    state: Arc<Stages>,
    stage: Stage,
}

#[derive(Clone, Copy)]
enum Stage {
    Resize,
    Thumbnail,
}

impl Layer for Track {
    fn layer(&self, inner: BoxHandler) -> BoxHandler {
        let (state, stage) = (self.state.clone(), self.stage);
        Arc::new(move |msg: Received| {
            let (inner, state) = (inner.clone(), state.clone());
            async move {
                let gauge = match stage {
                    Stage::Resize => &state.resize_held,
                    Stage::Thumbnail => &state.thumbnail_held,
                };
                let _held = gauge.enter();
                inner.call(msg).await
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `width` x `height` gradient: red grows to the right, green downwards,
/// blue is fixed per image. A little deterministic noise (the lowest bit of
/// green in one pixel of eight) makes it compress more like a photo than
/// like a drawing, so the PNGs are tens of kilobytes, not a few.
fn gradient(width: u32, height: u32, blue: u8) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let h = (x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ u32::from(blue))
            .wrapping_mul(0x27D4_EB2F);
        let noise = u8::from((h >> 17) & 7 == 0);
        Rgb([
            (x * 255 / (width - 1)) as u8,
            (y * 255 / (height - 1)) as u8 ^ noise,
            blue,
        ])
    })
}

/// The size of image `i`: 256 to 512 pixels a side, no two alike.
fn dimensions(i: u32) -> (u32, u32) {
    (256 + (i * 53) % 257, 256 + (i * 97 + 31) % 257)
}

fn blue(i: u32) -> u8 {
    (i * 12) as u8
}

fn encode_png(image: &DynamicImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// `(width, height)` scaled to fit a `max` x `max` square, keeping the
/// aspect ratio: what `DynamicImage::resize` and `thumbnail` produce.
fn fit(width: u32, height: u32, max: u32) -> (u32, u32) {
    let ratio = f64::min(
        f64::from(max) / f64::from(width),
        f64::from(max) / f64::from(height),
    );
    let scale = |side: u32| ((f64::from(side) * ratio).round() as u32).max(1);
    (scale(width), scale(height))
}

/// A header that must be there and parse as a number.
fn dimension_header(msg: &Received, name: &str) -> Result<u32, HandlerError> {
    msg.headers()
        .get(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            HandlerError::permanent(format!("message {} has no `{name}` header", msg.id()))
        })
}

/// Runs CPU-heavy `work` off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HandlerError> + Send + 'static,
) -> Result<T, HandlerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(HandlerError::transient)?
}

/// Stage 1: check that the upload is a PNG of a sane size (reading only its
/// header) and pass it on. A broken upload is a permanent error.
async fn upload_stage(
    msg: Received,
    producer: DynProducer,
    queues: Queues,
    state: Arc<Stages>,
) -> HandlerResult {
    let bytes = msg.payload().clone();
    let reader = image::ImageReader::with_format(Cursor::new(&bytes[..]), ImageFormat::Png);
    let (width, height) = match reader.into_dimensions() {
        Ok(d) => d,
        Err(e) => {
            state.rejected.fetch_add(1, Ordering::SeqCst);
            println!("upload:    {} rejected: not a PNG ({e})", msg.id());
            return Err(HandlerError::permanent(format!("not a PNG image: {e}")));
        }
    };
    if width > 4096 || height > 4096 {
        state.rejected.fetch_add(1, Ordering::SeqCst);
        return Err(HandlerError::permanent(format!(
            "{width}x{height} is larger than 4096x4096"
        )));
    }
    let next = Message::new(bytes)
        .with_id(msg.id())
        .with_content_type(PNG)
        .with_header("width", width.to_string())
        .with_header("height", height.to_string());
    producer.send(&queues.resize, next).await?;
    Ok(())
}

/// Stage 2: decode, fit into `WEB_SIZE`, encode, pass on.
async fn resize_stage(
    msg: Received,
    producer: DynProducer,
    queues: Queues,
    state: Arc<Stages>,
) -> HandlerResult {
    let (width, height) = (
        dimension_header(&msg, "width")?,
        dimension_header(&msg, "height")?,
    );
    let bytes = msg.payload().clone();
    let cpu = state.clone();
    let (web, png) = blocking(move || {
        let _busy = cpu.cpu_busy.enter();
        let image = image::load_from_memory_with_format(&bytes, ImageFormat::Png)
            .map_err(HandlerError::permanent)?;
        if (image.width(), image.height()) != (width, height) {
            return Err(HandlerError::permanent(format!(
                "headers say {width}x{height}, the image is {}x{}",
                image.width(),
                image.height()
            )));
        }
        let web = image.resize(WEB_SIZE, WEB_SIZE, FilterType::Triangle);
        let png = encode_png(&web).map_err(HandlerError::permanent)?;
        Ok(((web.width(), web.height()), png))
    })
    .await?;
    println!(
        "resize:    {} {width}x{height} -> {}x{} ({} bytes)",
        msg.id(),
        web.0,
        web.1,
        png.len()
    );
    let next = Message::new(png)
        .with_id(msg.id())
        .with_content_type(PNG)
        .with_header("original-width", width.to_string())
        .with_header("original-height", height.to_string());
    producer.send(&queues.thumbnail, next).await?;
    Ok(())
}

/// Stage 3: decode, make the thumbnail, store the result.
async fn thumbnail_stage(msg: Received, state: Arc<Stages>) -> HandlerResult {
    let original = (
        dimension_header(&msg, "original-width")?,
        dimension_header(&msg, "original-height")?,
    );
    let bytes = msg.payload().clone();
    let cpu = state.clone();
    let output = blocking(move || {
        let _busy = cpu.cpu_busy.enter();
        let web = image::load_from_memory_with_format(&bytes, ImageFormat::Png)
            .map_err(HandlerError::permanent)?;
        let centre = web.to_rgb8().get_pixel(web.width() / 2, web.height() / 2).0;
        let thumb = web.thumbnail(THUMB_SIZE, THUMB_SIZE);
        let thumb_png = encode_png(&thumb).map_err(HandlerError::permanent)?;
        // What a real service would upload to object storage; we decode it
        // again to prove it is a valid PNG of the size we claim.
        let check = image::load_from_memory_with_format(&thumb_png, ImageFormat::Png)
            .map_err(HandlerError::permanent)?;
        Ok(Output {
            original,
            web: (web.width(), web.height()),
            thumb: (check.width(), check.height()),
            web_centre: centre,
            thumb_bytes: thumb_png.len(),
        })
    })
    .await?;
    println!(
        "thumbnail: {} {}x{} -> {}x{} ({} bytes)",
        msg.id(),
        output.web.0,
        output.web.1,
        output.thumb.0,
        output.thumb.1,
        output.thumb_bytes
    );
    lock(&state.results)
        .entry(msg.id().to_owned())
        .or_default()
        .push(output);
    Ok(())
}

/// Runs `worker` until `shutdown` is cancelled; if the worker fails (its
/// consumer broke), cancels `shutdown` so that the other stages stop too.
async fn run_worker<C: Consumer + 'static>(
    worker: Worker<C>,
    shutdown: CancellationToken,
) -> mq::Result<WorkerReport> {
    let result = worker.run(shutdown.clone()).await;
    if result.is_err() {
        shutdown.cancel();
    }
    result
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://image-pipeline".to_owned());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image_pipeline FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let client = mq::connect(url).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = &run_id[..12];
    let queues = Queues {
        upload: format!("images-upload-{run_id}"),
        resize: format!("images-resize-{run_id}"),
        thumbnail: format!("images-thumbnail-{run_id}"),
    };
    println!(
        "connected to {} ({} backend); queues `{}` -> `{}` -> `{}`",
        mq::url::redact_str(url),
        client.backend_name(),
        queues.upload,
        queues.resize,
        queues.thumbnail
    );

    // 1. Draw and encode the test images.
    let limit = client
        .capabilities()
        .max_message_size
        .unwrap_or(usize::MAX)
        .min(MAX_IMAGE_BYTES);
    let mut uploads = Vec::new();
    for i in 0..IMAGES {
        let (w, h) = dimensions(i);
        let png = encode_png(&DynamicImage::ImageRgb8(gradient(w, h, blue(i))))?;
        // Leave room for the headers, and for base64: a backend whose wire
        // format is text (SQS) sends binary payloads a third larger.
        if png.len() * 4 / 3 + 1024 > limit {
            return Err(format!(
                "image {i} is {} bytes as PNG; this broker takes at most {limit} per message",
                png.len()
            )
            .into());
        }
        let name = format!("img-{i:02}");
        uploads.push(
            Message::new(png)
                .with_id(name.clone())
                .with_content_type(PNG)
                .with_header("file-name", format!("{name}.png")),
        );
    }
    let total_bytes: usize = uploads.iter().map(|m| m.payload().len()).sum();
    println!(
        "generated {IMAGES} PNG images, {total_bytes} bytes in all (largest {} bytes; limit {limit})",
        uploads.iter().map(|m| m.payload().len()).max().unwrap_or(0)
    );
    uploads.push(
        Message::new(&b"GIF89a... this upload is not a PNG at all"[..])
            .with_id("img-broken")
            .with_content_type(PNG)
            .with_header("file-name", "broken.png"),
    );

    // 2. Upload: many sends in flight at once.
    let producer = client.producer().await?;
    let mut pipeline = producer.pipeline(8);
    for upload in uploads {
        pipeline.send(&queues.upload, upload).await;
    }
    let sent = pipeline.finish().await.into_result()?;
    println!("uploaded {sent} files to `{}`", queues.upload);

    // 3. One worker per stage. The retry policy covers passing hiccups
    //    (a failed send to the next stage); image errors are permanent.
    let state = Arc::new(Stages::default());
    let cpu_limit = ConcurrencyLimitLayer::new(CPU_LIMIT);
    let retry =
        RetryLayer::new(RetryPolicy::exponential(Duration::from_millis(100)).max_attempts(5));
    let timeout = TimeoutLayer::new(Duration::from_secs(30));

    let upload_worker = {
        let consumer = client.consumer(&queues.upload).prefetch(PER_STAGE).await?;
        let (producer, queues, state) = (producer.clone(), queues.clone(), state.clone());
        let handler =
            move |msg: Received| upload_stage(msg, producer.clone(), queues.clone(), state.clone());
        Worker::new(consumer, handler)
            .layer(retry.clone())
            .layer(timeout)
            .concurrency(PER_STAGE)
    };
    let resize_worker = {
        let consumer = client.consumer(&queues.resize).prefetch(PER_STAGE).await?;
        let handler = {
            let (producer, queues, state) = (producer.clone(), queues.clone(), state.clone());
            move |msg: Received| resize_stage(msg, producer.clone(), queues.clone(), state.clone())
        };
        Worker::new(consumer, handler)
            .layer(Track {
                state: state.clone(),
                stage: Stage::Resize,
            })
            .layer(retry.clone())
            .layer(cpu_limit.clone()) // the same limit as the thumbnail stage
            .layer(timeout)
            .concurrency(PER_STAGE)
    };
    let thumbnail_worker = {
        let handler = {
            let state = state.clone();
            move |msg: Received| thumbnail_stage(msg, state.clone())
        };
        let consumer = client
            .consumer(&queues.thumbnail)
            .prefetch(PER_STAGE)
            .await?;
        Worker::new(consumer, handler)
            .layer(Track {
                state: state.clone(),
                stage: Stage::Thumbnail,
            })
            .layer(retry.clone())
            .layer(cpu_limit.clone())
            .layer(timeout)
            .concurrency(PER_STAGE)
    };

    // 4. Run until all images are out (or the deadline passes).
    let shutdown = CancellationToken::new();
    let watch = {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            let deadline = Instant::now() + DEADLINE;
            let done = loop {
                let done = lock(&state.results).len() == IMAGES as usize
                    && state.rejected.load(Ordering::SeqCst) >= 1;
                // (cancelled: a worker failed; its error is reported below)
                if done || shutdown.is_cancelled() || Instant::now() >= deadline {
                    break done;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            shutdown.cancel();
            done
        }
    };
    let (upload_report, resize_report, thumbnail_report, all_done) = tokio::join!(
        run_worker(upload_worker, shutdown.clone()),
        run_worker(resize_worker, shutdown.clone()),
        run_worker(thumbnail_worker, shutdown.clone()),
        watch
    );
    let reports = [
        ("upload", upload_report?),
        ("resize", resize_report?),
        ("thumbnail", thumbnail_report?),
    ];
    let elapsed = started.elapsed();

    // 5. The rejected upload is in the upload stage's dead-letter queue.
    let dlq = client.dead_letter_destination(&queues.upload);
    let mut dead = Vec::new();
    let mut dlq_consumer = client.consumer(&dlq).await?;
    let mut wait = Duration::from_secs(30); // long enough for a Kafka group join
    loop {
        let batch = dlq_consumer.receive_batch(10, wait).await?;
        if batch.is_empty() {
            break;
        }
        for delivery in batch {
            let reason = delivery
                .headers()
                .get(headers::DEAD_LETTER_REASON)
                .unwrap_or("<no reason header>")
                .to_owned();
            println!(
                "{dlq}: {} {} = {reason:?}",
                delivery.id(),
                headers::DEAD_LETTER_REASON
            );
            dead.push((delivery.id().to_owned(), reason));
            delivery.ack().await?;
        }
        wait = Duration::from_millis(300);
    }
    dlq_consumer.close().await?;
    producer.close().await?;
    client.close().await?;

    // 6. Summary and checks.
    let results = lock(&state.results).clone();
    println!();
    println!("summary");
    println!(
        "  images out:                 {} of {IMAGES}",
        results.len()
    );
    println!("  dead-lettered uploads:      {}", dead.len());
    println!(
        "  peak held by resize:        {} (prefetch and concurrency {PER_STAGE})",
        state.resize_held.peak()
    );
    println!(
        "  peak held by thumbnail:     {} (prefetch and concurrency {PER_STAGE})",
        state.thumbnail_held.peak()
    );
    println!(
        "  peak images on the CPU:     {} (shared limit {CPU_LIMIT})",
        state.cpu_busy.peak()
    );
    for (stage, report) in &reports {
        println!("  {stage:<10} worker: {report:?}");
    }
    println!("  time:                       {elapsed:.2?}");

    let mut problems = Vec::new();
    if !all_done {
        problems.push(format!(
            "only {} of {IMAGES} images came out within {DEADLINE:?}",
            results.len()
        ));
    }
    for i in 0..IMAGES {
        let name = format!("img-{i:02}");
        let outputs = results.get(&name).map_or(&[][..], Vec::as_slice);
        let [out] = outputs else {
            problems.push(format!(
                "{name} came out {} times, expected once",
                outputs.len()
            ));
            continue;
        };
        let (w, h) = dimensions(i);
        let expected_web = fit(w, h, WEB_SIZE);
        let expected_thumb = fit(expected_web.0, expected_web.1, THUMB_SIZE);
        if out.original != (w, h) || out.web != expected_web || out.thumb != expected_thumb {
            problems.push(format!(
                "{name}: sizes {:?} -> {:?} -> {:?}, expected {:?} -> {expected_web:?} -> {expected_thumb:?}",
                out.original,
                out.web,
                out.thumb,
                (w, h)
            ));
        }
        // The centre of a gradient is mid-red, mid-green, and this image's blue.
        let [r, g, b] = out.web_centre;
        let near = |v: u8, want: u8| v.abs_diff(want) <= 8;
        if !(near(r, 128) && near(g, 128) && near(b, blue(i))) {
            problems.push(format!(
                "{name}: centre pixel {:?}, expected about [128, 128, {}]",
                out.web_centre,
                blue(i)
            ));
        }
    }
    match dead.as_slice() {
        [(id, reason)] if id == "img-broken" && reason.contains("not a PNG") => {}
        other => problems.push(format!(
            "expected img-broken alone in `{dlq}`, found {other:?}"
        )),
    }
    if state.cpu_busy.peak() > CPU_LIMIT {
        problems.push(format!(
            "{} images were processed at once, the limit is {CPU_LIMIT}",
            state.cpu_busy.peak()
        ));
    }
    for (stage, gauge) in [
        ("resize", &state.resize_held),
        ("thumbnail", &state.thumbnail_held),
    ] {
        if gauge.peak() > PER_STAGE {
            problems.push(format!(
                "the {stage} stage held {} images at once, its concurrency is {PER_STAGE}",
                gauge.peak()
            ));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Err(format!("{} expectation(s) not met", problems.len()).into());
    }
    println!(
        "\nimage_pipeline OK: {IMAGES} images resized and thumbnailed exactly once, \
         1 bad upload dead-lettered, at most {} on the CPU at once, in {elapsed:.2?}",
        state.cpu_busy.peak()
    );
    Ok(())
}
