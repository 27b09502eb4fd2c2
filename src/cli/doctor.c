/* SPDX-License-Identifier: Apache-2.0 */
/* doctor: runs the configuration checks and prints a ✓/✗ table on a
 * terminal, JSON otherwise. Exit 0 when nothing failed, 1 when a check
 * failed, 2 on a usage error (docs/observability.md). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "doctor.h"
#include "lv.h"

typedef struct DoctorArgs {
    bool json;
    int64_t connect_ms, timeout_ms;
} DoctorArgs;

static const CliOption doctor_options[] = {
    CLI_FLAG_OPT("json", DoctorArgs, json, "JSON even on a terminal"),
    CLI_NUMBER_OPT("connect-timeout-ms", "MS", DoctorArgs, connect_ms, 100, 600000,
                   "the relay probe's connect timeout (5000)"),
    CLI_NUMBER_OPT("timeout-ms", "MS", DoctorArgs, timeout_ms, 100, 600000,
                   "the relay probe's whole timeout (10000)"),
    {0},
};

static const CliCommand doctor_command = {
    .name = "doctor",
    .about = "Checks, in turn: the PKCS#11 module, the token, the PIN (one login), the\n"
             "signing key and the KEK, the spool and witness databases (read-only,\n"
             "integrity_check), the spool DEK, the relay URL and one TLS + HTTP round\n"
             "trip to it (OPTIONS), and the pinned receipt keys (a warning when none\n"
             "are pinned: receipts are then not verified). Exit 0 when no check\n"
             "fails, 1 otherwise.\n",
    .options = doctor_options,
};

static const char *mark(DoctorStatus st)
{
    switch (st) {
    case DOCTOR_PASS:
        return "✓";
    case DOCTOR_WARN:
        return "!";
    case DOCTOR_SKIP:
        return "-";
    default:
        return "✗";
    }
}

static void print_table(const DoctorReport *rep)
{
    for (size_t i = 0; i < rep->n; i++) {
        const DoctorCheck *c = &rep->checks[i];
        printf("%s %-22s %s\n", mark(c->status), c->title, c->detail);
    }
    size_t failed = 0, warned = 0;
    for (size_t i = 0; i < rep->n; i++) {
        failed += rep->checks[i].status == DOCTOR_FAIL;
        warned += rep->checks[i].status == DOCTOR_WARN;
    }
    if (failed)
        printf("\n%zu check(s) failed.\n", failed);
    else
        printf("\nAll checks passed%s.\n", warned ? " (see the warnings)" : "");
}

static bool print_report_json(const DoctorReport *rep)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", doctor_ok(rep));
    cJSON *a = cJSON_AddArrayToObject(o, "checks");
    for (size_t i = 0; a && i < rep->n; i++) {
        const DoctorCheck *c = &rep->checks[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", c->name);
        cJSON_AddStringToObject(e, "status", doctor_status_name(c->status));
        if (c->reason[0])
            cJSON_AddStringToObject(e, "reason", c->reason);
        cJSON_AddStringToObject(e, "detail", c->detail);
        cJSON_AddItemToArray(a, e);
    }
    bool ok = cli_print_json(o);
    cJSON_Delete(o);
    return ok;
}

int doctor_main(const Config *cfg, int argc, char **argv)
{
    DoctorArgs a = {.connect_ms = 5000, .timeout_ms = 10000};
    int k = cli_parse(&doctor_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    bool json = a.json;
    long connect_ms = (long)a.connect_ms, timeout_ms = (long)a.timeout_ms;
    DoctorOptions dopt = {
        .spool_db = cfg->spool_db,
        .witness_db = cfg->witness_db,
        .installation_id = cfg->installation_id,
        .relay =
            {
                .url = cfg->relay_url,
                .ca_file = cfg->ca_file,
                .pinned_public_key = cfg->pinned_public_key,
                .connect_timeout_ms = connect_ms,
                .timeout_ms = timeout_ms,
                .max_connections = 1,
            },
        .receipt_keys_file = cfg->receipt_keys_file,
        .relay_token_file = cfg->relay_token_file,
    };
    cli_token_config(cfg, &dopt.token);
    DoctorReport rep;
    doctor_run(&dopt, &rep);
    if (cli_human(cfg) && !json)
        print_table(&rep);
    else if (!print_report_json(&rep))
        return LV_EXIT_FAILURE;
    return doctor_ok(&rep) ? LV_EXIT_OK : LV_EXIT_FAILURE;
}
