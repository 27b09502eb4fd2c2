/* SPDX-License-Identifier: Apache-2.0 */
/* Canonical JSON: the RFC 8785 vectors, the Attesto number policy, the strict
 * parser's rejects with their messages, UTF-16 ordering and JCS escaping. */
#include "lvtest.h"

#include "canon.h"
#include "lv.h"

#include <dirent.h>
#include <math.h>

#define MiB (1024 * 1024)

typedef struct {
    const char *in;
    const char *out;
} Case;

typedef struct {
    const char *in;
    const char *error; /* exact lv_error() with path prefix "payload" */
} Reject;

static char *canon_ok(const char *in, size_t len)
{
    char *out = NULL;
    size_t out_len = 0;
    int r = canon_json(in, len, MiB, "payload", &out, &out_len);
    if (r < 0)
        fail_msg("canon_json(%s) failed: %s", in, lv_error());
    assert_non_null(out);
    assert_int_equal(strlen(out), out_len);
    return out;
}

static void expect_canon(const char *in, const char *want)
{
    char *out = canon_ok(in, strlen(in));
    if (strcmp(out, want) != 0)
        fail_msg("canon_json(%s) = %s, want %s", in, out, want);
    free(out);
}

static void expect_reject_len(const char *in, size_t len, int code, const char *want)
{
    char *out = NULL;
    lv_error_clear();
    int r = canon_json(in, len, MiB, "payload", &out, NULL);
    if (r >= 0)
        fail_msg("canon_json(%.60s) accepted: %s", in, out);
    assert_null(out);
    assert_int_equal(r, code);
    if (strcmp(lv_error(), want) != 0)
        fail_msg("canon_json(%.60s): error \"%s\", want \"%s\"", in, lv_error(), want);
}

static void expect_reject(const char *in, const char *want)
{
    expect_reject_len(in, strlen(in), LV_ERR_INPUT, want);
}

static char *read_vector(const char *rel, size_t *len)
{
    _cleanup_free_ char *path = lvtest_vector_path(rel);
    char *data = NULL;
    if (lv_read_file(path, MiB, &data, len) < 0)
        fail_msg("%s: %s", path, lv_error());
    return data;
}

/* ---- RFC 8785 vectors --------------------------------------------------- */

/* Every input of tests/vectors/jcs/input is listed in exactly one of these. */
static const char *const jcs_integral[] = {"arrays.json", "french.json", "structures.json",
                                           "unicode.json", "weird.json"};
static const char *const jcs_nonintegral[] = {"values.json"};

static void jcs_integral_inputs_match_expected_output_bytes(void **state)
{
    for (size_t i = 0; i < ELEMENTSOF(jcs_integral); i++) {
        char in_rel[64], out_rel[64];
        snprintf(in_rel, sizeof(in_rel), "jcs/input/%s", jcs_integral[i]);
        snprintf(out_rel, sizeof(out_rel), "jcs/output/%s", jcs_integral[i]);
        size_t in_len, want_len;
        _cleanup_free_ char *in = read_vector(in_rel, &in_len);
        _cleanup_free_ char *want = read_vector(out_rel, &want_len);
        _cleanup_free_ char *out = canon_ok(in, in_len);
        if (strlen(out) != want_len || memcmp(out, want, want_len) != 0)
            fail_msg("%s: got %s, want %s", jcs_integral[i], out, want);
        /* The canonical form is a fixed point. */
        _cleanup_free_ char *again = canon_ok(out, strlen(out));
        assert_string_equal(again, out);
    }
}

static void jcs_values_vector_rejected_naming_the_number_path(void **state)
{
    size_t len;
    _cleanup_free_ char *in = read_vector("jcs/input/values.json", &len);
    expect_reject_len(
        in, len, LV_ERR_INPUT,
        "payload.numbers[0]: non-integer number 333333333.33333329 (send decimals as strings)");
}

/* The rest of values.json (its escaped string and literals) canonicalizes as
 * the vector says once its non-integral numbers are taken out. */
static void jcs_values_vector_without_numbers_matches_output(void **state)
{
    size_t len, want_len;
    _cleanup_free_ char *in = read_vector("jcs/input/values.json", &len);
    _cleanup_free_ char *want = read_vector("jcs/output/values.json", &want_len);
    char *a = strstr(in, "\"numbers\": [");
    char *b = strstr(want, "\"numbers\":[");
    assert_non_null(a);
    assert_non_null(b);
    a = strchr(a, '[') + 1;
    b = strchr(b, '[') + 1;
    memmove(a, strchr(a, ']'), strlen(strchr(a, ']')) + 1);
    memmove(b, strchr(b, ']'), strlen(strchr(b, ']')) + 1);
    assert_non_null(strstr(in, "\"numbers\": [],"));
    _cleanup_free_ char *out = canon_ok(in, strlen(in));
    assert_string_equal(out, want);
    assert_non_null(strstr(out, "\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\""));
}

static void jcs_every_input_file_is_classified(void **state)
{
    _cleanup_free_ char *dir = lvtest_vector_path("jcs/input");
    DIR *d = opendir(dir);
    assert_non_null(d);
    size_t seen = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(jcs_integral); i++)
            known |= strcmp(e->d_name, jcs_integral[i]) == 0;
        for (size_t i = 0; i < ELEMENTSOF(jcs_nonintegral); i++)
            known |= strcmp(e->d_name, jcs_nonintegral[i]) == 0;
        if (!known)
            fail_msg("jcs/input/%s is not covered by a test", e->d_name);
        seen++;
    }
    closedir(d);
    assert_int_equal(seen, ELEMENTSOF(jcs_integral) + ELEMENTSOF(jcs_nonintegral));
}

/* ---- numbers ------------------------------------------------------------ */

static void integral_numbers_canonicalize_whatever_their_spelling(void **state)
{
    static const Case cases[] = {
        {"56", "56"},
        {"56.0", "56"},
        {"5.6e1", "56"},
        {"560e-1", "56"},
        {"0.56E+2", "56"},
        {"-0", "0"},
        {"-0.0", "0"},
        {"-0e-7", "0"},
        {"0e999", "0"},
        {"1E2", "100"},
        {"1e+2", "100"},
        {"0.1e1", "1"},
        {"100000000000000000000e-20", "1"},
        {"-12.300e1", "-123"},
        {"9007199254740991", "9007199254740991"},
        {"-9007199254740991", "-9007199254740991"},
        {"9.007199254740991e15", "9007199254740991"},
        {"90071992547409910e-1", "9007199254740991"},
        {"0.0000000000000000000000000000009007199254740991e46", "9007199254740991"},
        {"[1.0, 2.50e1, -3E0, 0.0e0]", "[1,25,-3,0]"},
        {"{\"n\": 4.0e0}", "{\"n\":4}"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_canon(cases[i].in, cases[i].out);
}

static void number_rejects_name_the_rule(void **state)
{
    static const Reject cases[] = {
        {"{\"score\": 0.87}", "payload.score: non-integer number 0.87 (send decimals as strings)"},
        {"1.5", "payload: non-integer number 1.5 (send decimals as strings)"},
        {"15e-1", "payload: non-integer number 15e-1 (send decimals as strings)"},
        {"1e-400", "payload: non-integer number 1e-400 (send decimals as strings)"},
        {"9007199254740991.5",
         "payload: non-integer number 9007199254740991.5 (send decimals as strings)"},
        {"9007199254740992", "payload: integer 9007199254740992 outside +-(2^53-1)"},
        {"9007199254740993", "payload: integer 9007199254740993 outside +-(2^53-1)"},
        {"-9007199254740992", "payload: integer -9007199254740992 outside +-(2^53-1)"},
        {"9.007199254740993e15", "payload: integer 9.007199254740993e15 outside +-(2^53-1)"},
        {"1e16", "payload: integer 1e16 outside +-(2^53-1)"},
        {"1e400", "payload: integer 1e400 outside +-(2^53-1)"},
        {"[0, 12345678901234567890]",
         "payload[1]: integer 12345678901234567890 outside +-(2^53-1)"},
        {"01", "payload: number with a leading zero at byte 0"},
        {"-01", "payload: number with a leading zero at byte 0"},
        {"1.", "payload: unexpected end of input, expected a digit after the decimal point"},
        {"1.e3", "payload: unexpected 'e' at byte 2, expected a digit after the decimal point"},
        {".5", "payload: unexpected '.' at byte 0, expected a value"},
        {"+1", "payload: unexpected '+' at byte 0, expected a value"},
        {"-", "payload: unexpected end of input, expected a digit"},
        {"-a", "payload: unexpected 'a' at byte 1, expected a digit"},
        {"1e", "payload: unexpected end of input, expected a digit in the exponent"},
        {"1e+", "payload: unexpected end of input, expected a digit in the exponent"},
        {"NaN", "payload: unexpected 'N' at byte 0, expected a value"},
        {"Infinity", "payload: unexpected 'I' at byte 0, expected a value"},
        {"-Infinity", "payload: unexpected 'I' at byte 1, expected a digit"},
        {"0x10", "payload: unexpected 'x' at byte 1, expected end of input"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_reject(cases[i].in, cases[i].error);
}

/* 10000-digit mantissas and exponents are decided on the digits, without
 * overflow: 1 followed by 9999 zeros times 10^-9999 is exactly 1. */
static void huge_spellings_are_decided_exactly(void **state)
{
    const size_t n = 10000;
    char *s = malloc(n + 64);
    assert_non_null(s);

    s[0] = '1';
    memset(s + 1, '0', n - 1);
    strcpy(s + n, "e-9999");
    expect_canon(s, "1");

    strcpy(s + n, "e-9998");
    expect_canon(s, "10");

    strcpy(s + n, "e-9984"); /* 10^15 */
    expect_canon(s, "1000000000000000");

    strcpy(s + n, "e-9983"); /* 10^16 */
    expect_reject_len(s, strlen(s), LV_ERR_INPUT,
                      "payload: integer 1000000000000000000000000000000000000000... outside "
                      "+-(2^53-1)");

    strcpy(s + n, "e-10000");
    expect_reject_len(s, strlen(s), LV_ERR_INPUT,
                      "payload: non-integer number 1000000000000000000000000000000000000000... "
                      "(send decimals as strings)");

    strcpy(s, "1e");
    memset(s + 2, '9', n);
    s[n + 2] = '\0';
    expect_reject_len(s, strlen(s), LV_ERR_INPUT,
                      "payload: integer 1e99999999999999999999999999999999999999... outside "
                      "+-(2^53-1)");

    strcpy(s, "1e-");
    memset(s + 3, '9', n);
    s[n + 3] = '\0';
    expect_reject_len(s, strlen(s), LV_ERR_INPUT,
                      "payload: non-integer number 1e-9999999999999999999999999999999999999... "
                      "(send decimals as strings)");

    /* Zero is zero whatever the exponent. */
    strcpy(s, "0e");
    memset(s + 2, '9', n);
    s[n + 2] = '\0';
    expect_canon(s, "0");

    strcpy(s, "0.");
    memset(s + 2, '0', n);
    strcpy(s + n + 2, "e10000");
    expect_canon(s, "0");
    free(s);
}

static void parsed_numbers_are_exact_doubles(void **state)
{
    cJSON *root = NULL;
    const char *in = "[9007199254740991, -9007199254740991, 5.6e1, -0]";
    assert_int_equal(canon_parse(in, strlen(in), MiB, "payload", &root), 0);
    assert_int_equal(cJSON_GetArraySize(root), 4);
    assert_true(cJSON_GetArrayItem(root, 0)->valuedouble == 9007199254740991.0);
    assert_true(cJSON_GetArrayItem(root, 1)->valuedouble == -9007199254740991.0);
    assert_true(cJSON_GetArrayItem(root, 2)->valuedouble == 56.0);
    assert_false(signbit(cJSON_GetArrayItem(root, 3)->valuedouble));
    cJSON_Delete(root);
}

/* ---- strict grammar and I-JSON ------------------------------------------ */

static void duplicate_keys_rejected_after_unescaping(void **state)
{
    static const Reject cases[] = {
        {"{\"a\":1,\"a\":2}", "payload.a: duplicate key"},
        {"{\"a\":1,\"\\u0061\":2}", "payload.a: duplicate key"},
        {"{\"\\u00e9\":1,\"\xc3\xa9\":2}", "payload.\xc3\xa9: duplicate key"},
        {"{\"\\ud83d\\ude02\":1,\"\xf0\x9f\x98\x82\":2}",
         "payload.\xf0\x9f\x98\x82: duplicate key"},
        {"{\"items\":[0,1,2,{\"name\":\"x\",\"id\":1,\"name\":\"y\"}]}",
         "payload.items[3].name: duplicate key"},
        {"{\"a\":{\"b\":1},\"a\":{\"b\":1}}", "payload.a: duplicate key"},
        {"{\"\\n\":1,\"\\u000a\":2}", "payload.\\u000a: duplicate key"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_reject(cases[i].in, cases[i].error);
}

/* Objects past the pairwise threshold go through the sorted check. */
static void duplicate_key_found_in_a_large_object(void **state)
{
    const size_t n = 5000;
    size_t cap = n * 24 + 64, len = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    len += (size_t)snprintf(s + len, cap - len, "{");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s\"k%zu\":%zu", i ? "," : "", i, i);
    strcpy(s + len, "}");
    char *out = canon_ok(s, strlen(s));
    assert_int_equal(strncmp(out, "{\"k0\":0,\"k1\":1,\"k10\":10,\"k100\":100,", 35), 0);
    free(out);

    len += (size_t)snprintf(s + len, cap - len, ",\"k2500\":0}");
    expect_reject(s, "payload.k2500: duplicate key");
    free(s);
}

static void lone_surrogate_escapes_rejected(void **state)
{
    static const Reject cases[] = {
        {"\"\\ud83d\"", "payload: lone high surrogate \\ud83d in string at byte 1"},
        {"\"a\\ud83dx\"", "payload: lone high surrogate \\ud83d in string at byte 2"},
        {"\"\\ud83d\\u0041\"", "payload: lone high surrogate \\ud83d in string at byte 1"},
        {"\"\\ud83d\\ud83d\"", "payload: lone high surrogate \\ud83d in string at byte 1"},
        {"\"\\ude02\"", "payload: lone low surrogate \\ude02 in string at byte 1"},
        {"\"\\uDE02\\uD83D\"", "payload: lone low surrogate \\ude02 in string at byte 1"},
        {"{\"\\udbff\":1}", "payload: lone high surrogate \\udbff in member name at byte 2"},
        {"{\"k\":[\"\\udc00\"]}", "payload.k[0]: lone low surrogate \\udc00 in string at byte 7"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_reject(cases[i].in, cases[i].error);
    /* A proper pair is accepted and written as UTF-8. */
    expect_canon("\"\\uD83D\\uDE02\"", "\"\xf0\x9f\x98\x82\"");
    expect_canon("\"\\udbff\\udfff\"", "\"\xf4\x8f\xbf\xbf\"");
}

static void invalid_utf8_rejected(void **state)
{
    static const Reject cases[] = {
        {"\"\xff\"", "payload: invalid UTF-8 (invalid byte) in string at byte 1"},
        {"\"\x80\"", "payload: invalid UTF-8 (unexpected continuation byte) in string at byte 1"},
        {"\"\xc0\xaf\"", "payload: invalid UTF-8 (overlong encoding) in string at byte 1"},
        {"\"\xc1\xbf\"", "payload: invalid UTF-8 (overlong encoding) in string at byte 1"},
        {"\"\xe0\x80\xaf\"", "payload: invalid UTF-8 (overlong encoding) in string at byte 1"},
        {"\"\xf0\x80\x80\xaf\"", "payload: invalid UTF-8 (overlong encoding) in string at byte 1"},
        {"\"\xed\xa0\x80\"",
         "payload: invalid UTF-8 (UTF-16 surrogate encoded in UTF-8) in string at byte 1"},
        {"\"\xed\xbf\xbf\"",
         "payload: invalid UTF-8 (UTF-16 surrogate encoded in UTF-8) in string at byte 1"},
        {"\"\xf4\x90\x80\x80\"",
         "payload: invalid UTF-8 (code point above U+10FFFF) in string at byte 1"},
        {"\"\xf5\x80\x80\x80\"",
         "payload: invalid UTF-8 (code point above U+10FFFF) in string at byte 1"},
        {"\"ab\xc3\"", "payload: invalid UTF-8 (truncated sequence) in string at byte 3"},
        {"\"\xe2\x82\"", "payload: invalid UTF-8 (truncated sequence) in string at byte 1"},
        {"{\"k\xe2\x82\":1}",
         "payload: invalid UTF-8 (truncated sequence) in member name at byte 3"},
        {"[\"ok\",\"\xf8\x88\x80\x80\x80\"]",
         "payload[1]: invalid UTF-8 (invalid byte) in string at byte 7"},
        /* Outside strings any non-ASCII byte is a grammar error (BOM too). */
        {"\xef\xbb\xbf{}", "payload: unexpected byte 0xef at byte 0, expected a value"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_reject(cases[i].in, cases[i].error);
    /* The boundaries of each well-formed range are accepted. */
    expect_canon("\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80"
                 "\x80\xf4\x8f\xbf\xbf\"",
                 "\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf\xf0\x90\x80"
                 "\x80\xf4\x8f\xbf\xbf\"");
}

static void grammar_rejects_name_the_rule(void **state)
{
    static const Reject cases[] = {
        {"\"a\x01\"", "payload: control character 0x01 in string at byte 2 (must be escaped)"},
        {"\"a\nb\"", "payload: control character 0x0a in string at byte 2 (must be escaped)"},
        {"{\"t\\tab\":\"\t\"}",
         "payload.t\\u0009ab: control character 0x09 in string at byte 10 (must be escaped)"},
        {"[1,]", "payload: trailing comma before ']' at byte 3"},
        {"[1,2,\n]", "payload: trailing comma before ']' at byte 6"},
        {"{\"a\":1,}", "payload: trailing comma before '}' at byte 7"},
        {"[,]", "payload[0]: unexpected ',' at byte 1, expected a value"},
        {"{,}", "payload: unexpected ',' at byte 1, expected a member name"},
        {"{} x", "payload: unexpected 'x' at byte 3, expected end of input"},
        {"{}}", "payload: unexpected '}' at byte 2, expected end of input"},
        {"1 2", "payload: unexpected '2' at byte 2, expected end of input"},
        {"nulll", "payload: unexpected 'l' at byte 4, expected end of input"},
        {"tru", "payload: invalid literal at byte 0 (expected true)"},
        {"[True]", "payload[0]: unexpected 'T' at byte 1, expected a value"},
        {"", "payload: unexpected end of input, expected a value"},
        {" \n\t\r ", "payload: unexpected end of input, expected a value"},
        {"\f{}", "payload: unexpected byte 0x0c at byte 0, expected a value"},
        {"{\"a\" 1}", "payload: unexpected '1' at byte 5, expected ':'"},
        {"{\"a\":1 \"b\":2}", "payload: unexpected '\"' at byte 7, expected ',' or '}'"},
        {"[1 2]", "payload: unexpected '2' at byte 3, expected ',' or ']'"},
        {"{1:2}", "payload: unexpected '1' at byte 1, expected a member name"},
        {"{'a':2}", "payload: unexpected ''' at byte 1, expected a member name"},
        {"{\"a\":1", "payload: unexpected end of input, expected ',' or '}'"},
        {"[", "payload[0]: unexpected end of input, expected a value"},
        {"\"abc", "payload: unterminated string starting at byte 0"},
        {"{\"abc", "payload: unterminated member name starting at byte 1"},
        {"\"a\\\"", "payload: unterminated string starting at byte 0"},
        {"\"\\x\"", "payload: invalid escape \\x in string at byte 1"},
        {"\"\\u12\"", "payload: invalid \\u escape in string at byte 1 (4 hex digits needed)"},
        {"\"\\u12g4\"", "payload: invalid \\u escape in string at byte 1 (4 hex digits needed)"},
        {"\"a\\u0000b\"", "payload: \\u0000 in string at byte 2 is not supported"},
        {"{\"a\":{\"b\":[true,{\"c\":.1}]}}",
         "payload.a.b[1].c: unexpected '.' at byte 21, expected a value"},
    };
    for (size_t i = 0; i < ELEMENTSOF(cases); i++)
        expect_reject(cases[i].in, cases[i].error);
    /* A raw NUL byte in a string is a control character too. */
    expect_reject_len("\"a\0\"", 4, LV_ERR_INPUT,
                      "payload: control character 0x00 in string at byte 2 (must be escaped)");
    /* A NUL byte after the value is trailing garbage, not an end marker. */
    expect_reject_len("{}\0", 3, LV_ERR_INPUT,
                      "payload: unexpected byte 0x00 at byte 2, expected end of input");
}

static char *nested(unsigned depth)
{
    char *s = malloc(2 * depth + 1);
    assert_non_null(s);
    memset(s, '[', depth);
    memset(s + depth, ']', depth);
    s[2 * depth] = '\0';
    return s;
}

static void depth_cap_allows_max_and_rejects_one_more(void **state)
{
    _cleanup_free_ char *ok = nested(CANON_MAX_DEPTH);
    expect_canon(ok, ok);

    _cleanup_free_ char *deep = nested(CANON_MAX_DEPTH + 1);
    char want[1024] = "payload";
    for (int i = 0; i < CANON_MAX_DEPTH; i++)
        strcat(want, "[0]");
    snprintf(want + strlen(want), sizeof(want) - strlen(want),
             ": nesting deeper than %d levels at byte %d", CANON_MAX_DEPTH, CANON_MAX_DEPTH);
    expect_reject(deep, want);

    /* Far deeper input is refused the same way, without exhausting the stack. */
    _cleanup_free_ char *very = nested(1000000);
    lv_error_clear();
    char *out = NULL;
    assert_int_equal(canon_json(very, strlen(very), 4 * MiB, "p", &out, NULL), LV_ERR_INPUT);
    assert_non_null(strstr(lv_error(), "nesting deeper than 64 levels"));
}

static void size_cap_rejects_longer_input(void **state)
{
    const char *in = "{\"a\":\"0123456789\"}"; /* 18 bytes */
    char *out = NULL;
    assert_int_equal(canon_json(in, 18, 18, "payload", &out, NULL), 0);
    free(out);
    out = NULL;
    assert_int_equal(canon_json(in, 18, 17, "payload", &out, NULL), LV_ERR_TOOBIG);
    assert_null(out);
    assert_string_equal(lv_error(), "payload: 18 bytes exceed the cap of 17 bytes");
}

static void default_path_prefix_is_dollar(void **state)
{
    cJSON *root = NULL;
    assert_int_equal(canon_parse("{\"x\":[1.5]}", 11, MiB, NULL, &root), LV_ERR_INPUT);
    assert_null(root);
    assert_string_equal(lv_error(), "$.x[0]: non-integer number 1.5 (send decimals as strings)");
    assert_int_equal(canon_parse("[1,]", 4, MiB, "", &root), LV_ERR_INPUT);
    assert_string_equal(lv_error(), "$: trailing comma before ']' at byte 3");
}

static void only_rfc8259_white_space_is_skipped(void **state)
{
    expect_canon(" \t\r\n{ \t\r\n\"a\" \t\r\n: \t\r\n[ 1 , 2 ] \t\r\n} \t\r\n", "{\"a\":[1,2]}");
    expect_reject("{\"a\":1\v}", "payload: unexpected byte 0x0b at byte 6, expected ',' or '}'");
    expect_reject("[1,\xc2\xa0"
                  "2]",
                  "payload[1]: unexpected byte 0xc2 at byte 3, expected a value");
}

/* ---- ordering and escaping ---------------------------------------------- */

/* U+1F602 (UTF-16 D83D DE02) sorts before U+E000 and U+FF21 by UTF-16 code
 * units, although its UTF-8 bytes (F0 ...) sort after theirs (EE, EF). */
static void members_sorted_by_utf16_code_units(void **state)
{
    expect_canon("{\"\\uff21\":1,\"\\ue000\":2,\"\\ud83d\\ude02\":3,\"z\":4,\"\\ud7ff\":5,"
                 "\"\\u00e9\":6,\"\":7}",
                 "{\"\":7,\"z\":4,\"\xc3\xa9\":6,\"\xed\x9f\xbf\":5,\"\xf0\x9f\x98\x82\":3,"
                 "\"\xee\x80\x80\":2,\"\xef\xbc\xa1\":1}");
    /* Prefixes sort first; comparison is by code unit, not by locale. */
    expect_canon("{\"ab\":1,\"a\":2,\"B\":3,\"a\\ud83d\\ude02\":4,\"a\\uffff\":5}",
                 "{\"B\":3,\"a\":2,\"ab\":1,\"a\xf0\x9f\x98\x82\":4,\"a\xef\xbf\xbf\":5}");

    /* The same ordering for a tree built by another module. */
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddNumberToObject(obj, "\xef\xbc\xa1", 1);
    cJSON_AddNumberToObject(obj, "\xf0\x9f\x98\x82", 2);
    cJSON_AddNumberToObject(obj, "\xee\x80\x80", 3);
    char *out = NULL;
    assert_int_equal(canon_serialize(obj, &out, NULL), 0);
    assert_string_equal(out, "{\"\xf0\x9f\x98\x82\":2,\"\xee\x80\x80\":3,\"\xef\xbc\xa1\":1}");
    free(out);
    cJSON_Delete(obj);
}

static void strings_escaped_per_jcs(void **state)
{
    /* Only '"', '\\' and controls are escaped: short forms where JSON has
     * them, else \u00xx in lowercase; '/', DEL, U+2028/9 and all non-ASCII
     * are written literally. */
    expect_canon("\"\\u0001\\u0008\\u0009\\u000A\\u000b\\u000C\\u000D\\u001F\\u001a\"",
                 "\"\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f\\u001a\"");
    expect_canon("\"\\\"\\\\\\/\\u007f\\u2028\\u2029\\u00e9\\u20AC</script>\"",
                 "\"\\\"\\\\/\x7f\xe2\x80\xa8\xe2\x80\xa9\xc3\xa9\xe2\x82\xac</script>\"");
    /* Member names are escaped the same way. */
    expect_canon("{\"\\r\\n\":\"\\/\"}", "{\"\\r\\n\":\"/\"}");

    cJSON *s = cJSON_CreateString("tab\there \"q\" \x1f back\\slash \xe2\x80\xa8");
    char *out = NULL;
    assert_int_equal(canon_serialize(s, &out, NULL), 0);
    assert_string_equal(out, "\"tab\\there \\\"q\\\" \\u001f back\\\\slash \xe2\x80\xa8\"");
    free(out);
    cJSON_Delete(s);
}

/* ---- serializing trees built by other modules --------------------------- */

static void expect_serialize_reject(cJSON *tree, const char *want)
{
    char *out = NULL;
    lv_error_clear();
    int r = canon_serialize(tree, &out, NULL);
    if (r >= 0)
        fail_msg("canon_serialize accepted: %s", out);
    assert_int_equal(r, LV_ERR_INPUT);
    assert_null(out);
    assert_string_equal(lv_error(), want);
    cJSON_Delete(tree);
}

static void serializer_rejects_what_canon_cannot_represent(void **state)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(t, "payload"), "score", 0.87);
    expect_serialize_reject(t,
                            "$.payload.score: non-integer number 0.87 (send decimals as strings)");

    t = cJSON_CreateArray();
    cJSON_AddItemToArray(t, cJSON_CreateNumber(1));
    cJSON_AddItemToArray(t, cJSON_CreateNumber(9007199254740992.0));
    expect_serialize_reject(t, "$[1]: integer 9007199254740992 outside +-(2^53-1)");

    t = cJSON_CreateArray();
    cJSON_AddItemToArray(t, cJSON_CreateNumber(-1e300));
    expect_serialize_reject(t, "$[0]: integer -1.0000000000000001e+300 outside +-(2^53-1)");

    t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "n", NAN);
    expect_serialize_reject(t, "$.n: non-finite number");

    t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "n", INFINITY);
    expect_serialize_reject(t, "$.n: non-finite number");

    t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "s", "ok \xc3\x28");
    expect_serialize_reject(t, "$.s: invalid UTF-8 (truncated sequence) in string at offset 3");

    t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "s", "\xed\xa0\x80");
    expect_serialize_reject(
        t, "$.s: invalid UTF-8 (UTF-16 surrogate encoded in UTF-8) in string at offset 0");

    t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "k\xff", 1);
    expect_serialize_reject(t, "$: invalid UTF-8 (invalid byte) in member name at offset 1");

    t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "a", 1);
    cJSON_AddNumberToObject(t, "b", 2);
    cJSON_AddNumberToObject(t, "a", 3);
    expect_serialize_reject(t, "$.a: duplicate key");

    t = cJSON_CreateArray();
    cJSON_AddItemToArray(t, cJSON_CreateRaw("1.5"));
    expect_serialize_reject(t, "$[0]: not a JSON value (cJSON type 0x80)");
}

static void serializer_writes_integers_without_exponent(void **state)
{
    cJSON *t = cJSON_CreateArray();
    cJSON_AddItemToArray(t, cJSON_CreateNumber(-0.0));
    cJSON_AddItemToArray(t, cJSON_CreateNumber(1e15));
    cJSON_AddItemToArray(t, cJSON_CreateNumber(9007199254740991.0));
    cJSON_AddItemToArray(t, cJSON_CreateNumber(-9007199254740991.0));
    cJSON_AddItemToArray(t, cJSON_CreateNumber(56.0));
    cJSON_AddItemToArray(t, cJSON_CreateTrue());
    cJSON_AddItemToArray(t, cJSON_CreateFalse());
    cJSON_AddItemToArray(t, cJSON_CreateNull());
    cJSON_AddItemToArray(t, cJSON_CreateObject());
    cJSON_AddItemToArray(t, cJSON_CreateArray());
    cJSON_AddItemToArray(t, cJSON_CreateString(""));
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(canon_serialize(t, &out, &len), 0);
    const char *want =
        "[0,1000000000000000,9007199254740991,-9007199254740991,56,true,false,null,{},[],\"\"]";
    assert_string_equal(out, want);
    assert_int_equal(len, strlen(want));
    free(out);
    cJSON_Delete(t);
}

/* An envelope may carry a payload parsed at the full depth cap. */
static void serializer_accepts_parsed_payload_wrapped_in_an_envelope(void **state)
{
    _cleanup_free_ char *deep = nested(CANON_MAX_DEPTH);
    cJSON *payload = NULL;
    assert_int_equal(canon_parse(deep, strlen(deep), MiB, "payload", &payload), 0);
    cJSON *env = cJSON_CreateObject();
    cJSON *outer = cJSON_AddObjectToObject(env, "outer");
    cJSON_AddItemToObject(outer, "payload", payload);
    char *out = NULL;
    assert_int_equal(canon_serialize(env, &out, NULL), 0);
    assert_int_equal(strncmp(out, "{\"outer\":{\"payload\":[[[", 23), 0);
    free(out);
    cJSON_Delete(env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(jcs_integral_inputs_match_expected_output_bytes),
        cmocka_unit_test(jcs_values_vector_rejected_naming_the_number_path),
        cmocka_unit_test(jcs_values_vector_without_numbers_matches_output),
        cmocka_unit_test(jcs_every_input_file_is_classified),
        cmocka_unit_test(integral_numbers_canonicalize_whatever_their_spelling),
        cmocka_unit_test(number_rejects_name_the_rule),
        cmocka_unit_test(huge_spellings_are_decided_exactly),
        cmocka_unit_test(parsed_numbers_are_exact_doubles),
        cmocka_unit_test(duplicate_keys_rejected_after_unescaping),
        cmocka_unit_test(duplicate_key_found_in_a_large_object),
        cmocka_unit_test(lone_surrogate_escapes_rejected),
        cmocka_unit_test(invalid_utf8_rejected),
        cmocka_unit_test(grammar_rejects_name_the_rule),
        cmocka_unit_test(depth_cap_allows_max_and_rejects_one_more),
        cmocka_unit_test(size_cap_rejects_longer_input),
        cmocka_unit_test(default_path_prefix_is_dollar),
        cmocka_unit_test(only_rfc8259_white_space_is_skipped),
        cmocka_unit_test(members_sorted_by_utf16_code_units),
        cmocka_unit_test(strings_escaped_per_jcs),
        cmocka_unit_test(serializer_rejects_what_canon_cannot_represent),
        cmocka_unit_test(serializer_writes_integers_without_exponent),
        cmocka_unit_test(serializer_accepts_parsed_payload_wrapped_in_an_envelope),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
