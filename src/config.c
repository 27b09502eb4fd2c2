/* SPDX-License-Identifier: Apache-2.0 */
/* Global options: flag > environment > default, and the checks on their values. */
#include <stdio.h>
#include <strings.h>

#include "config.h"
#include "lv.h"

typedef struct Option {
    const char *flag; /* without leading "--" */
    const char *env;
    size_t offset;
    const char *help;
} Option;

/* clang-format off */
#define OPT(f, e, field, h) {f, "ATTESTO_LOCAL_VAULT_" e, offsetof(Config, field), h}
/* clang-format on */
static const Option options[] = {
    OPT("spool-db", "SPOOL_DB", spool_db, "spool database path"),
    OPT("witness-db", "WITNESS_DB", witness_db, "witness database path"),
    OPT("installation-id", "INSTALLATION_ID", installation_id, "this installation's id"),
    OPT("witness-id", "WITNESS_ID", witness_id, "witness id (default: the installation id)"),
    OPT("relay-url", "RELAY_URL", relay_url, "https:// URL of the Attesto receiver"),
    OPT("key-id", "KEY_ID", key_id, "kid (default: lv- + 16 hex of SHA-256(public key))"),
    OPT("signing-key", "SIGNING_KEY", signing_key, "pkcs11: URI of the Ed25519 private key"),
    OPT("encryption-key", "ENCRYPTION_KEY", encryption_key, "pkcs11: URI of the AES-256 spool KEK"),
    OPT("pkcs11-module", "PKCS11_MODULE", pkcs11_module, "PKCS#11 module path"),
    OPT("pin-file", "PIN_FILE", pin_file, "file holding the token user PIN"),
    OPT("ca-file", "CA_FILE", ca_file, "CA bundle for the relay's TLS"),
    OPT("pinned-public-key", "PINNED_PUBLIC_KEY", pinned_public_key,
        "pin the relay's TLS key: sha256//BASE64 or a key file"),
    OPT("receipt-keys-file", "RECEIPT_KEYS_FILE", receipt_keys_file,
        "pinned receiver receipt keys (JSON array); acks need a valid receipt"),
    OPT("relay-token-file", "RELAY_TOKEN_FILE", relay_token_file,
        "file holding the relay's bearer credential (or the relay-token credential)"),
    OPT("witness-tenants", "WITNESS_TENANTS", witness_tenants,
        "witness-serve: who may submit for which tenant (docs/witness.md)"),
    OPT("log-level", "LOG_LEVEL", log_level, "error|warning|notice|info|debug"),
    OPT("spool-max-items", "SPOOL_MAX_ITEMS", spool_max_items,
        "quota: items not yet delivered (0: none)"),
    OPT("spool-max-bytes", "SPOOL_MAX_BYTES", spool_max_bytes,
        "quota: their stored bytes (0: none)"),
};

/* A quota: decimal digits, at most 2^53 (as JSON carries it). */
static int parse_quota(const char *flag, const char *v, int64_t dflt, int64_t *ret)
{
    if (!v) {
        *ret = dflt;
        return 0;
    }
    int64_t x = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9' || x > ((INT64_C(1) << 53) - (*p - '0')) / 10)
            return lv_error_set(LV_ERR_INPUT,
                                "--%s: %s: must be a whole number from 0 (no limit) to 2^53", flag,
                                v);
        x = x * 10 + (*p - '0');
    }
    *ret = x;
    return 0;
}

static const char **field(Config *cfg, const Option *o)
{
    return (const char **)((char *)cfg + o->offset);
}

int config_parse_globals(int argc, char **argv, Config *cfg, int *ret_index)
{
    *cfg = (Config){0};
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || strcmp(a, "--help") == 0 || strcmp(a, "--version") == 0)
            break;
        if (strcmp(a, "--json") == 0) {
            cfg->json = true;
            continue;
        }
        if (strcmp(a, "--pin") == 0 || strncmp(a, "--pin=", 6) == 0)
            return lv_error_set(LV_ERR_INPUT,
                                "--pin: a PIN is never taken on the command line; use --pin-file, "
                                "ATTESTO_LOCAL_VAULT_PIN_FILE or the pkcs11-pin credential");
        if (strcmp(a, "--relay-token") == 0 || strncmp(a, "--relay-token=", 14) == 0)
            return lv_error_set(LV_ERR_INPUT,
                                "--relay-token: a credential is never taken on the command line; "
                                "use --relay-token-file, ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE or "
                                "the relay-token credential");
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const Option *o = NULL;
        for (size_t k = 0; k < ELEMENTSOF(options); k++)
            if (strlen(options[k].flag) == nlen && strncmp(options[k].flag, name, nlen) == 0)
                o = &options[k];
        if (!o)
            return lv_error_set(LV_ERR_INPUT, "%s: unknown global option (see --help)", a);
        const char *v;
        if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        else
            return lv_error_set(LV_ERR_INPUT, "--%s: needs a value", o->flag);
        if (!*v)
            return lv_error_set(LV_ERR_INPUT, "--%s: must not be empty", o->flag);
        *field(cfg, o) = v;
    }
    for (size_t k = 0; k < ELEMENTSOF(options); k++) {
        const char **f = field(cfg, &options[k]);
        if (!*f) {
            const char *e = getenv(options[k].env);
            if (e && *e)
                *f = e;
        }
    }
    /* A value in the environment is readable by every process of the
     * service and often logged by supervisors: refused, not ignored. */
    const char *plain = getenv("ATTESTO_LOCAL_VAULT_RELAY_TOKEN");
    if (plain && *plain)
        return lv_error_set(LV_ERR_INPUT,
                            "ATTESTO_LOCAL_VAULT_RELAY_TOKEN: a credential is never taken from the "
                            "environment; put it in a file (ATTESTO_LOCAL_VAULT_RELAY_TOKEN_FILE) "
                            "or the relay-token credential");
    if (!cfg->spool_db)
        cfg->spool_db = LV_DEFAULT_SPOOL_DB;
    if (!cfg->witness_db)
        cfg->witness_db = LV_DEFAULT_WITNESS_DB;
    if (!cfg->witness_id)
        cfg->witness_id = cfg->installation_id;
    if (!cfg->signing_key)
        cfg->signing_key = LV_DEFAULT_SIGNING_KEY;
    if (!cfg->encryption_key)
        cfg->encryption_key = LV_DEFAULT_ENCRYPTION_KEY;
    int r = config_check_key_uri("--signing-key", cfg->signing_key);
    if (r < 0)
        return r;
    r = config_check_key_uri("--encryption-key", cfg->encryption_key);
    if (r < 0)
        return r;
    if (cfg->installation_id && !lv_valid_id(cfg->installation_id))
        return lv_error_set(LV_ERR_INPUT,
                            "--installation-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    if (cfg->witness_id && !lv_valid_id(cfg->witness_id))
        return lv_error_set(LV_ERR_INPUT, "--witness-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    if (cfg->key_id && !lv_valid_id(cfg->key_id))
        return lv_error_set(LV_ERR_INPUT, "--key-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    r = parse_quota("spool-max-items", cfg->spool_max_items, LV_DEFAULT_QUOTA_ITEMS,
                    &cfg->quota_items);
    if (r < 0)
        return r;
    r = parse_quota("spool-max-bytes", cfg->spool_max_bytes, LV_DEFAULT_QUOTA_BYTES,
                    &cfg->quota_bytes);
    if (r < 0)
        return r;
    *ret_index = i;
    return 0;
}

void config_print_help(FILE *f)
{
    for (size_t k = 0; k < ELEMENTSOF(options); k++)
        fprintf(f, "  --%-18s %-40s [%s]\n", options[k].flag, options[k].help, options[k].env);
    fprintf(f, "  --%-18s %s\n", "json", "machine output (JSON) even on a terminal");
}

int config_require_installation_id(const Config *cfg)
{
    if (!cfg->installation_id)
        return lv_error_set(LV_ERR_INPUT, "--installation-id: required "
                                          "(or ATTESTO_LOCAL_VAULT_INSTALLATION_ID)");
    return 0;
}

int config_require_relay_url(const Config *cfg)
{
    if (!cfg->relay_url)
        return lv_error_set(LV_ERR_INPUT,
                            "--relay-url: required (or ATTESTO_LOCAL_VAULT_RELAY_URL)");
    if (strncasecmp(cfg->relay_url, "https://", 8) != 0 || !cfg->relay_url[8])
        return lv_error_set(LV_ERR_INPUT,
                            "--relay-url: %s: must be an https:// URL (plain http is refused)",
                            cfg->relay_url);
    return 0;
}

int config_check_key_uri(const char *option, const char *value)
{
    if (strncmp(value, "pkcs11:", 7) != 0)
        /* The value is never echoed: it may be raw key material. */
        return lv_error_set(LV_ERR_INPUT,
                            "%s: not a PKCS#11 URI; keys are named on the token, e.g. "
                            "'pkcs11:token=attesto;object=lv-signing;type=private' (RFC 7512), "
                            "never given as key material",
                            option);
    return 0;
}
