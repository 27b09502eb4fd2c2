/* SPDX-License-Identifier: Apache-2.0 */
/* Scripted failures of the reference receiver: the --fault spec language,
 * the rule list (command line plus an optional file re-read when it changes)
 * and the choice of the rule that fires for one request. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    FAULT_STATUS,           /* an HTTP status with a JSON error body */
    FAULT_HTML,             /* 200 text/html, as a captive proxy answers */
    FAULT_BAD_JSON,         /* 200 application/json that does not parse */
    FAULT_TRUNCATED,        /* 200, Content-Length announced, connection cut mid-body */
    FAULT_WRONG_HASH,       /* 200 ack naming another envelopeHash */
    FAULT_WRONG_STREAM,     /* 200 ack naming another streamId */
    FAULT_WRONG_EVENT,      /* 200 ack naming another eventId */
    FAULT_NO_ACK,           /* 200 JSON object without localVaultAck */
    FAULT_RECEIPT_MISMATCH, /* 200 ack right, receipt naming another event */
    FAULT_SLOW,             /* the reply is delayed by delay= ms */
    FAULT_DROP,             /* connection closed without a reply */
    FAULT_REDIRECT,         /* 307 to the same path over plain http:// */
    FAULT_BIG,              /* 200 valid ack padded past 64 KiB */
    FAULT_RANDOM,           /* each firing picks one transient kind at random */
} FaultKind;

typedef struct Fault {
    FaultKind kind;
    int status;            /* FAULT_STATUS */
    int retry_after_s;     /* -1: no Retry-After header */
    bool retry_after_date; /* send Retry-After as an HTTP-date instead of seconds */
    int delay_ms;          /* FAULT_SLOW, or a delay before any other kind */
    long count;            /* firings left; -1 unlimited */
    double prob;           /* chance of firing for a matching request */
    char stream[129];      /* "" any stream */
    bool after;            /* process (accept) the envelope first, then answer faultily */
    char spec[256];        /* the text it was parsed from, for the log */
} Fault;

/* Parses one spec; on error returns -1 and writes a one-line reason. */
int fault_parse(const char *spec, Fault *ret, char *err, size_t errlen);

/* The rule set. Thread-safe. */
typedef struct FaultSet FaultSet;
int faultset_new(const char *file, uint64_t seed, FaultSet **ret);
void faultset_free(FaultSet *fs);
int faultset_add(FaultSet *fs, const Fault *f);
/* Picks the fault for a request of stream (may be ""), consuming one firing;
 * returns false when none fires. A FAULT_RANDOM rule is resolved to a
 * concrete kind here. Re-reads the fault file first when it changed. */
bool faultset_pick(FaultSet *fs, const char *stream, Fault *ret);
/* Total firings so far, for the statistics endpoint. */
uint64_t faultset_fired(FaultSet *fs);
const char *fault_kind_name(FaultKind k);
