/* SPDX-License-Identifier: Apache-2.0 */
/* Shared basics: the error space, the per-thread error detail, cleanup
 * helpers, hex and hashing, bounded file reads and time. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One error space: 0 or a negative errno. The classes below decide the exit
 * code of the verb that reports them (see lv_exit_code()). */
#define LV_ERR_INPUT    (-EINVAL)       /* invalid input or usage: exit 2 */
#define LV_ERR_TOOBIG   (-E2BIG)        /* input over a cap: exit 2 */
#define LV_ERR_NOMOD    (-ELIBACC)      /* PKCS#11 module cannot be loaded: exit 5 */
#define LV_ERR_NOTOKEN  (-ENODEV)       /* token absent: exit 5 */
#define LV_ERR_PIN      (-EACCES)       /* PIN missing, rejected or locked: exit 5 */
#define LV_ERR_NOKEY    (-ENOKEY)       /* key not found: exit 5 */
#define LV_ERR_KEYBAD   (-EKEYREJECTED) /* key of wrong type or attributes: exit 5 */
#define LV_ERR_AMBIG    (-ENOTUNIQ)     /* URI matches several objects/tokens: exit 5 */
#define LV_ERR_TOKEN    (-EREMOTEIO)    /* token failed an operation: exit 5 */
#define LV_ERR_CRYPTO   (-EBADMSG)      /* data failed authentication/verification */
#define LV_ERR_CONFLICT (-EEXIST)       /* enqueue drift conflict: exit 4 */
#define LV_ERR_QUOTA    (-EDQUOT)       /* spool quota reached, nothing written: exit 9 */
/* Witness state integrity (docs/witness.md, "The anchor"): exit 8. */
#define LV_ERR_ROLLBACK (-ENOTRECOVERABLE) /* state_rollback: the database is behind its anchor */
#define LV_ERR_FOREIGN  (-EMEDIUMTYPE)     /* foreign_database: not the database anchored */

/* Exit codes of the CLI contract (DESIGN §8). */
enum {
    LV_EXIT_OK = 0,
    LV_EXIT_FAILURE = 1,
    LV_EXIT_USAGE = 2,
    LV_EXIT_FORK = 3,
    LV_EXIT_CONFLICT = 4,
    LV_EXIT_TOKEN = 5,
    LV_EXIT_GAP = 6,
    LV_EXIT_DELIVERY = 7,
    LV_EXIT_STATE = 8, /* witness state integrity: state_rollback or foreign_database */
    LV_EXIT_QUOTA = 9, /* the spool is full (quota): nothing written, retry later */
};

/* Maps an error of the classes above to the documented exit code. */
int lv_exit_code(int r);
bool lv_is_token_error(int r);

/* Modules never print. They record one line of detail naming the input and
 * the rule it broke; the verb that called them prints it once. */
int lv_error_set(int r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *lv_error(void); /* "" when nothing was recorded */
void lv_error_clear(void);

/* Cleanup helpers, systemd style. */
static inline void freep(void *p)
{
    free(*(void **)p);
}
#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define TAKE_PTR(p)                                                                                \
    ({                                                                                             \
        __typeof__(p) _p = (p);                                                                    \
        (p) = NULL;                                                                                \
        _p;                                                                                        \
    })
static inline void fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)
static inline void closep(int *fd)
{
    if (*fd >= 0)
        close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)
#define ELEMENTSOF(a)   (sizeof(a) / sizeof((a)[0]))

/* Wipes then frees; accepts NULL, returns NULL. */
void *erase_and_free(void *p, size_t n);

/* Lowercase hex. hex_encode writes 2n+1 bytes (NUL-terminated). */
void hex_encode(const uint8_t *in, size_t n, char *out);
/* Strict: exactly 2*n hex digits (either case). Returns 0 or LV_ERR_INPUT. */
int hex_decode(const char *in, uint8_t *out, size_t n);
bool is_lower_hex(const char *s, size_t len);

/* SHA-256 through OpenSSL. */
void lv_sha256(const void *data, size_t n, uint8_t out[32]);
void lv_sha256_hex(const void *data, size_t n, char out[65]);

/* Constant-time comparison. */
bool lv_memeq(const void *a, const void *b, size_t n);

/* Reads a whole file ("-" is stdin) of at most max bytes; refuses larger
 * ones with LV_ERR_TOOBIG. The result is NUL-terminated (not counted). */
int lv_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/* Identifier rule of DESIGN §5.2: 1-128 bytes of [A-Za-z0-9._:@/-]. */
bool lv_valid_id(const char *s);

/* Milliseconds, wall clock (CLOCK_REALTIME) and monotonic. */
int64_t lv_now_ms(void);
int64_t lv_mono_ms(void);
/* RFC 3339 UTC with seconds: "2026-11-28T12:00:00Z" (buffer >= 21). */
void lv_format_time(int64_t ms, char out[32]);
/* Parses "YYYY-MM-DD" or RFC 3339 "YYYY-MM-DDTHH:MM:SSZ". */
int lv_parse_time(const char *s, int64_t *ret_ms);

/* Random bytes from the OS (getrandom). Not for keys: keys live on the token. */
int lv_random(void *buf, size_t n);
