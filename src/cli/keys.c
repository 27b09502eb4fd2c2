/* SPDX-License-Identifier: Apache-2.0 */
/* Verbs `keys init` (provision the keys on the token) and `public-key`. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lv.h"
#include "pubkey.h"
#include "spool.h"

static int keys_init(const Config *cfg)
{
    TokenConfig tc;
    cli_token_config(cfg, &tc);
    Token *t = NULL;
    lv_error_clear();
    int r = token_open(&tc, &t);
    if (r < 0)
        return cli_fail("keys init", r);
    bool made_sign = false, made_kek = false;
    r = token_keys_init(t, &made_sign, &made_kek);
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    if (r >= 0)
        r = token_public_key(t, pk);
    if (r < 0) {
        int code = cli_fail("keys init", r);
        token_close(t);
        return code;
    }
    char hex[2 * TOKEN_ED25519_PK_LEN + 1];
    hex_encode(pk, sizeof(pk), hex);
    const char *kid = token_key_id(t);
    int code = LV_EXIT_OK;
    if (cli_human(cfg)) {
        printf("signing key     %s\n  %s: Ed25519, sensitive, not extractable\n  kid %s\n"
               "  public key %s\n",
               tc.signing_uri, made_sign ? "created" : "already present", kid, hex);
        printf("encryption key  %s\n  %s: AES-256 KEK, wrap/unwrap, sensitive, not extractable\n",
               tc.kek_uri, made_kek ? "created" : "already present");
    } else {
        cJSON *j = cJSON_CreateObject(), *sk = cJSON_AddObjectToObject(j, "signing_key"),
              *ek = cJSON_AddObjectToObject(j, "encryption_key");
        cJSON_AddStringToObject(sk, "uri", tc.signing_uri);
        cJSON_AddBoolToObject(sk, "created", made_sign);
        cJSON_AddStringToObject(sk, "alg", "Ed25519");
        cJSON_AddStringToObject(sk, "kid", kid);
        cJSON_AddStringToObject(sk, "public_key_hex", hex);
        cJSON_AddStringToObject(ek, "uri", tc.kek_uri);
        cJSON_AddBoolToObject(ek, "created", made_kek);
        cJSON_AddStringToObject(ek, "alg", "AES-256");
        code = cli_print_json(j) ? LV_EXIT_OK : LV_EXIT_FAILURE;
        cJSON_Delete(j);
    }
    token_close(t);
    return code;
}

static const CliOption keys_init_options[] = {{0}};

static const CliCommand keys_init_command = {
    .name = "keys init",
    .about = "Creates the Ed25519 signing key pair and the AES-256 spool KEK at the\n"
             "configured pkcs11: URIs when they are absent (sensitive, never\n"
             "extractable); checks them when present. Idempotent.\n",
    .options = keys_init_options,
};

int keys_main(const Config *cfg, int argc, char **argv)
{
    static const CliCommand *const subs[] = {&keys_init_command};
    int i = 0;
    int k = cli_parse_subcommand("keys", argc, argv, subs, ELEMENTSOF(subs), &i, NULL, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    return keys_init(cfg);
}

/* After a signing key rotation the spool remembers the keys that signed its
 * items: they are listed under "previous" (newest first) so that receivers
 * and `verify` can check each item under its own kid. */
static int add_previous_keys(const Config *cfg, const char *kid, cJSON *j)
{
    SpoolKey *keys = NULL;
    size_t n = 0;
    int r = spool_signing_keys(cfg->spool_db, &keys, &n);
    if (r == -ENOENT)
        r = 0;
    cJSON *prev = r >= 0 ? cJSON_AddArrayToObject(j, "previous") : NULL;
    for (size_t i = n; r >= 0 && i-- > 0;) {
        if (strcmp(keys[i].kid, kid) == 0)
            continue;
        cJSON *k = NULL;
        r = pubkey_json(keys[i].pk, keys[i].kid, &k);
        if (r < 0)
            break;
        char first[32], last[32];
        lv_format_time(keys[i].first_used_ms, first);
        lv_format_time(keys[i].last_used_ms, last);
        cJSON_AddStringToObject(k, "first_used_at", first);
        cJSON_AddStringToObject(k, "last_used_at", last);
        cJSON_AddItemToArray(prev, k);
    }
    free(keys);
    return r;
}

typedef struct PublicKeyArgs {
    const char *format;
} PublicKeyArgs;

static const CliOption public_key_options[] = {
    CLI_STRING_OPT("format", "json|pem|hex", PublicKeyArgs, format,
                   "json (default: with the kid and earlier keys), pem or hex"),
    {0},
};

static const CliCommand public_key_command = {
    .name = "public-key",
    .options = public_key_options,
};

int public_key_main(const Config *cfg, int argc, char **argv)
{
    PublicKeyArgs a = {.format = "json"};
    int k = cli_parse(&public_key_command, argc, argv, &a, NULL, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    const char *format = a.format;
    if (strcmp(format, "json") != 0 && strcmp(format, "pem") != 0 && strcmp(format, "hex") != 0)
        return cli_usage_error("public-key", "--format %s: must be json, pem or hex", format);
    Token *t = NULL;
    int code = cli_open_token("public-key", cfg, false, &t);
    if (code != 0)
        return code;
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    int r = token_public_key(t, pk);
    if (r < 0) {
        code = cli_fail("public-key", r);
        token_close(t);
        return code;
    }
    if (strcmp(format, "hex") == 0) {
        char hex[2 * TOKEN_ED25519_PK_LEN + 1];
        hex_encode(pk, sizeof(pk), hex);
        printf("%s\n", hex);
    } else if (strcmp(format, "pem") == 0) {
        char *pem = NULL;
        r = pubkey_to_pem(pk, &pem);
        if (r < 0)
            code = cli_fail("public-key", r);
        else
            fputs(pem, stdout);
        free(pem);
    } else {
        cJSON *j = NULL;
        r = pubkey_json(pk, token_key_id(t), &j);
        if (r >= 0)
            r = add_previous_keys(cfg, token_key_id(t), j);
        if (r < 0)
            code = cli_fail("public-key", r);
        else
            code = cli_print_json(j) ? LV_EXIT_OK : LV_EXIT_FAILURE;
        cJSON_Delete(j);
    }
    token_close(t);
    return code;
}
