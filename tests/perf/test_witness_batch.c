/* SPDX-License-Identifier: Apache-2.0 */
/* Group commit of the witness (witness_submit_batch), on a fresh SoftHSM
 * token and a real SQLite file: jobs decided in order inside one
 * transaction, each seeing the ones before it; a failing job undoes itself
 * alone; replays and reused fork evidence byte-identical; a batch without
 * the token still answers replays; everything answered is committed. The
 * token is reached through the fault-injecting shim (tests/shim), which
 * passes every call through until a test writes a rule: a token that
 * returns a wrong signature is a fault SoftHSM cannot produce. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "lvtest.h"
#include "token.h"
#include "witness.h"

#define WID "wit-batch"
#define TEN "ten_b"

typedef struct Fixture {
    Token *t;
    Witness *w;
    char path[512];
    char rules[512];
    char log[512];
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
    if (!getenv("LV_SHIM"))
        fail_msg("LV_SHIM is not set (the test runs through the shim, see tests.cmake)");
    snprintf(f->rules, sizeof(f->rules), "%s/shim.rules", dir);
    snprintf(f->log, sizeof(f->log), "%s/shim.log", dir);
    setenv("LV_SHIM_MODULE", getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"), 1);
    setenv("LV_SHIM_RULES", f->rules, 1);
    setenv("LV_SHIM_LOG", f->log, 1);
    f->t = lvtest_open_token(getenv("LV_SHIM"), f->pk);
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

static void check_ok(Fixture *f, const WitnessJob *j, WitnessResult want, WitnessReason reason)
{
    if (j->r < 0)
        fail_msg("job failed: %s", j->detail);
    assert_int_equal(j->out.result, want);
    assert_int_equal(j->out.reason, reason);
    if (want == WITNESS_GAP) {
        assert_null(j->out.document);
        return;
    }
    assert_non_null(j->out.document);
    assert_int_equal(strlen(j->out.document), j->out.document_len);
    cJSON *summary = NULL;
    if (witness_verify_document(j->out.document, j->out.document_len, f->pk, &summary) < 0)
        fail_msg("verify: %s", lv_error());
    cJSON_Delete(summary);
}

/* Replaces the shim's rules (a new inode: the shim rereads them at its next
 * call, and its counters start again). */
static void write_rules(Fixture *f, const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", f->rules);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, f->rules), 0);
}

static int log_count(Fixture *f, const char *needle)
{
    FILE *fp = fopen(f->log, "r");
    if (!fp)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), fp))
        n += strstr(line, needle) != NULL;
    fclose(fp);
    return n;
}

/* What another connection sees: committed state only. */
static int64_t committed_head(Fixture *f, const char *stream)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int64_t seq = -1;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT seq FROM heads WHERE witness_id=?1 AND "
                                        "tenant_id=?2 AND stream_id=?3",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, WID, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, TEN, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, stream, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return seq;
}

static void batch_decides_in_order_and_failures_stay_alone(void **state)
{
    Fixture *f = *state;
    char h[4][65], x[65], y[65];
    for (int i = 0; i < 4; i++)
        hash_of("a", i, h[i]);
    hash_of("x", 1, x);
    hash_of("y", 0, y);
    WitnessRequest reqs[] = {
        /* 0 */ {TEN, "s1", "c0", 0, h[0], NULL},      /* first use: accepted */
        /* 1 */ {TEN, "s1", "c1", 1, h[1], h[0]},      /* extends job 0: accepted */
        /* 2 */ {TEN, "s1", "c1", 1, h[1], h[0]},      /* job 1 again: replayed */
        /* 3 */ {TEN, "s1", "cx", 1, x, h[0]},         /* other hash at 1: conflicting */
        /* 4 */ {TEN, "s1", "cx", 1, x, h[0]},         /* the same fork again: reused */
        /* 5 */ {TEN, "s1", "c5", 5, h[3], h[2]},      /* skips ahead: gap */
        /* 6 */ {TEN, "s1", "c2", 2, h[2], NULL},      /* extends without previous: refused */
        /* 7 */ {TEN, "bad stream", "c0", 0, y, NULL}, /* bad identifier: refused */
        /* 8 */ {TEN, "s2", "c0", 0, y, NULL},         /* another stream: accepted */
        /* 9 */ {TEN, "s1", "c2", 2, h[2], h[1]},      /* after the refusal: accepted */
    };
    size_t n = ELEMENTSOF(reqs);
    WitnessJob jobs[ELEMENTSOF(reqs)];
    for (size_t i = 0; i < n; i++)
        jobs[i] = (WitnessJob){.req = &reqs[i]};
    assert_int_equal(witness_submit_batch(f->w, f->t, WID, jobs, n), 0);

    check_ok(f, &jobs[0], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
    assert_int_equal(jobs[0].out.head_seq, -1);
    check_ok(f, &jobs[1], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
    assert_int_equal(jobs[1].out.head_seq, 0);
    check_ok(f, &jobs[2], WITNESS_REPLAYED, WITNESS_REASON_NONE);
    assert_string_equal(jobs[2].out.document, jobs[1].out.document);
    check_ok(f, &jobs[3], WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    assert_false(jobs[3].out.reused);
    check_ok(f, &jobs[4], WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    assert_true(jobs[4].out.reused);
    assert_string_equal(jobs[4].out.document, jobs[3].out.document);
    check_ok(f, &jobs[5], WITNESS_GAP, WITNESS_REASON_NONE);
    assert_int_equal(jobs[5].out.head_seq, 1);
    assert_int_equal(jobs[6].r, LV_ERR_INPUT);
    assert_non_null(strstr(jobs[6].detail, "previous_checkpoint_hash"));
    assert_null(jobs[6].out.document);
    assert_int_equal(jobs[7].r, LV_ERR_INPUT);
    assert_non_null(strstr(jobs[7].detail, "stream_id"));
    assert_null(jobs[7].out.document);
    check_ok(f, &jobs[8], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
    check_ok(f, &jobs[9], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
    assert_int_equal(jobs[9].out.head_seq, 1);

    /* Committed: another connection sees the heads the answers promised. */
    assert_int_equal(committed_head(f, "s1"), 2);
    assert_int_equal(committed_head(f, "s2"), 0);
    /* And a later single submission replays the batch's receipt byte for byte. */
    WitnessOutcome o = {0};
    assert_int_equal(witness_submit(f->w, f->t, WID, &reqs[9], &o), 0);
    assert_int_equal(o.result, WITNESS_REPLAYED);
    assert_string_equal(o.document, jobs[9].out.document);
    witness_outcome_done(&o);
    for (size_t i = 0; i < n; i++)
        witness_outcome_done(&jobs[i].out);
}

static void batch_without_token_answers_replays_only(void **state)
{
    Fixture *f = *state;
    char h0[65], h1[65];
    hash_of("t", 0, h0);
    hash_of("t", 1, h1);
    WitnessRequest first = {TEN, "s3", "c0", 0, h0, NULL};
    WitnessOutcome o = {0};
    assert_int_equal(witness_submit(f->w, f->t, WID, &first, &o), 0);
    WitnessRequest reqs[] = {
        {TEN, "s3", "c1", 1, h1, h0},   /* needs a signature: token error */
        {TEN, "s3", "c0", 0, h0, NULL}, /* replay: answered from the store */
    };
    WitnessJob jobs[2] = {{.req = &reqs[0]}, {.req = &reqs[1]}};
    assert_int_equal(witness_submit_batch(f->w, NULL, WID, jobs, 2), 0);
    assert_true(lv_is_token_error(jobs[0].r));
    assert_null(jobs[0].out.document);
    check_ok(f, &jobs[1], WITNESS_REPLAYED, WITNESS_REASON_NONE);
    assert_string_equal(jobs[1].out.document, o.document);
    assert_int_equal(committed_head(f, "s3"), 0);
    witness_outcome_done(&o);
    witness_outcome_done(&jobs[1].out);
}

static void many_streams_in_one_batch(void **state)
{
    /* A full batch of first uses and extensions, as 8 clients send them. */
    Fixture *f = *state;
    enum { N = 48 };
    WitnessRequest reqs[N];
    WitnessJob jobs[N];
    char hashes[N][65], streams[N][16], ids[N][16];
    for (int i = 0; i < N; i++) {
        int stream = i % 8, seq = i / 8;
        snprintf(streams[i], sizeof(streams[i]), "m%d", stream);
        snprintf(ids[i], sizeof(ids[i]), "c%d", seq);
        hash_of(streams[i], seq, hashes[i]);
        reqs[i] =
            (WitnessRequest){TEN, streams[i], ids[i], seq, hashes[i], seq ? hashes[i - 8] : NULL};
        jobs[i] = (WitnessJob){.req = &reqs[i]};
    }
    assert_int_equal(witness_submit_batch(f->w, f->t, WID, jobs, N), 0);
    for (int i = 0; i < N; i++) {
        check_ok(f, &jobs[i], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
        assert_int_equal(jobs[i].out.head_seq, i / 8 - 1);
        witness_outcome_done(&jobs[i].out);
    }
    for (int s = 0; s < 8; s++)
        assert_int_equal(committed_head(f, streams[s]), N / 8 - 1);
}

/* Four first uses, one on each of the streams <tag>0..3. */
typedef struct Four {
    WitnessRequest reqs[4];
    WitnessJob jobs[4];
    char streams[4][16], hashes[4][65];
} Four;

static void first_uses(const char *tag, Four *q)
{
    for (int i = 0; i < 4; i++) {
        snprintf(q->streams[i], 16, "%s%d", tag, i);
        hash_of(q->streams[i], 0, q->hashes[i]);
        q->reqs[i] = (WitnessRequest){TEN, q->streams[i], "c0", 0, q->hashes[i], NULL};
        q->jobs[i] = (WitnessJob){.req = &q->reqs[i]};
    }
}

/* Submits the four jobs as one batch with the shim's rules in force;
 * returns how many outputs the shim corrupted. */
static int submit_with_rules(Fixture *f, const char *rules, WitnessJob jobs[4])
{
    int before = log_count(f, " C_Sign CKR_OK corrupt-output");
    write_rules(f, rules);
    assert_int_equal(witness_submit_batch(f->w, f->t, WID, jobs, 4), 0);
    write_rules(f, "");
    return log_count(f, " C_Sign CKR_OK corrupt-output") - before;
}

/* The token returns a wrong signature for the third job when the batch is
 * signed ahead. The check on the second thread finds it, the transaction
 * does not use it, and signs that job again (checked inline): the token
 * signs right this time, so all four are answered, each with a receipt that
 * verifies (had the bad one been stored, its check_ok would fail). */
static void bad_signature_ahead_is_signed_again_in_the_transaction(void **state)
{
    Fixture *f = *state;
    Four q;
    first_uses("bad", &q);
    assert_int_equal(
        submit_with_rules(f, "C_Sign CKR_OK effect=corrupt-output after=2 times=1\n", q.jobs), 1);
    for (int i = 0; i < 4; i++) {
        check_ok(f, &q.jobs[i], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
        witness_outcome_done(&q.jobs[i].out);
        assert_int_equal(committed_head(f, q.streams[i]), 0);
    }
}

/* The token is wrong again when the third job is signed in the
 * transaction: that job alone is refused as a token fault, with nothing
 * stored for it. The others keep their good signatures made ahead, the
 * fourth too, although the token is not used again in this batch. */
static void bad_signature_again_refuses_that_job_alone(void **state)
{
    Fixture *f = *state;
    Four q;
    first_uses("worse", &q);
    /* C_Sign calls 1-4 sign ahead (the 3rd wrong); call 5 signs the third
     * job again in the transaction, wrong too. */
    assert_int_equal(submit_with_rules(f,
                                       "C_Sign CKR_OK effect=corrupt-output after=2 times=1\n"
                                       "C_Sign CKR_OK effect=corrupt-output after=4 times=1\n",
                                       q.jobs),
                     2);
    for (int i = 0; i < 4; i++) {
        if (i == 2)
            continue;
        check_ok(f, &q.jobs[i], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
        witness_outcome_done(&q.jobs[i].out);
        assert_int_equal(committed_head(f, q.streams[i]), 0);
    }
    assert_int_equal(q.jobs[2].r, LV_ERR_TOKEN);
    assert_non_null(strstr(q.jobs[2].detail, "does not verify"));
    assert_null(q.jobs[2].out.document);
    assert_int_equal(committed_head(f, q.streams[2]), -1);
}

/* A statement signed ahead is only a proposal: here the head moves between
 * the signing ahead and the commit (as when the CLI, another process, wins
 * the seq), and the commit decides again: the submission is now a fork, and
 * the acceptance signed ahead is neither stored nor answered. */
static void proposal_signed_ahead_of_a_moved_head_is_not_used(void **state)
{
    Fixture *f = *state;
    char mine[65], theirs[65];
    hash_of("mine", 0, mine);
    hash_of("theirs", 0, theirs);
    WitnessRequest req = {TEN, "moved", "c0", 0, mine, NULL};
    WitnessJob job = {.req = &req};
    assert_int_equal(witness_presign_batch(f->w, f->t, WID, &job, 1, NULL), 0);
    assert_non_null(job.pre);

    WitnessRequest other = {TEN, "moved", "c0", 0, theirs, NULL};
    WitnessOutcome o = {0};
    assert_int_equal(witness_submit(f->w, f->t, WID, &other, &o), 0);
    assert_int_equal(o.result, WITNESS_ACCEPTED);

    assert_int_equal(witness_commit_batch(f->w, f->t, WID, &job, 1), 0);
    assert_null(job.pre);
    check_ok(f, &job, WITNESS_FORK, WITNESS_REASON_CONFLICTING);
    assert_null(strstr(job.out.document, "\"result\":\"accepted\""));
    /* The head is theirs, and its receipt is the one stored. */
    int64_t seq = -1;
    char *receipt = NULL;
    assert_int_equal(witness_head(f->w, WID, TEN, "moved", &seq, &receipt), 0);
    assert_int_equal(seq, 0);
    assert_string_equal(receipt, o.document);
    free(receipt);
    witness_outcome_done(&o);
    witness_outcome_done(&job.out);
}

/* What is not signed ahead: a stream the caller says is in flight, and a
 * second submission of a stream within one batch (it depends on the
 * first). Both are then signed in the transaction, and all are answered. */
static void skipped_and_repeated_streams_are_signed_in_the_transaction(void **state)
{
    Fixture *f = *state;
    char h0[65], h1[65], g0[65];
    hash_of("rep", 0, h0);
    hash_of("rep", 1, h1);
    hash_of("skip", 0, g0);
    WitnessRequest reqs[] = {
        {TEN, "rep", "c0", 0, h0, NULL},
        {TEN, "rep", "c1", 1, h1, h0},
        {TEN, "skip", "c0", 0, g0, NULL},
    };
    WitnessJob jobs[3] = {{.req = &reqs[0]}, {.req = &reqs[1]}, {.req = &reqs[2]}};
    const bool skip[3] = {false, false, true};
    assert_int_equal(witness_presign_batch(f->w, f->t, WID, jobs, 3, skip), 0);
    assert_non_null(jobs[0].pre);
    assert_null(jobs[1].pre);
    assert_null(jobs[2].pre);
    assert_int_equal(witness_commit_batch(f->w, f->t, WID, jobs, 3), 0);
    for (int i = 0; i < 3; i++) {
        check_ok(f, &jobs[i], WITNESS_ACCEPTED, WITNESS_REASON_NONE);
        witness_outcome_done(&jobs[i].out);
    }
    assert_int_equal(committed_head(f, "rep"), 1);
    assert_int_equal(committed_head(f, "skip"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batch_decides_in_order_and_failures_stay_alone),
        cmocka_unit_test(batch_without_token_answers_replays_only),
        cmocka_unit_test(many_streams_in_one_batch),
        cmocka_unit_test(bad_signature_ahead_is_signed_again_in_the_transaction),
        cmocka_unit_test(bad_signature_again_refuses_that_job_alone),
        cmocka_unit_test(proposal_signed_ahead_of_a_moved_head_is_not_used),
        cmocka_unit_test(skipped_and_repeated_streams_are_signed_in_the_transaction),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
