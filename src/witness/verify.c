/* SPDX-License-Identifier: Apache-2.0 */
/* Offline verification of a witness document (verify, witness tests). */
#include "internal.h"

/* Members of an object: exactly the names given (all required). */
static int exact_members(const cJSON *o, const char *path, const char *const *names, size_t n)
{
    return canon_check_members(o, path, names, n, true);
}

static const char *get_str(const cJSON *o, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(m) ? m->valuestring : NULL;
}

static int want_str(const cJSON *o, const char *path, const char *name, const char **ret)
{
    *ret = get_str(o, name);
    return *ret ? 0 : lv_error_set(LV_ERR_INPUT, "%s.%s: must be a string", path, name);
}

static int want_id(const cJSON *o, const char *path, const char *name, const char **ret)
{
    int r = want_str(o, path, name, ret);
    if (r == 0 && !lv_valid_id(*ret))
        r = lv_error_set(LV_ERR_INPUT, "%s.%s: must be 1-128 bytes of [A-Za-z0-9._:@/-]", path,
                         name);
    return r;
}

static int want_hash(const cJSON *o, const char *path, const char *name, bool nullable,
                     const char **ret)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    *ret = NULL;
    if (nullable && cJSON_IsNull(m))
        return 0;
    if (!cJSON_IsString(m) || !is_lower_hex(m->valuestring, WITNESS_HASH_HEX_LEN))
        return lv_error_set(LV_ERR_INPUT, "%s.%s: must be 64 lowercase hex digits%s", path, name,
                            nullable ? " or null" : "");
    *ret = m->valuestring;
    return 0;
}

static int want_seq(const cJSON *o, const char *path, const char *name, int64_t *ret)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(m) || m->valuedouble < 0 || m->valuedouble > (double)WITNESS_MAX_SEQ)
        return lv_error_set(LV_ERR_INPUT, "%s.%s: must be an integer from 0 to %lld", path, name,
                            WITNESS_MAX_SEQ);
    *ret = (int64_t)m->valuedouble;
    return 0;
}

static int want_time(const cJSON *o, const char *path, const char *name)
{
    const char *v;
    int64_t ms;
    int r = want_str(o, path, name, &v);
    if (r == 0 && (lv_parse_time(v, &ms) < 0 || strlen(v) != 20))
        r = lv_error_set(LV_ERR_INPUT,
                         "%s.%s: must be an RFC 3339 UTC time "
                         "(YYYY-MM-DDTHH:MM:SSZ)",
                         path, name);
    return r;
}

static int check_receipt_statement(const cJSON *s)
{
    static const char *const names[] = {
        "kind",          "witness_id",        "tenant_id",       "stream_id",
        "checkpoint_id", "checkpoint_seq_no", "checkpoint_hash", "previous_checkpoint_hash",
        "witnessed_at",
    };
    const char *v, *path = "statement";
    int64_t seq;
    int r;
    if ((r = exact_members(s, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_id(s, path, "witness_id", &v)) < 0 ||
        (r = want_id(s, path, "tenant_id", &v)) < 0 ||
        (r = want_id(s, path, "stream_id", &v)) < 0 ||
        (r = want_id(s, path, "checkpoint_id", &v)) < 0 ||
        (r = want_seq(s, path, "checkpoint_seq_no", &seq)) < 0 ||
        (r = want_hash(s, path, "checkpoint_hash", false, &v)) < 0 ||
        (r = want_hash(s, path, "previous_checkpoint_hash", true, &v)) < 0 ||
        (r = want_time(s, path, "witnessed_at")) < 0)
        return r;
    return 0;
}

/* A database's state in a state_adoption statement (anchor.c). */
static int check_state(const cJSON *o, const char *path)
{
    static const char *const names[] = {"database_id", "generation", "digest"};
    const char *v;
    int64_t gen;
    int r;
    if (!cJSON_IsObject(o))
        return lv_error_set(LV_ERR_INPUT, "%s: must be an object", path);
    if ((r = exact_members(o, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_str(o, path, "database_id", &v)) < 0)
        return r;
    if (!is_lower_hex(v, WITNESS_DATABASE_ID_LEN))
        return lv_error_set(LV_ERR_INPUT, "%s.database_id: must be %d lowercase hex digits", path,
                            WITNESS_DATABASE_ID_LEN);
    if ((r = want_seq(o, path, "generation", &gen)) < 0 ||
        (r = want_hash(o, path, "digest", false, &v)) < 0)
        return r;
    return 0;
}

static int check_adoption_statement(const cJSON *s, const char **ret_cause)
{
    static const char *const names[] = {"kind",     "adopted_at",      "cause",
                                        "database", "previous_anchor", "adopted_generation"};
    const char *path = "statement", *cause;
    int64_t gen;
    int r;
    if ((r = exact_members(s, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_time(s, path, "adopted_at")) < 0 || (r = want_str(s, path, "cause", &cause)) < 0)
        return r;
    if (strcmp(cause, "state_rollback") != 0 && strcmp(cause, "foreign_database") != 0 &&
        strcmp(cause, "none") != 0)
        return lv_error_set(LV_ERR_INPUT, "statement.cause: must be state_rollback, "
                                          "foreign_database or none");
    const cJSON *prev = cJSON_GetObjectItemCaseSensitive(s, "previous_anchor");
    if ((r = check_state(cJSON_GetObjectItemCaseSensitive(s, "database"), "statement.database")) <
            0 ||
        (!cJSON_IsNull(prev) && (r = check_state(prev, "statement.previous_anchor")) < 0) ||
        (r = want_seq(s, path, "adopted_generation", &gen)) < 0)
        return r;
    *ret_cause = cause;
    return 0;
}

typedef struct Cp {
    const char *id, *hash, *prev;
    int64_t seq;
} Cp;

static int check_checkpoint(const cJSON *o, const char *path, bool accepted, Cp *ret)
{
    static const char *const acc_names[] = {
        "checkpoint_id", "checkpoint_seq_no",      "checkpoint_hash", "previous_checkpoint_hash",
        "witnessed_at",  "receipt_statement_hash",
    };
    const char *v;
    int r = exact_members(o, path, acc_names, accepted ? 6 : 4);
    if (r < 0 || (r = want_id(o, path, "checkpoint_id", &ret->id)) < 0 ||
        (r = want_seq(o, path, "checkpoint_seq_no", &ret->seq)) < 0 ||
        (r = want_hash(o, path, "checkpoint_hash", false, &ret->hash)) < 0 ||
        (r = want_hash(o, path, "previous_checkpoint_hash", true, &ret->prev)) < 0)
        return r;
    if (accepted && ((r = want_time(o, path, "witnessed_at")) < 0 ||
                     (r = want_hash(o, path, "receipt_statement_hash", false, &v)) < 0))
        return r;
    return 0;
}

static int check_fork_statement(const cJSON *s, const char **ret_reason)
{
    static const char *const names[] = {
        "kind",
        "witness_id",
        "tenant_id",
        "stream_id",
        "reason",
        "result",
        "detected_by",
        "detected_at",
        "conflicting_checkpoints",
        "accepted_checkpoint",
        "submitted_checkpoint",
    };
    static const char *const pair_names[] = {"checkpoint_id", "checkpoint_head_hash"};
    const char *v, *reason, *path = "statement";
    Cp acc, sub;
    int r;
    if ((r = exact_members(s, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_id(s, path, "witness_id", &v)) < 0 ||
        (r = want_id(s, path, "tenant_id", &v)) < 0 ||
        (r = want_id(s, path, "stream_id", &v)) < 0 ||
        (r = want_str(s, path, "reason", &reason)) < 0 || (r = want_str(s, path, "result", &v)) < 0)
        return r;
    if (strcmp(v, FORK_RESULT) != 0)
        return lv_error_set(LV_ERR_INPUT, "statement.result: must be \"%s\"", FORK_RESULT);
    if ((r = want_str(s, path, "detected_by", &v)) < 0 ||
        (r = want_time(s, path, "detected_at")) < 0 ||
        (r = check_checkpoint(cJSON_GetObjectItemCaseSensitive(s, "accepted_checkpoint"),
                              "statement.accepted_checkpoint", true, &acc)) < 0 ||
        (r = check_checkpoint(cJSON_GetObjectItemCaseSensitive(s, "submitted_checkpoint"),
                              "statement.submitted_checkpoint", false, &sub)) < 0)
        return r;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(s, "conflicting_checkpoints");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 2)
        return lv_error_set(LV_ERR_INPUT, "statement.conflicting_checkpoints: must list the "
                                          "accepted and the submitted checkpoint");
    const Cp *both[2] = {&acc, &sub};
    for (int i = 0; i < 2; i++) {
        const cJSON *e = cJSON_GetArrayItem(list, i);
        char p[64];
        snprintf(p, sizeof(p), "statement.conflicting_checkpoints[%d]", i);
        if ((r = exact_members(e, p, pair_names, 2)) < 0)
            return r;
        const char *id = get_str(e, "checkpoint_id"), *h = get_str(e, "checkpoint_head_hash");
        if (!id || !h || strcmp(id, both[i]->id) != 0 || strcmp(h, both[i]->hash) != 0)
            return lv_error_set(LV_ERR_INPUT, "%s: does not match the %s checkpoint", p,
                                i == 0 ? "accepted" : "submitted");
    }
    /* The evidence must show what its reason claims. */
    bool shows;
    if (strcmp(reason, "conflicting_checkpoint") == 0)
        shows = sub.seq == acc.seq && strcmp(sub.hash, acc.hash) != 0;
    else if (strcmp(reason, "stale_checkpoint") == 0)
        shows = sub.seq < acc.seq;
    else if (strcmp(reason, "divergent_history") == 0)
        shows = sub.seq == acc.seq + 1 && (!sub.prev || strcmp(sub.prev, acc.hash) != 0);
    else
        return lv_error_set(LV_ERR_INPUT, "statement.reason: must be conflicting_checkpoint, "
                                          "stale_checkpoint or divergent_history");
    if (!shows)
        return lv_error_set(LV_ERR_INPUT, "statement: the checkpoints do not show a %s", reason);
    *ret_reason = reason;
    return 0;
}

bool witness_document_shape(const cJSON *doc)
{
    return cJSON_IsObject(doc) && cJSON_GetObjectItemCaseSensitive(doc, "statement") &&
           cJSON_GetObjectItemCaseSensitive(doc, "statement_hash") &&
           cJSON_GetObjectItemCaseSensitive(doc, "signature") &&
           cJSON_GetObjectItemCaseSensitive(doc, "public_key");
}

int witness_verify_document(const char *text, size_t len, const uint8_t *expected_pk,
                            cJSON **ret_summary)
{
    static const char *const doc_names[] = {"result", "statement", "statement_hash", "signature",
                                            "public_key"};
    static const char *const sig_names[] = {"alg", "kid", "signature"};
    static const char *const pk_names[] = {"alg", "kid", "public_key_hex", "public_key_pem"};
    _cleanup_cjson_ cJSON *doc = NULL;
    int r = canon_parse(text, len, WITNESS_DOCUMENT_MAX, "document", &doc);
    if (r < 0)
        return r;
    if ((r = exact_members(doc, "document", doc_names, ELEMENTSOF(doc_names))) < 0)
        return r;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "statement");
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(doc, "signature");
    const cJSON *pko = cJSON_GetObjectItemCaseSensitive(doc, "public_key");
    const char *result, *kind, *sh, *v, *sig_kid, *pk_kid, *sig_hex, *pk_hex, *pem;
    const char *reason = NULL;
    if ((r = want_str(doc, "document", "result", &result)) < 0 ||
        (r = want_hash(doc, "document", "statement_hash", false, &sh)) < 0)
        return r;
    if (!cJSON_IsObject(st))
        return lv_error_set(LV_ERR_INPUT, "statement: must be an object");
    if ((r = want_str(st, "statement", "kind", &kind)) < 0)
        return r;
    const char *domain;
    if (strcmp(kind, "witness_receipt") == 0) {
        if (strcmp(result, "accepted") != 0 && strcmp(result, "replayed") != 0)
            return lv_error_set(LV_ERR_INPUT, "result: a witness receipt must be \"accepted\" or "
                                              "\"replayed\"");
        domain = WITNESS_RECEIPT_DOMAIN;
        r = check_receipt_statement(st);
    } else if (strcmp(kind, "fork_evidence") == 0) {
        if (strcmp(result, "fork_evidence") != 0)
            return lv_error_set(LV_ERR_INPUT, "result: fork evidence must be \"fork_evidence\"");
        domain = WITNESS_FORK_DOMAIN;
        r = check_fork_statement(st, &reason);
    } else if (strcmp(kind, "state_adoption") == 0) {
        if (strcmp(result, "state_adoption") != 0)
            return lv_error_set(LV_ERR_INPUT, "result: a state adoption must be "
                                              "\"state_adoption\"");
        domain = WITNESS_ADOPTION_DOMAIN;
        r = check_adoption_statement(st, &reason);
    } else
        return lv_error_set(LV_ERR_INPUT, "statement.kind: must be witness_receipt, "
                                          "fork_evidence or state_adoption");
    if (r < 0)
        return r;
    if ((r = exact_members(sig, "signature", sig_names, ELEMENTSOF(sig_names))) < 0 ||
        (r = exact_members(pko, "public_key", pk_names, ELEMENTSOF(pk_names))) < 0 ||
        (r = want_str(sig, "signature", "alg", &v)) < 0)
        return r;
    if (strcmp(v, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "signature.alg: must be \"Ed25519\"");
    if ((r = want_str(pko, "public_key", "alg", &v)) < 0)
        return r;
    if (strcmp(v, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "public_key.alg: must be \"Ed25519\"");
    if ((r = want_str(sig, "signature", "kid", &sig_kid)) < 0 ||
        (r = want_str(pko, "public_key", "kid", &pk_kid)) < 0 ||
        (r = want_str(sig, "signature", "signature", &sig_hex)) < 0 ||
        (r = want_str(pko, "public_key", "public_key_hex", &pk_hex)) < 0 ||
        (r = want_str(pko, "public_key", "public_key_pem", &pem)) < 0)
        return r;
    if (strcmp(sig_kid, pk_kid) != 0)
        return lv_error_set(LV_ERR_CRYPTO, "signature.kid: differs from public_key.kid");
    uint8_t pk[32], pem_pk[32], sigb[64];
    if (!is_lower_hex(pk_hex, 64) || hex_decode(pk_hex, pk, 32) < 0)
        return lv_error_set(LV_ERR_INPUT, "public_key.public_key_hex: must be 64 lowercase hex "
                                          "digits");
    if (!is_lower_hex(sig_hex, 128) || hex_decode(sig_hex, sigb, 64) < 0)
        return lv_error_set(LV_ERR_INPUT, "signature.signature: must be 128 lowercase hex digits");
    if (pubkey_parse(pem, pem_pk) < 0 || !strstr(pem, "-----BEGIN PUBLIC KEY-----"))
        return lv_error_set(LV_ERR_INPUT, "public_key.public_key_pem: not a PEM Ed25519 "
                                          "SubjectPublicKeyInfo");
    if (memcmp(pk, pem_pk, 32) != 0)
        return lv_error_set(LV_ERR_CRYPTO, "public_key: the PEM and the hex name different keys");
    if (expected_pk && !lv_memeq(pk, expected_pk, 32))
        return lv_error_set(LV_ERR_CRYPTO, "public_key: not the expected witness key");

    _cleanup_free_ char *jcs = NULL;
    _cleanup_free_ uint8_t *msg = NULL;
    size_t jlen, mlen;
    if ((r = canon_serialize(st, &jcs, &jlen)) < 0)
        return r;
    char want[WITNESS_HASH_HEX_LEN + 1];
    lv_sha256_hex(jcs, jlen, want);
    if (strcmp(want, sh) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "statement_hash: is not the SHA-256 of the canonical "
                            "statement (%s)",
                            want);
    if ((r = pubkey_signed_message(domain, jcs, jlen, &msg, &mlen)) < 0)
        return r;
    if (pubkey_verify(pk, msg, mlen, sigb) < 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "signature: does not verify over \"%s\" 0x0A "
                            "JCS(statement) with public_key_hex",
                            domain);
    if (ret_summary && strcmp(kind, "state_adoption") == 0) {
        const cJSON *db = cJSON_GetObjectItemCaseSensitive(st, "database");
        cJSON *s = cJSON_CreateObject();
        if (!s || !cJSON_AddTrueToObject(s, "valid") || !witness_json_str(s, "kind", kind) ||
            !witness_json_str(s, "result", result) ||
            !witness_json_str(s, "adopted_at", get_str(st, "adopted_at")) ||
            !witness_json_str(s, "cause", reason) ||
            !witness_json_str(s, "database_id", get_str(db, "database_id")) ||
            !witness_json_int(
                s, "adopted_generation",
                (int64_t)cJSON_GetObjectItemCaseSensitive(st, "adopted_generation")->valuedouble) ||
            !witness_json_str(s, "statement_hash", sh) || !witness_json_str(s, "kid", pk_kid) ||
            !witness_json_str(s, "public_key_hex", pk_hex) ||
            !cJSON_AddBoolToObject(s, "key_pinned", expected_pk != NULL)) {
            cJSON_Delete(s);
            return -ENOMEM;
        }
        *ret_summary = s;
    } else if (ret_summary) {
        cJSON *s = cJSON_CreateObject();
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(
            strcmp(kind, "witness_receipt") == 0
                ? st
                : cJSON_GetObjectItemCaseSensitive(st, "submitted_checkpoint"),
            "checkpoint_seq_no");
        if (!s || !cJSON_AddTrueToObject(s, "valid") || !witness_json_str(s, "kind", kind) ||
            !witness_json_str(s, "result", result) ||
            !witness_json_str(s, "witness_id", get_str(st, "witness_id")) ||
            !witness_json_str(s, "tenant_id", get_str(st, "tenant_id")) ||
            !witness_json_str(s, "stream_id", get_str(st, "stream_id")) ||
            !witness_json_int(s, "checkpoint_seq_no", (int64_t)seq->valuedouble) ||
            (reason && !witness_json_str(s, "reason", reason)) ||
            !witness_json_str(s, "statement_hash", sh) || !witness_json_str(s, "kid", pk_kid) ||
            !witness_json_str(s, "public_key_hex", pk_hex) ||
            !cJSON_AddBoolToObject(s, "key_pinned", expected_pk != NULL)) {
            cJSON_Delete(s);
            return -ENOMEM;
        }
        *ret_summary = s;
    }
    return 0;
}

static bool statement_kind_is(const cJSON *doc, const char *kind)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "statement");
    const char *k = get_str(st, "kind");
    return witness_document_shape(doc) && k && strcmp(k, kind) == 0;
}

bool witness_receipt_match(const cJSON *doc)
{
    return statement_kind_is(doc, "witness_receipt");
}

bool witness_fork_match(const cJSON *doc)
{
    return statement_kind_is(doc, "fork_evidence");
}

bool witness_adoption_match(const cJSON *doc)
{
    return statement_kind_is(doc, "state_adoption");
}

int witness_verify_check(const char *text, size_t len, const uint8_t pk[32], cJSON *ret)
{
    _cleanup_cjson_ cJSON *summary = NULL;
    int r = witness_verify_document(text, len, pk, &summary);
    if (r < 0)
        return r;
    cJSON *m;
    while ((m = summary->child)) {
        cJSON_DetachItemViaPointer(summary, m);
        if (strcmp(m->string, "valid") == 0 || strcmp(m->string, "kind") == 0)
            cJSON_Delete(m);
        else
            cJSON_AddItemToObject(ret, m->string, m);
    }
    return 0;
}
