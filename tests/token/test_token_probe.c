/* SPDX-License-Identifier: Apache-2.0 */
/* The capability probe of token_open on a fresh SoftHSM token, alone and
 * behind the fault shim (tests/shim) dressed as other tokens: SoftHSM's
 * ambiguous 0x210A passes the RFC 5649 known-answer test and is recorded as
 * rfc5649, a token whose answer differs is refused, legacy Luna EdDSA ids
 * are chosen by manufacturer, forced by profile or set by override, and
 * every bad configuration value is a one-line usage error. */

/* Compiled in so the test can drive the known-answer test directly. */
#include "../../src/token.c"

#include <cjson/cJSON.h>
#include <stdio.h>

#include "lvtest.h"

static char rules[512], shim_log[512];

static void set_rules(const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.new", rules);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(tmp, rules), 0);
}

static int log_count(const char *needle)
{
    FILE *f = fopen(shim_log, "r");
    if (!f)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* Legacy Luna as public documentation describes it: Ed25519 under
 * CKM_VENDOR_DEFINED+0xC03 and CKK_VENDOR_DEFINED+0x12, translated by the
 * shim to SoftHSM's standard ids. */
#define LUNA_IDS                                                                                   \
    "map-mechanism 0x80000c03 0x1057\n"                                                            \
    "map-key-type 0x80000012 0x40\n"
#define LUNA_MAKER "manufacturer Safenet, Inc.\n"

static TokenConfig config(const char *module)
{
    return (TokenConfig){
        .module_path = module ? module : getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
}

static Token *open_ok(const TokenConfig *c)
{
    Token *t = NULL;
    lv_error_clear();
    if (token_open(c, &t) < 0)
        fail_msg("token_open: %s", lv_error());
    return t;
}

/* A signature from the token verifies under the key's public key. */
static void signs(Token *t)
{
    uint8_t sig[64], pk[32];
    const uint8_t msg[] = "probe test message";
    if (token_sign(t, msg, sizeof(msg) - 1, sig) < 0 || token_public_key(t, pk) < 0)
        fail_msg("sign: %s", lv_error());
    assert_int_equal(pubkey_verify(pk, msg, sizeof(msg) - 1, sig), 0);
}

static void softhsm_0x210a_passes_the_kat_and_is_recorded_as_rfc5649(void **state)
{
    TokenConfig c = config(NULL);
    Token *t = open_ok(&c);
    const TokenMechanism *w = token_mechanism(t, TOKEN_ROLE_WRAP);
    assert_true(w->available);
    assert_int_equal(w->mechanism, 0x210A);
    assert_string_equal(w->name, "CKM_AES_KEY_WRAP_PAD");
    assert_string_equal(w->algorithm, "rfc5649");
    assert_non_null(strstr(w->why, "known-answer test"));
    const TokenMechanism *s = token_mechanism(t, TOKEN_ROLE_SIGN);
    assert_true(s->available);
    assert_int_equal(s->mechanism, CKM_EDDSA);
    assert_int_equal(s->key_type, CKK_EC_EDWARDS);
    assert_string_equal(token_profile(t), "standard");
    const TokenMechanism *g = token_mechanism(t, TOKEN_ROLE_SEAL);
    assert_true(g->available);
    assert_int_equal(g->mechanism, CKM_AES_GCM);
    assert_string_equal(token_manufacturer(t), "SoftHSM project");
    print_message("probe at open: %lld us (SoftHSM 2.6, in-process)\n", token_probe_us(t));
    /* The known-answer test leaves nothing behind on the token. */
    CK_SESSION_HANDLE sh;
    assert_int_equal(session_get(t, &sh), 0);
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_OBJECT_HANDLE found[TOKEN_FIND_MAX];
    size_t n = 0;
    assert_int_equal(find_objects(t, sh, tmpl, 1, found, &n), 0);
    session_put(t, sh);
    assert_int_equal(n, 1); /* the KEK only */
    signs(t);
    token_close(t);
}

static void the_kat_refuses_a_wrong_answer(void **state)
{
    TokenConfig c = config(NULL);
    Token *t = open_ok(&c);
    uint8_t wrong[40];
    memcpy(wrong, kat_wrapped, sizeof(wrong));
    wrong[39] ^= 0x80;
    lv_error_clear();
    bool outage = true;
    assert_int_equal(wrap_kat(t, kat_kek, kat_key, wrong, CKM_AES_KEY_WRAP_PAD, &outage),
                     LV_ERR_CRYPTO);
    assert_false(outage);
    assert_non_null(strstr(lv_error(), "not RFC 5649's 40 bytes"));
    /* And the real answer passes when asked again (nothing was left over). */
    assert_int_equal(wrap_kat(t, kat_kek, kat_key, kat_wrapped, CKM_AES_KEY_WRAP_PAD, &outage), 0);
    token_close(t);
}

/* The constants in src/token.c are the vector file's tcId 167. */
static void the_kat_vector_is_wycheproof_tc167(void **state)
{
    char *path = lvtest_vector_path("wycheproof/testvectors_v1/aes_kwp_test.json");
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(lv_read_file(path, 64 << 20, &text, &len), 0);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    bool seen = false;
    cJSON *g, *tc;
    cJSON_ArrayForEach(g, cJSON_GetObjectItemCaseSensitive(j, "testGroups"))
    {
        cJSON_ArrayForEach(tc, cJSON_GetObjectItemCaseSensitive(g, "tests"))
        {
            if (cJSON_GetObjectItemCaseSensitive(tc, "tcId")->valueint != 167)
                continue;
            char hex[81];
            hex_encode(kat_kek, 32, hex);
            assert_string_equal(cJSON_GetObjectItemCaseSensitive(tc, "key")->valuestring, hex);
            hex_encode(kat_key, 32, hex);
            assert_string_equal(cJSON_GetObjectItemCaseSensitive(tc, "msg")->valuestring, hex);
            hex_encode(kat_wrapped, 40, hex);
            assert_string_equal(cJSON_GetObjectItemCaseSensitive(tc, "ct")->valuestring, hex);
            assert_string_equal(cJSON_GetObjectItemCaseSensitive(tc, "result")->valuestring,
                                "valid");
            seen = true;
        }
    }
    assert_true(seen);
    cJSON_Delete(j);
    free(text);
    free(path);
}

static void a_shim_that_changes_the_kat_answer_makes_the_probe_refuse_0x210a(void **state)
{
    /* The token answers CKR_OK with a wrong blob, once: the KAT's wrap. */
    set_rules("C_WrapKey CKR_OK effect=corrupt-output times=1\n");
    TokenConfig c = config(getenv("LV_SHIM"));
    Token *t = open_ok(&c);
    const TokenMechanism *w = token_mechanism(t, TOKEN_ROLE_WRAP);
    assert_false(w->available);
    assert_non_null(strstr(w->why, "CKM_AES_KEY_WRAP_PAD (0x210a) refused: it is not RFC 5649"));
    lv_error_clear();
    assert_int_equal(token_check_kek(t), LV_ERR_TOKEN);
    assert_non_null(strstr(lv_error(), "encryption key (KEK): CKM_AES_KEY_WRAP_PAD (0x210a) "
                                       "refused: it is not RFC 5649 on token 'attesto'"));
    uint8_t blob[TOKEN_WRAPPED_DEK_LEN];
    assert_int_equal(token_dek_create(t, blob), LV_ERR_TOKEN);
    /* Signing does not need the wrap role. */
    signs(t);
    token_close(t);
    set_rules("");
}

static void a_token_lost_during_the_kat_fails_the_open_without_a_verdict(void **state)
{
    set_rules("C_WrapKey CKR_DEVICE_REMOVED times=1\n");
    TokenConfig c = config(getenv("LV_SHIM"));
    Token *t = NULL;
    lv_error_clear();
    assert_int_equal(token_open(&c, &t), LV_ERR_NOTOKEN);
    assert_null(t);
    assert_string_equal(lv_error(), "known-answer test: C_WrapKey: CKR_DEVICE_REMOVED (0x32)");
    /* The device back, the same mechanism passes. */
    set_rules("");
    t = open_ok(&c);
    assert_true(token_mechanism(t, TOKEN_ROLE_WRAP)->available);
    token_close(t);
}

static void luna_legacy_ids_are_chosen_for_a_luna_and_sign(void **state)
{
    set_rules(LUNA_IDS LUNA_MAKER);
    unlink(shim_log);
    TokenConfig c = config(getenv("LV_SHIM"));
    Token *t = open_ok(&c);
    assert_string_equal(token_manufacturer(t), "Safenet, Inc.");
    assert_string_equal(token_profile(t), "luna-legacy");
    const TokenMechanism *s = token_mechanism(t, TOKEN_ROLE_SIGN);
    assert_true(s->available);
    assert_int_equal(s->mechanism, 0x80000C03UL);
    assert_int_equal(s->key_type, 0x80000012UL);
    assert_string_equal(s->name, "CKM_VENDOR_DEFINED+0xc03");
    signs(t);
    /* The signatures came through the vendor id, not the standard one. */
    assert_true(log_count("MAP C_SignInit 0x80000c03->0x1057") >= 2);
    token_close(t);
    set_rules("");
}

static void vendor_ids_on_another_maker_are_not_guessed(void **state)
{
    set_rules(LUNA_IDS);
    TokenConfig c = config(getenv("LV_SHIM"));
    Token *t = open_ok(&c);
    const TokenMechanism *s = token_mechanism(t, TOKEN_ROLE_SIGN);
    assert_false(s->available);
    assert_non_null(strstr(s->why, "is not a Thales/SafeNet token"));
    assert_non_null(strstr(s->why, "ATTESTO_LOCAL_VAULT_PKCS11_PROFILE=luna-legacy"));
    lv_error_clear();
    assert_int_equal(token_check_signing_key(t), LV_ERR_TOKEN);
    assert_non_null(strstr(lv_error(), "signing key: cannot sign on this token:"));
    token_close(t);

    /* Forced by the profile, the same token signs. */
    c.profile = "luna-legacy";
    t = open_ok(&c);
    assert_string_equal(token_profile(t), "luna-legacy");
    assert_non_null(strstr(token_mechanism(t, TOKEN_ROLE_SIGN)->why, "forced by"));
    signs(t);
    token_close(t);

    /* Or by explicit ids, for a token nobody has seen yet. */
    c.profile = NULL;
    c.eddsa_mechanism = "0x80000C03";
    c.eddsa_key_type = "80000012";
    t = open_ok(&c);
    assert_string_equal(token_profile(t), "custom");
    assert_int_equal(token_mechanism(t, TOKEN_ROLE_SIGN)->mechanism, 0x80000C03UL);
    signs(t);
    token_close(t);
    set_rules("");
}

static void a_profile_the_token_lacks_fails_clearly(void **state)
{
    /* Plain SoftHSM has no vendor EdDSA id. */
    TokenConfig c = config(NULL);
    c.profile = "luna-legacy";
    Token *t = open_ok(&c);
    lv_error_clear();
    assert_int_equal(token_check_signing_key(t), LV_ERR_TOKEN);
    assert_string_equal(lv_error(),
                        "signing key: cannot sign on this token: profile luna-legacy (forced by "
                        "ATTESTO_LOCAL_VAULT_PKCS11_PROFILE): token 'attesto' (manufacturer "
                        "'SoftHSM project') does not offer CKM_VENDOR_DEFINED+0xc03 (0x80000c03) "
                        "with CKF_SIGN");
    uint8_t sig[64];
    assert_int_equal(token_sign(t, (const uint8_t *)"m", 1, sig), LV_ERR_TOKEN);
    token_close(t);

    /* A legacy Luna has no standard CKM_EDDSA. */
    set_rules(LUNA_IDS LUNA_MAKER);
    c = config(getenv("LV_SHIM"));
    c.profile = "standard";
    t = open_ok(&c);
    lv_error_clear();
    assert_int_equal(token_check_signing_key(t), LV_ERR_TOKEN);
    assert_non_null(strstr(lv_error(), "does not offer CKM_EDDSA (0x1057) with CKF_SIGN"));
    token_close(t);
    set_rules("");
}

static void bad_values_are_usage_errors_naming_the_variable(void **state)
{
    static const struct {
        const char *profile, *mech, *kt, *msg;
    } cases[] = {
        {"luna", NULL, NULL,
         "ATTESTO_LOCAL_VAULT_PKCS11_PROFILE=luna: must be one of auto (the default), standard, "
         "luna-legacy"},
        {"Standard", NULL, NULL, "ATTESTO_LOCAL_VAULT_PKCS11_PROFILE=Standard: must be one of"},
        {NULL, "xyz", NULL,
         "ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_MECHANISM=xyz: must be a PKCS#11 id in hexadecimal, 1 "
         "to 8 digits with an optional 0x (e.g. 0x80000c03)"},
        {NULL, "0x", NULL, "ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_MECHANISM=0x: must be"},
        {NULL, "0x180000c03", NULL, "ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_MECHANISM=0x180000c03:"},
        {NULL, NULL, "-12", "ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_KEY_TYPE=-12: must be"},
        {NULL, NULL, "0x40 ", "ATTESTO_LOCAL_VAULT_PKCS11_EDDSA_KEY_TYPE=0x40 : must be"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
        TokenConfig c = config(NULL);
        c.profile = cases[i].profile;
        c.eddsa_mechanism = cases[i].mech;
        c.eddsa_key_type = cases[i].kt;
        Token *t = NULL;
        lv_error_clear();
        assert_int_equal(token_open(&c, &t), LV_ERR_INPUT);
        assert_null(t);
        if (strncmp(lv_error(), cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu: %s", i, lv_error());
        assert_null(strchr(lv_error(), '\n'));
    }
}

static int setup(void **state)
{
    const char *dir = lvtest_make_token("attesto");
    snprintf(rules, sizeof(rules), "%s/shim.rules", dir);
    snprintf(shim_log, sizeof(shim_log), "%s/shim.log", dir);
    setenv("LV_SHIM_RULES", rules, 1);
    setenv("LV_SHIM_LOG", shim_log, 1);
    set_rules("");
    /* Keys made the standard way, as an operator's ceremony would. */
    token_close(lvtest_open_token(NULL, NULL));
    return 0;
}

static int teardown(void **state)
{
    lvtest_cleanup();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(softhsm_0x210a_passes_the_kat_and_is_recorded_as_rfc5649),
        cmocka_unit_test(the_kat_refuses_a_wrong_answer),
        cmocka_unit_test(the_kat_vector_is_wycheproof_tc167),
        cmocka_unit_test(a_shim_that_changes_the_kat_answer_makes_the_probe_refuse_0x210a),
        cmocka_unit_test(a_token_lost_during_the_kat_fails_the_open_without_a_verdict),
        cmocka_unit_test(luna_legacy_ids_are_chosen_for_a_luna_and_sign),
        cmocka_unit_test(vendor_ids_on_another_maker_are_not_guessed),
        cmocka_unit_test(a_profile_the_token_lacks_fails_clearly),
        cmocka_unit_test(bad_values_are_usage_errors_naming_the_variable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
