/* SPDX-License-Identifier: Apache-2.0 */
/* witness-serve: the witness over HTTP/1.1 with libmicrohttpd, on sockets
 * handed over by systemd or opened from --listen. */
#include "httpd.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include <microhttpd.h>
#include <systemd/sd-daemon.h>

#include "log.h"
#include "lv.h"
#include "pubkey.h"
#include "version.h"
#include "witness.h"

#define ROUTE_CHECKPOINTS "/v1/witness/checkpoints"
#define ROUTE_IDENTITY    "/v1/witness/identity"
#define ROUTE_HEALTH      "/healthz"
#define ROUTE_METRICS     "/metrics"

#define RATE_SLOTS         1024
#define DISCARD_MAX        (1024 * 1024) /* drop the connection past this much refused body */
#define STOP_GRACE_MS      10000
#define CONNECTION_LIMIT   256
#define CONNECTION_TIMEOUT 30

static const unsigned statuses[] = {200, 400, 404, 405, 409, 413, 415, 422, 429, 500, 503};
#define N_STATUS (ELEMENTSOF(statuses) + 1) /* the last slot counts any other code */

typedef struct Bucket {
    char tenant[129];
    double tokens;
    int64_t last_ms;
} Bucket;

/* A checkpoint request handed to the witness service; its connection is
 * suspended until the service has decided on it. */
typedef struct Pending {
    WitnessRequest req;
    cJSON *tree;          /* req's strings */
    WitnessTicket ticket; /* userdata: the connection */
} Pending;

typedef struct Server {
    const HttpdConfig *cfg;
    WitnessService *svc;

    pthread_mutex_t rate_lock;
    Bucket buckets[RATE_SLOTS];
    size_t n_buckets;

    atomic_uint_fast64_t decisions[_WITNESS_RESULT_MAX];
    atomic_uint_fast64_t forks[_WITNESS_REASON_MAX];
    atomic_uint_fast64_t status_count[N_STATUS];
    atomic_int inflight;
    atomic_int_fast64_t last_activity;

    struct MHD_Daemon *daemons[HTTPD_MAX_LISTEN];
    int fds[HTTPD_MAX_LISTEN];
    size_t n_fds;
} Server;

enum { R_NONE, R_CHECKPOINTS, R_IDENTITY, R_HEALTH, R_METRICS };

typedef struct Req {
    int route;
    Pending *pending; /* a checkpoint with the committer, or answered by it */
    unsigned preset;  /* 413 or 415 decided from the headers; the body is drained */
    char *body;
    size_t len;
    size_t drained;
} Req;

/* ---- rate limit ------------------------------------------------------------------------------ */

/* A token bucket per tenant. The table is bounded; when full, the bucket
 * idle longest is recycled (it was refilling towards full anyway). */
static bool rate_take(Server *s, const char *tenant, unsigned *ret_retry_s)
{
    const HttpdConfig *c = s->cfg;
    if (c->rate_per_s <= 0)
        return true;
    int64_t now = lv_mono_ms();
    pthread_mutex_lock(&s->rate_lock);
    Bucket *b = NULL, *oldest = NULL;
    for (size_t i = 0; i < s->n_buckets; i++) {
        if (strcmp(s->buckets[i].tenant, tenant) == 0) {
            b = &s->buckets[i];
            break;
        }
        if (!oldest || s->buckets[i].last_ms < oldest->last_ms)
            oldest = &s->buckets[i];
    }
    if (!b) {
        b = s->n_buckets < RATE_SLOTS ? &s->buckets[s->n_buckets++] : oldest;
        snprintf(b->tenant, sizeof(b->tenant), "%s", tenant);
        b->tokens = c->rate_burst;
        b->last_ms = now;
    }
    b->tokens = fmin((double)c->rate_burst,
                     b->tokens + (double)(now - b->last_ms) * c->rate_per_s / 1000.0);
    b->last_ms = now;
    bool ok = b->tokens >= 1.0;
    if (ok)
        b->tokens -= 1.0;
    else
        *ret_retry_s = (unsigned)ceil((1.0 - b->tokens) / c->rate_per_s);
    pthread_mutex_unlock(&s->rate_lock);
    return ok;
}

/* ---- responses ------------------------------------------------------------------------------ */

static void count_status(Server *s, unsigned code)
{
    size_t i = 0;
    while (i < ELEMENTSOF(statuses) && statuses[i] != code)
        i++;
    atomic_fetch_add(&s->status_count[i], 1);
}

static enum MHD_Result send_body(Server *s, struct MHD_Connection *c, unsigned code,
                                 const char *type, const char *body, size_t len,
                                 const char *const *headers)
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
    count_status(s, code);
    return ret;
}

/* {"error":code,"message":detail} plus optional extra members (a JSON
 * fragment starting with ','). */
static enum MHD_Result send_error(Server *s, struct MHD_Connection *c, unsigned code,
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
    return send_body(s, c, code, "application/json", body, (size_t)len, headers);
}

static enum MHD_Result send_document(Server *s, struct MHD_Connection *c, unsigned code,
                                     const char *result, const char *doc, size_t len)
{
    /* The same bytes the CLI prints: the document and a newline. */
    _cleanup_free_ char *body = malloc(len + 1);
    if (!body)
        return MHD_NO;
    memcpy(body, doc, len);
    body[len] = '\n';
    const char *headers[] = {"Attesto-Witness-Result", result, NULL};
    return send_body(s, c, code, "application/json", body, len + 1, headers);
}

/* ---- the witness service ----------------------------------------------------------------- */

static void suspend_conn(void *userdata)
{
    MHD_suspend_connection(userdata);
}

static void resume_conn(void *userdata)
{
    MHD_resume_connection(userdata);
}

static void pending_free(Pending *p)
{
    if (!p)
        return;
    witness_outcome_done(&p->ticket.job.out);
    cJSON_Delete(p->tree);
    free(p);
}

/* ---- routes --------------------------------------------------------------------------------- */

static enum MHD_Result answer_checkpoint(Server *s, struct MHD_Connection *c, Pending *p);

/* Parses and queues a checkpoint (the connection is suspended until the
 * committer has decided on it), or answers a refusal at once. */
static enum MHD_Result post_checkpoint(Server *s, struct MHD_Connection *c, Req *q)
{
    Pending *p = calloc(1, sizeof(*p));
    if (!p)
        return MHD_NO;
    WitnessRequest req;
    cJSON *tree = NULL;
    lv_error_clear();
    int r = witness_request_parse(q->body ? q->body : "", q->len, &req, &tree);
    if (r < 0) {
        free(p);
        if (r == LV_ERR_TOOBIG)
            return send_error(s, c, 413, "too_large", lv_error(), NULL, NULL);
        return send_error(s, c, 400, "invalid_request", lv_error(), NULL, NULL);
    }
    unsigned retry = 0;
    if (!rate_take(s, req.tenant_id, &retry)) {
        char secs[16], msg[200];
        snprintf(secs, sizeof(secs), "%u", retry ? retry : 1);
        snprintf(msg, sizeof(msg), "tenant_id %s: over %.0f checkpoints per second; retry later",
                 req.tenant_id, s->cfg->rate_per_s);
        cJSON_Delete(tree);
        free(p);
        const char *h[] = {MHD_HTTP_HEADER_RETRY_AFTER, secs, NULL};
        return send_error(s, c, 429, "rate_limited", msg, NULL, h);
    }
    p->req = req;
    p->tree = tree;
    p->ticket = (WitnessTicket){
        .req = &p->req, .hold = suspend_conn, .release = resume_conn, .userdata = c};
    q->pending = p;
    if (!witness_service_submit(s->svc, &p->ticket)) {
        const char *h[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
        return send_error(s, c, 503, "stopping", "the witness is stopping; retry later", NULL, h);
    }
    return MHD_YES;
}

/* The committer's decision on a queued checkpoint, after its COMMIT. */
static enum MHD_Result answer_checkpoint(Server *s, struct MHD_Connection *c, Pending *p)
{
    int r = p->ticket.job.r;
    const WitnessRequest req = p->req;
    WitnessOutcome out = p->ticket.job.out;
    const char *detail = p->ticket.job.detail;

    if (r < 0) {
        if (r == LV_ERR_INPUT || r == LV_ERR_TOOBIG)
            return send_error(s, c, 400, "invalid_request", detail, NULL, NULL);
        const char *h[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
        if (lv_is_token_error(r))
            return send_error(s, c, 503, "token_unavailable", detail, NULL, h);
        if (r == -EBUSY)
            return send_error(s, c, 503, "database_busy", detail, NULL, h);
        log_error("witness: %s", detail);
        return send_error(s, c, 500, "internal_error", detail, NULL, NULL);
    }
    atomic_fetch_add(&s->decisions[out.result], 1);
    if (out.result == WITNESS_FORK)
        atomic_fetch_add(&s->forks[out.reason], 1);
    enum MHD_Result ret;
    switch (out.result) {
    case WITNESS_ACCEPTED:
    case WITNESS_REPLAYED:
        ret = send_document(s, c, 200, witness_result_name(out.result), out.document,
                            out.document_len);
        break;
    case WITNESS_FORK:
        ret = send_document(s, c, 409, "fork_evidence", out.document, out.document_len);
        break;
    default: {
        char msg[256], extra[128];
        snprintf(msg, sizeof(msg),
                 "checkpoint_seq_no %" PRId64 " skips ahead of the head at %" PRId64
                 "; submit %" PRId64 " first (nothing signed)",
                 req.seq, out.head_seq, out.head_seq + 1);
        snprintf(extra, sizeof(extra),
                 ",\"head_seq_no\":%" PRId64 ",\"checkpoint_seq_no\":%" PRId64, out.head_seq,
                 req.seq);
        ret = send_error(s, c, 422, "checkpoint_gap", msg, extra, NULL);
    }
    }
    return ret;
}

static enum MHD_Result get_identity(Server *s, struct MHD_Connection *c)
{
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    char kid[TOKEN_KID_MAX], err[300];
    if (!witness_service_identity(s->svc, pk, kid, err, sizeof(err))) {
        const char *h[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
        return send_error(s, c, 503, "token_unavailable", err, NULL, h);
    }
    cJSON *o = cJSON_CreateObject(), *pko = NULL;
    char *text = NULL;
    if (o && pubkey_json(pk, kid, &pko) >= 0 &&
        cJSON_AddStringToObject(o, "witness_id", s->cfg->witness_id) &&
        cJSON_AddItemToObject(o, "public_key", pko) &&
        cJSON_AddStringToObject(o, "receipt_domain", WITNESS_RECEIPT_DOMAIN) &&
        cJSON_AddStringToObject(o, "fork_evidence_domain", WITNESS_FORK_DOMAIN) &&
        cJSON_AddStringToObject(o, "version", LV_VERSION))
        text = cJSON_PrintUnformatted(o);
    else if (pko && !cJSON_GetObjectItem(o, "public_key"))
        cJSON_Delete(pko);
    cJSON_Delete(o);
    if (!text)
        return MHD_NO;
    _cleanup_free_ char *body = NULL;
    int len = asprintf(&body, "%s\n", text);
    free(text);
    if (len < 0)
        return MHD_NO;
    return send_body(s, c, 200, "application/json", body, (size_t)len, NULL);
}

static enum MHD_Result get_health(Server *s, struct MHD_Connection *c)
{
    int db = witness_service_ping(s->svc);
    bool token = witness_service_token_up(s->svc, true, NULL);
    char body[128];
    int n =
        snprintf(body, sizeof(body), "{\"status\":\"%s\",\"database\":\"%s\",\"token\":\"%s\"}\n",
                 db >= 0 && token ? "ok" : "degraded", db >= 0 ? "ok" : "failed",
                 token ? "ok" : "unavailable");
    return send_body(s, c, db >= 0 && token ? 200 : 503, "application/json", body, (size_t)n, NULL);
}

static enum MHD_Result get_metrics(Server *s, struct MHD_Connection *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return MHD_NO;
    fprintf(f, "# HELP attesto_witness_decisions_total Witness decisions by result.\n"
               "# TYPE attesto_witness_decisions_total counter\n");
    for (int i = 0; i < _WITNESS_RESULT_MAX; i++)
        fprintf(f, "attesto_witness_decisions_total{result=\"%s\"} %" PRIuFAST64 "\n",
                witness_result_name(i), atomic_load(&s->decisions[i]));
    fprintf(f, "# HELP attesto_witness_fork_evidence_total Fork evidence answered, by reason.\n"
               "# TYPE attesto_witness_fork_evidence_total counter\n");
    for (int i = 1; i < _WITNESS_REASON_MAX; i++)
        fprintf(f, "attesto_witness_fork_evidence_total{reason=\"%s\"} %" PRIuFAST64 "\n",
                witness_reason_name(i), atomic_load(&s->forks[i]));
    fprintf(f, "# HELP attesto_witness_http_requests_total HTTP requests by status code.\n"
               "# TYPE attesto_witness_http_requests_total counter\n");
    for (size_t i = 0; i < N_STATUS; i++) {
        char code[8];
        if (i < ELEMENTSOF(statuses))
            snprintf(code, sizeof(code), "%u", statuses[i]);
        else
            snprintf(code, sizeof(code), "other");
        fprintf(f, "attesto_witness_http_requests_total{code=\"%s\"} %" PRIuFAST64 "\n", code,
                atomic_load(&s->status_count[i]));
    }
    uint64_t failures = 0;
    bool token = witness_service_token_up(s->svc, false, &failures);
    fprintf(f,
            "# HELP attesto_witness_token_failures_total Token operations that failed.\n"
            "# TYPE attesto_witness_token_failures_total counter\n"
            "attesto_witness_token_failures_total %" PRIuFAST64 "\n"
            "# HELP attesto_witness_token_up Whether the signing token is open.\n"
            "# TYPE attesto_witness_token_up gauge\n"
            "attesto_witness_token_up %d\n"
            "# HELP attesto_witness_requests_in_flight Requests being handled.\n"
            "# TYPE attesto_witness_requests_in_flight gauge\n"
            "attesto_witness_requests_in_flight %d\n",
            (uint_fast64_t)failures, token ? 1 : 0, atomic_load(&s->inflight) - 1);
    if (fclose(f) != 0) {
        free(buf);
        return MHD_NO;
    }
    enum MHD_Result ret =
        send_body(s, c, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len, NULL);
    free(buf);
    return ret;
}

/* ---- libmicrohttpd callbacks ------------------------------------------------------------------
 */

static bool is_json_type(const char *ct)
{
    if (!ct)
        return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, "application/json", 16) != 0)
        return false;
    char next = ct[16];
    return next == '\0' || next == ';' || next == ' ' || next == '\t';
}

static int route_of(const char *url)
{
    if (strcmp(url, ROUTE_CHECKPOINTS) == 0)
        return R_CHECKPOINTS;
    if (strcmp(url, ROUTE_IDENTITY) == 0)
        return R_IDENTITY;
    if (strcmp(url, ROUTE_HEALTH) == 0)
        return R_HEALTH;
    if (strcmp(url, ROUTE_METRICS) == 0)
        return R_METRICS;
    return R_NONE;
}

static enum MHD_Result send_preset(Server *s, struct MHD_Connection *c, Req *q)
{
    char msg[160];
    if (q->preset == 415)
        return send_error(s, c, 415, "unsupported_media_type",
                          "Content-Type: must be application/json", NULL, NULL);
    snprintf(msg, sizeof(msg), "request body: larger than %zu bytes", s->cfg->body_max);
    return send_error(s, c, 413, "too_large", msg, NULL, NULL);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls)
{
    Server *s = cls;
    Req *q = *con_cls;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (!q) {
        q = calloc(1, sizeof(*q));
        if (!q)
            return MHD_NO;
        *con_cls = q;
        atomic_fetch_add(&s->inflight, 1);
        q->route = route_of(url);
        if (q->route == R_CHECKPOINTS && post) {
            const char *ct =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
            const char *cl =
                MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (!is_json_type(ct))
                q->preset = 415;
            else if (cl && strtoull(cl, NULL, 10) > s->cfg->body_max)
                q->preset = 413;
            /* Refused on the headers alone: answer before the body is sent
             * (a client waiting on "Expect: 100-continue" never sends it). */
            if (q->preset)
                return send_preset(s, c, q);
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0; /* consumed, even when refused (libmicrohttpd 0.9.75) */
        if (q->preset || q->route != R_CHECKPOINTS || !post) {
            q->drained += n;
            return q->drained > DISCARD_MAX ? MHD_NO : MHD_YES;
        }
        if (n > s->cfg->body_max - q->len) {
            q->preset = 413;
            q->body = erase_and_free(q->body, q->len);
            q->drained = q->len + n;
            q->len = 0;
            return MHD_YES;
        }
        char *nb = realloc(q->body, q->len + n + 1);
        if (!nb)
            return MHD_NO;
        q->body = nb;
        memcpy(q->body + q->len, upload_data, n);
        q->len += n;
        q->body[q->len] = '\0';
        return MHD_YES;
    }

    bool get =
        strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    switch (q->route) {
    case R_CHECKPOINTS:
        if (!post) {
            const char *h[] = {MHD_HTTP_HEADER_ALLOW, "POST", NULL};
            return send_error(s, c, 405, "method_not_allowed", "use POST", NULL, h);
        }
        if (q->preset)
            return send_preset(s, c, q);
        if (q->pending) /* resumed by the witness service */
            return witness_service_answered(s->svc, &q->pending->ticket)
                       ? answer_checkpoint(s, c, q->pending)
                       : MHD_YES;
        return post_checkpoint(s, c, q);
    case R_IDENTITY:
    case R_HEALTH:
    case R_METRICS:
        if (!get) {
            const char *h[] = {MHD_HTTP_HEADER_ALLOW, "GET, HEAD", NULL};
            return send_error(s, c, 405, "method_not_allowed", "use GET", NULL, h);
        }
        return q->route == R_IDENTITY ? get_identity(s, c)
               : q->route == R_HEALTH ? get_health(s, c)
                                      : get_metrics(s, c);
    default:
        return send_error(s, c, 404, "not_found", "no such resource", NULL, NULL);
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    Server *s = cls;
    Req *q = *con_cls;
    if (!q)
        return;
    pending_free(q->pending);
    free(q->body);
    free(q);
    *con_cls = NULL;
    atomic_store(&s->last_activity, lv_mono_ms());
    atomic_fetch_sub(&s->inflight, 1);
}

/* libmicrohttpd's error log: fmt is its own printf format. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_notice("libmicrohttpd: %s", line);
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

static int open_sockets(Server *s)
{
    const HttpdConfig *c = s->cfg;
    if (c->n_listen > 0) {
        for (size_t i = 0; i < c->n_listen; i++) {
            int fd = -1, r;
            if (strncmp(c->listen[i], "unix:", 5) == 0)
                r = listen_unix(c->listen[i] + 5, &fd);
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
        return lv_error_set(LV_ERR_INPUT, "no sockets: give --listen unix:PATH|HOST:PORT or start "
                                          "under systemd socket activation");
    int r = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *name = names && names[i] ? names[i] : "unknown";
        if (r == 0 && (size_t)i >= HTTPD_MAX_LISTEN)
            r = lv_error_set(LV_ERR_INPUT, "systemd sockets: more than %d", HTTPD_MAX_LISTEN);
        else if (r == 0 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
            r = lv_error_set(LV_ERR_INPUT,
                             "systemd socket %s (fd %d): not a listening stream "
                             "socket",
                             name, fd);
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

static int start_daemons(Server *s)
{
    unsigned threads = s->cfg->threads ? s->cfg->threads : HTTPD_DEFAULT_THREADS;
    for (size_t i = 0; i < s->n_fds; i++) {
        struct MHD_OptionItem ops[] = {
            /* The logger first, or libmicrohttpd reports through its own. */
            {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, s},
            {MHD_OPTION_LISTEN_SOCKET, s->fds[i], NULL},
            {MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT, NULL},
            {MHD_OPTION_CONNECTION_TIMEOUT, CONNECTION_TIMEOUT, NULL},
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

/* Stops accepting, lets requests in flight finish (bounded), then stops. */
static void stop_daemons(Server *s)
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
     * witness service answers and resumes whatever is still queued first. */
    witness_service_stop(s->svc);
    for (size_t i = 0; i < s->n_fds; i++) {
        if (s->daemons[i])
            MHD_stop_daemon(s->daemons[i]);
        if (s->fds[i] >= 0)
            close(s->fds[i]);
    }
}

int httpd_run(const HttpdConfig *cfg)
{
    static Server server; /* large (rate table); one per process */
    Server *s = &server;
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    for (size_t i = 0; i < HTTPD_MAX_LISTEN; i++)
        s->fds[i] = -1;
    pthread_mutex_init(&s->rate_lock, NULL);
    atomic_store(&s->last_activity, lv_mono_ms());

    /* Every thread started below inherits this mask, so SIGTERM and SIGINT
     * reach only the sigtimedwait() of the main loop. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    signal(SIGPIPE, SIG_IGN);

    int r = witness_service_start(cfg->witness_db, cfg->witness_id, &cfg->token, &s->svc);
    if (r < 0)
        goto done;
    if ((r = open_sockets(s)) < 0 || (r = start_daemons(s)) < 0)
        goto done;

    sd_notifyf(0, "READY=1\nSTATUS=witness %s serving %zu socket(s)", cfg->witness_id, s->n_fds);
    log_info("witness %s serving (%zu socket(s), %u threads each)", cfg->witness_id, s->n_fds,
             cfg->threads ? cfg->threads : HTTPD_DEFAULT_THREADS);
    for (;;) {
        struct timespec ts = {0, 250 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            log_info("%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            break;
        }
        if (cfg->idle_exit_s && atomic_load(&s->inflight) == 0 &&
            lv_mono_ms() - atomic_load(&s->last_activity) >= (int64_t)cfg->idle_exit_s * 1000) {
            log_info("idle for %us: exiting (the socket stays with systemd)", cfg->idle_exit_s);
            break;
        }
    }
    sd_notify(0, "STOPPING=1");
    r = 0;
done:
    stop_daemons(s);
    for (size_t i = 0; i < HTTPD_MAX_LISTEN; i++)
        s->daemons[i] = NULL;
    s->svc = witness_service_free(s->svc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_destroy(&s->rate_lock);
    return r;
}
