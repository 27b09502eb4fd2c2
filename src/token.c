/* SPDX-License-Identifier: Apache-2.0 */
/* The PKCS#11 token (placeholder until implemented). */
#include "lv.h"
#include "token.h"

int token_open(const TokenConfig *cfg, Token **ret)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

Token *token_close(Token *t)
{
    return NULL;
}

int token_check_signing_key(Token *t)
{
    return LV_ERR_TOKEN;
}

int token_check_kek(Token *t)
{
    return LV_ERR_TOKEN;
}
