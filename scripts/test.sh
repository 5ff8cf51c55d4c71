#!/usr/bin/env bash
# 'make test' and 'make test-tsan': install what is missing, build, start throwaway
# brokers, run 'swift test' with its output as is, stop every broker the run started
# (also when the tests fail or the run is interrupted), exit with the tests' status.
# The library's tests run first, then the sample package's (Samples/, its pipeline test),
# in a build folder of its own: SwiftPM keeps one build plan per folder, and two packages
# sharing one have run the library's test bundle in place of the sample's.
#
# Arguments are passed on to both 'swift test' runs (e.g. --filter Consumer).
#
# Environment (all optional):
#   AMQP_URL          use this broker; then no local node is started
#   BROKER_NAME       default test node name (swiftrmq -> swiftrmq@localhost)
#   BROKER_PORT       its AMQP port (5673)
#   WITH_TLS          1: also start the TLS node (scripts/tls.sh); default 1, 0 when AMQP_URL is set
#   WITH_CLUSTER      1: also start the 3-node cluster (scripts/cluster.sh); same defaults
#   POSTGRES_URL      use this PostgreSQL (postgres://user@host:port/db) for the persistence tests; then none is
#                     started
#   WITH_POSTGRES     1: start a throwaway PostgreSQL (scripts/postgres.sh, port POSTGRES_PORT, default 5433);
#                     default 1, 0 when POSTGRES_URL is set. A failure to start it fails the run.
#   SWIFT_SCRATCH     build folder (default .build)
#   SAMPLES_SCRATCH   the sample package's build folder (default: SWIFT_SCRATCH-samples)
#   SWIFT_SANITIZE    e.g. thread: passed as --sanitize=
#   CI                true (as CI sets it): first 'scripts/format.sh lint', then warnings are errors
#                     (both packages), and the documentation is built too (scripts/docs.sh)
#
# Exported to the tests:
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5673/   RABBITMQ_NODE=swiftrmq@localhost
#   RABBITMQCTL=/usr/lib/rabbitmq/bin/rabbitmqctl RABBITMQ_BROKER_SCRIPT=<abs>/scripts/broker.sh
#   with the TLS node:  RABBITMQ_TLS_URL=amqps://guest:guest@localhost:5691/
#                       RABBITMQ_TLS_DIR=<abs>/.broker/tls   RABBITMQ_TLS_NODE=swiftrmq-tls@localhost
#   with PostgreSQL:    POSTGRES_URL=postgres://postgres@127.0.0.1:5433/postgres
#   with the cluster:   RABBITMQ_CLUSTER_URLS=amqp://…:5681/,amqp://…:5682/,amqp://…:5683/
#                       RABBITMQ_CLUSTER_NODES=swiftrmq-c1@localhost,swiftrmq-c2@localhost,swiftrmq-c3@localhost
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

BROKER_NAME="${BROKER_NAME:-swiftrmq}"
BROKER_PORT="${BROKER_PORT:-5673}"
SWIFT_SCRATCH="${SWIFT_SCRATCH:-.build}"
SAMPLES_SCRATCH="${SAMPLES_SCRATCH:-$SWIFT_SCRATCH-samples}"
SWIFT_SANITIZE="${SWIFT_SANITIZE:-}"
if [ -n "${AMQP_URL:-}" ]; then user_url=1; else user_url=0; fi
if [ "$user_url" = 1 ]; then default_extra=0; else default_extra=1; fi
WITH_TLS="${WITH_TLS:-$default_extra}"
WITH_CLUSTER="${WITH_CLUSTER:-$default_extra}"
if [ -n "${POSTGRES_URL:-}" ]; then WITH_POSTGRES="${WITH_POSTGRES:-0}"; else WITH_POSTGRES="${WITH_POSTGRES:-1}"; fi

build_flags=()
if [ -n "$SWIFT_SANITIZE" ]; then build_flags+=("--sanitize=$SWIFT_SANITIZE"); fi
# ThreadSanitizer cannot follow Synchronization.Mutex on Linux: the library then locks with pthread mutexes.
if [ "$SWIFT_SANITIZE" = thread ]; then build_flags+=(-Xswiftc -DRABBITMQ_TSAN_LOCKS); fi
# CI keeps the build free of warnings. The flag reaches the library, the tests and the sample, not the dependencies:
# SwiftPM builds those with warnings suppressed.
if [ "${CI:-}" = true ]; then build_flags+=(-Xswiftc -warnings-as-errors); fi
swift_flags=(--scratch-path "$SWIFT_SCRATCH" "${build_flags[@]}")
# The sample keeps the idiomatic Synchronization.Mutex, so its package is left out of sanitizer runs.
if [ -z "$SWIFT_SANITIZE" ]; then with_samples=1; else with_samples=0; fi
samples_flags=(--package-path Samples --scratch-path "$SAMPLES_SCRATCH" "${build_flags[@]}")

"$SCRIPTS/deps.sh"

if [ "${CI:-}" = true ]; then "$SCRIPTS/format.sh" lint; fi

log "swift build --build-tests ${swift_flags[*]}"
swift build --build-tests "${swift_flags[@]}"
# With the same flags, the library just built is not built again (about 25 s on a fresh clone, 10 s after).
if [ "${CI:-}" = true ] && [ -z "$SWIFT_SANITIZE" ]; then "$SCRIPTS/docs.sh" "${swift_flags[@]}"; fi
if [ "$with_samples" = 1 ]; then
    log "swift build --build-tests ${samples_flags[*]}"
    swift build --build-tests "${samples_flags[@]}"
fi

# Every node started from here on (by us, or by the tests through
# RABBITMQ_BROKER_SCRIPT) is listed in this file and stopped at the end.
BROKER_STARTED_LIST="$(mktemp "${TMPDIR:-/tmp}/swiftrmq-brokers.XXXXXX")"
export BROKER_STARTED_LIST
tls_started=0
postgres_started=0
tls_pid="" cluster_pid="" extra_out=""
cleaned=0
cleanup() {
    [ "$cleaned" = 1 ] && return
    cleaned=1
    trap '' INT TERM          # a second Ctrl-C must not leave nodes behind
    local pids=() name p
    # Let nodes still starting in the background (they ignore Ctrl-C) finish first.
    for p in $tls_pid $cluster_pid; do wait "$p" 2>/dev/null || true; done
    if [ "$tls_started" = 1 ]; then
        "$SCRIPTS/tls.sh" stop & pids+=($!)
    fi
    if [ "$postgres_started" = 1 ]; then
        "$SCRIPTS/postgres.sh" stop & pids+=($!)
    fi
    if [ -s "$BROKER_STARTED_LIST" ]; then
        for name in $(sort -u "$BROKER_STARTED_LIST"); do
            # tls.sh stop (above) stops its node itself.
            if [ "$tls_started" = 1 ] && [ "$name" = "${TLS_NODE_NAME:-swiftrmq-tls}" ]; then continue; fi
            "$SCRIPTS/broker.sh" stop "$name" & pids+=($!)
        done
    fi
    for p in "${pids[@]}"; do wait "$p" || true; done
    rm -f "$BROKER_STARTED_LIST"
    rm -rf "${extra_out:-}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export RABBITMQCTL
export RABBITMQ_BROKER_SCRIPT="$SCRIPTS/broker.sh"

if [ "$user_url" = 1 ]; then
    log "AMQP_URL is set ($AMQP_URL): using it; starting no local broker"
else
    "$SCRIPTS/broker.sh" start "$BROKER_NAME" "$BROKER_PORT"
    export AMQP_URL="amqp://guest:guest@127.0.0.1:$BROKER_PORT/"
    export RABBITMQ_NODE="$BROKER_NAME@localhost"
fi

if [ "$WITH_POSTGRES" = 1 ]; then
    postgres_started=1
    "$SCRIPTS/postgres.sh" start
    eval "$("$SCRIPTS/postgres.sh" env)"
    export POSTGRES_URL
elif [ -n "${POSTGRES_URL:-}" ]; then
    log "POSTGRES_URL is set: using it; starting no local PostgreSQL"
    export POSTGRES_URL
fi

# The TLS node and the cluster start side by side; if one fails to start, its tests
# are skipped (their variables stay unset) and a warning says why.
extra_out="$(mktemp -d "${TMPDIR:-/tmp}/swiftrmq-extra.XXXXXX")"
if [ "$WITH_TLS" = 1 ]; then
    tls_started=1
    "$SCRIPTS/tls.sh" start >"$extra_out/tls" 2>&1 & tls_pid=$!
fi
if [ "$WITH_CLUSTER" = 1 ]; then
    "$SCRIPTS/cluster.sh" start >"$extra_out/cluster" 2>&1 & cluster_pid=$!
fi
if [ -n "$tls_pid" ]; then
    if wait "$tls_pid"; then
        cat "$extra_out/tls" >&2
        eval "$("$SCRIPTS/tls.sh" env)"
    else
        cat "$extra_out/tls" >&2
        warn "the TLS node did not start; TLS tests will be skipped"
    fi
fi
if [ -n "$cluster_pid" ]; then
    if wait "$cluster_pid"; then
        cat "$extra_out/cluster" >&2
        eval "$("$SCRIPTS/cluster.sh" env)"
    else
        cat "$extra_out/cluster" >&2
        warn "the cluster did not start; cluster tests will be skipped"
    fi
fi
tls_pid="" cluster_pid=""
rm -rf "$extra_out"

env | grep -E '^(AMQP_URL|POSTGRES_URL|RABBITMQ_[A-Z_]*|RABBITMQCTL)=' | sort | sed 's/^/    /' >&2 || true
set +e
if [ "$#" -gt 0 ]; then
    log "swift test ${swift_flags[*]} $*"
    swift test "${swift_flags[@]}" "$@"
    rc=$?
else
    # Tests that measure time (retry delays, heartbeat detection) run in a pass of their own after the others,
    # so that dozens of parallel tests and brokers competing for two cores do not distort what they measure.
    TIMED_TESTS='HeartbeatTests|retriesFollowThePolicysDelaysThenPark'
    log "swift test ${swift_flags[*]} --skip '$TIMED_TESTS'"
    swift test "${swift_flags[@]}" --skip "$TIMED_TESTS"
    rc=$?
    log "swift test ${swift_flags[*]} --filter '$TIMED_TESTS' (timing-sensitive tests, alone)"
    swift test "${swift_flags[@]}" --filter "$TIMED_TESTS"
    timed_rc=$?
    [ "$rc" -ne 0 ] || rc=$timed_rc
fi
if [ "$with_samples" = 1 ]; then
    log "swift test ${samples_flags[*]} $*"
    swift test "${samples_flags[@]}" "$@"
    samples_rc=$?
    [ "$rc" -ne 0 ] || rc=$samples_rc
fi
set -e
log "swift test exited with status $rc"
exit "$rc"
