/* SPDX-License-Identifier: Apache-2.0 */
/* receipts export: proof bundles for an auditor (docs/protocol.md "Proof
 * bundles"), one JSON line per receipted item, written atomically. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bundle.h"
#include "canon.h"
#include "cli.h"
#include "lv.h"
#include "receipt.h"
#include "spool.h"

#define EXPORT_PAGE 500

typedef struct ExportArgs {
    const char *stream_id, *since, *out;
    bool json;
} ExportArgs;

static const CliOption export_options[] = {
    CLI_STRING_OPT("stream-id", "ID", ExportArgs, stream_id, "only the items of this stream"),
    CLI_STRING_OPT("since", "YYYY-MM-DD|YYYY-MM-DDTHH:MM:SSZ", ExportArgs, since,
                   "only items receipted at or after this time"),
    CLI_REQUIRED_OPT("out", "FILE", ExportArgs, out, "the bundle to write (must not exist)"),
    CLI_FLAG_OPT("json", ExportArgs, json, "JSON even on a terminal"),
    {0},
};

static const CliCommand export_command = {
    .name = "receipts export",
    .about = "Writes a proof bundle: per receipted item one JSON line with the envelope as\n"
             "sent, the receipt as received and the public keys that verify both (receiver\n"
             "keys from --receipt-keys-file); verify checks it (see verify --help).\n",
    .options = export_options,
};

/* The export's temporary file beside FILE: removed unless it became FILE. */
typedef struct Out {
    char tmp[4096];
    int fd;
} Out;

static void out_done(Out *o)
{
    if (o->fd >= 0)
        close(o->fd);
    if (o->tmp[0])
        unlink(o->tmp);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Makes the temporary (0600, O_EXCL: never through a link) in FILE's
 * directory, so that the final link is atomic. */
static int out_open(const char *path, Out *o)
{
    if (snprintf(o->tmp, sizeof(o->tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(o->tmp)) {
        o->tmp[0] = '\0';
        return lv_error_set(LV_ERR_INPUT, "--out: path too long");
    }
    o->fd = mkostemp(o->tmp, O_CLOEXEC);
    if (o->fd < 0) {
        int e = errno;
        o->tmp[0] = '\0';
        return lv_error_set(LV_ERR_INPUT, "--out: %s: cannot create a file beside it: %s", path,
                            strerror(e));
    }
    return 0;
}

/* fsync, then link (never replaces: EEXIST if FILE appeared meanwhile),
 * then the directory's fsync. */
static int out_commit(const char *path, Out *o)
{
    if (fsync(o->fd) < 0)
        return lv_error_set(-errno, "--out: %s: fsync: %s", path, strerror(errno));
    if (link(o->tmp, path) < 0) {
        int e = errno;
        if (e == EEXIST)
            return lv_error_set(
                LV_ERR_INPUT, "--out: %s: exists (receipts export never overwrites a file)", path);
        return lv_error_set(-e, "--out: %s: %s", path, strerror(e));
    }
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    _cleanup_close_ int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0)
        (void)fsync(dfd);
    return 0;
}

typedef struct Keys {
    SpoolKey *signing;
    size_t n_signing;
    ReceiptKeys *receiver; /* NULL: --receipt-keys-file not given */
} Keys;

/* The line of one item, with its keys, and why it cannot be checked with
 * them (NULL when it can). */
static int item_line(const Keys *k, const SpoolItemInfo *it, char **ret, size_t *ret_len,
                     bool *ret_flagged)
{
    EnvelopeFields f;
    int r = envelope_fields(it->envelope, it->envelope_len, &f);
    if (r < 0)
        return r;
    const char *unverifiable = NULL;
    BundleKey ek = {0}, rk = {0};
    bool has_ek = false, has_rk = false;
    for (size_t i = 0; i < k->n_signing && !has_ek; i++)
        if (strcmp(k->signing[i].kid, f.kid) == 0) {
            snprintf(ek.kid, sizeof(ek.kid), "%s", f.kid);
            memcpy(ek.pk, k->signing[i].pk, 32);
            has_ek = true;
        }
    if (!has_ek)
        unverifiable = "envelope_key_unknown";
    _cleanup_cjson_ cJSON *rc = cJSON_Parse(it->receipt);
    const cJSON *kid =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rc, "receipt"), "kid");
    if (cJSON_IsString(kid) && k->receiver && lv_valid_id(kid->valuestring) &&
        receipt_keys_find(k->receiver, kid->valuestring, rk.pk)) {
        snprintf(rk.kid, sizeof(rk.kid), "%s", kid->valuestring);
        has_rk = true;
    }
    if (!has_rk && !unverifiable)
        unverifiable = k->receiver ? "receipt_key_unknown" : "receipt_key_not_pinned";
    char *line = NULL;
    size_t len = 0;
    r = bundle_line_build(it->envelope, it->envelope_len, has_ek ? &ek : NULL, it->receipt,
                          strlen(it->receipt), has_rk ? &rk : NULL, unverifiable, &line, &len);
    if (r < 0)
        return r;
    if (!unverifiable) {
        /* A stored row that does not verify is flagged, not hidden. */
        lv_error_clear();
        if (bundle_line_check(line, len, NULL, NULL) < 0) {
            free(line);
            lv_error_clear();
            r = bundle_line_build(it->envelope, it->envelope_len, &ek, it->receipt,
                                  strlen(it->receipt), &rk, "does_not_verify", &line, &len);
            if (r < 0)
                return r;
            unverifiable = "does_not_verify";
        }
    }
    *ret = line;
    *ret_len = len;
    *ret_flagged = unverifiable != NULL;
    return 0;
}

typedef struct Count {
    size_t lines, flagged;
} Count;

/* Every receipted item of the filter into o->fd, in enqueue order. Reopens
 * the spool with the token on the first sealed envelope (opt-in payload). */
static int export_items(const char *verb, const Config *cfg, const ExportArgs *a, int64_t since,
                        const Keys *k, Spool **s, Token **tok, Out *o, Count *c, int *ret_ec)
{
    int64_t after = 0;
    for (;;) {
        SpoolItemInfo *items = NULL;
        size_t n = 0;
        int r = spool_list(*s, "receipted", a->stream_id, after, EXPORT_PAGE, &items, &n);
        if (r < 0)
            return r;
        for (size_t i = 0; i < n && r >= 0; i++) {
            after = items[i].id;
            if (items[i].receipted_ms < since)
                continue;
            SpoolItemInfo it;
            r = spool_get(*s, items[i].event_id, &it);
            if (r >= 0 && it.envelope_sealed && !it.envelope && !*tok) {
                spool_item_info_done(&it);
                spool_close(*s);
                *s = NULL;
                int ec = cli_open_spool(verb, cfg, &(CliSpool){.token = true}, tok, s);
                if (ec != 0) {
                    spool_item_infos_free(items, n);
                    *ret_ec = ec;
                    return -EIO;
                }
                r = spool_get(*s, items[i].event_id, &it);
            }
            if (r < 0)
                break;
            if (!it.envelope || !it.receipt) {
                r = lv_error_set(LV_ERR_CRYPTO, "%s: its envelope or receipt cannot be read",
                                 it.event_id);
                spool_item_info_done(&it);
                break;
            }
            char *line = NULL;
            size_t len = 0;
            bool flagged = false;
            r = item_line(k, &it, &line, &len, &flagged);
            spool_item_info_done(&it);
            if (r < 0)
                break;
            r = write_all(o->fd, line, len);
            if (r >= 0)
                r = write_all(o->fd, "\n", 1);
            erase_and_free(line, len);
            if (r < 0) {
                r = lv_error_set(r, "--out: write: %s", strerror(-r));
                break;
            }
            c->lines++;
            c->flagged += flagged;
        }
        spool_item_infos_free(items, n);
        if (r < 0)
            return r;
        if (n < EXPORT_PAGE)
            return 0;
    }
}

static int receipts_export(const Config *cfg, const ExportArgs *a)
{
    const char *verb = "receipts export";
    int64_t since = 0;
    if (a->since && lv_parse_time(a->since, &since) < 0)
        return cli_usage_error(verb, "--since: %s: must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ",
                               a->since);
    if (a->stream_id && !lv_valid_id(a->stream_id))
        return cli_usage_error(verb, "--stream-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    struct stat st;
    if (!a->out[0])
        return cli_usage_error(verb, "--out: must name a file");
    if (lstat(a->out, &st) == 0)
        return cli_usage_error(verb, "--out: %s: exists (receipts export never overwrites a file)",
                               a->out);
    Keys k = {0};
    if (cfg->receipt_keys_file) {
        lv_error_clear();
        int r = receipt_keys_load(cfg->receipt_keys_file, &k.receiver);
        if (r < 0)
            return cli_usage_error(verb, "--receipt-keys-file: %s", lv_error());
    }
    _cleanup_receipt_keys_ ReceiptKeys *receiver = k.receiver;
    Token *tok = NULL;
    Spool *s = NULL;
    int ec = cli_open_spool(verb, cfg, &(CliSpool){0}, &tok, &s);
    if (ec != 0)
        return ec;
    int r = 0;
    if (a->stream_id) {
        SpoolItemInfo *any = NULL;
        size_t n = 0;
        r = spool_list(s, NULL, a->stream_id, 0, 1, &any, &n);
        spool_item_infos_free(any, n);
        if (r >= 0 && n == 0) {
            spool_close(s);
            return cli_usage_error(verb, "--stream-id: %s: no item of this stream in the spool",
                                   a->stream_id);
        }
    }
    if (r >= 0) {
        r = spool_signing_keys(cfg->spool_db, &k.signing, &k.n_signing);
        if (r == -ENOENT)
            r = 0;
    }
    Out o = {.fd = -1};
    Count c = {0};
    ec = 0;
    if (r >= 0)
        r = out_open(a->out, &o);
    if (r >= 0)
        r = export_items(verb, cfg, a, since, &k, &s, &tok, &o, &c, &ec);
    if (r >= 0)
        r = out_commit(a->out, &o);
    out_done(&o);
    free(k.signing);
    spool_close(s);
    token_close(tok);
    if (ec != 0)
        return ec;
    if (r < 0)
        return cli_fail(verb, r);
    if (a->json || !cli_human(cfg)) {
        printf("{\"out\":");
        _cleanup_cjson_ cJSON *p = cJSON_CreateString(a->out);
        _cleanup_free_ char *ps = cJSON_PrintUnformatted(p);
        printf("%s,\"lines\":%zu,\"unverifiable\":%zu}\n", ps ? ps : "null", c.lines, c.flagged);
    } else {
        printf("wrote %zu line(s) to %s (%zu unverifiable with their own keys)\n", c.lines, a->out,
               c.flagged);
    }
    return LV_EXIT_OK;
}

int receipts_main(const Config *cfg, int argc, char **argv)
{
    static const CliCommand *const subs[] = {&export_command};
    ExportArgs a = {0};
    int i = 0;
    int k =
        cli_parse_subcommand("receipts", argc, argv, subs, ELEMENTSOF(subs), &i, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    return receipts_export(cfg, &a);
}
