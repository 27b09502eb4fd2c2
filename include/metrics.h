/* SPDX-License-Identifier: Apache-2.0 */
/* The relay's metrics in the Prometheus text exposition format (version
 * 0.0.4): counters and a latency histogram kept by the drain, the spool's
 * figures, and an atomic write for node exporter's textfile collector. See
 * docs/observability.md for the names. Thread-safe. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"

typedef struct Metrics Metrics;

/* drain-loop writes here unless told otherwise, when the directory exists. */
#define LV_DEFAULT_METRICS_FILE "/var/lib/attesto/metrics/attesto-local-vault.prom"

/* Distinct failure reasons kept apart; more share the label "other". The
 * reasons are the drain's fixed words (relay_reason_for_curl, the ack check,
 * http_NNN), so the label set stays small. */
#define METRICS_MAX_REASONS 48

int metrics_new(Metrics **ret);
/* Accepts NULL, returns NULL. */
Metrics *metrics_free(Metrics *m);

/* One finished attempt (a response or a transport failure) and how long it
 * took, whatever its outcome. */
void metrics_attempt(Metrics *m, int64_t elapsed_ms);
void metrics_delivered(Metrics *m);
/* A failed attempt, by reason ("tls_verify_failed", "http_503", ...). */
void metrics_failure(Metrics *m, const char *reason);
void metrics_dead_lettered(Metrics *m, const char *reason);
/* A token or key operation failed (LV_ERR_* of lv_is_token_error). */
void metrics_token_error(Metrics *m);
void metrics_set_paused(Metrics *m, bool paused);

/* The whole exposition: the counters above, and the spool's figures from st
 * (NULL: left out). Returns a malloc'd NUL-terminated text. */
int metrics_format(Metrics *m, const SpoolStats *st, int64_t now_ms, char **ret, size_t *ret_len);

/* Writes text to path atomically: a temporary file in the same directory
 * (a name node exporter ignores), mode 0644, then rename(2). Errors with
 * detail naming the path. */
int metrics_write_file(const char *path, const char *text, size_t len);
