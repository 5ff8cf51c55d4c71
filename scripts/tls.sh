#!/usr/bin/env bash
# A RabbitMQ node with a TLS listener, and certificates for the TLS tests.
#
#   scripts/tls.sh start   make certificates in .broker/tls/ and start swiftrmq-tls@localhost:
#                            plain AMQP  amqp://guest:guest@127.0.0.1:5690/
#                            TLS         amqps://guest:guest@localhost:5691/
#                          (verify_peer, fail_if_no_peer_cert = false: a client certificate
#                          is optional, but one that is sent must chain to ca.pem)
#   scripts/tls.sh stop    stop the node, remove .broker/tls and its folder
#   scripts/tls.sh certs   only (re)make the certificates
#   scripts/tls.sh check   openssl s_client against the TLS port
#   scripts/tls.sh env     print export lines for the tests' variables
#
# Files in .broker/tls/ (PEM; keys unencrypted):
#   ca.pem ca.key                          the test CA
#   server.pem server.key                  served on 5691: CN and subjectAltName DNS:localhost
#   client.pem client.key                  client certificate signed by ca.pem, CN "swift-rabbitmq test client"
#   nouser-client.pem nouser-client.key    signed by ca.pem, CN "swift-rabbitmq nobody" (no such user)
#   wrong-ca.pem wrong-ca.key              a second, unrelated CA
#   wrong-ca-client.pem wrong-ca-client.key  client certificate signed by wrong-ca.pem
#   wrong-host.pem wrong-host.key          signed by ca.pem for DNS:wrong-host.invalid only
# The node offers SASL EXTERNAL (plugin rabbitmq_auth_mechanism_ssl): a client certificate logs in as the
# user its CN names (ssl_cert_login_from = common_name), once that user exists.
# librabbitmq checks DNS names only: connect to "localhost" (not 127.0.0.1) to pass the
# hostname check; connecting to 127.0.0.1 with hostname checking on must fail.
#
# Environment: TLS_NODE_NAME (swiftrmq-tls), TLS_AMQP_PORT (5690), TLS_PORT (5691);
# BROKER_EXTRA_CONFIG is added.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME="${TLS_NODE_NAME:-swiftrmq-tls}"
NODE="$NAME@localhost"
AMQP_PORT="${TLS_AMQP_PORT:-5690}"
TLS_PORT="${TLS_PORT:-5691}"
TLS_DIR="$BROKER_DIR/tls"
DAYS=3650

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

ossl() {
    local out
    if ! out="$(openssl "$@" 2>&1)"; then
        printf 'ERROR: openssl %s failed:\n%s\n' "$*" "$out" >&2
        exit 1
    fi
}

newkey() { ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; chmod 600 "$1"; }

# make_ca NAME "subject"
make_ca() {
    newkey "$TLS_DIR/$1.key"
    ossl req -new -x509 -sha256 -days "$DAYS" -key "$TLS_DIR/$1.key" -subj "$2" \
        -config /dev/null -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -addext "subjectKeyIdentifier=hash" \
        -out "$TLS_DIR/$1.pem"
}

# make_leaf NAME CA "subject" serverAuth|clientAuth [subjectAltName]
make_leaf() {
    local name="$1" ca="$2" subj="$3" usage="$4" san="${5:-}"
    newkey "$TLS_DIR/$name.key"
    ossl req -new -sha256 -key "$TLS_DIR/$name.key" -subj "$subj" -config /dev/null \
        -out "$TLS_DIR/$name.csr"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = $usage"
        echo "authorityKeyIdentifier = keyid"
        if [ -n "$san" ]; then echo "subjectAltName = $san"; fi
    } >"$TLS_DIR/$name.ext"
    ossl x509 -req -sha256 -days "$DAYS" -in "$TLS_DIR/$name.csr" \
        -CA "$TLS_DIR/$ca.pem" -CAkey "$TLS_DIR/$ca.key" -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" \
        -extfile "$TLS_DIR/$name.ext" -out "$TLS_DIR/$name.pem"
    rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}

make_certs() {
    command -v openssl >/dev/null || die "openssl is missing; run 'make deps'"
    rm -rf "$TLS_DIR"
    mkdir -p "$TLS_DIR"
    log "making test certificates in ${TLS_DIR#"$ROOT"/}"
    make_ca ca "/CN=swift-rabbitmq test CA"
    make_ca wrong-ca "/CN=swift-rabbitmq unrelated CA"
    make_leaf server ca "/CN=localhost" serverAuth "DNS:localhost"
    make_leaf client ca "/CN=swift-rabbitmq test client" clientAuth
    make_leaf nouser-client ca "/CN=swift-rabbitmq nobody" clientAuth
    make_leaf wrong-ca-client wrong-ca "/CN=swift-rabbitmq client of the unrelated CA" clientAuth
    make_leaf wrong-host ca "/CN=wrong-host.invalid" serverAuth "DNS:wrong-host.invalid"
}

check() {
    local out
    out="$(timeout 20 openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$TLS_DIR/ca.pem" \
        -verify_hostname localhost -verify_return_error </dev/null 2>&1 || true)"
    if grep -q 'Verify return code: 0 (ok)' <<<"$out"; then
        log "TLS listener on 127.0.0.1:$TLS_PORT verified against ca.pem for hostname localhost"
    else
        printf '%s\n' "$out" | tail -n 30 >&2
        die "openssl s_client could not verify the TLS listener on port $TLS_PORT"
    fi
}

case "${1:-}" in
start)
    require_rabbitmq
    "$SCRIPTS/broker.sh" stop "$NAME"
    make_certs
    BROKER_EXTRA_CONFIG="listeners.ssl.default = 127.0.0.1:$TLS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
${BROKER_EXTRA_CONFIG:-}" \
        BROKER_PLUGINS="rabbitmq_auth_mechanism_ssl ${BROKER_PLUGINS:-}" \
        "$SCRIPTS/broker.sh" start "$NAME" "$AMQP_PORT"
    check
    log "$NODE: amqp://guest:guest@127.0.0.1:$AMQP_PORT/ and amqps://guest:guest@localhost:$TLS_PORT/"
    ;;
stop)
    "$SCRIPTS/broker.sh" stop "$NAME"
    rm -rf "$TLS_DIR" "${BROKER_DIR:?}/$NAME"
    ;;
certs)
    make_certs
    ;;
check)
    check
    ;;
env)
    echo "export RABBITMQ_TLS_URL='amqps://guest:guest@localhost:$TLS_PORT/'"
    echo "export RABBITMQ_TLS_DIR='$TLS_DIR'"
    echo "export RABBITMQ_TLS_NODE='$NODE'"
    ;;
*)
    usage
    ;;
esac
