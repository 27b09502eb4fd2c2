/* SPDX-License-Identifier: Apache-2.0 */
/* Helpers shared by the verbs: reporting an error once, opening the token. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "lv.h"

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
    };
}

int cli_open_token(const char *verb, const Config *cfg, bool want_kek, Token **ret)
{
    TokenConfig tc;
    Token *t = NULL;
    cli_token_config(cfg, &tc);
    lv_error_clear();
    int r = token_open(&tc, &t);
    if (r >= 0)
        r = token_check_signing_key(t);
    if (r >= 0 && want_kek)
        r = token_check_kek(t);
    if (r < 0) {
        token_close(t);
        return cli_fail(verb, r);
    }
    *ret = t;
    return 0;
}
