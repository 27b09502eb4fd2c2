/* SPDX-License-Identifier: Apache-2.0 */
/* witness-serve's routes: checkpoints handed to the witness service (each
 * answered after its batch's COMMIT) from callers authorized for their
 * tenant, the witness's identity, health and metrics, and the per-tenant
 * rate limit. */
#include "internal.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>

#include "log.h"
#include "lv.h"
#include "pubkey.h"
#include "version.h"
#include "witness.h"
#include "witness_tenants.h"

#define RATE_SLOTS 1024

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
} Server;

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

static enum MHD_Result send_document(Httpd *h, struct MHD_Connection *c, unsigned code,
                                     const char *result, const char *doc, size_t len)
{
    /* The same bytes the CLI prints: the document and a newline. */
    _cleanup_free_ char *body = malloc(len + 1);
    if (!body)
        return MHD_NO;
    memcpy(body, doc, len);
    body[len] = '\n';
    const char *headers[] = {"Attesto-Witness-Result", result, NULL};
    return httpd_send_body(h, c, code, "application/json", body, len + 1, headers);
}

static void pending_free(Pending *p)
{
    if (!p)
        return;
    witness_outcome_done(&p->ticket.job.out);
    cJSON_Delete(p->tree);
    free(p);
}

/* ---- who may submit -------------------------------------------------------------------------- */

/* The caller of a connection: a unix peer (its SO_PEERCRED uid and gid)
 * or a TCP client. */
typedef struct Peer {
    bool local;
    uid_t uid;
    gid_t gid;
} Peer;

static int peer_of(struct MHD_Connection *c, Peer *ret)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return -EIO;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(ci->connect_fd, (struct sockaddr *)&ss, &sl) < 0)
        return -errno;
    *ret = (Peer){.local = ss.ss_family == AF_UNIX};
    if (ret->local) {
        struct ucred uc;
        socklen_t ul = sizeof(uc);
        if (getsockopt(ci->connect_fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) < 0)
            return -errno;
        ret->uid = uc.uid;
        ret->gid = uc.gid;
    }
    return 0;
}

/* The secret of "Authorization: Bearer SECRET" (scheme case-insensitive);
 * NULL when there is none. Never logged, never echoed. */
static const char *bearer_of(struct MHD_Connection *c, size_t *ret_len)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return NULL;
    v += 7;
    while (*v == ' ')
        v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (!n)
        return NULL;
    *ret_len = n;
    return v;
}

/* tenant_id NULL: is the caller known to the tenants file at all. */
static WitnessAuth authorize(const WitnessTenants *t, struct MHD_Connection *c, const Peer *p,
                             const char *tenant_id, const WitnessQuota **ret_quota)
{
    if (p->local)
        return witness_tenants_peer(t, p->uid, p->gid, tenant_id, ret_quota);
    size_t n = 0;
    const char *secret = bearer_of(c, &n);
    if (!secret)
        return WITNESS_AUTH_UNKNOWN;
    return witness_tenants_bearer(t, secret, n, tenant_id, ret_quota);
}

static enum MHD_Result send_unauthorized(Httpd *h, struct MHD_Connection *c, const Peer *p)
{
    char msg[200];
    if (p->local)
        snprintf(msg, sizeof(msg),
                 "no tenant in the tenants file names this caller (uid %u, gid %u); nothing "
                 "stored",
                 (unsigned)p->uid, (unsigned)p->gid);
    else
        snprintf(msg, sizeof(msg),
                 "send Authorization: Bearer with a tenant's secret (missing or not known); "
                 "nothing stored");
    const char *hd[] = {MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"attesto-witness\"", NULL};
    return httpd_send_error(h, c, 401, "unauthorized", msg, NULL, p->local ? NULL : hd);
}

/* ---- routes --------------------------------------------------------------------------------- */

static enum MHD_Result answer_checkpoint(Httpd *h, struct MHD_Connection *c, Pending *p);

/* Parses and queues a checkpoint (the connection is suspended until the
 * committer has decided on it), or answers a refusal at once. */
static enum MHD_Result post_checkpoint(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    Server *s = httpd_userdata(h);
    const WitnessTenants *tenants = s->cfg->tenants;
    Peer peer;
    if (peer_of(c, &peer) < 0)
        return MHD_NO;
    /* Who is asking comes first: an unknown caller learns nothing more. */
    if (!tenants && !peer.local)
        return httpd_send_error(
            h, c, 403, "forbidden",
            "no tenants file (ATTESTO_LOCAL_VAULT_WITNESS_TENANTS): TCP callers "
            "cannot be authorized; submit on the unix socket",
            NULL, NULL);
    if (tenants && authorize(tenants, c, &peer, NULL, NULL) != WITNESS_AUTH_OK)
        return send_unauthorized(h, c, &peer);
    WitnessRequest req;
    const WitnessQuota *p_quota = NULL;
    cJSON *tree = NULL;
    lv_error_clear();
    int r = witness_request_parse(q->body ? q->body : "", q->len, &req, &tree);
    if (r < 0) {
        if (r == LV_ERR_TOOBIG)
            return httpd_send_error(h, c, 413, "too_large", lv_error(), NULL, NULL);
        return httpd_send_error(h, c, 400, "invalid_request", lv_error(), NULL, NULL);
    }
    if (tenants) {
        const WitnessQuota *quota = NULL;
        if (authorize(tenants, c, &peer, req.tenant_id, &quota) != WITNESS_AUTH_OK) {
            char msg[300];
            snprintf(msg, sizeof(msg),
                     "tenant_id %s: this caller may not submit for it (the tenants file "
                     "authorizes it for other tenants); nothing stored",
                     req.tenant_id);
            cJSON_Delete(tree);
            return httpd_send_error(h, c, 403, "forbidden", msg, NULL, NULL);
        }
        p_quota = quota;
    }
    Pending *p = calloc(1, sizeof(*p));
    if (!p) {
        cJSON_Delete(tree);
        return MHD_NO;
    }
    unsigned retry = 0;
    if (!rate_take(s, req.tenant_id, &retry)) {
        char secs[16], msg[200];
        snprintf(secs, sizeof(secs), "%u", retry ? retry : 1);
        snprintf(msg, sizeof(msg), "tenant_id %s: over %.0f checkpoints per second; retry later",
                 req.tenant_id, s->cfg->rate_per_s);
        cJSON_Delete(tree);
        free(p);
        const char *hd[] = {MHD_HTTP_HEADER_RETRY_AFTER, secs, NULL};
        return httpd_send_error(h, c, 429, "rate_limited", msg, NULL, hd);
    }
    p->req = req;
    p->tree = tree;
    p->ticket = (WitnessTicket){.req = &p->req,
                                .quota = p_quota,
                                .hold = httpd_suspend,
                                .release = httpd_resume,
                                .userdata = c};
    q->pending = p;
    if (!witness_service_submit(s->svc, &p->ticket)) {
        const char *hd[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
        return httpd_send_error(h, c, 503, "stopping", "the witness is stopping; retry later", NULL,
                                hd);
    }
    return MHD_YES;
}

/* A 503 for a request that needed the token: token_pin_refused once the
 * token refused the PIN (no retry helps before a restart), else
 * token_unavailable with a retry hint. */
static enum MHD_Result send_token_error(Httpd *h, struct MHD_Connection *c, const Server *s,
                                        const char *detail)
{
    char why[300];
    if (witness_service_pin_refused(s->svc, why, sizeof(why))) {
        char msg[400];
        snprintf(msg, sizeof(msg),
                 "the token refused the PIN; nothing is signed until the PIN file is fixed "
                 "and the service restarted: %s",
                 why);
        return httpd_send_error(h, c, 503, "token_pin_refused", msg, NULL, NULL);
    }
    const char *hd[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
    return httpd_send_error(h, c, 503, "token_unavailable", detail, NULL, hd);
}

/* The committer's decision on a queued checkpoint, after its COMMIT. */
static enum MHD_Result answer_checkpoint(Httpd *h, struct MHD_Connection *c, Pending *p)
{
    Server *s = httpd_userdata(h);
    int r = p->ticket.job.r;
    const WitnessRequest req = p->req;
    WitnessOutcome out = p->ticket.job.out;
    const char *detail = p->ticket.job.detail;

    if (r < 0) {
        if (r == LV_ERR_INPUT || r == LV_ERR_TOOBIG)
            return httpd_send_error(h, c, 400, "invalid_request", detail, NULL, NULL);
        const char *hd[] = {MHD_HTTP_HEADER_RETRY_AFTER, "5", NULL};
        /* The database is not the state anchored on the token: no retry
         * helps before an operator looks (witness-state show). */
        const char *cause = witness_integrity_cause(r);
        if (cause) {
            char extra[64];
            snprintf(extra, sizeof(extra), ",\"cause\":\"%s\"", cause);
            return httpd_send_error(h, c, 503, "state_integrity", detail, extra, NULL);
        }
        if (lv_is_token_error(r))
            return send_token_error(h, c, s, detail);
        if (r == -EBUSY)
            return httpd_send_error(h, c, 503, "database_busy", detail, NULL, hd);
        if (r == WITNESS_ERR_STREAMS)
            return httpd_send_error(h, c, 507, "quota_streams", detail, NULL, NULL);
        if (r == WITNESS_ERR_DAILY) {
            /* The quota counts UTC days: the next one starts at midnight. */
            char secs[16];
            int64_t day_ms = 86400000;
            snprintf(secs, sizeof(secs), "%" PRId64, (day_ms - lv_now_ms() % day_ms + 999) / 1000);
            const char *rd[] = {MHD_HTTP_HEADER_RETRY_AFTER, secs, NULL};
            return httpd_send_error(h, c, 429, "quota_statements_per_day", detail, NULL, rd);
        }
        log_error("witness: %s", detail);
        return httpd_send_error(h, c, 500, "internal_error", detail, NULL, NULL);
    }
    atomic_fetch_add(&s->decisions[out.result], 1);
    if (out.result == WITNESS_FORK)
        atomic_fetch_add(&s->forks[out.reason], 1);
    enum MHD_Result ret;
    switch (out.result) {
    case WITNESS_ACCEPTED:
    case WITNESS_REPLAYED:
        ret = send_document(h, c, 200, witness_result_name(out.result), out.document,
                            out.document_len);
        break;
    case WITNESS_FORK:
        ret = send_document(h, c, 409, "fork_evidence", out.document, out.document_len);
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
        ret = httpd_send_error(h, c, 422, "checkpoint_gap", msg, extra, NULL);
    }
    }
    return ret;
}

static enum MHD_Result get_identity(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    const Server *s = httpd_userdata(h);
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    char kid[TOKEN_KID_MAX], err[300];
    if (!witness_service_identity(s->svc, pk, kid, err, sizeof(err)))
        return send_token_error(h, c, s, err);
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
    return httpd_send_body(h, c, 200, "application/json", body, (size_t)len, NULL);
}

static enum MHD_Result get_health(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    const Server *s = httpd_userdata(h);
    int db = witness_service_ping(s->svc);
    bool token = witness_service_token_up(s->svc, true, NULL);
    bool refused = !token && witness_service_pin_refused(s->svc, NULL, 0);
    char body[128];
    int n =
        snprintf(body, sizeof(body), "{\"status\":\"%s\",\"database\":\"%s\",\"token\":\"%s\"}\n",
                 db >= 0 && token ? "ok" : "degraded", db >= 0 ? "ok" : "failed",
                 token     ? "ok"
                 : refused ? "pin_refused"
                           : "unavailable");
    return httpd_send_body(h, c, db >= 0 && token ? 200 : 503, "application/json", body, (size_t)n,
                           NULL);
}

static enum MHD_Result get_metrics(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    Server *s = httpd_userdata(h);
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
    httpd_print_requests(h, f);
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
            (uint_fast64_t)failures, token ? 1 : 0, httpd_requests_in_flight(h));
    if (fclose(f) != 0) {
        free(buf);
        return MHD_NO;
    }
    enum MHD_Result ret =
        httpd_send_body(h, c, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len, NULL);
    free(buf);
    return ret;
}

/* A checkpoint: queued to the service, then answered once it is decided
 * (the service resumes the connection after the batch's COMMIT). */
static enum MHD_Result checkpoints(Httpd *h, struct MHD_Connection *c, HttpdRequest *q)
{
    Server *s = httpd_userdata(h);
    Pending *p = q->pending;
    if (p) /* resumed by the witness service */
        return witness_service_answered(s->svc, &p->ticket) ? answer_checkpoint(h, c, p) : MHD_YES;
    return post_checkpoint(h, c, q);
}

static void request_done(void *userdata, HttpdRequest *q)
{
    pending_free(q->pending);
    q->pending = NULL;
}

static void stop(void *userdata)
{
    Server *s = userdata;
    witness_service_stop(s->svc);
}

static void status(void *userdata, size_t n_sockets, char *buf, size_t size)
{
    const Server *s = userdata;
    if (witness_service_pin_refused(s->svc, NULL, 0))
        snprintf(buf, size,
                 "witness %s serving %zu socket(s); token PIN refused, signing nothing: fix the "
                 "PIN file and restart",
                 s->cfg->witness_id, n_sockets);
    else
        snprintf(buf, size, "witness %s serving %zu socket(s)", s->cfg->witness_id, n_sockets);
}

static bool hold_idle(void *userdata)
{
    const Server *s = userdata;
    return witness_service_pin_refused(s->svc, NULL, 0);
}

static const char *const json_types[] = {"application/json", NULL};

static const HttpdRoute routes[] = {
    {.path = "/v1/witness/checkpoints", .post = true, .types = json_types, .handle = checkpoints},
    {.path = "/v1/witness/identity", .handle = get_identity},
    {.path = "/healthz", .handle = get_health},
    {.path = "/metrics", .handle = get_metrics},
};

int httpd_run(const HttpdConfig *cfg)
{
    static Server server; /* large (rate table); one per process */
    Server *s = &server;
    memset(s, 0, sizeof(*s));
    s->cfg = cfg;
    pthread_mutex_init(&s->rate_lock, NULL);

    /* Before the service's threads start: they inherit the mask. */
    sigset_t old;
    httpd_signals_block(&old);

    int r = witness_service_start(cfg->witness_db, cfg->witness_id, &cfg->token, &s->svc);
    if (r >= 0) {
        const HttpdOptions o = {
            .listen = cfg->listen,
            .n_listen = cfg->n_listen,
            .threads = cfg->threads,
            .body_max = cfg->body_max,
            .idle_exit_s = cfg->idle_exit_s,
            .limits = cfg->limits,
        };
        const HttpdService svc = {
            .name = "witness",
            .routes = routes,
            .n_routes = ELEMENTSOF(routes),
            .userdata = s,
            .request_done = request_done,
            .status = status,
            .stop = stop,
            .hold_idle = hold_idle,
        };
        r = httpd_serve(&o, &svc);
    }
    s->svc = witness_service_free(s->svc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_destroy(&s->rate_lock);
    return r;
}
