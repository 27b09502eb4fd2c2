/* SPDX-License-Identifier: Apache-2.0 */
/* Relay metrics: counters and a latency histogram, formatted in the
 * Prometheus text exposition format and written atomically to a file. */
#include "metrics.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>

#include "lv.h"

/* Attempt latency buckets, in seconds: from a loopback round trip to the
 * 30 s default transfer timeout. */
static const double buckets_s[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define N_BUCKETS ELEMENTSOF(buckets_s)

typedef struct Reason {
    char name[48];
    uint64_t failures, dead;
} Reason;

struct Metrics {
    pthread_mutex_t lock;
    uint64_t attempts, delivered, token_errors;
    uint64_t bucket[N_BUCKETS]; /* not cumulative; summed when formatted */
    double sum_s;
    Reason reasons[METRICS_MAX_REASONS + 1]; /* the last is "other" */
    size_t n_reasons;
    bool paused;
    int64_t started_ms;
};

int metrics_new(Metrics **ret)
{
    Metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    pthread_mutex_init(&m->lock, NULL);
    snprintf(m->reasons[METRICS_MAX_REASONS].name, sizeof(m->reasons[0].name), "other");
    m->started_ms = lv_now_ms();
    *ret = m;
    return 0;
}

Metrics *metrics_free(Metrics *m)
{
    if (!m)
        return NULL;
    pthread_mutex_destroy(&m->lock);
    free(m);
    return NULL;
}

void metrics_attempt(Metrics *m, int64_t elapsed_ms)
{
    if (!m)
        return;
    double s = elapsed_ms > 0 ? (double)elapsed_ms / 1000.0 : 0.0;
    pthread_mutex_lock(&m->lock);
    m->attempts++;
    m->sum_s += s;
    for (size_t i = 0; i < N_BUCKETS; i++)
        if (s <= buckets_s[i]) {
            m->bucket[i]++;
            break;
        }
    pthread_mutex_unlock(&m->lock);
}

void metrics_delivered(Metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->delivered++;
    pthread_mutex_unlock(&m->lock);
}

/* The row of a reason; called with the lock held. Only the characters of a
 * metric label are kept: reasons come from our own code, but a label must
 * never carry anything a peer chose. */
static Reason *reason_row(Metrics *m, const char *reason)
{
    char clean[48];
    size_t n = 0;
    for (const char *p = reason ? reason : "unknown"; *p && n + 1 < sizeof(clean); p++)
        clean[n++] =
            (char)((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ? *p : '_');
    clean[n] = '\0';
    for (size_t i = 0; i < m->n_reasons; i++)
        if (strcmp(m->reasons[i].name, clean) == 0)
            return &m->reasons[i];
    if (m->n_reasons == METRICS_MAX_REASONS)
        return &m->reasons[METRICS_MAX_REASONS];
    Reason *r = &m->reasons[m->n_reasons++];
    memcpy(r->name, clean, n + 1);
    return r;
}

void metrics_failure(Metrics *m, const char *reason)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    reason_row(m, reason)->failures++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_dead_lettered(Metrics *m, const char *reason)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    reason_row(m, reason)->dead++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_token_error(Metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->token_errors++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_paused(Metrics *m, bool paused)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->paused = paused;
    pthread_mutex_unlock(&m->lock);
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int metrics_format(Metrics *m, const SpoolStats *st, int64_t now_ms, char **ret, size_t *ret_len)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return -ENOMEM;
    if (st) {
        header(f, "attesto_relay_items", "gauge", "Spool items by state.");
        const struct {
            const char *name;
            int64_t n;
        } states[] = {{"queued", st->queued},
                      {"relaying", st->relaying},
                      {"receipted", st->receipted},
                      {"dead_letter", st->dead_letter},
                      {"quarantined", st->quarantined}};
        for (size_t i = 0; i < ELEMENTSOF(states); i++)
            fprintf(f, "attesto_relay_items{state=\"%s\"} %" PRId64 "\n", states[i].name,
                    states[i].n);
        header(f, "attesto_relay_conflicts", "gauge",
               "Enqueue drift conflicts recorded in the spool.");
        fprintf(f, "attesto_relay_conflicts %" PRId64 "\n", st->conflicts);
        header(f, "attesto_relay_oldest_queued_age_seconds", "gauge",
               "Age of the oldest queued item (0 when none is queued).");
        fprintf(f, "attesto_relay_oldest_queued_age_seconds %.3f\n",
                st->oldest_queued_ms > 0 && now_ms > st->oldest_queued_ms
                    ? (double)(now_ms - st->oldest_queued_ms) / 1000.0
                    : 0.0);
    }
    pthread_mutex_lock(&m->lock);
    header(f, "attesto_relay_attempts_total", "counter",
           "Delivery attempts that finished (a response or a transport failure).");
    fprintf(f, "attesto_relay_attempts_total %" PRIu64 "\n", m->attempts);
    header(f, "attesto_relay_deliveries_total", "counter",
           "Items delivered with a verified acknowledgement.");
    fprintf(f, "attesto_relay_deliveries_total %" PRIu64 "\n", m->delivered);
    header(f, "attesto_relay_attempt_failures_total", "counter",
           "Failed delivery attempts by reason.");
    for (size_t i = 0; i <= METRICS_MAX_REASONS; i++) {
        const Reason *r = &m->reasons[i];
        if (r->failures)
            fprintf(f, "attesto_relay_attempt_failures_total{reason=\"%s\"} %" PRIu64 "\n", r->name,
                    r->failures);
    }
    header(f, "attesto_relay_dead_lettered_total", "counter", "Items dead-lettered by reason.");
    for (size_t i = 0; i <= METRICS_MAX_REASONS; i++) {
        const Reason *r = &m->reasons[i];
        if (r->dead)
            fprintf(f, "attesto_relay_dead_lettered_total{reason=\"%s\"} %" PRIu64 "\n", r->name,
                    r->dead);
    }
    header(f, "attesto_relay_attempt_duration_seconds", "histogram",
           "Duration of delivery attempts, request to response.");
    uint64_t cum = 0;
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum += m->bucket[i];
        fprintf(f, "attesto_relay_attempt_duration_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                buckets_s[i], cum);
    }
    fprintf(f,
            "attesto_relay_attempt_duration_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n"
            "attesto_relay_attempt_duration_seconds_sum %.6f\n"
            "attesto_relay_attempt_duration_seconds_count %" PRIu64 "\n",
            m->attempts, m->sum_s, m->attempts);
    header(f, "attesto_relay_token_errors_total", "counter",
           "Token or key operations of the drain that failed.");
    fprintf(f, "attesto_relay_token_errors_total %" PRIu64 "\n", m->token_errors);
    header(f, "attesto_relay_paused", "gauge",
           "1 while the drain is paused because the receiver answered 401/403.");
    fprintf(f, "attesto_relay_paused %d\n", m->paused ? 1 : 0);
    header(f, "attesto_relay_start_time_seconds", "gauge",
           "When this drain process started (Unix time).");
    fprintf(f, "attesto_relay_start_time_seconds %.3f\n", (double)m->started_ms / 1000.0);
    pthread_mutex_unlock(&m->lock);
    if (fclose(f) != 0) {
        free(buf);
        return -ENOMEM;
    }
    *ret = buf;
    *ret_len = len;
    return 0;
}

int metrics_write_file(const char *path, const char *text, size_t len)
{
    char dir[PATH_MAX], base[PATH_MAX], tmp[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    /* A leading dot and no .prom suffix: node exporter skips the file
     * while it is being written. */
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.%d.tmp", dirname(dir), basename(base),
                         (int)getpid()) >= sizeof(tmp))
        return lv_error_set(LV_ERR_INPUT, "metrics file %s: path too long", path);
    _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return lv_error_set(-errno, "metrics file %s: %s", tmp, strerror(errno));
    /* The umask of the service (0077) would hide it from node exporter;
     * the figures are not secret (no event ids, no payloads). */
    (void)fchmod(fd, 0644);
    size_t off = 0;
    while (off < len) {
        ssize_t k = write(fd, text + off, len - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            unlink(tmp);
            return lv_error_set(-e, "metrics file %s: %s", tmp, strerror(e));
        }
        off += (size_t)k;
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        return lv_error_set(-e, "metrics file %s: rename: %s", path, strerror(e));
    }
    return 0;
}
