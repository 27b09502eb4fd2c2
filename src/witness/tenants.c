/* SPDX-License-Identifier: Apache-2.0 */
/* The tenants file of witness-serve: parsed into the callers each tenant
 * admits and its quotas, and asked who may submit for which tenant. */
#include <fcntl.h>
#include <sys/stat.h>

#include "lv.h"
#include "witness_tenants.h"

typedef enum CallerKind { CALLER_UID, CALLER_GID, CALLER_BEARER } CallerKind;

typedef struct Caller {
    CallerKind kind;
    uint32_t id;        /* uid or gid */
    uint8_t digest[32]; /* SHA-256 of a bearer secret */
    size_t tenant;      /* index into WitnessTenants.tenants */
    size_t line;
} Caller;

typedef struct Tenant {
    char id[129];
    WitnessQuota quota;
    bool has_streams, has_per_day;
    size_t n_callers;
    size_t line;
} Tenant;

struct WitnessTenants {
    Tenant *tenants;
    size_t n_tenants, cap_tenants;
    Caller *callers;
    size_t n_callers, cap_callers;
};

WitnessTenants *witness_tenants_free(WitnessTenants *t)
{
    if (!t)
        return NULL;
    /* The digests are not secrets, but they are what a guess is checked
     * against: no copies left behind. */
    erase_and_free(t->callers, t->cap_callers * sizeof(*t->callers));
    free(t->tenants);
    free(t);
    return NULL;
}

static inline void tenants_freep(WitnessTenants **t)
{
    witness_tenants_free(*t);
}

size_t witness_tenants_count(const WitnessTenants *t)
{
    return t ? t->n_tenants : 0;
}

/* ---- parsing -------------------------------------------------------------------------------- */

/* A whole number of at most 2^53 (max), decimal, no sign, no leading zeros
 * but "0" itself. */
static bool parse_number(const char *v, size_t n, int64_t max, int64_t *ret)
{
    if (n == 0 || n > 16 || (n > 1 && v[0] == '0'))
        return false;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        x = x * 10 + (v[i] - '0');
    }
    if (x > max)
        return false;
    *ret = x;
    return true;
}

static int grow(void **p, size_t *cap, size_t n, size_t size, size_t most)
{
    if (n < *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 16;
    if (c > most)
        c = most;
    if (c <= n)
        return -E2BIG;
    void *np = calloc(c, size);
    if (!np)
        return -ENOMEM;
    if (*p)
        memcpy(np, *p, n * size);
    /* Callers hold digests: the old copy is wiped (erase_and_free). */
    erase_and_free(*p, *cap * size);
    *p = np;
    *cap = c;
    return 0;
}

typedef struct Line {
    size_t no;
    const char *tok[2 + 3 * WITNESS_TENANT_CALLERS_MAX]; /* words */
    size_t len[2 + 3 * WITNESS_TENANT_CALLERS_MAX];
    size_t n;
} Line;

#define RULE_ID     "must be 1-128 bytes of [A-Za-z0-9._:@/-]"
#define RULE_NUMBER "must be a whole number from 0 (no limit) to 2^53"
#define RULE_UID    "must be a whole number from 0 to 4294967294"
#define RULE_DIGEST "must be 64 lowercase hex digits, the SHA-256 of the secret (sha256sum)"

/* Prints a word of the file into an error message only when it is plain. */
static const char *shown(const char *w, size_t n, char buf[70])
{
    if (n > 64)
        return "(a long word)";
    for (size_t i = 0; i < n; i++)
        if (w[i] <= ' ' || w[i] > '~')
            return "(a word with control or non-ASCII bytes)";
    memcpy(buf, w, n);
    buf[n] = '\0';
    return buf;
}

/* One quota field (max-streams=, max-statements-per-day=) into q. */
static int quota_field(const Line *l, const char *key, size_t klen, const char *v, size_t vlen,
                       WitnessQuota *q, bool *has_streams, bool *has_per_day, bool *ret_known)
{
    bool streams = klen == 11 && memcmp(key, "max-streams", 11) == 0;
    bool per_day = klen == 22 && memcmp(key, "max-statements-per-day", 22) == 0;
    *ret_known = streams || per_day;
    if (!*ret_known)
        return 0;
    bool *has = streams ? has_streams : has_per_day;
    const char *name = streams ? "max-streams" : "max-statements-per-day";
    if (*has)
        return lv_error_set(LV_ERR_INPUT, "line %zu: %s: given twice", l->no, name);
    int64_t x;
    if (!parse_number(v, vlen, INT64_C(1) << 53, &x))
        return lv_error_set(LV_ERR_INPUT, "line %zu: %s: " RULE_NUMBER, l->no, name);
    *(streams ? &q->max_streams : &q->max_statements_per_day) = x;
    *has = true;
    return 0;
}

static int parse_defaults(const Line *l, WitnessQuota *q, bool *has_streams, bool *has_per_day,
                          bool *seen)
{
    if (*seen)
        return lv_error_set(LV_ERR_INPUT, "line %zu: defaults: given twice (one defaults line)",
                            l->no);
    *seen = true;
    if (l->n < 2)
        return lv_error_set(LV_ERR_INPUT,
                            "line %zu: defaults: needs max-streams=N and/or "
                            "max-statements-per-day=N",
                            l->no);
    for (size_t i = 1; i < l->n; i++) {
        const char *eq = memchr(l->tok[i], '=', l->len[i]);
        char buf[70];
        if (!eq)
            return lv_error_set(LV_ERR_INPUT, "line %zu: %s: must be FIELD=VALUE", l->no,
                                shown(l->tok[i], l->len[i], buf));
        size_t klen = (size_t)(eq - l->tok[i]);
        bool known;
        int r = quota_field(l, l->tok[i], klen, eq + 1, l->len[i] - klen - 1, q, has_streams,
                            has_per_day, &known);
        if (r < 0)
            return r;
        if (!known)
            return lv_error_set(LV_ERR_INPUT,
                                "line %zu: %s: unknown field on a defaults line (allowed: "
                                "max-streams, max-statements-per-day)",
                                l->no, shown(l->tok[i], klen, buf));
    }
    return 0;
}

static int parse_tenant(WitnessTenants *t, const Line *l)
{
    char buf[70];
    if (l->n < 2)
        return lv_error_set(LV_ERR_INPUT, "line %zu: tenant: needs a tenant id", l->no);
    if (l->len[1] > 128 || memchr(l->tok[1], '=', l->len[1]))
        return lv_error_set(LV_ERR_INPUT, "line %zu: tenant id: " RULE_ID, l->no);
    char id[129];
    memcpy(id, l->tok[1], l->len[1]);
    id[l->len[1]] = '\0';
    if (!lv_valid_id(id))
        return lv_error_set(LV_ERR_INPUT, "line %zu: tenant id: " RULE_ID, l->no);
    if (t->n_tenants >= WITNESS_TENANTS_MAX)
        return lv_error_set(LV_ERR_INPUT, "line %zu: tenant: more than %d tenants", l->no,
                            WITNESS_TENANTS_MAX);
    int r = grow((void **)&t->tenants, &t->cap_tenants, t->n_tenants, sizeof(Tenant),
                 WITNESS_TENANTS_MAX);
    if (r < 0)
        return r;
    Tenant *te = &t->tenants[t->n_tenants];
    *te = (Tenant){.line = l->no};
    memcpy(te->id, id, sizeof(id));
    size_t first = t->n_callers;
    for (size_t i = 2; i < l->n; i++) {
        const char *w = l->tok[i];
        const char *eq = memchr(w, '=', l->len[i]);
        if (!eq)
            return lv_error_set(LV_ERR_INPUT, "line %zu: %s: must be FIELD=VALUE", l->no,
                                shown(w, l->len[i], buf));
        size_t klen = (size_t)(eq - w), vlen = l->len[i] - klen - 1;
        const char *v = eq + 1;
        bool known;
        r = quota_field(l, w, klen, v, vlen, &te->quota, &te->has_streams, &te->has_per_day,
                        &known);
        if (r < 0)
            return r;
        if (known)
            continue;
        Caller c = {.tenant = t->n_tenants, .line = l->no};
        if (klen == 3 && (memcmp(w, "uid", 3) == 0 || memcmp(w, "gid", 3) == 0)) {
            int64_t x;
            c.kind = w[0] == 'u' ? CALLER_UID : CALLER_GID;
            /* (uid_t)-1 is "no change" to chown(), never a caller. */
            if (!parse_number(v, vlen, UINT32_MAX - 1, &x))
                return lv_error_set(LV_ERR_INPUT, "line %zu: %.3s: " RULE_UID, l->no, w);
            c.id = (uint32_t)x;
        } else if (klen == 13 && memcmp(w, "bearer-sha256", 13) == 0) {
            c.kind = CALLER_BEARER;
            char hex[65];
            if (vlen == 64)
                memcpy(hex, v, 64);
            hex[vlen == 64 ? 64 : 0] = '\0';
            if (vlen != 64 || !is_lower_hex(hex, 64) || hex_decode(hex, c.digest, 32) < 0)
                return lv_error_set(LV_ERR_INPUT, "line %zu: bearer-sha256: " RULE_DIGEST, l->no);
        } else
            return lv_error_set(LV_ERR_INPUT,
                                "line %zu: %s: unknown field (allowed: uid, gid, bearer-sha256, "
                                "max-streams, max-statements-per-day)",
                                l->no, shown(w, klen, buf));
        for (size_t k = first; k < t->n_callers; k++) {
            const Caller *o = &t->callers[k];
            if (o->kind == c.kind &&
                (c.kind == CALLER_BEARER ? memcmp(o->digest, c.digest, 32) == 0 : o->id == c.id))
                return lv_error_set(LV_ERR_INPUT, "line %zu: %s: given twice for tenant %s", l->no,
                                    c.kind == CALLER_UID   ? "uid"
                                    : c.kind == CALLER_GID ? "gid"
                                                           : "bearer-sha256",
                                    te->id);
        }
        if (t->n_callers - first >= WITNESS_TENANT_CALLERS_MAX)
            return lv_error_set(LV_ERR_INPUT,
                                "line %zu: tenant %s: more than %d uid=, gid= and bearer-sha256=",
                                l->no, te->id, WITNESS_TENANT_CALLERS_MAX);
        r = grow((void **)&t->callers, &t->cap_callers, t->n_callers, sizeof(Caller), SIZE_MAX / 2);
        if (r < 0)
            return r;
        t->callers[t->n_callers++] = c;
    }
    te->n_callers = t->n_callers - first;
    if (te->n_callers == 0)
        return lv_error_set(LV_ERR_INPUT,
                            "line %zu: tenant %s: names no caller (give uid=, gid= or "
                            "bearer-sha256=)",
                            l->no, te->id);
    t->n_tenants++;
    return 0;
}

/* Splits one line into words (spaces and tabs). */
static int split(const char *s, size_t n, Line *l)
{
    l->n = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == n)
            break;
        size_t b = i;
        while (i < n && s[i] != ' ' && s[i] != '\t')
            i++;
        if (l->n == ELEMENTSOF(l->tok))
            return lv_error_set(LV_ERR_INPUT, "line %zu: more than %zu fields", l->no,
                                ELEMENTSOF(l->tok) - 2);
        l->tok[l->n] = s + b;
        l->len[l->n++] = i - b;
    }
    return 0;
}

static int cmp_index_tenant(const void *a, const void *b, void *userdata)
{
    const Tenant *t = userdata;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(t[x].id, t[y].id);
    return c ? c : (x > y) - (x < y);
}

static int cmp_bearer(const void *a, const void *b)
{
    const Caller *x = a, *y = b;
    int c = memcmp(x->digest, y->digest, 32);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* A tenant named twice, or one secret digest under two tenants: sorted, so
 * a file of the largest size is checked in n log n. */
static int check_unique(const WitnessTenants *t)
{
    int r = 0;
    if (t->n_tenants > 1) {
        size_t *ix = calloc(t->n_tenants, sizeof(*ix));
        if (!ix)
            return -ENOMEM;
        for (size_t i = 0; i < t->n_tenants; i++)
            ix[i] = i;
        qsort_r(ix, t->n_tenants, sizeof(*ix), cmp_index_tenant, t->tenants);
        for (size_t i = 1; i < t->n_tenants && r == 0; i++) {
            const Tenant *a = &t->tenants[ix[i - 1]], *b = &t->tenants[ix[i]];
            if (strcmp(a->id, b->id) == 0)
                r = lv_error_set(LV_ERR_INPUT,
                                 "line %zu: tenant %s: already on line %zu (one line per tenant)",
                                 b->line, b->id, a->line);
        }
        free(ix);
        if (r < 0)
            return r;
    }
    size_t nb = 0;
    for (size_t i = 0; i < t->n_callers; i++)
        nb += t->callers[i].kind == CALLER_BEARER;
    if (nb < 2)
        return 0;
    Caller *b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    nb = 0;
    for (size_t i = 0; i < t->n_callers; i++)
        if (t->callers[i].kind == CALLER_BEARER)
            b[nb++] = t->callers[i];
    qsort(b, nb, sizeof(*b), cmp_bearer);
    for (size_t i = 1; i < nb && r == 0; i++)
        if (memcmp(b[i - 1].digest, b[i].digest, 32) == 0)
            r = lv_error_set(LV_ERR_INPUT,
                             "line %zu: bearer-sha256: already names tenant %s on line %zu "
                             "(a secret authorizes one tenant)",
                             b[i].line, t->tenants[b[i - 1].tenant].id, b[i - 1].line);
    erase_and_free(b, nb * sizeof(*b));
    return r;
}

int witness_tenants_parse(const char *text, size_t len, WitnessTenants **ret)
{
    if (len > WITNESS_TENANTS_FILE_MAX)
        return lv_error_set(LV_ERR_TOOBIG, "larger than %d bytes", WITNESS_TENANTS_FILE_MAX);
    _cleanup_(tenants_freep) WitnessTenants *t = calloc(1, sizeof(*t));
    _cleanup_free_ Line *l = calloc(1, sizeof(*l));
    if (!t || !l)
        return -ENOMEM;
    WitnessQuota dflt = {WITNESS_TENANT_DEFAULT_STREAMS, WITNESS_TENANT_DEFAULT_PER_DAY};
    bool d_streams = false, d_per_day = false, d_seen = false;
    size_t pos = 0;
    int r = 0;
    for (l->no = 1; pos < len && r == 0; l->no++) {
        const char *s = text + pos, *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        if (n > WITNESS_TENANTS_LINE_MAX)
            return lv_error_set(LV_ERR_INPUT, "line %zu: longer than %d bytes", l->no,
                                WITNESS_TENANTS_LINE_MAX);
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '\r')
                return lv_error_set(LV_ERR_INPUT,
                                    "line %zu: carriage return: lines end with \\n alone", l->no);
            if ((ch < ' ' && ch != '\t') || ch >= 0x7f)
                return lv_error_set(
                    LV_ERR_INPUT, "line %zu: byte 0x%02x: the file is printable ASCII", l->no, ch);
        }
        if ((r = split(s, n, l)) < 0)
            return r;
        if (l->n == 0 || l->tok[0][0] == '#')
            continue;
        if (l->len[0] == 6 && memcmp(l->tok[0], "tenant", 6) == 0)
            r = parse_tenant(t, l);
        else if (l->len[0] == 8 && memcmp(l->tok[0], "defaults", 8) == 0)
            r = parse_defaults(l, &dflt, &d_streams, &d_per_day, &d_seen);
        else {
            char buf[70];
            r = lv_error_set(LV_ERR_INPUT,
                             "line %zu: %s: unknown line (a line is 'tenant ID FIELD=VALUE...', "
                             "'defaults FIELD=VALUE...' or a # comment)",
                             l->no, shown(l->tok[0], l->len[0], buf));
        }
    }
    if (r < 0)
        return r == -E2BIG ? lv_error_set(LV_ERR_TOOBIG, "too many entries") : r;
    if (t->n_tenants == 0)
        return lv_error_set(LV_ERR_INPUT,
                            "no tenant line: the file names at least one tenant and its callers");
    if ((r = check_unique(t)) < 0)
        return r;
    for (size_t i = 0; i < t->n_tenants; i++) {
        Tenant *te = &t->tenants[i];
        if (!te->has_streams)
            te->quota.max_streams = dflt.max_streams;
        if (!te->has_per_day)
            te->quota.max_statements_per_day = dflt.max_statements_per_day;
    }
    *ret = TAKE_PTR(t);
    return 0;
}

int witness_tenants_load(const char *path, WitnessTenants **ret)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return lv_error_set(LV_ERR_INPUT, "tenants file %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lv_error_set(LV_ERR_INPUT, "tenants file %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "tenants file %s: not a regular file", path);
    /* It decides who may submit for whom: whoever could write it could
     * make themselves any tenant. */
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return lv_error_set(LV_ERR_INPUT,
                            "tenants file %s: mode %04o: group or others may write it (chmod "
                            "go-w)",
                            path, (unsigned)(st.st_mode & 07777));
    if (st.st_size > WITNESS_TENANTS_FILE_MAX)
        return lv_error_set(LV_ERR_TOOBIG, "tenants file %s: larger than %d bytes", path,
                            WITNESS_TENANTS_FILE_MAX);
    _cleanup_free_ char *text = malloc((size_t)st.st_size + 1);
    if (!text)
        return -ENOMEM;
    size_t len = 0;
    for (;;) {
        if (len > (size_t)st.st_size)
            return lv_error_set(LV_ERR_TOOBIG, "tenants file %s: grew while read", path);
        ssize_t k = read(fd, text + len, (size_t)st.st_size + 1 - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return lv_error_set(LV_ERR_INPUT, "tenants file %s: %s", path, strerror(errno));
        if (k == 0)
            break;
        len += (size_t)k;
    }
    int r = witness_tenants_parse(text, len, ret);
    if (r < 0)
        return lv_error_set(r, "tenants file %s: %s", path, lv_error());
    return 0;
}

/* ---- questions ------------------------------------------------------------------------------ */

WitnessAuth witness_tenants_peer(const WitnessTenants *t, uid_t uid, gid_t gid,
                                 const char *tenant_id, const WitnessQuota **ret_quota)
{
    bool known = false;
    for (size_t i = 0; i < t->n_callers; i++) {
        const Caller *c = &t->callers[i];
        if (!((c->kind == CALLER_UID && c->id == uid) || (c->kind == CALLER_GID && c->id == gid)))
            continue;
        known = true;
        const Tenant *te = &t->tenants[c->tenant];
        if (!tenant_id)
            return WITNESS_AUTH_OK;
        if (strcmp(te->id, tenant_id) == 0) {
            if (ret_quota)
                *ret_quota = &te->quota;
            return WITNESS_AUTH_OK;
        }
    }
    return known ? WITNESS_AUTH_FORBIDDEN : WITNESS_AUTH_UNKNOWN;
}

WitnessAuth witness_tenants_bearer(const WitnessTenants *t, const char *secret, size_t len,
                                   const char *tenant_id, const WitnessQuota **ret_quota)
{
    uint8_t d[32];
    lv_sha256(secret, len, d);
    /* Every digest is compared, each in constant time: how long this takes
     * says nothing about which (if any) matched. */
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < t->n_callers; i++) {
        const Caller *c = &t->callers[i];
        bool eq = lv_memeq(c->digest, d, 32);
        if (c->kind == CALLER_BEARER && eq)
            found = c->tenant;
    }
    explicit_bzero(d, sizeof(d));
    if (found == SIZE_MAX)
        return WITNESS_AUTH_UNKNOWN;
    const Tenant *te = &t->tenants[found];
    if (!tenant_id)
        return WITNESS_AUTH_OK;
    if (strcmp(te->id, tenant_id) != 0)
        return WITNESS_AUTH_FORBIDDEN;
    if (ret_quota)
        *ret_quota = &te->quota;
    return WITNESS_AUTH_OK;
}
