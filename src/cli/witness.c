/* SPDX-License-Identifier: Apache-2.0 */
/* Witness verbs: witness-checkpoint, witness-serve, witness-forks, witness-state. */
#include <inttypes.h>
#include <stdio.h>

#include "cli.h"
#include "httpd.h"
#include "lv.h"
#include "witness.h"
#include "witness_tenants.h"

static int require_witness_id(const Config *cfg)
{
    if (!cfg->witness_id)
        return lv_error_set(
            LV_ERR_INPUT, "--witness-id: required (or ATTESTO_LOCAL_VAULT_WITNESS_ID; it defaults "
                          "to the installation id, --installation-id)");
    return 0;
}

typedef struct CheckpointArgs {
    const char *tenant, *stream, *cid, *hash, *prev;
    int64_t seq;
} CheckpointArgs;

static const CliOption checkpoint_options[] = {
    CLI_REQUIRED_OPT("tenant-id", "ID", CheckpointArgs, tenant, "the tenant"),
    CLI_REQUIRED_OPT("stream-id", "ID", CheckpointArgs, stream, "the tenant's stream"),
    CLI_REQUIRED_OPT("checkpoint-id", "ID", CheckpointArgs, cid, "the checkpoint's id"),
    CLI_REQUIRED_NUMBER_OPT("checkpoint-seq-no", "N", CheckpointArgs, seq, 0, WITNESS_MAX_SEQ,
                            "its sequence number"),
    CLI_REQUIRED_OPT("checkpoint-hash", "HEX64", CheckpointArgs, hash, "its hash (SHA-256, hex)"),
    CLI_STRING_OPT("previous-checkpoint-hash", "HEX64", CheckpointArgs, prev,
                   "the hash it extends (required unless the stream is new)"),
    {0},
};

static const CliCommand checkpoint_command = {
    .name = "witness-checkpoint",
    .about = "Prints the signed witness receipt or fork evidence (JSON).\n"
             "Exit: 0 accepted or replayed, 3 fork evidence, 6 gap, 2 bad input, 5 token,\n"
             "8 state integrity (state_rollback, foreign_database: see witness-state).\n",
    .options = checkpoint_options,
};

int witness_checkpoint_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    CheckpointArgs a = {0};
    int k = cli_parse(&checkpoint_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    const char *tenant = a.tenant, *stream = a.stream;
    uint64_t seq = (uint64_t)a.seq;
    int r;
    WitnessRequest req = {
        .tenant_id = tenant,
        .stream_id = stream,
        .checkpoint_id = a.cid,
        .seq = (int64_t)seq,
        .checkpoint_hash = a.hash,
        .previous_hash = a.prev,
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

typedef struct ServeArgs {
    const char *listen[HTTPD_MAX_LISTEN];
    size_t n_listen;
    int64_t threads, body_max, rate, burst, idle_exit;
    int64_t max_connections, per_peer, request_s;
} ServeArgs;

static const CliOption serve_options[] = {
    CLI_LIST_OPT("listen", "unix:PATH|HOST:PORT", ServeArgs, listen, n_listen, HTTPD_MAX_LISTEN,
                 "a socket to serve (default: the sockets from systemd)"),
    CLI_NUMBER_OPT("threads", "N", ServeArgs, threads, 1, HTTPD_MAX_THREADS,
                   "worker threads per socket (4)"),
    CLI_NUMBER_OPT("max-body-bytes", "N", ServeArgs, body_max, 64, WITNESS_REQUEST_MAX,
                   "larger request bodies get 413"),
    CLI_NUMBER_OPT("rate-limit", "PER_SECOND", ServeArgs, rate, 0, 1000000,
                   "checkpoints per second per tenant (100; 0: no limit)"),
    CLI_NUMBER_OPT("rate-burst", "N", ServeArgs, burst, 1, 1000000,
                   "the rate limit's bucket (200)"),
    CLI_NUMBER_OPT("idle-exit", "SECONDS", ServeArgs, idle_exit, 0, 86400,
                   "exit after this long without requests (0: never)"),
    CLI_NUMBER_OPT("max-connections", "N", ServeArgs, max_connections, HTTPD_MIN_CONNECTIONS,
                   HTTPD_MAX_CONNECTIONS,
                   "connections per socket (2048); new ones evict the oldest unfinished request"),
    CLI_NUMBER_OPT("max-connections-per-peer", "N", ServeArgs, per_peer, 0, HTTPD_MAX_CONNECTIONS,
                   "connections per TCP peer address (32; 0: no limit)"),
    CLI_NUMBER_OPT("request-timeout", "SECONDS", ServeArgs, request_s, 1, HTTPD_MAX_REQUEST_S,
                   "a whole request, headers and body, from its connection (10)"),
    {0},
};

static const CliCommand serve_command = {
    .name = "witness-serve",
    .about = "Serves the witness over HTTP/1.1 until SIGTERM.\n",
    .options = serve_options,
};

int witness_serve_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    ServeArgs a = {
        .threads = HTTPD_DEFAULT_THREADS,
        .body_max = HTTPD_DEFAULT_BODY,
        .rate = (int64_t)HTTPD_DEFAULT_RATE,
        .burst = HTTPD_DEFAULT_BURST,
        .max_connections = HTTPD_DEFAULT_MAX_CONNECTIONS,
        .per_peer = HTTPD_DEFAULT_PER_PEER,
        .request_s = HTTPD_DEFAULT_REQUEST_S,
    };
    int k = cli_parse(&serve_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    if (a.per_peer > a.max_connections)
        return cli_usage_error(verb,
                               "--max-connections-per-peer: %" PRId64
                               ": must not exceed --max-connections (%" PRId64 ")",
                               a.per_peer, a.max_connections);
    HttpdConfig hc = {
        .witness_db = cfg->witness_db,
        .witness_id = cfg->witness_id,
        .n_listen = a.n_listen,
        .threads = (unsigned)a.threads,
        .body_max = (size_t)a.body_max,
        .rate_per_s = (double)a.rate,
        .rate_burst = (unsigned)a.burst,
        .idle_exit_s = (unsigned)a.idle_exit,
        .limits = {.max_connections = (unsigned)a.max_connections,
                   .per_peer = (unsigned)a.per_peer,
                   .request_s = (unsigned)a.request_s},
    };
    for (size_t i = 0; i < a.n_listen; i++)
        hc.listen[i] = a.listen[i];
    cli_token_config(cfg, &hc.token);
    lv_error_clear();
    int r = require_witness_id(cfg);
    if (r < 0)
        return cli_fail(verb, r);
    /* Read before the token is opened: a bad file stops the start with
     * exit 2 and no C_Login. */
    WitnessTenants *tenants = NULL;
    if (cfg->witness_tenants && (r = witness_tenants_load(cfg->witness_tenants, &tenants)) < 0)
        return cli_fail(verb, r);
    hc.tenants = tenants;
    r = httpd_run(&hc);
    witness_tenants_free(tenants);
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

typedef struct ForksArgs {
    const char *tenant, *stream;
    bool json;
} ForksArgs;

static const CliOption forks_options[] = {
    CLI_STRING_OPT("tenant-id", "ID", ForksArgs, tenant, "only this tenant"),
    CLI_STRING_OPT("stream-id", "ID", ForksArgs, stream, "only this stream"),
    CLI_FLAG_OPT("json", ForksArgs, json, "one signed document a line, even on a terminal"),
    {0},
};

static const CliCommand forks_command = {
    .name = "witness-forks",
    .about = "Lists stored fork evidence, oldest first (JSON: one signed document a line).\n",
    .options = forks_options,
};

int witness_forks_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    ForksArgs a = {.json = cfg->json};
    int k = cli_parse(&forks_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    const char *tenant = a.tenant, *stream = a.stream;
    bool json = a.json;
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

/* ---- witness-state ---- */

typedef struct StateArgs {
    bool json, confirm;
} StateArgs;

static const CliOption state_show_options[] = {
    CLI_FLAG_OPT("json", StateArgs, json, "one JSON object, even on a terminal"),
    {0},
};

static const CliCommand state_show_command = {
    .name = "witness-state show",
    .about = "The witness database's id, generation and digest beside the token's anchor.\n"
             "Exit: 0 consistent, 8 state_rollback or foreign_database, 5 token.\n",
    .options = state_show_options,
};

static const CliOption state_adopt_options[] = {
    CLI_FLAG_OPT("confirm", StateArgs, confirm,
                 "required: re-anchor the token to the database as it is"),
    {0},
};

static const CliCommand state_adopt_command = {
    .name = "witness-state adopt",
    .about = "Re-anchors the token to the witness database as it is and prints the signed\n"
             "state_adoption document (stored in the database). For an operator who has\n"
             "decided that this database is the witness's history from now on.\n",
    .options = state_adopt_options,
};

static int state_show(const char *verb, const Config *cfg, bool json)
{
    Token *t = NULL;
    int ec = cli_open_token(verb, cfg, false, &t);
    if (ec != 0)
        return ec;
    Witness *w = NULL;
    cJSON *o = NULL;
    /* Looking creates nothing: a missing database is reported, not made. */
    int r = witness_open(cfg->witness_db, WITNESS_OPEN_READONLY, &w);
    if (r >= 0)
        r = witness_state_show(w, t, &o);
    w = witness_close(w);
    t = token_close(t);
    if (r < 0)
        return cli_fail(verb, r);
    const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(o, "state"));
    const char *detail = cJSON_GetStringValue(cJSON_GetObjectItem(o, "detail"));
    bool bad =
        !state || (strcmp(state, "consistent") != 0 && strcmp(state, "ahead_by_one_batch") != 0);
    if (json || !cli_human(cfg)) {
        char *text = cJSON_PrintUnformatted(o);
        if (text)
            puts(text);
        free(text);
    } else {
        const cJSON *d = cJSON_GetObjectItem(o, "database"), *a = cJSON_GetObjectItem(o, "anchor");
        printf("%-10s %-32s %12s  %s\n", "", "database id", "generation", "digest");
        printf("%-10s %-32s %12.0f  %s\n", "database",
               cJSON_GetStringValue(cJSON_GetObjectItem(d, "database_id")),
               cJSON_GetNumberValue(cJSON_GetObjectItem(d, "generation")),
               cJSON_GetStringValue(cJSON_GetObjectItem(d, "digest")));
        if (cJSON_IsObject(a))
            printf("%-10s %-32s %12.0f  %s\n", "anchor",
                   cJSON_GetStringValue(cJSON_GetObjectItem(a, "database_id")),
                   cJSON_GetNumberValue(cJSON_GetObjectItem(a, "generation")),
                   cJSON_GetStringValue(cJSON_GetObjectItem(a, "digest")));
        else
            printf("%-10s (none on the token)\n", "anchor");
        printf("state: %s\n", state ? state : "?");
    }
    if (bad && detail && *detail)
        fprintf(stderr, "%s: %s\n", verb, detail);
    int exit_code = !bad                                   ? LV_EXIT_OK
                    : state && strcmp(state, "error") != 0 ? LV_EXIT_STATE
                                                           : LV_EXIT_FAILURE;
    cJSON_Delete(o);
    return exit_code;
}

static int state_adopt(const char *verb, const Config *cfg, bool confirm)
{
    if (!confirm)
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT,
                                           "--confirm: required; adopting re-anchors the token to "
                                           "this database and is recorded in a signed statement"));
    Token *t = NULL;
    int ec = cli_open_token(verb, cfg, false, &t);
    if (ec != 0)
        return ec;
    Witness *w = NULL;
    char *doc = NULL;
    size_t len = 0;
    int r = witness_open(cfg->witness_db, 0, &w);
    if (r >= 0)
        r = witness_state_adopt(w, t, &doc, &len);
    w = witness_close(w);
    t = token_close(t);
    if (r < 0)
        return cli_fail(verb, r);
    bool ok =
        fwrite(doc, 1, len, stdout) == len && fputc('\n', stdout) != EOF && fflush(stdout) == 0;
    free(doc);
    if (!ok) {
        fprintf(stderr, "%s: cannot write the document to stdout: %s (it is stored)\n", verb,
                strerror(errno));
        return LV_EXIT_FAILURE;
    }
    return LV_EXIT_OK;
}

int witness_state_main(const Config *cfg, int argc, char **argv)
{
    static const CliCommand *const subs[] = {&state_show_command, &state_adopt_command};
    StateArgs a = {.json = cfg->json};
    int i = 0;
    int k = cli_parse_subcommand("witness-state", argc, argv, subs, ELEMENTSOF(subs), &i, &a, NULL,
                                 NULL);
    if (k != 0)
        return cli_parse_exit(k);
    if (subs[i] == &state_adopt_command)
        return state_adopt("witness-state adopt", cfg, a.confirm);
    return state_show("witness-state show", cfg, a.json);
}
