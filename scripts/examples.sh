#!/usr/bin/env bash
# Runs every example as a test: each must exit 0 and print its success line.
#
# Usage: bash scripts/examples.sh [--memory-only]
#
# 1. Every example on memory:// (no broker needed): quickstart, email_sender,
#    walkthrough, image_pipeline, data_import, rpc, order_service, swap_broker.
# 2. For each MQ_TEST_RABBIT_URL / MQ_TEST_KAFKA_URL / MQ_TEST_SQS_URL that is
#    set (e.g. by `eval "$(bash scripts/brokers.sh start)"`), built with the
#    matching backend features: swap_broker once over all of them, then
#    email_sender, rpc and order_service against each (order_service also on
#    MQ_TEST_POSTGRES_URL when set). URLs are passed through as given
#    (Kafka needs `?auto_create_topics=true` unless the cluster creates
#    topics itself). --memory-only skips this part.
#
# A failing example's whole output is printed; a passing one shows only its
# success line. The last line reads `examples: N passed, N failed`.
# CARGO_TARGET_DIR defaults to ~/.cache/mq-target, as in scripts/test.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mq-target}"

# Longest a single example may run (a stuck broker must not hang CI).
LIMIT="${MQ_EXAMPLE_TIMEOUT:-300}"
memory_only=false
case "${1:-}" in
  --memory-only) memory_only=true ;;
  "") ;;
  *) echo "usage: $0 [--memory-only]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
passed=0
failed=0
failures=()
run_env=() # `env` arguments for the next run
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# run LABEL PATTERN FEATURES EXAMPLE [ARGS...]: runs the example (already
# built with FEATURES) and checks its exit code and its success line.
run() {
  local label=$1 pattern=$2 features=$3 example=$4
  shift 4
  local feature_args=(-p mq-examples)
  [[ -n "$features" ]] && feature_args+=(--features "$features")
  # The quickstart belongs to the mq package itself (memory:// only).
  [[ "$example" == quickstart ]] && feature_args=(-p mq)
  local start=$SECONDS rc=0
  env "${run_env[@]+"${run_env[@]}"}" timeout "$LIMIT" cargo run -q "${feature_args[@]}" --example "$example" -- "$@" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - start))
  if [[ $rc -eq 0 ]] && grep -q -- "$pattern" "$log"; then
    passed=$((passed + 1))
    printf 'ok    %-34s %4ss  %s\n' "$label" "$took" "$(grep -m1 -- "$pattern" "$log" | cut -c1-150)"
  else
    failed=$((failed + 1))
    local why="exit code $rc"
    [[ $rc -eq 124 ]] && why="timed out after ${LIMIT}s"
    [[ $rc -eq 0 ]] && why="no line matching '$pattern'"
    failures+=("$label: $why")
    printf 'FAIL  %-34s %4ss  %s; its output:\n' "$label" "$took" "$why"
    sed 's/^/      | /' "$log"
  fi
}

# The brokers to try, and the backend features they need. One build with
# those features serves both parts (a feature change relinks every example).
brokers=()
features=()
if ! $memory_only; then
  if [[ -n "${MQ_TEST_RABBIT_URL:-}" ]]; then brokers+=("$MQ_TEST_RABBIT_URL"); features+=(rabbit); fi
  if [[ -n "${MQ_TEST_KAFKA_URL:-}" ]]; then brokers+=("$MQ_TEST_KAFKA_URL"); features+=(kafka); fi
  if [[ -n "${MQ_TEST_SQS_URL:-}" ]]; then brokers+=("$MQ_TEST_SQS_URL"); features+=(sqs); fi
fi
feature_list="$(IFS=,; echo "${features[*]+"${features[*]}"}")"

step "building the examples${feature_list:+ with --features $feature_list}"
cargo build -q -p mq --examples
if [[ -n "$feature_list" ]]; then
  cargo build -q -p mq-examples --features "$feature_list" --examples
else
  cargo build -q -p mq-examples --examples
fi

step "every example on memory://"
# swap_broker without the MQ_TEST_* variables, so it runs memory:// alone.
run quickstart "all expectations met" "$feature_list" quickstart
run walkthrough "all expectations met" "$feature_list" walkthrough
run email_sender "email_sender OK:" "$feature_list" email_sender
run image_pipeline "image_pipeline OK:" "$feature_list" image_pipeline
run data_import "data_import OK:" "$feature_list" data_import
run rpc "rpc OK:" "$feature_list" rpc
run order_service "order_service OK:" "$feature_list" order_service
without_brokers=(-u MQ_TEST_RABBIT_URL -u MQ_TEST_KAFKA_URL -u MQ_TEST_SQS_URL)
run_env=("${without_brokers[@]}")
run swap_broker "swap_broker OK:" "$feature_list" swap_broker
run_env=()

if $memory_only; then
  step "skipping brokers (--memory-only)"
elif [[ ${#brokers[@]} -eq 0 ]]; then
  step "no MQ_TEST_RABBIT_URL, MQ_TEST_KAFKA_URL or MQ_TEST_SQS_URL set: examples ran on memory:// only"
else
  step "examples on real brokers"
  run "swap_broker ($feature_list)" "swap_broker OK:" "$feature_list" swap_broker
  for url in "${brokers[@]}"; do
    scheme="${url%%://*}"
    run "email_sender ($scheme)" "email_sender OK:" "$feature_list" email_sender "$url"
    run "rpc ($scheme)" "rpc OK:" "$feature_list" rpc "$url"
    run "order_service ($scheme)" "order_service OK:" "$feature_list" order_service "$url"
  done
  if [[ -n "${MQ_TEST_POSTGRES_URL:-}" ]]; then
    run "order_service (postgres)" "order_service OK:" "$feature_list" order_service memory:// "$MQ_TEST_POSTGRES_URL"
  fi
fi

echo
for f in "${failures[@]+"${failures[@]}"}"; do
  echo "failed: $f"
done
echo "examples: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
