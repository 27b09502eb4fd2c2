/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for envelope_check_ack, the fail-closed acknowledgement
 * check of DESIGN §5.4: whatever the receiver answers, an item counts as
 * delivered only when the body itself names our envelope hash, stream and
 * event, and the stored receipt names them too. The first input byte picks
 * the HTTP status, the rest is the body. */
#include <cjson/cJSON.h>

#include "envelope.h"
#include "lv.h"

#define HASH   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define STREAM "str_1"
#define EVENT  "local-vault:inst:ref"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_ack: property failed: %s\n", #cond);                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const long statuses[] = {200, 201, 202, 204, 299, 199, 300, 301,
                                400, 401, 409, 500, 0,   -1,  100, 600};

static bool str_member(const cJSON *o, const char *name, const char *want)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(m) && m->valuestring && strcmp(m->valuestring, want) == 0;
}

/* Every member name of o, at this level, appears once. */
static bool unique_members(const cJSON *o)
{
    for (const cJSON *a = o->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (a->string && b->string && strcmp(a->string, b->string) == 0)
                return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    long status = statuses[data[0] % ELEMENTSOF(statuses)];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;

    AckCheck ack;
    envelope_check_ack(status, body, len, HASH, STREAM, EVENT, &ack);
    if (ack.reason) {
        /* Refused: a reason from the documented vocabulary, nothing to store. */
        CHECK(strncmp(ack.reason, "ack_", 4) == 0 && !strchr(ack.reason, ' '));
        CHECK(ack.receipt_json == NULL);
        ack_check_done(&ack);
        return 0;
    }

    /* Delivered: prove it from the bytes, independently of the checker. */
    CHECK(status >= 200 && status <= 299);
    CHECK(len > 0 && len <= ENVELOPE_MAX_ACK && !memchr(body, '\0', len));
    cJSON *root = cJSON_ParseWithLength(body, len);
    CHECK(cJSON_IsObject(root) && unique_members(root));
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "localVaultAck");
    CHECK(cJSON_IsObject(a) && unique_members(a));
    CHECK(str_member(a, "envelopeHash", HASH));
    CHECK(str_member(a, "streamId", STREAM));
    CHECK(str_member(a, "eventId", EVENT));
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(root, "receipt");
    CHECK(cJSON_IsObject(rc) && unique_members(rc));
    CHECK(str_member(rc, "stream_id", STREAM) && str_member(rc, "event_id", EVENT));
    cJSON_Delete(root);

    /* What is stored is the receipt, naming this event and stream. */
    CHECK(ack.receipt_json != NULL);
    cJSON *stored = cJSON_Parse(ack.receipt_json);
    CHECK(cJSON_IsObject(stored));
    CHECK(str_member(stored, "stream_id", STREAM) && str_member(stored, "event_id", EVENT));
    cJSON_Delete(stored);
    ack_check_done(&ack);
    return 0;
}
