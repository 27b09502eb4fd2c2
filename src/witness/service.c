/* SPDX-License-Identifier: Apache-2.0 */
/* The witness as a long-running service (witness-serve): the token's life
 * (opened, retried, dropped after a failure, a refused PIN never retried)
 * and the pipelined group commit (a planner thread that signs a batch ahead
 * while a committer thread commits the batch before). It knows nothing of
 * HTTP: the caller hands in tickets and is called back when each is
 * decided. Its events go to the log (log.h): it runs on its own threads. */
#include "internal.h"

#include <stdatomic.h>

#include "log.h"

#define TOKEN_RETRY_MS 2000
#define BATCH_MAX      WITNESS_BATCH_MAX /* checkpoints per batch at most */
#define N_BATCHES      3                 /* one committing, the others signed ahead */

/* A batch between the planner and the committer. */
typedef struct Batch {
    enum { BATCH_FREE, BATCH_FILLING, BATCH_READY, BATCH_COMMITTING } state;
    uint64_t seq; /* handed over in this order, committed in this order */
    size_t n;
    WitnessTicket *items[BATCH_MAX];
    WitnessJob jobs[BATCH_MAX];
} Batch;

struct WitnessService {
    char *witness_id;
    TokenConfig token_cfg;

    /* Group commit, pipelined: callers queue their checkpoints (and hold
     * them, e.g. suspend their connections). The planner takes what is
     * queued as a batch, decides it against the committed state (reader)
     * and has the token sign what the decisions need (witness_presign_batch),
     * while the committer writes the batch before: it decides every
     * checkpoint again in order inside one transaction, keeps a signature
     * made ahead only when it comes to the same statement, COMMITs once (one
     * fsync), and only then releases the tickets. */
    pthread_mutex_t queue_lock;
    pthread_cond_t queue_cond; /* work queued, or stop */
    WitnessTicket *queue_head, **queue_tail;
    bool queue_stop;
    pthread_t planner, committer;
    bool threads_started;

    /* Between the two: batches committing, and batches signed ahead. */
    pthread_mutex_t batch_lock;
    pthread_cond_t batch_cond; /* a batch changed state, or stop */
    Batch batches[N_BATCHES];
    uint64_t batch_seq;
    bool batch_stop;
    /* The committer's: every batch ready, committed in one transaction. */
    WitnessJob committing[N_BATCHES * BATCH_MAX];
    struct {
        void (*release)(void *userdata);
        void *userdata;
    } answering[N_BATCHES * BATCH_MAX];

    /* lock serializes the database connection (the committer's, and the
     * health check's ping); the planner reads through its own. */
    pthread_mutex_t lock;
    Witness *w;
    Witness *reader; /* NULL: nothing is signed ahead */
    /* The last commit found the database not the anchored state: nothing
     * is signed ahead until a commit finds it consistent again. */
    atomic_bool integrity_refused;

    /* token_lock guards the token fields below. A thread that uses the
     * token holds token_use for reading while it does; closing the token
     * takes it for writing, so no one is using it then. Order: token_use,
     * then token_lock. */
    pthread_rwlock_t token_use;
    pthread_mutex_t token_lock;
    Token *token;
    bool pin_refused;
    int64_t token_retry_at;
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    char kid[TOKEN_KID_MAX];
    char token_error[256];
    uint64_t token_failures;
};

/* ---- the token ---- */

/* Under s->token_lock. Opens the token when it is not open and a retry is
 * due. A PIN the token rejected is never tried again (no lockout loops). */
static void ensure_token(WitnessService *s)
{
    if (s->token || s->pin_refused || lv_mono_ms() < s->token_retry_at)
        return;
    Token *t = NULL;
    int r = token_open(&s->token_cfg, &t);
    if (r >= 0)
        r = token_check_signing_key(t);
    if (r >= 0)
        r = token_public_key(t, s->pk);
    if (r < 0) {
        snprintf(s->token_error, sizeof(s->token_error), "%s", lv_error());
        token_close(t);
        s->token_retry_at = lv_mono_ms() + TOKEN_RETRY_MS;
        if (r == LV_ERR_PIN)
            s->pin_refused = true;
        log_warning("token unavailable%s: %s", s->pin_refused ? " (PIN refused, not retried)" : "",
                    s->token_error);
        return;
    }
    snprintf(s->kid, sizeof(s->kid), "%s", token_key_id(t));
    s->token = t;
    s->token_error[0] = '\0';
    log_info("token ready, signing key %s", s->kid);
}

/* Under s->token_use (for writing) and s->token_lock, after an operation on
 * the token failed. */
static void drop_token(WitnessService *s, const char *why)
{
    s->token_failures++;
    snprintf(s->token_error, sizeof(s->token_error), "%.255s", why);
    log_warning("token failed, reopening later: %s", why);
    s->token = token_close(s->token);
    s->token_retry_at = lv_mono_ms() + TOKEN_RETRY_MS / 2;
}

/* The token, for a thread about to use it: hold s->token_use for reading
 * until done (token_release). NULL when it is not open. */
static Token *token_acquire(WitnessService *s)
{
    pthread_rwlock_rdlock(&s->token_use);
    pthread_mutex_lock(&s->token_lock);
    ensure_token(s);
    Token *t = s->token;
    pthread_mutex_unlock(&s->token_lock);
    return t;
}

static void token_release(WitnessService *s)
{
    pthread_rwlock_unlock(&s->token_use);
}

/* After token_release: t failed; drops it unless another thread already did. */
static void token_failed(WitnessService *s, Token *t, const char *why)
{
    pthread_rwlock_wrlock(&s->token_use);
    pthread_mutex_lock(&s->token_lock);
    if (t && s->token == t)
        drop_token(s, why);
    pthread_mutex_unlock(&s->token_lock);
    pthread_rwlock_unlock(&s->token_use);
}

/* After token_release: the batch's token failures, as one request at a time
 * would have seen them. The first drops the token t the batch used; the
 * later ones say it is unavailable and why. */
static void settle_token_errors(WitnessService *s, Token *t, WitnessJob *jobs, size_t n)
{
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = jobs[i].r < 0 && lv_is_token_error(jobs[i].r);
    if (!any)
        return;
    pthread_rwlock_wrlock(&s->token_use);
    pthread_mutex_lock(&s->token_lock);
    for (size_t i = 0; i < n; i++) {
        WitnessJob *j = &jobs[i];
        if (j->r >= 0 || !lv_is_token_error(j->r))
            continue;
        if (t && s->token == t)
            drop_token(s, j->detail);
        else if (s->token_error[0])
            snprintf(j->detail, sizeof(j->detail), "token unavailable: %s", s->token_error);
    }
    pthread_mutex_unlock(&s->token_lock);
    pthread_rwlock_unlock(&s->token_use);
}

bool witness_service_identity(WitnessService *s, uint8_t pk[TOKEN_ED25519_PK_LEN],
                              char kid[TOKEN_KID_MAX], char *err, size_t err_size)
{
    pthread_mutex_lock(&s->token_lock);
    ensure_token(s);
    bool ok = s->token != NULL;
    memcpy(pk, s->pk, TOKEN_ED25519_PK_LEN);
    memcpy(kid, s->kid, TOKEN_KID_MAX);
    snprintf(err, err_size, "token unavailable: %s", s->token_error);
    pthread_mutex_unlock(&s->token_lock);
    return ok;
}

bool witness_service_token_up(WitnessService *s, bool retry, uint64_t *ret_failures)
{
    pthread_mutex_lock(&s->token_lock);
    if (retry)
        ensure_token(s);
    bool up = s->token != NULL;
    if (ret_failures)
        *ret_failures = s->token_failures;
    pthread_mutex_unlock(&s->token_lock);
    return up;
}

bool witness_service_pin_refused(WitnessService *s, char *err, size_t err_size)
{
    pthread_mutex_lock(&s->token_lock);
    bool refused = s->pin_refused;
    if (refused && err)
        snprintf(err, err_size, "%s", s->token_error);
    pthread_mutex_unlock(&s->token_lock);
    return refused;
}

int witness_service_ping(WitnessService *s)
{
    pthread_mutex_lock(&s->lock);
    int r = witness_ping(s->w);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---- the pipeline ---- */

/* Under s->batch_lock: which jobs of b have a stream with a checkpoint in a
 * batch handed to the committer and not yet committed. Their state is not
 * in the committed snapshot the planner reads, so they are not signed ahead
 * (the committer decides and signs them in its transaction). */
static void in_flight_streams(WitnessService *s, const Batch *b, bool *skip)
{
    for (size_t i = 0; i < b->n; i++) {
        skip[i] = false;
        for (size_t k = 0; k < ELEMENTSOF(s->batches) && !skip[i]; k++) {
            const Batch *o = &s->batches[k];
            if (o == b || (o->state != BATCH_READY && o->state != BATCH_COMMITTING))
                continue;
            for (size_t m = 0; m < o->n && !skip[i]; m++)
                skip[i] = witness_same_stream(b->jobs[i].req, o->jobs[m].req);
        }
    }
}

static void *planner_main(void *arg)
{
    WitnessService *s = arg;
    for (;;) {
        /* A free batch, then what is queued (waiting for work). */
        pthread_mutex_lock(&s->batch_lock);
        Batch *b = NULL;
        while (!b) {
            for (size_t k = 0; k < ELEMENTSOF(s->batches) && !b; k++)
                if (s->batches[k].state == BATCH_FREE)
                    b = &s->batches[k];
            if (!b)
                pthread_cond_wait(&s->batch_cond, &s->batch_lock);
        }
        b->state = BATCH_FILLING;
        b->n = 0;
        pthread_mutex_unlock(&s->batch_lock);

        pthread_mutex_lock(&s->queue_lock);
        while (!s->queue_head && !s->queue_stop)
            pthread_cond_wait(&s->queue_cond, &s->queue_lock);
        while (s->queue_head && b->n < BATCH_MAX) {
            b->items[b->n++] = s->queue_head;
            s->queue_head = s->queue_head->next;
        }
        if (!s->queue_head)
            s->queue_tail = &s->queue_head;
        pthread_mutex_unlock(&s->queue_lock);
        if (b->n == 0) /* stopping, and nothing left */
            break;

        for (size_t i = 0; i < b->n; i++)
            b->jobs[i] = (WitnessJob){.req = b->items[i]->req, .quota = b->items[i]->quota};
        if (s->reader && !atomic_load(&s->integrity_refused)) {
            bool skip[BATCH_MAX];
            pthread_mutex_lock(&s->batch_lock);
            in_flight_streams(s, b, skip);
            pthread_mutex_unlock(&s->batch_lock);
            Token *t = token_acquire(s);
            lv_error_clear();
            int r = witness_presign_batch(s->reader, t, s->witness_id, b->jobs, b->n, skip);
            char why[1024];
            snprintf(why, sizeof(why), "%s", lv_error());
            token_release(s);
            if (lv_is_token_error(r))
                token_failed(s, t, why);
        }

        pthread_mutex_lock(&s->batch_lock);
        b->state = BATCH_READY;
        b->seq = ++s->batch_seq;
        pthread_cond_broadcast(&s->batch_cond);
        pthread_mutex_unlock(&s->batch_lock);
    }
    pthread_mutex_lock(&s->batch_lock);
    s->batch_stop = true;
    for (size_t k = 0; k < ELEMENTSOF(s->batches); k++)
        if (s->batches[k].state == BATCH_FILLING)
            s->batches[k].state = BATCH_FREE;
    pthread_cond_broadcast(&s->batch_cond);
    pthread_mutex_unlock(&s->batch_lock);
    return NULL;
}

/* Every batch ready is committed in one transaction, oldest first. */
static void *committer_main(void *arg)
{
    WitnessService *s = arg;
    for (;;) {
        Batch *take[N_BATCHES];
        size_t nb = 0;
        pthread_mutex_lock(&s->batch_lock);
        for (;;) {
            for (size_t k = 0; k < N_BATCHES; k++)
                if (s->batches[k].state == BATCH_READY) {
                    size_t at = nb++;
                    while (at > 0 && take[at - 1]->seq > s->batches[k].seq) {
                        take[at] = take[at - 1];
                        at--;
                    }
                    take[at] = &s->batches[k];
                }
            if (nb || s->batch_stop)
                break;
            pthread_cond_wait(&s->batch_cond, &s->batch_lock);
        }
        for (size_t k = 0; k < nb; k++)
            take[k]->state = BATCH_COMMITTING;
        pthread_mutex_unlock(&s->batch_lock);
        if (!nb)
            break;

        size_t n = 0;
        for (size_t k = 0; k < nb; k++) {
            memcpy(&s->committing[n], take[k]->jobs, take[k]->n * sizeof(*s->committing));
            n += take[k]->n;
        }
        Token *t = token_acquire(s);
        pthread_mutex_lock(&s->lock);
        witness_commit_batch(s->w, t, s->witness_id, s->committing, n);
        if (t)
            atomic_store(&s->integrity_refused, witness_integrity_cause(s->w->refuse) != NULL);
        pthread_mutex_unlock(&s->lock);
        token_release(s);
        settle_token_errors(s, t, s->committing, n);

        /* After COMMIT (or its failure) only: the answers go out. A
         * released ticket may be answered and freed at once, so nothing of
         * it is touched after its release, and the batches are free for the
         * planner before. */
        pthread_mutex_lock(&s->queue_lock);
        for (size_t k = 0, i = 0; k < nb; k++)
            for (size_t m = 0; m < take[k]->n; m++, i++) {
                take[k]->items[m]->job = s->committing[i];
                take[k]->items[m]->done = true;
                s->answering[i].release = take[k]->items[m]->release;
                s->answering[i].userdata = take[k]->items[m]->userdata;
            }
        pthread_mutex_unlock(&s->queue_lock);
        pthread_mutex_lock(&s->batch_lock);
        for (size_t k = 0; k < nb; k++)
            take[k]->state = BATCH_FREE;
        pthread_cond_broadcast(&s->batch_cond);
        pthread_mutex_unlock(&s->batch_lock);
        for (size_t i = 0; i < n; i++)
            if (s->answering[i].release)
                s->answering[i].release(s->answering[i].userdata);
    }
    return NULL;
}

bool witness_service_submit(WitnessService *s, WitnessTicket *t)
{
    pthread_mutex_lock(&s->queue_lock);
    bool ok = !s->queue_stop;
    if (ok) {
        t->done = false;
        t->job = (WitnessJob){.req = t->req, .quota = t->quota};
        if (t->hold)
            t->hold(t->userdata);
        t->next = NULL;
        *s->queue_tail = t;
        s->queue_tail = &t->next;
        pthread_cond_signal(&s->queue_cond);
    }
    pthread_mutex_unlock(&s->queue_lock);
    return ok;
}

bool witness_service_answered(WitnessService *s, const WitnessTicket *t)
{
    pthread_mutex_lock(&s->queue_lock);
    bool done = t->done;
    pthread_mutex_unlock(&s->queue_lock);
    return done;
}

static int start_threads(WitnessService *s)
{
    int e = pthread_create(&s->committer, NULL, committer_main, s);
    if (e != 0)
        return lv_error_set(-e, "witness-serve: cannot start the committer thread: %s",
                            strerror(e));
    e = pthread_create(&s->planner, NULL, planner_main, s);
    if (e != 0) {
        pthread_mutex_lock(&s->batch_lock);
        s->batch_stop = true;
        pthread_cond_broadcast(&s->batch_cond);
        pthread_mutex_unlock(&s->batch_lock);
        pthread_join(s->committer, NULL);
        return lv_error_set(-e, "witness-serve: cannot start the planner thread: %s", strerror(e));
    }
    s->threads_started = true;
    return 0;
}

void witness_service_stop(WitnessService *s)
{
    if (!s || !s->threads_started)
        return;
    pthread_mutex_lock(&s->queue_lock);
    s->queue_stop = true;
    pthread_cond_signal(&s->queue_cond);
    pthread_mutex_unlock(&s->queue_lock);
    pthread_join(s->planner, NULL);
    pthread_join(s->committer, NULL);
    s->threads_started = false;
}

/* ---- life ---- */

WitnessService *witness_service_free(WitnessService *s)
{
    if (!s)
        return NULL;
    witness_service_stop(s);
    s->token = token_close(s->token);
    s->w = witness_close(s->w);
    s->reader = witness_close(s->reader);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->token_lock);
    pthread_rwlock_destroy(&s->token_use);
    pthread_cond_destroy(&s->batch_cond);
    pthread_mutex_destroy(&s->batch_lock);
    pthread_cond_destroy(&s->queue_cond);
    pthread_mutex_destroy(&s->queue_lock);
    free(s->witness_id);
    free(s);
    return NULL;
}

int witness_service_start(const char *witness_db, const char *witness_id, const TokenConfig *token,
                          WitnessService **ret)
{
    WitnessService *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->token_lock, NULL);
    /* Writers first: a token to close must not wait behind an endless
     * overlap of the planner's and the committer's uses. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->token_use, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&s->batch_lock, NULL);
    pthread_cond_init(&s->batch_cond, NULL);
    pthread_mutex_init(&s->queue_lock, NULL);
    pthread_cond_init(&s->queue_cond, NULL);
    s->queue_tail = &s->queue_head;
    s->token_cfg = *token;
    s->witness_id = strdup(witness_id);
    if (!s->witness_id) {
        witness_service_free(s);
        return -ENOMEM;
    }

    int r = witness_open(witness_db, 0, &s->w);
    if (r < 0)
        goto fail;
    /* The planner's own connection, for reading only. Without it, every
     * checkpoint is signed in its transaction. */
    if (witness_open_reader(s->w, &s->reader) < 0)
        log_warning("witness database %s: no second connection, nothing is signed ahead: %s",
                    witness_db, lv_error());
    /* A refused PIN does not end the service: exiting would let the waiting
     * connection start it again under socket activation, each start one
     * more C_Login with the same wrong PIN, until the token locks. It
     * serves what needs no signature and says why it signs nothing. */
    ensure_token(s);
    r = start_threads(s);
    if (r < 0)
        goto fail;
    *ret = s;
    return 0;
fail:
    witness_service_free(s);
    return r;
}
