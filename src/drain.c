/* SPDX-License-Identifier: Apache-2.0 */
/* The drain pass and loop: leases, concurrent relaying, fail-closed acks,
 * retry/pause/dead-letter outcomes, and the service's systemd protocol. */
#include "drain.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>

#include "envelope.h"
#include "log.h"
#include "lv.h"
#include "metrics.h"
#include "receipt.h"

#define DEFAULT_MAX_IN_FLIGHT 64u
#define DEFAULT_LEASE_MS      120000
#define DEFAULT_BASE_MS       1000
#define BACKOFF_CAP_FACTOR    300     /* the cap is 300 bases (300 s at 1 s) */
#define RETRY_AFTER_MAX_MS    3600000 /* a Retry-After floor never parks an item longer */
#define DEFAULT_STOP_GRACE_MS 10000
#define DEFAULT_IDLE_WAKE_MS  30000
#define STATUS_EVERY_MS       2000
#define NO_INOTIFY_POLL_MS    1000
#define METRICS_EVERY_MS      10000 /* the textfile is rewritten at least this often */
/* A 401/403 usually needs a person to fix the registration: asking again
 * faster than this is pointless, whatever the backoff base. */
#define PAUSE_FLOOR_MS 1000

/* One lane of the drain: the transfer in flight, and the item that follows
 * it in its stream, leased ahead and sent the moment the first one is
 * through (pipelining a stream without ever having two of it in flight). */
typedef struct Slot {
    bool used; /* lease is in flight */
    SpoolLease lease;
    bool has_next; /* next: leased, unsent, same stream */
    SpoolLease next;
    bool next_asked; /* a round is looking for next */
    bool next_none;  /* a round found nothing behind lease */
    /* The item that last finished here while its successor was still being
     * leased: whether its stream may move on once that arrives. */
    int64_t done_id;
    bool done_moves_on;
} Slot;

typedef enum { OUT_NONE, OUT_DELIVERED, OUT_RETRY, OUT_DEAD, OUT_PAUSE, OUT_ABORTED } OutKind;

/* A finished attempt, judged by the main thread, for the worker to record;
 * or (kind OUT_NONE) only a lease to give back. */
typedef struct Finished {
    OutKind kind;
    bool has_lease;
    SpoolLease lease; /* the attempt (owned) */
    char reason[64];  /* OUT_RETRY, OUT_DEAD, OUT_PAUSE */
    int64_t retry_after_ms;
    char detail[256]; /* libcurl's words for a transport failure */
    char *receipt;    /* OUT_DELIVERED: the receipt JSON (malloc'd) */
    bool has_release;
    SpoolLease release; /* a leased successor that must not be sent: back to queued */
} Finished;

typedef struct FinishedList {
    Finished *v;
    size_t n, cap;
} FinishedList;

/* A successor a round is asked to lease: slot k, behind its item after_id. */
typedef struct Ask {
    size_t slot;
    int64_t after_id;
    char stream_id[129];
    bool found;
    SpoolLease lease;
} Ask;

struct Drain {
    Spool *spool;
    Relay *relay;
    DrainOptions opt;
    char owner[200];
    Slot *slots;
    size_t n_slots;
    DrainSummary sum;
    int error; /* first spool/token failure: ends the run */
    int64_t paused_until_ms;
    char pause_reason[64];
    int pause_count;
    int64_t next_wake_ms; /* earliest retry this process scheduled (wall clock) */
    bool want_lease;
    bool stopping;
    bool metrics_warned;
    char error_detail[1024]; /* lv_error() of the first failure, whichever thread had it */

    /* Pipelining (see "the spool worker" below). */
    pthread_t worker;
    bool worker_started;
    int efd; /* eventfd: the worker finished a round */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool go, quit, round_done; /* under lock */
    bool busy;                 /* main thread's view: a round is out */
    bool winding;              /* main thread: stopping, send nothing new */
    int main_error;            /* main thread's failure while a round was out */
    char main_detail[1024];
    FinishedList fin;  /* main thread: finished since the last round went out */
    FinishedList work; /* the round's own */
    /* The round's lease request and its results: */
    bool round_lease;
    int64_t round_lease_now;
    size_t want_heads;
    SpoolLease *heads;
    size_t n_heads;
    Ask *head_next;   /* the successor of each new head, leased with it */
    SpoolNext *nexts; /* fill's request to the spool */
    Ask *asks;
    size_t n_asks;
};

int64_t drain_backoff_ms(int attempts, int64_t base_ms, int64_t retry_after_ms)
{
    if (base_ms <= 0)
        base_ms = DEFAULT_BASE_MS;
    if (attempts < 1)
        attempts = 1;
    /* The one retry policy: full jitter, uniform in
     * [0, min(300 * base, base * 2^(attempts-1))]; the spool only stores
     * the due time drain computes from it. */
    int64_t cap = base_ms * BACKOFF_CAP_FACTOR, ceiling = base_ms;
    for (int i = 1; i < attempts && ceiling < cap; i++)
        ceiling *= 2;
    if (ceiling > cap)
        ceiling = cap;
    uint64_t rnd = 0;
    if (lv_random(&rnd, sizeof(rnd)) < 0)
        rnd = (uint64_t)lv_mono_ms() * 2654435761u; /* jitter only; never a secret */
    int64_t d = (int64_t)(rnd % (uint64_t)(ceiling + 1));
    if (retry_after_ms > RETRY_AFTER_MAX_MS)
        retry_after_ms = RETRY_AFTER_MAX_MS;
    if (retry_after_ms > d)
        d = retry_after_ms;
    return d > 0 ? d : 1;
}

int drain_new(Spool *s, Relay *r, const DrainOptions *opt, Drain **ret)
{
    Drain *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->spool = s;
    d->relay = r;
    d->opt = *opt;
    if (!d->opt.max_in_flight)
        d->opt.max_in_flight = DEFAULT_MAX_IN_FLIGHT;
    if (!d->opt.lease_ms)
        d->opt.lease_ms = DEFAULT_LEASE_MS;
    if (!d->opt.backoff_base_ms)
        d->opt.backoff_base_ms = DEFAULT_BASE_MS;
    if (!d->opt.stop_grace_ms)
        d->opt.stop_grace_ms = DEFAULT_STOP_GRACE_MS;
    if (!d->opt.idle_wake_ms)
        d->opt.idle_wake_ms = DEFAULT_IDLE_WAKE_MS;
    if (opt->owner)
        snprintf(d->owner, sizeof(d->owner), "%s", opt->owner);
    else {
        char host[64] = "localhost";
        uint32_t rnd = 0;
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        (void)lv_random(&rnd, sizeof(rnd));
        snprintf(d->owner, sizeof(d->owner), "drain:%s:%d:%08x", host, (int)getpid(), rnd);
    }
    d->n_slots = d->opt.max_in_flight;
    d->slots = calloc(d->n_slots, sizeof(Slot));
    if (!d->slots) {
        free(d);
        return -ENOMEM;
    }
    d->asks = calloc(d->n_slots, sizeof(Ask));
    d->head_next = calloc(d->n_slots, sizeof(Ask));
    d->nexts = calloc(2 * d->n_slots, sizeof(SpoolNext));
    if (!d->asks || !d->head_next || !d->nexts) {
        free(d->asks);
        free(d->head_next);
        free(d->nexts);
        free(d->slots);
        free(d);
        return -ENOMEM;
    }
    d->efd = -1;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    *ret = d;
    return 0;
}

/* Lease bodies hold the payload when an installation opted in to relaying
 * it: wiped like any plaintext. */
static void slot_clear(Slot *sl)
{
    erase_and_free(sl->lease.body, sl->lease.body_len);
    erase_and_free(sl->next.body, sl->next.body_len);
    memset(sl, 0, sizeof(*sl));
}

static void finished_clear(FinishedList *l)
{
    for (size_t i = 0; i < l->n; i++) {
        erase_and_free(l->v[i].lease.body, l->v[i].lease.body_len);
        erase_and_free(l->v[i].release.body, l->v[i].release.body_len);
        free(l->v[i].receipt);
    }
    l->n = 0;
}

static Finished *finished_add(FinishedList *l)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        Finished *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    Finished *f = &l->v[l->n++];
    memset(f, 0, sizeof(*f));
    return f;
}

Drain *drain_free(Drain *d)
{
    if (!d)
        return NULL;
    bool held = false;
    for (size_t i = 0; i < d->n_slots; i++)
        if (d->slots[i].used || d->slots[i].has_next) {
            held = true;
            slot_clear(&d->slots[i]);
        }
    if (held)
        (void)spool_release_leases(d->spool, d->owner);
    finished_clear(&d->fin);
    finished_clear(&d->work);
    free(d->fin.v);
    free(d->work.v);
    spool_leases_free(d->heads, d->n_heads);
    for (size_t i = 0; i < d->n_asks; i++)
        erase_and_free(d->asks[i].lease.body, d->asks[i].lease.body_len);
    for (size_t i = 0; i < d->n_heads; i++)
        erase_and_free(d->head_next[i].lease.body, d->head_next[i].lease.body_len);
    free(d->asks);
    free(d->head_next);
    free(d->nexts);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    free(d->slots);
    free(d);
    return NULL;
}

static void fail(Drain *d, int r)
{
    if (d->error == 0) {
        d->error = r < 0 ? r : -EIO;
        if (lv_is_token_error(d->error))
            metrics_token_error(d->opt.metrics);
        /* lv_error() is per thread: keep it for whichever thread reports. */
        snprintf(d->error_detail, sizeof(d->error_detail), "%s", lv_error());
    }
}

/* Group commit: the outcomes a round records and the leases that refill
 * the freed slots share one transaction (spool_batch_begin), so one fsync
 * makes them all durable instead of one per item. A round never waits on
 * the network, so the spool's write lock is held only while it works. */
static void group_begin(Drain *d)
{
    int r = spool_batch_begin(d->spool);
    if (r < 0)
        fail(d, r);
}

static void group_end(Drain *d)
{
    int r = spool_batch_commit(d->spool);
    if (r < 0)
        fail(d, r);
}

static void log_attempt(int level, const SpoolLease *l, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void log_attempt(int level, const SpoolLease *l, const char *reason, const char *fmt, ...)
{
    char ev[320], st[160], at[32], rs[96], msg[512];
    snprintf(ev, sizeof(ev), "EVENT_ID=%s", l->event_id);
    snprintf(st, sizeof(st), "STREAM_ID=%s", l->stream_id);
    snprintf(at, sizeof(at), "ATTEMPT=%d", l->attempts + 1);
    snprintf(rs, sizeof(rs), "REASON=%s", reason ? reason : "delivered");
    const char *fields[] = {ev, st, at, rs, NULL};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    log_fields(level, fields, "%s: %s", l->event_id, msg);
}

/* The lease expired while the request was in flight, and the item went
 * back to the queue (any spool_open recovers expired leases): its outcome
 * is no longer this process's to record. Nothing is lost and nothing is
 * marked: the item is sent again and the receiver, idempotent, answers with
 * the same acknowledgement. Any other failure to record ends the run. */
static void outcome_failed(Drain *d, const SpoolLease *l, int r);

static void schedule_retry(Drain *d, SpoolLease *l, const char *reason, int64_t retry_after_ms)
{
    int attempts = l->attempts + 1;
    int64_t now = lv_now_ms();
    int64_t next = now + drain_backoff_ms(attempts, d->opt.backoff_base_ms, retry_after_ms);
    bool dead = false;
    int r = spool_mark_retry(d->spool, l->id, d->owner, reason, next, true, &dead);
    if (r < 0) {
        outcome_failed(d, l, r);
        return;
    }
    metrics_failure(d->opt.metrics, reason);
    if (dead) {
        metrics_dead_lettered(d->opt.metrics, reason);
        d->sum.dead_lettered++;
        log_attempt(LV_LOG_ERR, l, reason,
                    "attempt %d failed (%s): max attempts reached, "
                    "dead-lettered",
                    attempts, reason);
    } else {
        d->sum.retry_scheduled++;
        if (d->next_wake_ms == 0 || next < d->next_wake_ms)
            d->next_wake_ms = next;
        log_attempt(LV_LOG_WARNING, l, reason, "attempt %d failed (%s), next in %lld ms", attempts,
                    reason, (long long)(next - now));
    }
}

static void dead_letter(Drain *d, SpoolLease *l, const char *reason)
{
    int r = spool_mark_dead(d->spool, l->id, d->owner, reason);
    if (r < 0) {
        outcome_failed(d, l, r);
        return;
    }
    metrics_failure(d->opt.metrics, reason);
    metrics_dead_lettered(d->opt.metrics, reason);
    d->sum.dead_lettered++;
    log_attempt(LV_LOG_ERR, l, reason, "refused by the receiver (%s): dead-lettered", reason);
}

/* 401/403: the installation is not authorised. Every stream waits; the item
 * keeps its attempts (DESIGN §5.5). */
static void pause_all(Drain *d, SpoolLease *l, const char *reason, int64_t retry_after_ms)
{
    int64_t now = lv_now_ms();
    if (d->paused_until_ms <= now) {
        d->pause_count++;
        int64_t delay = drain_backoff_ms(d->pause_count, d->opt.backoff_base_ms, retry_after_ms);
        /* Full jitter may pick ~0; that would hammer a receiver that just
         * said no. */
        if (delay < PAUSE_FLOOR_MS)
            delay = PAUSE_FLOOR_MS;
        d->paused_until_ms = now + delay;
        snprintf(d->pause_reason, sizeof(d->pause_reason), "%s", reason);
        int r = spool_set_pause(d->spool, d->paused_until_ms, reason);
        if (r < 0) {
            fail(d, r);
            return;
        }
        log_warning("drain paused for %lld ms: the receiver answered %s (installation not "
                    "authorised?)",
                    (long long)delay, reason);
    }
    bool dead = false;
    int r = spool_mark_retry(d->spool, l->id, d->owner, reason, d->paused_until_ms, false, &dead);
    if (r < 0) {
        outcome_failed(d, l, r);
        return;
    }
    metrics_failure(d->opt.metrics, reason);
    metrics_set_paused(d->opt.metrics, true);
    d->sum.retry_scheduled++;
    d->sum.paused = true;
    snprintf(d->sum.pause_reason, sizeof(d->sum.pause_reason), "%s", reason);
    d->sum.paused_until_ms = d->paused_until_ms;
    log_attempt(LV_LOG_WARNING, l, reason, "not authorised (%s): paused, attempts kept", reason);
}

static void delivered(Drain *d, SpoolLease *l, const char *receipt)
{
    int r = spool_mark_receipted(d->spool, l->id, d->owner, receipt);
    if (r < 0) {
        outcome_failed(d, l, r);
        return;
    }
    d->sum.delivered++;
    metrics_delivered(d->opt.metrics);
    if (d->pause_count > 0) {
        metrics_set_paused(d->opt.metrics, false);
        /* The receiver accepts us again: the pause is over. */
        d->pause_count = 0;
        d->pause_reason[0] = '\0';
        r = spool_set_pause(d->spool, 0, NULL);
        if (r < 0)
            fail(d, r);
        log_notice("drain resumed: the receiver accepts this installation again");
    }
    log_attempt(LV_LOG_DEBUG, l, NULL, "delivered");
}

static void outcome_failed(Drain *d, const SpoolLease *l, int r)
{
    if (r != -ESTALE) {
        fail(d, r);
        return;
    }
    lv_error_clear();
    log_attempt(LV_LOG_WARNING, l, "lease_lost",
                "the lease expired before the outcome was recorded; the item is queued again and "
                "will be sent again");
}

/* What an attempt's result means (DESIGN §5.4, §5.5), judged by the main
 * thread when the transfer finishes, so that it knows at once whether the
 * stream may move on. */
static void judge(Finished *f, const RelayResult *res)
{
    const SpoolLease *l = &f->lease;
    f->retry_after_ms = -1;
    if (res->transport_reason) {
        if (strcmp(res->transport_reason, "aborted") == 0) {
            f->kind = OUT_ABORTED;
            return;
        }
        f->kind = OUT_RETRY;
        snprintf(f->reason, sizeof(f->reason), "%s", res->transport_reason);
        snprintf(f->detail, sizeof(f->detail), "%s", res->detail);
        return;
    }
    long st = res->http_status;
    char reason[32];
    snprintf(reason, sizeof(reason), "http_%ld", st);
    if (st >= 200 && st < 300) {
        AckCheck ack = {0};
        envelope_check_ack(st, res->body, res->body_len, l->envelope_hash, l->stream_id,
                           l->event_id, &ack);
        if (!ack.reason && ack.receipt_json) {
            f->receipt = strdup(ack.receipt_json);
            f->kind = f->receipt ? OUT_DELIVERED : OUT_RETRY;
            if (!f->receipt)
                snprintf(f->reason, sizeof(f->reason), "out_of_memory");
        } else {
            f->kind = OUT_RETRY;
            snprintf(f->reason, sizeof(f->reason), "%s", ack.reason ? ack.reason : "ack_invalid");
        }
        ack_check_done(&ack);
        return;
    }
    f->retry_after_ms = res->retry_after_ms;
    if (st == 401 || st == 403) {
        f->kind = OUT_PAUSE;
        snprintf(f->reason, sizeof(f->reason), "%s", reason);
    } else if (st == 409) {
        f->kind = OUT_DEAD;
        snprintf(f->reason, sizeof(f->reason), "receiver_conflict");
    } else if (st == 408 || st == 425 || st == 429 || (st >= 500 && st < 600)) {
        f->kind = OUT_RETRY;
        snprintf(f->reason, sizeof(f->reason), "%s", reason);
    } else if (st >= 300 && st < 400) {
        /* Never followed: a redirect is a failed attempt, never a delivery. */
        f->kind = OUT_RETRY;
        snprintf(f->reason, sizeof(f->reason), "redirect_refused");
    } else if (st >= 400 && st < 500) {
        f->kind = OUT_DEAD;
        snprintf(f->reason, sizeof(f->reason), "%s", reason);
    } else {
        f->kind = OUT_RETRY;
        snprintf(f->reason, sizeof(f->reason), "%s", reason);
    }
}

/* With pinned receipt keys, a delivery stands only on a receipt signed by
 * one of them (docs/protocol.md "Signed receipts"); otherwise it becomes a
 * failed attempt like any other, retried with backoff. */
static void check_receipt(const Drain *d, Finished *f)
{
    if (f->kind != OUT_DELIVERED || !d->opt.receipt_keys)
        return;
    const char *why = receipt_check(d->opt.receipt_keys, f->receipt, strlen(f->receipt),
                                    f->lease.envelope_hash, f->detail, sizeof(f->detail));
    if (!why)
        return;
    free(f->receipt);
    f->receipt = NULL;
    f->kind = OUT_RETRY;
    snprintf(f->reason, sizeof(f->reason), "%s", why);
}

/* Records one judged attempt (worker, inside the round's group commit). */
static void apply(Drain *d, Finished *f)
{
    d->want_lease = true;
    if (d->error < 0)
        /* After a spool failure nothing more is recorded; the leases are
         * released (or expire) and the items are sent again later. */
        return;
    SpoolLease *l = &f->lease;
    switch (f->kind) {
    case OUT_NONE:
    case OUT_ABORTED:
        /* Shutdown: the lease is released at the end, attempts kept. */
        break;
    case OUT_DELIVERED:
        delivered(d, l, f->receipt);
        break;
    case OUT_RETRY:
        if (f->detail[0])
            log_debug("%s: %s", l->event_id, f->detail);
        schedule_retry(d, l, f->reason, f->retry_after_ms);
        break;
    case OUT_DEAD:
        dead_letter(d, l, f->reason);
        break;
    case OUT_PAUSE:
        pause_all(d, l, f->reason, f->retry_after_ms);
        break;
    }
    if (f->has_release && d->error == 0) {
        /* After the outcome above, which decides the stream's head. */
        int r = spool_release_lease(d->spool, f->release.id, d->owner);
        if (r < 0)
            fail(d, r);
    }
}

static size_t slots_free(const Drain *d)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_slots; i++)
        n += !d->slots[i].used && !d->slots[i].has_next;
    return n;
}

/* The round's leasing (worker): new heads for the free slots, then, in one
 * batch, the successors asked for and those of the new heads (so that a
 * stream can go on the moment its head is through); all due at lease_now
 * (a pass keeps its start time, so that an item is tried at most once per
 * pass). */
static void fill(Drain *d, int64_t lease_now)
{
    int64_t lease_ms = d->opt.lease_ms + (lv_now_ms() - lease_now);
    if (d->want_heads > 0) {
        int r = spool_lease_due(d->spool, d->owner, lease_now, lease_ms, d->want_heads, &d->heads,
                                &d->n_heads);
        if (r < 0) {
            fail(d, r);
            return;
        }
        if (d->n_heads < d->want_heads)
            d->want_lease = false; /* nothing else due until something changes */
    }
    size_t n = 0;
    for (size_t i = 0; i < d->n_asks; i++)
        d->nexts[n++] =
            (SpoolNext){.stream_id = d->asks[i].stream_id, .after_id = d->asks[i].after_id};
    for (size_t i = 0; i < d->n_heads; i++) {
        d->head_next[i] = (Ask){.after_id = d->heads[i].id};
        d->nexts[n++] = (SpoolNext){.stream_id = d->heads[i].stream_id, .after_id = d->heads[i].id};
    }
    int r = spool_lease_next_many(d->spool, d->owner, d->nexts, n, lease_now, lease_ms);
    if (r < 0) {
        fail(d, r);
        return;
    }
    n = 0;
    for (size_t i = 0; i < d->n_asks; i++, n++) {
        d->asks[i].found = d->nexts[n].found;
        d->asks[i].lease = d->nexts[n].lease;
    }
    for (size_t i = 0; i < d->n_heads; i++, n++) {
        d->head_next[i].found = d->nexts[n].found;
        d->head_next[i].lease = d->nexts[n].lease;
    }
}

/* ---------- the spool worker ----------
 *
 * Pipelining: the main thread only drives libcurl; a worker thread does the
 * spool's share, in rounds. A round records the outcomes of the transfers
 * that finished since the last one (ack checks, SQLite, the token's
 * decryption of the next items), leases what refills the freed slots, and
 * commits all of it at once (group commit, one fsync). Meanwhile the main
 * thread keeps reading responses and sending requests. The two hand over
 * like a fork and a join: the main thread touches the spool, the slots and
 * the rest of the Drain only while no round is out (!busy), and the worker
 * only during its round, so the mutex that passes the baton is the only
 * synchronisation the state needs. New leases are started by the main
 * thread after the round's commit, so a lease is on disk before a byte of
 * its request is sent. */

static void round_run(Drain *d)
{
    group_begin(d);
    for (size_t i = 0; i < d->work.n; i++)
        apply(d, &d->work.v[i]);
    finished_clear(&d->work);
    /* An outcome above may have paused the drain (401/403): then nothing
     * more is leased. */
    if (d->round_lease && d->error == 0 && d->paused_until_ms <= lv_now_ms())
        fill(d, d->round_lease_now);
    group_end(d);
}

static void *worker_main(void *arg)
{
    Drain *d = arg;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (!d->go && !d->quit)
            pthread_cond_wait(&d->cond, &d->lock);
        if (!d->go)
            break;
        d->go = false;
        pthread_mutex_unlock(&d->lock);
        round_run(d);
        pthread_mutex_lock(&d->lock);
        d->round_done = true;
        pthread_cond_broadcast(&d->cond);
        uint64_t one = 1;
        /* The main thread polls the eventfd next to libcurl's sockets. */
        if (write(d->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            log_warning("drain: eventfd: %s", strerror(errno));
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static int worker_start(Drain *d)
{
    d->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->efd < 0)
        return lv_error_set(-errno, "drain: eventfd: %s", strerror(errno));
    d->go = d->quit = d->round_done = d->busy = false;
    d->main_error = 0;
    /* The worker must not take the signals the main thread reads from its
     * signalfd: it inherits the blocked mask set up before. */
    int e = pthread_create(&d->worker, NULL, worker_main, d);
    if (e != 0) {
        close(d->efd);
        d->efd = -1;
        return lv_error_set(-e, "drain: cannot start the spool worker: %s", strerror(e));
    }
    d->worker_started = true;
    return 0;
}

static void worker_stop(Drain *d)
{
    if (d->worker_started) {
        pthread_mutex_lock(&d->lock);
        d->quit = true;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->worker, NULL);
        d->worker_started = false;
    }
    if (d->efd >= 0)
        close(d->efd);
    d->efd = -1;
}

/* Sends out a round: the results gathered since the last one, and whether
 * to lease (due at lease_now) into the slots they free. */
static void round_dispatch(Drain *d, bool lease, int64_t lease_now)
{
    FinishedList t = d->work;
    d->work = d->fin;
    d->fin = t;
    d->round_lease = lease;
    d->round_lease_now = lease_now;
    d->want_heads = 0;
    d->n_asks = 0;
    if (lease) {
        d->want_heads = slots_free(d);
        for (size_t k = 0; k < d->n_slots; k++) {
            Slot *sl = &d->slots[k];
            if (!sl->used || sl->has_next || sl->next_asked || sl->next_none)
                continue;
            Ask *a = &d->asks[d->n_asks++];
            *a = (Ask){.slot = k, .after_id = sl->lease.id};
            snprintf(a->stream_id, sizeof(a->stream_id), "%s", sl->lease.stream_id);
            sl->next_asked = true;
        }
    }
    pthread_mutex_lock(&d->lock);
    d->round_done = false;
    d->go = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
    d->busy = true;
}

/* A lease that will not be sent goes back to queued with the next round. */
static void give_back(Drain *d, SpoolLease *l)
{
    Finished *f = finished_add(&d->fin);
    if (!f) {
        /* It stays leased; the end of the run (or its expiry) returns it. */
        erase_and_free(l->body, l->body_len);
        l->body = NULL;
        return;
    }
    f->kind = OUT_NONE;
    f->has_release = true;
    f->release = *l;
    l->body = NULL;
}

/* A failure of the main thread's own work (a round may be out: d->error is
 * the worker's then); merged by round_collect. */
static void main_error(Drain *d, int r)
{
    if (d->main_error == 0) {
        d->main_error = r < 0 ? r : -EIO;
        snprintf(d->main_detail, sizeof(d->main_detail), "%s", lv_error());
    }
}

/* Starts slot k's lease (main thread). */
static void start(Drain *d, Slot *sl, size_t k)
{
    sl->used = true;
    sl->next_asked = false;
    int r = relay_submit(d->relay, k, sl->lease.event_id, sl->lease.body, sl->lease.body_len);
    if (r < 0) {
        /* Still leased in the spool: the end of the run releases it. */
        slot_clear(sl);
        main_error(d, r);
    }
}

/* Takes a finished round back (waiting for it with wait) and, with submit,
 * starts the transfers of its leases; without, they stay leased and unsent
 * (wind_down releases them). Returns false when the round is still out. */
static bool round_collect(Drain *d, bool wait, bool submit)
{
    if (!d->busy) {
        if (d->main_error && d->error == 0) {
            d->error = d->main_error;
            snprintf(d->error_detail, sizeof(d->error_detail), "%s", d->main_detail);
        }
        return true;
    }
    pthread_mutex_lock(&d->lock);
    while (wait && !d->round_done)
        pthread_cond_wait(&d->cond, &d->lock);
    bool done = d->round_done;
    pthread_mutex_unlock(&d->lock);
    if (!done)
        return false;
    uint64_t v;
    while (read(d->efd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;
    d->busy = false;
    if (d->main_error && d->error == 0) {
        d->error = d->main_error;
        snprintf(d->error_detail, sizeof(d->error_detail), "%s", d->main_detail);
    }
    /* Successors: kept by their slot while its item is still in flight;
     * otherwise the stream moved on without them (or must not), so they
     * go back to queued with the next round. */
    for (size_t i = 0; i < d->n_asks; i++) {
        Ask *a = &d->asks[i];
        Slot *sl = &d->slots[a->slot];
        bool same = sl->used && sl->lease.id == a->after_id;
        if (same) {
            sl->next_asked = false;
            sl->next_none = !a->found;
        }
        if (!a->found)
            continue;
        bool go = d->error == 0 && !d->winding;
        if (same && !sl->has_next && go) {
            sl->next = a->lease;
            sl->has_next = true;
        } else if (!sl->used && !sl->has_next && sl->done_id == a->after_id && sl->done_moves_on &&
                   go) {
            /* Its predecessor finished meanwhile and the stream moves on. */
            memset(sl, 0, sizeof(*sl));
            sl->lease = a->lease;
            start(d, sl, a->slot);
        } else {
            give_back(d, &a->lease);
        }
        a->lease.body = NULL;
        a->found = false;
    }
    d->n_asks = 0;
    /* New heads into free slots, started at once. */
    size_t k = 0;
    for (size_t i = 0; i < d->n_heads; i++) {
        SpoolLease *l = &d->heads[i];
        while (k < d->n_slots && (d->slots[k].used || d->slots[k].has_next))
            k++;
        if (k == d->n_slots || !submit || d->error || d->winding) {
            give_back(d, l);
            continue;
        }
        Slot *sl = &d->slots[k];
        memset(sl, 0, sizeof(*sl));
        sl->lease = *l;
        l->body = NULL;
        Ask *a = &d->head_next[i];
        if (a->found) {
            sl->next = a->lease;
            sl->has_next = true;
            a->lease.body = NULL;
            a->found = false;
        } else {
            sl->next_none = true;
        }
        start(d, sl, k);
    }
    for (size_t i = 0; i < d->n_heads; i++) {
        Ask *a = &d->head_next[i];
        if (a->found)
            give_back(d, &a->lease);
        a->found = false;
    }
    spool_leases_free(d->heads, d->n_heads);
    d->heads = NULL;
    d->n_heads = 0;
    return true;
}

/* One round, start to finish, from the main thread (wind-down). */
static void round_sync(Drain *d)
{
    round_collect(d, true, false);
    round_dispatch(d, false, 0);
    round_collect(d, true, false);
}

/* A failure the main thread met: recorded once no round is out. */
static void main_fail(Drain *d, int r)
{
    main_error(d, r);
    round_collect(d, true, false);
}

/* The relay's callback (main thread): judges the attempt for the next
 * round and, when the stream may move on (delivered, or dead-lettered),
 * starts the successor leased ahead, if any; otherwise that one goes back.
 * The outcome itself is made durable by the next round; should the process
 * die first, the item is sent again and the receiver answers the replay
 * with the same receipt (Idempotency-Key). */
static void on_finished(void *userdata, const RelayResult *res)
{
    Drain *d = userdata;
    if (res->tag >= d->n_slots || !d->slots[res->tag].used)
        return;
    Slot *sl = &d->slots[res->tag];
    Finished *f = finished_add(&d->fin);
    if (!f) {
        /* Unrecorded, the lease is released at the end of the run. */
        slot_clear(sl);
        main_error(d, lv_error_set(-ENOMEM, "drain: out of memory"));
        return;
    }
    f->has_lease = true;
    f->lease = sl->lease;
    sl->lease.body = NULL;
    sl->used = false;
    judge(f, res);
    check_receipt(d, f);
    if (f->kind != OUT_ABORTED)
        metrics_attempt(d->opt.metrics, res->elapsed_ms);
    bool moves_on = f->kind == OUT_DELIVERED || f->kind == OUT_DEAD;
    if (!sl->has_next) {
        sl->done_id = f->lease.id;
        sl->done_moves_on = moves_on;
        return;
    }
    if (moves_on && !d->winding && d->main_error == 0) {
        sl->lease = sl->next;
        memset(&sl->next, 0, sizeof(sl->next));
        sl->has_next = false;
        start(d, sl, res->tag);
    } else {
        f->has_release = true;
        f->release = sl->next;
        memset(&sl->next, 0, sizeof(sl->next));
        sl->has_next = false;
    }
}

/* SIGTERM and SIGINT arrive through a signalfd so the loop sees them
 * between transfers, never inside libcurl or SQLite. */
static int signals_open(sigset_t *ret_old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, ret_old) < 0)
        return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        sigprocmask(SIG_SETMASK, ret_old, NULL);
        return e;
    }
    return fd;
}

static void signals_close(int fd, const sigset_t *old)
{
    if (fd >= 0)
        close(fd);
    sigprocmask(SIG_SETMASK, old, NULL);
}

static bool signal_pending(int fd)
{
    struct signalfd_siginfo si;
    bool got = false;
    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        got = true;
    return got;
}

/* The end of a run (main thread, no round out): in-flight requests get the
 * grace period, then the rest is aborted and every lease this process holds
 * goes back to queued, including leases a round took that were never sent. */
static void wind_down(Drain *d, struct pollfd *fds, size_t nfds)
{
    d->winding = true;
    int64_t deadline = lv_mono_ms() + d->opt.stop_grace_ms;
    while (relay_in_flight(d->relay) > 0 && d->error == 0) {
        int64_t left = deadline - lv_mono_ms();
        if (left <= 0)
            break;
        int r = relay_run(d->relay, (int)(left < 200 ? left : 200), fds, nfds, on_finished, d);
        if (r < 0)
            fail(d, r);
        round_sync(d);
    }
    relay_abort_all(d->relay, on_finished, d);
    round_sync(d);
    int r = spool_release_leases(d->spool, d->owner);
    if (r < 0)
        fail(d, r);
    /* Successors never sent: released above with the rest. */
    for (size_t k = 0; k < d->n_slots; k++)
        if (!d->slots[k].used)
            slot_clear(&d->slots[k]);
    d->winding = false;
}

static void sum_remaining(Drain *d)
{
    SpoolStats st;
    if (spool_stats(d->spool, &st) == 0)
        d->sum.remaining = st.queued + st.relaying;
}

/* A pause left by an earlier process is honoured. */
static void load_pause(Drain *d)
{
    SpoolStats st;
    if (spool_stats(d->spool, &st) == 0 && st.paused_until_ms > lv_now_ms()) {
        d->paused_until_ms = st.paused_until_ms;
        d->pause_count = 1;
        snprintf(d->pause_reason, sizeof(d->pause_reason), "%s", st.pause_reason);
    }
}

int drain_once(Drain *d, DrainSummary *ret)
{
    memset(&d->sum, 0, sizeof(d->sum));
    int64_t start = lv_now_ms();
    size_t recovered = 0;
    int r = spool_recover_expired(d->spool, start, &recovered);
    if (r < 0)
        return r;
    load_pause(d);
    if (d->paused_until_ms > start) {
        d->sum.paused = true;
        snprintf(d->sum.pause_reason, sizeof(d->sum.pause_reason), "%s", d->pause_reason);
        d->sum.paused_until_ms = d->paused_until_ms;
        sum_remaining(d);
        *ret = d->sum;
        return 0;
    }
    sigset_t old;
    int sfd = signals_open(&old);
    if (sfd < 0)
        return sfd;
    r = worker_start(d);
    if (r < 0) {
        signals_close(sfd, &old);
        return r;
    }
    struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = d->efd, .events = POLLIN}};
    d->want_lease = true;
    for (;;) {
        if (!d->busy) {
            round_collect(d, false, true); /* takes in the main thread's failures */
            if (d->error)
                break;
            bool lease = !d->sum.paused && d->want_lease && slots_free(d) > 0;
            if (d->fin.n > 0 || lease)
                round_dispatch(d, lease, start);
            else if (relay_in_flight(d->relay) == 0)
                break;
        }
        r = relay_run(d->relay, 1000, fds, 2, on_finished, d);
        if (r < 0) {
            main_fail(d, r);
            break;
        }
        if (fds[1].revents & POLLIN)
            round_collect(d, false, true);
        if ((fds[0].revents & POLLIN) && signal_pending(sfd)) {
            log_notice("drain-once: signal received, finishing what is in flight");
            break;
        }
    }
    round_collect(d, true, false);
    wind_down(d, fds, 1);
    worker_stop(d);
    signals_close(sfd, &old);
    if (d->error < 0)
        return lv_error_set(d->error, "%s", d->error_detail);
    sum_remaining(d);
    *ret = d->sum;
    return 0;
}

static void notify_status(Drain *d, bool ready)
{
    SpoolStats st;
    if (spool_stats(d->spool, &st) < 0)
        return;
    char paused[160] = "";
    int64_t now = lv_now_ms();
    if (d->paused_until_ms > now)
        snprintf(paused, sizeof(paused), "; PAUSED (%s, installation not authorised) for %llds",
                 d->pause_reason, (long long)((d->paused_until_ms - now + 999) / 1000));
    sd_notifyf(0,
               "%sSTATUS=queued %lld, relaying %lld, receipted %lld, dead_letter %lld, "
               "quarantined %lld; this run: delivered %lld, retries %lld%s",
               ready ? "READY=1\n" : "", (long long)st.queued, (long long)st.relaying,
               (long long)st.receipted, (long long)st.dead_letter, (long long)st.quarantined,
               (long long)d->sum.delivered, (long long)d->sum.retry_scheduled, paused);
}

/* The textfile for node exporter: the counters and the spool's figures.
 * A failure is logged once per run and never stops the relay. */
static void write_metrics(Drain *d)
{
    if (!d->opt.metrics || !d->opt.metrics_file)
        return;
    /* The caller's error detail (a failure ending the run) outlives this. */
    char saved[512];
    snprintf(saved, sizeof(saved), "%s", lv_error());
    SpoolStats st;
    bool have = spool_stats(d->spool, &st) == 0;
    metrics_set_paused(d->opt.metrics, d->paused_until_ms > lv_now_ms());
    char *text = NULL;
    size_t len = 0;
    int r = metrics_format(d->opt.metrics, have ? &st : NULL, lv_now_ms(), &text, &len);
    if (r >= 0)
        r = metrics_write_file(d->opt.metrics_file, text, len);
    free(text);
    if (r < 0 && !d->metrics_warned) {
        d->metrics_warned = true;
        log_warning("metrics: %s (the relay goes on without the metrics file)",
                    *lv_error() ? lv_error() : strerror(-r));
    } else if (r >= 0 && d->metrics_warned) {
        d->metrics_warned = false;
        log_notice("metrics: %s written again", d->opt.metrics_file);
    }
    if (*saved)
        lv_error_set(d->error, "%s", saved);
    else
        lv_error_clear();
}

/* Enqueues by another process show up as writes to the spool file or its
 * WAL; inotify on the directory wakes the loop without polling. */
static int watch_open(const char *path, char *ret_base, size_t base_len)
{
    if (!path)
        return -1;
    char dir[PATH_MAX], base[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    snprintf(ret_base, base_len, "%s", basename(base));
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return -1;
    if (inotify_add_watch(fd, dirname(dir), IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) <
        0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool watch_fired(int fd, const char *base)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool hit = false;
    size_t bl = strlen(base);
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            /* the database, its -wal or -journal */
            if (ev->len && strncmp(ev->name, base, bl) == 0 &&
                (ev->name[bl] == '\0' || ev->name[bl] == '-'))
                hit = true;
            p += sizeof(*ev) + ev->len;
        }
    }
    return hit;
}

int drain_loop(Drain *d)
{
    memset(&d->sum, 0, sizeof(d->sum));
    size_t recovered = 0;
    int r = spool_recover_expired(d->spool, lv_now_ms(), &recovered);
    if (r < 0)
        return r;
    if (recovered)
        log_notice("recovered %zu item(s) from expired leases", recovered);
    load_pause(d);
    sigset_t old;
    int sfd = signals_open(&old);
    if (sfd < 0)
        return sfd;
    r = worker_start(d);
    if (r < 0) {
        signals_close(sfd, &old);
        return r;
    }
    char base[256];
    int wfd = watch_open(d->opt.spool_path, base, sizeof(base));
    if (wfd < 0)
        log_warning("cannot watch the spool directory (inotify); polling every %d ms",
                    NO_INOTIFY_POLL_MS);
    struct pollfd fds[3] = {{.fd = sfd, .events = POLLIN},
                            {.fd = d->efd, .events = POLLIN},
                            {.fd = wfd, .events = POLLIN}};
    size_t nfds = wfd >= 0 ? 3 : 2;

    uint64_t wd_usec = 0;
    int64_t wd_every = 0, next_wd = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        wd_every = (int64_t)(wd_usec / 2000);
        if (wd_every < 1)
            wd_every = 1;
    }
    notify_status(d, true);
    write_metrics(d);
    int64_t next_metrics = lv_mono_ms() + METRICS_EVERY_MS;
    log_notice("drain-loop: ready (owner %s)", d->owner);
    int64_t last_status = lv_mono_ms(), next_recover = lv_mono_ms() + d->opt.idle_wake_ms;
    int64_t last_delivered = 0, last_retries = 0;
    bool was_paused = d->paused_until_ms > lv_now_ms();
    bool poke = false; /* something may have become due (inotify, no inotify) */
    d->want_lease = true;

    for (;;) {
        int64_t now = lv_now_ms(), mono = lv_mono_ms();
        /* The Drain's state is the worker's while a round is out. */
        bool paused = false;
        if (!d->busy) {
            round_collect(d, false, true); /* takes in the main thread's failures */
            if (d->error)
                break;
            paused = d->paused_until_ms > now;
            if (!paused && d->next_wake_ms && now >= d->next_wake_ms) {
                d->next_wake_ms = 0;
                d->want_lease = true;
            }
            if ((was_paused && !paused) || poke)
                d->want_lease = true;
            poke = false;
            bool lease = !paused && d->want_lease && slots_free(d) > 0;
            if (d->fin.n > 0 || lease)
                round_dispatch(d, lease, now);
        }

        /* A round out wakes us through its eventfd. */
        int64_t wait = d->opt.idle_wake_ms;
        if (wfd < 0 && wait > NO_INOTIFY_POLL_MS)
            wait = NO_INOTIFY_POLL_MS;
        if (!d->busy) {
            if (paused && d->paused_until_ms - now < wait)
                wait = d->paused_until_ms - now;
            if (!paused && d->next_wake_ms && d->next_wake_ms - now < wait)
                wait = d->next_wake_ms - now;
        }
        if (wd_every) {
            if (mono >= next_wd) {
                sd_notify(0, "WATCHDOG=1");
                next_wd = mono + wd_every;
            }
            if (next_wd - mono < wait)
                wait = next_wd - mono;
        }
        if (mono - last_status >= STATUS_EVERY_MS && wait > STATUS_EVERY_MS)
            wait = STATUS_EVERY_MS;
        if (d->opt.metrics_file && next_metrics - mono < wait)
            wait = next_metrics - mono;
        if (wait < 0)
            wait = 0;
        r = relay_run(d->relay, (int)wait, fds, nfds, on_finished, d);
        if (r < 0) {
            main_fail(d, r);
            break;
        }
        if (fds[1].revents & POLLIN)
            round_collect(d, false, true);
        if ((fds[0].revents & POLLIN) && signal_pending(sfd)) {
            sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing in-flight requests");
            log_notice("drain-loop: stopping, %zu request(s) in flight", relay_in_flight(d->relay));
            d->stopping = true;
            break;
        }
        if (nfds > 2 && (fds[2].revents & POLLIN) && watch_fired(wfd, base))
            poke = true;
        else if (wfd < 0)
            poke = true;
        if (d->busy)
            continue;

        mono = lv_mono_ms();
        if (mono >= next_recover) {
            next_recover = mono + d->opt.idle_wake_ms;
            r = spool_recover_expired(d->spool, lv_now_ms(), &recovered);
            if (r < 0) {
                fail(d, r);
                break;
            }
            if (recovered) {
                log_notice("recovered %zu item(s) from expired leases", recovered);
                d->want_lease = true;
            }
        }
        paused = d->paused_until_ms > lv_now_ms();
        if ((mono - last_status >= STATUS_EVERY_MS &&
             (d->sum.delivered != last_delivered || d->sum.retry_scheduled != last_retries)) ||
            paused != was_paused) {
            notify_status(d, false);
            last_status = mono;
            last_delivered = d->sum.delivered;
            last_retries = d->sum.retry_scheduled;
            write_metrics(d);
            next_metrics = mono + METRICS_EVERY_MS;
        } else if (mono >= next_metrics) {
            write_metrics(d);
            next_metrics = mono + METRICS_EVERY_MS;
        }
        was_paused = paused;
    }
    round_collect(d, true, false);
    wind_down(d, fds, 1);
    worker_stop(d);
    signals_close(sfd, &old);
    if (wfd >= 0)
        close(wfd);
    write_metrics(d);
    if (d->error < 0) {
        lv_error_set(d->error, "%s", d->error_detail);
        sd_notifyf(0, "STATUS=failed: %s", d->error_detail);
        return d->error;
    }
    notify_status(d, false);
    return 0;
}
