/* SPDX-License-Identifier: Apache-2.0 */
/* The witness module on a fresh SoftHSM token and a real SQLite file: the
 * decision table row by row, replays without the token, the database's own
 * guards (append-only history, heads that only advance by one), the file's
 * mode and identity checks, and the offline verifier's refusals. */
#include <fcntl.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "canon.h"
#include "lv.h"
#include "lvtest.h"
#include "pubkey.h"
#include "token.h"
#include "witness.h"

#define WID "wit-1"
#define TEN "ten_1"
#define STR "str_1"

typedef struct Fixture {
    Token *t;
    Witness *w;
    char path[512];
    uint8_t pk[32];
} Fixture;

static void hash_of(const char *tag, int64_t seq, char out[65])
{
    char buf[128];
    int n = snprintf(buf, sizeof(buf), "%s:%lld", tag, (long long)seq);
    lv_sha256_hex(buf, (size_t)n, out);
}

static int setup(void **state)
{
    const char *dir = lvtest_make_token("attesto");
    Fixture *f = calloc(1, sizeof(*f));
    f->t = lvtest_open_token(NULL, f->pk);
    snprintf(f->path, sizeof(f->path), "%s/witness.sqlite3", dir);
    if (witness_open(f->path, 0, &f->w) < 0)
        fail_msg("witness_open: %s", lv_error());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    witness_close(f->w);
    token_close(f->t);
    free(f);
    lvtest_cleanup();
    return 0;
}

/* Submits and checks the result; returns the outcome (caller frees). */
static WitnessOutcome submit(Fixture *f, Token *t, const char *stream, const char *cid, int64_t seq,
                             const char *hash, const char *prev, WitnessResult want,
                             WitnessReason reason)
{
    WitnessRequest req = {TEN, stream, cid, seq, hash, prev};
    WitnessOutcome o = {0};
    int r = witness_submit(f->w, t, WID, &req, &o);
    if (r < 0)
        fail_msg("witness_submit seq %lld: %s", (long long)seq, lv_error());
    assert_int_equal(o.result, want);
    assert_int_equal(o.reason, reason);
    if (want == WITNESS_GAP)
        assert_null(o.document);
    else {
        assert_non_null(o.document);
        assert_int_equal(strlen(o.document), o.document_len);
        cJSON *summary = NULL;
        if (witness_verify_document(o.document, o.document_len, f->pk, &summary) < 0)
            fail_msg("verify: %s", lv_error());
        cJSON_Delete(summary);
    }
    return o;
}

static int64_t head_of(Fixture *f, const char *stream)
{
    int64_t seq = -1;
    int r = witness_head(f->w, WID, TEN, stream, &seq, NULL);
    return r == -ENOENT ? -1 : seq;
}

static void decision_table_row_by_row(void **state)
{
    Fixture *f = *state;
    char h[6][65], x[65], y1[65], y2[65];
    for (int i = 0; i < 6; i++)
        hash_of("a", i, h[i]);
    hash_of("x", 2, x);
    hash_of("y", 1, y1);
    hash_of("y", 2, y2);

    /* no head yet: accept (first use) */
    WitnessOutcome first = submit(f, f->t, STR, "c0", 0, h[0], NULL, WITNESS_ACCEPTED, 0);
    assert_int_equal(first.head_seq, -1);
    assert_int_equal(head_of(f, STR), 0);
    /* seq = H.seq+1, previous = H.hash: accept, head advances */
    for (int i = 1; i <= 3; i++) {
        WitnessOutcome o = submit(f, f->t, STR, "c", i, h[i], h[i - 1], WITNESS_ACCEPTED, 0);
        assert_int_equal(o.head_seq, i - 1);
        witness_outcome_done(&o);
    }
    assert_int_equal(head_of(f, STR), 3);
    /* seq = H.seq, hash = H.hash: replayed, the stored bytes */
    char *stored = NULL;
    int64_t hs;
    assert_int_equal(witness_head(f->w, WID, TEN, STR, &hs, &stored), 0);
    WitnessOutcome rep = submit(f, f->t, STR, "c", 3, h[3], h[2], WITNESS_REPLAYED, 0);
    assert_string_equal(rep.document, stored);
    /* seq <= H.seq with another hash in history: conflicting (at the head and below) */
    WitnessOutcome c1 =
        submit(f, f->t, STR, "cx", 3, x, h[2], WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    WitnessOutcome c2 =
        submit(f, f->t, STR, "cx", 2, x, h[1], WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    /* seq < H.seq otherwise: stale */
    WitnessOutcome st =
        submit(f, f->t, STR, "c", 1, h[1], h[0], WITNESS_FORK, WITNESS_REASON_STALE);
    /* seq = H.seq+1, previous != H.hash: divergent */
    WitnessOutcome dv =
        submit(f, f->t, STR, "cy", 4, y2, y1, WITNESS_FORK, WITNESS_REASON_DIVERGENT);
    /* seq > H.seq+1: gap, nothing signed */
    WitnessOutcome gp = submit(f, f->t, STR, "c", 6, h[5], h[4], WITNESS_GAP, 0);
    assert_int_equal(gp.head_seq, 3);
    assert_int_equal(head_of(f, STR), 3);
    /* The same fork again: the stored evidence, not a new one. */
    WitnessOutcome c1b =
        submit(f, f->t, STR, "cx", 3, x, h[2], WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    assert_true(c1b.reused);
    assert_false(c1.reused);
    assert_string_equal(c1b.document, c1.document);
    /* Extending without a previous hash is bad input. */
    WitnessRequest req = {TEN, STR, "c4", 4, h[4], NULL};
    WitnessOutcome o = {0};
    assert_int_equal(witness_submit(f->w, f->t, WID, &req, &o), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "previous_checkpoint_hash"));
    assert_null(o.document);
    /* Evidence never moved the head; the honest successor still goes in. */
    WitnessOutcome next = submit(f, f->t, STR, "c4", 4, h[4], h[3], WITNESS_ACCEPTED, 0);
    assert_int_equal(head_of(f, STR), 4);

    free(stored);
    WitnessOutcome *all[] = {&first, &rep, &c1, &c2, &st, &dv, &gp, &c1b, &next};
    for (size_t i = 0; i < ELEMENTSOF(all); i++)
        witness_outcome_done(all[i]);
}

static int count_rows(const char *path, const char *table)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return n;
}

static void replay_needs_no_token_but_new_statements_do(void **state)
{
    Fixture *f = *state;
    char h0[65], h1[65], x[65];
    hash_of("b", 0, h0);
    hash_of("b", 1, h1);
    hash_of("bx", 0, x);
    WitnessOutcome a = submit(f, f->t, "str_nt", "c0", 0, h0, NULL, WITNESS_ACCEPTED, 0);
    WitnessOutcome r = submit(f, NULL, "str_nt", "c0", 0, h0, NULL, WITNESS_REPLAYED, 0);
    assert_string_equal(a.document, r.document);
    int cps = count_rows(f->path, "checkpoints"), forks = count_rows(f->path, "fork_evidence");
    WitnessRequest req = {TEN, "str_nt", "c1", 1, h1, h0};
    WitnessOutcome o = {0};
    assert_int_equal(witness_submit(f->w, NULL, WID, &req, &o), LV_ERR_TOKEN);
    WitnessRequest fork = {TEN, "str_nt", "c0x", 0, x, NULL};
    assert_int_equal(witness_submit(f->w, NULL, WID, &fork, &o), LV_ERR_TOKEN);
    assert_int_equal(count_rows(f->path, "checkpoints"), cps);
    assert_int_equal(count_rows(f->path, "fork_evidence"), forks);
    assert_int_equal(head_of(f, "str_nt"), 0);
    witness_outcome_done(&a);
    witness_outcome_done(&r);
}

static int exec_on(const char *path, const char *sql)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc;
}

static void database_refuses_rewriting_history(void **state)
{
    Fixture *f = *state;
    char h0[65], h1[65];
    hash_of("c", 0, h0);
    hash_of("c", 1, h1);
    WitnessOutcome a = submit(f, f->t, "str_db", "c0", 0, h0, NULL, WITNESS_ACCEPTED, 0);
    WitnessOutcome b = submit(f, f->t, "str_db", "c1", 1, h1, h0, WITNESS_ACCEPTED, 0);
    assert_int_not_equal(exec_on(f->path, "UPDATE checkpoints SET checkpoint_hash = "
                                          "checkpoint_hash WHERE stream_id = 'str_db'"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "DELETE FROM checkpoints WHERE stream_id = 'str_db'"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "UPDATE heads SET seq = seq + 2 WHERE stream_id = "
                                          "'str_db'"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "UPDATE heads SET seq = seq - 1 WHERE stream_id = "
                                          "'str_db'"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "DELETE FROM heads WHERE stream_id = 'str_db'"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "INSERT INTO heads VALUES ('w', 't', 's', 5)"),
                         SQLITE_OK);
    assert_int_not_equal(exec_on(f->path, "DELETE FROM fork_evidence"), SQLITE_OK);
    assert_int_equal(head_of(f, "str_db"), 1);
    witness_outcome_done(&a);
    witness_outcome_done(&b);
}

static void database_file_checks(void **state)
{
    Fixture *f = *state;
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    const char *dir = lvtest_tmpdir();
    char p[512];
    Witness *w = NULL;
    /* Another SQLite file (a spool, say) is not taken over. */
    snprintf(p, sizeof(p), "%s/other.sqlite3", dir);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    close(fd);
    assert_int_equal(exec_on(p, "CREATE TABLE items (x)"), SQLITE_OK);
    assert_int_equal(witness_open(p, 0, &w), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "not a witness database"));
    /* A newer schema is refused, not downgraded. */
    snprintf(p, sizeof(p), "%s/newer.sqlite3", dir);
    assert_int_equal(witness_open(p, 0, &w), 0);
    w = witness_close(w);
    assert_int_equal(exec_on(p, "PRAGMA user_version = 99"), SQLITE_OK);
    assert_true(witness_open(p, 0, &w) < 0);
    assert_non_null(strstr(lv_error(), "newer"));
    /* A file others may write is refused. */
    snprintf(p, sizeof(p), "%s/loose.sqlite3", dir);
    assert_int_equal(witness_open(p, 0, &w), 0);
    w = witness_close(w);
    assert_int_equal(chmod(p, 0666), 0);
    assert_int_equal(witness_open(p, 0, &w), -EPERM);
    assert_non_null(strstr(lv_error(), "writable by group or others"));
    /* Read-only opening never creates. */
    snprintf(p, sizeof(p), "%s/absent.sqlite3", dir);
    assert_int_equal(witness_open(p, WITNESS_OPEN_READONLY, &w), -ENOENT);
    assert_int_equal(stat(p, &st), -1);
}

/* Signs an arbitrary statement as the witness would (for the verifier's
 * negative cases). */
static char *sign_doc(Fixture *f, const char *domain, const char *result, const char *statement)
{
    cJSON *tree = NULL;
    char *jcs = NULL, *doc = NULL, sh[65], sig_hex[129], pk_hex[65];
    size_t jlen, mlen;
    uint8_t *msg = NULL, sig[64];
    if (canon_parse(statement, strlen(statement), 65536, "statement", &tree) < 0 ||
        canon_serialize(tree, &jcs, &jlen) < 0 ||
        pubkey_signed_message(domain, jcs, jlen, &msg, &mlen) < 0 ||
        token_sign(f->t, msg, mlen, sig) < 0)
        fail_msg("sign_doc: %s", lv_error());
    lv_sha256_hex(jcs, jlen, sh);
    hex_encode(sig, 64, sig_hex);
    hex_encode(f->pk, 32, pk_hex);
    char *pem = NULL;
    assert_int_equal(pubkey_to_pem(f->pk, &pem), 0);
    cJSON *pemj = cJSON_CreateString(pem);
    char *pem_json = cJSON_PrintUnformatted(pemj);
    const char *kid = token_key_id(f->t);
    assert_true(asprintf(&doc,
                         "{\"result\":\"%s\",\"statement\":%s,\"statement_hash\":\"%s\","
                         "\"signature\":{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"signature\":\"%s\"},"
                         "\"public_key\":{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"public_key_hex\":"
                         "\"%s\",\"public_key_pem\":%s}}",
                         result, jcs, sh, kid, sig_hex, kid, pk_hex, pem_json) > 0);
    cJSON_Delete(tree);
    cJSON_Delete(pemj);
    free(pem_json);
    free(pem);
    free(jcs);
    free(msg);
    return doc;
}

static void verifier_refuses_forgeries_and_inconsistent_evidence(void **state)
{
    Fixture *f = *state;
    char h0[65];
    hash_of("v", 0, h0);
    WitnessOutcome a = submit(f, f->t, "str_v", "c0", 0, h0, NULL, WITNESS_ACCEPTED, 0);
    char *doc = strdup(a.document);
    size_t n = a.document_len;

    /* One bit of the signature flipped. */
    char *p = strstr(doc, "\"signature\":\"") + 13;
    *p = *p == '0' ? '1' : '0';
    assert_int_equal(witness_verify_document(doc, n, NULL, NULL), LV_ERR_CRYPTO);
    strcpy(doc, a.document);
    /* The statement changed under its hash. */
    p = strstr(doc, "\"checkpoint_id\":\"c0\"");
    p[17] = 'd';
    assert_int_equal(witness_verify_document(doc, n, NULL, NULL), LV_ERR_CRYPTO);
    assert_non_null(strstr(lv_error(), "statement_hash"));
    strcpy(doc, a.document);
    /* Pinned to another key. */
    uint8_t other[32];
    memcpy(other, f->pk, 32);
    other[0] ^= 1;
    assert_int_equal(witness_verify_document(doc, n, other, NULL), LV_ERR_CRYPTO);
    assert_int_equal(witness_verify_document(doc, n, f->pk, NULL), 0);
    /* A receipt presented as fork evidence. */
    p = strstr(doc, "\"result\":\"accepted\"");
    assert_non_null(p);
    char *swapped = NULL;
    assert_true(asprintf(&swapped, "{\"result\":\"fork_evidence\"%s", doc + 20) > 0);
    assert_int_equal(witness_verify_document(swapped, strlen(swapped), NULL, NULL), LV_ERR_INPUT);
    free(swapped);

    /* A correctly signed receipt statement under the fork-evidence domain. */
    const char *stmt_start = strstr(a.document, "\"statement\":") + 12;
    const char *stmt_end = strstr(a.document, ",\"statement_hash\"");
    char *stmt = strndup(stmt_start, (size_t)(stmt_end - stmt_start));
    char *wrong_domain = sign_doc(f, WITNESS_FORK_DOMAIN, "accepted", stmt);
    assert_int_equal(witness_verify_document(wrong_domain, strlen(wrong_domain), NULL, NULL),
                     LV_ERR_CRYPTO);
    char *right = sign_doc(f, WITNESS_RECEIPT_DOMAIN, "accepted", stmt);
    assert_int_equal(witness_verify_document(right, strlen(right), NULL, NULL), 0);

    /* Signed evidence whose checkpoints do not show its reason. */
    char *ev = NULL;
    assert_true(asprintf(&ev,
                         "{\"kind\":\"fork_evidence\",\"witness_id\":\"w\",\"tenant_id\":\"t\","
                         "\"stream_id\":\"s\",\"reason\":\"conflicting_checkpoint\",\"result\":"
                         "\"verifier_rejects_ambiguous_history\",\"detected_by\":\"x\","
                         "\"detected_at\":\"2026-01-01T00:00:00Z\",\"conflicting_checkpoints\":["
                         "{\"checkpoint_id\":\"a\",\"checkpoint_head_hash\":\"%s\"},"
                         "{\"checkpoint_id\":\"b\",\"checkpoint_head_hash\":\"%s\"}],"
                         "\"accepted_checkpoint\":{\"checkpoint_id\":\"a\",\"checkpoint_seq_no\":1,"
                         "\"checkpoint_hash\":\"%s\",\"previous_checkpoint_hash\":null,"
                         "\"witnessed_at\":\"2026-01-01T00:00:00Z\",\"receipt_statement_hash\":"
                         "\"%s\"},\"submitted_checkpoint\":{\"checkpoint_id\":\"b\","
                         "\"checkpoint_seq_no\":2,\"checkpoint_hash\":\"%s\","
                         "\"previous_checkpoint_hash\":null}}",
                         h0, h0, h0, h0, h0) > 0);
    char *bad_ev = sign_doc(f, WITNESS_FORK_DOMAIN, "fork_evidence", ev);
    assert_int_equal(witness_verify_document(bad_ev, strlen(bad_ev), NULL, NULL), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "do not show"));

    free(ev);
    free(bad_ev);
    free(wrong_domain);
    free(right);
    free(stmt);
    free(doc);
    witness_outcome_done(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(decision_table_row_by_row),
        cmocka_unit_test(replay_needs_no_token_but_new_statements_do),
        cmocka_unit_test(database_refuses_rewriting_history),
        cmocka_unit_test(database_file_checks),
        cmocka_unit_test(verifier_refuses_forgeries_and_inconsistent_evidence),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
