/* SPDX-License-Identifier: Apache-2.0 */
/* The drain: leases due items from the spool (at most one in flight per
 * stream, enqueue order within a stream), relays them concurrently, checks
 * each acknowledgement fail-closed and records the outcome of DESIGN §5.5.
 * drain_once is one pass; drain_loop is the systemd service's main loop. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "relay.h"
#include "spool.h"

typedef struct Drain Drain;

typedef struct DrainOptions {
    const char *owner;        /* lease owner; NULL: "drain:<host>:<pid>:<random>" */
    unsigned max_in_flight;   /* 0: 64 */
    int64_t lease_ms;         /* 0: 120 s */
    int64_t backoff_base_ms;  /* 0: 1000; scales the whole backoff schedule (tests) */
    int64_t stop_grace_ms;    /* bound for in-flight requests at SIGTERM; 0: 10 s */
    int64_t idle_wake_ms;     /* drain-loop safety wake-up; 0: 30 s */
    const char *spool_path;   /* drain-loop: watched (inotify) for enqueues by others */
    struct Metrics *metrics;  /* NULL: none; counts each attempt's outcome (metrics.h) */
    const char *metrics_file; /* drain-loop: written atomically every few seconds and at exit */
    /* Pinned receipt keys (receipt.h): when set, an ack counts only with a
     * receipt signed by one of them. NULL: receipts are not verified. */
    const struct ReceiptKeys *receipt_keys;
} DrainOptions;

typedef struct DrainSummary {
    int64_t delivered, retry_scheduled, dead_lettered, remaining;
    bool paused; /* the pass ended in, or met, a 401/403 pause */
    char pause_reason[64];
    int64_t paused_until_ms;
} DrainSummary;

int drain_new(Spool *s, Relay *r, const DrainOptions *opt, Drain **ret);
/* Releases whatever leases it still holds; accepts NULL, returns NULL. */
Drain *drain_free(Drain *d);

/* One pass over what is due when it starts: each due item is attempted at
 * most once (items that become due later wait for the next pass). SIGTERM or
 * SIGINT end it early: in-flight requests get stop_grace_ms, the rest of the
 * leases are released. Errors: spool or token failures. */
int drain_once(Drain *d, DrainSummary *ret);

/* Runs until SIGTERM/SIGINT: sd_notify READY=1 on entry (the caller has
 * opened the token and the spool), STATUS= with queue figures, WATCHDOG=1
 * while healthy, STOPPING=1 on the signal; then in-flight requests get
 * stop_grace_ms and the remaining leases are released. Returns 0 after a
 * clean stop, negative on a spool or token failure. */
int drain_loop(Drain *d);

/* The retry policy (drain owns it; the spool stores the due time it is
 * told): full-jitter backoff for the attempt that just failed (attempts
 * counted after it), uniform in [0, min(300 * base_ms, base_ms * 2^(n-1))];
 * never below retry_after_ms (itself capped at one hour), never 0. */
int64_t drain_backoff_ms(int attempts, int64_t base_ms, int64_t retry_after_ms);
