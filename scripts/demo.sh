#!/usr/bin/env bash
# The sample order pipeline, end to end ('make demo'):
#   1. installs what is missing (scripts/deps.sh);
#   2. starts a throwaway broker BROKER_NAME@localhost on BROKER_PORT (default swiftrmq, 5673) from empty data,
#      unless AMQP_URL is set, in which case that broker is used and none is started;
#   3. builds 'order-pipeline' (the Samples package) in release mode and runs 'order-pipeline run' with AMQP_URL
#      pointing at the broker; with the broker it started, the run stops that broker for DEMO_OUTAGE seconds
#      (default 10; 0 for none) while the order service writes, to show the outbox riding out the outage;
#   4. stops the broker it started, also when the run fails;
# and exits with the pipeline's status: non-zero when an invariant fails.
#
#   scripts/demo.sh [order-pipeline run options…]    e.g. scripts/demo.sh --count 2000
#
# Environment: BROKER_NAME, BROKER_PORT, AMQP_URL, DEMO_OUTAGE, SWIFT_SCRATCH (the Samples package's build folder,
# default .build-samples, as for make test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BROKER_NAME="${BROKER_NAME:-swiftrmq}"
BROKER_PORT="${BROKER_PORT:-5673}"
SWIFT_SCRATCH="${SWIFT_SCRATCH:-.build-samples}"
DEMO_OUTAGE="${DEMO_OUTAGE:-10}"

scripts/deps.sh

outage=()
if [ -z "${AMQP_URL:-}" ]; then
    scripts/broker.sh start "$BROKER_NAME" "$BROKER_PORT"
    trap 'scripts/broker.sh stop "$BROKER_NAME"' EXIT
    export AMQP_URL="amqp://guest:guest@127.0.0.1:${BROKER_PORT}/"
    # Our own broker: the run may stop it and start it again on the same data.
    if [ "$DEMO_OUTAGE" != 0 ]; then
        outage=(--broker-outage "$DEMO_OUTAGE"
                --broker-stop-command "'$PWD/scripts/broker.sh' stop '$BROKER_NAME'"
                --broker-start-command "'$PWD/scripts/broker.sh' restart '$BROKER_NAME'")
    fi
fi

echo "==> building order-pipeline (release)" >&2
swift_flags=(-c release --package-path Samples --scratch-path "$SWIFT_SCRATCH")
swift build "${swift_flags[@]}" --product order-pipeline
echo "==> order-pipeline run against $AMQP_URL" >&2
status=0
swift run "${swift_flags[@]}" --skip-build order-pipeline run "${outage[@]}" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "==> the pipeline failed (exit status $status)" >&2
fi
exit "$status"
