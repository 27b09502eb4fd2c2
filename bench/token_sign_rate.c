/* SPDX-License-Identifier: Apache-2.0 */
/* Benchmark ceiling: the token's bare C_Sign rate (CKM_EDDSA, single-part,
 * one session, one thread), through p11-kit and nothing of ours, so the
 * enqueue rate can be read against what the token alone allows.
 *
 *   lv-bench-sign MODULE TOKEN_LABEL KEY_LABEL PIN_FILE SECONDS [MSG_BYTES]
 *
 * Prints {"token_sign_per_s":N,"token_sign_per_cpu_s":N,"signatures":N,...}. */
#include <p11-kit/p11-kit.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef CKM_EDDSA
#define CKM_EDDSA 0x1057UL
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, CK_RV rv)
{
    fprintf(stderr, "lv-bench-sign: %s: CK_RV 0x%lx\n", what, (unsigned long)rv);
    return 1;
}

/* Token labels are blank-padded to 32 bytes. */
static bool label_is(const CK_UTF8CHAR *field, const char *want)
{
    size_t n = strlen(want);
    if (n > 32 || memcmp(field, want, n) != 0)
        return false;
    for (size_t i = n; i < 32; i++)
        if (field[i] != ' ')
            return false;
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: lv-bench-sign MODULE TOKEN_LABEL KEY_LABEL PIN_FILE SECONDS "
                        "[MSG_BYTES]\n");
        return 2;
    }
    double seconds = atof(argv[5]);
    size_t msg_len = argc > 6 ? (size_t)atol(argv[6]) : 400;
    if (seconds <= 0 || msg_len == 0 || msg_len > 1 << 20) {
        fprintf(stderr, "lv-bench-sign: bad SECONDS or MSG_BYTES\n");
        return 2;
    }
    char pin[256] = "";
    FILE *pf = fopen(argv[4], "r");
    if (!pf || !fgets(pin, sizeof(pin), pf)) {
        fprintf(stderr, "lv-bench-sign: cannot read %s\n", argv[4]);
        return 1;
    }
    fclose(pf);
    pin[strcspn(pin, "\r\n")] = '\0';

    CK_FUNCTION_LIST *m = p11_kit_module_load(argv[1], 0);
    if (!m) {
        fprintf(stderr, "lv-bench-sign: %s: %s\n", argv[1], p11_kit_message());
        return 1;
    }
    CK_RV rv = p11_kit_module_initialize(m);
    if (rv != CKR_OK)
        return die("initialize", rv);
    CK_SLOT_ID slots[64];
    CK_ULONG nslots = 64;
    rv = m->C_GetSlotList(CK_TRUE, slots, &nslots);
    if (rv != CKR_OK)
        return die("C_GetSlotList", rv);
    CK_SLOT_ID slot = 0;
    bool found = false;
    for (CK_ULONG i = 0; i < nslots && !found; i++) {
        CK_TOKEN_INFO ti;
        if (m->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_is(ti.label, argv[2])) {
            slot = slots[i];
            found = true;
        }
    }
    if (!found) {
        fprintf(stderr, "lv-bench-sign: no token labelled %s\n", argv[2]);
        return 1;
    }
    CK_SESSION_HANDLE s;
    rv = m->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK)
        return die("C_OpenSession", rv);
    rv = m->C_Login(s, CKU_USER, (CK_UTF8CHAR *)pin, strlen(pin));
    explicit_bzero(pin, sizeof(pin));
    if (rv != CKR_OK)
        return die("C_Login", rv);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_LABEL, argv[3], strlen(argv[3])}};
    CK_OBJECT_HANDLE key;
    CK_ULONG nkeys = 0;
    if ((rv = m->C_FindObjectsInit(s, tmpl, 2)) != CKR_OK ||
        (rv = m->C_FindObjects(s, &key, 1, &nkeys)) != CKR_OK ||
        (rv = m->C_FindObjectsFinal(s)) != CKR_OK)
        return die("find key", rv);
    if (nkeys != 1) {
        fprintf(stderr, "lv-bench-sign: no private key labelled %s\n", argv[3]);
        return 1;
    }

    uint8_t *msg = malloc(msg_len);
    if (!msg)
        return 1;
    for (size_t i = 0; i < msg_len; i++)
        msg[i] = (uint8_t)('a' + i % 26);
    CK_MECHANISM mech = {CKM_EDDSA, NULL, 0};
    uint8_t sig[64];
    unsigned long count = 0;
    double t0 = now_s(), t = t0, c0 = cpu_s();
    while (t - t0 < seconds) {
        /* Vary the message like distinct envelopes would. */
        msg[count % msg_len] ^= 1;
        CK_ULONG sig_len = sizeof(sig);
        if ((rv = m->C_SignInit(s, &mech, key)) != CKR_OK ||
            (rv = m->C_Sign(s, msg, msg_len, sig, &sig_len)) != CKR_OK)
            return die("C_Sign", rv);
        count++;
        if (count % 16 == 0)
            t = now_s();
    }
    t = now_s();
    double c = cpu_s() - c0;
    /* The CPU-time rate is steadier than the wall-clock one on a shared
     * machine; both are reported. */
    printf("{\"token_sign_per_s\":%.1f,\"token_sign_per_cpu_s\":%.1f,\"signatures\":%lu,"
           "\"seconds\":%.3f,\"cpu_seconds\":%.3f,\"msg_bytes\":%zu}\n",
           (double)count / (t - t0), c > 0 ? (double)count / c : 0.0, count, t - t0, c, msg_len);
    free(msg);
    m->C_Logout(s);
    m->C_CloseSession(s);
    p11_kit_module_finalize(m);
    p11_kit_module_release(m);
    return 0;
}
