#!/usr/bin/env bash
# The project's test command (the one README.md gives): formatting, lints,
# the test suite and the quickstart example, in that order.
#
# Usage: bash scripts/test.sh
#
# CARGO_TARGET_DIR defaults to a cache outside the repository so that every
# checkout and CI run shares one build cache; set it to override.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mq-target}"

step() { printf '\n==> %s\n' "$*"; }

# Brokers: once the RabbitMQ, Kafka and SQS backends exist, start them here
# (or honour MQ_TEST_RABBIT_URL / MQ_TEST_KAFKA_URL / MQ_TEST_SQS_URL /
# MQ_TEST_REDIS_URL when already set, see DESIGN.md §10) before the test step,
# and stop them in an EXIT trap. Today only the in-memory backend exists, so
# there is nothing to start.

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test --workspace --all-features"
cargo test --workspace --all-features

step "cargo run --example quickstart"
cargo run --example quickstart

step "all checks passed"
