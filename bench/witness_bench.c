/* SPDX-License-Identifier: Apache-2.0 */
/* Ceilings and load for bench/witness: the bare token sign rate, the bare
 * durable-commit rate (one row per transaction, WAL + synchronous=FULL), and
 * an HTTP load generator with N keep-alive clients against witness-serve. */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "token.h"

static double now_s(void)
{
    return (double)lv_mono_ms() / 1000.0;
}

/* The message a receipt signature covers is ~300 bytes; sign one like it. */
static int bench_sign(double seconds)
{
    TokenConfig c = {
        .module_path = getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
    Token *t = NULL;
    if (token_open(&c, &t) < 0 || token_check_signing_key(t) < 0) {
        fprintf(stderr, "witness-bench: token: %s\n", lv_error());
        token_close(t);
        return 1;
    }
    uint8_t msg[320], sig[TOKEN_ED25519_SIG_LEN];
    memset(msg, 'm', sizeof(msg));
    uint64_t n = 0;
    double t0 = now_s(), t1 = t0;
    do {
        msg[n % sizeof(msg)] ^= 1;
        if (token_sign(t, msg, sizeof(msg), sig) < 0) {
            fprintf(stderr, "witness-bench: sign: %s\n", lv_error());
            token_close(t);
            return 1;
        }
        n++;
    } while ((t1 = now_s()) - t0 < seconds);
    token_close(t);
    printf("%.1f\n", (double)n / (t1 - t0));
    return 0;
}

/* The storage ceiling the witness cannot beat: each decision is its own
 * durable transaction. Rows are the size of a stored receipt. */
static int bench_commit(double seconds, const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    char doc[1000];
    memset(doc, 'd', sizeof(doc) - 1);
    doc[sizeof(doc) - 1] = '\0';
    if (sqlite3_open(path, &db) != SQLITE_OK ||
        sqlite3_exec(db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "CREATE TABLE IF NOT EXISTS r (k INTEGER PRIMARY KEY, doc TEXT NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO r (doc) VALUES (?1)", -1, &ins, NULL) != SQLITE_OK) {
        fprintf(stderr, "witness-bench: %s: %s\n", path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return 1;
    }
    uint64_t n = 0;
    double t0 = now_s(), t1 = t0;
    do {
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            break;
        sqlite3_bind_text(ins, 1, doc, -1, SQLITE_STATIC);
        int rc = sqlite3_step(ins);
        sqlite3_reset(ins);
        if (rc != SQLITE_DONE || sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
            break;
        n++;
    } while ((t1 = now_s()) - t0 < seconds);
    int ok = sqlite3_get_autocommit(db);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    if (!ok) {
        fprintf(stderr, "witness-bench: commit loop failed\n");
        return 1;
    }
    printf("%.1f %" PRIu64 "\n", (double)n / (t1 - t0), n);
    return 0;
}

typedef struct Client {
    const char *url;
    int id;
    double until;
    uint64_t done;
    int failed;
} Client;

static size_t discard(char *p, size_t s, size_t n, void *u)
{
    return s * n;
}

/* Each client extends its own stream: every request is a new acceptance,
 * so every one signs and commits. */
static void *client_main(void *arg)
{
    Client *c = arg;
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    hdr = curl_slist_append(hdr, "Expect:");
    /* TCP submissions need a tenant's bearer secret (docs/witness.md
     * "Tenants"); bench/witness sets one up. */
    const char *secret = getenv("LV_BENCH_WITNESS_BEARER");
    char auth[256];
    if (secret) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", secret);
        hdr = curl_slist_append(hdr, auth);
    }
    char prev[65] = "", cur[65], body[512], url[256];
    snprintf(url, sizeof(url), "%s/v1/witness/checkpoints", c->url);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 30L);
    char stream[64];
    uint8_t rnd[6];
    lv_random(rnd, sizeof(rnd));
    snprintf(stream, sizeof(stream), "bench-%d-%02x%02x%02x%02x%02x%02x", c->id, rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5]);
    for (uint64_t seq = 0; now_s() < c->until; seq++) {
        char seed[96];
        int n = snprintf(seed, sizeof(seed), "%s:%" PRIu64, stream, seq);
        lv_sha256_hex(seed, (size_t)n, cur);
        if (seq == 0)
            snprintf(body, sizeof(body),
                     "{\"tenant_id\":\"bench\",\"stream_id\":\"%s\",\"checkpoint_id\":\"c%" PRIu64
                     "\",\"checkpoint_seq_no\":%" PRIu64 ",\"checkpoint_hash\":\"%s\"}",
                     stream, seq, seq, cur);
        else
            snprintf(body, sizeof(body),
                     "{\"tenant_id\":\"bench\",\"stream_id\":\"%s\",\"checkpoint_id\":\"c%" PRIu64
                     "\",\"checkpoint_seq_no\":%" PRIu64 ",\"checkpoint_hash\":\"%s\","
                     "\"previous_checkpoint_hash\":\"%s\"}",
                     stream, seq, seq, cur, prev);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        long code = 0;
        if (curl_easy_perform(h) != CURLE_OK ||
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code != 200) {
            fprintf(stderr, "witness-bench: client %d: seq %" PRIu64 ": HTTP %ld\n", c->id, seq,
                    code);
            c->failed = 1;
            break;
        }
        memcpy(prev, cur, sizeof(prev));
        c->done++;
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return NULL;
}

static int bench_load(const char *url, int clients, double seconds)
{
    if (clients < 1 || clients > 64)
        return 2;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Client cs[64];
    pthread_t th[64];
    double t0 = now_s();
    for (int i = 0; i < clients; i++) {
        cs[i] = (Client){.url = url, .id = i, .until = t0 + seconds};
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    uint64_t total = 0;
    int failed = 0;
    for (int i = 0; i < clients; i++) {
        pthread_join(th[i], NULL);
        total += cs[i].done;
        failed |= cs[i].failed;
    }
    double t1 = now_s();
    curl_global_cleanup();
    if (failed)
        return 1;
    printf("%.1f %" PRIu64 "\n", (double)total / (t1 - t0), total);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "sign") == 0)
        return bench_sign(atof(argv[2]));
    if (argc == 4 && strcmp(argv[1], "commit") == 0)
        return bench_commit(atof(argv[2]), argv[3]);
    if (argc == 5 && strcmp(argv[1], "load") == 0)
        return bench_load(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: lv-witness-bench sign SECONDS | commit SECONDS DB | "
                    "load URL CLIENTS SECONDS\n");
    return 2;
}
