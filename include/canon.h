/* SPDX-License-Identifier: Apache-2.0 */
/* RFC 8785 (JCS) canonical JSON with the Attesto number policy: numbers must
 * be integers within +-(2^53-1), whatever their spelling; I-JSON input (valid
 * UTF-8, no lone surrogates, no duplicate keys). */
#pragma once
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#define CANON_MAX_SAFE_INTEGER 9007199254740991LL
#define CANON_MAX_DEPTH        64

/* Strictly parses len bytes (no trailing garbage but white space) into a
 * cJSON tree whose numbers are the validated integers. On failure returns
 * LV_ERR_INPUT (or LV_ERR_TOOBIG past max_len) with detail naming the path,
 * e.g. "payload.score: non-integer number 0.87 (send decimals as strings)";
 * path_prefix ("payload") starts the path. */
int canon_parse(const char *in, size_t len, size_t max_len, const char *path_prefix, cJSON **ret);

/* Serializes a tree canonically: object members sorted by UTF-16 code units,
 * no white space, JCS string escaping, integers only (a non-integral or
 * out-of-range number is LV_ERR_INPUT). The result is NUL-terminated. */
int canon_serialize(const cJSON *node, char **ret, size_t *ret_len);

/* parse + serialize in one step. */
int canon_json(const char *in, size_t len, size_t max_len, const char *path_prefix, char **ret,
               size_t *ret_len);

/* A member name from outside, made safe to print in one line: at most 64
 * bytes, anything outside printable ASCII as '?', "..." when cut. */
void canon_printable(const char *s, char out[68]);

/* The one strict member check: o must be an object whose members are all
 * among names; with all_required, each of names must also be present.
 * Errors: "<path>: must be an object", "<path>.<name>: unknown member",
 * "<path>.<name>: missing" (LV_ERR_INPUT). */
int canon_check_members(const cJSON *o, const char *path, const char *const *names, size_t n,
                        bool all_required);

/* The one cleanup helper for cJSON trees (cJSON_Delete accepts NULL). */
static inline void cjson_deletep(cJSON **j)
{
    cJSON_Delete(*j);
}
#define _cleanup_cjson_ __attribute__((cleanup(cjson_deletep)))
