/* SPDX-License-Identifier: Apache-2.0 */
/* The checkpoint witness: durable state per (witness_id, tenant_id, stream_id),
 * the decision table of DESIGN §7, the signed statements (receipts and fork
 * evidence) and their offline verification. See docs/witness.md. */
#pragma once
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lv.h"
#include "token.h"

typedef struct Witness Witness;

/* Domain separation: the signature covers DOMAIN || 0x0A || JCS(statement). */
#define WITNESS_RECEIPT_DOMAIN  "attesto.local-vault.witness-receipt.v1"
#define WITNESS_FORK_DOMAIN     "attesto.local-vault.fork-evidence.v1"
#define WITNESS_ADOPTION_DOMAIN "attesto.local-vault.state-adoption.v1"

#define WITNESS_MAX_SEQ         9007199254740991LL /* 2^53-1, the largest exact JSON integer */
#define WITNESS_HASH_HEX_LEN    64                 /* SHA-256 as 64 lowercase hex digits */
#define WITNESS_REQUEST_MAX     16384              /* bytes of a JSON request body */
#define WITNESS_DOCUMENT_MAX    65536              /* bytes of a signed document (verify) */
#define WITNESS_SCHEMA_VERSION  2
#define WITNESS_DATABASE_ID_LEN 32 /* the database's random id, hex */

/* What one tenant may store (witness-serve's tenants file); 0: no limit.
 * A submission that would go past one is refused before anything is
 * signed or written: WITNESS_ERR_STREAMS for a new stream over
 * max_streams, WITNESS_ERR_DAILY for a new statement (receipt or fork
 * evidence) over max_statements_per_day (UTC days). */
typedef struct WitnessQuota {
    int64_t max_streams;
    int64_t max_statements_per_day;
} WitnessQuota;
#define WITNESS_ERR_STREAMS LV_ERR_QUOTA /* -EDQUOT: the endpoint answers 507 */
#define WITNESS_ERR_DAILY   (-ENOBUFS)   /* the endpoint answers 429 */

/* One checkpoint submission. Strings are borrowed. */
typedef struct WitnessRequest {
    const char *tenant_id;
    const char *stream_id;
    const char *checkpoint_id;
    int64_t seq;
    const char *checkpoint_hash;
    const char *previous_hash; /* NULL: not given (allowed only on first use) */
} WitnessRequest;

typedef enum WitnessResult {
    WITNESS_ACCEPTED,
    WITNESS_REPLAYED,
    WITNESS_FORK,
    WITNESS_GAP,
    _WITNESS_RESULT_MAX,
} WitnessResult;

typedef enum WitnessReason {
    WITNESS_REASON_NONE,
    WITNESS_REASON_CONFLICTING, /* conflicting_checkpoint */
    WITNESS_REASON_STALE,       /* stale_checkpoint */
    WITNESS_REASON_DIVERGENT,   /* divergent_history */
    _WITNESS_REASON_MAX,
} WitnessReason;

typedef struct WitnessOutcome {
    WitnessResult result;
    WitnessReason reason; /* for WITNESS_FORK */
    bool reused;          /* WITNESS_FORK: the same evidence was stored before and is returned */
    int64_t head_seq;     /* the head before the decision, -1 when there was none */
    char *document;       /* the signed document (NUL-terminated); NULL for a gap */
    size_t document_len;
} WitnessOutcome;

/* Frees what an outcome holds; accepts a zeroed outcome. */
void witness_outcome_done(WitnessOutcome *o);
/* "accepted", "replayed", "fork_evidence", "checkpoint_gap". */
const char *witness_result_name(WitnessResult r);
/* "", "conflicting_checkpoint", "stale_checkpoint", "divergent_history". */
const char *witness_reason_name(WitnessReason r);

enum {
    WITNESS_OPEN_READONLY = 1 << 0, /* the database must exist; nothing is created or written */
};

/* Opens (creating with mode 0600 unless READONLY) the witness database: WAL,
 * synchronous=FULL, schema versioned with user_version and application_id.
 * Refuses a file that is another kind of database, a newer schema, or one
 * that group or others may write. Errors carry detail naming the path. */
int witness_open(const char *path, unsigned flags, Witness **ret);
/* A second, read-only connection to w's database, for reading beside w in
 * the same process (witness_presign_batch). Never open the database file
 * again with witness_open while w is open: checking the file opens and
 * closes it, and closing any descriptor of a file drops all the POSIX locks
 * the process holds on it, which SQLite's safety across processes rests on. */
int witness_open_reader(const Witness *w, Witness **ret);
/* Accepts NULL, returns NULL. */
Witness *witness_close(Witness *w);

/* Spellings of the fields in error messages: the JSON member names
 * ("checkpoint_hash") or the CLI flags ("--checkpoint-hash"). */
typedef enum WitnessNames {
    WITNESS_NAMES_JSON,
    WITNESS_NAMES_CLI,
} WitnessNames;

/* Checks a request without looking at any state: identifiers by lv_valid_id,
 * hashes as 64 lowercase hex digits, 0 <= seq <= 2^53-1. LV_ERR_INPUT with
 * one line naming the field and the rule. */
int witness_request_check(const WitnessRequest *req, WitnessNames names);

/* Parses a JSON request body (the endpoint's format, docs/witness.md):
 * strict I-JSON, an object with exactly the known members, then
 * witness_request_check. The strings of *ret point into *ret_tree, which the
 * caller frees with cJSON_Delete. LV_ERR_INPUT or LV_ERR_TOOBIG with detail. */
int witness_request_parse(const char *body, size_t len, WitnessRequest *ret, cJSON **ret_tree);

/* Decides on one request by the table of DESIGN §7 and, when the decision
 * needs a new statement, signs it with the token and stores it, all in one
 * BEGIN IMMEDIATE transaction; *ret is filled only after COMMIT. A replay (or
 * a fork already stored) returns the stored document byte-identical and needs
 * no token; t may be NULL, and then a decision that must sign fails with
 * LV_ERR_TOKEN ("token unavailable"). A gap returns WITNESS_GAP with nothing
 * signed or stored. Extending a head without previous_hash is LV_ERR_INPUT.
 * Not thread-safe: callers serialize calls on one Witness (which also
 * serializes the token's signing). */
int witness_submit(Witness *w, Token *t, const char *witness_id, const WitnessRequest *req,
                   WitnessOutcome *ret);

/* A statement signed ahead of its transaction (witness_presign_batch). */
typedef struct WitnessPresign WitnessPresign;

/* One request of a batch (witness_submit_batch): req is the caller's; out, r
 * and detail are filled by the batch. Zero-initialize the rest. */
typedef struct WitnessJob {
    const WitnessRequest *req;
    const WitnessQuota *quota; /* the caller's: NULL, no limits (the CLI) */
    WitnessOutcome out;        /* valid when r == 0, and only after the batch returned */
    int r;                     /* 0, or the error witness_submit would have returned */
    char detail[1024];         /* lv_error() of that error */
    WitnessPresign *pre;       /* from witness_presign_batch, used and freed by the commit */
} WitnessJob;

#define WITNESS_BATCH_MAX 64 /* jobs per batch the endpoint forms at most */

/* Group commit: decides on the jobs in order, each as witness_submit would
 * (every job sees the decisions of the jobs before it; each job's failure
 * undoes that job alone), all inside ONE BEGIN IMMEDIATE transaction with
 * one COMMIT. No outcome exists before that COMMIT returned; when it fails,
 * every job fails with its error. A job signed ahead (j->pre) keeps that
 * signature only if the decision in the transaction comes to the very same
 * statement and the signature verified; any other job is signed in the
 * transaction and its signature checked inline, so a token that signs wrong
 * fails that job alone. After a token error the rest of the batch runs
 * without the token (replays and statements signed ahead still answer; new
 * statements fail with LV_ERR_TOKEN). Frees every j->pre. Returns 0, or the
 * error that failed every job. Not thread-safe, like witness_submit. */
int witness_commit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n);

/* Pipelining, so that the token signs while the previous batch commits:
 * decides each job against the committed state r shows (one read snapshot,
 * no write lock; r may be a read-only handle on the same database), and
 * signs on t the statements those decisions need, into j->pre. A second
 * thread of r checks each signature against the public key. Signatures made
 * here are only proposals: witness_commit_batch decides again under the
 * write lock and drops any that does not match, so nothing is ever stored or
 * answered on the strength of this snapshot. Skipped: jobs with skip[i] set
 * (the caller's: a stream with a job in a batch not yet committed, whose
 * state the snapshot cannot show), later jobs of a stream already in the
 * batch, and invalid requests. Returns 0, or the token error that stopped
 * signing ahead (the caller drops the token). r outlives every j->pre. */
int witness_presign_batch(Witness *r, Token *t, const char *witness_id, WitnessJob *jobs, size_t n,
                          const bool *skip);

/* Same tenant and stream: one state, decided in order. */
bool witness_same_stream(const WitnessRequest *a, const WitnessRequest *b);

/* witness_presign_batch on w, then witness_commit_batch. */
int witness_submit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n);

/* The head of one stream: its seq and its stored receipt document (malloc'd,
 * may be NULL). -ENOENT when the stream has no head. */
int witness_head(Witness *w, const char *witness_id, const char *tenant_id, const char *stream_id,
                 int64_t *ret_seq, char **ret_receipt);

/* Calls fn for every stored fork evidence document, oldest first, optionally
 * filtered by tenant and stream (NULL: all). A negative return of fn stops
 * the walk and is returned. */
typedef int (*witness_document_fn)(void *userdata, const char *document, size_t len);
int witness_forks_foreach(Witness *w, const char *tenant_id, const char *stream_id,
                          witness_document_fn fn, void *userdata);

/* State integrity (docs/witness.md, "The anchor"): "state_rollback" for
 * LV_ERR_ROLLBACK, "foreign_database" for LV_ERR_FOREIGN, else NULL. */
const char *witness_integrity_cause(int r);
/* witness-state show: {"path","database":{database_id,generation,digest},
 * "anchors":[...],"anchor":{...}|null,"state","detail"}. Needs the token. */
int witness_state_show(Witness *w, Token *t, cJSON **ret);
/* witness-state adopt: re-anchors the token to the database as it is, above
 * every anchor there, and stores the signed state_adoption document it
 * returns (malloc'd). Never called automatically. */
int witness_state_adopt(Witness *w, Token *t, char **ret_doc, size_t *ret_len);

/* Quick database round trip for health checks. */
int witness_ping(Witness *w);

/* What a witness database looks like (db.h), for doctor's read-only look. */
struct DbSchema;
const struct DbSchema *witness_db_schema(void);

/* true when a parsed JSON document has the shape of a witness document
 * (members "statement", "statement_hash", "signature", "public_key"). */
bool witness_document_shape(const cJSON *doc);

/* Verifies a witness document offline: strict JSON; the statement is a
 * well-formed witness receipt or fork evidence consistent with "result";
 * statement_hash = SHA-256(JCS(statement)); the Ed25519 signature over the
 * statement's domain || 0x0A || JCS(statement) verifies with public_key_hex;
 * public_key_pem and the kids agree. expected_pk (NULL: not pinned) must
 * equal the embedded key. Returns 0 and, when ret_summary is not NULL, a
 * summary object {"valid":true,"kind",...}; LV_ERR_CRYPTO (signature, hash or
 * key mismatch) or LV_ERR_INPUT (malformed) with detail otherwise. */
int witness_verify_document(const char *doc, size_t len, const uint8_t *expected_pk,
                            cJSON **ret_summary);

/* The witness's entries in verify's table of document kinds (src/cli/verify.c):
 * the shape of a receipt / of fork evidence, and the check, which adds the
 * summary's members (but "valid" and "kind") to ret. */
bool witness_receipt_match(const cJSON *doc);
bool witness_fork_match(const cJSON *doc);
bool witness_adoption_match(const cJSON *doc);
int witness_verify_check(const char *text, size_t len, const uint8_t pk[32], cJSON *ret);

/* ---- the witness as a service (witness-serve) ------------------------------------------------ */

/* A running witness: its database, a second read-only connection, the
 * token (opened at the start, retried while it is unavailable, dropped
 * after it failed an operation; a refused or locked PIN is never retried),
 * and two threads that decide queued checkpoints in pipelined batches
 * (witness_presign_batch on the reader while witness_commit_batch commits
 * the batch before). Nothing in it knows HTTP. */
typedef struct WitnessService WitnessService;

/* One checkpoint handed to the service. The caller sets req (which must
 * live until the ticket is released), hold, release and userdata; the
 * service fills job (valid once witness_service_answered() says so). */
typedef struct WitnessTicket {
    const WitnessRequest *req;
    const WitnessQuota *quota; /* NULL: no limits; else must live until the ticket is released */
    /* Called under the service's queue lock just before the ticket is
     * queued (witness-serve suspends the connection there), so that
     * release can never come first. NULL: nothing to do. */
    void (*hold)(void *userdata);
    /* Called once the ticket's batch has committed (or failed), with no
     * lock held. The ticket may be freed as soon as this runs: the service
     * touches neither it nor userdata afterwards. */
    void (*release)(void *userdata);
    void *userdata;
    WitnessJob job; /* the decision, its document or its error */
    /* the service's own: */
    bool done;
    struct WitnessTicket *next;
} WitnessTicket;

/* Opens the database and the token and starts the threads. token's strings
 * must outlive the service. A PIN the token refused ends the start with
 * LV_ERR_PIN; a token unavailable otherwise is retried later (checkpoints
 * that need a signature fail with a token error meanwhile). */
int witness_service_start(const char *witness_db, const char *witness_id, const TokenConfig *token,
                          WitnessService **ret);
/* Queues t; false (and t untouched) when the service is stopping. */
bool witness_service_submit(WitnessService *s, WitnessTicket *t);
/* true once t's decision is in t->job. */
bool witness_service_answered(WitnessService *s, const WitnessTicket *t);
/* Decides and releases everything queued, then stops the threads. The
 * caller stops submitting first. Idempotent. */
void witness_service_stop(WitnessService *s);
/* Stops, then closes the token and the database. Accepts NULL, returns NULL. */
WitnessService *witness_service_free(WitnessService *s);

/* The token's key (opening the token when a retry is due); false with err
 * ("token unavailable: ...") when it is not open. */
bool witness_service_identity(WitnessService *s, uint8_t pk[TOKEN_ED25519_PK_LEN],
                              char kid[TOKEN_KID_MAX], char *err, size_t err_size);
/* Whether the token is open (retry: opening it when a retry is due), and
 * how many token operations failed so far. */
bool witness_service_token_up(WitnessService *s, bool retry, uint64_t *ret_failures);
/* True once the token refused the PIN (the error into err): the service
 * then never logs in again and signs nothing until it is restarted. */
bool witness_service_pin_refused(WitnessService *s, char *err, size_t err_size);
/* A database round trip, for health checks. */
int witness_service_ping(WitnessService *s);
