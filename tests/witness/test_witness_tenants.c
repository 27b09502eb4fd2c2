/* SPDX-License-Identifier: Apache-2.0 */
/* The tenants file parser and its questions: good files (comments, defaults,
 * several callers, quotas), every rule a bad file can break with the line
 * and field it names, the file checks of witness_tenants_load, and who is
 * authorized for which tenant by uid, gid and bearer secret. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lv.h"
#include "lvtest.h"
#include "witness_tenants.h"

/* sha256("secret-a"), sha256("secret-b") */
static char sha_a[65], sha_b[65];

static WitnessTenants *parse_ok(const char *text)
{
    WitnessTenants *t = NULL;
    lv_error_clear();
    if (witness_tenants_parse(text, strlen(text), &t) < 0)
        fail_msg("parse: %s\n%s", lv_error(), text);
    return t;
}

static void parse_bad(const char *text, const char *message)
{
    WitnessTenants *t = NULL;
    lv_error_clear();
    int r = witness_tenants_parse(text, strlen(text), &t);
    if (r != LV_ERR_INPUT || t || !strstr(lv_error(), message) || strchr(lv_error(), '\n'))
        fail_msg("%s\nexpected LV_ERR_INPUT with \"%s\", got %d \"%s\"", text, message, r,
                 lv_error());
}

static void good_files_and_defaults(void **state)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "# witness tenants\n"
             "\n"
             "   # indented comment\n"
             "defaults max-streams=5 max-statements-per-day=7\n"
             "tenant acme uid=1000 uid=1001\tgid=50 bearer-sha256=%s\n"
             "tenant beta bearer-sha256=%s max-streams=0 max-statements-per-day=9007199254740992\n"
             "tenant gamma:1@x/y.z-w uid=0",
             sha_a, sha_b); /* no newline at the end */
    WitnessTenants *t = parse_ok(text);
    assert_int_equal(witness_tenants_count(t), 3);
    const WitnessQuota *q = NULL;
    assert_int_equal(witness_tenants_peer(t, 1001, 9, "acme", &q), WITNESS_AUTH_OK);
    assert_int_equal(q->max_streams, 5);
    assert_int_equal(q->max_statements_per_day, 7);
    assert_int_equal(witness_tenants_bearer(t, "secret-b", 8, "beta", &q), WITNESS_AUTH_OK);
    assert_int_equal(q->max_streams, 0);
    assert_int_equal(q->max_statements_per_day, INT64_C(1) << 53);
    witness_tenants_free(t);

    /* Without a defaults line: the documented defaults. */
    t = parse_ok("tenant a uid=1\n");
    assert_int_equal(witness_tenants_peer(t, 1, 1, "a", &q), WITNESS_AUTH_OK);
    assert_int_equal(q->max_streams, WITNESS_TENANT_DEFAULT_STREAMS);
    assert_int_equal(q->max_statements_per_day, WITNESS_TENANT_DEFAULT_PER_DAY);
    witness_tenants_free(t);
    assert_null(witness_tenants_free(NULL));
}

static void who_may_submit_for_whom(void **state)
{
    char text[512];
    snprintf(text, sizeof(text),
             "tenant a uid=1000 bearer-sha256=%s\n"
             "tenant b uid=1000 gid=200\n"
             "tenant c bearer-sha256=%s\n",
             sha_a, sha_b);
    WitnessTenants *t = parse_ok(text);
    /* uid 1000 is a and b; gid 200 is b; anyone else is unknown */
    assert_int_equal(witness_tenants_peer(t, 1000, 1, NULL, NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_peer(t, 1000, 1, "a", NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_peer(t, 1000, 1, "b", NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_peer(t, 1000, 1, "c", NULL), WITNESS_AUTH_FORBIDDEN);
    assert_int_equal(witness_tenants_peer(t, 7, 200, "b", NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_peer(t, 7, 200, "a", NULL), WITNESS_AUTH_FORBIDDEN);
    assert_int_equal(witness_tenants_peer(t, 7, 7, NULL, NULL), WITNESS_AUTH_UNKNOWN);
    assert_int_equal(witness_tenants_peer(t, 7, 7, "a", NULL), WITNESS_AUTH_UNKNOWN);
    /* a secret is one tenant; the digest itself is no secret */
    assert_int_equal(witness_tenants_bearer(t, "secret-a", 8, "a", NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_bearer(t, "secret-a", 8, "c", NULL), WITNESS_AUTH_FORBIDDEN);
    assert_int_equal(witness_tenants_bearer(t, "secret-b", 8, "c", NULL), WITNESS_AUTH_OK);
    assert_int_equal(witness_tenants_bearer(t, "secret-a ", 9, "a", NULL), WITNESS_AUTH_UNKNOWN);
    assert_int_equal(witness_tenants_bearer(t, "secret-", 7, NULL, NULL), WITNESS_AUTH_UNKNOWN);
    assert_int_equal(witness_tenants_bearer(t, sha_a, 64, "a", NULL), WITNESS_AUTH_UNKNOWN);
    assert_int_equal(witness_tenants_bearer(t, "", 0, NULL, NULL), WITNESS_AUTH_UNKNOWN);
    witness_tenants_free(t);
}

static void bad_files_name_line_field_and_rule(void **state)
{
    char text[1024];
    parse_bad("", "no tenant line");
    parse_bad("# only comments\n\n", "no tenant line");
    parse_bad("defaults max-streams=1\n", "no tenant line");
    parse_bad("tenant\n", "line 1: tenant: needs a tenant id");
    parse_bad("tenant a\n", "line 1: tenant a: names no caller");
    parse_bad("tenant a max-streams=3\n", "line 1: tenant a: names no caller");
    parse_bad("tenant a=b uid=1\n", "line 1: tenant id: must be 1-128 bytes");
    parse_bad("tenant a! uid=1\n", "line 1: tenant id: must be 1-128 bytes");
    parse_bad("\n\ntenant a uid\n", "line 3: uid: must be FIELD=VALUE");
    parse_bad("tenant a uid=\n", "line 1: uid: must be a whole number from 0 to 4294967294");
    parse_bad("tenant a uid=-1\n", "line 1: uid: must be a whole number");
    parse_bad("tenant a uid=+1\n", "line 1: uid: must be a whole number");
    parse_bad("tenant a uid=01\n", "line 1: uid: must be a whole number");
    parse_bad("tenant a uid=4294967295\n", "line 1: uid: must be a whole number");
    parse_bad("tenant a gid=99999999999999999999\n", "line 1: gid: must be a whole number");
    parse_bad("tenant a uid=1 uid=1\n", "line 1: uid: given twice for tenant a");
    parse_bad("tenant a gid=1 gid=1\n", "line 1: gid: given twice for tenant a");
    parse_bad("tenant a bearer-sha256=00\n", "line 1: bearer-sha256: must be 64 lowercase hex");
    parse_bad(
        "tenant a bearer-sha256=AB00000000000000000000000000000000000000000000000000000000000000\n",
        "line 1: bearer-sha256: must be 64 lowercase hex");
    parse_bad(
        "tenant a bearer-sha256=g000000000000000000000000000000000000000000000000000000000000000\n",
        "line 1: bearer-sha256: must be 64 lowercase hex");
    snprintf(text, sizeof(text), "tenant a bearer-sha256=%s bearer-sha256=%s\n", sha_a, sha_a);
    parse_bad(text, "line 1: bearer-sha256: given twice for tenant a");
    snprintf(text, sizeof(text), "tenant a bearer-sha256=%s\n#\ntenant b bearer-sha256=%s\n", sha_a,
             sha_a);
    parse_bad(text, "line 3: bearer-sha256: already names tenant a on line 1");
    parse_bad("tenant a uid=1\ntenant b uid=2\ntenant a uid=3\n",
              "line 3: tenant a: already on line 1");
    parse_bad("tenant a uid=1 pin=1234\n", "line 1: pin: unknown field");
    parse_bad("tenant a uid=1 # comment\n", "line 1: #: must be FIELD=VALUE");
    parse_bad("tenant a uid=1 max-streams=1 max-streams=2\n", "line 1: max-streams: given twice");
    parse_bad("tenant a uid=1 max-streams=x\n", "line 1: max-streams: must be a whole number");
    parse_bad("tenant a uid=1 max-statements-per-day=9007199254740993\n",
              "line 1: max-statements-per-day: must be a whole number from 0 (no limit) to 2^53");
    parse_bad("defaults\ntenant a uid=1\n", "line 1: defaults: needs max-streams=N");
    parse_bad("defaults uid=1\ntenant a uid=1\n", "line 1: uid: unknown field on a defaults line");
    parse_bad("defaults max-streams=1\ndefaults max-streams=1\n", "line 2: defaults: given twice");
    parse_bad("tenants a uid=1\n", "line 1: tenants: unknown line");
    parse_bad("tenant a uid=1\r\n", "line 1: carriage return");
    parse_bad("tenant a uid=1\n\x01\n", "line 2: byte 0x01");
    parse_bad("tenant a uid=1\ntenant b uid=\xc3\xa9\n", "line 2: byte 0xc3");
    /* A NUL inside the text is a byte like any other control. */
    WitnessTenants *t = NULL;
    assert_int_equal(witness_tenants_parse("tenant a uid=1\0x", 16, &t), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "line 1: byte 0x00"));

    /* caps: line length, callers per tenant, file size */
    char *long_line = malloc(WITNESS_TENANTS_LINE_MAX + 32);
    memset(long_line, ' ', WITNESS_TENANTS_LINE_MAX + 31);
    memcpy(long_line, "tenant a uid=1", 14);
    long_line[WITNESS_TENANTS_LINE_MAX + 31] = '\0';
    parse_bad(long_line, "line 1: longer than 4096 bytes");
    free(long_line);
    char many[2048] = "tenant a";
    for (int i = 0; i <= WITNESS_TENANT_CALLERS_MAX; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), " uid=%d", i);
    parse_bad(many, "line 1: tenant a: more than 64 uid=, gid= and bearer-sha256=");
    char *huge = calloc(1, WITNESS_TENANTS_FILE_MAX + 2);
    memset(huge, '#', WITNESS_TENANTS_FILE_MAX + 1);
    assert_int_equal(witness_tenants_parse(huge, WITNESS_TENANTS_FILE_MAX + 1, &t), LV_ERR_TOOBIG);
    free(huge);
}

static void load_checks_the_file(void **state)
{
    const char *dir = lvtest_tmpdir();
    char path[512];
    snprintf(path, sizeof(path), "%s/tenants", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    const char text[] = "# ok\ntenant a uid=1\n";
    assert_int_equal(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(fd);
    WitnessTenants *t = NULL;
    assert_int_equal(witness_tenants_load(path, &t), 0);
    assert_int_equal(witness_tenants_count(t), 1);
    t = witness_tenants_free(t);

    /* Whoever may write it may make themselves any tenant. */
    for (mode_t m = 0; m < 2; m++) {
        assert_int_equal(chmod(path, m ? 0620 : 0602), 0);
        assert_int_equal(witness_tenants_load(path, &t), LV_ERR_INPUT);
        assert_non_null(strstr(lv_error(), "group or others may write it"));
        assert_non_null(strstr(lv_error(), path));
    }
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(witness_tenants_load(path, &t), 0);
    t = witness_tenants_free(t);

    /* The parser's detail comes with the path. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "tenant a\n", 9), 9);
    close(fd);
    assert_int_equal(witness_tenants_load(path, &t), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "tenants file "));
    assert_non_null(strstr(lv_error(), ": line 1: tenant a: names no caller"));

    assert_int_equal(witness_tenants_load(dir, &t), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "not a regular file"));
    snprintf(path, sizeof(path), "%s/absent", dir);
    assert_int_equal(witness_tenants_load(path, &t), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "absent"));
    assert_null(t);
    lvtest_cleanup();
}

int main(void)
{
    lv_sha256_hex("secret-a", 8, sha_a);
    lv_sha256_hex("secret-b", 8, sha_b);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(good_files_and_defaults),
        cmocka_unit_test(who_may_submit_for_whom),
        cmocka_unit_test(bad_files_name_line_field_and_rule),
        cmocka_unit_test(load_checks_the_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
