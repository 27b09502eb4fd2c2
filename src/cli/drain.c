/* SPDX-License-Identifier: Apache-2.0 */
/* drain-once and drain-loop: check the relay configuration, open the token
 * and the spool, then run one pass or the service loop. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "cli.h"
#include "drain.h"
#include "log.h"
#include "lv.h"
#include "metrics.h"
#include "receipt.h"
#include "relay.h"
#include "spool.h"

typedef struct DrainArgs {
    int64_t max_in_flight, backoff_base_ms, timeout_ms, connect_timeout_ms, lease_ms, stop_grace_ms,
        max_attempts;
    bool json;
    const char *metrics_file; /* drain-loop: NULL when none is written */
} DrainArgs;

/* drain-once's options; drain-loop has two more. */
#define DRAIN_OPTIONS                                                                              \
    CLI_NUMBER_OPT("max-in-flight", "N", DrainArgs, max_in_flight, 1, 1024,                        \
                   "requests in flight at once, one per stream (64)"),                             \
        CLI_NUMBER_OPT("max-attempts", "N", DrainArgs, max_attempts, 1, 1000,                      \
                       "attempts before an item is dead-lettered (25)"),                           \
        CLI_NUMBER_OPT("timeout-ms", "MS", DrainArgs, timeout_ms, 100, 600000,                     \
                       "whole request timeout (30000)"),                                           \
        CLI_NUMBER_OPT("connect-timeout-ms", "MS", DrainArgs, connect_timeout_ms, 100, 600000,     \
                       "connect timeout (10000)"),                                                 \
        CLI_NUMBER_OPT("lease-ms", "MS", DrainArgs, lease_ms, 1000, 86400000,                      \
                       "how long a lease holds an item (default max(2 x timeout, 120000))"),       \
        CLI_NUMBER_OPT("backoff-base-ms", "MS", DrainArgs, backoff_base_ms, 1, 60000,              \
                       "base of the exponential backoff (1000)"),                                  \
        CLI_FLAG_OPT("json", DrainArgs, json, "the summary as JSON even on a terminal")

static const CliOption once_options[] = {DRAIN_OPTIONS, {0}};
static const CliOption loop_options[] = {
    DRAIN_OPTIONS,
    CLI_NUMBER_OPT("stop-grace-ms", "MS", DrainArgs, stop_grace_ms, 0, 600000,
                   "on SIGTERM, how long requests in flight may finish (10000)"),
    CLI_STRING_OPT("metrics-file", "PATH|none", DrainArgs, metrics_file,
                   "the Prometheus textfile (none: no file)"),
    {0},
};

static const CliCommand once_command = {
    .name = "drain-once",
    .about = "One relay pass over what is due; exit 7 when deliveries failed.\n",
    .options = once_options,
};

static const CliCommand loop_command = {
    .name = "drain-loop",
    .about = "Relays until SIGTERM (the systemd service).\n",
    .options = loop_options,
};

/* drain-loop's textfile (docs/observability.md): --metrics-file, else
 * ATTESTO_LOCAL_VAULT_METRICS_FILE, else the default when its directory
 * exists; "none" turns it off. A path given explicitly must be writable. */
static int check_metrics_file(const char *verb, DrainArgs *a)
{
    const char *opt = "--metrics-file";
    if (!a->metrics_file) {
        a->metrics_file = getenv("ATTESTO_LOCAL_VAULT_METRICS_FILE");
        opt = "ATTESTO_LOCAL_VAULT_METRICS_FILE";
    }
    if (a->metrics_file && !*a->metrics_file)
        a->metrics_file = NULL;
    bool explicit = a->metrics_file != NULL;
    if (!explicit)
        a->metrics_file = LV_DEFAULT_METRICS_FILE;
    if (strcmp(a->metrics_file, "none") == 0) {
        a->metrics_file = NULL;
        return 0;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", a->metrics_file);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    if (access(dir, W_OK | X_OK) == 0)
        return 0;
    if (!explicit) {
        a->metrics_file = NULL; /* the default directory was not made: no file */
        return 0;
    }
    fprintf(stderr, "%s: %s: %s: directory %s: %s\n", verb, opt, a->metrics_file, dir,
            strerror(errno));
    return -1;
}

/* Returns 0, CLI_HELP or CLI_USAGE (as cli_parse does). */
static int parse_args(bool loop, int argc, char **argv, DrainArgs *a)
{
    const CliCommand *cmd = loop ? &loop_command : &once_command;
    *a = (DrainArgs){.max_in_flight = 64,
                     .backoff_base_ms = 1000,
                     .timeout_ms = 30000,
                     .connect_timeout_ms = 10000,
                     .lease_ms = 0,
                     .stop_grace_ms = 10000,
                     .max_attempts = 25};
    int k = cli_parse(cmd, argc, argv, a, NULL, NULL);
    if (k != 0)
        return k;
    if (loop && check_metrics_file(cmd->name, a) < 0)
        return CLI_USAGE;
    /* A lease must outlive the longest request it covers. */
    if (!a->lease_ms)
        a->lease_ms = a->timeout_ms * 2 > 120000 ? a->timeout_ms * 2 : 120000;
    if (a->lease_ms <= a->timeout_ms)
        return cli_usage_error(cmd->name,
                               "--lease-ms: %lld: must be longer than --timeout-ms (%lld)",
                               (long long)a->lease_ms, (long long)a->timeout_ms);
    return 0;
}

typedef struct Run {
    ReceiptKeys *receipt_keys; /* NULL: receipts are not verified */
    char *bearer;              /* the relay credential, NULL: none; wiped when done */
    Metrics *metrics;
    Token *tok;
    Spool *spool;
    Relay *relay;
    Drain *drain;
} Run;

static void run_done(Run *run)
{
    run->drain = drain_free(run->drain);
    run->spool = spool_close(run->spool);
    run->relay = relay_free(run->relay);
    relay_credential_free(run->bearer);
    run->bearer = NULL;
    run->tok = token_close(run->tok);
    run->metrics = metrics_free(run->metrics);
    run->receipt_keys = receipt_keys_free(run->receipt_keys);
}

/* Everything a drain needs, in the order that reports a usage error before
 * the token is touched. Returns 0 or the exit code after reporting. */
static int setup(const char *verb, const Config *cfg, const DrainArgs *a, bool loop, Run *run)
{
    lv_error_clear();
    int r = config_require_installation_id(cfg);
    if (r >= 0)
        r = config_require_relay_url(cfg);
    RelayOptions ro = {
        .url = cfg->relay_url,
        .ca_file = cfg->ca_file,
        .pinned_public_key = cfg->pinned_public_key,
        .connect_timeout_ms = a->connect_timeout_ms,
        .timeout_ms = a->timeout_ms,
        .max_connections = (unsigned)a->max_in_flight,
    };
    if (r >= 0 && cfg->receipt_keys_file) {
        r = receipt_keys_load(cfg->receipt_keys_file, &run->receipt_keys);
        if (r < 0) {
            char detail[600];
            snprintf(detail, sizeof(detail), "%s", lv_error());
            r = lv_error_set(r, "--receipt-keys-file: %s", detail);
        }
    }
    if (r >= 0) {
        char source[4096];
        r = relay_credential_load(cfg->relay_token_file, &run->bearer, source);
        if (r < 0) {
            char detail[4200];
            snprintf(detail, sizeof(detail), "%s", lv_error());
            r = lv_error_set(r, "--relay-token-file: %s", detail);
        }
        ro.bearer = run->bearer;
    }
    if (r >= 0)
        r = relay_new(&ro, &run->relay);
    if (r < 0)
        return cli_fail(verb, r);
    int code = cli_open_token(verb, cfg, true, &run->tok);
    if (code != 0)
        return code;
    SpoolOptions so = {
        .path = cfg->spool_db,
        .installation_id = cfg->installation_id,
        .max_attempts = (int)a->max_attempts,
    };
    lv_error_clear();
    r = spool_open(&so, run->tok, &run->spool);
    if (r < 0)
        return cli_fail(verb, r);
    DrainOptions dopt = {
        .max_in_flight = (unsigned)a->max_in_flight,
        .lease_ms = a->lease_ms,
        .backoff_base_ms = a->backoff_base_ms,
        .stop_grace_ms = a->stop_grace_ms,
        .spool_path = loop ? cfg->spool_db : NULL,
        .metrics_file = loop ? a->metrics_file : NULL,
        .receipt_keys = run->receipt_keys,
    };
    if (loop && a->metrics_file) {
        r = metrics_new(&run->metrics);
        if (r < 0)
            return cli_fail(verb, r);
        dopt.metrics = run->metrics;
    }
    r = drain_new(run->spool, run->relay, &dopt, &run->drain);
    if (r < 0)
        return cli_fail(verb, r);
    return 0;
}

int drain_once_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    DrainArgs a;
    int k = parse_args(false, argc, argv, &a);
    if (k != 0)
        return cli_parse_exit(k);
    Run run = {0};
    int code = setup(verb, cfg, &a, false, &run);
    if (code != 0) {
        run_done(&run);
        return code;
    }
    DrainSummary s;
    lv_error_clear();
    int r = drain_once(run.drain, &s);
    if (r < 0) {
        code = cli_fail(verb, r);
        run_done(&run);
        return code;
    }
    run_done(&run);
    char until[32] = "";
    if (s.paused)
        lv_format_time(s.paused_until_ms, until);
    if (cli_human(cfg) && !a.json) {
        printf("delivered %lld, retry scheduled %lld, dead-lettered %lld, remaining %lld\n",
               (long long)s.delivered, (long long)s.retry_scheduled, (long long)s.dead_lettered,
               (long long)s.remaining);
        if (s.paused)
            printf("paused until %s: the receiver answered %s (is this installation "
                   "registered and authorised?)\n",
                   until, s.pause_reason);
    } else {
        printf("{\"delivered\":%lld,\"retry_scheduled\":%lld,\"dead_lettered\":%lld,"
               "\"remaining\":%lld",
               (long long)s.delivered, (long long)s.retry_scheduled, (long long)s.dead_lettered,
               (long long)s.remaining);
        if (s.paused)
            printf(",\"paused\":{\"reason\":\"%s\",\"until\":\"%s\"}", s.pause_reason, until);
        printf("}\n");
    }
    bool failed = s.retry_scheduled > 0 || s.dead_lettered > 0 || s.paused;
    return failed ? LV_EXIT_DELIVERY : LV_EXIT_OK;
}

/* A token outage: the token stopped answering (lost session or login, a
 * pulled device, a failing operation), as opposed to a configuration or
 * key problem (PIN refused, key missing or wrong, module missing). */
static bool token_outage(int r)
{
    return r == LV_ERR_TOKEN || r == LV_ERR_NOTOKEN;
}

/* Opens the token, the spool and the drain again after an outage: a new
 * session, a new login, the DEK unwrapped again. Quiet: the caller reports. */
static int reopen(const Config *cfg, const DrainArgs *a, Run *run)
{
    TokenConfig tc;
    cli_token_config(cfg, &tc);
    lv_error_clear();
    int r = token_open(&tc, &run->tok);
    if (r >= 0)
        r = token_check_signing_key(run->tok);
    if (r >= 0)
        r = token_check_kek(run->tok);
    SpoolOptions so = {
        .path = cfg->spool_db,
        .installation_id = cfg->installation_id,
        .max_attempts = (int)a->max_attempts,
    };
    if (r >= 0)
        r = spool_open(&so, run->tok, &run->spool);
    DrainOptions dopt = {
        .max_in_flight = (unsigned)a->max_in_flight,
        .lease_ms = a->lease_ms,
        .backoff_base_ms = a->backoff_base_ms,
        .stop_grace_ms = a->stop_grace_ms,
        .spool_path = cfg->spool_db,
        .metrics_file = a->metrics_file,
        .metrics = run->metrics, /* the counters go on across the outage */
        .receipt_keys = run->receipt_keys,
    };
    if (r >= 0)
        r = drain_new(run->spool, run->relay, &dopt, &run->drain);
    if (r < 0) {
        run->drain = drain_free(run->drain);
        run->spool = spool_close(run->spool);
        run->tok = token_close(run->tok);
    }
    return r;
}

/* Waits ms, or less if SIGTERM/SIGINT arrives: true when one did. */
static bool wait_or_signal(int64_t ms)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, &old);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    int sig;
    do
        sig = sigtimedwait(&set, NULL, &ts);
    while (sig < 0 && errno == EINTR);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return sig > 0;
}

/* The textfile during an outage: the counters and attesto_relay_token_up 0,
 * without the spool's figures (the spool is closed until the reopen). A
 * failure to write is left to the drain's own warning once it runs again. */
static void outage_metrics(const DrainArgs *a, Metrics *m)
{
    if (!m || !a->metrics_file)
        return;
    metrics_set_token_up(m, false);
    char *text = NULL;
    size_t len = 0;
    if (metrics_format(m, NULL, lv_now_ms(), &text, &len) >= 0)
        (void)metrics_write_file(a->metrics_file, text, len);
    free(text);
    lv_error_clear();
}

#define REOPEN_FIRST_MS 1000
#define REOPEN_MAX_MS   30000

int drain_loop_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0];
    DrainArgs a;
    int k = parse_args(true, argc, argv, &a);
    if (k != 0)
        return cli_parse_exit(k);
    log_set_prog("attesto-local-vault");
    Run run = {0};
    int code = setup(verb, cfg, &a, true, &run);
    if (code != 0) {
        run_done(&run);
        return code;
    }
    /* The token layer never logs in again behind its callers' backs
     * (docs/token.md), and the unit does not restart exit 5, which also
     * means a refused PIN. So an outage is handled here: the leases are
     * released (drain_loop does that), the spool and the Token closed, and
     * both opened again with backoff, STATUS saying so, until the token
     * answers or a reopen meets a problem that waiting cannot fix. */
    int r;
    for (;;) {
        lv_error_clear();
        r = drain_loop(run.drain);
        if (r >= 0 || !token_outage(r))
            break;
        char why[600];
        snprintf(why, sizeof(why), "%s", lv_error());
        run.drain = drain_free(run.drain);
        run.spool = spool_close(run.spool);
        run.tok = token_close(run.tok);
        bool stop = false;
        for (int64_t wait = REOPEN_FIRST_MS;;
             wait = wait * 2 > REOPEN_MAX_MS ? REOPEN_MAX_MS : wait * 2) {
            log_warning(
                "token unavailable (%s); the drain stopped taking work, reopening the token "
                "in %lld s",
                why, (long long)(wait / 1000));
            sd_notifyf(0, "STATUS=token unavailable: %s; not taking work, reopening in %lld s", why,
                       (long long)(wait / 1000));
            outage_metrics(&a, run.metrics);
            if (wait_or_signal(wait)) {
                sd_notify(0, "STOPPING=1\nSTATUS=stopping (token unavailable)");
                stop = true;
                break;
            }
            r = reopen(cfg, &a, &run);
            if (r < 0 && token_outage(r))
                metrics_token_error(run.metrics);
            if (r >= 0) {
                metrics_set_token_up(run.metrics, true);
                log_notice("token reopened after an outage; the drain takes work again");
                break;
            }
            if (!token_outage(r))
                break;
            snprintf(why, sizeof(why), "%s", lv_error());
        }
        if (stop) {
            r = 0;
            break;
        }
        if (r < 0)
            break;
    }
    if (r < 0) {
        sd_notifyf(0, "STATUS=failed: %s", lv_error());
        code = cli_fail(verb, r);
    }
    run_done(&run);
    return code;
}
