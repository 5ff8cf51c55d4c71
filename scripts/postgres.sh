#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, with Debian's postgresql binaries (/usr/lib/postgresql/VERSION/bin,
# the newest installed), everything under .postgres/ in the project (git-ignored).
#
#   scripts/postgres.sh start    wipe .postgres/, initdb, start on 127.0.0.1:POSTGRES_PORT (trust auth, fsync off)
#   scripts/postgres.sh stop     stop it (pg_ctl stop -m fast) and remove .postgres/
#   scripts/postgres.sh status   exit 0 when running
#   scripts/postgres.sh env      print 'export POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/postgres'
#   scripts/postgres.sh psql ARGS…   psql connected to it, as the postgres superuser
#
# initdb and pg_ctl refuse to run as root: as root they run as the 'postgres' user (which the Debian package
# creates), through runuser; otherwise as the current user. The data is for tests only: fsync is off.
#
# Environment:
#   POSTGRES_PORT   the TCP port (default 5433; the system cluster's 5432 is left alone)
#   POSTGRES_DIR    where the cluster lives (default <project>/.postgres)
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

POSTGRES_DIR="${POSTGRES_DIR:-$ROOT/.postgres}"
PORTFILE="$POSTGRES_DIR/port"
# Where the cluster's files are: POSTGRES_DIR itself, or, when the postgres user cannot reach it (a checkout under
# /root, mode 700), a folder under /tmp whose path is kept in POSTGRES_DIR/cluster.
if [ -s "$POSTGRES_DIR/cluster" ]; then CLUSTER="$(cat "$POSTGRES_DIR/cluster")"; else CLUSTER="$POSTGRES_DIR"; fi
DATA="$CLUSTER/data"
LOGFILE="$CLUSTER/log"

# The port of a running cluster is the one it was started on.
if [ -s "$PORTFILE" ]; then
    PORT="$(tr -dc '0-9' <"$PORTFILE")"
else
    PORT="${POSTGRES_PORT:-5433}"
fi

bin_dir() {
    local dir
    dir="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$dir" ] && [ -x "$dir/initdb" ] ||
        die "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb). Run 'make deps' (scripts/deps.sh)."
    echo "$dir"
}

# Runs a PostgreSQL program as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root, and there is no 'postgres' user to run PostgreSQL as"
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

running() {
    [ -d "$DATA" ] && as_owner "$(bin_dir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

stop() {
    if running; then
        log "stopping PostgreSQL on port $PORT ($CLUSTER)"
        as_owner "$(bin_dir)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null ||
            warn "pg_ctl stop failed; see $LOGFILE"
    fi
    if [ "$CLUSTER" != "$POSTGRES_DIR" ]; then rm -rf "${CLUSTER:?}"; fi
    rm -rf "${POSTGRES_DIR:?}"
    CLUSTER="$POSTGRES_DIR" DATA="$POSTGRES_DIR/data" LOGFILE="$POSTGRES_DIR/log"
}

start() {
    local bin
    bin="$(bin_dir)"
    stop
    PORT="${POSTGRES_PORT:-5433}"
    if port_in_use "$PORT"; then die "port $PORT is in use: set POSTGRES_PORT to a free port"; fi
    mkdir -p "$POSTGRES_DIR"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$POSTGRES_DIR"
        if ! runuser -u postgres -- test -w "$POSTGRES_DIR"; then
            CLUSTER="$(mktemp -d "${TMPDIR:-/tmp}/swiftrmq-postgres.XXXXXX")"
            chown postgres: "$CLUSTER"
            echo "$CLUSTER" >"$POSTGRES_DIR/cluster"
            DATA="$CLUSTER/data" LOGFILE="$CLUSTER/log"
        fi
    fi
    log "initdb $DATA"
    as_owner "$bin/initdb" -D "$DATA" -A trust -U postgres -E UTF8 --no-sync >"$POSTGRES_DIR/initdb.log" 2>&1 || {
        cat "$POSTGRES_DIR/initdb.log" >&2
        die "initdb failed"
    }
    log "starting PostgreSQL on 127.0.0.1:$PORT"
    # max_connections: every test opens a pool of its own, and several worker processes run at once.
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 -o "-p $PORT -k $CLUSTER \
-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c max_connections=300" start >/dev/null || {
        tail -20 "$LOGFILE" >&2 || true
        die "PostgreSQL did not start; see $LOGFILE"
    }
    echo "$PORT" >"$PORTFILE"
    log "PostgreSQL is up: postgres://postgres@127.0.0.1:$PORT/postgres"
}

cmd="${1:-}"; [ -n "$cmd" ] || usage
shift
case "$cmd" in
start) start ;;
stop) stop ;;
status) running ;;
env) echo "export POSTGRES_URL='postgres://postgres@127.0.0.1:$PORT/postgres'" ;;
psql) as_owner "$(bin_dir)/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@" ;;
help | -h | --help) usage ;;
*) usage ;;
esac
