/* SPDX-License-Identifier: Apache-2.0 */
/* What the files of the witness module share: the Witness itself, a stored
 * checkpoint row, statements and their canonical bytes, the signature
 * checking thread. Names declared here carry the witness_ prefix but are
 * not API: only include/witness.h is. */
#pragma once
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "canon.h"
#include "db.h"
#include "lv.h"
#include "pubkey.h"
#include "token.h"
#include "witness.h"

#define DETECTED_BY "local_vault_witness"
#define FORK_RESULT "verifier_rejects_ambiguous_history"

typedef struct Verifier Verifier;

struct Witness {
    Db *db;
    const char *path; /* db's */
    /* witness_sign_statement(): the last key's "public_key" member. */
    char *pk_json;
    uint8_t pk_json_pk[TOKEN_ED25519_PK_LEN];
    char pk_json_kid[TOKEN_KID_MAX];
    Verifier *verifier; /* started by the first pipelined batch */
    /* witness_commit_batch: why this batch signs nothing (a state
     * integrity or token error from the anchor check), 0 when it may. */
    int refuse;
    char refuse_detail[1024];
    /* The state this process last saw anchored (anchor.c): a batch that
     * finds the database still there skips reading the anchors before it
     * signs; the read after its COMMIT still decides whether it answers. */
    struct WitnessState *anchored;
};

/* anchor.c: the state anchored on the token (docs/witness.md). */
typedef struct WitnessState {
    char database_id[WITNESS_DATABASE_ID_LEN + 1];
    int64_t generation;
    char digest[WITNESS_HASH_HEX_LEN + 1];
    char previous_digest[WITNESS_HASH_HEX_LEN + 1]; /* at generation - 1 */
} WitnessState;
int witness_state_read(Witness *w, WitnessState *ret);
/* In the write transaction: chains a stored statement into the digest. */
int witness_state_chain(Witness *w, const char *statement_hash);
/* In the write transaction: the batch's generation; *ret the new state. */
int witness_state_advance(Witness *w, const WitnessState *before, int64_t generation,
                          WitnessState *ret);
/* In the write transaction, before anything is signed: the state st must be
 * the anchored one (an empty database with no anchor is; one unanswered
 * batch ahead rolls the anchor forward). LV_ERR_ROLLBACK, LV_ERR_FOREIGN or
 * a token error with detail. */
int witness_anchor_check(Witness *w, Token *t, const WitnessState *st);
/* After COMMIT: anchors st; 0 only if no other state claims its
 * generation or a later one (then the batch may answer). */
int witness_anchor_commit(Witness *w, Token *t, const WitnessState *st);

/* store.c: a stored checkpoint row, validated on the way out of SQLite. */
typedef struct Row {
    int64_t seq;
    char checkpoint_id[129];
    char hash[WITNESS_HASH_HEX_LEN + 1];
    char prev[WITNESS_HASH_HEX_LEN + 1];
    bool has_prev;
    char witnessed_at[32];
    char statement_hash[WITNESS_HASH_HEX_LEN + 1];
    char *receipt; /* malloc'd */
} Row;
void witness_row_done(Row *r);
/* -ENOENT when absent. */
int witness_store_head(Witness *w, const char *witness_id, const char *tenant_id,
                       const char *stream_id, int64_t *ret_seq);
int witness_store_row(Witness *w, const char *witness_id, const char *tenant_id,
                      const char *stream_id, int64_t seq, Row *ret);
int witness_store_checkpoint(Witness *w, const char *witness_id, const WitnessRequest *req,
                             const char *witnessed_at, const char *statement_hash, const char *doc);
int witness_store_move_head(Witness *w, const char *witness_id, const WitnessRequest *req,
                            bool first);
int witness_store_find_fork(Witness *w, const char *witness_id, const WitnessRequest *req,
                            const char *key, char **ret_doc);
/* Quotas (WitnessQuota): the tenant's streams with a head; its statements
 * stored on day ("YYYY-MM-DD", UTC), read (add false, *ret) or counted one
 * more (add true, with the statement's own write). */
int witness_store_streams(Witness *w, const char *witness_id, const char *tenant_id, int64_t *ret);
int witness_store_day(Witness *w, const char *witness_id, const char *tenant_id, const char *day,
                      bool add, int64_t *ret);
int witness_store_fork(Witness *w, const char *witness_id, const WitnessRequest *req,
                       WitnessReason reason, const Row *acc, const char *key,
                       const char *detected_at, const char *statement_hash, const char *doc);

/* statement.c */
bool witness_json_str(cJSON *o, const char *k, const char *v); /* NULL: null */
bool witness_json_int(cJSON *o, const char *k, int64_t v);
cJSON *witness_receipt_statement(const char *witness_id, const WitnessRequest *req,
                                 const char *witnessed_at);
cJSON *witness_fork_statement(const char *witness_id, const WitnessRequest *req,
                              WitnessReason reason, const Row *acc, const char *detected_at);
/* A statement's canonical bytes and its hash. */
typedef struct Canon {
    char *jcs;
    size_t len;
    char hash[WITNESS_HASH_HEX_LEN + 1];
} Canon;
void witness_canon_done(Canon *c);
int witness_canon_statement(const cJSON *statement, Canon *ret);
/* Signs a canonical statement on the token and assembles the document in
 * the order of DESIGN §7. The signature is checked against the public key
 * before anything is stored (a faulty token must not leave a bad receipt
 * that every replay would repeat): here, inline, when v is NULL; otherwise
 * v checks it and reports into *state. */
int witness_sign_statement(Witness *w, Token *t, const char *domain, const char *result,
                           const Canon *st, Verifier *v, int *state, char **ret_doc,
                           size_t *ret_len);

/* verifier.c: the thread that checks signatures made ahead. */
Verifier *witness_verifier_new(void);
void witness_verifier_free(Verifier *v); /* checks what is queued, then stops */
/* Queues a check of sig over a copy of msg; *state is 0 until it is done. */
int witness_verifier_push(Verifier *v, const uint8_t pk[TOKEN_ED25519_PK_LEN], const uint8_t *msg,
                          size_t len, const uint8_t sig[TOKEN_ED25519_SIG_LEN], int *state);
/* Waits for the check that reports into *state; true when it verified. */
bool witness_verifier_wait(Verifier *v, const int *state);
