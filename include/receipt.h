/* SPDX-License-Identifier: Apache-2.0 */
/* Pinned receipt keys (docs/protocol.md "Signed receipts"): the receivers'
 * Ed25519 public keys an operator pins by kid, and the check that a stored
 * receipt is signed by one of them. Public keys only: verification happens
 * in-process with OpenSSL. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECEIPT_SIGN_DOMAIN   "attesto.local-vault.receiver-receipt.v1"
#define RECEIPT_KEYS_MAX      64          /* keys in one file: old and new side by side */
#define RECEIPT_KEYS_MAX_FILE (64 * 1024) /* bytes of a keys file */

typedef struct ReceiptKeys ReceiptKeys;

/* Parses a keys file's text: a JSON array of 1..RECEIPT_KEYS_MAX objects
 * {"alg":"Ed25519","kid":ID,"public_key_hex":64 hex}, exactly these
 * members, kids unique. LV_ERR_INPUT (LV_ERR_TOOBIG past the size cap) with
 * detail naming the element, the member and the rule, e.g.
 * "[1].kid: rcv-1: given twice (each kid names one key)". */
int receipt_keys_parse(const char *text, size_t len, ReceiptKeys **ret);
/* The same on a tree already read strictly (canon_parse): a bundle line's
 * key objects (src/bundle.c) take this shape too. */
struct cJSON;
int receipt_keys_from_json(const struct cJSON *array, ReceiptKeys **ret);
/* Reads and parses path; detail starts with the path. A file that cannot be
 * read is LV_ERR_INPUT too (a configuration error, as --ca-file). */
int receipt_keys_load(const char *path, ReceiptKeys **ret);
/* Accepts NULL, returns NULL. */
ReceiptKeys *receipt_keys_free(ReceiptKeys *k);
static inline void receipt_keys_freep(ReceiptKeys **k)
{
    receipt_keys_free(*k);
}
#define _cleanup_receipt_keys_ __attribute__((cleanup(receipt_keys_freep)))

size_t receipt_keys_count(const ReceiptKeys *k);
/* The kid of key i (< count), for doctor. */
const char *receipt_keys_kid(const ReceiptKeys *k, size_t i);

/* The key pinned under kid into ret_pk; false when no key has that kid. */
bool receipt_keys_find(const ReceiptKeys *k, const char *kid, uint8_t ret_pk[32]);

/* Checks a receipt as the drain stores it (the ack's "receipt" member) for
 * the envelope whose hash is envelope_hash: its event_hash must name that
 * envelope, its "receipt" member must be {"alg":"Ed25519","kid","signature"
 * (128 hex)} with a kid that is pinned, and the signature must verify under
 * that key over RECEIPT_SIGN_DOMAIN 0x0A JCS(receipt without "receipt").
 * Returns NULL when it holds, else the reason to record:
 * "receipt_key_unknown", "receipt_signature_invalid" or
 * "ack_receipt_mismatch"; detail (may be NULL) gets one line saying why. */
const char *receipt_check(const ReceiptKeys *k, const char *receipt_json, size_t len,
                          const char *envelope_hash, char *detail, size_t detail_len);
