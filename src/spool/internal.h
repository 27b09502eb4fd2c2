/* SPDX-License-Identifier: Apache-2.0 */
/* What the files of the spool module share: the Spool itself, its prepared
 * statements, and the functions one file offers the others. Names declared
 * here carry the spool_ prefix but are not API: only include/spool.h is. */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "db.h"
#include "lv.h"
#include "spool.h"
#include "token.h"

#define SPOOL_ID_LEN 16

/* Prepared statements of the hot paths (schema.c), prepared once per spool
 * through db_stmt(). */
enum {
    ST_FIND,
    ST_INSERT,
    ST_STREAM_ADD,
    ST_CONFLICT,
    ST_DUE,
    ST_ROW,
    ST_LEASE,
    ST_STREAM_BUSY,
    ST_HEAD,
    ST_INFLIGHT,
    ST_STREAM_SET,
    ST_EXPIRED,
    ST_REQUEUE_ONE,
    ST_META_SET,
    ST_MARK_RECEIPTED,
    ST_MARK_RETRY,
    ST_MARK_DEAD,
    ST_HELD,
    ST_NEXT,
    ST_RELEASE_ONE,
    ST_USAGE,
    ST__MAX
};
extern const char *const spool_statements[ST__MAX];
extern const DbSchema spool_schema;

struct Spool {
    Db *db;
    Token *tok;
    char *path;
    char installation_id[129];
    bool include_payload;
    bool have_dek;
    int64_t cur_dek;                   /* the DEK new rows are sealed with */
    int64_t slot_dek[TOKEN_DEK_SLOTS]; /* the DEK id in each token slot, 0: free */
    pthread_mutex_t dek_lock;          /* guards slot_dek: rows are verified on threads */
    bool key_recorded;                 /* the signing key is in signing_keys */
    int max_attempts;
    int64_t quota_items, quota_bytes; /* 0: no limit */
    uint8_t spool_id[SPOOL_ID_LEN];
};

/* open.c: the meta table. */
int spool_meta_get(Spool *s, const char *key, uint8_t **ret, size_t *ret_len);
int spool_meta_set(Spool *s, const char *key, const void *v, size_t n, bool text);
/* The last failure, for status: "<time> <event_id>: <reason>". */
int spool_note_error(Spool *s, const char *event_id, const char *reason);

/* enqueue.c: the quota. LV_ERR_QUOTA with detail when items not yet
 * delivered, with new_items more of them and new_bytes more stored bytes,
 * would go past the spool's quota; 0 otherwise (and when new_items is 0:
 * a repeat stores nothing). counted: they are inserted already (in the
 * open transaction, which the caller rolls back on the error), so the
 * counts hold them. Read inside the transaction that writes. */
int spool_quota_check(Spool *s, size_t new_items, int64_t new_bytes, bool counted);

/* deks.c: the data keys in the token's slots. */
int spool_dek_current(Spool *s, int64_t *ret);
int spool_dek_load(Spool *s, int64_t id, unsigned *ret_slot);
int spool_dek_find(Spool *s, int64_t id, unsigned *ret_slot);
int spool_dek_new(Spool *s, int64_t id);
int spool_deks_load(Spool *s);
int spool_dek_refresh(Spool *s);

/* seal.c: version || IV || ciphertext || tag, AAD binding the row to this
 * spool, its stream, source_ref and envelope hash. */
#define SPOOL_SEAL_OVERHEAD (1 + TOKEN_GCM_IV_LEN + TOKEN_GCM_TAG_LEN)
int spool_seal(Spool *s, const char *kind, const char *stream_id, const char *source_ref,
               const char *envelope_hash, const void *pt, size_t n, uint8_t **ret, size_t *ret_len);
int spool_unseal(Spool *s, const char *kind, int64_t dek_id, const char *stream_id,
                 const char *source_ref, const char *envelope_hash, const uint8_t *row, size_t n,
                 char **ret, size_t *ret_len);

/* streams.c: recomputes a stream's head and due time after its items
 * changed state. */
int spool_stream_refresh(Spool *s, const char *stream_id);

/* row.c: a stored row, read and proved to be what this spool wrote. */
typedef struct RowCheck {
    char state[16];
    char event_id[300], stream_id[129], source_ref[129], payload_hash[65], envelope_hash[65];
    int attempts;
    char *body; /* the verified body */
    size_t body_len;
    char *payload; /* the verified plaintext, when asked for */
    size_t payload_len;
    /* The row as read, until verified: */
    int64_t dek_id;
    bool sealed;
    uint8_t *env, *prow;
    size_t env_len, prow_len;
} RowCheck;
void spool_row_check_done(RowCheck *c);
int spool_row_read(Spool *s, int64_t id, RowCheck *c);
int spool_row_verify(Spool *s, bool want_payload, RowCheck *c);
int spool_row_check(Spool *s, int64_t id, bool want_payload, RowCheck *ret);
int spool_quarantine(Spool *s, int64_t id, const char *stream_id, const char *event_id,
                     const char *reason);
