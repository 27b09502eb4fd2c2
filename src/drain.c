/* SPDX-License-Identifier: Apache-2.0 */
/* The drain pass and loop: leases, concurrent relaying, fail-closed acks,
 * retry/pause/dead-letter outcomes, and the service's systemd protocol. */
#include "drain.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>

#include "envelope.h"
#include "log.h"
#include "lv.h"

#define DEFAULT_MAX_IN_FLIGHT 64u
#define DEFAULT_LEASE_MS      120000
#define DEFAULT_BASE_MS       1000
#define DEFAULT_STOP_GRACE_MS 10000
#define DEFAULT_IDLE_WAKE_MS  30000
#define STATUS_EVERY_MS       2000
#define NO_INOTIFY_POLL_MS    1000
/* A 401/403 usually needs a person to fix the registration: asking again
 * faster than this is pointless, whatever the backoff base. */
#define PAUSE_FLOOR_MS 1000

typedef struct Slot {
    bool used;
    SpoolLease lease;
} Slot;

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
};

int64_t drain_backoff_ms(int attempts, int64_t base_ms, int64_t retry_after_ms)
{
    if (base_ms <= 0)
        base_ms = DEFAULT_BASE_MS;
    /* spool_backoff_ms holds the one full-jitter schedule (base 1 s, cap
     * 300 s); a smaller base for tests scales it, cap included. */
    int64_t d = spool_backoff_ms(attempts, 0);
    if (base_ms != DEFAULT_BASE_MS)
        d = d * base_ms / DEFAULT_BASE_MS;
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
    *ret = d;
    return 0;
}

static void slot_clear(Slot *sl)
{
    free(sl->lease.body);
    memset(sl, 0, sizeof(*sl));
}

Drain *drain_free(Drain *d)
{
    if (!d)
        return NULL;
    bool held = false;
    for (size_t i = 0; i < d->n_slots; i++)
        if (d->slots[i].used) {
            held = true;
            slot_clear(&d->slots[i]);
        }
    if (held)
        (void)spool_release_leases(d->spool, d->owner);
    free(d->slots);
    free(d);
    return NULL;
}

static void fail(Drain *d, int r)
{
    if (d->error == 0)
        d->error = r < 0 ? r : -EIO;
}

/* Group commit: the outcomes one relay_run round reports and the leases
 * that refill the freed slots share one transaction (spool_batch_begin), so
 * one fsync makes them all durable instead of one per item. The group is
 * committed before relay_run runs again, so a new lease is on disk before a
 * byte of its request is sent (relay_submit only queues), and the write lock
 * is never held across relay_run's wait: relay_run reports only after it has
 * finished waiting, and returns right after reporting. */
static void round_begin(Drain *d)
{
    int r = spool_batch_begin(d->spool);
    if (r < 0)
        fail(d, r);
}

static void round_end(Drain *d)
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
    if (dead) {
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
    if (d->pause_count > 0) {
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

static void on_done(void *userdata, const RelayResult *res)
{
    Drain *d = userdata;
    if (res->tag >= d->n_slots || !d->slots[res->tag].used)
        return;
    Slot *sl = &d->slots[res->tag];
    SpoolLease *l = &sl->lease;
    d->want_lease = true;
    if (d->error < 0) {
        /* After a spool failure nothing more is recorded; the lease is
         * released (or expires) and the item is sent again later. */
        slot_clear(sl);
        return;
    }
    if (res->transport_reason) {
        if (strcmp(res->transport_reason, "aborted") == 0) {
            /* Shutdown: the lease is released below, attempts kept. */
            slot_clear(sl);
            return;
        }
        log_debug("%s: %s", l->event_id, res->detail);
        schedule_retry(d, l, res->transport_reason, -1);
        slot_clear(sl);
        return;
    }
    long st = res->http_status;
    char reason[32];
    snprintf(reason, sizeof(reason), "http_%ld", st);
    if (st >= 200 && st < 300) {
        AckCheck ack = {0};
        envelope_check_ack(st, res->body, res->body_len, l->envelope_hash, l->stream_id,
                           l->event_id, &ack);
        if (!ack.reason && ack.receipt_json)
            delivered(d, l, ack.receipt_json);
        else
            schedule_retry(d, l, ack.reason ? ack.reason : "ack_invalid", -1);
        ack_check_done(&ack);
    } else if (st == 401 || st == 403)
        pause_all(d, l, reason, res->retry_after_ms);
    else if (st == 409)
        dead_letter(d, l, "receiver_conflict");
    else if (st == 408 || st == 425 || st == 429 || (st >= 500 && st < 600))
        schedule_retry(d, l, reason, res->retry_after_ms);
    else if (st >= 300 && st < 400)
        /* Never followed: a redirect is a failed attempt, never a delivery. */
        schedule_retry(d, l, "redirect_refused", res->retry_after_ms);
    else if (st >= 400 && st < 500)
        dead_letter(d, l, reason);
    else
        schedule_retry(d, l, reason, res->retry_after_ms);
    slot_clear(sl);
}

/* Leases what is due into free slots and starts the transfers. lease_now
 * is the clock used for "due" (a pass keeps its start time, so that an item
 * is tried at most once per pass). */
static void fill(Drain *d, int64_t lease_now)
{
    size_t in_flight = relay_in_flight(d->relay);
    if (in_flight >= d->opt.max_in_flight) {
        return;
    }
    size_t want = d->opt.max_in_flight - in_flight;
    SpoolLease *leases = NULL;
    size_t n = 0;
    int64_t lease_ms = d->opt.lease_ms + (lv_now_ms() - lease_now);
    int r = spool_lease_due(d->spool, d->owner, lease_now, lease_ms, want, &leases, &n);
    if (r < 0) {
        fail(d, r);
        return;
    }
    if (n < want)
        d->want_lease = false; /* nothing else due until something changes */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        while (k < d->n_slots && d->slots[k].used)
            k++;
        if (k == d->n_slots) {
            fail(d, lv_error_set(-EOVERFLOW, "drain: more leases than slots"));
            break;
        }
        Slot *sl = &d->slots[k];
        sl->used = true;
        sl->lease = leases[i];
        leases[i].body = NULL; /* the slot owns it now */
        r = relay_submit(d->relay, k, sl->lease.event_id, sl->lease.body, sl->lease.body_len);
        if (r < 0) {
            slot_clear(sl);
            fail(d, r);
            break;
        }
    }
    spool_leases_free(leases, n);
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

/* The end of a run: in-flight requests get the grace period, then the
 * rest is aborted and every lease this process holds goes back to queued. */
static void wind_down(Drain *d, struct pollfd *fds, size_t nfds)
{
    int64_t deadline = lv_mono_ms() + d->opt.stop_grace_ms;
    while (relay_in_flight(d->relay) > 0 && d->error == 0) {
        int64_t left = deadline - lv_mono_ms();
        if (left <= 0)
            break;
        round_begin(d);
        int r = relay_run(d->relay, (int)(left < 200 ? left : 200), fds, nfds, on_done, d);
        if (r < 0)
            fail(d, r);
        round_end(d);
    }
    relay_abort_all(d->relay, on_done, d);
    int r = spool_release_leases(d->spool, d->owner);
    if (r < 0)
        fail(d, r);
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
    struct pollfd fds[1] = {{.fd = sfd, .events = POLLIN}};
    d->want_lease = true;
    while (d->error == 0) {
        if (!d->sum.paused && d->want_lease)
            fill(d, start);
        round_end(d);
        if (d->error || relay_in_flight(d->relay) == 0)
            break;
        round_begin(d);
        r = relay_run(d->relay, 1000, fds, 1, on_done, d);
        if (r < 0)
            fail(d, r);
        if ((fds[0].revents & POLLIN) && signal_pending(sfd)) {
            log_notice("drain-once: signal received, finishing what is in flight");
            break;
        }
    }
    round_end(d);
    wind_down(d, fds, 1);
    signals_close(sfd, &old);
    if (d->error < 0)
        return d->error;
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
    char base[256];
    int wfd = watch_open(d->opt.spool_path, base, sizeof(base));
    if (wfd < 0)
        log_warning("cannot watch the spool directory (inotify); polling every %d ms",
                    NO_INOTIFY_POLL_MS);
    struct pollfd fds[2] = {{.fd = sfd, .events = POLLIN}, {.fd = wfd, .events = POLLIN}};
    size_t nfds = wfd >= 0 ? 2 : 1;

    uint64_t wd_usec = 0;
    int64_t wd_every = 0, next_wd = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        wd_every = (int64_t)(wd_usec / 2000);
        if (wd_every < 1)
            wd_every = 1;
    }
    notify_status(d, true);
    log_notice("drain-loop: ready (owner %s)", d->owner);
    int64_t last_status = lv_mono_ms(), next_recover = lv_mono_ms() + d->opt.idle_wake_ms;
    int64_t last_delivered = 0, last_retries = 0;
    bool was_paused = d->paused_until_ms > lv_now_ms();
    d->want_lease = true;

    while (d->error == 0) {
        int64_t now = lv_now_ms(), mono = lv_mono_ms();
        bool paused = d->paused_until_ms > now;
        if (!paused && d->next_wake_ms && now >= d->next_wake_ms) {
            d->next_wake_ms = 0;
            d->want_lease = true;
        }
        if (was_paused && !paused)
            d->want_lease = true;
        if (!paused && d->want_lease)
            fill(d, now);
        round_end(d);
        if (d->error)
            break;

        int64_t wait = d->opt.idle_wake_ms;
        if (wfd < 0 && wait > NO_INOTIFY_POLL_MS)
            wait = NO_INOTIFY_POLL_MS;
        if (paused && d->paused_until_ms - now < wait)
            wait = d->paused_until_ms - now;
        if (!paused && d->next_wake_ms && d->next_wake_ms - now < wait)
            wait = d->next_wake_ms - now;
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
        if (wait < 0)
            wait = 0;
        round_begin(d);
        r = relay_run(d->relay, (int)wait, fds, nfds, on_done, d);
        if (r < 0) {
            fail(d, r);
            break;
        }
        if ((fds[0].revents & POLLIN) && signal_pending(sfd)) {
            sd_notify(0, "STOPPING=1\nSTATUS=stopping: finishing in-flight requests");
            log_notice("drain-loop: stopping, %zu request(s) in flight", relay_in_flight(d->relay));
            d->stopping = true;
            break;
        }
        if (nfds > 1 && (fds[1].revents & POLLIN) && watch_fired(wfd, base))
            d->want_lease = true;
        else if (wfd < 0)
            d->want_lease = true;

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
        }
        was_paused = paused;
    }
    round_end(d);
    wind_down(d, fds, 1);
    signals_close(sfd, &old);
    if (wfd >= 0)
        close(wfd);
    if (d->error < 0) {
        sd_notifyf(0, "STATUS=failed: %s", lv_error());
        return d->error;
    }
    notify_status(d, false);
    return 0;
}
