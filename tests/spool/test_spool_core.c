/* SPDX-License-Identifier: Apache-2.0 */
/* The envelope and the spool on a fresh SoftHSM token and real SQLite files:
 * signing and verification, enqueue idempotency, the lease rules of
 * DESIGN §5.5/§6, retry bookkeeping, recovery, quarantine of tampered rows,
 * schema versioning. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "canon.h"
#include "envelope.h"
#include "lv.h"
#include "lvtest.h"
#include "pubkey.h"
#include "spool.h"
#include "token.h"

typedef struct Fixture {
    Token *tok;
    const char *dir;
    uint8_t pk[32];
} Fixture;

static Fixture fx;
static int spool_counter;

static int group_setup(void **state)
{
    lvtest_make_token("attesto");
    fx.tok = lvtest_open_token(NULL, fx.pk);
    fx.dir = lvtest_tmpdir();
    return 0;
}

static int group_teardown(void **state)
{
    token_close(fx.tok);
    lvtest_cleanup();
    return 0;
}

static char *new_path(void)
{
    char *p;
    if (asprintf(&p, "%s/spool-%d.sqlite3", fx.dir, ++spool_counter) < 0)
        abort();
    return p;
}

static Spool *open_spool_at(const char *path, int max_attempts, bool include_payload)
{
    SpoolOptions o = {.path = path,
                      .installation_id = "inst",
                      .max_attempts = max_attempts,
                      .include_payload = include_payload};
    Spool *s = NULL;
    if (spool_open(&o, fx.tok, &s) < 0)
        fail_msg("spool_open: %s", lv_error());
    return s;
}

static void enqueue(Spool *s, const char *stream, const char *ref, const char *payload,
                    SpoolEnqueueStatus want, SpoolEnqueueResult *ret)
{
    SpoolItemIn in = {
        .stream_id = stream, .source_ref = ref, .payload = payload, .payload_len = strlen(payload)};
    SpoolEnqueueResult res;
    if (spool_enqueue(s, &in, 1, &res) < 0)
        fail_msg("enqueue %s/%s: %s", stream, ref, lv_error());
    assert_int_equal(res.status, want);
    if (ret)
        *ret = res;
}

static size_t lease(Spool *s, const char *owner, int64_t now, int64_t lease_ms, size_t max,
                    SpoolLease **ret)
{
    SpoolLease *l = NULL;
    size_t n = 0;
    if (spool_lease_due(s, owner, now, lease_ms, max, &l, &n) < 0)
        fail_msg("lease: %s", lv_error());
    if (ret)
        *ret = l;
    else
        spool_leases_free(l, n);
    return n;
}

static const SpoolLease *find_lease(const SpoolLease *l, size_t n, const char *event_id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i].event_id, event_id) == 0)
            return &l[i];
    return NULL;
}

static void item(Spool *s, const char *event_id, SpoolItemInfo *ret)
{
    if (spool_get(s, event_id, ret) < 0)
        fail_msg("get %s: %s", event_id, lv_error());
}

/* ---------- envelope ---------- */

static void envelope_verifies_and_any_change_fails(void **state)
{
    const char *payload = "{\"a\":1}";
    EnvelopeInput in = {.installation_id = "inst",
                        .stream_id = "str_1",
                        .source_ref = "ref-1",
                        .payload_canon = payload,
                        .payload_len = strlen(payload),
                        .spooled_at_ms = 1795867200000};
    char *body = NULL;
    EnvelopeIds ids;
    size_t len = 0;
    assert_int_equal(envelope_build(fx.tok, &in, &body, &len, &ids), 0);
    /* The ids it hands back are the ones it signed: the body's hash, the
     * payload's hash and the event id, as envelope_ids computes them. */
    char want_hash[65];
    lv_sha256_hex(body, len, want_hash);
    assert_string_equal(ids.envelope_hash, want_hash);
    lv_sha256_hex(payload, strlen(payload), want_hash);
    assert_string_equal(ids.payload_hash, want_hash);
    assert_string_equal(ids.event_id, "local-vault:inst:ref-1");
    assert_non_null(strstr(body, "\"payload_hash\":\""));
    assert_non_null(strstr(body, want_hash));
    EnvelopeIds pre;
    envelope_ids(&in, &pre);
    assert_string_equal(pre.event_id, ids.event_id);
    assert_string_equal(pre.payload_hash, ids.payload_hash);
    assert_string_equal(pre.envelope_hash, "");
    assert_non_null(strstr(body, "\"event_id\":\"local-vault:inst:ref-1\""));
    assert_non_null(strstr(body, "\"event_type\":\"source.attestation\""));
    assert_non_null(strstr(body, "\"spooled_at\":\"2026-11-28T12:00:00Z\""));
    assert_null(strstr(body, "\"payload\":"));
    assert_int_equal(envelope_verify(body, len, fx.pk), 0);

    /* A change of a signed member that stays well-formed: bad signature. */
    char *t = strdup(body);
    memcpy(strstr(t, "12:00:00Z"), "12:00:01Z", 9);
    assert_int_equal(envelope_verify(t, len, fx.pk), LV_ERR_CRYPTO);
    free(t);
    /* A flipped signature digit. */
    t = strdup(body);
    char *sig = strstr(t, "\"signature\":\"") + 13;
    sig[5] = sig[5] == '0' ? '1' : '0';
    assert_int_equal(envelope_verify(t, len, fx.pk), LV_ERR_CRYPTO);
    free(t);
    /* Another key. */
    uint8_t other[32];
    memcpy(other, fx.pk, 32);
    other[0] ^= 1;
    assert_true(envelope_verify(body, len, other) < 0);
    /* Same content, not canonical (a space): refused as input. */
    size_t n2 = len + 1;
    t = malloc(n2 + 1);
    t[0] = '{';
    t[1] = ' ';
    memcpy(t + 2, body + 1, len - 1);
    t[n2] = '\0';
    assert_int_equal(envelope_verify(t, n2, fx.pk), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "canonical"));
    free(t);
    free(body);
}

/* Re-serializes body after mut() changed its tree, canonically, so that
 * only the field rule under test can fail. */
static int verify_mutated(const char *body, size_t len, void (*mut)(cJSON *))
{
    cJSON *root = cJSON_ParseWithLength(body, len);
    mut(root);
    char *out = NULL;
    size_t out_len = 0;
    if (canon_serialize(root, &out, &out_len) < 0)
        fail_msg("canon_serialize: %s", lv_error());
    cJSON_Delete(root);
    int r = envelope_verify(out, out_len, fx.pk);
    free(out);
    return r;
}

static void m_unknown(cJSON *o)
{
    cJSON_AddStringToObject(o, "extra", "x");
}
static void m_version(cJSON *o)
{
    cJSON_ReplaceItemInObject(o, "envelope_version", cJSON_CreateNumber(2));
}
static void m_event_id(cJSON *o)
{
    cJSON_ReplaceItemInObject(o, "event_id", cJSON_CreateString("local-vault:inst:other"));
}
static void m_stream(cJSON *o)
{
    cJSON_ReplaceItemInObject(o, "stream_id", cJSON_CreateString("bad stream"));
}
static void m_time(cJSON *o)
{
    cJSON_ReplaceItemInObject(o, "spooled_at", cJSON_CreateString("2026-11-28 12:00:00"));
}
static void m_hash(cJSON *o)
{
    cJSON_ReplaceItemInObject(o, "payload_hash", cJSON_CreateString("ABC"));
}
static void m_alg(cJSON *o)
{
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(o, "local_signature"), "alg",
                              cJSON_CreateString("Ed448"));
}
static void m_sig_upper(cJSON *o)
{
    cJSON *ls = cJSON_GetObjectItem(o, "local_signature");
    char sig[129];
    snprintf(sig, sizeof(sig), "%s", cJSON_GetObjectItem(ls, "signature")->valuestring);
    for (char *p = sig; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    cJSON_ReplaceItemInObject(ls, "signature", cJSON_CreateString(sig));
}
static void m_no_sig(cJSON *o)
{
    cJSON_DeleteItemFromObject(o, "local_signature");
}
static void m_payload_array(cJSON *o)
{
    cJSON_AddItemToObject(o, "payload", cJSON_CreateArray());
}

static void envelope_verify_names_the_broken_field(void **state)
{
    const char *payload = "{\"a\":1}";
    EnvelopeInput in = {.installation_id = "inst",
                        .stream_id = "str_1",
                        .source_ref = "ref-1",
                        .payload_canon = payload,
                        .payload_len = strlen(payload),
                        .spooled_at_ms = 1795867200000};
    char *body = NULL;
    EnvelopeIds ids;
    size_t len = 0;
    assert_int_equal(envelope_build(fx.tok, &in, &body, &len, &ids), 0);
    static const struct {
        void (*mut)(cJSON *);
        const char *needle;
    } cases[] = {
        {m_unknown, "envelope.extra: unknown member"},
        {m_version, "envelope.envelope_version"},
        {m_event_id, "envelope.event_id"},
        {m_stream, "envelope.stream_id"},
        {m_time, "envelope.spooled_at"},
        {m_hash, "envelope.payload_hash"},
        {m_alg, "envelope.local_signature.alg"},
        {m_sig_upper, "envelope.local_signature.signature"},
        {m_no_sig, "envelope.local_signature"},
        {m_payload_array, "envelope.payload"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        lv_error_clear();
        assert_int_equal(verify_mutated(body, len, cases[i].mut), LV_ERR_INPUT);
        if (!strstr(lv_error(), cases[i].needle))
            fail_msg("case %zu: \"%s\" does not name %s", i, lv_error(), cases[i].needle);
    }
    free(body);
}

static void envelope_refuses_bad_identifiers(void **state)
{
    EnvelopeInput in = {.installation_id = "inst",
                        .stream_id = "str 1",
                        .source_ref = "ref",
                        .payload_canon = "{}",
                        .payload_len = 2};
    char *body = NULL;
    EnvelopeIds ids;
    size_t len;
    assert_int_equal(envelope_build(fx.tok, &in, &body, &len, &ids), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "stream_id"));
    in.stream_id = "s";
    in.event_type = "bad\"type";
    assert_int_equal(envelope_build(fx.tok, &in, &body, &len, &ids), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "event_type"));
}

static void envelope_with_opt_in_payload_verifies(void **state)
{
    const char *payload = "{\"b\":[1,2],\"z\":\"x\"}";
    EnvelopeInput in = {.installation_id = "inst",
                        .stream_id = "s",
                        .source_ref = "r",
                        .event_type = "custom.type",
                        .payload_canon = payload,
                        .payload_len = strlen(payload),
                        .include_payload = true,
                        .spooled_at_ms = 1795867200000};
    char *body = NULL;
    EnvelopeIds ids;
    size_t len = 0;
    assert_int_equal(envelope_build(fx.tok, &in, &body, &len, &ids), 0);
    assert_non_null(strstr(body, "\"payload\":{\"b\":[1,2],\"z\":\"x\"},\"payload_hash\""));
    assert_int_equal(envelope_verify(body, len, fx.pk), 0);
    /* The payload is inside the signed part and bound by payload_hash. */
    char *t = strdup(body);
    memcpy(strstr(t, "[1,2]"), "[1,3]", 5);
    assert_int_equal(envelope_verify(t, len, fx.pk), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "payload_hash"));
    free(t);
    free(body);
}

/* ---------- enqueue ---------- */

static void duplicate_and_conflict(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    SpoolEnqueueResult a, b, c;
    enqueue(s, "s1", "r1", "{\"n\":56,\"a\":\"x\"}", SPOOL_QUEUED, &a);
    /* Same canonical payload, other spelling: a duplicate, same hash. */
    enqueue(s, "s1", "r1", "{ \"a\" : \"x\", \"n\" : 5.6e1 }", SPOOL_DUPLICATE, &b);
    assert_string_equal(a.envelope_hash, b.envelope_hash);
    assert_string_equal(b.event_id, "local-vault:inst:r1");
    enqueue(s, "s1", "r1", "{\"n\":57,\"a\":\"x\"}", SPOOL_CONFLICT, &c);
    assert_string_equal(c.envelope_hash, a.envelope_hash);
    /* The same source_ref in another stream would reuse the event id. */
    enqueue(s, "s2", "r1", "{\"n\":56,\"a\":\"x\"}", SPOOL_CONFLICT, NULL);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.conflicts, 2);
    SpoolItemInfo it;
    item(s, "local-vault:inst:r1", &it);
    assert_int_equal(it.conflicts, 2);
    assert_string_equal(it.envelope_hash, a.envelope_hash);
    spool_item_info_done(&it);
    spool_close(s);
}

static void invalid_item_writes_nothing(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    SpoolItemIn items[2] = {
        {.stream_id = "s", .source_ref = "ok", .payload = "{}", .payload_len = 2},
        {.stream_id = "s", .source_ref = "bad", .payload = "{\"x\":0.5}", .payload_len = 9},
    };
    SpoolEnqueueResult res[2];
    assert_int_equal(spool_enqueue(s, items, 2, res), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "payload.x"));
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.queued, 0);
    spool_close(s);
}

/* ---------- leases ---------- */

static void lease_one_per_stream_in_enqueue_order(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "x", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s1", "b", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "y", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    SpoolLease *l;
    size_t n = lease(s, "w1", now, 60000, 10, &l);
    assert_int_equal(n, 2);
    const SpoolLease *la = find_lease(l, n, "local-vault:inst:a");
    const SpoolLease *lx = find_lease(l, n, "local-vault:inst:x");
    assert_non_null(la);
    assert_non_null(lx);
    assert_int_equal(la->attempts, 0);
    /* The body handed out is the stored envelope, hash and all. */
    char h[65];
    lv_sha256_hex(la->body, la->body_len, h);
    assert_string_equal(h, la->envelope_hash);
    assert_int_equal(envelope_verify(la->body, la->body_len, fx.pk), 0);
    /* Both streams have an item in flight: nothing more to lease. */
    assert_int_equal(lease(s, "w2", now, 60000, 10, NULL), 0);
    assert_int_equal(spool_mark_receipted(s, la->id, "w1", "{\"seq_no\":1}"), 0);
    SpoolLease *l2;
    size_t n2 = lease(s, "w1", now, 60000, 10, &l2);
    assert_int_equal(n2, 1);
    assert_string_equal(l2[0].event_id, "local-vault:inst:b");
    SpoolItemInfo it;
    item(s, "local-vault:inst:a", &it);
    assert_string_equal(it.state, "receipted");
    assert_int_equal(it.attempts, 1);
    assert_string_equal(it.receipt, "{\"seq_no\":1}");
    spool_item_info_done(&it);
    spool_leases_free(l, n);
    spool_leases_free(l2, n2);
    spool_close(s);
}

static void waiting_head_blocks_its_stream_only(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s1", "b", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "x", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    SpoolLease *l;
    size_t n = lease(s, "w", now, 600000, 1, &l);
    assert_int_equal(n, 1);
    const char *first = l[0].event_id;
    assert_true(strcmp(first, "local-vault:inst:a") == 0 ||
                strcmp(first, "local-vault:inst:x") == 0);
    spool_leases_free(l, n);
    n = lease(s, "w", now, 600000, 10, &l);
    assert_int_equal(n, 1);
    spool_leases_free(l, n);
    /* Fail a (head of s1) with a next attempt in a minute. */
    SpoolItemInfo it;
    item(s, "local-vault:inst:a", &it);
    bool dead = true;
    assert_int_equal(spool_mark_retry(s, it.id, "w", "http_503", now + 60000, true, &dead), 0);
    assert_false(dead);
    spool_item_info_done(&it);
    /* b must not overtake a; s2 is still in flight. */
    assert_int_equal(lease(s, "w", now + 59000, 60000, 10, NULL), 0);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.next_due_ms, now + 60000);
    assert_non_null(strstr(st.last_error, "local-vault:inst:a: http_503"));
    n = lease(s, "w", now + 60000, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].event_id, "local-vault:inst:a");
    assert_int_equal(l[0].attempts, 1);
    spool_leases_free(l, n);
    spool_close(s);
}

static void dead_letter_does_not_block_and_requeue_restores(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s1", "b", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    SpoolLease *l;
    size_t n = lease(s, "w", now, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_int_equal(spool_mark_dead(s, l[0].id, "w", "receiver_conflict"), 0);
    spool_leases_free(l, n);
    n = lease(s, "w", now, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].event_id, "local-vault:inst:b");
    /* Requeue a while b is in flight: a becomes the head again but waits
     * for b (one in flight per stream). */
    size_t rq = 0;
    assert_int_equal(spool_requeue(s, "local-vault:inst:a", &rq), 0);
    assert_int_equal(rq, 1);
    assert_int_equal(lease(s, "w", now + 1000, 60000, 10, NULL), 0);
    assert_int_equal(spool_mark_receipted(s, l[0].id, "w", "{}"), 0);
    spool_leases_free(l, n);
    n = lease(s, "w", now + 1000, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].event_id, "local-vault:inst:a");
    assert_int_equal(l[0].attempts, 0); /* requeue resets the count */
    spool_leases_free(l, n);
    /* Requeueing an item that is not dead-lettered is refused. */
    assert_int_equal(spool_requeue(s, "local-vault:inst:b", &rq), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "receipted"));
    spool_close(s);
}

static void attempts_reach_max_then_dead_letter(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 3, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    bool dead = false;
    for (int i = 0; i < 3; i++) {
        SpoolLease *l;
        size_t n = lease(s, "w", now, 60000, 10, &l);
        assert_int_equal(n, 1);
        assert_int_equal(l[0].attempts, i);
        /* A paused installation (401/403) does not burn an attempt. */
        assert_int_equal(spool_mark_retry(s, l[0].id, "w", "http_401", now, false, &dead), 0);
        assert_false(dead);
        spool_leases_free(l, n);
        n = lease(s, "w", now, 60000, 10, &l);
        assert_int_equal(n, 1);
        assert_int_equal(l[0].attempts, i);
        assert_int_equal(spool_mark_retry(s, l[0].id, "w", "http_500", now, true, &dead), 0);
        assert_int_equal(dead, i == 2);
        spool_leases_free(l, n);
    }
    SpoolItemInfo it;
    item(s, "local-vault:inst:a", &it);
    assert_string_equal(it.state, "dead_letter");
    assert_int_equal(it.attempts, 3);
    assert_string_equal(it.last_error, "http_500");
    spool_item_info_done(&it);
    assert_int_equal(lease(s, "w", now + 10000000, 60000, 10, NULL), 0);
    spool_close(s);
}

static void expired_lease_returns_with_attempts_kept(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    SpoolLease *l;
    size_t n = lease(s, "w1", now, 60000, 10, &l);
    bool dead;
    assert_int_equal(spool_mark_retry(s, l[0].id, "w1", "timeout", now, true, &dead), 0);
    int64_t id = l[0].id;
    spool_leases_free(l, n);
    assert_int_equal(lease(s, "w1", now, 5000, 10, NULL), 1);
    /* Not expired yet. */
    size_t rec = 9;
    assert_int_equal(spool_recover_expired(s, now + 4999, &rec), 0);
    assert_int_equal(rec, 0);
    assert_int_equal(spool_recover_expired(s, now + 5000, &rec), 0);
    assert_int_equal(rec, 1);
    SpoolItemInfo it;
    item(s, "local-vault:inst:a", &it);
    assert_string_equal(it.state, "queued");
    assert_int_equal(it.attempts, 1);
    spool_item_info_done(&it);
    /* The old owner lost the lease: its outcome is refused. */
    assert_int_equal(spool_mark_receipted(s, id, "w1", "{}"), -ESTALE);
    n = lease(s, "w2", now + 5000, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_int_equal(l[0].attempts, 1);
    assert_int_equal(spool_mark_receipted(s, id, "w1", "{}"), -ESTALE);
    assert_int_equal(spool_mark_receipted(s, id, "w2", "{}"), 0);
    spool_leases_free(l, n);
    spool_close(s);
}

static void release_returns_only_the_owners_leases(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "b", "{}", SPOOL_QUEUED, NULL);
    int64_t now = lv_now_ms() + 1000;
    assert_int_equal(lease(s, "w1", now, 60000, 1, NULL), 1);
    assert_int_equal(lease(s, "w2", now, 60000, 1, NULL), 1);
    assert_int_equal(spool_release_leases(s, "w1"), 0);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.relaying, 1);
    SpoolLease *l;
    size_t n = lease(s, "w3", now, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_int_equal(l[0].attempts, 0);
    spool_leases_free(l, n);
    spool_close(s);
}

/* ---------- tampering ---------- */

static void sql(const char *path, const char *stmt)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    if (sqlite3_exec(db, stmt, NULL, NULL, &err) != SQLITE_OK)
        fail_msg("%s: %s", stmt, err);
    sqlite3_close(db);
}

static void flip_payload_byte(const char *path, const char *source_ref, int offset)
{
    sqlite3 *db;
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT payload FROM items WHERE source_ref = ?1", -1, &q, NULL),
        SQLITE_OK);
    sqlite3_bind_text(q, 1, source_ref, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int n = sqlite3_column_bytes(q, 0);
    assert_true(n > offset);
    uint8_t *b = malloc((size_t)n);
    memcpy(b, sqlite3_column_blob(q, 0), (size_t)n);
    sqlite3_finalize(q);
    b[offset] ^= 0x01;
    assert_int_equal(
        sqlite3_prepare_v2(db, "UPDATE items SET payload = ?1 WHERE source_ref = ?2", -1, &q, NULL),
        SQLITE_OK);
    sqlite3_bind_blob(q, 1, b, n, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, source_ref, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(q), SQLITE_DONE);
    sqlite3_finalize(q);
    sqlite3_close(db);
    free(b);
}

static void tampered_rows_are_quarantined_never_leased(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "altered", "{\"v\":1}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "donor", "{\"v\":2}", SPOOL_QUEUED, NULL);
    enqueue(s, "s3", "copied", "{\"v\":3}", SPOOL_QUEUED, NULL);
    enqueue(s, "s4", "envelope", "{\"v\":4}", SPOOL_QUEUED, NULL);
    enqueue(s, "s1", "next", "{\"v\":5}", SPOOL_QUEUED, NULL);
    spool_close(s);
    /* Flip one ciphertext byte; copy a whole valid payload row onto another
     * item; swap the stored envelope for another item's. */
    flip_payload_byte(path, "altered", 20);
    sql(path, "UPDATE items SET payload = (SELECT payload FROM items WHERE source_ref = 'donor')"
              " WHERE source_ref = 'copied'");
    sql(path, "UPDATE items SET envelope = (SELECT envelope FROM items WHERE source_ref = 'donor')"
              " WHERE source_ref = 'envelope'");
    s = open_spool_at(path, 0, false);
    SpoolLease *l;
    size_t n = lease(s, "w", lv_now_ms() + 1000, 60000, 10, &l);
    /* Only the donor and the item behind the altered head go out. */
    assert_int_equal(n, 2);
    assert_non_null(find_lease(l, n, "local-vault:inst:donor"));
    assert_non_null(find_lease(l, n, "local-vault:inst:next"));
    spool_leases_free(l, n);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.quarantined, 3);
    SpoolItemInfo it;
    item(s, "local-vault:inst:altered", &it);
    assert_string_equal(it.state, "quarantined");
    assert_non_null(strstr(it.last_error, "row_decrypt_failed"));
    spool_item_info_done(&it);
    item(s, "local-vault:inst:copied", &it);
    assert_string_equal(it.state, "quarantined");
    assert_non_null(strstr(it.last_error, "row_decrypt_failed"));
    spool_item_info_done(&it);
    item(s, "local-vault:inst:envelope", &it);
    assert_string_equal(it.state, "quarantined");
    assert_non_null(strstr(it.last_error, "envelope_hash_mismatch"));
    spool_item_info_done(&it);
    /* Never leased later either. */
    assert_int_equal(lease(s, "w2", lv_now_ms() + 2000, 60000, 10, NULL), 0);
    /* And the payload cannot be read out. */
    char *p = NULL;
    size_t plen = 0;
    assert_int_equal(spool_payload(s, "local-vault:inst:copied", &p, &plen), LV_ERR_CRYPTO);
    assert_int_equal(spool_payload(s, "local-vault:inst:donor", &p, &plen), 0);
    assert_string_equal(p, "{\"v\":2}");
    free(p);
    spool_close(s);
}

/* ---------- schema and files ---------- */

static void files_are_private_and_schema_is_versioned(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    char side[600];
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(side, sizeof(side), "%s-wal", path);
    assert_int_equal(stat(side, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(side, sizeof(side), "%s-shm", path);
    assert_int_equal(stat(side, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    spool_close(s);

    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), spool_schema_version());
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT length(wrapped) FROM deks WHERE id = 1", -1, &q, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), 40);
    sqlite3_finalize(q);
    char newer[64];
    snprintf(newer, sizeof(newer), "PRAGMA user_version = %d", spool_schema_version() + 1);
    assert_int_equal(sqlite3_exec(db, newer, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    SpoolOptions o = {.path = path, .installation_id = "inst"};
    s = NULL;
    assert_int_equal(spool_open(&o, fx.tok, &s), -EPROTO);
    assert_non_null(strstr(lv_error(), "newer"));
    assert_null(s);
}

static void other_installation_and_loose_mode_are_refused(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    spool_close(s);
    SpoolOptions o = {.path = path, .installation_id = "other"};
    assert_int_equal(spool_open(&o, fx.tok, &s), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "belongs to installation inst"));
    assert_int_equal(chmod(path, 0644), 0);
    o.installation_id = "inst";
    assert_int_equal(spool_open(&o, fx.tok, &s), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "0644"));
    /* Without the token a missing spool is not created. */
    _cleanup_free_ char *missing = new_path();
    o.path = missing;
    assert_int_equal(spool_open(&o, NULL, &s), -ENOENT);
    struct stat st;
    assert_int_equal(stat(missing, &st), -1);
}

static void opt_in_payload_seals_the_envelope(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, true);
    enqueue(s, "s1", "a", "{\"secret\":\"MARKER-OPT-IN\"}", SPOOL_QUEUED, NULL);
    SpoolLease *l;
    size_t n = lease(s, "w", lv_now_ms() + 1000, 60000, 10, &l);
    assert_int_equal(n, 1);
    assert_non_null(strstr(l[0].body, "\"payload\":{\"secret\":\"MARKER-OPT-IN\"}"));
    assert_int_equal(envelope_verify(l[0].body, l[0].body_len, fx.pk), 0);
    spool_leases_free(l, n);
    spool_close(s);
    /* Not in the file in clear. */
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(lv_read_file(path, 1 << 24, &data, &len), 0);
    assert_null(memmem(data, len, "MARKER-OPT-IN", 13));
    free(data);
    /* Without the token the envelope stays sealed. */
    SpoolOptions o = {.path = path};
    assert_int_equal(spool_open(&o, NULL, &s), 0);
    SpoolItemInfo it;
    item(s, "local-vault:inst:a", &it);
    assert_true(it.envelope_sealed);
    assert_null(it.envelope);
    spool_item_info_done(&it);
    spool_close(s);
}

static void purge_deletes_only_old_receipts(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    enqueue(s, "s1", "a", "{}", SPOOL_QUEUED, NULL);
    enqueue(s, "s2", "b", "{}", SPOOL_QUEUED, NULL);
    SpoolLease *l;
    size_t n = lease(s, "w", lv_now_ms() + 1000, 60000, 10, &l);
    assert_int_equal(n, 2);
    const SpoolLease *la = find_lease(l, n, "local-vault:inst:a");
    assert_int_equal(spool_mark_receipted(s, la->id, "w", "{}"), 0);
    spool_leases_free(l, n);
    size_t purged = 9;
    assert_int_equal(spool_purge(s, lv_now_ms() - 60000, &purged), 0);
    assert_int_equal(purged, 0);
    assert_int_equal(spool_purge(s, lv_now_ms() + 1000, &purged), 0);
    assert_int_equal(purged, 1);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.receipted, 0);
    assert_int_equal(st.relaying, 1);
    spool_close(s);
}

static void drain_pause_shows_in_stats_until_cleared(void **state)
{
    _cleanup_free_ char *path = new_path();
    Spool *s = open_spool_at(path, 0, false);
    SpoolStats st;
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.paused_until_ms, 0);
    int64_t until = lv_now_ms() + 60000;
    assert_int_equal(spool_set_pause(s, until, "http_401"), 0);
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.paused_until_ms, until);
    assert_string_equal(st.pause_reason, "http_401");
    assert_int_equal(spool_set_pause(s, 0, NULL), 0);
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.paused_until_ms, 0);
    assert_string_equal(st.pause_reason, "");
    /* A pause in the past is over. */
    assert_int_equal(spool_set_pause(s, lv_now_ms() - 1, "http_403"), 0);
    assert_int_equal(spool_stats(s, &st), 0);
    assert_int_equal(st.paused_until_ms, 0);
    spool_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(envelope_verifies_and_any_change_fails),
        cmocka_unit_test(envelope_verify_names_the_broken_field),
        cmocka_unit_test(envelope_refuses_bad_identifiers),
        cmocka_unit_test(envelope_with_opt_in_payload_verifies),
        cmocka_unit_test(duplicate_and_conflict),
        cmocka_unit_test(invalid_item_writes_nothing),
        cmocka_unit_test(lease_one_per_stream_in_enqueue_order),
        cmocka_unit_test(waiting_head_blocks_its_stream_only),
        cmocka_unit_test(dead_letter_does_not_block_and_requeue_restores),
        cmocka_unit_test(attempts_reach_max_then_dead_letter),
        cmocka_unit_test(expired_lease_returns_with_attempts_kept),
        cmocka_unit_test(release_returns_only_the_owners_leases),
        cmocka_unit_test(tampered_rows_are_quarantined_never_leased),
        cmocka_unit_test(files_are_private_and_schema_is_versioned),
        cmocka_unit_test(other_installation_and_loose_mode_are_refused),
        cmocka_unit_test(opt_in_payload_seals_the_envelope),
        cmocka_unit_test(purge_deletes_only_old_receipts),
        cmocka_unit_test(drain_pause_shows_in_stats_until_cleared),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
