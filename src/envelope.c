/* SPDX-License-Identifier: Apache-2.0 */
/* The relay envelope of DESIGN §5.2 (build, sign on the token, verify) and
 * the fail-closed acknowledgement check of §5.4. */
#include "envelope.h"

#include "canon.h"
#include "lv.h"
#include "pubkey.h"

#define EVENT_ID_PREFIX "local-vault:"

void envelope_event_id(const char *installation_id, const char *source_ref,
                       char out[ENVELOPE_EVENT_ID_MAX])
{
    snprintf(out, ENVELOPE_EVENT_ID_MAX, EVENT_ID_PREFIX "%s:%s", installation_id, source_ref);
}

/* A growable buffer with a hard cap; every append checks before it grows. */
typedef struct Buf {
    char *p;
    size_t len, cap, max;
    bool failed;
} Buf;

static void buf_add(Buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n > b->max - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap : 512;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(Buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* A member whose value needs no JSON escaping (identifiers, hex, times:
 * checked by the caller), so its JCS form is the bytes between quotes. */
static void buf_member(Buf *b, const char *name, const char *value, bool last)
{
    buf_str(b, "\"");
    buf_str(b, name);
    buf_str(b, "\":\"");
    buf_str(b, value);
    buf_str(b, last ? "\"" : "\",");
}

/* The envelope's members in JCS order (keys sorted by UTF-16 code units,
 * all ASCII here): envelope_version, event_id, event_type, installation_id,
 * [local_signature], [payload], payload_hash, source_ref, spooled_at,
 * stream_id. sig_member is the whole "local_signature" member or NULL. */
static void build_json(Buf *b, const EnvelopeInput *in, const char *event_id,
                       const char *event_type, const char *payload_hash, const char *spooled_at,
                       const char *sig_member)
{
    buf_str(b, "{\"envelope_version\":1,");
    buf_member(b, "event_id", event_id, false);
    buf_member(b, "event_type", event_type, false);
    buf_member(b, "installation_id", in->installation_id, false);
    if (sig_member) {
        buf_str(b, sig_member);
        buf_str(b, ",");
    }
    if (in->include_payload) {
        buf_str(b, "\"payload\":");
        buf_add(b, in->payload_canon, in->payload_len);
        buf_str(b, ",");
    }
    buf_member(b, "payload_hash", payload_hash, false);
    buf_member(b, "source_ref", in->source_ref, false);
    buf_member(b, "spooled_at", spooled_at, false);
    buf_member(b, "stream_id", in->stream_id, true);
    buf_str(b, "}");
}

void envelope_ids(const EnvelopeInput *in, EnvelopeIds *ret)
{
    envelope_event_id(in->installation_id, in->source_ref, ret->event_id);
    lv_sha256_hex(in->payload_canon, in->payload_len, ret->payload_hash);
    ret->envelope_hash[0] = '\0';
}

int envelope_build(Token *t, const EnvelopeInput *in, char **ret_body, size_t *ret_len,
                   EnvelopeIds *ret_ids)
{
    const char *event_type = in->event_type ? in->event_type : ENVELOPE_DEFAULT_EVENT_TYPE;
    static const struct {
        const char *name;
        size_t off;
    } id_members[] = {{"installation_id", offsetof(EnvelopeInput, installation_id)},
                      {"stream_id", offsetof(EnvelopeInput, stream_id)},
                      {"source_ref", offsetof(EnvelopeInput, source_ref)}};
    for (size_t i = 0; i < ELEMENTSOF(id_members); i++) {
        const char *v = *(const char *const *)((const char *)in + id_members[i].off);
        if (!lv_valid_id(v))
            return lv_error_set(LV_ERR_INPUT, "%s: must be 1-128 bytes of [A-Za-z0-9._:@/-]",
                                id_members[i].name);
    }
    if (!lv_valid_id(event_type))
        return lv_error_set(LV_ERR_INPUT, "event_type: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    if (!in->payload_canon || in->payload_len == 0 || in->payload_len > ENVELOPE_MAX_PAYLOAD)
        return lv_error_set(LV_ERR_INPUT, "payload: missing or over the size cap");
    const char *kid = token_key_id(t);
    if (!kid || !lv_valid_id(kid))
        return lv_error_set(LV_ERR_INPUT, "key id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");

    EnvelopeIds ids;
    envelope_ids(in, &ids);
    const char *event_id = ids.event_id, *payload_hash = ids.payload_hash;
    char spooled_at[32];
    lv_format_time(in->spooled_at_ms, spooled_at);

    int r;
    Buf unsigned_json = {.max = ENVELOPE_MAX_BODY}, body = {.max = ENVELOPE_MAX_BODY};
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    build_json(&unsigned_json, in, event_id, event_type, payload_hash, spooled_at, NULL);
    if (unsigned_json.failed) {
        r = lv_error_set(LV_ERR_TOOBIG, "envelope: larger than %d bytes", ENVELOPE_MAX_BODY);
        goto done;
    }
    r = pubkey_signed_message(ENVELOPE_SIGN_DOMAIN, unsigned_json.p, unsigned_json.len, &msg,
                              &msg_len);
    if (r < 0)
        goto done;
    uint8_t sig[TOKEN_ED25519_SIG_LEN];
    r = token_sign(t, msg, msg_len, sig);
    if (r < 0)
        goto done;
    char sig_hex[2 * TOKEN_ED25519_SIG_LEN + 1];
    hex_encode(sig, sizeof(sig), sig_hex);
    char sig_member[2 * TOKEN_ED25519_SIG_LEN + 200];
    snprintf(sig_member, sizeof(sig_member),
             "\"local_signature\":{\"alg\":\"Ed25519\",\"kid\":\"%s\",\"signature\":\"%s\"}", kid,
             sig_hex);
    build_json(&body, in, event_id, event_type, payload_hash, spooled_at, sig_member);
    if (body.failed) {
        r = lv_error_set(LV_ERR_TOOBIG, "envelope: larger than %d bytes", ENVELOPE_MAX_BODY);
        goto done;
    }
    lv_sha256_hex(body.p, body.len, ids.envelope_hash);
    *ret_ids = ids;
    *ret_len = body.len;
    *ret_body = TAKE_PTR(body.p);
    r = 0;
done:
    /* With the opt-in payload both buffers hold plaintext. */
    erase_and_free(unsigned_json.p, unsigned_json.cap);
    erase_and_free(body.p, body.cap);
    erase_and_free(msg, msg_len);
    return r;
}

static void wipe_tree(cJSON *j)
{
    for (; j; j = j->next) {
        if (j->string)
            explicit_bzero(j->string, strlen(j->string));
        if (j->valuestring)
            explicit_bzero(j->valuestring, strlen(j->valuestring));
        j->valuedouble = 0;
        j->valueint = 0;
        wipe_tree(j->child);
    }
}

void envelope_json_erase(cJSON *j)
{
    if (!j)
        return;
    /* Only this node's subtree: its siblings belong to someone else. */
    if (j->string)
        explicit_bzero(j->string, strlen(j->string));
    if (j->valuestring)
        explicit_bzero(j->valuestring, strlen(j->valuestring));
    wipe_tree(j->child);
    cJSON_Delete(j);
}

/* A string member, present and a string, or NULL. */
static const char *member_str(const cJSON *obj, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(m) ? m->valuestring : NULL;
}

static bool valid_time(const char *s)
{
    int64_t ms;
    char again[32];
    if (!s || lv_parse_time(s, &ms) < 0 || strlen(s) != 20)
        return false;
    lv_format_time(ms, again);
    return strcmp(again, s) == 0;
}

int envelope_verify(const char *body, size_t len, const uint8_t pk[32])
{
    _cleanup_cjson_erase_ cJSON *root = NULL;
    _cleanup_free_ char *canon = NULL, *unsigned_json = NULL;
    _cleanup_free_ uint8_t *msg = NULL;
    size_t canon_len = 0, unsigned_len = 0, msg_len = 0;

    if (len > ENVELOPE_MAX_BODY)
        return lv_error_set(LV_ERR_TOOBIG, "envelope: larger than %d bytes", ENVELOPE_MAX_BODY);
    int r = canon_parse(body, len, ENVELOPE_MAX_BODY, "envelope", &root);
    if (r < 0)
        return r;
    r = canon_serialize(root, &canon, &canon_len);
    if (r < 0)
        return r;
    /* The body bytes ARE the canonical form: anything else was re-encoded
     * on the way and its hash would not be the one that was signed over. */
    if (canon_len != len || memcmp(canon, body, len) != 0)
        return lv_error_set(LV_ERR_INPUT, "envelope: not in canonical form (RFC 8785)");
    if (!cJSON_IsObject(root))
        return lv_error_set(LV_ERR_INPUT, "envelope: not a JSON object");

    static const char *const top[] = {
        "envelope_version", "event_id",     "event_type", "installation_id", "local_signature",
        "payload",          "payload_hash", "source_ref", "spooled_at",      "stream_id"};
    r = canon_check_members(root, "envelope", top, ELEMENTSOF(top), false);
    if (r < 0)
        return r;
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "envelope_version");
    if (!cJSON_IsNumber(ver) || ver->valuedouble != 1)
        return lv_error_set(LV_ERR_INPUT, "envelope.envelope_version: must be 1");
    static const char *const idn[] = {"installation_id", "stream_id", "source_ref", "event_type"};
    for (size_t i = 0; i < ELEMENTSOF(idn); i++)
        if (!lv_valid_id(member_str(root, idn[i])))
            return lv_error_set(LV_ERR_INPUT,
                                "envelope.%s: missing, or not 1-128 bytes of [A-Za-z0-9._:@/-]",
                                idn[i]);
    const char *event_id = member_str(root, "event_id");
    char want_id[ENVELOPE_EVENT_ID_MAX];
    envelope_event_id(member_str(root, "installation_id"), member_str(root, "source_ref"), want_id);
    if (!event_id || strcmp(event_id, want_id) != 0)
        return lv_error_set(
            LV_ERR_INPUT, "envelope.event_id: must be local-vault:<installation_id>:<source_ref>");
    const char *payload_hash = member_str(root, "payload_hash");
    if (!is_lower_hex(payload_hash, 64))
        return lv_error_set(LV_ERR_INPUT, "envelope.payload_hash: must be 64 lowercase hex digits");
    if (!valid_time(member_str(root, "spooled_at")))
        return lv_error_set(
            LV_ERR_INPUT,
            "envelope.spooled_at: must be RFC 3339 UTC seconds (YYYY-MM-DDTHH:MM:SSZ)");
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(root, "payload");
    if (payload) {
        if (!cJSON_IsObject(payload))
            return lv_error_set(LV_ERR_INPUT, "envelope.payload: must be a JSON object");
        char *pc = NULL;
        size_t pc_len = 0;
        r = canon_serialize(payload, &pc, &pc_len);
        if (r < 0)
            return r;
        char h[65];
        lv_sha256_hex(pc, pc_len, h);
        erase_and_free(pc, pc_len);
        if (strcmp(h, payload_hash) != 0)
            return lv_error_set(LV_ERR_INPUT,
                                "envelope.payload_hash: does not match SHA-256 of the payload");
    }

    cJSON *ls = cJSON_GetObjectItemCaseSensitive(root, "local_signature");
    if (!cJSON_IsObject(ls))
        return lv_error_set(LV_ERR_INPUT, "envelope.local_signature: missing or not an object");
    static const char *const sigm[] = {"alg", "kid", "signature"};
    r = canon_check_members(ls, "envelope.local_signature", sigm, ELEMENTSOF(sigm), false);
    if (r < 0)
        return r;
    const char *alg = member_str(ls, "alg"), *kid = member_str(ls, "kid"),
               *sig_hex = member_str(ls, "signature");
    if (!alg || strcmp(alg, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "envelope.local_signature.alg: must be \"Ed25519\"");
    if (!kid || !*kid || strlen(kid) > 128)
        return lv_error_set(LV_ERR_INPUT, "envelope.local_signature.kid: must be 1-128 bytes");
    uint8_t sig[64];
    if (!is_lower_hex(sig_hex, 128) || hex_decode(sig_hex, sig, sizeof(sig)) < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "envelope.local_signature.signature: must be 128 lowercase hex digits");

    /* The signed part is the envelope without local_signature, re-serialized
     * canonically (the body is canonical, so this is exact). */
    cJSON_Delete(cJSON_DetachItemViaPointer(root, ls));
    r = canon_serialize(root, &unsigned_json, &unsigned_len);
    if (r < 0)
        return r;
    r = pubkey_signed_message(ENVELOPE_SIGN_DOMAIN, unsigned_json, unsigned_len, &msg, &msg_len);
    if (r < 0)
        return r;
    r = pubkey_verify(pk, msg, msg_len, sig);
    if (payload)
        explicit_bzero(unsigned_json, unsigned_len);
    if (r < 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "envelope.local_signature: signature does not verify under the given "
                            "public key");
    return 0;
}

static int copy_field(char *out, size_t size, const char *v)
{
    if (!v || strlen(v) >= size)
        return -1;
    strcpy(out, v);
    return 0;
}

int envelope_fields(const char *body, size_t len, EnvelopeFields *ret)
{
    _cleanup_cjson_erase_ cJSON *root = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(root))
        return lv_error_set(LV_ERR_INPUT, "envelope: not a JSON object");
    const cJSON *ls = cJSON_GetObjectItemCaseSensitive(root, "local_signature");
    EnvelopeFields f = {0};
    if (copy_field(f.event_id, sizeof(f.event_id), member_str(root, "event_id")) < 0 ||
        copy_field(f.stream_id, sizeof(f.stream_id), member_str(root, "stream_id")) < 0 ||
        copy_field(f.source_ref, sizeof(f.source_ref), member_str(root, "source_ref")) < 0 ||
        copy_field(f.payload_hash, sizeof(f.payload_hash), member_str(root, "payload_hash")) < 0 ||
        copy_field(f.kid, sizeof(f.kid), cJSON_IsObject(ls) ? member_str(ls, "kid") : NULL) < 0)
        return lv_error_set(LV_ERR_INPUT, "envelope: a required member is missing or too long");
    *ret = f;
    return 0;
}

/* --- acknowledgement (§5.4) --- */

/* true when an object has two members of the same name. cJSON keeps both;
 * a receiver (or a proxy) that sends two localVaultAck members is not
 * telling us one thing, so the check refuses rather than picking one. */
static bool has_duplicate_member(const cJSON *obj)
{
    for (const cJSON *a = obj->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (strcmp(a->string, b->string) == 0)
                return true;
    return false;
}

/* cJSON decodes "\u0000" into a C string that ends early, so "abc\u0000x"
 * would compare equal to "abc". Refuse any body that escapes a NUL. Outside
 * strings a backslash is already a syntax error, so scanning the raw text
 * for the escape is exact for every body the parser accepts. */
static bool escapes_nul(const char *s, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
            return true;
        i++; /* skip the escaped character, so "\\u0000" is not one */
    }
    return false;
}

void envelope_check_ack(long http_status, const char *body, size_t len, const char *envelope_hash,
                        const char *stream_id, const char *event_id, AckCheck *ret)
{
    *ret = (AckCheck){0};
    if (http_status < 200 || http_status > 299) {
        ret->reason = "ack_http_status";
        return;
    }
    if (!body || len == 0) {
        ret->reason = "ack_not_json";
        return;
    }
    if (len > ENVELOPE_MAX_ACK) {
        ret->reason = "ack_too_large";
        return;
    }
    if (memchr(body, '\0', len) || escapes_nul(body, len)) {
        ret->reason = "ack_not_json";
        return;
    }
    /* cJSON_ParseWithLengthOpts with require_null_terminated wants the NUL
     * inside the given length: parse a terminated copy, so trailing bytes
     * after the value are refused. */
    _cleanup_free_ char *copy = malloc(len + 1);
    if (!copy) {
        ret->reason = "ack_not_json";
        return;
    }
    memcpy(copy, body, len);
    copy[len] = '\0';
    _cleanup_cjson_ cJSON *root = cJSON_ParseWithLengthOpts(copy, len + 1, NULL, 1);
    if (!root) {
        ret->reason = "ack_not_json";
        return;
    }
    if (!cJSON_IsObject(root)) {
        ret->reason = "ack_not_object";
        return;
    }
    if (has_duplicate_member(root)) {
        ret->reason = "ack_duplicate_member";
        return;
    }
    const cJSON *ack = cJSON_GetObjectItemCaseSensitive(root, "localVaultAck");
    if (!cJSON_IsObject(ack)) {
        ret->reason = "ack_missing";
        return;
    }
    if (has_duplicate_member(ack)) {
        ret->reason = "ack_duplicate_member";
        return;
    }
    const char *h = member_str(ack, "envelopeHash");
    if (!h || strcmp(h, envelope_hash) != 0) {
        ret->reason = "ack_envelope_hash_mismatch";
        return;
    }
    const char *s = member_str(ack, "streamId");
    if (!s || strcmp(s, stream_id) != 0) {
        ret->reason = "ack_stream_id_mismatch";
        return;
    }
    const char *e = member_str(ack, "eventId");
    if (!e || strcmp(e, event_id) != 0) {
        ret->reason = "ack_event_id_mismatch";
        return;
    }
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(root, "receipt");
    if (!cJSON_IsObject(rc)) {
        ret->reason = "ack_receipt_missing";
        return;
    }
    if (has_duplicate_member(rc)) {
        ret->reason = "ack_duplicate_member";
        return;
    }
    const char *rs = member_str(rc, "stream_id"), *re = member_str(rc, "event_id");
    if (!rs || !re || strcmp(rs, stream_id) != 0 || strcmp(re, event_id) != 0) {
        ret->reason = "ack_receipt_mismatch";
        return;
    }
    /* Store the receipt canonically when it is canonicalizable (Attesto's
     * receipts are integer-only JCS objects); otherwise cJSON's compact form,
     * since a number format is no reason to doubt a verified delivery. */
    char *out = NULL;
    size_t out_len = 0;
    if (canon_serialize(rc, &out, &out_len) < 0) {
        lv_error_clear();
        out = cJSON_PrintUnformatted(rc);
    }
    if (!out) {
        ret->reason = "ack_receipt_unstorable";
        return;
    }
    ret->receipt_json = out;
}

void ack_check_done(AckCheck *a)
{
    if (!a)
        return;
    free(a->receipt_json);
    *a = (AckCheck){0};
}
