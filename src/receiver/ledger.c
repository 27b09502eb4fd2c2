/* SPDX-License-Identifier: Apache-2.0 */
/* The reference receiver's state: registrations, idempotency, seq_no per
 * stream, signed receipts and the events log. */
#include "ledger.h"

#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>

#include "envelope.h"
#include "lv.h"
#include "pubkey.h"

#define N_BUCKETS (1u << 16)

typedef struct Entry {
    struct Entry *next;
    char *key;
    char hash[65];        /* events: the envelope hash */
    int64_t seq;          /* streams: the last seq_no; events: its seq_no */
    char *ack;            /* events: the ack body answered */
    struct InstKey *keys; /* installations: the registered keys (signing key epochs) */
    size_t n_keys;
} Entry;

/* One registered public key; kid "" accepts any kid (a key registered as
 * hex or PEM), else only envelopes whose local_signature.kid names it. */
typedef struct InstKey {
    uint8_t pk[32];
    char kid[129];
} InstKey;
#define LEDGER_MAX_KEYS 16

typedef struct Map {
    Entry *b[N_BUCKETS];
} Map;

struct Ledger {
    pthread_mutex_t lock;
    Map installations, events, streams;
    EVP_PKEY *key;
    uint8_t pk[32];
    char kid[129];
    char *log_path;
    FILE *log;
    uint64_t accepted, replayed, rejected;
};

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static Entry *map_get(Map *m, const char *key)
{
    for (Entry *e = m->b[fnv1a(key) % N_BUCKETS]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static Entry *map_put(Map *m, const char *key)
{
    Entry *e = map_get(m, key);
    if (e)
        return e;
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->key = strdup(key);
    if (!e->key) {
        free(e);
        return NULL;
    }
    uint32_t h = fnv1a(key) % N_BUCKETS;
    e->next = m->b[h];
    m->b[h] = e;
    return e;
}

static void map_clear(Map *m)
{
    for (size_t i = 0; i < N_BUCKETS; i++)
        for (Entry *e = m->b[i], *n; e; e = n) {
            n = e->next;
            free(e->key);
            free(e->ack);
            free(e->keys);
            free(e);
        }
}

static int load_key(const char *path, EVP_PKEY **ret)
{
    if (!path) {
        EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        if (!k)
            return lv_error_set(-EIO, "receipt key: Ed25519 key generation failed");
        *ret = k;
        return 0;
    }
    FILE *f = fopen(path, "re");
    if (!f)
        return lv_error_set(-errno, "--receipt-key: %s: %s", path, strerror(errno));
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!k || EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(k);
        return lv_error_set(LV_ERR_INPUT, "--receipt-key: %s: not a PEM Ed25519 private key", path);
    }
    *ret = k;
    return 0;
}

int ledger_new(const char *events_log, const char *receipt_key_pem, Ledger **ret)
{
    Ledger *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    pthread_mutex_init(&l->lock, NULL);
    int r = load_key(receipt_key_pem, &l->key);
    if (r < 0)
        goto fail;
    size_t pklen = sizeof(l->pk);
    if (EVP_PKEY_get_raw_public_key(l->key, l->pk, &pklen) != 1 || pklen != 32) {
        r = lv_error_set(-EIO, "receipt key: cannot read the public key");
        goto fail;
    }
    char kid[20];
    pubkey_default_kid(l->pk, kid);
    /* "rcv-" instead of "lv-": a receiver key is never a vault key. */
    snprintf(l->kid, sizeof(l->kid), "rcv-%s", kid + 3);
    if (events_log) {
        l->log_path = strdup(events_log);
        if (!l->log_path) {
            r = -ENOMEM;
            goto fail;
        }
    }
    *ret = l;
    return 0;
fail:
    ledger_free(l);
    return r;
}

void ledger_free(Ledger *l)
{
    if (!l)
        return;
    if (l->log)
        fclose(l->log);
    map_clear(&l->installations);
    map_clear(&l->events);
    map_clear(&l->streams);
    EVP_PKEY_free(l->key);
    free(l->log_path);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

int ledger_register(Ledger *l, const char *installation_id, const uint8_t pk[32])
{
    return ledger_register_key(l, installation_id, NULL, pk);
}

int ledger_register_key(Ledger *l, const char *installation_id, const char *kid,
                        const uint8_t pk[32])
{
    if (!lv_valid_id(installation_id))
        return lv_error_set(LV_ERR_INPUT,
                            "--register: installation id must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    if (kid && !lv_valid_id(kid))
        return lv_error_set(LV_ERR_INPUT,
                            "--register: kid must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    Entry *e = map_put(&l->installations, installation_id);
    if (!e)
        return -ENOMEM;
    /* Several keys per installation: the keys of its signing key epochs. */
    for (size_t i = 0; i < e->n_keys; i++)
        if (memcmp(e->keys[i].pk, pk, 32) == 0 && strcmp(e->keys[i].kid, kid ? kid : "") == 0)
            return 0;
    if (e->n_keys == LEDGER_MAX_KEYS)
        return lv_error_set(LV_ERR_INPUT, "--register: %s: at most %d keys", installation_id,
                            LEDGER_MAX_KEYS);
    InstKey *k = realloc(e->keys, (e->n_keys + 1) * sizeof(*k));
    if (!k)
        return -ENOMEM;
    e->keys = k;
    memcpy(k[e->n_keys].pk, pk, 32);
    snprintf(k[e->n_keys].kid, sizeof(k[e->n_keys].kid), "%s", kid ? kid : "");
    e->n_keys++;
    return 0;
}

static int sign(Ledger *l, const char *domain, const char *msg, char sig_hex[129])
{
    _cleanup_free_ uint8_t *m = NULL;
    size_t mlen = 0;
    int r = pubkey_signed_message(domain, msg, strlen(msg), &m, &mlen);
    if (r < 0)
        return r;
    uint8_t sig[64];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return -ENOMEM;
    bool ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, l->key) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, m, mlen) == 1 && siglen == 64;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return -EIO;
    hex_encode(sig, 64, sig_hex);
    return 0;
}

/* All values are identifiers or hex (checked by envelope_verify, or made
 * here), so the canonical JSON can be written directly, members in JCS
 * order, without escaping. */
char *ledger_make_ack(Ledger *l, const char *ack_hash, const char *ack_event,
                      const char *ack_stream, const char *rc_hash, const char *rc_event,
                      const char *rc_stream, int64_t seq_no)
{
    char sev_src[512], sev[65];
    snprintf(sev_src, sizeof(sev_src), "%s\n%lld\n%s", rc_stream, (long long)seq_no, rc_hash);
    lv_sha256_hex(sev_src, strlen(sev_src), sev);
    sev[24] = '\0';
    _cleanup_free_ char *statement = NULL;
    if (asprintf(&statement,
                 "{\"event_hash\":\"%s\",\"event_id\":\"%s\",\"seq_no\":%lld,"
                 "\"stream_event_id\":\"sev_%s\",\"stream_id\":\"%s\"}",
                 rc_hash, rc_event, (long long)seq_no, sev, rc_stream) < 0)
        return NULL;
    char sig[129];
    if (sign(l, LEDGER_RECEIPT_DOMAIN, statement, sig) < 0)
        return NULL;
    char *ack = NULL;
    if (asprintf(
            &ack,
            "{\"localVaultAck\":{\"envelopeHash\":\"%s\",\"eventId\":\"%s\",\"streamId\":\"%s\"},"
            "\"receipt\":{\"event_hash\":\"%s\",\"event_id\":\"%s\","
            "\"receipt\":{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"signature\":\"%s\"},"
            "\"seq_no\":%lld,\"stream_event_id\":\"sev_%s\",\"stream_id\":\"%s\"}}",
            ack_hash, ack_event, ack_stream, rc_hash, rc_event, l->kid, sig, (long long)seq_no, sev,
            rc_stream) < 0)
        return NULL;
    return ack;
}

static const char *str_member(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int open_log(Ledger *l)
{
    if (l->log || !l->log_path)
        return 0;
    l->log = fopen(l->log_path, "ae");
    if (!l->log)
        return lv_error_set(-errno, "--events-log: %s: %s", l->log_path, strerror(errno));
    return 0;
}

static int append_log(Ledger *l, const char *inst, const char *stream, const char *event,
                      const char *hash, int64_t seq, const char *body, size_t len, const char *ack)
{
    if (!l->log_path)
        return 0;
    int r = open_log(l);
    if (r < 0)
        return r;
    cJSON *o = cJSON_CreateObject();
    char when[32];
    lv_format_time(lv_now_ms(), when);
    _cleanup_free_ char *b = strndup(body, len);
    if (!o || !b) {
        cJSON_Delete(o);
        return -ENOMEM;
    }
    cJSON_AddNumberToObject(o, "seq_no", (double)seq);
    cJSON_AddStringToObject(o, "installation_id", inst);
    cJSON_AddStringToObject(o, "stream_id", stream);
    cJSON_AddStringToObject(o, "event_id", event);
    cJSON_AddStringToObject(o, "envelope_hash", hash);
    cJSON_AddStringToObject(o, "received_at", when);
    cJSON_AddStringToObject(o, "body", b);
    cJSON_AddStringToObject(o, "ack", ack);
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line)
        return -ENOMEM;
    /* One write per line and a flush: a reader (the tests) sees whole lines. */
    fprintf(l->log, "%s\n", line);
    free(line);
    if (fflush(l->log) != 0)
        return lv_error_set(-EIO, "--events-log: %s: write failed", l->log_path);
    return 0;
}

int ledger_load_log(Ledger *l)
{
    if (!l->log_path)
        return 0;
    FILE *f = fopen(l->log_path, "re");
    if (!f)
        return errno == ENOENT
                   ? 0
                   : lv_error_set(-errno, "--events-log: %s: %s", l->log_path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    int r = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)n);
        const char *inst = str_member(o, "installation_id"), *stream = str_member(o, "stream_id"),
                   *event = str_member(o, "event_id"), *hash = str_member(o, "envelope_hash"),
                   *ack = str_member(o, "ack");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(o, "seq_no");
        if (!inst || !stream || !event || !hash || strlen(hash) != 64 || !ack ||
            !cJSON_IsNumber(seq)) {
            cJSON_Delete(o);
            r = lv_error_set(LV_ERR_INPUT, "--events-log: %s: line %u: not an events-log line",
                             l->log_path, lineno);
            break;
        }
        Entry *e = map_put(&l->events, event);
        char skey[300];
        snprintf(skey, sizeof(skey), "%s\n%s", inst, stream);
        Entry *s = map_put(&l->streams, skey);
        if (!e || !s) {
            cJSON_Delete(o);
            r = -ENOMEM;
            break;
        }
        memcpy(e->hash, hash, 65);
        e->seq = (int64_t)seq->valuedouble;
        free(e->ack);
        e->ack = strdup(ack);
        if (e->seq > s->seq)
            s->seq = e->seq;
        cJSON_Delete(o);
    }
    free(line);
    fclose(f);
    return r;
}

LedgerResult ledger_submit(Ledger *l, const char *path_installation, const char *idempotency_key,
                           const char *body, size_t len, char **ret_ack, char *detail,
                           size_t detail_len)
{
    LedgerResult res = LEDGER_INVALID;
    cJSON *o = cJSON_ParseWithLength(body, len);
    const char *inst = str_member(o, "installation_id"), *stream = str_member(o, "stream_id"),
               *source_ref = str_member(o, "source_ref"), *event = str_member(o, "event_id");
    if (!cJSON_IsObject(o)) {
        snprintf(detail, detail_len, "body: not a JSON object");
        goto done;
    }
    if (!inst || !stream || !source_ref || !event) {
        snprintf(detail, detail_len, "%s: missing or not a string",
                 !inst         ? "installation_id"
                 : !stream     ? "stream_id"
                 : !source_ref ? "source_ref"
                               : "event_id");
        goto done;
    }
    if (strcmp(inst, path_installation) != 0) {
        snprintf(detail, detail_len, "installation_id: does not match the request path");
        goto done;
    }
    /* Each envelope verifies under the key of its own kid (a key registered
     * with that kid, or one registered without a kid). */
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(o, "local_signature");
    const cJSON *kidj = sig ? cJSON_GetObjectItemCaseSensitive(sig, "kid") : NULL;
    const char *kid = cJSON_IsString(kidj) ? kidj->valuestring : "";
    InstKey cand[LEDGER_MAX_KEYS];
    size_t n_cand = 0;
    pthread_mutex_lock(&l->lock);
    Entry *reg = map_get(&l->installations, inst);
    for (size_t i = 0; reg && i < reg->n_keys; i++)
        if (!reg->keys[i].kid[0] || strcmp(reg->keys[i].kid, kid) == 0)
            cand[n_cand++] = reg->keys[i];
    pthread_mutex_unlock(&l->lock);
    if (!reg) {
        res = LEDGER_UNKNOWN;
        snprintf(detail, detail_len, "installation %s: not registered", inst);
        goto done;
    }
    lv_error_clear();
    int r = LV_ERR_CRYPTO;
    for (size_t i = 0; i < n_cand && r == LV_ERR_CRYPTO; i++) {
        lv_error_clear();
        r = envelope_verify(body, len, cand[i].pk);
    }
    if (r == LV_ERR_CRYPTO) {
        res = LEDGER_BAD_SIG;
        snprintf(detail, detail_len, "local_signature: does not verify under the registered key");
        goto done;
    }
    if (r < 0) {
        snprintf(detail, detail_len, "envelope: %s", *lv_error() ? lv_error() : strerror(-r));
        goto done;
    }
    char want[300];
    snprintf(want, sizeof(want), "local-vault:%s:%s", inst, source_ref);
    if (strcmp(event, want) != 0) {
        snprintf(detail, detail_len,
                 "event_id: must be local-vault:<installation_id>:<source_ref>");
        goto done;
    }
    if (!idempotency_key || strcmp(idempotency_key, event) != 0) {
        snprintf(detail, detail_len, "Idempotency-Key: must equal the envelope's event_id");
        goto done;
    }
    char hash[65];
    lv_sha256_hex(body, len, hash);

    pthread_mutex_lock(&l->lock);
    Entry *e = map_get(&l->events, event);
    if (e) {
        if (strcmp(e->hash, hash) == 0) {
            res = LEDGER_REPLAYED;
            *ret_ack = strdup(e->ack);
            l->replayed++;
        } else {
            res = LEDGER_CONFLICT;
            snprintf(detail, detail_len, "event %s: already received with envelope hash %s", event,
                     e->hash);
        }
        pthread_mutex_unlock(&l->lock);
        goto done;
    }
    char skey[300];
    snprintf(skey, sizeof(skey), "%s\n%s", inst, stream);
    Entry *s = map_put(&l->streams, skey);
    char *ack = s ? ledger_make_ack(l, hash, event, stream, hash, event, stream, s->seq + 1) : NULL;
    e = ack ? map_put(&l->events, event) : NULL;
    if (!e || append_log(l, inst, stream, event, hash, s->seq + 1, body, len, ack) < 0) {
        /* Not recorded: answer 500 so the vault retries. */
        free(ack);
        pthread_mutex_unlock(&l->lock);
        res = LEDGER_INTERNAL;
        snprintf(detail, detail_len, "cannot record the event: %s", lv_error());
        goto done;
    }
    s->seq++;
    memcpy(e->hash, hash, 65);
    e->seq = s->seq;
    e->ack = ack;
    *ret_ack = strdup(ack);
    l->accepted++;
    res = LEDGER_ACCEPTED;
    pthread_mutex_unlock(&l->lock);
done:
    if (res != LEDGER_ACCEPTED && res != LEDGER_REPLAYED) {
        pthread_mutex_lock(&l->lock);
        l->rejected++;
        pthread_mutex_unlock(&l->lock);
    }
    cJSON_Delete(o);
    return res;
}

int ledger_set_receipt_kid(Ledger *l, const char *kid)
{
    if (!lv_valid_id(kid) || strlen(kid) >= sizeof(l->kid))
        return lv_error_set(LV_ERR_INPUT, "--receipt-kid: must be 1-%zu bytes of [A-Za-z0-9._:@/-]",
                            sizeof(l->kid) - 1);
    snprintf(l->kid, sizeof(l->kid), "%s", kid);
    return 0;
}

char *ledger_public_key_json(Ledger *l)
{
    char hex[65], *out = NULL;
    hex_encode(l->pk, 32, hex);
    if (asprintf(&out, "{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"public_key_hex\":\"%s\"}", l->kid,
                 hex) < 0)
        return NULL;
    return out;
}

void ledger_counts(Ledger *l, uint64_t *accepted, uint64_t *replayed, uint64_t *rejected)
{
    pthread_mutex_lock(&l->lock);
    *accepted = l->accepted;
    *replayed = l->replayed;
    *rejected = l->rejected;
    pthread_mutex_unlock(&l->lock);
}
