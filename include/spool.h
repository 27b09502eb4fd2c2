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
    /* The quota on items not yet delivered (every state but receipted):
     * their number and the bytes their envelopes and sealed payloads take.
     * Enqueue refuses with LV_ERR_QUOTA, writing nothing, what would go past
     * either. 0: no limit. */
    int64_t quota_items, quota_bytes;
} SpoolOptions;

/* Opens (creating with mode 0600 and migrating as needed) the spool, checks
 * the KEK and loads the DEK on the token (creating and wrapping one for a new
 * spool). The token must outlive the spool. Returns expired leases to queued.
 * tok may be NULL: then an existing spool is opened without keys, for the
 * verbs that only read clear columns or change states (status, list, show,
 * dead-letter, purge); enqueue, leasing and decryption then fail, and a
 * missing spool is -ENOENT rather than created. An installation_id that
 * differs from the one the spool was created for is refused. */
int spool_open(const SpoolOptions *opt, Token *tok, Spool **ret);
Spool *spool_close(Spool *s);

typedef enum { SPOOL_QUEUED, SPOOL_DUPLICATE, SPOOL_CONFLICT } SpoolEnqueueStatus;
const char *spool_enqueue_status_name(SpoolEnqueueStatus st); /* "queued", ... */

/* Items per transaction for batches (group commit). */
#define SPOOL_BATCH_GROUP 256

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

/* Groups of SPOOL_BATCH_GROUP items pipelined in one call: the same as
 * calling spool_enqueue on each group in turn (each group its own
 * transaction; repeats and items stored before are never signed again),
 * except that the signing thread goes on into the next group while the
 * caller's thread commits the previous one, so the token never waits for a
 * COMMIT. After each group's COMMIT, and before the next group writes
 * anything, done(userdata, first, count) reports its results
 * (ret_results[first..first+count)); a negative return stops the call. On
 * an error the groups already reported stay committed; the failing group
 * leaves nothing. */
#define SPOOL_PIPELINE_GROUPS 8 /* groups per call that the CLI hands over at most */
typedef int (*spool_group_done_fn)(void *userdata, size_t first, size_t count);
int spool_enqueue_groups(Spool *s, const SpoolItemIn *items, size_t n,
                         SpoolEnqueueResult *ret_results, spool_group_done_fn done, void *userdata);

/* The validation spool_enqueue applies to one item, without a spool:
 * identifiers (lv_valid_id), event_type, the payload (a JSON object of at
 * most SPOOL_MAX_PAYLOAD bytes as given and once canonical, canonical JSON
 * rules with paths "payload.x"). Returns the canonical payload (malloc'd,
 * plaintext: wipe it) when ret_canon is not NULL. */
int spool_item_check(const SpoolItemIn *it, char **ret_canon, size_t *ret_len);

/* One line of an --jsonl batch: an object with exactly the members
 * stream_id, source_ref, optional event_type and payload. The strings are
 * decoded and owned; the payload points into line (not copied). Errors name
 * the member ("payload: truncated JSON ..."), never the line number. */
typedef struct SpoolItemLine {
    char *stream_id, *source_ref, *event_type;
    const char *payload;
    size_t payload_len;
} SpoolItemLine;
int spool_item_parse_line(const char *line, size_t len, SpoolItemLine *ret);
void spool_item_line_done(SpoolItemLine *l);

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

/* Pipelining streams: for each request, leases for owner the item that
 * follows after_id in stream_id (the next in enqueue order) when it is
 * queued and due at now_ms, and only while owner still holds after_id's
 * lease; found tells whether there was one. All in one transaction; the
 * rows' checks (decryption on the token, hashes) run on two threads. The
 * caller keeps at most one item of a stream in flight: it sends the new
 * lease only once after_id is delivered or dead-lettered, and otherwise
 * returns it with spool_release_lease. A row that fails its check is
 * quarantined (not found). */
typedef struct SpoolNext {
    const char *stream_id;
    int64_t after_id;
    bool found;
    SpoolLease lease;
} SpoolNext;
int spool_lease_next_many(Spool *s, const char *owner, SpoolNext *req, size_t n, int64_t now_ms,
                          int64_t lease_ms);
/* Returns one of owner's leases to queued (attempts kept); 0 when owner no
 * longer holds it. */
int spool_release_lease(Spool *s, int64_t id, const char *owner);

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

/* Group commit for callers that record many outcomes in a row (the drain):
 * after spool_batch_begin, the lease and outcome calls (spool_lease_due,
 * spool_mark_*, spool_release_leases, spool_recover_expired,
 * spool_set_pause) join one transaction, opened by the first of them, each
 * as a savepoint that a failure undoes alone; spool_batch_commit makes them
 * durable with one COMMIT (synchronous=FULL). Nothing of the group is on
 * disk, nor visible to other connections, before it returns 0: a lease is
 * not held, so its item must not be sent, before then. Do not wait (poll)
 * while a group is open: from its first write it holds the spool's write
 * lock. spool_batch_commit with no group open returns 0. */
int spool_batch_begin(Spool *s);
int spool_batch_commit(Spool *s);

typedef struct SpoolStats {
    int64_t queued, relaying, receipted, dead_letter, quarantined, conflicts;
    int64_t oldest_queued_ms; /* enqueue time of the oldest queued item, 0 if none */
    int64_t next_due_ms;      /* earliest next attempt of a queued item, 0 if none */
    char last_error[256];
    int64_t paused_until_ms; /* drain paused (401/403) until then; 0: not paused */
    char pause_reason[64];   /* e.g. "http_401" while paused */
} SpoolStats;
int spool_stats(Spool *s, SpoolStats *ret);

/* What the quota measures: items not yet delivered and their stored bytes,
 * with the spool's limits (0: none). O(1): counted by triggers. */
typedef struct SpoolUsage {
    int64_t items, bytes;
    int64_t quota_items, quota_bytes;
} SpoolUsage;
int spool_usage(Spool *s, SpoolUsage *ret);

/* --- for the verbs --- */

#define SPOOL_STATE_NAMES "queued|relaying|receipted|dead_letter|quarantined"
bool spool_valid_state(const char *state);

/* One item as stored (clear columns). envelope is the stored body when it is
 * kept in clear, or when it is sealed (opt-in payload) and the spool has the
 * DEK; NULL otherwise with envelope_sealed set. */
typedef struct SpoolItemInfo {
    int64_t id; /* enqueue order */
    char event_id[300];
    char stream_id[129];
    char source_ref[129];
    char event_type[129];
    char state[16];
    int attempts;
    int64_t enqueued_ms, next_attempt_ms, last_attempt_ms, lease_expires_ms, receipted_ms;
    char lease_owner[129];
    char envelope_hash[65];
    char payload_hash[65];
    char *last_error; /* malloc'd or NULL */
    char *receipt;    /* malloc'd JSON or NULL */
    char *envelope;   /* malloc'd or NULL (see above) */
    size_t envelope_len;
    bool envelope_sealed;
    int64_t conflicts; /* drift attempts recorded against this item */
} SpoolItemInfo;
void spool_item_info_done(SpoolItemInfo *it);
void spool_item_infos_free(SpoolItemInfo *it, size_t n);

/* Up to limit items in enqueue order with id > after_id, optionally only in
 * one state and/or one stream. Envelopes are not loaded. */
int spool_list(Spool *s, const char *state, const char *stream_id, int64_t after_id, size_t limit,
               SpoolItemInfo **ret, size_t *ret_n);
/* One item by event id, with its envelope; -ENOENT with detail if absent. */
int spool_get(Spool *s, const char *event_id, SpoolItemInfo *ret);
/* Decrypts an item's payload on the token (canonical JSON, malloc'd,
 * plaintext: wipe it). A row that fails to authenticate is quarantined and
 * LV_ERR_CRYPTO returned. */
int spool_payload(Spool *s, const char *event_id, char **ret, size_t *ret_len);
/* dead_letter -> queued with attempts reset; event_id NULL: all of them.
 * An item in another state is LV_ERR_INPUT. */
int spool_requeue(Spool *s, const char *event_id, size_t *ret_n);
/* Deletes receipted items whose receipt is older than before_ms. */
int spool_purge(Spool *s, int64_t before_ms, size_t *ret_n);
/* Makes the queued items that wait for a retry (their backoff or a
 * Retry-After) due now, in every stream (stream_id NULL) or in one; attempts
 * are kept, nothing else changes. *ret_n: the items made due. A running
 * drain-loop sees the change (inotify on the spool's directory) and relays
 * them in each stream's order. */
int spool_retry_now(Spool *s, const char *stream_id, size_t *ret_n);

/* The drain's pause (DESIGN §5.5: a 401/403 means the installation is not
 * authorised; every stream waits). Kept in the spool's metadata so that
 * `status` and the next drain process see it; until_ms 0 clears it. Shown by
 * spool_stats as paused_until_ms/pause_reason while until_ms is ahead. */
int spool_set_pause(Spool *s, int64_t until_ms, const char *reason);

/* The user_version this program writes (doctor compares a spool with it). */
int spool_schema_version(void);
/* What a spool database looks like (db.h), for doctor's read-only look. */
struct DbSchema;
const struct DbSchema *spool_db_schema(void);

/* What doctor reads of a spool file it opened read-only (db_open with
 * DB_READONLY, schema checked): its installation, the wrapped DEKs rows may
 * still need (want_deks; every DEK of the deks table, or the single one of
 * a spool from before rotation, TOKEN_WRAPPED_DEK_LEN bytes each,
 * concatenated) and the number of items. LV_ERR_INPUT when it has no valid
 * spool id; another error with detail when the metadata does not read. */
struct Db;
typedef struct SpoolFileInfo {
    char installation_id[129]; /* "" when none is recorded */
    uint8_t *wrapped_deks;
    size_t n_deks;
    int64_t items;
} SpoolFileInfo;
int spool_file_info(struct Db *db, bool want_deks, SpoolFileInfo *ret);
void spool_file_info_done(SpoolFileInfo *info);

/* ---- key rotation (docs/operations.md, "Key rotation") ---- */

/* Makes a new DEK (generated and wrapped on the token) the current one: rows
 * enqueued from now on are sealed with it; older rows stay readable under
 * theirs. Refused while TOKEN_DEK_SLOTS DEKs are in use. */
int spool_rotate_dek(Spool *s, int64_t *ret_id);

typedef struct SpoolDek {
    int64_t id;
    bool current;
    int64_t rows; /* items sealed with it */
    int64_t created_ms;
} SpoolDek;
int spool_dek_list(Spool *s, SpoolDek **ret, size_t *ret_n);

typedef void (*spool_progress_fn)(void *userdata, int64_t done, int64_t total);
typedef struct SpoolRekeyResult {
    int64_t total;        /* rows under an older DEK when it started */
    int64_t rekeyed;      /* re-sealed under the current DEK */
    int64_t unreadable;   /* left as they were: they do not open under their DEK */
    int64_t retired_deks; /* DEKs deleted because no row names them */
    int64_t deks_left;
} SpoolRekeyResult;
/* Re-seals every row under an older DEK with the current one, batch rows
 * per transaction (0: SPOOL_BATCH_GROUP), calling progress after each; then
 * retires the DEKs no row names. Safe to stop and run again. */
int spool_rekey(Spool *s, size_t batch, spool_progress_fn progress, void *userdata,
                SpoolRekeyResult *ret);

/* KEK rotation: rewraps every DEK of the spool (the current one and those
 * rows still need) under the KEK named by new_kek_uri, all in one
 * transaction. Afterwards the spool opens only with the new KEK. */
int spool_rewrap_kek(Spool *s, const char *new_kek_uri, size_t *ret_n);

/* The signing keys that signed this spool's items (kid, raw public key),
 * oldest first, read from the file read-only without the token. A missing
 * spool is -ENOENT; one from before rotation has an empty list. */
typedef struct SpoolKey {
    char kid[129];
    uint8_t pk[32];
    int64_t first_used_ms, last_used_ms;
} SpoolKey;
int spool_signing_keys(const char *path, SpoolKey **ret, size_t *ret_n);
