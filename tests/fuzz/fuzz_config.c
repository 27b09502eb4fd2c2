/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for configuration handling: the global options
 * (config_parse_globals) and the PKCS#11 URIs the token layer parses
 * (token_open up to module loading, with a module path that does not exist,
 * so no module is ever loaded). The input is argv, NUL-separated. Properties:
 * one-line errors; a PIN is never taken from argv nor echoed; a value that is
 * not a pkcs11: URI (it may be raw key material) is never echoed; a URI the
 * token layer accepts is one p11-kit parses without pin-value= or
 * unrecognized attributes. */
#include <p11-kit/uri.h>

#include "lv.h"

#include "config.h"
#include "token.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_config: property failed: %s (%s)\n", #cond, lv_error());         \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_ARGS  24
#define NO_MODULE "/nonexistent/attesto-fuzz/pkcs11-module.so"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Called on the first input (the corpus replay driver has no
 * LLVMFuzzerInitialize). */
static void clean_environment(void)
{
    /* Only argv varies: the environment and the defaults stay fixed. */
    static const char *const vars[] = {
        "SPOOL_DB", "WITNESS_DB",  "INSTALLATION_ID",   "WITNESS_ID",       "RELAY_URL",
        "KEY_ID",   "SIGNING_KEY", "ENCRYPTION_KEY",    "PKCS11_MODULE",    "PIN_FILE",
        "CA_FILE",  "LOG_LEVEL",   "PINNED_PUBLIC_KEY", "RECEIPT_KEYS_FILE"};
    for (size_t i = 0; i < ELEMENTSOF(vars); i++) {
        char name[64];
        snprintf(name, sizeof(name), "ATTESTO_LOCAL_VAULT_%s", vars[i]);
        unsetenv(name);
    }
    unsetenv("CREDENTIALS_DIRECTORY");
}

static bool one_line(void)
{
    const char *e = lv_error();
    return *e && !strchr(e, '\n');
}

/* The refusal of a value that is not a pkcs11: URI is one fixed text: it
 * cannot echo the value, which may be raw key material. */
static char refusal_token[512], refusal_config[512];

static void learn_refusals(void)
{
    TokenConfig tc = {.module_path = NO_MODULE, .signing_uri = "x"};
    Token *t = NULL;
    if (token_open(&tc, &t) != LV_ERR_INPUT)
        abort();
    snprintf(refusal_token, sizeof(refusal_token), "%s", lv_error());
    if (config_check_key_uri("--signing-key", "x") != LV_ERR_INPUT)
        abort();
    snprintf(refusal_config, sizeof(refusal_config), "%s", lv_error());
}

/* A PIN-like value (8 or more digits) given with --pin= must not show up in
 * the error, unless another argument carries the same digits (the error may
 * quote that one). */
static bool pin_not_echoed(char **argv, int argc, int i)
{
    const char *v = argv[i] + 6;
    if (strlen(v) < 8 || strspn(v, "0123456789") != strlen(v) || !strstr(lv_error(), v))
        return true;
    for (int j = 1; j < argc; j++)
        if (j != i && strstr(argv[j], v))
            return true;
    return false;
}

static void check_uri(const char *value)
{
    TokenConfig tc = {.module_path = NO_MODULE, .signing_uri = value};
    Token *t = NULL;
    lv_error_clear();
    int r = token_open(&tc, &t);
    CHECK(r < 0 && t == NULL);
    CHECK(one_line());
    if (strncmp(value, "pkcs11:", 7) != 0) {
        CHECK(r == LV_ERR_INPUT);
        CHECK(strcmp(lv_error(), refusal_token) == 0);
        return;
    }
    if (r != LV_ERR_NOMOD) {
        CHECK(r == LV_ERR_INPUT || r == -ENOMEM);
        return;
    }
    /* Accepted up to module loading: p11-kit agrees it is a clean URI. */
    P11KitUri *u = p11_kit_uri_new();
    CHECK(u);
    CHECK(p11_kit_uri_parse(value, P11_KIT_URI_FOR_ANY, u) == P11_KIT_URI_OK);
    CHECK(!p11_kit_uri_any_unrecognized(u));
    CHECK(p11_kit_uri_get_pin_value(u) == NULL);
    p11_kit_uri_free(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool clean;
    if (!clean) {
        clean_environment();
        learn_refusals();
        clean = true;
    }
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[MAX_ARGS + 1];
    int argc = 0;
    argv[argc++] = "attesto-local-vault";
    for (char *p = buf; p <= buf + size && argc < MAX_ARGS; p += strlen(p) + 1)
        argv[argc++] = p;
    argv[argc] = NULL;

    Config cfg;
    int idx = -1;
    lv_error_clear();
    int r = config_parse_globals(argc, argv, &cfg, &idx);
    if (r < 0) {
        CHECK(r == LV_ERR_INPUT);
        CHECK(one_line());
        for (int i = 1; i < argc; i++)
            if (strncmp(argv[i], "--pin=", 6) == 0)
                CHECK(pin_not_echoed(argv, argc, i));
    } else {
        CHECK(idx >= 1 && idx <= argc);
        /* No --pin was accepted as an option before the verb (as the value
         * of another option, "--pin" is only a string). */
        for (int i = 1; i < idx; i++) {
            CHECK(strcmp(argv[i], "--pin") != 0 && strncmp(argv[i], "--pin=", 6) != 0);
            if (strcmp(argv[i], "--json") != 0 && !strchr(argv[i], '='))
                i++; /* skip the option's value */
        }
        CHECK(cfg.spool_db && cfg.witness_db && cfg.signing_key && cfg.encryption_key);
        CHECK(strncmp(cfg.signing_key, "pkcs11:", 7) == 0);
        CHECK(strncmp(cfg.encryption_key, "pkcs11:", 7) == 0);
        CHECK(!cfg.installation_id || lv_valid_id(cfg.installation_id));
        CHECK(!cfg.witness_id || lv_valid_id(cfg.witness_id));
        CHECK(!cfg.key_id || lv_valid_id(cfg.key_id));
        check_uri(cfg.signing_key);
        check_uri(cfg.encryption_key);
    }
    /* Every argument also as a raw key URI value. */
    for (int i = 1; i < argc; i++) {
        lv_error_clear();
        int rc = config_check_key_uri("--signing-key", argv[i]);
        CHECK(rc == 0 || (rc == LV_ERR_INPUT && strcmp(lv_error(), refusal_config) == 0));
        check_uri(argv[i]);
    }
    free(buf);
    return 0;
}
