/* SPDX-License-Identifier: Apache-2.0 */
/* The verbs (src/cli/). Each <verb>_main parses its arguments with
 * cli_parse() against its table of options (argv[0] is the verb), reports
 * errors once to stderr and returns the process exit code. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "token.h"

typedef int (*verb_fn)(const Config *cfg, int argc, char **argv);

int keys_main(const Config *cfg, int argc, char **argv);
int public_key_main(const Config *cfg, int argc, char **argv);
int enqueue_main(const Config *cfg, int argc, char **argv);
int status_main(const Config *cfg, int argc, char **argv);
int list_main(const Config *cfg, int argc, char **argv);
int show_main(const Config *cfg, int argc, char **argv);
int dead_letter_main(const Config *cfg, int argc, char **argv);
int purge_main(const Config *cfg, int argc, char **argv);
int retry_now_main(const Config *cfg, int argc, char **argv);
int verify_main(const Config *cfg, int argc, char **argv);
int drain_once_main(const Config *cfg, int argc, char **argv);
int drain_loop_main(const Config *cfg, int argc, char **argv);
int witness_checkpoint_main(const Config *cfg, int argc, char **argv);
int witness_serve_main(const Config *cfg, int argc, char **argv);
int witness_forks_main(const Config *cfg, int argc, char **argv);
int witness_state_main(const Config *cfg, int argc, char **argv);
int doctor_main(const Config *cfg, int argc, char **argv);
int receipts_main(const Config *cfg, int argc, char **argv);
int spool_main(const Config *cfg, int argc, char **argv);

/* ---- one argument parser for every verb (src/cli/args.c) ---- */

typedef enum CliKind {
    CLI_FLAG,   /* --name: sets a bool */
    CLI_STRING, /* --name VALUE or --name=VALUE: a const char * (argv's) */
    CLI_NUMBER, /* a decimal integer within [min, max] into an int64_t */
    CLI_LIST,   /* repeatable CLI_STRING into const char *[max] with a size_t count */
} CliKind;

/* One option of a verb: the parser, `--help`, the bash completion test and
 * the man page test all read this one entry. Write entries with the
 * CLI_* macros below. */
typedef struct CliOption {
    const char *name; /* without "--" */
    CliKind kind;
    const char *value;   /* the value's name in --help ("ID", "N", "F|-"); NULL for a flag */
    const char *help;    /* one line */
    bool required;       /* absent: "<verb>: --name: required" */
    size_t offset;       /* of the field in the verb's argument struct */
    size_t count_offset; /* CLI_LIST: of its size_t count */
    int64_t min, max;    /* CLI_NUMBER: the range; CLI_LIST: max is the most values */
} CliOption;

#define CLI_FLAG_OPT(n, T, f, h)                                                                   \
    {                                                                                              \
        .name = n, .kind = CLI_FLAG, .help = h, .offset = offsetof(T, f)                           \
    }
#define CLI_STRING_OPT(n, v, T, f, h)                                                              \
    {                                                                                              \
        .name = n, .kind = CLI_STRING, .value = v, .help = h, .offset = offsetof(T, f)             \
    }
#define CLI_REQUIRED_OPT(n, v, T, f, h)                                                            \
    {                                                                                              \
        .name = n, .kind = CLI_STRING, .value = v, .help = h, .required = true,                    \
        .offset = offsetof(T, f)                                                                   \
    }
#define CLI_NUMBER_OPT(n, v, T, f, lo, hi, h)                                                      \
    {                                                                                              \
        .name = n, .kind = CLI_NUMBER, .value = v, .help = h, .offset = offsetof(T, f), .min = lo, \
        .max = hi                                                                                  \
    }
#define CLI_REQUIRED_NUMBER_OPT(n, v, T, f, lo, hi, h)                                             \
    {                                                                                              \
        .name = n, .kind = CLI_NUMBER, .value = v, .help = h, .required = true,                    \
        .offset = offsetof(T, f), .min = lo, .max = hi                                             \
    }
#define CLI_LIST_OPT(n, v, T, f, cnt, most, h)                                                     \
    {                                                                                              \
        .name = n, .kind = CLI_LIST, .value = v, .help = h, .offset = offsetof(T, f),              \
        .count_offset = offsetof(T, cnt), .max = most                                              \
    }

/* A verb (or "verb subcommand") and its options. */
typedef struct CliCommand {
    const char *name;     /* "enqueue", "spool rekey": the prefix of its messages */
    const char *synopsis; /* after the name in the usage line; NULL: built from the options */
    const char *about;    /* lines printed after the usage line, or NULL */
    const char *operands; /* the positional arguments' names ("EVENT_ID"), or NULL */
    int min_operands, max_operands;
    const CliOption *options; /* ends with {0}; --help is every verb's, not listed */
} CliCommand;

/* Parses argv[1..argc) against cmd into args (the struct the options'
 * offsets point into; untouched fields keep the caller's defaults) and
 * operands (at most cmd->max_operands, in order, into ret_operands, their
 * number in *ret_n). Long options only, "--name VALUE" or "--name=VALUE",
 * anywhere among the operands; "--" ends the options; "-" is an operand.
 * Returns 0; CLI_HELP after printing the help on stdout; or CLI_USAGE after
 * printing one line on stderr: "<name>: <what>: <rule>":
 *   --x: unknown option (see --help)    --x: needs a value
 *   --x: takes no value                  --x: required
 *   --x: V: must be an integer from LO to HI
 *   --x: at most N                       X: unexpected argument
 *   OPERANDS: missing (see --help) */
enum { CLI_HELP = 1, CLI_USAGE = 2 };
int cli_parse(const CliCommand *cmd, int argc, char **argv, void *args, const char **ret_operands,
              int *ret_n);
/* For verbs with subcommands: argv[1] names one of subs (each named
 * "<verb> <sub>"), *ret_index says which, and the rest of argv is parsed
 * as cli_parse() does against it; an option of another subcommand is
 * "--x: only for <sub>". "<verb> --help" prints every subcommand's help
 * (CLI_HELP); a missing or unknown subcommand is CLI_USAGE after
 * "<verb>: missing subcommand (a, b)" or "<verb>: X: unknown subcommand
 * (a, b)". */
int cli_parse_subcommand(const char *verb, int argc, char **argv, const CliCommand *const *subs,
                         size_t n, int *ret_index, void *args, const char **ret_operands,
                         int *ret_n);
/* The exit code for a non-zero cli_parse() result: 0 after --help, 2. */
static inline int cli_parse_exit(int r)
{
    return r == CLI_HELP ? 0 : 2;
}
/* The help of cmd, generated from its table (what `<verb> --help` prints). */
void cli_print_help(FILE *f, const CliCommand *cmd);
/* "<name>: <message>" on stderr; returns 2 (a usage error). */
int cli_usage_error(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- shared by the verbs (src/cli/common.c) ---- */

/* The TokenConfig named by the global options. */
void cli_token_config(const Config *cfg, TokenConfig *ret);
/* Opens the token and checks the signing key (and the KEK when want_kek);
 * on failure prints "<verb>: <detail>" and returns the exit code (5 or 2). */
int cli_open_token(const char *verb, const Config *cfg, bool want_kek, Token **ret);
/* Prints "<verb>: <lv_error() or strerror>" once and returns lv_exit_code(r). */
int cli_fail(const char *verb, int r);
/* true when stdout is a terminal and --json was not given. */
bool cli_human(const Config *cfg);
/* One JSON object on one line of stdout; false (after saying so) when it
 * could not be printed. */
struct cJSON;
bool cli_print_json(const struct cJSON *j);
/* Opens the spool, with the token (KEK and DEK) when how->token; returns 0
 * or the exit code after reporting. */
typedef struct CliSpool {
    bool token;
    bool include_payload;
    int max_attempts; /* 0: the default */
} CliSpool;
struct Spool;
int cli_open_spool(const char *verb, const Config *cfg, const CliSpool *how, Token **ret_tok,
                   struct Spool **ret_spool);
