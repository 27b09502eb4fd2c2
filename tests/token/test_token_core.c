/* SPDX-License-Identifier: Apache-2.0 */
/* The token layer on a fresh SoftHSM token: keys init, signing, the wrapped
 * DEK, AES-GCM with AAD, concurrent signers and CK_RV names. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "lvtest.h"
#include "pubkey.h"
#include "token.h"

static TokenConfig env_config(void)
{
    return (TokenConfig){
        .module_path = getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
}

static Token *open_token(void)
{
    TokenConfig c = env_config();
    Token *t = NULL;
    int r = token_open(&c, &t);
    if (r < 0)
        fail_msg("token_open: %s", lv_error());
    return t;
}

static int setup(void **state)
{
    lvtest_make_token("attesto");
    Token *t = open_token();
    bool s = false, k = false;
    if (token_keys_init(t, &s, &k) < 0)
        fail_msg("token_keys_init: %s", lv_error());
    if (!s || !k)
        fail_msg("keys init on an empty token created nothing");
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    token_close(*state);
    lvtest_cleanup();
    return 0;
}

static void keys_init_is_idempotent_and_keeps_the_key(void **state)
{
    Token *t = *state;
    uint8_t pk1[32], pk2[32];
    assert_int_equal(token_public_key(t, pk1), 0);
    Token *t2 = open_token();
    bool s = true, k = true;
    assert_int_equal(token_keys_init(t2, &s, &k), 0);
    assert_false(s);
    assert_false(k);
    assert_int_equal(token_public_key(t2, pk2), 0);
    assert_memory_equal(pk1, pk2, 32);
    token_close(t2);
}

static void signature_verifies_and_forgery_fails(void **state)
{
    Token *t = *state;
    uint8_t pk[32], sig[64];
    const uint8_t msg[] = "attesto.local-vault.relay-envelope.v1\n{\"a\":1}";
    assert_int_equal(token_public_key(t, pk), 0);
    assert_int_equal(token_sign(t, msg, sizeof(msg) - 1, sig), 0);
    assert_int_equal(pubkey_verify(pk, msg, sizeof(msg) - 1, sig), 0);
    /* Ed25519 is deterministic: the same message gives the same signature. */
    uint8_t sig2[64];
    assert_int_equal(token_sign(t, msg, sizeof(msg) - 1, sig2), 0);
    assert_memory_equal(sig, sig2, 64);
    sig[10] ^= 1;
    assert_int_equal(pubkey_verify(pk, msg, sizeof(msg) - 1, sig), LV_ERR_CRYPTO);
}

static void kid_is_derived_from_public_key(void **state)
{
    Token *t = *state;
    uint8_t pk[32];
    char kid[20];
    assert_int_equal(token_public_key(t, pk), 0);
    pubkey_default_kid(pk, kid);
    assert_string_equal(token_key_id(t), kid);
    assert_int_equal(strncmp(kid, "lv-", 3), 0);
}

static void configured_kid_wins(void **state)
{
    TokenConfig c = env_config();
    c.key_id = "attesto-edge-7";
    Token *t = NULL;
    assert_int_equal(token_open(&c, &t), 0);
    assert_string_equal(token_key_id(t), "attesto-edge-7");
    token_close(t);
}

static void dek_round_trip_and_tamper(void **state)
{
    Token *t = *state;
    uint8_t blob[TOKEN_WRAPPED_DEK_LEN];
    assert_int_equal(token_dek_create(t, blob), 0);
    assert_int_equal(token_dek_load(t, blob, sizeof(blob)), 0);

    const uint8_t iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    const uint8_t aad[] = "spool:1|stream:s|ref:r|hash:00";
    const uint8_t pt[] = "{\"payload\":\"secret\"}";
    size_t n = sizeof(pt) - 1;
    uint8_t ct[sizeof(pt) + 16], back[sizeof(pt)];
    assert_int_equal(token_aead_encrypt(t, iv, aad, sizeof(aad) - 1, pt, n, ct), 0);
    assert_memory_not_equal(ct, pt, n);
    assert_int_equal(token_aead_decrypt(t, iv, aad, sizeof(aad) - 1, ct, n + 16, back), 0);
    assert_memory_equal(back, pt, n);

    /* Each of tag, ciphertext, AAD and IV is bound: any change is a rejected
     * row (LV_ERR_CRYPTO), never a token outage. */
    uint8_t bad[sizeof(ct)];
    memcpy(bad, ct, sizeof(ct));
    bad[n + 3] ^= 0x80;
    assert_int_equal(token_aead_decrypt(t, iv, aad, sizeof(aad) - 1, bad, n + 16, back),
                     LV_ERR_CRYPTO);
    memcpy(bad, ct, sizeof(ct));
    bad[0] ^= 1;
    assert_int_equal(token_aead_decrypt(t, iv, aad, sizeof(aad) - 1, bad, n + 16, back),
                     LV_ERR_CRYPTO);
    const uint8_t aad2[] = "spool:1|stream:s|ref:X|hash:00";
    assert_int_equal(token_aead_decrypt(t, iv, aad2, sizeof(aad2) - 1, ct, n + 16, back),
                     LV_ERR_CRYPTO);
    uint8_t iv2[12];
    memcpy(iv2, iv, 12);
    iv2[11] ^= 1;
    assert_int_equal(token_aead_decrypt(t, iv2, aad, sizeof(aad) - 1, ct, n + 16, back),
                     LV_ERR_CRYPTO);
    assert_int_equal(token_aead_decrypt(t, iv, aad, sizeof(aad) - 1, ct, 15, back), LV_ERR_CRYPTO);
    /* The token still works after the rejections. */
    assert_int_equal(token_aead_decrypt(t, iv, aad, sizeof(aad) - 1, ct, n + 16, back), 0);
}

static void empty_aad_is_refused(void **state)
{
    Token *t = *state;
    uint8_t blob[TOKEN_WRAPPED_DEK_LEN], out[32];
    const uint8_t iv[12] = {0};
    assert_int_equal(token_dek_create(t, blob), 0);
    assert_int_equal(token_dek_load(t, blob, sizeof(blob)), 0);
    assert_int_equal(
        token_aead_encrypt(t, iv, (const uint8_t *)"", 0, (const uint8_t *)"x", 1, out),
        LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "empty AAD"));
    assert_int_equal(token_aead_decrypt(t, iv, NULL, 0, out, 17, out), LV_ERR_INPUT);
}

static void dek_survives_close_and_reopen(void **state)
{
    Token *t = *state;
    uint8_t blob[TOKEN_WRAPPED_DEK_LEN];
    assert_int_equal(token_dek_create(t, blob), 0);
    assert_int_equal(token_dek_load(t, blob, sizeof(blob)), 0);
    const uint8_t iv[12] = {9}, aad[] = "row-7";
    uint8_t ct[5 + 16], back[5];
    assert_int_equal(token_aead_encrypt(t, iv, aad, 5, (const uint8_t *)"hello", 5, ct), 0);

    /* A new process would do this: open, unwrap the stored blob, decrypt. */
    Token *t2 = open_token();
    assert_int_equal(token_dek_load(t2, blob, sizeof(blob)), 0);
    assert_int_equal(token_aead_decrypt(t2, iv, aad, 5, ct, sizeof(ct), back), 0);
    assert_memory_equal(back, "hello", 5);
    token_close(t2);
}

static void bad_wrapped_dek_is_refused(void **state)
{
    Token *t = *state;
    uint8_t blob[TOKEN_WRAPPED_DEK_LEN];
    assert_int_equal(token_dek_create(t, blob), 0);
    assert_int_equal(token_dek_load(t, blob, 39), LV_ERR_CRYPTO);
    assert_non_null(strstr(lv_error(), "39 bytes"));
    blob[17] ^= 0x40;
    assert_int_equal(token_dek_load(t, blob, sizeof(blob)), LV_ERR_CRYPTO);
    assert_non_null(strstr(lv_error(), "C_UnwrapKey"));
}

static void two_dek_blobs_differ(void **state)
{
    Token *t = *state;
    uint8_t a[TOKEN_WRAPPED_DEK_LEN], b[TOKEN_WRAPPED_DEK_LEN];
    assert_int_equal(token_dek_create(t, a), 0);
    assert_int_equal(token_dek_create(t, b), 0);
    assert_memory_not_equal(a, b, sizeof(a));
}

typedef struct Worker {
    Token *t;
    int id;
    int bad;
} Worker;

static void *sign_worker(void *arg)
{
    Worker *w = arg;
    uint8_t pk[32];
    if (token_public_key(w->t, pk) < 0) {
        w->bad = -1;
        return NULL;
    }
    for (int i = 0; i < 60; i++) {
        char msg[64];
        int n = snprintf(msg, sizeof(msg), "worker %d message %d", w->id, i);
        uint8_t sig[64];
        if (token_sign(w->t, (uint8_t *)msg, (size_t)n, sig) < 0 ||
            pubkey_verify(pk, (uint8_t *)msg, (size_t)n, sig) < 0)
            w->bad++;
    }
    return NULL;
}

static void concurrent_signers_all_get_valid_signatures(void **state)
{
    Token *t = *state;
    enum { N = 6 };
    pthread_t th[N];
    Worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (Worker){.t = t, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, sign_worker, &w[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].bad, 0);
    }
}

static void rv_names_are_the_standard_ones(void **state)
{
    assert_string_equal(token_rv_name(0x0), "CKR_OK");
    assert_string_equal(token_rv_name(0xa0), "CKR_PIN_INCORRECT");
    assert_string_equal(token_rv_name(0x5), "CKR_GENERAL_ERROR");
    assert_string_equal(token_rv_name(0x110), "CKR_WRAPPED_KEY_INVALID");
    assert_string_equal(token_rv_name(0x1c4), "CKR_PUBLIC_KEY_INVALID");
    assert_string_equal(token_rv_name(0x200), "CKR_FUNCTION_REJECTED");
    assert_string_equal(token_rv_name(0x80000001UL), "CKR_VENDOR_DEFINED");
    assert_string_equal(token_rv_name(0x7777), "CKR_(unknown)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keys_init_is_idempotent_and_keeps_the_key),
        cmocka_unit_test(signature_verifies_and_forgery_fails),
        cmocka_unit_test(kid_is_derived_from_public_key),
        cmocka_unit_test(configured_kid_wins),
        cmocka_unit_test(dek_round_trip_and_tamper),
        cmocka_unit_test(empty_aad_is_refused),
        cmocka_unit_test(dek_survives_close_and_reopen),
        cmocka_unit_test(bad_wrapped_dek_is_refused),
        cmocka_unit_test(two_dek_blobs_differ),
        cmocka_unit_test(concurrent_signers_all_get_valid_signatures),
        cmocka_unit_test(rv_names_are_the_standard_ones),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
