#ifndef SWIFT_RABBITMQ_SHIM_H
#define SWIFT_RABBITMQ_SHIM_H

// rabbitmq-c 0.12 and later install their headers under rabbitmq-c/; 0.11 (Debian bookworm) at the top level.
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/framing.h>
#include <rabbitmq-c/tcp_socket.h>
#include <rabbitmq-c/ssl_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#endif

#include <errno.h>
#include <poll.h>
#include <sys/types.h>

// Swift cannot call C variadic functions; these wrappers fix the SASL arguments.
static inline amqp_rpc_reply_t swift_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                      int channel_max, int frame_max, int heartbeat,
                                                      const amqp_table_t *properties, const char *user,
                                                      const char *password) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, properties,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}

static inline amqp_rpc_reply_t swift_amqp_login_external(amqp_connection_state_t state, const char *vhost,
                                                         int channel_max, int frame_max, int heartbeat,
                                                         const amqp_table_t *properties, const char *identity) {
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, properties,
                                      AMQP_SASL_METHOD_EXTERNAL, identity);
}

// Writing through a librabbitmq socket object (TCP or TLS) without librabbitmq's framing: the engine encodes
// publishes and acks itself and hands whole buffers to the socket's own send, which for TLS is SSL_write on the
// connection's session. librabbitmq exports no function for this (amqp_socket_send is private), so the socket's
// virtual table is declared here as rabbitmq-c lays it out from 0.10 through 0.15 (librabbitmq/amqp_socket.h):
// `struct amqp_socket_t_ { const struct amqp_socket_class_t *klass; }`, whose first member is
// `ssize_t (*send)(void *self, const void *buf, size_t len, int flags)`. Other versions are refused at compile
// time: check that header before widening the range.
#if AMQP_VERSION_MAJOR != 0 || AMQP_VERSION_MINOR < 10 || AMQP_VERSION_MINOR > 15
#error "swift-rabbitmq: check librabbitmq's amqp_socket_class_t layout (amqp_socket.h) and update shim.h"
#endif

struct swift_amqp_socket_class {
    ssize_t (*send)(void *self, const void *buf, size_t len, int flags);
};

struct swift_amqp_socket {
    const struct swift_amqp_socket_class *klass;
};

// librabbitmq's private statuses for "retry once the socket is readable / writable" (amqp_private.h).
#define SWIFT_AMQP_STATUS_SOCKET_NEEDREAD (-0x1301)
#define SWIFT_AMQP_STATUS_SOCKET_NEEDWRITE (-0x1302)

// Writes all `len` bytes of `buf` through `socket`'s send, as librabbitmq's amqp_try_send does: while the
// socket (or the TLS session) needs to become writable or readable, waits for it with poll(), at most
// `timeout_ms` per wait, and retries with the same buffer (which SSL_write requires).
// Returns AMQP_STATUS_OK, AMQP_STATUS_TIMEOUT when a wait ran out, or the send's AMQP_STATUS_* error.
static inline int swift_amqp_socket_send_all(amqp_socket_t *socket, const void *buf, size_t len, int timeout_ms) {
    const struct swift_amqp_socket *object = (const struct swift_amqp_socket *)(const void *)socket;
    const char *next = (const char *)buf;
    int fd = amqp_socket_get_sockfd(socket);
    while (len > 0) {
        ssize_t sent = object->klass->send(socket, next, len, 0);
        if (sent > 0) {
            next += sent;
            len -= (size_t)sent;
            continue;
        }
        struct pollfd descriptor = {fd, 0, 0};
        if (sent == SWIFT_AMQP_STATUS_SOCKET_NEEDWRITE) {
            descriptor.events = POLLOUT;
        } else if (sent == SWIFT_AMQP_STATUS_SOCKET_NEEDREAD) {
            descriptor.events = POLLIN;
        } else {
            return sent == 0 ? AMQP_STATUS_SOCKET_ERROR : (int)sent;
        }
        int ready = poll(&descriptor, 1, timeout_ms);
        if (ready == 0) return AMQP_STATUS_TIMEOUT;
        if (ready < 0 && errno != EINTR) return AMQP_STATUS_SOCKET_ERROR;
    }
    return AMQP_STATUS_OK;
}

#endif
