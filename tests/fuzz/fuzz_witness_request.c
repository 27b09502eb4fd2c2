/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the witness endpoint's request handling
 * (witness_request_parse, the function POST /v1/witness/checkpoints runs on
 * the body): any body is refused with one printable line naming the member
 * and the rule, or yields a request that passes witness_request_check and
 * whose fields are exactly what an independent cJSON reading finds. */
#include <cjson/cJSON.h>

#include "lv.h"
#include "witness.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_witness_request: property failed: %s (%s)\n", #cond,             \
                    lv_error());                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* An error line goes to a log and an HTTP 400 body: no control bytes. */
static bool printable_line(const char *e)
{
    if (!*e)
        return false;
    for (; *e; e++)
        if ((unsigned char)*e < 0x20 || *e == 0x7f)
            return false;
    return true;
}

static bool same_str(const cJSON *root, const char *name, const char *got)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!got)
        return !m || cJSON_IsNull(m);
    return cJSON_IsString(m) && strcmp(m->valuestring, got) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    WitnessRequest req;
    cJSON *tree = NULL;
    lv_error_clear();
    int r = witness_request_parse((const char *)data, size, &req, &tree);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG || r == -ENOMEM);
        CHECK(tree == NULL);
        CHECK(printable_line(lv_error()));
        CHECK(r != LV_ERR_TOOBIG || size > 0);
        return 0;
    }
    CHECK(tree != NULL && size <= WITNESS_REQUEST_MAX);
    CHECK(witness_request_check(&req, WITNESS_NAMES_JSON) == 0);
    CHECK(req.seq >= 0 && req.seq <= WITNESS_MAX_SEQ);
    CHECK(strlen(req.checkpoint_hash) == WITNESS_HASH_HEX_LEN);
    CHECK(is_lower_hex(req.checkpoint_hash, WITNESS_HASH_HEX_LEN));
    CHECK(!req.previous_hash || is_lower_hex(req.previous_hash, WITNESS_HASH_HEX_LEN));

    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    if (root) {
        CHECK(cJSON_IsObject(root));
        CHECK(same_str(root, "tenant_id", req.tenant_id));
        CHECK(same_str(root, "stream_id", req.stream_id));
        CHECK(same_str(root, "checkpoint_id", req.checkpoint_id));
        CHECK(same_str(root, "checkpoint_hash", req.checkpoint_hash));
        CHECK(same_str(root, "previous_checkpoint_hash", req.previous_hash));
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(root, "checkpoint_seq_no");
        CHECK(cJSON_IsNumber(seq) && seq->valuedouble == (double)req.seq);
        cJSON_Delete(root);
    }
    cJSON_Delete(tree);
    return 0;
}
