/* SPDX-License-Identifier: Apache-2.0 */
/* The spool verbs: enqueue, status, list, show, dead-letter, purge, and the
 * offline verify of relay envelopes (and, through its table, of other
 * signed documents). */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "canon.h"
#include "cli.h"
#include "envelope.h"
#include "lv.h"
#include "pubkey.h"
#include "spool.h"
#include "witness.h"

/* A line holds one item: the payload cap plus room for the other members
 * and white space around them. */
#define LINE_MAX_BYTES (SPOOL_MAX_PAYLOAD + 64 * 1024)
/* Standard input cannot be read twice, so it is held in memory up to this. */
#define STDIN_MAX_BYTES (64 * 1024 * 1024)
/* A call to the spool (and so each group it commits) also closes when its
 * payloads reach this many bytes. */
#define GROUP_MAX_BYTES (8 * 1024 * 1024)
#define PROGRESS_MIN    1000
#define LIST_DEFAULT    100
#define LIST_MAX        10000

static int usage_error(const char *verb, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const char *verb, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", verb);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return LV_EXIT_USAGE;
}

/* getopt_long over a verb's arguments; argv[0] is the verb. */
#define VERB_GETOPT(argc, argv, shortopts, longopts)                                               \
    (opterr = 0, getopt_long(argc, argv, shortopts, longopts, NULL))

static int bad_option(const char *verb, char **argv)
{
    return usage_error(verb, "%s: unknown option or missing value (see --help)", argv[optind - 1]);
}

/* --help: the verb's usage on stdout, exit 0 (the man page has the rest). */
static int print_help(const char *usage)
{
    printf("%s", usage);
    return LV_EXIT_OK;
}

#define HELP_OPTION                                                                                \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }
#define USAGE_PREFIX "Usage: attesto-local-vault [GLOBAL OPTIONS] "
static const char status_usage[] = USAGE_PREFIX "status [--json]\n";
static const char list_usage[] =
    USAGE_PREFIX "list [--state S] [--stream-id ID] [--limit N] [--after SEQ] [--json]\n";
static const char show_usage[] = USAGE_PREFIX "show EVENT_ID [--json] [--payload]\n";
static const char dead_letter_usage[] = USAGE_PREFIX
    "dead-letter list [--stream-id ID] [--limit N] [--after SEQ] [--json]\n"
    "       attesto-local-vault [GLOBAL OPTIONS] dead-letter requeue (EVENT_ID|--all)\n";
static const char purge_usage[] =
    USAGE_PREFIX "purge --receipted-before YYYY-MM-DD|YYYY-MM-DDTHH:MM:SSZ\n";
static const char verify_usage[] =
    USAGE_PREFIX "verify FILE|- --public-key HEX|PEMFILE|JSONFILE [--public-key ...] [--json]\n";

/* Opens the spool; with want_token also the token (KEK, DEK). Returns 0 or
 * the exit code after reporting. */
static int open_spool(const char *verb, const Config *cfg, bool want_token, bool include_payload,
                      Token **ret_tok, Spool **ret_spool)
{
    Token *tok = NULL;
    if (want_token) {
        int ec = cli_open_token(verb, cfg, true, &tok);
        if (ec != 0)
            return ec;
    }
    SpoolOptions opt = {
        .path = cfg->spool_db,
        .installation_id = cfg->installation_id,
        .include_payload = include_payload,
        .quota_items = cfg->quota_items,
        .quota_bytes = cfg->quota_bytes,
    };
    lv_error_clear();
    int r = spool_open(&opt, tok, ret_spool);
    if (r < 0) {
        token_close(tok);
        return cli_fail(verb, r);
    }
    *ret_tok = tok;
    return 0;
}

static void print_time_member(cJSON *o, const char *name, int64_t ms)
{
    if (ms <= 0) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    char t[32];
    lv_format_time(ms, t);
    cJSON_AddStringToObject(o, name, t);
}

static void print_json(const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (s) {
        puts(s);
        free(s);
    }
}

/* ---------- enqueue ---------- */

/* Lines of a file (read twice) or of standard input (held in memory). */
typedef struct Lines {
    int fd;
    struct stat st0;
    char *mem; /* whole input (stdin) or the line buffer (file) */
    size_t mem_len, mem_cap;
    size_t pos, end;
    bool eof, from_memory;
    size_t lineno;
} Lines;

static void lines_done(Lines *l)
{
    erase_and_free(l->mem, l->mem_cap);
    if (l->fd >= 0 && l->fd != STDIN_FILENO)
        close(l->fd);
    *l = (Lines){.fd = -1};
}

static int lines_open(const char *path, Lines *l)
{
    *l = (Lines){.fd = -1};
    if (strcmp(path, "-") != 0) {
        l->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (l->fd < 0)
            return lv_error_set(LV_ERR_INPUT, "--jsonl %s: %s", path, strerror(errno));
        if (fstat(l->fd, &l->st0) < 0)
            return lv_error_set(-errno, "--jsonl %s: %s", path, strerror(errno));
    }
    if (l->fd >= 0 && S_ISREG(l->st0.st_mode)) {
        l->mem_cap = LINE_MAX_BYTES + 1;
        l->mem = malloc(l->mem_cap);
        return l->mem ? 0 : -ENOMEM;
    }
    /* Standard input or a pipe: read it once into memory. */
    int in = l->fd >= 0 ? l->fd : STDIN_FILENO;
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (len > STDIN_MAX_BYTES) {
            erase_and_free(buf, cap);
            return lv_error_set(LV_ERR_TOOBIG,
                                "--jsonl %s: more than %d bytes from a pipe; pass a regular file",
                                path, STDIN_MAX_BYTES);
        }
        if (len == cap) {
            char *nb = malloc(cap * 2);
            if (!nb) {
                erase_and_free(buf, cap);
                return -ENOMEM;
            }
            memcpy(nb, buf, len);
            erase_and_free(buf, cap);
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(in, buf + len, cap - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int e = errno;
            erase_and_free(buf, cap);
            return lv_error_set(-e, "--jsonl %s: %s", path, strerror(e));
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    l->mem = buf;
    l->mem_len = len;
    l->mem_cap = cap;
    l->from_memory = true;
    return 0;
}

/* Rewinds for the second pass; a file that changed in between is refused. */
static int lines_rewind(Lines *l, const char *path)
{
    l->pos = l->end = 0;
    l->eof = false;
    l->lineno = 0;
    if (l->from_memory)
        return 0;
    struct stat st;
    if (fstat(l->fd, &st) < 0 || st.st_size != l->st0.st_size ||
        st.st_mtim.tv_sec != l->st0.st_mtim.tv_sec || st.st_mtim.tv_nsec != l->st0.st_mtim.tv_nsec)
        return lv_error_set(-ESTALE, "--jsonl %s: the file changed while it was read", path);
    if (lseek(l->fd, 0, SEEK_SET) < 0)
        return lv_error_set(-errno, "--jsonl %s: %s", path, strerror(errno));
    return 0;
}

/* Next line (without its newline). 1: a line; 0: end; <0: error (a line
 * over LINE_MAX_BYTES is LV_ERR_TOOBIG, naming the payload). */
static int lines_next(Lines *l, const char **ret, size_t *ret_len)
{
    if (l->from_memory) {
        if (l->pos >= l->mem_len)
            return 0;
        const char *s = l->mem + l->pos;
        const char *nl = memchr(s, '\n', l->mem_len - l->pos);
        size_t n = nl ? (size_t)(nl - s) : l->mem_len - l->pos;
        l->pos += n + (nl ? 1 : 0);
        l->lineno++;
        if (n > LINE_MAX_BYTES)
            return lv_error_set(LV_ERR_TOOBIG,
                                "payload: the line is %zu bytes, over the payload limit of %d "
                                "bytes",
                                n, SPOOL_MAX_PAYLOAD);
        *ret = s;
        *ret_len = n;
        return 1;
    }
    for (bool skipping = false;;) {
        char *nl = memchr(l->mem + l->pos, '\n', l->end - l->pos);
        if (nl && !skipping) {
            *ret = l->mem + l->pos;
            *ret_len = (size_t)(nl - (l->mem + l->pos));
            l->pos = (size_t)(nl - l->mem) + 1;
            l->lineno++;
            return 1;
        }
        if (nl && skipping) {
            l->pos = (size_t)(nl - l->mem) + 1;
            l->lineno++;
            return lv_error_set(LV_ERR_TOOBIG,
                                "payload: the line is over %d bytes, over the payload limit of "
                                "%d bytes",
                                LINE_MAX_BYTES, SPOOL_MAX_PAYLOAD);
        }
        if (l->eof) {
            if (l->pos == l->end)
                return skipping ? (l->lineno++, lv_error_set(LV_ERR_TOOBIG,
                                                             "payload: the line is over %d "
                                                             "bytes, over the payload limit of "
                                                             "%d bytes",
                                                             LINE_MAX_BYTES, SPOOL_MAX_PAYLOAD))
                                : 0;
            *ret = l->mem + l->pos;
            *ret_len = l->end - l->pos;
            l->pos = l->end;
            l->lineno++;
            return 1;
        }
        if (l->end - l->pos >= LINE_MAX_BYTES) {
            /* Drop what we have of the over-long line; keep reading to its end. */
            skipping = true;
            l->pos = l->end = 0;
        } else if (l->pos > 0) {
            memmove(l->mem, l->mem + l->pos, l->end - l->pos);
            l->end -= l->pos;
            l->pos = 0;
        }
        ssize_t k = read(l->fd, l->mem + l->end, l->mem_cap - 1 - l->end);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return lv_error_set(-errno, "--jsonl: read: %s", strerror(errno));
        }
        if (k == 0)
            l->eof = true;
        l->end += (size_t)k;
    }
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r", s[i]))
            return false;
    return true;
}

static void print_result(const SpoolEnqueueResult *res, bool human)
{
    if (human)
        printf("%-9s %s  envelope %s\n", spool_enqueue_status_name(res->status), res->event_id,
               res->envelope_hash);
    else
        printf("{\"event_id\":\"%s\",\"status\":\"%s\",\"envelope_hash\":\"%s\"}\n", res->event_id,
               spool_enqueue_status_name(res->status), res->envelope_hash);
}

/* Items of the groups handed to the spool in one call (the spool commits
 * them SPOOL_BATCH_GROUP at a time while it signs ahead), their strings and
 * payloads copied out of the line buffer (which the next read reuses). */
#define GROUP_ITEMS (SPOOL_BATCH_GROUP * SPOOL_PIPELINE_GROUPS)
typedef struct Group {
    SpoolItemIn items[GROUP_ITEMS];
    SpoolItemLine lines[GROUP_ITEMS];
    char *payloads[GROUP_ITEMS];
    SpoolEnqueueResult results[GROUP_ITEMS];
    size_t n, bytes;
    size_t *conflicts;
    size_t reported, total; /* items reported before this call; in the batch */
    bool show;              /* the progress counter */
} Group;

static void group_clear(Group *g)
{
    for (size_t i = 0; i < g->n; i++) {
        spool_item_line_done(&g->lines[i]);
        erase_and_free(g->payloads[i], g->items[i].payload_len);
    }
    g->n = g->bytes = 0;
}

static void progress(size_t done, size_t total, bool final)
{
    fprintf(stderr, "\renqueue: %zu/%zu items (%zu%%)", done, total,
            total ? done * 100 / total : 100);
    if (final)
        fputc('\n', stderr);
}

/* Called by the spool after each group's COMMIT. */
static int group_committed(void *userdata, size_t first, size_t count)
{
    Group *g = userdata;
    for (size_t i = first; i < first + count; i++) {
        print_result(&g->results[i], false);
        if (g->results[i].status == SPOOL_CONFLICT)
            (*g->conflicts)++;
    }
    /* Results of a committed group reach the caller before the next one
     * writes: after a crash, what was printed is what was stored. */
    fflush(stdout);
    if (g->show)
        progress(g->reported + first + count, g->total, false);
    return 0;
}

static int group_flush(Spool *s, Group *g, size_t *conflicts)
{
    if (g->n == 0)
        return 0;
    g->conflicts = conflicts;
    int r = spool_enqueue_groups(s, g->items, g->n, g->results, group_committed, g);
    group_clear(g);
    return r;
}

static int enqueue_batch(const char *verb, const Config *cfg, const char *path,
                         bool include_payload)
{
    Lines l;
    int r = lines_open(path, &l);
    if (r < 0) {
        lines_done(&l);
        return cli_fail(verb, r);
    }
    /* Pass 1: every line validated before anything is written. */
    size_t total = 0;
    const char *line;
    size_t len;
    while ((r = lines_next(&l, &line, &len)) > 0) {
        if (blank(line, len))
            continue;
        SpoolItemLine it;
        r = spool_item_parse_line(line, len, &it);
        if (r >= 0) {
            SpoolItemIn in = {.stream_id = it.stream_id,
                              .source_ref = it.source_ref,
                              .event_type = it.event_type,
                              .payload = it.payload,
                              .payload_len = it.payload_len};
            r = spool_item_check(&in, NULL, NULL);
            spool_item_line_done(&it);
        }
        if (r < 0)
            break;
        total++;
    }
    if (r < 0) {
        fprintf(stderr, "%s: line %zu: %s\n", verb, l.lineno, lv_error());
        lines_done(&l);
        return lv_exit_code(r);
    }
    r = lines_rewind(&l, path);
    if (r < 0) {
        lines_done(&l);
        return cli_fail(verb, r);
    }

    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, true, include_payload, &tok, &s);
    if (ec != 0) {
        lines_done(&l);
        return ec;
    }
    Group *g = calloc(1, sizeof(*g));
    bool show = total >= PROGRESS_MIN && isatty(STDERR_FILENO);
    size_t done = 0, conflicts = 0;
    r = g ? 0 : -ENOMEM;
    if (g) {
        g->total = total;
        g->show = show;
    }
    while (r >= 0 && (r = lines_next(&l, &line, &len)) > 0) {
        if (blank(line, len))
            continue;
        SpoolItemLine *it = &g->lines[g->n];
        r = spool_item_parse_line(line, len, it);
        if (r < 0) {
            /* Pass 1 accepted this line: the input changed under us. */
            r = lv_error_set(-ESTALE, "line %zu: %s (the input changed while it was read)",
                             l.lineno, lv_error());
            break;
        }
        char *payload = malloc(it->payload_len);
        if (!payload) {
            spool_item_line_done(it);
            r = -ENOMEM;
            break;
        }
        memcpy(payload, it->payload, it->payload_len);
        g->payloads[g->n] = payload;
        g->items[g->n] = (SpoolItemIn){.stream_id = it->stream_id,
                                       .source_ref = it->source_ref,
                                       .event_type = it->event_type,
                                       .payload = payload,
                                       .payload_len = it->payload_len};
        g->bytes += it->payload_len;
        g->n++;
        if (g->n == GROUP_ITEMS || g->bytes >= GROUP_MAX_BYTES) {
            g->reported = done;
            done += g->n;
            r = group_flush(s, g, &conflicts);
        }
    }
    if (r >= 0) {
        g->reported = done;
        done += g->n;
        r = group_flush(s, g, &conflicts);
        if (show)
            progress(done, total, true);
    }
    if (g) {
        group_clear(g);
        free(g);
    }
    lines_done(&l);
    spool_close(s);
    token_close(tok);
    if (r < 0) {
        if (show)
            fputc('\n', stderr);
        return cli_fail(verb, r);
    }
    if (conflicts) {
        fprintf(stderr,
                "%s: %zu item(s) conflict with stored items of the same source_ref; "
                "the stored items are unchanged\n",
                verb, conflicts);
        return LV_EXIT_CONFLICT;
    }
    return LV_EXIT_OK;
}

int enqueue_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    const char *stream_id = NULL, *source_ref = NULL, *event_type = NULL, *payload_file = NULL,
               *jsonl = NULL;
    bool include_payload = false;
    static const struct option opts[] = {
        {"stream-id", required_argument, NULL, 's'},
        {"source-ref", required_argument, NULL, 'r'},
        {"event-type", required_argument, NULL, 't'},
        {"payload-file", required_argument, NULL, 'p'},
        {"jsonl", required_argument, NULL, 'j'},
        {"include-payload", no_argument, NULL, 'I'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        switch (c) {
        case 's':
            stream_id = optarg;
            break;
        case 'r':
            source_ref = optarg;
            break;
        case 't':
            event_type = optarg;
            break;
        case 'p':
            payload_file = optarg;
            break;
        case 'j':
            jsonl = optarg;
            break;
        case 'I':
            include_payload = true;
            break;
        case 'h':
            printf("Usage: %s --stream-id ID --source-ref REF [--event-type T] "
                   "[--payload-file F|-] [--include-payload]\n"
                   "       %s --jsonl F|- [--include-payload]\n",
                   verb, verb);
            return LV_EXIT_OK;
        default:
            return bad_option(verb, argv);
        }
    }
    if (optind < argc)
        return usage_error(verb, "%s: unexpected argument", argv[optind]);
    lv_error_clear();
    int r = config_require_installation_id(cfg);
    if (r < 0)
        return cli_fail(verb, r);
    if (jsonl) {
        if (stream_id || source_ref || event_type || payload_file)
            return usage_error(verb, "--jsonl: the item options come from each line, not flags");
        return enqueue_batch(verb, cfg, jsonl, include_payload);
    }
    if (!stream_id)
        return usage_error(verb, "stream_id: missing (--stream-id, or --jsonl)");
    if (!source_ref)
        return usage_error(verb, "source_ref: missing (--source-ref)");

    /* No payload file: an empty object, the attestation being the reference
     * itself. */
    _cleanup_free_ char *raw = NULL;
    size_t raw_len = 2;
    if (payload_file) {
        r = lv_read_file(payload_file, SPOOL_MAX_PAYLOAD, &raw, &raw_len);
        if (r == LV_ERR_TOOBIG)
            return cli_fail(verb,
                            lv_error_set(LV_ERR_TOOBIG, "payload: %s is over the limit of %d bytes",
                                         payload_file, SPOOL_MAX_PAYLOAD));
        if (r < 0)
            return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "payload: %s", lv_error()));
    } else {
        raw = strdup("{}");
        if (!raw)
            return cli_fail(verb, -ENOMEM);
    }
    SpoolItemIn in = {.stream_id = stream_id,
                      .source_ref = source_ref,
                      .event_type = event_type,
                      .payload = raw,
                      .payload_len = raw_len};
    r = spool_item_check(&in, NULL, NULL);
    if (r < 0) {
        explicit_bzero(raw, raw_len);
        return cli_fail(verb, r);
    }
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, true, include_payload, &tok, &s);
    if (ec != 0) {
        explicit_bzero(raw, raw_len);
        return ec;
    }
    SpoolEnqueueResult res;
    r = spool_enqueue(s, &in, 1, &res);
    explicit_bzero(raw, raw_len);
    spool_close(s);
    token_close(tok);
    if (r < 0)
        return cli_fail(verb, r);
    print_result(&res, cli_human(cfg));
    if (res.status == SPOOL_CONFLICT) {
        fprintf(stderr,
                "%s: %s: conflicts with the stored item of this source_ref (different payload, "
                "event type or stream); the stored item is unchanged\n",
                verb, res.event_id);
        return LV_EXIT_CONFLICT;
    }
    return LV_EXIT_OK;
}

/* ---------- status ---------- */

static bool want_json(const Config *cfg, bool json_flag)
{
    return json_flag || !cli_human(cfg);
}

int status_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    bool json = false;
    static const struct option opts[] = {{"json", no_argument, NULL, 'J'}, HELP_OPTION, {0}};
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        if (c == 'h')
            return print_help(status_usage);
        if (c != 'J')
            return bad_option(verb, argv);
        json = true;
    }
    if (optind < argc)
        return usage_error(verb, "%s: unexpected argument", argv[optind]);
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, false, false, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolStats st;
    SpoolUsage use;
    SpoolItemInfo *q = NULL;
    size_t nq = 0;
    int r = spool_stats(s, &st);
    if (r >= 0)
        r = spool_usage(s, &use);
    if (r >= 0 && st.quarantined > 0)
        r = spool_list(s, "quarantined", NULL, 0, 10, &q, &nq);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    int64_t now = lv_now_ms();
    if (want_json(cfg, json)) {
        _cleanup_cjson_ cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "spool", cfg->spool_db);
        cJSON *counts = cJSON_AddObjectToObject(o, "counts");
        cJSON_AddNumberToObject(counts, "queued", (double)st.queued);
        cJSON_AddNumberToObject(counts, "relaying", (double)st.relaying);
        cJSON_AddNumberToObject(counts, "receipted", (double)st.receipted);
        cJSON_AddNumberToObject(counts, "dead_letter", (double)st.dead_letter);
        cJSON_AddNumberToObject(counts, "quarantined", (double)st.quarantined);
        cJSON_AddNumberToObject(o, "conflicts", (double)st.conflicts);
        print_time_member(o, "oldest_queued_at", st.oldest_queued_ms);
        if (st.oldest_queued_ms > 0)
            cJSON_AddNumberToObject(o, "oldest_queued_age_s",
                                    (double)((now - st.oldest_queued_ms) / 1000));
        else
            cJSON_AddNullToObject(o, "oldest_queued_age_s");
        print_time_member(o, "next_attempt_at", st.next_due_ms);
        if (st.last_error[0])
            cJSON_AddStringToObject(o, "last_error", st.last_error);
        else
            cJSON_AddNullToObject(o, "last_error");
        print_time_member(o, "paused_until", st.paused_until_ms);
        if (st.paused_until_ms > 0)
            cJSON_AddStringToObject(o, "pause_reason", st.pause_reason);
        else
            cJSON_AddNullToObject(o, "pause_reason");
        cJSON *quota = cJSON_AddObjectToObject(o, "quota");
        cJSON_AddNumberToObject(quota, "items", (double)use.items);
        cJSON_AddNumberToObject(quota, "bytes", (double)use.bytes);
        if (use.quota_items)
            cJSON_AddNumberToObject(quota, "max_items", (double)use.quota_items);
        else
            cJSON_AddNullToObject(quota, "max_items");
        if (use.quota_bytes)
            cJSON_AddNumberToObject(quota, "max_bytes", (double)use.quota_bytes);
        else
            cJSON_AddNullToObject(quota, "max_bytes");
        cJSON *qa = cJSON_AddArrayToObject(o, "quarantined_items");
        for (size_t i = 0; i < nq; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "event_id", q[i].event_id);
            cJSON_AddStringToObject(e, "reason", q[i].last_error ? q[i].last_error : "");
            cJSON_AddItemToArray(qa, e);
        }
        print_json(o);
    } else {
        printf("spool:        %s\n", cfg->spool_db);
        printf("queued:       %lld\n", (long long)st.queued);
        printf("relaying:     %lld\n", (long long)st.relaying);
        printf("receipted:    %lld\n", (long long)st.receipted);
        printf("dead_letter:  %lld\n", (long long)st.dead_letter);
        printf("quarantined:  %lld\n", (long long)st.quarantined);
        printf("conflicts:    %lld\n", (long long)st.conflicts);
        char mi[24] = "unlimited", mb[24] = "unlimited";
        if (use.quota_items)
            snprintf(mi, sizeof(mi), "%lld", (long long)use.quota_items);
        if (use.quota_bytes)
            snprintf(mb, sizeof(mb), "%lld", (long long)use.quota_bytes);
        printf("quota:        %lld of %s items, %lld of %s bytes (not yet delivered)\n",
               (long long)use.items, mi, (long long)use.bytes, mb);
        if (st.oldest_queued_ms > 0) {
            char t[32];
            lv_format_time(st.oldest_queued_ms, t);
            printf("oldest queued: %s (%lld s ago)\n", t,
                   (long long)((now - st.oldest_queued_ms) / 1000));
        }
        if (st.next_due_ms > 0) {
            char t[32];
            lv_format_time(st.next_due_ms, t);
            printf("next attempt: %s\n", t);
        }
        printf("last error:   %s\n", st.last_error[0] ? st.last_error : "-");
        if (st.paused_until_ms > 0) {
            char t[32];
            lv_format_time(st.paused_until_ms, t);
            printf("drain paused: until %s (%s)\n", t, st.pause_reason);
        }
        for (size_t i = 0; i < nq; i++)
            printf("quarantined:  %s: %s\n", q[i].event_id, q[i].last_error ? q[i].last_error : "");
    }
    spool_item_infos_free(q, nq);
    return LV_EXIT_OK;
}

/* ---------- list, dead-letter list ---------- */

static cJSON *info_json(const SpoolItemInfo *it)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "seq", (double)it->id);
    cJSON_AddStringToObject(o, "event_id", it->event_id);
    cJSON_AddStringToObject(o, "stream_id", it->stream_id);
    cJSON_AddStringToObject(o, "source_ref", it->source_ref);
    cJSON_AddStringToObject(o, "event_type", it->event_type);
    cJSON_AddStringToObject(o, "state", it->state);
    cJSON_AddNumberToObject(o, "attempts", it->attempts);
    print_time_member(o, "enqueued_at", it->enqueued_ms);
    print_time_member(o, "next_attempt_at",
                      strcmp(it->state, "queued") == 0 ? it->next_attempt_ms : 0);
    print_time_member(o, "last_attempt_at", it->last_attempt_ms);
    print_time_member(o, "receipted_at", it->receipted_ms);
    if (it->last_error)
        cJSON_AddStringToObject(o, "last_error", it->last_error);
    else
        cJSON_AddNullToObject(o, "last_error");
    cJSON_AddStringToObject(o, "envelope_hash", it->envelope_hash);
    return o;
}

static int parse_limit(const char *verb, const char *v, size_t *ret)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || *end || n < 1 || n > LIST_MAX)
        return usage_error(verb, "--limit: %s: must be an integer from 1 to %d", v, LIST_MAX);
    *ret = (size_t)n;
    return 0;
}

static int list_items(const char *verb, const Config *cfg, const char *state, const char *stream_id,
                      int64_t after, size_t limit, bool json)
{
    if (state && !spool_valid_state(state))
        return usage_error(verb, "--state: %s: must be one of " SPOOL_STATE_NAMES, state);
    if (stream_id && !lv_valid_id(stream_id))
        return usage_error(verb, "--stream-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, false, false, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolItemInfo *items = NULL;
    size_t n = 0;
    int r = spool_list(s, state, stream_id, after, limit, &items, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    bool as_json = want_json(cfg, json);
    if (!as_json && n > 0)
        printf("%-8s %-12s %-4s %-20s %s\n", "SEQ", "STATE", "TRY", "ENQUEUED", "EVENT_ID");
    for (size_t i = 0; i < n; i++) {
        if (as_json) {
            _cleanup_cjson_ cJSON *o = info_json(&items[i]);
            print_json(o);
        } else {
            char t[32];
            lv_format_time(items[i].enqueued_ms, t);
            printf("%-8lld %-12s %-4d %-20s %s%s%s\n", (long long)items[i].id, items[i].state,
                   items[i].attempts, t, items[i].event_id, items[i].last_error ? "  " : "",
                   items[i].last_error ? items[i].last_error : "");
        }
    }
    if (!as_json && n == limit)
        printf("(more may follow: --after %lld)\n", (long long)items[n - 1].id);
    spool_item_infos_free(items, n);
    return LV_EXIT_OK;
}

int list_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0], *state = NULL, *stream_id = NULL;
    size_t limit = LIST_DEFAULT;
    int64_t after = 0;
    bool json = false;
    static const struct option opts[] = {
        {"state", required_argument, NULL, 's'},
        {"stream-id", required_argument, NULL, 'S'},
        {"limit", required_argument, NULL, 'l'},
        {"after", required_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'J'},
        HELP_OPTION,
        {0},
    };
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        switch (c) {
        case 's':
            state = optarg;
            break;
        case 'S':
            stream_id = optarg;
            break;
        case 'l':
            if (parse_limit(verb, optarg, &limit) != 0)
                return LV_EXIT_USAGE;
            break;
        case 'a': {
            char *end;
            errno = 0;
            after = strtoll(optarg, &end, 10);
            if (errno || *end || after < 0)
                return usage_error(verb, "--after: %s: must be a sequence number", optarg);
            break;
        }
        case 'J':
            json = true;
            break;
        case 'h':
            return print_help(list_usage);
        default:
            return bad_option(verb, argv);
        }
    }
    if (optind < argc)
        return usage_error(verb, "%s: unexpected argument", argv[optind]);
    return list_items(verb, cfg, state, stream_id, after, limit, json);
}

/* ---------- show ---------- */

int show_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    bool json = false, want_payload = false;
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'J'}, {"payload", no_argument, NULL, 'P'}, HELP_OPTION, {0}};
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        if (c == 'J')
            json = true;
        else if (c == 'P')
            want_payload = true;
        else if (c == 'h')
            return print_help(show_usage);
        else
            return bad_option(verb, argv);
    }
    if (optind + 1 != argc)
        return usage_error(verb, "usage: show EVENT_ID [--json] [--payload]");
    const char *event_id = argv[optind];
    if (strlen(event_id) >= ENVELOPE_EVENT_ID_MAX)
        return usage_error(verb, "EVENT_ID: longer than %d bytes", ENVELOPE_EVENT_ID_MAX - 1);

    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, want_payload, false, &tok, &s);
    if (ec != 0)
        return ec;
    SpoolItemInfo it;
    int r = spool_get(s, event_id, &it);
    if (r >= 0 && it.envelope_sealed && !it.envelope && !tok) {
        /* The envelope carries the opt-in payload and is sealed: it takes
         * the token to show it. */
        spool_item_info_done(&it);
        spool_close(s);
        ec = open_spool(verb, cfg, true, false, &tok, &s);
        if (ec != 0)
            return ec;
        r = spool_get(s, event_id, &it);
    }
    char *payload = NULL;
    size_t payload_len = 0;
    if (r >= 0 && want_payload) {
        r = spool_payload(s, event_id, &payload, &payload_len);
        if (r < 0)
            spool_item_info_done(&it);
    }
    spool_close(s);
    token_close(tok);
    if (r < 0)
        return cli_fail(verb, r);

    cJSON *o = info_json(&it);
    cJSON_AddStringToObject(o, "payload_hash", it.payload_hash);
    if (strcmp(it.state, "relaying") == 0) {
        cJSON *lease = cJSON_AddObjectToObject(o, "lease");
        cJSON_AddStringToObject(lease, "owner", it.lease_owner);
        print_time_member(lease, "expires_at", it.lease_expires_ms);
    } else {
        cJSON_AddNullToObject(o, "lease");
    }
    cJSON_AddNumberToObject(o, "conflicts", (double)it.conflicts);
    cJSON_AddBoolToObject(o, "envelope_sealed", it.envelope_sealed);
    cJSON *env = it.envelope ? cJSON_ParseWithLength(it.envelope, it.envelope_len) : NULL;
    cJSON_AddItemToObject(o, "envelope", env ? env : cJSON_CreateNull());
    cJSON *rc = it.receipt ? cJSON_Parse(it.receipt) : NULL;
    cJSON_AddItemToObject(o, "receipt", rc ? rc : cJSON_CreateNull());
    if (want_payload) {
        cJSON *p = cJSON_ParseWithLength(payload, payload_len);
        cJSON_AddItemToObject(o, "payload", p ? p : cJSON_CreateNull());
    }
    char *text = want_json(cfg, json) ? cJSON_PrintUnformatted(o) : cJSON_Print(o);
    if (text) {
        puts(text);
        erase_and_free(text, strlen(text));
    }
    /* The tree may hold plaintext (the payload, an opt-in envelope). */
    envelope_json_erase(o);
    erase_and_free(payload, payload_len);
    spool_item_info_done(&it);
    return LV_EXIT_OK;
}

/* ---------- dead-letter, purge ---------- */

int dead_letter_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = "dead-letter";
    if (argc < 2)
        return usage_error(verb, "usage: dead-letter list [--limit N] [--stream-id S] | "
                                 "dead-letter requeue (EVENT_ID|--all)");
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 ||
        (argc == 3 && strcmp(argv[2], "--help") == 0 && strcmp(sub, "requeue") == 0))
        return print_help(dead_letter_usage);
    if (strcmp(sub, "list") == 0) {
        const char *stream_id = NULL;
        size_t limit = LIST_DEFAULT;
        int64_t after = 0;
        bool json = false;
        static const struct option opts[] = {{"stream-id", required_argument, NULL, 'S'},
                                             {"limit", required_argument, NULL, 'l'},
                                             {"after", required_argument, NULL, 'a'},
                                             {"json", no_argument, NULL, 'J'},
                                             HELP_OPTION,
                                             {0}};
        optind = 0;
        int c;
        while ((c = VERB_GETOPT(argc - 1, argv + 1, "", opts)) != -1) {
            if (c == 'S')
                stream_id = optarg;
            else if (c == 'l') {
                if (parse_limit(verb, optarg, &limit) != 0)
                    return LV_EXIT_USAGE;
            } else if (c == 'a') {
                char *end;
                errno = 0;
                after = strtoll(optarg, &end, 10);
                if (errno || *end || after < 0)
                    return usage_error(verb, "--after: %s: must be a sequence number", optarg);
            } else if (c == 'J')
                json = true;
            else if (c == 'h')
                return print_help(dead_letter_usage);
            else
                return bad_option(verb, argv + 1);
        }
        if (optind < argc - 1)
            return usage_error(verb, "%s: unexpected argument", argv[optind + 1]);
        return list_items(verb, cfg, "dead_letter", stream_id, after, limit, json);
    }
    if (strcmp(sub, "requeue") == 0) {
        if (argc != 3)
            return usage_error(verb, "usage: dead-letter requeue (EVENT_ID|--all)");
        const char *target = argv[2];
        bool all = strcmp(target, "--all") == 0;
        if (!all && (target[0] == '-' || strlen(target) >= ENVELOPE_EVENT_ID_MAX))
            return usage_error(verb, "requeue: %s: expected an event id or --all", target);
        Token *tok = NULL;
        Spool *s = NULL;
        int ec = open_spool(verb, cfg, false, false, &tok, &s);
        if (ec != 0)
            return ec;
        size_t n = 0;
        int r = spool_requeue(s, all ? NULL : target, &n);
        spool_close(s);
        if (r < 0)
            return cli_fail(verb, r);
        if (cli_human(cfg))
            printf("requeued %zu item(s)\n", n);
        else
            printf("{\"requeued\":%zu}\n", n);
        return LV_EXIT_OK;
    }
    return usage_error(verb, "%s: unknown subcommand (list, requeue)", sub);
}

int purge_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0], *before = NULL;
    static const struct option opts[] = {
        {"receipted-before", required_argument, NULL, 'b'}, HELP_OPTION, {0}};
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        if (c == 'h')
            return print_help(purge_usage);
        if (c != 'b')
            return bad_option(verb, argv);
        before = optarg;
    }
    if (optind < argc)
        return usage_error(verb, "%s: unexpected argument", argv[optind]);
    int64_t ms;
    if (!before)
        return usage_error(verb, "--receipted-before: missing (YYYY-MM-DD or "
                                 "YYYY-MM-DDTHH:MM:SSZ)");
    if (lv_parse_time(before, &ms) < 0)
        return usage_error(verb,
                           "--receipted-before: %s: must be YYYY-MM-DD or "
                           "YYYY-MM-DDTHH:MM:SSZ",
                           before);
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = open_spool(verb, cfg, false, false, &tok, &s);
    if (ec != 0)
        return ec;
    size_t n = 0;
    int r = spool_purge(s, ms, &n);
    spool_close(s);
    if (r < 0)
        return cli_fail(verb, r);
    if (cli_human(cfg))
        printf("purged %zu receipted item(s)\n", n);
    else
        printf("{\"purged\":%zu}\n", n);
    return LV_EXIT_OK;
}

/* ---------- verify ---------- */

/* One kind of signed document verify understands: match() looks at the
 * shape, check() verifies the exact bytes and describes the document in
 * ret (members added to the output object). Witness documents join this
 * table from witness.h. */
typedef struct DocKind {
    const char *name;
    bool (*match)(const cJSON *doc);
    int (*check)(const char *text, size_t len, const uint8_t pk[32], cJSON *ret);
} DocKind;

static bool envelope_match(const cJSON *doc)
{
    return cJSON_GetObjectItemCaseSensitive(doc, "envelope_version") != NULL ||
           cJSON_GetObjectItemCaseSensitive(doc, "local_signature") != NULL;
}

static int envelope_check(const char *text, size_t len, const uint8_t pk[32], cJSON *ret)
{
    int r = envelope_verify(text, len, pk);
    if (r < 0)
        return r;
    EnvelopeFields f;
    r = envelope_fields(text, len, &f);
    if (r < 0)
        return r;
    char h[65];
    lv_sha256_hex(text, len, h);
    cJSON_AddStringToObject(ret, "event_id", f.event_id);
    cJSON_AddStringToObject(ret, "stream_id", f.stream_id);
    cJSON_AddStringToObject(ret, "kid", f.kid);
    cJSON_AddStringToObject(ret, "envelope_hash", h);
    return 0;
}

static const DocKind doc_kinds[] = {
    {"relay_envelope", envelope_match, envelope_check},
    {"witness_receipt", witness_receipt_match, witness_verify_check},
    {"fork_evidence", witness_fork_match, witness_verify_check},
};

static int read_public_key(const char *arg, uint8_t pk[32])
{
    if (pubkey_parse(arg, pk) >= 0)
        return 0;
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = lv_read_file(arg, 64 * 1024, &text, &len);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: neither 64 hex digits nor a readable PEM file", arg);
    r = pubkey_parse(text, pk);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: not an Ed25519 public key (PEM "
                            "SubjectPublicKeyInfo or 64 hex digits)",
                            arg);
    return 0;
}

/* Keys for verify after a signing key rotation: each --public-key may be
 * repeated, and may be the JSON of `public-key` (current key and
 * "previous" ones, each with its kid). */
#define VERIFY_MAX_KEYS 32
typedef struct VerifyKey {
    char kid[129]; /* "" when the key came without one (hex, PEM) */
    uint8_t pk[32];
} VerifyKey;

static int add_json_key(const char *arg, const cJSON *o, VerifyKey *keys, size_t *n)
{
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(o, "public_key_hex");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(o, "kid");
    if (*n == VERIFY_MAX_KEYS)
        return lv_error_set(LV_ERR_INPUT, "--public-key: at most %d keys", VERIFY_MAX_KEYS);
    if (!cJSON_IsString(hex) || hex_decode(hex->valuestring, keys[*n].pk, 32) < 0 ||
        !cJSON_IsString(kid) || !lv_valid_id(kid->valuestring))
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: a key object needs public_key_hex (64 hex digits) "
                            "and kid",
                            arg);
    snprintf(keys[*n].kid, sizeof(keys[*n].kid), "%s", kid->valuestring);
    (*n)++;
    return 0;
}

static int read_public_keys(const char *arg, VerifyKey *keys, size_t *n)
{
    if (*n == VERIFY_MAX_KEYS)
        return lv_error_set(LV_ERR_INPUT, "--public-key: at most %d keys", VERIFY_MAX_KEYS);
    if (pubkey_parse(arg, keys[*n].pk) >= 0) {
        keys[(*n)++].kid[0] = '\0';
        return 0;
    }
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (lv_read_file(arg, 256 * 1024, &text, &len) < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: neither 64 hex digits nor a readable PEM or JSON "
                            "file",
                            arg);
    const char *p = text + strspn(text, " \t\r\n");
    if (*p == '{') {
        _cleanup_cjson_ cJSON *doc = cJSON_ParseWithLength(text, len);
        if (!cJSON_IsObject(doc))
            return lv_error_set(LV_ERR_INPUT, "--public-key: %s: not a JSON object", arg);
        int r = add_json_key(arg, doc, keys, n);
        const cJSON *prev = cJSON_GetObjectItemCaseSensitive(doc, "previous");
        if (r >= 0 && prev && !cJSON_IsArray(prev))
            r = lv_error_set(LV_ERR_INPUT, "--public-key: %s: previous: not an array", arg);
        for (const cJSON *k = prev ? prev->child : NULL; r >= 0 && k; k = k->next)
            r = add_json_key(arg, k, keys, n);
        return r;
    }
    int r = read_public_key(arg, keys[*n].pk);
    if (r < 0)
        return r;
    keys[(*n)++].kid[0] = '\0';
    return 0;
}

int verify_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0], *key_args[VERIFY_MAX_KEYS];
    size_t n_args = 0;
    bool json = false;
    static const struct option opts[] = {{"public-key", required_argument, NULL, 'k'},
                                         {"json", no_argument, NULL, 'J'},
                                         HELP_OPTION,
                                         {0}};
    optind = 0;
    int c;
    while ((c = VERB_GETOPT(argc, argv, "", opts)) != -1) {
        if (c == 'k') {
            if (n_args == VERIFY_MAX_KEYS)
                return usage_error(verb, "--public-key: at most %d", VERIFY_MAX_KEYS);
            key_args[n_args++] = optarg;
        } else if (c == 'J')
            json = true;
        else if (c == 'h')
            return print_help(verify_usage);
        else
            return bad_option(verb, argv);
    }
    if (optind + 1 != argc)
        return usage_error(verb, "usage: verify FILE|- --public-key HEX|PEMFILE|JSONFILE...");
    if (n_args == 0)
        return usage_error(verb, "--public-key: missing (64 hex digits, a PEM file, or the JSON "
                                 "of public-key)");
    lv_error_clear();
    VerifyKey keys[VERIFY_MAX_KEYS];
    size_t n_keys = 0;
    int r = 0;
    for (size_t i = 0; i < n_args && r >= 0; i++)
        r = read_public_keys(key_args[i], keys, &n_keys);
    if (r < 0)
        return cli_fail(verb, r);
    const char *path = argv[optind];
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    r = lv_read_file(path, ENVELOPE_MAX_BODY + 2, &text, &len);
    if (r < 0)
        return cli_fail(verb,
                        r == LV_ERR_TOOBIG ? r : lv_error_set(LV_ERR_INPUT, "%s", lv_error()));
    /* A saved body usually ends with a newline that is not part of it. */
    if (len && text[len - 1] == '\n')
        text[--len] = '\0';
    if (len && text[len - 1] == '\r')
        text[--len] = '\0';
    _cleanup_cjson_erase_ cJSON *doc = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(doc))
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "%s: not a JSON object", path));
    const DocKind *kind = NULL;
    for (size_t i = 0; i < ELEMENTSOF(doc_kinds) && !kind; i++)
        if (doc_kinds[i].match(doc))
            kind = &doc_kinds[i];
    if (!kind)
        return cli_fail(
            verb,
            lv_error_set(
                LV_ERR_INPUT,
                "%s: not a document verify knows (relay envelope, witness receipt, fork evidence)",
                path));
    _cleanup_cjson_ cJSON *out = cJSON_CreateObject();
    cJSON_AddBoolToObject(out, "valid", true);
    cJSON_AddStringToObject(out, "kind", kind->name);
    /* Each item verifies under its own kid: keys given with a kid are used
     * only for documents naming that kid; keys given without one are tried
     * for any. */
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(doc, "local_signature");
    const cJSON *dkid = sig ? cJSON_GetObjectItemCaseSensitive(sig, "kid") : NULL;
    const char *want = cJSON_IsString(dkid) ? dkid->valuestring : NULL;
    size_t tried = 0;
    r = LV_ERR_CRYPTO;
    for (size_t i = 0; i < n_keys; i++) {
        if (keys[i].kid[0] && want && strcmp(keys[i].kid, want) != 0)
            continue;
        tried++;
        lv_error_clear();
        r = kind->check(text, len, keys[i].pk, out);
        if (r != LV_ERR_CRYPTO)
            break;
    }
    if (tried == 0)
        return cli_fail(verb, lv_error_set(LV_ERR_CRYPTO,
                                           "local_signature.kid %s: none of the given public "
                                           "keys has this kid",
                                           want ? want : "(missing)"));
    if (r < 0)
        return cli_fail(verb, r);
    if (want_json(cfg, json)) {
        print_json(out);
    } else {
        printf("valid %s\n", kind->name);
        for (const cJSON *m = out->child; m; m = m->next)
            if (cJSON_IsString(m))
                printf("  %-14s %s\n", m->string, m->valuestring);
    }
    return LV_EXIT_OK;
}
