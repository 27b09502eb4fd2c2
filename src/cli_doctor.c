/* SPDX-License-Identifier: Apache-2.0 */
/* doctor: runs the configuration checks and prints a ✓/✗ table on a
 * terminal, JSON otherwise. Exit 0 when nothing failed, 1 when a check
 * failed, 2 on a usage error (docs/observability.md). */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "doctor.h"
#include "lv.h"

static void usage(FILE *f)
{
    fprintf(f, "Usage: attesto-local-vault [GLOBAL OPTIONS] doctor [--json]\n"
               "         [--connect-timeout-ms MS] [--timeout-ms MS]\n"
               "Checks, in turn: the PKCS#11 module, the token, the PIN (one login), the\n"
               "signing key and the KEK, the spool and witness databases (read-only,\n"
               "integrity_check), the spool DEK, the relay URL and one TLS + HTTP round\n"
               "trip to it (OPTIONS). Exit 0 when no check fails, 1 otherwise.\n");
}

static long parse_ms(const char *opt, const char *v, bool *ok)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < 100 || n > 600000) {
        fprintf(stderr, "doctor: --%s: %s: must be an integer from 100 to 600000\n", opt, v);
        *ok = false;
    }
    return n;
}

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

static int print_json(const DoctorReport *rep)
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
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) {
        fprintf(stderr, "doctor: out of memory\n");
        return -1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

int doctor_main(const Config *cfg, int argc, char **argv)
{
    enum { O_JSON = 256, O_CTIMEOUT, O_TIMEOUT, O_HELP };
    static const struct option opts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"connect-timeout-ms", required_argument, NULL, O_CTIMEOUT},
        {"timeout-ms", required_argument, NULL, O_TIMEOUT},
        {"help", no_argument, NULL, O_HELP},
        {0},
    };
    bool json = false, ok = true;
    long connect_ms = 5000, timeout_ms = 10000;
    optind = 1;
    opterr = 0;
    int o;
    while (ok && (o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_JSON:
            json = true;
            break;
        case O_CTIMEOUT:
            connect_ms = parse_ms("connect-timeout-ms", optarg, &ok);
            break;
        case O_TIMEOUT:
            timeout_ms = parse_ms("timeout-ms", optarg, &ok);
            break;
        case O_HELP:
            usage(stdout);
            return LV_EXIT_OK;
        default:
            fprintf(stderr, "doctor: %s: unknown option or missing value (see --help)\n",
                    argv[optind - 1]);
            return LV_EXIT_USAGE;
        }
    }
    if (!ok)
        return LV_EXIT_USAGE;
    if (optind < argc) {
        fprintf(stderr, "doctor: %s: unexpected argument\n", argv[optind]);
        return LV_EXIT_USAGE;
    }
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
    };
    cli_token_config(cfg, &dopt.token);
    DoctorReport rep;
    doctor_run(&dopt, &rep);
    if (cli_human(cfg) && !json)
        print_table(&rep);
    else if (print_json(&rep) < 0)
        return LV_EXIT_FAILURE;
    return doctor_ok(&rep) ? LV_EXIT_OK : LV_EXIT_FAILURE;
}
