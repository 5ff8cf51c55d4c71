#!/usr/bin/env bash
# Throwaway RabbitMQ nodes for tests, run as the current user, with everything under
# .broker/NAME/ in the project.
#
#   scripts/broker.sh start   NAME PORT   wipe .broker/NAME, start a fresh node NAME@localhost
#                                         (AMQP on 127.0.0.1:PORT, distribution on PORT+20000)
#   scripts/broker.sh stop    NAME        stop it (rabbitmqctl stop, else kill its beam.smp)
#   scripts/broker.sh restart NAME        stop if running, start again on the SAME data
#                                         (durable queues and messages survive)
#   scripts/broker.sh kill    NAME        kill -9 its beam.smp (a hard crash); then 'restart'
#   scripts/broker.sh pid     NAME        print its beam.smp pid (for kill -STOP / -CONT)
#   scripts/broker.sh status  NAME        exit 0 when running
#   scripts/broker.sh ctl     NAME ARGS…  rabbitmqctl -n NAME@localhost ARGS…
#   scripts/broker.sh log     NAME        print the path of the node's log file
#
# NAME may be given as NAME or NAME@localhost.
#
# Environment:
#   BROKER_EXTRA_CONFIG   extra rabbitmq.conf lines (key = value), appended to the defaults
#   BROKER_PLUGINS        plugins to enable, separated by commas or spaces (default none), such as
#                         rabbitmq_auth_mechanism_ssl
#   BROKER_ADVANCED_CONFIG  the node's advanced.config (Erlang terms), for settings rabbitmq.conf
#                         lacks, such as [{rabbit, [{channel_tick_interval, 1000}]}].
#   BROKER_DIR            where node folders go (default: <project>/.broker)
#   BROKER_STARTED_LIST   if set, a file to which 'start' and 'restart' append NAME, so
#                         that scripts/test.sh can stop every node a test run started
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# Default configuration of every throwaway node.
#   max_message_size: 20 MiB, so a 16 MiB message passes and a 21 MiB one is refused.
#   loopback_users = none: guest may log in from anywhere (nodes listen on loopback only).
DEFAULT_CONFIG='loopback_users = none
max_message_size = 20971520
heartbeat = 60'

cmd="${1:-}"; [ -n "$cmd" ] || usage
shift
case "$cmd" in help|-h|--help) usage ;; esac
name="${1:-}"; [ -n "$name" ] || usage
shift
name="${name%@*}"
node="$name@localhost"
dir="$BROKER_DIR/$name"
pidfile="$dir/$name.pid"
logfile="$dir/log/$node.log"

ctl() { "$RABBITMQCTL" -n "$node" "$@"; }

# True when PID is a beam.smp started for this node (the node name is set through the
# environment, not on the command line, so look there).
is_our_beam() {
    grep -qzx "RABBITMQ_NODENAME=$node" "/proc/$1/environ" 2>/dev/null
}

# The beam.smp pid of the node if it is running, else nothing.
beam_pid() {
    local pid=""
    [ -s "$pidfile" ] && pid="$(tr -dc '0-9' <"$pidfile")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && is_our_beam "$pid"; then
        echo "$pid"; return
    fi
    # No usable pid file (folder wiped by hand?): look for a beam of that node name.
    for pid in $(pgrep -x beam.smp || true); do
        if is_our_beam "$pid"; then echo "$pid"; return; fi
    done
}

# ' by node X@localhost (pid N)' when one of these throwaway nodes holds PORT.
port_owner() {
    local pid env
    for pid in $(pgrep -x beam.smp || true); do
        env="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null || true)"
        if grep -qx "RABBITMQ_NODE_PORT=$1" <<<"$env" || grep -qx "RABBITMQ_DIST_PORT=$1" <<<"$env"; then
            printf ' by node %s (pid %s)' "$(sed -n 's/^RABBITMQ_NODENAME=//p' <<<"$env")" "$pid"
            return
        fi
    done
}

register() {
    if [ -n "${BROKER_STARTED_LIST:-}" ]; then echo "$name" >>"$BROKER_STARTED_LIST"; fi
}

show_logs() {
    local f
    for f in "$dir/stdout.log" "$logfile"; do
        if [ -s "$f" ]; then
            printf -- '---- %s ----\n' "$f" >&2
            if [ "$(wc -l <"$f")" -le 60 ]; then
                cat "$f" >&2
            else
                head -n 20 "$f" >&2
                printf -- '[…]\n' >&2
                tail -n 30 "$f" >&2
            fi
        fi
    done
    printf -- '---- end of logs ----\n' >&2
}

do_stop() {
    local pid
    pid="$(beam_pid)"
    if [ -z "$pid" ]; then
        # The pid is gone; still tidy a stale pid file.
        rm -f "$pidfile"
        return 0
    fi
    log "stopping $node (pid $pid)"
    # A test may have frozen it (kill -STOP) and failed before thawing it.
    kill -CONT "$pid" 2>/dev/null || true
    if [ -s "$pidfile" ]; then
        timeout 30 "$RABBITMQCTL" -n "$node" stop "$pidfile" >/dev/null 2>&1 || true
    else
        timeout 30 "$RABBITMQCTL" -n "$node" stop >/dev/null 2>&1 || true
    fi
    local i
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        if [ "$i" = 20 ]; then kill -TERM "$pid" 2>/dev/null || true; fi
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$node did not stop; killing pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$pidfile"
}

# Start the node on whatever is in $dir (which must hold rabbitmq.conf and port).
launch() {
    local port dist_port
    port="$(cat "$dir/port")"
    dist_port=$((port + 20000))
    local p
    for p in "$port" "$dist_port"; do
        if port_in_use "$p"; then
            die "port $p is already in use$(port_owner "$p"); cannot start $node on AMQP port $port (distribution port $dist_port). Stop that process or pick another port."
        fi
    done
    ensure_cookie
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/conf.d"
    rm -f "$pidfile"

    log "starting $node on 127.0.0.1:$port (dist port $dist_port, folder ${dir#"$ROOT"/})"
    (
        cd "$dir"
        export RABBITMQ_NODENAME="$node"
        export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        export RABBITMQ_NODE_PORT="$port"
        export RABBITMQ_DIST_PORT="$dist_port"
        export RABBITMQ_MNESIA_BASE="$dir/mnesia"
        export RABBITMQ_LOG_BASE="$dir/log"
        export RABBITMQ_PID_FILE="$pidfile"
        export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
        export RABBITMQ_CONFIG_FILE="$dir/rabbitmq"          # + .conf
        export RABBITMQ_CONFIG_FILES="$dir/conf.d"           # not /etc/rabbitmq/conf.d
        export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"  # absent: not /etc's
        export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"       # absent: not /etc's
        # Erlang distribution on loopback only (the default is every interface).
        export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
        # Its own session: a Ctrl-C at the terminal must not reach the node; whoever
        # started it stops it.
        exec setsid "$RABBITMQ_SERVER" </dev/null >"$dir/stdout.log" 2>&1
    ) &
    local spid=$! i
    register
    # The node writes its pid file early in its boot; fail fast if it dies before that.
    for i in $(seq 1 1200); do
        [ -s "$pidfile" ] && break
        if ! kill -0 "$spid" 2>/dev/null; then
            printf 'ERROR: %s exited while starting.\n' "$node" >&2
            show_logs; exit 1
        fi
        sleep 0.1
    done
    if [ ! -s "$pidfile" ]; then
        printf 'ERROR: %s wrote no pid file within 120 s.\n' "$node" >&2
        show_logs; kill -KILL "$spid" 2>/dev/null || true; exit 1
    fi
    # About 5 s on an idle machine; more than 60 s was seen on a heavily loaded one: the bound is a hang guard.
    if ! timeout 330 "$RABBITMQCTL" -n "$node" wait "$pidfile" --timeout 300 >"$dir/wait.log" 2>&1; then
        printf 'ERROR: %s did not become ready (rabbitmqctl wait failed):\n' "$node" >&2
        cat "$dir/wait.log" >&2
        show_logs
        do_stop || true
        exit 1
    fi
    log "$node is ready: amqp://guest:guest@127.0.0.1:$port/"
}

case "$cmd" in
start)
    port="${1:-}"
    [[ "$port" =~ ^[0-9]+$ ]] || die "usage: broker.sh start NAME PORT"
    require_rabbitmq
    do_stop
    # Always from an empty folder: a killed node leaves data and a pid file behind.
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "$port" >"$dir/port"
    plugins="$(tr ', ' '\n\n' <<<"${BROKER_PLUGINS:-}" | sed '/^$/d' | paste -sd, -)"
    echo "[$plugins]." >"$dir/enabled_plugins"
    {
        printf '%s\n' "$DEFAULT_CONFIG"
        if [ -n "${BROKER_EXTRA_CONFIG:-}" ]; then
            printf '# BROKER_EXTRA_CONFIG\n%s\n' "$BROKER_EXTRA_CONFIG"
        fi
    } >"$dir/rabbitmq.conf"
    if [ -n "${BROKER_ADVANCED_CONFIG:-}" ]; then
        printf '%s\n' "$BROKER_ADVANCED_CONFIG" >"$dir/advanced.config"
    fi
    launch
    ;;
restart)
    require_rabbitmq
    [ -s "$dir/port" ] && [ -s "$dir/rabbitmq.conf" ] ||
        die "$node has no folder to restart on ($dir); use 'start NAME PORT'"
    do_stop
    launch
    ;;
stop)
    do_stop
    ;;
kill)
    pid="$(beam_pid)"
    [ -n "$pid" ] || die "$node is not running"
    log "killing $node (kill -9 $pid)"
    kill -KILL "$pid"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ;;
pid)
    pid="$(beam_pid)"
    [ -n "$pid" ] || die "$node is not running"
    echo "$pid"
    ;;
status)
    pid="$(beam_pid)"
    if [ -n "$pid" ]; then echo "$node is running (pid $pid)"; else echo "$node is not running"; exit 1; fi
    ;;
ctl)
    require_rabbitmq
    exec "$RABBITMQCTL" -n "$node" "$@"
    ;;
log)
    echo "$logfile"
    ;;
*)
    usage
    ;;
esac
