/* SPDX-License-Identifier: Apache-2.0 */
/* spool_enqueue_groups on a fresh SoftHSM token and a real SQLite file: the
 * signer runs ahead across groups, yet each group is its own transaction,
 * reported only after its COMMIT (another connection already sees it) and
 * before the next group writes; repeats across groups of one call are
 * duplicates, never signed again; a stop asked by the report leaves exactly
 * the reported groups. */
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "lvtest.h"
#include "spool.h"
#include "token.h"

static struct {
    Token *tok;
    const char *dir;
    int counter;
} fx;

static int group_setup(void **state)
{
    lvtest_make_token("attesto");
    fx.tok = lvtest_open_token(NULL, NULL);
    fx.dir = lvtest_tmpdir();
    return 0;
}

static int group_teardown(void **state)
{
    token_close(fx.tok);
    lvtest_cleanup();
    return 0;
}

static Spool *open_new(char path[512])
{
    snprintf(path, 512, "%s/groups-%d.sqlite3", fx.dir, ++fx.counter);
    SpoolOptions o = {.path = path, .installation_id = "inst"};
    Spool *s = NULL;
    if (spool_open(&o, fx.tok, &s) < 0)
        fail_msg("spool_open: %s", lv_error());
    return s;
}

/* Rows committed, as another connection sees them. */
static int committed_rows(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int n = -1;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM items", -1, &st, NULL),
                     SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

typedef struct Report {
    const char *path;
    size_t calls, next, stop_after;
    int rows_seen[16];
} Report;

static int on_group(void *userdata, size_t first, size_t count)
{
    Report *rp = userdata;
    assert_int_equal(first, rp->next); /* in order, no gap */
    assert_true(count > 0 && count <= SPOOL_BATCH_GROUP);
    rp->next = first + count;
    rp->rows_seen[rp->calls++] = committed_rows(rp->path);
    return rp->stop_after && rp->calls == rp->stop_after ? -ECANCELED : 0;
}

enum { N = 2 * SPOOL_BATCH_GROUP + 100 };

static void make_items(SpoolItemIn *items, char refs[][16], char payloads[][32], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(refs[i], 16, "r%04zu", i);
        int len = snprintf(payloads[i], 32, "{\"i\":%zu}", i);
        items[i] = (SpoolItemIn){.stream_id = "s",
                                 .source_ref = refs[i],
                                 .payload = payloads[i],
                                 .payload_len = (size_t)len};
    }
}

static void groups_commit_before_they_are_reported(void **state)
{
    static SpoolItemIn items[N + 1];
    static char refs[N + 1][16], payloads[N + 1][32];
    static SpoolEnqueueResult res[N + 1];
    char path[512];
    Spool *s = open_new(path);
    make_items(items, refs, payloads, N);
    /* The last item repeats the first one, two groups later. */
    items[N] = items[0];
    Report rp = {.path = path};
    if (spool_enqueue_groups(s, items, N + 1, res, on_group, &rp) < 0)
        fail_msg("enqueue: %s", lv_error());
    assert_int_equal(rp.calls, 3);
    assert_int_equal(rp.next, N + 1);
    /* Each report came after its group's COMMIT and before the next wrote. */
    assert_int_equal(rp.rows_seen[0], SPOOL_BATCH_GROUP);
    assert_int_equal(rp.rows_seen[1], 2 * SPOOL_BATCH_GROUP);
    assert_int_equal(rp.rows_seen[2], N);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(res[i].status, SPOOL_QUEUED);
    assert_int_equal(res[N].status, SPOOL_DUPLICATE);
    assert_string_equal(res[N].envelope_hash, res[0].envelope_hash);
    spool_close(s);
}

static void a_stop_after_a_group_keeps_exactly_the_reported_groups(void **state)
{
    static SpoolItemIn items[N];
    static char refs[N][16], payloads[N][32];
    static SpoolEnqueueResult res[N];
    char path[512];
    Spool *s = open_new(path);
    make_items(items, refs, payloads, N);
    Report rp = {.path = path, .stop_after = 1};
    assert_int_equal(spool_enqueue_groups(s, items, N, res, on_group, &rp), -ECANCELED);
    assert_int_equal(rp.calls, 1);
    assert_int_equal(committed_rows(path), SPOOL_BATCH_GROUP);
    /* Again: the reported group is duplicate, the rest goes in once. */
    Report again = {.path = path};
    if (spool_enqueue_groups(s, items, N, res, on_group, &again) < 0)
        fail_msg("enqueue: %s", lv_error());
    for (size_t i = 0; i < N; i++)
        assert_int_equal(res[i].status, i < SPOOL_BATCH_GROUP ? SPOOL_DUPLICATE : SPOOL_QUEUED);
    assert_int_equal(committed_rows(path), N);
    spool_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(groups_commit_before_they_are_reported),
        cmocka_unit_test(a_stop_after_a_group_keeps_exactly_the_reported_groups),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
