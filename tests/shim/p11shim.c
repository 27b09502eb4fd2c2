/* SPDX-License-Identifier: Apache-2.0 */
/* Test-only fault-injecting PKCS#11 module: loads the real module (SoftHSM),
 * forwards every call to it, and fails the calls that a rule file names, for
 * faults SoftHSM cannot produce on demand (a device pulled mid-run, a session
 * that vanishes, a login that is lost, a transient general error).
 *
 * Environment:
 *   LV_SHIM_MODULE  the real module (default: the usual libsofthsm2.so paths)
 *   LV_SHIM_RULES   the rule file; re-read whenever it changes (inode, size
 *                   or mtime), so a test can inject in the middle of a run.
 *                   Replace it atomically (write + rename). Counters restart
 *                   at every reload.
 *   LV_SHIM_LOG     optional: one line per injected fault is appended,
 *                   "<pid> <function> <CKR name> <effect>", so tests can count
 *                   what they injected.
 *
 * Rule file: one rule per line, '#' starts a comment.
 *   FUNCTION RV [after=N] [times=M] [effect=E]
 * FUNCTION is a PKCS#11 function name ("C_Sign") or "*" (every function but
 * C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_CloseSession and
 * C_CloseAllSessions, so that teardown still releases the real module's
 * resources). RV is a CKR_ name or a number. The first N matching calls pass
 * (default 0); the next M fail (default 1; times=0: every later call). E is
 * what really happens on the token, so that the fault is not only a return
 * code but the state a real token would be left in:
 *   none           nothing (default for every other code)
 *   close-session  the real session is closed (default for
 *                  CKR_SESSION_HANDLE_INVALID and CKR_SESSION_CLOSED)
 *   logout         the application is logged out (default for
 *                  CKR_USER_NOT_LOGGED_IN); session objects of the login
 *                  (the unwrapped DEK) become unusable
 *   close-all      every session on the slot is closed, which logs out and
 *                  destroys all session objects, as when a device is pulled
 *                  (default for CKR_DEVICE_REMOVED, CKR_DEVICE_ERROR and
 *                  CKR_TOKEN_NOT_PRESENT)
 *   corrupt-output with RV CKR_OK, for the functions that end an operation
 *                  with output (C_Sign, C_Encrypt, C_Decrypt, C_Digest and
 *                  their Final forms): the real call succeeds and the first
 *                  bit of its output is flipped, as a faulty token that
 *                  answers CKR_OK with a wrong result (a size query, with no
 *                  output buffer, uses the rule up and changes nothing)
 *   stall          the call waits 5 s before it goes on (to the fault, or
 *                  with RV CKR_OK to the real module): a test kills the
 *                  process while it stands exactly there
 * RV CKR_OK makes a rule an effect without a fault: the effect happens, then
 * the call reaches the real module and answers what it answers (a login lost
 * between two calls, which only the next call reveals).
 * A malformed line is reported on stderr and in the log ("BADRULE") and
 * ignored.
 *
 * Token profiles (docs/token.md): three more kinds of line make SoftHSM look
 * like a token that names things differently; they apply from the moment
 * the file is (re)read, like the rules.
 *   map-mechanism SHOWN REAL   the token lists and accepts mechanism SHOWN
 *                              (C_GetMechanismList/Info, C_SignInit,
 *                              C_VerifyInit, C_WrapKey, C_UnwrapKey) and
 *                              does REAL on SoftHSM; REAL itself is hidden
 *                              (CKR_MECHANISM_INVALID)
 *   map-key-type SHOWN REAL    CKA_KEY_TYPE REAL is reported as SHOWN
 *                              (C_GetAttributeValue), and SHOWN in a template
 *                              (C_FindObjectsInit, C_CreateObject,
 *                              C_GenerateKeyPair) means REAL; REAL in a
 *                              template matches nothing
 *   manufacturer TEXT          C_GetTokenInfo reports manufacturerID TEXT
 * SHOWN and REAL are numbers (0x80000c03); each translation of a mechanism
 * is logged as "<pid> MAP <function> SHOWN->REAL". */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <p11-kit/pkcs11.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RULES 64
#define MAX_MAPS  8

typedef enum {
    EFFECT_AUTO,
    EFFECT_NONE,
    EFFECT_CLOSE_SESSION,
    EFFECT_LOGOUT,
    EFFECT_CLOSE_ALL,
    EFFECT_CORRUPT_OUTPUT,
    EFFECT_STALL,
} Effect;

static const char *const effect_names[] = {"auto",      "none",           "close-session", "logout",
                                           "close-all", "corrupt-output", "stall"};

typedef struct Rule {
    char func[48];
    CK_RV rv;
    unsigned long after, times;
    Effect effect;
    unsigned long seen, fired;
} Rule;

typedef struct Code {
    CK_RV rv;
    const char *name;
} Code;

#define C(x)                                                                                       \
    {                                                                                              \
        x, #x                                                                                      \
    }
static const Code codes[] = {
    C(CKR_OK),
    C(CKR_HOST_MEMORY),
    C(CKR_SLOT_ID_INVALID),
    C(CKR_GENERAL_ERROR),
    C(CKR_FUNCTION_FAILED),
    C(CKR_ARGUMENTS_BAD),
    C(CKR_CANT_LOCK),
    C(CKR_DATA_INVALID),
    C(CKR_DEVICE_ERROR),
    C(CKR_DEVICE_MEMORY),
    C(CKR_DEVICE_REMOVED),
    C(CKR_ENCRYPTED_DATA_INVALID),
    C(CKR_FUNCTION_CANCELED),
    C(CKR_KEY_HANDLE_INVALID),
    C(CKR_OBJECT_HANDLE_INVALID),
    C(CKR_OPERATION_ACTIVE),
    C(CKR_OPERATION_NOT_INITIALIZED),
    C(CKR_PIN_INCORRECT),
    C(CKR_PIN_LOCKED),
    C(CKR_SESSION_CLOSED),
    C(CKR_SESSION_COUNT),
    C(CKR_SESSION_HANDLE_INVALID),
    C(CKR_TOKEN_NOT_PRESENT),
    C(CKR_TOKEN_NOT_RECOGNIZED),
    C(CKR_USER_NOT_LOGGED_IN),
    C(CKR_USER_ALREADY_LOGGED_IN),
    C(CKR_WRAPPED_KEY_INVALID),
    C(CKR_CRYPTOKI_NOT_INITIALIZED),
};
#undef C

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Calls into the real module hold it shared; an effect that closes sessions
 * or logs out holds it exclusively, so that it never runs while another
 * thread is inside the module with one of those sessions: SoftHSM frees a
 * session that C_CloseAllSessions closes even while another thread signs
 * with it (a crash no real device removal causes in the host). */
static pthread_rwlock_t calls = PTHREAD_RWLOCK_INITIALIZER;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST shim;
static Rule rules[MAX_RULES];
static size_t nrules;
static bool have_stat;
static struct stat rules_stat;
static CK_SLOT_ID last_slot;
static bool have_slot;

typedef struct IdMap {
    CK_ULONG shown, real;
} IdMap;

/* The token profile of the rule file (see above). */
typedef struct Maps {
    IdMap mech[MAX_MAPS], kt[MAX_MAPS];
    size_t n_mech, n_kt;
    char manufacturer[33];
    bool have_manufacturer;
} Maps;
static Maps maps;

static const char *code_name(CK_RV rv)
{
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (codes[i].rv == rv)
            return codes[i].name;
    return "CKR_(other)";
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    const char *path = getenv("LV_SHIM_LOG");
    if (!path || !*path)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(buf))
        n = sizeof(buf) - 1;
    /* O_APPEND: lines from several processes do not interleave. */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    ssize_t w = write(fd, buf, (size_t)n);
    (void)w;
    close(fd);
}

static bool parse_ulong(const char *s, unsigned long *ret)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end)
        return false;
    *ret = v;
    return true;
}

static bool parse_rule(char *line, Rule *r)
{
    memset(r, 0, sizeof(*r));
    r->times = 1;
    char *save = NULL;
    char *func = strtok_r(line, " \t", &save);
    char *rv = strtok_r(NULL, " \t", &save);
    if (!func || !rv || strlen(func) >= sizeof(r->func))
        return false;
    if (strcmp(func, "*") != 0 && strncmp(func, "C_", 2) != 0)
        return false;
    snprintf(r->func, sizeof(r->func), "%s", func);
    bool known = false;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (strcmp(codes[i].name, rv) == 0) {
            r->rv = codes[i].rv;
            known = true;
        }
    if (!known && !parse_ulong(rv, &r->rv))
        return false;
    for (char *opt; (opt = strtok_r(NULL, " \t", &save));) {
        if (strncmp(opt, "after=", 6) == 0) {
            if (!parse_ulong(opt + 6, &r->after))
                return false;
        } else if (strncmp(opt, "times=", 6) == 0) {
            if (!parse_ulong(opt + 6, &r->times))
                return false;
        } else if (strncmp(opt, "effect=", 7) == 0) {
            bool ok = false;
            for (size_t i = 0; i < sizeof(effect_names) / sizeof(effect_names[0]); i++)
                if (strcmp(opt + 7, effect_names[i]) == 0) {
                    r->effect = (Effect)i;
                    ok = true;
                }
            if (!ok)
                return false;
        } else
            return false;
    }
    if (r->effect == EFFECT_AUTO) {
        switch (r->rv) {
        case CKR_DEVICE_REMOVED:
        case CKR_DEVICE_ERROR:
        case CKR_TOKEN_NOT_PRESENT:
            r->effect = EFFECT_CLOSE_ALL;
            break;
        case CKR_SESSION_HANDLE_INVALID:
        case CKR_SESSION_CLOSED:
            r->effect = EFFECT_CLOSE_SESSION;
            break;
        case CKR_USER_NOT_LOGGED_IN:
            r->effect = EFFECT_LOGOUT;
            break;
        default:
            r->effect = EFFECT_NONE;
        }
    }
    return true;
}

/* A profile line: 1 when it is one and valid, -1 when it is one and
 * malformed, 0 when it is not one (a rule). Called with the lock held. */
static int parse_map(const char *line)
{
    const char *p = line + strspn(line, " \t");
    bool mech = strncmp(p, "map-mechanism", 13) == 0 && (p[13] == ' ' || p[13] == '\t');
    bool kt = strncmp(p, "map-key-type", 12) == 0 && (p[12] == ' ' || p[12] == '\t');
    if (strncmp(p, "manufacturer", 12) == 0 && (p[12] == ' ' || p[12] == '\t')) {
        p += 12 + strspn(p + 12, " \t");
        size_t n = strlen(p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == 0 || n > 32)
            return -1;
        memcpy(maps.manufacturer, p, n);
        maps.manufacturer[n] = '\0';
        maps.have_manufacturer = true;
        return 1;
    }
    if (!mech && !kt)
        return 0;
    char copy[256], *save = NULL;
    snprintf(copy, sizeof(copy), "%s", p);
    strtok_r(copy, " \t", &save);
    char *a = strtok_r(NULL, " \t", &save), *b = strtok_r(NULL, " \t", &save);
    IdMap m;
    if (!a || !b || strtok_r(NULL, " \t", &save) || !parse_ulong(a, &m.shown) ||
        !parse_ulong(b, &m.real))
        return -1;
    if (mech && maps.n_mech < MAX_MAPS)
        maps.mech[maps.n_mech++] = m;
    else if (kt && maps.n_kt < MAX_MAPS)
        maps.kt[maps.n_kt++] = m;
    else
        return -1;
    return 1;
}

/* Called with the lock held: reloads the rules when the file changed. */
static void refresh_rules(void)
{
    const char *path = getenv("LV_SHIM_RULES");
    struct stat st;
    if (!path || !*path || stat(path, &st) < 0) {
        if (have_stat) {
            nrules = 0;
            maps = (Maps){0};
            have_stat = false;
        }
        return;
    }
    if (have_stat && st.st_ino == rules_stat.st_ino && st.st_dev == rules_stat.st_dev &&
        st.st_size == rules_stat.st_size && st.st_mtim.tv_sec == rules_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == rules_stat.st_mtim.tv_nsec)
        return;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    have_stat = true;
    rules_stat = st;
    nrules = 0;
    maps = (Maps){0};
    char line[256];
    int lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        line[strcspn(line, "\r\n")] = '\0';
        if (strspn(line, " \t") == strlen(line))
            continue;
        char copy[256];
        snprintf(copy, sizeof(copy), "%s", line);
        Rule r;
        int d = parse_map(line);
        if (d > 0)
            continue;
        if (d == 0 && nrules < MAX_RULES && parse_rule(line, &r))
            rules[nrules++] = r;
        else {
            fprintf(stderr, "p11shim: %s:%d: bad rule '%s'\n", path, lineno, copy);
            log_line("%d BADRULE %s:%d\n", (int)getpid(), path, lineno);
        }
    }
    fclose(f);
}

static bool wildcard_ok(const char *func)
{
    static const char *const spared[] = {"C_Initialize",   "C_Finalize",
                                         "C_GetInfo",      "C_GetFunctionList",
                                         "C_CloseSession", "C_CloseAllSessions"};
    for (size_t i = 0; i < sizeof(spared) / sizeof(spared[0]); i++)
        if (strcmp(func, spared[i]) == 0)
            return false;
    return true;
}

/* Makes the token's state match the fault (called with the lock held; the
 * real module does not call back into the shim). */
static void apply_effect(Effect e, bool has_session, CK_SESSION_HANDLE session, bool has_slot,
                         CK_SLOT_ID slot)
{
    if (e == EFFECT_NONE || e == EFFECT_CORRUPT_OUTPUT || e == EFFECT_STALL)
        return;
    pthread_rwlock_wrlock(&calls);
    switch (e) {
    case EFFECT_CLOSE_SESSION:
        if (has_session)
            real->C_CloseSession(session);
        break;
    case EFFECT_LOGOUT:
        if (has_session)
            real->C_Logout(session);
        else if (have_slot) {
            /* C_Logout needs a session of the application: borrow one. */
            CK_SESSION_HANDLE h;
            if (real->C_OpenSession(last_slot, CKF_SERIAL_SESSION, NULL, NULL, &h) == CKR_OK) {
                real->C_Logout(h);
                real->C_CloseSession(h);
            }
        }
        break;
    case EFFECT_CLOSE_ALL: {
        CK_SESSION_INFO si;
        if (!has_slot && has_session && real->C_GetSessionInfo(session, &si) == CKR_OK) {
            slot = si.slotID;
            has_slot = true;
        }
        if (!has_slot && have_slot) {
            slot = last_slot;
            has_slot = true;
        }
        if (has_slot)
            real->C_CloseAllSessions(slot);
        break;
    }
    default:
        break;
    }
    pthread_rwlock_unlock(&calls);
}

/* The real call, shared with other threads' real calls (see calls). */
#define REAL(expr)                                                                                 \
    ({                                                                                             \
        pthread_rwlock_rdlock(&calls);                                                             \
        CK_RV rv_real_ = (expr);                                                                   \
        pthread_rwlock_unlock(&calls);                                                             \
        rv_real_;                                                                                  \
    })

/* true when the call must fail with *ret_rv instead of reaching the module.
 * *ret_corrupt (when given) says that the real call's output is to be
 * corrupted. */
static bool inject(const char *func, bool has_session, CK_SESSION_HANDLE session, bool has_slot,
                   CK_SLOT_ID slot, CK_RV *ret_rv, bool *ret_corrupt)
{
    bool fire = false, stall = false;
    pthread_mutex_lock(&lock);
    refresh_rules();
    for (size_t i = 0; i < nrules && !fire; i++) {
        Rule *r = &rules[i];
        if (strcmp(r->func, func) != 0 && !(strcmp(r->func, "*") == 0 && wildcard_ok(func)))
            continue;
        r->seen++;
        if (r->seen <= r->after || (r->times != 0 && r->fired >= r->times))
            continue;
        r->fired++;
        /* CKR_OK: the effect only; the call then goes to the real module. */
        fire = r->rv != CKR_OK;
        *ret_rv = r->rv;
        apply_effect(r->effect, has_session, session, has_slot, slot);
        if (r->effect == EFFECT_CORRUPT_OUTPUT && ret_corrupt)
            *ret_corrupt = true;
        stall = stall || r->effect == EFFECT_STALL;
        log_line("%d %s %s %s\n", (int)getpid(), func, code_name(r->rv), effect_names[r->effect]);
    }
    pthread_mutex_unlock(&lock);
    if (stall)
        sleep(5);
    return fire;
}

#define FAULT_NONE(name)                                                                           \
    do {                                                                                           \
        CK_RV rv_;                                                                                 \
        if (inject(#name, false, 0, false, 0, &rv_, NULL))                                         \
            return rv_;                                                                            \
    } while (0)
#define FAULT_SESSION(name, s)                                                                     \
    do {                                                                                           \
        CK_RV rv_;                                                                                 \
        if (inject(#name, true, (s), false, 0, &rv_, NULL))                                        \
            return rv_;                                                                            \
    } while (0)
#define FAULT_SLOT(name, sl)                                                                       \
    do {                                                                                           \
        CK_RV rv_;                                                                                 \
        if (inject(#name, false, 0, true, (sl), &rv_, NULL))                                       \
            return rv_;                                                                            \
    } while (0)

/* One wrapper per function of the 2.40 list; the first parameter of a
 * session function is named s, of a slot function sl. */
#define W_SESSION(name, params, args)                                                              \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        FAULT_SESSION(name, s);                                                                    \
        return REAL(real->name args);                                                              \
    }
#define W_SLOT(name, params, args)                                                                 \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        FAULT_SLOT(name, sl);                                                                      \
        return REAL(real->name args);                                                              \
    }
/* corrupt-output: one bit of a result the real module produced (not of a
 * size query, which has no output yet). */
static void flip(CK_BYTE *out, CK_ULONG *len)
{
    if (out && len && *len > 0)
        out[0] ^= 0x01;
}

static void wipe(CK_BYTE *out, CK_ULONG *len)
{
    if (out && len)
        memset(out, 0, *len);
}

/* Functions that end an operation: the token ends it on any failure, so the
 * real call is made (its output wiped) before the fault is returned;
 * otherwise the next C_*Init would meet CKR_OPERATION_ACTIVE, which no real
 * token reports after a failed C_Sign. */
#define W_FINISH(name, params, args, out, outlen)                                                  \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        CK_RV rv_;                                                                                 \
        bool corrupt_ = false;                                                                     \
        if (!inject(#name, true, s, false, 0, &rv_, &corrupt_)) {                                  \
            CK_RV rv_out_ = REAL(real->name args);                                                 \
            if (corrupt_ && rv_out_ == CKR_OK)                                                     \
                flip((out), (outlen));                                                             \
            return rv_out_;                                                                        \
        }                                                                                          \
        if (REAL(real->name args) == CKR_OK)                                                       \
            wipe((out), (outlen));                                                                 \
        return rv_;                                                                                \
    }
#define W_NONE(name, params, args)                                                                 \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        FAULT_NONE(name);                                                                          \
        return REAL(real->name args);                                                              \
    }

W_NONE(C_Initialize, (void *a), (a))
W_NONE(C_Finalize, (void *a), (a))
W_NONE(C_GetInfo, (CK_INFO * a), (a))
W_NONE(C_GetSlotList, (CK_BBOOL a, CK_SLOT_ID *b, CK_ULONG *c), (a, b, c))
W_SLOT(C_GetSlotInfo, (CK_SLOT_ID sl, CK_SLOT_INFO *a), (sl, a))
W_SLOT(C_InitToken, (CK_SLOT_ID sl, CK_UTF8CHAR *a, CK_ULONG b, CK_UTF8CHAR *c), (sl, a, b, c))
W_SESSION(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR *a, CK_ULONG b), (s, a, b))
W_SESSION(C_SetPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR *a, CK_ULONG b, CK_UTF8CHAR *c, CK_ULONG d),
          (s, a, b, c, d))
W_SESSION(C_CloseSession, (CK_SESSION_HANDLE s), (s))
W_SLOT(C_CloseAllSessions, (CK_SLOT_ID sl), (sl))
W_SESSION(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO *a), (s, a))
W_SESSION(C_GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG *b), (s, a, b))
W_SESSION(C_SetOperationState,
          (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d),
          (s, a, b, c, d))
W_SESSION(C_Login, (CK_SESSION_HANDLE s, CK_USER_TYPE a, CK_UTF8CHAR *b, CK_ULONG c), (s, a, b, c))
W_SESSION(C_Logout, (CK_SESSION_HANDLE s), (s))
W_SESSION(C_CopyObject,
          (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE *b, CK_ULONG c,
           CK_OBJECT_HANDLE *d),
          (s, a, b, c, d))
W_SESSION(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a))
W_SESSION(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ULONG *b), (s, a, b))
W_SESSION(C_SetAttributeValue,
          (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE *b, CK_ULONG c), (s, a, b, c))
W_SESSION(C_FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *a, CK_ULONG b, CK_ULONG *c),
          (s, a, b, c))
W_SESSION(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))
W_SESSION(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b), (s, a, b))
W_FINISH(C_Encrypt, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_SESSION(C_EncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
          (s, a, b, c, d))
W_FINISH(C_EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG *b), (s, a, b), a, b)
W_SESSION(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b), (s, a, b))
W_FINISH(C_Decrypt, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_SESSION(C_DecryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
          (s, a, b, c, d))
W_FINISH(C_DecryptFinal, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG *b), (s, a, b), a, b)
W_SESSION(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM *a), (s, a))
W_FINISH(C_Digest, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_SESSION(C_DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b))
W_SESSION(C_DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a), (s, a))
W_FINISH(C_DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG *b), (s, a, b), a, b)
W_FINISH(C_Sign, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_SESSION(C_SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b))
W_FINISH(C_SignFinal, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG *b), (s, a, b), a, b)
W_SESSION(C_SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b), (s, a, b))
W_FINISH(C_SignRecover, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_FINISH(C_Verify, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG d),
         (s, a, b, c, d), (CK_BYTE *)NULL, (CK_ULONG *)NULL)
W_SESSION(C_VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b))
W_FINISH(C_VerifyFinal, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b), (CK_BYTE *)NULL,
         (CK_ULONG *)NULL)
W_SESSION(C_VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b),
          (s, a, b))
W_FINISH(C_VerifyRecover, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d),
         (s, a, b, c, d), c, d)
W_SESSION(C_DigestEncryptUpdate,
          (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d), (s, a, b, c, d))
W_SESSION(C_DecryptDigestUpdate,
          (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d), (s, a, b, c, d))
W_SESSION(C_SignEncryptUpdate,
          (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d), (s, a, b, c, d))
W_SESSION(C_DecryptVerifyUpdate,
          (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b, CK_BYTE *c, CK_ULONG *d), (s, a, b, c, d))
W_SESSION(C_GenerateKey,
          (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_ATTRIBUTE *b, CK_ULONG c, CK_OBJECT_HANDLE *d),
          (s, a, b, c, d))
W_SESSION(C_DeriveKey,
          (CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE *c, CK_ULONG d,
           CK_OBJECT_HANDLE *e),
          (s, a, b, c, d, e))
W_SESSION(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b))
W_SESSION(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE *a, CK_ULONG b), (s, a, b))
W_SESSION(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))
W_SESSION(C_CancelFunction, (CK_SESSION_HANDLE s), (s))
W_NONE(C_WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID *b, void *c), (a, b, c))

/* ---- token profiles (map-mechanism, map-key-type, manufacturer) ---- */

static Maps maps_now(void)
{
    pthread_mutex_lock(&lock);
    refresh_rules();
    Maps m = maps;
    pthread_mutex_unlock(&lock);
    return m;
}

/* The real mechanism for one the caller named; false when the caller named
 * a hidden (real) id. */
static bool mech_in(const Maps *m, const char *func, CK_MECHANISM_TYPE *type)
{
    for (size_t i = 0; i < m->n_mech; i++) {
        if (*type == m->mech[i].shown) {
            log_line("%d MAP %s 0x%lx->0x%lx\n", (int)getpid(), func, m->mech[i].shown,
                     m->mech[i].real);
            *type = m->mech[i].real;
            return true;
        }
        if (*type == m->mech[i].real)
            return false;
    }
    return true;
}

/* A copy of a template with CKA_KEY_TYPE translated (NULL: no change
 * needed, use the caller's). vals holds the new values. */
static CK_ATTRIBUTE *kt_in(const Maps *m, const CK_ATTRIBUTE *a, CK_ULONG n, CK_KEY_TYPE *vals)
{
    if (!m->n_kt || !a)
        return NULL;
    CK_ATTRIBUTE *c = NULL;
    for (CK_ULONG i = 0; i < n; i++) {
        if (a[i].type != CKA_KEY_TYPE || !a[i].pValue || a[i].ulValueLen != sizeof(CK_KEY_TYPE))
            continue;
        CK_KEY_TYPE v;
        memcpy(&v, a[i].pValue, sizeof(v));
        for (size_t k = 0; k < m->n_kt; k++) {
            CK_KEY_TYPE to = v;
            if (v == m->kt[k].shown)
                to = m->kt[k].real;
            else if (v == m->kt[k].real)
                to = (CK_KEY_TYPE)0x7fffffffUL; /* hidden: matches nothing */
            else
                continue;
            if (!c) {
                c = malloc(n * sizeof(*c));
                if (!c)
                    return NULL;
                memcpy(c, a, n * sizeof(*c));
            }
            vals[i] = to;
            c[i].pValue = &vals[i];
            break;
        }
    }
    return c;
}

#define KT_TEMPLATE(name, tmpl, n)                                                                 \
    Maps m_ = maps_now();                                                                          \
    CK_KEY_TYPE *v_##tmpl = (n) ? calloc((n), sizeof(CK_KEY_TYPE)) : NULL;                         \
    CK_ATTRIBUTE *c_##tmpl = v_##tmpl ? kt_in(&m_, (tmpl), (n), v_##tmpl) : NULL;                  \
    CK_ATTRIBUTE *use_##tmpl = c_##tmpl ? c_##tmpl : (tmpl)

static CK_RV w_C_GetTokenInfo(CK_SLOT_ID sl, CK_TOKEN_INFO *a)
{
    FAULT_SLOT(C_GetTokenInfo, sl);
    CK_RV rv = REAL(real->C_GetTokenInfo(sl, a));
    Maps m = maps_now();
    if (rv == CKR_OK && a && m.have_manufacturer) {
        memset(a->manufacturerID, ' ', sizeof(a->manufacturerID));
        memcpy(a->manufacturerID, m.manufacturer, strlen(m.manufacturer));
    }
    return rv;
}

static CK_RV w_C_GetMechanismList(CK_SLOT_ID sl, CK_MECHANISM_TYPE *a, CK_ULONG *b)
{
    FAULT_SLOT(C_GetMechanismList, sl);
    CK_RV rv = REAL(real->C_GetMechanismList(sl, a, b));
    Maps m = maps_now();
    if (rv == CKR_OK && a && b)
        for (CK_ULONG i = 0; i < *b; i++)
            for (size_t k = 0; k < m.n_mech; k++)
                if (a[i] == m.mech[k].real) {
                    a[i] = m.mech[k].shown;
                    break;
                }
    return rv;
}

static CK_RV w_C_GetMechanismInfo(CK_SLOT_ID sl, CK_MECHANISM_TYPE a, CK_MECHANISM_INFO *b)
{
    FAULT_SLOT(C_GetMechanismInfo, sl);
    Maps m = maps_now();
    if (!mech_in(&m, "C_GetMechanismInfo", &a))
        return CKR_MECHANISM_INVALID;
    return REAL(real->C_GetMechanismInfo(sl, a, b));
}

#define W_MECH_INIT(name)                                                                          \
    static CK_RV w_##name(CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b)                \
    {                                                                                              \
        FAULT_SESSION(name, s);                                                                    \
        Maps m = maps_now();                                                                       \
        if (!a)                                                                                    \
            return REAL(real->name(s, a, b));                                                      \
        CK_MECHANISM mm = *a;                                                                      \
        if (!mech_in(&m, #name, &mm.mechanism))                                                    \
            return CKR_MECHANISM_INVALID;                                                          \
        return REAL(real->name(s, &mm, b));                                                        \
    }
W_MECH_INIT(C_SignInit)
W_MECH_INIT(C_VerifyInit)

static CK_RV w_C_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE a, CK_ATTRIBUTE *b,
                                   CK_ULONG c)
{
    FAULT_SESSION(C_GetAttributeValue, s);
    CK_RV rv = REAL(real->C_GetAttributeValue(s, a, b, c));
    Maps m = maps_now();
    for (CK_ULONG i = 0; b && i < c; i++) {
        if (b[i].type != CKA_KEY_TYPE || !b[i].pValue || b[i].ulValueLen != sizeof(CK_KEY_TYPE))
            continue;
        CK_KEY_TYPE v;
        memcpy(&v, b[i].pValue, sizeof(v));
        for (size_t k = 0; k < m.n_kt; k++)
            if (v == m.kt[k].real) {
                memcpy(b[i].pValue, &m.kt[k].shown, sizeof(v));
                break;
            }
    }
    return rv;
}

static CK_RV w_C_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE *a, CK_ULONG b)
{
    FAULT_SESSION(C_FindObjectsInit, s);
    KT_TEMPLATE(C_FindObjectsInit, a, b);
    CK_RV rv = REAL(real->C_FindObjectsInit(s, use_a, b));
    free(c_a);
    free(v_a);
    return rv;
}

static CK_RV w_C_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE *a, CK_ULONG b, CK_OBJECT_HANDLE *c)
{
    FAULT_SESSION(C_CreateObject, s);
    KT_TEMPLATE(C_CreateObject, a, b);
    CK_RV rv = REAL(real->C_CreateObject(s, use_a, b, c));
    free(c_a);
    free(v_a);
    return rv;
}

static CK_RV w_C_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_ATTRIBUTE *b, CK_ULONG c,
                                 CK_ATTRIBUTE *d, CK_ULONG e, CK_OBJECT_HANDLE *f,
                                 CK_OBJECT_HANDLE *g)
{
    FAULT_SESSION(C_GenerateKeyPair, s);
    KT_TEMPLATE(C_GenerateKeyPair, b, c);
    Maps m2 = m_;
    CK_KEY_TYPE *v_d = e ? calloc(e, sizeof(CK_KEY_TYPE)) : NULL;
    CK_ATTRIBUTE *c_d = v_d ? kt_in(&m2, d, e, v_d) : NULL;
    CK_RV rv = REAL(real->C_GenerateKeyPair(s, a, use_b, c, c_d ? c_d : d, e, f, g));
    free(c_b);
    free(v_b);
    free(c_d);
    free(v_d);
    return rv;
}

/* A wrap ends with output, like the W_FINISH functions (corrupt-output flips
 * a bit of the blob), and takes its mechanism through map-mechanism. */
static CK_RV w_C_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b,
                         CK_OBJECT_HANDLE c, CK_BYTE *d, CK_ULONG *e)
{
    CK_RV rv_;
    bool corrupt_ = false;
    bool fault = inject("C_WrapKey", true, s, false, 0, &rv_, &corrupt_);
    Maps m = maps_now();
    CK_MECHANISM mm = a ? *a : (CK_MECHANISM){0};
    if (a && !mech_in(&m, "C_WrapKey", &mm.mechanism))
        return CKR_MECHANISM_INVALID;
    CK_RV rv = REAL(real->C_WrapKey(s, a ? &mm : NULL, b, c, d, e));
    if (fault) {
        if (rv == CKR_OK)
            wipe(d, e);
        return rv_;
    }
    if (corrupt_ && rv == CKR_OK)
        flip(d, e);
    return rv;
}

static CK_RV w_C_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM *a, CK_OBJECT_HANDLE b, CK_BYTE *c,
                           CK_ULONG d, CK_ATTRIBUTE *e, CK_ULONG f, CK_OBJECT_HANDLE *g)
{
    FAULT_SESSION(C_UnwrapKey, s);
    Maps m = maps_now();
    CK_MECHANISM mm = a ? *a : (CK_MECHANISM){0};
    if (a && !mech_in(&m, "C_UnwrapKey", &mm.mechanism))
        return CKR_MECHANISM_INVALID;
    return REAL(real->C_UnwrapKey(s, a ? &mm : NULL, b, c, d, e, f, g));
}

/* C_OpenSession also remembers the slot, for effects of functions that
 * name neither a session nor a slot. */
static CK_RV w_C_OpenSession(CK_SLOT_ID sl, CK_FLAGS a, void *b, CK_NOTIFY c, CK_SESSION_HANDLE *d)
{
    FAULT_SLOT(C_OpenSession, sl);
    pthread_mutex_lock(&lock);
    last_slot = sl;
    have_slot = true;
    pthread_mutex_unlock(&lock);
    return REAL(real->C_OpenSession(sl, a, b, c, d));
}

static CK_RV load_real(void)
{
    const char *path = getenv("LV_SHIM_MODULE");
    static const char *const defaults[] = {
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
    };
    void *h = NULL;
    if (path && *path)
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    for (size_t i = 0; !h && !(path && *path) && i < sizeof(defaults) / sizeof(defaults[0]); i++)
        h = dlopen(defaults[i], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "p11shim: cannot load the real module %s: %s\n",
                path && *path ? path : "(libsofthsm2.so)", dlerror());
        return CKR_GENERAL_ERROR;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    CK_FUNCTION_LIST *list = NULL;
    if (!gfl || gfl(&list) != CKR_OK || !list) {
        fprintf(stderr, "p11shim: the real module has no usable C_GetFunctionList\n");
        return CKR_GENERAL_ERROR;
    }
    real = list;
    shim.version = real->version;
#define SET(name) shim.name = w_##name
    SET(C_Initialize);
    SET(C_Finalize);
    SET(C_GetInfo);
    SET(C_GetSlotList);
    SET(C_GetSlotInfo);
    SET(C_GetTokenInfo);
    SET(C_GetMechanismList);
    SET(C_GetMechanismInfo);
    SET(C_InitToken);
    SET(C_InitPIN);
    SET(C_SetPIN);
    SET(C_OpenSession);
    SET(C_CloseSession);
    SET(C_CloseAllSessions);
    SET(C_GetSessionInfo);
    SET(C_GetOperationState);
    SET(C_SetOperationState);
    SET(C_Login);
    SET(C_Logout);
    SET(C_CreateObject);
    SET(C_CopyObject);
    SET(C_DestroyObject);
    SET(C_GetObjectSize);
    SET(C_GetAttributeValue);
    SET(C_SetAttributeValue);
    SET(C_FindObjectsInit);
    SET(C_FindObjects);
    SET(C_FindObjectsFinal);
    SET(C_EncryptInit);
    SET(C_Encrypt);
    SET(C_EncryptUpdate);
    SET(C_EncryptFinal);
    SET(C_DecryptInit);
    SET(C_Decrypt);
    SET(C_DecryptUpdate);
    SET(C_DecryptFinal);
    SET(C_DigestInit);
    SET(C_Digest);
    SET(C_DigestUpdate);
    SET(C_DigestKey);
    SET(C_DigestFinal);
    SET(C_SignInit);
    SET(C_Sign);
    SET(C_SignUpdate);
    SET(C_SignFinal);
    SET(C_SignRecoverInit);
    SET(C_SignRecover);
    SET(C_VerifyInit);
    SET(C_Verify);
    SET(C_VerifyUpdate);
    SET(C_VerifyFinal);
    SET(C_VerifyRecoverInit);
    SET(C_VerifyRecover);
    SET(C_DigestEncryptUpdate);
    SET(C_DecryptDigestUpdate);
    SET(C_SignEncryptUpdate);
    SET(C_DecryptVerifyUpdate);
    SET(C_GenerateKey);
    SET(C_GenerateKeyPair);
    SET(C_WrapKey);
    SET(C_UnwrapKey);
    SET(C_DeriveKey);
    SET(C_SeedRandom);
    SET(C_GenerateRandom);
    SET(C_GetFunctionStatus);
    SET(C_CancelFunction);
    SET(C_WaitForSlotEvent);
#undef SET
    shim.C_GetFunctionList = C_GetFunctionList;
    return CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ret)
{
    if (!ret)
        return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    CK_RV rv = real ? CKR_OK : load_real();
    pthread_mutex_unlock(&lock);
    if (rv != CKR_OK)
        return rv;
    *ret = &shim;
    return CKR_OK;
}
