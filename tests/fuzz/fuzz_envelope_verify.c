/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the offline envelope check (verify FILE): arbitrary
 * bytes are refused as input or as a bad signature, never accepted, since no
 * input can carry a valid signature under this fixed key (RFC 8032 test 1). */
#include "envelope.h"
#include "lv.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_envelope_verify: property failed: %s (%s)\n", #cond,             \
                    lv_error());                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t pk[32] = {0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe,
                                   0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6,
                                   0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a};
    lv_error_clear();
    int r = envelope_verify((const char *)data, size, pk);
    CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG || r == LV_ERR_CRYPTO);
    CHECK(*lv_error() && !strchr(lv_error(), '\n'));
    EnvelopeFields f;
    if (envelope_fields((const char *)data, size, &f) == 0)
        CHECK(strlen(f.event_id) < sizeof(f.event_id) && strlen(f.stream_id) <= 128);
    return 0;
}
