/*
 * rabbitmq-bench-c: the C baseline for swift-rabbitmq's benchmarks.
 *
 * Written directly against librabbitmq 0.11, the way an efficient single-threaded C client would use it.
 * Same command line and output as the Swift `rabbitmq-bench` executable:
 *
 *   rabbitmq-bench-c publish [--url URL] [--queue NAME] [--count N] [--size BYTES] [--window W]
 *   rabbitmq-bench-c consume [--url URL] [--queue NAME] [--count N] [--prefetch P]
 *
 * An amqps:// URL connects over TLS (librabbitmq's OpenSSL socket, peer and host name verified) with the
 * CA certificate given by --tls-ca FILE.
 *
 * publish: declares the durable queue, purges it, enables publisher confirms and publishes N persistent
 *          messages of BYTES bytes to the default exchange (routing key = queue) with at most W
 *          unconfirmed. Timed from the first publish to the last confirm. Loop: drain every frame already
 *          there with amqp_simple_wait_frame_noblock({0,0}) (acks/nacks, `multiple` honoured), publish
 *          into all the room the window has, and block in the wait only when the window is full.
 *          Last line: `pub msgs=N secs=S rate=R`
 * consume: basic.qos P, basic.consume with manual acks, one basic.ack per message (multiple=false), stops
 *          after N messages. Timed from the first delivery to the last ack. Deliveries are assembled
 *          from frames (basic.deliver, header, bodies) read with amqp_simple_wait_frame_noblock (blocking,
 *          with a 30 s idle limit; never amqp_consume_message), the body copied once out of
 *          librabbitmq's frame buffer (what any client handing out messages must do).
 *          Last line: `con msgs=N secs=S rate=R`
 *
 * Build: cc -O2 -o rabbitmq-bench-c rabbitmq_bench_c.c $(pkg-config --cflags --libs librabbitmq)
 *
 * Errors go to stderr with a non-zero exit status (1: broker/protocol/network error, 2: usage).
 */

#define _POSIX_C_SOURCE 200809L

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define CHANNEL 1
/* Debian's librabbitmq turns frame_max 0 into 4096: ask for the broker's default explicitly. */
#define FRAME_MAX 131072
#define HEARTBEAT_SECS 60
/* Give up when the broker sends nothing for this long while we wait for confirms or deliveries. */
#define IDLE_TIMEOUT_SECS 30

/* ------------------------------------------------------------------------------------------------ */
/* Options and errors                                                                               */

struct options {
    const char *command;
    const char *url;
    const char *queue;
    uint64_t count;
    size_t size;
    uint64_t window;
    uint16_t prefetch;
    const char *tls_ca;
};

/* The CA file for amqps:// URLs (--tls-ca). */
static const char *tls_ca_file = NULL;

static void usage(FILE *out) {
    fprintf(out,
            "usage: rabbitmq-bench-c publish|consume [--url URL] [--queue NAME] [--count N]\n"
            "                        [--size BYTES] [--window W] [--prefetch P]\n"
            "  --url URL       broker (default amqp://guest:guest@127.0.0.1:5673/)\n"
            "  --queue NAME    durable queue (default bench)\n"
            "  --count N       messages (default 100000)\n"
            "  --size BYTES    body size for publish (default 128)\n"
            "  --window W      unconfirmed publishes at most (default 1000)\n"
            "  --prefetch P    basic.qos prefetch count for consume (default 1000, 1..65535)\n"
            "  --tls-ca FILE   CA certificate (PEM) for amqps:// URLs\n");
}

static void die(const char *fmt, ...) {
    va_list ap;
    fputs("rabbitmq-bench-c: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void die_usage(const char *fmt, const char *arg) {
    fputs("rabbitmq-bench-c: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    usage(stderr);
    exit(2);
}

static uint64_t parse_u64(const char *flag, const char *value, uint64_t min, uint64_t max) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || value[0] == '-' || v < min || v > max) {
        fprintf(stderr, "rabbitmq-bench-c: invalid value for %s: '%s' (expected %" PRIu64 "...%" PRIu64 ")\n",
                flag, value, min, max);
        exit(2);
    }
    return (uint64_t)v;
}

static void parse_options(int argc, char **argv, struct options *o) {
    o->command = NULL;
    o->url = "amqp://guest:guest@127.0.0.1:5673/";
    o->queue = "bench";
    o->count = 100000;
    o->size = 128;
    o->window = 1000;
    o->prefetch = 1000;
    o->tls_ca = NULL;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (a[0] != '-') {
            if (o->command != NULL) die_usage("unexpected argument '%s'", a);
            o->command = a;
            continue;
        }
        /* Accept both `--flag value` and `--flag=value`. */
        const char *value = NULL;
        char flag[32];
        const char *eq = strchr(a, '=');
        if (eq != NULL) {
            size_t n = (size_t)(eq - a);
            if (n >= sizeof(flag)) die_usage("unknown option '%s'", a);
            memcpy(flag, a, n);
            flag[n] = '\0';
            value = eq + 1;
        } else {
            if (strlen(a) >= sizeof(flag)) die_usage("unknown option '%s'", a);
            strcpy(flag, a);
            if (i + 1 >= argc) die_usage("missing value for %s", a);
            value = argv[++i];
        }
        if (strcmp(flag, "--url") == 0) {
            o->url = value;
        } else if (strcmp(flag, "--queue") == 0) {
            if (strlen(value) > 255) die_usage("queue name too long: '%s'", value);
            o->queue = value;
        } else if (strcmp(flag, "--count") == 0) {
            o->count = parse_u64(flag, value, 1, UINT64_MAX / 2);
        } else if (strcmp(flag, "--size") == 0) {
            o->size = (size_t)parse_u64(flag, value, 0, (uint64_t)128 * 1024 * 1024);
        } else if (strcmp(flag, "--window") == 0) {
            o->window = parse_u64(flag, value, 1, 10000000);
        } else if (strcmp(flag, "--prefetch") == 0) {
            o->prefetch = (uint16_t)parse_u64(flag, value, 1, 65535);
        } else if (strcmp(flag, "--tls-ca") == 0) {
            o->tls_ca = value;
        } else {
            die_usage("unknown option '%s'", flag);
        }
    }
    if (o->command == NULL) die_usage("missing subcommand%s", "");
    if (strcmp(o->command, "publish") != 0 && strcmp(o->command, "consume") != 0) {
        die_usage("unknown subcommand '%s' (expected publish or consume)", o->command);
    }
}

static double now_secs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void check_status(int status, const char *context) {
    if (status != AMQP_STATUS_OK) die("%s: %s", context, amqp_error_string2(status));
}

static void die_server_close(const amqp_method_t *m, const char *context) {
    if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *c = m->decoded;
        die("%s: channel closed by broker: %u %.*s", context, c->reply_code, (int)c->reply_text.len,
            (const char *)c->reply_text.bytes);
    } else if (m->id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = m->decoded;
        die("%s: connection closed by broker: %u %.*s", context, c->reply_code, (int)c->reply_text.len,
            (const char *)c->reply_text.bytes);
    }
    die("%s: unexpected method 0x%08x", context, m->id);
}

static void check_reply(amqp_rpc_reply_t r, const char *context) {
    switch (r.reply_type) {
        case AMQP_RESPONSE_NORMAL:
            return;
        case AMQP_RESPONSE_NONE:
            die("%s: missing RPC reply", context);
            break;
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            die("%s: %s", context, amqp_error_string2(r.library_error));
            break;
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            die_server_close(&r.reply, context);
            break;
    }
    die("%s: unknown RPC reply type %d", context, (int)r.reply_type);
}

/* ------------------------------------------------------------------------------------------------ */
/* Connection                                                                                       */

static amqp_connection_state_t open_connection(const char *url) {
    char *buf = strdup(url);
    if (buf == NULL) die("out of memory");
    struct amqp_connection_info info;
    amqp_default_connection_info(&info);
    int status = amqp_parse_url(buf, &info);
    if (status != AMQP_STATUS_OK) die("invalid URL '%s': %s", url, amqp_error_string2(status));
    /* amqp_parse_url gives "" for "amqp://host/": that is the default vhost "/". */
    const char *vhost = (info.vhost == NULL || info.vhost[0] == '\0') ? "/" : info.vhost;

    amqp_connection_state_t conn = amqp_new_connection();
    if (conn == NULL) die("amqp_new_connection failed");
    amqp_socket_t *socket;
    if (info.ssl) {
        socket = amqp_ssl_socket_new(conn);
        if (socket == NULL) die("amqp_ssl_socket_new failed");
        if (tls_ca_file == NULL) die("an amqps:// URL needs --tls-ca");
        status = amqp_ssl_socket_set_cacert(socket, tls_ca_file);
        if (status != AMQP_STATUS_OK) die("cannot read %s: %s", tls_ca_file, amqp_error_string2(status));
    } else {
        socket = amqp_tcp_socket_new(conn);
        if (socket == NULL) die("amqp_tcp_socket_new failed");
    }
    struct timeval connect_timeout = {10, 0};
    status = amqp_socket_open_noblock(socket, info.host, info.port, &connect_timeout);
    if (status != AMQP_STATUS_OK) {
        die("cannot connect to %s:%d: %s", info.host, info.port, amqp_error_string2(status));
    }
    check_reply(amqp_login(conn, vhost, 0, FRAME_MAX, HEARTBEAT_SECS, AMQP_SASL_METHOD_PLAIN, info.user,
                           info.password),
                "login");
    amqp_channel_open(conn, CHANNEL);
    check_reply(amqp_get_rpc_reply(conn), "channel.open");
    free(buf);
    return conn;
}

static void close_connection(amqp_connection_state_t conn) {
    check_reply(amqp_channel_close(conn, CHANNEL, AMQP_REPLY_SUCCESS), "channel.close");
    check_reply(amqp_connection_close(conn, AMQP_REPLY_SUCCESS), "connection.close");
    check_status(amqp_destroy_connection(conn), "destroy connection");
}

static void declare_queue(amqp_connection_state_t conn, amqp_bytes_t queue) {
    amqp_queue_declare(conn, CHANNEL, queue, 0, 1, 0, 0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "queue.declare");
}

static void print_result(const char *tag, uint64_t n, double secs) {
    double rate = secs > 0 ? (double)n / secs : 0.0;
    printf("%s msgs=%" PRIu64 " secs=%.3f rate=%.0f\n", tag, n, secs, rate);
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------------ */
/* publish                                                                                          */

/*
 * Confirm tracking. Delivery tags are numbered 1, 2, ... in publish order on the channel. `low` is the
 * lowest tag not yet confirmed (published + 1 when none is outstanding), `pending[tag % window]` says
 * whether a tag in [low, published] is still unconfirmed. We publish only while the span
 * published - low + 1 is below the window, so the ring never wraps onto a live slot (RabbitMQ confirms
 * in order in practice, and then span == unconfirmed count).
 */
struct confirms {
    uint8_t *pending;
    uint64_t window;
    uint64_t published;
    uint64_t low;
    uint64_t acked;
    uint64_t nacked;
};

static void settle_one(struct confirms *c, uint64_t tag, int nack) {
    uint8_t *slot = &c->pending[tag % c->window];
    if (*slot) {
        *slot = 0;
        if (nack) c->nacked++;
        else c->acked++;
    }
}

static void settle(struct confirms *c, uint64_t tag, int multiple, int nack) {
    if (tag > c->published || (tag == 0 && !multiple)) {
        die("confirm for delivery tag %" PRIu64 " but only %" PRIu64 " published", tag, c->published);
    }
    if (multiple) {
        if (tag == 0) tag = c->published; /* multiple with tag 0: everything outstanding */
        for (uint64_t t = c->low; t <= tag; t++) settle_one(c, t, nack);
        if (tag + 1 > c->low) c->low = tag + 1;
    } else if (tag >= c->low) {
        settle_one(c, tag, nack);
    }
    while (c->low <= c->published && !c->pending[c->low % c->window]) c->low++;
}

static void publisher_frame(struct confirms *c, const amqp_frame_t *f) {
    if (f->frame_type != AMQP_FRAME_METHOD) return; /* heartbeats are filtered by the library */
    const amqp_method_t *m = &f->payload.method;
    switch (m->id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = m->decoded;
            settle(c, a->delivery_tag, a->multiple, 0);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *n = m->decoded;
            settle(c, n->delivery_tag, n->multiple, 1);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            die_server_close(m, "publish");
            break;
        default:
            /* basic.return (not mandatory: never sent), connection.blocked (not asked for), ... */
            break;
    }
}

/* Handle every frame that is already available, without blocking. */
static void publisher_drain(amqp_connection_state_t conn, struct confirms *c) {
    static const struct timeval zero = {0, 0};
    amqp_frame_t f;
    for (;;) {
        int status = amqp_simple_wait_frame_noblock(conn, &f, &zero);
        if (status == AMQP_STATUS_TIMEOUT) break;
        check_status(status, "publish: reading confirms");
        publisher_frame(c, &f);
    }
    amqp_maybe_release_buffers(conn);
}

/* Block until at least one frame has been handled (the window is full, or we wait for the last confirms). */
static void publisher_wait(amqp_connection_state_t conn, struct confirms *c) {
    struct timeval idle = {IDLE_TIMEOUT_SECS, 0};
    amqp_frame_t f;
    int status = amqp_simple_wait_frame_noblock(conn, &f, &idle);
    if (status == AMQP_STATUS_TIMEOUT) {
        die("publish: no confirm for %d s (%" PRIu64 " of %" PRIu64 " confirmed)", IDLE_TIMEOUT_SECS,
            c->acked + c->nacked, c->published);
    }
    check_status(status, "publish: waiting for confirms");
    publisher_frame(c, &f);
}

static int run_publish(const struct options *o) {
    amqp_connection_state_t conn = open_connection(o->url);
    amqp_bytes_t queue = amqp_cstring_bytes(o->queue);
    declare_queue(conn, queue);
    amqp_queue_purge(conn, CHANNEL, queue);
    check_reply(amqp_get_rpc_reply(conn), "queue.purge");
    amqp_confirm_select(conn, CHANNEL);
    check_reply(amqp_get_rpc_reply(conn), "confirm.select");

    amqp_bytes_t body = {o->size, NULL};
    if (o->size > 0) {
        body.bytes = malloc(o->size);
        if (body.bytes == NULL) die("out of memory");
        for (size_t i = 0; i < o->size; i++) ((uint8_t *)body.bytes)[i] = (uint8_t)('a' + i % 26);
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;

    struct confirms c = {0};
    c.window = o->window;
    c.pending = calloc(o->window, 1);
    if (c.pending == NULL) die("out of memory");
    c.low = 1;

    double start = now_secs();
    while (c.published < o->count) {
        /* Take every frame already there (confirms; this also sends heartbeats and reports a dead peer,
         * which amqp_basic_publish in 0.11 may not). */
        publisher_drain(conn, &c);
        uint64_t room = c.window - (c.published + 1 - c.low);
        if (room == 0) {
            /* Window full: block until the broker confirms something. */
            publisher_wait(conn, &c);
            continue;
        }
        /* Room in the window: publish into all of it before draining again (one drain per batch, not two
         * wasted syscalls per message). */
        uint64_t batch = o->count - c.published;
        if (batch > room) batch = room;
        for (uint64_t i = 0; i < batch; i++) {
            int status = amqp_basic_publish(conn, CHANNEL, amqp_empty_bytes, queue, 0, 0, &props, body);
            check_status(status, "basic.publish");
            c.published++;
            c.pending[c.published % c.window] = 1;
        }
    }
    while (c.low <= c.published) {
        publisher_wait(conn, &c);
        publisher_drain(conn, &c);
    }
    double secs = now_secs() - start;

    close_connection(conn);
    free(body.bytes);
    free(c.pending);
    if (c.nacked > 0) {
        fprintf(stderr, "rabbitmq-bench-c: %" PRIu64 " of %" PRIu64 " publishes were nacked by the broker\n",
                c.nacked, c.published);
    }
    print_result("pub", c.published, secs);
    return c.nacked > 0 ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* consume                                                                                          */

static int run_consume(const struct options *o) {
    amqp_connection_state_t conn = open_connection(o->url);
    amqp_bytes_t queue = amqp_cstring_bytes(o->queue);
    declare_queue(conn, queue);
    amqp_basic_qos(conn, CHANNEL, 0, o->prefetch, 0);
    check_reply(amqp_get_rpc_reply(conn), "basic.qos");
    amqp_basic_consume(conn, CHANNEL, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check_reply(amqp_get_rpc_reply(conn), "basic.consume");

    enum { WANT_METHOD, WANT_HEADER, WANT_BODY } state = WANT_METHOD;
    uint64_t delivery_tag = 0;
    size_t body_size = 0, received = 0;
    /* The one copy a real consumer makes: the message body out of librabbitmq's frame buffer. */
    uint8_t *body = NULL;
    size_t capacity = 0;
    uint64_t done = 0;
    double start = 0;
    const struct timeval idle = {IDLE_TIMEOUT_SECS, 0};

    while (done < o->count) {
        amqp_frame_t f;
        int status = amqp_simple_wait_frame_noblock(conn, &f, &idle);
        if (status == AMQP_STATUS_TIMEOUT) {
            die("consume: no delivery for %d s (%" PRIu64 " of %" PRIu64 " received; is the queue filled?)",
                IDLE_TIMEOUT_SECS, done, o->count);
        }
        check_status(status, "consume: reading deliveries");
        if (f.channel != CHANNEL) {
            if (f.frame_type == AMQP_FRAME_METHOD) die_server_close(&f.payload.method, "consume");
            continue;
        }
        int complete = 0;
        switch (f.frame_type) {
            case AMQP_FRAME_METHOD: {
                const amqp_method_t *m = &f.payload.method;
                if (state != WANT_METHOD) die("consume: method 0x%08x in the middle of a message", m->id);
                if (m->id == AMQP_BASIC_DELIVER_METHOD) {
                    if (done == 0) start = now_secs();
                    delivery_tag = ((const amqp_basic_deliver_t *)m->decoded)->delivery_tag;
                    state = WANT_HEADER;
                } else if (m->id == AMQP_BASIC_CANCEL_METHOD) {
                    die("consume: consumer cancelled by broker after %" PRIu64 " messages", done);
                } else if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
                    die_server_close(m, "consume");
                }
                break;
            }
            case AMQP_FRAME_HEADER:
                if (state != WANT_HEADER) die("consume: unexpected content header");
                body_size = (size_t)f.payload.properties.body_size;
                received = 0;
                if (body_size > capacity) {
                    free(body);
                    body = malloc(body_size);
                    if (body == NULL) die("out of memory (%zu byte body)", body_size);
                    capacity = body_size;
                }
                if (body_size == 0) complete = 1;
                else state = WANT_BODY;
                break;
            case AMQP_FRAME_BODY: {
                if (state != WANT_BODY) die("consume: unexpected content body");
                size_t len = f.payload.body_fragment.len;
                if (len > body_size - received) die("consume: body longer than its header says");
                memcpy(body + received, f.payload.body_fragment.bytes, len);
                received += len;
                if (received == body_size) complete = 1;
                break;
            }
            default:
                break;
        }
        if (complete) {
            check_status(amqp_basic_ack(conn, CHANNEL, delivery_tag, 0), "basic.ack");
            done++;
            state = WANT_METHOD;
            amqp_maybe_release_buffers(conn);
        }
    }
    double secs = now_secs() - start;

    close_connection(conn);
    free(body);
    print_result("con", done, secs);
    return 0;
}

int main(int argc, char **argv) {
    struct options o;
    parse_options(argc, argv, &o);
    tls_ca_file = o.tls_ca;
    if (strcmp(o.command, "publish") == 0) return run_publish(&o);
    return run_consume(&o);
}
