/* SPDX-License-Identifier: Apache-2.0 */
/* Test-only PKCS#11 shim over SoftHSM for faults SoftHSM cannot produce: it
 * adds token flags (CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED) to
 * C_GetTokenInfo and records every C_Login call, so a test can prove that
 * the vault checks the flags before logging in and never retries a PIN.
 *   LV_SHIM_REAL       the real module (libsofthsm2.so)
 *   LV_SHIM_FLAGS      flags to add, as a number (strtoul base 0)
 *   LV_SHIM_LOGIN_LOG  file that gets one line per C_Login */
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <stdio.h>
#include <stdlib.h>

static CK_FUNCTION_LIST shim;
static CK_FUNCTION_LIST *real;

static CK_RV shim_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    CK_RV rv = real->C_GetTokenInfo(slot, info);
    const char *f = getenv("LV_SHIM_FLAGS");
    if (rv == CKR_OK && f)
        info->flags |= strtoul(f, NULL, 0);
    return rv;
}

static CK_RV shim_login(CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR *pin, CK_ULONG len)
{
    const char *log = getenv("LV_SHIM_LOGIN_LOG");
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            fputs("C_Login\n", f);
            fclose(f);
        }
    }
    return real->C_Login(s, u, pin, len);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **ret)
{
    if (!real) {
        const char *path = getenv("LV_SHIM_REAL");
        void *h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
        if (!gfl || gfl(&real) != CKR_OK)
            return CKR_GENERAL_ERROR;
        shim = *real;
        shim.C_GetTokenInfo = shim_get_token_info;
        shim.C_Login = shim_login;
    }
    *ret = &shim;
    return CKR_OK;
}
