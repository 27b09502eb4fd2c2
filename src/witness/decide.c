/* SPDX-License-Identifier: Apache-2.0 */
/* The decision table of DESIGN §7 and the batches that apply it: each
 * request decided, signed and stored in one BEGIN IMMEDIATE transaction;
 * signing ahead on a read snapshot for the pipelined endpoint. */
#include "internal.h"

const char *witness_result_name(WitnessResult r)
{
    static const char *const names[_WITNESS_RESULT_MAX] = {
        [WITNESS_ACCEPTED] = "accepted",
        [WITNESS_REPLAYED] = "replayed",
        [WITNESS_FORK] = "fork_evidence",
        [WITNESS_GAP] = "checkpoint_gap",
    };
    return r >= 0 && r < _WITNESS_RESULT_MAX ? names[r] : "";
}

const char *witness_reason_name(WitnessReason r)
{
    static const char *const names[_WITNESS_REASON_MAX] = {
        [WITNESS_REASON_NONE] = "",
        [WITNESS_REASON_CONFLICTING] = "conflicting_checkpoint",
        [WITNESS_REASON_STALE] = "stale_checkpoint",
        [WITNESS_REASON_DIVERGENT] = "divergent_history",
    };
    return r >= 0 && r < _WITNESS_REASON_MAX ? names[r] : "";
}

void witness_outcome_done(WitnessOutcome *o)
{
    if (!o)
        return;
    free(o->document);
    o->document = NULL;
    o->document_len = 0;
}

static int evidence_key(const WitnessRequest *req, WitnessReason reason, const Row *acc,
                        char out[WITNESS_HASH_HEX_LEN + 1])
{
    /* Identifiers and hashes cannot hold '\n', so this spelling is unambiguous. */
    _cleanup_free_ char *s = NULL;
    int n = asprintf(&s, "%s\n%" PRId64 "\n%s\n%s\n%" PRId64 "\n%s\n%s",
                     witness_reason_name(reason), acc->seq, acc->hash, req->checkpoint_id, req->seq,
                     req->checkpoint_hash, req->previous_hash ? req->previous_hash : "-");
    if (n < 0) {
        s = NULL;
        return -ENOMEM;
    }
    lv_sha256_hex(s, (size_t)n, out);
    return 0;
}

typedef struct Plan {
    WitnessOutcome out; /* result, reason, head_seq; the document of a replay or of stored
                           fork evidence */
    Row acc;            /* the stored checkpoint the request was compared with */
    char key[WITNESS_HASH_HEX_LEN + 1]; /* fork evidence key */
    cJSON *statement;                   /* to sign and store: a receipt or new fork evidence */
    const char *domain, *result_name;
} Plan;

static void plan_done(Plan *p)
{
    witness_row_done(&p->acc);
    cJSON_Delete(p->statement);
    witness_outcome_done(&p->out);
    *p = (Plan){0};
}

/* A new statement (receipt or fork evidence) for req's tenant, at time
 * now, within its quota? new_stream: the statement starts a stream. */
static int quota_check(Witness *w, const char *witness_id, const WitnessRequest *req,
                       const WitnessQuota *q, const char *now, bool new_stream)
{
    int64_t n = 0;
    int r;
    if (new_stream && q->max_streams > 0) {
        if ((r = witness_store_streams(w, witness_id, req->tenant_id, &n)) < 0)
            return r;
        if (n >= q->max_streams)
            return lv_error_set(WITNESS_ERR_STREAMS,
                                "tenant_id %s: at its quota of %" PRId64
                                " streams (max-streams); nothing stored",
                                req->tenant_id, q->max_streams);
    }
    if (q->max_statements_per_day > 0) {
        if ((r = witness_store_day(w, witness_id, req->tenant_id, now, false, &n)) < 0)
            return r;
        if (n >= q->max_statements_per_day)
            return lv_error_set(WITNESS_ERR_DAILY,
                                "tenant_id %s: at its quota of %" PRId64
                                " statements on %.10s (max-statements-per-day, UTC); nothing "
                                "stored, retry tomorrow",
                                req->tenant_id, q->max_statements_per_day, now);
    }
    return 0;
}

static int plan_decision(Witness *w, const char *witness_id, const WitnessRequest *req,
                         const WitnessQuota *quota, const char *now, Plan *ret)
{
    Plan p = {.out = {.head_seq = -1}};
    int64_t head;
    int r = witness_store_head(w, witness_id, req->tenant_id, req->stream_id, &head);
    if (r == -ENOENT) {
        p.out.result = WITNESS_ACCEPTED; /* first use */
        r = 0;
    } else if (r < 0)
        goto fail;
    else {
        p.out.head_seq = head;
        if (req->seq <= head) {
            r = witness_store_row(w, witness_id, req->tenant_id, req->stream_id, req->seq, &p.acc);
            if (r < 0 && r != -ENOENT)
                goto fail;
            if (r == 0 && strcmp(p.acc.hash, req->checkpoint_hash) != 0) {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_CONFLICTING;
            } else if (req->seq == head) {
                /* The row at the head always exists (a trigger makes sure). */
                if (r < 0) {
                    r = lv_error_set(-EIO, "witness database %s: head of %s/%s has no checkpoint",
                                     w->path, req->tenant_id, req->stream_id);
                    goto fail;
                }
                p.out.result = WITNESS_REPLAYED;
            } else {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_STALE;
            }
            r = 0;
        } else if (req->seq == head + 1) {
            if (!req->previous_hash) {
                r = lv_error_set(LV_ERR_INPUT,
                                 "previous_checkpoint_hash (--previous-checkpoint-hash): "
                                 "required to extend the head at seq %" PRId64,
                                 head);
                goto fail;
            }
            if ((r = witness_store_row(w, witness_id, req->tenant_id, req->stream_id, head,
                                       &p.acc)) < 0)
                goto fail;
            if (strcmp(p.acc.hash, req->previous_hash) == 0)
                p.out.result = WITNESS_ACCEPTED;
            else {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_DIVERGENT;
            }
        } else
            p.out.result = WITNESS_GAP;
    }
    /* Stale evidence names the head the submission fell behind. */
    if (p.out.result == WITNESS_FORK && p.out.reason == WITNESS_REASON_STALE) {
        witness_row_done(&p.acc);
        if ((r = witness_store_row(w, witness_id, req->tenant_id, req->stream_id, head, &p.acc)) <
            0)
            goto fail;
    }

    switch (p.out.result) {
    case WITNESS_GAP:
        break;
    case WITNESS_REPLAYED:
        p.out.document = TAKE_PTR(p.acc.receipt);
        p.out.document_len = strlen(p.out.document);
        break;
    case WITNESS_ACCEPTED:
        p.domain = WITNESS_RECEIPT_DOMAIN;
        p.result_name = "accepted";
        if (!(p.statement = witness_receipt_statement(witness_id, req, now))) {
            r = -ENOMEM;
            goto fail;
        }
        break;
    case WITNESS_FORK:
        if ((r = evidence_key(req, p.out.reason, &p.acc, p.key)) < 0)
            goto fail;
        r = witness_store_find_fork(w, witness_id, req, p.key, &p.out.document);
        if (r == 0) {
            p.out.reused = true;
            p.out.document_len = strlen(p.out.document);
            break;
        }
        if (r != -ENOENT)
            goto fail;
        p.domain = WITNESS_FORK_DOMAIN;
        p.result_name = "fork_evidence";
        if (!(p.statement = witness_fork_statement(witness_id, req, p.out.reason, &p.acc, now))) {
            r = -ENOMEM;
            goto fail;
        }
        break;
    default:
        r = -EINVAL;
        goto fail;
    }
    /* Refused before anything is signed or written. */
    if (p.statement && quota &&
        (r = quota_check(w, witness_id, req, quota, now,
                         p.out.result == WITNESS_ACCEPTED && p.out.head_seq < 0)) < 0)
        goto fail;
    *ret = p;
    return 0;
fail:
    plan_done(&p);
    return r;
}

/* A statement signed ahead of the write transaction, for one job. */
struct WitnessPresign {
    char now[32]; /* the time the statement names */
    Canon st;     /* the statement signed */
    char *doc;    /* the document, with the signature */
    size_t doc_len;
    Verifier *v; /* checks the signature, */
    int check;   /* into this: 0 pending, 1 verified, -1 not */
};

static void presign_free(WitnessPresign *p)
{
    if (!p)
        return;
    /* The check reports into p: it must be done before p goes. */
    witness_verifier_wait(p->v, &p->check);
    witness_canon_done(&p->st);
    free(p->doc);
    free(p);
}

/* Decides on one request inside the open transaction, signs and stores what
 * the decision needs. A statement signed ahead (pre) is used only when this
 * decision, made here under the write lock, comes to the very same
 * statement bytes and the signature verified; otherwise the statement is
 * signed now and checked inline. On success *ret holds the document (not to
 * be shown before COMMIT) and *ret_write whether anything was written; on
 * failure nothing is held, and the caller undoes the request's writes. */
static int decide(Witness *w, Token *t, const char *witness_id, const WitnessRequest *req,
                  const WitnessQuota *quota, WitnessPresign *pre, WitnessOutcome *ret,
                  bool *ret_write)
{
    Plan p = {0};
    Canon st = {0};
    char now[32];
    _cleanup_free_ char *doc = NULL;
    size_t doc_len = 0;
    if (pre)
        memcpy(now, pre->now, sizeof(now));
    else
        lv_format_time(lv_now_ms(), now);
    int r;
    for (;;) {
        if ((r = plan_decision(w, witness_id, req, quota, now, &p)) < 0)
            goto done;
        if (!p.statement) { /* a gap, a replay, or fork evidence already stored */
            *ret = p.out;
            p.out = (WitnessOutcome){0};
            *ret_write = false;
            goto done;
        }
        /* The anchor check failed (or could not be made): nothing new is
         * signed, nor a statement signed ahead used. */
        if (w->refuse < 0) {
            r = lv_error_set(w->refuse, "%s", w->refuse_detail);
            goto done;
        }
        if ((r = witness_canon_statement(p.statement, &st)) < 0)
            goto done;
        if (!pre) {
            r = witness_sign_statement(w, t, p.domain, p.result_name, &st, NULL, NULL, &doc,
                                       &doc_len);
            if (r < 0)
                goto done;
            break;
        }
        if (st.len == pre->st.len && memcmp(st.jcs, pre->st.jcs, st.len) == 0 &&
            witness_verifier_wait(pre->v, &pre->check)) {
            doc = TAKE_PTR(pre->doc);
            doc_len = pre->doc_len;
            break;
        }
        /* Decided otherwise than ahead (or its signature failed the check):
         * decide again, at this time, and sign here. */
        pre = NULL;
        plan_done(&p);
        witness_canon_done(&st);
        lv_format_time(lv_now_ms(), now);
    }
    if (p.out.result == WITNESS_ACCEPTED) {
        if ((r = witness_store_checkpoint(w, witness_id, req, now, st.hash, doc)) >= 0)
            r = witness_store_move_head(w, witness_id, req, p.out.head_seq < 0);
    } else
        r = witness_store_fork(w, witness_id, req, p.out.reason, &p.acc, p.key, now, st.hash, doc);
    /* Counted whether or not a quota applies now: a tenants file added
     * later in the day finds the day's figure right. */
    if (r >= 0)
        r = witness_store_day(w, witness_id, req->tenant_id, now, true, NULL);
    if (r >= 0)
        r = witness_state_chain(w, st.hash);
    if (r < 0)
        goto done;
    *ret = p.out;
    p.out = (WitnessOutcome){0};
    ret->document = TAKE_PTR(doc);
    ret->document_len = doc_len;
    *ret_write = true;
done:
    witness_canon_done(&st);
    plan_done(&p);
    return r;
}

static void job_fail(WitnessJob *j, int r)
{
    witness_outcome_done(&j->out);
    j->out = (WitnessOutcome){0};
    j->r = r;
    snprintf(j->detail, sizeof(j->detail), "%s", *lv_error() ? lv_error() : strerror(-r));
}

/* Every job fails with r (and the current lv_error()). */
static int fail_all(WitnessJob *jobs, size_t n, int r)
{
    char detail[sizeof(jobs->detail)];
    snprintf(detail, sizeof(detail), "%s", *lv_error() ? lv_error() : strerror(-r));
    for (size_t i = 0; i < n; i++) {
        lv_error_set(r, "%s", detail);
        job_fail(&jobs[i], r);
    }
    return r;
}

static int job_check(Witness *w, const char *witness_id, const WitnessRequest *req)
{
    if (!lv_valid_id(witness_id))
        return lv_error_set(LV_ERR_INPUT, "witness_id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    int r = witness_request_check(req, WITNESS_NAMES_JSON);
    if (r < 0)
        return r;
    if (db_readonly(w->db))
        return lv_error_set(-EROFS, "witness database %s: opened read-only", w->path);
    return 0;
}

bool witness_same_stream(const WitnessRequest *a, const WitnessRequest *b)
{
    return strcmp(a->tenant_id, b->tenant_id) == 0 && strcmp(a->stream_id, b->stream_id) == 0;
}

int witness_presign_batch(Witness *r, Token *t, const char *witness_id, WitnessJob *jobs, size_t n,
                          const bool *skip)
{
    if (!t)
        return 0;
    if (!r->verifier && !(r->verifier = witness_verifier_new()))
        return 0; /* nothing ahead: every job is signed in its transaction */
    /* One snapshot for the batch; without one, nothing is signed ahead. */
    if (sqlite3_exec(db_handle(r->db), "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return 0;
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        WitnessJob *j = &jobs[i];
        bool later = false;
        for (size_t k = 0; k < i && !later; k++)
            later = witness_same_stream(jobs[k].req, j->req);
        if (j->pre || later || (skip && skip[i]) || !lv_valid_id(witness_id) ||
            witness_request_check(j->req, WITNESS_NAMES_JSON) < 0)
            continue;
        WitnessPresign *p = calloc(1, sizeof(*p));
        if (!p)
            break;
        p->v = r->verifier;
        p->check = -1; /* until a check is queued */
        lv_format_time(lv_now_ms(), p->now);
        Plan plan = {0};
        int e = plan_decision(r, witness_id, j->req, j->quota, p->now, &plan);
        if (e >= 0 && plan.statement && (e = witness_canon_statement(plan.statement, &p->st)) >= 0)
            e = witness_sign_statement(r, t, plan.domain, plan.result_name, &p->st, r->verifier,
                                       &p->check, &p->doc, &p->doc_len);
        bool signed_ = e >= 0 && plan.statement;
        plan_done(&plan);
        if (!signed_) {
            presign_free(p);
            if (lv_is_token_error(e)) {
                ret = e; /* the token failed: nothing more is signed ahead */
                break;
            }
            continue;
        }
        j->pre = p;
    }
    sqlite3_exec(db_handle(r->db), "COMMIT", NULL, NULL, NULL);
    return ret;
}

int witness_commit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        jobs[i].out = (WitnessOutcome){0};
        jobs[i].r = 0;
        jobs[i].detail[0] = '\0';
    }
    /* IMMEDIATE takes the write lock before any head is read: two deciders
     * (threads, the CLI and the endpoint) can never both see the same head. */
    lv_error_clear();
    WitnessState before = {0}, after = {0};
    Token *anchor_t = t; /* t becomes NULL after a job's token error; the anchor is still due */
    int r = db_exec(w->db, "BEGIN IMMEDIATE");
    if (r < 0)
        goto abort;
    /* Under the write lock, before anything is signed: the database must be
     * the state anchored on the token. If not, or if that cannot be told,
     * replays and stored evidence still answer; nothing new is signed. */
    w->refuse = 0;
    if (!t)
        w->refuse = lv_error_set(LV_ERR_TOKEN, "token unavailable: cannot sign a new statement");
    else if (!db_readonly(w->db)) {
        w->refuse = witness_state_read(w, &before);
        if (w->refuse >= 0)
            w->refuse = witness_anchor_check(w, t, &before);
    }
    if (w->refuse < 0) {
        snprintf(w->refuse_detail, sizeof(w->refuse_detail), "%s",
                 *lv_error() ? lv_error() : strerror(-w->refuse));
        if (!lv_is_token_error(w->refuse) && !witness_integrity_cause(w->refuse)) {
            r = w->refuse; /* the database failed: nothing answers */
            goto abort;
        }
    }
    /* Savepoints let one job fail alone; a lone job needs none. */
    bool savepoints = n > 1, write = false;
    for (size_t i = 0; i < n; i++) {
        WitnessJob *j = &jobs[i];
        bool wrote = false;
        lv_error_clear();
        if ((r = job_check(w, witness_id, j->req)) < 0) {
            job_fail(j, r);
            continue;
        }
        if (savepoints && (r = db_exec(w->db, "SAVEPOINT witness_job")) < 0)
            goto abort;
        r = decide(w, t, witness_id, j->req, j->quota, j->pre, &j->out, &wrote);
        if (r < 0) {
            job_fail(j, r);
            /* Some errors (I/O, full disk) end the whole transaction in
             * SQLite: what the jobs before this one wrote is gone too. */
            if (sqlite3_get_autocommit(db_handle(w->db)))
                goto abort;
            if (savepoints && (r = db_exec(w->db, "ROLLBACK TO witness_job")) < 0)
                goto abort;
            /* The token failed: the session is presumed broken. */
            if (lv_is_token_error(j->r))
                t = NULL;
        } else
            write = write || wrote;
        if (savepoints && (r = db_exec(w->db, "RELEASE witness_job")) < 0)
            goto abort;
    }
    /* One generation per committed batch. */
    if (write && (r = witness_state_advance(w, &before, before.generation + 1, &after)) < 0)
        goto abort;
    r = db_exec(w->db, write ? "COMMIT" : "ROLLBACK");
    if (r < 0)
        goto abort;
    /* Committed, and answered only once its anchor is the one of its
     * generation. Otherwise the batch stays stored, unanswered: the next
     * batch rolls the anchor forward, and a retry gets the replay. */
    if (write && (r = witness_anchor_commit(w, anchor_t, &after)) < 0) {
        fail_all(jobs, n, r);
        goto out;
    }
    r = 0;
    goto out;
abort:
    if (!sqlite3_get_autocommit(db_handle(w->db)))
        sqlite3_exec(db_handle(w->db), "ROLLBACK", NULL, NULL, NULL);
    /* Nothing was committed: no job may answer, whatever it decided. */
    fail_all(jobs, n, r);
out:
    for (size_t i = 0; i < n; i++)
        jobs[i].pre = (presign_free(jobs[i].pre), NULL);
    return r;
}

int witness_submit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n)
{
    if (n == 0)
        return 0;
    /* A token error ahead is met again, with its own detail, by the job's
     * own signing in the transaction (or not, if the token recovered). */
    witness_presign_batch(w, t, witness_id, jobs, n, NULL);
    return witness_commit_batch(w, t, witness_id, jobs, n);
}

int witness_submit(Witness *w, Token *t, const char *witness_id, const WitnessRequest *req,
                   WitnessOutcome *ret)
{
    WitnessJob job = {.req = req};
    witness_commit_batch(w, t, witness_id, &job, 1);
    if (job.r < 0)
        return lv_error_set(job.r, "%s", job.detail);
    /* Only now, after COMMIT, does the caller see the document. */
    *ret = job.out;
    return 0;
}
