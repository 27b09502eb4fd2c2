/* SPDX-License-Identifier: Apache-2.0 */
/* The reference receiver's memory: registered installations, accepted
 * events (idempotency), a seq_no per stream, the receiver's own receipt key
 * and the events log. Thread-safe. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEDGER_RECEIPT_DOMAIN "attesto.local-vault.receiver-receipt.v1"

typedef struct Ledger Ledger;

/* receipt_key_pem: NULL for a fresh in-memory key, else a PKCS#8 PEM file
 * holding an Ed25519 private key (reproducible receipts for docs). */
int ledger_new(const char *events_log, const char *receipt_key_pem, Ledger **ret);
void ledger_free(Ledger *l);
int ledger_register(Ledger *l, const char *installation_id, const uint8_t pk[32]);
/* Adds a key of the installation (each signing key epoch has its own); kid
 * NULL: the key is tried for any kid, else only for envelopes naming it. */
int ledger_register_key(Ledger *l, const char *installation_id, const char *kid,
                        const uint8_t pk[32]);
/* Replays an existing events log so that a restarted receiver keeps its
 * idempotency answers and seq_no counters. */
int ledger_load_log(Ledger *l);

/* Outcome of submitting one envelope. */
typedef enum {
    LEDGER_ACCEPTED, /* new: seq_no assigned, logged */
    LEDGER_REPLAYED, /* known event, same envelope hash: the stored ack */
    LEDGER_CONFLICT, /* known event, another envelope hash */
    LEDGER_UNKNOWN,  /* installation not registered */
    LEDGER_BAD_SIG,  /* signature does not verify under the registered key */
    LEDGER_INVALID,  /* malformed, non-canonical, or fields that disagree */
    LEDGER_INTERNAL, /* could not be recorded (events log): answer 500 */
} LedgerResult;

/* Verifies body like Attesto (canonical form, signature, event id binding to
 * the path's installation and the Idempotency-Key) and records it. On
 * ACCEPTED/REPLAYED *ret_ack is the ack body (malloc'd). On failure detail
 * receives one line. */
LedgerResult ledger_submit(Ledger *l, const char *path_installation, const char *idempotency_key,
                           const char *body, size_t len, char **ret_ack, char *detail,
                           size_t detail_len);

/* Names the receipt key kid instead of "rcv-" + 16 hex digits of its
 * SHA-256 (staging a rotation; tests of a kid that names another key). */
int ledger_set_receipt_kid(Ledger *l, const char *kid);
/* The receiver's public key as JSON {"alg","kid","public_key_hex"}, malloc'd. */
char *ledger_public_key_json(Ledger *l);
/* Counts for the stats endpoint. */
void ledger_counts(Ledger *l, uint64_t *accepted, uint64_t *replayed, uint64_t *rejected);

/* Builds an ack body for the given fields with a receipt signed by the
 * receiver key; the fault paths use it with altered fields. */
char *ledger_make_ack(Ledger *l, const char *ack_hash, const char *ack_event,
                      const char *ack_stream, const char *rc_hash, const char *rc_event,
                      const char *rc_stream, int64_t seq_no);
