/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the verbs: reporting an error once, JSON output, opening
 * the token and the spool. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "lv.h"
#include "spool.h"

int cli_fail(const char *verb, int r)
{
    const char *d = lv_error();
    fprintf(stderr, "%s: %s\n", verb, *d ? d : strerror(-r));
    return lv_exit_code(r);
}

bool cli_human(const Config *cfg)
{
    return !cfg->json && isatty(STDOUT_FILENO);
}

void cli_token_config(const Config *cfg, TokenConfig *ret)
{
    *ret = (TokenConfig){
        .module_path = cfg->pkcs11_module,
        .signing_uri = cfg->signing_key,
        .kek_uri = cfg->encryption_key,
        .pin_file = cfg->pin_file,
        .key_id = cfg->key_id,
        /* Environment only: a property of the installed token, not of one
         * invocation (docs/token.md). token_open checks the values. */
        .profile = getenv("ATTESTO_LOCAL_VAULT_PKCS11_PROFILE"),
        .eddsa_mechanism = getenv("ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_MECHANISM"),
        .eddsa_key_type = getenv("ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_KEY_TYPE"),
    };
}

/* A token found absent at start is looked for again for this long: SoftHSM's
 * file store rewrites token.object when another process logs in, and a
 * process starting at that moment sees no token at all (enqueue racing the
 * drain-loop); a USB token re-enumerating looks the same. */
#define CLI_TOKEN_ABSENT_WAIT_MS 3000

int cli_open_token(const char *verb, const Config *cfg, bool want_kek, Token **ret)
{
    TokenConfig tc;
    Token *t = NULL;
    cli_token_config(cfg, &tc);
    int64_t deadline = lv_mono_ms() + CLI_TOKEN_ABSENT_WAIT_MS;
    int r;
    for (unsigned delay_ms = 20;; delay_ms = delay_ms < 320 ? delay_ms * 2 : 320) {
        lv_error_clear();
        r = token_open(&tc, &t);
        if (r >= 0)
            r = token_check_signing_key(t);
        if (r >= 0 && want_kek)
            r = token_check_kek(t);
        if (r >= 0 || r != LV_ERR_NOTOKEN || lv_mono_ms() + delay_ms > deadline)
            break;
        t = token_close(t);
        usleep(delay_ms * 1000);
    }
    if (r < 0) {
        token_close(t);
        return cli_fail(verb, r);
    }
    *ret = t;
    return 0;
}

int cli_open_spool(const char *verb, const Config *cfg, const CliSpool *how, Token **ret_tok,
                   Spool **ret_spool)
{
    Token *tok = NULL;
    if (how->token) {
        int ec = cli_open_token(verb, cfg, true, &tok);
        if (ec != 0)
            return ec;
    }
    SpoolOptions opt = {
        .path = cfg->spool_db,
        .installation_id = cfg->installation_id,
        .include_payload = how->include_payload,
        .max_attempts = how->max_attempts,
        .quota_items = cfg->quota_items,
        .quota_bytes = cfg->quota_bytes,
    };
    lv_error_clear();
    int r = spool_open(&opt, tok, ret_spool);
    if (r < 0) {
        token_close(tok);
        return cli_fail(verb, r);
    }
    *ret_tok = tok;
    return 0;
}

bool cli_print_json(const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (!s) {
        fprintf(stderr, "out of memory\n");
        return false;
    }
    printf("%s\n", s);
    free(s);
    return true;
}
