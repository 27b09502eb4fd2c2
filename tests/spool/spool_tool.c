/* SPDX-License-Identifier: Apache-2.0 */
/* Test driver for the spool's lease and outcome functions, so system tests
 * can play the drain's part (short leases, retries, receipts, dead-letter)
 * against a spool made by the real binary. Configuration from the same
 * ATTESTO_LOCAL_VAULT_* variables as the binary.
 *
 *   spool-tool lease OWNER LEASE_MS MAX      one JSON line per leased item
 *   spool-tool retry ID OWNER REASON DELAY_MS [keep]
 *   spool-tool receipt ID OWNER JSON
 *   spool-tool dead ID OWNER REASON
 *   spool-tool recover                        {"recovered":N}
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lv.h"
#include "spool.h"
#include "token.h"

static int fail(const char *what, int r)
{
    fprintf(stderr, "spool-tool: %s: %s\n", what, *lv_error() ? lv_error() : strerror(-r));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: spool-tool lease|retry|receipt|dead|recover ...\n");
        return 2;
    }
    TokenConfig tc = {
        .module_path = getenv("ATTESTO_LOCAL_VAULT_PKCS11_MODULE"),
        .signing_uri = getenv("ATTESTO_LOCAL_VAULT_SIGNING_KEY"),
        .kek_uri = getenv("ATTESTO_LOCAL_VAULT_ENCRYPTION_KEY"),
        .pin_file = getenv("ATTESTO_LOCAL_VAULT_PIN_FILE"),
        .key_id = getenv("ATTESTO_LOCAL_VAULT_KEY_ID"),
    };
    Token *tok = NULL;
    int r = token_open(&tc, &tok);
    if (r >= 0)
        r = token_check_signing_key(tok);
    if (r >= 0)
        r = token_check_kek(tok);
    if (r < 0)
        return fail("token", r);
    SpoolOptions so = {.path = getenv("ATTESTO_LOCAL_VAULT_SPOOL_DB"),
                       .installation_id = getenv("ATTESTO_LOCAL_VAULT_INSTALLATION_ID")};
    Spool *s = NULL;
    r = spool_open(&so, tok, &s);
    if (r < 0) {
        token_close(tok);
        return fail("open", r);
    }
    const char *cmd = argv[1];
    int64_t now = lv_now_ms();
    if (strcmp(cmd, "lease") == 0 && argc == 5) {
        SpoolLease *l = NULL;
        size_t n = 0;
        r = spool_lease_due(s, argv[2], now, atoll(argv[3]), (size_t)atoll(argv[4]), &l, &n);
        for (size_t i = 0; r >= 0 && i < n; i++) {
            char h[65];
            lv_sha256_hex(l[i].body, l[i].body_len, h);
            printf("{\"id\":%lld,\"event_id\":\"%s\",\"stream_id\":\"%s\",\"attempts\":%d,"
                   "\"envelope_hash\":\"%s\",\"body_hash\":\"%s\"}\n",
                   (long long)l[i].id, l[i].event_id, l[i].stream_id, l[i].attempts,
                   l[i].envelope_hash, h);
        }
        spool_leases_free(l, n);
    } else if (strcmp(cmd, "retry") == 0 && (argc == 6 || argc == 7)) {
        bool dead = false;
        r = spool_mark_retry(s, atoll(argv[2]), argv[3], argv[4], now + atoll(argv[5]), argc == 6,
                             &dead);
        if (r >= 0)
            printf("{\"dead_letter\":%s}\n", dead ? "true" : "false");
    } else if (strcmp(cmd, "receipt") == 0 && argc == 5) {
        r = spool_mark_receipted(s, atoll(argv[2]), argv[3], argv[4]);
    } else if (strcmp(cmd, "dead") == 0 && argc == 5) {
        r = spool_mark_dead(s, atoll(argv[2]), argv[3], argv[4]);
    } else if (strcmp(cmd, "recover") == 0 && argc == 2) {
        size_t n = 0;
        r = spool_recover_expired(s, now, &n);
        if (r >= 0)
            printf("{\"recovered\":%zu}\n", n);
    } else {
        fprintf(stderr, "spool-tool: %s: bad command or arguments\n", cmd);
        r = LV_ERR_INPUT;
    }
    int ec = r < 0 ? fail(cmd, r) : 0;
    spool_close(s);
    token_close(tok);
    return ec;
}
