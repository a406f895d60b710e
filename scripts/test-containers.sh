#!/usr/bin/env bash
# The testcontainers stage of scripts/test.sh (issue 18): the conformance
# suite once more, now against brokers that testcontainers starts in Docker,
# with no MQ_TEST_*_URL at all, the way users run their integration tests,
# and the example test of TESTING.md (tests/app_with_containers.rs) with its
# RabbitMQ in Docker. scripts/containers.sh installs and starts a private
# Docker engine when none answers and builds the broker images locally
# (once; cached); this script stops what it started, also on failure.
#
# Usage: bash scripts/test-containers.sh [cargo test arguments...]
#   default: --workspace --all-features (the build scripts/test.sh made)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mq-target}"

start=$(date +%s)
trap 'bash scripts/containers.sh stop || true' EXIT
eval "$(bash scripts/containers.sh start rabbitmq sqs kafka)"

# Only the images choose the brokers: no URL, restart command, restart URL
# or skip from the native stage.
for v in $(compgen -e | grep -E '^MQ_TEST_(RABBIT|KAFKA|SQS|REDIS)_' | grep -v '_IMAGE$' || true); do
  unset "$v"
done

(($#)) || set -- --workspace --all-features
# The conformance suites (one thread each: they mostly wait on brokers) and
# the example test TESTING.md shows users, against the same images.
cargo test "$@" --test conformance --test app_with_containers -- --nocapture --test-threads 4 \
  conformance_brokers orders_on_

bash scripts/containers.sh stop
trap - EXIT
printf 'testcontainers stage: %ss\n' "$(($(date +%s) - start))"
