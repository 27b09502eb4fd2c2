/* SPDX-License-Identifier: Apache-2.0 */
/* The witness's tenants file: which callers may submit checkpoints for
 * which tenant (unix peers by uid/gid, TCP callers by a bearer secret kept
 * only as its SHA-256), and each tenant's quotas. Format: docs/witness.md
 * "Tenants". */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "witness.h"

typedef struct WitnessTenants WitnessTenants;

#define WITNESS_TENANTS_FILE_MAX   (1024 * 1024) /* bytes of a tenants file */
#define WITNESS_TENANTS_LINE_MAX   4096          /* bytes of one line, without its newline */
#define WITNESS_TENANTS_MAX        10000         /* tenant lines */
#define WITNESS_TENANT_CALLERS_MAX 64            /* uid=, gid= and bearer-sha256= of one tenant */
/* Quotas when neither the tenant's line nor a defaults line sets them. */
#define WITNESS_TENANT_DEFAULT_STREAMS 1000
#define WITNESS_TENANT_DEFAULT_PER_DAY 100000

/* Parses a tenants file's text. LV_ERR_INPUT (or LV_ERR_TOOBIG) with one
 * line of detail: "line N: FIELD: RULE". */
int witness_tenants_parse(const char *text, size_t len, WitnessTenants **ret);
/* Reads and parses the file at path: a regular file, at most
 * WITNESS_TENANTS_FILE_MAX bytes, that group and others cannot write (it
 * decides who may submit). Errors name the path. */
int witness_tenants_load(const char *path, WitnessTenants **ret);
/* Accepts NULL, returns NULL. */
WitnessTenants *witness_tenants_free(WitnessTenants *t);
size_t witness_tenants_count(const WitnessTenants *t);

typedef enum WitnessAuth {
    WITNESS_AUTH_OK,        /* the caller may submit for the tenant */
    WITNESS_AUTH_UNKNOWN,   /* no tenant names the caller: 401 */
    WITNESS_AUTH_FORBIDDEN, /* the caller is known, but not for this tenant: 403 */
} WitnessAuth;

/* A unix-socket peer (SO_PEERCRED): authorized for a tenant whose line
 * names its uid or its gid. tenant_id NULL: is the caller known at all.
 * *ret_quota (may be NULL) is set to the tenant's quotas on WITNESS_AUTH_OK. */
WitnessAuth witness_tenants_peer(const WitnessTenants *t, uid_t uid, gid_t gid,
                                 const char *tenant_id, const WitnessQuota **ret_quota);
/* A TCP caller's bearer secret (the bytes after "Bearer "): its SHA-256 is
 * compared in constant time with every tenant's digests. tenant_id and
 * ret_quota as for witness_tenants_peer. */
WitnessAuth witness_tenants_bearer(const WitnessTenants *t, const char *secret, size_t len,
                                   const char *tenant_id, const WitnessQuota **ret_quota);
