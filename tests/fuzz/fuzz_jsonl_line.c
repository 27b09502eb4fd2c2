/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the enqueue --jsonl line parser and the item check:
 * any bytes are refused with a one-line error naming what broke, or give an
 * item whose payload lies inside the line and passes the same check again. */
#include "lv.h"
#include "spool.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_jsonl_line: property failed: %s (%s)\n", #cond, lv_error());     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    SpoolItemLine it;
    lv_error_clear();
    int r = spool_item_parse_line(line, size, &it);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG);
        CHECK(*lv_error() && !strchr(lv_error(), '\n'));
        return 0;
    }
    CHECK(it.stream_id && it.source_ref && it.payload);
    CHECK(it.payload >= line && it.payload + it.payload_len <= line + size);
    SpoolItemIn in = {.stream_id = it.stream_id,
                      .source_ref = it.source_ref,
                      .event_type = it.event_type,
                      .payload = it.payload,
                      .payload_len = it.payload_len};
    char *canon = NULL;
    size_t len = 0;
    lv_error_clear();
    r = spool_item_check(&in, &canon, &len);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG);
        CHECK(*lv_error() && !strchr(lv_error(), '\n'));
        CHECK(canon == NULL);
    } else {
        /* An accepted item has valid identifiers and a canonical object
         * payload that checks again as itself. */
        CHECK(lv_valid_id(it.stream_id) && lv_valid_id(it.source_ref));
        CHECK(canon && len >= 2 && canon[0] == '{' && strlen(canon) == len);
        SpoolItemIn again = in;
        again.payload = canon;
        again.payload_len = len;
        char *canon2 = NULL;
        size_t len2 = 0;
        CHECK(spool_item_check(&again, &canon2, &len2) == 0);
        CHECK(len2 == len && memcmp(canon2, canon, len) == 0);
        free(canon2);
        free(canon);
    }
    spool_item_line_done(&it);
    return 0;
}
