/* SPDX-License-Identifier: Apache-2.0 */
/* The fault-injecting PKCS#11 shim itself, driven through raw PKCS#11 calls
 * on a fresh SoftHSM token: it forwards, it fails exactly the calls its rules
 * name, it re-reads its rules mid-run, and the token is left in the state the
 * fault describes (session closed, logged out, all sessions gone). */
#include <dlfcn.h>
#include <pthread.h>
#include <p11-kit/pkcs11.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "lvtest.h"
#include "pubkey.h"
#include "token.h"

static CK_FUNCTION_LIST *f;
static void *shim_handle;
static CK_SLOT_ID slot;
static char rules_path[512], log_path[512];
static char pin[256];

static void write_rules(const char *text)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", rules_path);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    /* rename: a new inode, so the shim sees the change whatever the mtime. */
    assert_int_equal(rename(tmp, rules_path), 0);
}

static void clear_rules(void)
{
    unlink(rules_path);
    unlink(log_path);
}

static int log_count(const char *needle)
{
    FILE *fp = fopen(log_path, "r");
    if (!fp)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), fp))
        if (strstr(line, needle))
            n++;
    fclose(fp);
    return n;
}

static CK_SESSION_HANDLE open_session(void)
{
    CK_SESSION_HANDLE h;
    assert_int_equal(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_OK);
    return h;
}

static void login(CK_SESSION_HANDLE h)
{
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
    assert_true(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);
}

static CK_ULONG session_state(CK_SESSION_HANDLE h, CK_RV *ret_rv)
{
    CK_SESSION_INFO si;
    *ret_rv = f->C_GetSessionInfo(h, &si);
    return *ret_rv == CKR_OK ? si.state : (CK_ULONG)-1;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, "lv-signing", 10}};
    assert_int_equal(f->C_FindObjectsInit(h, t, 2), CKR_OK);
    CK_OBJECT_HANDLE o[2];
    CK_ULONG n = 0;
    assert_int_equal(f->C_FindObjects(h, o, 2, &n), CKR_OK);
    assert_int_equal(f->C_FindObjectsFinal(h), CKR_OK);
    assert_int_equal(n, 1);
    return o[0];
}

static CK_RV sign(CK_SESSION_HANDLE h, uint8_t sig[64])
{
    CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
    CK_RV rv = f->C_SignInit(h, &m, find_key(h, CKO_PRIVATE_KEY));
    if (rv != CKR_OK)
        return rv;
    CK_ULONG sl = 64;
    return f->C_Sign(h, (CK_BYTE *)"message", 7, sig, &sl);
}

static int group_setup(void **state)
{
    const char *dir = lvtest_make_token("attesto");
    /* Keys made through the real module, by the product's own keys init. */
    TokenConfig c = {
        .module_path = getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
    Token *t = NULL;
    if (token_open(&c, &t) < 0 || token_keys_init(t, NULL, NULL) < 0)
        fail_msg("keys init: %s", lv_error());
    token_close(t);

    FILE *fp = fopen(getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"), "r");
    assert_non_null(fp);
    assert_non_null(fgets(pin, sizeof(pin), fp));
    fclose(fp);
    pin[strcspn(pin, "\n")] = '\0';

    snprintf(rules_path, sizeof(rules_path), "%s/rules", dir);
    snprintf(log_path, sizeof(log_path), "%s/shim.log", dir);
    setenv("LV_SHIM_MODULE", getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"), 1);
    setenv("LV_SHIM_RULES", rules_path, 1);
    setenv("LV_SHIM_LOG", log_path, 1);

    shim_handle = dlopen(getenv("LV_SHIM"), RTLD_NOW | RTLD_LOCAL);
    if (!shim_handle)
        fail_msg("dlopen %s: %s", getenv("LV_SHIM"), dlerror());
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(shim_handle, "C_GetFunctionList");
    assert_non_null(gfl);
    assert_int_equal(gfl(&f), CKR_OK);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    assert_int_equal(f->C_Initialize(&args), CKR_OK);
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    assert_int_equal(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
    bool found = false;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED)) {
            slot = slots[i];
            found = true;
        }
    }
    assert_true(found);
    *state = NULL;
    return 0;
}

static int group_teardown(void **state)
{
    if (f) {
        f->C_CloseAllSessions(slot);
        f->C_Finalize(NULL);
    }
    if (shim_handle)
        dlclose(shim_handle);
    lvtest_cleanup();
    return 0;
}

static int test_teardown(void **state)
{
    clear_rules();
    f->C_CloseAllSessions(slot);
    return 0;
}

static void forwards_every_call_to_the_real_module(void **state)
{
    clear_rules();
    CK_SESSION_HANDLE h = open_session();
    login(h);
    uint8_t sig[64];
    assert_int_equal(sign(h, sig), CKR_OK);
    /* The signature is SoftHSM's: it verifies under the key's public half,
     * through the shim and independently through OpenSSL. */
    CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
    assert_int_equal(f->C_VerifyInit(h, &m, find_key(h, CKO_PUBLIC_KEY)), CKR_OK);
    assert_int_equal(f->C_Verify(h, (CK_BYTE *)"message", 7, sig, 64), CKR_OK);
    uint8_t point[64];
    CK_ATTRIBUTE a = {CKA_EC_POINT, point, sizeof(point)};
    assert_int_equal(f->C_GetAttributeValue(h, find_key(h, CKO_PUBLIC_KEY), &a, 1), CKR_OK);
    const uint8_t *pk = a.ulValueLen == 34 ? point + 2 : point;
    assert_int_equal(pubkey_verify(pk, (const uint8_t *)"message", 7, sig), 0);
    sig[0] ^= 1;
    assert_int_not_equal(pubkey_verify(pk, (const uint8_t *)"message", 7, sig), 0);
    assert_int_equal(log_count(" C_"), 0);
}

static void fails_the_call_after_n_then_passes_again(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    login(h);
    write_rules("# third signature fails once\nC_Sign CKR_GENERAL_ERROR after=2 times=1\n");
    uint8_t sig[64];
    assert_int_equal(sign(h, sig), CKR_OK);
    assert_int_equal(sign(h, sig), CKR_OK);
    memset(sig, 0xaa, sizeof(sig));
    assert_int_equal(sign(h, sig), CKR_GENERAL_ERROR);
    /* The real signature never reaches the caller of a failed call. */
    for (size_t i = 0; i < sizeof(sig); i++)
        assert_int_equal(sig[i], 0);
    /* The token ended the operation, as after a real failure. */
    assert_int_equal(sign(h, sig), CKR_OK);
    assert_int_equal(log_count(" C_Sign CKR_GENERAL_ERROR none"), 1);
    CK_RV rv;
    assert_int_equal(session_state(h, &rv), CKS_RO_USER_FUNCTIONS);
}

static void rereads_rules_changed_mid_run(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    login(h);
    uint8_t sig[64];
    assert_int_equal(sign(h, sig), CKR_OK);
    write_rules("C_Decrypt CKR_GENERAL_ERROR\n");
    assert_int_equal(sign(h, sig), CKR_OK);
    write_rules("C_SignInit CKR_FUNCTION_FAILED times=0\n");
    assert_int_equal(sign(h, sig), CKR_FUNCTION_FAILED);
    assert_int_equal(sign(h, sig), CKR_FUNCTION_FAILED);
    unlink(rules_path);
    assert_int_equal(sign(h, sig), CKR_OK);
    assert_int_equal(log_count(" C_SignInit CKR_FUNCTION_FAILED"), 2);
    assert_int_equal(log_count(" C_Decrypt"), 0);
}

static void device_removed_closes_every_session_and_logs_out(void **state)
{
    CK_SESSION_HANDLE h1 = open_session(), h2 = open_session();
    login(h1);
    write_rules("C_Sign CKR_DEVICE_REMOVED\n");
    uint8_t sig[64];
    assert_int_equal(sign(h1, sig), CKR_DEVICE_REMOVED);
    /* Both sessions are gone on the token itself: SoftHSM answers now. */
    CK_RV rv;
    session_state(h1, &rv);
    assert_int_equal(rv, CKR_SESSION_HANDLE_INVALID);
    session_state(h2, &rv);
    assert_int_equal(rv, CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(log_count(" C_Sign CKR_DEVICE_REMOVED close-all"), 1);
    /* "Reinserted": a new session starts logged out. */
    CK_SESSION_HANDLE h3 = open_session();
    assert_int_equal(session_state(h3, &rv), CKS_RO_PUBLIC_SESSION);
    login(h3);
    assert_int_equal(sign(h3, sig), CKR_OK);
}

static void session_handle_invalid_closes_only_that_session(void **state)
{
    CK_SESSION_HANDLE h1 = open_session(), h2 = open_session();
    login(h1);
    write_rules("C_SignInit CKR_SESSION_HANDLE_INVALID\n");
    uint8_t sig[64];
    assert_int_equal(sign(h1, sig), CKR_SESSION_HANDLE_INVALID);
    CK_RV rv;
    session_state(h1, &rv);
    assert_int_equal(rv, CKR_SESSION_HANDLE_INVALID);
    assert_int_equal(session_state(h2, &rv), CKS_RO_USER_FUNCTIONS);
    assert_int_equal(sign(h2, sig), CKR_OK);
}

static void user_not_logged_in_really_logs_out(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    login(h);
    write_rules("C_Sign CKR_USER_NOT_LOGGED_IN\n");
    uint8_t sig[64];
    assert_int_equal(sign(h, sig), CKR_USER_NOT_LOGGED_IN);
    CK_RV rv;
    assert_int_equal(session_state(h, &rv), CKS_RO_PUBLIC_SESSION);
    /* The private key is out of reach until a new login. */
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)}};
    CK_OBJECT_HANDLE o[2];
    CK_ULONG n = 9;
    assert_int_equal(f->C_FindObjectsInit(h, t, 1), CKR_OK);
    assert_int_equal(f->C_FindObjects(h, o, 2, &n), CKR_OK);
    assert_int_equal(f->C_FindObjectsFinal(h), CKR_OK);
    assert_int_equal(n, 0);
    login(h);
    assert_int_equal(sign(h, sig), CKR_OK);
}

/* RV CKR_OK: the login is lost without the call failing; the real module
 * then answers the call as it stands (the key handle of the login is gone). */
static void effect_without_fault_reaches_the_real_module(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    login(h);
    CK_OBJECT_HANDLE key = find_key(h, CKO_PRIVATE_KEY);
    write_rules("C_SignInit CKR_OK effect=logout\n");
    CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
    assert_int_equal(f->C_SignInit(h, &m, key), CKR_OBJECT_HANDLE_INVALID);
    assert_int_equal(log_count(" C_SignInit CKR_OK logout"), 1);
    CK_RV rv;
    assert_int_equal(session_state(h, &rv), CKS_RO_PUBLIC_SESSION);
    /* times=1 by default: the next call is not touched. */
    login(h);
    uint8_t sig[64];
    assert_int_equal(sign(h, sig), CKR_OK);
    assert_int_equal(log_count(" C_SignInit"), 1);
}

static void wildcard_spares_teardown_and_bad_rules_are_reported(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    write_rules("C_Sign CKR_NO_SUCH_CODE\n* CKR_GENERAL_ERROR times=0 effect=none\n");
    CK_TOKEN_INFO ti;
    assert_int_equal(f->C_GetTokenInfo(slot, &ti), CKR_GENERAL_ERROR);
    assert_int_equal(f->C_GetTokenInfo(slot, &ti), CKR_GENERAL_ERROR);
    CK_RV rv;
    session_state(h, &rv);
    assert_int_equal(rv, CKR_GENERAL_ERROR);
    /* Closing is never failed by "*": the real session is released. */
    assert_int_equal(f->C_CloseSession(h), CKR_OK);
    assert_int_equal(log_count("BADRULE"), 1);
    unlink(rules_path);
    session_state(h, &rv);
    assert_int_equal(rv, CKR_SESSION_HANDLE_INVALID);
}

static void *signer(void *arg)
{
    /* Signs on its own session until that session is gone. */
    CK_SESSION_HANDLE h = *(CK_SESSION_HANDLE *)arg;
    CK_MECHANISM m = {CKM_EDDSA, NULL, 0};
    CK_OBJECT_HANDLE key = *((CK_OBJECT_HANDLE *)arg + 1);
    for (int i = 0; i < 20000; i++) {
        uint8_t sig[64];
        CK_ULONG sl = 64;
        if (f->C_SignInit(h, &m, key) != CKR_OK ||
            f->C_Sign(h, (CK_BYTE *)"message", 7, sig, &sl) != CKR_OK)
            break;
    }
    return NULL;
}

/* Regression: the close-all effect ran while another thread was inside
 * SoftHSM's C_Sign on a session it closed, and SoftHSM crashed (found by
 * the relay soak once enqueue signed and sealed on two threads). */
static void close_all_waits_for_calls_in_flight(void **state)
{
    CK_SESSION_HANDLE h1 = open_session(), h2 = open_session();
    login(h1);
    CK_ULONG arg[2] = {h2, find_key(h2, CKO_PRIVATE_KEY)};
    CK_ULONG arg1[2] = {h1, find_key(h1, CKO_PRIVATE_KEY)};
    write_rules("C_Sign CKR_DEVICE_REMOVED after=200 times=1\n");
    /* Both threads sign until the "removal" closes their sessions. */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, signer, arg), 0);
    signer(arg1);
    pthread_join(th, NULL);
    assert_int_equal(log_count(" C_Sign CKR_DEVICE_REMOVED close-all"), 1);
    CK_RV rv;
    session_state(h2, &rv);
    assert_int_equal(rv, CKR_SESSION_HANDLE_INVALID);
}

/* corrupt-output: the real call succeeds and the shim flips the first bit
 * of what it returned; Ed25519 is deterministic, so the good signature is
 * known. times=1: the next call is not touched. */
static void corrupt_output_flips_one_bit_of_a_good_result(void **state)
{
    CK_SESSION_HANDLE h = open_session();
    login(h);
    uint8_t good[64], bad[64], again[64];
    assert_int_equal(sign(h, good), CKR_OK);
    write_rules("C_Sign CKR_OK effect=corrupt-output\n");
    assert_int_equal(sign(h, bad), CKR_OK);
    assert_int_equal(log_count(" C_Sign CKR_OK corrupt-output"), 1);
    assert_int_equal(bad[0], good[0] ^ 0x01);
    assert_memory_equal(bad + 1, good + 1, sizeof(good) - 1);
    assert_int_equal(sign(h, again), CKR_OK);
    assert_memory_equal(again, good, sizeof(good));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(forwards_every_call_to_the_real_module, test_teardown),
        cmocka_unit_test_teardown(fails_the_call_after_n_then_passes_again, test_teardown),
        cmocka_unit_test_teardown(rereads_rules_changed_mid_run, test_teardown),
        cmocka_unit_test_teardown(device_removed_closes_every_session_and_logs_out, test_teardown),
        cmocka_unit_test_teardown(session_handle_invalid_closes_only_that_session, test_teardown),
        cmocka_unit_test_teardown(user_not_logged_in_really_logs_out, test_teardown),
        cmocka_unit_test_teardown(effect_without_fault_reaches_the_real_module, test_teardown),
        cmocka_unit_test_teardown(wildcard_spares_teardown_and_bad_rules_are_reported,
                                  test_teardown),
        cmocka_unit_test_teardown(close_all_waits_for_calls_in_flight, test_teardown),
        cmocka_unit_test_teardown(corrupt_output_flips_one_bit_of_a_good_result, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
