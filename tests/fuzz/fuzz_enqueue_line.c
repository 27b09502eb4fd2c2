/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the enqueue --jsonl line parser and the item check
 * behind it (spool_item_parse_line, spool_item_check): any line is refused
 * with one line of error naming the member, or yields an item whose members
 * agree with an independent cJSON reading of the line, whose payload span
 * lies inside the line, and whose canonical payload is a fixed point. */
#include <cjson/cJSON.h>

#include "canon.h"
#include "lv.h"
#include "spool.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_enqueue_line: property failed: %s (%s)\n", #cond, lv_error());   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool one_line_error(void)
{
    const char *e = lv_error();
    return *e && !strchr(e, '\n');
}

static const char *str_member(const cJSON *o, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(m) ? m->valuestring : NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    SpoolItemLine it = {0};
    lv_error_clear();
    int r = spool_item_parse_line(line, size, &it);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG || r == -ENOMEM);
        CHECK(one_line_error());
        CHECK(!it.stream_id && !it.source_ref && !it.event_type && !it.payload);
        return 0;
    }
    /* The payload is a span of the line, not a copy. */
    CHECK(it.payload && it.payload >= line && it.payload_len > 0 &&
          it.payload + it.payload_len <= line + size);

    SpoolItemIn in = {.stream_id = it.stream_id,
                      .source_ref = it.source_ref,
                      .event_type = it.event_type,
                      .payload = it.payload,
                      .payload_len = it.payload_len};
    char *canon = NULL;
    size_t canon_len = 0;
    lv_error_clear();
    r = spool_item_check(&in, &canon, &canon_len);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG || r == -ENOMEM);
        CHECK(one_line_error());
        CHECK(canon == NULL);
        spool_item_line_done(&it);
        return 0;
    }
    /* An accepted item: valid identifiers, a canonical object payload. */
    CHECK(lv_valid_id(it.stream_id) && lv_valid_id(it.source_ref));
    CHECK(!it.event_type || lv_valid_id(it.event_type));
    CHECK(canon && canon_len <= SPOOL_MAX_PAYLOAD && canon[0] == '{');
    char *again = NULL;
    size_t again_len = 0;
    CHECK(canon_json(canon, canon_len, SIZE_MAX, "payload", &again, &again_len) == 0);
    CHECK(again_len == canon_len && memcmp(again, canon, canon_len) == 0);
    free(again);

    /* Differential: where cJSON reads the whole line, it sees the same
     * members and a payload with the same canonical form. */
    cJSON *root = cJSON_ParseWithLength(line, size);
    if (root) {
        CHECK(cJSON_IsObject(root));
        const char *s = str_member(root, "stream_id"), *ref = str_member(root, "source_ref");
        CHECK(s && strcmp(s, it.stream_id) == 0);
        CHECK(ref && strcmp(ref, it.source_ref) == 0);
        const char *et = str_member(root, "event_type");
        CHECK((et == NULL) == (it.event_type == NULL));
        CHECK(!et || strcmp(et, it.event_type) == 0);
        char *via = NULL;
        size_t via_len = 0;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "payload");
        CHECK(p && canon_serialize(p, &via, &via_len) == 0);
        CHECK(via_len == canon_len && memcmp(via, canon, canon_len) == 0);
        free(via);
        cJSON_Delete(root);
    }
    erase_and_free(canon, canon_len);
    spool_item_line_done(&it);
    return 0;
}
