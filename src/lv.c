/* SPDX-License-Identifier: Apache-2.0 */
/* Shared basics: error detail, hex, hashing, bounded reads, identifiers, time. */
#include "lv.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static _Thread_local char error_detail[1024];

int lv_error_set(int r, const char *fmt, ...)
{
    /* Formatted aside, then copied: callers wrap the detail they already
     * have ("payload: %s", lv_error()), and vsnprintf into a buffer that is
     * also an argument is undefined (glibc garbled the path it quoted). */
    char tmp[sizeof(error_detail)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    memcpy(error_detail, tmp, sizeof(tmp));
    /* One line: an error message never carries a newline from its input. */
    for (char *p = error_detail; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return r;
}

const char *lv_error(void)
{
    return error_detail;
}

void lv_error_clear(void)
{
    error_detail[0] = '\0';
}

bool lv_is_token_error(int r)
{
    switch (r) {
    case LV_ERR_NOMOD:
    case LV_ERR_NOTOKEN:
    case LV_ERR_PIN:
    case LV_ERR_NOKEY:
    case LV_ERR_KEYBAD:
    case LV_ERR_AMBIG:
    case LV_ERR_TOKEN:
        return true;
    default:
        return false;
    }
}

int lv_exit_code(int r)
{
    if (r >= 0)
        return LV_EXIT_OK;
    if (r == LV_ERR_INPUT || r == LV_ERR_TOOBIG)
        return LV_EXIT_USAGE;
    if (r == LV_ERR_CONFLICT)
        return LV_EXIT_CONFLICT;
    if (r == LV_ERR_QUOTA)
        return LV_EXIT_QUOTA;
    if (r == LV_ERR_ROLLBACK || r == LV_ERR_FOREIGN)
        return LV_EXIT_STATE;
    if (lv_is_token_error(r))
        return LV_EXIT_TOKEN;
    return LV_EXIT_FAILURE;
}

void *erase_and_free(void *p, size_t n)
{
    if (p) {
        explicit_bzero(p, n);
        free(p);
    }
    return NULL;
}

void hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hex_decode(const char *in, uint8_t *out, size_t n)
{
    if (!in || strlen(in) != 2 * n)
        return LV_ERR_INPUT;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return LV_ERR_INPUT;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool is_lower_hex(const char *s, size_t len)
{
    if (!s || strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

void lv_sha256(const void *data, size_t n, uint8_t out[32])
{
    unsigned int len = 32;
    /* EVP_Digest cannot fail for SHA-256 short of memory exhaustion; abort
     * rather than hand back an unset hash. */
    if (EVP_Digest(data, n, out, &len, EVP_sha256(), NULL) != 1)
        abort();
}

void lv_sha256_hex(const void *data, size_t n, char out[65])
{
    uint8_t d[32];
    lv_sha256(data, n, d);
    hex_encode(d, 32, out);
}

bool lv_memeq(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

int lv_read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
    _cleanup_close_ int fd = -1;
    int in = STDIN_FILENO;
    if (strcmp(path, "-") != 0) {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        /* -EACCES is the PIN class (exit 5); an unreadable file is not. */
        if (fd < 0)
            return lv_error_set(errno == EACCES ? -EPERM : -errno, "%s: %s", path, strerror(errno));
        in = fd;
    }
    size_t cap = 4096, len = 0;
    _cleanup_free_ char *buf = malloc(cap);
    if (!buf)
        return -ENOMEM;
    for (;;) {
        if (len == cap) {
            if (cap > max + 1)
                break;
            size_t ncap = cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb)
                return -ENOMEM;
            buf = nb;
            cap = ncap;
        }
        ssize_t k = read(in, buf + len, cap - len);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return lv_error_set(-errno, "%s: %s", path, strerror(errno));
        }
        if (k == 0)
            break;
        len += (size_t)k;
        if (len > max)
            return lv_error_set(LV_ERR_TOOBIG, "%s: larger than the limit of %zu bytes", path, max);
    }
    char *nb = realloc(buf, len + 1);
    if (!nb)
        return -ENOMEM;
    buf = nb;
    buf[len] = '\0';
    *ret_len = len;
    *ret = TAKE_PTR(buf);
    return 0;
}

bool lv_valid_id(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n < 1 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '/' || c == '-'))
            return false;
    }
    return true;
}

int64_t lv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lv_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void lv_format_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int lv_parse_time(const char *s, int64_t *ret_ms)
{
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (!end || *end) {
        memset(&tm, 0, sizeof(tm));
        end = strptime(s, "%Y-%m-%d", &tm);
        if (!end || *end)
            return LV_ERR_INPUT;
    }
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return LV_ERR_INPUT;
    *ret_ms = (int64_t)t * 1000;
    return 0;
}

int lv_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}
