/* SPDX-License-Identifier: Apache-2.0 */
/* Pinned receipt keys: parses the keys file and checks a receipt's signature
 * under the pinned key its kid names (docs/protocol.md "Signed receipts"). */
#include <stdio.h>
#include <string.h>

#include "canon.h"
#include "lv.h"
#include "pubkey.h"
#include "receipt.h"

typedef struct ReceiptKey {
    char kid[129];
    uint8_t pk[32];
} ReceiptKey;

struct ReceiptKeys {
    size_t n;
    ReceiptKey keys[RECEIPT_KEYS_MAX];
};

#define KEYS_SHAPE "{\"alg\":\"Ed25519\",\"kid\":ID,\"public_key_hex\":HEX}"

/* One element of the array; i is its index, for the messages. */
static int parse_key(const cJSON *e, size_t i, ReceiptKey *ret)
{
    if (!cJSON_IsObject(e))
        return lv_error_set(LV_ERR_INPUT, "[%zu]: must be an object " KEYS_SHAPE, i);
    for (const cJSON *m = e->child; m; m = m->next)
        if (strcmp(m->string, "alg") != 0 && strcmp(m->string, "kid") != 0 &&
            strcmp(m->string, "public_key_hex") != 0)
            /* A typo (public_key, key_hex) must not leave a key unpinned
             * without a word. Names are printed only when they are plain. */
            return lv_error_set(LV_ERR_INPUT,
                                "[%zu].%s: unknown member (allowed: alg, kid, public_key_hex)", i,
                                lv_valid_id(m->string) ? m->string : "?");
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(e, "alg");
    if (!alg)
        return lv_error_set(LV_ERR_INPUT, "[%zu].alg: required (\"Ed25519\")", i);
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "[%zu].alg: must be \"Ed25519\"", i);
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(e, "kid");
    if (!kid)
        return lv_error_set(LV_ERR_INPUT, "[%zu].kid: required", i);
    if (!cJSON_IsString(kid) || !lv_valid_id(kid->valuestring))
        return lv_error_set(LV_ERR_INPUT, "[%zu].kid: must be 1-128 bytes of [A-Za-z0-9._:@/-]", i);
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(e, "public_key_hex");
    if (!hex)
        return lv_error_set(LV_ERR_INPUT, "[%zu].public_key_hex: required", i);
    if (!cJSON_IsString(hex) || strlen(hex->valuestring) != 64 ||
        hex_decode(hex->valuestring, ret->pk, 32) < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "[%zu].public_key_hex: must be 64 hex digits (a raw Ed25519 key)", i);
    snprintf(ret->kid, sizeof(ret->kid), "%s", kid->valuestring);
    return 0;
}

int receipt_keys_parse(const char *text, size_t len, ReceiptKeys **ret)
{
    if (len > RECEIPT_KEYS_MAX_FILE)
        return lv_error_set(LV_ERR_TOOBIG, "over %d bytes", RECEIPT_KEYS_MAX_FILE);
    /* canon_parse is the strict I-JSON reader: valid UTF-8, no duplicate
     * members, no trailing bytes. */
    _cleanup_cjson_ cJSON *root = NULL;
    int r = canon_parse(text, len, RECEIPT_KEYS_MAX_FILE, "", &root);
    if (r < 0)
        return r;
    return receipt_keys_from_json(root, ret);
}

int receipt_keys_from_json(const cJSON *root, ReceiptKeys **ret)
{
    int r;
    if (!cJSON_IsArray(root))
        return lv_error_set(LV_ERR_INPUT, "must be a JSON array of " KEYS_SHAPE);
    int n = cJSON_GetArraySize(root);
    if (n == 0)
        return lv_error_set(LV_ERR_INPUT, "must pin at least one key (unset the option to "
                                          "leave receipts unverified)");
    if (n > RECEIPT_KEYS_MAX)
        return lv_error_set(LV_ERR_INPUT, "at most %d keys", RECEIPT_KEYS_MAX);
    ReceiptKeys *k = calloc(1, sizeof(*k));
    if (!k)
        return -ENOMEM;
    size_t i = 0;
    for (const cJSON *e = root->child; e; e = e->next, i++) {
        r = parse_key(e, i, &k->keys[i]);
        for (size_t j = 0; r >= 0 && j < i; j++)
            if (strcmp(k->keys[j].kid, k->keys[i].kid) == 0)
                r = lv_error_set(LV_ERR_INPUT,
                                 "[%zu].kid: %s: given twice (each kid names one key)", i,
                                 k->keys[i].kid);
        if (r < 0) {
            receipt_keys_free(k);
            return r;
        }
        k->n = i + 1;
    }
    *ret = k;
    return 0;
}

int receipt_keys_load(const char *path, ReceiptKeys **ret)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = lv_read_file(path, RECEIPT_KEYS_MAX_FILE, &text, &len);
    if (r == LV_ERR_TOOBIG)
        return lv_error_set(LV_ERR_INPUT, "%s: over %d bytes", path, RECEIPT_KEYS_MAX_FILE);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT, "%s: cannot be read: %s", path, strerror(-r));
    r = receipt_keys_parse(text, len, ret);
    if (r < 0) {
        char detail[512];
        snprintf(detail, sizeof(detail), "%s", lv_error());
        return lv_error_set(LV_ERR_INPUT, "%s: %s", path, detail);
    }
    return 0;
}

ReceiptKeys *receipt_keys_free(ReceiptKeys *k)
{
    free(k);
    return NULL;
}

size_t receipt_keys_count(const ReceiptKeys *k)
{
    return k ? k->n : 0;
}

const char *receipt_keys_kid(const ReceiptKeys *k, size_t i)
{
    return k && i < k->n ? k->keys[i].kid : NULL;
}

bool receipt_keys_find(const ReceiptKeys *k, const char *kid, uint8_t ret_pk[32])
{
    for (size_t i = 0; k && kid && i < k->n; i++)
        if (strcmp(k->keys[i].kid, kid) == 0) {
            memcpy(ret_pk, k->keys[i].pk, 32);
            return true;
        }
    return false;
}

static const char *say(char *detail, size_t detail_len, const char *reason, const char *why)
{
    if (detail && detail_len)
        snprintf(detail, detail_len, "%s", why);
    return reason;
}

const char *receipt_check(const ReceiptKeys *k, const char *receipt_json, size_t len,
                          const char *envelope_hash, char *detail, size_t detail_len)
{
    static const char *const invalid = "receipt_signature_invalid";
    /* The signed bytes are defined on the JSON value, so the receipt is read
     * strictly (no duplicate members anywhere, integers only) and its
     * statement re-serialized in JCS. */
    _cleanup_cjson_ cJSON *rc = NULL;
    if (canon_parse(receipt_json, len, len, "receipt", &rc) < 0 || !cJSON_IsObject(rc)) {
        lv_error_clear();
        return say(detail, detail_len, invalid, "the receipt is not strict JSON (JCS)");
    }
    const cJSON *eh = cJSON_GetObjectItemCaseSensitive(rc, "event_hash");
    if (!cJSON_IsString(eh) || strcmp(eh->valuestring, envelope_hash) != 0)
        /* A validly signed receipt for another envelope of this event
         * (a replay, or a conflicting envelope) proves nothing about ours. */
        return say(detail, detail_len, "ack_receipt_mismatch",
                   "receipt.event_hash does not name this envelope");
    cJSON *sig = cJSON_DetachItemFromObjectCaseSensitive(rc, "receipt");
    _cleanup_cjson_ cJSON *sig_owned = sig;
    if (!cJSON_IsObject(sig) || cJSON_GetArraySize(sig) != 3)
        return say(detail, detail_len, invalid,
                   "receipt.receipt: must be {\"alg\":\"Ed25519\",\"kid\",\"signature\"}");
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(sig, "alg");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(sig, "kid");
    const cJSON *sg = cJSON_GetObjectItemCaseSensitive(sig, "signature");
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "Ed25519") != 0 || !cJSON_IsString(kid) ||
        !cJSON_IsString(sg))
        return say(detail, detail_len, invalid,
                   "receipt.receipt: must be {\"alg\":\"Ed25519\",\"kid\",\"signature\"}");
    const ReceiptKey *key = NULL;
    for (size_t i = 0; i < k->n && !key; i++)
        if (strcmp(k->keys[i].kid, kid->valuestring) == 0)
            key = &k->keys[i];
    if (!key)
        return say(detail, detail_len, "receipt_key_unknown",
                   "receipt.receipt.kid names no pinned receipt key");
    uint8_t s[64];
    if (strlen(sg->valuestring) != 128 || hex_decode(sg->valuestring, s, 64) < 0) {
        lv_error_clear();
        return say(detail, detail_len, invalid, "receipt.receipt.signature: not 128 hex digits");
    }
    _cleanup_free_ char *statement = NULL;
    size_t slen = 0;
    _cleanup_free_ uint8_t *msg = NULL;
    size_t mlen = 0;
    if (canon_serialize(rc, &statement, &slen) < 0 ||
        pubkey_signed_message(RECEIPT_SIGN_DOMAIN, statement, slen, &msg, &mlen) < 0) {
        lv_error_clear();
        return say(detail, detail_len, invalid, "the receipt statement cannot be serialized");
    }
    if (pubkey_verify(key->pk, msg, mlen, s) < 0) {
        lv_error_clear();
        return say(detail, detail_len, invalid,
                   "the signature does not verify under the pinned key of its kid");
    }
    return NULL;
}
