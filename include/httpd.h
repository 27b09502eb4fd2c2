/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP layer (libmicrohttpd, src/httpd/): one core (sockets from
 * systemd or --listen, body caps, idle exit for socket activation, graceful
 * stop on SIGTERM) serving a service's route set. witness-serve: the routes
 * of DESIGN §7 and the per-tenant rate limit. */
#pragma once
#include <stddef.h>

#include "token.h"
#include "witness.h"

#define HTTPD_MAX_LISTEN      8
#define HTTPD_DEFAULT_THREADS 4
#define HTTPD_MAX_THREADS     64
#define HTTPD_DEFAULT_RATE    100.0 /* requests per second per tenant */
#define HTTPD_DEFAULT_BURST   200
#define HTTPD_DEFAULT_BODY    WITNESS_REQUEST_MAX
/* Connection limits (docs/witness.md, "Hostile clients"). */
#define HTTPD_DEFAULT_MAX_CONNECTIONS 2048 /* per socket */
#define HTTPD_MIN_CONNECTIONS         16
#define HTTPD_MAX_CONNECTIONS         65536
#define HTTPD_DEFAULT_PER_PEER        32 /* per TCP peer address, over all sockets */
#define HTTPD_DEFAULT_REQUEST_S       10 /* a whole request, headers and body */
#define HTTPD_MAX_REQUEST_S           3600

/* What keeps hostile clients from taking the sockets away. */
typedef struct HttpdLimits {
    unsigned max_connections; /* per socket; past 7/8 of it the oldest unfinished request goes */
    unsigned per_peer;        /* connections per TCP peer address; 0: no limit (not the
                               * default: callers give HTTPD_DEFAULT_PER_PEER) */
    unsigned request_s;       /* from a connection's start (or its previous answer) to the
                               * end of the request's body; never restarted by traffic */
} HttpdLimits;

/* witness-serve. */
typedef struct HttpdConfig {
    const char *witness_db;
    const char *witness_id;
    TokenConfig token;
    const char *listen[HTTPD_MAX_LISTEN]; /* "unix:PATH" or "HOST:PORT"; none: systemd's sockets */
    size_t n_listen;
    unsigned threads;     /* worker threads per socket */
    size_t body_max;      /* bytes; larger bodies get 413 */
    double rate_per_s;    /* per tenant; 0 disables the limit */
    unsigned rate_burst;  /* bucket size */
    unsigned idle_exit_s; /* exit after this long without requests; 0: never */
    HttpdLimits limits;   /* max_connections, request_s 0: the defaults */
    /* Who may submit for which tenant (witness_tenants_load). NULL: the
     * unix socket's callers may submit for any tenant (the socket's group
     * is the authorization) and TCP callers for none. */
    const struct WitnessTenants *tenants;
} HttpdConfig;

/* Opens the database and the token, listens, and serves until SIGTERM or
 * SIGINT (or idle exit), then lets requests in flight finish. A token that
 * cannot be opened is retried later (requests needing a signature get 503
 * meanwhile), except a rejected or locked PIN, which is never retried and
 * ends the start with that error. Errors that prevent serving are returned
 * with detail; logging of the running server goes through log.h. */
int httpd_run(const HttpdConfig *cfg);
