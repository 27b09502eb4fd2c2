/* SPDX-License-Identifier: Apache-2.0 */
/* attesto-local-vault: global options, then a table of verbs. */
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "cli.h"
#include "config.h"
#include "log.h"
#include "lv.h"
#include "version.h"

typedef struct Verb {
    const char *name;
    verb_fn fn;
    const char *help;
} Verb;

static const Verb verbs[] = {
    {"keys", keys_main, "keys init: create the signing key pair and the spool KEK on the token"},
    {"public-key", public_key_main, "print the public key [--format json|pem|hex]"},
    {"enqueue", enqueue_main, "queue attestations (--stream-id --source-ref ... | --jsonl F|-)"},
    {"status", status_main, "counts per state, oldest queued age, last error"},
    {"list", list_main, "list items [--state S] [--stream-id S]"},
    {"show", show_main, "show one item EVENT_ID [--payload]"},
    {"dead-letter", dead_letter_main, "dead-letter list | requeue (EVENT_ID|--all)"},
    {"purge", purge_main, "purge --receipted-before DATE"},
    {"retry-now", retry_now_main,
     "make items waiting for a retry due now (--all | --stream-id ID)"},
    {"verify", verify_main, "verify an envelope, a witness document or a proof bundle offline"},
    {"drain-once", drain_once_main, "one relay pass over what is due"},
    {"drain-loop", drain_loop_main, "relay until SIGTERM (the systemd service)"},
    {"witness-checkpoint", witness_checkpoint_main, "witness one checkpoint"},
    {"witness-serve", witness_serve_main, "serve the witness HTTP endpoint"},
    {"witness-forks", witness_forks_main, "list stored fork evidence"},
    {"witness-state", witness_state_main,
     "witness-state show | adopt --confirm: the database's state beside its anchor"},
    {"doctor", doctor_main, "check module, token, keys, databases and relay"},
    {"receipts", receipts_main, "receipts export --out FILE: a proof bundle for an auditor"},
    {"spool", spool_main, "spool deks | rotate-dek | rekey | rewrap-kek: data key rotation"},
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: attesto-local-vault [GLOBAL OPTIONS] VERB [ARGS]\n\nVerbs:\n");
    for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
        fprintf(f, "  %-20s %s\n", verbs[i].name, verbs[i].help);
    fprintf(f, "\nGlobal options (flag > environment > default):\n");
    config_print_help(f);
    fprintf(f, "\nExit codes: 0 ok, 1 runtime failure, 2 usage or invalid input, 3 fork evidence,\n"
               "4 enqueue conflict, 5 token or key problem, 6 witness gap, 7 failed deliveries,\n"
               "8 witness state integrity (state_rollback, foreign_database),\n"
               "9 spool quota reached (nothing written; retry once the drain has delivered).\n"
               "See attesto-local-vault(1).\n");
}

int main(int argc, char **argv)
{
    /* Payloads and PIN buffers must never reach a core file. */
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    Config cfg;
    int idx = 0;
    int r = config_parse_globals(argc, argv, &cfg, &idx);
    if (r < 0) {
        fprintf(stderr, "attesto-local-vault: %s\n", lv_error());
        return lv_exit_code(r);
    }
    if (cfg.log_level) {
        int level = log_level_from_string(cfg.log_level);
        if (level < 0) {
            fprintf(stderr,
                    "attesto-local-vault: --log-level: %s: must be one of "
                    "error|warning|notice|info|debug\n",
                    cfg.log_level);
            return LV_EXIT_USAGE;
        }
        log_set_level(level);
    }
    if (idx >= argc) {
        usage(stderr);
        return LV_EXIT_USAGE;
    }
    if (strcmp(argv[idx], "--version") == 0) {
        printf("attesto-local-vault %s\n", LV_VERSION);
        return LV_EXIT_OK;
    }
    if (strcmp(argv[idx], "--help") == 0 || strcmp(argv[idx], "help") == 0) {
        usage(stdout);
        return LV_EXIT_OK;
    }
    for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
        if (strcmp(argv[idx], verbs[i].name) == 0)
            return verbs[i].fn(&cfg, argc - idx, argv + idx);
    fprintf(stderr, "attesto-local-vault: %s: unknown verb (see --help)\n", argv[idx]);
    return LV_EXIT_USAGE;
}
