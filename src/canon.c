/* SPDX-License-Identifier: Apache-2.0 */
/* RFC 8785 (JCS) canonical JSON with the Attesto number policy: a strict
 * parser of our own (cJSON's cannot see duplicate keys, lone surrogates or a
 * number's spelling) and a canonical serializer for cJSON trees. */
#include "canon.h"
#include "lv.h"

#include <math.h>

#define MAX_SAFE_U64 ((uint64_t)CANON_MAX_SAFE_INTEGER)
/* Trees built by other modules may wrap a parsed payload (itself at most
 * CANON_MAX_DEPTH deep) in a few levels of their own; the serializer only
 * needs a bound for its stack. */
#define SERIALIZE_MAX_DEPTH (2 * CANON_MAX_DEPTH)
/* Objects up to this size get a pairwise duplicate check; larger ones are
 * sorted first, so a huge object stays O(n log n). */
#define SMALL_OBJECT 8

/* ---- JSON paths for error messages ------------------------------------ */

typedef struct {
    const char *key; /* member name when the level is an object */
    size_t index;    /* element index when it is an array */
    bool in_object;
    bool active; /* a member or element of this level is being handled */
} Frame;

typedef struct {
    const char *prefix;
    unsigned depth;
    Frame frames[SERIALIZE_MAX_DEPTH + 1];
} Path;

/* Appends a member name for display: printable and (valid) UTF-8 as is,
 * control characters escaped so the message stays one line, long names cut. */
static size_t path_put_key(char *out, size_t pos, size_t cap, const char *key)
{
    const size_t max_key = 48;
    size_t n = 0;
    for (const unsigned char *k = (const unsigned char *)key; *k && pos + 8 < cap; k++, n++) {
        if (n >= max_key && (*k & 0xC0) != 0x80) {
            pos += (size_t)snprintf(out + pos, cap - pos, "...");
            break;
        }
        if (*k < 0x20 || *k == 0x7F)
            pos += (size_t)snprintf(out + pos, cap - pos, "\\u%04x", *k);
        else
            out[pos++] = (char)*k;
    }
    out[pos] = '\0';
    return pos;
}

static void path_format(const Path *path, char *out, size_t cap)
{
    size_t pos = (size_t)snprintf(out, cap, "%s", path->prefix);
    if (pos >= cap)
        pos = cap - 1;
    for (unsigned i = 0; i < path->depth && pos + 16 < cap; i++) {
        const Frame *f = &path->frames[i];
        if (!f->active)
            break;
        if (f->in_object) {
            out[pos++] = '.';
            pos = path_put_key(out, pos, cap, f->key);
        } else {
            int k = snprintf(out + pos, cap - pos, "[%zu]", f->index);
            if (k > 0)
                pos = pos + (size_t)k < cap ? pos + (size_t)k : cap - 1;
        }
    }
    out[pos] = '\0';
}

static int path_error(const Path *path, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int path_error(const Path *path, int r, const char *fmt, ...)
{
    char where[512], what[512];
    va_list ap;
    path_format(path, where, sizeof(where));
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return lv_error_set(r, "%s: %s", where, what);
}

static Frame *path_push(Path *path, bool in_object)
{
    Frame *f = &path->frames[path->depth++];
    *f = (Frame){.in_object = in_object};
    return f;
}

/* ---- UTF-8 and UTF-16 --------------------------------------------------- */

/* Decodes one UTF-8 sequence per Unicode Table 3-7 (well-formed byte
 * sequences: no overlongs, no surrogates, nothing above U+10FFFF). Returns its
 * length, or 0 with *why set. */
static size_t utf8_decode(const uint8_t *p, const uint8_t *end, uint32_t *ret_cp, const char **why)
{
    uint8_t c = p[0];
    size_t n;
    uint32_t cp;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */

    if (c < 0x80) {
        *ret_cp = c;
        return 1;
    }
    if (c < 0xC0) {
        *why = "unexpected continuation byte";
        return 0;
    }
    if (c < 0xC2) {
        *why = "overlong encoding";
        return 0;
    }
    if (c < 0xE0) {
        n = 2;
        cp = c & 0x1F;
    } else if (c < 0xF0) {
        n = 3;
        cp = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c < 0xF5) {
        n = 4;
        cp = c & 0x07;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else if (c < 0xF8) {
        *why = "code point above U+10FFFF";
        return 0;
    } else {
        *why = "invalid byte";
        return 0;
    }
    if ((size_t)(end - p) < n) {
        *why = "truncated sequence";
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        uint8_t b = p[i];
        if (b < 0x80 || b > 0xBF) {
            *why = "truncated sequence";
            return 0;
        }
        if (i == 1 && (b < lo || b > hi)) {
            if (c == 0xED)
                *why = "UTF-16 surrogate encoded in UTF-8";
            else if (c == 0xF4)
                *why = "code point above U+10FFFF";
            else
                *why = "overlong encoding";
            return 0;
        }
        cp = (cp << 6) | (b & 0x3F);
    }
    *ret_cp = cp;
    return n;
}

/* A key ordering code points as their UTF-16 code units order them:
 * U+0000-U+D7FF, then everything above U+FFFF (high surrogates D800-DBFF),
 * then U+E000-U+FFFF. */
static uint32_t utf16_rank(uint32_t cp)
{
    if (cp < 0xD800)
        return cp;
    if (cp >= 0x10000)
        return 0xD800 + (cp - 0x10000);
    return cp + 0x200000;
}

/* Compares two valid NUL-terminated UTF-8 strings by UTF-16 code units. */
static int utf16_cmp(const char *a, const char *b)
{
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    size_t i = 0;
    while (x[i] && x[i] == y[i])
        i++;
    if (x[i] == y[i])
        return 0;
    if (!x[i])
        return -1;
    if (!y[i])
        return 1;
    /* UTF-8 byte order is code point order, which differs from UTF-16 order
     * only across the surrogate range: decode the differing characters. */
    if (x[i] < 0x80 && y[i] < 0x80)
        return x[i] < y[i] ? -1 : 1;
    while (i > 0 && (x[i] & 0xC0) == 0x80)
        i--;
    uint32_t cx = 0, cy = 0;
    const char *why;
    utf8_decode(x + i, x + i + strnlen((const char *)x + i, 4), &cx, &why);
    utf8_decode(y + i, y + i + strnlen((const char *)y + i, 4), &cy, &why);
    uint32_t rx = utf16_rank(cx), ry = utf16_rank(cy);
    return rx < ry ? -1 : rx > ry ? 1 : 0;
}

/* ---- parser ------------------------------------------------------------- */

typedef struct {
    const uint8_t *start, *p, *end;
    Path path;
    char *scratch;
    size_t scratch_cap;
} Parser;

static size_t off(const Parser *ps, const uint8_t *at)
{
    return (size_t)(at - ps->start);
}

static void describe(const Parser *ps, char *out, size_t cap)
{
    if (ps->p >= ps->end)
        snprintf(out, cap, "end of input");
    else if (*ps->p > 0x20 && *ps->p < 0x7F)
        snprintf(out, cap, "'%c' at byte %zu", *ps->p, off(ps, ps->p));
    else
        snprintf(out, cap, "byte 0x%02x at byte %zu", *ps->p, off(ps, ps->p));
}

static int unexpected(Parser *ps, const char *expected)
{
    char got[64];
    describe(ps, got, sizeof(got));
    return path_error(&ps->path, LV_ERR_INPUT, "unexpected %s, expected %s", got, expected);
}

static int oom(void)
{
    return lv_error_set(-ENOMEM, "out of memory");
}

static void skip_ws(Parser *ps)
{
    /* RFC 8259 white space only: no form feed, vertical tab or NBSP. */
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\n' || *ps->p == '\r' || *ps->p == '\t'))
        ps->p++;
}

static int scratch_put(Parser *ps, size_t *len, const void *data, size_t n)
{
    if (ps->scratch_cap - *len < n + 1) {
        size_t cap = ps->scratch_cap ? ps->scratch_cap : 256;
        while (cap - *len < n + 1)
            cap *= 2;
        char *s = realloc(ps->scratch, cap);
        if (!s)
            return oom();
        ps->scratch = s;
        ps->scratch_cap = cap;
    }
    memcpy(ps->scratch + *len, data, n);
    *len += n;
    return 0;
}

static int hex4(const uint8_t *p, uint32_t *ret)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    *ret = v;
    return 0;
}

static size_t utf8_encode(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parses a string whose opening quote is at ps->p into a NUL-terminated
 * cJSON_malloc'd copy. U+0000 is refused: cJSON strings are NUL-terminated,
 * so it would silently truncate the value. */
static int parse_string(Parser *ps, const char *what, char **ret)
{
    const uint8_t *s = ++ps->p, *p = s, *end = ps->end;

    /* Fast path: plain ASCII without escapes is copied as is. */
    while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
        p++;
    if (p < end && *p == '"') {
        size_t n = (size_t)(p - s);
        char *out = cJSON_malloc(n + 1);
        if (!out)
            return oom();
        memcpy(out, s, n);
        out[n] = '\0';
        ps->p = p + 1;
        *ret = out;
        return 0;
    }

    size_t len = 0;
    int r = scratch_put(ps, &len, s, (size_t)(p - s));
    if (r < 0)
        return r;
    for (;;) {
        if (p >= end) {
            ps->p = p;
            return path_error(&ps->path, LV_ERR_INPUT, "unterminated %s starting at byte %zu", what,
                              off(ps, s - 1));
        }
        uint8_t c = *p;
        if (c == '"') {
            p++;
            break;
        }
        if (c < 0x20)
            return path_error(&ps->path, LV_ERR_INPUT,
                              "control character 0x%02x in %s at byte %zu (must be escaped)", c,
                              what, off(ps, p));
        if (c == '\\') {
            if (end - p < 2)
                return path_error(&ps->path, LV_ERR_INPUT, "unterminated %s starting at byte %zu",
                                  what, off(ps, s - 1));
            const uint8_t *esc = p;
            uint8_t e = p[1], simple;
            p += 2;
            switch (e) {
            case '"':
            case '\\':
            case '/':
                simple = e;
                break;
            case 'b':
                simple = '\b';
                break;
            case 'f':
                simple = '\f';
                break;
            case 'n':
                simple = '\n';
                break;
            case 'r':
                simple = '\r';
                break;
            case 't':
                simple = '\t';
                break;
            case 'u': {
                uint32_t cp, lo;
                if (end - p < 4 || hex4(p, &cp) < 0)
                    return path_error(&ps->path, LV_ERR_INPUT,
                                      "invalid \\u escape in %s at byte %zu (4 hex digits needed)",
                                      what, off(ps, esc));
                p += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return path_error(&ps->path, LV_ERR_INPUT,
                                      "lone low surrogate \\u%04x in %s at byte %zu", cp, what,
                                      off(ps, esc));
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 ||
                        lo < 0xDC00 || lo > 0xDFFF)
                        return path_error(&ps->path, LV_ERR_INPUT,
                                          "lone high surrogate \\u%04x in %s at byte %zu", cp, what,
                                          off(ps, esc));
                    p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (cp == 0)
                    return path_error(&ps->path, LV_ERR_INPUT,
                                      "\\u0000 in %s at byte %zu is not supported", what,
                                      off(ps, esc));
                uint8_t buf[4];
                size_t k = utf8_encode(cp, buf);
                r = scratch_put(ps, &len, buf, k);
                if (r < 0)
                    return r;
                continue;
            }
            default:
                return path_error(&ps->path, LV_ERR_INPUT, "invalid escape \\%c in %s at byte %zu",
                                  e >= 0x20 && e < 0x7F ? e : '?', what, off(ps, esc));
            }
            r = scratch_put(ps, &len, &simple, 1);
            if (r < 0)
                return r;
            continue;
        }
        /* A run of plain bytes, then one validated multi-byte sequence. */
        const uint8_t *run = p;
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        if (p == run) {
            uint32_t cp;
            const char *why = NULL;
            size_t n = utf8_decode(p, end, &cp, &why);
            if (n == 0)
                return path_error(&ps->path, LV_ERR_INPUT, "invalid UTF-8 (%s) in %s at byte %zu",
                                  why, what, off(ps, p));
            p += n;
        }
        r = scratch_put(ps, &len, run, (size_t)(p - run));
        if (r < 0)
            return r;
    }
    char *out = cJSON_malloc(len + 1);
    if (!out)
        return oom();
    memcpy(out, ps->scratch, len);
    out[len] = '\0';
    ps->p = p;
    *ret = out;
    return 0;
}

static bool is_digit(const uint8_t *p, const uint8_t *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* Decides exactly, on the decimal digits, whether the number at ps->p is an
 * integer within +-(2^53-1): strtod would round 9007199254740993 to an
 * acceptable double, and 1e400 to infinity. */
static int parse_number(Parser *ps, cJSON **ret)
{
    const uint8_t *s = ps->p, *p = s, *end = ps->end;
    bool neg = false;

    if (*p == '-') {
        neg = true;
        p++;
    }
    if (!is_digit(p, end)) {
        ps->p = p;
        return unexpected(ps, "a digit");
    }
    const uint8_t *int_s = p;
    if (*p == '0') {
        p++;
        if (is_digit(p, end))
            return path_error(&ps->path, LV_ERR_INPUT, "number with a leading zero at byte %zu",
                              off(ps, s));
    } else {
        while (is_digit(p, end))
            p++;
    }
    size_t int_len = (size_t)(p - int_s);
    const uint8_t *frac_s = p;
    size_t frac_len = 0;
    if (p < end && *p == '.') {
        p++;
        frac_s = p;
        while (is_digit(p, end))
            p++;
        frac_len = (size_t)(p - frac_s);
        if (frac_len == 0) {
            ps->p = p;
            return unexpected(ps, "a digit after the decimal point");
        }
    }
    /* The exponent saturates far beyond any meaningful value, so a 10000-digit
     * exponent neither overflows nor changes the decision. */
    const int64_t exp_cap = INT64_C(1000000000000000);
    int64_t exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        bool eneg = false;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (!is_digit(p, end)) {
            ps->p = p;
            return unexpected(ps, "a digit in the exponent");
        }
        while (is_digit(p, end)) {
            if (exp < exp_cap)
                exp = exp * 10 + (*p - '0');
            p++;
        }
        if (eneg)
            exp = -exp;
    }
    ps->p = p;

    /* Digits d[0..n) = integer part then fraction; d[k] weighs
     * 10^(int_len - 1 - k + exp). */
    size_t n = int_len + frac_len;
#define DIGIT(k) ((k) < int_len ? int_s[(k)] : frac_s[(k)-int_len])
    size_t first = 0, last = n;
    while (first < n && DIGIT(first) == '0')
        first++;
    uint64_t v = 0;
    if (first < n) {
        last = n - 1;
        while (DIGIT(last) == '0')
            last--;
        int64_t lowest = (int64_t)int_len - 1 - (int64_t)last + exp;
        int64_t ndigits = (int64_t)int_len - (int64_t)first + exp; /* of the integer value */
        size_t shown = (size_t)(p - s);
        int cut = shown > 40 ? 40 : (int)shown;
        const char *dots = shown > 40 ? "..." : "";
        if (lowest < 0)
            return path_error(&ps->path, LV_ERR_INPUT,
                              "non-integer number %.*s%s (send decimals as strings)", cut,
                              (const char *)s, dots);
        if (ndigits > 16)
            return path_error(&ps->path, LV_ERR_INPUT, "integer %.*s%s outside +-(2^53-1)", cut,
                              (const char *)s, dots);
        for (size_t k = first; k <= last; k++)
            v = v * 10 + (uint64_t)(DIGIT(k) - '0');
        for (int64_t k = 0; k < lowest; k++)
            v *= 10;
        if (v > MAX_SAFE_U64)
            return path_error(&ps->path, LV_ERR_INPUT, "integer %.*s%s outside +-(2^53-1)", cut,
                              (const char *)s, dots);
    }
#undef DIGIT
    /* -0 is 0: JCS prints both as 0 and the tree must not carry -0.0. */
    double d = v == 0 ? 0.0 : neg ? -(double)v : (double)v;
    cJSON *item = cJSON_CreateNumber(d);
    if (!item)
        return oom();
    *ret = item;
    return 0;
}

static void link_child(cJSON *parent, cJSON **tail, cJSON *child)
{
    /* cJSON's list: head->prev is the tail, tail->next is NULL. Linking here
     * avoids cJSON_AddItemToObject's copy of every member name. */
    if (!*tail) {
        parent->child = child;
        child->prev = child;
    } else {
        (*tail)->next = child;
        child->prev = *tail;
        parent->child->prev = child;
    }
    *tail = child;
}

static int parse_value(Parser *ps, cJSON **ret);

static int cmp_names(const void *a, const void *b)
{
    return strcmp((*(cJSON *const *)a)->string, (*(cJSON *const *)b)->string);
}

/* Member names are compared after unescaping ("a" and "\u0061" collide). */
static int check_duplicates(Parser *ps, Frame *f, cJSON *obj, size_t count)
{
    const char *dup = NULL;
    if (count <= SMALL_OBJECT) {
        for (cJSON *a = obj->child; a && !dup; a = a->next)
            for (cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) {
                    dup = a->string;
                    break;
                }
    } else {
        _cleanup_free_ cJSON **v = malloc(count * sizeof(*v));
        if (!v)
            return oom();
        size_t i = 0;
        for (cJSON *c = obj->child; c; c = c->next)
            v[i++] = c;
        qsort(v, count, sizeof(*v), cmp_names);
        for (i = 1; i < count && !dup; i++)
            if (strcmp(v[i - 1]->string, v[i]->string) == 0)
                dup = v[i]->string;
    }
    if (dup) {
        f->key = dup;
        f->active = true;
        return path_error(&ps->path, LV_ERR_INPUT, "duplicate key");
    }
    return 0;
}

static int parse_object(Parser *ps, cJSON **ret)
{
    cJSON *obj = cJSON_CreateObject(), *tail = NULL;
    if (!obj)
        return oom();
    Frame *f = path_push(&ps->path, true);
    size_t count = 0;
    int r;

    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        goto done_ok;
    }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            if (count > 0 && ps->p < ps->end && *ps->p == '}')
                r = path_error(&ps->path, LV_ERR_INPUT, "trailing comma before '}' at byte %zu",
                               off(ps, ps->p));
            else
                r = unexpected(ps, "a member name");
            goto fail;
        }
        char *key = NULL;
        r = parse_string(ps, "member name", &key);
        if (r < 0)
            goto fail;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            cJSON_free(key);
            r = unexpected(ps, "':'");
            goto fail;
        }
        ps->p++;
        f->key = key;
        f->active = true;
        cJSON *child = NULL;
        r = parse_value(ps, &child);
        if (r < 0) {
            cJSON_free(key);
            goto fail;
        }
        f->active = false;
        child->string = key;
        link_child(obj, &tail, child);
        count++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            break;
        }
        r = unexpected(ps, "',' or '}'");
        goto fail;
    }
    r = check_duplicates(ps, f, obj, count);
    if (r < 0)
        goto fail;
done_ok:
    ps->path.depth--;
    *ret = obj;
    return 0;
fail:
    cJSON_Delete(obj);
    return r;
}

static int parse_array(Parser *ps, cJSON **ret)
{
    cJSON *arr = cJSON_CreateArray(), *tail = NULL;
    if (!arr)
        return oom();
    Frame *f = path_push(&ps->path, false);
    int r;

    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        goto done_ok;
    }
    for (;;) {
        skip_ws(ps);
        if (f->index > 0 && ps->p < ps->end && *ps->p == ']') {
            r = path_error(&ps->path, LV_ERR_INPUT, "trailing comma before ']' at byte %zu",
                           off(ps, ps->p));
            goto fail;
        }
        f->active = true;
        cJSON *child = NULL;
        r = parse_value(ps, &child);
        if (r < 0)
            goto fail;
        f->active = false;
        link_child(arr, &tail, child);
        f->index++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            break;
        }
        r = unexpected(ps, "',' or ']'");
        goto fail;
    }
done_ok:
    ps->path.depth--;
    *ret = arr;
    return 0;
fail:
    cJSON_Delete(arr);
    return r;
}

static int parse_literal(Parser *ps, const char *word, cJSON *(*create)(void), cJSON **ret)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return path_error(&ps->path, LV_ERR_INPUT, "invalid literal at byte %zu (expected %s)",
                          off(ps, ps->p), word);
    ps->p += n;
    cJSON *item = create();
    if (!item)
        return oom();
    *ret = item;
    return 0;
}

static int parse_value(Parser *ps, cJSON **ret)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return unexpected(ps, "a value");
    switch (*ps->p) {
    case '{':
    case '[':
        if (ps->path.depth >= CANON_MAX_DEPTH)
            return path_error(&ps->path, LV_ERR_INPUT, "nesting deeper than %d levels at byte %zu",
                              CANON_MAX_DEPTH, off(ps, ps->p));
        return *ps->p == '{' ? parse_object(ps, ret) : parse_array(ps, ret);
    case '"': {
        char *s = NULL;
        int r = parse_string(ps, "string", &s);
        if (r < 0)
            return r;
        /* A string node that owns s, without cJSON_CreateString's copy. */
        cJSON *item = cJSON_CreateNull();
        if (!item) {
            cJSON_free(s);
            return oom();
        }
        item->type = cJSON_String;
        item->valuestring = s;
        *ret = item;
        return 0;
    }
    case 't':
        return parse_literal(ps, "true", cJSON_CreateTrue, ret);
    case 'f':
        return parse_literal(ps, "false", cJSON_CreateFalse, ret);
    case 'n':
        return parse_literal(ps, "null", cJSON_CreateNull, ret);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, ret);
        return unexpected(ps, "a value");
    }
}

int canon_parse(const char *in, size_t len, size_t max_len, const char *path_prefix, cJSON **ret)
{
    const char *prefix = path_prefix && *path_prefix ? path_prefix : "$";
    if (len > max_len)
        return lv_error_set(LV_ERR_TOOBIG, "%s: %zu bytes exceed the cap of %zu bytes", prefix, len,
                            max_len);
    if (!in && len > 0)
        return lv_error_set(LV_ERR_INPUT, "%s: no input", prefix);

    _cleanup_free_ Parser *ps = calloc(1, sizeof(*ps));
    if (!ps)
        return oom();
    ps->start = ps->p = (const uint8_t *)(in ? in : "");
    ps->end = ps->start + len;
    ps->path.prefix = prefix;

    cJSON *root = NULL;
    int r = parse_value(ps, &root);
    if (r >= 0) {
        skip_ws(ps);
        if (ps->p < ps->end) {
            r = unexpected(ps, "end of input");
            cJSON_Delete(root);
        }
    }
    free(ps->scratch);
    if (r < 0)
        return r;
    *ret = root;
    return 0;
}

/* ---- serializer --------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    Path path;
} Writer;

static int put(Writer *w, const void *data, size_t n)
{
    if (w->cap - w->len < n + 1) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->len < n + 1) {
            if (cap > SIZE_MAX / 2)
                return oom();
            cap *= 2;
        }
        char *b = realloc(w->buf, cap);
        if (!b)
            return oom();
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, data, n);
    w->len += n;
    return 0;
}

static int put_c(Writer *w, char c)
{
    return put(w, &c, 1);
}

/* Checks that a string from the tree is valid UTF-8. */
static int check_utf8(Writer *w, const char *s, const char *what)
{
    const uint8_t *p = (const uint8_t *)s, *end = p + strlen(s);
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        uint32_t cp;
        const char *why = NULL;
        size_t n = utf8_decode(p, end, &cp, &why);
        if (n == 0)
            return path_error(&w->path, LV_ERR_INPUT, "invalid UTF-8 (%s) in %s at offset %zu", why,
                              what, (size_t)(p - (const uint8_t *)s));
        p += n;
    }
    return 0;
}

/* JCS string escaping (RFC 8785 §3.2.2.2): only '"', '\\' and controls. */
static int put_string(Writer *w, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = (const uint8_t *)s;
    int r = put_c(w, '"');
    while (r >= 0) {
        const uint8_t *run = p;
        while (*p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        if (p > run && (r = put(w, run, (size_t)(p - run))) < 0)
            break;
        if (!*p)
            break;
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t n = 2;
        switch (*p) {
        case '"':
        case '\\':
            esc[1] = (char)*p;
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        default:
            esc[1] = 'u';
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 0xF];
            n = 6;
        }
        r = put(w, esc, n);
        p++;
    }
    return r < 0 ? r : put_c(w, '"');
}

static int put_number(Writer *w, double v)
{
    if (!isfinite(v))
        return path_error(&w->path, LV_ERR_INPUT, "non-finite number");
    if (v != floor(v)) {
        /* Shortest spelling that round-trips, for a readable message. */
        char buf[32];
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, sizeof(buf), "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
        return path_error(&w->path, LV_ERR_INPUT,
                          "non-integer number %s (send decimals as strings)", buf);
    }
    if (fabs(v) > (double)CANON_MAX_SAFE_INTEGER)
        return path_error(&w->path, LV_ERR_INPUT, "integer %.17g outside +-(2^53-1)", v);
    int64_t i = (int64_t)v; /* -0.0 becomes 0 */
    char buf[24], *e = buf + sizeof(buf), *q = e;
    uint64_t u = i < 0 ? (uint64_t)-i : (uint64_t)i;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (i < 0)
        *--q = '-';
    return put(w, q, (size_t)(e - q));
}

static int cmp_utf16(const void *a, const void *b)
{
    return utf16_cmp((*(cJSON *const *)a)->string, (*(cJSON *const *)b)->string);
}

static int put_value(Writer *w, const cJSON *node);

static int put_object(Writer *w, const cJSON *node)
{
    cJSON *small[16];
    _cleanup_free_ cJSON **heap = NULL;
    cJSON **v = small;
    size_t n = 0, i;
    int r;

    for (const cJSON *c = node->child; c; c = c->next)
        n++;
    if (n > ELEMENTSOF(small)) {
        heap = malloc(n * sizeof(*heap));
        if (!heap)
            return oom();
        v = heap;
    }
    Frame *f = path_push(&w->path, true);
    i = 0;
    for (cJSON *c = node->child; c; c = c->next) {
        if (!c->string)
            return path_error(&w->path, LV_ERR_INPUT, "object member without a name");
        if ((r = check_utf8(w, c->string, "member name")) < 0)
            return r;
        v[i++] = c;
    }
    qsort(v, n, sizeof(*v), cmp_utf16);
    for (i = 1; i < n; i++)
        if (strcmp(v[i - 1]->string, v[i]->string) == 0) {
            f->key = v[i]->string;
            f->active = true;
            return path_error(&w->path, LV_ERR_INPUT, "duplicate key");
        }
    if ((r = put_c(w, '{')) < 0)
        return r;
    for (i = 0; i < n; i++) {
        if (i > 0 && (r = put_c(w, ',')) < 0)
            return r;
        f->key = v[i]->string;
        f->active = true;
        if ((r = put_string(w, v[i]->string)) < 0 || (r = put_c(w, ':')) < 0 ||
            (r = put_value(w, v[i])) < 0)
            return r;
    }
    w->path.depth--;
    return put_c(w, '}');
}

static int put_array(Writer *w, const cJSON *node)
{
    Frame *f = path_push(&w->path, false);
    int r = put_c(w, '[');
    for (const cJSON *c = node->child; c && r >= 0; c = c->next) {
        if (f->index > 0 && (r = put_c(w, ',')) < 0)
            break;
        f->active = true;
        r = put_value(w, c);
        f->index++;
    }
    if (r < 0)
        return r;
    w->path.depth--;
    return put_c(w, ']');
}

static int put_value(Writer *w, const cJSON *node)
{
    int r;
    switch (node->type & 0xFF) {
    case cJSON_False:
        return put(w, "false", 5);
    case cJSON_True:
        return put(w, "true", 4);
    case cJSON_NULL:
        return put(w, "null", 4);
    case cJSON_Number:
        return put_number(w, node->valuedouble);
    case cJSON_String:
        if (!node->valuestring)
            return path_error(&w->path, LV_ERR_INPUT, "string without a value");
        if ((r = check_utf8(w, node->valuestring, "string")) < 0)
            return r;
        return put_string(w, node->valuestring);
    case cJSON_Array:
    case cJSON_Object:
        if (w->path.depth >= SERIALIZE_MAX_DEPTH)
            return path_error(&w->path, LV_ERR_INPUT, "nesting deeper than %d levels",
                              SERIALIZE_MAX_DEPTH);
        return (node->type & 0xFF) == cJSON_Array ? put_array(w, node) : put_object(w, node);
    default:
        return path_error(&w->path, LV_ERR_INPUT, "not a JSON value (cJSON type 0x%x)",
                          (unsigned)node->type);
    }
}

int canon_serialize(const cJSON *node, char **ret, size_t *ret_len)
{
    if (!node)
        return lv_error_set(LV_ERR_INPUT, "$: no value");
    _cleanup_free_ Writer *w = calloc(1, sizeof(*w));
    if (!w)
        return oom();
    w->path.prefix = "$";
    int r = put_value(w, node);
    if (r < 0) {
        free(w->buf);
        return r;
    }
    if (!w->buf && (r = put(w, "", 0)) < 0)
        return r;
    w->buf[w->len] = '\0';
    *ret = w->buf;
    if (ret_len)
        *ret_len = w->len;
    return 0;
}

int canon_json(const char *in, size_t len, size_t max_len, const char *path_prefix, char **ret,
               size_t *ret_len)
{
    cJSON *root = NULL;
    int r = canon_parse(in, len, max_len, path_prefix, &root);
    if (r < 0)
        return r;
    r = canon_serialize(root, ret, ret_len);
    cJSON_Delete(root);
    return r;
}

void canon_printable(const char *s, char out[68])
{
    size_t i = 0;
    for (; i < 64 && s[i]; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

int canon_check_members(const cJSON *o, const char *path, const char *const *names, size_t n,
                        bool all_required)
{
    if (!cJSON_IsObject(o))
        return lv_error_set(LV_ERR_INPUT, "%s: must be an object", path);
    const cJSON *m;
    cJSON_ArrayForEach(m, o)
    {
        bool known = false;
        for (size_t i = 0; i < n && !known; i++)
            known = strcmp(m->string, names[i]) == 0;
        if (!known) {
            char name[68];
            canon_printable(m->string, name);
            return lv_error_set(LV_ERR_INPUT, "%s.%s: unknown member", path, name);
        }
    }
    if (all_required)
        for (size_t i = 0; i < n; i++)
            if (!cJSON_GetObjectItemCaseSensitive(o, names[i]))
                return lv_error_set(LV_ERR_INPUT, "%s.%s: missing", path, names[i]);
    return 0;
}
