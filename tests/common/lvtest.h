/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers for cmocka tests: a fresh SoftHSM token per test program, paths. */
#pragma once
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

/* Creates a fresh token in a new temp dir with softhsm-fixtures/make-token
 * and exports its environment (SOFTHSM2_CONF, ATTESTO_LOCAL_VAULT_*) into this
 * process. Returns the temp dir (removed by lvtest_cleanup). */
const char *lvtest_make_token(const char *label);
/* Runs the project binary with args through /bin/sh; returns the exit code,
 * stdout captured into *out (malloc'd) when out != NULL. */
int lvtest_run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* $LV_VECTORS/rel, malloc'd. */
char *lvtest_vector_path(const char *rel);
/* Opens the token lvtest_make_token made, through module_path (NULL: the
 * SoftHSM module it exported), with the exported key URIs and PIN file;
 * creates the keys if missing, checks both, and fills pk (when given) with
 * the signing key's public key. Fails the test on any error. */
struct Token;
struct Token *lvtest_open_token(const char *module_path, uint8_t pk[32]);
/* A new temp dir (removed by lvtest_cleanup). */
const char *lvtest_tmpdir(void);
void lvtest_cleanup(void);
