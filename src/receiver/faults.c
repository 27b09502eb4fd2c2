/* SPDX-License-Identifier: Apache-2.0 */
/* The receiver's scripted failures: spec parsing and per-request choice. */
#include "faults.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lv.h"

#define MAX_FAULTS 64

struct FaultSet {
    pthread_mutex_t lock;
    Fault cmdline[MAX_FAULTS];
    size_t n_cmdline;
    Fault file[MAX_FAULTS];
    size_t n_file;
    char *path;
    struct stat file_st; /* of the version last read; st_ino 0: none yet */
    uint64_t rng;
    uint64_t fired;
};

static const struct {
    const char *name;
    FaultKind kind;
} kinds[] = {
    {"status", FAULT_STATUS},
    {"html", FAULT_HTML},
    {"bad-json", FAULT_BAD_JSON},
    {"truncated", FAULT_TRUNCATED},
    {"wrong-hash", FAULT_WRONG_HASH},
    {"wrong-stream", FAULT_WRONG_STREAM},
    {"wrong-event", FAULT_WRONG_EVENT},
    {"no-ack", FAULT_NO_ACK},
    {"receipt-mismatch", FAULT_RECEIPT_MISMATCH},
    {"slow", FAULT_SLOW},
    {"drop", FAULT_DROP},
    {"redirect", FAULT_REDIRECT},
    {"big", FAULT_BIG},
    {"random", FAULT_RANDOM},
};

const char *fault_kind_name(FaultKind k)
{
    for (size_t i = 0; i < ELEMENTSOF(kinds); i++)
        if (kinds[i].kind == k)
            return kinds[i].name;
    return "?";
}

static bool parse_long(const char *s, long lo, long hi, long *ret)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *ret = v;
    return true;
}

int fault_parse(const char *spec, Fault *ret, char *err, size_t errlen)
{
    Fault f = {.kind = FAULT_STATUS, .status = 0, .retry_after_s = -1, .count = 1, .prob = 1.0};
    bool have_kind = false, have_count = false;
    if (strlen(spec) >= sizeof(f.spec)) {
        snprintf(err, errlen, "%.40s...: longer than %zu bytes", spec, sizeof(f.spec) - 1);
        return -1;
    }
    snprintf(f.spec, sizeof(f.spec), "%s", spec);
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ":", &save); tok; tok = strtok_r(NULL, ":", &save)) {
        char *eq = strchr(tok, '=');
        long v;
        if (!eq) {
            /* A bare word is the kind; a bare number is a status. */
            if (parse_long(tok, 100, 599, &v)) {
                f.kind = FAULT_STATUS;
                f.status = (int)v;
                have_kind = true;
                continue;
            }
            size_t i = 0;
            for (; i < ELEMENTSOF(kinds); i++)
                if (strcmp(kinds[i].name, tok) == 0)
                    break;
            if (i == ELEMENTSOF(kinds)) {
                snprintf(err, errlen, "%s: unknown fault kind '%s'", spec, tok);
                return -1;
            }
            f.kind = kinds[i].kind;
            have_kind = true;
            continue;
        }
        *eq = '\0';
        const char *key = tok, *val = eq + 1;
        if (strcmp(key, "status") == 0) {
            if (!parse_long(val, 100, 599, &v))
                goto bad_value;
            f.status = (int)v;
            if (!have_kind)
                f.kind = FAULT_STATUS;
            have_kind = true;
        } else if (strcmp(key, "kind") == 0) {
            size_t i = 0;
            for (; i < ELEMENTSOF(kinds); i++)
                if (strcmp(kinds[i].name, val) == 0)
                    break;
            if (i == ELEMENTSOF(kinds))
                goto bad_value;
            f.kind = kinds[i].kind;
            have_kind = true;
        } else if (strcmp(key, "retry-after") == 0 || strcmp(key, "retry-after-date") == 0) {
            if (!parse_long(val, 0, 86400, &v))
                goto bad_value;
            f.retry_after_s = (int)v;
            f.retry_after_date = strcmp(key, "retry-after-date") == 0;
        } else if (strcmp(key, "delay") == 0) {
            if (!parse_long(val, 0, 600000, &v))
                goto bad_value;
            f.delay_ms = (int)v;
        } else if (strcmp(key, "count") == 0) {
            if (strcmp(val, "inf") == 0)
                f.count = -1;
            else if (parse_long(val, 1, 1000000000, &v))
                f.count = v;
            else
                goto bad_value;
            have_count = true;
        } else if (strcmp(key, "prob") == 0) {
            char *end;
            errno = 0;
            double p = strtod(val, &end);
            if (errno || end == val || *end || !(p > 0.0 && p <= 1.0))
                goto bad_value;
            f.prob = p;
        } else if (strcmp(key, "stream") == 0) {
            if (!lv_valid_id(val))
                goto bad_value;
            snprintf(f.stream, sizeof(f.stream), "%s", val);
        } else if (strcmp(key, "when") == 0) {
            if (strcmp(val, "before") == 0)
                f.after = false;
            else if (strcmp(val, "after") == 0)
                f.after = true;
            else
                goto bad_value;
        } else {
            snprintf(err, errlen, "%s: unknown key '%s'", spec, key);
            return -1;
        }
        continue;
    bad_value:
        snprintf(err, errlen, "%s: %s=%s: invalid value", spec, key, val);
        return -1;
    }
    if (!have_kind) {
        snprintf(err, errlen, "%s: names no fault kind (e.g. 503, status=500, html, drop)", spec);
        return -1;
    }
    if (f.kind == FAULT_STATUS && f.status == 0) {
        snprintf(err, errlen, "%s: status: required for kind status", spec);
        return -1;
    }
    if (f.kind == FAULT_SLOW && f.delay_ms == 0)
        f.delay_ms = 5000;
    /* A probabilistic rule is a soak-test rule: it keeps firing unless told. */
    if (!have_count && f.prob < 1.0)
        f.count = -1;
    *ret = f;
    return 0;
}

static uint64_t next_rand(FaultSet *fs)
{
    /* xorshift64*: reproducible with --seed, good enough for fault dice. */
    fs->rng ^= fs->rng >> 12;
    fs->rng ^= fs->rng << 25;
    fs->rng ^= fs->rng >> 27;
    return fs->rng * 2685821657736338717ULL;
}

static double next_unit(FaultSet *fs)
{
    return (double)(next_rand(fs) >> 11) / (double)(1ULL << 53);
}

/* Called with the lock held. A file that cannot be read or parsed keeps the
 * previous rules: a half-written file must not silently clear faults. */
static void reload_file(FaultSet *fs)
{
    struct stat st;
    if (!fs->path)
        return;
    if (stat(fs->path, &st) < 0) {
        if (fs->file_st.st_ino != 0) {
            fs->n_file = 0; /* removed: no file rules */
            memset(&fs->file_st, 0, sizeof(fs->file_st));
        }
        return;
    }
    if (st.st_ino == fs->file_st.st_ino && st.st_mtim.tv_sec == fs->file_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == fs->file_st.st_mtim.tv_nsec && st.st_size == fs->file_st.st_size)
        return;
    FILE *f = fopen(fs->path, "re");
    if (!f)
        return;
    Fault parsed[MAX_FAULTS] = {0};
    size_t n = 0;
    char line[512];
    bool ok = true;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#')
            continue;
        char err[300];
        if (n == MAX_FAULTS || fault_parse(p, &parsed[n], err, sizeof(err)) < 0) {
            fprintf(stderr, "receiver: %s: %s\n", fs->path,
                    n == MAX_FAULTS ? "too many rules" : err);
            ok = false;
            break;
        }
        n++;
    }
    fclose(f);
    if (!ok)
        return;
    memcpy(fs->file, parsed, n * sizeof(Fault));
    fs->n_file = n;
    fs->file_st = st;
    fprintf(stderr, "receiver: %s: %zu fault rule(s) loaded\n", fs->path, n);
}

int faultset_new(const char *file, uint64_t seed, FaultSet **ret)
{
    FaultSet *fs = calloc(1, sizeof(*fs));
    if (!fs)
        return -ENOMEM;
    pthread_mutex_init(&fs->lock, NULL);
    fs->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;
    if (file) {
        fs->path = strdup(file);
        if (!fs->path) {
            free(fs);
            return -ENOMEM;
        }
        reload_file(fs);
    }
    *ret = fs;
    return 0;
}

void faultset_free(FaultSet *fs)
{
    if (!fs)
        return;
    pthread_mutex_destroy(&fs->lock);
    free(fs->path);
    free(fs);
}

int faultset_add(FaultSet *fs, const Fault *f)
{
    if (fs->n_cmdline == MAX_FAULTS)
        return -E2BIG;
    fs->cmdline[fs->n_cmdline++] = *f;
    return 0;
}

static bool try_rule(FaultSet *fs, Fault *f, const char *stream, Fault *ret)
{
    if (f->count == 0)
        return false;
    if (f->stream[0] && strcmp(f->stream, stream) != 0)
        return false;
    if (f->prob < 1.0 && next_unit(fs) >= f->prob)
        return false;
    if (f->count > 0)
        f->count--;
    *ret = *f;
    if (ret->kind == FAULT_RANDOM) {
        /* The transient kinds a soak test must survive; each is a failed
         * attempt that a retry cures. */
        static const FaultKind pool[] = {
            FAULT_STATUS,      FAULT_STATUS,    FAULT_STATUS,     FAULT_HTML,
            FAULT_BAD_JSON,    FAULT_TRUNCATED, FAULT_WRONG_HASH, FAULT_WRONG_STREAM,
            FAULT_WRONG_EVENT, FAULT_NO_ACK,    FAULT_DROP,       FAULT_RECEIPT_MISMATCH};
        static const int statuses[] = {500, 503, 429};
        uint64_t r = next_rand(fs);
        size_t k = r % ELEMENTSOF(pool);
        ret->kind = pool[k];
        if (ret->kind == FAULT_STATUS)
            ret->status = statuses[k % ELEMENTSOF(statuses)];
        ret->retry_after_s = -1;
        ret->after = (r >> 32) & 1; /* half of them after the envelope was accepted */
    }
    fs->fired++;
    return true;
}

bool faultset_pick(FaultSet *fs, const char *stream, Fault *ret)
{
    bool fired = false;
    pthread_mutex_lock(&fs->lock);
    reload_file(fs);
    for (size_t i = 0; !fired && i < fs->n_cmdline; i++)
        fired = try_rule(fs, &fs->cmdline[i], stream, ret);
    for (size_t i = 0; !fired && i < fs->n_file; i++)
        fired = try_rule(fs, &fs->file[i], stream, ret);
    pthread_mutex_unlock(&fs->lock);
    return fired;
}

uint64_t faultset_fired(FaultSet *fs)
{
    pthread_mutex_lock(&fs->lock);
    uint64_t n = fs->fired;
    pthread_mutex_unlock(&fs->lock);
    return n;
}
