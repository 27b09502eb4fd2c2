/* SPDX-License-Identifier: Apache-2.0 */
/* The witness's statements: receipts and fork evidence as JSON, their
 * canonical bytes, and the signed document around them. */
#include "internal.h"

bool witness_json_str(cJSON *o, const char *k, const char *v)
{
    return v ? cJSON_AddStringToObject(o, k, v) != NULL : cJSON_AddNullToObject(o, k) != NULL;
}

bool witness_json_int(cJSON *o, const char *k, int64_t v)
{
    /* Exact: every seq is <= 2^53-1. */
    return cJSON_AddNumberToObject(o, k, (double)v) != NULL;
}

cJSON *witness_receipt_statement(const char *witness_id, const WitnessRequest *req,
                                 const char *witnessed_at)
{
    cJSON *s = cJSON_CreateObject();
    if (!s || !witness_json_str(s, "kind", "witness_receipt") ||
        !witness_json_str(s, "witness_id", witness_id) ||
        !witness_json_str(s, "tenant_id", req->tenant_id) ||
        !witness_json_str(s, "stream_id", req->stream_id) ||
        !witness_json_str(s, "checkpoint_id", req->checkpoint_id) ||
        !witness_json_int(s, "checkpoint_seq_no", req->seq) ||
        !witness_json_str(s, "checkpoint_hash", req->checkpoint_hash) ||
        !witness_json_str(s, "previous_checkpoint_hash", req->previous_hash) ||
        !witness_json_str(s, "witnessed_at", witnessed_at)) {
        cJSON_Delete(s);
        return NULL;
    }
    return s;
}

cJSON *witness_fork_statement(const char *witness_id, const WitnessRequest *req,
                              WitnessReason reason, const Row *acc, const char *detected_at)
{
    cJSON *s = cJSON_CreateObject(), *list, *c1, *c2, *a, *sub;
    if (!s || !witness_json_str(s, "kind", "fork_evidence") ||
        !witness_json_str(s, "witness_id", witness_id) ||
        !witness_json_str(s, "tenant_id", req->tenant_id) ||
        !witness_json_str(s, "stream_id", req->stream_id) ||
        !witness_json_str(s, "reason", witness_reason_name(reason)) ||
        !witness_json_str(s, "result", FORK_RESULT) ||
        !witness_json_str(s, "detected_by", DETECTED_BY) ||
        !witness_json_str(s, "detected_at", detected_at) ||
        !(list = cJSON_AddArrayToObject(s, "conflicting_checkpoints")) ||
        !(c1 = cJSON_CreateObject()) || !cJSON_AddItemToArray(list, c1) ||
        !witness_json_str(c1, "checkpoint_id", acc->checkpoint_id) ||
        !witness_json_str(c1, "checkpoint_head_hash", acc->hash) || !(c2 = cJSON_CreateObject()) ||
        !cJSON_AddItemToArray(list, c2) ||
        !witness_json_str(c2, "checkpoint_id", req->checkpoint_id) ||
        !witness_json_str(c2, "checkpoint_head_hash", req->checkpoint_hash) ||
        !(a = cJSON_AddObjectToObject(s, "accepted_checkpoint")) ||
        !witness_json_str(a, "checkpoint_id", acc->checkpoint_id) ||
        !witness_json_int(a, "checkpoint_seq_no", acc->seq) ||
        !witness_json_str(a, "checkpoint_hash", acc->hash) ||
        !witness_json_str(a, "previous_checkpoint_hash", acc->has_prev ? acc->prev : NULL) ||
        !witness_json_str(a, "witnessed_at", acc->witnessed_at) ||
        !witness_json_str(a, "receipt_statement_hash", acc->statement_hash) ||
        !(sub = cJSON_AddObjectToObject(s, "submitted_checkpoint")) ||
        !witness_json_str(sub, "checkpoint_id", req->checkpoint_id) ||
        !witness_json_int(sub, "checkpoint_seq_no", req->seq) ||
        !witness_json_str(sub, "checkpoint_hash", req->checkpoint_hash) ||
        !witness_json_str(sub, "previous_checkpoint_hash", req->previous_hash)) {
        cJSON_Delete(s);
        return NULL;
    }
    return s;
}

/* The document's "public_key" member, canonical: the same for every
 * statement of one key, and its PEM encoding alone cost a tenth of a
 * decision. Rebuilt when the token's key or kid changes. */
static int public_key_json(Witness *w, const uint8_t pk[TOKEN_ED25519_PK_LEN], const char *kid,
                           const char **ret)
{
    if (!w->pk_json || memcmp(w->pk_json_pk, pk, sizeof(w->pk_json_pk)) != 0 ||
        strcmp(w->pk_json_kid, kid) != 0) {
        _cleanup_cjson_ cJSON *o = NULL;
        char *json = NULL;
        size_t n;
        int r = pubkey_json(pk, kid, &o);
        if (r < 0 || (r = canon_serialize(o, &json, &n)) < 0)
            return r;
        free(w->pk_json);
        w->pk_json = json;
        memcpy(w->pk_json_pk, pk, sizeof(w->pk_json_pk));
        snprintf(w->pk_json_kid, sizeof(w->pk_json_kid), "%s", kid);
    }
    *ret = w->pk_json;
    return 0;
}

void witness_canon_done(Canon *c)
{
    free(c->jcs);
    *c = (Canon){0};
}

int witness_canon_statement(const cJSON *statement, Canon *ret)
{
    Canon c = {0};
    int r = canon_serialize(statement, &c.jcs, &c.len);
    if (r < 0)
        return r;
    lv_sha256_hex(c.jcs, c.len, c.hash);
    *ret = c;
    return 0;
}

int witness_sign_statement(Witness *w, Token *t, const char *domain, const char *result,
                           const Canon *st, Verifier *v, int *state, char **ret_doc,
                           size_t *ret_len)
{
    if (!t)
        return lv_error_set(LV_ERR_TOKEN, "token unavailable: cannot sign a new statement");
    _cleanup_free_ char *sig_json = NULL;
    _cleanup_free_ uint8_t *msg = NULL;
    _cleanup_cjson_ cJSON *sig_obj = NULL;
    const char *pk_json;
    size_t mlen, n;
    int r = pubkey_signed_message(domain, st->jcs, st->len, &msg, &mlen);
    if (r < 0)
        return r;
    uint8_t pk[TOKEN_ED25519_PK_LEN], sig[TOKEN_ED25519_SIG_LEN];
    if ((r = token_public_key(t, pk)) < 0 || (r = token_sign(t, msg, mlen, sig)) < 0)
        return r;
    if (v) {
        if ((r = witness_verifier_push(v, pk, msg, mlen, sig, state)) < 0)
            return r;
    } else if (pubkey_verify(pk, msg, mlen, sig) < 0)
        return lv_error_set(LV_ERR_TOKEN, "token returned a signature that does not verify with "
                                          "its public key; nothing stored");
    const char *kid = token_key_id(t);
    char sig_hex[2 * TOKEN_ED25519_SIG_LEN + 1];
    hex_encode(sig, sizeof(sig), sig_hex);
    if (!(sig_obj = cJSON_CreateObject()) || !witness_json_str(sig_obj, "alg", "Ed25519") ||
        !witness_json_str(sig_obj, "kid", kid) || !witness_json_str(sig_obj, "signature", sig_hex))
        return -ENOMEM;
    if ((r = public_key_json(w, pk, kid, &pk_json)) < 0 ||
        (r = canon_serialize(sig_obj, &sig_json, &n)) < 0)
        return r;
    char *doc = NULL;
    int len = asprintf(&doc,
                       "{\"result\":\"%s\",\"statement\":%s,\"statement_hash\":\"%s\","
                       "\"signature\":%s,\"public_key\":%s}",
                       result, st->jcs, st->hash, sig_json, pk_json);
    if (len < 0)
        return -ENOMEM;
    *ret_doc = doc;
    *ret_len = (size_t)len;
    return 0;
}
