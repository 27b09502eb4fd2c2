/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the pinned receipt keys (src/receipt.c): the input is
 * parsed as a keys file and, separately, checked as a stored receipt against
 * a fixed pinned key (RFC 8032 TEST 2, the worked example's receiver key).
 * Properties: a refused file gets one line that names an element or the
 * file's shape, and no result; an accepted one holds 1..64 keys with valid,
 * unique kids; a receipt check answers NULL or one of the three reasons,
 * and NULL only for a receipt naming the example's envelope. */
#include <string.h>

#include "lv.h"
#include "receipt.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_receipt_keys: property failed: %s (%s)\n", #cond, lv_error());   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* docs/protocol.md §7 */
#define EXAMPLE_KEYS                                                                               \
    "[{\"alg\":\"Ed25519\",\"kid\":\"rcv-39f713d0a644253f\",\"public_key_hex\":"                   \
    "\"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"}]"
#define EXAMPLE_HASH "703fbc0ef73841c0055b486a42e087f5a82745bfebe44d802f08a8dc1aaebb4f"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parse_as_keys_file(const char *text, size_t size)
{
    ReceiptKeys *k = NULL;
    lv_error_clear();
    int r = receipt_keys_parse(text, size, &k);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG);
        CHECK(!k);
        const char *e = lv_error();
        CHECK(*e && !strchr(e, '\n'));
        return;
    }
    size_t n = receipt_keys_count(k);
    CHECK(n >= 1 && n <= RECEIPT_KEYS_MAX);
    for (size_t i = 0; i < n; i++) {
        CHECK(lv_valid_id(receipt_keys_kid(k, i)));
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(receipt_keys_kid(k, i), receipt_keys_kid(k, j)) != 0);
    }
    CHECK(receipt_keys_kid(k, n) == NULL);
    receipt_keys_free(k);
}

static void check_as_receipt(const char *text, size_t size)
{
    static ReceiptKeys *keys;
    if (!keys)
        CHECK(receipt_keys_parse(EXAMPLE_KEYS, strlen(EXAMPLE_KEYS), &keys) == 0);
    char detail[200];
    const char *why = receipt_check(keys, text, size, EXAMPLE_HASH, detail, sizeof(detail));
    if (!why) {
        CHECK(strstr(text, EXAMPLE_HASH) != NULL);
        return;
    }
    CHECK(strcmp(why, "receipt_key_unknown") == 0 ||
          strcmp(why, "receipt_signature_invalid") == 0 ||
          strcmp(why, "ack_receipt_mismatch") == 0);
    CHECK(detail[0] && !strchr(detail, '\n'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A NUL-terminated copy: the receipt check reads strings. */
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    parse_as_keys_file(text, size);
    check_as_receipt(text, size);
    free(text);
    return 0;
}
