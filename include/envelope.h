/* SPDX-License-Identifier: Apache-2.0 */
/* The relay envelope of DESIGN §5.2: build, sign on the token, verify, and
 * the fail-closed acknowledgement check of §5.4. */
#pragma once
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "token.h"

#define ENVELOPE_SIGN_DOMAIN        "attesto.local-vault.relay-envelope.v1"
#define ENVELOPE_DEFAULT_EVENT_TYPE "source.attestation"
#define ENVELOPE_MAX_PAYLOAD        (1024 * 1024) /* canonical payload bytes */
/* An envelope body is at most the payload cap plus the fixed members. */
#define ENVELOPE_MAX_BODY (1024 * 1024 + 16 * 1024)
/* The relay caps acknowledgement bodies at 64 KiB; so does the check. */
#define ENVELOPE_MAX_ACK      (64 * 1024)
#define ENVELOPE_EVENT_ID_MAX 300 /* "local-vault:" + 128 + ":" + 128 + NUL fits */

typedef struct EnvelopeInput {
    const char *installation_id;
    const char *stream_id;
    const char *source_ref;
    const char *event_type;    /* NULL: "source.attestation" */
    const char *payload_canon; /* canonical payload JSON (for the hash, and the opt-in member) */
    size_t payload_len;
    bool include_payload; /* opt-in: the payload travels inside the signed part */
    int64_t spooled_at_ms;
} EnvelopeInput;

/* The identifiers of one envelope: its event id, the payload's hash and
 * (after envelope_build) the body's hash, all lowercase hex SHA-256. */
typedef struct EnvelopeIds {
    char event_id[ENVELOPE_EVENT_ID_MAX];
    char payload_hash[65];
    char envelope_hash[65]; /* "" until the body is built */
} EnvelopeIds;

/* The event id and payload hash of an input, without the token: what a
 * caller needs to look an item up before deciding to build it. */
void envelope_ids(const EnvelopeInput *in, EnvelopeIds *ret);

/* Builds the envelope, signs it on the token and returns the exact request
 * body (canonical JSON) and the ids it computed and signed (event id,
 * payload hash, body hash), so that callers store those and never compute
 * them a second time. installation_id, stream_id, source_ref, event_type
 * and the token's kid must pass lv_valid_id(); payload_canon must already
 * be canonical (it is hashed and embedded as given). LV_ERR_INPUT with
 * detail otherwise. */
int envelope_build(Token *t, const EnvelopeInput *in, char **ret_body, size_t *ret_len,
                   EnvelopeIds *ret_ids);

/* Offline check of a body: canonical form, fields, identifiers, signature
 * under the given raw public key. LV_ERR_CRYPTO on a bad signature,
 * LV_ERR_INPUT with detail on a malformed envelope. */
int envelope_verify(const char *body, size_t len, const uint8_t pk[32]);

/* Deletes a cJSON tree after wiping its names and strings: for trees that
 * held payload plaintext (an opt-in envelope, a decrypted payload). NULL ok. */
void envelope_json_erase(cJSON *j);
static inline void envelope_json_erasep(cJSON **j)
{
    envelope_json_erase(*j);
}
#define _cleanup_cjson_erase_ __attribute__((cleanup(envelope_json_erasep)))

/* "local-vault:<installation_id>:<source_ref>" into out (>= ENVELOPE_EVENT_ID_MAX). */
void envelope_event_id(const char *installation_id, const char *source_ref,
                       char out[ENVELOPE_EVENT_ID_MAX]);

/* The identifying members of a body already known to be ours (spool rows):
 * parsed without the canonical-form and signature checks. */
typedef struct EnvelopeFields {
    char event_id[ENVELOPE_EVENT_ID_MAX];
    char stream_id[129];
    char source_ref[129];
    char payload_hash[65];
    char kid[129];
} EnvelopeFields;
int envelope_fields(const char *body, size_t len, EnvelopeFields *ret);

/* Result of the acknowledgement check: NULL reason means delivered. */
typedef struct AckCheck {
    const char *reason; /* "ack_not_json", "ack_envelope_hash_mismatch", ... (static string) */
    char *receipt_json; /* canonical "receipt" member to store (malloc'd), or NULL */
} AckCheck;

/* DESIGN §5.4, fail-closed: status 2xx, a JSON object body, localVaultAck
 * envelopeHash/streamId/eventId equal to ours and to the receipt's. The
 * reasons are listed in docs/spool.md; on success reason is NULL and
 * receipt_json holds the receipt member re-serialized. */
void envelope_check_ack(long http_status, const char *body, size_t len, const char *envelope_hash,
                        const char *stream_id, const char *event_id, AckCheck *ret);
void ack_check_done(AckCheck *a);
