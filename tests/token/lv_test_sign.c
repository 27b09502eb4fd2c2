/* SPDX-License-Identifier: Apache-2.0 */
/* Test helper: signs a file's bytes through the token layer (token_sign) with
 * the key the global options and environment name; prints the hex signature.
 *   lv-test-sign [GLOBAL OPTIONS] FILE */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "config.h"
#include "lv.h"
#include "token.h"

int main(int argc, char **argv)
{
    Config cfg;
    int idx = 0;
    if (config_parse_globals(argc, argv, &cfg, &idx) < 0 || idx != argc - 1) {
        fprintf(stderr, "usage: lv-test-sign [GLOBAL OPTIONS] FILE (%s)\n", lv_error());
        return 2;
    }
    char *msg = NULL;
    size_t len = 0;
    int r = lv_read_file(argv[idx], 1 << 20, &msg, &len);
    if (r < 0)
        return cli_fail("lv-test-sign", r);
    Token *t = NULL;
    int code = cli_open_token("lv-test-sign", &cfg, false, &t);
    if (code != 0) {
        free(msg);
        return code;
    }
    uint8_t sig[TOKEN_ED25519_SIG_LEN];
    r = token_sign(t, (const uint8_t *)msg, len, sig);
    if (r < 0)
        code = cli_fail("lv-test-sign", r);
    else {
        char hex[2 * TOKEN_ED25519_SIG_LEN + 1];
        hex_encode(sig, sizeof(sig), hex);
        printf("%s\n", hex);
    }
    token_close(t);
    free(msg);
    return code;
}
