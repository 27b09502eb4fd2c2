/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for witness-serve's tenants file (src/witness/tenants.c).
 * Properties: a refused file gets one line naming a line of the file (or the
 * file's size, or that it names no tenant) and no result; an accepted one
 * holds 1..WITNESS_TENANTS_MAX tenants; a caller authorized for a tenant is
 * known; the secret "fuzz-secret" (whose digest the seeds carry) is known
 * only to a file that names its digest. */
#include <string.h>

#include "lv.h"
#include "witness_tenants.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_witness_tenants: property failed: %s (%s)\n", #cond,             \
                    lv_error());                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SECRET "fuzz-secret"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool refusal_shape(const char *e)
{
    return strncmp(e, "line ", 5) == 0 || strncmp(e, "no tenant line", 14) == 0 ||
           strncmp(e, "larger than", 11) == 0 || strncmp(e, "too many", 8) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    WitnessTenants *t = NULL;
    lv_error_clear();
    int r = witness_tenants_parse((const char *)data, size, &t);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT || r == LV_ERR_TOOBIG);
        CHECK(!t);
        const char *e = lv_error();
        CHECK(*e && !strchr(e, '\n') && refusal_shape(e));
        return 0;
    }
    size_t n = witness_tenants_count(t);
    CHECK(n >= 1 && n <= WITNESS_TENANTS_MAX);
    static const char *const names[] = {"a", "b", "ten_a", "ten_b", "x"};
    static const uint32_t ids[] = {0, 1, 1000, 4294967294u};
    for (size_t i = 0; i < ELEMENTSOF(ids); i++)
        for (size_t k = 0; k < ELEMENTSOF(names); k++) {
            const WitnessQuota *q = NULL;
            WitnessAuth a = witness_tenants_peer(t, ids[i], ids[i], names[k], &q);
            WitnessAuth any = witness_tenants_peer(t, ids[i], ids[i], NULL, NULL);
            CHECK(a == WITNESS_AUTH_OK || a == WITNESS_AUTH_UNKNOWN || a == WITNESS_AUTH_FORBIDDEN);
            CHECK((a == WITNESS_AUTH_OK) == (q != NULL));
            CHECK(a == WITNESS_AUTH_UNKNOWN ? any == WITNESS_AUTH_UNKNOWN : any == WITNESS_AUTH_OK);
            if (q)
                CHECK(q->max_streams >= 0 && q->max_statements_per_day >= 0);
        }
    char digest[65];
    lv_sha256_hex(SECRET, strlen(SECRET), digest);
    WitnessAuth b = witness_tenants_bearer(t, SECRET, strlen(SECRET), NULL, NULL);
    CHECK(b == WITNESS_AUTH_OK || b == WITNESS_AUTH_UNKNOWN);
    if (b == WITNESS_AUTH_OK)
        CHECK(memmem(data, size, "bearer-sha256=", 14) && memmem(data, size, digest, 64));
    witness_tenants_free(t);
    return 0;
}
