/* SPDX-License-Identifier: Apache-2.0 */
/* Ed25519 public keys outside the token: PEM, verification, kid, JSON form. */
#include "pubkey.h"
#include "lv.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

static void pkey_freep(EVP_PKEY **p)
{
    EVP_PKEY_free(*p);
}
static void bio_freep(BIO **p)
{
    BIO_free(*p);
}
static void mdctx_freep(EVP_MD_CTX **p)
{
    EVP_MD_CTX_free(*p);
}

int pubkey_to_pem(const uint8_t pk[32], char **ret)
{
    _cleanup_(pkey_freep) EVP_PKEY *key =
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pk, 32);
    _cleanup_(bio_freep) BIO *bio = BIO_new(BIO_s_mem());
    if (!key || !bio || PEM_write_bio_PUBKEY(bio, key) != 1)
        return -ENOMEM;
    char *data;
    long n = BIO_get_mem_data(bio, &data);
    char *s = malloc((size_t)n + 1);
    if (!s)
        return -ENOMEM;
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    *ret = s;
    return 0;
}

int pubkey_parse(const char *text, uint8_t ret_pk[32])
{
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        n--;
    if (n == 64) {
        char hex[65];
        memcpy(hex, text, 64);
        hex[64] = '\0';
        if (hex_decode(hex, ret_pk, 32) == 0)
            return 0;
    }
    _cleanup_(bio_freep) BIO *bio = BIO_new_mem_buf(text, (int)strlen(text));
    if (!bio)
        return -ENOMEM;
    _cleanup_(pkey_freep) EVP_PKEY *key = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (!key || EVP_PKEY_id(key) != EVP_PKEY_ED25519)
        return lv_error_set(LV_ERR_INPUT, "public key: not 64 hex digits or a PEM Ed25519 "
                                          "SubjectPublicKeyInfo");
    size_t len = 32;
    if (EVP_PKEY_get_raw_public_key(key, ret_pk, &len) != 1 || len != 32)
        return lv_error_set(LV_ERR_INPUT, "public key: not a 32-byte Ed25519 key");
    return 0;
}

int pubkey_verify(const uint8_t pk[32], const uint8_t *msg, size_t len, const uint8_t sig[64])
{
    _cleanup_(pkey_freep) EVP_PKEY *key =
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pk, 32);
    _cleanup_(mdctx_freep) EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!key || !ctx)
        return LV_ERR_CRYPTO; /* an unusable key verifies nothing */
    if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) != 1)
        return LV_ERR_CRYPTO;
    if (EVP_DigestVerify(ctx, sig, 64, msg, len) != 1)
        return LV_ERR_CRYPTO;
    return 0;
}

void pubkey_default_kid(const uint8_t pk[32], char ret[20])
{
    char hex[65];
    lv_sha256_hex(pk, 32, hex);
    snprintf(ret, 20, "lv-%.16s", hex);
}

int pubkey_json(const uint8_t pk[32], const char *kid, cJSON **ret)
{
    char hex[65];
    _cleanup_free_ char *pem = NULL;
    int r = pubkey_to_pem(pk, &pem);
    if (r < 0)
        return r;
    hex_encode(pk, 32, hex);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "alg", "Ed25519") ||
        !cJSON_AddStringToObject(o, "kid", kid) ||
        !cJSON_AddStringToObject(o, "public_key_hex", hex) ||
        !cJSON_AddStringToObject(o, "public_key_pem", pem)) {
        cJSON_Delete(o);
        return -ENOMEM;
    }
    *ret = o;
    return 0;
}

int pubkey_signed_message(const char *domain, const char *body, size_t body_len, uint8_t **ret,
                          size_t *ret_len)
{
    size_t dl = strlen(domain);
    if (body_len > SIZE_MAX - dl - 1)
        return LV_ERR_TOOBIG;
    uint8_t *m = malloc(dl + 1 + body_len);
    if (!m)
        return -ENOMEM;
    memcpy(m, domain, dl);
    m[dl] = '\n';
    memcpy(m + dl + 1, body, body_len);
    *ret = m;
    *ret_len = dl + 1 + body_len;
    return 0;
}
