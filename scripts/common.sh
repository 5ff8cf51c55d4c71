# Shared helpers for the scripts in this folder. Source it; do not run it.
# shellcheck shell=bash

# The project root: the folder above scripts/.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$ROOT/scripts"

# Where throwaway nodes keep their data, logs and pid files (git-ignored).
BROKER_DIR="${BROKER_DIR:-$ROOT/.broker}"

# RabbitMQ's own scripts. The wrappers in /usr/sbin switch to the rabbitmq user and
# expect the system folders, so use the ones in /usr/lib/rabbitmq/bin.
RABBITMQ_SBIN="${RABBITMQ_SBIN:-/usr/lib/rabbitmq/bin}"
RABBITMQ_SERVER="$RABBITMQ_SBIN/rabbitmq-server"
RABBITMQCTL="${RABBITMQCTL:-$RABBITMQ_SBIN/rabbitmqctl}"

log()  { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Node and CLI authenticate with the same Erlang cookie: $HOME/.erlang.cookie of the
# user running them. Create it up front (mode 400, as Erlang wants) so that nodes
# started at the same time (a cluster) or a CLI run before any node never race to
# create different ones.
ensure_cookie() {
    if [ -z "${HOME:-}" ]; then
        HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
        export HOME
    fi
    local cookie="$HOME/.erlang.cookie"
    if [ ! -s "$cookie" ]; then
        local tmp
        tmp="$(mktemp "$HOME/.erlang.cookie.XXXXXX")"
        local letters=ABCDEFGHIJKLMNOPQRSTUVWXYZ b s=""
        for b in $(od -An -N20 -tu1 /dev/urandom); do s+="${letters:b%26:1}"; done
        printf '%s' "$s" >"$tmp"
        chmod 400 "$tmp"
        # Atomic: if another process created it meanwhile, keep theirs.
        if ! ln "$tmp" "$cookie" 2>/dev/null; then :; fi
        rm -f "$tmp"
    fi
    chmod 400 "$cookie" 2>/dev/null || true
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_rabbitmq() {
    [ -x "$RABBITMQ_SERVER" ] && [ -x "$RABBITMQCTL" ] ||
        die "RabbitMQ is not installed ($RABBITMQ_SERVER missing). Run 'make deps' (scripts/deps.sh) first."
}
