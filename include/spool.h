/* SPDX-License-Identifier: Apache-2.0 */
/* The encrypted SQLite spool: schema, enqueue with idempotency and drift
 * rejection, the item state machine with leases, retry bookkeeping and
 * dead-letter. Payloads are encrypted on the token with the DEK. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "token.h"

typedef struct Spool Spool;

#define SPOOL_MAX_PAYLOAD (1024 * 1024)

typedef struct SpoolOptions {
    const char *path;
    const char *installation_id; /* required for enqueue */
    bool include_payload;        /* opt-in: relay the payload inside the envelope */
    int max_attempts;            /* 0: default 25 */
} SpoolOptions;

/* Opens (creating with mode 0600 and migrating as needed) the spool, checks
 * the KEK and loads the DEK on the token (creating and wrapping one for a new
 * spool). The token must outlive the spool. */
int spool_open(const SpoolOptions *opt, Token *tok, Spool **ret);
Spool *spool_close(Spool *s);

typedef enum { SPOOL_QUEUED, SPOOL_DUPLICATE, SPOOL_CONFLICT } SpoolEnqueueStatus;

typedef struct SpoolItemIn {
    const char *stream_id;
    const char *source_ref;
    const char *event_type; /* NULL: "source.attestation" */
    const char *payload;    /* raw JSON text of the payload (canonicalized here) */
    size_t payload_len;
} SpoolItemIn;

typedef struct SpoolEnqueueResult {
    SpoolEnqueueStatus status;
    char event_id[300];
    char envelope_hash[65];
} SpoolEnqueueResult;

/* Validates, canonicalizes, signs, encrypts and inserts n items in one
 * transaction. An invalid item fails the whole call with LV_ERR_INPUT (detail
 * names the field) before anything is written; a conflict is recorded and
 * reported in its result, not as an error. */
int spool_enqueue(Spool *s, const SpoolItemIn *items, size_t n, SpoolEnqueueResult *ret_results);

/* A leased item, ready to send. */
typedef struct SpoolLease {
    int64_t id;
    char stream_id[129];
    char event_id[300];
    char envelope_hash[65];
    char *body; /* the exact request body (malloc'd) */
    size_t body_len;
    int attempts; /* attempts made before this one */
} SpoolLease;

/* Leases up to max due items for owner until now+lease_ms: at most one per
 * stream, always the oldest undelivered item of its stream (enqueue order),
 * and none from a stream that already has an item in flight or whose head is
 * waiting for its next attempt. */
int spool_lease_due(Spool *s, const char *owner, int64_t now_ms, int64_t lease_ms, size_t max,
                    SpoolLease **ret_leases, size_t *ret_n);
void spool_leases_free(SpoolLease *l, size_t n);

/* Outcomes; each checks that owner still holds the lease. */
int spool_mark_receipted(Spool *s, int64_t id, const char *owner, const char *receipt_json);
/* burn_attempt=false for 401/403 (installation paused). Moves to dead_letter
 * when the attempts reach max_attempts. ret_dead tells which happened. */
int spool_mark_retry(Spool *s, int64_t id, const char *owner, const char *reason,
                     int64_t next_attempt_ms, bool burn_attempt, bool *ret_dead);
int spool_mark_dead(Spool *s, int64_t id, const char *owner, const char *reason);

/* Returns every lease held by owner to queued (attempts kept). */
int spool_release_leases(Spool *s, const char *owner);
/* Returns expired leases of any owner to queued (attempts kept). */
int spool_recover_expired(Spool *s, int64_t now_ms, size_t *ret_n);

/* Full-jitter exponential backoff (base 1 s, cap 300 s) for the given
 * attempt number; retry_after_ms (or 0) is a floor. */
int64_t spool_backoff_ms(int attempts, int64_t retry_after_ms);

typedef struct SpoolStats {
    int64_t queued, relaying, receipted, dead_letter, quarantined, conflicts;
    int64_t oldest_queued_ms; /* enqueue time of the oldest queued item, 0 if none */
    int64_t next_due_ms;      /* earliest next attempt of a queued item, 0 if none */
    char last_error[256];
    int64_t paused_until_ms; /* drain paused (401/403) until then; 0: not paused */
    char pause_reason[64];   /* e.g. "http_401" while paused */
} SpoolStats;
int spool_stats(Spool *s, SpoolStats *ret);

/* The drain's pause (DESIGN §5.5: a 401/403 means the installation is not
 * authorised; every stream waits). Kept in the spool's metadata so that
 * `status` and the next drain process see it; until_ms 0 clears it. Shown by
 * spool_stats as paused_until_ms/pause_reason while until_ms is ahead. */
int spool_set_pause(Spool *s, int64_t until_ms, const char *reason);
