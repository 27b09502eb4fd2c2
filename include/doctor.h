/* SPDX-License-Identifier: Apache-2.0 */
/* The checks behind `doctor`: module, token, PIN, keys, databases, DEK and
 * relay, each with a status, a machine-readable reason and one line of
 * detail. See docs/observability.md. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "relay.h"
#include "token.h"

typedef enum {
    DOCTOR_PASS,
    DOCTOR_WARN, /* works, but the operator should know (e.g. a database not created yet) */
    DOCTOR_FAIL,
    DOCTOR_SKIP, /* not run: a check it depends on failed */
} DoctorStatus;

/* "pass", "warn", "fail", "skip". */
const char *doctor_status_name(DoctorStatus st);

#define DOCTOR_MAX_CHECKS 16

typedef struct DoctorCheck {
    const char *name;  /* stable identifier: "module", "token", "pin", ... */
    const char *title; /* for people: "PKCS#11 module", ... */
    DoctorStatus status;
    char reason[40];  /* machine-readable cause of a fail/warn/skip, "" on pass */
    char detail[512]; /* one line for the operator */
} DoctorCheck;

typedef struct DoctorReport {
    DoctorCheck checks[DOCTOR_MAX_CHECKS];
    size_t n;
} DoctorReport;

typedef struct DoctorOptions {
    TokenConfig token;
    const char *spool_db;
    const char *witness_db;
    const char *installation_id;   /* NULL: not compared with the spool's */
    RelayOptions relay;            /* url NULL: not configured (a failure) */
    const char *receipt_keys_file; /* NULL: receipts are not verified (a warning) */
    const char *relay_token_file;  /* NULL: only the relay-token credential, if any */
} DoctorOptions;

/* Runs every check in order: module, token, pin, mechanisms, signing_key,
 * encryption_key, spool_db, witness_db, dek, relay_url, relay_credential,
 * relay, receipt_keys.
 * The token is
 * opened once (one C_Login at most); the databases are opened read-only and
 * never created or migrated. Checks after a failure still run unless they
 * depend on it (then DOCTOR_SKIP). Never fails itself: everything is in
 * *ret. */
void doctor_run(const DoctorOptions *opt, DoctorReport *ret);

/* true when no check failed (warnings and skips of optional parts pass). */
bool doctor_ok(const DoctorReport *rep);

/* The database checks, reusable on their own. kind is "spool" or
 * "witness". ret_wrapped_deks (spool only, may be NULL) receives the
 * wrapped DEK blobs the spool holds, concatenated, TOKEN_WRAPPED_DEK_LEN
 * bytes each, malloc'd; *ret_n_deks their count. */
void doctor_check_database(const char *kind, const char *path, const char *installation_id,
                           DoctorCheck *ret, uint8_t **ret_wrapped_deks, size_t *ret_n_deks);

/* Classifies a probe of the relay URL into a check. */
void doctor_check_probe(const RelayProbe *p, DoctorCheck *ret);
