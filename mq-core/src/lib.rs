//! Core of `mq`: the message model, the `Producer`/`Consumer` traits,
//! settlement, errors, URL handling, capabilities, middleware, the worker
//! runtime and the in-memory broker. Broker backends (`mq-rabbit`,
//! `mq-kafka`, `mq-sqs`) implement these traits; applications normally use
//! the facade crate `mq`, which re-exports everything here.
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod capabilities;
pub mod checks;
pub mod client;
mod clock;
pub mod codec;
pub mod consumer;
pub mod dead_letter_reader;
pub mod delivery;
pub mod dlq;
pub mod driver;
pub mod error;
pub mod handler;
pub mod health;
pub mod memory;
pub mod message;
pub mod middleware;
pub mod observe;
pub mod pipeline;
pub mod prefetch;
pub mod producer;
pub mod queue_stats;
pub mod registry;
pub mod report;
pub mod republish;
pub mod router;
pub mod rpc;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod time;
pub mod url;
pub mod worker;

pub use capabilities::Capabilities;
pub use client::{Client, ConsumerBuilder};
pub use consumer::{Consumer, ConsumerOptions, DynConsumer};
pub use delivery::{Content, Delivery, Received, Settlement};
pub use error::{Error, ErrorKind, Result};
pub use handler::{
    json_handler, layer_fn, BatchHandler, BatchResult, BoxHandler, Handler, HandlerError,
    HandlerResult, Layer, LayerFn,
};
pub use health::Health;
pub use message::{headers, Headers, Message};
#[cfg(feature = "redis")]
pub use middleware::dedup::RedisDedupStore;
pub use pipeline::{Pipeline, PipelineReport};
pub use producer::{BatchReport, DynProducer, Producer, ProducerExt, SendNow, Sending};
pub use queue_stats::QueueStats;
pub use registry::Registry;
pub use router::{Router, RouterReport};
pub use rpc::{reply, Requester};
pub use worker::{BatchWorker, CancellationToken, Worker, WorkerReport, WorkerStats};
