/* SPDX-License-Identifier: Apache-2.0 */
/* A checkpoint request: its fields' rules, and the endpoint's JSON body. */
#include "internal.h"

enum { F_TENANT, F_STREAM, F_CHECKPOINT_ID, F_SEQ, F_HASH, F_PREV, _F_MAX };
static const char *const json_names[_F_MAX] = {
    "tenant_id",         "stream_id",       "checkpoint_id",
    "checkpoint_seq_no", "checkpoint_hash", "previous_checkpoint_hash",
};
static const char *const cli_names[_F_MAX] = {
    "--tenant-id",         "--stream-id",       "--checkpoint-id",
    "--checkpoint-seq-no", "--checkpoint-hash", "--previous-checkpoint-hash",
};

static int check_id(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    if (!lv_valid_id(v))
        return lv_error_set(LV_ERR_INPUT, "%s: must be 1-128 bytes of [A-Za-z0-9._:@/-]", name);
    return 0;
}

static int check_hash(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    size_t n = strlen(v);
    if (n != WITNESS_HASH_HEX_LEN)
        return lv_error_set(LV_ERR_INPUT,
                            "%s: must be 64 lowercase hex digits (SHA-256), got %zu characters",
                            name, n);
    if (!is_lower_hex(v, WITNESS_HASH_HEX_LEN))
        return lv_error_set(LV_ERR_INPUT,
                            "%s: must be 64 lowercase hex digits (SHA-256), found a character "
                            "outside [0-9a-f]",
                            name);
    return 0;
}

int witness_request_check(const WitnessRequest *req, WitnessNames names)
{
    const char *const *n = names == WITNESS_NAMES_CLI ? cli_names : json_names;
    int r;
    if ((r = check_id(n[F_TENANT], req->tenant_id)) < 0 ||
        (r = check_id(n[F_STREAM], req->stream_id)) < 0 ||
        (r = check_id(n[F_CHECKPOINT_ID], req->checkpoint_id)) < 0)
        return r;
    if (req->seq < 0 || req->seq > WITNESS_MAX_SEQ)
        return lv_error_set(LV_ERR_INPUT, "%s: must be an integer from 0 to %lld", n[F_SEQ],
                            WITNESS_MAX_SEQ);
    if ((r = check_hash(n[F_HASH], req->checkpoint_hash)) < 0)
        return r;
    if (req->previous_hash && (r = check_hash(n[F_PREV], req->previous_hash)) < 0)
        return r;
    return 0;
}

int witness_request_parse(const char *body, size_t len, WitnessRequest *ret, cJSON **ret_tree)
{
    if (len > WITNESS_REQUEST_MAX)
        return lv_error_set(LV_ERR_TOOBIG, "request body: larger than %d bytes",
                            WITNESS_REQUEST_MAX);
    _cleanup_cjson_ cJSON *tree = NULL;
    int r = canon_parse(body, len, WITNESS_REQUEST_MAX, "request", &tree);
    if (r < 0)
        return r;
    if (!cJSON_IsObject(tree))
        return lv_error_set(LV_ERR_INPUT, "request: must be a JSON object");
    WitnessRequest req = {.seq = -1};
    bool seen_seq = false;
    const cJSON *m;
    cJSON_ArrayForEach(m, tree)
    {
        int f = -1;
        for (int i = 0; i < _F_MAX; i++)
            if (strcmp(m->string, json_names[i]) == 0)
                f = i;
        if (f < 0) {
            char name[68];
            canon_printable(m->string, name);
            return lv_error_set(LV_ERR_INPUT,
                                "%s: unknown member (expected tenant_id, stream_id, "
                                "checkpoint_id, checkpoint_seq_no, checkpoint_hash, "
                                "previous_checkpoint_hash)",
                                name);
        }
        if (f == F_SEQ) {
            /* canon_parse admits only integers within +-(2^53-1). */
            if (!cJSON_IsNumber(m))
                return lv_error_set(LV_ERR_INPUT,
                                    "checkpoint_seq_no: must be a JSON integer from 0 to %lld",
                                    WITNESS_MAX_SEQ);
            req.seq = (int64_t)m->valuedouble;
            seen_seq = true;
            continue;
        }
        if (f == F_PREV && cJSON_IsNull(m))
            continue;
        if (!cJSON_IsString(m))
            return lv_error_set(LV_ERR_INPUT, "%s: must be a string%s", json_names[f],
                                f == F_PREV ? " or null" : "");
        const char *v = m->valuestring;
        switch (f) {
        case F_TENANT:
            req.tenant_id = v;
            break;
        case F_STREAM:
            req.stream_id = v;
            break;
        case F_CHECKPOINT_ID:
            req.checkpoint_id = v;
            break;
        case F_HASH:
            req.checkpoint_hash = v;
            break;
        case F_PREV:
            req.previous_hash = v;
            break;
        }
    }
    if (!seen_seq)
        return lv_error_set(LV_ERR_INPUT, "checkpoint_seq_no: missing");
    r = witness_request_check(&req, WITNESS_NAMES_JSON);
    if (r < 0)
        return r;
    *ret = req;
    *ret_tree = TAKE_PTR(tree);
    return 0;
}
