#!/usr/bin/env bash
# A local three-node RabbitMQ cluster for tests (about 10 s and 0.8 GB to start):
#   swiftrmq-c1@localhost  amqp://guest:guest@127.0.0.1:5681/  (dist port 25681)
#   swiftrmq-c2@localhost  amqp://guest:guest@127.0.0.1:5682/  (dist port 25682)
#   swiftrmq-c3@localhost  amqp://guest:guest@127.0.0.1:5683/  (dist port 25683)
# Nodes 2 and 3 join node 1. Folders: .broker/swiftrmq-c1 … c3.
#
#   scripts/cluster.sh start    wipe and start the three nodes, then join them
#   scripts/cluster.sh stop     stop the three nodes
#   scripts/cluster.sh status   rabbitmqctl cluster_status on node 1
#   scripts/cluster.sh env      print export lines for the tests' variables
#
# One node can be crashed and brought back with scripts/broker.sh kill|restart swiftrmq-c2;
# it rejoins the cluster on restart.
# Environment: CLUSTER_PORTS="5681 5682 5683" to use other AMQP ports (distribution
# ports are AMQP port + 20000); CLUSTER_NAME=swiftrmq-c names the nodes NAME1 … NAME3, so
# that a second cluster (the chaos soak's) can run beside the tests' one;
# BROKER_EXTRA_CONFIG is applied to every node.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CLUSTER_NAME="${CLUSTER_NAME:-swiftrmq-c}"
NAMES=("${CLUSTER_NAME}1" "${CLUSTER_NAME}2" "${CLUSTER_NAME}3")
read -r -a PORTS <<<"${CLUSTER_PORTS:-5681 5682 5683}"
[ "${#PORTS[@]}" -eq 3 ] || die "CLUSTER_PORTS must hold three ports"
BROKER="$SCRIPTS/broker.sh"
ctl() { local n="$1"; shift; "$RABBITMQCTL" -n "$n@localhost" "$@"; }

stop_all() {
    local pids=() n
    for n in "${NAMES[@]}"; do "$BROKER" stop "$n" & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n" || true; done
}

case "${1:-}" in
start)
    require_rabbitmq
    ensure_cookie   # before three nodes start at once
    stop_all
    out="$(mktemp -d "${TMPDIR:-/tmp}/swiftrmq-cluster.XXXXXX")"
    pids=()
    for i in 0 1 2; do
        "$BROKER" start "${NAMES[$i]}" "${PORTS[$i]}" >"$out/$i" 2>&1 & pids+=($!)
    done
    failed=0
    for i in 0 1 2; do
        if ! wait "${pids[$i]}"; then failed=1; fi
        cat "$out/$i" >&2
    done
    rm -rf "$out"
    if [ "$failed" = 1 ]; then
        stop_all
        die "a cluster node did not start (see above)"
    fi
    first="${NAMES[0]}@localhost"
    for n in "${NAMES[1]}" "${NAMES[2]}"; do
        log "joining $n@localhost to $first"
        if ! { ctl "$n" stop_app >/dev/null &&
               ctl "$n" join_cluster "$first" >/dev/null &&
               ctl "$n" start_app >/dev/null; }; then
            printf 'ERROR: %s@localhost could not join %s\n' "$n" "$first" >&2
            ctl "$n" cluster_status >&2 || true
            stop_all
            exit 1
        fi
    done
    running="$(ctl "${NAMES[0]}" eval 'length(rabbit_nodes:all_running()).' 2>&1 || true)"
    if [ "$running" != 3 ]; then
        ctl "${NAMES[0]}" cluster_status >&2 || true
        stop_all
        die "the cluster runs $running nodes, not 3"
    fi
    log "cluster of 3 running: ${NAMES[*]/%/@localhost} on 127.0.0.1 ports ${PORTS[*]}"
    ;;
stop)
    stop_all
    ;;
status)
    ctl "${NAMES[0]}" cluster_status
    ;;
env)
    urls="" nodes=""
    for i in 0 1 2; do
        urls+="${urls:+,}amqp://guest:guest@127.0.0.1:${PORTS[$i]}/"
        nodes+="${nodes:+,}${NAMES[$i]}@localhost"
    done
    echo "export RABBITMQ_CLUSTER_URLS='$urls'"
    echo "export RABBITMQ_CLUSTER_NODES='$nodes'"
    ;;
*)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
