/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target for the relay credential file's rules
 * (relay_credential_check, src/relay.c): the input is a file's content.
 * Properties: an accepted credential is 1..4096 bytes of RFC 6750 b64token
 * (letters, digits, -._~+/ then only '=') with no newline left; a refused
 * one gets one of the fixed rules, so no byte of the input (it may be the
 * secret) can reach an error message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_relay_credential: property failed: %s\n", #cond);                \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool token_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    size_t len = size;
    const char *rule = relay_credential_check(buf, &len);
    CHECK(len <= size && buf[len] == '\0');
    if (rule) {
        static const char *const rules[] = {
            "longer than 4096 bytes",
            "empty",
            "must hold one line (the credential)",
            "must be an RFC 6750 bearer token (letters, digits, -._~+/ then '=' padding)",
        };
        bool known = false;
        for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
            known = known || strcmp(rule, rules[i]) == 0;
        CHECK(known);
    } else {
        CHECK(len >= 1 && len <= 4096);
        CHECK(!memchr(buf, '\n', len) && !memchr(buf, '\0', len));
        size_t i = 0;
        while (i < len && token_char(buf[i]))
            i++;
        CHECK(i >= 1);
        for (; i < len; i++)
            CHECK(buf[i] == '=');
    }
    free(buf);
    return 0;
}
