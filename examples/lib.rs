//! The examples of `mq`, one per use case: run them with
//! `cargo run -p mq-examples --example <name>` (add `--features rabbit`,
//! `kafka` or `sqs` and a broker URL to run one against a real broker).
//! The quickstart is part of the `mq` package itself
//! (`cargo run --example quickstart`), so its first build stays small.
#![forbid(unsafe_code)]
