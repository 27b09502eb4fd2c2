/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for proof bundle lines (src/bundle.c), the input of
 * `verify --bundle`: the input is one line, checked with its own keys and
 * again with a fixed pinned signing key and receiver key (RFC 8032 TEST 2).
 * Properties: a refused line gets one non-empty line of detail and one of
 * the three errors; an accepted one names an envelope (event id, 64-hex
 * hash). */
#include <string.h>

#include "bundle.h"
#include "lv.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_bundle_line: property failed: %s (%s)\n", #cond, lv_error());    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define TEST2_HEX "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
#define TEST2_KEYS                                                                                 \
    "[{\"alg\":\"Ed25519\",\"kid\":\"rcv-test2\",\"public_key_hex\":\"" TEST2_HEX "\"}]"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_once(const char *line, size_t size, const BundlePins *pins)
{
    BundleLineInfo info;
    memset(&info, 0xAA, sizeof(info));
    lv_error_clear();
    int r = bundle_line_check(line, size, pins, &info);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG || r == LV_ERR_CRYPTO);
        const char *e = lv_error();
        CHECK(*e && !strchr(e, '\n'));
        return;
    }
    CHECK(strlen(info.envelope_hash) == 64);
    CHECK(info.envelope.event_id[0] != '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ReceiptKeys *rkeys;
    static BundleKey ekey = {.kid = ""};
    if (!rkeys) {
        CHECK(receipt_keys_parse(TEST2_KEYS, strlen(TEST2_KEYS), &rkeys) == 0);
        CHECK(hex_decode(TEST2_HEX, ekey.pk, 32) == 0);
    }
    /* A line is text without its newline: NUL-terminate a copy. */
    char *line = malloc(size + 1);
    if (!line)
        return 0;
    memcpy(line, data, size);
    line[size] = '\0';
    check_once(line, size, NULL);
    BundlePins pins = {.envelope_keys = &ekey, .n_envelope_keys = 1, .receipt_keys = rkeys};
    check_once(line, size, &pins);
    free(line);
    return 0;
}
