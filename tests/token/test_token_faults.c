/* SPDX-License-Identifier: Apache-2.0 */
/* The token layer under faults SoftHSM cannot produce on demand, injected by
 * the reliability shim (tests/shim/p11shim.c) over a fresh SoftHSM token: a
 * session that vanishes is dropped from the pool and replaced, a lost login
 * is a token outage (not a PIN problem), and a pulled device stays an outage
 * until the Token is reopened. */

/* Compiled in so the test can see the session pool it is about. */
#include "../../src/token.c"

#include <stdio.h>

#include "lvtest.h"

static char rules[512];

/* Replaces the rule file atomically; the shim re-reads it on change. */
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

static Token *open_via_shim(void)
{
    TokenConfig c = {
        .module_path = getenv("LV_SHIM"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
    };
    Token *t = NULL;
    if (token_open(&c, &t) < 0 || token_check_signing_key(t) < 0)
        fail_msg("open via shim: %s", lv_error());
    return t;
}

/* Makes the pool hold two idle sessions (pool growth otherwise needs
 * contention, which a test cannot schedule). */
static void grow_pool_to_two(Token *t)
{
    CK_SESSION_HANDLE a, b;
    assert_int_equal(session_get(t, &a), 0);
    assert_int_equal(session_get(t, &b), 0);
    session_put(t, a);
    session_put(t, b);
    assert_int_equal(t->npool, 2);
}

static void sign_ok(Token *t)
{
    uint8_t sig[64], pk[32];
    const uint8_t msg[] = "fault test";
    if (token_sign(t, msg, sizeof(msg) - 1, sig) < 0)
        fail_msg("token_sign: %s", lv_error());
    assert_int_equal(token_public_key(t, pk), 0);
    assert_int_equal(pubkey_verify(pk, msg, sizeof(msg) - 1, sig), 0);
}

static int setup(void **state)
{
    const char *dir = lvtest_make_token("attesto");
    snprintf(rules, sizeof(rules), "%s/rules", dir);
    setenv("LV_SHIM_MODULE", getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"), 1);
    setenv("LV_SHIM_RULES", rules, 1);
    set_rules("");
    if (lvtest_run(NULL, "keys init >/dev/null") != 0)
        fail_msg("keys init failed");
    return 0;
}

static int teardown(void **state)
{
    lvtest_cleanup();
    return 0;
}

static void vanished_session_is_dropped_and_replaced(void **state)
{
    set_rules("");
    Token *t = open_via_shim();
    grow_pool_to_two(t);
    /* The next C_Sign fails and its session is really closed on the token. */
    set_rules("C_Sign CKR_SESSION_HANDLE_INVALID times=1 effect=close-session\n");
    uint8_t sig[64];
    assert_int_equal(token_sign(t, (const uint8_t *)"x", 1, sig), LV_ERR_TOKEN);
    assert_non_null(strstr(lv_error(), "CKR_SESSION_HANDLE_INVALID"));
    assert_int_equal(t->npool, 1); /* the dead session left the pool */
    /* The surviving session keeps the login; signing goes on. */
    for (int i = 0; i < 3; i++)
        sign_ok(t);
    token_close(t);
}

static void lost_login_is_a_token_outage_not_a_pin_error(void **state)
{
    set_rules("");
    Token *t = open_via_shim();
    set_rules("C_Sign CKR_USER_NOT_LOGGED_IN times=1 effect=none\n");
    uint8_t sig[64];
    int r = token_sign(t, (const uint8_t *)"x", 1, sig);
    assert_int_equal(r, LV_ERR_TOKEN);
    assert_int_equal(lv_exit_code(r), LV_EXIT_TOKEN);
    assert_non_null(strstr(lv_error(), "CKR_USER_NOT_LOGGED_IN"));
    /* The session is alive, so it stays and is reused. */
    assert_int_equal(t->npool, 1);
    sign_ok(t);
    token_close(t);
}

static void pulled_device_stays_an_outage_until_reopened(void **state)
{
    set_rules("");
    Token *t = open_via_shim();
    grow_pool_to_two(t);
    /* Every session on the slot is closed: logged out, DEK gone. */
    set_rules("C_Sign CKR_DEVICE_REMOVED times=1 effect=close-all\n");
    uint8_t sig[64];
    assert_int_equal(token_sign(t, (const uint8_t *)"x", 1, sig), LV_ERR_NOTOKEN);
    set_rules("");
    /* No silent recovery with a stale login: later calls fail as outages. */
    int r = token_sign(t, (const uint8_t *)"x", 1, sig);
    assert_true(r == LV_ERR_TOKEN || r == LV_ERR_NOTOKEN);
    assert_int_equal(lv_exit_code(r), LV_EXIT_TOKEN);
    token_close(t);
    /* A fresh Token (what the service does on restart) works again. */
    t = open_via_shim();
    sign_ok(t);
    token_close(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(vanished_session_is_dropped_and_replaced),
        cmocka_unit_test(lost_login_is_a_token_outage_not_a_pin_error),
        cmocka_unit_test(pulled_device_stays_an_outage_until_reopened),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
