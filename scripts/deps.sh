#!/usr/bin/env bash
# Installs what building, testing and benchmarking need, and only what is missing:
#   librabbitmq-dev   the C client library the package wraps (with pkg-config to find it)
#   rabbitmq-server   for throwaway local brokers (scripts/broker.sh)
#   openssl           to make certificates for the TLS tests (scripts/tls.sh)
#   time              GNU time (/usr/bin/time) for the benchmarks
#   postgresql        for a throwaway PostgreSQL cluster (scripts/postgres.sh): the PostgreSQL store's tests
# Debian/Ubuntu only (apt). Runs 'apt-get update' only when something is missing.
set -euo pipefail

# libsqlite3-dev: the sample (and its integration test) keeps its side effects in SQLite through GRDB.
# libsqlite3-dev and postgresql: the durable deduplication stores (RabbitMQSQLite, RabbitMQPostgres) and their tests.
PACKAGES=(librabbitmq-dev rabbitmq-server pkg-config openssl time libsqlite3-dev postgresql)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "deps.sh: this is not a Debian-like system (no dpkg-query/apt-get)." >&2
    echo "Install these yourself: ${PACKAGES[*]} (on macOS: brew install rabbitmq-c rabbitmq)." >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "==> dependencies present: ${PACKAGES[*]}" >&2
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "ERROR: missing Debian packages: ${missing[*]}" >&2
    echo "Not root and no sudo here; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "==> installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
echo "==> installed: ${missing[*]}" >&2
