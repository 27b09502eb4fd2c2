/* SPDX-License-Identifier: Apache-2.0 */
/* enqueue: one item from flags, or a batch from --jsonl read twice (every
 * line checked before anything is written), committed in groups. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "canon.h"
#include "cli.h"
#include "lv.h"
#include "spool.h"

/* A line holds one item: the payload cap plus room for the other members
 * and white space around them. */
#define LINE_MAX_BYTES (SPOOL_MAX_PAYLOAD + 64 * 1024)
/* Standard input cannot be read twice, so it is held in memory up to this. */
#define STDIN_MAX_BYTES (64 * 1024 * 1024)
/* A call to the spool (and so each group it commits) also closes when its
 * payloads reach this many bytes. */
#define GROUP_MAX_BYTES (8 * 1024 * 1024)
#define PROGRESS_MIN    1000

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
    int ec = cli_open_spool(
        verb, cfg, &(CliSpool){.token = true, .include_payload = include_payload}, &tok, &s);
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

typedef struct EnqueueArgs {
    const char *stream_id, *source_ref, *event_type, *payload_file, *jsonl;
    bool include_payload;
} EnqueueArgs;

static const CliOption enqueue_options[] = {
    CLI_STRING_OPT("stream-id", "ID", EnqueueArgs, stream_id, "the item's stream"),
    CLI_STRING_OPT("source-ref", "REF", EnqueueArgs, source_ref,
                   "the item's reference at its source (idempotency key)"),
    CLI_STRING_OPT("event-type", "TYPE", EnqueueArgs, event_type, "default source.attestation"),
    CLI_STRING_OPT("payload-file", "F|-", EnqueueArgs, payload_file,
                   "the payload, a JSON object (default {})"),
    CLI_STRING_OPT("jsonl", "F|-", EnqueueArgs, jsonl,
                   "a batch: one {stream_id, source_ref, event_type, payload} a line"),
    CLI_FLAG_OPT("include-payload", EnqueueArgs, include_payload,
                 "relay the payload inside the signed envelope (opt-in)"),
    {0},
};

static const CliCommand enqueue_command = {
    .name = "enqueue",
    .synopsis = "--stream-id ID --source-ref REF [--event-type TYPE]\n"
                "         [--payload-file F|-] [--include-payload]\n"
                "       attesto-local-vault [GLOBAL OPTIONS] enqueue --jsonl F|- "
                "[--include-payload]",
    .about = "Canonicalizes, signs (on the token), seals and stores attestations; prints one\n"
             "JSON result a line: queued, duplicate or conflict (exit 4).\n",
    .options = enqueue_options,
};

int enqueue_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    EnqueueArgs a = {0};
    int k = cli_parse(&enqueue_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    lv_error_clear();
    int r = config_require_installation_id(cfg);
    if (r < 0)
        return cli_fail(verb, r);
    if (a.jsonl) {
        if (a.stream_id || a.source_ref || a.event_type || a.payload_file)
            return cli_usage_error(verb,
                                   "--jsonl: the item options come from each line, not flags");
        return enqueue_batch(verb, cfg, a.jsonl, a.include_payload);
    }
    if (!a.stream_id)
        return cli_usage_error(verb, "stream_id: missing (--stream-id, or --jsonl)");
    if (!a.source_ref)
        return cli_usage_error(verb, "source_ref: missing (--source-ref)");
    const char *stream_id = a.stream_id, *source_ref = a.source_ref, *event_type = a.event_type,
               *payload_file = a.payload_file;

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
    int ec = cli_open_spool(
        verb, cfg, &(CliSpool){.token = true, .include_payload = a.include_payload}, &tok, &s);
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
