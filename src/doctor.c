/* SPDX-License-Identifier: Apache-2.0 */
/* doctor's checks: each part of the configuration tried once, in order, with
 * the exact cause of a failure; nothing is created, migrated or written. */
#include "doctor.h"

#include <libgen.h>
#include <stdio.h>
#include <limits.h>
#include <strings.h>
#include <sys/stat.h>

#include "config.h"
#include "db.h"
#include "lv.h"
#include "receipt.h"
#include "spool.h"
#include "witness.h"

#define BUSY_MS       5000
#define INTEGRITY_MAX 10 /* messages integrity_check reports at most */

const char *doctor_status_name(DoctorStatus st)
{
    switch (st) {
    case DOCTOR_PASS:
        return "pass";
    case DOCTOR_WARN:
        return "warn";
    case DOCTOR_FAIL:
        return "fail";
    case DOCTOR_SKIP:
        return "skip";
    }
    return "fail";
}

static DoctorCheck *add(DoctorReport *rep, const char *name, const char *title)
{
    /* The list of checks is fixed and shorter than the array. */
    DoctorCheck *c = &rep->checks[rep->n < DOCTOR_MAX_CHECKS ? rep->n++ : DOCTOR_MAX_CHECKS - 1];
    *c = (DoctorCheck){.name = name, .title = title, .status = DOCTOR_PASS};
    return c;
}

static void set(DoctorCheck *c, DoctorStatus st, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set(DoctorCheck *c, DoctorStatus st, const char *reason, const char *fmt, ...)
{
    c->status = st;
    snprintf(c->reason, sizeof(c->reason), "%s", reason ? reason : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
    va_end(ap);
}

static void skip(DoctorCheck *c, const char *needs)
{
    set(c, DOCTOR_SKIP, "dependency_failed", "not checked: needs %s", needs);
}

static const char *err_text(int r)
{
    const char *d = lv_error();
    return *d ? d : strerror(-r);
}

/* ---- databases ---------------------------------------------------------- */

static void db_missing(DoctorCheck *c, const char *path, const char *creator)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    const char *d = dirname(dir);
    /* A database that does not exist yet is normal on a fresh installation,
     * as long as the program can create it where it is configured. */
    if (access(d, W_OK | X_OK) == 0)
        set(c, DOCTOR_WARN, "not_created", "%s does not exist yet; %s creates it", path, creator);
    else
        set(c, DOCTOR_FAIL, "missing", "%s does not exist and cannot be created: directory %s: %s",
            path, d, strerror(errno));
}

void doctor_check_database(const char *kind, const char *path, const char *installation_id,
                           DoctorCheck *c, uint8_t **ret_deks, size_t *ret_n_deks)
{
    bool spool = strcmp(kind, "spool") == 0;
    if (ret_deks) {
        *ret_deks = NULL;
        *ret_n_deks = 0;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT)
            db_missing(c, path,
                       spool ? "the first enqueue or drain"
                             : "the first witness-checkpoint or "
                               "witness-serve request");
        else
            set(c, DOCTOR_FAIL, "unreadable", "%s: %s", path, strerror(errno));
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        set(c, DOCTOR_FAIL, "not_a_file", "%s: not a regular file", path);
        return;
    }
    if (st.st_mode & 0077) {
        set(c, DOCTOR_FAIL, "permissions",
            "%s: mode %04o lets other users open it; it must be 0600 (the program refuses it)",
            path, (unsigned)(st.st_mode & 07777));
        return;
    }
    if (access(path, R_OK) < 0) {
        set(c, DOCTOR_FAIL, "unreadable", "%s: %s", path, strerror(errno));
        return;
    }
    _cleanup_(db_closep) Db *db = NULL;
    /* Read-only: doctor neither creates nor migrates. */
    DbOptions o = {.path = path,
                   .label = spool ? "spool" : "witness database",
                   .flags = DB_READONLY | DB_NO_SCHEMA,
                   .busy_timeout_ms = BUSY_MS};
    lv_error_clear();
    int r = db_open(&o, &db);
    if (r < 0) {
        set(c, DOCTOR_FAIL, r == -EUCLEAN ? "corrupt" : "open_failed", "%s", err_text(r));
        return;
    }
    const DbSchema *schema = spool ? spool_db_schema() : witness_db_schema();
    int64_t version = 0;
    r = db_schema_check(db, schema, &version);
    if (r == 1) {
        set(c, DOCTOR_WARN, "not_initialized", "%s is empty; it is initialized on first use", path);
        return;
    }
    if (r < 0) {
        set(c, DOCTOR_FAIL,
            r == LV_ERR_INPUT ? "wrong_schema"
            : r == -EPROTO    ? "schema_newer"
            : r == -EUCLEAN   ? "corrupt"
                              : "open_failed",
            "%s%s", err_text(r), r == -EUCLEAN ? " (corrupt, or not a SQLite database)" : "");
        return;
    }
    int want = (int)schema->n_migrations;

    /* integrity_check reads every page: the one check that finds a torn or
     * altered file before the service trips over it. */
    char first[256];
    int problems = 0;
    r = db_integrity_check(db, INTEGRITY_MAX, first, sizeof(first), &problems);
    if (r < 0) {
        set(c, DOCTOR_FAIL, r == -EUCLEAN ? "corrupt" : "integrity_check_failed", "%s",
            err_text(r));
        return;
    }
    if (problems) {
        set(c, DOCTOR_FAIL, "corrupt", "%s: integrity_check: %s%s", path, first,
            problems > 1 ? " (and more)" : "");
        return;
    }

    char extra[200] = "";
    if (spool) {
        SpoolFileInfo info;
        r = spool_file_info(db, ret_deks != NULL, &info);
        if (r < 0) {
            set(c, DOCTOR_FAIL, r == LV_ERR_INPUT ? "wrong_schema" : "corrupt", "%s", err_text(r));
            return;
        }
        if (info.installation_id[0] && installation_id &&
            strcmp(info.installation_id, installation_id) != 0) {
            set(c, DOCTOR_FAIL, "installation_mismatch",
                "%s belongs to installation %s, not %s (--installation-id)", path,
                info.installation_id, installation_id);
            spool_file_info_done(&info);
            return;
        }
        if (ret_deks) {
            *ret_deks = TAKE_PTR(info.wrapped_deks);
            *ret_n_deks = info.n_deks;
        }
        snprintf(extra, sizeof(extra), ", %lld item(s)", (long long)info.items);
        spool_file_info_done(&info);
    }
    if (version < want)
        set(c, DOCTOR_WARN, "schema_older",
            "%s: schema version %lld, migrated to %d on the next read-write open; integrity ok%s",
            path, (long long)version, want, extra);
    else
        set(c, DOCTOR_PASS, NULL, "%s: schema version %lld, integrity_check ok%s", path,
            (long long)version, extra);
}

/* ---- relay -------------------------------------------------------------- */

/* The reason a status names, and what it most likely means. The probe is an
 * OPTIONS request; the protocol requires only POST of a receiver, so 405 and
 * 501 (method not allowed, not implemented) mean a server is there and
 * answers at this path, which is all the probe can learn without sending an
 * envelope. */
static const char *status_reason(long st, const char **ret_hint)
{
    if (st == 401) {
        *ret_hint = "the receiver wants a credential this installation does not send, or another "
                    "one (the relay-token credential?)";
        return "unauthorized";
    }
    if (st == 403) {
        *ret_hint = "the receiver refuses this installation (registered? its key known?)";
        return "forbidden";
    }
    if (st == 404) {
        *ret_hint = "nothing at this path (check --relay-url)";
        return "not_found";
    }
    if (st >= 300 && st < 400) {
        *ret_hint = "a redirect, never followed: --relay-url must be the receiver's final address";
        return "redirect";
    }
    if (st >= 500) {
        *ret_hint = "the receiver or a proxy in front of it is failing";
        return "server_error";
    }
    *ret_hint =
        "an Attesto receiver answers OPTIONS with 2xx, or 405/501 if it implements only POST";
    return "http_status";
}

void doctor_check_probe(const RelayProbe *p, DoctorCheck *c)
{
    const char *tr = p->transport_reason;
    if (!tr) {
        const char *hint = NULL;
        if (p->http_status >= 200 && p->http_status < 300)
            set(c, DOCTOR_PASS, NULL, "TLS verified, OPTIONS answered HTTP %ld in %lld ms%s",
                p->http_status, (long long)p->elapsed_ms,
                p->protocol_ok ? " (ATTESTO-LOCAL-VAULT-RELAY/1)" : "");
        else if (p->http_status == 405 || p->http_status == 501)
            set(c, DOCTOR_PASS, NULL,
                "TLS verified, OPTIONS answered HTTP %ld in %lld ms (a receiver that implements "
                "only POST%s%s)",
                p->http_status, (long long)p->elapsed_ms, p->allow[0] ? "; Allow: " : "", p->allow);
        else {
            const char *reason = status_reason(p->http_status, &hint);
            set(c, DOCTOR_FAIL, reason, "HTTP status %ld after a verified TLS handshake: %s",
                p->http_status, hint);
        }
        return;
    }
    if (strcmp(p->stage, "dns") == 0)
        set(c, DOCTOR_FAIL, "dns", "DNS: the host name does not resolve: %s", p->detail);
    else if (strcmp(p->stage, "tcp") == 0)
        set(c, DOCTOR_FAIL, "tcp", "TCP: cannot connect (%s): %s", tr, p->detail);
    else if (strcmp(tr, "tls_verify_failed") == 0)
        set(c, DOCTOR_FAIL, "tls_verify",
            "TLS verification failed: %s (is --ca-file the CA that issued the receiver's "
            "certificate, and does the certificate name this host?)",
            p->detail);
    else if (strcmp(tr, "tls_pin_mismatch") == 0)
        set(c, DOCTOR_FAIL, "tls_pin",
            "TLS: the receiver's key does not match --pinned-public-key: %s", p->detail);
    else if (strcmp(p->stage, "tls") == 0)
        set(c, DOCTOR_FAIL, "tls_handshake", "TLS handshake failed (%s): %s", tr, p->detail);
    else
        set(c, DOCTOR_FAIL, "http", "HTTP: no valid response after the TLS handshake (%s): %s", tr,
            p->detail);
}

/* ---- the run ------------------------------------------------------------ */

/* Pinned receipt keys: they must parse; without them an ack is taken on
 * its fields alone, which the operator should know. */
static void check_receipt_keys(const char *path, DoctorCheck *c)
{
    if (!path) {
        set(c, DOCTOR_WARN, "not_verified",
            "not set: receipts are not verified (an ack is taken on its fields alone); "
            "pin the receiver's keys with --receipt-keys-file");
        return;
    }
    ReceiptKeys *k = NULL;
    lv_error_clear();
    int r = receipt_keys_load(path, &k);
    if (r < 0) {
        set(c, DOCTOR_FAIL, "invalid", "--receipt-keys-file: %s", err_text(r));
        return;
    }
    char kids[400] = "";
    size_t n = receipt_keys_count(k), used = 0;
    for (size_t i = 0; i < n && used < sizeof(kids); i++) {
        int w = snprintf(kids + used, sizeof(kids) - used, "%s%s", i ? ", " : "",
                         receipt_keys_kid(k, i));
        used += w > 0 ? (size_t)w : 0;
    }
    receipt_keys_free(k);
    set(c, DOCTOR_PASS, NULL, "%zu key(s) pinned, receipts verified: %s", n, kids);
}

/* The capability probe of token_open: the mechanism chosen for each role
 * and why. A role the configuration needs and the token cannot serve fails;
 * one it does not need is reported only. */
static void check_mechanisms(Token *t, const TokenConfig *cfg, DoctorCheck *c)
{
    static const char *const roles[TOKEN_ROLE__MAX] = {"sign", "wrap", "seal"};
    const bool needed[TOKEN_ROLE__MAX] = {cfg->signing_uri != NULL, cfg->kek_uri != NULL,
                                          cfg->kek_uri != NULL};
    char buf[sizeof(c->detail)];
    size_t used = 0;
    int w = snprintf(buf, sizeof(buf), "manufacturer '%s', profile %s, probe %lld us",
                     token_manufacturer(t), token_profile(t), token_probe_us(t));
    used = w > 0 ? (size_t)w : 0;
    const char *failed = NULL;
    for (TokenRole r = 0; r < TOKEN_ROLE__MAX; r++) {
        const TokenMechanism *m = token_mechanism(t, r);
        if (used < sizeof(buf)) {
            if (m->available)
                w = snprintf(buf + used, sizeof(buf) - used, "; %s: %s via %s (0x%lx)", roles[r],
                             m->algorithm, m->name, m->mechanism);
            else
                w = snprintf(buf + used, sizeof(buf) - used, "; %s: none", roles[r]);
            used += w > 0 ? (size_t)w : 0;
        }
        if (!m->available && needed[r] && !failed)
            failed = m->why;
    }
    if (failed)
        set(c, DOCTOR_FAIL, "mechanism_missing", "%s", failed);
    else
        set(c, DOCTOR_PASS, NULL, "%s", buf);
}

void doctor_run(const DoctorOptions *opt, DoctorReport *rep)
{
    *rep = (DoctorReport){0};
    DoctorCheck *mod = add(rep, "module", "PKCS#11 module");
    DoctorCheck *tok = add(rep, "token", "token");
    DoctorCheck *pin = add(rep, "pin", "PIN and login");
    DoctorCheck *mech = add(rep, "mechanisms", "token mechanisms (probe)");
    DoctorCheck *sk = add(rep, "signing_key", "signing key");
    DoctorCheck *kek = add(rep, "encryption_key", "encryption key (KEK)");
    DoctorCheck *sdb = add(rep, "spool_db", "spool database");
    DoctorCheck *wdb = add(rep, "witness_db", "witness database");
    DoctorCheck *dek = add(rep, "dek", "spool data key (DEK)");
    DoctorCheck *url = add(rep, "relay_url", "relay URL");
    DoctorCheck *cred = add(rep, "relay_credential", "relay credential");
    DoctorCheck *rel = add(rep, "relay", "relay TLS and HTTP");
    DoctorCheck *rk = add(rep, "receipt_keys", "receipt keys");
    check_receipt_keys(opt->receipt_keys_file, rk);

    /* token_open loads the module, finds the token and logs in, in that
     * order and once: the class of its error says which step failed and
     * that the steps before it passed. */
    Token *t = NULL;
    lv_error_clear();
    int r = token_open(&opt->token, &t);
    const char *module =
        opt->token.module_path ? opt->token.module_path : "(p11-kit registered modules)";
    bool pin_cfg = r == LV_ERR_INPUT && strncmp(lv_error(), "pin-source=", 11) == 0;
    if (r >= 0 || r == LV_ERR_NOTOKEN || r == LV_ERR_AMBIG || r == LV_ERR_PIN || pin_cfg ||
        r == LV_ERR_TOKEN)
        set(mod, DOCTOR_PASS, NULL, "%s loaded", module);
    else if (r == LV_ERR_NOMOD)
        set(mod, DOCTOR_FAIL, "module_load_failed", "%s", err_text(r));
    else
        set(mod, DOCTOR_FAIL, r == LV_ERR_INPUT ? "invalid_config" : "failed", "%s", err_text(r));

    if (r >= 0 || r == LV_ERR_PIN || pin_cfg)
        set(tok, DOCTOR_PASS, NULL, "token '%s' present",
            t ? token_label(t) : "named by the key URIs");
    else if (r == LV_ERR_NOTOKEN || r == LV_ERR_AMBIG || r == LV_ERR_TOKEN)
        set(tok, DOCTOR_FAIL, r == LV_ERR_AMBIG ? "ambiguous" : "not_found", "%s", err_text(r));
    else
        skip(tok, "the module");

    if (r >= 0)
        set(pin, DOCTOR_PASS, NULL, "logged in once with the PIN from %s", token_pin_source(t));
    else if (r == LV_ERR_PIN || pin_cfg)
        set(pin, DOCTOR_FAIL, "pin", "%s", err_text(r));
    else
        skip(pin, "the token");

    if (t)
        check_mechanisms(t, &opt->token, mech);
    else
        skip(mech, "the token and PIN");

    bool kek_ok = false;
    if (t) {
        lv_error_clear();
        r = token_check_signing_key(t);
        if (r >= 0)
            set(sk, DOCTOR_PASS, NULL, "%s: Ed25519, sensitive, not extractable, kid %s",
                opt->token.signing_uri, token_key_id(t));
        else
            set(sk, DOCTOR_FAIL,
                r == LV_ERR_NOKEY    ? "missing"
                : r == LV_ERR_AMBIG  ? "ambiguous"
                : r == LV_ERR_KEYBAD ? "bad_attributes"
                                     : "failed",
                "%s", err_text(r));
        lv_error_clear();
        r = token_check_kek(t);
        if (r >= 0) {
            kek_ok = true;
            set(kek, DOCTOR_PASS, NULL, "%s: AES-256, wrap/unwrap, sensitive, not extractable",
                opt->token.kek_uri);
        } else
            set(kek, DOCTOR_FAIL,
                r == LV_ERR_NOKEY    ? "missing"
                : r == LV_ERR_AMBIG  ? "ambiguous"
                : r == LV_ERR_KEYBAD ? "bad_attributes"
                                     : "failed",
                "%s", err_text(r));
    } else {
        skip(sk, "the token and PIN");
        skip(kek, "the token and PIN");
    }

    uint8_t *deks = NULL;
    size_t n_deks = 0;
    doctor_check_database("spool", opt->spool_db, opt->installation_id, sdb, &deks, &n_deks);
    doctor_check_database("witness", opt->witness_db, NULL, wdb, NULL, NULL);

    if (!kek_ok)
        skip(dek, "the encryption key");
    else if (sdb->status == DOCTOR_FAIL)
        skip(dek, "a readable spool database");
    else if (n_deks == 0)
        set(dek, DOCTOR_PASS, NULL, "no spool yet: a new DEK is made and wrapped on first use");
    else {
        size_t ok = 0;
        for (size_t i = 0; i < n_deks; i++) {
            lv_error_clear();
            r = token_dek_load(t, deks + i * TOKEN_WRAPPED_DEK_LEN, TOKEN_WRAPPED_DEK_LEN);
            if (r < 0) {
                set(dek, DOCTOR_FAIL, r == LV_ERR_CRYPTO ? "unwrap_failed" : "failed", "%s%s",
                    n_deks > 1 ? "one of the spool's DEKs: " : "", err_text(r));
                break;
            }
            ok++;
        }
        if (ok == n_deks)
            set(dek, DOCTOR_PASS, NULL, "%zu wrapped DEK(s) unwrap under the KEK (%s via %s)",
                n_deks, TOKEN_WRAP_ALG, token_mechanism(t, TOKEN_ROLE_WRAP)->name);
    }
    erase_and_free(deks, n_deks * TOKEN_WRAPPED_DEK_LEN);
    t = token_close(t);

    Config cfg = {.relay_url = opt->relay.url};
    lv_error_clear();
    r = config_require_relay_url(&cfg);
    if (r < 0) {
        set(url, DOCTOR_FAIL, opt->relay.url ? "not_https" : "not_configured", "%s", lv_error());
        skip(cred, "an https relay URL");
        skip(rel, "an https relay URL");
        return;
    }
    set(url, DOCTOR_PASS, NULL, "%s", opt->relay.url);
    /* The credential the drain would send: readable and well-formed here;
     * whether the receiver takes it, the probe below says (401/403). */
    char *bearer = NULL, source[4096];
    lv_error_clear();
    r = relay_credential_load(opt->relay_token_file, &bearer, source);
    if (r < 0)
        set(cred, DOCTOR_FAIL, "invalid", "--relay-token-file: %s", err_text(r));
    else if (!bearer)
        set(cred, DOCTOR_PASS, "none",
            "none configured: no credential is sent (set the relay-token credential or "
            "--relay-token-file if the receiver requires one)");
    else
        set(cred, DOCTOR_PASS, NULL, "read from %s; sent as Authorization: Bearer", source);
    RelayOptions ro = opt->relay;
    ro.bearer = bearer;
    RelayProbe p;
    lv_error_clear();
    r = relay_probe(&ro, &p);
    bool sent = bearer != NULL;
    relay_credential_free(bearer);
    if (r < 0) {
        set(rel, DOCTOR_FAIL, r == LV_ERR_INPUT ? "invalid_config" : "failed", "%s", err_text(r));
        return;
    }
    doctor_check_probe(&p, rel);
    /* With a credential sent, a 401/403 is about that credential. */
    if (sent && !p.transport_reason && (p.http_status == 401 || p.http_status == 403))
        set(rel, DOCTOR_FAIL, p.http_status == 401 ? "unauthorized" : "forbidden",
            "HTTP %ld: the receiver refuses the credential from %s", p.http_status, source);
}

bool doctor_ok(const DoctorReport *rep)
{
    for (size_t i = 0; i < rep->n; i++)
        if (rep->checks[i].status == DOCTOR_FAIL)
            return false;
    return true;
}
