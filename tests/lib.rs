//! Cross-backend tests of `mq` (each file is one test target, see
//! Cargo.toml): `cargo test -p mq-tests --all-features`, with the brokers of
//! `scripts/brokers.sh` or a Docker engine for testcontainers.
#![forbid(unsafe_code)]
