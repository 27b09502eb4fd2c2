/* SPDX-License-Identifier: Apache-2.0 */
/* Proof bundles: builds a bundle line from a stored envelope and receipt,
 * and checks one line offline (docs/protocol.md "Proof bundles"). */
#include <stdio.h>
#include <string.h>

#include "bundle.h"
#include "canon.h"
#include "lv.h"

static cJSON *key_json(const BundleKey *k)
{
    if (!k)
        return cJSON_CreateNull();
    char hex[65];
    hex_encode(k->pk, 32, hex);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "alg", "Ed25519");
    cJSON_AddStringToObject(o, "kid", k->kid);
    cJSON_AddStringToObject(o, "public_key_hex", hex);
    return o;
}

/* A document as a JSON string member: its exact bytes survive, which a
 * nested object re-serialized by someone else's JSON library would not
 * promise. */
static int add_text(cJSON *o, const char *name, const char *text, size_t len)
{
    if (memchr(text, '\0', len))
        return lv_error_set(LV_ERR_INPUT, "%s: holds a NUL byte", name);
    _cleanup_free_ char *copy = strndup(text, len);
    if (!copy || !cJSON_AddStringToObject(o, name, copy))
        return -ENOMEM;
    return 0;
}

int bundle_line_build(const char *envelope, size_t envelope_len, const BundleKey *envelope_key,
                      const char *receipt, size_t receipt_len, const BundleKey *receipt_key,
                      const char *unverifiable, char **ret, size_t *ret_len)
{
    /* The opt-in payload may ride in the envelope: wipe the tree. */
    _cleanup_cjson_erase_ cJSON *o = cJSON_CreateObject();
    if (!o)
        return -ENOMEM;
    cJSON_AddNumberToObject(o, "bundle_version", BUNDLE_VERSION);
    int r = add_text(o, "envelope", envelope, envelope_len);
    if (r < 0)
        return r;
    cJSON_AddItemToObject(o, "envelope_key", key_json(envelope_key));
    r = add_text(o, "receipt", receipt, receipt_len);
    if (r < 0)
        return r;
    cJSON_AddItemToObject(o, "receipt_key", key_json(receipt_key));
    if (unverifiable)
        cJSON_AddStringToObject(o, "unverifiable", unverifiable);
    char *text = cJSON_PrintUnformatted(o);
    if (!text)
        return -ENOMEM;
    *ret = text;
    *ret_len = strlen(text);
    return 0;
}

/* A key member of the line: null, or {"alg":"Ed25519","kid","public_key_hex"}
 * read by the receipt keys parser (one shape for every key in the project). */
static int line_key(cJSON *root, const char *name, bool *ret_present, BundleKey *ret)
{
    cJSON *m = cJSON_DetachItemFromObjectCaseSensitive(root, name);
    if (!m || cJSON_IsNull(m)) {
        cJSON_Delete(m);
        *ret_present = false;
        return 0;
    }
    _cleanup_cjson_ cJSON *arr = cJSON_CreateArray();
    if (!arr) {
        cJSON_Delete(m);
        return -ENOMEM;
    }
    cJSON_AddItemToArray(arr, m);
    _cleanup_receipt_keys_ ReceiptKeys *k = NULL;
    lv_error_clear();
    if (receipt_keys_from_json(arr, &k) < 0) {
        char why[256];
        /* "[0].kid: rule" from the keys parser: say which member instead. */
        const char *e = lv_error();
        snprintf(why, sizeof(why), "%s", strncmp(e, "[0]", 3) == 0 ? e + 3 : e);
        return lv_error_set(LV_ERR_INPUT, "%s%s%s", name, why[0] == '.' ? "" : ": ", why);
    }
    snprintf(ret->kid, sizeof(ret->kid), "%s", receipt_keys_kid(k, 0));
    receipt_keys_find(k, ret->kid, ret->pk);
    *ret_present = true;
    return 0;
}

static bool same_key(const BundleKey *a, const uint8_t pk[32])
{
    return lv_memeq(a->pk, pk, 32);
}

/* The signing key to verify the envelope with, after the pins. */
static int envelope_key(const BundlePins *pins, bool present, const BundleKey *line,
                        const char *kid, BundleKey *ret)
{
    if (present && strcmp(line->kid, kid) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "envelope_key.kid: does not name the envelope's local_signature.kid");
    if (!pins || pins->n_envelope_keys == 0) {
        if (!present)
            return lv_error_set(LV_ERR_CRYPTO,
                                "envelope_key: null (give the signing key with --public-key)");
        *ret = *line;
        return 0;
    }
    for (size_t i = 0; i < pins->n_envelope_keys; i++) {
        const BundleKey *p = &pins->envelope_keys[i];
        if (p->kid[0] && strcmp(p->kid, kid) != 0)
            continue;
        if (present && !same_key(p, line->pk))
            continue;
        snprintf(ret->kid, sizeof(ret->kid), "%s", kid);
        memcpy(ret->pk, p->pk, 32);
        return 0;
    }
    return lv_error_set(LV_ERR_CRYPTO, present ? "envelope_key: not a pinned --public-key key"
                                               : "envelope: its kid names no pinned --public-key");
}

static int check_receipt_names(const char *receipt, size_t len, const EnvelopeFields *f)
{
    _cleanup_cjson_ cJSON *rc = NULL;
    if (canon_parse(receipt, len, ENVELOPE_MAX_ACK, "receipt", &rc) < 0 || !cJSON_IsObject(rc))
        return lv_error_set(LV_ERR_CRYPTO, "receipt: not a strict JSON object");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(rc, "event_id");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(rc, "stream_id");
    if (!cJSON_IsString(ev) || strcmp(ev->valuestring, f->event_id) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "receipt.event_id: does not name the envelope's event_id");
    if (!cJSON_IsString(st) || strcmp(st->valuestring, f->stream_id) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "receipt.stream_id: does not name the envelope's stream_id");
    return 0;
}

static const char *receipt_kid(const char *receipt, size_t len, char out[129])
{
    _cleanup_cjson_ cJSON *rc = cJSON_ParseWithLength(receipt, len);
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(rc, "receipt");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(sig, "kid");
    if (!cJSON_IsString(kid) || !lv_valid_id(kid->valuestring))
        return NULL;
    snprintf(out, 129, "%s", kid->valuestring);
    return out;
}

/* The receiver keys to check the receipt with, after the pins. */
static int receipt_keys_for(const BundlePins *pins, bool present, const BundleKey *line,
                            const char *kid, ReceiptKeys **ret_owned, const ReceiptKeys **ret)
{
    if (!kid)
        return lv_error_set(LV_ERR_CRYPTO,
                            "receipt.receipt.kid: missing or not 1-128 bytes of [A-Za-z0-9._:@/-]");
    if (present && strcmp(line->kid, kid) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "receipt_key.kid: does not name the receipt's receipt.kid");
    const ReceiptKeys *pinned = pins ? pins->receipt_keys : NULL;
    if (pinned) {
        uint8_t pk[32];
        if (!receipt_keys_find(pinned, kid, pk))
            return lv_error_set(LV_ERR_CRYPTO, "receipt.receipt.kid: names no --receipt-key key");
        if (present && !same_key(line, pk))
            return lv_error_set(LV_ERR_CRYPTO,
                                "receipt_key: differs from the --receipt-key key of its kid");
        *ret = pinned;
        return 0;
    }
    if (!present)
        return lv_error_set(LV_ERR_CRYPTO,
                            "receipt_key: null (give the receiver's keys with --receipt-key)");
    char hex[65], text[300];
    hex_encode(line->pk, 32, hex);
    snprintf(text, sizeof(text), "[{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"public_key_hex\":\"%s\"}]",
             line->kid, hex);
    int r = receipt_keys_parse(text, strlen(text), ret_owned);
    if (r < 0)
        return r;
    *ret = *ret_owned;
    return 0;
}

/* cJSON hands strings over NUL-terminated: an escaped NUL (\u0000) would
 * cut the envelope or receipt short and leave the bytes after it outside
 * every check. No document of ours holds one, so a line with one is
 * refused. Every backslash in JSON text starts a two-byte escape (or a
 * six-byte \uXXXX), so walking escapes pairwise finds exactly them. */
static bool has_escaped_nul(const char *line, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (line[i] == '\\') {
            if (line[i + 1] == 'u' && i + 6 <= len && memcmp(line + i + 2, "0000", 4) == 0)
                return true;
            i++;
        }
    return false;
}

static const char *const line_members[] = {"bundle_version", "envelope",    "envelope_key",
                                           "receipt",        "receipt_key", "unverifiable"};

int bundle_line_check(const char *line, size_t len, const BundlePins *pins, BundleLineInfo *ret)
{
    if (len == 0)
        return lv_error_set(LV_ERR_INPUT, "empty line");
    if (len > BUNDLE_MAX_LINE)
        return lv_error_set(LV_ERR_INPUT, "over %d bytes", BUNDLE_MAX_LINE);
    if (has_escaped_nul(line, len))
        return lv_error_set(LV_ERR_INPUT, "line: holds an escaped NUL (\\u0000)");
    _cleanup_cjson_erase_ cJSON *root = NULL;
    int r = canon_parse(line, len, BUNDLE_MAX_LINE, "line", &root);
    if (r < 0)
        return r == LV_ERR_TOOBIG ? r : LV_ERR_INPUT; /* canon_parse's detail stands */
    r = canon_check_members(root, "line", line_members, ELEMENTSOF(line_members), false);
    if (r < 0)
        return r;
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "bundle_version");
    if (!cJSON_IsNumber(ver) || ver->valuedouble != BUNDLE_VERSION)
        return lv_error_set(LV_ERR_INPUT, "bundle_version: must be %d", BUNDLE_VERSION);
    const cJSON *env = cJSON_GetObjectItemCaseSensitive(root, "envelope");
    const cJSON *rcp = cJSON_GetObjectItemCaseSensitive(root, "receipt");
    if (!cJSON_IsString(env))
        return lv_error_set(LV_ERR_INPUT, "envelope: required, a string (the body as sent)");
    if (!cJSON_IsString(rcp))
        return lv_error_set(LV_ERR_INPUT, "receipt: required, a string (the receipt as stored)");
    const cJSON *unv = cJSON_GetObjectItemCaseSensitive(root, "unverifiable");
    if (unv && !cJSON_IsString(unv))
        return lv_error_set(LV_ERR_INPUT, "unverifiable: must be a string");
    BundleKey ek = {0}, rk = {0};
    bool has_ek = false, has_rk = false;
    r = line_key(root, "envelope_key", &has_ek, &ek);
    if (r >= 0)
        r = line_key(root, "receipt_key", &has_rk, &rk);
    if (r < 0)
        return r;

    const char *e = env->valuestring, *rc = rcp->valuestring;
    size_t elen = strlen(e), rlen = strlen(rc);
    BundleLineInfo info = {0};
    lv_error_clear();
    r = envelope_fields(e, elen, &info.envelope);
    if (r < 0)
        return lv_error_set(LV_ERR_CRYPTO, "envelope: not a relay envelope");
    lv_sha256_hex(e, elen, info.envelope_hash);
    BundleKey use;
    r = envelope_key(pins, has_ek, &ek, info.envelope.kid, &use);
    if (r < 0)
        return r;
    lv_error_clear();
    r = envelope_verify(e, elen, use.pk);
    if (r < 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s",
                 r == LV_ERR_CRYPTO ? "the signature does not verify under envelope_key"
                                    : lv_error());
        return lv_error_set(LV_ERR_CRYPTO, "envelope: %s", why);
    }
    r = check_receipt_names(rc, rlen, &info.envelope);
    if (r < 0)
        return r;
    char kidbuf[129];
    _cleanup_receipt_keys_ ReceiptKeys *owned = NULL;
    const ReceiptKeys *keys = NULL;
    r = receipt_keys_for(pins, has_rk, &rk, receipt_kid(rc, rlen, kidbuf), &owned, &keys);
    if (r < 0)
        return r;
    char detail[160];
    const char *why = receipt_check(keys, rc, rlen, info.envelope_hash, detail, sizeof(detail));
    if (why)
        return lv_error_set(LV_ERR_CRYPTO, "%s: %s", why, detail);
    if (ret)
        *ret = info;
    return 0;
}
