/* SPDX-License-Identifier: Apache-2.0 */
/* The PKCS#11 token: the only module that talks to p11-kit. Private keys and
 * the spool keys stay on the token; this API hands out only public keys,
 * signatures, wrapped blobs and ciphertexts. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Token Token;

typedef struct TokenConfig {
    const char *module_path; /* NULL: the URI's module-path, else p11-kit's registered modules */
    const char *signing_uri; /* pkcs11: URI of the Ed25519 private key (may be NULL) */
    const char *kek_uri;     /* pkcs11: URI of the AES-256 KEK (may be NULL) */
    const char *pin_file;    /* NULL: $CREDENTIALS_DIRECTORY/pkcs11-pin, then pin-source= */
    const char *key_id;      /* NULL: "lv-" + 16 hex of SHA-256(public key) */
} TokenConfig;

#define TOKEN_ED25519_PK_LEN  32
#define TOKEN_ED25519_SIG_LEN 64
#define TOKEN_GCM_IV_LEN      12
#define TOKEN_GCM_TAG_LEN     16
#define TOKEN_WRAPPED_DEK_LEN 40 /* AES-256 key under CKM_AES_KEY_WRAP_PAD */
#define TOKEN_KID_MAX         129

/* Loads the module (p11-kit managed), finds the token named by the URIs,
 * reads the PIN (never retried after CKR_PIN_INCORRECT; refuses when the
 * token reports the user PIN locked), logs in and keeps one owner session for
 * the life of the Token. Errors: LV_ERR_NOMOD, LV_ERR_NOTOKEN, LV_ERR_PIN,
 * LV_ERR_AMBIG, LV_ERR_TOKEN, LV_ERR_INPUT (malformed URI), all with detail. */
int token_open(const TokenConfig *cfg, Token **ret);
/* Closes the session and finalizes; accepts NULL, returns NULL. */
Token *token_close(Token *t);

/* Finds the signing key and checks it: CKK_EC_EDWARDS on Ed25519, sensitive,
 * not extractable. Caches the handle and public key. LV_ERR_NOKEY,
 * LV_ERR_AMBIG or LV_ERR_KEYBAD with detail otherwise. */
int token_check_signing_key(Token *t);
/* Finds and checks the KEK: CKK_AES, 32 bytes, CKA_WRAP and CKA_UNWRAP,
 * sensitive, not extractable. */
int token_check_kek(Token *t);

/* The raw 32-byte Ed25519 public key of the signing key (both CKA_EC_POINT
 * forms and both CKA_EC_PARAMS encodings accepted). */
int token_public_key(Token *t, uint8_t ret_pk[TOKEN_ED25519_PK_LEN]);
/* The kid: the configured one, else "lv-" + first 16 hex of SHA-256(pk). */
const char *token_key_id(Token *t);

/* Pure Ed25519 (CKM_EDDSA, no parameters, single-part C_Sign).
 * Thread safety: token_sign, token_aead_* and token_public_key may be called
 * from several threads on one Token. Each call borrows a whole PKCS#11
 * session from a small pool (the owner session plus up to 3 more opened on
 * demand), so no session is ever used by two threads at once. token_open,
 * token_close, token_keys_init and token_dek_load/create are for one thread
 * (call them before starting workers). A Token must not cross fork(). */
int token_sign(Token *t, const uint8_t *msg, size_t len, uint8_t ret_sig[TOKEN_ED25519_SIG_LEN]);

/* Spool data key. token_dek_create generates an AES-256 session key on the
 * token, wraps it under the KEK with CKM_AES_KEY_WRAP_PAD, destroys it and
 * returns the 40-byte blob. token_dek_load unwraps a blob into a sensitive,
 * non-extractable session key held by the owner session and used by the
 * AEAD calls below. */
int token_dek_create(Token *t, uint8_t ret_wrapped[TOKEN_WRAPPED_DEK_LEN]);
int token_dek_load(Token *t, const uint8_t *wrapped, size_t wrapped_len);

/* AES-256-GCM on the token with the loaded DEK: 12-byte IV, 16-byte tag,
 * non-empty AAD. out receives ciphertext||tag (pt_len + 16 bytes).
 * Decrypt returns LV_ERR_CRYPTO on any authentication failure (a bad row,
 * not a broken token). */
int token_aead_encrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad,
                       size_t aad_len, const uint8_t *pt, size_t pt_len, uint8_t *out);
int token_aead_decrypt(Token *t, const uint8_t iv[TOKEN_GCM_IV_LEN], const uint8_t *aad,
                       size_t aad_len, const uint8_t *ct_tag, size_t ct_tag_len, uint8_t *out);

/* keys init: creates on the token whichever of the signing key pair and the
 * KEK named by the configuration are missing, with CKA_SENSITIVE=TRUE and
 * CKA_EXTRACTABLE=FALSE; refuses an existing object whose attributes are
 * wrong. ret_created_* tell what was made. */
int token_keys_init(Token *t, bool *ret_created_signing, bool *ret_created_kek);

/* A readable name for a CK_RV value ("CKR_PIN_INCORRECT"). */
const char *token_rv_name(unsigned long rv);

/* For doctor: the label of the token in use, and where the PIN that logged
 * in came from (a path, or "(no login required)"). */
const char *token_label(Token *t);
const char *token_pin_source(Token *t);

/* Key rotation (docs/operations.md, "Key rotation").
 *
 * A spool whose DEK was rotated holds rows under several DEKs at once: each
 * is unwrapped into one of TOKEN_DEK_SLOTS slots (sensitive, never
 * extractable session keys, like the DEK of token_dek_load, which is
 * separate from these slots) and used by the _slot AEAD calls. */
#define TOKEN_DEK_SLOTS 8
int token_dek_load_slot(Token *t, unsigned slot, const uint8_t *wrapped, size_t wrapped_len);
void token_dek_unload_slot(Token *t, unsigned slot);
int token_aead_encrypt_slot(Token *t, unsigned slot, const uint8_t iv[TOKEN_GCM_IV_LEN],
                            const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                            uint8_t *out);
int token_aead_decrypt_slot(Token *t, unsigned slot, const uint8_t iv[TOKEN_GCM_IV_LEN],
                            const uint8_t *aad, size_t aad_len, const uint8_t *ct_tag,
                            size_t ct_tag_len, uint8_t *out);

/* KEK rotation: unwraps a wrapped DEK under the configured KEK and wraps it
 * under the KEK named by new_kek_uri (same token, same checks as the
 * configured KEK, not the same object), then proves the new blob unwraps.
 * The DEK exists outside the token only wrapped. For one thread. */
int token_dek_rewrap(Token *t, const char *new_kek_uri, const uint8_t *wrapped, size_t wrapped_len,
                     uint8_t ret_wrapped[TOKEN_WRAPPED_DEK_LEN]);
