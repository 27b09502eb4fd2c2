/* SPDX-License-Identifier: Apache-2.0 */
/* verify: offline verification of a signed document (a relay envelope, a
 * witness receipt, fork evidence, a state adoption) against the public keys
 * given, or of a proof bundle line by line (--bundle). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "bundle.h"
#include "canon.h"
#include "cli.h"
#include "envelope.h"
#include "lv.h"
#include "pubkey.h"
#include "receipt.h"
#include "witness.h"

/* One kind of signed document verify understands: match() looks at the
 * shape, check() verifies the exact bytes and describes the document in
 * ret (members added to the output object). Witness documents join this
 * table from witness.h. */
typedef struct DocKind {
    const char *name;
    bool (*match)(const cJSON *doc);
    int (*check)(const char *text, size_t len, const uint8_t pk[32], cJSON *ret);
} DocKind;

static bool envelope_match(const cJSON *doc)
{
    return cJSON_GetObjectItemCaseSensitive(doc, "envelope_version") != NULL ||
           cJSON_GetObjectItemCaseSensitive(doc, "local_signature") != NULL;
}

static int envelope_check(const char *text, size_t len, const uint8_t pk[32], cJSON *ret)
{
    int r = envelope_verify(text, len, pk);
    if (r < 0)
        return r;
    EnvelopeFields f;
    r = envelope_fields(text, len, &f);
    if (r < 0)
        return r;
    char h[65];
    lv_sha256_hex(text, len, h);
    cJSON_AddStringToObject(ret, "event_id", f.event_id);
    cJSON_AddStringToObject(ret, "stream_id", f.stream_id);
    cJSON_AddStringToObject(ret, "kid", f.kid);
    cJSON_AddStringToObject(ret, "envelope_hash", h);
    return 0;
}

static const DocKind doc_kinds[] = {
    {"relay_envelope", envelope_match, envelope_check},
    {"witness_receipt", witness_receipt_match, witness_verify_check},
    {"fork_evidence", witness_fork_match, witness_verify_check},
    {"state_adoption", witness_adoption_match, witness_verify_check},
};

static int read_public_key(const char *arg, uint8_t pk[32])
{
    if (pubkey_parse(arg, pk) >= 0)
        return 0;
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    int r = lv_read_file(arg, 64 * 1024, &text, &len);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: neither 64 hex digits nor a readable PEM file", arg);
    r = pubkey_parse(text, pk);
    if (r < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: not an Ed25519 public key (PEM "
                            "SubjectPublicKeyInfo or 64 hex digits)",
                            arg);
    return 0;
}

/* Keys for verify after a signing key rotation: each --public-key may be
 * repeated, and may be the JSON of `public-key` (current key and
 * "previous" ones, each with its kid). */
#define VERIFY_MAX_KEYS 32
typedef struct VerifyKey {
    char kid[129]; /* "" when the key came without one (hex, PEM) */
    uint8_t pk[32];
} VerifyKey;

static int add_json_key(const char *arg, const cJSON *o, VerifyKey *keys, size_t *n)
{
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(o, "public_key_hex");
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(o, "kid");
    if (*n == VERIFY_MAX_KEYS)
        return lv_error_set(LV_ERR_INPUT, "--public-key: at most %d keys", VERIFY_MAX_KEYS);
    if (!cJSON_IsString(hex) || hex_decode(hex->valuestring, keys[*n].pk, 32) < 0 ||
        !cJSON_IsString(kid) || !lv_valid_id(kid->valuestring))
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: a key object needs public_key_hex (64 hex digits) "
                            "and kid",
                            arg);
    snprintf(keys[*n].kid, sizeof(keys[*n].kid), "%s", kid->valuestring);
    (*n)++;
    return 0;
}

static int read_public_keys(const char *arg, VerifyKey *keys, size_t *n)
{
    if (*n == VERIFY_MAX_KEYS)
        return lv_error_set(LV_ERR_INPUT, "--public-key: at most %d keys", VERIFY_MAX_KEYS);
    if (pubkey_parse(arg, keys[*n].pk) >= 0) {
        keys[(*n)++].kid[0] = '\0';
        return 0;
    }
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    if (lv_read_file(arg, 256 * 1024, &text, &len) < 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--public-key: %s: neither 64 hex digits nor a readable PEM or JSON "
                            "file",
                            arg);
    const char *p = text + strspn(text, " \t\r\n");
    if (*p == '{') {
        _cleanup_cjson_ cJSON *doc = cJSON_ParseWithLength(text, len);
        if (!cJSON_IsObject(doc))
            return lv_error_set(LV_ERR_INPUT, "--public-key: %s: not a JSON object", arg);
        int r = add_json_key(arg, doc, keys, n);
        const cJSON *prev = cJSON_GetObjectItemCaseSensitive(doc, "previous");
        if (r >= 0 && prev && !cJSON_IsArray(prev))
            r = lv_error_set(LV_ERR_INPUT, "--public-key: %s: previous: not an array", arg);
        for (const cJSON *k = prev ? prev->child : NULL; r >= 0 && k; k = k->next)
            r = add_json_key(arg, k, keys, n);
        return r;
    }
    int r = read_public_key(arg, keys[*n].pk);
    if (r < 0)
        return r;
    keys[(*n)++].kid[0] = '\0';
    return 0;
}

typedef struct VerifyArgs {
    const char *keys[VERIFY_MAX_KEYS];
    size_t n_keys;
    const char *bundle, *receipt_key;
    bool json;
} VerifyArgs;

static const CliOption verify_options[] = {
    CLI_LIST_OPT("public-key", "HEX|PEMFILE|JSONFILE", VerifyArgs, keys, n_keys, VERIFY_MAX_KEYS,
                 "a key to verify with; repeat it, or give the JSON of public-key"),
    CLI_STRING_OPT("bundle", "FILE", VerifyArgs, bundle,
                   "check every line of a proof bundle (receipts export) instead"),
    CLI_STRING_OPT("receipt-key", "KEYSFILE", VerifyArgs, receipt_key,
                   "--bundle: pin the receiver keys (a --receipt-keys-file JSON array)"),
    CLI_FLAG_OPT("json", VerifyArgs, json, "JSON even on a terminal"),
    {0},
};

static const CliCommand verify_command = {
    .name = "verify",
    .synopsis = "[--public-key KEY]... [--json] (FILE|- | --bundle FILE [--receipt-key KEYSFILE])",
    .about = "Verifies a relay envelope, a witness receipt or fork evidence offline; exit 0\n"
             "when it verifies under one of the keys. With --bundle, checks each line of a\n"
             "proof bundle (envelope signature, receipt names the envelope, receipt\n"
             "signature); keys given pin the keys; exit 1 when any line fails.\n",
    .operands = "FILE|-",
    .min_operands = 0,
    .max_operands = 1,
    .options = verify_options,
};

/* One line of f into *buf without its newline, at most max bytes kept: a
 * longer line is read to its end without being stored (*ret_long), so a
 * hostile file costs no more memory than the longest line allowed. 0 at the
 * end of the file, 1 for a line, negative on error. */
static int read_line(FILE *f, char **buf, size_t *cap, size_t max, size_t *ret_len, bool *ret_long)
{
    size_t n = 0;
    bool any = false;
    *ret_long = false;
    int c;
    while ((c = getc_unlocked(f)) != EOF && c != '\n') {
        any = true;
        if (n >= max) {
            *ret_long = true;
            continue;
        }
        if (n + 1 >= *cap) {
            size_t want = *cap ? *cap * 2 : 4096;
            if (want > max + 1)
                want = max + 1;
            char *p = realloc(*buf, want);
            if (!p)
                return -ENOMEM;
            *buf = p;
            *cap = want;
        }
        (*buf)[n++] = (char)c;
    }
    if (ferror(f))
        return -EIO;
    if (c == EOF && !any)
        return 0;
    if (!*buf && !(*buf = calloc(1, 1)))
        return -ENOMEM;
    (*buf)[n] = '\0';
    *ret_len = n;
    return 1;
}

/* verify --bundle: every line is checked, each failure named on stderr
 * with its line number and rule, then one summary on stdout. */
static int verify_bundle(const Config *cfg, const VerifyArgs *a, const VerifyKey *keys,
                         size_t n_keys)
{
    const char *verb = "verify";
    _cleanup_receipt_keys_ ReceiptKeys *rkeys = NULL;
    if (a->receipt_key) {
        lv_error_clear();
        if (receipt_keys_load(a->receipt_key, &rkeys) < 0)
            return cli_usage_error(verb, "--receipt-key: %s", lv_error());
    }
    BundleKey pins[VERIFY_MAX_KEYS] = {0};
    _Static_assert(sizeof(pins[0].kid) == sizeof(keys[0].kid), "kid buffers");
    for (size_t i = 0; i < n_keys; i++) {
        memcpy(pins[i].kid, keys[i].kid, sizeof(pins[i].kid));
        memcpy(pins[i].pk, keys[i].pk, 32);
    }
    BundlePins p = {.envelope_keys = pins, .n_envelope_keys = n_keys, .receipt_keys = rkeys};
    _cleanup_fclose_ FILE *f = strcmp(a->bundle, "-") == 0 ? NULL : fopen(a->bundle, "re");
    if (strcmp(a->bundle, "-") != 0 && !f)
        return cli_usage_error(verb, "--bundle: %s: cannot be read: %s", a->bundle,
                               strerror(errno));
    FILE *in = f ? f : stdin;
    _cleanup_free_ char *line = NULL;
    size_t cap = 0, lines = 0, ok = 0, len = 0;
    bool too_long = false;
    int got;
    while ((got = read_line(in, &line, &cap, BUNDLE_MAX_LINE, &len, &too_long)) > 0) {
        lines++;
        lv_error_clear();
        int r = too_long ? lv_error_set(LV_ERR_INPUT, "over %d bytes", BUNDLE_MAX_LINE)
                         : bundle_line_check(line, len, &p, NULL);
        if (r < 0)
            fprintf(stderr, "%s: --bundle %s: line %zu: %s\n", verb, a->bundle, lines, lv_error());
        else
            ok++;
        explicit_bzero(line, len); /* an opt-in envelope carries the payload */
    }
    if (got < 0)
        return cli_fail(verb, lv_error_set(got, "--bundle: %s: %s", a->bundle, strerror(-got)));
    if (lines == 0)
        fprintf(stderr, "%s: --bundle %s: no lines (an empty bundle proves nothing)\n", verb,
                a->bundle);
    if (a->json || !cli_human(cfg))
        printf("{\"lines\":%zu,\"ok\":%zu,\"failed\":%zu}\n", lines, ok, lines - ok);
    else
        printf("bundle %s: %zu line(s), %zu ok, %zu failed\n", a->bundle, lines, ok, lines - ok);
    return lines > 0 && ok == lines ? LV_EXIT_OK : LV_EXIT_FAILURE;
}

int verify_main(const Config *cfg, int argc, char **argv)
{
    const char *verb = argv[0], *path = NULL;
    VerifyArgs a = {0};
    int k = cli_parse(&verify_command, argc, argv, &a, &path, NULL);
    if (k != 0)
        return cli_parse_exit(k);
    if (a.bundle && path)
        return cli_usage_error(verb, "%s: unexpected argument (--bundle names the file)", path);
    if (!a.bundle && !path)
        return cli_usage_error(verb, "FILE|-: missing (see --help)");
    if (a.receipt_key && !a.bundle)
        return cli_usage_error(verb, "--receipt-key: only with --bundle");
    if (a.n_keys == 0 && !a.bundle)
        return cli_usage_error(verb, "--public-key: missing (64 hex digits, a PEM file, or the "
                                     "JSON of public-key)");
    lv_error_clear();
    VerifyKey keys[VERIFY_MAX_KEYS];
    size_t n_keys = 0;
    int r = 0;
    for (size_t i = 0; i < a.n_keys && r >= 0; i++)
        r = read_public_keys(a.keys[i], keys, &n_keys);
    if (r < 0)
        return cli_fail(verb, r);
    if (a.bundle)
        return verify_bundle(cfg, &a, keys, n_keys);
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    r = lv_read_file(path, ENVELOPE_MAX_BODY + 2, &text, &len);
    if (r < 0)
        return cli_fail(verb,
                        r == LV_ERR_TOOBIG ? r : lv_error_set(LV_ERR_INPUT, "%s", lv_error()));
    /* A saved body usually ends with a newline that is not part of it. */
    if (len && text[len - 1] == '\n')
        text[--len] = '\0';
    if (len && text[len - 1] == '\r')
        text[--len] = '\0';
    _cleanup_cjson_erase_ cJSON *doc = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(doc))
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT, "%s: not a JSON object", path));
    const DocKind *kind = NULL;
    for (size_t i = 0; i < ELEMENTSOF(doc_kinds) && !kind; i++)
        if (doc_kinds[i].match(doc))
            kind = &doc_kinds[i];
    if (!kind)
        return cli_fail(verb, lv_error_set(LV_ERR_INPUT,
                                           "%s: not a document verify knows (relay envelope, "
                                           "witness receipt, fork evidence, state adoption)",
                                           path));
    _cleanup_cjson_ cJSON *out = cJSON_CreateObject();
    cJSON_AddBoolToObject(out, "valid", true);
    cJSON_AddStringToObject(out, "kind", kind->name);
    /* Each item verifies under its own kid: keys given with a kid are used
     * only for documents naming that kid; keys given without one are tried
     * for any. */
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(doc, "local_signature");
    const cJSON *dkid = sig ? cJSON_GetObjectItemCaseSensitive(sig, "kid") : NULL;
    const char *want = cJSON_IsString(dkid) ? dkid->valuestring : NULL;
    size_t tried = 0;
    r = LV_ERR_CRYPTO;
    for (size_t i = 0; i < n_keys; i++) {
        if (keys[i].kid[0] && want && strcmp(keys[i].kid, want) != 0)
            continue;
        tried++;
        lv_error_clear();
        r = kind->check(text, len, keys[i].pk, out);
        if (r != LV_ERR_CRYPTO)
            break;
    }
    if (tried == 0)
        return cli_fail(verb, lv_error_set(LV_ERR_CRYPTO,
                                           "local_signature.kid %s: none of the given public "
                                           "keys has this kid",
                                           want ? want : "(missing)"));
    if (r < 0)
        return cli_fail(verb, r);
    if (a.json || !cli_human(cfg)) {
        cli_print_json(out);
    } else {
        printf("valid %s\n", kind->name);
        for (const cJSON *m = out->child; m; m = m->next)
            if (cJSON_IsString(m))
                printf("  %-14s %s\n", m->string, m->valuestring);
    }
    return LV_EXIT_OK;
}
