/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTPS relay: POSTs envelopes with libcurl (multi interface, one
 * connection pool, HTTP/2 when offered), https only, TLS >= 1.2 with peer and
 * host verification, no redirects, timeouts and a capped response. It knows
 * nothing of the spool: the drain hands it bodies and gets results back. */
#pragma once
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RELAY_PROTOCOL          "ATTESTO-LOCAL-VAULT-RELAY/1"
#define RELAY_MAX_RESPONSE      (64 * 1024)
#define RELAY_RETRY_AFTER_CAP_S 3600 /* a Retry-After beyond an hour is taken as an hour */

typedef struct Relay Relay;

typedef struct RelayOptions {
    const char *url;               /* https:// only */
    const char *ca_file;           /* NULL: the system trust store */
    const char *pinned_public_key; /* NULL, or CURLOPT_PINNEDPUBLICKEY ("sha256//..." or a file) */
    long connect_timeout_ms;       /* 0: 10 s */
    long timeout_ms;               /* 0: 30 s, whole transfer */
    long low_speed_bytes;          /* 0: 64 B/s ... */
    long low_speed_time_s;         /* 0: ... over 15 s aborts */
    unsigned max_connections;      /* 0: 64 */
    /* NULL, or the bearer credential (relay_credential_load): sent as
     * Authorization: Bearer on every request to the relay URL, which is
     * https only and never redirected; the relay keeps its own copy and
     * wipes it when freed */
    const char *bearer;
} RelayOptions;

/* The relay's bearer credential, from the first source present:
 * $CREDENTIALS_DIRECTORY/relay-token, then file (NULL: none). One line of
 * 1-4096 bytes of RFC 6750's b64token ([A-Za-z0-9-._~+/]+ then '='s), in a
 * file that others cannot read or write. *ret is NULL when neither source
 * exists (no credential: none is sent); otherwise free it with
 * relay_credential_free. source (>= 4096 bytes) names where it came from.
 * LV_ERR_INPUT with a one-line reason that never quotes the file. */
int relay_credential_load(const char *file, char **ret, char source[4096]);
void relay_credential_free(char *secret);
/* The rules of a credential file's content, on buf[0..*len) (NUL at
 * buf[*len]): strips one trailing newline (and CR) in place, updating *len;
 * NULL when it is a credential, else the rule it breaks (never quoting it). */
const char *relay_credential_check(char *buf, size_t *len);

/* One finished transfer. transport_reason is NULL when a complete HTTP
 * response arrived (then http_status/body are meaningful); otherwise it is
 * a failure reason (tls_verify_failed, connect_failed, timeout, ...). */
typedef struct RelayResult {
    uint64_t tag;
    const char *transport_reason;
    char detail[256]; /* libcurl's words, for the log */
    long http_status; /* 0 when no response */
    const char *body; /* valid during the callback only */
    size_t body_len;
    int64_t retry_after_ms; /* -1: no (valid) Retry-After */
    int64_t elapsed_ms;
} RelayResult;

typedef void (*relay_done_fn)(void *userdata, const RelayResult *res);

/* Checks the options (https URL, readable CA file) and sets up the pool.
 * LV_ERR_INPUT with detail for a bad option. */
int relay_new(const RelayOptions *opt, Relay **ret);
/* Aborts whatever is in flight; accepts NULL, returns NULL. */
Relay *relay_free(Relay *r);

/* Starts a POST of body (borrowed: it must stay valid until the transfer
 * completes or is aborted) with Idempotency-Key: event_id. */
int relay_submit(Relay *r, uint64_t tag, const char *event_id, const char *body, size_t len);
size_t relay_in_flight(const Relay *r);

/* Drives the transfers: waits up to timeout_ms for network activity or for
 * one of the extra fds (their revents are filled in), then calls done for
 * each finished transfer. Returns the number finished, or a negative error. */
int relay_run(Relay *r, int timeout_ms, struct pollfd *extra, size_t n_extra, relay_done_fn done,
              void *userdata);
/* Aborts every transfer in flight (no callbacks); their tags are returned
 * through done with transport_reason "aborted". */
void relay_abort_all(Relay *r, relay_done_fn done, void *userdata);

/* Retry-After (RFC 9110 §10.2.3): delta-seconds or an HTTP-date, relative to
 * now_ms; capped at RELAY_RETRY_AFTER_CAP_S; a date in the past is 0.
 * Returns 0, or LV_ERR_INPUT when the value is neither form. */
int relay_parse_retry_after(const char *value, int64_t now_ms, int64_t *ret_ms);
/* The failure reason for a libcurl result code (exposed for the tests). */
const char *relay_reason_for_curl(int curl_code);

/* One synchronous round trip for `doctor`: OPTIONS <url> with the same TLS,
 * protocol, proxy and timeout settings as a relayed POST, nothing sent in
 * the body. stage says how far it got: "dns", "tcp", "tls" (the handshake or
 * the certificate check failed) or "http" (a response, or a failure after
 * the handshake). transport_reason uses relay_reason_for_curl's words and is
 * NULL when a complete response arrived (then http_status is set). */
typedef struct RelayProbe {
    const char *transport_reason;
    const char *stage;
    char detail[256];
    long http_status;
    char allow[128];  /* the Allow header, if any */
    bool protocol_ok; /* X-Attesto-Protocol: ATTESTO-LOCAL-VAULT-RELAY/1 came back */
    int64_t elapsed_ms;
} RelayProbe;
/* Returns 0 after a round trip was attempted (whatever its outcome, see
 * *ret), or LV_ERR_INPUT for bad options (as relay_new). */
int relay_probe(const RelayOptions *opt, RelayProbe *ret);
