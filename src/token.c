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
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_check_kek(Token *t)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_public_key(Token *t, uint8_t ret_pk[TOKEN_ED25519_PK_LEN])
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

const char *token_key_id(Token *t)
{
    return "";
}

int token_sign(Token *t, const uint8_t *msg, size_t len, uint8_t ret_sig[TOKEN_ED25519_SIG_LEN])
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_dek_create(Token *t, uint8_t ret_wrapped[TOKEN_WRAPPED_DEK_LEN])
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_dek_load(Token *t, const uint8_t *wrapped, size_t wrapped_len)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_aead_encrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *out)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_aead_decrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad, size_t aad_len, const uint8_t *ct_tag, size_t ct_tag_len, uint8_t *out)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

int token_keys_init(Token *t, bool *ret_created_signing, bool *ret_created_kek)
{
    return lv_error_set(LV_ERR_TOKEN, "token layer not implemented yet");
}

const char *token_rv_name(unsigned long rv)
{
    return "";
}
