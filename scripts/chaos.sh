#!/usr/bin/env bash
# The chaos soak ('make chaos'): a three-node cluster of its own, producers and QueueWorker consumers on a quorum
# queue, and a seeded schedule of 35 faults (restarts, kill -9, freezes, losses of the clients' node, forced
# connection closes) while they work. It checks that no confirmed message is lost, that no call overran its
# timeout and that memory stays flat, prints the figures and appends them to RELIABILITY.md.
#   1. installs what is missing (scripts/deps.sh);
#   2. builds rabbitmq-chaos (Benchmarks/ChaosSoak, in the Benchmarks package) in release mode;
#   3. starts the cluster CHAOS_CLUSTER_NAME1..3@localhost on CHAOS_PORTS, from empty folders;
#   4. runs 'rabbitmq-chaos run' against it;
#   5. stops every node of the cluster, also when the run fails or is interrupted (Ctrl-C);
# and exits with the soak's status: non-zero when an invariant fails.
#
#   scripts/chaos.sh [rabbitmq-chaos run options…]   e.g. scripts/chaos.sh --seed 42 --messages 20000
#
# Options of 'rabbitmq-chaos run' (see --help): --seed N (default: random, printed), --messages N (200000),
# --output FILE (RELIABILITY.md), --label TEXT (a note in the report's heading), --heartbeat S (3).
# Environment: CHAOS_CLUSTER_NAME (swiftrmq-x), CHAOS_PORTS ("5881 5882 5883"; distribution ports +20000),
# SWIFT_SCRATCH (the Benchmarks package's build folder, default .build-benchmarks).
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

CHAOS_CLUSTER_NAME="${CHAOS_CLUSTER_NAME:-swiftrmq-x}"
CHAOS_PORTS="${CHAOS_PORTS:-5881 5882 5883}"
SWIFT_SCRATCH="${SWIFT_SCRATCH:-.build-benchmarks}"
read -r -a ports <<<"$CHAOS_PORTS"
[ "${#ports[@]}" -eq 3 ] || die "CHAOS_PORTS must hold three ports"

"$SCRIPTS/deps.sh"

log "building rabbitmq-chaos (release)"
build=(swift build -c release --package-path Benchmarks --scratch-path "$SWIFT_SCRATCH")
"${build[@]}" --product rabbitmq-chaos
bin="$("${build[@]}" --show-bin-path)/rabbitmq-chaos"

cluster() { CLUSTER_NAME="$CHAOS_CLUSTER_NAME" CLUSTER_PORTS="$CHAOS_PORTS" "$SCRIPTS/cluster.sh" "$@"; }
stopped=0
# shellcheck disable=SC2317  # called by the traps
stop_cluster() {
    [ "$stopped" = 1 ] && return
    stopped=1
    log "stopping the chaos cluster"
    cluster stop || warn "could not stop every node of the chaos cluster"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cluster start
urls="" nodes=""
for i in 0 1 2; do
    urls+="${urls:+,}amqp://guest:guest@127.0.0.1:${ports[$i]}/"
    nodes+="${nodes:+,}${CHAOS_CLUSTER_NAME}$((i + 1))"
done

status=0
"$bin" run --urls "$urls" --nodes "$nodes" --broker-script "$SCRIPTS/broker.sh" --rabbitmqctl "$RABBITMQCTL" \
    --work-dir "$ROOT/.chaos" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    log "the soak failed (exit status $status); logs of its processes in .chaos/"
fi
exit "$status"
