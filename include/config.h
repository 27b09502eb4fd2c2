/* SPDX-License-Identifier: Apache-2.0 */
/* Global options: each from its flag, else its ATTESTO_LOCAL_VAULT_* variable, else a default. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Config {
    const char *spool_db;
    const char *witness_db;
    const char *installation_id;
    const char *witness_id; /* default: installation_id */
    const char *relay_url;
    const char *key_id; /* NULL: derived from the public key */
    const char *signing_key;
    const char *encryption_key;
    const char *pkcs11_module;
    const char *pin_file;
    const char *ca_file;
    /* CURLOPT_PINNEDPUBLICKEY: sha256//BASE64[;...] or a PEM/DER file */
    const char *pinned_public_key;
    /* a JSON array of the receivers' receipt keys (src/receipt.c); NULL:
     * receipts are stored unverified */
    const char *receipt_keys_file;
    /* the relay's bearer credential: a file (the systemd credential
     * relay-token comes first); never a value on the command line or in the
     * environment (src/relay.c relay_credential_load) */
    const char *relay_token_file;
    /* witness-serve's tenants file (docs/witness.md "Tenants"); NULL: none */
    const char *witness_tenants;
    const char *log_level;
    const char *spool_max_items, *spool_max_bytes; /* as given; parsed below */
    bool json;                                     /* --json given globally */
    /* The spool quota (docs/spool.md "Quota"): items not yet delivered and
     * their stored bytes; 0: no limit. enqueue and ingest-serve refuse what
     * would go past it. */
    int64_t quota_items, quota_bytes;
} Config;

#define LV_DEFAULT_SPOOL_DB       "/var/lib/attesto/local-vault.sqlite3"
#define LV_DEFAULT_WITNESS_DB     "/var/lib/attesto/local-vault-witness.sqlite3"
#define LV_DEFAULT_SIGNING_KEY    "pkcs11:token=attesto;object=lv-signing;type=private"
#define LV_DEFAULT_ENCRYPTION_KEY "pkcs11:token=attesto;object=lv-spool-kek;type=secret-key"
#define LV_DEFAULT_QUOTA_ITEMS    1000000
#define LV_DEFAULT_QUOTA_BYTES    (2LL * 1024 * 1024 * 1024)

/* Parses the global options that stand before the verb, fills in the
 * environment and defaults. On return *ret_index is the index of the verb in
 * argv (== argc when there is none). Errors: LV_ERR_INPUT with detail. */
int config_parse_globals(int argc, char **argv, Config *cfg, int *ret_index);

/* One line per global option, for --help and the man page. */
void config_print_help(FILE *f);

/* Checks the values that must hold for any verb that uses them; each returns
 * LV_ERR_INPUT with detail naming the option and the rule. */
int config_require_installation_id(const Config *cfg);
int config_require_relay_url(const Config *cfg); /* set and https:// */
int config_check_key_uri(const char *option, const char *value);
