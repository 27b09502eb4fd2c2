/* SPDX-License-Identifier: Apache-2.0 */
/* The spool's key rotation verbs: `spool deks`, `spool rotate-dek`,
 * `spool rekey` and `spool rewrap-kek` (docs/operations.md, "Key rotation"). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lv.h"
#include "spool.h"

typedef struct Args {
    bool json;
    int64_t batch;
    const char *new_kek;
} Args;

static const CliOption json_only_options[] = {
    CLI_FLAG_OPT("json", Args, json, "JSON even on a terminal"),
    {0},
};

static const CliOption rekey_options[] = {
    CLI_NUMBER_OPT("batch", "N", Args, batch, 1, 100000, "rows per transaction (256)"),
    CLI_FLAG_OPT("json", Args, json, "JSON even on a terminal"),
    {0},
};

static const CliOption rewrap_options[] = {
    CLI_REQUIRED_OPT("new-encryption-key", "URI", Args, new_kek, "the pkcs11: URI of the new KEK"),
    CLI_FLAG_OPT("json", Args, json, "JSON even on a terminal"),
    {0},
};

static const CliCommand deks_command = {
    .name = "spool deks",
    .about = "The spool's data keys: which is current, how many rows each seals.\n",
    .options = json_only_options,
};

static const CliCommand rotate_command = {
    .name = "spool rotate-dek",
    .about = "New rows are sealed with a new data key from now on.\n",
    .options = json_only_options,
};

static const CliCommand rekey_command = {
    .name = "spool rekey",
    .about = "Re-seals older rows with the current data key, in batches, and retires the\n"
             "keys no row needs.\n",
    .options = rekey_options,
};

static const CliCommand rewrap_command = {
    .name = "spool rewrap-kek",
    .about = "Wraps every data key under a new KEK (then set --encryption-key to it).\n",
    .options = rewrap_options,
};

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
        cli_print_json(o);
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
    static const CliCommand *const subs[] = {&deks_command, &rotate_command, &rekey_command,
                                             &rewrap_command};
    Args a = {.batch = SPOOL_BATCH_GROUP};
    int i = 0;
    int k = cli_parse_subcommand("spool", argc, argv, subs, ELEMENTSOF(subs), &i, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    const char *verb = subs[i]->name, *sub = argv[1];
    if (a.new_kek) {
        lv_error_clear();
        if (config_check_key_uri("--new-encryption-key", a.new_kek) < 0)
            return cli_usage_error(verb, "%s", lv_error());
    }
    bool human = cli_human(cfg) && !a.json;
    Token *tok = NULL;
    Spool *s = NULL;
    int code = cli_open_spool(verb, cfg, &(CliSpool){.token = true}, &tok, &s);
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
