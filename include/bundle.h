/* SPDX-License-Identifier: Apache-2.0 */
/* Proof bundles (docs/protocol.md "Proof bundles"): one JSON line per
 * receipted item holding the envelope exactly as sent, the receipt exactly
 * as stored and the public keys that verify both, built by `receipts
 * export` and checked offline by `verify --bundle`. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envelope.h"
#include "receipt.h"

#define BUNDLE_VERSION 1
/* A line: both documents as JSON strings (escaping at most doubles them)
 * and two key objects. */
#define BUNDLE_MAX_LINE (2 * (ENVELOPE_MAX_BODY + ENVELOPE_MAX_ACK) + 4096)

/* A public key with its kid ("" in a pin given without one: any kid). */
typedef struct BundleKey {
    char kid[129];
    uint8_t pk[32];
} BundleKey;

/* One line (without its newline, malloc'd, NUL-terminated) from the stored
 * envelope and receipt. A key is NULL when the exporter does not know it;
 * unverifiable (or NULL) says why the line cannot be checked with its own
 * keys, e.g. "receipt_key_not_pinned". */
int bundle_line_build(const char *envelope, size_t envelope_len, const BundleKey *envelope_key,
                      const char *receipt, size_t receipt_len, const BundleKey *receipt_key,
                      const char *unverifiable, char **ret, size_t *ret_len);

/* What the verifier pins: signing keys (--public-key) and receiver keys
 * (--receipt-key). A line's key must equal a pinned key of its kid; a line
 * without a key takes the pinned one its document's kid names. NULL / 0:
 * the line's own keys are used. */
typedef struct BundlePins {
    const BundleKey *envelope_keys;
    size_t n_envelope_keys;
    const ReceiptKeys *receipt_keys;
} BundlePins;

/* What a line that verified names. */
typedef struct BundleLineInfo {
    EnvelopeFields envelope;
    char envelope_hash[65];
} BundleLineInfo;

/* Checks one line (outside input: strict JSON, exact members, caps): the
 * envelope's signature under its key, that the receipt names the
 * envelope's hash, stream and event id, and the receipt's signature under
 * its key (receipt_check). 0 when it all holds; else LV_ERR_INPUT (the line
 * is malformed) or LV_ERR_CRYPTO (a check failed), with one line of detail
 * naming the member and the rule. ret may be NULL. */
int bundle_line_check(const char *line, size_t len, const BundlePins *pins, BundleLineInfo *ret);
