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

#endif
