/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for canon: arbitrary bytes must be refused with a one-line
 * error or canonicalized to a fixed point that cJSON's own reading agrees with. */
#include "canon.h"
#include "lv.h"

#define CAP (1024 * 1024)

/* A broken property is a crash, so libFuzzer keeps the input. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_canon: property failed: %s (%s)\n", #cond, lv_error());          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    _cleanup_free_ char *out = NULL, *again = NULL, *via_cjson = NULL;
    size_t len = 0, again_len = 0, via_len = 0;

    lv_error_clear();
    int r = canon_json((const char *)data, size, CAP, "fuzz", &out, &len);
    if (r < 0) {
        /* Refusals are input errors that name the path and the rule. */
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG);
        CHECK(out == NULL);
        CHECK(strncmp(lv_error(), "fuzz", 4) == 0 && strstr(lv_error(), ": "));
        CHECK(!strchr(lv_error(), '\n'));
        return 0;
    }
    /* Canonical output has no NUL inside, is at most 4 times the input (the
     * largest growth is "9e15" to 9000000000000000) and is a fixed point:
     * parsing and serializing it again gives the same bytes. */
    CHECK(out && strlen(out) == len && len <= 4 * size);
    r = canon_json(out, len, SIZE_MAX, "fuzz", &again, &again_len);
    CHECK(r == 0);
    CHECK(again_len == len && memcmp(again, out, len) == 0);

    /* Differential: where cJSON also accepts the input (it refuses number
     * spellings of 64 bytes or more), its tree canonicalizes the same way. */
    cJSON *tree = cJSON_ParseWithLength((const char *)data, size);
    if (tree) {
        r = canon_serialize(tree, &via_cjson, &via_len);
        cJSON_Delete(tree);
        CHECK(r == 0);
        CHECK(via_len == len && memcmp(via_cjson, out, len) == 0);
    }
    return 0;
}
