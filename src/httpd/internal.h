/* SPDX-License-Identifier: Apache-2.0 */
/* What the files of the HTTP layer share: the server core (server.c:
 * sockets, libmicrohttpd daemons, bodies and their caps, answers, the main
 * loop with READY/STATUS/STOPPING, idle exit and the graceful stop) serves
 * one route set, a service's (witness.c: witness-serve), with its
 * connections kept in their limits by conns.c. Names declared here carry
 * the httpd_ prefix but are not API: only include/httpd.h is. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>

#include <microhttpd.h>

#include "httpd.h"

typedef struct Httpd Httpd;

/* One request, from its headers to the end of its connection's use of it. */
typedef struct HttpdRequest {
    const struct HttpdRoute *route; /* NULL: no such path */
    void *pending;   /* the route's work handed to a service (freed by request_done) */
    unsigned preset; /* 413 or 415 decided from the headers; the body is drained */
    char *body;      /* the whole body, NUL-terminated (not counted), once read */
    size_t len, cap; /* the body's length, its buffer's size (wiped when freed) */
    size_t drained;  /* bytes of a refused body thrown away */
} HttpdRequest;

/* Called once the request is in full (a POST's body read within the cap,
 * of an accepted type), and again each time its connection is resumed
 * (httpd_resume) while q->pending is set. Queues an answer or suspends. */
typedef enum MHD_Result (*httpd_handler_fn)(Httpd *h, struct MHD_Connection *c, HttpdRequest *q);

typedef struct HttpdRoute {
    const char *path;
    bool post; /* POST with a body; otherwise GET and HEAD */
    /* POST: the accepted media types (NULL-terminated; parameters such as
     * "; charset=utf-8" are allowed after them); others get 415. */
    const char *const *types;
    httpd_handler_fn handle;
} HttpdRoute;

/* A service's route set and its hooks into the core's life. */
typedef struct HttpdService {
    const char *name; /* "witness": logs, and the metrics' prefix attesto_<name>_ */
    const HttpdRoute *routes;
    size_t n_routes;
    void *userdata; /* httpd_userdata() */
    /* Frees q->pending (set by a handler) when the request ends. */
    void (*request_done)(void *userdata, HttpdRequest *q);
    /* The STATUS= line (n_sockets: sockets served). Sent at READY and
     * whenever it changes (looked at every main-loop tick). */
    void (*status)(void *userdata, size_t n_sockets, char *buf, size_t size);
    /* At the graceful stop, after the sockets stopped accepting and the
     * requests in flight had their grace time: answer and resume every
     * suspended connection (libmicrohttpd must not stop with one). */
    void (*stop)(void *userdata);
    /* Optional: true while the service must not exit when idle (an exit
     * would let the next connection start it again, e.g. into one more
     * C_Login with a refused PIN). */
    bool (*hold_idle)(void *userdata);
} HttpdService;

/* What every server has, whichever its routes. */
typedef struct HttpdOptions {
    const char *const *listen; /* "unix:PATH" or "HOST:PORT"; none: systemd's sockets */
    size_t n_listen;
    unsigned threads;     /* worker threads per socket; 0: HTTPD_DEFAULT_THREADS */
    size_t body_max;      /* bytes; larger bodies get 413 */
    unsigned idle_exit_s; /* exit after this long without requests; 0: never */
    bool unix_only;       /* refuse TCP: --listen and systemd's sockets must be AF_UNIX */
    HttpdLimits limits;   /* max_connections, request_s 0: the defaults */
} HttpdOptions;

/* Listens (systemd's sockets or o->listen), serves svc's routes until
 * SIGTERM or SIGINT (or idle exit), then stops gracefully: the sockets stop
 * accepting, requests in flight get a grace time, svc->stop answers what is
 * still suspended, the daemons stop. The caller has started its service
 * (and stops and frees it afterwards). SIGTERM and SIGINT are blocked in
 * every thread the caller starts after httpd_signals_block(). Returns 0
 * after a stop, or an error with detail when it could not serve. */
int httpd_serve(const HttpdOptions *o, const HttpdService *svc);

/* Blocks SIGTERM and SIGINT (so that only the main loop's sigtimedwait()
 * sees them; threads started afterwards inherit the mask) and ignores
 * SIGPIPE; *old is the mask to restore. Call before starting threads. */
void httpd_signals_block(sigset_t *old);

void *httpd_userdata(const Httpd *h);

/* Answers. Each counts its status for the metrics. headers: name, value,
 * ..., NULL (or NULL). */
enum MHD_Result httpd_send_body(Httpd *h, struct MHD_Connection *c, unsigned code, const char *type,
                                const char *body, size_t len, const char *const *headers);
/* {"error":error,"message":message} plus optional extra members (a JSON
 * fragment starting with ','), and a newline. */
enum MHD_Result httpd_send_error(Httpd *h, struct MHD_Connection *c, unsigned code,
                                 const char *error, const char *message, const char *extra,
                                 const char *const *headers);

/* For a service's hold/release callbacks (userdata: the connection):
 * suspend the connection while its work is queued, resume it once done
 * (the route's handler is then called again). */
void httpd_suspend(void *connection);
void httpd_resume(void *connection);

/* For a service's /metrics: the HTTP requests by status code
 * (attesto_<name>_http_requests_total), and the requests being handled
 * (not counting the caller's own). */
void httpd_print_requests(Httpd *h, FILE *f);
int httpd_requests_in_flight(Httpd *h);

/* ---- connections and their limits (conns.c) ---- */

/* Every open connection of every socket: the per-peer limit (TCP), the
 * per-socket limit (past 7/8 of it a new connection evicts the oldest one
 * whose request is unfinished), and the deadline of a whole request, which
 * traffic does not restart. Connections it drops are counted, not logged
 * one by one. */
typedef struct HttpdConns HttpdConns;

/* l: the limits in force (no zeroes); n_sockets daemons will use it. */
int httpd_conns_new(const HttpdLimits *l, size_t n_sockets, HttpdConns **ret);
/* After the daemons stopped (no connection left). NULL ok; returns NULL. */
HttpdConns *httpd_conns_free(HttpdConns *k);
/* The closure for socket i's connection notifications. */
void *httpd_conns_socket(HttpdConns *k, size_t i);
/* libmicrohttpd's MHD_OPTION_NOTIFY_CONNECTION (cls: httpd_conns_socket()). */
void httpd_conns_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode toe);
/* The request of c is in full (its handler runs): no deadline until it is
 * answered. */
void httpd_conns_request_read(struct MHD_Connection *c);
/* The request of c ended: the next one on the connection has a deadline of
 * its own from now. */
void httpd_conns_request_done(struct MHD_Connection *c);
/* From the main loop, a few times a second: closes the connections past
 * their deadline, and logs at most one summary line a minute of what was
 * dropped. stopping: only the summary of what is not told yet. */
void httpd_conns_sweep(HttpdConns *k, bool stopping);
/* The connections' metrics (attesto_<name>_connections_*). */
void httpd_conns_print(HttpdConns *k, const char *name, FILE *f);
