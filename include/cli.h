/* SPDX-License-Identifier: Apache-2.0 */
/* The verbs. Each <verb>_main parses its own arguments (argv[0] is the verb),
 * reports errors once to stderr and returns the process exit code. */
#pragma once
#include <stdbool.h>

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
int verify_main(const Config *cfg, int argc, char **argv);
int drain_once_main(const Config *cfg, int argc, char **argv);
int drain_loop_main(const Config *cfg, int argc, char **argv);
int witness_checkpoint_main(const Config *cfg, int argc, char **argv);
int witness_serve_main(const Config *cfg, int argc, char **argv);
int witness_forks_main(const Config *cfg, int argc, char **argv);
int doctor_main(const Config *cfg, int argc, char **argv);
int spool_main(const Config *cfg, int argc, char **argv);

/* Shared by the verbs. */
/* The TokenConfig named by the global options. */
void cli_token_config(const Config *cfg, TokenConfig *ret);
/* Opens the token and checks the signing key (and the KEK when want_kek);
 * on failure prints "<verb>: <detail>" and returns the exit code (5 or 2). */
int cli_open_token(const char *verb, const Config *cfg, bool want_kek, Token **ret);
/* Prints "<verb>: <lv_error() or strerror>" once and returns lv_exit_code(r). */
int cli_fail(const char *verb, int r);
/* true when stdout is a terminal and --json was not given. */
bool cli_human(const Config *cfg);
