/* SPDX-License-Identifier: Apache-2.0 */
/* attesto-local-vault-receiver: a reference Attesto Local Vault receiver over
 * HTTPS (libmicrohttpd + GnuTLS) for tests, demos and staging, with
 * scripted failures. Not the product: its receipt key lives in memory. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <getopt.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "faults.h"
#include "ledger.h"
#include "lv.h"
#include "pubkey.h"
#include "version.h"

#define EVENTS_PREFIX   "/v2/local-vault/installations/"
#define EVENTS_SUFFIX   "/events"
#define PROTOCOL_HEADER "ATTESTO-LOCAL-VAULT-RELAY/1"
/* The vault caps payloads at 1 MiB; an envelope relaying one in hex-free
 * JSON stays well under twice that. */
#define MAX_BODY (2u * 1024 * 1024)

typedef struct Server {
    Ledger *ledger;
    FaultSet *faults;
    /* --require-token-file: only the SHA-256 of the bearer token is kept */
    bool token_required;
    uint8_t token_sha256[32];
} Server;

/* The events routes under --require-token-file: true when the request
 * carries Authorization: Bearer <the token> (compared as SHA-256, in
 * constant time). */
static bool token_ok(const Server *srv, struct MHD_Connection *c)
{
    if (!srv->token_required)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    uint8_t d[32];
    lv_sha256(h + 7, strlen(h + 7), d);
    return lv_memeq(d, srv->token_sha256, sizeof(d));
}

typedef struct Request {
    char *buf;
    size_t len, cap;
    bool too_big;
} Request;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: attesto-local-vault-receiver --listen ADDR:PORT --tls-cert PEM --tls-key PEM\n"
            "         [--register INSTALLATION_ID=PUBKEY_HEX|@PEMFILE|@JSONFILE]... [--events-log "
            "FILE]\n"
            "         [--fault SPEC]... [--fault-file FILE] [--seed N] [--receipt-key PEM]\n"
            "         [--receipt-kid KID] [--require-token-file FILE]\n"
            "\n"
            "A reference Attesto Local Vault receiver: verifies relay envelopes like Attesto\n"
            "and answers with signed receipts and localVaultAck. PORT 0 picks a free port;\n"
            "the address is printed on stdout as {\"listening\":\"https://ADDR:PORT\",...}.\n"
            "Fault specs are described in docs/receiver.md, e.g. '503:retry-after=2:count=3'.\n");
}

static void free_request(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    Request *rq = *con_cls;
    if (rq) {
        free(rq->buf);
        free(rq);
        *con_cls = NULL;
    }
}

static enum MHD_Result queue(struct MHD_Connection *c, unsigned status, const char *type,
                             const char *body, size_t len, const char *h_name, const char *h_value)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (h_name)
        MHD_add_response_header(r, h_name, h_value);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result queue_json(struct MHD_Connection *c, unsigned status, const char *body)
{
    if (!body)
        return MHD_NO;
    return queue(c, status, "application/json", body, strlen(body), NULL, NULL);
}

static enum MHD_Result queue_error(struct MHD_Connection *c, unsigned status, const char *code,
                                   const char *detail, const char *h_name, const char *h_value)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    if (detail)
        cJSON_AddStringToObject(o, "detail", detail);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return MHD_NO;
    enum MHD_Result ret = queue(c, status, "application/json", s, strlen(s), h_name, h_value);
    free(s);
    return ret;
}

static enum MHD_Result queue_options(struct MHD_Connection *c)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "POST, OPTIONS");
    MHD_add_response_header(r, "X-Attesto-Protocol", PROTOCOL_HEADER);
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    return ret;
}

/* A body whose Content-Length promises more than is sent: the callback
 * serves the first half, then makes MHD close the connection. */
typedef struct Truncated {
    char *body;
    size_t len;
} Truncated;

static ssize_t truncated_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    Truncated *t = cls;
    size_t half = t->len / 2;
    if (pos >= half)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = half - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(buf, t->body + pos, n);
    return (ssize_t)n;
}

static void truncated_free(void *cls)
{
    Truncated *t = cls;
    free(t->body);
    free(t);
}

static enum MHD_Result queue_truncated(struct MHD_Connection *c, char *ack)
{
    Truncated *t = calloc(1, sizeof(*t));
    if (!t) {
        free(ack);
        return MHD_NO;
    }
    t->body = ack;
    t->len = strlen(ack);
    struct MHD_Response *r =
        MHD_create_response_from_callback(t->len, 4096, truncated_reader, t, truncated_free);
    if (!r) {
        truncated_free(t);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void http_date(int64_t secs_from_now, char out[64])
{
    time_t t = time(NULL) + secs_from_now;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 64, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* The request fields a faulty answer needs, whatever the body holds. */
typedef struct Seen {
    char hash[65];
    char event[300];
    char stream[129];
} Seen;

static void seen_from_body(const char *body, size_t len, Seen *ret)
{
    lv_sha256_hex(body, len, ret->hash);
    snprintf(ret->event, sizeof(ret->event), "unknown");
    snprintf(ret->stream, sizeof(ret->stream), "unknown");
    cJSON *o = cJSON_ParseWithLength(body, len);
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(o, "event_id");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stream_id");
    if (cJSON_IsString(ev) && strlen(ev->valuestring) < sizeof(ret->event) &&
        strspn(ev->valuestring,
               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-") ==
            strlen(ev->valuestring))
        snprintf(ret->event, sizeof(ret->event), "%s", ev->valuestring);
    if (cJSON_IsString(st) && lv_valid_id(st->valuestring))
        snprintf(ret->stream, sizeof(ret->stream), "%s", st->valuestring);
    cJSON_Delete(o);
}

/* Answers a fired fault. ack is the real ack when the envelope was
 * processed first (when=after), else NULL. */
static enum MHD_Result answer_fault(Server *srv, struct MHD_Connection *c, const char *url,
                                    const Fault *f, const Seen *s, char *ack)
{
    enum MHD_Result ret;
    char *alt = NULL;
    switch (f->kind) {
    case FAULT_STATUS: {
        char ra[64];
        if (f->retry_after_s >= 0) {
            if (f->retry_after_date)
                http_date(f->retry_after_s, ra);
            else
                snprintf(ra, sizeof(ra), "%d", f->retry_after_s);
        }
        ret = queue_error(c, (unsigned)f->status, "injected_fault", f->spec,
                          f->retry_after_s >= 0 ? MHD_HTTP_HEADER_RETRY_AFTER : NULL, ra);
        break;
    }
    case FAULT_HTML: {
        static const char html[] = "<!DOCTYPE html><html><head><title>Sign in</title></head>"
                                   "<body><p>Please sign in to continue.</p></body></html>";
        ret = queue(c, MHD_HTTP_OK, "text/html; charset=utf-8", html, sizeof(html) - 1, NULL, NULL);
        break;
    }
    case FAULT_BAD_JSON: {
        char bad[200];
        snprintf(bad, sizeof(bad), "{\"localVaultAck\":{\"envelopeHash\":\"%s\",}", s->hash);
        ret = queue_json(c, MHD_HTTP_OK, bad);
        break;
    }
    case FAULT_TRUNCATED:
    case FAULT_BIG:
    case FAULT_SLOW:
        if (!ack)
            ack = ledger_make_ack(srv->ledger, s->hash, s->event, s->stream, s->hash, s->event,
                                  s->stream, 0);
        if (!ack)
            return MHD_NO;
        if (f->kind == FAULT_TRUNCATED)
            return queue_truncated(c, TAKE_PTR(ack));
        if (f->kind == FAULT_BIG) {
            /* Still a valid ack, only padded: the vault must refuse it for
             * its size alone. */
            size_t n = strlen(ack), pad = 80 * 1024;
            alt = malloc(n + pad + 1);
            if (!alt) {
                free(ack);
                return MHD_NO;
            }
            memcpy(alt, ack, n - 1);
            memset(alt + n - 1, ' ', pad);
            memcpy(alt + n - 1 + pad, "}", 2);
            ret = queue(c, MHD_HTTP_OK, "application/json", alt, strlen(alt), NULL, NULL);
            break;
        }
        ret = queue_json(c, MHD_HTTP_OK, ack); /* slow: the delay already happened */
        break;
    case FAULT_WRONG_HASH:
    case FAULT_WRONG_STREAM:
    case FAULT_WRONG_EVENT:
    case FAULT_RECEIPT_MISMATCH: {
        char other_hash[65], other_event[310], other_stream[140];
        lv_sha256_hex("another envelope", 16, other_hash);
        snprintf(other_event, sizeof(other_event), "%s-other", s->event);
        snprintf(other_stream, sizeof(other_stream), "%s-other", s->stream);
        bool wh = f->kind == FAULT_WRONG_HASH, ws = f->kind == FAULT_WRONG_STREAM,
             we = f->kind == FAULT_WRONG_EVENT, rm = f->kind == FAULT_RECEIPT_MISMATCH;
        /* wrong-*: the ack (and its receipt) name something else; the
         * receipt mismatch keeps the ack right but the receipt not. */
        alt =
            ledger_make_ack(srv->ledger, wh ? other_hash : s->hash, we ? other_event : s->event,
                            ws ? other_stream : s->stream, wh ? other_hash : s->hash,
                            (we || rm) ? other_event : s->event, ws ? other_stream : s->stream, 1);
        if (!alt) {
            free(ack);
            return MHD_NO;
        }
        ret = queue_json(c, MHD_HTTP_OK, alt);
        break;
    }
    case FAULT_NO_ACK: {
        char body[400];
        snprintf(body, sizeof(body), "{\"status\":\"ok\",\"event_id\":\"%s\"}", s->event);
        ret = queue_json(c, MHD_HTTP_OK, body);
        break;
    }
    case FAULT_DROP:
        ret = MHD_NO; /* MHD closes the connection without a reply */
        break;
    case FAULT_REDIRECT: {
        const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
        char loc[1024];
        snprintf(loc, sizeof(loc), "http://%s%s", host ? host : "127.0.0.1", url);
        ret = queue_error(c, MHD_HTTP_TEMPORARY_REDIRECT, "moved", "use the location",
                          MHD_HTTP_HEADER_LOCATION, loc);
        break;
    }
    default:
        ret = MHD_NO;
    }
    free(ack);
    free(alt);
    return ret;
}

static enum MHD_Result handle_events(Server *srv, struct MHD_Connection *c, const char *url,
                                     const char *installation, Request *rq)
{
    if (rq->too_big)
        return queue_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large", "over 2 MiB", NULL,
                           NULL);
    const char *body = rq->buf ? rq->buf : "";
    Seen seen;
    seen_from_body(body, rq->len, &seen);
    Fault f;
    bool faulty = faultset_pick(srv->faults, seen.stream, &f);
    /* Logged when it fires, before any delay: tests wait for this line to
     * know a request is in flight. */
    if (faulty)
        fprintf(stderr, "receiver: fault %s (%s) for %s\n", fault_kind_name(f.kind), f.spec,
                seen.event);
    if (faulty && f.delay_ms > 0 && !f.after)
        usleep((useconds_t)f.delay_ms * 1000);
    if (faulty && !f.after)
        return answer_fault(srv, c, url, &f, &seen, NULL);

    const char *ctype = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    const char *proto = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Attesto-Protocol");
    const char *idem = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    if (!ctype || strncasecmp(ctype, "application/json", 16) != 0)
        return queue_error(c, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "content_type",
                           "Content-Type: must be application/json", NULL, NULL);
    if (!proto || strcmp(proto, PROTOCOL_HEADER) != 0)
        return queue_error(c, MHD_HTTP_BAD_REQUEST, "protocol",
                           "X-Attesto-Protocol: must be " PROTOCOL_HEADER, NULL, NULL);
    if (!idem)
        return queue_error(c, MHD_HTTP_BAD_REQUEST, "idempotency_key", "Idempotency-Key: required",
                           NULL, NULL);

    char *ack = NULL, detail[512] = "";
    LedgerResult res =
        ledger_submit(srv->ledger, installation, idem, body, rq->len, &ack, detail, sizeof(detail));
    if ((res == LEDGER_ACCEPTED || res == LEDGER_REPLAYED) && !ack)
        return queue_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "out of memory", NULL,
                           NULL);
    if (faulty && (res == LEDGER_ACCEPTED || res == LEDGER_REPLAYED)) {
        if (f.delay_ms > 0)
            usleep((useconds_t)f.delay_ms * 1000);
        return answer_fault(srv, c, url, &f, &seen, ack);
    }
    switch (res) {
    case LEDGER_ACCEPTED:
    case LEDGER_REPLAYED: {
        enum MHD_Result ret =
            queue_json(c, res == LEDGER_ACCEPTED ? MHD_HTTP_CREATED : MHD_HTTP_OK, ack);
        free(ack);
        return ret;
    }
    case LEDGER_CONFLICT:
        return queue_error(c, MHD_HTTP_CONFLICT, "event_conflict", detail, NULL, NULL);
    case LEDGER_UNKNOWN:
        return queue_error(c, MHD_HTTP_FORBIDDEN, "installation_not_registered", detail, NULL,
                           NULL);
    case LEDGER_BAD_SIG:
        return queue_error(c, MHD_HTTP_UNAUTHORIZED, "signature_invalid", detail, NULL, NULL);
    case LEDGER_INTERNAL:
        fprintf(stderr, "receiver: %s\n", detail);
        return queue_error(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", detail, NULL, NULL);
    case LEDGER_INVALID:
    default:
        return queue_error(c, MHD_HTTP_BAD_REQUEST, "envelope_invalid", detail, NULL, NULL);
    }
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    Server *srv = cls;
    Request *rq = *con_cls;
    if (!rq) {
        rq = calloc(1, sizeof(*rq));
        if (!rq)
            return MHD_NO;
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* libmicrohttpd 0.9.75: the upload must be consumed before a
         * response is queued, or the client sees an empty reply. */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rq->too_big || rq->len + n > MAX_BODY) {
            rq->too_big = true;
            return MHD_YES;
        }
        if (rq->len + n + 1 > rq->cap) {
            size_t cap = rq->cap ? rq->cap : 4096;
            while (cap < rq->len + n + 1)
                cap *= 2;
            char *b = realloc(rq->buf, cap);
            if (!b)
                return MHD_NO;
            rq->buf = b;
            rq->cap = cap;
        }
        memcpy(rq->buf + rq->len, upload_data, n);
        rq->len += n;
        rq->buf[rq->len] = '\0';
        return MHD_YES;
    }

    if (strcmp(method, "GET") == 0) {
        if (strcmp(url, "/healthz") == 0)
            return queue(c, MHD_HTTP_OK, "text/plain", "ok\n", 3, NULL, NULL);
        if (strcmp(url, "/v2/local-vault/receiver/public-key") == 0) {
            _cleanup_free_ char *pk = ledger_public_key_json(srv->ledger);
            return pk ? queue_json(c, MHD_HTTP_OK, pk) : MHD_NO;
        }
        if (strcmp(url, "/v2/local-vault/receiver/stats") == 0) {
            uint64_t a, r, j;
            ledger_counts(srv->ledger, &a, &r, &j);
            char s[200];
            snprintf(
                s, sizeof(s),
                "{\"accepted\":%llu,\"faults_fired\":%llu,\"rejected\":%llu,\"replayed\":%llu}",
                (unsigned long long)a, (unsigned long long)faultset_fired(srv->faults),
                (unsigned long long)j, (unsigned long long)r);
            return queue_json(c, MHD_HTTP_OK, s);
        }
    }
    size_t ul = strlen(url), pl = strlen(EVENTS_PREFIX), sl = strlen(EVENTS_SUFFIX);
    if (ul > pl + sl && strncmp(url, EVENTS_PREFIX, pl) == 0 &&
        strcmp(url + ul - sl, EVENTS_SUFFIX) == 0) {
        char inst[256];
        size_t il = ul - pl - sl;
        if (il >= sizeof(inst))
            return queue_error(c, MHD_HTTP_NOT_FOUND, "not_found", "installation id too long", NULL,
                               NULL);
        memcpy(inst, url + pl, il);
        inst[il] = '\0';
        if (!token_ok(srv, c))
            return queue_error(c, MHD_HTTP_UNAUTHORIZED, "unauthorized",
                               "a bearer credential is required (Authorization: Bearer)",
                               MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"attesto\"");
        /* OPTIONS is the round trip `doctor` makes: no body, nothing
         * recorded, the protocol named in the answer. */
        if (strcmp(method, "OPTIONS") == 0)
            return queue_options(c);
        if (strcmp(method, "POST") != 0)
            return queue_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method", "POST only",
                               MHD_HTTP_HEADER_ALLOW, "POST, OPTIONS");
        if (!lv_valid_id(inst))
            return queue_error(c, MHD_HTTP_NOT_FOUND, "not_found",
                               "installation id: not 1-128 bytes of [A-Za-z0-9._:@/-]", NULL, NULL);
        return handle_events(srv, c, url, inst, rq);
    }
    return queue_error(c, MHD_HTTP_NOT_FOUND, "not_found", url, NULL, NULL);
}

static int parse_listen(const char *s, struct sockaddr_storage *ss, bool *ret_v6, uint16_t *port)
{
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host))
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 0 || p > 65535)
        return -1;
    *port = (uint16_t)p;
    memset(ss, 0, sizeof(*ss));
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (hl < 3 || host[hl - 1] != ']')
            return -1;
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(*port);
        *ret_v6 = true;
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(*port);
    *ret_v6 = false;
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

/* The JSON of `attesto-local-vault public-key`: the current key and, after
 * rotations, "previous" ones, each registered under its kid. */
static int register_one(Ledger *l, const char *inst, const char *path, const cJSON *o)
{
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(o, "public_key_hex");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(o, "kid");
    uint8_t pk[32];
    if (!cJSON_IsString(hex) || hex_decode(hex->valuestring, pk, 32) < 0 || !cJSON_IsString(kid))
        return lv_error_set(LV_ERR_INPUT, "--register: %s: each key needs public_key_hex and kid",
                            path);
    return ledger_register_key(l, inst, kid->valuestring, pk);
}

static int register_json(Ledger *l, const char *inst, const char *path, const char *text,
                         size_t len)
{
    cJSON *doc = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        return lv_error_set(LV_ERR_INPUT, "--register: %s: not a JSON object", path);
    }
    int r = register_one(l, inst, path, doc);
    const cJSON *prev = cJSON_GetObjectItemCaseSensitive(doc, "previous");
    for (const cJSON *k = cJSON_IsArray(prev) ? prev->child : NULL; r >= 0 && k; k = k->next)
        r = register_one(l, inst, path, k);
    cJSON_Delete(doc);
    return r;
}

static int add_registration(Ledger *l, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg)
        return lv_error_set(LV_ERR_INPUT, "--register: %s: must be INSTALLATION_ID=PUBKEY_HEX",
                            arg);
    char inst[256];
    if ((size_t)(eq - arg) >= sizeof(inst))
        return lv_error_set(LV_ERR_INPUT, "--register: installation id too long");
    memcpy(inst, arg, (size_t)(eq - arg));
    inst[eq - arg] = '\0';
    uint8_t pk[32];
    int r;
    if (eq[1] == '@') {
        _cleanup_free_ char *pem = NULL;
        size_t n;
        r = lv_read_file(eq + 2, 256 * 1024, &pem, &n);
        if (r >= 0 && pem[strspn(pem, " \t\r\n")] == '{')
            return register_json(l, inst, eq + 2, pem, n);
        if (r >= 0)
            r = pubkey_parse(pem, pk);
    } else
        r = pubkey_parse(eq + 1, pk);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--register: %s: public key must be 64 hex digits or @PEMFILE", inst);
    return ledger_register(l, inst, pk);
}

int main(int argc, char **argv)
{
    enum {
        O_LISTEN = 256,
        O_CERT,
        O_KEY,
        O_REGISTER,
        O_LOG,
        O_FAULT,
        O_FAULT_FILE,
        O_SEED,
        O_RKEY,
        O_RKID,
        O_TOKEN,
        O_HELP,
        O_VERSION
    };
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"tls-cert", required_argument, NULL, O_CERT},
        {"tls-key", required_argument, NULL, O_KEY},
        {"register", required_argument, NULL, O_REGISTER},
        {"events-log", required_argument, NULL, O_LOG},
        {"fault", required_argument, NULL, O_FAULT},
        {"fault-file", required_argument, NULL, O_FAULT_FILE},
        {"seed", required_argument, NULL, O_SEED},
        {"receipt-key", required_argument, NULL, O_RKEY},
        {"receipt-kid", required_argument, NULL, O_RKID},
        {"require-token-file", required_argument, NULL, O_TOKEN},
        {"help", no_argument, NULL, O_HELP},
        {"version", no_argument, NULL, O_VERSION},
        {0},
    };
    const char *listen = NULL, *cert_path = NULL, *key_path = NULL, *log_path = NULL,
               *fault_file = NULL, *rkey = NULL, *rkid = NULL, *token_path = NULL;
    const char *registrations[256], *faults[64];
    size_t n_reg = 0, n_faults = 0;
    uint64_t seed = 0;
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (o) {
        case O_LISTEN:
            listen = optarg;
            break;
        case O_CERT:
            cert_path = optarg;
            break;
        case O_KEY:
            key_path = optarg;
            break;
        case O_LOG:
            log_path = optarg;
            break;
        case O_FAULT_FILE:
            fault_file = optarg;
            break;
        case O_RKEY:
            rkey = optarg;
            break;
        case O_RKID:
            rkid = optarg;
            break;
        case O_TOKEN:
            token_path = optarg;
            break;
        case O_SEED:
            seed = strtoull(optarg, NULL, 10);
            break;
        case O_REGISTER:
            if (n_reg == ELEMENTSOF(registrations)) {
                fprintf(stderr, "receiver: --register: at most 256\n");
                return 2;
            }
            registrations[n_reg++] = optarg;
            break;
        case O_FAULT:
            if (n_faults == ELEMENTSOF(faults)) {
                fprintf(stderr, "receiver: --fault: at most 64\n");
                return 2;
            }
            faults[n_faults++] = optarg;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        case O_VERSION:
            printf("attesto-local-vault-receiver %s\n", LV_VERSION);
            return 0;
        default:
            fprintf(stderr, "receiver: %s: unknown option or missing value (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "receiver: %s: unexpected argument\n", argv[optind]);
        return 2;
    }
    if (!listen || !cert_path || !key_path) {
        fprintf(stderr, "receiver: %s: required (HTTPS only)\n",
                !listen      ? "--listen"
                : !cert_path ? "--tls-cert"
                             : "--tls-key");
        return 2;
    }
    struct sockaddr_storage ss;
    bool v6 = false;
    uint16_t port;
    if (parse_listen(listen, &ss, &v6, &port) < 0) {
        fprintf(stderr, "receiver: --listen: %s: must be IPV4:PORT or [IPV6]:PORT\n", listen);
        return 2;
    }
    _cleanup_free_ char *cert = NULL, *key = NULL;
    size_t n;
    if (lv_read_file(cert_path, 1024 * 1024, &cert, &n) < 0 ||
        lv_read_file(key_path, 1024 * 1024, &key, &n) < 0) {
        fprintf(stderr, "receiver: %s\n", lv_error());
        return 2;
    }

    Server srv = {0};
    if (token_path) {
        char *tok = NULL;
        size_t tl = 0;
        if (lv_read_file(token_path, 4096, &tok, &tl) < 0) {
            fprintf(stderr, "receiver: --require-token-file: %s\n", lv_error());
            return 2;
        }
        while (tl && (tok[tl - 1] == '\n' || tok[tl - 1] == '\r'))
            tok[--tl] = '\0';
        bool bad = tl == 0 || memchr(tok, '\n', tl) || memchr(tok, ' ', tl);
        if (!bad)
            lv_sha256(tok, tl, srv.token_sha256);
        explicit_bzero(tok, tl);
        free(tok);
        if (bad) {
            fprintf(stderr, "receiver: --require-token-file: %s: must hold one token on one line\n",
                    token_path);
            return 2;
        }
        srv.token_required = true;
    }
    int r = ledger_new(log_path, rkey, &srv.ledger);
    if (r >= 0 && rkid)
        r = ledger_set_receipt_kid(srv.ledger, rkid);
    if (r >= 0)
        r = ledger_load_log(srv.ledger);
    for (size_t i = 0; r >= 0 && i < n_reg; i++)
        r = add_registration(srv.ledger, registrations[i]);
    if (r >= 0)
        r = faultset_new(fault_file, seed, &srv.faults);
    for (size_t i = 0; r >= 0 && i < n_faults; i++) {
        Fault f;
        char err[300];
        if (fault_parse(faults[i], &f, err, sizeof(err)) < 0)
            r = lv_error_set(LV_ERR_INPUT, "--fault: %s", err);
        else
            r = faultset_add(srv.faults, &f);
    }
    if (r < 0) {
        fprintf(stderr, "receiver: %s\n", *lv_error() ? lv_error() : strerror(-r));
        faultset_free(srv.faults);
        ledger_free(srv.ledger);
        return r == LV_ERR_INPUT ? 2 : 1;
    }

    /* Signals are taken by the main thread only (sigwait below). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned flags = MHD_USE_TLS | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, port, NULL, NULL, handler, &srv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_NOTIFY_COMPLETED,
        free_request, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr,
                "receiver: cannot serve HTTPS on %s (address in use, or a bad "
                "certificate or key)\n",
                listen);
        faultset_free(srv.faults);
        ledger_free(srv.ledger);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char host[64];
    if (v6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
    _cleanup_free_ char *pk = ledger_public_key_json(srv.ledger);
    printf("{\"listening\":\"https://%s%s%s:%u\",\"receipt_key\":%s}\n", v6 ? "[" : "", host,
           v6 ? "]" : "", info ? info->port : port, pk ? pk : "null");
    fflush(stdout);

    int sig;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    faultset_free(srv.faults);
    ledger_free(srv.ledger);
    return 0;
}
