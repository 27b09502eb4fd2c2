/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the fail-closed acknowledgement check (DESIGN §5.4):
 * whatever a receiver or proxy sends, the check ends in a reason from the
 * documented list, or in a delivery whose ack and receipt name our item. */
#include "envelope.h"
#include "lv.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_ack: property failed: %s\n", #cond);                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define HASH "a3f1c0de5b7e9d2468ace13579bdf02468ace13579bdf02468ace13579bdf024"
#define SID  "str_1"
#define EID  "local-vault:inst:ref"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const reasons[] = {
        "ack_http_status",
        "ack_not_json",
        "ack_too_large",
        "ack_not_object",
        "ack_duplicate_member",
        "ack_missing",
        "ack_envelope_hash_mismatch",
        "ack_stream_id_mismatch",
        "ack_event_id_mismatch",
        "ack_receipt_missing",
        "ack_receipt_mismatch",
        "ack_receipt_unstorable",
    };
    AckCheck a;
    envelope_check_ack(200, (const char *)data, size, HASH, SID, EID, &a);
    if (a.reason) {
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(reasons); i++)
            known = known || strcmp(a.reason, reasons[i]) == 0;
        CHECK(known);
        CHECK(a.receipt_json == NULL);
    } else {
        /* Delivered: the body had to carry all three identifiers. */
        CHECK(a.receipt_json != NULL);
        CHECK(memmem(data, size, HASH, strlen(HASH)) != NULL);
        CHECK(memmem(data, size, SID, strlen(SID)) != NULL);
        CHECK(memmem(data, size, EID, strlen(EID)) != NULL);
        cJSON *rc = cJSON_Parse(a.receipt_json);
        CHECK(cJSON_IsObject(rc));
        cJSON_Delete(rc);
    }
    ack_check_done(&a);
    return 0;
}
