/* SPDX-License-Identifier: Apache-2.0 */
/* Keeps hostile clients from taking the sockets away: a limit per TCP peer,
 * a limit per socket that evicts the oldest unfinished request rather than
 * refusing newcomers, and a deadline for a whole request (headers and body)
 * that traffic does not restart, with what was dropped counted. */
#include "internal.h"

#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "log.h"
#include "lv.h"

#define SUMMARY_EVERY_MS 60000 /* at most one summary log line this often */

enum { DROP_DEADLINE, DROP_PEER, DROP_EVICTED, _DROP_MAX };
static const char *const drop_names[_DROP_MAX] = {"request_deadline", "peer_limit",
                                                  "connection_limit"};

typedef struct Socket Socket;

/* One open connection. Its fd stays valid while it is on the list: the
 * list's lock is taken in MHD_CONNECTION_NOTIFY_CLOSED, which libmicrohttpd
 * calls before it closes the fd, so a shutdown() under the lock never hits
 * a reused fd. */
typedef struct Conn {
    struct Conn *prev, *next;
    Socket *sock;
    int fd;
    int64_t since_ms; /* the start of the request being read (or awaited) */
    bool busy;        /* its request is in full: the handler owns it */
    bool shut;        /* shut down by us; waiting for libmicrohttpd to close it */
    bool tcp;
    struct sockaddr_storage peer;
} Conn;

struct Socket {
    HttpdConns *all;
    size_t open, shut; /* shut: of those open, the ones shut down by us */
};

struct HttpdConns {
    HttpdLimits lim;
    pthread_mutex_t lock;
    Conn *head, *tail; /* oldest first */
    size_t open;
    Socket socks[HTTPD_MAX_LISTEN];
    size_t n_socks;

    atomic_uint_fast64_t dropped[_DROP_MAX];
    uint_fast64_t logged[_DROP_MAX]; /* the counts at the last summary (sweep only) */
    int64_t last_summary_ms;
};

int httpd_conns_new(const HttpdLimits *l, size_t n_sockets, HttpdConns **ret)
{
    HttpdConns *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->lim = *l;
    k->n_socks = n_sockets;
    for (size_t i = 0; i < HTTPD_MAX_LISTEN; i++)
        k->socks[i].all = k;
    pthread_mutex_init(&k->lock, NULL);
    /* The first drops after a quiet minute are told at once. */
    k->last_summary_ms = lv_mono_ms() - SUMMARY_EVERY_MS;
    *ret = k;
    return 0;
}

HttpdConns *httpd_conns_free(HttpdConns *k)
{
    if (!k)
        return NULL;
    /* The daemons are stopped: libmicrohttpd said CLOSED for each. */
    while (k->head) {
        Conn *c = k->head;
        k->head = c->next;
        free(c);
    }
    pthread_mutex_destroy(&k->lock);
    free(k);
    return NULL;
}

void *httpd_conns_socket(HttpdConns *k, size_t i)
{
    return &k->socks[i];
}

static bool same_peer(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)(const void *)b)->sin_addr.s_addr;
    if (b->sa_family == AF_INET6) {
        /* One IPv6 peer usually holds a whole /64: compare that much,
         * except for IPv4 addresses on a dual-stack socket. */
        const struct in6_addr *x = &((const struct sockaddr_in6 *)a)->sin6_addr,
                              *y = &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr;
        return memcmp(x, y, IN6_IS_ADDR_V4MAPPED(x) ? sizeof(*x) : 8) == 0;
    }
    return false;
}

static bool is_tcp(const struct sockaddr *addr)
{
    return addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6);
}

/* Under the lock. */
static void shut(HttpdConns *k, Conn *c, int why)
{
    /* libmicrohttpd sees the end of the stream on its next poll and closes
     * the connection itself (it offers no call to close one from outside). */
    shutdown(c->fd, SHUT_RDWR);
    c->shut = true;
    c->sock->shut++;
    atomic_fetch_add(&k->dropped[why], 1);
}

/* Under the lock: whether c's TCP address (an IPv6 one's /64) already has
 * its share of connections (the port aside; whichever socket they came in
 * on). Counted
 * here rather than in an accept policy callback so that the count and the
 * insertion are one step: workers accepting at once cannot both slip in.
 * Unix-socket peers are not limited here: the socket's mode and group say
 * who may connect at all, and the deadline and the per-socket limit bound
 * what each connection can hold. */
static bool peer_over(const HttpdConns *k, const Conn *c)
{
    if (!k->lim.per_peer || !c->tcp)
        return false;
    unsigned n = 0;
    for (const Conn *o = k->head; o; o = o->next)
        if (o != c && o->tcp && !o->shut && same_peer(&o->peer, (const struct sockaddr *)&c->peer))
            n++;
    return n >= k->lim.per_peer;
}

/* Under the lock: past 7/8 of the socket's limit, the oldest connection
 * still reading its request makes room. Refusing newcomers instead would
 * hand the socket to whoever opened connections first. */
static void evict_if_full(HttpdConns *k, Socket *s)
{
    size_t high = (size_t)k->lim.max_connections - k->lim.max_connections / 8;
    if (s->open - s->shut <= high)
        return;
    Conn *oldest = NULL;
    for (Conn *c = k->head; c; c = c->next)
        if (c->sock == s && !c->busy && !c->shut && (!oldest || c->since_ms < oldest->since_ms))
            oldest = c;
    if (oldest)
        shut(k, oldest, DROP_EVICTED);
}

void httpd_conns_notify(void *cls, struct MHD_Connection *mc, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe)
{
    Socket *s = cls;
    HttpdConns *k = s->all;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        Conn *c = calloc(1, sizeof(*c));
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *ad =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (!c || !fd) {
            /* Not tracked, so no deadline: close it at once instead. */
            free(c);
            if (fd)
                shutdown(fd->connect_fd, SHUT_RDWR);
            *socket_context = NULL;
            return;
        }
        c->sock = s;
        c->fd = fd->connect_fd;
        c->since_ms = lv_mono_ms();
        if (ad && ad->client_addr && is_tcp(ad->client_addr)) {
            c->tcp = true;
            memcpy(&c->peer, ad->client_addr,
                   ad->client_addr->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                         : sizeof(struct sockaddr_in6));
        }
        pthread_mutex_lock(&k->lock);
        c->prev = k->tail;
        if (k->tail)
            k->tail->next = c;
        else
            k->head = c;
        k->tail = c;
        k->open++;
        s->open++;
        if (peer_over(k, c))
            shut(k, c, DROP_PEER); /* closed before it was read from: not logged */
        else
            evict_if_full(k, s);
        pthread_mutex_unlock(&k->lock);
        *socket_context = c;
        return;
    }
    Conn *c = *socket_context;
    if (!c)
        return;
    pthread_mutex_lock(&k->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        k->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        k->tail = c->prev;
    k->open--;
    s->open--;
    if (c->shut)
        s->shut--;
    pthread_mutex_unlock(&k->lock);
    free(c);
    *socket_context = NULL;
}

static Conn *conn_of(struct MHD_Connection *mc)
{
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

void httpd_conns_request_read(struct MHD_Connection *mc)
{
    Conn *c = conn_of(mc);
    if (!c || c->busy)
        return;
    HttpdConns *k = c->sock->all;
    pthread_mutex_lock(&k->lock);
    c->busy = true;
    pthread_mutex_unlock(&k->lock);
}

void httpd_conns_request_done(struct MHD_Connection *mc)
{
    Conn *c = conn_of(mc);
    if (!c)
        return;
    HttpdConns *k = c->sock->all;
    pthread_mutex_lock(&k->lock);
    c->busy = false;
    c->since_ms = lv_mono_ms();
    pthread_mutex_unlock(&k->lock);
}

void httpd_conns_sweep(HttpdConns *k, bool stopping)
{
    int64_t now = lv_mono_ms(), limit = (int64_t)k->lim.request_s * 1000;
    size_t open;
    pthread_mutex_lock(&k->lock);
    for (Conn *c = k->head; c && !stopping; c = c->next)
        if (!c->busy && !c->shut && now - c->since_ms >= limit)
            shut(k, c, DROP_DEADLINE);
    open = k->open;
    pthread_mutex_unlock(&k->lock);

    if (!stopping && now - k->last_summary_ms < SUMMARY_EVERY_MS)
        return;
    uint_fast64_t d[_DROP_MAX], sum = 0;
    for (int i = 0; i < _DROP_MAX; i++) {
        d[i] = atomic_load(&k->dropped[i]) - k->logged[i];
        sum += d[i];
    }
    if (sum == 0)
        return; /* quiet: the next drop is told at once */
    for (int i = 0; i < _DROP_MAX; i++)
        k->logged[i] += d[i];
    k->last_summary_ms = now;
    log_notice("connections dropped since the last such line: %" PRIuFAST64
               " past the %u s request deadline, %" PRIuFAST64
               " over the per-peer limit of %u, %" PRIuFAST64
               " evicted at the limit of %u per socket; %zu open (at most one line a minute)",
               d[DROP_DEADLINE], k->lim.request_s, d[DROP_PEER], k->lim.per_peer, d[DROP_EVICTED],
               k->lim.max_connections, open);
}

void httpd_conns_print(HttpdConns *k, const char *name, FILE *f)
{
    pthread_mutex_lock(&k->lock);
    size_t open = k->open;
    pthread_mutex_unlock(&k->lock);
    fprintf(f,
            "# HELP attesto_%s_connections_open Connections open, over all sockets.\n"
            "# TYPE attesto_%s_connections_open gauge\n"
            "attesto_%s_connections_open %zu\n"
            "# HELP attesto_%s_connections_dropped_total Connections refused or closed by the "
            "limits, by reason.\n"
            "# TYPE attesto_%s_connections_dropped_total counter\n",
            name, name, name, open, name, name);
    for (int i = 0; i < _DROP_MAX; i++)
        fprintf(f, "attesto_%s_connections_dropped_total{reason=\"%s\"} %" PRIuFAST64 "\n", name,
                drop_names[i], atomic_load(&k->dropped[i]));
}
