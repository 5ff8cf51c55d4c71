#!/usr/bin/env bash
# Benchmarks: the Swift client (rabbitmq-bench) against the C baseline written directly against
# librabbitmq (Benchmarks/CBaseline/rabbitmq_bench_c.c), on the same broker, interleaved.
#
#   scripts/bench.sh            (or: make bench)
#
# Report on stdout and in .bench/report.txt; one JSON line per run in .bench/results.jsonl.
# Lines starting with RESULT are key=value records for scripts.
#
# Environment (defaults in brackets):
#   AMQP_URL            broker to use; when unset, a node is started with scripts/broker.sh
#                       (BENCH_BROKER_NAME [swiftrmq] on BENCH_BROKER_PORT [5673]) and stopped at the
#                       end; a node of that name that is already running is reused and left running
#   ROUNDS [5] COUNT [100000] SIZE [128] WINDOW [1000] PREFETCH [1000]
#                       the main workload: persistent messages, publish with confirms and a window,
#                       consume with a prefetch and one ack per message
#   LARGE_ROUNDS [3] LARGE_COUNT [2000] LARGE_SIZE [1048576] LARGE_WINDOW [100] LARGE_PREFETCH [100]
#                       the large-message workload (LARGE_ROUNDS=0 skips it)
#   TASKS_ROUNDS [ROUNDS] TASKS [64] TASKS_COUNT [32000]
#                       TASKS tasks each calling client.publish and awaiting its confirm, against the windowed
#                       loop (Swift and C) with the window and with a window of TASKS (what TASKS in flight
#                       allow any client), TASKS_COUNT messages in all (0 rounds skips it)
#   ACTOR_ROUNDS [4]    the publish and consume loops on the main actor against the same loops in a task (an
#                       even number: whichever consumer goes first is faster, see BENCHMARKS.md)
#   TLS_ROUNDS [3]      publish and consume over TLS, C against Swift. TLS_BENCH_URL and TLS_BENCH_CA name a
#                       TLS listener and its CA; when unset, scripts/tls.sh starts one (TLS_NODE_NAME,
#                       TLS_AMQP_PORT, TLS_PORT as for the tests) and stops it at the end (TLS_ROUNDS=0 skips it)
#   MULTI_ROUNDS [3] MULTI_CLIENTS [4] MULTI_COUNT [50000]
#                       MULTI_CLIENTS publishing and as many consuming connections at once, MULTI_COUNT
#                       messages each: Swift in one process, C as separate processes
#   LAT_RATE [5000] LAT_COUNT [50000]
#                       Swift `latency` run (LAT_COUNT=0 skips it)
#   MEM_COUNT [1000000] Swift consume of MEM_COUNT messages, max RSS compared with COUNT (0 skips it)
#   CF_COUNT [20]       Swift `connect-failures` attempts: how fast a refused port and a silent peer fail
#                       (0 skips it)
#   RUN_TIMEOUT [900]   seconds before one benchmark process is killed
#   SWIFT_BENCH         path of a ready rabbitmq-bench binary (no Swift build)
#   SKIP_SWIFT=1        C baseline only
#   SWIFT_SCRATCH_PATH  --scratch-path for the Swift build of the Benchmarks package (default: SwiftPM's,
#                       Benchmarks/.build; 'make bench' passes .build-benchmarks, as 'make chaos' uses)
#   BENCH_DIR [.bench]  where binaries, logs and the report go
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log()  { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

BENCH_DIR="${BENCH_DIR:-$ROOT/.bench}"
mkdir -p "$BENCH_DIR"
BENCH_BROKER_NAME="${BENCH_BROKER_NAME:-swiftrmq}"
BENCH_BROKER_PORT="${BENCH_BROKER_PORT:-5673}"

# ---- C baseline ---------------------------------------------------------------------------------
command -v pkg-config >/dev/null || die "pkg-config is missing (apt-get install pkg-config)"
pkg-config --exists librabbitmq || die "librabbitmq not found by pkg-config (apt-get install librabbitmq-dev)"
C_BIN="$BENCH_DIR/rabbitmq-bench-c"
log "building the C baseline ($C_BIN)"
# shellcheck disable=SC2046  # pkg-config's output is meant to be split
cc -O2 -Wall -o "$C_BIN" Benchmarks/CBaseline/rabbitmq_bench_c.c $(pkg-config --cflags --libs librabbitmq) ||
    die "the C baseline does not compile"

# ---- Swift benchmark ----------------------------------------------------------------------------
SWIFT_BIN=""
SWIFT_STATUS=""
if [ "${SKIP_SWIFT:-0}" = 1 ]; then
    SWIFT_STATUS="skipped (SKIP_SWIFT=1)"
elif [ -n "${SWIFT_BENCH:-}" ]; then
    [ -x "$SWIFT_BENCH" ] || die "SWIFT_BENCH=$SWIFT_BENCH is not an executable"
    SWIFT_BIN="$SWIFT_BENCH"
    SWIFT_STATUS="given by SWIFT_BENCH"
elif ! command -v swift >/dev/null; then
    SWIFT_STATUS="NOT BUILT: no swift toolchain on PATH"
else
    build=(swift build -c release --package-path Benchmarks)
    [ -n "${SWIFT_SCRATCH_PATH:-}" ] && build+=(--scratch-path "$SWIFT_SCRATCH_PATH")
    build_log="$BENCH_DIR/swift-build.log"
    log "building rabbitmq-bench (${build[*]} --product rabbitmq-bench; log: $build_log)"
    if "${build[@]}" --product rabbitmq-bench >"$build_log" 2>&1; then
        bin_dir="$("${build[@]}" --show-bin-path)"
        SWIFT_BIN="$bin_dir/rabbitmq-bench"
        [ -x "$SWIFT_BIN" ] || { SWIFT_STATUS="NOT BUILT: $SWIFT_BIN missing after the build"; SWIFT_BIN=""; }
        [ -n "$SWIFT_BIN" ] && SWIFT_STATUS="release build OK"
    else
        SWIFT_STATUS="NOT BUILT: swift build failed, see $build_log"
        warn "the Swift benchmark does not build; continuing with the C baseline ONLY. Last lines of $build_log:"
        tail -n 20 "$build_log" >&2 || true
    fi
fi
log "Swift benchmark: ${SWIFT_BIN:-none} ($SWIFT_STATUS)"

# ---- Broker -------------------------------------------------------------------------------------
STOP_BROKER=0
# shellcheck disable=SC2317  # called by the EXIT trap
stop_broker() {
    if [ "$STOP_BROKER" = 1 ]; then
        STOP_BROKER=0
        "$ROOT/scripts/broker.sh" stop "$BENCH_BROKER_NAME" || warn "could not stop $BENCH_BROKER_NAME"
    fi
}
STOP_TLS=0
# shellcheck disable=SC2317  # called by the EXIT trap
stop_brokers() {
    stop_broker
    if [ "$STOP_TLS" = 1 ]; then
        STOP_TLS=0
        "$ROOT/scripts/tls.sh" stop || warn "could not stop the TLS node"
    fi
}
trap stop_brokers EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${AMQP_URL:-}" ]; then
    URL="$AMQP_URL"
    log "using the broker given by AMQP_URL"
else
    [ -x "$ROOT/scripts/broker.sh" ] || die "scripts/broker.sh is missing; set AMQP_URL to a running broker"
    URL="amqp://guest:guest@127.0.0.1:$BENCH_BROKER_PORT/"
    if "$ROOT/scripts/broker.sh" status "$BENCH_BROKER_NAME" >/dev/null 2>&1; then
        log "reusing the running node $BENCH_BROKER_NAME@localhost (left running afterwards)"
    else
        STOP_BROKER=1
        "$ROOT/scripts/broker.sh" start "$BENCH_BROKER_NAME" "$BENCH_BROKER_PORT"
    fi
fi

TLS_URL_ARG="${TLS_BENCH_URL:-}"
TLS_CA_ARG="${TLS_BENCH_CA:-}"
if [ "${TLS_ROUNDS:-3}" -gt 0 ] && [ -z "$TLS_URL_ARG" ]; then
    log "starting a TLS node with scripts/tls.sh"
    STOP_TLS=1
    if "$ROOT/scripts/tls.sh" start >&2; then
        TLS_URL_ARG="amqps://guest:guest@localhost:${TLS_PORT:-5691}/"
        TLS_CA_ARG="$ROOT/.broker/tls/ca.pem"
    else
        warn "the TLS node did not start: the tls workload is skipped"
    fi
fi

# ---- Runs and report ----------------------------------------------------------------------------
headers=(--header "c_compiler=$(cc --version | head -n 1)")
if command -v dpkg-query >/dev/null; then
    versions="$(dpkg-query -W -f '${Package}=${Version} ' librabbitmq4 rabbitmq-server 2>/dev/null || true)"
    [ -n "$versions" ] && headers+=(--header "packages=${versions% }")
fi

status=0
python3 "$ROOT/scripts/bench_report.py" \
    --c-bin "$C_BIN" --swift-bin "$SWIFT_BIN" --swift-status "$SWIFT_STATUS" --url "$URL" \
    --out "$BENCH_DIR/report.txt" --raw "$BENCH_DIR/results.jsonl" --timeout "${RUN_TIMEOUT:-900}" \
    --rounds "${ROUNDS:-5}" --count "${COUNT:-100000}" --size "${SIZE:-128}" \
    --window "${WINDOW:-1000}" --prefetch "${PREFETCH:-1000}" \
    --large-rounds "${LARGE_ROUNDS:-3}" --large-count "${LARGE_COUNT:-2000}" \
    --large-size "${LARGE_SIZE:-1048576}" --large-window "${LARGE_WINDOW:-100}" \
    --large-prefetch "${LARGE_PREFETCH:-100}" \
    --lat-rate "${LAT_RATE:-5000}" --lat-count "${LAT_COUNT:-50000}" --mem-count "${MEM_COUNT:-1000000}" \
    --cf-count "${CF_COUNT:-20}" \
    --tasks-rounds "${TASKS_ROUNDS:-${ROUNDS:-5}}" --tasks "${TASKS:-64}" --tasks-count "${TASKS_COUNT:-32000}" \
    --actor-rounds "${ACTOR_ROUNDS:-4}" \
    --tls-rounds "${TLS_ROUNDS:-3}" --tls-url "$TLS_URL_ARG" --tls-ca "$TLS_CA_ARG" \
    --multi-rounds "${MULTI_ROUNDS:-3}" --multi-clients "${MULTI_CLIENTS:-4}" --multi-count "${MULTI_COUNT:-50000}" \
    "${headers[@]}" || status=$?

log "report written to ${BENCH_DIR#"$ROOT"/}/report.txt"
[ "$status" = 0 ] || warn "some benchmark runs failed (see the end of the report)"
exit "$status"
