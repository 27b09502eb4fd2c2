/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP layer's core, whichever service it serves: sockets handed over
 * by systemd or opened from --listen, one libmicrohttpd daemon per socket
 * (its connections kept in their limits by conns.c), request bodies read
 * within their cap, answers and their counts, and the main loop
 * (READY/STATUS/STOPPING, idle exit, graceful stop). */
#include "internal.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "lv.h"

#define DISCARD_MAX       (1024 * 1024) /* drop the connection past this much refused body */
#define STOP_GRACE_MS     10000
#define STATUS_MAX        512
#define IDLE_GRACE_S      5   /* libmicrohttpd's idle timeout: the request deadline + this */
#define FDS_RESERVED      128 /* files the service keeps besides connections */
#define MHD_LOG_BURST     5   /* libmicrohttpd lines logged per window; the rest counted */
#define MHD_LOG_WINDOW_MS 60000

static const unsigned statuses[] = {200, 400, 401, 403, 404, 405, 409,
                                    413, 415, 422, 429, 500, 503, 507};
#define N_STATUS (ELEMENTSOF(statuses) + 1) /* the last slot counts any other code */

struct Httpd {
    const HttpdOptions *opt;
    const HttpdService *svc;

    atomic_uint_fast64_t status_count[N_STATUS];
    atomic_int inflight;
    atomic_int_fast64_t last_activity;

    HttpdLimits lim; /* in force: the options' with defaults, fitted to the fd limit */
    HttpdConns *conns;
    /* libmicrohttpd logs per connection (a client that hung up mid-request):
     * past a burst per window its lines are counted, and the count logged. */
    pthread_mutex_t log_lock;
    int64_t log_window_ms;
    unsigned log_lines;
    uint64_t log_suppressed;

    struct MHD_Daemon *daemons[HTTPD_MAX_LISTEN];
    int fds[HTTPD_MAX_LISTEN];
    size_t n_fds;
};

void *httpd_userdata(const Httpd *h)
{
    return h->svc->userdata;
}

/* ---- answers -------------------------------------------------------------------------------- */

static void count_status(Httpd *h, unsigned code)
{
    size_t i = 0;
    while (i < ELEMENTSOF(statuses) && statuses[i] != code)
        i++;
    atomic_fetch_add(&h->status_count[i], 1);
}

enum MHD_Result httpd_send_body(Httpd *h, struct MHD_Connection *c, unsigned code, const char *type,
                                const char *body, size_t len, const char *const *headers)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    for (size_t i = 0; headers && headers[i]; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
    enum MHD_Result ret = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    count_status(h, code);
    return ret;
}

enum MHD_Result httpd_send_error(Httpd *h, struct MHD_Connection *c, unsigned code,
                                 const char *error, const char *message, const char *extra,
                                 const char *const *headers)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o && cJSON_AddStringToObject(o, "error", error) &&
        cJSON_AddStringToObject(o, "message", message))
        text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        return MHD_NO;
    _cleanup_free_ char *body = NULL;
    size_t n = strlen(text);
    if (extra && n > 0)
        text[n - 1] = '\0'; /* drop '}' to append the extra members */
    int len =
        asprintf(&body, "%s%s%s\n", text, extra && n > 0 ? extra : "", extra && n > 0 ? "}" : "");
    free(text);
    if (len < 0)
        return MHD_NO;
    return httpd_send_body(h, c, code, "application/json", body, (size_t)len, headers);
}

void httpd_suspend(void *connection)
{
    MHD_suspend_connection(connection);
}

void httpd_resume(void *connection)
{
    MHD_resume_connection(connection);
}

void httpd_print_requests(Httpd *h, FILE *f)
{
    httpd_conns_print(h->conns, h->svc->name, f);
    const char *name = h->svc->name;
    fprintf(f,
            "# HELP attesto_%s_http_requests_total HTTP requests by status code.\n"
            "# TYPE attesto_%s_http_requests_total counter\n",
            name, name);
    for (size_t i = 0; i < N_STATUS; i++) {
        char code[8];
        if (i < ELEMENTSOF(statuses))
            snprintf(code, sizeof(code), "%u", statuses[i]);
        else
            snprintf(code, sizeof(code), "other");
        fprintf(f, "attesto_%s_http_requests_total{code=\"%s\"} %" PRIuFAST64 "\n", name, code,
                atomic_load(&h->status_count[i]));
    }
}

int httpd_requests_in_flight(Httpd *h)
{
    return atomic_load(&h->inflight) - 1;
}

/* ---- libmicrohttpd callbacks ---------------------------------------------------------------- */

/* ct is one of types, optionally followed by parameters. */
static bool type_accepted(const char *ct, const char *const *types)
{
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    for (size_t i = 0; types && types[i]; i++) {
        size_t n = strlen(types[i]);
        if (strncasecmp(ct, types[i], n) != 0)
            continue;
        char next = ct[n];
        if (next == '\0' || next == ';' || next == ' ' || next == '\t')
            return true;
    }
    return false;
}

static const HttpdRoute *route_of(const Httpd *h, const char *url)
{
    for (size_t i = 0; i < h->svc->n_routes; i++)
        if (strcmp(url, h->svc->routes[i].path) == 0)
            return &h->svc->routes[i];
    return NULL;
}

static enum MHD_Result send_preset(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    char msg[256];
    if (q->preset == 415) {
        size_t n = (size_t)snprintf(msg, sizeof(msg), "Content-Type: must be ");
        for (size_t i = 0; q->route->types[i] && n < sizeof(msg); i++)
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "%s%s", i ? " or " : "",
                                  q->route->types[i]);
        return httpd_send_error(h, c, 415, "unsupported_media_type", msg, NULL, NULL);
    }
    snprintf(msg, sizeof(msg), "request body: larger than %zu bytes", h->opt->body_max);
    return httpd_send_error(h, c, 413, "too_large", msg, NULL, NULL);
}

/* Bodies may hold payloads in clear: a larger buffer is a new one and the
 * old one is wiped (no realloc leaving copies behind). Room for the whole
 * body at once when its Content-Length is known. */
static int grow_body(Httpd *h, struct MHD_Connection *c, HttpdRequest *q, size_t need)
{
    size_t cap = q->cap ? q->cap : 4096;
    if (!q->cap) {
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long want = cl ? strtoull(cl, NULL, 10) : 0;
        if (want < h->opt->body_max && want + 1 > cap)
            cap = (size_t)want + 1;
    }
    while (cap < need)
        cap = cap > h->opt->body_max / 2 ? h->opt->body_max + 1 : cap * 2;
    char *nb = malloc(cap);
    if (!nb)
        return -ENOMEM;
    if (q->body)
        memcpy(nb, q->body, q->len + 1);
    erase_and_free(q->body, q->cap);
    q->body = nb;
    q->cap = cap;
    return 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    Httpd *h = cls;
    HttpdRequest *q = *con_cls;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (!q) {
        q = calloc(1, sizeof(*q));
        if (!q)
            return MHD_NO;
        *con_cls = q;
        atomic_fetch_add(&h->inflight, 1);
        q->route = route_of(h, url);
        if (q->route && q->route->post && post) {
            const char *ct =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
            const char *cl =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (!type_accepted(ct, q->route->types))
                q->preset = 415;
            else if (cl && strtoull(cl, NULL, 10) > h->opt->body_max)
                q->preset = 413;
            /* Refused on the headers alone: answer before the body is sent
             * (a client waiting on "Expect: 100-continue" never sends it). */
            if (q->preset)
                return send_preset(h, c, q);
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0; /* consumed, even when refused (libmicrohttpd 0.9.75) */
        if (q->preset || !q->route || !q->route->post || !post) {
            q->drained += n;
            return q->drained > DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (n > h->opt->body_max - q->len) {
            q->preset = 413;
            q->body = erase_and_free(q->body, q->cap);
            q->cap = 0;
            q->drained = q->len + n;
            q->len = 0;
            return MHD_YES;
        }
        if (q->len + n + 1 > q->cap && grow_body(h, c, q, q->len + n + 1) < 0)
            return MHD_NO;
        memcpy(q->body + q->len, upload_data, n);
        q->len += n;
        q->body[q->len] = '\0';
        return MHD_YES;
    }

    if (!q->route)
        return httpd_send_error(h, c, 404, "not_found", "no such resource", NULL, NULL);
    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    if (q->route->post && !post) {
        const char *hd[] = {MHD_HTTP_HEADER_ALLOW, "POST", NULL};
        return httpd_send_error(h, c, 405, "method_not_allowed", "use POST", NULL, hd);
    }
    if (!q->route->post && !get) {
        const char *hd[] = {MHD_HTTP_HEADER_ALLOW, "GET, HEAD", NULL};
        return httpd_send_error(h, c, 405, "method_not_allowed", "use GET", NULL, hd);
    }
    /* Read in full: the request deadline no longer applies. */
    httpd_conns_request_read(c);
    if (q->preset)
        return send_preset(h, c, q);
    return q->route->handle(h, c, q);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    Httpd *h = cls;
    HttpdRequest *q = *con_cls;
    httpd_conns_request_done(c);
    if (!q)
        return;
    if (q->pending && h->svc->request_done)
        h->svc->request_done(h->svc->userdata, q);
    erase_and_free(q->body, q->cap);
    free(q);
    *con_cls = NULL;
    atomic_store(&h->last_activity, lv_mono_ms());
    atomic_fetch_sub(&h->inflight, 1);
}

/* libmicrohttpd's error log: fmt is its own printf format. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    Httpd *h = cls;
    pthread_mutex_lock(&h->log_lock);
    bool quiet = h->log_lines >= MHD_LOG_BURST;
    if (quiet)
        h->log_suppressed++;
    else
        h->log_lines++;
    pthread_mutex_unlock(&h->log_lock);
    if (quiet)
        return;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_notice("libmicrohttpd: %s", line);
}

/* From the main loop: one line for what mhd_log() held back in the window
 * (at its end, or when stopping). */
static void mhd_log_window(Httpd *h, bool stopping)
{
    int64_t now = lv_mono_ms();
    pthread_mutex_lock(&h->log_lock);
    uint64_t n = 0;
    if (stopping || now - h->log_window_ms >= MHD_LOG_WINDOW_MS) {
        n = h->log_suppressed;
        h->log_suppressed = 0;
        h->log_lines = 0;
        h->log_window_ms = now;
    }
    pthread_mutex_unlock(&h->log_lock);
    if (n)
        log_notice("libmicrohttpd: %" PRIu64 " more messages not logged (at most %d a minute)", n,
                   MHD_LOG_BURST);
}

/* ---- sockets -------------------------------------------------------------------------------- */

static int listen_unix(const char *path, int *ret)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path) || !*path)
        return lv_error_set(LV_ERR_INPUT, "--listen unix:%s: path empty or longer than %zu bytes",
                            path, sizeof(sa.sun_path) - 1);
    memcpy(sa.sun_path, path, strlen(path));
    struct stat st;
    if (lstat(path, &st) == 0) {
        /* A socket left by an earlier run may be replaced; anything else is
         * someone's file. */
        if (!S_ISSOCK(st.st_mode))
            return lv_error_set(LV_ERR_INPUT, "--listen unix:%s: exists and is not a socket", path);
        unlink(path);
    }
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lv_error_set(-errno, "socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0660) < 0 ||
        listen(fd, SOMAXCONN) < 0)
        return lv_error_set(-errno, "--listen unix:%s: %s", path, strerror(errno));
    *ret = fd;
    fd = -1;
    return 0;
}

static int listen_tcp(const char *spec, int *ret)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1] || (size_t)(colon - spec) >= sizeof(host))
        return lv_error_set(LV_ERR_INPUT, "--listen %s: must be unix:PATH or HOST:PORT", spec);
    const char *h = spec, *port = colon + 1;
    size_t hl = (size_t)(colon - spec);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9')
            return lv_error_set(LV_ERR_INPUT, "--listen %s: port must be a number", spec);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int e = getaddrinfo(host, port, &hints, &ai);
    if (e != 0)
        return lv_error_set(LV_ERR_INPUT, "--listen %s: %s", spec, gai_strerror(e));
    int r = lv_error_set(-EADDRNOTAVAIL, "--listen %s: no usable address", spec);
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
            *ret = fd;
            r = 0;
            break;
        }
        r = lv_error_set(-errno, "--listen %s: %s", spec, strerror(errno));
        close(fd);
    }
    freeaddrinfo(ai);
    return r;
}

static int open_sockets(Httpd *s)
{
    const HttpdOptions *c = s->opt;
    if (c->n_listen > 0) {
        for (size_t i = 0; i < c->n_listen; i++) {
            int fd = -1, r;
            if (strncmp(c->listen[i], "unix:", 5) == 0)
                r = listen_unix(c->listen[i] + 5, &fd);
            else if (c->unix_only)
                r = lv_error_set(LV_ERR_INPUT,
                                 "--listen %s: must be unix:PATH (local callers only)",
                                 c->listen[i]);
            else
                r = listen_tcp(c->listen[i], &fd);
            if (r < 0)
                return r;
            s->fds[s->n_fds++] = fd;
            log_info("listening on %s", c->listen[i]);
        }
        return 0;
    }
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names);
    if (n < 0)
        return lv_error_set(n, "systemd sockets: %s", strerror(-n));
    if (n == 0)
        return lv_error_set(LV_ERR_INPUT,
                            "no sockets: give --listen unix:PATH%s or start under systemd socket "
                            "activation",
                            c->unix_only ? "" : "|HOST:PORT");
    int r = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";
        if (r == 0 && (size_t)i >= HTTPD_MAX_LISTEN)
            r = lv_error_set(LV_ERR_INPUT, "systemd sockets: more than %d", HTTPD_MAX_LISTEN);
        else if (r == 0 &&
                 sd_is_socket(fd, c->unix_only ? AF_UNIX : AF_UNSPEC, SOCK_STREAM, 1) <= 0)
            r = lv_error_set(LV_ERR_INPUT, "systemd socket %s (fd %d): not a listening %s socket",
                             name, fd, c->unix_only ? "unix stream" : "stream");
        else if (r == 0) {
            s->fds[s->n_fds++] = fd;
            log_info("listening on systemd socket %s (fd %d)", name, fd);
        }
        if (names)
            free(names[i]);
    }
    free(names);
    return r;
}

static int start_daemons(Httpd *s)
{
    unsigned threads = s->opt->threads ? s->opt->threads : HTTPD_DEFAULT_THREADS;
    int r = httpd_conns_new(&s->lim, s->n_fds, &s->conns);
    if (r < 0)
        return lv_error_set(r, "connections: %s", strerror(-r));
    for (size_t i = 0; i < s->n_fds; i++) {
        void *sock = httpd_conns_socket(s->conns, i);
        struct MHD_OptionItem ops[] = {
            /* The logger first, or libmicrohttpd reports through its own. */
            {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, s},
            {MHD_OPTION_LISTEN_SOCKET, s->fds[i], NULL},
            /* conns.c evicts past 7/8 of this; libmicrohttpd's own cap
             * stops accepting at it. */
            {MHD_OPTION_CONNECTION_LIMIT, s->lim.max_connections, NULL},
            /* libmicrohttpd's timeout restarts on every byte: conns.c
             * keeps the request deadline. This one, a little later, is
             * for an answer the client does not read. */
            {MHD_OPTION_CONNECTION_TIMEOUT, s->lim.request_s + IDLE_GRACE_S, NULL},
            {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)httpd_conns_notify, sock},
            {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)completed, s},
            {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, NULL},
            {MHD_OPTION_END, 0, NULL},
        };
        /* poll(), not epoll: with a thread pool, libmicrohttpd 0.9.75's
         * MHD_quiesce_daemon() on epoll races its workers over the listen
         * socket's epoll registration and aborts the process ("Failed to
         * remove listen FD from epoll set") in about one stop in six. */
        s->daemons[i] =
            MHD_start_daemon(MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_ALLOW_SUSPEND_RESUME |
                                 MHD_USE_ERROR_LOG,
                             0, NULL, NULL, handle, s, MHD_OPTION_ARRAY, ops, MHD_OPTION_END);
        if (!s->daemons[i])
            return lv_error_set(-EIO, "libmicrohttpd: cannot serve socket fd %d", s->fds[i]);
    }
    return 0;
}

/* Stops accepting, lets requests in flight finish (bounded), has the
 * service answer what is still suspended, then stops. */
static void stop_daemons(Httpd *s)
{
    for (size_t i = 0; i < s->n_fds; i++)
        if (s->daemons[i]) {
            MHD_socket fd = MHD_quiesce_daemon(s->daemons[i]);
            if (fd >= 0 && fd == s->fds[i]) {
                close(fd);
                s->fds[i] = -1;
            }
        }
    int64_t deadline = lv_mono_ms() + STOP_GRACE_MS;
    while (atomic_load(&s->inflight) > 0 && lv_mono_ms() < deadline) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* libmicrohttpd must not be stopped with a connection suspended: the
     * service answers and resumes whatever is still queued first. */
    if (s->svc->stop)
        s->svc->stop(s->svc->userdata);
    for (size_t i = 0; i < s->n_fds; i++) {
        if (s->daemons[i])
            MHD_stop_daemon(s->daemons[i]);
        s->daemons[i] = NULL;
        if (s->fds[i] >= 0)
            close(s->fds[i]);
        s->fds[i] = -1;
    }
}

/* The limits in force: the options' with their defaults, and no more
 * connections than the open-file limit holds (raised to its hard limit if
 * needed; connections past it would fail in accept() instead). */
static void fit_limits(Httpd *s)
{
    const HttpdLimits *o = &s->opt->limits;
    s->lim = (HttpdLimits){
        .max_connections = o->max_connections ? o->max_connections : HTTPD_DEFAULT_MAX_CONNECTIONS,
        .per_peer = o->per_peer,
        .request_s = o->request_s ? o->request_s : HTTPD_DEFAULT_REQUEST_S,
    };
    rlim_t need = (rlim_t)s->n_fds * s->lim.max_connections + FDS_RESERVED;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlim_t fit = rl.rlim_cur > FDS_RESERVED + HTTPD_MIN_CONNECTIONS * s->n_fds
                         ? (rl.rlim_cur - FDS_RESERVED) / s->n_fds
                         : HTTPD_MIN_CONNECTIONS;
        log_warning("--max-connections %u: %zu socket(s) would need %llu open files, the limit "
                    "is %llu; serving at most %llu connections per socket",
                    s->lim.max_connections, s->n_fds, (unsigned long long)need,
                    (unsigned long long)rl.rlim_cur, (unsigned long long)fit);
        s->lim.max_connections = (unsigned)fit;
    }
}

/* The service's STATUS= line; true when it changed. */
static bool update_status(Httpd *s, char *status, size_t len)
{
    char next[STATUS_MAX] = "";
    if (s->svc->status)
        s->svc->status(s->svc->userdata, s->n_fds, next, sizeof(next));
    else
        snprintf(next, sizeof(next), "%s serving %zu socket(s)", s->svc->name, s->n_fds);
    if (strcmp(next, status) == 0)
        return false;
    snprintf(status, len, "%s", next);
    return true;
}

void httpd_signals_block(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, old);
    signal(SIGPIPE, SIG_IGN);
}

int httpd_serve(const HttpdOptions *o, const HttpdService *svc)
{
    Httpd *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->opt = o;
    s->svc = svc;
    for (size_t i = 0; i < HTTPD_MAX_LISTEN; i++)
        s->fds[i] = -1;
    atomic_store(&s->last_activity, lv_mono_ms());
    pthread_mutex_init(&s->log_lock, NULL);
    s->log_window_ms = lv_mono_ms();

    /* The caller blocked these (httpd_signals_block) before its threads
     * started: only this loop's sigtimedwait() sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);

    int r = open_sockets(s);
    if (r >= 0) {
        fit_limits(s);
        r = start_daemons(s);
    }
    if (r < 0)
        goto done;

    char status[STATUS_MAX] = "";
    update_status(s, status, sizeof(status));
    sd_notifyf(0, "READY=1\nSTATUS=%s", status);
    log_info("%s serving (%zu socket(s), %u threads each; at most %u connections per socket, "
             "%u per TCP peer (0: no limit), %u s per request)",
             svc->name, s->n_fds, o->threads ? o->threads : HTTPD_DEFAULT_THREADS,
             s->lim.max_connections, s->lim.per_peer, s->lim.request_s);
    for (;;) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
        httpd_conns_sweep(s->conns, false);
        mhd_log_window(s, false);
        if (update_status(s, status, sizeof(status)))
            sd_notifyf(0, "STATUS=%s", status);
        if (o->idle_exit_s && atomic_load(&s->inflight) == 0 &&
            !(svc->hold_idle && svc->hold_idle(svc->userdata)) &&
            lv_mono_ms() - atomic_load(&s->last_activity) >= (int64_t)o->idle_exit_s * 1000) {
            log_info("idle for %us: exiting (the socket stays with systemd)", o->idle_exit_s);
            break;
        }
    }
    sd_notify(0, "STOPPING=1");
    r = 0;
done:
    stop_daemons(s);
    if (s->conns) {
        httpd_conns_sweep(s->conns, true);
        mhd_log_window(s, true);
    }
    s->conns = httpd_conns_free(s->conns);
    pthread_mutex_destroy(&s->log_lock);
    free(s);
    return r;
}
