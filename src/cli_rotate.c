/* SPDX-License-Identifier: Apache-2.0 */
/* The spool's key rotation verbs: `spool deks`, `spool rotate-dek`,
 * `spool rekey` and `spool rewrap-kek` (docs/operations.md, "Key rotation"). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lv.h"
#include "spool.h"

static void usage(FILE *f)
{
    fprintf(f, "Usage: attesto-local-vault [GLOBAL OPTIONS] spool deks [--json]\n"
               "       attesto-local-vault [GLOBAL OPTIONS] spool rotate-dek [--json]\n"
               "       attesto-local-vault [GLOBAL OPTIONS] spool rekey [--batch N] [--json]\n"
               "       attesto-local-vault [GLOBAL OPTIONS] spool rewrap-kek "
               "--new-encryption-key URI [--json]\n"
               "rotate-dek: new rows are sealed with a new data key; rekey: re-seal older rows\n"
               "with it, in batches, and retire unused keys; rewrap-kek: wrap every data key\n"
               "under a new KEK (then set --encryption-key to it).\n");
}

typedef struct Args {
    bool json;
    long batch;
    const char *new_kek;
} Args;

/* Returns -1 after a usage error, 1 after --help, 0 otherwise. */
static int parse(const char *sub, int argc, char **argv, Args *a)
{
    enum { O_JSON = 256, O_BATCH, O_KEK, O_HELP };
    static const struct option opts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"batch", required_argument, NULL, O_BATCH},
        {"new-encryption-key", required_argument, NULL, O_KEK},
        {"help", no_argument, NULL, O_HELP},
        {0},
    };
    *a = (Args){.batch = SPOOL_BATCH_GROUP};
    optind = 1;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_JSON:
            a->json = true;
            break;
        case O_BATCH: {
            char *end;
            errno = 0;
            a->batch = strtol(optarg, &end, 10);
            if (errno || end == optarg || *end || a->batch < 1 || a->batch > 100000 ||
                strcmp(sub, "rekey") != 0) {
                fprintf(stderr, "spool %s: --batch: %s: %s\n", sub, optarg,
                        strcmp(sub, "rekey") != 0 ? "only for rekey"
                                                  : "must be an integer from 1 to 100000");
                return -1;
            }
            break;
        }
        case O_KEK:
            if (strcmp(sub, "rewrap-kek") != 0) {
                fprintf(stderr, "spool %s: --new-encryption-key: only for rewrap-kek\n", sub);
                return -1;
            }
            a->new_kek = optarg;
            break;
        case O_HELP:
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "spool %s: %s: unknown option or missing value (see --help)\n", sub,
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "spool %s: %s: unexpected argument\n", sub, argv[optind]);
        return -1;
    }
    if (strcmp(sub, "rewrap-kek") == 0) {
        if (!a->new_kek) {
            fprintf(stderr, "spool rewrap-kek: --new-encryption-key: required (the pkcs11: URI "
                            "of the new KEK)\n");
            return -1;
        }
        lv_error_clear();
        if (config_check_key_uri("--new-encryption-key", a->new_kek) < 0) {
            fprintf(stderr, "spool rewrap-kek: %s\n", lv_error());
            return -1;
        }
    }
    return 0;
}

static void print_json(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    if (s)
        printf("%s\n", s);
    free(s);
}

static int open_spool(const char *verb, const Config *cfg, Token **ret_tok, Spool **ret)
{
    int code = cli_open_token(verb, cfg, true, ret_tok);
    if (code != 0)
        return code;
    SpoolOptions so = {.path = cfg->spool_db, .installation_id = cfg->installation_id};
    lv_error_clear();
    int r = spool_open(&so, *ret_tok, ret);
    if (r < 0) {
        code = cli_fail(verb, r);
        *ret_tok = token_close(*ret_tok);
        return code;
    }
    return 0;
}

static int deks(const char *verb, Spool *s, bool human)
{
    SpoolDek *d = NULL;
    size_t n = 0;
    lv_error_clear();
    int r = spool_dek_list(s, &d, &n);
    if (r < 0)
        return cli_fail(verb, r);
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++) {
        char when[32];
        lv_format_time(d[i].created_ms, when);
        if (human)
            printf("DEK %lld%s  created %s  %lld row(s)\n", (long long)d[i].id,
                   d[i].current ? " (current)" : "", when, (long long)d[i].rows);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "id", (double)d[i].id);
        cJSON_AddBoolToObject(e, "current", d[i].current);
        cJSON_AddStringToObject(e, "created_at", when);
        cJSON_AddNumberToObject(e, "rows", (double)d[i].rows);
        cJSON_AddItemToArray(a, e);
    }
    if (!human) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "deks", a);
        print_json(o);
        cJSON_Delete(o);
    } else
        cJSON_Delete(a);
    free(d);
    return LV_EXIT_OK;
}

typedef struct Progress {
    bool human;
} Progress;

static void on_progress(void *userdata, int64_t done, int64_t total)
{
    Progress *p = userdata;
    /* Progress goes to stderr in both modes; stdout keeps the result. */
    if (p->human)
        fprintf(stderr, "\rrekey: %lld/%lld row(s)", (long long)done, (long long)total);
    else
        fprintf(stderr, "{\"rekey_progress\":{\"done\":%lld,\"total\":%lld}}\n", (long long)done,
                (long long)total);
}

int spool_main(const Config *cfg, int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "spool: missing subcommand (deks, rotate-dek, rekey, rewrap-kek)\n");
        return LV_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        usage(stdout);
        return LV_EXIT_OK;
    }
    if (strcmp(sub, "deks") != 0 && strcmp(sub, "rotate-dek") != 0 && strcmp(sub, "rekey") != 0 &&
        strcmp(sub, "rewrap-kek") != 0) {
        fprintf(stderr, "spool: %s: unknown subcommand (deks, rotate-dek, rekey, rewrap-kek)\n",
                sub);
        return LV_EXIT_USAGE;
    }
    char verb[64];
    snprintf(verb, sizeof(verb), "spool %s", sub);
    Args a;
    int k = parse(sub, argc - 1, argv + 1, &a);
    if (k != 0)
        return k > 0 ? LV_EXIT_OK : LV_EXIT_USAGE;
    bool human = cli_human(cfg) && !a.json;
    Token *tok = NULL;
    Spool *s = NULL;
    int code = open_spool(verb, cfg, &tok, &s);
    if (code != 0)
        return code;
    int r = 0;
    if (strcmp(sub, "deks") == 0) {
        code = deks(verb, s, human);
    } else if (strcmp(sub, "rotate-dek") == 0) {
        int64_t id = 0;
        lv_error_clear();
        r = spool_rotate_dek(s, &id);
        if (r < 0)
            code = cli_fail(verb, r);
        else if (human)
            printf("DEK %lld is current: new rows are sealed with it; run `spool rekey` to "
                   "re-seal the older rows\n",
                   (long long)id);
        else
            printf("{\"current_dek\":%lld}\n", (long long)id);
    } else if (strcmp(sub, "rekey") == 0) {
        Progress p = {.human = human};
        SpoolRekeyResult res;
        lv_error_clear();
        r = spool_rekey(s, (size_t)a.batch, on_progress, &p, &res);
        if (human)
            fputc('\n', stderr);
        if (r < 0)
            code = cli_fail(verb, r);
        else if (human)
            printf("re-sealed %lld row(s), %lld unreadable (left as they were), %lld DEK(s) "
                   "retired, %lld left\n",
                   (long long)res.rekeyed, (long long)res.unreadable, (long long)res.retired_deks,
                   (long long)res.deks_left);
        else
            printf("{\"rekeyed\":%lld,\"unreadable\":%lld,\"retired_deks\":%lld,"
                   "\"deks_left\":%lld}\n",
                   (long long)res.rekeyed, (long long)res.unreadable, (long long)res.retired_deks,
                   (long long)res.deks_left);
        /* Rows that would not open keep an old DEK alive: not a clean end. */
        if (r >= 0 && res.unreadable > 0)
            code = LV_EXIT_FAILURE;
    } else {
        size_t n = 0;
        lv_error_clear();
        r = spool_rewrap_kek(s, a.new_kek, &n);
        if (r < 0)
            code = cli_fail(verb, r);
        else if (human)
            printf("%zu DEK(s) rewrapped under %s; set --encryption-key "
                   "(ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY) to it now: the old KEK no longer opens "
                   "this spool\n",
                   n, a.new_kek);
        else
            printf("{\"rewrapped_deks\":%zu}\n", n);
    }
    spool_close(s);
    token_close(tok);
    return code;
}
