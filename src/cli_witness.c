/* SPDX-License-Identifier: Apache-2.0 */
/* Witness verbs: witness-checkpoint, witness-serve, witness-forks. */
#include <inttypes.h>
#include <stdio.h>

#include "cli.h"
#include "httpd.h"
#include "lv.h"
#include "witness.h"

/* Flags of the form "--name VALUE" or "--name=VALUE". Returns 1 when argv[*i]
 * is the flag (with *ret set and *i advanced), 0 when it is not, or a
 * negative error when the value is missing or empty. */
static int flag_value(int argc, char **argv, int *i, const char *name, const char **ret)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    const char *v;
    if (a[n] == '=')
        v = a + n + 1;
    else if (a[n] == '\0') {
        if (*i + 1 >= argc)
            return lv_error_set(LV_ERR_INPUT, "%s: needs a value", name);
        v = argv[++*i];
    } else
        return 0;
    if (!*v)
        return lv_error_set(LV_ERR_INPUT, "%s: must not be empty", name);
    *ret = v;
    return 1;
}

static int parse_uint(const char *name, const char *v, uint64_t max, uint64_t *ret)
{
    /* Decimal digits only: no sign, no spaces, no leading zeros, no 0x. */
    size_t n = strlen(v);
    bool ok = n > 0 && n <= 20 && !(n > 1 && v[0] == '0');
    uint64_t x = 0;
    for (size_t i = 0; ok && i < n; i++) {
        if (v[i] < '0' || v[i] > '9' || x > (UINT64_MAX - 9) / 10)
            ok = false;
        else
            x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (!ok || x > max)
        return lv_error_set(LV_ERR_INPUT, "%s: must be a decimal integer from 0 to %" PRIu64, name,
                            max);
    *ret = x;
    return 0;
}

static int require_witness_id(const Config *cfg)
{
    if (!cfg->witness_id)
        return lv_error_set(
            LV_ERR_INPUT, "--witness-id: required (or ATTESTO_LOCAL_VAULT_WITNESS_ID; it defaults "
                          "to the installation id, --installation-id)");
    return 0;
}

static void checkpoint_usage(FILE *f)
{
    fprintf(f, "Usage: attesto-local-vault [GLOBAL OPTIONS] witness-checkpoint\n"
               "  --tenant-id ID --stream-id ID --checkpoint-id ID\n"
               "  --checkpoint-seq-no N --checkpoint-hash HEX64\n"
               "  [--previous-checkpoint-hash HEX64]  (required unless the stream is new)\n"
               "Prints the signed witness receipt or fork evidence (JSON).\n"
               "Exit: 0 accepted or replayed, 3 fork evidence, 6 gap, 2 bad input, 5 token.\n");
}

int witness_checkpoint_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    const char *tenant = NULL, *stream = NULL, *cid = NULL, *seq_s = NULL, *hash = NULL,
               *prev = NULL;
    struct {
        const char *name;
        const char **v;
    } flags[] = {
        {"--tenant-id", &tenant},     {"--stream-id", &stream},
        {"--checkpoint-id", &cid},    {"--checkpoint-seq-no", &seq_s},
        {"--checkpoint-hash", &hash}, {"--previous-checkpoint-hash", &prev},
    };
    lv_error_clear();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0) {
            checkpoint_usage(stdout);
            return LV_EXIT_OK;
        }
        int r = 0;
        for (size_t k = 0; k < ELEMENTSOF(flags) && r == 0; k++)
            r = flag_value(argc, argv, &i, flags[k].name, flags[k].v);
        if (r < 0)
            return cli_fail(verb, r);
        if (r == 0)
            return cli_fail(
                verb, lv_error_set(LV_ERR_INPUT, "%s: unknown argument (see --help)", argv[i]));
    }
    for (size_t k = 0; k < ELEMENTSOF(flags); k++)
        if (!*flags[k].v && flags[k].v != &prev)
            return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "%s: required", flags[k].name));
    uint64_t seq;
    int r = parse_uint("--checkpoint-seq-no", seq_s, WITNESS_MAX_SEQ, &seq);
    if (r < 0)
        return cli_fail(verb, r);
    WitnessRequest req = {
        .tenant_id = tenant,
        .stream_id = stream,
        .checkpoint_id = cid,
        .seq = (int64_t)seq,
        .checkpoint_hash = hash,
        .previous_hash = prev,
    };
    if ((r = require_witness_id(cfg)) < 0 ||
        (r = witness_request_check(&req, WITNESS_NAMES_CLI)) < 0)
        return cli_fail(verb, r);

    Token *t = NULL;
    int ec = cli_open_token(verb, cfg, false, &t);
    if (ec != 0)
        return ec;
    Witness *w = NULL;
    WitnessOutcome out = {0};
    r = witness_open(cfg->witness_db, 0, &w);
    if (r >= 0)
        r = witness_submit(w, t, cfg->witness_id, &req, &out);
    w = witness_close(w);
    t = token_close(t);
    if (r < 0)
        return cli_fail(verb, r);

    if (out.result == WITNESS_GAP) {
        fprintf(stderr,
                "%s: checkpoint_gap: --checkpoint-seq-no %" PRId64
                " skips ahead of the head at %" PRId64 "; submit %" PRId64
                " first (nothing signed, nothing stored)\n",
                verb, req.seq, out.head_seq, out.head_seq + 1);
        return LV_EXIT_GAP;
    }
    /* The document reaches stdout only now, after COMMIT. */
    bool ok = fwrite(out.document, 1, out.document_len, stdout) == out.document_len &&
              fputc('\n', stdout) != EOF && fflush(stdout) == 0;
    WitnessOutcome o = out;
    witness_outcome_done(&out);
    if (!ok) {
        fprintf(stderr,
                "%s: cannot write the document to stdout: %s (it is stored; submitting "
                "again returns it)\n",
                verb, strerror(errno));
        return LV_EXIT_FAILURE;
    }
    switch (o.result) {
    case WITNESS_REPLAYED:
        fprintf(stderr,
                "%s: replayed: seq %" PRId64 " was witnessed before; this is the stored "
                "receipt\n",
                verb, req.seq);
        return LV_EXIT_OK;
    case WITNESS_FORK:
        fprintf(stderr,
                "%s: fork evidence (%s) for %s/%s seq %" PRId64 "%s; the head stays at %" PRId64
                "\n",
                verb, witness_reason_name(o.reason), tenant, stream, req.seq,
                o.reused ? ", as stored before" : "", o.head_seq);
        return LV_EXIT_FORK;
    default:
        return LV_EXIT_OK;
    }
}

int witness_serve_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    HttpdConfig hc = {
        .witness_db = cfg->witness_db,
        .witness_id = cfg->witness_id,
        .threads = HTTPD_DEFAULT_THREADS,
        .body_max = HTTPD_DEFAULT_BODY,
        .rate_per_s = HTTPD_DEFAULT_RATE,
        .rate_burst = HTTPD_DEFAULT_BURST,
    };
    cli_token_config(cfg, &hc.token);
    lv_error_clear();
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        uint64_t x;
        int r;
        if (strcmp(argv[i], "--help") == 0) {
            printf("Usage: attesto-local-vault [GLOBAL OPTIONS] witness-serve\n"
                   "  [--listen unix:PATH|HOST:PORT]...  (default: sockets from systemd)\n"
                   "  [--threads N] [--max-body-bytes N] [--rate-limit PER_SECOND]\n"
                   "  [--rate-burst N] [--idle-exit SECONDS]\n");
            return LV_EXIT_OK;
        }
        if ((r = flag_value(argc, argv, &i, "--listen", &v)) != 0) {
            if (r > 0 && hc.n_listen >= HTTPD_MAX_LISTEN)
                r = lv_error_set(LV_ERR_INPUT, "--listen: at most %d", HTTPD_MAX_LISTEN);
            if (r < 0)
                return cli_fail(verb, r);
            hc.listen[hc.n_listen++] = v;
        } else if ((r = flag_value(argc, argv, &i, "--threads", &v)) != 0) {
            if (r < 0 || (r = parse_uint("--threads", v, HTTPD_MAX_THREADS, &x)) < 0)
                return cli_fail(verb, r);
            if (x == 0)
                return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "--threads: at least 1"));
            hc.threads = (unsigned)x;
        } else if ((r = flag_value(argc, argv, &i, "--max-body-bytes", &v)) != 0) {
            if (r < 0 || (r = parse_uint("--max-body-bytes", v, WITNESS_REQUEST_MAX, &x)) < 0)
                return cli_fail(verb, r);
            if (x < 64)
                return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "--max-body-bytes: at least 64"));
            hc.body_max = (size_t)x;
        } else if ((r = flag_value(argc, argv, &i, "--rate-limit", &v)) != 0) {
            if (r < 0 || (r = parse_uint("--rate-limit", v, 1000000, &x)) < 0)
                return cli_fail(verb, r);
            hc.rate_per_s = (double)x;
        } else if ((r = flag_value(argc, argv, &i, "--rate-burst", &v)) != 0) {
            if (r < 0 || (r = parse_uint("--rate-burst", v, 1000000, &x)) < 0)
                return cli_fail(verb, r);
            if (x == 0)
                return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "--rate-burst: at least 1"));
            hc.rate_burst = (unsigned)x;
        } else if ((r = flag_value(argc, argv, &i, "--idle-exit", &v)) != 0) {
            if (r < 0 || (r = parse_uint("--idle-exit", v, 86400, &x)) < 0)
                return cli_fail(verb, r);
            hc.idle_exit_s = (unsigned)x;
        } else
            return cli_fail(
                verb, lv_error_set(LV_ERR_INPUT, "%s: unknown argument (see --help)", argv[i]));
    }
    int r = require_witness_id(cfg);
    if (r < 0)
        return cli_fail(verb, r);
    r = httpd_run(&hc);
    return r < 0 ? cli_fail(verb, r) : LV_EXIT_OK;
}

typedef struct ForkPrint {
    bool human;
    size_t n;
} ForkPrint;

static const char *jstr(const cJSON *o, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(m) ? m->valuestring : "?";
}

static double jnum(const cJSON *o, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(m) ? m->valuedouble : -1;
}

static int print_fork(void *userdata, const char *doc, size_t len)
{
    ForkPrint *p = userdata;
    p->n++;
    if (!p->human) {
        if (fwrite(doc, 1, len, stdout) != len || fputc('\n', stdout) == EOF)
            return lv_error_set(-EIO, "stdout: %s", strerror(errno));
        return 0;
    }
    cJSON *d = cJSON_ParseWithLength(doc, len);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "statement");
    const cJSON *acc = cJSON_GetObjectItemCaseSensitive(st, "accepted_checkpoint");
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(st, "submitted_checkpoint");
    if (p->n == 1)
        printf("%-20s  %-22s  %s\n", "DETECTED", "REASON", "TENANT/STREAM  SUBMITTED vs ACCEPTED");
    printf("%-20s  %-22s  %s/%s  seq %.0f %.16s… (%s)  vs  seq %.0f %.16s… (%s)\n",
           jstr(st, "detected_at"), jstr(st, "reason"), jstr(st, "tenant_id"),
           jstr(st, "stream_id"), jnum(sub, "checkpoint_seq_no"), jstr(sub, "checkpoint_hash"),
           jstr(sub, "checkpoint_id"), jnum(acc, "checkpoint_seq_no"), jstr(acc, "checkpoint_hash"),
           jstr(acc, "checkpoint_id"));
    cJSON_Delete(d);
    return 0;
}

int witness_forks_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0], *tenant = NULL, *stream = NULL;
    bool json = cfg->json;
    lv_error_clear();
    for (int i = 1; i < argc; i++) {
        int r;
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--help") == 0) {
            printf("Usage: attesto-local-vault [GLOBAL OPTIONS] witness-forks [--json] "
                   "[--tenant-id ID] [--stream-id ID]\n"
                   "Lists stored fork evidence, oldest first (JSON: one signed document a "
                   "line).\n");
            return LV_EXIT_OK;
        } else if ((r = flag_value(argc, argv, &i, "--tenant-id", &tenant)) != 0 ||
                   (r = flag_value(argc, argv, &i, "--stream-id", &stream)) != 0) {
            if (r < 0)
                return cli_fail(verb, r);
        } else
            return cli_fail(
                verb, lv_error_set(LV_ERR_INPUT, "%s: unknown argument (see --help)", argv[i]));
    }
    if (tenant && !lv_valid_id(tenant))
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "--tenant-id: must be 1-128 bytes of "
                                                         "[A-Za-z0-9._:@/-]"));
    if (stream && !lv_valid_id(stream))
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "--stream-id: must be 1-128 bytes of "
                                                         "[A-Za-z0-9._:@/-]"));
    Witness *w = NULL;
    int r = witness_open(cfg->witness_db, WITNESS_OPEN_READONLY, &w);
    ForkPrint p = {.human = !json && cli_human(cfg)};
    if (r >= 0)
        r = witness_forks_foreach(w, tenant, stream, print_fork, &p);
    witness_close(w);
    if (r < 0)
        return cli_fail(verb, r);
    if (fflush(stdout) != 0)
        return cli_fail(verb, lv_error_set(-EIO, "stdout: %s", strerror(errno)));
    if (p.human && p.n == 0)
        printf("no fork evidence stored\n");
    return LV_EXIT_OK;
}
